//! Content and node addresses: BLAKE3 [`Hash`](struct@Hash)es name chunks and files,
//! [`NodeId`]s name nodes; both are 256 bits, printed as 52 characters of
//! lowercase base32 (the DNSSEC alphabet, which is also a valid DNS label, so an
//! id can travel as the TLS server name).
//!
//! `NodeId = BLAKE3(raw Ed25519 public key)`; the DHT's key space is the same
//! 256 bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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
        f.write_str(&encode_b32(&self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.fmt_short())
    }
}

/// A string that is not a valid hash.
#[derive(Debug, thiserror::Error)]
#[error("invalid file id {input:?}: {why}")]
pub struct ParseHashError {
    input: String,
    why: String,
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_b32(s).map(Hash).ok_or_else(|| ParseHashError {
            input: s.chars().take(80).collect(),
            why: why_not_b32(s),
        })
    }
}

/// The 52-character lowercase base32 (DNSSEC alphabet) text form of 32 bytes,
/// shared by node ids and content hashes.
pub fn encode_b32(bytes: &[u8; 32]) -> String {
    data_encoding::BASE32_DNSSEC.encode(bytes)
}

/// What is wrong with `s` as [`encode_b32`]'s form, for an error message.
pub fn why_not_b32(s: &str) -> String {
    let n = s.chars().count();
    if n != 52 {
        return format!("it is {n} characters long; an id is 52 base32 characters (0-9, a-v)");
    }
    let alphabet = |c: char| c.is_ascii_digit() || ('a'..='v').contains(&c.to_ascii_lowercase());
    if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !alphabet(*c)) {
        return format!(
            "character {} ({c:?}) is not base32: an id uses 0-9 and a-v",
            i + 1
        );
    }
    // 52 characters hold 260 bits; the last 4 are padding and must be zero.
    "its last character must be 0 or g (52 characters hold 260 bits, an id 256: the rest is \
     padding); a character may have been mistyped"
        .into()
}

/// Parses [`encode_b32`]'s form (either case).
pub fn decode_b32(s: &str) -> Option<[u8; 32]> {
    data_encoding::BASE32_DNSSEC
        .decode(s.to_ascii_lowercase().as_bytes())
        .ok()?
        .try_into()
        .ok()
}

/// A node's identity on the network: BLAKE3 of its Ed25519 public key.
///
/// It is also a point in the DHT's 256-bit key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// The id belonging to a raw 32-byte Ed25519 public key.
    pub fn from_public_key(key: &[u8; 32]) -> Self {
        NodeId(*blake3::hash(key).as_bytes())
    }

    /// Wraps 32 raw bytes (for tests, the DHT key space, and decoding).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }

    /// The raw 32 bytes.
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

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_b32(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.fmt_short())
    }
}

/// A string that is not a valid [`NodeId`].
#[derive(Debug, thiserror::Error)]
#[error("invalid node id {input:?}: {why}")]
pub struct ParseNodeIdError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_b32(s).map(NodeId).ok_or_else(|| ParseNodeIdError {
            input: s.chars().take(80).collect(),
            why: why_not_b32(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_text_round_trip() {
        let h = Hash::of(b"hello");
        assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        assert!("nope".parse::<Hash>().is_err());
    }

    #[test]
    fn node_id_text_round_trip() {
        let id = NodeId::from_public_key(&[7u8; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 52);
        assert_eq!(text.parse::<NodeId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<NodeId>().unwrap(), id);
        assert!("abc".parse::<NodeId>().is_err());
        assert!(format!("{text}x").parse::<NodeId>().is_err());
        assert!(id.fmt_short().len() == 10 && text.starts_with(&id.fmt_short()));
    }
}
