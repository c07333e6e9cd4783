//! Manifests and held files, in the store's redb database.
//!
//! A manifest is stored under the hash of its bytes and counts against the
//! quota like chunk bytes. A file or tree is *held* once recorded here with
//! all its pieces stored ([`Store::add_file`], [`Store::import`]); it stays
//! held but is *incomplete* while a piece is missing, and then
//! [`Store::holds`] says no.
//!
//! A tree is walked as a download walks it: each distinct manifest once,
//! within the limits of [`crate::proto::tree`] (files and directories counted
//! by path, depth, total size, manifest bytes). A tree past them is never
//! complete, so it is not held, served as held or announced: no getter would
//! accept it.

use std::path::Path;
use std::sync::atomic::Ordering;

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{lock, Source, Store, StoreError, FILES, MANIFESTS};
use crate::proto::manifest::Manifest;
use crate::proto::tree::{TreeBudget, TreeStats};
use crate::proto::Hash;

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

/// What [`Store::add_file_for`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// Every piece is present (see [`Store::add_file`]).
    pub complete: bool,
    /// The file now counts as stored for the source given (it did for
    /// nobody before).
    pub counted: bool,
}

/// A tree walked within the limits, as [`Store::checked_tree`] gives it.
#[derive(Debug, Clone)]
pub struct CheckedTree {
    /// Every distinct manifest with its id, the root first.
    pub manifests: Vec<(Hash, Manifest)>,
    /// Its figures, every path counted.
    pub stats: TreeStats,
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

impl Store {
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
        Ok(self.add_file_for(id, record, None)?.complete)
    }

    /// [`Store::add_file`] for a peer: `charge` bytes count as stored for
    /// `source` (by its id and its address prefix, see [`Store::held_for`])
    /// until the file is released, unless it already counted for someone.
    pub fn add_file_for(
        &self,
        id: &Hash,
        record: &FileRecord,
        source: Option<(&Source, u64)>,
    ) -> Result<Added, StoreError> {
        let bytes = postcard::to_allocvec(record).map_err(|e| StoreError::Db(e.to_string()))?;
        let _gc = lock(&self.inner.gc);
        let tx = self.inner.db.begin_write()?;
        tx.open_table(FILES)?
            .insert(id.as_bytes(), bytes.as_slice())?;
        let counted = match source {
            Some((s, charge)) => self
                .record_source(&tx, id, s, charge)?
                .then_some((*s, charge)),
            None => None,
        };
        tx.commit()?;
        if let Some((s, charge)) = counted {
            self.count_source(*id, s, charge);
        }
        // A garbage pass that ended just before may have taken a piece the
        // caller saw: held, but marked incomplete until it is stored again.
        let complete = self.is_complete(id)?;
        let mut incomplete = lock(&self.inner.incomplete);
        if complete {
            incomplete.remove(id);
        } else {
            incomplete.insert(*id);
        }
        Ok(Added {
            complete,
            counted: counted.is_some(),
        })
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

    /// The held files with every piece present, read off the async runtime
    /// (what republish and repair go through); none if the store fails.
    pub async fn complete_files(&self) -> Vec<HeldFile> {
        let store = self.clone();
        let files = tokio::task::spawn_blocking(move || store.files())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        files.into_iter().filter(|f| f.complete).collect()
    }

    /// How many files are held (complete or not); 0 if the index cannot be
    /// read.
    pub fn held_count(&self) -> u64 {
        let count = || -> Result<u64, StoreError> {
            let tx = self.inner.db.begin_read()?;
            Ok(redb::ReadableTableMetadata::len(&tx.open_table(FILES)?)?)
        };
        count().unwrap_or(0)
    }

    /// The records of the first `limit` held files, in id order.
    fn file_records(&self, limit: usize) -> Result<Vec<(Hash, FileRecord)>, StoreError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for row in table.iter()?.take(limit) {
            let (k, v) = row?;
            if let Ok(record) = postcard::from_bytes::<FileRecord>(v.value()) {
                out.push((Hash::from_bytes(*k.value()), record));
            }
        }
        Ok(out)
    }

