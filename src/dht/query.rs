//! An iterative Kademlia lookup as a state machine: no sockets, no clock of its
//! own. The driver asks [`Lookup::poll`] whom to query, sends the requests, and
//! reports each answer with [`Lookup::on_success`] or [`Lookup::on_failure`].
//!
//! - At most `alpha` requests count as in flight; one outstanding for longer
//!   than `slow_after` stops counting, so a slow node cannot stall the lookup
//!   (its answer is still used if it comes).
//! - The lookup is done when the `k` closest nodes it knows of that did not fail
//!   have all answered, or when nobody is left to ask.
//! - Each contact records the hop at which it was learned; [`Lookup::rounds`] is
//!   the deepest hop among the nodes that answered.

use std::time::{Duration, Instant};

use super::kbucket::Contact;
use super::{distance, Distance};
use crate::proto::NodeId;

/// Lookup parameters.
#[derive(Clone, Copy, Debug)]
pub struct LookupConfig {
    /// Closest nodes to converge on.
    pub k: usize,
    /// Requests in flight.
    pub alpha: usize,
    /// After this long an outstanding request no longer counts against `alpha`.
    pub slow_after: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            k: super::K,
            alpha: super::ALPHA,
            slow_after: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotContacted,
    Waiting(Instant),
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    contact: Contact,
    distance: Distance,
    state: State,
    hop: u32,
}

/// What the driver should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Send the request to these contacts (possibly none: wait for answers).
    Query(Vec<Contact>),
    /// The lookup is over.
    Finished,
}

/// One iterative lookup for `target`.
#[derive(Clone, Debug)]
pub struct Lookup {
    target: NodeId,
    cfg: LookupConfig,
    /// Sorted by distance to the target.
    candidates: Vec<Candidate>,
    requests: usize,
}

impl Lookup {
    /// Starts a lookup from `seeds` (typically the routing table's closest).
    pub fn new(target: NodeId, seeds: Vec<Contact>, cfg: LookupConfig) -> Self {
        let mut l = Lookup {
            target,
            cfg,
            candidates: Vec::new(),
            requests: 0,
        };
        l.add(seeds, 0);
        l
    }

