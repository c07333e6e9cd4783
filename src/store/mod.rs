//! The node's content-addressed store: chunk files on disk, manifests and the
//! list of held files in redb.
//!
//! Layout under the data directory:
//!
//! ```text
//! store/chunks/ab/ab…(52 chars)   one file per chunk, named by its BLAKE3 hash
//! store/tmp/                      chunks being written; emptied at open
//! store/meta.redb                 manifests and held files (crash-safe, ACID)
//! ```
//!
//! A chunk is verified against its hash before it is written, written to a temp
//! file, fsynced, then linked into place (and the directory synced): after a
//! crash it is whole or absent, and once acknowledged it stays.
//! The quota is checked before writing, never by half-writing. All methods are
//! blocking; async callers use `spawn_blocking`.
//!
//! # Consistency after a crash
//!
//! [`Store::open`] runs a pass that costs one `readdir` and `stat` per chunk and
//! no hashing:
//!
//! - `store/tmp` is emptied: the only place a write in progress (a crash, or a
//!   process that exited while a chunk was being stored) leaves anything;
//! - files in `store/chunks` that cannot be chunks (a name that is not a hash,
//!   or in the wrong directory) are removed and not counted against the quota;
//! - every held file is checked for missing chunks or manifests; one with a
//!   piece missing is *incomplete*: [`Store::files`] says so, [`Store::holds`]
//!   says no (so the node neither answers HAS for it, lists itself as its
//!   provider, nor republishes it) until its pieces are stored again and it is
//!   held anew (a HOLD, or an import).
//!
//! # Garbage
//!
//! Chunks and manifests that no held file uses (an incoming copy cut off
//! before its HOLD, by a crash, a dead link or a peer that never finished)
//! are collected by [`Store::collect_garbage`], which the node runs every
//! `gc_interval`. A chunk is collected once its file is older than the grace
//! period (storing it again, even as a duplicate, makes it new), a manifest
//! once two passes at least the grace period apart found it unused: a copy
//! still arriving is never collected under it.
//!
//! Chunks are not hashed at open. The publish protocol means a crash cannot
//! leave a chunk torn under its final name, so hashing the whole store at every
//! start (minutes for a large store) would only look for media corruption,
//! which strikes at any time, not just around crashes. Instead every chunk is
//! hashed each time it is read ([`Store::read_chunk`], which serves peers and
//! feeds repairs): a chunk that fails is deleted, counted out of the quota, its
//! files become incomplete, and the reader gets "not found", so a corrupt chunk
//! is never served and is fetched again from another holder by repair. BLAKE3
//! runs at several GB/s, less than the QUIC encryption the bytes go through next.

pub mod chunker;
pub mod datadir;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::proto::manifest::{Manifest, MAX_CHUNK_SIZE};
use crate::proto::Hash;

const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
const FILES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("files");
/// Routing-table contacts: node id -> postcard `Vec<SocketAddr>`.
const CONTACTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("dht_contacts");
/// Provider records: key ++ provider id -> postcard `(Vec<SocketAddr>, expiry unix secs)`.
const PROVIDERS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("dht_providers");

/// A provider record as persisted: key, provider, addresses, expiry.
pub type SavedProvider = (
    crate::proto::NodeId,
    crate::proto::NodeId,
    Vec<std::net::SocketAddr>,
    std::time::SystemTime,
);

/// Most distinct manifests in one file tree.
pub const MAX_TREE_MANIFESTS: usize = 1_000_000;

/// redb's page cache: small, the data lives in chunk files.
const DB_CACHE: usize = 16 << 20;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bytes do not hash to the name they were offered under.
    #[error("chunk {expected} failed verification (bytes hash to {actual})")]
    BadHash {
        /// The name.
        expected: Hash,
        /// What the bytes hash to.
        actual: Hash,
    },
    /// Storing would exceed `--max-storage`.
    #[error("storage quota exceeded: {used} of {quota} bytes used, {wanted} more needed")]
    OverQuota {
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
        /// Bytes asked for.
        wanted: u64,
    },
    /// A manifest did not decode.
    #[error("invalid manifest: {0}")]
    BadManifest(#[from] crate::proto::wire::WireError),
    /// Disk I/O failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Db(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What the store knows about a file it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The name from the manifest.
    pub name: String,
    /// Total size in bytes (of every file, for a directory).
    pub size: u64,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// A held file, as listed by [`Store::files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFile {
    /// The file id.
    pub id: Hash,
    /// Name, size, kind.
    pub record: FileRecord,
    /// Whether every chunk is present.
    pub complete: bool,
}

