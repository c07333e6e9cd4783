//! The running node: owns the QUIC endpoint, accepts and dials connections, runs
//! each connection's control stream, routes other streams to services, keeps the
//! membership fresh, and shuts down in order.
//!
//! Tasks: one accept loop; per connection a control reader, a control writer,
//! a stream acceptor and a watcher that cleans up when the connection closes;
//! one maintenance loop (gossip, ping, dialing, bootstrap retry, expiry). All of
//! them hang off one root [`CancellationToken`] and a [`TaskTracker`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, Endpoint, Incoming, RecvStream, SendStream};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::crypto::identity::{Identity, IdentityError};
use crate::crypto::netkey::NetworkKey;
use crate::crypto::tls;
use crate::net::membership::{dialable, LeftReason, PeerEvent, PeerInfo, PeerTable, Registered};
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::wire::{
    Control, ErrorCode, Join, LeaveReason, Request, Role, Welcome, MAX_ADDRS_PER_PEER,
    MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};
use crate::proto::NodeId;
use crate::store::Store;

/// Largest UDP payload MTU discovery may reach.
pub const MAX_UDP_PAYLOAD: u16 = 6000;

/// The endpoint configuration every node (and the bench's bare stream) uses.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    // Default is 1472, which would cap what MTU discovery can find.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// Longest a peer may take over one transfer stream (a 16 MiB chunk at
/// 100 kB/s), after which the stream is dropped.
const STREAM_DEADLINE: Duration = Duration::from_secs(180);

/// Peers gossiped to per round.
const GOSSIP_FANOUT: usize = 6;

/// Peers per gossip message and WELCOME.
const GOSSIP_SAMPLE: usize = 32;
/// Control frames queued per connection before gossip is dropped.
const CONTROL_QUEUE: usize = 64;
/// At most this many dials started per maintenance tick.
const DIALS_PER_TICK: usize = 8;
/// Dial failures after which a gossiped peer is forgotten.
const MAX_DIAL_FAILURES: u32 = 4;
/// Longest wait between bootstrap retries.
const MAX_BOOTSTRAP_BACKOFF: Duration = Duration::from_secs(60);
/// Handshakes in progress above which a new, unvalidated address must first
/// echo a QUIC Retry token: a spoofed source address cannot, so it costs the
/// node no handshake and takes no per-address slot.
const RETRY_ABOVE_HANDSHAKES: usize = 64;
/// A limit hit by one source (an address, a peer) is logged at most once per
/// this long; the repeats in between are counted in the next line.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Sources the log gate remembers at most.
const LOG_GATE_MAX: usize = 4096;

/// A peer's address as users write it: `host:port`, or `ID@host:port` to pin the
/// peer's NodeId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// The pinned id, if given.
    pub id: Option<NodeId>,
    /// Host name or IP address.
    pub host: String,
    /// UDP port.
    pub port: u16,
}

/// An address that is not `host:port` or `ID@host:port`.
#[derive(Debug, thiserror::Error)]
#[error("invalid address {input:?}: {reason} (expected HOST:PORT or ID@HOST:PORT)")]
pub struct ParseAddrError {
    input: String,
    reason: String,
}

