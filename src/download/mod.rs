//! The download engine: a file or tree from every peer that holds it, verified
//! chunk by chunk, written in place, resumable.
//!
//! 1. The manifest (and, for a directory, every manifest below it) comes from the
//!    first provider that answers with bytes that hash to the id. A manifest
//!    named by many entries is fetched once, and the tree must keep the limits
//!    of [`crate::proto::tree`] (files and directories counted by path, depth,
//!    total size, manifest bytes): past one, the download fails with
//!    [`DownloadError::Tree`] naming it, before anything is written.
//! 2. Before anything is written, a plan: a file an earlier attempt finished
//!    is kept; any other file in the way is refused ([`DownloadError::Exists`])
//!    unless [`DownloadOptions::force`]; a file manifest named by several
//!    paths is fetched to the first and copied to the others; and the disk
//!    must have room for what is left ([`DownloadError::NoSpace`]).
//! 3. Each file is written to `NAME.part` beside its final name. If that file is
//!    already there (an interrupted download), every chunk in it is hashed and
//!    the good ones are kept: only what is missing is fetched.
//! 4. Each provider gets `per_peer` workers that take chunks from one shared
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
//! 5. Chunks are verified in memory and written at their offset; memory holds at
//!    most `max_in_flight_bytes` in flight, as much again waiting to be written
//!    in order, and four chunks on their way to the writer thread, whatever
//!    the file size. The tree's distinct manifests are held for the whole
//!    download: at most [`MAX_TREE_MANIFEST_BYTES`] of them.
//! 6. The finished file is checked against the manifest (every chunk verified,
//!    the length right), synced, then renamed to its final name; the
//!    one-chunk files of a tree are all synced at once once every one is
//!    in, then renamed. A failed download leaves only the `.part`, never a
//!    file under the final name.
//!
//! # Files
//!
//! - `manifest`: getting the manifests, and walking the tree's paths (step 1).
//! - `plan`: what is kept, fetched and copied, and the room for it (step 2).
//! - `file`: one file from start to end (steps 3 and 6).
//! - `queue`: which chunk to ask of whom, and the end game (step 4).
//! - `worker`: one provider's loop that fetches chunks, verified, and hands
//!   them to the writer (steps 4 and 5).
//! - `writer`: the `.part` file, the resume scan, copies, and the thread that
//!   writes chunks in order (steps 3 and 5).
//! - `sealed`: an encrypted file or tree ([`crate::proto::sealed`]), opened
//!   with its key: fetched as one stream through the same workers, each
//!   chunk checked by hash and then by its tag, and unpacked.
//! - `shared`: what the workers of one download share: the peers' standing,
//!   the stats, the last error, the bytes in flight.
//! - [`score`]: what a node remembers about peers across downloads.
//!
//! [`MAX_TREE_MANIFEST_BYTES`]: crate::proto::tree::MAX_TREE_MANIFEST_BYTES

mod file;
mod manifest;
mod plan;
mod queue;
pub mod score;
mod sealed;
mod shared;
mod worker;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use quinn::Connection;

