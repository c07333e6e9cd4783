//! Who a peer is and whether it may connect, proven inside the TLS handshake.
//!
//! - [`identity`]: a node's Ed25519 key and rcgen certificate, kept in its data
//!   directory; its [`NodeId`](crate::proto::NodeId) is the hash of the key.
//! - [`netkey`]: private networks: a shared secret from which each member
//!   derives a signing key that vouches for its certificate.
//! - [`tls`]: rustls configs and verifiers: self-signed Ed25519 only, the
//!   handshake signature checked, ids pinned by SNI, membership and allow
//!   lists enforced in both directions.

pub mod identity;
pub mod netkey;
pub mod tls;
