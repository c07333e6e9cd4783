//! The composition root: a [`Node`] is the network core with the services
//! registered on it.
//!
//! [`Node::start`] loads the identity, opens the store (full nodes with a
//! data directory), binds the [`Network`], builds the [`Dht`], the chunk
//! [`Transfers`] and [`Replication`], registers each service for the
//! requests it answers, lets the DHT hear about peers, then starts the
//! loops: accepting and membership (the core), refresh and republish (the
//! DHT), repair (replication) and garbage collection (the store).
//! [`Node::shutdown`] stops them in order.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub use crate::config::{Congestion, NodeConfig};
pub use crate::net::{ConnectError, PeerAddr};

use crate::crypto::identity::{Identity, IdentityError};
use crate::dht::behaviour::Dht;
use crate::download::score::PeerScores;
use crate::download::{DownloadError, DownloadOptions, DownloadStats, Progress};
use crate::net::membership::{PeerEvent, PeerInfo};
use crate::net::{EndpointError, Network};
use crate::observe::metrics::{ResultLabel, IN};
use crate::observe::{Task, TaskState};
use crate::proto::ticket::Target;
use crate::proto::wire::{RequestKind, Role};
use crate::proto::NodeId;
use crate::replication::{PutError, PutOptions, PutReport, Replication};
use crate::store::{Store, StoreError};
use crate::transfer::{AllowancePolicy, Allowances, ChunkBudget, Transfers};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The endpoint could not be set up (address in use, TLS, settings).
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
}

