//! What a download writes, decided before it writes anything: for each file
//! of the tree, whether it is kept (an earlier attempt finished it), fetched,
//! or copied; that nothing else is in the way; and whether the disk has room
//! for it all.
//!
//! A file already at a path of the tree is kept if it is exactly the file the
//! download would write (every chunk verified): that is how a download
//! resumes. Anything else there is someone's file, and is not overwritten
//! unless the download is forced
//! ([`DownloadOptions::force`](crate::download::DownloadOptions::force)). The `.part`
//! files a download writes through are its own: they are resumed, and a
//! tree's `x.part` beside its `x` may find `x`'s download there.
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

/// Plans writing `tree` to `out`, replacing files in the way if `force`
/// (blocking: it reads what is there, and hashes the files that look
/// finished).
pub(super) fn plan(tree: &TreeManifests, out: &Path, force: bool) -> Result<Plan, DownloadError> {
    let mut plan = Plan::default();
    let mut to_write = 0u64;
    for (index, item) in tree.walk(out).enumerate() {
        let (path, id, f, part_of_sibling) = match item? {
            Item::Dir(path) => {
                check_dir(&path)?;
                continue;
            }
            Item::File {
                path,
                id,
                manifest,
                part_of_sibling,
            } => (path, id, manifest, part_of_sibling),
        };
        if is_finished(&path, f, None).map_err(io(&path))? {
            plan.kept.insert(index);
            // A kept copy is the best source: nothing to fetch.
            plan.sources.insert(id, Source::Kept(path));
            continue;
        }
        check_file(&path, force || part_of_sibling)?;
        // At most the tree's checked total size.
        to_write = to_write.saturating_add(f.size);
        plan.sources.entry(id).or_insert(Source::Fetched(path));
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

/// Fails unless a directory can be at `path`: nothing is there, or a
/// directory (or a link to one) is.
pub(super) fn check_dir(path: &Path) -> Result<(), DownloadError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DownloadError::InTheWay {
            path: path.to_path_buf(),
            wanted: "directory",
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Fails unless a file not finished yet may be written at `path`: nothing
/// is there, or a file (or link) that may be `replaced`.
pub(super) fn check_file(path: &Path, replace: bool) -> Result<(), DownloadError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(DownloadError::InTheWay {
            path: path.to_path_buf(),
            wanted: "file",
        }),
        Ok(_) if replace => Ok(()),
        Ok(_) => Err(DownloadError::Exists(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
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
pub(super) fn check_space(out: &Path, needed: u64) -> Result<(), DownloadError> {
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
        let p = plan(&t, &out, false).unwrap();
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
        let p = plan(&t, &out, false).unwrap();
        assert_eq!(actions(&p, &out, xid, yid), ["copy b/x", "keep", "fetch"]);
        assert_eq!(p.needed, 5 + 3000 - 1024);
    }

    #[test]
    fn a_file_in_the_way_is_refused_by_name_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("b")).unwrap();
        // The right length, other bytes: someone's file, not the download's.
        std::fs::write(out.join("b/x"), b"HELLO").unwrap();
        let (t, xid, yid) = shared_tree();
        match plan(&t, &out, false) {
            Err(e @ DownloadError::Exists(_)) => {
                assert!(e
                    .to_string()
                    .contains(&format!("{}", out.join("b/x").display())))
            }
            other => panic!("{:?}", other.map(|p| p.needed)),
        }
        let p = plan(&t, &out, true).unwrap();
        assert_eq!(actions(&p, &out, xid, yid), ["fetch", "copy a/x", "fetch"]);
        assert_eq!(
            std::fs::read(out.join("b/x")).unwrap(),
            b"HELLO",
            "untouched"
        );
    }

    #[test]
    fn a_file_where_a_directory_goes_and_back_is_in_the_way_even_forced() {
        let (t, _, _) = shared_tree();
        for (what, wanted) in [("a", "directory"), ("y", "file")] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("out");
            std::fs::create_dir_all(&out).unwrap();
            match wanted {
                "directory" => std::fs::write(out.join(what), b"a file").unwrap(),
                _ => std::fs::create_dir(out.join(what)).unwrap(),
            }
            for force in [false, true] {
                match plan(&t, &out, force) {
                    Err(DownloadError::InTheWay { path, wanted: w }) => {
                        assert_eq!((path, w), (out.join(what), wanted));
                    }
                    other => panic!("{:?}", other.map(|p| p.needed)),
                }
            }
        }
    }

    #[test]
    fn the_part_of_a_file_beside_it_is_not_someone_elses_file() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let (x, xp) = (file("x", b"hello"), file("x.part", b"other"));
        let root = dir(&[("x", x.id()), ("x.part", xp.id())]);
        let t = TreeManifests::of(root.id(), vec![x, xp, root]).unwrap();
        // An interrupted download of x left x.part: resumed, not refused.
        std::fs::write(out.join("x.part"), b"hel").unwrap();
        let p = plan(&t, &out, false).unwrap();
        assert_eq!(p.needed, 5 + 5 - 3);
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
