//! Chunk files, one per chunk under `store/chunks`, named by its hash.
//!
//! A chunk is published so that a crash leaves it whole or absent: verified,
//! written to a temp file, fsynced, hard-linked under its name, the directory
//! synced. It is verified again when it is read (unless hashed in the last
//! minutes: `verified`), and one that fails is deleted and its files marked incomplete (see the store's module
//! documentation for why reads, not opens, do the hashing).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use super::direct::DirectWriter;
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

    /// Reads a stored chunk and verifies it (unless this store hashed the same
    /// file in the last ten minutes: `verified`): a chunk whose bytes do not
    /// hash to its name (or that is larger than any chunk can be) is
    /// deleted, and is reported as absent.
    pub fn read_chunk(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut reader) = self.open_chunk(hash)? else {
            return Ok(None);
        };
        let data = reader.read_piece(usize::MAX)?;
        Ok(reader.verify().then_some(data))
    }

    /// Opens a stored chunk to read it piece by piece ([`ChunkReader`]); a
    /// chunk larger than any chunk can be is deleted and reported absent.
    pub fn open_chunk(&self, hash: &Hash) -> Result<Option<ChunkReader>, StoreError> {
        let path = self.chunk_path(hash);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path)(e)),
        };
        let meta = file.metadata().map_err(io_err("cannot read", &path))?;
        if meta.len() > u64::from(MAX_CHUNK_SIZE) {
            self.discard_chunk(hash, &path, &meta, "is larger than any chunk");
            return Ok(None);
        }
        Ok(Some(ChunkReader {
            store: self.clone(),
            hash: *hash,
            left: meta.len(),
            path,
            hasher: (!self.inner.verified.is_fresh(hash, &meta)).then(blake3::Hasher::new),
            meta,
            file,
        }))
    }

    /// Starts receiving a chunk of `len` bytes named `hash`: its bytes go to
    /// a temp file as they arrive ([`ChunkWriter`]), within the quota
    /// reserved now. `None` if the chunk is stored already.
    pub fn begin_chunk(&self, hash: &Hash, len: u64) -> Result<Option<ChunkWriter>, StoreError> {
        if self.has_chunk(hash) {
            return Ok(None);
        }
        if len > u64::from(MAX_CHUNK_SIZE) {
            return Err(StoreError::TooLarge { len });
        }
        self.reserve(len)?;
        self.inner.writing.fetch_add(1, Ordering::SeqCst);
        let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.inner.tmp.join(format!("{}{n}", self.inner.tmp_prefix));
        let mut writer = ChunkWriter {
            store: self.clone(),
            hash: *hash,
            len,
            written: 0,
            tmp,
            file: None,
            direct: DirectWriter::none(),
            hasher: blake3::Hasher::new(),
            published: false,
        };
        let file = fs::File::create(&writer.tmp).map_err(io_err("cannot create", &writer.tmp))?;
        writer.direct = DirectWriter::open(&writer.tmp);
        writer.file = Some(file);
        Ok(Some(writer))
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
        self.inner.verified.forget(hash);
        self.inner.suspect.store(true, Ordering::SeqCst);
    }

    /// Notes that the chunk stored under `path` was just verified.
    fn note_verified(&self, hash: &Hash, path: &Path) {
        if let Ok(meta) = fs::metadata(path) {
            self.inner.verified.note(*hash, &meta);
        }
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
        self.put_hashed_chunk(hash, data)
    }

    /// Stores `data` under `hash`, which this process computed from these
    /// very bytes (the chunker's or the sealer's hash of a local file's
    /// chunk): [`put_chunk`](Self::put_chunk) without hashing them again.
    pub(super) fn put_hashed_chunk(&self, hash: &Hash, data: &[u8]) -> Result<Stored, StoreError> {
        let path = self.chunk_path(hash);
        if self.touch_chunk(hash) {
            return Ok(Stored::AlreadyHad);
        }
        let len = data.len() as u64;
        self.reserve(len)?;
        match self.write_new(hash, &path, data) {
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

    fn write_new(&self, hash: &Hash, path: &Path, data: &[u8]) -> Result<Stored, StoreError> {
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
            let f = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
            let direct = DirectWriter::open(&tmp)
                .write_head(data, 0)
                .map_err(io_err("cannot write", &tmp))?;
            f.write_all_at(&data[direct..], direct as u64)
                .map_err(io_err("cannot write", &tmp))?;
            f.sync_data().map_err(io_err("cannot sync", &tmp))?;
            self.publish(&tmp, path)
        })();
        if let Ok(Stored::Written) = result {
            self.note_verified(hash, path);
        }
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Links a synced temp file under its chunk name (atomically; fails if a
    /// concurrent upload of the same chunk got there first) and makes the
    /// name durable: an acknowledged chunk survives power loss.
    fn publish(&self, tmp: &Path, path: &Path) -> Result<Stored, StoreError> {
        let parent = path.parent().unwrap_or(&self.inner.chunks);
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        let published = match fs::hard_link(tmp, path) {
            Ok(()) => Stored::Written,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Stored::AlreadyHad,
            Err(e) => return Err(io_err("cannot publish", path)(e)),
        };
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(published)
    }
}

/// A stored chunk read piece by piece, hashed on the way (unless this store
/// hashed the same file recently): memory stays at one piece whatever the
/// chunk's size. Its bytes are only known good once
/// [`verify`](ChunkReader::verify) says so, so a reader that hands pieces on
/// keeps the last one back until then.
pub struct ChunkReader {
    store: Store,
    hash: Hash,
    path: PathBuf,
    meta: fs::Metadata,
    file: fs::File,
    /// `None`: verified recently, not hashed again.
    hasher: Option<blake3::Hasher>,
    left: u64,
}

impl ChunkReader {
    /// The chunk's size in bytes.
    pub fn len(&self) -> u64 {
        self.meta.len()
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.meta.len() == 0
    }

    /// Bytes not read yet.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// Reads the next piece of at most `max` bytes (fewer only at the end),
    /// straight into the returned buffer.
    pub fn read_piece(&mut self, max: usize) -> Result<Vec<u8>, StoreError> {
        let n = self.left.min(max as u64);
        let mut piece = Vec::with_capacity(n as usize);
        let read = (&self.file)
            .take(n)
            .read_to_end(&mut piece)
            .map_err(io_err("cannot read", &self.path))?;
        if read as u64 != n {
            return Err(io_err("cannot read", &self.path)(
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&piece);
        }
        self.left -= n;
        Ok(piece)
    }

    /// Whether every byte was read and they hash to the chunk's name (or
    /// the same file was verified recently); a chunk that fails is deleted
    /// and its files marked incomplete.
    pub fn verify(self) -> bool {
        let actual = self.hasher.as_ref().map(|h| Hash::from(h.finalize()));
        if self.left == 0 && actual.is_none_or(|a| a == self.hash) {
            if actual.is_some() {
                self.store.inner.verified.note(self.hash, &self.meta);
            }
            return true;
        }
        let why = match actual {
            Some(actual) if self.left == 0 => {
                format!("fails verification (its bytes hash to {actual})")
            }
            _ => "was not read to its end".to_string(),
        };
        if self.left == 0 {
            self.store
                .discard_chunk(&self.hash, &self.path, &self.meta, &why);
        }
        false
    }
}

/// A chunk being received: its bytes go to a temp file as they arrive,
/// hashed on the way, and [`finish`](ChunkWriter::finish) publishes it only
/// if every byte came and they hash to its name. Dropped unfinished, it
/// leaves nothing and gives its quota back.
pub struct ChunkWriter {
    store: Store,
    hash: Hash,
    len: u64,
    written: u64,
    tmp: PathBuf,
    file: Option<fs::File>,
    /// The temp file again, for direct writes where the file system takes
    /// them.
    direct: DirectWriter,
    hasher: blake3::Hasher,
    published: bool,
}

impl ChunkWriter {
    /// Bytes still expected.
    pub fn left(&self) -> u64 {
        self.len - self.written
    }

    /// Appends a piece; more bytes than announced is an error.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), StoreError> {
        let total = self.written + piece.len() as u64;
        if total > self.len {
            return Err(StoreError::TooLarge { len: total });
        }
        let Some(file) = self.file.as_ref() else {
            return Err(StoreError::TooLarge { len: total });
        };
        let direct = self
            .direct
            .write_head(piece, self.written)
            .map_err(io_err("cannot write", &self.tmp))?;
        file.write_all_at(&piece[direct..], self.written + direct as u64)
            .map_err(io_err("cannot write", &self.tmp))?;
        self.hasher.update(piece);
        self.written = total;
        Ok(())
    }

    /// Verifies what arrived and publishes it: fsync, link under its name,
    /// sync the directory.
    pub fn finish(mut self) -> Result<Stored, StoreError> {
        let actual = Hash::from(self.hasher.finalize());
        if actual != self.hash || self.written != self.len {
            return Err(StoreError::BadHash {
                expected: self.hash,
                actual,
            });
        }
        let Some(file) = self.file.take() else {
            return Err(StoreError::TooLarge { len: self.written });
        };
        file.sync_data().map_err(io_err("cannot sync", &self.tmp))?;
        drop(file);
        let path = self.store.chunk_path(&self.hash);
        let stored = self.store.publish(&self.tmp, &path)?;
        self.published = stored == Stored::Written;
        if self.published {
            self.store.note_verified(&self.hash, &path);
        }
        Ok(stored)
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
        if !self.published {
            self.store.release(self.len);
        }
        self.store.inner.writing.fetch_sub(1, Ordering::SeqCst);
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

    #[test]
    fn a_chunk_received_in_pieces_is_published_only_if_whole_and_right() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let h = Hash::of(&data);
        let tmp_files = || fs::read_dir(dir.path().join("store/tmp")).unwrap().count();

        // Wrong bytes: refused, nothing left, quota given back.
        let mut w = store.begin_chunk(&h, data.len() as u64).unwrap().unwrap();
        assert_eq!(store.used(), data.len() as u64, "reserved while receiving");
        w.write(&data[..5000]).unwrap();
        w.write(&vec![0u8; 5000]).unwrap();
        assert!(matches!(w.finish(), Err(StoreError::BadHash { .. })));
        assert!(!store.has_chunk(&h));
        assert_eq!((store.used(), tmp_files()), (0, 0));

        // More than announced: refused at once.
        let mut w = store.begin_chunk(&h, 10).unwrap().unwrap();
        assert!(matches!(
            w.write(&data[..11]),
            Err(StoreError::TooLarge { .. })
        ));
        drop(w);
        // Cut off: dropped unfinished, nothing left.
        let mut w = store.begin_chunk(&h, data.len() as u64).unwrap().unwrap();
        w.write(&data[..100]).unwrap();
        drop(w);
        assert_eq!((store.used(), tmp_files()), (0, 0));

        // Whole and right: published, and read back in pieces.
        let mut w = store.begin_chunk(&h, data.len() as u64).unwrap().unwrap();
        for piece in data.chunks(3000) {
            w.write(piece).unwrap();
        }
        assert_eq!(w.finish().unwrap(), Stored::Written);
        assert!(
            store.begin_chunk(&h, 1).unwrap().is_none(),
            "already stored"
        );
        let mut r = store.open_chunk(&h).unwrap().unwrap();
        let mut back = Vec::new();
        while r.left() > 0 {
            back.extend(r.read_piece(4096).unwrap());
        }
        assert!(r.verify());
        assert_eq!(back, data);
        assert_eq!((store.used(), tmp_files()), (data.len() as u64, 0));
    }

    #[test]
    fn a_corrupt_chunk_read_in_pieces_fails_verification_and_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let data = vec![7u8; 9000];
        let h = Hash::of(&data);
        store.put_chunk(&h, &data).unwrap();
        let path = store.chunk_path(&h);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8999] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut r = store.open_chunk(&h).unwrap().unwrap();
        while r.left() > 0 {
            r.read_piece(4096).unwrap();
        }
        assert!(!r.verify());
        assert!(!store.has_chunk(&h), "deleted");
        assert_eq!(store.used(), 0);
    }
}
