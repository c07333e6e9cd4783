//! The memory a node lends its peers for chunk data, and how it is shared.
//!
//! Every piece of chunk data in memory for a peer (read from disk until
//! quinn takes it, received until it is on disk), and every manifest served
//! or received, takes its size from three pools at once: the peer's share,
//! its address's share (IPv6 by /64), and the node-wide budget. A piece
//! waits until all three have room. A peer that stops reading holds what
//! its blocked streams took for at most the piece deadline, and never more
//! than its own shares: it can slow itself and the peers behind its address,
//! not the node's other peers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::proto::manifest::MAX_MANIFEST_SIZE;
use crate::proto::NodeId;

/// What one peer may hold of the budget at once: eight pieces.
pub const PEER_SHARE: usize = 2 << 20;
/// What the peers behind one address may hold at once.
pub const ADDRESS_SHARE: usize = 8 << 20;
/// Shares remembered before idle ones are forgotten.
const SHARES_MAX: usize = 4096;

/// The node-wide budget. Cheap to clone.
#[derive(Clone)]
pub struct ChunkBudget {
    node: Pool,
    shares: Arc<Mutex<Shares>>,
}

#[derive(Default)]
struct Shares {
    peers: HashMap<NodeId, Pool>,
    addrs: HashMap<IpAddr, Pool>,
}

/// A semaphore of KiB with its size.
#[derive(Clone)]
struct Pool {
    kib: Arc<Semaphore>,
    max_kib: u32,
}

impl Pool {
    fn new(bytes: usize) -> Self {
        let kib = (bytes / 1024).clamp(1, u32::MAX as usize) as u32;
        Pool {
            kib: Arc::new(Semaphore::new(kib as usize)),
            max_kib: kib,
        }
    }

    /// Waits for `kib` (at most the pool's size).
    async fn take(&self, kib: u32) -> Option<OwnedSemaphorePermit> {
        let kib = kib.min(self.max_kib);
        self.kib.clone().acquire_many_owned(kib).await.ok()
    }

    /// Whether nothing is taken and nobody else holds the pool.
    fn idle(&self) -> bool {
        Arc::strong_count(&self.kib) == 1 && self.kib.available_permits() == self.max_kib as usize
    }
}

/// The shares of one peer at one address, to take pieces with.
#[derive(Clone)]
pub struct Account {
    peer: Pool,
    addr: Pool,
    node: Pool,
}

/// Bytes taken from an [`Account`], given back on drop.
pub struct BudgetPermit {
    _permits: [Option<OwnedSemaphorePermit>; 3],
}

impl ChunkBudget {
    /// A node-wide budget of `bytes` (at least one largest manifest, so that
    /// any single request can be served).
    pub fn new(bytes: usize) -> Self {
        ChunkBudget {
            node: Pool::new(bytes.max(MAX_MANIFEST_SIZE)),
            shares: Arc::default(),
        }
    }

    /// The account of `peer`, reached at `ip`.
    pub fn account(&self, peer: NodeId, ip: IpAddr) -> Account {
        let key = crate::net::ip_key(ip);
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if shares.peers.len() + shares.addrs.len() > SHARES_MAX {
            shares.peers.retain(|_, p| !p.idle());
            shares.addrs.retain(|_, p| !p.idle());
        }
        let peer = shares
            .peers
            .entry(peer)
            .or_insert_with(|| Pool::new(PEER_SHARE))
            .clone();
        let addr = shares
            .addrs
            .entry(key)
            .or_insert_with(|| Pool::new(ADDRESS_SHARE))
            .clone();
        Account {
            peer,
            addr,
            node: self.node.clone(),
        }
    }

    /// Bytes of the node-wide budget not taken now.
    pub fn available(&self) -> usize {
        self.node.kib.available_permits() * 1024
    }
}

impl Account {
    /// Waits for `bytes` from the peer's share, then its address's, then the
    /// node's (in that order, so that a peer waiting on its own share holds
    /// nothing of the others).
    pub async fn take(&self, bytes: usize) -> BudgetPermit {
        let kib = bytes.div_ceil(1024).min(u32::MAX as usize) as u32;
        let peer = self.peer.take(kib).await;
        let addr = self.addr.take(kib).await;
        let node = self.node.take(kib).await;
        BudgetPermit {
            _permits: [peer, addr, node],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_peer_that_holds_its_share_does_not_starve_others() {
        let budget = ChunkBudget::new(32 << 20);
        let stranger_ip: IpAddr = [10, 0, 0, 1].into();
        let held: Vec<BudgetPermit> = {
            let a = budget.account(NodeId::from_bytes([1; 32]), stranger_ip);
            let mut held = Vec::new();
            for _ in 0..8 {
                held.push(a.take(256 << 10).await);
            }
            held
        };
        // The same peer waits; another identity behind the same address
        // gets the rest of the address's share; a peer elsewhere gets its own.
        let same = budget.account(NodeId::from_bytes([1; 32]), stranger_ip);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), same.take(1024))
                .await
                .is_err()
        );
        let sibling = budget.account(NodeId::from_bytes([2; 32]), stranger_ip);
        let _s = sibling.take(2 << 20).await;
        let honest = budget.account(NodeId::from_bytes([3; 32]), [10, 0, 1, 1].into());
        let _h = tokio::time::timeout(Duration::from_millis(50), honest.take(2 << 20))
            .await
            .expect("another address is served at once");
        assert_eq!(budget.available(), (32 << 20) - (6 << 20));
        drop(held);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), same.take(1024))
                .await
                .is_ok()
        );
    }
}
