//! A simulator that drives the real [`RoutingTable`] and [`Lookup`] over
//! thousands of simulated nodes, with no sockets: every request is answered
//! synchronously by the target's own routing table, and a node marked down
//! simply never answers.
//!
//! Nodes join one at a time the way real ones do: through a random node already
//! in, with a lookup of their own id; every node asked learns the newcomer (its
//! id was proven by the handshake), and the newcomer learns every node that
//! answered. A full bucket pings its least-recently-seen contact, which answers
//! if it is up.

use std::collections::HashMap;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::kbucket::{Contact, Insert, RoutingTable};
use super::query::{Lookup, LookupConfig, Poll};
use super::{distance, K};
use crate::proto::NodeId;

/// A simulated network.
pub struct Sim {
    rng: StdRng,
    tables: HashMap<NodeId, RoutingTable>,
    /// Nodes that are up (answer requests).
    up: Vec<NodeId>,
    down: std::collections::HashSet<NodeId>,
    now: Instant,
    cfg: LookupConfig,
}

/// Results of a batch of lookups.
#[derive(Debug, Clone)]
pub struct Report {
    /// Lookups run.
    pub lookups: usize,
    /// Lookups whose result held the target node.
    pub found: usize,
    /// Median rounds (hops).
    pub median_rounds: u32,
    /// 95th percentile rounds.
    pub p95_rounds: u32,
    /// Mean requests per lookup.
    pub mean_requests: f64,
}

impl Report {
    /// Found / lookups, in percent.
    pub fn success_pct(&self) -> f64 {
        100.0 * self.found as f64 / self.lookups.max(1) as f64
    }
}

fn contact(id: NodeId) -> Contact {
    Contact {
        id,
        addrs: vec![],
        relays: vec![],
    }
}

impl Sim {
    /// An empty network with a fixed seed.
    pub fn new(seed: u64) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            tables: HashMap::new(),
            up: Vec::new(),
            down: Default::default(),
            now: Instant::now(),
            cfg: LookupConfig::default(),
        }
    }

    /// Runs the lookups from now on on `paths` disjoint paths (joins so far
    /// keep the tables they built).
    pub fn set_paths(&mut self, paths: usize) {
        self.cfg.paths = paths;
    }

    /// Nodes that are up.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// Whether no node is up.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    fn learn(&mut self, at: NodeId, who: NodeId) {
        let now = self.now;
        let Some(t) = self.tables.get_mut(&at) else {
            return;
        };
        if let Insert::Ping(old) = t.insert(contact(who), now) {
            let alive = !self.down.contains(&old.id);
            t.ping_result(&old.id, alive, now);
        }
    }

    /// Runs one lookup from `from` for `target`, updating tables as a real node
    /// would (the asked node learns the asker; the asker learns who answered).
    fn lookup(&mut self, from: NodeId, target: NodeId) -> Lookup {
        let seeds = self.tables[&from].closest(&target, K);
        let mut l = Lookup::new(target, seeds, self.cfg);
        loop {
            match l.poll(self.now) {
                Poll::Finished => return l,
                Poll::Query(to) => {
                    for peer in to {
                        if self.down.contains(&peer.id) || !self.tables.contains_key(&peer.id) {
                            l.on_failure(&peer.id);
                            if let Some(t) = self.tables.get_mut(&from) {
                                t.record_failure(&peer.id);
                            }
                            continue;
                        }
                        self.learn(peer.id, from);
                        let closer = self.tables[&peer.id].closest(&target, K);
                        l.on_success(&peer.id, closer);
                        self.learn(from, peer.id);
                    }
                }
            }
        }
    }

    /// Adds `n` nodes, each joining through a random node already up.
    pub fn join(&mut self, n: usize) {
        for _ in 0..n {
            let id = NodeId::from_bytes(self.rng.random());
            let mut table = RoutingTable::new(id, K, self.now);
            if let Some(&boot) = self.pick_up() {
                table.insert(contact(boot), self.now);
            }
            self.tables.insert(id, table);
            if !self.up.is_empty() {
                self.lookup(id, id);
            }
            self.up.push(id);
        }
    }

    fn pick_up(&mut self) -> Option<&NodeId> {
        if self.up.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.up.len());
        self.up.get(i)
    }

    /// Takes a random `fraction` of the nodes down without telling anyone.
    pub fn fail(&mut self, fraction: f64) {
        let n = (self.up.len() as f64 * fraction).round() as usize;
        for _ in 0..n {
            let i = self.rng.random_range(0..self.up.len());
            let id = self.up.swap_remove(i);
            self.down.insert(id);
        }
    }

    /// Runs `n` lookups from random up nodes for random up nodes.
    pub fn measure(&mut self, n: usize) -> Report {
        let mut rounds = Vec::with_capacity(n);
        let mut found = 0;
        let mut requests = 0;
        for _ in 0..n {
            let from = self.up[self.rng.random_range(0..self.up.len())];
            let target = self.up[self.rng.random_range(0..self.up.len())];
            let l = self.lookup(from, target);
            let closest = l.closest(K);
            // The target itself answers its own lookup, so it must be first,
            // unless the lookup started at it.
            if from == target || closest.first().is_some_and(|c| c.id == target) {
                found += 1;
            }
            debug_assert!(closest
                .windows(2)
                .all(|w| distance(&w[0].id, &target) <= distance(&w[1].id, &target)));
            rounds.push(l.rounds());
            requests += l.requests();
        }
        rounds.sort_unstable();
        let pct = |p: f64| rounds[((rounds.len() - 1) as f64 * p) as usize];
        Report {
            lookups: n,
            found,
            median_rounds: pct(0.5),
            p95_rounds: pct(0.95),
            mean_requests: requests as f64 / n.max(1) as f64,
        }
    }
}

/// The target from the issue: median rounds at most ceil(log2 N / 3) + 2.
pub fn rounds_bound(n: usize) -> u32 {
    ((n as f64).log2() / 3.0).ceil() as u32 + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_thousand_nodes_with_a_tenth_down() {
        let mut sim = Sim::new(42);
        sim.join(2000);
        let healthy = sim.measure(200);
        assert_eq!(healthy.found, healthy.lookups, "{healthy:?}");
        assert!(healthy.median_rounds <= rounds_bound(2000), "{healthy:?}");
        sim.fail(0.10);
        let degraded = sim.measure(200);
        assert_eq!(degraded.found, degraded.lookups, "{degraded:?}");
        assert!(degraded.median_rounds <= rounds_bound(2000), "{degraded:?}");
    }
}
