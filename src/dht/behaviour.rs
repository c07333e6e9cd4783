//! The DHT on the network: running lookups over QUIC, announcing provider
//! records, keeping the routing table fresh, and saving it across restarts.
//!
//! The routing table and the lookup are the pure state machines of
//! [`crate::dht`]; [`Dht`] feeds them. Every RPC is one short bi stream with a
//! timeout ([`handler`](super::handler) answers them). A contact enters the
//! routing table only when a connection's handshake proved its id (the
//! network core reports it through [`PeerListener`], with the addresses of
//! the connection and of the peer's JOIN). A lookup answer never changes a
//! known contact's addresses: the lookup asks it where the table says it is,
//! and an answer from it only refreshes it. An ADD_PROVIDER is accepted only
//! for the id of the connection it came on. Provider lookups are in
//! [`find`](super::find).
//!
//! The DHT runs its own loop: a lookup of its own id on joining, a refresh
//! of quiet buckets, expiry of provider records, and (full nodes) a periodic
//! re-announcement of every file this node holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::dht::kbucket::{Contact, Insert, RoutingTable};
use crate::dht::providers::ProviderStore;
use crate::dht::query::{Lookup, LookupConfig, Poll};
use crate::dht::{distance, key_of, K};
use crate::net::membership::{relay_list, LeftReason};
use crate::net::router::ServeFuture;
use crate::net::{ConnectError, Network, PeerListener};
use crate::observe::Metrics;
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::wire::{DhtRequest, PeerRecord, Request, Response, Role, MAX_CONTROL_FRAME};
use crate::proto::{Hash, NodeId};
use crate::store::Store;
use crate::transfer::HoldListener;

/// The node's DHT state.
pub struct DhtState {
    /// The routing table.
    pub table: RoutingTable,
    /// Provider records kept for others.
    pub providers: ProviderStore,
}

impl DhtState {
    /// An empty state for `local`.
    pub fn new(local: NodeId) -> Self {
        DhtState {
            table: RoutingTable::new(local, K, Instant::now()),
            providers: ProviderStore::default(),
        }
    }
}

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The peer could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(#[from] ConnectError),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// No stream could be opened on the connection.
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// The request could not be sent, or the answer was invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer closed the stream without answering.
    #[error("no answer")]
    NoAnswer,
    /// The peer answered with a message of another kind.
    #[error("an answer of the wrong kind")]
    WrongAnswer,
}

/// What a lookup found.
#[derive(Debug, Clone, Default)]
pub struct LookupOutcome {
    /// The closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// The nodes among the closest asked that did not answer, closest first,
    /// with why (a refusal at a connection limit shows here).
    pub failed: Vec<(Contact, Arc<RpcError>)>,
    /// Providers that proved they hold the file by answering HAS
    /// (GET_PROVIDERS lookups, [`Dht::find_providers`]).
    pub providers: Vec<PeerRecord>,
    /// Hops.
    pub rounds: u32,
    /// RPCs sent.
    pub requests: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// What one request of a lookup came to: the contact asked, and its
/// answer with the address the connection reached it at.
pub(super) type Answer = (Contact, Result<(Response, SocketAddr), RpcError>);

/// One lookup under way: the state machine and its requests in flight.
pub(super) struct Running {
    pub(super) lookup: Lookup,
    /// Why each contact that failed did.
    errors: HashMap<NodeId, RpcError>,
    calls: JoinSet<Answer>,
    request: DhtRequest,
    slow_after: Duration,
    /// Counts the lookup and its time once it ends.
    metrics: Metrics,
}

impl Running {
    /// The next answer, or `None` if none came within `slow_after` (the
    /// lookup may want to send more by then). Cancel-safe.
    pub(super) async fn next_answer(&mut self) -> Option<Answer> {
        tokio::select! {
            r = self.calls.join_next(), if !self.calls.is_empty() => r.and_then(Result::ok),
            _ = tokio::time::sleep(self.slow_after) => None,
        }
    }

