//! quic-peer: a decentralized file storage network over QUIC.
//!
//! Every node is client and server at once. Nodes talk over QUIC (quinn) with
//! mutual TLS 1.3 and self-signed Ed25519 certificates, so every byte between
//! peers is encrypted and each peer is known by the hash of its key.
//!
//! # Module map
//!
//! ```text
//! node          the running node: endpoint, accept loop, dialing, control streams,
//!  │            stream routing, maintenance (gossip, ping, bootstrap retry), shutdown
//!  ├── membership   peer table: members, known peers, one-connection-per-pair rule,
//!  │                JOIN/LEAVE events (pure data, time passed in)
//!  ├── stream       frames over async byte streams (bounded reads)
//!  ├── wire         sans-IO protocol: message enums, framing, caps, error codes
//!  ├── tls          rustls verifiers: self-signed Ed25519, NodeId pinning, ALPN,
//!  │                private-network membership and allow lists
//!  ├── identity     Ed25519 key + rcgen certificate, NodeId, persistence
//!  ├── netkey       private networks: the shared key, membership proofs in certificates
//!  └── datadir      where a node keeps its state; one running node per directory
//! ```
//!
//! Data flow for a new connection: `tls` proves the peer's [`NodeId`] during the
//! handshake; `node` opens (or accepts) the control stream and exchanges JOIN and
//! WELCOME ([`wire`]); `membership` decides whether the connection is the pair's
//! one connection and emits [`PeerEvent`]s; gossip on the control stream feeds
//! the table with more peers, which `node` dials to keep the network connected.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod config;
pub mod crypto;
pub mod dht;
pub mod download;
pub mod net;
pub mod node;
pub mod proto;
pub mod replication;
pub mod store;
pub mod transfer;

pub use config::NodeConfig;
pub use crypto::identity::Identity;
pub use net::membership::{LeftReason, PeerEvent, PeerInfo, PeerState};
pub use net::ConnectError;
pub use node::{Node, StartError};
pub use proto::NodeId;
pub use proto::PeerAddr;