impl FromStr for PeerAddr {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseAddrError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (
                Some(id.parse::<NodeId>().map_err(|e| err(&e.to_string()))?),
                rest,
            ),
            None => (None, s),
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("no port"))?;
        let port: u16 = port.parse().map_err(|_| err("bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(err("no host"));
        }
        if port == 0 {
            return Err(err("port 0 cannot be dialed"));
        }
        Ok(PeerAddr {
            id,
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = self.id {
            write!(f, "{id}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl PeerAddr {
    /// A pinned address for a known socket address.
    pub fn pinned(id: NodeId, addr: SocketAddr) -> Self {
        PeerAddr {
            id: Some(id),
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// Resolves the host (DNS names included).
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ConnectError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| ConnectError::Resolve {
                addr: self.to_string(),
                reason: e.to_string(),
            })?
            .collect();
        if addrs.is_empty() {
            return Err(ConnectError::Resolve {
                addr: self.to_string(),
                reason: "no addresses".into(),
            });
        }
        Ok(addrs)
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr {
            id: None,
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

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
    /// before their handshake is processed.
    pub max_connections_per_ip: usize,
    /// Request streams (GET, PUT, HAS, HOLD, DHT) one connection may open per
    /// second on average; a stream over the rate is refused with
    /// [`ErrorCode::RateLimited`]. 0 means no limit.
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
            max_requests_per_sec: 1000,
            request_burst: 2000,
            max_streams: 64,
            socket_buffer: 4 << 20,
            max_storage: 10 << 30,
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
            // Every test node is on 127.0.0.1.
            max_connections_per_ip: 1024,
            ..NodeConfig::default()
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The listening address is taken.
    #[error("cannot listen on {addr}: the address is already in use")]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// Binding the socket failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// Timer settings that QUIC cannot use.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A failed handshake's reason, without the wrapping rustls puts around our
/// verifiers' own messages (`invalid peer certificate: Other(OtherError(Msg("…")))`).
fn handshake_reason(e: &ConnectionError) -> String {
    let text = e.to_string();
    if let Some((_, inner)) = text.split_once("Msg(\"") {
        if let Some((msg, _)) = inner.rsplit_once("\")") {
            return format!("the handshake failed: {msg}");
        }
    }
    text
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        reason: String,
    },
    /// quinn refused to start the dial.
    #[error("cannot dial {addr}: {source}")]
    Dial {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: quinn::ConnectError,
    },
    /// The handshake failed: unreachable, refused, or a certificate the
    /// verifier rejected (this is where a pinned-id mismatch shows).
    #[error("connection to {addr} failed: {}", handshake_reason(source))]
    Handshake {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: ConnectionError,
    },
    /// Nothing answered in time.
    #[error("connection to {addr} timed out")]
    Timeout {
        /// The address.
        addr: SocketAddr,
    },
    /// The peer proved another id than the pinned one.
    #[error(transparent)]
    PinMismatch(#[from] tls::PinMismatch),
    /// The address is this node's own.
    #[error("{addr} is this node itself")]
    SelfDial {
        /// The address.
        addr: SocketAddr,
    },
    /// The JOIN/WELCOME exchange failed.
    #[error("peer at {addr} broke the join protocol: {reason}")]
    Join {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// This node is at its connection limit.
    #[error("connection limit of {0} reached")]
    Limit(usize),
    /// The peer refused this node inside the handshake: another private
    /// network, or not on its allow list.
    #[error("{addr} refused this node: {refusal}")]
    Refused {
        /// The address.
        addr: SocketAddr,
        /// Why, as the peer said.
        refusal: tls::Refusal,
    },
    /// The id is not on this node's allow list, so it is not dialed.
    #[error("{0} is not on this node's allow list")]
    NotAllowed(NodeId),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A running node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    identity: Identity,
    store: Option<Store>,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    local_addr: SocketAddr,
    session: u64,
    peers: Mutex<PeerTable>,
    dht: Mutex<crate::dht::behaviour::DhtState>,
    dht_busy: std::sync::atomic::AtomicBool,
    observed: Mutex<Option<SocketAddr>>,
    /// Ids with a dial under way.
    dialing: Mutex<std::collections::HashSet<NodeId>>,
    bootstrap: Mutex<BootstrapState>,
    events: broadcast::Sender<PeerEvent>,
    permits: Arc<Semaphore>,
    /// Incoming connections (and handshakes) per remote address.
    per_ip: IpCounts,
    /// Incoming handshakes in progress.
    handshaking: AtomicUsize,
    /// Keeps repeated limit and failure logs down to one line per source.
    log_gate: Mutex<LogGate>,
    /// What this node remembers of peers that lied to it or stalled.
    scores: crate::download::score::PeerScores,
    /// Cancelled first on shutdown: no new connections, no maintenance.
    stopping: CancellationToken,
    /// Cancelled last: every task ends.
    cancel: CancellationToken,
    tasks: TaskTracker,
    writers: TaskTracker,
}

/// Live incoming connections per address key (see [`ip_key`]).
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The address a per-address limit counts: an IPv4 address as it is (also
/// when it arrives IPv4-mapped), an IPv6 address by its /64, which one
/// subscriber usually holds whole.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One of an address's connection slots, given back on drop.
struct IpSlot {
    counts: IpCounts,
    key: IpAddr,
}

impl IpSlot {
    /// A slot for `key`, if it has fewer than `max` in use.
    fn take(counts: &IpCounts, key: IpAddr, max: usize) -> Option<IpSlot> {
        let mut c = lock(counts);
        let n = c.get(&key).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        c.insert(key, n + 1);
        Some(IpSlot {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// What a connection holds while it lives: its place under
/// `max_connections` and, if it came in, under `max_connections_per_ip`.
struct ConnPermit {
    _total: OwnedSemaphorePermit,
    _ip: Option<IpSlot>,
}

/// Counts a handshake in progress until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A source of repeated log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LogKey {
    /// The total connection limit.
    Total,
    /// An address over its connection limit.
    PerIp(IpAddr),
    /// Failed incoming handshakes from an address.
    Handshake(IpAddr),
    /// A peer over its request rate.
    Rate(NodeId),
    /// Connections from an address closed for breaking the protocol.
    Hostile(IpAddr),
}

/// Lets the first line about a source through, then one per [`LOG_WINDOW`],
/// counting the ones held back.
#[derive(Default)]
struct LogGate {
    seen: HashMap<LogKey, (Instant, u64)>,
}

impl LogGate {
    /// `Some(held back since the last line)` if a line about `key` may be
    /// logged now.
    fn check(&mut self, key: LogKey, now: Instant) -> Option<u64> {
        if let Some((since, held)) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(*since) < LOG_WINDOW {
                *held += 1;
                return None;
            }
            let n = *held;
            *since = now;
            *held = 0;
            return Some(n);
        }
        if self.seen.len() >= LOG_GATE_MAX {
            self.seen
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < LOG_WINDOW);
            if self.seen.len() >= LOG_GATE_MAX {
                self.seen.clear();
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

/// " (N more not logged)" after a gated line, or nothing.
fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last such line)")
    }
}

/// Request streams a connection may open: `rate` per second, up to `burst`
/// at once.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct BootstrapState {
    next: Instant,
    backoff: Duration,
    running: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The QUIC transport settings of every connection a node with `config` makes
/// or accepts (public so benchmarks can give a bare quinn stream the same ones).
pub fn transport_config(config: &NodeConfig) -> Result<quinn::TransportConfig, StartError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|_| StartError::Config("idle timeout too large".into()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(config.keep_alive));
    t.max_concurrent_bidi_streams(config.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Bound memory per connection: quinn's defaults let a peer make us buffer
    // far more than a few chunks.
    t.receive_window((16u32 << 20).into());
    t.stream_receive_window((4u32 << 20).into());
    t.send_window(16 << 20);
    t.datagram_receive_buffer_size(None);
    // Packet size is the big lever on CPU-bound links: discover up to
    // MAX_UDP_PAYLOAD where the path allows it (loopback, jumbo-frame LANs) and
    // stay at 1200-1452 where it does not. Above ~6500 bytes quinn's segmentation
    // offload batches exceed 64 KiB and fail.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    let cc: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match config.congestion {
        Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
    };
    t.congestion_controller_factory(cc);
    Ok(t)
}

/// Binds a UDP socket for QUIC, asking the kernel for `buffer`-byte send and
/// receive buffers (it may grant less: `net.core.rmem_max`; the granted sizes are
/// logged at debug level).
pub fn bind_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::AddrInUse { addr }
        } else {
            StartError::Bind { addr, source }
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        // Accept IPv4 too where the OS allows it.
        let _ = socket.set_only_v6(false);
    }
    // Ask for bigger buffers; the kernel may grant less (net.core.rmem_max).
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into()).map_err(bind_err)?;
    debug!(
        requested = buffer,
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    Ok(socket.into())
}

fn left_reason(err: &ConnectionError) -> (LeftReason, bool) {
    match err {
        ConnectionError::ApplicationClosed(c) => {
            match ErrorCode::from_code(c.error_code.into_inner()) {
                Some(ErrorCode::Shutdown) => (LeftReason::Leave, false),
                Some(ErrorCode::DuplicateConnection) => (
                    LeftReason::Closed("replaced by another connection".into()),
                    true,
                ),
                Some(code) => (
                    LeftReason::Closed(format!("closed by peer: {code:?}")),
                    false,
                ),
                None => (LeftReason::Closed(c.to_string()), false),
            }
        }
        ConnectionError::TimedOut => (LeftReason::TimedOut, false),
        ConnectionError::LocallyClosed => (LeftReason::Closed("closed locally".into()), false),
        other => (LeftReason::Closed(other.to_string()), false),
    }
}

/// Closes `conn` with `code` and logs why.
fn close(conn: &Connection, code: ErrorCode, why: &dyn std::fmt::Display) {
    warn!(remote = %conn.remote_address(), code = ?code, "closing connection: {why}");
    conn.close(code.var_int(), code.reason());
}

impl Node {
    /// Starts a node: loads its identity, binds the endpoint, and begins
    /// accepting connections and dialing the bootstrap nodes.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let identity = match &config.data_dir {
            Some(dir) => Identity::load_or_create(dir)?,
            None => Identity::generate()?,
        };
        Self::start_with_identity(config, identity).await
    }

    /// Starts a node with a given identity (tests, the demo).
    pub async fn start_with_identity(
        config: NodeConfig,
        identity: Identity,
    ) -> Result<Node, StartError> {
        let store = match (&config.data_dir, config.role) {
            (Some(dir), Role::Peer) => Some(Store::open(dir, config.max_storage)?),
            _ => None,
        };
        let transport = Arc::new(transport_config(&config)?);
        // In a private network the certificate carries the membership proof,
        // made now from the key so that it always matches the key in use.
        let identity = match &config.network_key {
            Some(network) => identity.for_network(network)?,
            None => identity,
        };
        let policy = tls::PeerPolicy {
            network: config.network_key.clone(),
            allow: config.allow.clone(),
        };
        let (client_crypto, server_crypto) = tls::quic_configs_with(&identity, &policy)?;
        let mut server_config = quinn::ServerConfig::with_crypto(server_crypto);
        server_config.transport_config(transport.clone());
        server_config.migration(false);
        let mut client_config = quinn::ClientConfig::new(client_crypto);
        client_config.transport_config(transport);

        let socket = bind_socket(config.listen, config.socket_buffer)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| StartError::Config("no async runtime".into()))?;
        let endpoint = Endpoint::new(
            endpoint_config(),
            (config.role == Role::Peer).then_some(server_config),
            socket,
            runtime,
        )
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = endpoint.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;

        let (events, _) = broadcast::channel(1024);
        let now = Instant::now();
        let node = Node {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.max_connections)),
                per_ip: Default::default(),
                handshaking: AtomicUsize::new(0),
                log_gate: Mutex::new(LogGate::default()),
                scores: crate::download::score::PeerScores::new(),
                peers: Mutex::new(PeerTable::new(identity.node_id())),
                dht: Mutex::new(crate::dht::behaviour::DhtState::new(identity.node_id())),
                dht_busy: Default::default(),
                observed: Mutex::new(None),
                dialing: Mutex::new(Default::default()),
                bootstrap: Mutex::new(BootstrapState {
                    next: now,
                    backoff: Duration::from_secs(1),
                    running: false,
                }),
                session: rand::random(),
                config,
                identity,
                store,
                endpoint,
                client_config,
                local_addr,
                events,
                stopping: CancellationToken::new(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                writers: TaskTracker::new(),
            }),
        };
        debug!(id = %node.id(), addr = %local_addr, "node started");
        node.load_dht();
        let n = node.clone();
        node.inner.tasks.spawn(async move { n.accept_loop().await });
        let n = node.clone();
        node.inner
            .tasks
            .spawn(async move { n.maintenance_loop().await });
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.identity.node_id()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address to give others to dial this node, pinned with its id.
    pub fn addr(&self) -> PeerAddr {
        let addr = self
            .listen_addrs()
            .into_iter()
            .next()
            .unwrap_or(self.inner.local_addr);
        PeerAddr::pinned(self.id(), addr)
    }

    /// The DHT state, locked.
    pub(crate) fn dht(&self) -> MutexGuard<'_, crate::dht::behaviour::DhtState> {
        lock(&self.inner.dht)
    }

    /// Spawns a task that ends with the node.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// Contacts in the routing table.
    pub fn routing_table_len(&self) -> usize {
        self.dht().table.len()
    }

    /// The node's store (`None` for clients and nodes without a data directory).
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// Peer scores, shared by every download this node makes: a peer banned
    /// in one is not asked in the next.
    pub fn scores(&self) -> &crate::download::score::PeerScores {
        &self.inner.scores
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Subscribes to membership events.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.events.subscribe()
    }

    /// A snapshot of the peer table.
    pub fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.inner.peers).snapshot(Instant::now())
    }

    /// Ids of the connected full nodes.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.peers()
            .into_iter()
            .filter(|p| p.role == Role::Peer && p.state != crate::net::membership::PeerState::Known)
            .map(|p| p.id)
            .collect()
    }

    /// The live connection to `id`, if any.
    pub fn connection(&self, id: &NodeId) -> Option<Connection> {
        lock(&self.inner.peers).connection(id)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.stopping.is_cancelled()
    }

    /// The addresses this node announces: `--advertise` if given, else the bound
    /// address, or, when bound to 0.0.0.0, the port at the address peers saw.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let cfg = &self.inner.config;
        if !cfg.advertise.is_empty() {
            return cfg.advertise.clone();
        }
        let local = self.inner.local_addr;
        if dialable(&local) {
            return vec![local];
        }
        match *lock(&self.inner.observed) {
            Some(seen) => vec![SocketAddr::new(seen.ip(), local.port())],
            None => Vec::new(),
        }
    }

    /// Records an address this node was seen at (by a peer's WELCOME, or the
    /// local address an incoming connection arrived on), for a node bound to
    /// an unspecified address to announce. A routable address replaces a
    /// loopback one; otherwise the first one seen is kept.
    fn learn_own_addr(&self, seen: SocketAddr) {
        if seen.ip().is_unspecified() {
            return;
        }
        let mut observed = lock(&self.inner.observed);
        let better = match *observed {
            None => true,
            Some(cur) => cur.ip().is_loopback() && !seen.ip().is_loopback(),
        };
        if better {
            *observed = Some(seen);
        }
    }

    /// A member left: drop it from the routing table too (unless this node is
    /// the one stopping: then the table is kept for the next start).
    fn forget(&self, id: NodeId) {
        if !self.inner.stopping.is_cancelled() {
            self.dht().table.remove(&id);
        }
    }

    fn emit(&self, event: PeerEvent) {
        // Peers closing their side after our LEAVE are not news.
        if self.inner.stopping.is_cancelled() {
            return;
        }
        // No subscribers is fine.
        let _ = self.inner.events.send(event);
    }

    /// Dials `addr`, runs JOIN/WELCOME, and returns the peer's proven id.
    ///
    /// If a connection to that peer already exists the new one is resolved by
    /// the one-connection rule, and the id is still returned.
    pub async fn connect(&self, addr: &PeerAddr) -> Result<NodeId, ConnectError> {
        let addrs = addr.resolve().await?;
        let mut last = None;
        for a in addrs {
            match self.dial(a, addr.id).await {
                Ok(id) => return Ok(id),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ConnectError::Resolve {
            addr: addr.to_string(),
            reason: "no addresses".into(),
        }))
    }

    async fn dial(&self, addr: SocketAddr, expect: Option<NodeId>) -> Result<NodeId, ConnectError> {
        if self.inner.stopping.is_cancelled() {
            return Err(ConnectError::ShuttingDown);
        }
        // The verifier would refuse it; do not spend a handshake on it.
        if let (Some(id), Some(allow)) = (expect, &self.inner.config.allow) {
            if !allow.contains(&id) {
                return Err(ConnectError::NotAllowed(id));
            }
        }
        // One dial per known peer at a time, and none if a connection is up:
        // a second connection would only be closed as a duplicate.
        let _guard = match expect {
            Some(id) => {
                let deadline = Instant::now() + self.inner.config.handshake_timeout;
                loop {
                    if self
                        .connection(&id)
                        .is_some_and(|c| c.close_reason().is_none())
                    {
                        return Ok(id);
                    }
                    if lock(&self.inner.dialing).insert(id) {
                        break Some(DialGuard {
                            node: self.clone(),
                            id,
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(ConnectError::Timeout { addr });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
            None => None,
        };
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConnectError::Limit(self.inner.config.max_connections))?;
        let timeout = self.inner.config.handshake_timeout;
        let connecting = self
            .inner
            .endpoint
            .connect_with(
                self.inner.client_config.clone(),
                addr,
                &tls::server_name_for(expect),
            )
            .map_err(|source| ConnectError::Dial { addr, source })?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(ConnectError::Timeout { addr }),
            Ok(Err(source)) => {
                return Err(match tls::Refusal::of(&source) {
                    Some(refusal) => ConnectError::Refused { addr, refusal },
                    None => ConnectError::Handshake { addr, source },
                })
            }
            Ok(Ok(conn)) => conn,
        };
        let Some(id) = tls::peer_node_id(&conn) else {
            close(&conn, ErrorCode::Internal, &"no peer certificate");
            return Err(ConnectError::Join {
                addr,
                reason: "no peer certificate".into(),
            });
        };
        if id == self.id() {
            conn.close(ErrorCode::SelfDial.var_int(), ErrorCode::SelfDial.reason());
            return Err(ConnectError::SelfDial { addr });
        }
        if let Some(expected) = expect.filter(|e| *e != id) {
            // The verifier already refuses this; kept as a second line.
            conn.close(
                ErrorCode::NotAllowed.var_int(),
                ErrorCode::NotAllowed.reason(),
            );
            return Err(tls::PinMismatch {
                expected,
                actual: id,
            }
            .into());
        }
        if expect.is_none() {
            info!(peer = %id, %addr, "peer id learned on first contact (address was not pinned)");
        }
        let span = info_span!("conn", remote = %addr, peer = %id.fmt_short());
        let join_err = |reason: String| ConnectError::Join { addr, reason };
        let welcome = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| join_err(e.to_string()))?;
            let join = Request::Join(Join {
                version: PROTOCOL_VERSION,
                role: self.inner.config.role,
                listen_addrs: self.listen_addrs(),
                capabilities: 0,
                session: self.inner.session,
            });
            write_frame(&mut send, &join, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| join_err(e.to_string()))?;
            match read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(Control::Welcome(w))) => Ok((send, recv, w)),
                Ok(Some(_)) => {
                    close(&conn, ErrorCode::UnexpectedMessage, &"expected WELCOME");
                    Err(join_err("expected WELCOME".into()))
                }
                Ok(None) => Err(join_err("control stream closed before WELCOME".into())),
                Err(e) => {
                    if let FrameError::Wire(w) = &e {
                        close(&conn, w.code(), w);
                    }
                    Err(join_err(e.to_string()))
                }
            }
        }
        .instrument(span.clone());
        let (send, recv, welcome) = match tokio::time::timeout(timeout, welcome).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                // In a simultaneous dial the peer may close this connection as the
                // loser before our side has read its WELCOME: the pair is still
                // connected, through the other connection.
                if let Some(ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
                    if c.error_code == ErrorCode::DuplicateConnection.var_int() {
                        return Ok(id);
                    }
                }
                // The dialer's side of the handshake ends before the server has
                // checked its certificate, so a refusal shows up here.
                if let Some(refusal) = conn.close_reason().as_ref().and_then(tls::Refusal::of) {
                    return Err(ConnectError::Refused { addr, refusal });
                }
                return Err(e);
            }
            Err(_) => {
                close(&conn, ErrorCode::Timeout, &"no WELCOME in time");
                return Err(ConnectError::Timeout { addr });
            }
        };
        self.learn_own_addr(welcome.observed_addr);
        lock(&self.inner.peers).learn(&welcome.peers, Instant::now());
        let mut addrs = vec![addr];
        addrs.extend(
            welcome
                .listen_addrs
                .iter()
                .copied()
                .take(MAX_ADDRS_PER_PEER),
        );
        self.run_connection(
            conn,
            ConnMeta {
                id,
                role: Role::Peer,
                outbound: true,
                session: welcome.session,
                addrs,
            },
            send,
            recv,
            ConnPermit {
                _total: permit,
                _ip: None,
            },
            span,
        );
        Ok(id)
    }

    async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                _ = self.inner.stopping.cancelled() => return,
                i = self.inner.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let remote = incoming.remote_address();
            // Under a handshake flood, an address must first show it receives
            // what is sent to it (QUIC Retry); spoofed sources go no further.
            if !incoming.remote_address_validated()
                && incoming.may_retry()
                && self.inner.handshaking.load(Ordering::Relaxed) >= RETRY_ABOVE_HANDSHAKES
            {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            // Checked before the handshake is processed: refusing costs one
            // small packet.
            let key = ip_key(remote.ip());
            let max_per_ip = self.inner.config.max_connections_per_ip;
            let Some(slot) = IpSlot::take(&self.inner.per_ip, key, max_per_ip) else {
                if let Some(held) = self.gate(LogKey::PerIp(key)) {
                    warn!(
                        %remote,
                        "address over its limit of {max_per_ip} connections: refusing{}",
                        held_back(held)
                    );
                }
                incoming.refuse();
                continue;
            };
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
                if let Some(held) = self.gate(LogKey::Total) {
                    warn!(%remote, "connection limit reached: refusing{}", held_back(held));
                }
                incoming.refuse();
                continue;
            };
            let permit = ConnPermit {
                _total: permit,
                _ip: Some(slot),
            };
            let span = info_span!("conn", %remote);
            let n = self.clone();
            self.inner
                .tasks
                .spawn(async move { n.handle_incoming(incoming, permit).await }.instrument(span));
        }
    }

    /// `Some(lines held back)` if a line about `key` may be logged now.
    fn gate(&self, key: LogKey) -> Option<u64> {
        lock(&self.inner.log_gate).check(key, Instant::now())
    }

    /// [`close`] for what a hostile peer can cause at will (garbage where a
    /// request or JOIN should be): logged once per address per
    /// [`LOG_WINDOW`], and not again for a connection already closed.
    fn close_hostile(&self, conn: &Connection, code: ErrorCode, why: &dyn std::fmt::Display) {
        if conn.close_reason().is_some() {
            return;
        }
        match self.gate(LogKey::Hostile(ip_key(conn.remote_address().ip()))) {
            Some(held) => close(conn, code, &format_args!("{why}{}", held_back(held))),
            None => conn.close(code.var_int(), code.reason()),
        }
    }

    async fn handle_incoming(self, incoming: Incoming, permit: ConnPermit) {
        let remote = incoming.remote_address();
        let timeout = self.inner.config.handshake_timeout;
        let failed = LogKey::Handshake(ip_key(remote.ip()));
        let handshake = Counted::new(&self.inner.handshaking);
        let conn = match incoming.accept() {
            Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    if let Some(held) = self.gate(failed) {
                        let held = held_back(held);
                        match tls::Refusal::of(&e) {
                            Some(refusal) => {
                                info!(%remote, "refused by the dialing peer: {refusal}{held}")
                            }
                            None => info!(%remote, "incoming handshake failed: {e}{held}"),
                        }
                    }
                    return;
                }
                Err(_) => {
                    if let Some(held) = self.gate(failed) {
                        info!(%remote, "incoming handshake timed out{}", held_back(held));
                    }
                    return;
                }
            },
            Err(e) => {
                if let Some(held) = self.gate(failed) {
                    info!(%remote, "incoming connection failed: {e}{}", held_back(held));
                }
                return;
            }
        };
        drop(handshake);
        let Some(id) = tls::peer_node_id(&conn) else {
            close(&conn, ErrorCode::Internal, &"no peer certificate");
            return;
        };
        if id == self.id() {
            close(&conn, ErrorCode::SelfDial, &"dialed by itself");
            return;
        }
        // A node bound to 0.0.0.0 that is only ever dialed (the first node of
        // a network) learns its address from the one it was reached at.
        if let Some(ip) = conn.local_ip() {
            self.learn_own_addr(SocketAddr::new(ip, self.inner.local_addr.port()));
        }
        let span = info_span!("peer", peer = %id.fmt_short());
        let joined = async {
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            let join = match read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(Request::Join(join))) => join,
                Ok(Some(_)) => {
                    self.close_hostile(
                        &conn,
                        ErrorCode::ProtocolViolation,
                        &"first stream is not JOIN",
                    );
                    return None;
                }
                Ok(None) => {
                    self.close_hostile(&conn, ErrorCode::ProtocolViolation, &"empty first stream");
                    return None;
                }
                Err(e) => {
                    self.close_hostile(&conn, e.code(), &format!("bad JOIN: {e}"));
                    return None;
                }
            };
            let peers = lock(&self.inner.peers).sample(GOSSIP_SAMPLE, id);
            let welcome = Control::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                observed_addr: remote,
                listen_addrs: self.listen_addrs(),
                capabilities: 0,
                session: self.inner.session,
                peers,
            });
            if let Err(e) = write_frame(&mut send, &welcome, MAX_CONTROL_FRAME).await {
                debug!("could not send WELCOME: {e}");
                return None;
            }
            Some((send, recv, join))
        }
        .instrument(span.clone());
        let Ok(joined) = tokio::time::timeout(timeout, joined).await else {
            self.close_hostile(&conn, ErrorCode::Timeout, &"no JOIN in time");
            return;
        };
        let Some((send, recv, join)) = joined else {
            return;
        };
        let mut addrs = vec![remote];
        addrs.extend(join.listen_addrs.iter().copied());
        self.run_connection(
            conn,
            ConnMeta {
                id,
                role: join.role,
                outbound: false,
                session: join.session,
                addrs,
            },
            send,
            recv,
            permit,
            span,
        );
    }

    /// Registers a connection whose control stream is up and starts its tasks.
    fn run_connection(
        &self,
        conn: Connection,
        meta: ConnMeta,
        send: SendStream,
        recv: RecvStream,
        permit: ConnPermit,
        span: tracing::Span,
    ) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = crate::net::membership::ConnHandle {
            conn: conn.clone(),
            outbound: meta.outbound,
            session: meta.session,
            control: tx.clone(),
        };
        let outcome = lock(&self.inner.peers).register(
            meta.id,
            meta.role,
            &meta.addrs,
            handle,
            Instant::now(),
        );
        let joined = match outcome {
            Registered::Duplicate => {
                debug!(parent: &span, peer = %meta.id, "duplicate connection closed");
                conn.close(
                    ErrorCode::DuplicateConnection.var_int(),
                    ErrorCode::DuplicateConnection.reason(),
                );
                return;
            }
            Registered::Accepted { joined, replaced } => {
                if let Some(old) = replaced {
                    debug!(parent: &span, peer = %meta.id, "connection replaced");
                    old.close(
                        ErrorCode::DuplicateConnection.var_int(),
                        ErrorCode::DuplicateConnection.reason(),
                    );
                }
                joined
            }
        };
        let addr = conn.remote_address();
        self.emit(PeerEvent::Connected {
            id: meta.id,
            addr,
            outbound: meta.outbound,
            role: meta.role,
        });
        if joined {
            self.emit(PeerEvent::Joined { id: meta.id, addr });
        }

        let cancel = self.inner.cancel.child_token();
        self.inner
            .writers
            .spawn(control_writer(conn.clone(), send, rx, cancel.clone()).instrument(span.clone()));
        let n = self.clone();
        let c = conn.clone();
        let id = meta.id;
        let role = meta.role;
        self.inner.tasks.spawn(
            async move { n.control_reader(c, id, role, recv, tx).await }.instrument(span.clone()),
        );
        let n = self.clone();
        let c = conn.clone();
        self.inner
            .tasks
            .spawn(async move { n.stream_acceptor(c, id, role).await }.instrument(span.clone()));
        if role == Role::Peer {
            self.dht_seen(id, meta.addrs.clone());
        }
        let n = self.clone();
        self.inner.tasks.spawn(
            async move {
                let err = tokio::select! {
                    e = conn.closed() => e,
                    _ = cancel.cancelled() => return,
                };
                let (reason, replaced) = left_reason(&err);
                debug!(reason = %reason, "connection closed");
                let left = lock(&n.inner.peers).unregister(
                    id,
                    conn.stable_id(),
                    reason,
                    replaced,
                    n.inner.config.handshake_timeout,
                    Instant::now(),
                );
                if let Some(reason) = left {
                    n.forget(id);
                    n.emit(PeerEvent::Left { id, reason });
                }
                drop(permit);
            }
            .instrument(span),
        );
    }

    async fn control_reader(
        self,
        conn: Connection,
        id: NodeId,
        role: Role,
        mut recv: RecvStream,
        tx: mpsc::Sender<Control>,
    ) {
        loop {
            let msg = match read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    // The peer finished its control stream: it is going away.
                    self.peer_left(&conn, id);
                    return;
                }
                Err(FrameError::Wire(e)) => {
                    close(&conn, e.code(), &e);
                    return;
                }
                Err(FrameError::Io(e)) => {
                    if conn.close_reason().is_none() {
                        close(
                            &conn,
                            ErrorCode::ProtocolViolation,
                            &format!("control stream failed: {e}"),
                        );
                    }
                    return;
                }
            };
            lock(&self.inner.peers).seen(id, Instant::now());
            match msg {
                Control::Welcome(_) => {
                    close(&conn, ErrorCode::UnexpectedMessage, &"WELCOME after JOIN");
                    return;
                }
                Control::Peers(records) => {
                    if role == Role::Client {
                        close(&conn, ErrorCode::UnexpectedMessage, &"gossip from a client");
                        return;
                    }
                    let new = lock(&self.inner.peers).learn(&records, Instant::now());
                    debug!(count = records.len(), new, "gossip received");
                }
                Control::Ping(n) => {
                    let _ = tx.try_send(Control::Pong(n));
                }
                Control::Pong(_) => {}
                Control::Leave(LeaveReason::Shutdown) => {
                    self.peer_left(&conn, id);
                    return;
                }
            }
        }
    }

    /// The peer said LEAVE: report it at once and close our side.
    fn peer_left(&self, conn: &Connection, id: NodeId) {
        let left = lock(&self.inner.peers).unregister(
            id,
            conn.stable_id(),
            LeftReason::Leave,
            false,
            Duration::ZERO,
            Instant::now(),
        );
        if let Some(reason) = left {
            self.forget(id);
            self.emit(PeerEvent::Left { id, reason });
        }
        conn.close(ErrorCode::Ok.var_int(), ErrorCode::Ok.reason());
    }

    /// Accepts the streams a peer opens after the control stream.
    ///
    /// Each stream takes a token from the connection's bucket
    /// (`max_requests_per_sec`, `request_burst`); one that finds none is
    /// reset and stopped with [`ErrorCode::RateLimited`] before anything on
    /// it is read, and the connection stays up, unless more streams than
    /// twice the rate or burst are refused within a second: a peer that keeps
    /// opening them regardless is closed with the same code.
    async fn stream_acceptor(self, conn: Connection, peer: NodeId, role: Role) {
        let cfg = &self.inner.config;
        let (rate, burst) = (cfg.max_requests_per_sec, cfg.request_burst);
        let mut bucket = TokenBucket::new(rate, burst, Instant::now());
        let max_refused = rate.max(burst).saturating_mul(2);
        let (mut refused, mut window) = (0u32, Instant::now());
        loop {
            let (mut send, mut recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let now = Instant::now();
            if !bucket.take(now) {
                let _ = send.reset(ErrorCode::RateLimited.var_int());
                let _ = recv.stop(ErrorCode::RateLimited.var_int());
                if now.saturating_duration_since(window) >= Duration::from_secs(1) {
                    (refused, window) = (0, now);
                }
                refused += 1;
                if refused > max_refused {
                    close(
                        &conn,
                        ErrorCode::RateLimited,
                        &format_args!("peer {peer} kept exceeding {rate} requests per second"),
                    );
                    return;
                }
                if let Some(held) = self.gate(LogKey::Rate(peer)) {
                    warn!(
                        %peer,
                        "peer exceeds {rate} requests per second: refusing its extra streams{}",
                        held_back(held)
                    );
                }
                continue;
            }
            let timeout = self.inner.config.handshake_timeout;
            let conn = conn.clone();
            let store = self.inner.store.clone();
            let node = self.clone();
            self.inner.tasks.spawn(
                async move {
                    let first = tokio::time::timeout(
                        timeout,
                        read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME),
                    )
                    .await;
                    match first {
                        Err(_) => {
                            let _ = recv.stop(ErrorCode::Timeout.var_int());
                            drop(send);
                        }
                        Ok(Ok(Some(Request::Join(_)))) => {
                            node.close_hostile(&conn, ErrorCode::ProtocolViolation, &"second JOIN");
                        }
                        Ok(Ok(Some(Request::Dht(request)))) => {
                            let remote = conn.remote_address();
                            let serve =
                                node.serve_dht(peer, role == Role::Client, remote, request, send);
                            let _ =
                                tokio::time::timeout(node.inner.config.rpc_timeout, serve).await;
                        }
                        Ok(Ok(Some(request))) => {
                            let held = match &request {
                                Request::Hold { id } => Some(*id),
                                _ => None,
                            };
                            // A peer that stops reading or writing must not pin a
                            // buffer (up to a chunk) and a stream forever.
                            let serve = crate::transfer::serve(store.clone(), request, send, recv);
                            if tokio::time::timeout(STREAM_DEADLINE, serve).await.is_err() {
                                debug!("transfer stream took too long: dropped");
                            }
                            // A new holder says so in the DHT.
                            if let (Some(id), Some(store)) = (held, store) {
                                if store.holds(&id).unwrap_or(false) {
                                    node.announce(id).await;
                                }
                            }
                        }
                        Ok(Ok(None)) => {
                            let _ = recv.stop(ErrorCode::ProtocolViolation.var_int());
                        }
                        // The peer reset the stream, or the connection went:
                        // a request given up on, not a bad one.
                        Ok(Err(FrameError::Io(e)))
                            if e.kind() != std::io::ErrorKind::UnexpectedEof =>
                        {
                            debug!("request stream ended before its request: {e}");
                        }
                        Ok(Err(e)) => {
                            node.close_hostile(&conn, e.code(), &format!("bad request: {e}"))
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    async fn maintenance_loop(self) {
        let tick = self
            .inner
            .config
            .gossip_interval
            .min(Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_gossip = Instant::now();
        let start = Instant::now();
        let cfg = &self.inner.config;
        let jitter = |d: Duration| d.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        let mut next_refresh = start;
        let mut next_republish = start + jitter(cfg.republish_interval.min(Duration::from_secs(5)));
        let mut next_repair = start + jitter(cfg.repair_interval);
        let mut next_gc = start + cfg.gc_interval;
        let mut self_lookup_done = false;
        loop {
            tokio::select! {
                _ = self.inner.stopping.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = Instant::now();
            if now >= next_gossip {
                next_gossip = now + self.inner.config.gossip_interval;
                self.gossip();
            }
            let cfg = &self.inner.config;
            let (dials, expired) = {
                let mut t = lock(&self.inner.peers);
                let expired = t.expire_grace(now);
                t.expire_known(now, cfg.gossip_interval * 4, MAX_DIAL_FAILURES);
                let want = cfg.target_peers.saturating_sub(t.connected_peers());
                let dials = if cfg.role == Role::Peer {
                    t.dial_candidates(now, want.min(DIALS_PER_TICK))
                } else {
                    Vec::new()
                };
                (dials, expired)
            };
            for (id, reason) in expired {
                self.emit(PeerEvent::Left { id, reason });
            }
            for (id, addrs) in dials {
                let n = self.clone();
                self.inner.tasks.spawn(async move {
                    let mut ok = false;
                    for a in addrs {
                        match n.dial(a, Some(id)).await {
                            Ok(_) => {
                                ok = true;
                                break;
                            }
                            Err(e) => debug!(peer = %id, addr = %a, "dial failed: {e}"),
                        }
                    }
                    let mut t = lock(&n.inner.peers);
                    if ok {
                        t.dial_done(id);
                    } else {
                        t.dial_failed(id, Instant::now());
                    }
                });
            }
            self.maybe_bootstrap(now);

            if now >= next_gc {
                next_gc = now + self.inner.config.gc_interval;
                if let Some(store) = self.inner.store.clone() {
                    let grace = self.inner.config.gc_grace;
                    self.inner
                        .writers
                        .spawn_blocking(move || match store.collect_garbage(grace) {
                            Ok(r) if r.chunks + r.manifests > 0 => info!(
                                chunks = r.chunks,
                                manifests = r.manifests,
                                bytes = r.bytes,
                                "collected pieces no held file uses"
                            ),
                            Ok(_) => {}
                            Err(e) => warn!("garbage collection: {e}"),
                        });
                }
            }

            // The DHT: one round at a time, off this loop.
            if !self.dht().table.is_empty()
                && !self
                    .inner
                    .dht_busy
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                let cfg = &self.inner.config;
                let mut due = crate::dht::behaviour::DhtDue::default();
                let first = !self_lookup_done;
                self_lookup_done = true;
                if now >= next_refresh {
                    due.refresh = true;
                    next_refresh = now + cfg.refresh_interval.min(Duration::from_secs(60));
                }
                if cfg.role == Role::Peer && now >= next_republish {
                    due.republish = true;
                    next_republish = now + jitter(cfg.republish_interval);
                }
                if cfg.role == Role::Peer && now >= next_repair {
                    due.repair = true;
                    next_repair = now + jitter(cfg.repair_interval);
                }
                let n = self.clone();
                self.spawn(async move {
                    if first {
                        // Joining: a lookup of our own id fills the table
                        // around us and tells those nodes about us.
                        n.lookup(n.id(), None).await;
                    }
                    n.dht_round(due).await;
                    n.inner
                        .dht_busy
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
    }

    /// Sends each connected full node a sample of the others, and a PING.
    ///
    /// Each round goes to [`GOSSIP_FANOUT`] random peers, not to all of them:
    /// the cost stays linear in the network's size (sending to every connected
    /// peer every round overloaded 150 nodes on one machine).
    fn gossip(&self) {
        use rand::seq::IteratorRandom;
        if self.inner.config.role == Role::Client {
            return;
        }
        let t = lock(&self.inner.peers);
        let chosen = t
            .connections()
            .into_iter()
            .filter(|(_, role, _)| *role == Role::Peer)
            .choose_multiple(&mut rand::rng(), GOSSIP_FANOUT);
        for (id, _, handle) in chosen {
            let sample = t.sample(GOSSIP_SAMPLE, id);
            // A full queue means the peer is not reading: skip this round.
            if !sample.is_empty() {
                let _ = handle.control.try_send(Control::Peers(sample));
            }
            let _ = handle.control.try_send(Control::Ping(rand::random()));
        }
    }

    /// While no full node is connected, retries the bootstrap addresses with
    /// exponential backoff.
    fn maybe_bootstrap(&self, now: Instant) {
        if self.inner.config.bootstrap.is_empty()
            || self.inner.config.role == Role::Client
            || self.inner.stopping.is_cancelled()
        {
            return;
        }
        if lock(&self.inner.peers).connected_peers() > 0 {
            let mut b = lock(&self.inner.bootstrap);
            b.backoff = Duration::from_secs(1);
            return;
        }
        {
            let mut b = lock(&self.inner.bootstrap);
            if b.running || now < b.next {
                return;
            }
            b.running = true;
        }
        let n = self.clone();
        self.inner.tasks.spawn(async move {
            let result = n.bootstrap_once().await;
            let mut b = lock(&n.inner.bootstrap);
            b.running = false;
            match result {
                Ok(()) => b.backoff = Duration::from_secs(1),
                Err(last) => {
                    b.next = Instant::now() + b.backoff;
                    warn!(retry_in = ?b.backoff, "no bootstrap node reachable: {last}");
                    b.backoff = (b.backoff * 2).min(MAX_BOOTSTRAP_BACKOFF);
                }
            }
        });
    }

    /// Dials every bootstrap address; Ok if at least one connected, else the
    /// last error.
    pub async fn bootstrap_once(&self) -> Result<(), String> {
        let mut last = Err("no bootstrap addresses".to_string());
        for addr in self.inner.config.bootstrap.clone() {
            match self.connect(&addr).await {
                Ok(_) => last = Ok(()),
                Err(e) => {
                    debug!(%addr, "bootstrap failed: {e}");
                    if last.is_err() {
                        last = Err(format!("{addr}: {e}"));
                    }
                }
            }
        }
        last
    }

    /// Graceful shutdown: LEAVE to every peer, close every connection with
    /// [`ErrorCode::Shutdown`], wait (bounded) for the endpoint to go idle.
    pub async fn shutdown(&self) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        self.inner.stopping.cancel();
        self.save_dht().await;
        // Tell everyone first, then stop the tasks.
        let conns = lock(&self.inner.peers).connections();
        for (_, _, handle) in &conns {
            let _ = handle
                .control
                .try_send(Control::Leave(LeaveReason::Shutdown));
        }
        self.inner.writers.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.writers.wait()).await;
        self.inner.cancel.cancel();
        self.inner
            .endpoint
            .close(ErrorCode::Shutdown.var_int(), ErrorCode::Shutdown.reason());
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        // Chunk writes already handed to blocking threads finish (and remove
        // their temp files) before the process may exit.
        if let Some(store) = self.inner.store.clone() {
            let done =
                tokio::task::spawn_blocking(move || store.wait_writes(Duration::from_secs(5)));
            if !matches!(done.await, Ok(true)) {
                warn!("a chunk write was still under way at shutdown; its temp file goes at the next start");
            }
        }
        debug!(id = %self.id(), "node stopped");
    }
}

/// Clears a peer's "dial under way" mark when the dial ends, however it ends.
struct DialGuard {
    node: Node,
    id: NodeId,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        lock(&self.node.inner.dialing).remove(&self.id);
    }
}

struct ConnMeta {
    id: NodeId,
    role: Role,
    outbound: bool,
    session: u64,
    addrs: Vec<SocketAddr>,
}

/// Writes queued control frames. After LEAVE it finishes the stream and waits
/// (bounded) for the peer to have it.
async fn control_writer(
    conn: Connection,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Control>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = conn.closed() => return,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let leaving = matches!(msg, Control::Leave(_));
        if let Err(e) = write_frame(&mut send, &msg, MAX_CONTROL_FRAME).await {
            debug!("control stream write failed: {e}");
            return;
        }
        if leaving {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addr_parsing() {
        let a: PeerAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!((a.id, a.host.as_str(), a.port), (None, "127.0.0.1", 5000));
        let a: PeerAddr = "[::1]:7".parse().unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.to_string(), "[::1]:7");
        let id = NodeId::from_bytes([5; 32]);
        let a: PeerAddr = format!("{id}@example.org:9").parse().unwrap();
        assert_eq!(a.id, Some(id));
        assert_eq!(a.to_string(), format!("{id}@example.org:9"));
        for bad in [
            "",
            "host",
            "host:",
            ":5",
            "host:99999",
            "host:0",
            "nope@host:5",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?}");
        }
    }
    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5, "the burst");
        // A tenth of a second buys one more; a long pause refills only to the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
        // Rate 0: no limit.
        let mut free = TokenBucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| free.take(t0)));
    }

    #[test]
    fn log_gate_lets_one_line_per_source_per_window() {
        let t0 = Instant::now();
        let mut g = LogGate::default();
        let a = LogKey::PerIp([10, 0, 0, 1].into());
        let b = LogKey::PerIp([10, 0, 0, 2].into());
        assert_eq!(g.check(a, t0), Some(0));
        assert_eq!(g.check(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(g.check(a, t0 + Duration::from_secs(2)), None);
        assert_eq!(g.check(b, t0), Some(0), "another source is logged");
        assert_eq!(g.check(a, t0 + LOG_WINDOW), Some(2), "then the count");
        // Bounded however many sources there are.
        for i in 0..(LOG_GATE_MAX as u32 * 2) {
            g.check(LogKey::PerIp(std::net::Ipv4Addr::from(i).into()), t0);
        }
        assert!(g.seen.len() <= LOG_GATE_MAX);
    }

    #[test]
    fn ip_slots_count_per_address_and_come_back() {
        let counts = IpCounts::default();
        let a = ip_key([127, 0, 0, 1].into());
        let b = ip_key([127, 0, 0, 2].into());
        let held: Vec<_> = (0..3)
            .map(|_| IpSlot::take(&counts, a, 3).unwrap())
            .collect();
        assert!(IpSlot::take(&counts, a, 3).is_none());
        assert!(IpSlot::take(&counts, b, 3).is_some());
        drop(held);
        assert!(lock(&counts).is_empty(), "nothing left behind");
        assert!(IpSlot::take(&counts, a, 3).is_some());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(x), ip_key(y));
        assert_ne!(ip_key(x), ip_key(z));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(mapped), IpAddr::from([10, 1, 2, 3]));
    }
}
