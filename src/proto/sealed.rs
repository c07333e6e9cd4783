//! Sealed files: a file or tree encrypted on the owner's machine, so that the
//! nodes that store it hold only ciphertext (format version 1).
//!
//! # What a storage node sees
//!
//! A sealed file is one [`Manifest::Sealed`](super::manifest::Manifest::Sealed):
//! a format version, an encrypted metadata blob, and a *body*: an ordinary
//! [`FileManifest`] named [`BODY_NAME`] that lists the hashes and sizes of the
//! ciphertext chunks. The file id, the BLAKE3 hash of that manifest, is the
//! *verify capability*: with it a node finds holders, checks every byte,
//! serves, repairs and audits (HAS, PROVE) exactly as for a plain file. The
//! names, the tree's shape and the sizes of its files are only in the blob.
//!
//! # The plaintext stream
//!
//! The files of the tree, in the order of the metadata's entries, are laid
//! end to end in one stream (a single file is the stream), padded with zeros
//! to [`Meta::stream_len`] (the real length, or [`padme`] of it with
//! `--pad`), and cut into chunks of [`Meta::chunk_size`] bytes (the last one
//! shorter). Many small files thus share chunks, and a chunk may hold the end
//! of one file and the start of the next.
//!
//! # Keys, nonces, sealing
//!
//! Every file has a 32-byte [`FileKey`] `K`: random, or (`--convergent`)
//! BLAKE3 `derive_key(CONVERGENT_CONTEXT, secret ‖ BLAKE3(meta) ‖
//! BLAKE3(stream) ‖ chunk_size as u32 LE ‖ pad as one byte)`, where `secret`
//! is the owner's 32-byte convergence secret and `meta` the encoded metadata
//! before padding. From it, with BLAKE3 `derive_key` and these contexts:
//!
//! | what | derivation |
//! |---|---|
//! | chunk key (AES-256-GCM) | `derive_key("quic-peer 2026-11-29 sealed v1 chunk key", K)` |
//! | metadata key (AES-256-GCM) | `derive_key("quic-peer 2026-11-29 sealed v1 metadata key", K)` |
//! | nonce of chunk `i` | first 12 bytes of `derive_key("quic-peer 2026-11-29 sealed v1 nonce", K ‖ 0x00 ‖ i as u64 LE)` |
//! | nonce of the metadata | first 12 bytes of `derive_key("quic-peer 2026-11-29 sealed v1 nonce", K ‖ 0x01 ‖ 0 as u64 LE)` |
//! | key commitment (in the manifest) | `derive_key("quic-peer 2026-11-29 sealed v1 key commitment", K)` |
//!
//! AES-GCM does not commit to its key: whoever makes a file could craft
//! ciphertext that opens to different content under two keys. The manifest
//! therefore carries a commitment to `K`, checked before anything is opened,
//! so one id opens to one content only.
//! Chunk `i` is sealed with AES-256-GCM (ring) under the chunk key and its
//! nonce, with associated data `"qp-sealed-v1 chunk" ‖ i as u64 LE`: the
//! ciphertext is the plaintext followed by the 16-byte tag, so the body's
//! chunk size is [`Meta::chunk_size`] + [`TAG_LEN`]. The metadata (postcard
//! of [`Meta`], zero-padded to [`padme`] of its length with `--pad`) is
//! sealed the same way under the metadata key with associated data
//! `"qp-sealed-v1 meta"`. A key is used for one content only (random, or
//! derived from the content itself), so no nonce is ever reused with
//! different plaintext.
//!
//! # Capabilities
//!
//! The *read capability* is the file id plus `K`, carried by a ticket
//! ([`super::ticket`], prefix `qpt2`). A getter checks each chunk twice: its
//! BLAKE3 hash against the body (before it is accepted from a peer), then
//! its tag when it is opened. The test `golden_vector` pins the bytes of this
//! format.

use std::fmt;
use std::str::FromStr;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};

