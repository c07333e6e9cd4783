//! Manifests: what a file id names.
//!
//! A file is cut into chunks of `chunk_size` bytes (the last one shorter); each
//! chunk is named by its BLAKE3 hash. A [`Manifest`] lists a file's name, size,
//! chunk size and chunk hashes, or a directory's entries (each the id of another
//! manifest). The *file id* is the BLAKE3 hash of the postcard-encoded manifest,
//! so the id commits to every byte of the file or tree.

use serde::{Deserialize, Serialize};

use super::hash::Hash;
use super::wire::WireError;

/// Default chunk size: 1 MiB, for files up to [`AUTO_CHUNKS`] MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk size a put picks by itself ([`ChunkSize::Auto`]).
pub const LARGE_CHUNK_SIZE: u32 = 4 << 20;
/// Chunks a file is cut into before [`ChunkSize::Auto`] picks larger ones.
pub const AUTO_CHUNKS: u64 = 256;
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

/// How large a put cuts a file's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkSize {
    /// By the file's size, as BitTorrent picks its piece size: 1 MiB,
    /// doubled while that makes more than [`AUTO_CHUNKS`] chunks, up to
    /// [`LARGE_CHUNK_SIZE`]. A large file then costs the node that stores
    /// it a quarter of the files, syncs and requests, while a download's
    /// memory stays bounded by bytes in flight, not by chunks.
    #[default]
    Auto,
    /// Always this many bytes.
    Fixed(u32),
}

impl ChunkSize {
    /// The chunk size for `len` bytes.
    pub fn for_len(self, len: u64) -> u32 {
        match self {
            ChunkSize::Fixed(size) => size,
            ChunkSize::Auto => {
                let mut size = DEFAULT_CHUNK_SIZE;
                while size < LARGE_CHUNK_SIZE && len > u64::from(size) * AUTO_CHUNKS {
                    size *= 2;
                }
                size
            }
        }
    }
}

impl From<u32> for ChunkSize {
    fn from(size: u32) -> Self {
        ChunkSize::Fixed(size)
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

/// A file or tree sealed on its owner's machine ([`super::sealed`]): what a
/// node that stores it sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedManifest {
    /// The sealed format ([`super::sealed::VERSION`]).
    pub version: u8,
    /// A commitment to the file's key, checked before anything is opened
    /// (see [`super::sealed`]).
    pub commitment: [u8; 32],
    /// The sealed metadata: names, tree, sizes.
    pub meta: Vec<u8>,
    /// The ciphertext chunks, as a file named [`super::sealed::BODY_NAME`].
    pub body: FileManifest,
}

/// What a file id names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Manifest {
    /// A regular file.
    File(FileManifest),
    /// A directory of files and directories.
    Dir(DirManifest),
    /// A file or tree encrypted by its owner: chunks a node can verify,
    /// serve and repair, and nothing it can read.
    Sealed(SealedManifest),
}

/// Refuses a name that is not one plain path component: empty, longer than
/// [`MAX_NAME_LEN`] bytes, `.` or `..`, holding a separator (`/`, `\\`) or
/// any control character.
///
/// Control characters are C0 (NUL, ESC, newline...), DEL and C1 (U+0080 to
/// U+009F): a name is printed on terminals and in logs, where ESC and C1
/// controls are commands (clearing the screen, setting the title, rewriting
/// what was printed), and written to disk, where a newline or NUL breaks
/// every tool that reads a list of names.
pub fn check_name(name: &str) -> Result<(), WireError> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_NAME_LEN {
        "is too long"
    } else if name == "." || name == ".." {
        "is not a file name"
    } else if name.contains(['/', '\\']) {
        "holds a path separator"
    } else if name.chars().any(char::is_control) {
        "holds a control character"
    } else {
        return Ok(());
    };
    // Debug formatting escapes the control characters: safe to print.
    Err(WireError::Malformed(format!("the name {name:?} {why}")))
}

impl FileManifest {
    fn validate(&self) -> Result<(), WireError> {
        check_name(&self.name)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(WireError::Malformed(format!(
                "chunk size {} out of range",
                self.chunk_size
            )));
        }
        if FileManifest::chunk_count(self.size, self.chunk_size) != self.chunks.len() as u64 {
            return Err(WireError::Malformed(
                "chunk count does not match size".into(),
            ));
        }
        Ok(())
    }

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

    /// The name of the file or directory ([`super::sealed::BODY_NAME`]
    /// for a sealed one).
    pub fn name(&self) -> &str {
        match self {
            Manifest::File(f) => &f.name,
            Manifest::Dir(d) => &d.name,
            Manifest::Sealed(s) => &s.body.name,
        }
    }

    /// The chunks it names directly, as a file: a file's, or a sealed
    /// file's ciphertext (none for a directory).
    pub fn chunked(&self) -> Option<&FileManifest> {
        match self {
            Manifest::File(f) => Some(f),
            Manifest::Sealed(s) => Some(&s.body),
            Manifest::Dir(_) => None,
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
            Manifest::File(f) => f.validate(),
            Manifest::Sealed(s) => {
                if s.version != super::sealed::VERSION {
                    return Err(WireError::Malformed(format!(
                        "sealed format version {} is not known to this version",
                        s.version
                    )));
                }
                if s.meta.len() > super::sealed::MAX_META_LEN {
                    return Err(WireError::TooMany {
                        what: "sealed metadata",
                        len: s.meta.len(),
                        max: super::sealed::MAX_META_LEN,
                    });
                }
                s.body.validate()
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
    fn auto_chunks_grow_with_the_file_up_to_the_large_size() {
        let mib = 1u64 << 20;
        for (len, size) in [
            (0, 1),
            (mib, 1),
            (256 * mib, 1),
            (256 * mib + 1, 2),
            (512 * mib, 2),
            (512 * mib + 1, 4),
            (1 << 40, 4),
        ] {
            assert_eq!(ChunkSize::Auto.for_len(len), size << 20, "{len} bytes");
        }
        assert_eq!(ChunkSize::from(4096).for_len(1 << 40), 4096);
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
    fn names_are_single_plain_components_without_controls() {
        for good in [
            "a",
            "report.pdf",
            "é à ü",
            "日本語",
            "with space",
            "x.part",
            "...",
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "nul\0",
            "line\nbreak",
            "tab\t",
            "\x1b[2J\x1b[Hcleared",
            "\x1b]0;title\x07",
            "del\x7f",
            "c1\u{9b}2J",
            "nel\u{85}",
            long.as_str(),
        ] {
            let err = check_name(bad).expect_err(bad).to_string();
            assert!(!err.contains('\x1b') && !err.contains('\u{9b}'), "{err}");
        }
        assert!(check_name(&"n".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn a_directory_entry_with_a_control_character_does_not_decode() {
        let d = Manifest::Dir(DirManifest {
            name: "d".into(),
            entries: vec![DirEntry {
                name: "\x1b[31mred".into(),
                id: Hash::of(b"1"),
            }],
        });
        let err = Manifest::decode(&d.encode()).unwrap_err().to_string();
        assert!(err.contains("control character"), "{err}");
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
}
