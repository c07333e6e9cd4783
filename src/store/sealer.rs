//! Sealing local files: a file or directory laid end to end in one stream,
//! cut into chunks and each sealed ([`crate::proto::sealed`]) before it is
//! stored or sent, on a few threads: at most two chunks per thread are in
//! memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::proto::manifest::{
    ChunkSize, Manifest, SealedManifest, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE, MIN_CHUNK_SIZE,
};
use crate::proto::sealed::{self, Entry, EntryKind, FileKey, Meta, Sealer};
use crate::proto::tree::{MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_SIZE};
use crate::proto::Hash;
use crate::store::chunker::{file_name, ChunkError, Tree};

/// Where a sealed file's key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChoice {
    /// A fresh random key: the default.
    Random,
    /// Derived from the content and this convergence secret: the same
    /// content sealed twice with one secret gives the same file.
    Convergent([u8; 32]),
}

/// A range of a local file: part of a sealed chunk's plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The file.
    pub path: PathBuf,
    /// Where the range starts in it.
    pub offset: u64,
    /// Its length.
    pub len: usize,
}

/// Where a sealed chunk's plaintext comes from: its index in the stream and
/// the ranges of local files it holds, then zeros up to `len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLocation {
    /// The chunk's index (it is sealed with it).
    pub index: u64,
    /// The file ranges, in order.
    pub segments: Vec<Segment>,
    /// The plaintext's length, padding included.
    pub len: usize,
}

impl SealedLocation {
    /// Reads the plaintext again: the segments, then the padding.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(self.len + sealed::TAG_LEN);
        for s in &self.segments {
            // Read into the spare capacity: no zeroing of what the read
            // overwrites at once.
            let mut f = File::open(&s.path)?;
            f.seek(SeekFrom::Start(s.offset))?;
            if f.take(s.len as u64).read_to_end(&mut data)? != s.len {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        data.resize(self.len, 0);
        Ok(data)
    }
}

/// Called with every sealed chunk: its hash, its bytes (ciphertext) and
/// where its plaintext is.
pub type OnSealed<'a> = dyn FnMut(Hash, Vec<u8>, SealedLocation) -> std::io::Result<()> + 'a;

/// A local file or directory sealed: its one manifest and its key.
#[derive(Debug, Clone)]
pub struct SealedTree {
    /// The sealed manifest, as a tree of one manifest.
    pub tree: Tree,
    /// The key that opens it.
    pub key: FileKey,
    /// Bytes of the files (without sealing and padding).
    pub content_len: u64,
}

/// Seals the file or directory at `path` in chunks of `chunk_size` (for the
/// length of its stream) bytes of plaintext (`pad`: the stream padded to
/// [`sealed::padme`] of its length), handing each sealed chunk to `each`.
pub fn seal_tree(
    path: &Path,
    chunk_size: impl Into<ChunkSize>,
    key: KeyChoice,
    pad: bool,
    each: &mut OnSealed<'_>,
) -> Result<SealedTree, ChunkError> {
    let refuse = |why: String| ChunkError::Unsealable {
        path: path.to_path_buf(),
        why,
    };
    let (meta, files, content_len) = lay_out(path, chunk_size.into(), pad)?;
    let (stream_len, chunk_size) = (meta.stream_len, meta.chunk_size);
    // A convergent key covers the content read in a first pass; the sealing
    // pass hashes what it reads again, and a file changed in between stops
    // the put (its key would otherwise seal other bytes than it was made
    // from, reusing nonces across contents).
    let (key, expected) = match key {
        KeyChoice::Random => (FileKey::random(), None),
        KeyChoice::Convergent(secret) => {
            let stream_hash = hash_stream(&files, stream_len, chunk_size)?;
            let meta_hash = Hash::of(&sealed::encode_meta(&meta));
            let key = FileKey::convergent(&secret, &meta_hash, &stream_hash, chunk_size, pad);
            (key, Some(stream_hash))
        }
    };
    let sealer = Sealer::new(&key);
    let mut stream = Stream::new(&files, stream_len, chunk_size);
    let chunks = match expected {
        // The plaintext is hashed in order as it is sealed.
        Some(expected) => {
            let mut again = blake3::Hasher::new();
            let mut chunks = Vec::new();
            while let Some(loc) = stream.next_chunk() {
                let mut data = read(&loc)?;
                again.update(&data);
                sealer.seal_chunk(loc.index, &mut data);
                chunks.push(sealed_chunk(loc, data, each)?);
            }
            if *expected.as_bytes() != *again.finalize().as_bytes() {
                return Err(refuse(
                    "it changed while it was being read; the put stopped, try again".into(),
                ));
            }
            chunks
        }
        None => seal_all(&mut stream, &sealer, each)?,
    };
    let body = sealed::body(chunk_size, stream_len, chunks);
    meta.check(&body).map_err(|e| refuse(e.to_string()))?;
    let manifest = Manifest::Sealed(SealedManifest {
        version: sealed::VERSION,
        commitment: sealer.commitment(),
        meta: sealer.seal_meta(&meta, pad),
        body,
    });
    let bytes = manifest.encode();
    // Checked ahead by lay_out; the estimate made exact.
    if bytes.len() > MAX_MANIFEST_SIZE {
        return Err(refuse(TOO_MANY.into()));
    }
    let root = Hash::of(&bytes);
    let size = manifest.chunked().map_or(0, |b| b.size);
    Ok(SealedTree {
        tree: Tree {
            root,
            manifests: vec![(root, bytes)],
            size,
        },
        key,
        content_len,
    })
}

impl super::Store {
    /// Seals a local file or directory ([`seal_tree`]) into the store and
    /// records it as held, under the name [`sealed::BODY_NAME`]: the store
    /// keeps nothing of its names.
    pub fn import_sealed(
        &self,
        path: &Path,
        chunk_size: impl Into<ChunkSize>,
        key: KeyChoice,
        pad: bool,
    ) -> Result<SealedTree, super::ImportError> {
        self.import_sealed_tapped(path, chunk_size, key, pad, &mut |_, _| {})
    }