use super::manifest::{check_name, FileManifest, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use super::tree::{MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_SIZE};
use super::Hash;

/// The sealed format this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes the AEAD adds to each chunk and to the metadata.
pub const TAG_LEN: usize = 16;
/// The name of a sealed file's body manifest (the real name is sealed).
pub const BODY_NAME: &str = "encrypted";
/// Largest sealed metadata blob.
pub const MAX_META_LEN: usize = 8 << 20;

const CHUNK_KEY_CONTEXT: &str = "quic-peer 2026-11-29 sealed v1 chunk key";
const META_KEY_CONTEXT: &str = "quic-peer 2026-11-29 sealed v1 metadata key";
const NONCE_CONTEXT: &str = "quic-peer 2026-11-29 sealed v1 nonce";
const CONVERGENT_CONTEXT: &str = "quic-peer 2026-11-29 sealed v1 convergent key";
const COMMITMENT_CONTEXT: &str = "quic-peer 2026-11-29 sealed v1 key commitment";
const CHUNK_AAD: &[u8] = b"qp-sealed-v1 chunk";
const META_AAD: &[u8] = b"qp-sealed-v1 meta";

/// Why sealed data could not be opened or is not well-formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The tag does not verify: the wrong key, or the bytes were changed.
    #[error("the key does not open {0} (a wrong key, or tampered ciphertext)")]
    Open(&'static str),
    /// The metadata opened but does not describe a valid tree.
    #[error("the sealed metadata is invalid: {0}")]
    BadMeta(String),
    /// A format this version does not know.
    #[error("sealed format version {0} is not known to this version of quic-peer")]
    Version(u8),
}

/// A file's key: 32 bytes, written as 52 base32 characters. Its `Debug`
/// does not show it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh random key.
    pub fn random() -> FileKey {
        FileKey(rand::random())
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> FileKey {
        FileKey(bytes)
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The convergent key of content whose metadata (encoded, unpadded)
    /// hashes to `meta` and whose stream hashes to `stream`, for the owner
    /// of `secret`: the same content put twice by one owner gets one key.
    pub fn convergent(
        secret: &[u8; 32],
        meta: &Hash,
        stream: &Hash,
        chunk_size: u32,
        pad: bool,
    ) -> FileKey {
        let mut material = Vec::with_capacity(32 * 3 + 5);
        material.extend_from_slice(secret);
        material.extend_from_slice(meta.as_bytes());
        material.extend_from_slice(stream.as_bytes());
        material.extend_from_slice(&chunk_size.to_le_bytes());
        material.push(u8::from(pad));
        FileKey(blake3::derive_key(CONVERGENT_CONTEXT, &material))
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::BASE32_DNSSEC.encode(&self.0))
    }
}

/// A string that is not a file key.
#[derive(Debug, thiserror::Error)]
#[error("invalid key: {0}")]
pub struct ParseKeyError(String);

impl FromStr for FileKey {
    type Err = ParseKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        super::hash::decode_b32(s.trim())
            .map(FileKey)
            .ok_or_else(|| {
                ParseKeyError(super::hash::why_not_b32(s.trim()).replace("an id", "a key"))
            })
    }
}

/// One entry of a sealed tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The index of its directory in [`Meta::entries`] (`None` for the root).
    pub parent: Option<u32>,
    /// Its name.
    pub name: String,
    /// File (with its size) or directory.
    pub kind: EntryKind,
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A file of this many bytes.
    File(u64),
    /// A directory.
    Dir,
}

/// What the sealed metadata blob holds: the tree and how its stream is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Bytes per plaintext chunk (the last one shorter).
    pub chunk_size: u32,
    /// Bytes in the stream, padding included.
    pub stream_len: u64,
    /// The root first; every other entry after its directory. The files'
    /// contents are in the stream in this order.
    pub entries: Vec<Entry>,
}

/// A file of a sealed tree: where it is in the stream and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFile {
    /// Its entry.
    pub entry: usize,
    /// Its first byte in the stream.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

impl Meta {
    /// Bytes of the files (the stream without its padding).
    pub fn content_len(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File(n) => n,
                EntryKind::Dir => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Plaintext chunks in the stream.
    pub fn chunk_count(&self) -> u64 {
        FileManifest::chunk_count(self.stream_len, self.chunk_size)
    }

    /// The files in stream order.
    pub fn files(&self) -> Vec<StreamFile> {
        let mut offset = 0;
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let EntryKind::File(size) = e.kind {
                out.push(StreamFile {
                    entry: i,
                    offset,
                    size,
                });
                offset = u64::saturating_add(offset, size);
            }
        }
        out
    }

    /// The path of entry `i` below the root (empty for the root), as names.
    pub fn path(&self, mut i: usize) -> Vec<&str> {
        let mut names = Vec::new();
        while let Some(parent) = self.entries.get(i).and_then(|e| e.parent) {
            names.push(self.entries[i].name.as_str());
            i = parent as usize;
        }
        names.reverse();
        names
    }