    /// The key being looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    fn add(&mut self, contacts: Vec<Contact>, hop: u32) {
        for c in contacts {
            if self.candidates.iter().any(|x| x.contact.id == c.id) {
                continue;
            }
            let d = distance(&c.id, &self.target);
            let pos = self.candidates.partition_point(|x| x.distance < d);
            self.candidates.insert(
                pos,
                Candidate {
                    contact: c,
                    distance: d,
                    state: State::NotContacted,
                    hop,
                },
            );
        }
        // Far candidates beyond a generous horizon will never be asked.
        let horizon = self.cfg.k * 4;
        if self.candidates.len() > horizon {
            let mut keep = 0;
            self.candidates.retain(|c| {
                keep += 1;
                keep <= horizon || !matches!(c.state, State::NotContacted)
            });
        }
    }

    /// Whom to query now.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let k = self.cfg.k;
        let mut in_flight = 0;
        let mut any_waiting = false;
        for c in &self.candidates {
            if let State::Waiting(since) = c.state {
                any_waiting = true;
                if now.saturating_duration_since(since) < self.cfg.slow_after {
                    in_flight += 1;
                }
            }
        }
        // Done when the k closest live candidates have all answered.
        let closest: Vec<&Candidate> = self
            .candidates
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(k)
            .collect();
        if !closest.is_empty() && closest.iter().all(|c| c.state == State::Succeeded) {
            return Poll::Finished;
        }
        let mut to_query = Vec::new();
        let free = self.cfg.alpha.saturating_sub(in_flight);
        let mut seen_live = 0;
        for c in self.candidates.iter_mut() {
            if to_query.len() >= free {
                break;
            }
            if c.state == State::Failed {
                continue;
            }
            seen_live += 1;
            if seen_live > k {
                break;
            }
            if c.state == State::NotContacted {
                c.state = State::Waiting(now);
                to_query.push(c.contact.clone());
            }
        }
        self.requests += to_query.len();
        if to_query.is_empty() && !any_waiting {
            return Poll::Finished;
        }
        Poll::Query(to_query)
    }

    /// `from` answered with `closer` contacts.
    pub fn on_success(&mut self, from: &NodeId, closer: Vec<Contact>) {
        let mut hop = 0;
        if let Some(c) = self.candidates.iter_mut().find(|c| c.contact.id == *from) {
            c.state = State::Succeeded;
            hop = c.hop + 1;
        }
        self.add(closer, hop);
    }

    /// `from` did not answer (timeout, refused, error).
    pub fn on_failure(&mut self, from: &NodeId) {
        if let Some(c) = self.candidates.iter_mut().find(|c| c.contact.id == *from) {
            c.state = State::Failed;
        }
    }

    /// The `n` closest contacts that answered, closest first.
    pub fn closest(&self, n: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Succeeded)
            .take(n)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// The contacts that failed among the `n` closest that were asked
    /// (answered or failed), closest first: those [`Lookup::closest`] would
    /// hold had they answered.
    pub fn failed(&self, n: usize) -> Vec<Contact> {
        self.candidates
            .iter()
            .filter(|c| matches!(c.state, State::Succeeded | State::Failed))
            .take(n)
            .filter(|c| c.state == State::Failed)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// Hops: the deepest level at which an answering node was learned, plus one.
    pub fn rounds(&self) -> u32 {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Succeeded)
            .map(|c| c.hop + 1)
            .max()
            .unwrap_or(0)
    }

    /// Requests sent so far.
    pub fn requests(&self) -> usize {
        self.requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::kbucket::RoutingTable;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn c(id: NodeId) -> Contact {
        Contact { id, addrs: vec![] }
    }

    /// A small synchronous network of routing tables.
    fn network(n: usize, seed: u64) -> (Vec<NodeId>, HashMap<NodeId, RoutingTable>) {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ids: Vec<NodeId> = (0..n).map(|_| NodeId::from_bytes(rng.random())).collect();
        let mut tables: HashMap<NodeId, RoutingTable> = HashMap::new();
        for id in &ids {
            let mut t = RoutingTable::new(*id, 20, now);
            for other in &ids {
                if let crate::dht::kbucket::Insert::Ping(old) = t.insert(c(*other), now) {
                    t.ping_result(&old.id, true, now);
                }
            }
            tables.insert(*id, t);
        }
        (ids, tables)
    }

    fn run(lookup: &mut Lookup, tables: &HashMap<NodeId, RoutingTable>, dead: &[NodeId]) {
        let now = Instant::now();
        loop {
            match lookup.poll(now) {
                Poll::Finished => return,
                Poll::Query(to) => {
                    assert!(!to.is_empty(), "synchronous driver never waits");
                    for peer in to {
                        if dead.contains(&peer.id) {
                            lookup.on_failure(&peer.id);
                        } else {
                            let closer = tables[&peer.id].closest(&lookup.target(), 20);
                            lookup.on_success(&peer.id, closer);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn finds_the_true_closest_nodes() {
        let (ids, tables) = network(300, 5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for _ in 0..20 {
            let from = ids[rng.random_range(0..ids.len())];
            let target = NodeId::from_bytes(rng.random());
            let seeds = tables[&from].closest(&target, 3);
            let mut l = Lookup::new(target, seeds, LookupConfig::default());
            run(&mut l, &tables, &[]);
            let mut truth = ids.clone();
            truth.sort_by_key(|id| distance(id, &target));
            let got: Vec<NodeId> = l.closest(20).into_iter().map(|c| c.id).collect();
            assert_eq!(got, truth[..20].to_vec());
            assert!(l.rounds() >= 1);
        }
    }

    #[test]
    fn dead_nodes_do_not_stop_it() {
        let (ids, tables) = network(200, 7);
        let dead: Vec<NodeId> = ids.iter().step_by(5).copied().collect();
        let target = ids[1];
        let from = ids[2];
        let seeds = tables[&from].closest(&target, 20);
        let mut l = Lookup::new(target, seeds, LookupConfig::default());
        run(&mut l, &tables, &dead);
        assert_eq!(l.closest(1)[0].id, target);
        // The dead it asked are told apart, closest first, among the 20
        // closest asked.
        let failed = l.failed(20);
        assert!(!failed.is_empty());
        assert!(failed.iter().all(|f| dead.contains(&f.id)));
        let answered = l.closest(20);
        let asked = |n: &NodeId| distance(n, &target);
        assert!(failed.windows(2).all(|w| asked(&w[0].id) < asked(&w[1].id)));
        assert!(failed.len() + answered.len() >= 20);
        assert!(answered.iter().all(|a| !dead.contains(&a.id)));
    }

    #[test]
    fn slow_nodes_stop_counting_against_alpha() {
        let now = Instant::now();
        let ids: Vec<NodeId> = (1..=6u8).map(|i| NodeId::from_bytes([i; 32])).collect();
        let mut l = Lookup::new(
            NodeId::from_bytes([0; 32]),
            ids.iter().map(|i| c(*i)).collect(),
            LookupConfig {
                k: 20,
                alpha: 3,
                slow_after: Duration::from_millis(500),
            },
        );
        let Poll::Query(first) = l.poll(now) else {
            panic!()
        };
        assert_eq!(first.len(), 3);
        // Nobody answers; before slow_after nothing new is sent.
        assert_eq!(
            l.poll(now + Duration::from_millis(100)),
            Poll::Query(vec![])
        );
        // After it, three more go out.
        let Poll::Query(more) = l.poll(now + Duration::from_millis(600)) else {
            panic!()
        };
        assert_eq!(more.len(), 3);
        for p in first.iter().chain(&more) {
            l.on_failure(&p.id);
        }
        assert_eq!(l.poll(now + Duration::from_secs(1)), Poll::Finished);
        assert!(l.closest(20).is_empty());
    }
}
