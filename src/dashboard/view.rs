//! What the page shows, as JSON: one snapshot of the node built once a
//! second by a single sampler and shared by every open page, so the cost to
//! the node does not grow with the number of viewers (and is small when
//! nobody watches).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::dht::distance;
use crate::net::membership::PeerState;
use crate::node::Node;
use crate::observe::TaskState;
use crate::proto::wire::Role;
use crate::proto::NodeId;

/// Throughput samples kept: five minutes at one a second.
pub const SAMPLES: usize = 300;
/// Files listed at most (the page is a view, not an index).
pub const MAX_FILES: usize = 500;
/// Nodes drawn at most: this node, its connections, then others named by
/// gossip (which a hostile peer could fill with inventions).
pub const MAX_GRAPH: usize = 200;
/// How often the held files are listed again (it reads the store).
const FILES_EVERY: Duration = Duration::from_secs(3);
/// How often the state is built when no page watches (for `/api/state`).
pub const IDLE_EVERY: Duration = Duration::from_secs(5);

/// The whole page's data.
#[derive(Serialize, Clone, Default)]
pub struct State {
    node: NodeView,
    peers: Vec<PeerView>,
    graph: Graph,
    transfers: Vec<TransferView>,
    throughput: Throughput,
    store: Option<StoreView>,
    dht: DhtView,
    events: Vec<EventView>,
}

#[derive(Serialize, Clone, Default)]
struct NodeView {
    id: String,
    addr: String,
    version: &'static str,
    role: &'static str,
    uptime_s: u64,
    private: bool,
}

#[derive(Serialize, Clone)]
struct PeerView {
    id: String,
    addr: Option<String>,
    role: &'static str,
    state: &'static str,
    rtt_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    score: &'static str,
    last_seen_s: u64,
}

#[derive(Serialize, Clone, Default)]
struct Graph {
    nodes: Vec<GraphNode>,
    links: Vec<Link>,
}

#[derive(Serialize, Clone)]
struct GraphNode {
    id: String,
    kind: &'static str,
}

#[derive(Serialize, Clone)]
struct Link {
    source: String,
    target: String,
}

#[derive(Serialize, Clone)]
struct TransferView {
    id: u64,
    kind: &'static str,
    name: String,
    total: u64,
    done: u64,
    bytes_per_s: f64,
    state: &'static str,
    error: Option<String>,
    download: Option<String>,
    elapsed_s: f64,
}

#[derive(Serialize, Clone, Default)]
struct Throughput {
    interval_s: u64,
    #[serde(rename = "in")]
    received: Vec<u64>,
    #[serde(rename = "out")]
    sent: Vec<u64>,
}

#[derive(Serialize, Clone)]
struct StoreView {
    used: u64,
    quota: u64,
    files: Vec<FileView>,
    more_files: usize,
}

#[derive(Serialize, Clone)]
struct FileView {
    id: String,
    name: String,
    size: u64,
    is_dir: bool,
    complete: bool,
    copies: usize,
    holders: Vec<String>,
}

#[derive(Serialize, Clone, Default)]
struct DhtView {
    size: usize,
    buckets: Vec<Bucket>,
}

#[derive(Serialize, Clone)]
struct Bucket {
    /// Kademlia's bucket number: contacts at a distance in [2^i, 2^(i+1)).
    index: u32,
    contacts: Vec<ContactView>,
}

#[derive(Serialize, Clone)]
struct ContactView {
    id: String,
    addr: Option<String>,
}

#[derive(Serialize, Clone)]
struct EventView {
    t: u64,
    kind: &'static str,
    text: String,
}

/// Builds [`State`]s once a second and publishes each as JSON.
pub struct Sampler {
    node: Node,
    started: Instant,
    last_bytes: Option<[u64; 2]>,
    received: VecDeque<u64>,
    sent: VecDeque<u64>,
    files: Option<(Instant, Option<StoreView>)>,
}

impl Sampler {
    /// A sampler of `node`, its uptime counted from now.
    pub fn new(node: Node) -> Sampler {
        Sampler {
            node,
            started: Instant::now(),
            last_bytes: None,
            received: VecDeque::with_capacity(SAMPLES),
            sent: VecDeque::with_capacity(SAMPLES),
            files: None,
        }
    }

