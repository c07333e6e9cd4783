//! An iterative Kademlia lookup as a state machine: no sockets, no clock of its
//! own. The driver asks [`Lookup::poll`] whom to query, sends the requests, and
//! reports each answer with [`Lookup::on_success`] or [`Lookup::on_failure`].
//!
//! - The lookup runs on `paths` disjoint paths (S/Kademlia): the seeds are
//!   dealt out among them (and, while a path has none, the contacts the
//!   first answers name), and a node asked by one path is not asked by
//!   another (unless it failed there). A liar poisons only the path that
//!   asked it: only that path hears its inventions, and the other paths
//!   converge on the honest nodes.
//! - On each path at most `alpha` requests count as in flight; one outstanding
//!   for longer than `slow_after` stops counting, so a slow node cannot stall
//!   the path (its answer is still used if it comes).
//! - A path has converged when the `k` closest nodes it knows of that did not
//!   fail have all answered; it is finished then, or when nobody is left to
//!   ask. The lookup is finished when every path is; [`Lookup::converged`]
//!   says how many paths got there, for a caller that may conclude early on
//!   answers it can check.
//! - A node is no longer believed in a lookup once [`DISTRUST_AFTER`] more
//!   of the contacts it alone named failed than of those it named answered:
//!   the contacts only distrusted nodes named are dropped (asked or not), and
//!   what it names from then on is ignored. A liar's dead inventions then
//!   cost about one request timeout, not one each; an honest node under load
//!   keeps its standing through the contacts of its that answer, and a
//!   contact others named too is never dropped.
//! - Each contact records the hop at which it was learned; [`Lookup::rounds`] is
//!   the deepest hop among the nodes that answered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::kbucket::Contact;
use super::{distance, Distance};
use crate::proto::NodeId;

/// Failed referrals, beyond those that answered, after which a node's word
/// is no longer taken in a lookup.
pub const DISTRUST_AFTER: u32 = 3;
/// Referrers remembered per contact.
const MAX_NAMED_BY: usize = 4;

/// Lookup parameters.
#[derive(Clone, Copy, Debug)]
pub struct LookupConfig {
    /// Closest nodes to converge on (on each path).
    pub k: usize,
    /// Requests in flight on each path.
    pub alpha: usize,
    /// After this long an outstanding request no longer counts against `alpha`.
    pub slow_after: Duration,
    /// Disjoint paths (at least one; provider lookups use [`PATHS`](super::PATHS)).
    pub paths: usize,
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig {
            k: super::K,
            alpha: super::ALPHA,
            slow_after: Duration::from_secs(1),
            paths: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotContacted,
    Waiting(Instant),
    Succeeded,
    Failed,
    /// Named only by a node no longer believed: not asked, not waited for
    /// (an answer that still comes is used). Another node naming it revives it.
    Dropped,
    /// Asked by another path: not this path's to ask or wait for.
    Taken,
}

impl State {
    /// Counts towards a path's k closest.
    fn live(self) -> bool {
        !matches!(self, State::Failed | State::Dropped | State::Taken)
    }

    fn asked(self) -> bool {
        matches!(self, State::Waiting(_) | State::Succeeded)
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    contact: Contact,
    distance: Distance,
    state: State,
    hop: u32,
    /// Who named it (none for a seed), first first.
    named_by: Vec<NodeId>,
}

/// One of the disjoint paths: its candidates, sorted by distance.
#[derive(Clone, Debug, Default)]
struct Path {
    candidates: Vec<Candidate>,
}

impl Path {
    fn find(&self, id: &NodeId) -> Option<usize> {
        self.candidates.iter().position(|c| c.contact.id == *id)
    }

    /// The `k` closest live candidates.
    fn closest_live(&self, k: usize) -> impl Iterator<Item = &Candidate> {
        self.candidates.iter().filter(|c| c.state.live()).take(k)
    }

