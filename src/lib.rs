//! quic-peer: a decentralized file storage network over QUIC.
//!
//! Every node is client and server at once. Nodes talk over QUIC (quinn) with
//! mutual TLS 1.3 and self-signed Ed25519 certificates, so every byte between
//! peers is encrypted and each peer is known by the hash of its key. Files are
//! cut into BLAKE3-addressed chunks; a Kademlia DHT says who holds what; a
//! download pulls verified chunks from every holder at once.
//!
//! # Module map
//!
//! Each layer uses only the layers below it.
//!
//! ```text
//! dashboard/    the web page and /metrics (axum): access rules (token, Host, Origin),
//!               the page's JSON built once a second, gets and puts from the page
//! node          composition root: builds the core and the services, registers them,
//!               starts their loops, shuts down in order
//! replication/  put to the R closest nodes, get, repair (proven holders only, one
//!               leader per file, copies beyond R+1 trimmed)
//! download/     multi-peer verifying download: the tree's manifests (each once,
//!               within the tree limits), the plan (keep, fetch, copy, room),
//!               queue, workers, writer, end game; peer scores (bans on proof,
//!               rank on denials and timeouts)
//! dht/          Kademlia: pure k-buckets, lookup state machine (disjoint paths),
//!               provider records (bounded per address prefix), simulator;
//!               behaviour (the Dht on the network, its own refresh and republish
//!               loop), find (provider records believed once the provider answers
//!               HAS) and handler (answers FIND_NODE, GET_PROVIDERS, ...)
//! transfer      one bi stream per chunk: the Transfers service (GET, PUT, HOLD,
//!               HAS, PROVE) and the client half (fetch, push, hold, prove);
//!               memory budget, per-peer storage allowances, HOLD agreement
//! store/        chunk files and manifests on disk (redb), crash-safe writes,
//!               quota, garbage collection, DHT tables, whom held files were
//!               stored for; chunker, data dir lock
//! net/          the network core: endpoint, accept, dial, one handler per
//!               connection, router (request streams -> services), limits,
//!               membership (peer table), maintain (gossip, dialing, bootstrap)
//! observe/      per-node Prometheus registry, journal of recent events, puts and
//!               gets under way: recorded by every layer, read by the dashboard
//! config        NodeConfig: every setting, for every layer
//! crypto/       identity (Ed25519 key + rcgen certificate), netkey (private
//!               networks), tls (rustls verifiers, id pinning, allow lists)
//! proto/        sans-IO: Hash and NodeId, wire messages and error codes,
//!               manifests, the sealed (end-to-end encrypted) format, tree
//!               limits, tickets, peer addresses, framed streams
//! ```
//!
//! # Data flow
//!
//! A connection: [`crypto::tls`] proves the peer's [`NodeId`] inside the
//! handshake; [`net`] exchanges JOIN and WELCOME on the control stream,
//! registers the pair's one connection in the membership table and tells the
//! DHT, which adds a contact; gossip on the control stream feeds the table
//! with more peers, which the core dials to keep the network connected. Every
//! other stream carries one request, which the router hands to the service
//! registered for it: [`transfer::Transfers`] or [`dht::behaviour::Dht`].
//!
//! A put: [`replication`] chunks the file into the [`store`], asks the DHT for
//! the R nodes closest to the file id and pushes every manifest and chunk to
//! each, then HOLD; each holder announces itself to the DHT. A get: the DHT's
//! GET_PROVIDERS lookup (or a ticket) names the holders, and each is believed
//! once it answers HAS over a connection pinned to its id; [`download`] fetches
//! chunks from all of them at once, verifying each against its BLAKE3 hash
//! before writing it.

#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod config;
pub mod crypto;
pub mod dashboard;
pub mod dht;
pub mod download;
pub mod net;
pub mod node;
pub mod observe;
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
