//! The network core: the QUIC endpoint, connections and membership. It knows
//! no service.
//!
//! ```text
//! accept ──▶ handshake (crypto::tls proves the NodeId) ──▶ JOIN / WELCOME ──┐
//! dial   ──▶ handshake ──────────────────────────────────▶ JOIN / WELCOME ──┤
//!                                                                           ▼
//!            connection: registered in the membership table (one per pair),
//!            control stream (gossip, PING, LEAVE), and a router that hands each
//!            request stream to the service registered for its kind
//! ```
//!
//! - [`endpoint`]: UDP socket, transport settings, TLS configs.
//! - `accept` and `dial`: the two ways a connection starts; dials to one
//!   peer are deduplicated, and every incoming connection takes a permit
//!   (total and per address, loopback exempt, see `limits`) before its
//!   handshake. A refusal tells the dialer which limit it hit
//!   ([`ConnectError::AtLimit`]).
//! - `connection`: one handler per connection (control reader and writer,
//!   clean-up when it closes).
//! - [`router`]: request streams, rate-limited per peer, dispatched to
//!   [`Service`]s.
//! - [`membership`]: the peer table (pure, time passed in).
//! - `maintain`: gossip, PING, dialing towards `target_peers`, bootstrap
//!   retry.
//!
//! Services (the DHT, chunk transfers) register with [`Network::serve`] and
//! hear about proven and departed peers through [`PeerListener`]; the core
//! calls them and never names them.
//!
//! Tasks hang off one root [`CancellationToken`] and a [`TaskTracker`];
//! [`Network::shutdown`] stops them in order.

mod accept;
mod circuit;
mod connection;
mod dial;
pub mod endpoint;
mod error;
mod limits;
mod maintain;
pub mod membership;
mod portmap;
pub mod reach;
mod relay;
pub mod router;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use crate::proto::addr::{ParseAddrError, PeerAddr};
pub use circuit::is_circuit_addr as is_relayed;
pub use error::{ConnectError, EndpointError, JoinError, PeerLimit};
pub(crate) use limits::ip_key;
pub use maintain::BootstrapError;
pub use reach::Reachability;
pub use router::{RequestStream, Service};

use crate::config::NodeConfig;
use crate::crypto::identity::Identity;
use crate::observe::Observe;
use crate::proto::wire::{Control, ErrorCode, LeaveReason, PeerRecord, RequestKind, Role};
use crate::proto::NodeId;
use limits::{
    IpCounts, LogGate, LogKey, TokenBucket, EXPLAINED_REFUSALS_BURST, EXPLAINED_REFUSALS_PER_SEC,
};
use maintain::BootstrapState;
use membership::{dialable, PeerEvent, PeerInfo, PeerState, PeerTable};
use router::Router;

/// Hears about peers as the core proves and loses them (the DHT's routing
/// table is fed this way). Called inline: implementations only record.
pub trait PeerListener: Send + Sync + 'static {
    /// A connection to `id`, whose key the handshake proved, is up, or it
    /// announced new addresses. `addrs` holds the address it was dialed at,
    /// then those it announced; `relays` those it can be reached through.
    /// Both empty: nobody can reach it.
    fn proven(&self, id: NodeId, role: Role, addrs: &[SocketAddr], relays: &[SocketAddr]);
    /// `id` left or went silent, as `reason` says. Not called while this
    /// node is stopping.
    fn left(&self, id: NodeId, reason: &membership::LeftReason);
}