    fn converged(&self, k: usize) -> bool {
        let mut any = false;
        for c in self.closest_live(k) {
            if c.state != State::Succeeded {
                return false;
            }
            any = true;
        }
        any
    }

    fn waiting(&self) -> impl Iterator<Item = Instant> + '_ {
        self.candidates.iter().filter_map(|c| match c.state {
            State::Waiting(since) => Some(since),
            _ => None,
        })
    }

    fn finished(&self, k: usize) -> bool {
        self.converged(k)
            || (self.waiting().next().is_none()
                && !self.closest_live(k).any(|c| c.state == State::NotContacted))
    }

    /// Marks and returns the candidates to ask now.
    fn next(&mut self, cfg: &LookupConfig, now: Instant) -> Vec<Contact> {
        if self.finished(cfg.k) {
            return Vec::new();
        }
        let in_flight = self
            .waiting()
            .filter(|since| now.saturating_duration_since(*since) < cfg.slow_after)
            .count();
        let free = cfg.alpha.saturating_sub(in_flight);
        let mut out = Vec::new();
        for c in self
            .candidates
            .iter_mut()
            .filter(|c| c.state.live())
            .take(cfg.k)
        {
            if out.len() >= free {
                break;
            }
            if c.state == State::NotContacted {
                c.state = State::Waiting(now);
                out.push(c.contact.clone());
            }
        }
        out
    }

    fn insert(&mut self, c: Candidate, horizon: usize) {
        let pos = self.candidates.partition_point(|x| x.distance < c.distance);
        self.candidates.insert(pos, c);
        // Far candidates beyond a generous horizon will never be asked.
        if self.candidates.len() > horizon {
            let mut keep = 0;
            self.candidates.retain(|c| {
                keep += 1;
                keep <= horizon
                    || !matches!(c.state, State::NotContacted | State::Dropped | State::Taken)
            });
        }
    }
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
    paths: Vec<Path>,
    /// How each referrer's word held up.
    standing: HashMap<NodeId, Standing>,
    requests: usize,
}

/// How a referrer's word held up in one lookup.
#[derive(Clone, Copy, Debug, Default)]
struct Standing {
    /// Contacts it alone named that failed.
    misled: u32,
    /// Contacts it named that answered.
    vouched: u32,
}

impl Standing {
    fn distrusted(&self) -> bool {
        self.misled >= DISTRUST_AFTER + self.vouched
    }
}

impl Lookup {
    /// Starts a lookup from `seeds` (typically the routing table's closest),
    /// dealt out among the paths closest first.
    pub fn new(target: NodeId, mut seeds: Vec<Contact>, cfg: LookupConfig) -> Self {
        let mut l = Lookup {
            target,
            cfg,
            paths: vec![Path::default(); cfg.paths.max(1)],
            standing: HashMap::new(),
            requests: 0,
        };
        seeds.sort_by_key(|c| distance(&c.id, &target));
        seeds.dedup_by_key(|c| c.id);
        let n = l.paths.len();
        for (i, seed) in seeds.into_iter().enumerate() {
            l.add(i % n, vec![seed], 0, None);
        }
        l
    }

    /// The key being looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Whether a path other than `path` asked `id` (and it did not fail).
    fn asked_elsewhere(&self, path: usize, id: &NodeId) -> bool {
        self.paths
            .iter()
            .enumerate()
            .any(|(i, p)| i != path && p.find(id).is_some_and(|j| p.candidates[j].state.asked()))
    }

    /// Sets `id` to `to` in every path but `path` where it is in one of `from`.
    fn mark_elsewhere(&mut self, path: usize, id: &NodeId, from: &[State], to: State) {
        for (i, p) in self.paths.iter_mut().enumerate() {
            if i == path {
                continue;
            }
            if let Some(j) = p.find(id) {
                if from.contains(&p.candidates[j].state) {
                    p.candidates[j].state = to;
                }
            }
        }
    }

    fn distrusted(&self, id: &NodeId) -> bool {
        self.standing.get(id).is_some_and(Standing::distrusted)
    }