    /// Publishes a snapshot on `tx` every second while a page watches
    /// (every [`IDLE_EVERY`] otherwise) until the node stops. The traffic
    /// chart is sampled every second either way.
    pub async fn run(mut self, tx: watch::Sender<String>, viewers: Arc<AtomicUsize>) {
        let stopping = self.node.net().stopping();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut built = Instant::now();
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tick.tick() => {}
            }
            let watched = viewers.load(Ordering::Relaxed) > 0;
            if !watched && built.elapsed() < IDLE_EVERY {
                let bytes = self.node.net().refresh_metrics();
                self.throughput(bytes);
                continue;
            }
            built = Instant::now();
            let state = self.sample().await;
            match serde_json::to_string(&state) {
                Ok(json) => {
                    tx.send_replace(json);
                }
                Err(e) => tracing::warn!("dashboard state: {e}"),
            }
        }
    }

    /// One snapshot.
    pub async fn sample(&mut self) -> State {
        let bytes = self.node.net().refresh_metrics();
        self.throughput(bytes);
        let store = self.store().await;
        let node = &self.node;
        State {
            node: NodeView {
                id: node.id().to_string(),
                addr: node.local_addr().to_string(),
                version: env!("CARGO_PKG_VERSION"),
                role: match node.config().role {
                    Role::Peer => "peer",
                    Role::Client => "client",
                },
                uptime_s: self.started.elapsed().as_secs(),
                private: node.config().network_key.is_some() || node.config().allow.is_some(),
            },
            peers: peers(node),
            graph: graph(node),
            transfers: transfers(node),
            throughput: Throughput {
                interval_s: 1,
                received: self.received.iter().copied().collect(),
                sent: self.sent.iter().copied().collect(),
            },
            store,
            dht: dht(node),
            events: events(node),
        }
    }

    fn throughput(&mut self, bytes: [u64; 2]) {
        let last = self.last_bytes.replace(bytes).unwrap_or(bytes);
        for (ring, (now, then)) in [&mut self.received, &mut self.sent]
            .into_iter()
            .zip(bytes.into_iter().zip(last))
        {
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back(now.saturating_sub(then));
        }
    }

    /// The held files, listed again every [`FILES_EVERY`].
    async fn store(&mut self) -> Option<StoreView> {
        if let Some((at, view)) = &self.files {
            if at.elapsed() < FILES_EVERY {
                return view.clone();
            }
        }
        let view = store_view(&self.node).await;
        self.files = Some((Instant::now(), view.clone()));
        view
    }
}

fn peers(node: &Node) -> Vec<PeerView> {
    let scores = node.scores();
    node.peers()
        .into_iter()
        .map(|p| {
            let stats = node.connection(&p.id).map(|c| c.stats());
            let score = match scores.get(&p.id) {
                Some(s) if s.banned_for.is_some() => "banned",
                Some(s) if s.penalty > 0.0 => "penalized",
                Some(s) if s.served > 0 => "good",
                _ => "new",
            };
            PeerView {
                id: p.id.to_string(),
                addr: p.addrs.first().map(|a| a.to_string()),
                role: match p.role {
                    Role::Peer => "peer",
                    Role::Client => "client",
                },
                state: match p.state {
                    PeerState::Outbound => "outbound",
                    PeerState::Inbound => "inbound",
                    PeerState::Known => "known",
                },
                rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                bytes_in: stats.as_ref().map_or(0, |s| s.udp_rx.bytes),
                bytes_out: stats.as_ref().map_or(0, |s| s.udp_tx.bytes),
                score,
                last_seen_s: p.last_seen.as_secs(),
            }
        })
        .collect()
}