    /// [`import_sealed`](Self::import_sealed), handing each sealed chunk to
    /// `tap` once it is stored.
    pub fn import_sealed_tapped(
        &self,
        path: &Path,
        chunk_size: impl Into<ChunkSize>,
        key: KeyChoice,
        pad: bool,
        tap: &mut dyn FnMut(Hash, Vec<u8>),
    ) -> Result<SealedTree, super::ImportError> {
        let chunk_size = chunk_size.into();
        self.import_with(
            |put| {
                seal_tree(path, chunk_size, key, pad, &mut |h, d, _| {
                    put(h, &d)?;
                    tap(h, d);
                    Ok(())
                })
            },
            |sealed| &sealed.tree,
        )
    }
}

/// Why a tree is refused whose manifest would pass its cap.
const TOO_MANY: &str =
    "too many files or chunks for one manifest (a larger --chunk-size holds more)";

/// A local file of the stream, with its size.
type LocalFile = (PathBuf, u64);

/// The tree at `path` laid out as one stream: its metadata, its files in
/// stream order with their sizes, and the bytes of the files. Refuses what
/// a sealed manifest could not describe before any byte is read.
fn lay_out(
    path: &Path,
    chunk_size: ChunkSize,
    pad: bool,
) -> Result<(Meta, Vec<LocalFile>, u64), ChunkError> {
    let refuse = |why: String| ChunkError::Unsealable {
        path: path.to_path_buf(),
        why,
    };
    let largest = MAX_CHUNK_SIZE - sealed::TAG_LEN as u32;
    if let ChunkSize::Fixed(size) = chunk_size {
        if !(MIN_CHUNK_SIZE..=largest).contains(&size) {
            return Err(refuse(format!(
                "the chunk size must be from {MIN_CHUNK_SIZE} to {largest} bytes (a sealed chunk is {} bytes longer)",
                sealed::TAG_LEN
            )));
        }
    }
    let mut entries = Vec::new();
    let mut files = Vec::new();
    walk(path, None, 0, &mut entries, &mut files)?;
    let content_len = files
        .iter()
        .try_fold(0u64, |t, (_, n)| {
            t.checked_add(*n).filter(|t| *t <= MAX_TREE_SIZE)
        })
        .ok_or_else(|| refuse(format!("more than {MAX_TREE_SIZE} bytes")))?;
    let stream_len = if pad {
        sealed::padme(content_len)
    } else {
        content_len
    };
    let chunk_size = chunk_size.for_len(stream_len);
    let meta = Meta {
        chunk_size,
        stream_len,
        entries,
    };
    // What the manifest will weigh, known before any chunk is sealed.
    let meta_len = sealed::encode_meta(&meta).len();
    let meta_len = if pad {
        sealed::padme(meta_len as u64) as usize
    } else {
        meta_len
    } + sealed::TAG_LEN;
    if meta_len > sealed::MAX_META_LEN
        || meta.chunk_count().saturating_mul(33) + meta_len as u64 + 256 > MAX_MANIFEST_SIZE as u64
    {
        return Err(refuse(TOO_MANY.into()));
    }
    Ok((meta, files, content_len))
}

/// The BLAKE3 hash of the plaintext stream, read once.
fn hash_stream(files: &[(PathBuf, u64)], len: u64, chunk_size: u32) -> Result<Hash, ChunkError> {
    let mut hasher = blake3::Hasher::new();
    let mut stream = Stream::new(files, len, chunk_size);
    while let Some(loc) = stream.next_chunk() {
        hasher.update(&read(&loc)?);
    }
    Ok(Hash::from_bytes(*hasher.finalize().as_bytes()))
}

/// Reads a chunk's plaintext, naming the first file on error.
fn read(loc: &SealedLocation) -> Result<Vec<u8>, ChunkError> {
    loc.read().map_err(|source| ChunkError::Io {
        path: loc
            .segments
            .first()
            .map(|s| s.path.clone())
            .unwrap_or_default(),
        source,
    })
}

/// Adds `path` (and, for a directory, everything below it, by name) to
/// `entries`, and its files with their sizes to `files`, in stream order.
fn walk(
    path: &Path,
    parent: Option<u32>,
    depth: usize,
    entries: &mut Vec<Entry>,
    files: &mut Vec<(PathBuf, u64)>,
) -> Result<(), ChunkError> {
    let io = |source| ChunkError::Io {
        path: path.to_path_buf(),
        source,
    };
    if entries.len() as u64 >= MAX_TREE_ENTRIES || depth > MAX_TREE_DEPTH {
        return Err(ChunkError::Unsealable {
            path: path.to_path_buf(),
            why: format!(
                "a tree holds at most {MAX_TREE_ENTRIES} entries, {MAX_TREE_DEPTH} directories deep"
            ),
        });
    }
    let meta = std::fs::metadata(path).map_err(io)?;
    let name = file_name(path)?;
    let index =
        u32::try_from(entries.len()).map_err(|_| io(std::io::Error::other("too many files")))?;
    if !meta.is_dir() {
        entries.push(Entry {
            parent,
            name,
            kind: EntryKind::File(meta.len()),
        });
        files.push((path.to_path_buf(), meta.len()));
        return Ok(());
    }
    entries.push(Entry {
        parent,
        name,
        kind: EntryKind::Dir,
    });
    let mut children = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let ty = entry.file_type().map_err(io)?;
        if ty.is_dir() || ty.is_file() {
            children.push(entry.path());
        }
    }
    children.sort();
    for child in children {
        walk(&child, Some(index), depth + 1, entries, files)?;
    }
    Ok(())
}

