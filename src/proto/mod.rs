//! The protocol, sans IO: what travels between nodes and how it is framed.
//!
//! Nothing here holds a socket or reads a clock: encoding and decoding work on
//! byte slices ([`wire`], [`manifest`], [`ticket`]), and [`frame`] reads and
//! writes frames on any tokio byte stream, so handlers can be tested on
//! in-memory pipes and every decoder can be fuzzed.
//!
//! - [`hash`]: BLAKE3 [`Hash`](struct@Hash)es and [`NodeId`]s, and their base32 text form.
//! - [`wire`]: messages, frame caps, error codes; the module doc is the spec.
//! - [`manifest`]: what a file id names (a file's chunks, a directory's entries).
//! - [`tree`]: the limits a tree of manifests keeps (entries, depth, size),
//!   checked once per distinct manifest.
//! - [`ticket`]: a file id plus its holders in one copyable string.
//! - [`addr`]: peer addresses as users write them (`ID@host:port`).
//! - [`frame`]: bounded reads and writes of frames on async byte streams.

pub mod addr;
pub mod frame;
pub mod hash;
pub mod manifest;
pub mod sealed;
pub mod ticket;
pub mod tree;
pub mod wire;

pub use addr::PeerAddr;
pub use hash::{Hash, NodeId};
