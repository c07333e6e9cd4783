//! Chunk files, one per chunk under `store/chunks`, named by its hash.
//!
//! A chunk is published so that a crash leaves it whole or absent: verified,
//! written to a temp file, fsynced, hard-linked under its name, the directory
//! synced. It is verified again each time it is read, and one that fails is
//! deleted and its files marked incomplete (see the store's module
//! documentation for why reads, not opens, do the hashing).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::{io_err, Store, StoreError};
use crate::proto::manifest::MAX_CHUNK_SIZE;
use crate::proto::Hash;

/// Whether [`Store::put_chunk`] wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The chunk was new and is now on disk.
    Written,
    /// The chunk was already there.
    AlreadyHad,
}

impl Store {
    pub(super) fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let name = hash.to_string();
        self.inner.chunks.join(&name[..2]).join(name)
    }

    /// Whether the chunk is stored.
    pub fn has_chunk(&self, hash: &Hash) -> bool {
        self.chunk_path(hash).is_file()
    }

    /// Whether the chunk is stored; if it is, it counts as new for the
    /// garbage grace period (it is wanted again: a copy is arriving that uses
    /// it).
    pub fn touch_chunk(&self, hash: &Hash) -> bool {
        let path = self.chunk_path(hash);
        match fs::File::options().write(true).open(&path) {
            Ok(f) => {
                let _ = f.set_modified(std::time::SystemTime::now());
                // A garbage pass moves a chunk aside before it looks at its
                // age again: still under its name after the touch means the
                // pass will see the new age and keep it.
                path.is_file()
            }
            Err(_) => path.is_file(),
        }
    }

    /// Reads a stored chunk and verifies it: a chunk whose bytes do not hash to
    /// its name (or that is larger than any chunk can be) is deleted, and is
    /// reported as absent. Never returns bytes that fail verification.
    pub fn read_chunk(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.chunk_path(hash);
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let meta = file.metadata().map_err(io_err("cannot read", &path))?;
        let max = u64::from(MAX_CHUNK_SIZE);
        if meta.len() > max {
            self.discard_chunk(hash, &path, &meta, "is larger than any chunk");
            return Ok(None);
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(io_err("cannot read", &path))?;
        let actual = Hash::of(&data);
        if actual != *hash {
            self.discard_chunk(
                hash,
                &path,
                &meta,
                &format!("fails verification (its bytes hash to {actual})"),
            );
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// Deletes a chunk found bad on reading (the file that was read, not a
    /// good copy stored since by someone else) and marks its files incomplete.
    fn discard_chunk(&self, hash: &Hash, path: &Path, read: &fs::Metadata, why: &str) {
        let same = fs::symlink_metadata(path)
            .is_ok_and(|m| m.ino() == read.ino() && m.dev() == read.dev());
        if same {
            match fs::remove_file(path) {
                Ok(()) => {
                    self.release(read.len());
                    warn!(
                        "stored chunk {hash} {why}: deleted (disk corruption?); files using it \
                         are incomplete until it is stored again"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("stored chunk {hash} {why}, and cannot be deleted: {e}"),
            }
        }
        self.inner.suspect.store(true, Ordering::SeqCst);
    }

    /// Verifies `data` against `hash` and stores it: temp file, fsync, rename.
    pub fn put_chunk(&self, hash: &Hash, data: &[u8]) -> Result<Stored, StoreError> {
        let actual = Hash::of(data);
        if actual != *hash {
            return Err(StoreError::BadHash {
                expected: *hash,
                actual,
            });
        }
        let path = self.chunk_path(hash);
        if self.touch_chunk(hash) {
            return Ok(Stored::AlreadyHad);
        }
        let len = data.len() as u64;
        self.reserve(len)?;
        match self.write_new(&path, data) {
            Ok(Stored::Written) => Ok(Stored::Written),
            Ok(Stored::AlreadyHad) => {
                self.release(len);
                Ok(Stored::AlreadyHad)
            }
            Err(e) => {
                self.release(len);
                Err(e)
            }
        }
    }

    /// Waits up to `timeout` for the chunk writes under way to finish (each
    /// removes its temp file); true if none is left. A node shutting down
    /// calls it last, so a process that exits leaves no temp file behind.
    pub fn wait_writes(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.inner.writing.load(Ordering::SeqCst) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> Result<Stored, StoreError> {
        struct Writing<'a>(&'a AtomicU64);
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.writing.fetch_add(1, Ordering::SeqCst);
        let _writing = Writing(&self.inner.writing);
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.tmp.join(format!("{}{n}", self.inner.tmp_prefix));
        let result = (|| {
            let mut f = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            f.write_all(data).map_err(io_err("cannot write", &tmp))?;
            f.sync_data().map_err(io_err("cannot sync", &tmp))?;
            let parent = path.parent().unwrap_or(&self.inner.chunks);
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
            // A hard link publishes atomically and, unlike rename, fails if a
            // concurrent upload of the same chunk got there first.
            let published = match fs::hard_link(&tmp, path) {
                Ok(()) => Stored::Written,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Stored::AlreadyHad,
                Err(e) => return Err(io_err("cannot publish", path)(e)),
            };
            // Make the new name durable: an acknowledged chunk survives power loss.
            if let Ok(dir) = fs::File::open(parent) {
                let _ = dir.sync_all();
            }
            Ok(published)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}

/// Bytes of chunk data under `chunks`; files that cannot be chunks (a name
/// that is not a hash, or in the wrong directory) are removed on the way.
pub(super) fn scan_chunks(chunks: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut strays = 0;
    let remove = |path: &Path, strays: &mut usize| match fs::remove_file(path) {
        Ok(()) => *strays += 1,
        Err(e) => warn!("cannot remove stray {}: {e}", path.display()),
    };
    for dir in fs::read_dir(chunks).map_err(io_err("cannot list", chunks))? {
        let dir = dir.map_err(io_err("cannot list", chunks))?;
        let Ok(kind) = dir.file_type() else { continue };
        if !kind.is_dir() {
            if kind.is_file() {
                remove(&dir.path(), &mut strays);
            }
            continue;
        }
        let prefix = dir.file_name();
        let Ok(files) = fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name();
            let is_chunk = name
                .to_str()
                .is_some_and(|n| n.parse::<Hash>().is_ok() && prefix.to_str() == n.get(..2));
            let Ok(meta) = f.metadata() else { continue };
            if is_chunk && meta.is_file() {
                total += meta.len();
            } else if meta.is_file() {
                remove(&f.path(), &mut strays);
            }
        }
    }
    if strays > 0 {
        warn!("removed {strays} stray file(s) from {}", chunks.display());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::held_file;

    #[test]
    fn chunks_are_verified_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let data = b"hello chunk".to_vec();
        let h = Hash::of(&data);
        assert!(matches!(
            store.put_chunk(&h, b"tampered"),
            Err(StoreError::BadHash { .. })
        ));
        assert!(!store.has_chunk(&h));
        assert_eq!(store.put_chunk(&h, &data).unwrap(), Stored::Written);
        assert_eq!(store.put_chunk(&h, &data).unwrap(), Stored::AlreadyHad);
        assert_eq!(store.used(), data.len() as u64);
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.read_chunk(&h).unwrap(), Some(data.clone()));
        assert_eq!(store.used(), data.len() as u64);
    }

    #[test]
    fn a_corrupt_chunk_is_deleted_on_read_and_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        assert!(store.holds(&id).unwrap());
        let used = store.used();
        let bad = &paths[1];
        let hash: Hash = bad.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let mut bytes = fs::read(bad).unwrap();
        bytes[10] ^= 1;
        fs::write(bad, &bytes).unwrap();

        assert_eq!(store.read_chunk(&hash).unwrap(), None, "never served");
        assert!(!bad.exists(), "deleted");
        assert_eq!(store.used(), used - bytes.len() as u64);
        assert!(!store.holds(&id).unwrap(), "not held while incomplete");
        let files = store.files().unwrap();
        assert_eq!(files.len(), 1);
        assert!(!files[0].complete);

        // Stored again (a repair) and held again (its HOLD): complete.
        bytes[10] ^= 1;
        assert_eq!(store.put_chunk(&hash, &bytes).unwrap(), Stored::Written);
        assert_eq!(store.read_chunk(&hash).unwrap(), Some(bytes));
        assert!(store.files().unwrap()[0].complete);
        assert!(store.holds(&id).unwrap());
        assert_eq!(store.used(), used);
    }

    #[test]
    fn quota_refuses_without_half_writing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100).unwrap();
        let a = vec![1u8; 60];
        let b = vec![2u8; 60];
        store.put_chunk(&Hash::of(&a), &a).unwrap();
        let err = store.put_chunk(&Hash::of(&b), &b).unwrap_err();
        assert!(matches!(err, StoreError::OverQuota { .. }), "{err}");
        assert!(!store.has_chunk(&Hash::of(&b)));
        assert_eq!(store.read_chunk(&Hash::of(&a)).unwrap(), Some(a));
        assert_eq!(
            fs::read_dir(dir.path().join("store/tmp")).unwrap().count(),
            0
        );
    }
}