    /// What the lookup found, with `providers` (those proven), from `start`.
    pub(super) fn outcome(mut self, start: Instant, providers: Vec<PeerRecord>) -> LookupOutcome {
        self.calls.abort_all();
        let m = self.metrics.get();
        m.dht_lookups.inc();
        m.dht_lookup_seconds.observe(start.elapsed().as_secs_f64());
        let failed = self
            .lookup
            .failed(K)
            .into_iter()
            .filter_map(|c| Some((c.clone(), Arc::new(self.errors.remove(&c.id)?))))
            .collect();
        LookupOutcome {
            closest: self.lookup.closest(K),
            failed,
            providers,
            rounds: self.lookup.rounds(),
            requests: self.lookup.requests(),
            elapsed: start.elapsed(),
        }
    }
}

pub(super) fn record(c: &Contact) -> PeerRecord {
    PeerRecord {
        id: c.id,
        addrs: c
            .addrs
            .iter()
            .copied()
            .take(crate::proto::wire::MAX_ADDRS_PER_PEER)
            .collect(),
        relays: relay_list(&c.relays),
    }
}

fn contact(r: PeerRecord) -> Contact {
    Contact {
        id: r.id,
        addrs: r
            .addrs
            .into_iter()
            .filter(crate::net::membership::dialable)
            .collect(),
        relays: relay_list(&r.relays),
    }
}

/// The DHT of one node. Cheap to clone.
#[derive(Clone)]
pub struct Dht {
    inner: Arc<Inner>,
}

struct Inner {
    net: Network,
    /// Files this node holds are provided from here (full nodes).
    store: Option<Store>,
    state: Mutex<DhtState>,
    /// When each file was last announced because a peer had it held here.
    announced: Mutex<HashMap<Hash, Instant>>,
    /// Announces a peer's HOLD may have under way at once, node-wide.
    announcing: Arc<Semaphore>,
}

/// A file held anew is announced at most once per this long; the
/// republish loop announces every held file anyway.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);
/// Announces started by HOLDs at once, node-wide; more are left to the
/// republish loop.
const HOLD_ANNOUNCES: usize = 4;
/// Files whose last HOLD announce is remembered at most.
const ANNOUNCED_MAX: usize = 65_536;

impl Dht {
    /// The DHT of the node behind `net`, with the routing table and provider
    /// records a previous run saved in `store`.
    pub fn new(net: Network, store: Option<Store>) -> Dht {
        let dht = Dht {
            inner: Arc::new(Inner {
                state: Mutex::new(DhtState::new(net.id())),
                announced: Mutex::new(HashMap::new()),
                announcing: Arc::new(Semaphore::new(HOLD_ANNOUNCES)),
                net,
                store,
            }),
        };
        dht.load();
        dht
    }

    /// Starts the DHT's own loop (joining lookup, refresh, republish).
    pub fn start(&self) {
        let d = self.clone();
        self.inner.net.spawn(async move { d.run().await });
    }

    pub(super) fn net(&self) -> &Network {
        &self.inner.net
    }

    pub(super) fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// The DHT state, locked.
    pub fn state(&self) -> MutexGuard<'_, DhtState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Contacts in the routing table.
    pub fn routing_table_len(&self) -> usize {
        self.state().table.len()
    }

    /// The provider records this node keeps for `file` (for inspection).
    pub fn local_providers(&self, file: Hash) -> Vec<PeerRecord> {
        self.state().providers.get(&key_of(&file), Instant::now())
    }

    /// Adds a contact whose id a handshake proved. A full bucket pings its
    /// least-recently-seen contact first.
    fn seen(&self, id: NodeId, addrs: Vec<SocketAddr>, relays: Vec<SocketAddr>) {
        let result = self
            .state()
            .table
            .insert(Contact { id, addrs, relays }, Instant::now());
        if let Insert::Ping(old) = result {
            self.ping_later(old);
        }
    }

    /// A contact answered over a connection proven to be its id, reached at
    /// `remote`. Its liveness is refreshed; a known contact keeps the
    /// addresses it gave itself, whoever named it in this lookup, and an
    /// unknown one is added at the address the connection proved.
    fn answered(&self, id: NodeId, remote: SocketAddr) {
        // A relayed connection's address is made up: nobody can dial it.
        if !crate::net::membership::dialable(&remote) {
            return;
        }
        let contact = Contact {
            id,
            addrs: vec![remote],
            relays: Vec::new(),
        };
        let result = self
            .state()
            .table
            .insert_keeping_addrs(contact, Instant::now());
        if let Insert::Ping(old) = result {
            self.ping_later(old);
        }
    }

    /// Pings a least-recently-seen contact a full bucket asked about.
    fn ping_later(&self, old: Contact) {
        let d = self.clone();
        self.inner.net.spawn(async move {
            let alive = d.rpc(&old, DhtRequest::Ping).await.is_ok();
            d.state().table.ping_result(&old.id, alive, Instant::now());
        });
    }