/// Hands a sealed chunk to `each`; returns its hash.
fn sealed_chunk(
    loc: SealedLocation,
    data: Vec<u8>,
    each: &mut OnSealed<'_>,
) -> Result<Hash, ChunkError> {
    let hash = Hash::of(&data);
    hand_on(loc, hash, data, each)
}

/// Hands a sealed chunk whose hash is known to `each`; returns the hash.
fn hand_on(
    loc: SealedLocation,
    hash: Hash,
    data: Vec<u8>,
    each: &mut OnSealed<'_>,
) -> Result<Hash, ChunkError> {
    let at = loc
        .segments
        .first()
        .map(|s| s.path.clone())
        .unwrap_or_default();
    each(hash, data, loc).map_err(|source| ChunkError::Io { path: at, source })?;
    Ok(hash)
}

/// Threads that read and seal chunks at once, at most.
const SEALING_THREADS: usize = 4;

/// Reads, seals and hashes every chunk of `stream` on up to
/// [`SEALING_THREADS`] threads (reading, AES-GCM and BLAKE3 were one core's
/// work, ahead of any byte sent), handing them to `each` in order; returns
/// their hashes. At most two chunks per thread are in memory.
fn seal_all(
    stream: &mut Stream<'_>,
    sealer: &Sealer,
    each: &mut OnSealed<'_>,
) -> Result<Vec<Hash>, ChunkError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, SEALING_THREADS);
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<SealedLocation>(threads);
    let work_rx = std::sync::Mutex::new(work_rx);
    let work_rx = &work_rx;
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(threads);
    // The closure owns the sending and receiving ends the threads wait on:
    // when it returns, early on an error too, they are dropped and every
    // thread ends.
    std::thread::scope(move |s| {
        let mut chunks = Vec::new();
        for _ in 0..threads {
            let mut guard = Unwinding {
                done: done_tx.clone(),
                loc: None,
            };
            s.spawn(move || loop {
                let next = work_rx.lock().map(|rx| rx.recv());
                let Ok(Ok(loc)) = next else {
                    return;
                };
                guard.loc = Some(loc.clone());
                let sealed = read(&loc).map(|mut data| {
                    sealer.seal_chunk(loc.index, &mut data);
                    (Hash::of(&data), data)
                });
                guard.loc = None;
                if guard.done.send((loc, sealed)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        // At most 2 × threads chunks between the stream and `each`: the
        // work queue and the done queue hold `threads` each, so neither
        // side waits on the other forever.
        let mut waiting = std::collections::BTreeMap::new();
        let (mut sent, mut next) = (0u64, 0u64);
        loop {
            while sent - next < 2 * threads as u64 {
                let Some(loc) = stream.next_chunk() else {
                    break;
                };
                if work_tx.send(loc).is_err() {
                    break;
                }
                sent += 1;
            }
            if next == sent {
                return Ok(chunks);
            }
            let Ok((loc, sealed)) = done_rx.recv() else {
                return Err(ChunkError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other("a sealing thread failed"),
                });
            };
            waiting.insert(loc.index, (loc, sealed));
            while let Some((loc, sealed)) = waiting.remove(&next) {
                let (hash, data) = sealed?;
                chunks.push(hand_on(loc, hash, data, each)?);
                next += 1;
            }
        }
    })
}

/// A chunk sealed by a sealing thread: its hash and bytes.
type Sealed = Result<(Hash, Vec<u8>), ChunkError>;

/// A sealing thread's chunk in hand: if the thread panics with it, the
/// chunk comes back as an error, or the loop that waits for it in order
/// would wait forever.
struct Unwinding {
    done: std::sync::mpsc::SyncSender<(SealedLocation, Sealed)>,
    loc: Option<SealedLocation>,
}

impl Drop for Unwinding {
    fn drop(&mut self) {
        if let Some(loc) = self.loc.take() {
            let failed = ChunkError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other("a sealing thread failed"),
            };
            let _ = self.done.send((loc, Err(failed)));
        }
    }
}

/// Cuts the files laid end to end (then zeros up to `len`) into chunks.
struct Stream<'a> {
    files: &'a [(PathBuf, u64)],
    len: u64,
    chunk_size: u64,
    /// The next chunk's index.
    index: u64,
    /// The file the next byte comes from, and how far into it.
    file: usize,
    offset: u64,
}

