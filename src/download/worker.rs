//! A worker: one of the `per_peer` loops that fetch one file's chunks from one
//! provider. It takes a chunk from the file's [`Queue`], fetches it (the bytes
//! are verified against the chunk's hash by [`fetch_chunk`]), hands the first
//! copy to the [`Writer`], and reports a failure to the queue (for another
//! provider to try) and to the peer's score.
//!
//! A worker stops when its peer is given up on or gone, when nothing is left
//! it may try, when every chunk is in, or on a local write error.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::download::queue::Queue;
use crate::download::shared::{lock, InFlight, Shared};
use crate::download::writer::Writer;
use crate::download::{Progress, Provider};
use crate::proto::manifest::FileManifest;
use crate::proto::sealed::{Sealer, TAG_LEN};
use crate::transfer::{fetch_chunk, FetchError};

/// What every worker on one file shares.
#[derive(Clone)]
pub(super) struct Job {
    /// The download's state, across files.
    pub(super) shared: Arc<Shared>,
    /// Which chunk to ask of whom.
    pub(super) queue: Arc<Mutex<Queue>>,
    /// One per request allowed in flight in all.
    pub(super) permits: Arc<Semaphore>,
    /// Where verified chunks go.
    pub(super) writer: Arc<Writer>,
    /// The file's manifest (for a sealed stream: the plaintext's offsets
    /// and lengths, and the sealed chunks' hashes).
    pub(super) manifest: Arc<FileManifest>,
    /// Opens the chunks of a sealed stream.
    pub(super) sealer: Option<Arc<Sealer>>,
    /// Time allowed for one chunk.
    pub(super) timeout: Duration,
    /// Told of every chunk written.
    pub(super) progress: Arc<dyn Progress>,
    /// Cancelled once every chunk is in: requests still out are dropped.
    pub(super) all_in: CancellationToken,
}

/// One worker's loop: fetches chunks of `job`'s file from `p` until there is
/// nothing more for it to do.
pub(super) async fn worker(p: Provider, job: Job) {
    loop {
        if job.shared.gave_up_on(&p.id) || p.conn.close_reason().is_some() {
            return;
        }
        let Ok(_permit) = job.permits.acquire().await else {
            return;
        };
        let (i, duplicate) = match next_chunk(&p, &job) {
            Next::Chunk(i, duplicate) => (i, duplicate),
            Next::Done => return,
            Next::Wait => {
                drop(_permit);
                // Something in flight may come back to the queue; once
                // every chunk is in, the file's other workers are told at
                // once (a one-chunk file would otherwise wait here).
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    _ = job.all_in.cancelled() => return,
                }
            }
        };
        if duplicate {
            debug!(peer = %p.id.fmt_short(), chunk = i, "end game: asking a second peer");
            lock(&job.shared.stats).endgame_requests += 1;
        }
        let Some(result) = fetch(&p, &job, i).await else {
            return;
        };
        let flow = match result {
            Ok(data) => match open(&p, &job, i, data).await {
                Some(data) => deliver(&p, &job, i, data).await,
                None => ControlFlow::Break(()),
            },
            Err(e) => failed(&p, &job, i, e),
        };
        if flow.is_break() {
            return;
        }
    }
}

/// What a worker does next.
enum Next {
    /// Fetch this chunk (true: an end-game duplicate).
    Chunk(usize, bool),
    /// Nothing to try now; something in flight may come back.
    Wait,
    /// Nothing more for this worker.
    Done,
}

fn next_chunk(p: &Provider, job: &Job) -> Next {
    let mut q = lock(&job.queue);
    if q.remaining() == 0 {
        return Next::Done;
    }
    match q.take(p.id, Instant::now()) {
        Some((i, duplicate)) => Next::Chunk(i, duplicate),
        // Nothing this peer may try, and nobody will hand anything back.
        None if q.in_flight() == 0 => Next::Done,
        None => Next::Wait,
    }
}

/// Chunk `i` from `p`, its bytes counted in flight meanwhile; `None` if every
/// chunk came in first.
async fn fetch(p: &Provider, job: &Job, i: usize) -> Option<Result<Vec<u8>, FetchError>> {
    let (_, plain) = job.manifest.chunk_range(i);
    let len = plain + if job.sealer.is_some() { TAG_LEN } else { 0 };
    let hash = job.manifest.chunks[i];
    let _asked = InFlight::new(&job.shared, len as u64);
    let buf = job.writer.buffer();
    tokio::select! {
        r = fetch_chunk(&p.conn, hash, len as u64, job.timeout, buf) => Some(r),
        _ = job.all_in.cancelled() => None,
    }
}

/// Chunk `i` as it is written: `data` itself, or for a sealed stream the
/// plaintext its tag vouches for. A chunk whose bytes hash right but do not
/// open was sealed so by whoever made the file (or with another key): no
/// peer has a better copy, so the download stops, naming it.
async fn open(p: &Provider, job: &Job, i: usize, mut data: Vec<u8>) -> Option<Vec<u8>> {
    let Some(sealer) = job.sealer.clone() else {
        return Some(data);
    };
    let opened =
        tokio::task::spawn_blocking(move || sealer.open_chunk(i as u64, &mut data).map(|()| data))
            .await;
    let why = match opened {
        Ok(Ok(plain)) => return Some(plain),
        Ok(Err(e)) => {
            *lock(&job.shared.unopenable) = Some((i, e.clone()));
            e.to_string()
        }
        Err(e) => e.to_string(),
    };
    *lock(&job.shared.last_error) = format!("chunk {i}: {why}");
    // Nothing more is handed out: the workers stop once what is in flight
    // is back, and the file is reported incomplete.
    let mut q = lock(&job.queue);
    q.retry(i, p.id);
    q.abandon();
    None
}

/// `p` sent chunk `i`, verified: it is written unless another copy won.
/// Breaks on a local write error.
async fn deliver(p: &Provider, job: &Job, i: usize, data: Vec<u8>) -> ControlFlow<()> {
    if !lock(&job.queue).complete(i, p.id) {
        // Another provider's copy of this chunk won the end game.
        return ControlFlow::Continue(());
    }
    job.shared.scores.served(p.id);
    let (off, len) = job.manifest.chunk_range(i);
    if job.writer.write(off, data).await.is_err() {
        // A local write error: no peer can fix it.
        *lock(&job.shared.last_error) = "cannot write the output file".into();
        lock(&job.queue).abandon();
        return ControlFlow::Break(());
    }
    job.progress.advance(len as u64);
    let mut s = lock(&job.shared.stats);
    s.chunks_fetched += 1;
    s.fetched_bytes += len as u64;
    match s.per_peer.iter_mut().find(|(id, _)| *id == p.id) {
        Some((_, n)) => *n += 1,
        None => s.per_peer.push((p.id, 1)),
    }
    ControlFlow::Continue(())
}

/// `p` failed chunk `i`: it goes back in the queue and the failure is
/// scored. Breaks if `p` is not to be asked again or is gone.
fn failed(p: &Provider, job: &Job, i: usize, e: FetchError) -> ControlFlow<()> {
    let lie = e.is_lie();
    debug!(peer = %p.id.fmt_short(), chunk = i, "chunk failed: {e}");
    *lock(&job.shared.last_error) = format!("{}: {e}", p.id.fmt_short());
    lock(&job.queue).retry(i, p.id);
    {
        let mut s = lock(&job.shared.stats);
        s.retries += 1;
        if lie {
            s.bad_chunks += 1;
        }
    }
    let give_up = job
        .shared
        .score_failure(&p.id, &e, &format_args!("chunk {i}"));
    if give_up || p.conn.close_reason().is_some() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}