/// This node, its connections, and the peers its peers' gossip named.
fn graph(node: &Node) -> Graph {
    let me = node.id();
    let connected: HashSet<NodeId> = node.connected_peers().into_iter().collect();
    let links = node.net().links();
    let mut kinds: BTreeMap<NodeId, &'static str> = BTreeMap::new();
    kinds.insert(me, "self");
    for id in &connected {
        kinds.insert(*id, "connected");
    }
    for id in links.iter().flat_map(|(a, b)| [a, b]) {
        if kinds.len() >= MAX_GRAPH {
            break;
        }
        kinds.entry(*id).or_insert("known");
    }
    // One line per pair, whichever side named it, between nodes drawn.
    let mut seen = HashSet::new();
    let links = links
        .into_iter()
        .filter(|(a, b)| kinds.contains_key(a) && kinds.contains_key(b))
        .filter(|(a, b)| seen.insert(if a < b { (*a, *b) } else { (*b, *a) }))
        .map(|(a, b)| Link {
            source: a.to_string(),
            target: b.to_string(),
        })
        .collect();
    Graph {
        nodes: kinds
            .into_iter()
            .map(|(id, kind)| GraphNode {
                id: id.to_string(),
                kind,
            })
            .collect(),
        links,
    }
}

fn transfers(node: &Node) -> Vec<TransferView> {
    node.net()
        .observe()
        .activity
        .tasks()
        .into_iter()
        .rev()
        .map(|t| {
            let (total, done) = t.progress();
            let (state, elapsed) = t.state();
            let secs = elapsed.as_secs_f64();
            let (label, error, download) = match state {
                TaskState::Running => ("running", None, None),
                TaskState::Done { file } => (
                    "done",
                    None,
                    file.map(|_| format!("/api/download/{}", t.id)),
                ),
                TaskState::Failed(e) => ("failed", Some(e), None),
            };
            TransferView {
                id: t.id,
                kind: t.kind,
                name: t.name(),
                total,
                done,
                bytes_per_s: if secs > 0.0 { done as f64 / secs } else { 0.0 },
                state: label,
                error,
                download,
                elapsed_s: secs,
            }
        })
        .collect()
}

async fn store_view(node: &Node) -> Option<StoreView> {
    let store = node.store()?.clone();
    let (used, quota) = (store.used(), store.quota());
    let listed =
        tokio::task::spawn_blocking(move || (store.some_files(MAX_FILES), store.held_count()))
            .await;
    let (mut files, held) = match listed {
        Ok((Ok(files), held)) => (files, held),
        Ok((Err(e), _)) => {
            tracing::warn!("dashboard: cannot list the held files: {e}");
            (Vec::new(), 0)
        }
        Err(_) => (Vec::new(), 0),
    };
    files.sort_by(|a, b| a.record.name.cmp(&b.record.name));
    let more_files = usize::try_from(held)
        .unwrap_or(usize::MAX)
        .saturating_sub(files.len());
    let me = node.id();
    let files = files
        .into_iter()
        .map(|f| {
            // Holders this node knows of: itself, and the provider records
            // it keeps for the file.
            let mut holders = vec![me];
            for r in node.dht().local_providers(f.id) {
                if !holders.contains(&r.id) {
                    holders.push(r.id);
                }
            }
            FileView {
                id: f.id.to_string(),
                name: f.record.name,
                size: f.record.size,
                is_dir: f.record.is_dir,
                complete: f.complete,
                copies: holders.len(),
                holders: holders.iter().map(|h| h.to_string()).collect(),
            }
        })
        .collect();
    Some(StoreView {
        used,
        quota,
        files,
        more_files,
    })
}

fn dht(node: &Node) -> DhtView {
    let me = node.id();
    let contacts = node.dht().state().table.contacts();
    let mut buckets: HashMap<u32, Vec<ContactView>> = HashMap::new();
    for c in &contacts {
        buckets
            .entry(255u32.saturating_sub(distance(&me, &c.id).leading_zeros()))
            .or_default()
            .push(ContactView {
                id: c.id.to_string(),
                addr: c.addrs.first().map(|a| a.to_string()),
            });
    }
    let mut buckets: Vec<Bucket> = buckets
        .into_iter()
        .map(|(index, contacts)| Bucket { index, contacts })
        .collect();
    buckets.sort_by_key(|b| b.index);
    DhtView {
        size: contacts.len(),
        buckets,
    }
}

fn events(node: &Node) -> Vec<EventView> {
    node.net()
        .observe()
        .journal
        .recent()
        .into_iter()
        .rev()
        .map(|e| EventView {
            t: e.at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: e.kind,
            text: e.text,
        })
        .collect()
}