    /// Sends one DHT request to `c` and waits (bounded) for the answer.
    pub async fn rpc(&self, c: &Contact, request: DhtRequest) -> Result<Response, RpcError> {
        self.rpc_at(c, request).await.map(|(r, _)| r)
    }

    /// Like [`rpc`](Self::rpc), also returning the address the connection
    /// that answered reached the peer at.
    async fn rpc_at(
        &self,
        c: &Contact,
        request: DhtRequest,
    ) -> Result<(Response, SocketAddr), RpcError> {
        let net = &self.inner.net;
        let call = async {
            let first = &c.addrs[..c.addrs.len().min(1)];
            let conn = net.connection_to(c.id, first, &c.relays).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &Request::Dht(request), MAX_CONTROL_FRAME).await?;
            let _ = send.finish();
            let resp = read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
                .await?
                .ok_or(RpcError::NoAnswer)?;
            Ok((resp, conn.remote_address()))
        };
        tokio::time::timeout(net.config().rpc_timeout, call)
            .await
            .map_err(|_| RpcError::Timeout)?
    }

    /// An iterative FIND_NODE lookup of `target`, on one path.
    pub async fn lookup(&self, target: NodeId) -> LookupOutcome {
        let start = Instant::now();
        let mut run = self.start_lookup(target, DhtRequest::FindNode { target }, 1);
        while self.send_due(&mut run) {
            if let Some((c, result)) = run.next_answer().await {
                self.on_answer(&mut run, c, result);
            }
        }
        run.outcome(start, Vec::new())
    }

    /// A lookup of `target` asking `request`, on `paths` disjoint paths,
    /// seeded with the routing table's closest contacts.
    pub(super) fn start_lookup(
        &self,
        target: NodeId,
        request: DhtRequest,
        paths: usize,
    ) -> Running {
        let seeds = self.state().table.closest(&target, K);
        let cfg = LookupConfig {
            slow_after: self.inner.net.config().rpc_timeout / 3,
            paths,
            ..LookupConfig::default()
        };
        Running {
            lookup: Lookup::new(target, seeds, cfg),
            errors: HashMap::new(),
            calls: JoinSet::new(),
            metrics: self.inner.net.observe().metrics.clone(),
            request,
            slow_after: cfg.slow_after,
        }
    }

    /// Sends the requests the lookup asks for; false once it is over.
    pub(super) fn send_due(&self, run: &mut Running) -> bool {
        match run.lookup.poll(Instant::now()) {
            Poll::Finished => false,
            Poll::Query(to) => {
                for c in to {
                    let (d, req) = (self.clone(), run.request.clone());
                    run.calls.spawn(async move {
                        let r = d.rpc_at(&c, req).await;
                        (c, r)
                    });
                }
                true
            }
        }
    }

    /// Feeds one answer (or failure) of contact `c` to a lookup, keeping
    /// why it failed if it did; returns the provider records the answer
    /// held, unchecked.
    pub(super) fn on_answer(
        &self,
        run: &mut Running,
        c: Contact,
        result: Result<(Response, SocketAddr), RpcError>,
    ) -> Vec<PeerRecord> {
        let lookup = &mut run.lookup;
        match result {
            Ok((Response::Nodes(nodes), remote)) => {
                self.answered(c.id, remote);
                lookup.on_success(&c.id, self.fresh(nodes));
                Vec::new()
            }
            Ok((Response::Providers { providers, closer }, remote)) => {
                self.answered(c.id, remote);
                lookup.on_success(&c.id, self.fresh(closer));
                providers
            }
            Ok((other, _)) => {
                debug!(peer = %c.id.fmt_short(), "unexpected DHT answer {other:?}");
                lookup.on_failure(&c.id);
                run.errors.insert(c.id, RpcError::WrongAnswer);
                Vec::new()
            }
            Err(e) => {
                debug!(peer = %c.id.fmt_short(), "DHT request failed: {e}");
                lookup.on_failure(&c.id);
                self.state().table.record_failure(&c.id);
                run.errors.insert(c.id, e);
                Vec::new()
            }
        }
    }

    /// Contacts from an answer, minus this node. A contact the routing
    /// table knows is taken at the addresses it gave itself, not at those
    /// the answer claims.
    fn fresh(&self, records: Vec<PeerRecord>) -> Vec<Contact> {
        let me = self.inner.net.id();
        let state = self.state();
        records
            .into_iter()
            .filter(|r| r.id != me)
            .map(|r| match state.table.get(&r.id) {
                Some(known) => known.clone(),
                None => contact(r),
            })
            .filter(|c| !c.addrs.is_empty() || !c.relays.is_empty())
            .collect()
    }

