//! Provider records: which nodes said they hold which file, until when.
//!
//! Identities are free, address blocks are not, so records are counted by
//! the source prefix of the connection each ADD_PROVIDER came on (an IPv4
//! /24, an IPv6 /48: see [`Prefix`]):
//!
//! - a key keeps at most [`MAX_PROVIDERS_PER_KEY`] records, and at most
//!   [`MAX_PER_PREFIX`] from one prefix: a newcomer from a prefix at its
//!   share replaces that prefix's least recently refreshed record of the key,
//!   so twenty identities from one block cannot push out the others;
//! - a full key evicts from its most represented prefix, least recently
//!   refreshed first;
//! - the store keeps at most [`MAX_RECORDS`] in all, and a full store evicts
//!   likewise from the most represented prefix over all keys, instead of
//!   refusing records until the junk expires.
//!
//! Announcing again refreshes a record (and moves it to its new prefix).
//! Time comes in as an argument; nothing here reads a clock.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use crate::proto::wire::PeerRecord;
use crate::proto::NodeId;

/// Providers kept per key.
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Providers one source prefix may have in one key.
pub const MAX_PER_PREFIX: usize = 5;
/// Records kept in all, over every key.
pub const MAX_RECORDS: usize = 100_000;

/// The address block a source is counted by: an IPv4 address's /24 (also
/// when it arrives IPv4-mapped), an IPv6 address's /48 (a site's usual
/// allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(IpAddr);

impl Prefix {
    /// The prefix `ip` belongs to.
    pub fn of(ip: IpAddr) -> Prefix {
        Prefix(match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
        })
    }
}

#[derive(Clone, Debug)]
struct Record {
    peer: PeerRecord,
    prefix: Prefix,
    expires: Instant,
    /// Refresh order: higher is more recent.
    seq: u64,
}

/// The records a node keeps for others.
#[derive(Debug, Default)]
pub struct ProviderStore {
    records: HashMap<NodeId, Vec<Record>>,
    /// Every record by source prefix, least recently refreshed first:
    /// (seq, key, provider).
    by_prefix: HashMap<Prefix, BTreeSet<(u64, NodeId, NodeId)>>,
    /// Prefixes by how many records they hold: (count, prefix).
    sizes: BTreeSet<(usize, Prefix)>,
    total: usize,
    seq: u64,
}

impl ProviderStore {
    /// Records that `provider`, announcing from `source`, holds `key` until
    /// `expires`. Never refused: when a bound is reached an older record,
    /// from the most represented prefix, makes room.
    pub fn add(&mut self, key: NodeId, provider: PeerRecord, source: IpAddr, expires: Instant) {
        let prefix = Prefix::of(source);
        self.remove(&key, &provider.id);
        if let Some(victim) = self.key_victim(&key, prefix) {
            self.remove(&key, &victim);
        }
        if self.total >= MAX_RECORDS {
            self.evict_global(prefix);
        }
        self.seq += 1;
        let record = Record {
            peer: provider,
            prefix,
            expires,
            seq: self.seq,
        };
        self.index(&key, &record);
        self.records.entry(key).or_default().push(record);
    }

    /// The record of `key` to drop so a newcomer from `prefix` fits: the
    /// oldest of its own prefix at its share, else, with the key full, the
    /// oldest of the key's most represented prefix (the newcomer counted).
    fn key_victim(&self, key: &NodeId, prefix: Prefix) -> Option<NodeId> {
        let list = self.records.get(key)?;
        let count = |p: Prefix| list.iter().filter(|r| r.prefix == p).count();
        let oldest = |p: Prefix| {
            list.iter()
                .filter(|r| r.prefix == p)
                .min_by_key(|r| r.seq)
                .map(|r| r.peer.id)
        };
        if count(prefix) >= MAX_PER_PREFIX {
            return oldest(prefix);
        }
        if list.len() < MAX_PROVIDERS_PER_KEY {
            return None;
        }
        let weight = |r: &Record| count(r.prefix) + usize::from(r.prefix == prefix);
        // Most represented, and among those the one holding the oldest record.
        let most = list
            .iter()
            .max_by_key(|r| (weight(r), std::cmp::Reverse(r.seq)))?;
        oldest(most.prefix)
    }

    /// Drops the least recently refreshed record of the most represented
    /// prefix over the whole store (a newcomer from `prefix` counted).
    fn evict_global(&mut self, prefix: Prefix) {
        let own = self.by_prefix.get(&prefix).map_or(0, BTreeSet::len) + 1;
        let victim_prefix = match self.sizes.last() {
            Some((n, p)) if *n >= own => *p,
            _ => prefix,
        };
        let oldest = self
            .by_prefix
            .get(&victim_prefix)
            .and_then(|set| set.first())
            .copied();
        if let Some((_, key, provider)) = oldest {
            self.remove(&key, &provider);
        }
    }

