//! Getting a download's manifests: the one named by its id and, for a
//! directory, every one below it, each from the first provider (best first)
//! that answers with bytes that hash to the id asked for; then walking the
//! tree they make, path by path.
//!
//! A manifest named by many entries (the same file in two directories, or a
//! directory bomb whose hundred thousand entries all name one manifest) is
//! fetched and held once. The tree must keep the limits of
//! [`crate::proto::tree`]: fetching stops at [`MAX_TREE_ENTRIES`] distinct
//! manifests or [`MAX_TREE_MANIFEST_BYTES`] of them, or at a path deeper
//! than [`MAX_TREE_DEPTH`], and once all are in, the paths are counted (files
//! and directories, depth, total size) before anything is written.
//!
//! [`MAX_TREE_ENTRIES`]: crate::proto::tree::MAX_TREE_ENTRIES
//! [`MAX_TREE_MANIFEST_BYTES`]: crate::proto::tree::MAX_TREE_MANIFEST_BYTES
//! [`MAX_TREE_DEPTH`]: crate::proto::tree::MAX_TREE_DEPTH

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::download::shared::Shared;
use crate::download::{DownloadError, DownloadOptions, Provider};
use crate::proto::manifest::{check_name, DirEntry, FileManifest, Manifest, MAX_MANIFEST_SIZE};
use crate::proto::tree::{
    TreeBudget, TreeError, TreeStats, MAX_TREE_DEPTH, MAX_TREE_MANIFEST_BYTES,
};
use crate::proto::Hash;
use crate::transfer::{fetch_manifest, FetchError};

/// The manifests of a download's tree, each distinct one once, and the
/// tree's figures (checked against the limits).
pub(super) struct TreeManifests {
    root: Hash,
    manifests: HashMap<Hash, Manifest>,
    /// Every path counted.
    pub(super) stats: TreeStats,
}

/// Manifests of a tree fetched at once (fewer as the tree's manifest bytes
/// near their limit: see [`fetch_tree`]). One after the other, a tree of
/// 1,000 small files spent 0.28 s on round trips before its first chunk.
pub const MANIFESTS_AT_ONCE: usize = 16;

/// Fetches the tree `id`: every distinct manifest once, within the limits,
/// up to [`MANIFESTS_AT_ONCE`] at a time. What may arrive beyond the limit
/// on the tree's manifest bytes before it is found exceeded stays under one
/// manifest: requests in flight are at most one more than the largest
/// manifests the room left could take.
pub(super) async fn fetch_tree(
    providers: &[Provider],
    shared: &Shared,
    id: Hash,
    opts: &DownloadOptions,
) -> Result<TreeManifests, DownloadError> {
    let refused = |reason: TreeError| DownloadError::Tree { id, reason };
    let mut manifests = HashMap::new();
    let mut asked = HashSet::new();
    let mut budget = TreeBudget::default();
    // Each with the number of directories above it on the path it was
    // reached by: a path too deep is refused before what is below is fetched.
    let mut stack = vec![(id, 0)];
    let mut running = FuturesUnordered::new();
    loop {
        let room = MAX_TREE_MANIFEST_BYTES.saturating_sub(budget.bytes) / MAX_MANIFEST_SIZE as u64;
        let at_once = MANIFESTS_AT_ONCE.min(room as usize + 1);
        while running.len() < at_once {
            let Some((next, above)) = stack.pop() else {
                break;
            };
            if asked.insert(next) {
                running.push(async move {
                    let got = get_manifest(providers, shared, next, opts).await;
                    (next, above, got)
                });
            }
        }
        let Some((next, above, got)) = running.next().await else {
            break;
        };
        let (len, m) = got?;
        budget.take(len).map_err(refused)?;
        if let Manifest::Dir(d) = &m {
            if above >= MAX_TREE_DEPTH {
                return Err(refused(TreeError::TooDeep {
                    max: MAX_TREE_DEPTH,
                }));
            }
            let new = d.entries.iter().rev().map(|e| (e.id, above + 1));
            stack.extend(new.filter(|(e, _)| !asked.contains(e)));
        }
        manifests.insert(next, m);
    }
    let stats = TreeStats::of(id, |h| manifests.get(h)).map_err(refused)?;
    Ok(TreeManifests {
        root: id,
        manifests,
        stats,
    })
}

