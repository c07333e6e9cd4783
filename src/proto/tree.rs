//! Trees of manifests: the limits a file tree keeps, and the checks of a tree
//! against them.
//!
//! A directory manifest names its entries by id, so one manifest may be named
//! by many entries, at any depth: with
//! [`MAX_DIR_ENTRIES`](super::manifest::MAX_DIR_ENTRIES) entries naming one
//! directory of as many, two manifests make ten billion paths. (There are no
//! cycles: a manifest would have to name its own hash.) Honest trees share
//! manifests too: identical files of the same name (an empty `__init__.py`,
//! a `LICENSE` in every vendored package) and identical subdirectories have
//! one id. So whatever walks a tree (the download engine that writes it, the
//! store that decides whether it holds it) handles each distinct manifest once
//! and counts paths, the files and directories that would be written:
//!
//! | limit | value | what it bounds |
//! |---|---|---|
//! | [`MAX_TREE_ENTRIES`] | 1,000,000 | files and directories in a tree, every path counted, the root too |
//! | [`MAX_TREE_DEPTH`] | 256 | directories on the longest path (a file alone is 0) |
//! | [`MAX_TREE_SIZE`] | 1 PiB | bytes of all files, every path counted, added with checked arithmetic |
//! | [`MAX_TREE_MANIFEST_BYTES`] | 256 MiB | encoded bytes of a tree's distinct manifests |
//!
//! The first three are what a get would write; honest trees stay far below
//! them (a Linux kernel checkout has under 100,000 files). Past
//! [`MAX_TREE_DEPTH`] paths pass Linux's `PATH_MAX` of 4 KiB with names of
//! 15 bytes. The last bounds memory: a walker holds a tree's distinct
//! manifests, and 256 MiB holds a million small files' manifests or 8 million
//! chunk hashes (8 TiB in 1 MiB chunks). As distinct manifests are never more
//! than paths, a walker still fetching them stops at [`MAX_TREE_ENTRIES`]
//! manifests or [`MAX_TREE_MANIFEST_BYTES`] bytes ([`TreeBudget`]), before it
//! has them all to count the paths ([`TreeStats::of`]).

use std::collections::HashMap;

use super::hash::Hash;
use super::manifest::{DirEntry, Manifest};

/// Most files and directories in one tree, every path counted, the root too.
pub const MAX_TREE_ENTRIES: u64 = 1_000_000;
/// Most directories on one path of a tree (a file alone is depth 0).
pub const MAX_TREE_DEPTH: usize = 256;
/// Most bytes in all the files of a tree, every path counted: 1 PiB.
pub const MAX_TREE_SIZE: u64 = 1 << 50;
/// Most encoded bytes of a tree's distinct manifests: 256 MiB.
pub const MAX_TREE_MANIFEST_BYTES: u64 = 256 << 20;

/// Which limit of a tree was exceeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// More paths than [`MAX_TREE_ENTRIES`].
    #[error("it has more than {max} files and directories")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// Deeper than [`MAX_TREE_DEPTH`].
    #[error("it nests directories more than {max} deep")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Files adding up to more than [`MAX_TREE_SIZE`].
    #[error("its files add up to more than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Distinct manifests of more than [`MAX_TREE_MANIFEST_BYTES`].
    #[error("its manifests add up to more than {max} bytes")]
    ManifestsTooLarge {
        /// The limit.
        max: u64,
    },
    /// A manifest of the tree is not at hand.
    #[error("its manifest {0} is missing")]
    Missing(Hash),
}

/// What a walker collecting a tree's distinct manifests has taken in so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeBudget {
    /// Distinct manifests.
    pub manifests: u64,
    /// Their encoded bytes.
    pub bytes: u64,
}

impl TreeBudget {
    /// Counts one more distinct manifest of `len` encoded bytes; an error if
    /// that is one too many, or too many bytes.
    pub fn take(&mut self, len: usize) -> Result<(), TreeError> {
        self.manifests += 1;
        self.bytes = self.bytes.saturating_add(len as u64);
        if self.manifests > MAX_TREE_ENTRIES {
            return Err(TreeError::TooManyEntries {
                max: MAX_TREE_ENTRIES,
            });
        }
        if self.bytes > MAX_TREE_MANIFEST_BYTES {
            return Err(TreeError::ManifestsTooLarge {
                max: MAX_TREE_MANIFEST_BYTES,
            });
        }
        Ok(())
    }
}

/// A tree's figures, every path counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeStats {
    /// Files and directories, the root included.
    pub entries: u64,
    /// Files.
    pub files: u64,
    /// Directories on the longest path (0 for a file alone).
    pub depth: usize,
    /// Bytes in all files.
    pub size: u64,
}

