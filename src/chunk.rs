//! Content addressing: BLAKE3 hashes, chunking, and manifests.
//!
//! A file is cut into chunks of `chunk_size` bytes (the last one shorter); each
//! chunk is named by its BLAKE3 hash. A [`Manifest`] lists a file's name, size,
//! chunk size and chunk hashes, or a directory's entries (each the id of another
//! manifest). The *file id* is the BLAKE3 hash of the postcard-encoded manifest,
//! so the id commits to every byte of the file or tree.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::wire::WireError;

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 1 << 10;
/// Largest chunk size accepted (and so the largest chunk on the wire).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Cap on an encoded manifest: 16 MiB holds half a million chunk hashes.
pub const MAX_MANIFEST_SIZE: usize = 16 << 20;
/// Cap on a file or directory name in a manifest.
pub const MAX_NAME_LEN: usize = 255;
/// Cap on entries in one directory manifest.
pub const MAX_DIR_ENTRIES: usize = 100_000;

/// A BLAKE3 hash: names chunks, and (as the hash of a manifest) files.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash([u8; 32]);

impl Hash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw bytes.
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        Hash(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first ten characters of the text form, for logs.
    pub fn fmt_short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(10);
        s
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::identity::encode_b32(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.fmt_short())
    }
}

/// A string that is not a valid hash.
#[derive(Debug, thiserror::Error)]
#[error("invalid file id {0:?}: expected 52 base32 characters (0-9, a-v)")]
pub struct ParseHashError(String);

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseHashError(s.chars().take(80).collect());
        crate::identity::decode_b32(s).map(Hash).ok_or_else(err)
    }
}

/// A file: its name, size, and the hashes of its chunks in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    /// The file's name (no directory part).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// Chunk hashes, in file order.
    pub chunks: Vec<Hash>,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name (no slashes).
    pub name: String,
    /// The id (manifest hash) of the file or directory.
    pub id: Hash,
}

/// A directory: the ids of its entries' manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirManifest {
    /// The directory's name.
    pub name: String,
    /// Its entries, sorted by name.
    pub entries: Vec<DirEntry>,
}

/// What a file id names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Manifest {
    /// A regular file.
    File(FileManifest),
    /// A directory of files and directories.
    Dir(DirManifest),
}

/// A name that cannot be used as a file name.
fn check_name(name: &str) -> Result<(), WireError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0']);
    if bad {
        return Err(WireError::Malformed(format!("bad name {name:?}")));
    }
    Ok(())
}

impl FileManifest {
    /// Number of chunks a file of `size` bytes has.
    pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(u64::from(chunk_size))
    }

    /// Byte offset and length of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> (u64, usize) {
        let cs = u64::from(self.chunk_size);
        let offset = index as u64 * cs;
        let len = (self.size - offset).min(cs) as usize;
        (offset, len)
    }
}

