//! Putting and getting whole files across the network.
//!
//! [`put`] cuts a local file or directory into chunks and manifests, keeps it in
//! the node's store when the node has one, and pushes it to R other nodes: every
//! manifest, every chunk (at most [`PUSH_IN_FLIGHT`] in flight per target), then
//! a HOLD that the target acknowledges only once it has verified and stored every
//! piece. [`get`] finds the nodes that hold a file (the ticket's holders, and
//! any peer that answers HAS) and hands them to the download engine.
//!
//! Placement follows Kademlia: the R live nodes closest to the file id hold it,
//! each announces itself as a provider on the k closest nodes, and `get` finds
//! them with a GET_PROVIDERS lookup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::dht::kbucket::Contact;
use crate::download::{
    download_scored, DownloadError, DownloadOptions, DownloadStats, Progress, Provider,
};
use crate::node::{Node, PeerAddr};
use crate::proto::ticket::{Target, Ticket, MAX_HOLDERS};
use crate::proto::wire::PeerRecord;
use crate::proto::Hash;
use crate::proto::NodeId;
use crate::store::chunker::{build_tree, ChunkLocation, Tree};
use crate::store::Store;
use crate::transfer::{hold_file, push_chunk, push_manifest, PushError};

/// Chunks pushed to one target at a time.
pub const PUSH_IN_FLIGHT: usize = 8;
/// Time allowed for one PUT or HOLD to be answered.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// Most providers looked for.
const MAX_QUERIED: usize = 16;

/// Where pushed chunks are read from.
#[derive(Clone)]
pub enum ChunkSource {
    /// The node's store.
    Store(Store),
    /// The original files (a client without a store); each read is verified
    /// again, so a file changed since chunking is caught.
    Files(Arc<HashMap<Hash, ChunkLocation>>),
}