/// The network core of one node. Cheap to clone; all clones drive the same
/// endpoint.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    identity: Identity,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    local_addr: SocketAddr,
    /// Random per start: tells a restarted peer's connection from an old one.
    session: u64,
    peers: Mutex<PeerTable>,
    /// Whether this node can be dialed, and the dial-backs under way.
    reach: Mutex<reach::ReachState>,
    /// The port the home router forwards to this node, if any.
    portmap: Mutex<portmap::PortMapState>,
    /// The reservations and circuits this node relays, and the relays it
    /// is reached through.
    relay: Mutex<relay::RelayState>,
    /// Where peers saw this node's direct connections come from, newest
    /// first: what a hole punch asks to be dialed at.
    seen_at: Mutex<Vec<SocketAddr>>,
    /// What accepting takes (also on a relayed circuit); `None` for a client.
    server_config: Option<quinn::ServerConfig>,
    /// Dials under way, by peer: cancelled when the dial ends, however it
    /// ends, so a second dial to the same peer waits for the first.
    dialing: Mutex<HashMap<NodeId, CancellationToken>>,
    bootstrap: Mutex<BootstrapState>,
    events: broadcast::Sender<PeerEvent>,
    listeners: RwLock<Vec<Arc<dyn PeerListener>>>,
    router: Router,
    /// Connections under `max_connections`.
    permits: Arc<Semaphore>,
    /// Incoming connections (and handshakes) per remote address.
    per_ip: IpCounts,
    /// Incoming handshakes in progress.
    handshaking: AtomicUsize,
    /// Refusals that may still spend a handshake to say which limit was hit.
    explained: Mutex<TokenBucket>,
    /// Keeps repeated limit and failure logs down to one line per source.
    log_gate: Mutex<LogGate>,
    /// Cancelled first on shutdown: no new connections, no maintenance.
    stopping: CancellationToken,
    /// Cancelled last: every task ends.
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Control-stream writers, waited for at shutdown so LEAVE goes out.
    writers: TaskTracker,
    /// Metrics, journal and activity, for every layer to record into.
    observe: Observe,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data that is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Network {
    /// Binds the endpoint. Nothing is accepted or dialed until [`start`]:
    /// services register first.
    ///
    /// [`start`]: Network::start
    pub fn bind(config: NodeConfig, identity: Identity) -> Result<Network, EndpointError> {
        let (endpoint, client_config, server_config) = endpoint::open(&config, &identity)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                addr: config.listen,
                source,
            })?;
        let (events, _) = broadcast::channel(1024);
        let net = Network {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.max_connections)),
                per_ip: Default::default(),
                handshaking: AtomicUsize::new(0),
                explained: Mutex::new(TokenBucket::new(
                    EXPLAINED_REFUSALS_PER_SEC,
                    EXPLAINED_REFUSALS_BURST,
                    Instant::now(),
                )),
                log_gate: Mutex::new(LogGate::default()),
                peers: Mutex::new(PeerTable::new(identity.node_id())),
                reach: Mutex::new(reach::ReachState::new(Instant::now())),
                portmap: Mutex::new(portmap::PortMapState::new()),
                relay: Mutex::new(relay::RelayState::new(
                    config.relay_circuits,
                    Instant::now(),
                )),
                dialing: Mutex::new(HashMap::new()),
                bootstrap: Mutex::new(BootstrapState::new(Instant::now())),
                listeners: RwLock::new(Vec::new()),
                router: Router::default(),
                session: rand::random(),
                config,
                identity,
                endpoint,
                client_config,
                server_config,
                seen_at: Mutex::new(Vec::new()),
                local_addr,
                events,
                stopping: CancellationToken::new(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                writers: TaskTracker::new(),
                observe: Observe::default(),
            }),
        };
        let core = relay::CoreRequests(Arc::downgrade(&net.inner));
        let kinds = [
            RequestKind::DialBack,
            RequestKind::Reserve,
            RequestKind::Connect,
            RequestKind::Circuit,
            RequestKind::Punch,
        ];
        net.serve(&kinds, Arc::new(core));
        Ok(net)
    }

    /// Has `service` answer every request stream of the given kinds.
    pub fn serve(&self, kinds: &[RequestKind], service: Arc<dyn Service>) {
        self.inner.router.register(kinds, service);
    }

    /// Tells `listener` about every peer proven or lost from now on.
    pub fn listen(&self, listener: Arc<dyn PeerListener>) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    /// Starts accepting connections, and the membership maintenance (gossip,
    /// dialing, bootstrap).
    pub fn start(&self) {
        debug!(id = %self.id(), addr = %self.inner.local_addr, "network started");
        let n = self.clone();
        self.inner.tasks.spawn(async move { n.accept_loop().await });
        let n = self.clone();
        self.inner
            .tasks
            .spawn(async move { n.maintenance_loop().await });
    }

    /// The node's metrics, journal and activity.
    pub fn observe(&self) -> &Observe {
        &self.inner.observe
    }

    /// Brings the connection and peer gauges and the transport byte
    /// counters up to date (just before a scrape or a dashboard update) and
    /// returns the transport bytes received and sent so far.
    pub fn refresh_metrics(&self) -> [u64; 2] {
        let metrics = &self.inner.observe.metrics;
        let m = metrics.get();
        // Under the peer table's lock, as a closing connection moves its
        // bytes from live to closed: each byte is counted once.
        let peers = lock(&self.inner.peers);
        let connections = peers.connections();
        m.connections.set(connections.len() as i64);
        m.peers.set(peers.connected_peers() as i64);
        m.known_peers.set(peers.known_peers() as i64);
        let mut live = [0u64; 2];
        for (_, _, c) in &connections {
            let stats = c.conn.stats();
            live[0] = live[0].saturating_add(stats.udp_rx.bytes);
            live[1] = live[1].saturating_add(stats.udp_tx.bytes);
        }
        metrics.transport_now(live)
    }

    /// The links of the network as this node knows it: its own connections
    /// to full nodes, and those its peers' recent gossip named.
    pub fn links(&self) -> Vec<(NodeId, NodeId)> {
        let ttl = self.inner.config.gossip_interval * membership::TOLD_ROUNDS;
        lock(&self.inner.peers).links(Instant::now(), ttl)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.identity.node_id()
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
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

    /// The addresses this node announces: `--advertise` if given, else the bound
    /// address, or, when bound to 0.0.0.0, the address peers dialed it back at
    /// ([`reach`]): nothing before a dial-back arrived, or behind NAT.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let cfg = &self.inner.config;
        if !cfg.advertise.is_empty() {
            return cfg.advertise.clone();
        }
        let local = self.inner.local_addr;
        if dialable(&local) {
            return vec![local];
        }
        match lock(&self.inner.reach).verdict {
            Reachability::Public(addr) => vec![addr],
            _ => Vec::new(),
        }
    }

    /// This node as a peer record: where it can be dialed, and the relays
    /// it can be reached through.
    pub fn me(&self) -> PeerRecord {
        PeerRecord {
            id: self.id(),
            addrs: self.listen_addrs(),
            relays: self.relays(),
        }
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
            .filter(|p| p.role == Role::Peer && p.state != PeerState::Known)
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

    /// Cancelled when shutdown begins: services stop their loops on it.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// Spawns a task that ends with the node.
    pub fn spawn<F>(&self, fut: F)
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

    /// Runs blocking `work` (a store pass) that shutdown waits for, briefly,
    /// before the endpoint closes.
    pub fn spawn_blocking<F>(&self, work: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.inner.writers.spawn_blocking(work);
    }

    fn emit(&self, event: PeerEvent) {
        // Peers closing their side after our LEAVE are not news.
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let journal = &self.inner.observe.journal;
        match &event {
            PeerEvent::Connected { .. } => {}
            PeerEvent::Joined { id, addr } => {
                journal.record("join", format!("{} joined from {addr}", id.fmt_short()))
            }
            PeerEvent::Left { id, reason } => {
                journal.record("leave", format!("{} {reason}", id.fmt_short()))
            }
            PeerEvent::Reachability(_) | PeerEvent::Relays(_) | PeerEvent::PortMapped { .. } => {}
        }
        // No subscribers is fine.
        let _ = self.inner.events.send(event);
    }

    fn listeners(&self) -> Vec<Arc<dyn PeerListener>> {
        self.inner
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A peer was proven by a handshake and registered.
    fn proven(&self, id: NodeId, role: Role, addrs: &[SocketAddr], relays: &[SocketAddr]) {
        for l in self.listeners() {
            l.proven(id, role, addrs, relays);
        }
    }

    /// A member left: its listeners forget it too (unless this node is the
    /// one stopping: then what they know is kept for the next start).
    fn left(&self, id: NodeId, reason: membership::LeftReason) {
        lock(&self.inner.peers).forget_told(&id);
        if !self.inner.stopping.is_cancelled() {
            for l in self.listeners() {
                l.left(id, &reason);
            }
        }
        self.emit(PeerEvent::Left { id, reason });
    }

    /// `Some(lines held back)` if a line about `key` may be logged now.
    fn gate(&self, key: LogKey) -> Option<u64> {
        lock(&self.inner.log_gate).check(key, Instant::now())
    }

    /// First step of shutdown: no new connections, dials or maintenance.
    /// Services save their state after this and before [`shutdown`].
    ///
    /// [`shutdown`]: Network::shutdown
    pub fn stop_accepting(&self) {
        self.inner.stopping.cancel();
    }

    /// Graceful shutdown: LEAVE to every peer, close every connection with
    /// [`ErrorCode::Shutdown`], wait (bounded) for the endpoint to go idle.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        // Tell everyone first, then stop the tasks.
        let conns = lock(&self.inner.peers).connections();
        for (_, _, handle) in &conns {
            let _ = handle
                .control
                .try_send(Control::Leave(LeaveReason::Shutdown));
        }
        let grace = Duration::from_secs(2);
        self.inner.writers.close();
        let _ = tokio::time::timeout(grace, self.inner.writers.wait()).await;
        self.inner.cancel.cancel();
        self.inner
            .endpoint
            .close(ErrorCode::Shutdown.var_int(), ErrorCode::Shutdown.reason());
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            debug!("shutdown: tasks still running after {grace:?}");
        }
        // Every peer was sent LEAVE and the endpoint's CONNECTION_CLOSE goes
        // out at once; what drains longer is a handshake to a peer that does
        // not answer (a holder that died), which nobody waits for.
        let drain = Duration::from_millis(100);
        if tokio::time::timeout(drain, self.inner.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("shutdown: connections still draining after {drain:?}");
        }
        // Services and listeners hold this network: let them go, so that a
        // stopped node is freed (and its store can be opened again).
        self.inner.router.clear();
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        debug!(id = %self.id(), "network stopped");
    }
}
