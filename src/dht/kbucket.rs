//! The Kademlia routing table: 256 buckets of at most `k` contacts.
//!
//! Bucket `i` holds contacts whose distance to the local id has `i` leading zero
//! bits. Within a bucket contacts are ordered least-recently seen first. A new
//! contact for a full bucket does not evict anyone outright: the caller is told
//! to ping the least-recently-seen contact; if it answers it moves to the tail
//! and the newcomer is dropped (old contacts that stay up are the best
//! predictors of contacts that will stay up), if not it is replaced.
//!
//! Only contacts whose id was proven by a handshake may be inserted; the table
//! trusts its caller for that. A contact's addresses are the contact's own
//! word: [`RoutingTable::insert`] takes them from a connection with it (the
//! address it was reached at, those its JOIN announced) and replaces what was
//! known; [`RoutingTable::insert_keeping_addrs`] takes a contact seen alive
//! whose addresses are someone else's word (a third party's lookup answer)
//! and never changes those of a contact already known.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::distance;
use crate::proto::NodeId;

/// A node the table knows, with where to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The node's id.
    pub id: NodeId,
    /// Its addresses.
    pub addrs: Vec<SocketAddr>,
    /// Relays it can be reached through.
    pub relays: Vec<SocketAddr>,
}

#[derive(Clone, Debug)]
struct Entry {
    contact: Contact,
    last_seen: Instant,
    /// Requests that failed since it last answered.
    failures: u8,
}

/// Consecutive failed requests after which a contact is dropped: one lost
/// request under load is not death.
pub const MAX_FAILURES: u8 = 3;

#[derive(Clone, Debug)]
struct Bucket {
    /// Least-recently seen first.
    entries: Vec<Entry>,
    /// A newcomer waiting on the ping of `entries[0]`.
    pending: Option<Entry>,
    last_touched: Instant,
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    /// A new contact was added.
    Added,
    /// A known contact was refreshed (moved to most-recently seen).
    Updated,
    /// The bucket is full: ping this least-recently-seen contact and report with
    /// [`RoutingTable::ping_result`].
    Ping(Contact),
    /// The bucket is full and a ping is already pending: the contact was dropped.
    Dropped,
    /// The local id is never inserted.
    IsSelf,
}

