//! Pushing chunks while a put is still cutting them.
//!
//! A put places a file on the R live nodes closest to its id, and the id is
//! known only once every chunk is sealed and hashed: so a put reads and seals
//! the file twice, once to learn the id and once to send. But in a network of
//! at most R other full nodes (a lookup that finds fewer than k nodes has
//! seen them all, and every one answered), every one of them is a target
//! whatever the id turns out to be. There the put hands each chunk to a
//! [`Tap`] as it is cut, which pushes it to every target at once: one pass,
//! and the network busy while the disk and the cipher work. The targets
//! then need only the manifests and the HOLD.
//!
//! A target whose push fails, or that keeps the cut waiting for [`BEHIND`],
//! is dropped from the tap and served by the ordinary second pass (which
//! reads the file again, and sends the manifests first). So is every target
//! of a cut that lasts [`TAP_TIME`]: chunks that no manifest names yet are
//! garbage to a node once its grace period passes (an hour by default), and
//! a long cut must not outlive it. Chunks a target got but is not asked to
//! hold are pending bytes it collects as garbage (see
//! [`crate::transfer::allowance`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::put::PUSH_IN_FLIGHT;
use crate::download::Progress;
use crate::proto::{Hash, NodeId};
use crate::transfer::push_chunk;

/// Cut chunks waiting for the pushes: the cutting threads stop while the
/// pushes are this far behind.
const WAITING: usize = 2;

/// How long the cut waits for one target to take a chunk before it goes on
/// without it: a dead or slow target does not hold up the others.
const BEHIND: Duration = Duration::from_secs(10);

/// How long a tap pushes before it leaves every target to the second pass.
const TAP_TIME: Duration = Duration::from_secs(15 * 60);

/// Where a put's cutting hands its chunks, to be pushed to targets known
/// before the file id.
///
/// Dropped before [`finish`](Tap::finish) (a cut that failed, a put
/// cancelled), it stops its pushes.
pub(super) struct Tap {
    tx: mpsc::Sender<(Hash, Bytes)>,
    pusher: Option<JoinHandle<Vec<NodeId>>>,
}

/// The cutting side of a [`Tap`]: cheap to clone, used from blocking
/// threads.
#[derive(Clone)]
pub(super) struct TapSender(mpsc::Sender<(Hash, Bytes)>);

impl TapSender {
    /// Hands a cut chunk on, waiting while the pushes are behind. A tap
    /// whose every target failed takes nothing more, and the cut goes on.
    pub(super) fn send(&self, hash: Hash, data: Bytes) {
        if !self.0.is_closed() {
            let _ = self.0.blocking_send((hash, data));
        }
    }
}

impl Tap {
    /// Starts pushing to `targets`, counting each chunk pushed on `progress`.
    pub(super) fn start(
        targets: Vec<(NodeId, Connection)>,
        timeout: Duration,
        progress: Arc<dyn Progress>,
    ) -> Tap {
        let (tx, rx) = mpsc::channel(WAITING);
        let pusher = tokio::spawn(push_all(targets, rx, timeout, progress));
        Tap {
            tx,
            pusher: Some(pusher),
        }
    }

    /// The side the cutting threads send on.
    pub(super) fn sender(&self) -> TapSender {
        TapSender(self.tx.clone())
    }

    /// Waits for the pushes to end: the targets that got every chunk.
    pub(super) async fn finish(mut self) -> Vec<NodeId> {
        let pusher = self.pusher.take();
        drop(self);
        match pusher {
            Some(p) => p.await.unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Some(p) = self.pusher.take() {
            p.abort();
        }
    }
}

/// One target of a tap.
struct Target {
    id: NodeId,
    conn: Connection,
    permits: Arc<Semaphore>,
    pushes: JoinSet<Result<u64, crate::transfer::PushError>>,
    failed: bool,
}

impl Target {
    /// Counts the pushes that ended; false once one failed.
    fn settle(&mut self, progress: &dyn Progress) -> bool {
        while let Some(done) = self.pushes.try_join_next() {
            self.count(done, progress);
        }
        !self.failed
    }

    fn count(
        &mut self,
        done: Result<Result<u64, crate::transfer::PushError>, tokio::task::JoinError>,
        progress: &dyn Progress,
    ) {
        match done {
            Ok(Ok(len)) => progress.advance(len),
            Ok(Err(e)) => self.drop_out(&e.to_string()),
            Err(e) => self.drop_out(&e.to_string()),
        }
    }

    /// Leaves the tap: the pushes under way are dropped, and the second
    /// pass serves this target.
    fn drop_out(&mut self, why: &str) {
        if !self.failed {
            debug!(peer = %self.id.fmt_short(), "left to the second pass: {why}");
            self.failed = true;
            self.pushes.abort_all();
        }
    }
}

/// Pushes every chunk that arrives on `rx` to every target that has not
/// failed (at most [`PUSH_IN_FLIGHT`] at a time each); returns those that
/// got them all.
async fn push_all(
    targets: Vec<(NodeId, Connection)>,
    mut rx: mpsc::Receiver<(Hash, Bytes)>,
    timeout: Duration,
    progress: Arc<dyn Progress>,
) -> Vec<NodeId> {
    let mut targets: Vec<Target> = targets
        .into_iter()
        .map(|(id, conn)| Target {
            id,
            conn,
            permits: Arc::new(Semaphore::new(PUSH_IN_FLIGHT)),
            pushes: JoinSet::new(),
            failed: false,
        })
        .collect();
    // A chunk repeated in the file (zeros, say) is pushed once.
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + TAP_TIME;
    while let Some((hash, data)) = rx.recv().await {
        if tokio::time::Instant::now() >= deadline {
            for t in &mut targets {
                t.drop_out("the cut outlasted the tap");
            }
        }
        if !seen.insert(hash) {
            continue;
        }
        let mut live = 0;
        for t in &mut targets {
            if !t.settle(progress.as_ref()) {
                continue;
            }
            let permit = tokio::time::timeout(BEHIND, t.permits.clone().acquire_owned()).await;
            let Ok(Ok(permit)) = permit else {
                t.drop_out("it fell behind the cut");
                continue;
            };
            let (conn, data) = (t.conn.clone(), data.clone());
            t.pushes.spawn(async move {
                let _permit = permit;
                let len = data.len() as u64;
                push_chunk(&conn, hash, data, timeout).await.map(|()| len)
            });
            live += 1;
        }
        if live == 0 {
            // Every target failed: the cut goes on without the tap.
            rx.close();
        }
    }
    let mut got_all = Vec::new();
    for mut t in targets {
        while !t.failed {
            let Some(done) = t.pushes.join_next().await else {
                break;
            };
            t.count(done, progress.as_ref());
        }
        if !t.failed {
            got_all.push(t.id);
        }
    }
    got_all
}