    /// Announces this node as a provider of `file` on the k closest nodes;
    /// returns how many took the record.
    pub async fn announce(&self, file: Hash) -> usize {
        let key = key_of(&file);
        let me = self.inner.net.me();
        let closest = self.lookup(key).await.closest;
        let mut calls = JoinSet::new();
        for c in closest {
            let (d, me) = (self.clone(), me.clone());
            calls.spawn(async move {
                let request = DhtRequest::AddProvider { key, provider: me };
                matches!(d.rpc(&c, request).await, Ok(Response::Ack))
            });
        }
        let mut stored = 0;
        while let Some(r) = calls.join_next().await {
            if matches!(r, Ok(true)) {
                stored += 1;
            }
        }
        debug!(file = %file.fmt_short(), stored, "provider record announced");
        stored
    }

    /// The live nodes closest to `file` (this node included if it is a full
    /// node), closest first.
    pub async fn closest_nodes(&self, file: Hash, n: usize) -> Vec<Contact> {
        self.closest_asked(file)
            .await
            .into_iter()
            .filter_map(|(c, failed)| failed.is_none().then_some(c))
            .take(n)
            .collect()
    }

    /// The `n` nodes closest to `file` (this node included if it is a full
    /// node), closest first, whether they answered or not, with why not: a
    /// put says why a node it would have used holds no copy.
    pub async fn closest_or_failed(
        &self,
        file: Hash,
        n: usize,
    ) -> Vec<(Contact, Option<Arc<RpcError>>)> {
        let mut nodes = self.closest_asked(file).await;
        nodes.truncate(n);
        nodes
    }

    /// A lookup's answering and failed nodes, and this node if it is a full
    /// node, closest to `file` first.
    async fn closest_asked(&self, file: Hash) -> Vec<(Contact, Option<Arc<RpcError>>)> {
        let key = key_of(&file);
        let outcome = self.lookup(key).await;
        let mut nodes: Vec<(Contact, Option<Arc<RpcError>>)> = outcome
            .closest
            .into_iter()
            .map(|c| (c, None))
            .chain(outcome.failed.into_iter().map(|(c, e)| (c, Some(e))))
            .collect();
        let net = &self.inner.net;
        if net.config().role == Role::Peer {
            let me = contact(net.me());
            nodes.push((me, None));
        }
        nodes.sort_by_key(|(c, _)| distance(&c.id, &key));
        nodes
    }

    /// Saves the routing table and provider records in the store.
    pub async fn save(&self) {
        let Some(store) = self.inner.store.clone() else {
            return;
        };
        let (contacts, providers) = {
            let d = self.state();
            let now = Instant::now();
            let wall = std::time::SystemTime::now();
            let contacts: Vec<_> = d
                .table
                .contacts()
                .into_iter()
                .map(|c| (c.id, c.addrs))
                .collect();
            let providers: Vec<_> = d
                .providers
                .all(now)
                .into_iter()
                .map(|(k, p, exp)| (k, p.id, p.addrs, wall + exp.saturating_duration_since(now)))
                .collect();
            (contacts, providers)
        };
        let r = tokio::task::spawn_blocking(move || store.save_dht(&contacts, &providers)).await;
        if let Ok(Err(e)) = r {
            warn!("cannot save the routing table: {e}");
        }
    }

    /// Loads the routing table and provider records a previous run saved.
    fn load(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let Ok((contacts, providers)) = store.load_dht() else {
            return;
        };
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let mut d = self.state();
        for (id, addrs) in contacts {
            // Proven by a handshake in an earlier run; a dead one fails its
            // first request and is dropped.
            let c = Contact {
                id,
                addrs,
                relays: Vec::new(),
            };
            if let Insert::Ping(old) = d.table.insert(c, now) {
                d.table.ping_result(&old.id, true, now);
            }
        }
        for (key, id, addrs, expires) in providers {
            let left = expires.duration_since(wall).unwrap_or_default();
            // The source is not saved: the record's own address stands in.
            let source = addrs
                .first()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
            let record = PeerRecord {
                id,
                addrs,
                relays: Vec::new(),
            };
            d.providers.add(key, record, source, now + left);
        }
    }