    fn index(&mut self, key: &NodeId, r: &Record) {
        let set = self.by_prefix.entry(r.prefix).or_default();
        self.sizes.remove(&(set.len(), r.prefix));
        set.insert((r.seq, *key, r.peer.id));
        self.sizes.insert((set.len(), r.prefix));
        self.total += 1;
    }

    fn unindex(&mut self, key: &NodeId, r: &Record) {
        let Some(set) = self.by_prefix.get_mut(&r.prefix) else {
            return;
        };
        self.sizes.remove(&(set.len(), r.prefix));
        if set.remove(&(r.seq, *key, r.peer.id)) {
            self.total -= 1;
        }
        if set.is_empty() {
            self.by_prefix.remove(&r.prefix);
        } else {
            self.sizes.insert((set.len(), r.prefix));
        }
    }

    /// Drops the record of `provider` for `key`, if any.
    fn remove(&mut self, key: &NodeId, provider: &NodeId) {
        let Some(list) = self.records.get_mut(key) else {
            return;
        };
        let Some(pos) = list.iter().position(|r| r.peer.id == *provider) else {
            return;
        };
        let r = list.swap_remove(pos);
        if list.is_empty() {
            self.records.remove(key);
        }
        self.unindex(key, &r);
    }

    /// Unexpired providers of `key`, most recently refreshed first.
    pub fn get(&self, key: &NodeId, now: Instant) -> Vec<PeerRecord> {
        let mut live: Vec<&Record> = self
            .records
            .get(key)
            .map(|l| l.iter().filter(|r| r.expires > now).collect())
            .unwrap_or_default();
        live.sort_by_key(|r| std::cmp::Reverse(r.seq));
        live.into_iter().map(|r| r.peer.clone()).collect()
    }