    fn add(&mut self, path: usize, contacts: Vec<Contact>, hop: u32, via: Option<NodeId>) {
        let horizon = self.cfg.k * 4;
        for c in contacts {
            if let Some(j) = self.paths[path].find(&c.id) {
                let known = &mut self.paths[path].candidates[j];
                if let Some(v) = via {
                    if !known.named_by.contains(&v) && known.named_by.len() < MAX_NAMED_BY {
                        known.named_by.push(v);
                    }
                    // Named by someone still believed: not only a liar's word.
                    if known.state == State::Dropped {
                        known.state = State::NotContacted;
                    }
                }
                continue;
            }
            let state = if self.asked_elsewhere(path, &c.id) {
                State::Taken
            } else {
                State::NotContacted
            };
            let candidate = Candidate {
                distance: distance(&c.id, &self.target),
                contact: c,
                state,
                hop,
                named_by: via.into_iter().collect(),
            };
            self.paths[path].insert(candidate, horizon);
        }
    }

    /// Whom to query now.
    pub fn poll(&mut self, now: Instant) -> Poll {
        let cfg = self.cfg;
        if self.paths.iter().all(|p| p.finished(cfg.k)) {
            return Poll::Finished;
        }
        let mut to_query = Vec::new();
        for i in 0..self.paths.len() {
            for c in self.paths[i].next(&cfg, now) {
                let free = [State::NotContacted, State::Dropped];
                self.mark_elsewhere(i, &c.id, &free, State::Taken);
                to_query.push(c);
            }
        }
        self.requests += to_query.len();
        Poll::Query(to_query)
    }

    /// Where `from` was asked: the path and index of its candidate that is
    /// waiting (or was dropped while waiting), else any not failed.
    fn asked(&self, from: &NodeId) -> Option<(usize, usize)> {
        let mut fallback = None;
        for (i, p) in self.paths.iter().enumerate() {
            if let Some(j) = p.find(from) {
                match p.candidates[j].state {
                    State::Waiting(_) | State::Dropped => return Some((i, j)),
                    State::Failed | State::Taken => {}
                    State::NotContacted | State::Succeeded => {
                        fallback = fallback.or(Some((i, j)));
                    }
                }
            }
        }
        fallback
    }

    /// `from` answered with `closer` contacts.
    pub fn on_success(&mut self, from: &NodeId, closer: Vec<Contact>) {
        let Some((i, j)) = self.asked(from) else {
            return;
        };
        let c = &mut self.paths[i].candidates[j];
        c.state = State::Succeeded;
        let hop = c.hop + 1;
        for r in c.named_by.clone() {
            self.standing.entry(r).or_default().vouched += 1;
        }
        if self.distrusted(from) {
            return;
        }
        if self.paths.iter().any(|p| p.candidates.is_empty()) {
            self.deal(i, closer, hop, *from);
        } else {
            self.add(i, closer, hop, Some(*from));
        }
    }

    /// With fewer seeds than paths, an answer's new contacts are dealt out
    /// among the paths like seeds, starting after the answering path `i`.
    fn deal(&mut self, i: usize, mut closer: Vec<Contact>, hop: u32, from: NodeId) {
        closer.sort_by_key(|c| distance(&c.id, &self.target));
        closer.retain(|c| !self.paths.iter().any(|p| p.find(&c.id).is_some()));
        let n = self.paths.len();
        for (j, c) in closer.into_iter().enumerate() {
            self.add((i + 1 + j) % n, vec![c], hop, Some(from));
        }
    }

    /// `from` did not answer (timeout, refused, error).
    pub fn on_failure(&mut self, from: &NodeId) {
        let Some((i, j)) = self.asked(from) else {
            return;
        };
        let c = &mut self.paths[i].candidates[j];
        let was_waiting = matches!(c.state, State::Waiting(_));
        if c.state != State::Dropped {
            c.state = State::Failed;
        }
        // Only a contact one node alone named is that node's fault.
        let sole = match c.named_by.as_slice() {
            [only] if was_waiting => Some(*only),
            _ => None,
        };
        // Another path may know a better address for it.
        self.mark_elsewhere(i, from, &[State::Taken], State::NotContacted);
        let Some(referrer) = sole else {
            return;
        };
        self.standing.entry(referrer).or_default().misled += 1;
        if self.distrusted(&referrer) {
            self.drop_distrusted();
        }
    }