use crate::download::file::Commit;
use crate::download::manifest::{Item, TreeManifests};
use crate::download::plan::Action;
use crate::download::score::PeerScores;
use crate::download::shared::{lock, Shared};
use crate::proto::manifest::FileManifest;
use crate::proto::tree::TreeError;
use crate::proto::wire::WireError;
use crate::proto::Hash;
use crate::proto::NodeId;

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
    /// How long [`Replication::get`](crate::replication::Replication::get) keeps trying, after an attempt that
    /// got the manifest but not every chunk (providers gone, the path dark),
    /// to find providers again and resume.
    pub retry_for: Duration,
    /// Replace files that are in the way (`get --force`). Without it a
    /// download writes no path where a file already is, unless that file is
    /// exactly what the download would write (an earlier attempt finished
    /// it), and fails naming the path before anything is written. A `.part`
    /// file is the download's own and is resumed, never refused. Even forced,
    /// a download never deletes a directory to write a file, nor a file to
    /// make a directory.
    pub force: bool,
    /// The key of an encrypted file (from its ticket): without it an
    /// encrypted file is refused with [`DownloadError::NeedKey`].
    pub key: Option<crate::proto::sealed::FileKey>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_in_flight: 12,
            max_in_flight_bytes: 12 << 20,
            per_peer: 4,
            chunk_timeout: Duration::from_secs(30),
            retry_for: Duration::from_secs(60),
            force: false,
            key: None,
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
    fn begin(&self, _: &str, _: u64) {
        // Nothing to show.
    }
    fn advance(&self, _: u64) {
        // Nothing to count.
    }
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
    /// Bytes of those chunks (of plaintext, for an encrypted file).
    pub fetched_bytes: u64,
    /// Chunks found intact in a `.part` file and not fetched again.
    pub chunks_resumed: usize,
    /// Bytes of files found finished or of chunks found intact in a `.part`
    /// (not fetched again).
    pub resumed_bytes: u64,
    /// Files written as copies of another file of the tree with the same
    /// manifest, which was fetched once.
    pub copies: usize,
    /// Chunks that arrived with bad bytes (and were fetched again elsewhere).
    pub bad_chunks: usize,
    /// Providers skipped or dropped because they are banned for misbehaving.
    pub banned_peers: Vec<NodeId>,
    /// Chunk requests that failed and were retried.
    pub retries: usize,
    /// Chunks also asked of a second provider at the end of a download,
    /// because the first was slow to answer (the end game).
    pub endgame_requests: usize,
    /// Attempts made ([`Replication::get`](crate::replication::Replication::get) tries again after an
    /// incomplete one).
    pub attempts: usize,
    /// Most bytes of chunk data requested at once.
    pub peak_in_flight_bytes: u64,
    /// Chunks served by each provider.
    pub per_peer: Vec<(NodeId, usize)>,
    /// Wall time ([`Replication::get`](crate::replication::Replication::get):
    /// from its start, finding the holders included).
    pub elapsed: Duration,
    /// Of that, the time spent finding and proving the holders.
    pub finding: Duration,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The id names an encrypted file and no key was given; nothing was
    /// written.
    #[error(
        "{0} names an encrypted file; its ticket (which carries the key) is needed to read it"
    )]
    NeedKey(Hash),
    /// The key does not open the file, or what it opens is invalid; nothing
    /// was written under the final name.
    #[error("{id}: {reason}")]
    Sealed {
        /// The file id.
        id: Hash,
        /// What failed.
        reason: crate::proto::sealed::SealError,
    },
    /// A chunk of an encrypted file hashed as its manifest says but did not
    /// open with the key: the file was sealed wrongly by whoever made it, or
    /// the key is not its own. Nothing was written under the final name; no
    /// retry helps.
    #[error("{path}: chunk {chunk}: {reason}")]
    Unopenable {
        /// The final path.
        path: PathBuf,
        /// The chunk.
        chunk: usize,
        /// What failed.
        reason: crate::proto::sealed::SealError,
    },
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
    /// The tree exceeds a limit of [`crate::proto::tree`]; nothing was
    /// written.
    #[error("refusing the tree {id}: {reason}")]
    Tree {
        /// The tree's root.
        id: Hash,
        /// The limit exceeded.
        reason: TreeError,
    },
    /// A directory entry's name is not a plain file name.
    #[error("{dir}: refusing an entry: {reason}")]
    BadName {
        /// The directory it would be written in.
        dir: PathBuf,
        /// What is wrong with it.
        reason: WireError,
    },
    /// A file is where the download would write another, and
    /// [`DownloadOptions::force`] is off; nothing was written.
    #[error("refusing to overwrite {0}: it exists and is not the file being downloaded (--force replaces it)")]
    Exists(PathBuf),
    /// Something is where the download would write a file or directory of
    /// another kind (a file where a directory goes, or the other way round),
    /// which not even [`DownloadOptions::force`] removes; nothing was written.
    #[error("{path} is in the way: the download has a {wanted} there")]
    InTheWay {
        /// The path.
        path: PathBuf,
        /// "file" or "directory": what the download has there.
        wanted: &'static str,
    },
    /// The disk has less room than the download needs; nothing was written.
    #[error(
        "{path}: the download needs {needed} bytes ({}), the disk has {available} free ({})",
        gib(*needed),
        gib(*available)
    )]
    NoSpace {
        /// Where it was to be written.
        path: PathBuf,
        /// Bytes to write.
        needed: u64,
        /// Bytes free for this user.
        available: u64,
    },
    /// The node began to shut down; the `.part` file is kept, and a new
    /// attempt resumes.
    #[error("{0}: the node stopped before the download finished; run again to resume")]
    Stopped(PathBuf),
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

/// `bytes` in GiB, for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Maps an I/O error on `path` to [`DownloadError::Io`].
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

/// Useless answers (NOT_FOUND, a size other than the manifest's) after which
/// a peer is not asked again in this download.
pub const UNHELPFUL_LIMIT: usize = 4;

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
    skip_banned(&mut providers, scores, &mut stats);
    if providers.is_empty() {
        return Err(all_banned(id, &stats.banned_peers));
    }
    providers.sort_by_cached_key(|p| scores.rank(&p.id));
    let shared = Arc::new(Shared::new(scores.clone(), stats));
    let tree = Arc::new(manifest::fetch_tree(&providers, &shared, id, opts).await?);
    match tree.manifest(&id) {
        Some(crate::proto::manifest::Manifest::Sealed(m)) => {
            let key = opts.key.ok_or(DownloadError::NeedKey(id))?;
            let m = m.clone();
            sealed::download_sealed(&providers, &shared, id, &m, &key, out, opts, &progress)
                .await?;
        }
        _ => write_tree(&providers, &shared, &tree, out, opts, &progress).await?,
    }
    let mut stats = lock(&shared.stats).clone();
    stats.elapsed = start.elapsed();
    stats.attempts = 1;
    Ok(stats)
}

/// Drops the banned from `providers`, noting them in `stats`.
fn skip_banned(providers: &mut Vec<Provider>, scores: &PeerScores, stats: &mut DownloadStats) {
    providers.retain(|p| {
        let banned = scores.is_banned(&p.id);
        if banned {
            stats.banned_peers.push(p.id);
        }
        !banned
    });
}