/// One path of a tree, as [`TreeManifests::walk`] gives it.
pub(super) enum Item<'a> {
    /// A directory to create.
    Dir(PathBuf),
    /// A file to write.
    File {
        /// Where.
        path: PathBuf,
        /// Its manifest's id.
        id: Hash,
        /// Its manifest.
        manifest: &'a FileManifest,
        /// Whether its name is the `.part` name of a file beside it in the
        /// tree (`x.part` beside `x`): whatever is there may be that file's
        /// download in progress, not someone else's file.
        part_of_sibling: bool,
    },
}

impl TreeManifests {
    /// The name the tree's root was stored under.
    pub(super) fn root_name(&self) -> Option<&str> {
        self.manifests.get(&self.root).map(Manifest::name)
    }

    /// A tree of these manifests, for tests of what walks it.
    #[cfg(test)]
    pub(super) fn of(root: Hash, all: Vec<Manifest>) -> Result<TreeManifests, TreeError> {
        let manifests: HashMap<Hash, Manifest> = all.into_iter().map(|m| (m.id(), m)).collect();
        let stats = TreeStats::of(root, |h| manifests.get(h))?;
        Ok(TreeManifests {
            root,
            manifests,
            stats,
        })
    }

    /// Every path of the tree under `out` (`out` itself for the root),
    /// parents before their entries, entries in name order.
    pub(super) fn walk<'a>(&'a self, out: &Path) -> Walk<'a> {
        Walk {
            tree: self,
            root: Some(out.to_path_buf()),
            open: Vec::new(),
        }
    }

    /// The manifest `id` of the tree.
    pub(super) fn manifest(&self, id: &Hash) -> Option<&Manifest> {
        self.manifests.get(id)
    }

    fn get(&self, id: &Hash) -> Result<&Manifest, DownloadError> {
        self.manifest(id).ok_or(DownloadError::Tree {
            id: self.root,
            reason: TreeError::Missing(*id),
        })
    }
}

/// A walk of a tree's paths: holds one frame per open directory, never a
/// list of every path.
pub(super) struct Walk<'a> {
    tree: &'a TreeManifests,
    /// The root's path, until it is given.
    root: Option<PathBuf>,
    /// The directories being walked: path, entries, next entry.
    open: Vec<(PathBuf, &'a [DirEntry], usize)>,
}

impl<'a> Walk<'a> {
    /// The item at `path` for the manifest `id`, opening it if a directory.
    fn item(
        &mut self,
        path: PathBuf,
        id: Hash,
        part_of_sibling: bool,
    ) -> Result<Item<'a>, DownloadError> {
        match self.tree.get(&id)? {
            Manifest::File(manifest) => Ok(Item::File {
                path,
                id,
                manifest,
                part_of_sibling,
            }),
            Manifest::Dir(d) => {
                self.open.push((path.clone(), &d.entries, 0));
                Ok(Item::Dir(path))
            }
            // A sealed root is opened before any walk; one inside a plain
            // directory is not a shape `put` makes.
            Manifest::Sealed(_) => Err(DownloadError::NeedKey(id)),
        }
    }

    /// The next entry of the innermost open directory, closing the
    /// directories that have none left.
    fn next_entry(&mut self) -> Option<Result<Item<'a>, DownloadError>> {
        let tree = self.tree;
        loop {
            let (dir, entries, next) = self.open.last_mut()?;
            let Some(e) = entries.get(*next) else {
                self.open.pop();
                continue;
            };
            *next += 1;
            // The manifest's names were checked when it was decoded; a name
            // is checked again before it becomes a path to write.
            if let Err(source) = check_name(&e.name) {
                let dir = dir.clone();
                return Some(Err(DownloadError::BadName {
                    dir,
                    reason: source,
                }));
            }
            let path = dir.join(&e.name);
            let part_of_sibling = is_part_of_file_in(tree, entries, &e.name);
            return Some(self.item(path, e.id, part_of_sibling));
        }
    }
}