    /// Drops every candidate not yet answered that only distrusted nodes
    /// named.
    fn drop_distrusted(&mut self) {
        let standing = &self.standing;
        let distrusted = |id: &NodeId| standing.get(id).is_some_and(Standing::distrusted);
        for c in self.paths.iter_mut().flat_map(|p| p.candidates.iter_mut()) {
            if !c.named_by.is_empty()
                && c.named_by.iter().all(distrusted)
                && matches!(c.state, State::NotContacted | State::Waiting(_))
            {
                c.state = State::Dropped;
            }
        }
    }

    fn succeeded(&self) -> impl Iterator<Item = &Candidate> {
        self.paths
            .iter()
            .flat_map(|p| &p.candidates)
            .filter(|c| c.state == State::Succeeded)
    }

    /// The `n` closest contacts that answered, closest first, over all paths.
    pub fn closest(&self, n: usize) -> Vec<Contact> {
        let mut all: Vec<&Candidate> = self.succeeded().collect();
        all.sort_by_key(|c| c.distance);
        all.dedup_by_key(|c| c.contact.id);
        all.into_iter().take(n).map(|c| c.contact.clone()).collect()
    }

    /// The contacts that failed among the `n` closest that were asked
    /// (answered or failed), closest first, over all paths: those
    /// [`Lookup::closest`] would hold had they answered.
    pub fn failed(&self, n: usize) -> Vec<Contact> {
        let mut asked: Vec<&Candidate> = self
            .paths
            .iter()
            .flat_map(|p| &p.candidates)
            .filter(|c| matches!(c.state, State::Succeeded | State::Failed))
            .collect();
        asked.sort_by_key(|c| (c.distance, c.state != State::Succeeded));
        asked.dedup_by_key(|c| c.contact.id);
        asked
            .into_iter()
            .take(n)
            .filter(|c| c.state == State::Failed)
            .map(|c| c.contact.clone())
            .collect()
    }

    /// Paths that converged: their `k` closest live nodes all answered.
    pub fn converged(&self) -> usize {
        self.paths
            .iter()
            .filter(|p| p.converged(self.cfg.k))
            .count()
    }