/// A running node. Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    net: Network,
    store: Option<Store>,
    dht: Dht,
    replication: Replication,
    scores: PeerScores,
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
        // In a private network the certificate carries the membership proof,
        // made now from the key so that it always matches the key in use.
        let identity = match &config.network_key {
            Some(network) => identity.for_network(network)?,
            None => identity,
        };
        let budget = ChunkBudget::new(config.chunk_memory);
        let net = Network::bind(config, identity)?;
        let dht = Dht::new(net.clone(), store.clone());
        let scores = PeerScores::counting(net.observe().metrics.get().bans.clone());
        let replication = Replication::new(net.clone(), dht.clone(), store.clone(), scores.clone());
        let transfers = Transfers::new(
            store.clone(),
            Some(Arc::new(dht.clone())),
            budget,
            Allowances::new(allowance_policy(net.config())),
            net.observe().clone(),
        );
        net.serve(&Transfers::KINDS, Arc::new(transfers));
        net.serve(&[RequestKind::Dht], Arc::new(dht.clone()));
        net.listen(Arc::new(dht.clone()));

        net.start();
        dht.start();
        replication.start();
        if let Some(store) = &store {
            let (net, store) = (net.clone(), store.clone());
            net.clone().spawn(collect_garbage(net, store));
        }
        Ok(Node {
            inner: Arc::new(Inner {
                net,
                store,
                dht,
                replication,
                scores,
            }),
        })
    }

    /// The network core: connections, peers, membership events.
    pub fn net(&self) -> &Network {
        &self.inner.net
    }

    /// The DHT: lookups, provider records, the routing table.
    pub fn dht(&self) -> &Dht {
        &self.inner.dht
    }

    /// Putting, getting and repairing files.
    pub fn replication(&self) -> &Replication {
        &self.inner.replication
    }

    /// The node's store (`None` for clients and nodes without a data directory).
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    /// Peer scores, shared by every download this node makes: a peer banned
    /// in one is not asked in the next.
    pub fn scores(&self) -> &PeerScores {
        &self.inner.scores
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.net.id()
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        self.inner.net.config()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.inner.net.local_addr()
    }

    /// The address to give others to dial this node, pinned with its id.
    pub fn addr(&self) -> PeerAddr {
        self.inner.net.addr()
    }

    /// Dials `addr`, runs JOIN/WELCOME, and returns the peer's proven id.
    pub async fn connect(&self, addr: &PeerAddr) -> Result<NodeId, ConnectError> {
        self.inner.net.connect(addr).await
    }

    /// The live connection to `id`, if any.
    pub fn connection(&self, id: &NodeId) -> Option<Connection> {
        self.inner.net.connection(id)
    }

    /// A snapshot of the peer table.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.net.peers()
    }

    /// Ids of the connected full nodes.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.inner.net.connected_peers()
    }

    /// Subscribes to membership events.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.net.subscribe()
    }

    /// Seals `path` (unless `opts` say it is public), stores it and pushes
    /// it to `opts.replicas` other full nodes ([`Replication::put`]). Ends
    /// with [`PutError::Stopped`] when the node begins to shut down.
    pub async fn put(
        &self,
        path: &Path,
        opts: &PutOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PutReport, PutError> {
        let observe = self.inner.net.observe();
        let task = observe.activity.start("put");
        let _unfinished = Unfinished(task.clone());
        let progress = Arc::new(Tracked {
            task: task.clone(),
            inner: progress,
        });
        let stopping = self.inner.net.stopping();
        let put = self.inner.replication.put(path, opts, progress);
        let result = tokio::select! {
            r = put => r,
            _ = stopping.cancelled() => Err(PutError::Stopped),
        };
        let label = match &result {
            Ok(report) => {
                task.finish(TaskState::Done { file: None });
                let name = path.file_name().unwrap_or(path.as_os_str());
                observe.journal.record(
                    "put",
                    format!(
                        "{} stored with {} of {} copies elsewhere",
                        name.to_string_lossy(),
                        report.remote_copies,
                        report.wanted
                    ),
                );
                "ok"
            }
            Err(e) => {
                task.finish(TaskState::Failed(e.to_string()));
                "failed"
            }
        };
        observe
            .metrics
            .get()
            .puts
            .get_or_create(&ResultLabel { result: label })
            .inc();
        result
    }

    /// Finds who holds `target` and downloads it to `out`
    /// ([`Replication::get`]). Stops with [`DownloadError::Stopped`] when
    /// the node begins to shut down: a stopping node takes no more data, and
    /// the `.part` file it leaves is resumed by the next get.
    pub async fn get(
        &self,
        target: &Target,
        out: &Path,
        opts: &DownloadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<DownloadStats, DownloadError> {
        let task = self.inner.net.observe().activity.start("get");
        self.get_tracked(task, target, out, opts, progress).await
    }

    /// [`Node::get`], shown as `task` (made by the caller, who wants its
    /// number before the get ends).
    pub async fn get_tracked(
        &self,
        task: Arc<Task>,
        target: &Target,
        out: &Path,
        opts: &DownloadOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<DownloadStats, DownloadError> {
        let observe = self.inner.net.observe();
        let _unfinished = Unfinished(task.clone());
        let progress = Arc::new(Tracked {
            task: task.clone(),
            inner: progress,
        });
        let stopping = self.inner.net.stopping();
        let get = self.inner.replication.get(target, out, opts, progress);
        let result = tokio::select! {
            r = get => r,
            _ = stopping.cancelled() => Err(DownloadError::Stopped(out.to_path_buf())),
        };
        let m = observe.metrics.get();
        let label = match &result {
            Ok(stats) => {
                let file = (stats.files == 1 && out.is_file()).then(|| out.to_path_buf());
                task.finish(TaskState::Done { file });
                let fetched = stats.fetched_bytes;
                let secs = stats.elapsed.as_secs_f64();
                if secs > 0.0 {
                    m.download_bytes_per_second.observe(fetched as f64 / secs);
                }
                m.chunks
                    .get_or_create(&IN)
                    .inc_by(stats.chunks_fetched as u64);
                m.chunk_bytes.get_or_create(&IN).inc_by(fetched);
                observe.journal.record(
                    "get",
                    format!("{} fetched ({} bytes)", task.name(), stats.bytes),
                );
                "ok"
            }
            Err(e) => {
                task.finish(TaskState::Failed(e.to_string()));
                "failed"
            }
        };
        m.downloads
            .get_or_create(&ResultLabel { result: label })
            .inc();
        result
    }

    /// The node's metrics in the Prometheus text format, gauges brought up
    /// to date first.
    pub fn metrics_text(&self) -> String {
        self.inner.net.refresh_metrics();
        let observe = self.inner.net.observe();
        let m = observe.metrics.get();
        m.dht_contacts
            .set(self.inner.dht.routing_table_len() as i64);
        if let Some(store) = &self.inner.store {
            m.store_bytes.set(store.used() as i64);
            m.store_quota_bytes.set(store.quota() as i64);
            m.store_files.set(store.held_count() as i64);
        }
        observe.metrics.encode()
    }

    /// Graceful shutdown, in order: stop accepting and maintaining, save the
    /// routing table, LEAVE to every peer and close the endpoint, then wait
    /// for chunk writes under way to finish.
    pub async fn shutdown(&self) {
        let net = &self.inner.net;
        if net.is_shutting_down() {
            return;
        }
        net.stop_accepting();
        self.inner.dht.save().await;
        net.shutdown().await;
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

/// A put's or get's progress, passed on and kept for the dashboard.
struct Tracked {
    task: Arc<Task>,
    inner: Arc<dyn Progress>,
}

impl Progress for Tracked {
    fn begin(&self, name: &str, total_bytes: u64) {
        self.task.begin(name, total_bytes);
        self.inner.begin(name, total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.task.advance(bytes);
        self.inner.advance(bytes);
    }
}

/// Marks a task failed if the put or get it shows is dropped unfinished.
struct Unfinished(Arc<Task>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// What each kind of peer may make this node store.
fn allowance_policy(config: &NodeConfig) -> AllowancePolicy {
    AllowancePolicy {
        stranger: config.stranger_allowance,
        member: config.member_allowance,
        members: config.network_key.is_some() || config.allow.is_some(),
        limit_loopback: config.limit_loopback,
        window: config.gc_grace + config.gc_interval,
    }
}

/// Every `gc_interval`, collects the chunks and manifests no held file uses
/// (incoming copies that never finished) once older than `gc_grace`.
async fn collect_garbage(net: Network, store: Store) {
    let cfg = net.config();
    let (interval, grace) = (cfg.gc_interval, cfg.gc_grace);
    let stopping = net.stopping();
    let mut next = Instant::now() + interval;
    loop {
        tokio::select! {
            _ = stopping.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next = Instant::now() + interval;
        let store = store.clone();
        net.spawn_blocking(move || match store.collect_garbage(grace) {
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