impl Manifest {
    /// The file id: BLAKE3 of the encoding.
    pub fn id(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// The name of the file or directory.
    pub fn name(&self) -> &str {
        match self {
            Manifest::File(f) => &f.name,
            Manifest::Dir(d) => &d.name,
        }
    }

    /// postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks a manifest: sizes agree with chunk counts, names are
    /// plain names, lists are within limits.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, WireError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(WireError::FrameTooLarge {
                len: bytes.len(),
                max: MAX_MANIFEST_SIZE,
            });
        }
        let (m, rest): (Manifest, _) =
            postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes(rest.len()));
        }
        m.validate()?;
        // postcard also reads over-long varints (`0x80 0x00` for 0): such bytes
        // decode to a manifest whose id is not the hash of these bytes, giving
        // one file many ids. Only the canonical encoding is a manifest.
        if m.encode() != bytes {
            return Err(WireError::Malformed(
                "manifest is not canonically encoded".into(),
            ));
        }
        Ok(m)
    }

    fn validate(&self) -> Result<(), WireError> {
        match self {
            Manifest::File(f) => {
                check_name(&f.name)?;
                if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&f.chunk_size) {
                    return Err(WireError::Malformed(format!(
                        "chunk size {} out of range",
                        f.chunk_size
                    )));
                }
                if FileManifest::chunk_count(f.size, f.chunk_size) != f.chunks.len() as u64 {
                    return Err(WireError::Malformed(
                        "chunk count does not match size".into(),
                    ));
                }
                Ok(())
            }
            Manifest::Dir(d) => {
                check_name(&d.name)?;
                if d.entries.len() > MAX_DIR_ENTRIES {
                    return Err(WireError::TooMany {
                        what: "directory",
                        len: d.entries.len(),
                        max: MAX_DIR_ENTRIES,
                    });
                }
                for e in &d.entries {
                    check_name(&e.name)?;
                }
                if d.entries.windows(2).any(|w| w[0].name >= w[1].name) {
                    return Err(WireError::Malformed(
                        "directory entries not sorted or not unique".into(),
                    ));
                }
                Ok(())
            }
        }
    }
}

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
    /// The name cannot be represented.
    #[error("{0}: the name is not valid UTF-8 or not a plain file name")]
    BadName(std::path::PathBuf),
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
            if let Ok(Manifest::File(f)) = Manifest::decode(bytes) {
                out.extend(f.chunks.into_iter().filter(|h| seen.insert(*h)));
            }
        }
        out
    }
}

/// Chunks the file or directory at `path`. `each` sees every chunk with its
/// location (e.g. to store it, or to remember where to read it again).
/// Directories become manifests of manifests; symlinks and special files are
/// skipped.
pub fn build_tree(
    path: &Path,
    chunk_size: u32,
    each: &mut OnChunk<'_>,
) -> Result<Tree, ChunkError> {
    let mut manifests = Vec::new();
    let (root, size) = build_node(path, chunk_size, each, &mut manifests)?;
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
    chunk_size: u32,
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

    fn file(size: u64, chunk_size: u32) -> Manifest {
        Manifest::File(FileManifest {
            name: "f".into(),
            size,
            chunk_size,
            chunks: vec![Hash::of(b"x"); FileManifest::chunk_count(size, chunk_size) as usize],
        })
    }

    #[test]
    fn manifest_round_trip_and_id() {
        for size in [0, 1, 1023, 1024, 1025, 10 * 1024] {
            let m = file(size, 1024);
            let bytes = m.encode();
            assert_eq!(Manifest::decode(&bytes).unwrap(), m);
            assert_eq!(m.id(), Hash::of(&bytes));
        }
        let d = Manifest::Dir(DirManifest {
            name: "d".into(),
            entries: vec![
                DirEntry {
                    name: "a".into(),
                    id: Hash::of(b"1"),
                },
                DirEntry {
                    name: "b".into(),
                    id: Hash::of(b"2"),
                },
            ],
        });
        assert_eq!(Manifest::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        let Manifest::File(mut f) = file(5000, 1024) else {
            unreachable!()
        };
        f.chunks.pop();
        assert!(Manifest::decode(&Manifest::File(f.clone()).encode()).is_err());
        f.chunks.push(Hash::of(b"y"));
        f.name = "../etc".into();
        assert!(Manifest::decode(&Manifest::File(f.clone()).encode()).is_err());
        f.name = "ok".into();
        f.chunk_size = 1;
        assert!(Manifest::decode(&Manifest::File(f).encode()).is_err());
        let dup = Manifest::Dir(DirManifest {
            name: "d".into(),
            entries: vec![
                DirEntry {
                    name: "a".into(),
                    id: Hash::of(b"1"),
                },
                DirEntry {
                    name: "a".into(),
                    id: Hash::of(b"2"),
                },
            ],
        });
        assert!(Manifest::decode(&dup.encode()).is_err());
        assert!(Manifest::decode(&[0xff, 0xff]).is_err());
        let mut trailing = file(1, 1024).encode();
        trailing.push(0);
        assert!(Manifest::decode(&trailing).is_err());
    }

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

    #[test]
    fn hash_text_round_trip() {
        let h = Hash::of(b"hello");
        assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        assert!("nope".parse::<Hash>().is_err());
    }
}