/// Why reading a chunk to push failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The chunk is not where it was.
    #[error("chunk {0} is missing from the source")]
    Missing(Hash),
    /// The file changed since it was chunked.
    #[error("{0} changed while it was being uploaded")]
    Changed(PathBuf),
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl ChunkSource {
    fn read(&self, hash: &Hash) -> Result<Vec<u8>, SourceError> {
        match self {
            ChunkSource::Store(s) => s
                .read_chunk(hash)
                .map_err(|e| SourceError::Io {
                    path: PathBuf::from("store"),
                    source: std::io::Error::other(e.to_string()),
                })?
                .ok_or(SourceError::Missing(*hash)),
            ChunkSource::Files(map) => {
                use std::os::unix::fs::FileExt;
                let loc = map.get(hash).ok_or(SourceError::Missing(*hash))?;
                let io = |source| SourceError::Io {
                    path: loc.path.clone(),
                    source,
                };
                let f = std::fs::File::open(&loc.path).map_err(io)?;
                let mut buf = vec![0u8; loc.len];
                f.read_exact_at(&mut buf, loc.offset).map_err(io)?;
                if Hash::of(&buf) != *hash {
                    return Err(SourceError::Changed(loc.path.clone()));
                }
                Ok(buf)
            }
        }
    }
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Reading or chunking the local file failed.
    #[error(transparent)]
    Chunk(#[from] crate::store::chunker::ChunkError),
    /// Storing it locally failed (quota, disk).
    #[error(transparent)]
    Import(#[from] crate::store::ImportError),
    /// No copy could be placed anywhere.
    #[error("no node stored a copy: {0}")]
    NoCopies(String),
}

/// What a put achieved.
#[derive(Debug, Clone)]
pub struct PutReport {
    /// The file id.
    pub id: Hash,
    /// Bytes in the file or tree.
    pub size: u64,
    /// Copies asked for on other nodes.
    pub wanted: usize,
    /// Copies acknowledged by other nodes.
    pub remote_copies: usize,
    /// Nodes that acknowledged a complete copy (this node first, if it stores).
    pub holders: Vec<PeerRecord>,
    /// Targets that failed, with why.
    pub failures: Vec<(NodeId, String)>,
    /// A ticket naming the holders.
    pub ticket: Ticket,
    /// From reading the file to the last copy acknowledged.
    pub elapsed: Duration,
}

/// Stores `path` (when this node has a store) and pushes it to `replicas` other
/// full nodes. Fewer are used when fewer are connected.
pub async fn put(
    node: &Node,
    path: &Path,
    replicas: usize,
    chunk_size: u32,
    progress: Arc<dyn Progress>,
) -> Result<PutReport, PutError> {
    let start = std::time::Instant::now();
    let path = path.to_path_buf();
    let store = node.store().cloned();
    let (tree, source) = match store {
        Some(store) => {
            let s = store.clone();
            let tree = tokio::task::spawn_blocking(move || s.import(&path, chunk_size))
                .await
                .map_err(|e| crate::store::chunker::ChunkError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })??;
            (tree, ChunkSource::Store(store))
        }
        None => {
            let (tree, map) = tokio::task::spawn_blocking(move || {
                let mut map = HashMap::new();
                let tree = build_tree(&path, chunk_size, &mut |hash, _, loc| {
                    map.entry(hash).or_insert(loc);
                    Ok(())
                })?;
                Ok::<_, crate::store::chunker::ChunkError>((tree, map))
            })
            .await
            .map_err(|e| crate::store::chunker::ChunkError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })??;
            (tree, ChunkSource::Files(Arc::new(map)))
        }
    };
    let mut holders = Vec::new();
    if node.store().is_some() {
        holders.push(PeerRecord {
            id: node.id(),
            addrs: node.listen_addrs(),
        });
    }
    // Placement: the live nodes closest to the file id, closest first; if one
    // fails, the next in line is tried.
    let mut candidates: Vec<Contact> = node
        .closest_nodes(tree.root, crate::dht::K)
        .await
        .into_iter()
        .filter(|c| c.id != node.id())
        .collect();
    if candidates.is_empty() {
        // A network too young for lookups: fall back to whoever is connected.
        candidates = node
            .connected_peers()
            .into_iter()
            .map(|id| Contact { id, addrs: vec![] })
            .collect();
    }
    let name = tree
        .root_manifest()
        .map(|m| m.name().to_string())
        .unwrap_or_default();
    progress.begin(&name, tree.size * replicas.min(candidates.len()) as u64);

    let tree = Arc::new(tree);
    let mut failures = Vec::new();
    let mut next = candidates.into_iter();
    let mut tasks = JoinSet::new();
    let mut running = 0;
    loop {
        let acked = holders.iter().filter(|h| h.id != node.id()).count();
        while acked + running < replicas {
            let Some(c) = next.next() else { break };
            let conn = match node.connection(&c.id) {
                Some(conn) => conn,
                None => {
                    let Some(addr) = c.addrs.first() else {
                        continue;
                    };
                    match node.connect(&PeerAddr::pinned(c.id, *addr)).await {
                        Ok(_) => match node.connection(&c.id) {
                            Some(conn) => conn,
                            None => continue,
                        },
                        Err(e) => {
                            failures.push((c.id, e.to_string()));
                            continue;
                        }
                    }
                }
            };
            let (tree, source, progress) = (tree.clone(), source.clone(), progress.clone());
            let id = c.id;
            running += 1;
            tasks.spawn(async move {
                let r = push_tree(&conn, &tree, &source, progress.as_ref()).await;
                (id, r)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        running -= 1;
        let Ok((id, result)) = joined else { continue };
        match result {
            Ok(()) => {
                let addrs = node
                    .peers()
                    .into_iter()
                    .find(|p| p.id == id)
                    .map(|p| p.addrs)
                    .unwrap_or_default();
                debug!(peer = %id.fmt_short(), file = %tree.root.fmt_short(), "replica stored");
                holders.push(PeerRecord { id, addrs });
            }
            Err(e) => {
                warn!(peer = %id.fmt_short(), "replica failed: {e}");
                failures.push((id, e));
            }
        }
    }
    if node.store().is_some() {
        // This node holds a copy too: say so in the DHT.
        node.announce(tree.root).await;
    }
    if holders.is_empty() {
        let why = failures
            .first()
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| "no peers connected".into());
        return Err(PutError::NoCopies(why));
    }
    let remote_copies = holders.iter().filter(|h| h.id != node.id()).count();
    let ticket = Ticket {
        id: tree.root,
        holders: holders.iter().take(MAX_HOLDERS).cloned().collect(),
    };
    Ok(PutReport {
        id: tree.root,
        size: tree.size,
        wanted: replicas,
        remote_copies,
        holders,
        failures,
        ticket,
        elapsed: start.elapsed(),
    })
}

/// Counts a finished chunk push: progress on success, the first error kept.
fn settle(
    done: Result<Result<u64, String>, tokio::task::JoinError>,
    progress: &dyn Progress,
    first_error: &mut Option<String>,
) {
    match done {
        Ok(Ok(len)) => progress.advance(len),
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(e) => {
            first_error.get_or_insert(e.to_string());
        }
    }
}

/// Pushes every manifest and chunk of `tree` to one peer, then asks it to hold
/// the file. Errors are strings: they end up in a report.
pub async fn push_tree(
    conn: &quinn::Connection,
    tree: &Tree,
    source: &ChunkSource,
    progress: &dyn Progress,
) -> Result<(), String> {
    for (id, bytes) in &tree.manifests {
        push_manifest(conn, *id, Bytes::from(bytes.clone()), PUSH_TIMEOUT)
            .await
            .map_err(|e| format!("manifest {}: {e}", id.fmt_short()))?;
    }
    let permits = Arc::new(Semaphore::new(PUSH_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    let mut first_error = None;
    for hash in tree.chunk_hashes() {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // Collect finished pushes as we go, to stop early on failure.
        while let Some(done) = tasks.try_join_next() {
            settle(done, progress, &mut first_error);
        }
        if first_error.is_some() {
            break;
        }
        let (conn, source) = (conn.clone(), source.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let s = source.clone();
            let data = tokio::task::spawn_blocking(move || s.read(&hash))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let len = data.len() as u64;
            push_chunk(&conn, hash, Bytes::from(data), PUSH_TIMEOUT)
                .await
                .map_err(|e: PushError| format!("chunk {}: {e}", hash.fmt_short()))?;
            Ok::<u64, String>(len)
        });
    }
    while let Some(done) = tasks.join_next().await {
        settle(done, progress, &mut first_error);
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    hold_file(conn, tree.root, PUSH_TIMEOUT)
        .await
        .map_err(|e| format!("hold: {e}"))
}

/// The nodes that hold the target: the ticket's holders, and the providers a
/// GET_PROVIDERS lookup finds in the DHT (no flooding: a lookup asks about
/// log N nodes). Each is connected, pinned to its id.
pub async fn find_providers(node: &Node, target: &Target) -> Vec<Provider> {
    let id = target.id();
    let mut records: Vec<PeerRecord> = match target {
        Target::Ticket(t) => t.holders.clone(),
        Target::Id(_) => Vec::new(),
    };
    for r in node.find_providers(id, MAX_QUERIED).await.providers {
        if !records.iter().any(|x| x.id == r.id) {
            records.push(r);
        }
    }
    records.retain(|r| r.id != node.id());
    let mut dials = JoinSet::new();
    for r in records {
        let n = node.clone();
        dials.spawn(async move {
            if n.connection(&r.id).is_none() {
                let addr = r.addrs.first()?;
                if let Err(e) = n.connect(&PeerAddr::pinned(r.id, *addr)).await {
                    debug!(peer = %r.id.fmt_short(), "provider unreachable: {e}");
                    return None;
                }
            }
            let conn = n.connection(&r.id)?;
            Some(Provider { id: r.id, conn })
        });
    }
    let mut out = Vec::new();
    while let Some(r) = dials.join_next().await {
        if let Ok(Some(p)) = r {
            out.push(p);
        }
    }
    out
}

/// Finds who holds the target and downloads it to `out`.
///
/// An attempt that got the manifest but not every chunk (its providers left,
/// or the path to them went dark) is not the end: providers are looked up and
/// dialed again, with backoff, for up to `opts.retry_for`, and each new attempt
/// resumes from the chunks already written. A file nobody is known to hold
/// fails at once.
pub async fn get(
    node: &Node,
    target: &Target,
    out: &Path,
    opts: &DownloadOptions,
    progress: Arc<dyn Progress>,
) -> Result<DownloadStats, DownloadError> {
    let deadline = std::time::Instant::now() + opts.retry_for;
    let mut backoff = Duration::from_millis(500);
    let mut attempts = 0;
    let mut seen_manifest = false;
    loop {
        attempts += 1;
        let providers = find_providers(node, target).await;
        debug!(file = %target.id().fmt_short(), providers = providers.len(), attempts, "providers found");
        let scored = download_scored(
            providers,
            target.id(),
            out,
            opts,
            progress.clone(),
            node.scores(),
        );
        let err = match scored.await {
            Ok(mut stats) => {
                stats.attempts = attempts;
                return Ok(stats);
            }
            Err(e) => e,
        };
        seen_manifest |= matches!(err, DownloadError::Incomplete { .. });
        let retryable = matches!(
            err,
            DownloadError::Incomplete { .. }
                | DownloadError::NoProviders(_)
                | DownloadError::Manifest { .. }
        );
        if !seen_manifest
            || !retryable
            || node.is_shutting_down()
            || std::time::Instant::now() + backoff > deadline
        {
            return Err(err);
        }
        warn!("{err}; looking for providers again in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
