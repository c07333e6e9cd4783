//! The download engine: a file or tree from every peer that holds it, verified
//! chunk by chunk, written in place, resumable.
//!
//! 1. The manifest (and, for a directory, every manifest below it) comes from the
//!    first provider that answers with bytes that hash to the id.
//! 2. Each file is written to `NAME.part` beside its final name. If that file is
//!    already there (an interrupted download), every chunk in it is hashed and
//!    the good ones are kept: only what is missing is fetched.
//! 3. Each provider gets `per_peer` workers that take chunks from one shared
//!    queue, with at most `max_in_flight` requests (and `max_in_flight_bytes`
//!    of chunk data) in flight in all; a fast peer
//!    comes back for more sooner, so it serves more. A chunk that fails (timeout,
//!    not found, peer gone) goes back in the queue for the other providers.
//!    Misbehaviour is scored ([`crate::download::score`]): a peer that sends bad bytes is
//!    banned, and a banned peer is asked nothing; one that times out or denies
//!    holding what it was named for is ranked down. Within the download a peer
//!    that denies the manifest, or gives [`UNHELPFUL_LIMIT`] useless answers
//!    (NOT_FOUND, another size than the manifest's), is not asked again. With
//!    [`download_scored`] the scores (a node's) outlast the download.
//! 4. Chunks are verified in memory and written at their offset; memory holds at
//!    most `max_in_flight_bytes` in flight, as much again waiting to be written
//!    in order, and four chunks on their way to the writer thread, whatever
//!    the file size.
//! 5. The finished file is checked against the manifest (every chunk verified,
//!    the length right), synced, then renamed to its final name. A failed
//!    download leaves only the `.part`, never a file under the final name.

pub mod score;

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::Connection;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::download::score::{Offense, PeerScores};
use crate::proto::manifest::{FileManifest, Manifest};
use crate::proto::Hash;
use crate::proto::NodeId;
use crate::transfer::{fetch_chunk, fetch_manifest, FetchError};

/// A peer to download from.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Its id.
    pub id: NodeId,
    /// The connection to it.
    pub conn: Connection,
}

/// Tuning for a download.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Chunk requests in flight in all.
    pub max_in_flight: usize,
    /// Bytes of chunk data in flight in all (at least one chunk): with large
    /// chunks, fewer requests than `max_in_flight` are made at once. The
    /// writer's reorder buffer holds as much again, and its queue four chunks.
    /// Bounds a download's memory whatever chunk size a manifest names.
    pub max_in_flight_bytes: u64,
    /// Chunk requests in flight to one peer.
    pub per_peer: usize,
    /// Time allowed for one chunk.
    pub chunk_timeout: Duration,
    /// How long [`crate::replication::get`] keeps trying, after an attempt that
    /// got the manifest but not every chunk (providers gone, the path dark),
    /// to find providers again and resume.
    pub retry_for: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_in_flight: 12,
            max_in_flight_bytes: 24 << 20,
            per_peer: 4,
            chunk_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(60),
        }
    }
}