/// The routing table.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    local: NodeId,
    k: usize,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table for `local` with buckets of `k`.
    pub fn new(local: NodeId, k: usize, now: Instant) -> Self {
        RoutingTable {
            local,
            k,
            buckets: (0..256)
                .map(|_| Bucket {
                    entries: Vec::new(),
                    pending: None,
                    last_touched: now,
                })
                .collect(),
        }
    }

    /// The local id.
    pub fn local(&self) -> NodeId {
        self.local
    }

    fn index(&self, id: &NodeId) -> Option<usize> {
        let lz = distance(&self.local, id).leading_zeros();
        (lz < 256).then_some(lz as usize)
    }

    /// Inserts or refreshes a contact seen alive at `now`, with addresses
    /// learned from a connection with the contact itself: they replace the
    /// known ones (unless there are none).
    pub fn insert(&mut self, contact: Contact, now: Instant) -> Insert {
        self.upsert(contact, now, true)
    }

    /// Inserts or refreshes a contact seen alive at `now` whose addresses
    /// are not its own word: a known contact keeps its addresses (only its
    /// liveness is refreshed), an unknown one is added with these.
    pub fn insert_keeping_addrs(&mut self, contact: Contact, now: Instant) -> Insert {
        self.upsert(contact, now, false)
    }

    fn upsert(&mut self, contact: Contact, now: Instant, replace_addrs: bool) -> Insert {
        let Some(i) = self.index(&contact.id) else {
            return Insert::IsSelf;
        };
        let k = self.k;
        let b = &mut self.buckets[i];
        b.last_touched = now;
        if let Some(pos) = b.entries.iter().position(|e| e.contact.id == contact.id) {
            let mut e = b.entries.remove(pos);
            e.last_seen = now;
            e.failures = 0;
            if replace_addrs && !(contact.addrs.is_empty() && contact.relays.is_empty()) {
                e.contact.addrs = contact.addrs;
                e.contact.relays = contact.relays;
            }
            b.entries.push(e);
            return Insert::Updated;
        }
        let entry = Entry {
            contact,
            last_seen: now,
            failures: 0,
        };
        if b.entries.len() < k {
            b.entries.push(entry);
            return Insert::Added;
        }
        if b.pending.is_some() {
            return Insert::Dropped;
        }
        b.pending = Some(entry);
        Insert::Ping(b.entries[0].contact.clone())
    }

    /// The result of pinging a least-recently-seen contact after
    /// [`Insert::Ping`]: alive keeps it (and drops the newcomer), dead replaces it.
    pub fn ping_result(&mut self, id: &NodeId, alive: bool, now: Instant) {
        let Some(i) = self.index(id) else { return };
        let b = &mut self.buckets[i];
        let pending = b.pending.take();
        let Some(pos) = b.entries.iter().position(|e| e.contact.id == *id) else {
            // Already gone: the newcomer takes a free place, if any.
            if let Some(p) = pending {
                if b.entries.len() < self.k {
                    b.entries.push(p);
                }
            }
            return;
        };
        if alive {
            let mut e = b.entries.remove(pos);
            e.last_seen = now;
            b.entries.push(e);
        } else {
            b.entries.remove(pos);
            if let Some(p) = pending {
                b.entries.push(p);
            }
        }
    }

    /// A request to `id` failed; after [`MAX_FAILURES`] in a row it is removed
    /// (and a pending newcomer takes its place). Returns whether it was removed.
    pub fn record_failure(&mut self, id: &NodeId) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        let Some(e) = self.buckets[i]
            .entries
            .iter_mut()
            .find(|e| e.contact.id == *id)
        else {
            return false;
        };
        e.failures = e.failures.saturating_add(1);
        if e.failures >= MAX_FAILURES {
            return self.remove(id);
        }
        false
    }

    /// Removes a contact (it left, or failed to answer too often).
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        let b = &mut self.buckets[i];
        let before = b.entries.len();
        b.entries.retain(|e| e.contact.id != *id);
        let removed = b.entries.len() < before;
        if removed {
            if let Some(p) = b.pending.take() {
                b.entries.push(p);
            }
        }
        removed
    }

    /// Whether `id` is in the table.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.index(id)
            .is_some_and(|i| self.buckets[i].entries.iter().any(|e| e.contact.id == *id))
    }

    /// The contact `id`, if it is in the table.
    pub fn get(&self, id: &NodeId) -> Option<&Contact> {
        let i = self.index(id)?;
        self.buckets[i]
            .entries
            .iter()
            .find(|e| e.contact.id == *id)
            .map(|e| &e.contact)
    }

    /// The `n` known contacts closest to `target`, closest first.
    pub fn closest(&self, target: &NodeId, n: usize) -> Vec<Contact> {
        let mut all: Vec<&Entry> = self.buckets.iter().flat_map(|b| &b.entries).collect();
        all.sort_by_key(|e| distance(&e.contact.id, target));
        all.into_iter().take(n).map(|e| e.contact.clone()).collect()
    }

    /// Whether this node is among the `n` closest to `target` of itself and
    /// the table (always, while the table holds fewer than `n`).
    pub fn local_among_closest(&self, target: &NodeId, n: usize) -> bool {
        let closer = self
            .buckets
            .iter()
            .flat_map(|b| &b.entries)
            .filter(|e| distance(&e.contact.id, target) < distance(&self.local, target))
            .count();
        closer < n
    }

    /// Every contact.
    pub fn contacts(&self) -> Vec<Contact> {
        self.buckets
            .iter()
            .flat_map(|b| &b.entries)
            .map(|e| e.contact.clone())
            .collect()
    }

    /// Number of contacts.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets (up to the farthest non-empty one) untouched for `interval`:
    /// each deserves a lookup of a random id in its range.
    pub fn stale_buckets(&self, now: Instant, interval: Duration) -> Vec<usize> {
        let last_used = self
            .buckets
            .iter()
            .rposition(|b| !b.entries.is_empty())
            .unwrap_or(0);
        (0..=last_used)
            .filter(|&i| now.saturating_duration_since(self.buckets[i].last_touched) >= interval)
            .collect()
    }

    /// Marks bucket `i` as refreshed.
    pub fn touch(&mut self, i: usize, now: Instant) {
        if let Some(b) = self.buckets.get_mut(i) {
            b.last_touched = now;
        }
    }

    /// A random id that falls in bucket `i`.
    pub fn random_id_in_bucket(&self, i: usize, rng: &mut impl rand::Rng) -> NodeId {
        let mut d = [0u8; 32];
        rng.fill(&mut d[..]);
        // Exactly i leading zeros, then a one.
        let i = i.min(255);
        for bit in 0..i {
            d[bit / 8] &= !(0x80 >> (bit % 8));
        }
        d[i / 8] |= 0x80 >> (i % 8);
        let local = self.local.as_bytes();
        let mut out = [0u8; 32];
        for j in 0..32 {
            out[j] = local[j] ^ d[j];
        }
        NodeId::from_bytes(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn contact(id: NodeId) -> Contact {
        Contact {
            id,
            addrs: vec![],
            relays: vec![],
        }
    }

    #[test]
    fn local_among_closest_counts_the_contacts_closer_than_itself() {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let local = NodeId::from_bytes(rng.random());
        let mut t = RoutingTable::new(local, 20, now);
        let target = NodeId::from_bytes(rng.random());
        for _ in 0..300 {
            t.insert(contact(NodeId::from_bytes(rng.random())), now);
        }
        let closer = t
            .contacts()
            .iter()
            .filter(|c| distance(&c.id, &target) < distance(&local, &target))
            .count();
        assert!(closer > 0, "the seed gives a table with closer contacts");
        assert!(!t.local_among_closest(&target, closer));
        assert!(t.local_among_closest(&target, closer + 1));
        // Its own id is always closest to itself.
        assert!(t.local_among_closest(&local, 1));
    }

    #[test]
    fn full_bucket_pings_the_oldest_before_replacing() {
        let now = Instant::now();
        let local = NodeId::from_bytes([0; 32]);
        let mut t = RoutingTable::new(local, 2, now);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // Three ids in bucket 0 (top bit set).
        let ids: Vec<NodeId> = (0..3).map(|_| t.random_id_in_bucket(0, &mut rng)).collect();
        assert_eq!(t.insert(contact(ids[0]), now), Insert::Added);
        assert_eq!(t.insert(contact(ids[1]), now), Insert::Added);
        assert_eq!(
            t.insert(contact(ids[2]), now),
            Insert::Ping(contact(ids[0]))
        );
        assert_eq!(
            t.insert(contact(t.random_id_in_bucket(0, &mut rng)), now),
            Insert::Dropped
        );
        // The oldest answers: it stays, the newcomer is dropped.
        t.ping_result(&ids[0], true, now);
        assert!(t.contains(&ids[0]) && !t.contains(&ids[2]));
        // Next time the oldest is ids[1]; it does not answer: replaced.
        assert_eq!(
            t.insert(contact(ids[2]), now),
            Insert::Ping(contact(ids[1]))
        );
        t.ping_result(&ids[1], false, now);
        assert!(t.contains(&ids[2]) && !t.contains(&ids[1]));
        assert_eq!(t.insert(contact(local), now), Insert::IsSelf);
    }

    #[test]
    fn contacts_are_dropped_after_repeated_failures_only() {
        let now = Instant::now();
        let mut t = RoutingTable::new(NodeId::from_bytes([0; 32]), 20, now);
        let id = NodeId::from_bytes([9; 32]);
        t.insert(contact(id), now);
        assert!(!t.record_failure(&id));
        assert!(!t.record_failure(&id));
        t.insert(contact(id), now); // it answered: the count starts over
        assert!(!t.record_failure(&id));
        assert!(!t.record_failure(&id));
        assert!(t.record_failure(&id));
        assert!(!t.contains(&id));
    }

    #[test]
    fn only_the_contact_itself_changes_its_addresses() {
        let now = Instant::now();
        let mut t = RoutingTable::new(NodeId::from_bytes([0; 32]), 20, now);
        let id = NodeId::from_bytes([7; 32]);
        let own: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let told: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let with = |a: SocketAddr| Contact {
            id,
            addrs: vec![a],
            relays: vec![],
        };
        // Unknown: a third party's word is all there is.
        assert_eq!(t.insert_keeping_addrs(with(told), now), Insert::Added);
        assert_eq!(t.get(&id).unwrap().addrs, vec![told]);
        // The contact's own connection corrects it ...
        assert_eq!(t.insert(with(own), now), Insert::Updated);
        assert_eq!(t.get(&id).unwrap().addrs, vec![own]);
        // ... and a third party cannot move it again, though the contact is
        // still seen alive.
        t.record_failure(&id);
        t.record_failure(&id);
        let later = now + Duration::from_secs(1);
        assert_eq!(t.insert_keeping_addrs(with(told), later), Insert::Updated);
        assert_eq!(t.get(&id).unwrap().addrs, vec![own]);
        assert!(!t.record_failure(&id), "the failure count started over");
    }

    #[test]
    fn closest_is_sorted_by_xor_distance() {
        let now = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let local = NodeId::from_bytes(rng.random());
        let mut t = RoutingTable::new(local, 20, now);
        let ids: Vec<NodeId> = (0..500).map(|_| NodeId::from_bytes(rng.random())).collect();
        for id in &ids {
            t.insert(contact(*id), now);
        }
        let target = NodeId::from_bytes(rng.random());
        let got = t.closest(&target, 10);
        assert_eq!(got.len(), 10);
        for w in got.windows(2) {
            assert!(distance(&w[0].id, &target) <= distance(&w[1].id, &target));
        }
        // Everything in the table that is closer than the 10th is in the answer.
        let tenth = distance(&got[9].id, &target);
        for c in t.contacts() {
            if distance(&c.id, &target) < tenth {
                assert!(got.iter().any(|g| g.id == c.id));
            }
        }
    }

    #[test]
    fn random_ids_land_in_their_bucket() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let local = NodeId::from_bytes(rng.random());
        let t = RoutingTable::new(local, 20, Instant::now());
        for i in [0, 1, 7, 8, 100, 255] {
            let id = t.random_id_in_bucket(i, &mut rng);
            assert_eq!(distance(&local, &id).leading_zeros() as usize, i);
        }
    }

    #[test]
    fn stale_buckets_are_reported() {
        let now = Instant::now();
        let local = NodeId::from_bytes([0; 32]);
        let mut t = RoutingTable::new(local, 20, now);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        t.insert(contact(t.random_id_in_bucket(3, &mut rng)), now);
        let later = now + Duration::from_secs(100);
        assert_eq!(
            t.stale_buckets(later, Duration::from_secs(50)),
            vec![0, 1, 2, 3]
        );
        t.touch(1, later);
        assert_eq!(
            t.stale_buckets(later, Duration::from_secs(50)),
            vec![0, 2, 3]
        );
    }
}
