//! What a download writes, decided before it writes anything: for each file
//! of the tree, whether it is kept (an earlier attempt finished it), fetched,
//! or copied; and whether the disk has room for it all.
//!
//! A file manifest named by several paths (identical files of one name in two
//! directories, or a bomb's hundred thousand entries) is fetched once, to its
//! first path, and every other path is a copy of that file. Refusing such
//! trees instead would refuse honest ones: the chunker gives identical files
//! of one name (an empty `__init__.py`, a vendored `LICENSE`) and identical
//! subdirectories one id, so sharing is common. What a bomb could still
//! cost, a copy per path, is bounded by the tree limits
//! ([`crate::proto::tree`]: files counted by path, total size) and by the
//! room on the disk, both checked here before the first byte is written.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::download::manifest::{Item, TreeManifests};
use crate::download::writer::is_finished;
use crate::download::{io, part_path, DownloadError};
use crate::proto::manifest::Manifest;
use crate::proto::Hash;

/// Where the bytes of one file manifest come from.
enum Source {
    /// A file an earlier attempt finished (verified).
    Kept(PathBuf),
    /// The file fetched from the providers.
    Fetched(PathBuf),
}

/// What to do with a file of the tree.
pub(super) enum Action<'p> {
    /// Nothing: it is finished already.
    Keep,
    /// Fetch it from the providers.
    Fetch,
    /// Copy this file of the tree, written before it (or kept).
    Copy(&'p Path),
}

/// What a download writes: see the module documentation.
#[derive(Default)]
pub(super) struct Plan {
    /// Per file manifest, the file its paths copy.
    sources: HashMap<Hash, Source>,
    /// The walk's positions of the files kept.
    kept: HashSet<usize>,
    /// Bytes to write in all.
    pub(super) needed: u64,
}

impl Plan {
    /// The action for the file `id` at `path`, item `index` of the walk.
    pub(super) fn action(&self, index: usize, path: &Path, id: &Hash) -> Action<'_> {
        if self.kept.contains(&index) {
            return Action::Keep;
        }
        match self.sources.get(id) {
            Some(Source::Fetched(p)) if p == path => Action::Fetch,
            Some(Source::Kept(p) | Source::Fetched(p)) => Action::Copy(p),
            None => Action::Fetch,
        }
    }
}

/// Plans writing `tree` to `out` (blocking: it reads what is there, and
/// hashes the files that look finished).
pub(super) fn plan(tree: &TreeManifests, out: &Path) -> Result<Plan, DownloadError> {
    let mut plan = Plan::default();
    let mut to_write = 0u64;
    for (index, item) in tree.walk(out).enumerate() {
        let Item::File(path, id, f) = item? else {
            continue;
        };
        if is_finished(&path, f).map_err(io(&path))? {
            plan.kept.insert(index);
            // A kept copy is the best source: nothing to fetch.
            plan.sources.insert(id, Source::Kept(path));
        } else {
            // At most the tree's checked total size.
            to_write = to_write.saturating_add(f.size);
            plan.sources.entry(id).or_insert(Source::Fetched(path));
        }
    }
    // What the .part files of the fetched ones hold already is not written again.
    let resumed: u64 = plan
        .sources
        .iter()
        .filter_map(|(id, s)| match (s, tree.manifest(id)) {
            (Source::Fetched(p), Some(Manifest::File(f))) => Some(part_len(p, f.size)),
            _ => None,
        })
        .sum();
    plan.needed = to_write.saturating_sub(resumed);
    check_space(out, plan.needed)?;
    Ok(plan)
}

/// Bytes in the `.part` of `path` that a resume keeps (none if it is longer
/// than the file: then it is started over).
fn part_len(path: &Path, size: u64) -> u64 {
    std::fs::metadata(part_path(path))
        .map(|m| m.len())
        .ok()
        .filter(|len| *len <= size)
        .unwrap_or(0)
}

/// Fails if the file system that `out` goes to has less than `needed` bytes
/// free (for this user). Where that cannot be asked, the writes will say.
fn check_space(out: &Path, needed: u64) -> Result<(), DownloadError> {
    // `out` may not exist yet: ask about the nearest directory that does.
    let Some(available) = out
        .ancestors()
        .map(|a| {
            if a.as_os_str().is_empty() {
                Path::new(".")
            } else {
                a
            }
        })
        .find(|a| a.exists())
        .and_then(|a| rustix::fs::statvfs(a).ok())
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
    else {
        return Ok(());
    };
    if needed > available {
        return Err(DownloadError::NoSpace {
            path: out.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::{DirEntry, DirManifest, FileManifest};

    fn file(name: &str, data: &[u8]) -> Manifest {
        Manifest::File(FileManifest {
            name: name.into(),
            size: data.len() as u64,
            chunk_size: 1024,
            chunks: data.chunks(1024).map(Hash::of).collect(),
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

    /// `out/a/x` and `out/b/x` (one manifest, 5 bytes), `out/y` (3000 bytes).
    fn shared_tree() -> (TreeManifests, Hash, Hash) {
        let (x, y) = (file("x", b"hello"), file("y", &[7; 3000]));
        let (xid, yid) = (x.id(), y.id());
        let sub = dir(&[("x", xid)]);
        let root = dir(&[("a", sub.id()), ("b", sub.id()), ("y", yid)]);
        let t = TreeManifests::of(root.id(), vec![x, y, sub, root]).unwrap();
        (t, xid, yid)
    }

    /// The plan's action for each file, by walk position.
    fn actions(plan: &Plan, out: &Path, xid: Hash, yid: Hash) -> Vec<String> {
        let files = [
            (2, out.join("a/x"), xid),
            (4, out.join("b/x"), xid),
            (5, out.join("y"), yid),
        ];
        files
            .iter()
            .map(|(i, p, id)| match plan.action(*i, p, id) {
                Action::Keep => "keep".to_string(),
                Action::Fetch => "fetch".to_string(),
                Action::Copy(from) => format!("copy {}", from.strip_prefix(out).unwrap().display()),
            })
            .collect()
    }

    #[test]
    fn a_shared_manifest_is_fetched_to_its_first_path_and_copied_to_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (t, xid, yid) = shared_tree();
        let p = plan(&t, &out).unwrap();
        assert_eq!(actions(&p, &out, xid, yid), ["fetch", "copy a/x", "fetch"]);
        assert_eq!(p.needed, 5 + 5 + 3000);
    }

    #[test]
    fn a_finished_copy_is_kept_and_becomes_the_source_and_parts_count_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("b")).unwrap();
        std::fs::write(out.join("b/x"), b"hello").unwrap();
        std::fs::write(part_path(&out.join("y")), [7; 1024]).unwrap();
        let (t, xid, yid) = shared_tree();
        let p = plan(&t, &out).unwrap();
        assert_eq!(actions(&p, &out, xid, yid), ["copy b/x", "keep", "fetch"]);
        assert_eq!(p.needed, 5 + 3000 - 1024);
        // A file of the right length with other bytes is not finished.
        std::fs::write(out.join("b/x"), b"HELLO").unwrap();
        let p = plan(&t, &out).unwrap();
        assert_eq!(actions(&p, &out, xid, yid), ["fetch", "copy a/x", "fetch"]);
    }

    #[test]
    fn no_space_is_said_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("not/yet/there");
        check_space(&out, 1).unwrap();
        match check_space(&out, u64::MAX) {
            Err(DownloadError::NoSpace {
                path,
                needed,
                available,
            }) => {
                assert_eq!(path, out);
                assert_eq!(needed, u64::MAX);
                assert!(available > 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("not").exists());
    }
}
