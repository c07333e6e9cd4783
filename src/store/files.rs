//! Manifests and held files, in the store's redb database.
//!
//! A manifest is stored under the hash of its bytes and counts against the
//! quota like chunk bytes. A file or tree is *held* once recorded here with
//! all its pieces stored ([`Store::add_file`], [`Store::import`]); it stays
//! held but is *incomplete* while a piece is missing, and then
//! [`Store::holds`] says no.

use std::path::Path;
use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{lock, Store, StoreError, FILES, MANIFESTS};
use crate::proto::manifest::Manifest;
use crate::proto::Hash;

/// Most distinct manifests in one file tree.
pub const MAX_TREE_MANIFESTS: usize = 1_000_000;

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
}