    /// Hops: the deepest level at which an answering node was learned, plus one.
    pub fn rounds(&self) -> u32 {
        self.succeeded().map(|c| c.hop + 1).max().unwrap_or(0)
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
    use crate::dht::PATHS;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn c(id: NodeId) -> Contact {
        Contact {
            id,
            addrs: vec![],
            relays: vec![],
        }
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
        for cfg in [LookupConfig::default(), paths()] {
            for _ in 0..10 {
                find_closest(&ids, &tables, cfg, &mut rng);
            }
        }
    }

    fn find_closest(
        ids: &[NodeId],
        tables: &HashMap<NodeId, RoutingTable>,
        cfg: LookupConfig,
        rng: &mut impl Rng,
    ) {
        let from = ids[rng.random_range(0..ids.len())];
        let target = NodeId::from_bytes(rng.random());
        let seeds = tables[&from].closest(&target, 3);
        let mut l = Lookup::new(target, seeds, cfg);
        run(&mut l, tables, &[]);
        let mut truth = ids.to_vec();
        truth.sort_by_key(|id| distance(id, &target));
        let got: Vec<NodeId> = l.closest(20).into_iter().map(|c| c.id).collect();
        assert_eq!(got, truth[..20].to_vec(), "{cfg:?}");
        assert!(l.rounds() >= 1);
    }

    #[test]
    fn dead_nodes_do_not_stop_it() {
        let (ids, tables) = network(200, 7);
        let dead: Vec<NodeId> = ids.iter().step_by(5).copied().collect();
        let target = ids[1];
        let from = ids[2];
        for cfg in [LookupConfig::default(), paths()] {
            let seeds = tables[&from].closest(&target, 20);
            let mut l = Lookup::new(target, seeds, cfg);
            run(&mut l, &tables, &dead);
            assert_eq!(l.closest(1)[0].id, target, "{cfg:?}");
            // The dead it asked are told apart, closest first, among the 20
            // closest asked.
            let failed = l.failed(20);
            assert!(!failed.is_empty(), "{cfg:?}");
            assert!(failed.iter().all(|f| dead.contains(&f.id)));
            let asked = |n: &NodeId| distance(n, &target);
            assert!(failed.windows(2).all(|w| asked(&w[0].id) < asked(&w[1].id)));
            assert!(l.closest(20).iter().all(|a| !dead.contains(&a.id)));
        }
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
                paths: 1,
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

    fn paths() -> LookupConfig {
        LookupConfig {
            paths: PATHS,
            ..LookupConfig::default()
        }
    }

    /// Ids a liar invents: next to the target, closer than any real node.
    fn inventions(target: &NodeId, n: usize, rng: &mut impl Rng) -> Vec<Contact> {
        (0..n)
            .map(|_| {
                let mut id = *target.as_bytes();
                rng.fill(&mut id[16..]);
                c(NodeId::from_bytes(id))
            })
            .collect()
    }

    #[test]
    fn a_liar_poisons_only_its_own_path() {
        let (ids, tables) = network(300, 8);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let target = NodeId::from_bytes(rng.random());
        let liar = inventions(&target, 1, &mut rng)[0].clone();
        let from = ids[3];
        let mut seeds = tables[&from].closest(&target, 20);
        seeds.push(liar.clone());
        let mut l = Lookup::new(target, seeds, paths());
        let now = Instant::now();
        let mut invented = Vec::new();
        // The liar answers with inventions that never answer; every honest
        // node answers at once.
        loop {
            let Poll::Query(to) = l.poll(now) else {
                panic!("the liar's path cannot finish: its inventions never answer")
            };
            if to.is_empty() {
                break;
            }
            for peer in to {
                if peer.id == liar.id {
                    let lies = inventions(&target, 20, &mut rng);
                    invented.extend(lies.iter().map(|x| x.id));
                    l.on_success(&peer.id, lies);
                } else if !invented.contains(&peer.id) {
                    let closer = tables[&peer.id].closest(&target, 20);
                    l.on_success(&peer.id, closer);
                }
            }
        }
        assert_eq!(l.converged(), PATHS - 1, "the honest paths converged");
        let mut truth = ids.clone();
        truth.sort_by_key(|id| distance(id, &target));
        let got: Vec<NodeId> = l.closest(21).into_iter().map(|c| c.id).collect();
        let honest: Vec<NodeId> = got.into_iter().filter(|id| *id != liar.id).collect();
        assert_eq!(honest, truth[..20].to_vec());
    }

    #[test]
    fn no_node_is_asked_by_two_paths() {
        let (ids, tables) = network(300, 10);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..20 {
            let target = NodeId::from_bytes(rng.random());
            let from = ids[rng.random_range(0..ids.len())];
            let seeds = tables[&from].closest(&target, 20);
            let mut l = Lookup::new(target, seeds, paths());
            let mut asked = std::collections::HashSet::new();
            while let Poll::Query(to) = l.poll(Instant::now()) {
                for peer in to {
                    assert!(asked.insert(peer.id), "asked twice");
                    let closer = tables[&peer.id].closest(&target, 20);
                    l.on_success(&peer.id, closer);
                }
            }
            assert_eq!(l.converged(), PATHS);
        }
    }

    #[test]
    fn a_node_whose_referrals_fail_is_no_longer_believed() {
        let now = Instant::now();
        let target = NodeId::from_bytes([0; 32]);
        let liar = NodeId::from_bytes([0x80; 32]);
        let mut l = Lookup::new(target, vec![c(liar)], LookupConfig::default());
        assert_eq!(l.poll(now), Poll::Query(vec![c(liar)]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let lies = inventions(&target, 20, &mut rng);
        l.on_success(&liar, lies);
        let Poll::Query(first) = l.poll(now) else {
            panic!()
        };
        assert_eq!(first.len(), 3);
        for p in &first {
            l.on_failure(&p.id);
        }
        // Three dead referrals: the other seventeen are not asked, and the
        // lookup is over without waiting for them.
        assert_eq!(l.poll(now), Poll::Finished);
        assert_eq!(l.requests(), 4);
        // What it names from now on is ignored.
        l.on_success(&liar, inventions(&target, 5, &mut rng));
        assert_eq!(l.poll(now), Poll::Finished);
    }

    #[test]
    fn one_seed_is_enough_for_every_path() {
        let (ids, tables) = network(300, 13);
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let target = NodeId::from_bytes(rng.random());
        let seed = tables[&ids[0]].closest(&target, 1);
        let mut l = Lookup::new(target, seed, paths());
        run(&mut l, &tables, &[]);
        assert_eq!(l.converged(), PATHS);
        let mut truth = ids.clone();
        truth.sort_by_key(|id| distance(id, &target));
        let got: Vec<NodeId> = l.closest(20).into_iter().map(|c| c.id).collect();
        assert_eq!(got, truth[..20].to_vec());
    }

    #[test]
    fn a_contact_another_node_named_too_is_not_dropped() {
        let now = Instant::now();
        let target = NodeId::from_bytes([0; 32]);
        let (liar, honest) = (
            NodeId::from_bytes([0x80; 32]),
            NodeId::from_bytes([0x81; 32]),
        );
        let mut l = Lookup::new(target, vec![c(liar), c(honest)], LookupConfig::default());
        let Poll::Query(first) = l.poll(now) else {
            panic!()
        };
        assert_eq!(first.len(), 2);
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let lies = inventions(&target, 10, &mut rng);
        // A real contact, farther than the inventions, that both name.
        let real = c(NodeId::from_bytes([0x40; 32]));
        let mut from_liar = lies.clone();
        from_liar.push(real.clone());
        l.on_success(&liar, from_liar);
        l.on_success(&honest, vec![real.clone()]);
        let Poll::Query(asked) = l.poll(now) else {
            panic!()
        };
        for p in &asked {
            l.on_failure(&p.id);
        }
        // The liar is distrusted: its inventions go, the shared contact stays.
        let Poll::Query(next) = l.poll(now) else {
            panic!()
        };
        assert_eq!(next, vec![real.clone()]);
        l.on_success(&real.id, vec![]);
        assert_eq!(l.poll(now), Poll::Finished);
    }

    #[test]
    fn a_node_whose_contacts_mostly_answer_keeps_its_standing() {
        let now = Instant::now();
        let target = NodeId::from_bytes([0; 32]);
        let busy = NodeId::from_bytes([0x80; 32]);
        let mut l = Lookup::new(target, vec![c(busy)], LookupConfig::default());
        l.poll(now);
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        l.on_success(&busy, inventions(&target, 12, &mut rng));
        // Of its first nine, one in three times out (a loaded network).
        let mut asked = 0;
        while asked < 9 {
            let Poll::Query(to) = l.poll(now) else {
                panic!("finished after {asked}")
            };
            for p in to {
                if asked % 3 == 2 {
                    l.on_failure(&p.id);
                } else {
                    l.on_success(&p.id, vec![]);
                }
                asked += 1;
            }
        }
        // Three failures against six answers: still believed, so the rest
        // are asked too.
        while let Poll::Query(to) = l.poll(now) {
            for p in to {
                l.on_success(&p.id, vec![]);
            }
        }
        assert_eq!(l.requests(), 1 + 12);
    }
}
