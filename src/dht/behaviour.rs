//! The DHT on the network: serving Kademlia RPCs, running lookups over QUIC,
//! announcing provider records, refreshing buckets, and repairing replicas.
//!
//! The routing table and the lookup are the pure state machines of
//! [`crate::dht`]; this module feeds them. Every RPC is one short bi stream with
//! a timeout. A contact enters the routing table only when a connection's
//! handshake proved its id; an ADD_PROVIDER is accepted only for the id of the
//! connection it came on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::dht::kbucket::{Contact, Insert, RoutingTable};
use crate::dht::providers::ProviderStore;
use crate::dht::query::{Lookup, LookupConfig, Poll};
use crate::dht::{distance, key_of, K};
use crate::node::{Node, PeerAddr};
use crate::proto::frame::{read_frame, write_frame};
use crate::proto::wire::{
    DhtRequest, NackReason, PeerRecord, Request, Response, MAX_CONTROL_FRAME,
};
use crate::proto::Hash;
use crate::proto::NodeId;

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
    Unreachable(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The stream failed or the answer was invalid.
    #[error("{0}")]
    Stream(String),
}

/// What a lookup found.
#[derive(Debug, Clone, Default)]
pub struct LookupOutcome {
    /// The closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// Providers found (GET_PROVIDERS lookups).
    pub providers: Vec<PeerRecord>,
    /// Hops.
    pub rounds: u32,
    /// RPCs sent.
    pub requests: usize,
    /// Wall time.
    pub elapsed: Duration,
}

fn record(c: &Contact) -> PeerRecord {
    PeerRecord {
        id: c.id,
        addrs: c
            .addrs
            .iter()
            .copied()
            .take(crate::proto::wire::MAX_ADDRS_PER_PEER)
            .collect(),
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
    }
}

impl Node {
    /// Adds a contact whose id a handshake proved. A full bucket pings its
    /// least-recently-seen contact first.
    pub(crate) fn dht_seen(&self, id: NodeId, addrs: Vec<SocketAddr>) {
        let result = self
            .dht()
            .table
            .insert(Contact { id, addrs }, Instant::now());
        if let Insert::Ping(old) = result {
            let n = self.clone();
            self.spawn(async move {
                let alive = n.rpc(&old, DhtRequest::Ping).await.is_ok();
                n.dht().table.ping_result(&old.id, alive, Instant::now());
            });
        }
    }

    /// The provider records this node keeps for `file` (for inspection).
    pub fn local_providers(&self, file: Hash) -> Vec<PeerRecord> {
        self.dht().providers.get(&key_of(&file), Instant::now())
    }

