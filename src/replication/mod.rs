//! Putting and getting whole files across the network, and keeping their
//! copies alive.
//!
//! - [`put`](Replication::put) cuts a local file or directory into chunks and
//!   manifests, keeps it in the node's store when the node has one, and
//!   pushes it to R other nodes: every manifest, every chunk (at most
//!   [`PUSH_IN_FLIGHT`] in flight per target), then a HOLD that the target
//!   acknowledges only once it has verified and stored every piece.
//! - [`get`](Replication::get) finds the nodes that hold a file (the
//!   ticket's holders, and the providers the DHT knows) and hands them to
//!   the download engine.
//! - repair: each full node challenges the R live nodes closest to each
//!   file it holds to prove they hold it (a keyed hash of a range it picks,
//!   [`possession`]); the closest proven holder copies it where missing,
//!   after a grace period, and copies beyond R+1 are trimmed.
//!
//! Placement follows Kademlia: the R live nodes closest to the file id hold
//! it, each announces itself as a provider on the k closest nodes, and `get`
//! finds them with a GET_PROVIDERS lookup.

mod get;
pub mod possession;
mod put;
mod repair;
mod source;
mod stream;

pub use put::{
    push_tree, CopyError, PushTreeError, PutError, PutOptions, PutReport, Sealing, Shortfall,
    PUSH_IN_FLIGHT,
};
pub use repair::grace;
pub use source::{ChunkSource, SourceError};

use std::sync::{Arc, Mutex};

use crate::dht::behaviour::Dht;
use crate::download::score::PeerScores;
use crate::net::Network;
use crate::store::Store;

/// Replication for one node. Cheap to clone.
#[derive(Clone)]
pub struct Replication {
    net: Network,
    dht: Dht,
    store: Option<Store>,
    /// Shared by every download this node makes: a peer banned in one is
    /// not asked in the next.
    scores: PeerScores,
    /// What repair remembers between passes (files short of copies, peers
    /// that failed a challenge).
    repair: Arc<Mutex<repair::RepairMemory>>,
}

impl Replication {
    /// Replication over `net` and `dht`, keeping copies in `store` (full
    /// nodes) and ranking peers with `scores`.
    pub fn new(net: Network, dht: Dht, store: Option<Store>, scores: PeerScores) -> Self {
        Replication {
            net,
            dht,
            store,
            scores,
            repair: Arc::default(),
        }
    }

    /// Starts the repair loop (full nodes with a store).
    pub fn start(&self) {
        if self.store.is_some() {
            let r = self.clone();
            self.net.spawn(async move { r.run_repair().await });
        }
    }
}
