//! `quic-peer demo`: a small network on loopback, shown working step by step.
//!
//! The nodes join through node 0 alone and find each other by gossip; node 1
//! stores a random file with three copies elsewhere; one holder stops; a node
//! holding nothing fetches the file by its id alone, and the demo checks that
//! it is byte for byte the original.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use anyhow::{Context, Result};
use quic_peer::dashboard::{Dashboard, DashboardOptions, DEFAULT_PORT};
use quic_peer::download::{DownloadOptions, NoProgress};
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::proto::ticket::{Target, Ticket};
use quic_peer::replication::PutOptions;
use quic_peer::replication::PutReport;
use quic_peer::{Node, NodeConfig, NodeId, PeerAddr};

use crate::display::say;

/// Copies node 1 asks for on other nodes.
const REPLICAS: usize = 3;
/// The file's size: a dozen chunks and a short last one.
const FILE_SIZE: usize = 12 * 1024 * 1024 + 12_345;
/// How long the nodes have to all see each other.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// Runs the demo with `nodes` nodes in a scratch directory, removed after;
/// with `stay`, keeps them running until Ctrl-C first.
pub async fn demo(nodes: usize, stay: bool) -> Result<()> {
    anyhow::ensure!(
        (5..=64).contains(&nodes),
        "--nodes must be between 5 and 64"
    );
    let work = std::env::temp_dir().join(format!("quic-peer-demo-{}", std::process::id()));
    let result = run_demo(nodes, stay, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_demo(nodes: usize, stay: bool, work: &Path) -> Result<()> {
    let started = Instant::now();
    let cluster = Cluster::start(nodes, work).await?;
    cluster.wait_until_all_connected().await?;
    let (src, data) = write_random_file(work)?;
    let report = put_from_node_1(&cluster, &src).await?;
    let stopped = stop_a_remote_holder(&cluster, &report).await?;
    fetch_by_id_elsewhere(&cluster, &report, stopped, work, &data).await?;
    if stay {
        say!("[HTTP] the nodes keep running: open a dashboard above; Ctrl-C stops them");
        tokio::signal::ctrl_c().await?;
    }
    cluster.stop_all_but(stopped).await?;
    say!(
        "[DONE] demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The demo's nodes, named in the output by their index.
struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    /// Starts node 0, then the others told only of node 0.
    async fn start(nodes: usize, work: &Path) -> Result<Cluster> {
        let config = |i: usize, bootstrap: Vec<PeerAddr>| NodeConfig {
            data_dir: Some(work.join(format!("node-{i}"))),
            bootstrap,
            ..NodeConfig::local_test()
        };
        let first = Node::start(config(0, vec![])).await?;
        say!(
            "[STARTED] node 0 on {} (id {})",
            first.local_addr(),
            first.id()
        );
        serve_dashboard(&first, 0, work).await?;
        let mut all = vec![first.clone()];
        for i in 1..nodes {
            let node = Node::start(config(i, vec![first.addr()])).await?;
            say!(
                "[STARTED] node {i} on {} (id {})",
                node.local_addr(),
                node.id()
            );
            serve_dashboard(&node, i, work).await?;
            all.push(node);
        }
        Ok(Cluster { nodes: all })
    }

    /// Waits until every node is connected to every other, or fails after
    /// [`CONVERGE_WITHIN`].
    async fn wait_until_all_connected(&self) -> Result<()> {
        let others = self.nodes.len() - 1;
        let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
        loop {
            let min = self
                .nodes
                .iter()
                .map(|n| n.connected_peers().len())
                .min()
                .unwrap_or(0);
            if min == others {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "membership did not converge: smallest view has {min} of {others} peers"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        say!(
            "[JOIN] all {} nodes see each other (each was told only of node 0; gossip did the rest)",
            self.nodes.len()
        );
        Ok(())
    }

    /// The index of the node with this id, if it is one of the demo's.
    fn index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == *id)
    }

    /// The node with this id as the output names it: its index, or `?`.
    fn index_name(&self, id: &NodeId) -> String {
        self.index(id)
            .map(|i| i.to_string())
            .unwrap_or_else(|| "?".into())
    }

    /// The indices of the nodes that hold a copy stored by `report`.
    fn holders<'a>(&'a self, report: &'a PutReport) -> impl Iterator<Item = usize> + 'a {
        report.holders.iter().filter_map(|h| self.index(&h.id))
    }

    /// Shuts down every node but the one already stopped, all at once.
    async fn stop_all_but(&self, stopped: usize) -> Result<()> {
        let stops: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != stopped)
            .map(|(_, n)| {
                let n = n.clone();
                tokio::spawn(async move { n.shutdown().await })
            })
            .collect();
        for s in stops {
            s.await?;
        }
        Ok(())
    }
}

/// Serves node `i`'s dashboard (port 8480 + i, or a free one) and prints
/// its address with the token.
async fn serve_dashboard(node: &Node, i: usize, work: &Path) -> Result<()> {
    let port = u16::try_from(usize::from(DEFAULT_PORT) + i).unwrap_or(0);
    let dashboard = Dashboard::start(
        node.clone(),
        DashboardOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            token: Some(Dashboard::new_token()),
            work_dir: work.join(format!("node-{i}")).join("dashboard"),
        },
    )
    .await?;
    say!("[HTTP] node {i} dashboard at {}", dashboard.url());
    Ok(())
}

/// Writes a file of random bytes, a few chunks long; returns its path and
/// its bytes to compare the fetched copy with.
fn write_random_file(work: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let src = work.join("demo-file.bin");
    let data: Vec<u8> = (0..FILE_SIZE).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&src, &data)?;
    Ok((src, data))
}

