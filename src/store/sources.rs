//! Whom each held file was stored for, and how much each source holds.
//!
//! A file held because a peer asked ([`Store::add_file_for`]) is recorded
//! with that peer's proven id and address prefix and the file's size, in the
//! same transaction that makes it held; dropping it
//! ([`Store::release_file`]) removes the record. The totals per id and per
//! prefix are kept in memory, rebuilt at open: what a source may still make
//! this node hold is its allowance less them
//! ([`crate::transfer::allowance`]). Files imported locally have no source.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{lock, Store, StoreError};
use crate::proto::{Hash, NodeId};

/// File id → the postcard of `(Source, size)`.
pub(super) const SOURCES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("held_for_sources");

/// An address block that one network operator usually hands to one
/// customer: an IPv4 /24, an IPv6 /48. Free identities share it, so an
/// allowance counted by prefix is not multiplied by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prefix(IpAddr);

impl Prefix {
    /// The prefix `ip` belongs to (an IPv4-mapped IPv6 address as IPv4).
    pub fn of(ip: IpAddr) -> Prefix {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                Prefix(IpAddr::V4(Ipv4Addr::new(a, b, c, 0)))
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Prefix(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0)))
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}/24"),
            IpAddr::V6(a) => write!(f, "{a}/48"),
        }
    }
}

/// Who a file was stored for: the peer's proven id and its address prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The id its handshake proved.
    pub id: NodeId,
    /// The prefix of the address it connected from.
    pub prefix: Prefix,
}

/// Bytes of held files stored for one source, counted both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldFor {
    /// For its id, from any address.
    pub by_id: u64,
    /// For any id from its prefix.
    pub by_prefix: u64,
}

/// The in-memory totals.
#[derive(Default)]
pub(super) struct Ledger {
    files: HashMap<Hash, (Source, u64)>,
    by_id: HashMap<NodeId, u64>,
    by_prefix: HashMap<Prefix, u64>,
}

impl Ledger {
    fn add(&mut self, file: Hash, source: Source, size: u64) {
        if self.files.insert(file, (source, size)).is_some() {
            return;
        }
        let id = self.by_id.entry(source.id).or_default();
        *id = id.saturating_add(size);
        let prefix = self.by_prefix.entry(source.prefix).or_default();
        *prefix = prefix.saturating_add(size);
    }

    fn remove(&mut self, file: &Hash) {
        let Some((source, size)) = self.files.remove(file) else {
            return;
        };
        fn sub<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u64>, k: K, size: u64) {
            if let Some(v) = m.get_mut(&k) {
                *v = v.saturating_sub(size);
                if *v == 0 {
                    m.remove(&k);
                }
            }
        }
        sub(&mut self.by_id, source.id, size);
        sub(&mut self.by_prefix, source.prefix, size);
    }
}

fn encode(source: &Source, size: u64) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(&(source, size)).map_err(|e| StoreError::Db(e.to_string()))
}

impl Store {
    /// Reads the sources of held files into the ledger (at open).
    pub(super) fn load_sources(&self) -> Result<(), StoreError> {
        let tx = self.inner.db.begin_read()?;
        let table = tx.open_table(SOURCES)?;
        let mut ledger = lock(&self.inner.ledger);
        for row in table.iter()? {
            let (k, v) = row?;
            if let Ok((source, size)) = postcard::from_bytes::<(Source, u64)>(v.value()) {
                ledger.add(Hash::from_bytes(*k.value()), source, size);
            }
        }
        Ok(())
    }

    /// Records, inside the write transaction `tx` that makes `file` held,
    /// that it was stored for `source` (unless it already was for someone).
    pub(super) fn record_source(
        &self,
        tx: &redb::WriteTransaction,
        file: &Hash,
        source: &Source,
        size: u64,
    ) -> Result<bool, StoreError> {
        let mut table = tx.open_table(SOURCES)?;
        if table.get(file.as_bytes())?.is_some() {
            return Ok(false);
        }
        table.insert(file.as_bytes(), encode(source, size)?.as_slice())?;
        Ok(true)
    }

    /// Counts a source recorded by a committed [`Store::record_source`].
    pub(super) fn count_source(&self, file: Hash, source: Source, size: u64) {
        lock(&self.inner.ledger).add(file, source, size);
    }

    /// Forgets, inside `tx`, whom `file` was stored for; the ledger follows
    /// with [`Store::uncount_source`] once `tx` commits.
    pub(super) fn forget_source(
        &self,
        tx: &redb::WriteTransaction,
        file: &Hash,
    ) -> Result<(), StoreError> {
        tx.open_table(SOURCES)?.remove(file.as_bytes())?;
        Ok(())
    }

    pub(super) fn uncount_source(&self, file: &Hash) {
        lock(&self.inner.ledger).remove(file);
    }

    /// Bytes of held files stored for `source`'s id and for its prefix.
    pub fn held_for(&self, source: &Source) -> HeldFor {
        let ledger = lock(&self.inner.ledger);
        HeldFor {
            by_id: ledger.by_id.get(&source.id).copied().unwrap_or(0),
            by_prefix: ledger.by_prefix.get(&source.prefix).copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::held_file;
    use crate::store::FileRecord;

    fn source(id: u8, ip: [u8; 4]) -> Source {
        Source {
            id: NodeId::from_bytes([id; 32]),
            prefix: Prefix::of(IpAddr::from(ip)),
        }
    }

    #[test]
    fn prefixes_group_a_block() {
        let p = |s: &str| Prefix::of(s.parse().unwrap());
        assert_eq!(p("203.0.113.7"), p("203.0.113.200"));
        assert_ne!(p("203.0.113.7"), p("203.0.114.7"));
        assert_eq!(p("::ffff:203.0.113.7"), p("203.0.113.9"));
        assert_eq!(p("2001:db8:1:2::1"), p("2001:db8:1:ffff::9"));
        assert_ne!(p("2001:db8:1::1"), p("2001:db8:2::1"));
        assert_eq!(p("203.0.113.7").to_string(), "203.0.113.0/24");
    }

    #[test]
    fn held_bytes_are_counted_per_id_and_prefix_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = source(1, [203, 0, 113, 7]);
        let b = source(2, [203, 0, 113, 8]);
        let (id, _) = {
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let (id, paths) = held_file(&store, dir.path());
            let record = FileRecord {
                name: "f".into(),
                size: 1000,
                is_dir: false,
            };
            // Held again, now for a: counted once, for the first source only.
            let added = store.add_file_for(&id, &record, Some((&a, 1000))).unwrap();
            assert!(added.complete && added.counted);
            let again = store.add_file_for(&id, &record, Some((&b, 1000))).unwrap();
            assert!(again.complete && !again.counted);
            let held = store.held_for(&a);
            assert_eq!(
                held,
                HeldFor {
                    by_id: 1000,
                    by_prefix: 1000
                }
            );
            assert_eq!(
                store.held_for(&b),
                HeldFor {
                    by_id: 0,
                    by_prefix: 1000
                }
            );
            (id, paths)
        };
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.held_for(&a).by_id, 1000);
        assert!(store.release_file(&id).unwrap());
        assert_eq!(store.held_for(&a), HeldFor::default());
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.held_for(&b).by_prefix, 0);
    }
}
