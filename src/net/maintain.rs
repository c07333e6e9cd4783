//! Keeping the membership fresh: gossip and PING to a few peers each round,
//! dialing gossiped peers up to `target_peers`, expiring the silent and the
//! undialable, and retrying the bootstrap nodes while no peer is connected.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::accept::GOSSIP_SAMPLE;
use super::membership::PeerEvent;
use super::{lock, ConnectError, Network, PeerAddr};
use crate::proto::wire::{Control, Role};
use crate::proto::NodeId;

/// Peers gossiped to per round.
const GOSSIP_FANOUT: usize = 6;
/// At most this many dials started per maintenance tick.
const DIALS_PER_TICK: usize = 8;
/// Dial failures after which a gossiped peer is forgotten.
const MAX_DIAL_FAILURES: u32 = 4;
/// Longest wait between bootstrap retries.
const MAX_BOOTSTRAP_BACKOFF: Duration = Duration::from_secs(60);

/// When the bootstrap nodes are next tried, and whether a try is under way.
pub(super) struct BootstrapState {
    next: Instant,
    backoff: Duration,
    running: bool,
}

impl BootstrapState {
    pub(super) fn new(now: Instant) -> Self {
        BootstrapState {
            next: now,
            backoff: Duration::from_secs(1),
            running: false,
        }
    }
}

/// No bootstrap node could be reached.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// None were given.
    #[error("no bootstrap addresses")]
    NoAddresses,
    /// Every one failed; this is the last failure.
    #[error("{addr}: {source}")]
    Unreachable {
        /// The bootstrap address.
        addr: PeerAddr,
        /// Why it failed.
        source: ConnectError,
    },
}

impl Network {
    pub(super) async fn maintenance_loop(self) {
        let tick = self
            .inner
            .config
            .gossip_interval
            .min(Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_gossip = Instant::now();
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
            self.expire_and_dial(now);
            self.maybe_bootstrap(now);
            self.maybe_check_reachability(now);
            self.maybe_reserve(now);
            self.maybe_map_port();
        }
    }

    /// Reports members whose grace ran out, forgets gossiped peers that
    /// went stale, and dials towards `target_peers`.
    fn expire_and_dial(&self, now: Instant) {
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
            self.inner
                .tasks
                .spawn(async move { n.dial_gossiped(id, addrs).await });
        }
    }

    /// Dials a gossiped peer at each of its addresses until one works.
    async fn dial_gossiped(self, id: NodeId, addrs: Vec<SocketAddr>) {
        let mut ok = false;
        for a in addrs {
            match self.dial(a, Some(id)).await {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(e) => debug!(peer = %id, addr = %a, "dial failed: {e}"),
            }
        }
        let mut t = lock(&self.inner.peers);
        if ok {
            t.dial_done(id);
        } else {
            t.dial_failed(id, Instant::now());
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
            lock(&self.inner.bootstrap).backoff = Duration::from_secs(1);
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
    /// last failure.
    pub async fn bootstrap_once(&self) -> Result<(), BootstrapError> {
        let mut result = Err(BootstrapError::NoAddresses);
        for addr in self.inner.config.bootstrap.clone() {
            match self.connect(&addr).await {
                Ok(_) => result = Ok(()),
                Err(source) => {
                    debug!(%addr, "bootstrap failed: {source}");
                    if result.is_err() {
                        result = Err(BootstrapError::Unreachable { addr, source });
                    }
                }
            }
        }
        result
    }
}