    /// Checks that it describes a tree within the limits of
    /// [`super::tree`] whose stream `body` holds, sealed.
    pub fn check(&self, body: &FileManifest) -> Result<(), SealError> {
        let bad = |why: String| Err(SealError::BadMeta(why));
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE - TAG_LEN as u32).contains(&self.chunk_size) {
            return bad(format!("chunk size {} out of range", self.chunk_size));
        }
        if self.entries.is_empty() || self.entries[0].parent.is_some() {
            return bad("no root".into());
        }
        if self.entries.len() as u64 > MAX_TREE_ENTRIES {
            return bad(format!("more than {MAX_TREE_ENTRIES} entries"));
        }
        let mut depth = vec![0usize; self.entries.len()];
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            check_name(&e.name).map_err(|e| SealError::BadMeta(e.to_string()))?;
            let Some(p) = e.parent else {
                if i > 0 {
                    return bad("a second root".into());
                }
                continue;
            };
            let p = p as usize;
            if p >= i || self.entries[p].kind != EntryKind::Dir {
                return bad("an entry before its directory, or in a file".into());
            }
            if !seen.insert((p, e.name.as_str())) {
                return bad(format!("{:?} twice in one directory", e.name));
            }
            depth[i] = depth[p] + 1;
            if depth[i] > MAX_TREE_DEPTH {
                return bad(format!("deeper than {MAX_TREE_DEPTH}"));
            }
        }
        let mut total = 0u64;
        for f in self.files() {
            total = match total.checked_add(f.size) {
                Some(t) if t <= MAX_TREE_SIZE => t,
                _ => return bad("the files are too large".into()),
            };
        }
        if total > self.stream_len {
            return bad("the files overrun the stream".into());
        }
        let n = self.chunk_count();
        let sealed_len = self.stream_len.checked_add(n * TAG_LEN as u64);
        if body.chunk_size != self.chunk_size + TAG_LEN as u32
            || body.chunks.len() as u64 != n
            || Some(body.size) != sealed_len
        {
            return bad("it does not match the sealed chunks".into());
        }
        Ok(())
    }
}

/// The body manifest of a sealed stream of `stream_len` bytes cut into
/// `chunk_size` chunks, whose sealed chunks hash to `chunks`.
pub fn body(chunk_size: u32, stream_len: u64, chunks: Vec<Hash>) -> FileManifest {
    FileManifest {
        name: BODY_NAME.to_string(),
        size: stream_len + chunks.len() as u64 * TAG_LEN as u64,
        chunk_size: chunk_size + TAG_LEN as u32,
        chunks,
    }
}

/// The Padmé padding of a length (Nikitin et al., "Reducing Metadata Leakage
/// from Encrypted Files and Communication with PURBs", 2019): `len` rounded up
/// so that only O(log log len) bits of it remain, at most 12% more.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

/// Seals and opens the chunks and metadata of one file under its key.
pub struct Sealer {
    key: FileKey,
    chunk: LessSafeKey,
    meta: LessSafeKey,
}