    /// Answers one DHT request from the peer `from` (proven by the handshake).
    pub(crate) async fn serve_dht(
        &self,
        from: NodeId,
        from_is_client: bool,
        remote: SocketAddr,
        request: DhtRequest,
        mut send: quinn::SendStream,
    ) {
        let now = Instant::now();
        let resp = match request {
            DhtRequest::Ping => Response::Ack,
            DhtRequest::FindNode { target } => Response::Nodes(
                self.dht()
                    .table
                    .closest(&target, K)
                    .iter()
                    .filter(|c| c.id != from)
                    .map(record)
                    .collect(),
            ),
            DhtRequest::GetProviders { key } => {
                let mut providers = self.dht().providers.get(&key, now);
                let file = Hash::from_bytes(*key.as_bytes());
                if let Some(store) = self.store() {
                    let s = store.clone();
                    let holds = tokio::task::spawn_blocking(move || s.holds(&file))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false);
                    if holds && !providers.iter().any(|p| p.id == self.id()) {
                        providers.push(PeerRecord {
                            id: self.id(),
                            addrs: self.listen_addrs(),
                        });
                    }
                }
                providers.truncate(crate::dht::providers::MAX_PROVIDERS_PER_KEY);
                let closer = self
                    .dht()
                    .table
                    .closest(&key, K)
                    .iter()
                    .filter(|c| c.id != from)
                    .map(record)
                    .collect();
                Response::Providers { providers, closer }
            }
            DhtRequest::AddProvider { key, provider } => {
                if provider.id != from || from_is_client {
                    warn!(peer = %from.fmt_short(), claimed = %provider.id.fmt_short(),
                        "ADD_PROVIDER for another id refused");
                    Response::Nack(NackReason::NotAccepted)
                } else {
                    let mut addrs: Vec<SocketAddr> = provider
                        .addrs
                        .into_iter()
                        .filter(crate::net::membership::dialable)
                        .collect();
                    if addrs.is_empty() {
                        addrs.push(remote);
                    }
                    let expires = now + self.config().provider_ttl;
                    let added =
                        self.dht()
                            .providers
                            .add(key, PeerRecord { id: from, addrs }, expires);
                    if added {
                        Response::Ack
                    } else {
                        Response::Nack(NackReason::OverQuota)
                    }
                }
            }
        };
        if write_frame(&mut send, &resp, MAX_CONTROL_FRAME)
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
    }

    async fn connection_to(&self, c: &Contact) -> Result<Connection, RpcError> {
        if let Some(conn) = self
            .connection(&c.id)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(conn);
        }
        let addr = c
            .addrs
            .first()
            .ok_or_else(|| RpcError::Unreachable("no address".into()))?;
        self.connect(&PeerAddr::pinned(c.id, *addr))
            .await
            .map_err(|e| RpcError::Unreachable(e.to_string()))?;
        self.connection(&c.id)
            .ok_or_else(|| RpcError::Unreachable("connection replaced".into()))
    }

    /// Sends one DHT request to `c` and waits (bounded) for the answer.
    pub async fn rpc(&self, c: &Contact, request: DhtRequest) -> Result<Response, RpcError> {
        let timeout = self.config().rpc_timeout;
        let call = async {
            let conn = self.connection_to(c).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| RpcError::Stream(e.to_string()))?;
            write_frame(&mut send, &Request::Dht(request), MAX_CONTROL_FRAME)
                .await
                .map_err(|e| RpcError::Stream(e.to_string()))?;
            let _ = send.finish();
            read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| RpcError::Stream(e.to_string()))?
                .ok_or_else(|| RpcError::Stream("no answer".into()))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| RpcError::Timeout)?
    }

    /// An iterative lookup of `target`. With `providers`, asks GET_PROVIDERS
    /// and stops early once `want` providers are known.
    pub async fn lookup(&self, target: NodeId, providers: Option<usize>) -> LookupOutcome {
        let start = Instant::now();
        let seeds = self.dht().table.closest(&target, K);
        let cfg = LookupConfig {
            slow_after: self.config().rpc_timeout / 3,
            ..LookupConfig::default()
        };
        let mut lookup = Lookup::new(target, seeds, cfg);
        let mut found: HashMap<NodeId, PeerRecord> = HashMap::new();
        let mut calls: JoinSet<(Contact, Result<Response, RpcError>)> = JoinSet::new();
        loop {
            if let Some(want) = providers {
                if found.len() >= want {
                    break;
                }
            }
            match lookup.poll(Instant::now()) {
                Poll::Finished => break,
                Poll::Query(to) => {
                    for c in to {
                        let n = self.clone();
                        let req = match providers {
                            Some(_) => DhtRequest::GetProviders { key: target },
                            None => DhtRequest::FindNode { target },
                        };
                        calls.spawn(async move {
                            let r = n.rpc(&c, req).await;
                            (c, r)
                        });
                    }
                }
            }
            let next = tokio::select! {
                r = calls.join_next(), if !calls.is_empty() => r,
                _ = tokio::time::sleep(cfg.slow_after) => None,
            };
            let Some(Ok((c, result))) = next else {
                continue;
            };
            match result {
                Ok(Response::Nodes(nodes)) => {
                    self.dht_seen(c.id, c.addrs.clone());
                    lookup.on_success(&c.id, self.fresh(nodes));
                }
                Ok(Response::Providers {
                    providers: p,
                    closer,
                }) => {
                    self.dht_seen(c.id, c.addrs.clone());
                    for r in p {
                        found.entry(r.id).or_insert(r);
                    }
                    lookup.on_success(&c.id, self.fresh(closer));
                }
                Ok(other) => {
                    debug!(peer = %c.id.fmt_short(), "unexpected DHT answer {other:?}");
                    lookup.on_failure(&c.id);
                }
                Err(e) => {
                    debug!(peer = %c.id.fmt_short(), "DHT request failed: {e}");
                    lookup.on_failure(&c.id);
                    self.dht().table.record_failure(&c.id);
                }
            }
        }
        calls.abort_all();
        LookupOutcome {
            closest: lookup.closest(K),
            providers: found.into_values().collect(),
            rounds: lookup.rounds(),
            requests: lookup.requests(),
            elapsed: start.elapsed(),
        }
    }

    /// Contacts from an answer, minus this node.
    fn fresh(&self, records: Vec<PeerRecord>) -> Vec<Contact> {
        records
            .into_iter()
            .filter(|r| r.id != self.id())
            .map(contact)
            .filter(|c| !c.addrs.is_empty())
            .collect()
    }

    /// Announces this node as a provider of `file` on the k closest nodes.
    pub async fn announce(&self, file: Hash) -> usize {
        let key = key_of(&file);
        let me = PeerRecord {
            id: self.id(),
            addrs: self.listen_addrs(),
        };
        let closest = self.lookup(key, None).await.closest;
        let mut calls = JoinSet::new();
        for c in closest {
            let (n, me) = (self.clone(), me.clone());
            calls.spawn(async move {
                matches!(
                    n.rpc(&c, DhtRequest::AddProvider { key, provider: me })
                        .await,
                    Ok(Response::Ack)
                )
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

    /// Providers of `file`, found by GET_PROVIDERS lookups.
    pub async fn find_providers(&self, file: Hash, want: usize) -> LookupOutcome {
        self.lookup(key_of(&file), Some(want)).await
    }

    /// The live nodes closest to `file` (this node included if it is a full
    /// node), closest first.
    pub async fn closest_nodes(&self, file: Hash, n: usize) -> Vec<Contact> {
        let key = key_of(&file);
        let mut nodes = self.lookup(key, None).await.closest;
        if self.config().role == crate::proto::wire::Role::Peer {
            nodes.push(Contact {
                id: self.id(),
                addrs: self.listen_addrs(),
            });
        }
        nodes.sort_by_key(|c| distance(&c.id, &key));
        nodes.truncate(n);
        nodes
    }

    /// Saves the routing table and provider records in the store.
    pub(crate) async fn save_dht(&self) {
        let Some(store) = self.store().cloned() else {
            return;
        };
        let (contacts, providers) = {
            let d = self.dht();
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
    pub(crate) fn load_dht(&self) {
        let Some(store) = self.store() else { return };
        let Ok((contacts, providers)) = store.load_dht() else {
            return;
        };
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let mut d = self.dht();
        for (id, addrs) in contacts {
            // Proven by a handshake in an earlier run; a dead one fails its
            // first request and is dropped.
            if let Insert::Ping(old) = d.table.insert(Contact { id, addrs }, now) {
                d.table.ping_result(&old.id, true, now);
            }
        }
        for (key, id, addrs, expires) in providers {
            let left = expires.duration_since(wall).unwrap_or_default();
            d.providers.add(key, PeerRecord { id, addrs }, now + left);
        }
    }

    /// One DHT maintenance round: refresh quiet buckets, expire records,
    /// republish what this node holds when due, repair replicas when due.
    pub(crate) async fn dht_round(&self, due: DhtDue) {
        let now = Instant::now();
        self.dht().providers.expire(now);
        if due.refresh {
            let stale = self
                .dht()
                .table
                .stale_buckets(now, self.config().refresh_interval);
            for i in stale.into_iter().take(4) {
                let target = {
                    let mut d = self.dht();
                    d.table.touch(i, now);
                    d.table.random_id_in_bucket(i, &mut rand::rng())
                };
                self.lookup(target, None).await;
            }
            self.save_dht().await;
        }
        if due.republish || due.repair {
            let Some(store) = self.store().cloned() else {
                return;
            };
            let files = tokio::task::spawn_blocking(move || store.files())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            for f in files.into_iter().filter(|f| f.complete) {
                if self.is_shutting_down() {
                    return;
                }
                if due.republish {
                    self.announce(f.id).await;
                }
                if due.repair {
                    self.repair(f.id, f.record.size).await;
                }
            }
        }
    }

    /// Makes sure the R live nodes closest to `file` hold it. Only the closest
    /// live holder acts, so a departure does not set off R copies at once.
    async fn repair(&self, file: Hash, size: u64) {
        let r = self.config().replicas;
        let targets = self.closest_nodes(file, r).await;
        let key = key_of(&file);
        let mut holders = vec![self.id()];
        let mut missing = Vec::new();
        for c in &targets {
            if c.id == self.id() {
                continue;
            }
            let Ok(conn) = self.connection_to(c).await else {
                continue;
            };
            match crate::transfer::has(&conn, file, self.config().rpc_timeout).await {
                Ok(true) => holders.push(c.id),
                Ok(false) => missing.push((c.clone(), conn)),
                Err(_) => {}
            }
        }
        if missing.is_empty() {
            return;
        }
        // The leader is the holder closest to the file among those that answered.
        holders.sort_by_key(|id| distance(id, &key));
        if holders.first() != Some(&self.id()) {
            return;
        }
        let Some(store) = self.store().cloned() else {
            return;
        };
        let s = store.clone();
        let tree = tokio::task::spawn_blocking(move || s.tree(&file))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        let Some(tree) = tree else { return };
        let tree = crate::store::chunker::Tree {
            root: file,
            manifests: tree.into_iter().map(|(id, m)| (id, m.encode())).collect(),
            size,
        };
        let source = crate::replication::ChunkSource::Store(store);
        for (c, conn) in missing {
            let started = Instant::now();
            let result =
                crate::replication::push_tree(&conn, &tree, &source, &crate::download::NoProgress)
                    .await;
            match result {
                Ok(()) => {
                    info!(file = %file.fmt_short(), to = %c.id.fmt_short(), "[REPAIR] copy restored")
                }
                Err(e) => {
                    warn!(file = %file.fmt_short(), to = %c.id.fmt_short(), "repair failed: {e}")
                }
            }
            // Bound the bandwidth repair takes: pause as long as the copy
            // would take at the configured rate.
            let budget = Duration::from_secs_f64(size as f64 / self.config().repair_rate as f64);
            if let Some(rest) = budget.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }
}

/// Which periodic DHT jobs are due in a maintenance round.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DhtDue {
    pub refresh: bool,
    pub republish: bool,
    pub repair: bool,
}