    /// Drops every record of `provider` (it left); returns how many.
    pub fn withdraw(&mut self, provider: &NodeId) -> usize {
        let keys: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, l)| l.iter().any(|r| r.peer.id == *provider))
            .map(|(k, _)| *k)
            .collect();
        for key in &keys {
            self.remove(key, provider);
        }
        keys.len()
    }

    /// Drops expired records.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<(NodeId, NodeId)> = self
            .records
            .iter()
            .flat_map(|(k, l)| {
                l.iter()
                    .filter(|r| r.expires <= now)
                    .map(move |r| (*k, r.peer.id))
            })
            .collect();
        for (key, provider) in expired {
            self.remove(&key, &provider);
        }
    }

    /// Every unexpired record, for persistence.
    pub fn all(&self, now: Instant) -> Vec<(NodeId, PeerRecord, Instant)> {
        self.records
            .iter()
            .flat_map(|(k, l)| {
                l.iter()
                    .filter(move |r| r.expires > now)
                    .map(move |r| (*k, r.peer.clone(), r.expires))
            })
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Number of records over every key.
    pub fn records(&self) -> usize {
        self.total
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(n: u32) -> PeerRecord {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&n.to_be_bytes());
        PeerRecord {
            id: NodeId::from_bytes(id),
            addrs: vec![],
            relays: Vec::new(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ids(s: &ProviderStore, key: &NodeId, now: Instant) -> Vec<NodeId> {
        s.get(key, now).into_iter().map(|p| p.id).collect()
    }

    /// Checks the indexes against the records.
    fn consistent(s: &ProviderStore) {
        let n: usize = s.records.values().map(Vec::len).sum();
        assert_eq!(n, s.total);
        assert_eq!(s.by_prefix.values().map(BTreeSet::len).sum::<usize>(), n);
        assert_eq!(s.sizes.len(), s.by_prefix.len());
        for (key, l) in &s.records {
            assert!(l.len() <= MAX_PROVIDERS_PER_KEY);
            for r in l {
                assert!(s.by_prefix[&r.prefix].contains(&(r.seq, *key, r.peer.id)));
                assert!(l.iter().filter(|x| x.prefix == r.prefix).count() <= MAX_PER_PREFIX);
            }
        }
    }

    #[test]
    fn prefixes_are_a_v4_24_and_a_v6_48() {
        assert_eq!(
            Prefix::of(ip("203.0.113.7")),
            Prefix::of(ip("203.0.113.200"))
        );
        assert_ne!(Prefix::of(ip("203.0.113.7")), Prefix::of(ip("203.0.114.7")));
        assert_eq!(
            Prefix::of(ip("::ffff:203.0.113.7")),
            Prefix::of(ip("203.0.113.9"))
        );
        assert_eq!(
            Prefix::of(ip("2001:db8:1::1")),
            Prefix::of(ip("2001:db8:1:ff::2"))
        );
        assert_ne!(
            Prefix::of(ip("2001:db8:1::1")),
            Prefix::of(ip("2001:db8:2::1"))
        );
    }

    #[test]
    fn records_expire_and_refresh() {
        let now = Instant::now();
        let key = NodeId::from_bytes([1; 32]);
        let mut s = ProviderStore::default();
        for i in 0..10u32 {
            let src = ip(&format!("198.51.{i}.1"));
            s.add(
                key,
                peer(i),
                src,
                now + Duration::from_secs(u64::from(i) + 1),
            );
        }
        assert_eq!(s.get(&key, now).len(), 10);
        assert_eq!(s.get(&key, now + Duration::from_secs(6)).len(), 4);
        // Announced again: one record, the newest, with the new expiry.
        s.add(
            key,
            peer(0),
            ip("198.51.0.1"),
            now + Duration::from_secs(60),
        );
        assert_eq!(ids(&s, &key, now)[0], peer(0).id);
        assert_eq!(s.records(), 10);
        s.expire(now + Duration::from_secs(30));
        assert_eq!(ids(&s, &key, now), vec![peer(0).id]);
        s.expire(now + Duration::from_secs(100));
        assert!(s.is_empty());
        consistent(&s);
    }

    #[test]
    fn twenty_identities_from_one_prefix_evict_only_each_other() {
        let now = Instant::now();
        let exp = now + Duration::from_secs(3600);
        let key = NodeId::from_bytes([2; 32]);
        let mut s = ProviderStore::default();
        let honest: Vec<PeerRecord> = (0..3).map(peer).collect();
        for (i, p) in honest.iter().enumerate() {
            s.add(key, p.clone(), ip(&format!("192.0.{i}.10")), exp);
        }
        for i in 0..20u32 {
            s.add(key, peer(100 + i), ip(&format!("203.0.113.{i}")), exp);
        }
        let kept = ids(&s, &key, now);
        for p in &honest {
            assert!(kept.contains(&p.id), "honest {:?} evicted", p.id);
        }
        assert_eq!(kept.len(), 3 + MAX_PER_PREFIX);
        // The block's newest five are the ones kept.
        for i in 15..20 {
            assert!(kept.contains(&peer(100 + i).id));
        }
        consistent(&s);
    }

    #[test]
    fn a_full_key_evicts_from_its_most_represented_prefix() {
        let now = Instant::now();
        let exp = now + Duration::from_secs(3600);
        let key = NodeId::from_bytes([3; 32]);
        let mut s = ProviderStore::default();
        // Four blocks at their share fill the key.
        for i in 0..MAX_PROVIDERS_PER_KEY as u32 {
            let block = i / MAX_PER_PREFIX as u32;
            s.add(key, peer(i), ip(&format!("10.{block}.0.{i}")), exp);
        }
        // A newcomer from a fifth block evicts the oldest of a block of
        // five: the first record of all.
        s.add(key, peer(999), ip("10.9.0.1"), exp);
        let kept = ids(&s, &key, now);
        assert_eq!(kept.len(), MAX_PROVIDERS_PER_KEY);
        assert!(kept.contains(&peer(999).id) && !kept.contains(&peer(0).id));
        consistent(&s);
    }

    #[test]
    fn junk_keys_do_not_make_the_store_refuse_an_honest_record() {
        let now = Instant::now();
        let exp = now + Duration::from_secs(24 * 3600);
        let mut s = ProviderStore::default();
        // One block fills the store with junk keys.
        for i in 0..MAX_RECORDS as u32 {
            let mut key = [0xee; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            s.add(
                NodeId::from_bytes(key),
                peer(i % 1000),
                ip("203.0.113.66"),
                exp,
            );
        }
        assert_eq!(s.records(), MAX_RECORDS);
        let honest = NodeId::from_bytes([4; 32]);
        s.add(honest, peer(7), ip("198.51.100.7"), exp);
        assert_eq!(ids(&s, &honest, now), vec![peer(7).id]);
        assert_eq!(s.records(), MAX_RECORDS);
        // More junk evicts junk, never the honest record.
        for i in 0..1000u32 {
            let mut key = [0xdd; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            s.add(NodeId::from_bytes(key), peer(i), ip("203.0.113.67"), exp);
        }
        assert_eq!(ids(&s, &honest, now), vec![peer(7).id]);
        assert_eq!(s.records(), MAX_RECORDS);
        consistent(&s);
    }
}