/// Stores the file from node 1 and checks it got all its remote copies.
async fn put_from_node_1(cluster: &Cluster, src: &Path) -> Result<PutReport> {
    let report = cluster.nodes[1]
        .put(
            src,
            &PutOptions {
                replicas: REPLICAS,
                ..PutOptions::default()
            },
            Arc::new(NoProgress),
        )
        .await?;
    let holder_names: Vec<String> = cluster
        .holders(&report)
        .map(|i| format!("node {i}"))
        .collect();
    say!(
        "[PUT] node 1 stored {} ({} bytes, {} chunks) as {}",
        src.display(),
        FILE_SIZE,
        (FILE_SIZE as u64).div_ceil(u64::from(DEFAULT_CHUNK_SIZE)),
        report.id
    );
    say!("[SENT] copies held by {}", holder_names.join(", "));
    say!("[SEALED] encrypted on node 1 before it left: the holders store ciphertext; the id alone finds and checks it, the id with the key reads it");
    anyhow::ensure!(
        report.remote_copies == REPLICAS,
        "expected {REPLICAS} remote copies, got {}",
        report.remote_copies
    );
    Ok(report)
}

/// Stops a node other than node 1 that holds a copy; returns its index.
async fn stop_a_remote_holder(cluster: &Cluster, report: &PutReport) -> Result<usize> {
    let victim = cluster
        .holders(report)
        .find(|&i| i != 1)
        .context("no remote holder")?;
    cluster.nodes[victim].shutdown().await;
    say!("[LEAVE] node {victim}, a holder, stopped");
    Ok(victim)
}

/// Fetches the file by its id and key (a ticket listing no holders, so the
/// DHT finds them) through a running node that holds no copy, and checks it
/// is the original byte for byte.
async fn fetch_by_id_elsewhere(
    cluster: &Cluster,
    report: &PutReport,
    stopped: usize,
    work: &Path,
    data: &[u8],
) -> Result<()> {
    let fetcher = (0..cluster.nodes.len())
        .find(|i| *i != stopped && !cluster.holders(report).any(|h| h == *i))
        .context("no node without a copy")?;
    let out = work.join("fetched.bin");
    let stats = cluster.nodes[fetcher]
        .get(
            &Target::Ticket(Ticket {
                id: report.id,
                holders: Vec::new(),
                key: report.key,
            }),
            &out,
            &DownloadOptions::default(),
            Arc::new(NoProgress),
        )
        .await?;
    let fetched = std::fs::read(&out)?;
    anyhow::ensure!(
        fetched == data,
        "the fetched file differs from the original"
    );
    let from: Vec<String> = stats
        .per_peer
        .iter()
        .map(|(id, n)| format!("node {} ({n} chunks)", cluster.index_name(id)))
        .collect();
    say!(
        "[RECEIVED] node {fetcher} fetched {} bytes from {} in {:.0} ms; every chunk verified",
        stats.bytes,
        from.join(", "),
        stats.elapsed.as_secs_f64() * 1000.0
    );
    say!("[CHECK] byte for byte identical to the original: yes");
    Ok(())
}