/// Receives progress as a download runs.
pub trait Progress: Send + Sync {
    /// The download knows its total size.
    fn begin(&self, name: &str, total_bytes: u64);
    /// `bytes` more are done (fetched or found already present).
    fn advance(&self, bytes: u64);
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What a download did.
#[derive(Debug, Default, Clone)]
pub struct DownloadStats {
    /// Files written.
    pub files: usize,
    /// Bytes in those files.
    pub bytes: u64,
    /// Chunks fetched from peers.
    pub chunks_fetched: usize,
    /// Chunks found intact in a `.part` file and not fetched again.
    pub chunks_resumed: usize,
    /// Chunks that arrived with bad bytes (and were fetched again elsewhere).
    pub bad_chunks: usize,
    /// Providers skipped or dropped because they are banned for misbehaving.
    pub banned_peers: Vec<NodeId>,
    /// Chunk requests that failed and were retried.
    pub retries: usize,
    /// Chunks also asked of a second provider at the end of a download,
    /// because the first was slow to answer (the end game).
    pub endgame_requests: usize,
    /// Attempts made ([`crate::replication::get`] tries again after an
    /// incomplete one).
    pub attempts: usize,
    /// Most bytes of chunk data requested at once.
    pub peak_in_flight_bytes: u64,
    /// Chunks served by each provider.
    pub per_peer: Vec<(NodeId, usize)>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// No provider was given or found.
    #[error("no peer holds {0}")]
    NoProviders(Hash),
    /// No provider returned a valid manifest.
    #[error("no peer returned the manifest of {id}: {last}")]
    Manifest {
        /// The id.
        id: Hash,
        /// The last error seen.
        last: String,
    },
    /// Some chunks could not be fetched from any provider; the `.part` file is
    /// kept, and a new attempt resumes.
    #[error(
        "{missing} of {total} chunks of {path} could not be fetched ({last}); run again to resume"
    )]
    Incomplete {
        /// The final path.
        path: PathBuf,
        /// Chunks missing.
        missing: usize,
        /// Chunks in the file.
        total: usize,
        /// The last error seen.
        last: String,
    },
    /// The finished file did not match the manifest on reading back.
    #[error("{0}: the written file does not match its manifest (disk error?)")]
    Verify(PathBuf),
    /// Local I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError {
    let path = path.to_path_buf();
    move |source| DownloadError::Io { path, source }
}

/// The temp name a file is downloaded under: `NAME.part` beside it.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

/// Shared between the workers of one download (across files).
struct Shared {
    scores: PeerScores,
    /// Useless answers (NOT_FOUND, a wrong size) per peer in this download.
    unhelpful: Mutex<HashMap<NodeId, usize>>,
    /// Chunk bytes requested and not yet answered (or given up on).
    in_flight_bytes: std::sync::atomic::AtomicU64,
    stats: Mutex<DownloadStats>,
    last_error: Mutex<String>,
}

/// Downloads the file or tree `id` to `out` from `providers`, scoring them
/// for this download only.
pub async fn download(
    providers: Vec<Provider>,
    id: Hash,
    out: &Path,
    opts: &DownloadOptions,
    progress: Arc<dyn Progress>,
) -> Result<DownloadStats, DownloadError> {
    download_scored(providers, id, out, opts, progress, &PeerScores::new()).await
}

