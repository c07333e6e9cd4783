//! Repair: every full node checks, for each file it holds, that the R live
//! nodes closest to the file hold it too. Only the closest live holder (the
//! leader) copies it to those that do not, so a departure does not set off
//! R copies at once; the bandwidth repair takes is bounded by
//! `repair_rate`.

use std::time::{Duration, Instant};

use quinn::Connection;
use tracing::{info, warn};

use super::put::push_tree;
use super::source::ChunkSource;
use super::Replication;
use crate::dht::behaviour::jitter;
use crate::dht::kbucket::Contact;
use crate::dht::{distance, key_of};
use crate::download::NoProgress;
use crate::proto::wire::Role;
use crate::proto::Hash;
use crate::store::chunker::Tree;
use crate::transfer::has;

impl Replication {
    /// The repair loop: a pass over the held files every `repair_interval`
    /// (with jitter), once the routing table knows anyone.
    pub(super) async fn run_repair(self) {
        let cfg = self.net.config();
        if cfg.role != Role::Peer {
            return;
        }
        let tick = cfg.gossip_interval.min(Duration::from_secs(1));
        let mut next = Instant::now() + jitter(cfg.repair_interval);
        let stopping = self.net.stopping();
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let now = Instant::now();
            if now < next || self.dht.routing_table_len() == 0 {
                continue;
            }
            next = now + jitter(cfg.repair_interval);
            self.repair_all().await;
        }
    }

    /// Repairs every complete file this node holds.
    async fn repair_all(&self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let files = tokio::task::spawn_blocking(move || store.files())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for f in files.into_iter().filter(|f| f.complete) {
            if self.net.is_shutting_down() {
                return;
            }
            self.repair(f.id, f.record.size).await;
        }
    }

    /// Makes sure the R live nodes closest to `file` hold it, if this node
    /// leads its repair.
    async fn repair(&self, file: Hash, size: u64) {
        let missing = self.missing_copies(file).await;
        if missing.is_empty() {
            return;
        }
        let Some(tree) = self.local_tree(file, size).await else {
            return;
        };
        let Some(store) = self.store.clone() else {
            return;
        };
        let source = ChunkSource::Store(store);
        for (c, conn) in missing {
            let started = Instant::now();
            match push_tree(&conn, &tree, &source, &NoProgress).await {
                Ok(()) => {
                    info!(file = %file.fmt_short(), to = %c.id.fmt_short(), "[REPAIR] copy restored")
                }
                Err(e) => {
                    warn!(file = %file.fmt_short(), to = %c.id.fmt_short(), "repair failed: {e}")
                }
            }
            // Bound the bandwidth repair takes: pause as long as the copy
            // would take at the configured rate.
            let rate = self.net.config().repair_rate as f64;
            let budget = Duration::from_secs_f64(size as f64 / rate);
            if let Some(rest) = budget.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// The R closest live nodes that answered HAS with no, if this node is
    /// the closest holder among those that answered (the leader); else none.
    async fn missing_copies(&self, file: Hash) -> Vec<(Contact, Connection)> {
        let cfg = self.net.config();
        let me = self.net.id();
        let targets = self.dht.closest_nodes(file, cfg.replicas).await;
        let mut holders = vec![me];
        let mut missing = Vec::new();
        for c in targets.into_iter().filter(|c| c.id != me) {
            let first = &c.addrs[..c.addrs.len().min(1)];
            let Ok(conn) = self.net.connection_to(c.id, first).await else {
                continue;
            };
            match has(&conn, file, cfg.rpc_timeout).await {
                Ok(true) => holders.push(c.id),
                Ok(false) => missing.push((c, conn)),
                Err(_) => {}
            }
        }
        let key = key_of(&file);
        holders.sort_by_key(|id| distance(id, &key));
        if holders.first() != Some(&me) {
            return Vec::new();
        }
        missing
    }

    /// The tree of a file this node holds, as a put would push it.
    async fn local_tree(&self, file: Hash, size: u64) -> Option<Tree> {
        let store = self.store.clone()?;
        let tree = tokio::task::spawn_blocking(move || store.tree(&file))
            .await
            .ok()?
            .ok()??;
        Some(Tree {
            root: file,
            manifests: tree.into_iter().map(|(id, m)| (id, m.encode())).collect(),
            size,
        })
    }
}
