//! Repair and trimming: every full node, each `repair_interval` (with
//! jitter), looks at each file it holds and at the nodes closest to it.
//!
//! - **Possession is shown, not claimed.** A node counts as a holder only
//!   once it answered a challenge drawn from this node's own copy (see
//!   [`possession`](super::possession)); HAS is not asked. A node that
//!   answers wrong is distrusted for the file for a while: not a holder, not
//!   a target.
//! - **Targets** are the R live nodes closest to the file, skipping the
//!   distrusted and the silent. A target that proved is a holder; one that
//!   said it holds nothing is missing a copy.
//! - **One leader.** The closest proven holder among the targets leads and
//!   copies the file to the missing targets. When no target holds it, the
//!   holders outside ask the DHT for the file's providers and challenge
//!   those closer than themselves: only the closest proven holder leads. A
//!   leader acts only once two passes at least [`grace`] apart found the
//!   file short, so a node that left for a moment, or a view still
//!   settling, does not set off copies. After copying, it challenges the
//!   target: one that took the copy but cannot prove it is distrusted, and
//!   the next pass copies to the next node in line.
//! - **Trimming.** A holder that sees at least R+1 proven holders closer to
//!   the file than itself drops its copy ([`Store::release_file`]): it stops
//!   announcing it, and garbage collection frees the pieces after its
//!   grace. This applies to every copy, a node's own put included: a put
//!   keeps a local copy as one of the R+1, not as a pin. So at most R+1
//!   copies stay once repair and trimming settle.
//!
//! The bandwidth repair takes is bounded by `repair_rate`.
//!
//! [`Store::release_file`]: crate::store::Store::release_file

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quinn::Connection;
use tracing::{debug, info, warn};

use super::possession::{self, check, Expected, Shown};
use super::put::push_tree;
use super::source::ChunkSource;
use super::Replication;
use crate::dht::behaviour::jitter;
use crate::dht::kbucket::Contact;
use crate::dht::{distance, key_of, Distance};
use crate::download::NoProgress;
use crate::observe::metrics::ActionLabel;
use crate::proto::wire::Role;
use crate::proto::{Hash, NodeId};
use crate::store::chunker::Tree;

/// What repair remembers between passes.
#[derive(Default)]
pub(super) struct RepairMemory {
    /// Files found short of copies, and since when (for the grace).
    short: HashMap<Hash, Instant>,
    /// Peers that failed a challenge, per file.
    distrust: possession::Distrust,
}

/// How long a leader waits between finding a file short and copying it:
/// three quarters of `repair_interval`, so the next pass (at least 0.8 of
/// it, with jitter) acts.
pub fn grace(repair_interval: Duration) -> Duration {
    repair_interval.mul_f64(0.75)
}

/// How many repair intervals a peer that failed a challenge is not asked.
const DISTRUST_INTERVALS: u32 = 30;

/// What one pass saw around a file.
#[derive(Default)]
struct Survey {
    /// The R closest live, trusted nodes, closest first, and what each
    /// showed; `None` is this node.
    targets: Vec<(Option<(Contact, Connection)>, Shown)>,
    /// Proven holders closer to the file than this node.
    closer_holders: usize,
}

impl Survey {
    /// Whether this node leads: it is the closest proven holder among the
    /// targets (`Some(true)`), another is (`Some(false)`), or no target
    /// holds the file (`None`).
    fn leads(&self) -> Option<bool> {
        self.targets
            .iter()
            .find(|(_, s)| *s == Shown::Holds)
            .map(|(c, _)| c.is_none())
    }