/// [`download`] with `scores` that outlast it: banned providers are skipped,
/// the others are asked for the manifest best first, and what each does here
/// is recorded.
pub async fn download_scored(
    mut providers: Vec<Provider>,
    id: Hash,
    out: &Path,
    opts: &DownloadOptions,
    progress: Arc<dyn Progress>,
    scores: &PeerScores,
) -> Result<DownloadStats, DownloadError> {
    if providers.is_empty() {
        return Err(DownloadError::NoProviders(id));
    }
    let start = Instant::now();
    let mut stats = DownloadStats::default();
    providers.retain(|p| {
        let banned = scores.is_banned(&p.id);
        if banned {
            stats.banned_peers.push(p.id);
        }
        !banned
    });
    if providers.is_empty() {
        return Err(DownloadError::Manifest {
            id,
            last: format!(
                "every peer that holds it is banned for misbehaving ({})",
                stats
                    .banned_peers
                    .iter()
                    .map(|p| p.fmt_short())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    providers.sort_by_cached_key(|p| scores.rank(&p.id));
    let shared = Arc::new(Shared {
        scores: scores.clone(),
        unhelpful: Mutex::new(HashMap::new()),
        in_flight_bytes: std::sync::atomic::AtomicU64::new(0),
        stats: Mutex::new(stats),
        last_error: Mutex::new(String::new()),
    });
    let root = get_manifest(&providers, &shared, id, opts).await?;
    let files = match root {
        Manifest::File(f) => vec![(out.to_path_buf(), f)],
        Manifest::Dir(_) => {
            let mut files = Vec::new();
            let mut stack = vec![(out.to_path_buf(), root)];
            while let Some((path, m)) = stack.pop() {
                match m {
                    Manifest::File(f) => files.push((path, f)),
                    Manifest::Dir(d) => {
                        std::fs::create_dir_all(&path).map_err(io(&path))?;
                        for e in d.entries {
                            let child = get_manifest(&providers, &shared, e.id, opts).await?;
                            stack.push((path.join(&e.name), child));
                        }
                    }
                }
            }
            files
        }
    };
    let total: u64 = files.iter().map(|(_, f)| f.size).sum();
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    progress.begin(&name, total);
    for (path, f) in &files {
        download_file(&providers, &shared, f, path, opts, &progress).await?;
        let mut s = lock(&shared.stats);
        s.files += 1;
        s.bytes += f.size;
    }
    let mut stats = lock(&shared.stats).clone();
    stats.elapsed = start.elapsed();
    stats.attempts = 1;
    Ok(stats)
}

/// Useless answers (NOT_FOUND, a size other than the manifest's) after which
/// a peer is not asked again in this download.
pub const UNHELPFUL_LIMIT: usize = 4;

/// Records what a failed request says about the peer; true if it is not to
/// be asked again in this download (banned, or out of useful answers).
fn score_failure(
    shared: &Shared,
    p: &NodeId,
    e: &FetchError,
    what: &dyn std::fmt::Display,
) -> bool {
    let offense = match e {
        e if e.is_lie() => Some(Offense::BadData),
        FetchError::NotFound => Some(Offense::FalseClaim),
        FetchError::Timeout => Some(Offense::Timeout),
        _ => None,
    };
    // One line per ban, not one per lie: several may be in flight at once.
    if let Some(o) = offense {
        if shared.scores.offend(*p, o) {
            warn!(
                peer = %p,
                "peer sent bad data for {what}: {e}; banned for {} min",
                crate::download::score::BAN_FOR.as_secs() / 60
            );
        }
    }
    if matches!(e, FetchError::NotFound | FetchError::WrongSize { .. }) {
        *lock(&shared.unhelpful).entry(*p).or_default() += 1;
    }
    if shared.scores.is_banned(p) {
        let mut s = lock(&shared.stats);
        if !s.banned_peers.contains(p) {
            s.banned_peers.push(*p);
        }
    }
    gave_up_on(shared, p)
}

/// Whether `p` is not to be asked anything more in this download.
fn gave_up_on(shared: &Shared, p: &NodeId) -> bool {
    shared.scores.is_banned(p)
        || lock(&shared.unhelpful)
            .get(p)
            .is_some_and(|n| *n >= UNHELPFUL_LIMIT)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn get_manifest(
    providers: &[Provider],
    shared: &Shared,
    id: Hash,
    opts: &DownloadOptions,
) -> Result<Manifest, DownloadError> {
    let mut last = String::from("no provider");
    for p in providers {
        if gave_up_on(shared, &p.id) {
            continue;
        }
        match fetch_manifest(&p.conn, id, opts.chunk_timeout).await {
            Ok((_, m)) => {
                shared.scores.served(p.id);
                return Ok(m);
            }
            Err(e) => {
                score_failure(shared, &p.id, &e, &"the manifest");
                if matches!(e, FetchError::NotFound) {
                    // It does not have the file after all: no chunk either.
                    lock(&shared.unhelpful).insert(p.id, UNHELPFUL_LIMIT);
                }
                last = format!("{}: {e}", p.id.fmt_short());
            }
        }
    }
    Err(DownloadError::Manifest { id, last })
}

/// Writes chunks to the output file from one thread, in file order.
///
/// Two things measured on this machine shape it. Concurrent `pwrite`s to one
/// file contend on its inode lock, and the kernel spins for it; and writing into
/// a hole of a sparse file cost ten times the CPU of appending (4.1 s against
/// 0.35 s of system time per GiB). So one thread writes, and chunks that arrive
/// ahead of the end of the file wait in a small reorder buffer until the gap
/// before them is filled; only when that buffer is full is a chunk written past
/// the end.
struct Writer {
    tx: std::sync::mpsc::SyncSender<WriteJob>,
}

enum WriteJob {
    Write(u64, Vec<u8>),
    Finish(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

impl Writer {
    /// A writer for `file`, whose first `len` bytes are written, holding back
    /// at most `reorder_bytes` of chunks that arrive ahead of the end (at
    /// least one).
    fn new(file: Arc<File>, len: u64, reorder_bytes: u64) -> Writer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(4);
        std::thread::spawn(move || {
            let mut end = len;
            let mut unsynced = 0u64;
            let mut pending = std::collections::BTreeMap::<u64, Vec<u8>>::new();
            let mut held = 0u64;
            let mut error: Option<std::io::Error> = None;
            let mut write = |off: u64, data: &[u8], end: &mut u64| {
                if let Err(e) = file.write_all_at(data, off) {
                    error.get_or_insert(e);
                }
                *end = (*end).max(off + data.len() as u64);
                unsynced += data.len() as u64;
                if unsynced >= SYNC_EVERY {
                    // Keep the dirty pages few, so the final sync is short.
                    unsynced = 0;
                    let _ = file.sync_data();
                }
            };
            for job in rx {
                match job {
                    WriteJob::Write(off, data) => {
                        if off <= end {
                            write(off, &data, &mut end);
                        } else {
                            held += data.len() as u64;
                            pending.insert(off, data);
                            while held > reorder_bytes && pending.len() > 1 {
                                if let Some((o, d)) = pending.pop_first() {
                                    held -= d.len() as u64;
                                    write(o, &d, &mut end);
                                }
                            }
                        }
                        while pending.first_key_value().is_some_and(|(o, _)| *o <= end) {
                            if let Some((o, d)) = pending.pop_first() {
                                held -= d.len() as u64;
                                write(o, &d, &mut end);
                            }
                        }
                    }
                    WriteJob::Finish(reply) => {
                        while let Some((o, d)) = pending.pop_first() {
                            write(o, &d, &mut end);
                        }
                        let r = match error.take() {
                            Some(e) => Err(e),
                            None => file.sync_all(),
                        };
                        let _ = reply.send(r);
                        return;
                    }
                }
            }
            // The download ended early (failed or dropped): keep every verified
            // chunk that arrived, for the next attempt to resume from.
            while let Some((o, d)) = pending.pop_first() {
                write(o, &d, &mut end);
            }
        });
        Writer { tx }
    }

    async fn send(&self, job: WriteJob) -> std::io::Result<()> {
        let tx = self.tx.clone();
        // The queue is short: wait for room off the async threads.
        tokio::task::spawn_blocking(move || tx.send(job))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("writer thread ended"))
    }

    /// Queues a verified chunk; write errors surface in [`Writer::finish`].
    async fn write(&self, offset: u64, data: Vec<u8>) -> std::io::Result<()> {
        self.send(WriteJob::Write(offset, data)).await
    }

    /// Writes what is held back, syncs, and reports the first error.
    async fn finish(&self) -> std::io::Result<()> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(WriteJob::Finish(reply)).await?;
        done.await
            .map_err(|_| std::io::Error::other("writer thread ended"))?
    }
}

/// Per-file work queue.
struct Queue {
    pending: VecDeque<usize>,
    /// Providers that failed each chunk.
    failed: Vec<Vec<NodeId>>,
    /// Times each chunk was reopened to every provider after all had failed it.
    reopened: Vec<u8>,
    /// Chunks being fetched: since when, and from whom.
    active: HashMap<usize, (Instant, Vec<NodeId>)>,
    /// Chunks fetched and handed to the writer.
    finished: Vec<bool>,
    in_flight: usize,
    remaining: usize,
}

/// Times a chunk that every provider failed is offered to them all again
/// (a timeout or a lost stream is often passing).
const REOPEN_ROUNDS: u8 = 2;

/// End game: once nothing is left to hand out, a chunk in flight this long is
/// asked of a second provider too, so one slow or silent peer cannot hold up
/// the last chunks until its connection times out.
const ENDGAME_AFTER: Duration = Duration::from_millis(750);

/// `fdatasync` after this many bytes are written, so the disk works while the
/// network does and the final sync is short.
const SYNC_EVERY: u64 = 64 << 20;

impl Queue {
    fn new(n: usize, have: &[bool]) -> Queue {
        Queue {
            pending: (0..n).filter(|&i| !have[i]).collect(),
            failed: vec![Vec::new(); n],
            reopened: vec![0; n],
            active: HashMap::new(),
            finished: have.to_vec(),
            in_flight: 0,
            remaining: have.iter().filter(|h| !**h).count(),
        }
    }

    /// The next chunk `p` may try, and whether it is an end-game duplicate of
    /// a request already in flight elsewhere.
    fn take(&mut self, p: NodeId, now: Instant) -> Option<(usize, bool)> {
        let mut pos = self
            .pending
            .iter()
            .position(|&i| !self.failed[i].contains(&p));
        if pos.is_none() && self.in_flight == 0 {
            // Every provider failed what is left: give it another round or two.
            let mut again = false;
            for &i in &self.pending {
                if self.reopened[i] < REOPEN_ROUNDS {
                    self.reopened[i] += 1;
                    self.failed[i].clear();
                    again = true;
                }
            }
            if again {
                pos = self
                    .pending
                    .iter()
                    .position(|&i| !self.failed[i].contains(&p));
            }
        }
        if let Some(i) = pos.and_then(|pos| self.pending.remove(pos)) {
            self.in_flight += 1;
            self.active.insert(i, (now, vec![p]));
            return Some((i, false));
        }
        if !self.pending.is_empty() {
            return None;
        }
        // End game: the oldest straggler this peer has not tried, asked of at
        // most two peers at once.
        let failed = &self.failed;
        let (&i, (_, askers)) = self
            .active
            .iter_mut()
            .filter(|(i, (since, askers))| {
                askers.len() < 2
                    && !askers.contains(&p)
                    && !failed[**i].contains(&p)
                    && now.saturating_duration_since(*since) >= ENDGAME_AFTER
            })
            // Oldest first; among equals the earliest in the file, which the
            // in-order writer is most likely waiting for.
            .min_by_key(|(i, (since, _))| (*since, **i))?;
        askers.push(p);
        self.in_flight += 1;
        Some((i, true))
    }

    /// `p` fetched chunk `i`: true if it is the first copy (to be written),
    /// false if another provider's copy won.
    fn complete(&mut self, i: usize, p: NodeId) -> bool {
        self.in_flight -= 1;
        if let Some((_, askers)) = self.active.get_mut(&i) {
            askers.retain(|a| *a != p);
        }
        if self.finished[i] {
            if self.active.get(&i).is_some_and(|(_, a)| a.is_empty()) {
                self.active.remove(&i);
            }
            return false;
        }
        self.finished[i] = true;
        self.remaining -= 1;
        if self.active.get(&i).is_some_and(|(_, a)| a.is_empty()) {
            self.active.remove(&i);
        }
        true
    }

    /// `p` failed chunk `i`: it goes back in the queue unless another
    /// provider is still fetching it or already has.
    fn retry(&mut self, i: usize, p: NodeId) {
        self.in_flight -= 1;
        self.failed[i].push(p);
        let others = match self.active.get_mut(&i) {
            Some((_, askers)) => {
                askers.retain(|a| *a != p);
                !askers.is_empty()
            }
            None => false,
        };
        if !others {
            self.active.remove(&i);
            if !self.finished[i] {
                self.pending.push_back(i);
            }
        }
    }
}

/// Hashes each chunk of `file` (up to `len` bytes present) and says which match.
fn scan(file: &File, f: &FileManifest, len: u64) -> std::io::Result<Vec<bool>> {
    let n = f.chunks.len();
    let mut ok = vec![false; n];
    // Two threads: hashing is the cost, and it parallelizes per chunk.
    let threads = 2.min(n.max(1));
    let results: Vec<std::io::Result<Vec<(usize, bool)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; f.chunk_size as usize];
                    for i in (t..n).step_by(threads) {
                        let (off, l) = f.chunk_range(i);
                        if off + l as u64 > len {
                            out.push((i, false));
                            continue;
                        }
                        file.read_exact_at(&mut buf[..l], off)?;
                        out.push((i, Hash::of(&buf[..l]) == f.chunks[i]));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("scan panicked")))
            })
            .collect()
    });
    for r in results {
        for (i, good) in r? {
            ok[i] = good;
        }
    }
    Ok(ok)
}

