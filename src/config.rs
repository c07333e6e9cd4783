//! How a node runs: every setting of the network core and the services, with
//! the command line's defaults ([`NodeConfig::default`]) and short timers for
//! tests and the demo ([`NodeConfig::local_test`]).
//!
//! One flat struct, read by every layer: each takes the fields it needs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::crypto::netkey::NetworkKey;
use crate::proto::addr::PeerAddr;
use crate::proto::wire::Role;
use crate::proto::NodeId;

/// How a node runs. `Default` is what the command line uses without flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Addresses to announce instead of the listening one.
    pub advertise: Vec<SocketAddr>,
    /// Nodes to join through; retried with backoff while no peer is connected.
    pub bootstrap: Vec<PeerAddr>,
    /// Where the identity is kept; `None` makes a throwaway identity in memory.
    pub data_dir: Option<PathBuf>,
    /// Full node, or a short-lived client.
    pub role: Role,
    /// A connection with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval (well under `idle_timeout`).
    pub keep_alive: Duration,
    /// Time allowed for a handshake plus JOIN/WELCOME.
    pub handshake_timeout: Duration,
    /// How often peers are gossiped and pinged.
    pub gossip_interval: Duration,
    /// Connections to full nodes this node tries to keep.
    pub target_peers: usize,
    /// Hard limit on connections, in and out.
    pub max_connections: usize,
    /// Incoming connections, handshakes in progress included, from one
    /// address (an IPv6 address counts by its /64) at once; more are refused
    /// before their handshake is processed. Loopback addresses are exempt
    /// unless `limit_loopback` is set.
    pub max_connections_per_ip: usize,
    /// Counts loopback addresses (127.0.0.0/8, ::1) against
    /// `max_connections_per_ip` too (`--limit-loopback`). Off by default:
    /// every node of a network on one machine dials from 127.0.0.1, and
    /// they are friends, not strangers.
    pub limit_loopback: bool,
    /// Request streams (GET, PUT, HAS, HOLD, DHT) one connection may open per
    /// second on average; a stream over the rate is refused with
    /// [`ErrorCode::RateLimited`](crate::proto::wire::ErrorCode::RateLimited). 0 means no limit.
    pub max_requests_per_sec: u32,
    /// Request streams a connection may open at once above the rate (the
    /// token bucket's size).
    pub request_burst: u32,
    /// Bidirectional streams a peer may have open at once.
    pub max_streams: u32,
    /// UDP socket buffer size to ask the kernel for.
    pub socket_buffer: usize,
    /// Bytes of chunk data this node stores at most (`--max-storage`).
    pub max_storage: u64,
    /// Bytes a stranger may make this node store, counted by its proven id
    /// and by its address prefix (IPv4 /24, IPv6 /48), held files and
    /// unheld uploads together (`--stranger-allowance`; see
    /// [`crate::transfer::allowance`]). Peers on loopback are bounded by
    /// the quota alone unless `limit_loopback` is set.
    pub stranger_allowance: u64,
    /// Bytes a member of this private network (`network_key`, or an
    /// `allow` list) may make this node store; `None`: the quota
    /// (`--member-allowance`).
    pub member_allowance: Option<u64>,
    /// Bytes of chunk and manifest data held in memory for peers at once,
    /// node-wide (`--chunk-memory`); what quinn buffers per connection is
    /// bounded by its windows on top of this.
    pub chunk_memory: usize,
    /// Copies of each file the network keeps (put places them, repair restores them).
    pub replicas: usize,
    /// How long a provider record lives.
    pub provider_ttl: Duration,
    /// How often this node re-announces the files it holds (well under the TTL).
    pub republish_interval: Duration,
    /// A bucket untouched this long is refreshed with a lookup.
    pub refresh_interval: Duration,
    /// How often held files are checked to be on the R closest live nodes.
    pub repair_interval: Duration,
    /// Bytes per second repair may send, on average.
    pub repair_rate: u64,
    /// How often unused chunks and manifests (incoming copies that never
    /// finished) are collected from the store.
    pub gc_interval: Duration,
    /// How old an unused piece must be to be collected: a copy still arriving
    /// is younger.
    pub gc_grace: Duration,
    /// Time allowed for one DHT request.
    pub rpc_timeout: Duration,
    /// Congestion control for every connection.
    pub congestion: Congestion,
    /// Private network: only nodes holding this key connect, either way
    /// (`--network-key`).
    pub network_key: Option<NetworkKey>,
    /// Only these peers connect, either way (`--allow`); `None` admits any.
    pub allow: Option<HashSet<NodeId>>,
    /// Nodes behind NAT this node relays for at once, when it can be
    /// dialed itself (`--relay-slots`; 0, `--no-relay`, relays for nobody).
    pub relay_slots: usize,
    /// Relayed connections this node carries at once.
    pub relay_circuits: usize,
    /// Bytes one relayed connection may carry, both ways together; then the
    /// relay ends it (the two ends ask for another if they need one).
    pub relay_circuit_bytes: u64,
    /// How long one relayed connection may last.
    pub relay_circuit_time: Duration,
    /// Behind NAT, ask the home router to forward this node's port (UPnP
    /// IGD); `--no-port-mapping` turns it off.
    pub port_mapping: bool,
}

/// QUIC congestion control.
///
/// BBR is the default: it paces to the measured bottleneck rate and does not
/// treat every lost packet as congestion, so random loss (Wi-Fi, lossy WAN
/// links) costs little. Cubic and NewReno halve their window on loss; at 20-30%
/// loss they crawl (a 32 MiB file took 20-50 s through the loss relay where BBR
/// took under a second; `examples/loss_bench.rs` has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Congestion {
    /// Bottleneck bandwidth and round-trip propagation time.
    #[default]
    Bbr,
    /// Cubic (quinn's default, like Linux TCP's).
    Cubic,
    /// NewReno.
    NewReno,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise: Vec::new(),
            bootstrap: Vec::new(),
            data_dir: None,
            role: Role::Peer,
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            gossip_interval: Duration::from_secs(10),
            target_peers: 32,
            max_connections: 256,
            max_connections_per_ip: 8,
            limit_loopback: false,
            max_requests_per_sec: 1000,
            request_burst: 2000,
            max_streams: 64,
            socket_buffer: 4 << 20,
            max_storage: 10 << 30,
            stranger_allowance: 1 << 30,
            member_allowance: None,
            chunk_memory: 32 << 20,
            replicas: 3,
            provider_ttl: Duration::from_secs(24 * 3600),
            republish_interval: Duration::from_secs(12 * 3600),
            refresh_interval: Duration::from_secs(600),
            repair_interval: Duration::from_secs(60),
            repair_rate: 32 << 20,
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
            rpc_timeout: Duration::from_secs(5),
            congestion: Congestion::default(),
            network_key: None,
            allow: None,
            relay_slots: 32,
            relay_circuits: 16,
            relay_circuit_bytes: 1 << 30,
            relay_circuit_time: Duration::from_secs(1800),
            port_mapping: true,
        }
    }
}

impl NodeConfig {
    /// A config for tests and the demo: loopback, short timers.
    pub fn local_test() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            gossip_interval: Duration::from_millis(500),
            provider_ttl: Duration::from_secs(60),
            republish_interval: Duration::from_secs(20),
            refresh_interval: Duration::from_secs(10),
            repair_interval: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(2),
            repair_rate: 256 << 20,
            ..NodeConfig::default()
        }
    }
}
