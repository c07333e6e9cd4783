//! Provider records: which nodes said they hold which file, until when.
//!
//! Bounded: at most [`MAX_PROVIDERS_PER_KEY`] providers per key (the most
//! recently announced are kept) and [`MAX_KEYS`] keys.

use std::collections::HashMap;
use std::time::Instant;

use crate::proto::wire::PeerRecord;
use crate::proto::NodeId;

/// Providers kept per key.
pub const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Keys kept.
pub const MAX_KEYS: usize = 100_000;

/// The records a node keeps for others.
#[derive(Debug, Default)]
pub struct ProviderStore {
    records: HashMap<NodeId, Vec<(PeerRecord, Instant)>>,
}

impl ProviderStore {
    /// Records that `provider` holds `key` until `expires`. False if the store
    /// is full of other keys.
    pub fn add(&mut self, key: NodeId, provider: PeerRecord, expires: Instant) -> bool {
        if !self.records.contains_key(&key) && self.records.len() >= MAX_KEYS {
            return false;
        }
        let list = self.records.entry(key).or_default();
        list.retain(|(p, _)| p.id != provider.id);
        list.push((provider, expires));
        if list.len() > MAX_PROVIDERS_PER_KEY {
            list.remove(0);
        }
        true
    }

    /// Unexpired providers of `key`.
    pub fn get(&self, key: &NodeId, now: Instant) -> Vec<PeerRecord> {
        self.records
            .get(key)
            .map(|l| {
                l.iter()
                    .filter(|(_, exp)| *exp > now)
                    .map(|(p, _)| p.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops expired records.
    pub fn expire(&mut self, now: Instant) {
        self.records.retain(|_, l| {
            l.retain(|(_, exp)| *exp > now);
            !l.is_empty()
        });
    }

    /// Every unexpired record, for persistence.
    pub fn all(&self, now: Instant) -> Vec<(NodeId, PeerRecord, Instant)> {
        self.records
            .iter()
            .flat_map(|(k, l)| {
                l.iter()
                    .filter(move |(_, e)| *e > now)
                    .map(move |(p, e)| (*k, p.clone(), *e))
            })
            .collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.records.len()
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

    #[test]
    fn records_expire_and_are_bounded() {
        let now = Instant::now();
        let key = NodeId::from_bytes([1; 32]);
        let mut s = ProviderStore::default();
        for i in 0..30u8 {
            let p = PeerRecord {
                id: NodeId::from_bytes([i; 32]),
                addrs: vec![],
            };
            s.add(key, p, now + Duration::from_secs(u64::from(i) + 1));
        }
        assert_eq!(s.get(&key, now).len(), MAX_PROVIDERS_PER_KEY);
        assert_eq!(s.get(&key, now + Duration::from_secs(25)).len(), 5);
        s.expire(now + Duration::from_secs(100));
        assert!(s.is_empty());
    }
}