impl TreeStats {
    /// The figures of the tree `root`, whose manifests `get` gives, checked
    /// against the limits as they are added up.
    ///
    /// Each distinct manifest is visited once, whatever the number of paths
    /// to it, and the walk holds at most [`MAX_TREE_DEPTH`] directories at a
    /// time, so neither a graph of billions of paths nor (were one possible) a
    /// cycle makes it run long.
    pub fn of<'a>(
        root: Hash,
        get: impl Fn(&Hash) -> Option<&'a Manifest>,
    ) -> Result<TreeStats, TreeError> {
        let mut known: HashMap<Hash, TreeStats> = HashMap::new();
        // The directories being added up, outermost first.
        let mut open: Vec<Open<'a>> = Vec::new();
        let mut next = root;
        loop {
            // Find the figures of `next`, or open it as a directory.
            let mut done = match known.get(&next) {
                Some(s) => Some(*s),
                None => match get(&next).ok_or(TreeError::Missing(next))? {
                    Manifest::File(f) => Some(TreeStats::file(f.size)?),
                    Manifest::Sealed(s) => Some(TreeStats::file(s.body.size)?),
                    Manifest::Dir(d) => {
                        if open.len() >= MAX_TREE_DEPTH {
                            return Err(TreeError::TooDeep {
                                max: MAX_TREE_DEPTH,
                            });
                        }
                        open.push(Open::new(next, &d.entries));
                        None
                    }
                },
            };
            // Add what is done to the directory above it, and close every
            // directory that has no entry left.
            loop {
                let Some(top) = open.last_mut() else {
                    // Only the root closes with no directory above it.
                    return done.ok_or(TreeError::Missing(root));
                };
                if let Some(child) = done.take() {
                    top.sum.add(&child)?;
                }
                if let Some(e) = top.entries.get(top.next) {
                    top.next += 1;
                    next = e.id;
                    break;
                }
                let closed = open.pop().ok_or(TreeError::Missing(root))?;
                known.insert(closed.id, closed.sum);
                done = Some(closed.sum);
            }
        }
    }

    /// A file of `size` bytes alone.
    fn file(size: u64) -> Result<TreeStats, TreeError> {
        if size > MAX_TREE_SIZE {
            return Err(TreeError::TooLarge { max: MAX_TREE_SIZE });
        }
        Ok(TreeStats {
            entries: 1,
            files: 1,
            depth: 0,
            size,
        })
    }

    /// Adds the figures of an entry to this directory's.
    fn add(&mut self, child: &TreeStats) -> Result<(), TreeError> {
        self.entries = self
            .entries
            .checked_add(child.entries)
            .filter(|n| *n <= MAX_TREE_ENTRIES)
            .ok_or(TreeError::TooManyEntries {
                max: MAX_TREE_ENTRIES,
            })?;
        self.size = self
            .size
            .checked_add(child.size)
            .filter(|n| *n <= MAX_TREE_SIZE)
            .ok_or(TreeError::TooLarge { max: MAX_TREE_SIZE })?;
        self.files += child.files;
        self.depth = self.depth.max(child.depth + 1);
        if self.depth > MAX_TREE_DEPTH {
            return Err(TreeError::TooDeep {
                max: MAX_TREE_DEPTH,
            });
        }
        Ok(())
    }
}

/// A directory whose entries are being added up.
struct Open<'a> {
    id: Hash,
    entries: &'a [DirEntry],
    /// The next entry to add.
    next: usize,
    /// The figures so far: the directory itself and the entries added.
    sum: TreeStats,
}

