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
use std::sync::atomic::{AtomicU64, Ordering};
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
    pusher: Option<JoinHandle<Streamed>>,
}

/// What a [`Tap`] got done.
#[derive(Default)]
pub(super) struct Streamed {
    /// The targets that got every chunk.
    got_all: Vec<NodeId>,
    /// Bytes counted on the progress for each target, the ones that left
    /// the tap included.
    counted: Vec<(NodeId, u64)>,
}

impl Streamed {
    /// Whether `id` got every chunk.
    pub(super) fn got_all(&self, id: &NodeId) -> bool {
        self.got_all.contains(id)
    }

    /// How many targets got every chunk.
    pub(super) fn len(&self) -> usize {
        self.got_all.len()
    }

    /// `progress` for a second pass to `id`: the bytes the tap already
    /// counted for it are not counted again.
    pub(super) fn progress_for(
        &self,
        id: &NodeId,
        progress: Arc<dyn Progress>,
    ) -> Arc<dyn Progress> {
        match self.counted.iter().find(|(t, _)| t == id) {
            Some(&(_, counted)) if counted > 0 => Arc::new(Recounted {
                inner: progress,
                skip: AtomicU64::new(counted),
            }),
            _ => progress,
        }
    }
}

/// A progress that lets its first `skip` bytes pass uncounted.
struct Recounted {
    inner: Arc<dyn Progress>,
    skip: AtomicU64,
}

impl Progress for Recounted {
    fn begin(&self, name: &str, total_bytes: u64) {
        self.inner.begin(name, total_bytes);
    }

    fn advance(&self, bytes: u64) {
        let before = self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(s.saturating_sub(bytes))
            })
            .unwrap_or(0);
        let counted = bytes.saturating_sub(before);
        if counted > 0 {
            self.inner.advance(counted);
        }
    }
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

    /// Waits for the pushes to end: what they got done.
    pub(super) async fn finish(mut self) -> Streamed {
        let pusher = self.pusher.take();
        drop(self);
        match pusher {
            Some(p) => p.await.unwrap_or_default(),
            None => Streamed::default(),
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
    /// Bytes counted on the progress for this target.
    counted: u64,
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
            Ok(Ok(len)) => {
                progress.advance(len);
                self.counted += len;
            }
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
/// got them all, and what was counted for each.
async fn push_all(
    targets: Vec<(NodeId, Connection)>,
    mut rx: mpsc::Receiver<(Hash, Bytes)>,
    timeout: Duration,
    progress: Arc<dyn Progress>,
) -> Streamed {
    let mut targets: Vec<Target> = targets
        .into_iter()
        .map(|(id, conn)| Target {
            id,
            conn,
            permits: Arc::new(Semaphore::new(PUSH_IN_FLIGHT)),
            pushes: JoinSet::new(),
            failed: false,
            counted: 0,
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
    let mut streamed = Streamed::default();
    for mut t in targets {
        while !t.failed {
            let Some(done) = t.pushes.join_next().await else {
                break;
            };
            t.count(done, progress.as_ref());
        }
        if !t.failed {
            streamed.got_all.push(t.id);
        }
        streamed.counted.push((t.id, t.counted));
    }
    streamed
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A progress that adds up what it is told.
    #[derive(Default)]
    struct Sum(Mutex<u64>);

    impl Progress for Sum {
        fn begin(&self, _: &str, _: u64) {}

        fn advance(&self, bytes: u64) {
            *self.0.lock().unwrap() += bytes;
        }
    }

    #[test]
    fn a_second_pass_counts_only_what_the_tap_did_not() {
        let [a, b, c] = [1, 2, 3].map(|i| NodeId::from_bytes([i; 32]));
        let streamed = Streamed {
            got_all: vec![a],
            counted: vec![(a, 10), (b, 4), (c, 0)],
        };
        let sum = Arc::new(Sum::default());
        for id in [a, b, c] {
            // A second pass to each sends all 10 bytes, in pieces of 3.
            let p = streamed.progress_for(&id, sum.clone());
            for piece in [3, 3, 3, 1] {
                p.advance(piece);
            }
        }
        // a: all 10 counted by the tap; b: 4 of them; c: none.
        assert_eq!(*sum.0.lock().unwrap(), 10 - 4 + 10);
        assert!(streamed.got_all(&a) && !streamed.got_all(&b));
    }
}
