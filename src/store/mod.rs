//! The node's content-addressed store: chunk files on disk, manifests and the
//! list of held files in redb.
//!
//! Layout under the data directory:
//!
//! ```text
//! store/chunks/ab/ab…(52 chars)   one file per chunk, named by its BLAKE3 hash
//! store/tmp/                      chunks being written; emptied at open
//! store/meta.redb                 manifests, held files and the saved DHT
//!                                 state (crash-safe, ACID)
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
//! hashed when it is read ([`Store::read_chunk`], which serves peers and
//! feeds repairs), unless this store hashed that same file in the last ten
//! minutes (`verified`): a chunk that fails is deleted, counted out of the
//! quota, its files become incomplete, and the reader gets "not found", so a
//! corrupt chunk is not served and is fetched again from another holder by
//! repair. BLAKE3 runs at several GB/s, less than the QUIC encryption the
//! bytes go through next.

pub mod chunker;
pub mod datadir;
pub mod direct;
pub mod sealer;

// The `impl Store` is spread over one file per concern:
mod chunks; // chunk files: the publish protocol, verified reads
mod dht; // the DHT's saved routing table and provider records
mod files; // manifests and held files
mod gc; // garbage passes
mod proof; // proof of possession; dropping a held file
mod sources; // whom held files were stored for
mod verified; // chunks hashed recently

pub use chunks::{ChunkReader, ChunkWriter, Stored};
pub use dht::SavedProvider;
pub use files::{Added, CheckedTree, FileRecord, HeldFile, ImportError};
pub use gc::GcReport;
pub use proof::Possession;
pub use sources::{HeldFor, Prefix, Source};

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tracing::warn;

use crate::proto::Hash;
use chunks::scan_chunks;

const MANIFESTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("manifests");
const FILES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("files");
/// Routing-table contacts: node id -> postcard `Vec<SocketAddr>`.
const CONTACTS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("dht_contacts");
/// Provider records: key ++ provider id -> postcard `(Vec<SocketAddr>, expiry unix secs)`.
const PROVIDERS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("dht_providers");

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
    /// More bytes than any chunk can have, or than were announced.
    #[error("{len} bytes: more than announced or than any chunk can have")]
    TooLarge {
        /// The bytes offered.
        len: u64,
    },
    /// A manifest did not decode.
    #[error("invalid manifest: {0}")]
    BadManifest(#[from] crate::proto::wire::WireError),
    /// A tree exceeds a limit of [`crate::proto::tree`].
    #[error("the tree {id} is not held: {reason}")]
    Tree {
        /// The tree's root.
        id: Hash,
        /// The limit exceeded.
        reason: crate::proto::tree::TreeError,
    },
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
    /// Bytes of held files per source.
    ledger: Mutex<sources::Ledger>,
    /// Chunks hashed recently: not hashed again when read soon.
    verified: verified::Verified,
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
            tx.open_table(sources::SOURCES)?;
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
                ledger: Mutex::new(sources::Ledger::default()),
                verified: verified::Verified::default(),
            }),
        };
        store.load_sources()?;
        let incomplete = store.files()?.iter().filter(|f| !f.complete).count();
        if incomplete > 0 {
            warn!(
                "{incomplete} held file(s) have chunks missing: not served or announced until \
                 stored again"
            );
        }
        Ok(store)
    }

    /// Bytes of chunk data stored.
    pub fn used(&self) -> u64 {
        *self.inner.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.inner.quota
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::manifest::Manifest;

    /// One file of three chunks, imported: its id and the chunk paths.
    pub(super) fn held_file(store: &Store, dir: &Path) -> (Hash, Vec<PathBuf>) {
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
}