impl Sealer {
    /// The sealer of `key`.
    pub fn new(key: &FileKey) -> Sealer {
        let aead = |context: &str| {
            let k = blake3::derive_key(context, key.as_bytes());
            // A 32-byte key is what AES-256-GCM takes: this cannot fail.
            LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &k)
                    .unwrap_or_else(|_| unreachable!("AES-256-GCM takes 32-byte keys")),
            )
        };
        Sealer {
            key: *key,
            chunk: aead(CHUNK_KEY_CONTEXT),
            meta: aead(META_KEY_CONTEXT),
        }
    }

    fn nonce(&self, kind: u8, index: u64) -> Nonce {
        let mut material = [0u8; 41];
        material[..32].copy_from_slice(self.key.as_bytes());
        material[32] = kind;
        material[33..].copy_from_slice(&index.to_le_bytes());
        let d = blake3::derive_key(NONCE_CONTEXT, &material);
        let mut n = [0u8; 12];
        n.copy_from_slice(&d[..12]);
        Nonce::assume_unique_for_key(n)
    }

    fn chunk_aad(index: u64) -> [u8; CHUNK_AAD.len() + 8] {
        let mut aad = [0u8; CHUNK_AAD.len() + 8];
        aad[..CHUNK_AAD.len()].copy_from_slice(CHUNK_AAD);
        aad[CHUNK_AAD.len()..].copy_from_slice(&index.to_le_bytes());
        aad
    }

    /// Seals plaintext chunk `index` in place: the tag is appended.
    pub fn seal_chunk(&self, index: u64, data: &mut Vec<u8>) {
        let aad = Self::chunk_aad(index);
        // Sealing fails only for inputs larger than GCM allows (64 GiB).
        if self
            .chunk
            .seal_in_place_append_tag(self.nonce(0, index), Aad::from(aad), data)
            .is_err()
        {
            unreachable!("a chunk is far below GCM's limit");
        }
    }

    /// Opens sealed chunk `index` in place: on success `data` is the
    /// plaintext.
    pub fn open_chunk(&self, index: u64, data: &mut Vec<u8>) -> Result<(), SealError> {
        let aad = Self::chunk_aad(index);
        let len = self
            .chunk
            .open_in_place(self.nonce(0, index), Aad::from(aad), data)
            .map_err(|_| SealError::Open("this chunk"))?
            .len();
        data.truncate(len);
        Ok(())
    }

    /// Seals the metadata, padded with `pad`.
    pub fn seal_meta(&self, meta: &Meta, pad: bool) -> Vec<u8> {
        let mut data = postcard::to_allocvec(meta).unwrap_or_default();
        if pad {
            data.resize(padme(data.len() as u64) as usize, 0);
        }
        if self
            .meta
            .seal_in_place_append_tag(self.nonce(1, 0), Aad::from(META_AAD), &mut data)
            .is_err()
        {
            unreachable!("metadata is far below GCM's limit");
        }
        data
    }

    /// The commitment to this key that a sealed manifest carries.
    pub fn commitment(&self) -> [u8; 32] {
        blake3::derive_key(COMMITMENT_CONTEXT, self.key.as_bytes())
    }

    /// Opens the metadata of a manifest that carries `commitment`, and checks
    /// it against the body it describes.
    pub fn open_meta(
        &self,
        commitment: &[u8; 32],
        sealed: &[u8],
        body: &FileManifest,
    ) -> Result<Meta, SealError> {
        if *commitment != self.commitment() {
            return Err(SealError::Open("this file"));
        }
        let mut data = sealed.to_vec();
        let plain = self
            .meta
            .open_in_place(self.nonce(1, 0), Aad::from(META_AAD), &mut data)
            .map_err(|_| SealError::Open("this file"))?;
        let (meta, _padding): (Meta, _) =
            postcard::take_from_bytes(plain).map_err(|e| SealError::BadMeta(e.to_string()))?;
        meta.check(body)?;
        Ok(meta)
    }
}