impl<'a> Open<'a> {
    fn new(id: Hash, entries: &'a [DirEntry]) -> Open<'a> {
        Open {
            id,
            entries,
            next: 0,
            sum: TreeStats {
                entries: 1,
                files: 0,
                depth: 1,
                size: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::{DirManifest, FileManifest};

    /// Manifests by id, built bottom up.
    #[derive(Default)]
    struct Tree(HashMap<Hash, Manifest>);

    impl Tree {
        fn add(&mut self, m: Manifest) -> Hash {
            let id = m.id();
            self.0.insert(id, m);
            id
        }
        fn file(&mut self, name: &str, size: u64) -> Hash {
            self.add(Manifest::File(FileManifest {
                name: name.into(),
                size,
                chunk_size: 1024,
                chunks: vec![Hash::of(b"c"); FileManifest::chunk_count(size, 1024) as usize],
            }))
        }
        fn dir(&mut self, entries: &[(&str, Hash)]) -> Hash {
            self.add(Manifest::Dir(DirManifest {
                name: "d".into(),
                entries: entries
                    .iter()
                    .map(|(n, id)| DirEntry {
                        name: n.to_string(),
                        id: *id,
                    })
                    .collect(),
            }))
        }
        /// A directory of `width` entries all naming `child`.
        fn wide(&mut self, width: usize, child: Hash) -> Hash {
            let names: Vec<String> = (0..width).map(|i| format!("e{i:07}")).collect();
            let entries: Vec<(&str, Hash)> = names.iter().map(|n| (n.as_str(), child)).collect();
            self.dir(&entries)
        }
        fn stats(&self, root: Hash) -> Result<TreeStats, TreeError> {
            TreeStats::of(root, |id| self.0.get(id))
        }
    }

    #[test]
    fn a_file_alone_and_a_small_tree_are_counted_by_path() {
        let mut t = Tree::default();
        let f = t.file("f", 5000);
        assert_eq!(
            t.stats(f),
            Ok(TreeStats {
                entries: 1,
                files: 1,
                depth: 0,
                size: 5000
            })
        );
        // sub/ holds f; the root holds f, sub/ and sub2/ (the same manifest
        // as sub/) and an empty directory.
        let empty = t.dir(&[]);
        let sub = t.dir(&[("f", f)]);
        let root = t.dir(&[("e", empty), ("f", f), ("s1", sub), ("s2", sub)]);
        assert_eq!(
            t.stats(root),
            Ok(TreeStats {
                entries: 1 + 1 + 1 + 2 * 2,
                files: 3,
                depth: 2,
                size: 3 * 5000
            })
        );
    }

    #[test]
    fn paths_are_counted_not_manifests() {
        let mut t = Tree::default();
        let f = t.file("f", 1);
        let thousand = t.wide(1000, f);
        // 1 + 999 * (1 + 1000) paths: the limit exactly.
        let at_limit = t.wide(999, thousand);
        assert_eq!(t.stats(at_limit).map(|s| s.entries), Ok(MAX_TREE_ENTRIES));
        let over = t.wide(1000, thousand);
        assert_eq!(
            t.stats(over),
            Err(TreeError::TooManyEntries {
                max: MAX_TREE_ENTRIES
            })
        );
        // Five levels of a thousand: 10^15 paths from six manifests, refused
        // at once, without an overflow.
        let mut below = f;
        for _ in 0..5 {
            below = t.wide(1000, below);
        }
        let start = std::time::Instant::now();
        assert!(matches!(
            t.stats(below),
            Err(TreeError::TooManyEntries { .. })
        ));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn depth_is_bounded() {
        let mut t = Tree::default();
        let mut below = t.file("f", 1);
        for _ in 0..MAX_TREE_DEPTH {
            below = t.dir(&[("d", below)]);
        }
        assert_eq!(t.stats(below).map(|s| s.depth), Ok(MAX_TREE_DEPTH));
        let over = t.dir(&[("d", below)]);
        assert_eq!(
            t.stats(over),
            Err(TreeError::TooDeep {
                max: MAX_TREE_DEPTH
            })
        );
        // Deep below a shallow first path: the depth counts the deepest.
        let shallow = t.file("g", 1);
        let both = t.dir(&[("a", shallow), ("b", over)]);
        assert!(matches!(t.stats(both), Err(TreeError::TooDeep { .. })));
    }

    #[test]
    fn sizes_are_added_with_checked_arithmetic() {
        let mut t = Tree::default();
        // The largest file a manifest can describe is far below u64::MAX, so
        // write the sizes straight in (these manifests would not decode).
        let half = t.add(Manifest::File(FileManifest {
            name: "h".into(),
            size: MAX_TREE_SIZE / 2,
            chunk_size: 1024,
            chunks: vec![],
        }));
        let full = t.dir(&[("a", half), ("b", half)]);
        assert_eq!(t.stats(full).map(|s| s.size), Ok(MAX_TREE_SIZE));
        let c = t.file("c", 1);
        let over = t.dir(&[("a", half), ("b", half), ("c", c)]);
        let too_large = Err(TreeError::TooLarge { max: MAX_TREE_SIZE });
        assert_eq!(t.stats(over), too_large);
        let huge = t.add(Manifest::File(FileManifest {
            name: "x".into(),
            size: u64::MAX,
            chunk_size: 1024,
            chunks: vec![],
        }));
        let wrap = t.dir(&[("a", huge), ("b", huge)]);
        assert_eq!(t.stats(wrap), too_large);
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let mut t = Tree::default();
        let absent = Hash::of(b"absent");
        let root = t.dir(&[("a", absent)]);
        assert_eq!(t.stats(root), Err(TreeError::Missing(absent)));
        assert_eq!(t.stats(absent), Err(TreeError::Missing(absent)));
    }

    #[test]
    fn a_cycle_ends_as_too_deep() {
        // Hashes make cycles impossible on the wire; a lookup that lies makes
        // one here.
        let a = Hash::of(b"a");
        let dir = Manifest::Dir(DirManifest {
            name: "a".into(),
            entries: vec![DirEntry {
                name: "a".into(),
                id: a,
            }],
        });
        assert!(matches!(
            TreeStats::of(a, |_| Some(&dir)),
            Err(TreeError::TooDeep { .. })
        ));
    }

    #[test]
    fn the_budget_stops_a_walker_at_either_limit() {
        let mut b = TreeBudget::default();
        b.take(MAX_TREE_MANIFEST_BYTES as usize).unwrap();
        assert_eq!(
            b.take(1),
            Err(TreeError::ManifestsTooLarge {
                max: MAX_TREE_MANIFEST_BYTES
            })
        );
        let mut b = TreeBudget {
            manifests: MAX_TREE_ENTRIES - 1,
            bytes: 0,
        };
        b.take(10).unwrap();
        assert_eq!(
            b.take(10),
            Err(TreeError::TooManyEntries {
                max: MAX_TREE_ENTRIES
            })
        );
    }
}
