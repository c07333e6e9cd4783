//! Kademlia: who stores what, without asking everyone.
//!
//! The key space is the 256-bit NodeId space with the XOR metric; a file id is a
//! key in the same space. The parts here are pure state machines with time
//! passed in, so that one routing table and one lookup implementation serve the
//! real node and a simulator of ten thousand nodes alike:
//!
//! - [`kbucket`]: the routing table, 256 buckets of `k` contacts, least-recently
//!   seen first, with a ping before a live contact is replaced.
//! - [`query`]: an iterative lookup on disjoint paths, `alpha` requests in
//!   flight on each, converging on the `k` closest nodes; slow nodes stop
//!   counting against `alpha` so they cannot stall it, and a node whose
//!   referrals keep failing is no longer believed.
//! - [`providers`]: provider records with expiry, bounded per key and per
//!   source address prefix, evicting rather than refusing when full.
//! - [`sim`]: a simulator that drives the routing table and lookup above
//!   over thousands of in-memory nodes.
//!
//! On the network, [`behaviour::Dht`] runs lookups over QUIC, announces
//! provider records and keeps the table fresh in its own loop, [`find`]
//! believes a provider record only once the provider answers, and
//! [`handler`] answers the peers' requests. The network core reports proven
//! and departed peers to it; it never calls the DHT otherwise.

pub mod behaviour;
pub mod find;
pub mod handler;
pub mod kbucket;
pub mod providers;
pub mod query;
pub mod sim;

use crate::proto::NodeId;

/// Bucket size and the number of closest nodes a lookup converges on.
pub const K: usize = 20;
/// Requests a lookup keeps in flight on each of its paths.
pub const ALPHA: usize = 3;
/// Disjoint paths a lookup runs on (S/Kademlia's d): a liar closest to a key
/// poisons one of them, and the others still reach the honest nodes.
pub const PATHS: usize = 3;

/// The XOR distance between two keys, comparable as a 256-bit big-endian number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 32]);

impl Distance {
    /// Number of leading zero bits (256 for distance zero).
    pub fn leading_zeros(&self) -> u32 {
        let mut n = 0;
        for b in self.0 {
            if b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros();
            }
        }
        n
    }
}

/// `a XOR b`.
pub fn distance(a: &NodeId, b: &NodeId) -> Distance {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = [0u8; 32];
    for i in 0..32 {
        d[i] = a[i] ^ b[i];
    }
    Distance(d)
}

/// The DHT key of a file id.
pub fn key_of(hash: &crate::proto::Hash) -> NodeId {
    NodeId::from_bytes(*hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_metric() {
        let a = NodeId::from_bytes([0; 32]);
        let mut bb = [0; 32];
        bb[0] = 0x10;
        let b = NodeId::from_bytes(bb);
        assert_eq!(distance(&a, &a).leading_zeros(), 256);
        assert_eq!(distance(&a, &b).leading_zeros(), 3);
        assert_eq!(distance(&a, &b), distance(&b, &a));
        let mut cc = [0; 32];
        cc[31] = 1;
        assert!(distance(&a, &NodeId::from_bytes(cc)) < distance(&a, &b));
    }
}