/// Whether [`Store::put_chunk`] wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The chunk was new and is now on disk.
    Written,
    /// The chunk was already there.
    AlreadyHad,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    chunks: PathBuf,
    tmp: PathBuf,
    db: redb::Database,
    quota: u64,
    used: Mutex<u64>,
    tmp_counter: AtomicU64,
    /// Names this store's temp files start with: unique per open store, even
    /// for two opened in one process (a node restarted in a test).
    tmp_prefix: String,
    /// Held files with a chunk or manifest missing (see [`Store::holds`]).
    incomplete: Mutex<HashSet<Hash>>,
    /// A chunk was deleted since `incomplete` was computed.
    suspect: AtomicBool,
    /// Chunk writes under way (each may have a temp file).
    writing: AtomicU64,
    /// Held by a garbage pass, and by [`Store::add_file`]: a file cannot
    /// become held while a pass is deciding what is unused.
    gc: Mutex<()>,
    /// Unused manifests seen by a garbage pass, and when first seen.
    unused_manifests: Mutex<std::collections::HashMap<Hash, std::time::Instant>>,
}

/// What a garbage pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unused chunks deleted.
    pub chunks: usize,
    /// Unused manifests deleted.
    pub manifests: usize,
    /// Bytes given back to the quota.
    pub bytes: u64,
    /// Unused pieces kept for now, being younger than the grace period.
    pub young: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No clone of this store is left, so none of its writes is under way:
        // none of its temp files is live. (A process that exits without
        // dropping its store leaves them to the next open.)
        let Ok(entries) = fs::read_dir(&self.tmp) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&self.tmp_prefix))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Stores opened by this process, for unique temp file names.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// Empties the temp directory (creating it if needed).