    /// The DHT's loop: on each tick with a non-empty table, expire records,
    /// refresh quiet buckets and republish what this node holds when due.
    /// The first round starts with a lookup of this node's own id, which
    /// fills the table around it and tells those nodes about it.
    async fn run(self) {
        let net = self.inner.net.clone();
        let cfg = net.config();
        let tick = cfg.gossip_interval.min(Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut next_refresh = start;
        let mut next_republish = start + jitter(cfg.republish_interval.min(Duration::from_secs(5)));
        let mut joined = false;
        let stopping = net.stopping();
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = interval.tick() => {}
            }
            if self.state().table.is_empty() {
                continue;
            }
            if !joined {
                joined = true;
                self.lookup(net.id()).await;
            }
            let now = Instant::now();
            self.state().providers.expire(now);
            if now >= next_refresh {
                next_refresh = now + cfg.refresh_interval.min(Duration::from_secs(60));
                self.refresh(now).await;
            }
            if cfg.role == Role::Peer && now >= next_republish {
                next_republish = now + jitter(cfg.republish_interval);
                self.republish().await;
            }
        }
    }

    /// Looks up a random id in each of (up to four) buckets nobody touched
    /// for `refresh_interval`, then saves the table.
    async fn refresh(&self, now: Instant) {
        let stale = self
            .state()
            .table
            .stale_buckets(now, self.inner.net.config().refresh_interval);
        for i in stale.into_iter().take(4) {
            let target = {
                let mut d = self.state();
                d.table.touch(i, now);
                d.table.random_id_in_bucket(i, &mut rand::rng())
            };
            self.lookup(target).await;
        }
        self.save().await;
    }

    /// Announces every complete file this node holds.
    async fn republish(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        for f in store.complete_files().await {
            if self.inner.net.is_shutting_down() {
                return;
            }
            self.announce(f.id).await;
        }
    }
}

/// `d` give or take a fifth, so that nodes started together spread out.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

impl PeerListener for Dht {
    fn proven(&self, id: NodeId, role: Role, addrs: &[SocketAddr], relays: &[SocketAddr]) {
        // Clients query but are never contacts; nor is a node nobody can
        // reach (behind NAT with no relay, or not yet dialed back).
        if role != Role::Peer {
            return;
        }
        if addrs.is_empty() && relays.is_empty() {
            self.state().table.remove(&id);
        } else {
            self.seen(id, addrs.to_vec(), relay_list(relays));
        }
    }

    fn left(&self, id: NodeId, reason: &LeftReason) {
        let mut state = self.state();
        state.table.remove(&id);
        // A holder that said LEAVE or went silent is not offered to getters
        // until it announces again: a get would dial it and wait. One whose
        // connection closed for another reason may still be up.
        if matches!(reason, LeftReason::Leave | LeftReason::TimedOut) {
            let withdrawn = state.providers.withdraw(&id);
            if withdrawn > 0 {
                debug!(peer = %id.fmt_short(), withdrawn, "provider records of a departed peer withdrawn");
            }
        }
    }
}

impl Dht {
    /// Whether a HOLD of `file` may start an announce now: not announced for
    /// a HOLD within [`ANNOUNCE_EVERY`], and a slot free.
    fn may_announce(&self, file: Hash) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let now = Instant::now();
        let mut announced = self
            .inner
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if announced
            .get(&file)
            .is_some_and(|t| now.saturating_duration_since(*t) < ANNOUNCE_EVERY)
        {
            return None;
        }
        let permit = self.inner.announcing.clone().try_acquire_owned().ok()?;
        if announced.len() >= ANNOUNCED_MAX {
            announced.retain(|_, t| now.saturating_duration_since(*t) < ANNOUNCE_EVERY);
        }
        announced.insert(file, now);
        Some(permit)
    }
}

impl HoldListener for Dht {
    /// Among the [`K`] closest to the file's key of the routing table and
    /// this node (every node is, while the table holds fewer than `K`).
    fn close_to(&self, file: &Hash) -> bool {
        self.state().table.local_among_closest(&key_of(file), K)
    }

    /// A new holder says so in the DHT: once per file per [`ANNOUNCE_EVERY`],
    /// a few at a time; the republish loop covers what this skips.
    fn held(&self, file: Hash) -> ServeFuture {
        let d = self.clone();
        Box::pin(async move {
            if let Some(_permit) = d.may_announce(file) {
                d.announce(file).await;
            }
        })
    }
}