    /// The targets that said they hold nothing.
    fn missing(self) -> Vec<(Contact, Connection)> {
        self.targets
            .into_iter()
            .filter(|(_, s)| *s == Shown::Missing)
            .filter_map(|(c, _)| c)
            .collect()
    }
}

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

    /// Repairs (or trims) every complete file this node holds.
    async fn repair_all(&self) {
        let Some(store) = &self.store else {
            return;
        };
        for f in store.complete_files().await {
            if self.net.is_shutting_down() {
                return;
            }
            self.repair(f.id, f.record.size).await;
        }
    }

    /// One pass over one file: trims this node's copy if R+1 proven holders
    /// are closer, else copies it to the targets missing it if this node
    /// leads and the grace has passed.
    async fn repair(&self, file: Hash, size: u64) {
        let Some(tree) = self.local_tree(file, size).await else {
            return;
        };
        let pieces = possession::pieces(&tree);
        let survey = self.survey(file, &pieces).await;
        let replicas = self.net.config().replicas;
        if survey.closer_holders > replicas {
            self.trim(file, survey.closer_holders).await;
            return;
        }
        let leads = match survey.leads() {
            Some(leads) => leads,
            None => self.closest_outside_holder(file, &pieces).await,
        };
        let missing = survey.missing();
        if !leads || missing.is_empty() {
            self.memory().short.remove(&file);
            return;
        }
        if !self.grace_passed(file) {
            debug!(file = %file.fmt_short(), short = missing.len(), "short of copies: waiting");
            return;
        }
        self.copy(&tree, &pieces, missing).await;
    }

    /// Challenges the nodes closest to `file`, closest first, until the
    /// targets are known and every node closer than this one was asked.
    async fn survey(&self, file: Hash, pieces: &[Hash]) -> Survey {
        let cfg = self.net.config();
        let (me, r) = (self.net.id(), cfg.replicas);
        let candidates = self.dht.closest_nodes(file, 2 * r + 2).await;
        let mut survey = Survey::default();
        let mut me_seen = false;
        for c in candidates {
            if c.id == me {
                me_seen = true;
                if survey.targets.len() < r {
                    survey.targets.push((None, Shown::Holds));
                }
                continue;
            }
            let full = survey.targets.len() >= r;
            if full && (me_seen || survey.closer_holders > r) {
                break;
            }
            let Some((conn, shown)) = self.challenge(file, pieces, &c).await else {
                continue;
            };
            if shown == Shown::Holds && !me_seen {
                survey.closer_holders += 1;
            }
            if !full && matches!(shown, Shown::Holds | Shown::Missing) {
                survey.targets.push((Some((c, conn)), shown));
            }
        }
        survey
    }

    /// Challenges `c` for `file` with a fresh challenge; `None` if it is
    /// distrusted, unreachable or silent. A failure is logged and
    /// remembered.
    async fn challenge(
        &self,
        file: Hash,
        pieces: &[Hash],
        c: &Contact,
    ) -> Option<(Connection, Shown)> {
        if self.memory().distrust.has(file, c.id) {
            return None;
        }
        let first = &c.addrs[..c.addrs.len().min(1)];
        let conn = self.net.connection_to(c.id, first, &c.relays).await.ok()?;
        let expected = self.draw(file, pieces).await?;
        let shown = check(&conn, &expected, self.net.config().rpc_timeout).await;
        match shown {
            Shown::Failed => {
                self.distrust(file, c.id);
                None
            }
            Shown::Silent => None,
            _ => Some((conn, shown)),
        }
    }

    /// A challenge drawn from this node's copy.
    async fn draw(&self, file: Hash, pieces: &[Hash]) -> Option<Expected> {
        let store = self.store.clone()?;
        let pieces = pieces.to_vec();
        tokio::task::spawn_blocking(move || possession::draw(&store, file, &pieces))
            .await
            .ok()?
    }

    /// Counts a repair `action` and puts `text` in the journal as `kind`.
    fn record(&self, action: &'static str, kind: &'static str, text: impl FnOnce() -> String) {
        let observe = self.net.observe();
        observe
            .metrics
            .get()
            .repairs
            .get_or_create(&ActionLabel { action })
            .inc();
        observe.journal.record(kind, text());
    }

    /// Remembers (and logs) that `peer` failed to prove it holds `file`.
    fn distrust(&self, file: Hash, peer: NodeId) {
        warn!(file = %file.fmt_short(), peer = %peer.fmt_short(),
            "[REPAIR] peer failed to prove it holds the file: not counted");
        self.record("unproven", "repair", || {
            format!(
                "{} failed to prove it holds {}: not counted",
                peer.fmt_short(),
                file.fmt_short()
            )
        });
        let period = self.net.config().repair_interval * DISTRUST_INTERVALS;
        self.memory().distrust.add(file, peer, period);
    }

    /// When no target holds `file`: whether this node is the closest holder
    /// that can prove it, among the providers the DHT knows.
    async fn closest_outside_holder(&self, file: Hash, pieces: &[Hash]) -> bool {
        let key = key_of(&file);
        let mine: Distance = distance(&self.net.id(), &key);
        let mut providers = self
            .dht
            .lookup_providers(file, crate::dht::K)
            .await
            .providers;
        providers.retain(|p| distance(&p.id, &key) < mine);
        providers.sort_by_key(|p| distance(&p.id, &key));
        for p in providers {
            let c = Contact {
                id: p.id,
                addrs: p.addrs,
                relays: p.relays,
            };
            if let Some((_, Shown::Holds)) = self.challenge(file, pieces, &c).await {
                return false;
            }
        }
        true
    }

    /// Whether `file` was found short at least a grace period ago (and
    /// notes that it is short now).
    fn grace_passed(&self, file: Hash) -> bool {
        let grace = grace(self.net.config().repair_interval);
        let mut memory = self.memory();
        let since = *memory.short.entry(file).or_insert_with(Instant::now);
        let passed = since.elapsed() >= grace;
        if passed {
            memory.short.remove(&file);
        }
        passed
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, RepairMemory> {
        self.repair.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Replication {
    /// Copies `tree` to each missing target, then challenges it: a target
    /// that took the copy but cannot prove it is distrusted. Paced to
    /// `repair_rate`.
    async fn copy(&self, tree: &Tree, pieces: &[Hash], missing: Vec<(Contact, Connection)>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let file = tree.root;
        let source = ChunkSource::Store(store);
        for (c, conn) in missing {
            let started = Instant::now();
            match push_tree(&conn, tree, &source, &NoProgress).await {
                Ok(()) => self.confirm(file, pieces, &c, &conn).await,
                Err(e) => {
                    warn!(file = %file.fmt_short(), to = %c.id.fmt_short(), "repair failed: {e}")
                }
            }
            // Bound the bandwidth repair takes: pause as long as the copy
            // would take at the configured rate.
            let rate = self.net.config().repair_rate as f64;
            let budget = Duration::from_secs_f64(tree.size as f64 / rate);
            if let Some(rest) = budget.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// Challenges a target that just acknowledged a copy.
    async fn confirm(&self, file: Hash, pieces: &[Hash], c: &Contact, conn: &Connection) {
        let Some(expected) = self.draw(file, pieces).await else {
            return;
        };
        match check(conn, &expected, self.net.config().rpc_timeout).await {
            Shown::Holds => {
                info!(file = %file.fmt_short(), to = %c.id.fmt_short(), "[REPAIR] copy restored");
                self.record("copied", "repair", || {
                    format!(
                        "a copy of {} restored on {}",
                        file.fmt_short(),
                        c.id.fmt_short()
                    )
                });
            }
            Shown::Silent => {}
            Shown::Missing | Shown::Failed => self.distrust(file, c.id),
        }
    }

    /// Drops this node's copy of `file`: `closer` proven holders are closer.
    async fn trim(&self, file: Hash, closer: usize) {
        let Some(store) = self.store.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || store.release_file(&file)).await {
            Ok(Ok(true)) => {
                info!(file = %file.fmt_short(), closer, "[TRIM] copy beyond R+1 dropped");
                self.record("trimmed", "trim", || {
                    format!(
                        "this node's copy of {} dropped: {closer} closer holders",
                        file.fmt_short()
                    )
                });
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(file = %file.fmt_short(), "cannot drop a copy: {e}"),
            Err(e) => warn!(file = %file.fmt_short(), "cannot drop a copy: {e}"),
        }
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