/// The encoded metadata before padding, whose hash a convergent key covers.
pub fn encode_meta(meta: &Meta) -> Vec<u8> {
    postcard::to_allocvec(meta).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_file(size: u64) -> Meta {
        Meta {
            chunk_size: 1024,
            stream_len: size,
            entries: vec![Entry {
                parent: None,
                name: "report.pdf".into(),
                kind: EntryKind::File(size),
            }],
        }
    }

    fn seal_stream(sealer: &Sealer, meta: &Meta, stream: &[u8]) -> FileManifest {
        let chunks = stream
            .chunks(meta.chunk_size as usize)
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.to_vec();
                sealer.seal_chunk(i as u64, &mut c);
                Hash::of(&c)
            })
            .collect();
        body(meta.chunk_size, meta.stream_len, chunks)
    }

    /// The bytes of format version 1, pinned: a change here is a new format.
    #[test]
    fn golden_vector() {
        let key = FileKey::from_bytes([7; 32]);
        let sealer = Sealer::new(&key);
        let mut chunk = b"quic-peer sealed v1".to_vec();
        sealer.seal_chunk(3, &mut chunk);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&chunk),
            GOLDEN_CHUNK,
            "chunk 3 sealed under the key of 32 sevens"
        );
        let meta = one_file(19);
        let sealed = sealer.seal_meta(&meta, false);
        assert_eq!(data_encoding::HEXLOWER.encode(&sealed), GOLDEN_META);
        let convergent = FileKey::convergent(
            &[1; 32],
            &Hash::of(&encode_meta(&meta)),
            &Hash::of(b"quic-peer sealed v1"),
            1024,
            false,
        );
        assert_eq!(convergent.to_string(), GOLDEN_CONVERGENT);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sealer.commitment()),
            GOLDEN_COMMITMENT
        );
    }

    const GOLDEN_CHUNK: &str =
        "35eeecf01e55f3837094ba2cf74f38c9e3cc2094412c5adaa15a9eb709e5b69e67a9fc";
    const GOLDEN_META: &str =
        "ca9b542f523cff2c64142fdd4c519a618620062bfc507a60ce37341ed6f450a8dd2d";
    const GOLDEN_COMMITMENT: &str =
        "cf12832e9d575617f26856e74c72e66f426ac757bee48277cf3fe60c70009361";
    const GOLDEN_CONVERGENT: &str = "bs6f0donptaier8pkd31njdftdk7f9eg899i87dciq4k86smc3c0";

    #[test]
    fn chunks_and_metadata_round_trip_and_a_wrong_key_or_a_flipped_bit_fails() {
        let key = FileKey::random();
        let sealer = Sealer::new(&key);
        let stream: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let meta = one_file(3000);
        let body = seal_stream(&sealer, &meta, &stream);
        let sealed_meta = sealer.seal_meta(&meta, true);
        let commitment = sealer.commitment();
        assert_eq!(
            sealer.open_meta(&commitment, &sealed_meta, &body).unwrap(),
            meta
        );
        let other = Sealer::new(&FileKey::random());
        assert_eq!(
            other.open_meta(&commitment, &sealed_meta, &body),
            Err(SealError::Open("this file"))
        );
        // The right key with another commitment: refused before opening.
        assert!(sealer.open_meta(&[0; 32], &sealed_meta, &body).is_err());
        let mut c = stream[1024..2048].to_vec();
        sealer.seal_chunk(1, &mut c);
        assert_eq!(Hash::of(&c), body.chunks[1]);
        let mut moved = c.clone();
        assert!(
            sealer.open_chunk(2, &mut moved).is_err(),
            "bound to its index"
        );
        let mut flipped = c.clone();
        flipped[5] ^= 1;
        assert!(sealer.open_chunk(1, &mut flipped).is_err());
        sealer.open_chunk(1, &mut c).unwrap();
        assert_eq!(c, stream[1024..2048]);
    }

    #[test]
    fn metadata_that_does_not_fit_its_body_or_the_limits_is_refused() {
        let sealer = Sealer::new(&FileKey::random());
        let meta = one_file(3000);
        let body = seal_stream(&sealer, &meta, &[0; 3000]);
        let mut short = meta.clone();
        short.stream_len = 2000;
        assert!(short.check(&body).is_err());
        let mut escape = meta.clone();
        escape.entries[0].name = "../x".into();
        assert!(escape.check(&body).is_err());
        let mut in_a_file = meta.clone();
        in_a_file.entries.push(Entry {
            parent: Some(0),
            name: "x".into(),
            kind: EntryKind::Dir,
        });
        assert!(in_a_file.check(&body).is_err());
        let mut overrun = meta;
        overrun.entries[0].kind = EntryKind::File(3001);
        assert!(overrun.check(&body).is_err());
    }

    #[test]
    fn padme_rounds_up_by_at_most_twelve_percent() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(1000), 1024);
        for len in [3u64, 100, 4097, 1 << 20, (1 << 30) + 12345, 987_654_321_012] {
            let p = padme(len);
            assert!(
                p >= len && (p - len) as f64 <= len as f64 * 0.12 + 1.0,
                "{len} -> {p}"
            );
            assert_eq!(padme(p), p, "a padded length is its own padding");
        }
    }

    #[test]
    fn paths_follow_parents_and_files_are_laid_end_to_end() {
        let meta = Meta {
            chunk_size: 1024,
            stream_len: 30,
            entries: vec![
                Entry {
                    parent: None,
                    name: "photos".into(),
                    kind: EntryKind::Dir,
                },
                Entry {
                    parent: Some(0),
                    name: "a.jpg".into(),
                    kind: EntryKind::File(10),
                },
                Entry {
                    parent: Some(0),
                    name: "2026".into(),
                    kind: EntryKind::Dir,
                },
                Entry {
                    parent: Some(2),
                    name: "b.jpg".into(),
                    kind: EntryKind::File(20),
                },
            ],
        };
        assert_eq!(meta.path(3), vec!["2026", "b.jpg"]);
        assert!(meta.path(0).is_empty());
        let files = meta.files();
        assert_eq!(
            (files[1].entry, files[1].offset, files[1].size),
            (3, 10, 20)
        );
        assert_eq!(meta.content_len(), 30);
    }
}