async fn download_file(
    providers: &[Provider],
    shared: &Arc<Shared>,
    f: &FileManifest,
    path: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
) -> Result<(), DownloadError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // A file finished by an earlier attempt (a directory download resumed) is
    // kept if every chunk in it verifies.
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_file() && meta.len() == f.size {
            let (p2, f2) = (path.to_path_buf(), f.clone());
            let intact = tokio::task::spawn_blocking(move || {
                let file = File::open(&p2)?;
                Ok::<bool, std::io::Error>(scan(&file, &f2, f2.size)?.iter().all(|g| *g))
            })
            .await
            .map_err(|e| DownloadError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(path))?;
            if intact {
                progress.advance(f.size);
                lock(&shared.stats).chunks_resumed += f.chunks.len();
                return Ok(());
            }
        }
    }
    let part = part_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(io(&part))?;
    let mut existing = file.metadata().map_err(io(&part))?.len();
    if existing > f.size {
        // Not this file's .part (or a different version): start over.
        file.set_len(0).map_err(io(&part))?;
        existing = 0;
    }
    // No set_len(size) up front: filling holes in a sparse file is far slower
    // than appending (see Writer).
    let file = Arc::new(file);

    let have = if existing > 0 {
        let (file2, f2) = (file.clone(), f.clone());
        tokio::task::spawn_blocking(move || scan(&file2, &f2, existing))
            .await
            .map_err(|e| DownloadError::Io {
                path: part.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(io(&part))?
    } else {
        vec![false; f.chunks.len()]
    };
    let resumed = have.iter().filter(|h| **h).count();
    let resumed_bytes: u64 = (0..f.chunks.len())
        .filter(|&i| have[i])
        .map(|i| f.chunk_range(i).1 as u64)
        .sum();
    progress.advance(resumed_bytes);
    if resumed > 0 {
        debug!(
            resumed,
            total = f.chunks.len(),
            "resuming from {}",
            part.display()
        );
    }
    let queue = Arc::new(Mutex::new(Queue::new(f.chunks.len(), &have)));
    let writer = Arc::new(Writer::new(
        file.clone(),
        existing,
        opts.max_in_flight_bytes,
    ));
    lock(&shared.stats).chunks_resumed += resumed;

    // Requests at once: `max_in_flight`, fewer if the chunks are large.
    let by_bytes = (opts.max_in_flight_bytes / u64::from(f.chunk_size.max(1))).max(1);
    let in_flight = opts.max_in_flight.max(1).min(by_bytes as usize);
    let permits = Arc::new(Semaphore::new(in_flight));
    let manifest = Arc::new(f.clone());
    let mut workers = tokio::task::JoinSet::new();
    let all_in = tokio_util::sync::CancellationToken::new();
    for p in providers {
        for _ in 0..opts.per_peer.max(1) {
            workers.spawn(worker(
                p.clone(),
                shared.clone(),
                queue.clone(),
                permits.clone(),
                writer.clone(),
                manifest.clone(),
                opts.chunk_timeout,
                progress.clone(),
                all_in.clone(),
            ));
        }
    }
    while workers.join_next().await.is_some() {
        if lock(&queue).remaining == 0 {
            // Every chunk is in: requests still waiting on a slow or silent
            // peer (the losers of the end game) are dropped, not waited for.
            // Workers handing a chunk to the writer are not interrupted: that
            // write must land before the writer is finished.
            all_in.cancel();
        }
    }

    let (remaining, total) = {
        let q = lock(&queue);
        (q.remaining, f.chunks.len())
    };
    if remaining > 0 {
        // Keep every verified chunk that arrived, written out before a retry
        // scans the .part file.
        if let Err(e) = writer.finish().await {
            debug!("flushing the partial download: {e}");
        }
        return Err(DownloadError::Incomplete {
            path: path.to_path_buf(),
            missing: remaining,
            total,
            last: lock(&shared.last_error).clone(),
        });
    }

    // Every chunk was verified in memory before it was written (or, resumed,
    // when the .part was scanned): write what is held back and sync, then check
    // that the tally covers the manifest and the length matches, and give the
    // file its final name.
    writer.finish().await.map_err(io(&part))?;
    let len = file.metadata().map_err(io(&part))?.len();
    let verified = lock(&queue).remaining == 0 && len == f.size;
    if !verified {
        return Err(DownloadError::Verify(path.to_path_buf()));
    }
    std::fs::rename(&part, path).map_err(io(path))?;
    Ok(())
}

/// Counts a request's bytes as in flight while it lives, and keeps the peak.
struct InFlight<'a> {
    shared: &'a Shared,
    len: u64,
}

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, len: u64) -> Self {
        use std::sync::atomic::Ordering;
        let now = shared.in_flight_bytes.fetch_add(len, Ordering::SeqCst) + len;
        let mut s = lock(&shared.stats);
        s.peak_in_flight_bytes = s.peak_in_flight_bytes.max(now);
        InFlight { shared, len }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared
            .in_flight_bytes
            .fetch_sub(self.len, std::sync::atomic::Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    p: Provider,
    shared: Arc<Shared>,
    queue: Arc<Mutex<Queue>>,
    permits: Arc<Semaphore>,
    writer: Arc<Writer>,
    f: Arc<FileManifest>,
    timeout: Duration,
    progress: Arc<dyn Progress>,
    all_in: tokio_util::sync::CancellationToken,
) {
    loop {
        if gave_up_on(&shared, &p.id) || p.conn.close_reason().is_some() {
            return;
        }
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        let next = {
            let mut q = lock(&queue);
            if q.remaining == 0 {
                return;
            }
            match q.take(p.id, Instant::now()) {
                Some(i) => Some(i),
                // Nothing this peer may try, and nobody will hand anything back.
                None if q.in_flight == 0 => return,
                None => None,
            }
        };
        let Some((i, duplicate)) = next else {
            drop(_permit);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if duplicate {
            debug!(peer = %p.id.fmt_short(), chunk = i, "end game: asking a second peer");
            lock(&shared.stats).endgame_requests += 1;
        }
        let (off, len) = f.chunk_range(i);
        let hash = f.chunks[i];
        let result = {
            let _asked = InFlight::new(&shared, len as u64);
            tokio::select! {
                r = fetch_chunk(&p.conn, hash, len as u64, timeout) => r,
                _ = all_in.cancelled() => return,
            }
        };
        match result {
            Ok(data) => {
                if !lock(&queue).complete(i, p.id) {
                    // Another provider's copy of this chunk won the end game.
                    continue;
                }
                shared.scores.served(p.id);
                match writer.write(off, data).await {
                    Ok(()) => {
                        progress.advance(len as u64);
                        let mut s = lock(&shared.stats);
                        s.chunks_fetched += 1;
                        match s.per_peer.iter_mut().find(|(id, _)| *id == p.id) {
                            Some((_, n)) => *n += 1,
                            None => s.per_peer.push((p.id, 1)),
                        }
                    }
                    _ => {
                        // A local write error: no peer can fix it.
                        *lock(&shared.last_error) = "cannot write the output file".into();
                        lock(&queue).pending.clear();
                        return;
                    }
                }
            }
            Err(e) => {
                let lie = e.is_lie();
                debug!(peer = %p.id.fmt_short(), chunk = i, "chunk failed: {e}");
                *lock(&shared.last_error) = format!("{}: {e}", p.id.fmt_short());
                lock(&queue).retry(i, p.id);
                {
                    let mut s = lock(&shared.stats);
                    s.retries += 1;
                    if lie {
                        s.bad_chunks += 1;
                    }
                }
                if score_failure(&shared, &p.id, &e, &format_args!("chunk {i}")) {
                    return;
                }
                if p.conn.close_reason().is_some() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_skips_chunks_a_peer_failed() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let now = Instant::now();
        let mut q = Queue::new(3, &[false; 3]);
        assert_eq!(q.take(a, now), Some((0, false)));
        q.retry(0, a);
        assert_eq!(q.take(a, now), Some((1, false)));
        assert_eq!(q.take(a, now), Some((2, false)));
        assert_eq!(q.take(a, now), None, "only chunk 0 is left and a failed it");
        assert_eq!(q.take(b, now), Some((0, false)));
        assert!(q.complete(0, b));
        assert_eq!(q.remaining, 2);
        // When every provider failed a chunk and nothing is in flight, it is
        // offered again, REOPEN_ROUNDS times.
        assert!(q.complete(1, a));
        assert!(q.complete(2, a));
        q.finished[1] = false;
        q.pending.push_back(1);
        q.remaining = 1;
        for _ in 0..REOPEN_ROUNDS {
            q.failed[1] = vec![a, b];
            assert_eq!(q.take(a, now), Some((1, false)));
            q.retry(1, a);
            q.failed[1].push(b);
        }
        assert_eq!(q.take(a, now), None, "given up after the rounds");
    }

    #[test]
    fn end_game_asks_a_second_peer_for_stragglers_only() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let c = NodeId::from_bytes([3; 32]);
        let t0 = Instant::now();
        let mut q = Queue::new(3, &[false, true, false]);
        assert_eq!(q.remaining, 2, "chunk 1 was resumed");
        assert_eq!(q.take(a, t0), Some((0, false)));
        assert_eq!(q.take(a, t0), Some((2, false)));
        // Nothing pending; a's requests are young: b waits.
        assert_eq!(q.take(b, t0), None);
        let later = t0 + ENDGAME_AFTER;
        assert_eq!(q.take(b, later), Some((0, true)), "the oldest straggler");
        assert_eq!(q.take(b, later), Some((2, true)));
        assert_eq!(q.take(c, later), None, "two askers at most");
        // b's copy of 0 wins; a's late copy is dropped, not written twice.
        assert!(q.complete(0, b));
        assert!(!q.complete(0, a));
        // a fails 2 while b still fetches it: not queued again.
        q.retry(2, a);
        assert!(q.pending.is_empty());
        assert!(q.complete(2, b));
        assert_eq!((q.remaining, q.in_flight), (0, 0));
        assert!(q.active.is_empty());
    }

    #[test]
    fn part_path_sits_beside_the_file() {
        assert_eq!(part_path(Path::new("/x/y.bin")), Path::new("/x/y.bin.part"));
        assert_eq!(part_path(Path::new("out")), Path::new("out.part"));
    }
}