/// Whether `name` is `X.part` for a file `X` among `entries` (sorted) of
/// `tree`.
fn is_part_of_file_in(tree: &TreeManifests, entries: &[DirEntry], name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".part") else {
        return false;
    };
    entries
        .binary_search_by(|e| e.name.as_str().cmp(stem))
        .ok()
        .and_then(|i| entries.get(i))
        .and_then(|e| tree.manifest(&e.id))
        .is_some_and(|m| matches!(m, Manifest::File(_)))
}

impl<'a> Iterator for Walk<'a> {
    type Item = Result<Item<'a>, DownloadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            let id = self.tree.root;
            return Some(self.item(root, id, false));
        }
        self.next_entry()
    }
}

/// The manifest `id` from the first provider still asked that gives it, and
/// its encoded length.
async fn get_manifest(
    providers: &[Provider],
    shared: &Shared,
    id: Hash,
    opts: &DownloadOptions,
) -> Result<(usize, Manifest), DownloadError> {
    let mut last = String::from("no provider");
    for p in providers {
        if shared.gave_up_on(&p.id) {
            continue;
        }
        match fetch_manifest(&p.conn, id, opts.chunk_timeout).await {
            Ok((bytes, m)) => {
                shared.scores.served(p.id);
                return Ok((bytes.len(), m));
            }
            Err(e) => {
                shared.score_failure(&p.id, &e, &"the manifest");
                if matches!(e, FetchError::NotFound) {
                    // It does not have the file after all: no chunk either.
                    shared.rule_out(p.id);
                }
                last = format!("{}: {e}", p.id.fmt_short());
            }
        }
    }
    Err(DownloadError::Manifest { id, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::DirManifest;

    fn tree(root: Hash, all: Vec<Manifest>) -> TreeManifests {
        TreeManifests::of(root, all).unwrap()
    }

    fn file(name: &str) -> Manifest {
        Manifest::File(FileManifest {
            name: name.into(),
            size: 3,
            chunk_size: 1024,
            chunks: vec![Hash::of(name.as_bytes())],
        })
    }

    fn dir(entries: &[(&str, Hash)]) -> Manifest {
        Manifest::Dir(DirManifest {
            name: "d".into(),
            entries: entries
                .iter()
                .map(|(n, id)| DirEntry {
                    name: n.to_string(),
                    id: *id,
                })
                .collect(),
        })
    }

    fn paths(t: &TreeManifests) -> Vec<String> {
        t.walk(Path::new("out"))
            .map(|i| match i.unwrap() {
                Item::Dir(p) => format!("{}/", p.display()),
                Item::File {
                    path,
                    part_of_sibling,
                    ..
                } => format!(
                    "{}{}",
                    path.display(),
                    if part_of_sibling { " (part)" } else { "" }
                ),
            })
            .collect()
    }

    #[test]
    fn the_walk_gives_every_path_parents_first_shared_manifests_at_each() {
        let (x, y) = (file("x"), file("y"));
        let sub = dir(&[("x", x.id())]);
        let root = dir(&[
            ("a", sub.id()),
            ("a.part", y.id()),
            ("b", sub.id()),
            ("y", y.id()),
            ("y.part", y.id()),
        ]);
        let t = tree(root.id(), vec![x, y, sub, root]);
        assert_eq!(
            paths(&t),
            [
                "out/",
                "out/a/",
                "out/a/x",
                "out/a.part",
                "out/b/",
                "out/b/x",
                "out/y",
                "out/y.part (part)"
            ]
        );
        assert_eq!(t.stats.entries, 8);
        let single = file("f");
        assert_eq!(paths(&tree(single.id(), vec![single])), ["out"]);
    }

    #[test]
    fn the_walk_refuses_a_name_that_is_not_a_plain_component() {
        // Manifest::decode refuses these; a tree built by hand can hold them.
        let x = file("x");
        let root = dir(&[("..", x.id())]);
        let t = tree(root.id(), vec![x, root]);
        let items: Vec<_> = t.walk(Path::new("out")).collect();
        assert!(matches!(items[0], Ok(Item::Dir(_))));
        assert!(matches!(&items[1], Err(DownloadError::BadName { .. })));
    }
}