fn clear_tmp(tmp: &Path) {
    match fs::remove_dir_all(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!("cannot clear {}: {e}", tmp.display()),
    }
    if let Err(e) = fs::create_dir_all(tmp) {
        warn!("cannot create {}: {e}", tmp.display());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

impl Store {
    /// Opens (or creates) the store under `dir` with a quota of `quota` bytes of
    /// chunk data, and makes it consistent after a crash (see the module
    /// documentation): leftover temp files and stray files are removed, and
    /// held files with a piece missing are marked incomplete.
    pub fn open(dir: &Path, quota: u64) -> Result<Store, StoreError> {
        let root = dir.join("store");
        let chunks = root.join("chunks");
        let tmp = root.join("tmp");
        fs::create_dir_all(&chunks).map_err(io_err("cannot create", &chunks))?;
        clear_tmp(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err("cannot create", &tmp))?;
        let db = redb::Database::builder()
            .set_cache_size(DB_CACHE)
            .create(root.join("meta.redb"))?;
        {
            let tx = db.begin_write()?;
            tx.open_table(MANIFESTS)?;
            tx.open_table(FILES)?;
            tx.open_table(CONTACTS)?;
            tx.open_table(PROVIDERS)?;
            tx.commit()?;
        }
        let mut used = scan_chunks(&chunks)?;
        {
            let tx = db.begin_read()?;
            for row in tx.open_table(MANIFESTS)?.iter()? {
                let (_, v) = row?;
                used += v.value().len() as u64;
            }
        }
        let store = Store {
            inner: Arc::new(Inner {
                chunks,
                tmp,
                db,
                quota,
                used: Mutex::new(used),
                tmp_counter: AtomicU64::new(0),
                tmp_prefix: format!(
                    "{}-{}-",
                    std::process::id(),
                    OPENED.fetch_add(1, Ordering::Relaxed)
                ),
                incomplete: Mutex::new(HashSet::new()),
                suspect: AtomicBool::new(false),
                writing: AtomicU64::new(0),
                gc: Mutex::new(()),
                unused_manifests: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        let incomplete = store.files()?.iter().filter(|f| !f.complete).count();
        if incomplete > 0 {
            warn!(
                "{incomplete} held file(s) have chunks missing: not served or announced until \
                 stored again"
            );
        }
        Ok(store)
    }

    fn chunk_path(&self, hash: &Hash) -> PathBuf {
        let name = hash.to_string();
        self.inner.chunks.join(&name[..2]).join(name)
    }

    /// Bytes of chunk data stored.
    pub fn used(&self) -> u64 {
        *self.inner.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.inner.quota
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

    /// Checks the quota for `wanted` more bytes and reserves them.
    fn reserve(&self, wanted: u64) -> Result<(), StoreError> {
        let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
        if used.saturating_add(wanted) > self.inner.quota {
            return Err(StoreError::OverQuota {
                used: *used,
                quota: self.inner.quota,
                wanted,
            });
        }
        *used += wanted;
        Ok(())
    }

    fn release(&self, bytes: u64) {
        let mut used = self.inner.used.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(bytes);
    }

    /// Whether `wanted` more bytes would fit.
    pub fn fits(&self, wanted: u64) -> bool {
        self.used().saturating_add(wanted) <= self.inner.quota
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

    /// Stores a manifest (validated) and returns its id.
    ///
    /// Manifest bytes count against the quota like chunk bytes.
    pub fn put_manifest(&self, bytes: &[u8]) -> Result<(Hash, Manifest), StoreError> {
        let manifest = Manifest::decode(bytes)?;
        let id = Hash::of(bytes);
        if self.touch_manifest(&id)? {
            return Ok((id, manifest));
        }
        let len = bytes.len() as u64;
        self.reserve(len)?;
        let result = (|| {
            let tx = self.inner.db.begin_write()?;
            tx.open_table(MANIFESTS)?.insert(id.as_bytes(), bytes)?;
            tx.commit()?;
            Ok::<(), StoreError>(())
        })();
        if let Err(e) = result {
            self.release(len);
            return Err(e);
        }
        Ok((id, manifest))
    }

    /// Whether the manifest is stored; if it is, a garbage pass starts its
    /// grace period again (a copy is arriving that uses it).
    pub fn touch_manifest(&self, id: &Hash) -> Result<bool, StoreError> {
        // Under the lock a garbage pass holds while it deletes manifests: a
        // manifest found here is not deleted by the pass under way.
        let mut unused = lock(&self.inner.unused_manifests);
        let present = self.manifest_bytes(id)?.is_some();
        if present {
            unused.remove(id);
        }
        Ok(present)
    }

    /// The encoded manifest with this id.
    pub fn manifest_bytes(&self, id: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(MANIFESTS)?;
        Ok(table.get(id.as_bytes())?.map(|v| v.value().to_vec()))
    }

    /// The decoded manifest with this id.
    pub fn manifest(&self, id: &Hash) -> Result<Option<Manifest>, StoreError> {
        match self.manifest_bytes(id)? {
            Some(b) => Ok(Some(Manifest::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// Records that this node holds the file or tree `id` (every manifest and
    /// chunk of it must be stored already).
    ///
    /// Returns whether it is complete: a garbage pass that ended just before
    /// may have taken a piece the caller saw, and then the file is recorded
    /// but marked incomplete until the piece is stored again.
    pub fn add_file(&self, id: &Hash, record: &FileRecord) -> Result<bool, StoreError> {
        let bytes = postcard::to_allocvec(record).map_err(|e| StoreError::Db(e.to_string()))?;
        let _gc = lock(&self.inner.gc);
        let tx = self.inner.db.begin_write()?;
        tx.open_table(FILES)?
            .insert(id.as_bytes(), bytes.as_slice())?;
        tx.commit()?;
        // A garbage pass that ended just before may have taken a piece the
        // caller saw: held, but marked incomplete until it is stored again.
        let complete = self.missing_chunks(id)?.is_some_and(|m| m.is_empty());
        let mut incomplete = lock(&self.inner.incomplete);
        if complete {
            incomplete.remove(id);
        } else {
            incomplete.insert(*id);
        }
        Ok(complete)
    }

    /// Deletes the chunks and manifests no held file uses (complete or not)
    /// and no copy still arriving needs (see the module documentation).
    ///
    /// Manifests not reachable from a held file are *unused*. An unused
    /// manifest is *young* if a pass first found it unused less than `grace`
    /// ago (or just now), or if it is a file's and one of its chunks is younger
    /// than `grace`. Young manifests, the directories above them and
    /// everything below those are kept with their chunks: a tree whose chunks
    /// are still arriving stays whole. Everything else that is unused and
    /// older than `grace` goes.
    pub fn collect_garbage(&self, grace: std::time::Duration) -> Result<GcReport, StoreError> {
        use std::collections::HashMap;
        let _gc = lock(&self.inner.gc);
        let mut report = GcReport::default();
        let now = std::time::Instant::now();
        let wall = std::time::SystemTime::now();
        let age_of = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| wall.duration_since(m).ok())
                .unwrap_or_default()
        };

        let manifests: HashMap<Hash, Option<Manifest>> = {
            let tx = self.inner.db.begin_read()?;
            let table = tx.open_table(MANIFESTS)?;
            let mut out = HashMap::new();
            for row in table.iter()? {
                let (k, v) = row?;
                out.insert(
                    Hash::from_bytes(*k.value()),
                    Manifest::decode(v.value()).ok(),
                );
            }
            out
        };
        let held: Vec<Hash> = {
            let tx = self.inner.db.begin_read()?;
            let table = tx.open_table(FILES)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                out.push(Hash::from_bytes(*row?.0.value()));
            }
            out
        };
        let below = |roots: Vec<Hash>, keep: &mut HashSet<Hash>| {
            let mut stack = roots;
            while let Some(id) = stack.pop() {
                if !keep.insert(id) {
                    continue;
                }
                if let Some(Some(Manifest::Dir(d))) = manifests.get(&id) {
                    stack.extend(d.entries.iter().map(|e| e.id));
                }
            }
        };
        let mut keep = HashSet::new();
        below(held, &mut keep);

        // Unused manifests: which are young (a copy may still be arriving).
        let young: Vec<Hash> = {
            let mut seen = lock(&self.inner.unused_manifests);
            seen.retain(|id, _| manifests.contains_key(id) && !keep.contains(id));
            let mut young = Vec::new();
            for (id, m) in &manifests {
                if keep.contains(id) {
                    continue;
                }
                let first = *seen.entry(*id).or_insert(now);
                let fresh = first == now || now.saturating_duration_since(first) < grace;
                let arriving = || match m {
                    Some(Manifest::File(f)) => f.chunks.iter().any(|h| {
                        fs::metadata(self.chunk_path(h)).is_ok_and(|meta| age_of(&meta) < grace)
                    }),
                    _ => false,
                };
                if fresh || arriving() {
                    young.push(*id);
                }
            }
            young
        };
        // The directories above a young manifest, then everything below them.
        let mut parents: HashMap<Hash, Vec<Hash>> = HashMap::new();
        for (id, m) in &manifests {
            if let Some(Manifest::Dir(d)) = m {
                for e in &d.entries {
                    parents.entry(e.id).or_default().push(*id);
                }
            }
        }
        let mut roots = HashSet::new();
        let mut stack = young;
        while let Some(id) = stack.pop() {
            if roots.insert(id) {
                stack.extend(parents.get(&id).into_iter().flatten().copied());
            }
        }
        let stored =
            |keep: &HashSet<Hash>| keep.iter().filter(|id| manifests.contains_key(*id)).count();
        let used = stored(&keep);
        below(roots.into_iter().collect(), &mut keep);
        report.young = stored(&keep) - used;
        let chunks: HashSet<Hash> = keep
            .iter()
            .filter_map(|id| match manifests.get(id) {
                Some(Some(Manifest::File(f))) => Some(f.chunks.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();

        // Chunks: those no kept manifest names, older than `grace`. Each is
        // moved aside and its age checked again before it is deleted, so one
        // stored again meanwhile (`touch_chunk`) is put back.
        let dirs =
            fs::read_dir(&self.inner.chunks).map_err(io_err("cannot list", &self.inner.chunks))?;
        for dir in dirs.flatten() {
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let Some(hash) = f.file_name().to_str().and_then(|n| n.parse::<Hash>().ok()) else {
                    continue;
                };
                if chunks.contains(&hash) {
                    continue;
                }
                let Ok(meta) = f.metadata() else { continue };
                if age_of(&meta) < grace {
                    report.young += 1;
                    continue;
                }
                let n = self.inner.tmp_counter.fetch_add(1, Ordering::Relaxed);
                let aside = self
                    .inner
                    .tmp
                    .join(format!("{}gc-{n}", self.inner.tmp_prefix));
                if fs::rename(f.path(), &aside).is_err() {
                    continue;
                }
                let again = fs::metadata(&aside).map(|m| age_of(&m)).unwrap_or_default();
                if again < grace {
                    // Wanted again just now: put back (unless a new copy was
                    // stored under the name meanwhile, which is the same bytes).
                    let _ = fs::hard_link(&aside, f.path());
                    let _ = fs::remove_file(&aside);
                    report.young += 1;
                    continue;
                }
                match fs::remove_file(&aside) {
                    Ok(()) => {
                        self.release(meta.len());
                        report.chunks += 1;
                        report.bytes += meta.len();
                    }
                    Err(e) => warn!("cannot remove unused chunk {hash}: {e}"),
                }
            }
        }

        // Manifests: those not kept, unless stored again since the pass began
        // (`touch_manifest` forgets them).
        let mut seen = lock(&self.inner.unused_manifests);
        let doomed: Vec<Hash> = manifests
            .keys()
            .filter(|id| !keep.contains(*id) && seen.contains_key(*id))
            .copied()
            .collect();
        if !doomed.is_empty() {
            let tx = self.inner.db.begin_write()?;
            let mut freed = 0u64;
            {
                let mut table = tx.open_table(MANIFESTS)?;
                for id in &doomed {
                    if let Some(v) = table.remove(id.as_bytes())? {
                        freed += v.value().len() as u64;
                    }
                }
            }
            tx.commit()?;
            for id in &doomed {
                seen.remove(id);
            }
            self.release(freed);
            report.manifests += doomed.len();
            report.bytes += freed;
        }
        Ok(report)
    }

    /// Whether the file or tree `id` is held and complete: recorded as held,
    /// and not found missing a piece (at open, by [`Store::files`], or since a
    /// chunk of it failed verification).
    pub fn holds(&self, id: &Hash) -> Result<bool, StoreError> {
        let recorded = {
            let tx = self.inner.db.begin_read()?;
            tx.open_table(FILES)?.get(id.as_bytes())?.is_some()
        };
        if !recorded {
            return Ok(false);
        }
        if self.inner.suspect.load(Ordering::SeqCst) {
            // A chunk was deleted: find the files it belonged to (rare).
            self.files()?;
        }
        Ok(!lock(&self.inner.incomplete).contains(id))
    }

    /// Every held file, with whether all its chunks are present (which also
    /// refreshes what [`Store::holds`] knows to be incomplete).
    pub fn files(&self) -> Result<Vec<HeldFile>, StoreError> {
        self.inner.suspect.store(false, Ordering::SeqCst);
        let records: Vec<(Hash, FileRecord)> = {
            let tx = self.inner.db.begin_read()?;
            let table = tx.open_table(FILES)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                if let Ok(record) = postcard::from_bytes::<FileRecord>(v.value()) {
                    out.push((Hash::from_bytes(*k.value()), record));
                }
            }
            out
        };
        let held = records
            .into_iter()
            .map(|(id, record)| {
                let complete = self.missing_chunks(&id)?.is_some_and(|m| m.is_empty());
                Ok(HeldFile {
                    id,
                    record,
                    complete,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        *lock(&self.inner.incomplete) = held.iter().filter(|f| !f.complete).map(|f| f.id).collect();
        Ok(held)
    }

    /// The chunks of file or tree `id` not yet stored, or `None` if a manifest
    /// in it is missing.
    pub fn missing_chunks(&self, id: &Hash) -> Result<Option<Vec<Hash>>, StoreError> {
        let Some(tree) = self.tree(id)? else {
            return Ok(None);
        };
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, m) in &tree {
            if let Manifest::File(f) = m {
                for h in &f.chunks {
                    if seen.insert(*h) && !self.has_chunk(h) {
                        missing.push(*h);
                    }
                }
            }
        }
        Ok(Some(missing))
    }

    /// Every file manifest in the tree `id`, with the manifests' ids (the root
    /// first). `None` if one is missing.
    ///
    /// Each distinct manifest is visited once (a hostile peer can make a
    /// directory graph whose paths number in the billions), and a tree of more
    /// than [`MAX_TREE_MANIFESTS`] manifests counts as incomplete.
    pub fn tree(&self, id: &Hash) -> Result<Option<Vec<(Hash, Manifest)>>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![*id];
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if seen.len() > MAX_TREE_MANIFESTS {
                return Ok(None);
            }
            let Some(m) = self.manifest(&id)? else {
                return Ok(None);
            };
            if let Manifest::Dir(d) = &m {
                stack.extend(d.entries.iter().rev().map(|e| e.id));
            }
            out.push((id, m));
        }
        Ok(Some(out))
    }

    /// Imports a local file or directory: chunks and manifests are stored and
    /// the root is recorded as held.
    pub fn import(
        &self,
        path: &Path,
        chunk_size: u32,
    ) -> Result<crate::store::chunker::Tree, ImportError> {
        let mut store_err = None;
        let tree = crate::store::chunker::build_tree(path, chunk_size, &mut |hash, data, _| {
            self.put_chunk(&hash, data).map(|_| ()).map_err(|e| {
                let msg = e.to_string();
                store_err = Some(e);
                std::io::Error::other(msg)
            })
        });
        if let Some(e) = store_err {
            return Err(e.into());
        }
        let tree = tree?;
        for (_, bytes) in &tree.manifests {
            self.put_manifest(bytes)?;
        }
        let root = tree.root_manifest();
        self.add_file(
            &tree.root,
            &FileRecord {
                name: root
                    .as_ref()
                    .map(|m| m.name().to_string())
                    .unwrap_or_default(),
                size: tree.size,
                is_dir: matches!(root, Some(Manifest::Dir(_))),
            },
        )?;
        Ok(tree)
    }

    /// Replaces the saved routing-table contacts and provider records.
    pub fn save_dht(
        &self,
        contacts: &[(crate::proto::NodeId, Vec<std::net::SocketAddr>)],
        providers: &[SavedProvider],
    ) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_write()?;
        tx.delete_table(CONTACTS)?;
        tx.delete_table(PROVIDERS)?;
        {
            let mut t = tx.open_table(CONTACTS)?;
            for (id, addrs) in contacts {
                let v = postcard::to_allocvec(addrs).map_err(|e| StoreError::Db(e.to_string()))?;
                t.insert(id.as_bytes(), v.as_slice())?;
            }
            let mut t = tx.open_table(PROVIDERS)?;
            for (key, provider, addrs, expires) in providers {
                let secs = expires
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let v = postcard::to_allocvec(&(addrs, secs))
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                let mut k = [0u8; 64];
                k[..32].copy_from_slice(key.as_bytes());
                k[32..].copy_from_slice(provider.as_bytes());
                t.insert(&k, v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The saved contacts and unexpired provider records.
    #[allow(clippy::type_complexity)]
    pub fn load_dht(
        &self,
    ) -> Result<
        (
            Vec<(crate::proto::NodeId, Vec<std::net::SocketAddr>)>,
            Vec<SavedProvider>,
        ),
        StoreError,
    > {
        use crate::proto::NodeId;
        let tx = self.inner.db.begin_read()?;
        let mut contacts = Vec::new();
        for row in tx.open_table(CONTACTS)?.iter()? {
            let (k, v) = row?;
            if let Ok(addrs) = postcard::from_bytes::<Vec<std::net::SocketAddr>>(v.value()) {
                contacts.push((NodeId::from_bytes(*k.value()), addrs));
            }
        }
        let now = std::time::SystemTime::now();
        let mut providers = Vec::new();
        for row in tx.open_table(PROVIDERS)?.iter()? {
            let (k, v) = row?;
            let k = k.value();
            let Ok((addrs, secs)) =
                postcard::from_bytes::<(Vec<std::net::SocketAddr>, u64)>(v.value())
            else {
                continue;
            };
            let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            if expires <= now {
                continue;
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(&k[..32]);
            let mut provider = [0u8; 32];
            provider.copy_from_slice(&k[32..]);
            providers.push((
                NodeId::from_bytes(key),
                NodeId::from_bytes(provider),
                addrs,
                expires,
            ));
        }
        Ok((contacts, providers))
    }
}

/// Why a local file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Chunking failed (reading the source).
    #[error(transparent)]
    Chunk(#[from] crate::store::chunker::ChunkError),
    /// Storing failed (quota, disk).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Bytes of chunk data under `chunks`; files that cannot be chunks (a name
/// that is not a hash, or in the wrong directory) are removed on the way.
fn scan_chunks(chunks: &Path) -> Result<u64, StoreError> {
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

    /// One file of three chunks, imported: its id and the chunk paths.
    fn held_file(store: &Store, dir: &Path) -> (Hash, Vec<PathBuf>) {
        let src = dir.join("src.bin");
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&src, &data).unwrap();
        let tree = store.import(&src, 1024).unwrap();
        let Some(Manifest::File(f)) = tree.root_manifest() else {
            panic!("a file manifest");
        };
        let paths = f.chunks.iter().map(|h| store.chunk_path(h)).collect();
        (tree.root, paths)
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
    fn open_after_a_crash_cleans_up_and_marks_incomplete_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, paths) = held_file(&store, dir.path());
        let (other, _) = store
            .put_manifest(
                &Manifest::File(crate::proto::manifest::FileManifest {
                    name: "o".into(),
                    size: 1,
                    chunk_size: 1024,
                    chunks: vec![Hash::of(b"o")],
                })
                .encode(),
            )
            .unwrap();
        let used = store.used();
        drop(store);
        // What a crash can leave: a temp file mid-write; what it cannot, but a
        // disk or a person can: a stray file, a chunk gone.
        let tmp = dir.path().join("store/tmp");
        fs::write(tmp.join("999-1"), b"half a chunk").unwrap();
        let stray = paths[0].parent().unwrap().join("not-a-chunk");
        fs::write(&stray, b"junk").unwrap();
        let gone = fs::metadata(&paths[2]).unwrap().len();
        fs::remove_file(&paths[2]).unwrap();

        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "temp files removed");
        assert!(!stray.exists(), "stray file removed");
        assert_eq!(store.used(), used - gone, "quota counts chunks only");
        assert!(!store.holds(&id).unwrap(), "incomplete: not held");
        assert!(!store.holds(&other).unwrap(), "never held");
        let files = store.files().unwrap();
        assert_eq!(files.len(), 1);
        assert!(!files[0].complete);
        assert!(paths[..2].iter().all(|p| p.exists()), "good chunks kept");
        drop(store);
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    }

    #[test]
    fn a_dropped_store_removes_only_its_own_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let tmp = dir.path().join("store/tmp");
        let own = tmp.join(format!("{}7", store.inner.tmp_prefix));
        let other = tmp.join("another-store-1");
        fs::write(&own, b"left by an interrupted write").unwrap();
        fs::write(&other, b"a live write of another store").unwrap();
        drop(store);
        assert!(!own.exists());
        assert!(other.exists());
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
    fn a_directory_graph_with_billions_of_paths_is_walked_once() {
        use crate::proto::manifest::{DirEntry, DirManifest, FileManifest};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let file = Manifest::File(FileManifest {
            name: "f".into(),
            size: 5,
            chunk_size: 1024,
            chunks: vec![Hash::of(b"never stored")],
        });
        let (mut below, _) = store.put_manifest(&file.encode()).unwrap();
        // Five levels of 1000 entries that all point to the level below: 10^15 paths.
        for level in 0..5 {
            let d = Manifest::Dir(DirManifest {
                name: format!("d{level}"),
                entries: (0..1000)
                    .map(|i| DirEntry {
                        name: format!("e{i:04}"),
                        id: below,
                    })
                    .collect(),
            });
            below = store.put_manifest(&d.encode()).unwrap().0;
        }
        let start = std::time::Instant::now();
        assert_eq!(store.tree(&below).unwrap().unwrap().len(), 6);
        assert_eq!(store.missing_chunks(&below).unwrap().unwrap().len(), 1);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn manifests_count_against_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100).unwrap();
        let m = Manifest::File(crate::proto::manifest::FileManifest {
            name: "x".repeat(200),
            size: 0,
            chunk_size: 1024,
            chunks: vec![],
        });
        assert!(matches!(
            store.put_manifest(&m.encode()),
            Err(StoreError::OverQuota { .. })
        ));
        assert_eq!(store.used(), 0);
    }

    #[test]
    fn import_directory_tree() {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("tree");
        fs::create_dir_all(root.join("sub/empty")).unwrap();
        fs::write(root.join("a.txt"), b"alpha").unwrap();
        fs::write(root.join("sub/b.bin"), vec![7u8; 5000]).unwrap();
        fs::write(root.join("sub/zero"), b"").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let tree = store.import(&root, 1024).unwrap();
        let id = tree.root;
        assert!(matches!(tree.root_manifest(), Some(Manifest::Dir(_))));
        assert_eq!(store.missing_chunks(&id).unwrap(), Some(vec![]));
        let files = store.files().unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].complete && files[0].record.is_dir);
        assert_eq!(files[0].record.size, 5005);
        let tree = store.tree(&id).unwrap().unwrap();
        assert_eq!(tree.len(), 6, "root, a.txt, sub, b.bin, empty, zero");
        // Same content, same id.
        assert_eq!(store.import(&root, 1024).unwrap().root, id);
    }

    /// Sets a chunk's file time `ago` in the past.
    fn age(store: &Store, h: &Hash, ago: std::time::Duration) {
        let f = fs::File::options()
            .write(true)
            .open(store.chunk_path(h))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() - ago).unwrap();
    }

    fn file_manifest(name: &str, chunks: &[&[u8]]) -> Manifest {
        Manifest::File(crate::proto::manifest::FileManifest {
            name: name.into(),
            size: chunks.iter().map(|c| c.len() as u64).sum(),
            chunk_size: 1024,
            chunks: chunks.iter().map(|c| Hash::of(c)).collect(),
        })
    }

    #[test]
    fn unused_chunks_go_after_the_grace_period_and_held_files_never() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (id, held_paths) = held_file(&store, dir.path());
        let held_used = store.used();
        // Chunks no manifest names (a copy cut off before its manifest).
        let (a, b) = (vec![0xaa; 1024], vec![0xbb; 100]);
        let (ha, hb) = (Hash::of(&a), Hash::of(&b));
        store.put_chunk(&ha, &a).unwrap();
        store.put_chunk(&hb, &b).unwrap();

        let r = store.collect_garbage(hour).unwrap();
        assert_eq!(
            (r.chunks, r.manifests, r.bytes, r.young),
            (0, 0, 0, 2),
            "{r:?}"
        );
        // Old now, but b was stored again since (a copy arriving uses it).
        for h in [&ha, &hb] {
            age(&store, h, 2 * hour);
        }
        for p in &held_paths {
            let f = fs::File::options().write(true).open(p).unwrap();
            f.set_modified(std::time::SystemTime::now() - 2 * hour)
                .unwrap();
        }
        assert_eq!(store.put_chunk(&hb, &b).unwrap(), Stored::AlreadyHad);
        let r = store.collect_garbage(hour).unwrap();
        assert_eq!(
            (r.chunks, r.bytes, r.young),
            (1, a.len() as u64, 1),
            "{r:?}"
        );
        assert!(!store.has_chunk(&ha) && store.has_chunk(&hb));
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!(r.chunks, 1, "{r:?}");
        assert_eq!(store.used(), held_used);

        // The held file, old as it is, is whole, also after a reopen.
        assert!(store.holds(&id).unwrap());
        assert!(held_paths.iter().all(|p| p.is_file()));
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.used(), held_used);
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.chunks, r.manifests), (0, 0));
        assert!(store.holds(&id).unwrap());
    }

    /// A tree still arriving (its manifests first, then its chunks, then the
    /// HOLD) keeps every piece while any of its chunks is younger than the
    /// grace period, however long ago its manifests came; once it stalls for
    /// longer, all of it goes.
    #[test]
    fn a_copy_still_arriving_is_kept_whole_and_a_stalled_one_goes() {
        use std::time::Duration;
        let grace = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (c1, c2) = (vec![1u8; 1024], vec![2u8; 1024]);
        // dir/{waiting (no chunk yet), arriving (c1 old, c2 new)}
        let waiting = file_manifest("waiting", &[&[3u8; 500]]);
        let arriving = file_manifest("arriving", &[&c1, &c2]);
        let (w, _) = store.put_manifest(&waiting.encode()).unwrap();
        let (f, _) = store.put_manifest(&arriving.encode()).unwrap();
        let tree = Manifest::Dir(crate::proto::manifest::DirManifest {
            name: "dir".into(),
            entries: vec![
                crate::proto::manifest::DirEntry {
                    name: "arriving".into(),
                    id: f,
                },
                crate::proto::manifest::DirEntry {
                    name: "waiting".into(),
                    id: w,
                },
            ],
        });
        let (d, _) = store.put_manifest(&tree.encode()).unwrap();
        store.put_chunk(&Hash::of(&c1), &c1).unwrap();
        age(&store, &Hash::of(&c1), 2 * grace);
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests), (0, 0), "first seen: {r:?}");

        std::thread::sleep(grace + Duration::from_millis(50));
        // The manifests are old news now, but a chunk has just arrived.
        store.put_chunk(&Hash::of(&c2), &c2).unwrap();
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests, r.young), (0, 0, 3), "{r:?}");
        for id in [d, f, w] {
            assert!(store.manifest_bytes(&id).unwrap().is_some());
        }
        assert!(
            store.has_chunk(&Hash::of(&c1)),
            "an old chunk of a live copy stays"
        );

        // Then nothing more arrives.
        std::thread::sleep(grace + Duration::from_millis(50));
        let r = store.collect_garbage(grace).unwrap();
        assert_eq!((r.chunks, r.manifests), (2, 3), "{r:?}");
        assert_eq!(store.used(), 0);
    }

    #[test]
    fn a_manifest_goes_at_the_second_pass_and_storing_it_again_starts_over() {
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let m = file_manifest("orphan", &[&[9u8; 10]]);
        let (mid, _) = store.put_manifest(&m.encode()).unwrap();
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.manifests, r.young), (0, 1), "{r:?}");
        // Stored again (a copy arriving): the count starts over.
        assert!(store.touch_manifest(&mid).unwrap());
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!((r.manifests, r.young), (0, 1), "{r:?}");
        std::thread::sleep(Duration::from_millis(2));
        let r = store.collect_garbage(Duration::ZERO).unwrap();
        assert_eq!(r.manifests, 1, "{r:?}");
        assert!(store.manifest_bytes(&mid).unwrap().is_none());
        assert_eq!(store.used(), 0);
    }
}