    /// The first `limit` held files in id order, each checked for
    /// completeness (a view: the cost is bounded by `limit`, not by
    /// everything held).
    pub fn some_files(&self, limit: usize) -> Result<Vec<HeldFile>, StoreError> {
        self.file_records(limit)?
            .into_iter()
            .map(|(id, record)| {
                let complete = self.is_complete(&id)?;
                Ok(HeldFile {
                    id,
                    record,
                    complete,
                })
            })
            .collect()
    }

    /// Every held file, with whether all its chunks are present (which also
    /// refreshes what [`Store::holds`] knows to be incomplete).
    pub fn files(&self) -> Result<Vec<HeldFile>, StoreError> {
        self.inner.suspect.store(false, Ordering::SeqCst);
        let held = self.some_files(usize::MAX)?;
        *lock(&self.inner.incomplete) = held.iter().filter(|f| !f.complete).map(|f| f.id).collect();
        Ok(held)
    }

    /// Whether every manifest and chunk of the file or tree `id` is stored,
    /// and the tree keeps the limits.
    fn is_complete(&self, id: &Hash) -> Result<bool, StoreError> {
        match self.missing_chunks(id) {
            Ok(missing) => Ok(missing.is_some_and(|m| m.is_empty())),
            Err(e @ StoreError::Tree { .. }) => {
                tracing::debug!("{e}");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The chunks of file or tree `id` not yet stored, or `None` if a manifest
    /// in it is missing; [`StoreError::Tree`] if it exceeds a limit.
    pub fn missing_chunks(&self, id: &Hash) -> Result<Option<Vec<Hash>>, StoreError> {
        let Some(tree) = self.tree(id)? else {
            return Ok(None);
        };
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, m) in &tree {
            if let Some(f) = m.chunked() {
                for h in &f.chunks {
                    if seen.insert(*h) && !self.has_chunk(h) {
                        missing.push(*h);
                    }
                }
            }
        }
        Ok(Some(missing))
    }

    /// Every manifest in the tree `id`, with the manifests' ids (the root
    /// first). `None` if one is missing; [`StoreError::Tree`] if the tree
    /// exceeds a limit.
    pub fn tree(&self, id: &Hash) -> Result<Option<Vec<(Hash, Manifest)>>, StoreError> {
        Ok(self.checked_tree(id)?.map(|t| t.manifests))
    }

    /// [`Store::tree`] with the tree's figures (files and directories counted
    /// by path, total size).
    ///
    /// Each distinct manifest is visited once: a hostile peer can make a
    /// directory graph whose paths number in the billions from a few
    /// manifests. The walk stops at the limits of [`crate::proto::tree`].
    pub fn checked_tree(&self, id: &Hash) -> Result<Option<CheckedTree>, StoreError> {
        let tree_err = |reason| StoreError::Tree { id: *id, reason };
        let mut out: Vec<(Hash, Manifest)> = Vec::new();
        let mut index: HashMap<Hash, usize> = HashMap::new();
        let mut budget = TreeBudget::default();
        let mut stack = vec![*id];
        while let Some(next) = stack.pop() {
            if index.contains_key(&next) {
                continue;
            }
            let Some(bytes) = self.manifest_bytes(&next)? else {
                return Ok(None);
            };
            budget.take(bytes.len()).map_err(tree_err)?;
            let m = Manifest::decode(&bytes)?;
            if let Manifest::Dir(d) = &m {
                stack.extend(d.entries.iter().rev().map(|e| e.id));
            }
            index.insert(next, out.len());
            out.push((next, m));
        }
        let stats = TreeStats::of(*id, |h| {
            index.get(h).and_then(|&i| out.get(i)).map(|(_, m)| m)
        })
        .map_err(tree_err)?;
        Ok(Some(CheckedTree {
            manifests: out,
            stats,
        }))
    }

    /// Imports a local file or directory: chunks and manifests are stored and
    /// the root is recorded as held.
    pub fn import(
        &self,
        path: &Path,
        chunk_size: impl Into<crate::proto::manifest::ChunkSize>,
    ) -> Result<crate::store::chunker::Tree, ImportError> {
        self.import_tapped(path, chunk_size, &mut |_, _| {})
    }

    /// [`import`](Self::import), handing each chunk to `tap` once it is
    /// stored.
    pub fn import_tapped(
        &self,
        path: &Path,
        chunk_size: impl Into<crate::proto::manifest::ChunkSize>,
        tap: &mut dyn FnMut(crate::proto::Hash, &[u8]),
    ) -> Result<crate::store::chunker::Tree, ImportError> {
        let chunk_size = chunk_size.into();
        self.import_with(
            |put| {
                crate::store::chunker::build_tree(path, chunk_size, &mut |h, d, _| {
                    put(h, d)?;
                    tap(h, d);
                    Ok(())
                })
            },
            |tree| tree,
        )
    }

    /// Imports what `cut` makes of a local file or tree: every chunk it
    /// hands to `put`, with the hash `cut` computed of those bytes, is
    /// stored, then the manifests of the tree `tree_of` finds in its
    /// result, and the root is recorded as held (under the root manifest's
    /// name: an encrypted tree's is [`crate::proto::sealed::BODY_NAME`]).
    pub(super) fn import_with<T>(
        &self,
        cut: impl FnOnce(
            &mut dyn FnMut(crate::proto::Hash, &[u8]) -> std::io::Result<()>,
        ) -> Result<T, crate::store::chunker::ChunkError>,
        tree_of: impl Fn(&T) -> &crate::store::chunker::Tree,
    ) -> Result<T, ImportError> {
        let mut store_err = None;
        // The chunker and the sealer hash each chunk as they cut it.
        let cut = cut(&mut |hash, data| {
            self.put_hashed_chunk(&hash, data).map(|_| ()).map_err(|e| {
                let msg = e.to_string();
                store_err = Some(e);
                std::io::Error::other(msg)
            })
        });
        if let Some(e) = store_err {
            return Err(e.into());
        }
        let cut = cut?;
        let tree = tree_of(&cut);
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
        Ok(cut)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A file manifest whose one chunk is never stored, and its id.
    fn unstored_file(store: &Store) -> Hash {
        let file = Manifest::File(crate::proto::manifest::FileManifest {
            name: "f".into(),
            size: 5,
            chunk_size: 1024,
            chunks: vec![Hash::of(b"never stored")],
        });
        store.put_manifest(&file.encode()).unwrap().0
    }

    /// `levels` directories of `width` entries that all name the level below.
    fn nested(store: &Store, mut below: Hash, levels: usize, width: usize) -> Hash {
        use crate::proto::manifest::{DirEntry, DirManifest};
        for level in 0..levels {
            let d = Manifest::Dir(DirManifest {
                name: format!("d{level}"),
                entries: (0..width)
                    .map(|i| DirEntry {
                        name: format!("e{i:04}"),
                        id: below,
                    })
                    .collect(),
            });
            below = store.put_manifest(&d.encode()).unwrap().0;
        }
        below
    }

    #[test]
    fn a_directory_graph_is_walked_once_per_manifest_and_counted_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let file = unstored_file(&store);
        // Two levels of 500 entries naming the level below: 250,000 files.
        let root = nested(&store, file, 2, 500);
        let CheckedTree { manifests, stats } = store.checked_tree(&root).unwrap().unwrap();
        assert_eq!(manifests.len(), 3);
        assert_eq!((stats.entries, stats.files), (1 + 500 + 250_000, 250_000));
        assert_eq!(stats.size, 5 * 250_000);
        assert_eq!(store.missing_chunks(&root).unwrap().unwrap().len(), 1);
    }

    #[test]
    fn a_tree_past_the_limits_is_refused_and_never_held() {
        use crate::proto::tree::{TreeError, MAX_TREE_ENTRIES};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let (file, _) = super::super::tests::held_file(&store, dir.path());
        // Five levels of 1000 entries: 10^15 paths from six manifests.
        let bomb = nested(&store, file, 5, 1000);
        let start = std::time::Instant::now();
        let err = store.tree(&bomb).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            matches!(
                &err,
                StoreError::Tree {
                    reason: TreeError::TooManyEntries {
                        max: MAX_TREE_ENTRIES
                    },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("more than 1000000 files"), "{err}");
        // Every piece is stored, yet it is not held, and listing the held
        // files still works.
        let record = FileRecord {
            name: "bomb".into(),
            size: 0,
            is_dir: true,
        };
        assert!(!store.add_file(&bomb, &record).unwrap());
        assert!(!store.holds(&bomb).unwrap());
        let files = store.files().unwrap();
        assert_eq!(files.iter().filter(|f| f.complete).count(), 1, "{files:?}");
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
}
