//! Cutting local files and directories into chunks and manifests.
//!
//! One chunk is in memory at a time; each is handed to a callback (to store
//! it, or to remember where to read it again when pushing).

use std::io::Read;
use std::path::Path;

use crate::proto::manifest::{
    check_name, ChunkSize, DirEntry, DirManifest, FileManifest, Manifest,
};
use crate::proto::Hash;

/// Why a local file could not be chunked.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The name cannot be represented: not UTF-8, or not a plain name (see
    /// [`check_name`]). Printed escaped, as it may hold control characters.
    #[error(
        "{0:?}: the name is not valid UTF-8 or not a plain file name (no separators, no control characters)"
    )]
    BadName(std::path::PathBuf),
    /// The file or tree cannot be encrypted as asked (past a limit, or
    /// changed while it was read).
    #[error("cannot encrypt {path}: {why}")]
    Unsealable {
        /// The file or tree.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
}

/// Reads `path` chunk by chunk (one chunk in memory at a time) and builds its
/// manifest. `each` sees every chunk with its index, e.g. to store it.
pub fn chunk_file(
    path: &Path,
    chunk_size: u32,
    mut each: impl FnMut(usize, Hash, &[u8]) -> std::io::Result<()>,
) -> Result<FileManifest, ChunkError> {
    let io = |source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = file_name(path)?;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; chunk_size as usize];
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).map_err(io)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let hash = Hash::of(&buf[..filled]);
        each(chunks.len(), hash, &buf[..filled]).map_err(io)?;
        chunks.push(hash);
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(FileManifest {
        name,
        size,
        chunk_size,
        chunks,
    })
}

/// Where a chunk of a local file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The file.
    pub path: std::path::PathBuf,
    /// Byte offset.
    pub offset: u64,
    /// Length.
    pub len: usize,
}

/// Called with every chunk as a tree is built: its hash, bytes and location.
pub type OnChunk<'a> = dyn FnMut(Hash, &[u8], ChunkLocation) -> std::io::Result<()> + 'a;

/// A local file or directory cut into chunks and manifests.
#[derive(Debug, Clone)]
pub struct Tree {
    /// The root's id.
    pub root: Hash,
    /// Every manifest in the tree, encoded, with its id; the root first.
    pub manifests: Vec<(Hash, Vec<u8>)>,
    /// Bytes in all files.
    pub size: u64,
}

impl Tree {
    /// The root manifest.
    pub fn root_manifest(&self) -> Option<Manifest> {
        let (_, bytes) = self.manifests.first()?;
        Manifest::decode(bytes).ok()
    }

    /// Every distinct chunk hash in the tree, in file order.
    pub fn chunk_hashes(&self) -> Vec<Hash> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (_, bytes) in &self.manifests {
            if let Ok(m) = Manifest::decode(bytes) {
                if let Some(f) = m.chunked() {
                    out.extend(f.chunks.iter().copied().filter(|h| seen.insert(*h)));
                }
            }
        }
        out
    }
}

/// Chunks the file or directory at `path`. `each` sees every chunk with its
/// location (e.g. to store it, or to remember where to read it again).
/// Each file's chunk size is `chunk_size` for its length. Directories become
/// manifests of manifests; symlinks and special files are skipped.
pub fn build_tree(
    path: &Path,
    chunk_size: impl Into<ChunkSize>,
    each: &mut OnChunk<'_>,
) -> Result<Tree, ChunkError> {
    let mut manifests = Vec::new();
    let (root, size) = build_node(path, chunk_size.into(), each, &mut manifests)?;
    // build_node pushes children before parents: the root is last.
    manifests.reverse();
    Ok(Tree {
        root,
        manifests,
        size,
    })
}

fn build_node(
    path: &Path,
    chunk_size: ChunkSize,
    each: &mut OnChunk<'_>,
    manifests: &mut Vec<(Hash, Vec<u8>)>,
) -> Result<(Hash, u64), ChunkError> {
    let io = |source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let (manifest, size) = if meta.is_dir() {
        let mut entries = Vec::new();
        let mut size = 0;
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let ty = entry.file_type().map_err(io)?;
            if !(ty.is_dir() || ty.is_file()) {
                continue;
            }
            let child = entry.path();
            let name = file_name(&child)?;
            let (id, s) = build_node(&child, chunk_size, each, manifests)?;
            size += s;
            entries.push(DirEntry { name, id });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let m = Manifest::Dir(DirManifest {
            name: file_name(path)?,
            entries,
        });
        (m, size)
    } else {
        let chunk_size = chunk_size.for_len(meta.len());
        let f = chunk_file(path, chunk_size, |i, hash, data| {
            let loc = ChunkLocation {
                path: path.to_path_buf(),
                offset: i as u64 * u64::from(chunk_size),
                len: data.len(),
            };
            each(hash, data, loc)
        })?;
        let size = f.size;
        (Manifest::File(f), size)
    };
    let bytes = manifest.encode();
    let id = Hash::of(&bytes);
    manifests.push((id, bytes));
    Ok((id, size))
}

/// The last component of `path` as a manifest name.
pub fn file_name(path: &Path) -> Result<String, ChunkError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ChunkError::BadName(path.to_path_buf()))?;
    check_name(name).map_err(|_| ChunkError::BadName(path.to_path_buf()))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_matches_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 1, 1023, 1024, 1025, 4096] {
            let path = dir.path().join(format!("f{size}"));
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let mut seen = Vec::new();
            let m = chunk_file(&path, 1024, |i, h, b| {
                assert_eq!(h, Hash::of(b));
                seen.push((i, b.len()));
                Ok(())
            })
            .unwrap();
            assert_eq!(m.size, size as u64);
            assert_eq!(m.chunks.len(), size.div_ceil(1024));
            for (i, h) in m.chunks.iter().enumerate() {
                let (off, len) = m.chunk_range(i);
                assert_eq!(*h, Hash::of(&data[off as usize..off as usize + len]));
            }
        }
    }
}