impl<'a> Stream<'a> {
    fn new(files: &'a [(PathBuf, u64)], len: u64, chunk_size: u32) -> Self {
        Stream {
            files,
            len,
            chunk_size: u64::from(chunk_size),
            index: 0,
            file: 0,
            offset: 0,
        }
    }

    fn next_chunk(&mut self) -> Option<SealedLocation> {
        let start = self.index * self.chunk_size;
        if start >= self.len {
            return None;
        }
        let len = (self.len - start).min(self.chunk_size);
        let mut want = len;
        let mut segments = Vec::new();
        while want > 0 && self.file < self.files.len() {
            let (path, size) = &self.files[self.file];
            let take = (size - self.offset).min(want);
            if take > 0 {
                segments.push(Segment {
                    path: path.clone(),
                    offset: self.offset,
                    len: take as usize,
                });
            }
            want -= take;
            self.offset += take;
            if self.offset == *size {
                self.file += 1;
                self.offset = 0;
            }
        }
        let loc = SealedLocation {
            index: self.index,
            segments,
            len: len as usize,
        };
        self.index += 1;
        Some(loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_one_stream_and_each_chunk_opens_to_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        std::fs::create_dir_all(root.join("b/empty")).unwrap();
        std::fs::write(root.join("a.txt"), vec![1u8; 1500]).unwrap();
        std::fs::write(root.join("b/c.txt"), vec![2u8; 700]).unwrap();
        std::fs::write(root.join("b/d.txt"), b"").unwrap();
        let mut sealed = Vec::new();
        let t = seal_tree(
            &root,
            1024,
            KeyChoice::Random,
            false,
            &mut |h, data, loc| {
                assert_eq!(h, Hash::of(&data));
                sealed.push((data, loc));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(t.content_len, 2200);
        let Ok(Manifest::Sealed(m)) = Manifest::decode(&t.tree.manifests[0].1) else {
            panic!("a sealed manifest");
        };
        let sealer = Sealer::new(&t.key);
        let meta = sealer.open_meta(&m.commitment, &m.meta, &m.body).unwrap();
        let names: Vec<_> = meta.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["photos", "a.txt", "b", "c.txt", "d.txt", "empty"]);
        assert_eq!(sealed.len(), 3);
        // Chunk 1 holds the end of a.txt and the start of b/c.txt.
        assert_eq!(sealed[1].1.segments.len(), 2);
        let mut plain = Vec::new();
        for (data, loc) in &sealed {
            let mut d = data.clone();
            sealer.open_chunk(loc.index, &mut d).unwrap();
            assert_eq!(d, loc.read().unwrap());
            plain.extend(d);
        }
        assert_eq!(plain[..1500], [1u8; 1500]);
        assert_eq!(plain[1500..], [2u8; 700]);
        // Nothing of a name is in what a node stores.
        let stored = &t.tree.manifests[0].1;
        assert!(!stored.windows(5).any(|w| w == b"a.txt"));
    }

    #[test]
    fn a_chunk_size_a_sealed_chunk_cannot_have_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        for size in [0, 16 << 20] {
            let r = seal_tree(&path, size, KeyChoice::Random, false, &mut |_, _, _| {
                panic!("nothing is sealed")
            });
            assert!(matches!(r, Err(ChunkError::Unsealable { .. })), "{size}");
        }
    }

    #[test]
    fn convergent_keys_repeat_for_the_same_content_and_padding_rounds_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![9u8; 5000]).unwrap();
        let seal = |key, pad| seal_tree(&path, 1024, key, pad, &mut |_, _, _| Ok(())).unwrap();
        let secret = KeyChoice::Convergent([4; 32]);
        let (a, b) = (seal(secret, false), seal(secret, false));
        assert_eq!((a.key, a.tree.root), (b.key, b.tree.root));
        assert_ne!(seal(KeyChoice::Random, false).tree.root, a.tree.root);
        assert_ne!(seal(KeyChoice::Convergent([5; 32]), false).key, a.key);
        let padded = seal(KeyChoice::Random, true);
        assert_eq!(
            padded.tree.size,
            sealed::padme(5000) + 5 * sealed::TAG_LEN as u64
        );
    }
}