/// The error when every provider of `id` is banned.
fn all_banned(id: Hash, banned: &[NodeId]) -> DownloadError {
    DownloadError::Manifest {
        id,
        last: format!(
            "every peer that holds it is banned for misbehaving ({})",
            banned
                .iter()
                .map(|p| p.fmt_short())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Files of one chunk fetched at once in a tree.
pub const FILES_AT_ONCE: usize = 16;

/// Writes `tree` to `out` as planned, the progress sized for it all and
/// named as the file was stored: kept files as they are, the others fetched or copied one
/// after the other.
async fn write_tree(
    providers: &[Provider],
    shared: &Arc<Shared>,
    tree: &Arc<TreeManifests>,
    out: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
) -> Result<(), DownloadError> {
    let plan = {
        let (tree, out) = (tree.clone(), out.to_path_buf());
        let force = opts.force;
        blocking(out.clone(), move || plan::plan(&tree, &out, force)).await?
    };
    let name = match tree.root_name() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => out
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
    };
    progress.begin(&name, tree.stats.size);
    // Directories as they come; then files of one chunk, FILES_AT_ONCE at a
    // time (a request each: one after the other, a tree of small files
    // waits on round trips), synced together; then larger files one at a
    // time (each takes the whole in-flight budget); copies last, once what
    // they copy is done.
    let (mut small, mut large, mut copies) = (Vec::new(), Vec::new(), Vec::new());
    for (index, item) in tree.walk(out).enumerate() {
        match item? {
            Item::Dir(path) => std::fs::create_dir_all(&path).map_err(io(&path))?,
            Item::File {
                path, id, manifest, ..
            } => match plan.action(index, &path, &id) {
                copy @ Action::Copy(_) => copies.push((copy, manifest, path)),
                action if manifest.chunks.len() <= 1 => small.push((action, manifest, path)),
                action => large.push((action, manifest, path)),
            },
        }
    }
    write_small(providers, shared, small, out, opts, progress).await?;
    for (action, f, path) in large.into_iter().chain(copies) {
        write_file(
            providers,
            shared,
            action,
            f,
            &path,
            opts,
            progress,
            Commit::Now,
        )
        .await?;
    }
    Ok(())
}

/// Fetches the one-chunk files `small` of a tree [`FILES_AT_ONCE`] at a
/// time, then syncs and renames them together.
async fn write_small(
    providers: &[Provider],
    shared: &Arc<Shared>,
    small: Vec<(Action<'_>, &FileManifest, PathBuf)>,
    out: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
) -> Result<(), DownloadError> {
    let batch = Mutex::new(Vec::new());
    let later = Commit::Later(&batch);
    let mut small = small.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < FILES_AT_ONCE {
            let Some((action, f, path)) = small.next() else {
                break;
            };
            running.push(async move {
                write_file(providers, shared, action, f, &path, opts, progress, later).await
            });
        }
        match running.next().await {
            Some(done) => done?,
            None => break,
        }
    }
    drop(running);
    let batch = std::mem::take(&mut *lock(&batch));
    let root = out.to_path_buf();
    blocking(root.clone(), move || {
        let bytes = batch.iter().map(|(_, size)| size).sum();
        let paths: Vec<PathBuf> = batch.into_iter().map(|(p, _)| p).collect();
        file::commit(&root, &paths, bytes)
    })
    .await
}

/// Writes the file `f` to `path` as `action` says: kept as it is, fetched
/// (committed as `commit` says), or copied from a file of the tree written
/// before.
#[allow(clippy::too_many_arguments)]
async fn write_file(
    providers: &[Provider],
    shared: &Arc<Shared>,
    action: Action<'_>,
    f: &FileManifest,
    path: &Path,
    opts: &DownloadOptions,
    progress: &Arc<dyn Progress>,
    commit: Commit<'_>,
) -> Result<(), DownloadError> {
    match action {
        Action::Keep => {
            let mut s = lock(&shared.stats);
            s.chunks_resumed += f.chunks.len();
            s.resumed_bytes += f.size;
            progress.advance(f.size);
        }
        Action::Fetch => {
            file::download_file(providers, shared, f, path, opts, progress, None, commit).await?
        }
        Action::Copy(from) => {
            let (from, to, size) = (from.to_path_buf(), path.to_path_buf(), f.size);
            blocking(to.clone(), move || {
                writer::copy_file(&from, &to, size).map_err(io(&to))
            })
            .await?;
            lock(&shared.stats).copies += 1;
            progress.advance(f.size);
        }
    }
    let mut s = lock(&shared.stats);
    s.files += 1;
    s.bytes += f.size;
    Ok(())
}

/// Runs `work` (file system calls, hashing) off the async threads.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, DownloadError> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DownloadError::Io {
            path,
            source: std::io::Error::other(e),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_path_sits_beside_the_file() {
        assert_eq!(part_path(Path::new("/x/y.bin")), Path::new("/x/y.bin.part"));
        assert_eq!(part_path(Path::new("out")), Path::new("out.part"));
    }
}
