//! Putting a file: seal it ([`crate::proto::sealed`]; plain only when asked)
//! and chunk it (into the store when the node has one), choose
//! the R live nodes closest to its id, and push every manifest and chunk to
//! each, then a HOLD that the target acknowledges only once it has verified
//! and stored every piece. A target that fails is replaced by the next
//! closest. In a network of at most R other full nodes the chunks go out
//! while the file is cut, and the manifests after ([`super::stream`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::source::{ChunkSource, SourceError};
use super::stream::{Streamed, Tap, TapSender};
use super::Replication;
use crate::dht::behaviour::RpcError;
use crate::dht::kbucket::Contact;
use crate::download::Progress;
use crate::net::ConnectError;
use crate::proto::manifest::ChunkSize;
use crate::proto::sealed::{self, FileKey, Sealer};
use crate::proto::ticket::{Ticket, MAX_HOLDERS};
use crate::proto::wire::PeerRecord;
use crate::proto::{Hash, NodeId};
use crate::store::chunker::{build_tree, ChunkError, Tree};
use crate::store::sealer::{seal_tree, KeyChoice};
use crate::transfer::{has, hold_file, push_chunk, push_manifest, PushError};

/// Chunks pushed to one target at a time.
pub const PUSH_IN_FLIGHT: usize = 8;
/// Time allowed for one PUT or HOLD to be answered.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// How a put protects what it stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sealing {
    /// Encrypted on this machine under a fresh random key: the default.
    #[default]
    Random,
    /// Encrypted under a key derived from the content and this convergence
    /// secret (`--convergent`): the same file put twice by the holder of
    /// the secret is stored once, and anyone with the secret can confirm a
    /// guess of the content.
    Convergent([u8; 32]),
    /// Plaintext, for content meant for everyone (`--public`).
    Public,
}

/// What a put does.
#[derive(Clone, Copy, Debug)]
pub struct PutOptions {
    /// Copies on other full nodes.
    pub replicas: usize,
    /// Bytes of plaintext per chunk.
    pub chunk_size: ChunkSize,
    /// Encrypted (and how) or plain.
    pub sealing: Sealing,
    /// Pad an encrypted file's size (Padmé: at most 12% more), so that its
    /// exact size is not known to the nodes that store it (`--pad`).
    pub pad: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            replicas: 3,
            chunk_size: ChunkSize::Auto,
            sealing: Sealing::Random,
            pad: false,
        }
    }
}

impl PutOptions {
    /// The defaults, in plaintext.
    pub fn public(replicas: usize) -> Self {
        PutOptions {
            replicas,
            sealing: Sealing::Public,
            ..PutOptions::default()
        }
    }
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// Reading or chunking the local file failed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// Storing it locally failed (quota, disk).
    #[error(transparent)]
    Import(#[from] crate::store::ImportError),
    /// The node began to shut down before every copy was placed.
    #[error("the node stopped before the put finished")]
    Stopped,
    /// No copy could be placed anywhere.
    #[error("no node stored a copy: {}", match .first { Some(e) => e.to_string(), None => "no peers connected".into() })]
    NoCopies {
        /// Why the first target failed, if one was tried.
        first: Option<CopyError>,
    },
}

/// Why one target did not take a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// It could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// It did not answer the lookup that found it (and was not asked again).
    #[error("{0}")]
    Lookup(Arc<RpcError>),
    /// The push failed.
    #[error(transparent)]
    Push(#[from] PushTreeError),
}

/// Why pushing a tree to one peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PushTreeError {
    /// A manifest was refused or lost.
    #[error("manifest {id}: {source}")]
    Manifest {
        /// The manifest's id.
        id: Hash,
        /// Why.
        source: PushError,
    },
    /// A chunk was refused or lost.
    #[error("chunk {hash}: {source}")]
    Chunk {
        /// The chunk.
        hash: Hash,
        /// Why.
        source: PushError,
    },
    /// A chunk could not be read here.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The HOLD was refused or lost.
    #[error("hold: {0}")]
    Hold(PushError),
    /// A push task failed.
    #[error("push task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a put achieved.
#[derive(Debug)]
pub struct PutReport {
    /// The file id.
    pub id: Hash,
    /// Bytes stored per copy (for an encrypted file, of ciphertext).
    pub size: u64,
    /// The key of an encrypted file (`None`: plain); the ticket carries it.
    pub key: Option<FileKey>,
    /// Copies asked for on other nodes.
    pub wanted: usize,
    /// Copies acknowledged by other nodes.
    pub remote_copies: usize,
    /// Other full nodes found to hold a copy: the closest to the file id (or,
    /// in a network too young for lookups, the connected ones), tried in
    /// order until enough copies were placed.
    pub found: usize,
    /// Nodes that acknowledged a complete copy (this node first, if it stores).
    pub holders: Vec<PeerRecord>,
    /// Holders whose chunks were pushed while the file was cut, in one pass
    /// (in a network of at most `wanted` other full nodes: [`super::stream`]).
    pub in_one_pass: usize,
    /// Targets that failed, with why.
    pub failures: Vec<(NodeId, CopyError)>,
    /// A ticket naming the holders (and, for an encrypted file, with the
    /// key: the read capability).
    pub ticket: Ticket,
    /// From reading the file to the last copy acknowledged.
    pub elapsed: Duration,
}

/// Why a put placed fewer copies than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Every other full node found took a copy: there were only `found`.
    FewerNodes {
        /// Other full nodes found.
        found: usize,
    },
    /// Nodes that could have held the missing copies refused or failed
    /// ([`PutReport::failures`] says why).
    Failed {
        /// Nodes that did not take a copy.
        failed: usize,
        /// Other full nodes found.
        found: usize,
    },
}

impl PutReport {
    /// Why fewer copies than asked were placed; `None` if all were.
    pub fn shortfall(&self) -> Option<Shortfall> {
        if self.remote_copies >= self.wanted {
            return None;
        }
        let found = self.found;
        Some(match self.failures.len() {
            0 => Shortfall::FewerNodes { found },
            failed => Shortfall::Failed { failed, found },
        })
    }
}

/// A node a copy may go to, and why it did not answer the lookup, if it
/// did not.
type Candidate = (Contact, Option<Arc<RpcError>>);

/// The copies a put has placed so far, and the targets that failed.
struct Placement {
    holders: Vec<PeerRecord>,
    failures: Vec<(NodeId, CopyError)>,
    /// Holders that needed only the manifests and the HOLD: their chunks
    /// went out while the file was cut.
    one_pass: usize,
}

impl Replication {
    /// Stores `path` (when this node has a store) and pushes it to `replicas`
    /// other full nodes. Fewer are used when fewer are found, or when some
    /// refuse or fail: [`PutReport::shortfall`] says which.
    pub async fn put(
        &self,
        path: &Path,
        opts: &PutOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<PutReport, PutError> {
        let start = Instant::now();
        let replicas = opts.replicas;
        let Cut {
            tree,
            source,
            key,
            streamed,
            begun,
        } = self.cut(path, opts, &progress).await?;
        debug!(
            file = %tree.root.fmt_short(),
            secs = start.elapsed().as_secs_f64(),
            pushed_to = streamed.len(),
            "cut into chunks"
        );
        let mut placement = Placement {
            holders: Vec::new(),
            failures: Vec::new(),
            one_pass: 0,
        };
        if self.store.is_some() {
            placement.holders.push(self.me());
        }
        let candidates = self.candidates(tree.root).await;
        let found = candidates.len();
        if !begun {
            let answered = candidates.iter().filter(|(_, failed)| failed.is_none());
            let copies = replicas.min(answered.count());
            progress.begin(&what(path, copies), tree.size * copies as u64);
        }
        let tree = Arc::new(tree);
        let push = Push {
            tree: &tree,
            source: &source,
            streamed: &streamed,
            progress: &progress,
        };
        self.place(&push, candidates, replicas, &mut placement)
            .await;
        if self.store.is_some() {
            // This node holds a copy too: say so in the DHT.
            self.dht.announce(tree.root).await;
        }
        let Placement {
            holders,
            failures,
            one_pass: in_one_pass,
        } = placement;
        if holders.is_empty() {
            let first = failures.into_iter().next().map(|(_, e)| e);
            return Err(PutError::NoCopies { first });
        }
        let me = self.net.id();
        let remote_copies = holders.iter().filter(|h| h.id != me).count();
        let ticket = Ticket {
            id: tree.root,
            holders: holders.iter().take(MAX_HOLDERS).cloned().collect(),
            key,
        };
        Ok(PutReport {
            id: tree.root,
            size: tree.size,
            key,
            wanted: replicas,
            remote_copies,
            found,
            holders,
            in_one_pass,
            failures,
            ticket,
            elapsed: start.elapsed(),
        })
    }

    fn me(&self) -> PeerRecord {
        self.net.me()
    }

    /// Cuts `path` ([`chunk`](Self::chunk)), pushing its chunks meanwhile
    /// to the targets known before the id, if there are any
    /// ([`super::stream`]); then the progress has begun.
    async fn cut(
        &self,
        path: &Path,
        opts: &PutOptions,
        progress: &Arc<dyn Progress>,
    ) -> Result<Cut, PutError> {
        // A convergent key is made from a first pass over the plaintext, and
        // a file changed before the second is caught only at its end: chunks
        // sealed meanwhile must not have left this machine (see seal_tree).
        let early = match opts.sealing {
            Sealing::Convergent(_) => Vec::new(),
            Sealing::Random | Sealing::Public => self.early_targets(opts.replicas).await,
        };
        let tap = if early.is_empty() {
            None
        } else {
            let size = size_to_send(path, opts).await;
            progress.begin(&what(path, early.len()), size * early.len() as u64);
            Some(Tap::start(early, PUSH_TIMEOUT, progress.clone()))
        };
        let begun = tap.is_some();
        // A cut that failed drops the tap, which stops its pushes.
        let (tree, source, key) = self
            .chunk(path, opts, tap.as_ref().map(Tap::sender))
            .await?;
        let streamed = match tap {
            Some(tap) => tap.finish().await,
            None => Streamed::default(),
        };
        Ok(Cut {
            tree,
            source,
            key,
            streamed,
            begun,
        })
    }

    /// Seals (unless public) and cuts `path` into a tree: into the store
    /// when this node has one, else remembering where each chunk is to read
    /// it again; each chunk also goes to `tap` if there is one. Returns the
    /// key of a sealed tree.
    async fn chunk(
        &self,
        path: &Path,
        opts: &PutOptions,
        tap: Option<TapSender>,
    ) -> Result<(Tree, ChunkSource, Option<FileKey>), PutError> {
        let chunk_size = opts.chunk_size;
        let key = match opts.sealing {
            Sealing::Public => {
                let (tree, source) = self.chunk_plain(path, chunk_size, tap).await?;
                return Ok((tree, source, None));
            }
            Sealing::Random => KeyChoice::Random,
            Sealing::Convergent(secret) => KeyChoice::Convergent(secret),
        };
        let (path, pad) = (path.to_path_buf(), opts.pad);
        let task_failed = |e: tokio::task::JoinError| ChunkError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        };
        if let Some(store) = self.store.clone() {
            let s = store.clone();
            let sealed = tokio::task::spawn_blocking(move || {
                s.import_sealed_tapped(&path, chunk_size, key, pad, &mut |hash, data| {
                    if let Some(tap) = &tap {
                        tap.send(hash, data.into());
                    }
                })
            })
            .await
            .map_err(task_failed)??;
            return Ok((sealed.tree, ChunkSource::Store(store), Some(sealed.key)));
        }
        let (sealed, map) = tokio::task::spawn_blocking(move || {
            let mut map = HashMap::new();
            let sealed = seal_tree(&path, chunk_size, key, pad, &mut |hash, data, loc| {
                map.entry(hash).or_insert(loc);
                if let Some(tap) = &tap {
                    tap.send(hash, data.into());
                }
                Ok(())
            })?;
            Ok::<_, ChunkError>((sealed, map))
        })
        .await
        .map_err(task_failed)??;
        let source = ChunkSource::Sealed(Arc::new((Sealer::new(&sealed.key), map)));
        Ok((sealed.tree, source, Some(sealed.key)))
    }

    /// Cuts `path` into a plain tree (see [`Replication::chunk`]).
    async fn chunk_plain(
        &self,
        path: &Path,
        chunk_size: ChunkSize,
        tap: Option<TapSender>,
    ) -> Result<(Tree, ChunkSource), PutError> {
        let path = path.to_path_buf();
        let task_failed = |e: tokio::task::JoinError| ChunkError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        };
        if let Some(store) = self.store.clone() {
            let s = store.clone();
            let tree = tokio::task::spawn_blocking(move || {
                s.import_tapped(&path, chunk_size, &mut |hash, data| {
                    if let Some(tap) = &tap {
                        tap.send(hash, Bytes::copy_from_slice(data));
                    }
                })
            })
            .await
            .map_err(task_failed)??;
            return Ok((tree, ChunkSource::Store(store)));
        }
        let (tree, map) = tokio::task::spawn_blocking(move || {
            let mut map = HashMap::new();
            let tree = build_tree(&path, chunk_size, &mut |hash, data, loc| {
                map.entry(hash).or_insert(loc);
                if let Some(tap) = &tap {
                    tap.send(hash, Bytes::copy_from_slice(data));
                }
                Ok(())
            })?;
            Ok::<_, ChunkError>((tree, map))
        })
        .await
        .map_err(task_failed)??;
        Ok((tree, ChunkSource::Files(Arc::new(map))))
    }

    /// The nodes closest to the file id, closest first (if one fails, the
    /// next in line is tried), with why for those that did not answer the
    /// lookup; in a network too young for lookups, whoever is connected.
    async fn candidates(&self, root: Hash) -> Vec<Candidate> {
        let me = self.net.id();
        let closest: Vec<Candidate> = self
            .dht
            .closest_or_failed(root, crate::dht::K)
            .await
            .into_iter()
            .filter(|(c, _)| c.id != me)
            .collect();
        if closest.iter().any(|(_, failed)| failed.is_none()) {
            return closest;
        }
        let connected = self.net.connected_peers();
        if connected.is_empty() {
            return closest;
        }
        connected
            .into_iter()
            .map(|id| {
                let c = Contact {
                    id,
                    addrs: vec![],
                    relays: vec![],
                };
                (c, None)
            })
            .collect()
    }

    /// Targets known before the file id ([`super::stream`]): every other
    /// full node, when a lookup finds no more than `replicas`, all of which
    /// answered, and so has seen the whole network; none otherwise. Asks the
    /// network only when the routing table is that small.
    async fn early_targets(&self, replicas: usize) -> Vec<(NodeId, Connection)> {
        if replicas == 0 || self.dht.routing_table_len() > replicas {
            return Vec::new();
        }
        let found = self.candidates(Hash::from_bytes(rand::random())).await;
        // Fewer than k found, every one answered, and no more than the
        // copies wanted: they are the R closest to any id.
        let all_answered = found.iter().all(|(_, failed)| failed.is_none());
        if found.len() + 1 >= crate::dht::K || found.len() > replicas || !all_answered {
            return Vec::new();
        }
        let mut targets = Vec::new();
        for (c, _) in &found {
            if let Ok(conn) = self.connect(c).await {
                targets.push((c.id, conn));
            }
        }
        targets
    }

    /// Pushes the tree to candidates, in order, until `replicas` other nodes
    /// hold it or the candidates run out.
    async fn place(
        &self,
        push: &Push<'_>,
        candidates: Vec<Candidate>,
        replicas: usize,
        placement: &mut Placement,
    ) {
        let me = self.net.id();
        let mut next = candidates.into_iter();
        let mut tasks = JoinSet::new();
        loop {
            let acked = placement.holders.iter().filter(|h| h.id != me).count();
            while acked + tasks.len() < replicas {
                let Some((c, failed)) = next.next() else {
                    break;
                };
                if let Some(e) = failed {
                    // Asked a moment ago: its refusal or silence is the answer.
                    placement.failures.push((c.id, CopyError::Lookup(e)));
                    continue;
                }
                let Some(conn) = self.target(&c, placement).await else {
                    continue;
                };
                // What the tap counted for this target is not counted
                // again by a second pass to it.
                let (tree, source, progress) = (
                    push.tree.clone(),
                    push.source.clone(),
                    push.streamed.progress_for(&c.id, push.progress.clone()),
                );
                let (id, streamed) = (c.id, push.streamed.got_all(&c.id));
                tasks.spawn(async move {
                    if streamed {
                        // Its chunks went out while the file was cut.
                        match hold_pushed(&conn, &tree).await {
                            Ok(()) => return (id, Ok(()), true),
                            Err(e) => debug!(peer = %id.fmt_short(), "{e}: pushing it all"),
                        }
                    }
                    let r = push_tree(&conn, &tree, &source, progress.as_ref()).await;
                    (id, r, false)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let Ok((id, result, one_pass)) = joined else {
                continue;
            };
            match result {
                Ok(()) => {
                    placement.one_pass += usize::from(one_pass);
                    let (addrs, relays) = self
                        .net
                        .peers()
                        .into_iter()
                        .find(|p| p.id == id)
                        .map(|p| (p.addrs, p.relays))
                        .unwrap_or_default();
                    debug!(peer = %id.fmt_short(), file = %push.tree.root.fmt_short(), "replica stored");
                    placement.holders.push(PeerRecord { id, addrs, relays });
                }
                Err(e) => {
                    warn!(peer = %id.fmt_short(), "replica failed: {e}");
                    placement.failures.push((id, e.into()));
                }
            }
        }
    }

    /// The connection to a candidate, dialed if need be; a failed dial (or
    /// none to make) is recorded.
    async fn target(&self, c: &Contact, placement: &mut Placement) -> Option<Connection> {
        match self.connect(c).await {
            Ok(conn) => Some(conn),
            Err(ConnectError::Replaced(_)) => None,
            Err(e) => {
                placement.failures.push((c.id, e.into()));
                None
            }
        }
    }

    /// The connection to `c`, dialed if need be.
    async fn connect(&self, c: &Contact) -> Result<Connection, ConnectError> {
        if let Some(conn) = self.net.connection(&c.id) {
            return Ok(conn);
        }
        if c.addrs.is_empty() && c.relays.is_empty() {
            return Err(ConnectError::NoAddress(c.id));
        }
        let first = &c.addrs[..c.addrs.len().min(1)];
        self.net.connection_to(c.id, first, &c.relays).await
    }
}

/// A file cut for a put: its tree, where its chunks are read from, its key
/// if sealed, the targets that got every chunk meanwhile, and whether the
/// progress has begun.
struct Cut {
    tree: Tree,
    source: ChunkSource,
    key: Option<FileKey>,
    streamed: Streamed,
    begun: bool,
}

/// What [`Replication::place`] pushes: the tree, where its chunks are read
/// from, and the targets that got them while it was cut.
struct Push<'a> {
    tree: &'a Arc<Tree>,
    source: &'a ChunkSource,
    streamed: &'a Streamed,
    progress: &'a Arc<dyn Progress>,
}

/// The progress line of a put of `path` with `copies` copies.
fn what(path: &Path, copies: usize) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    format!(
        "{name}, {copies} cop{}",
        if copies == 1 { "y" } else { "ies" }
    )
}

/// Bytes a put of `path` sends per copy, for its progress before it has cut
/// the file: the files' bytes, or for an encrypted put, the sealed stream.
async fn size_to_send(path: &Path, opts: &PutOptions) -> u64 {
    let (path, opts) = (path.to_path_buf(), *opts);
    let len = tokio::task::spawn_blocking(move || local_size(&path))
        .await
        .unwrap_or(0);
    if opts.sealing == Sealing::Public {
        return len;
    }
    let stream = if opts.pad { sealed::padme(len) } else { len };
    let chunk = opts.chunk_size.for_len(stream).max(1);
    stream + stream.div_ceil(u64::from(chunk)) * sealed::TAG_LEN as u64
}

/// Bytes in the files at `path` (a file, or every file below a directory,
/// as a put cuts them).
fn local_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() || t.is_file()))
        .map(|e| local_size(&e.path()))
        .sum()
}

/// Pushes every manifest and chunk of `tree` to one peer (at most
/// [`PUSH_IN_FLIGHT`] chunks at a time), then asks it to hold the file.
pub async fn push_tree(
    conn: &Connection,
    tree: &Tree,
    source: &ChunkSource,
    progress: &dyn Progress,
) -> Result<(), PushTreeError> {
    // A peer that holds it already (a file put again) needs only the HOLD:
    // sending its pieces again would cost both sides, and count against
    // what this node may store there.
    if matches!(has(conn, tree.root, PUSH_TIMEOUT).await, Ok(true)) {
        progress.advance(tree.size);
        return hold_file(conn, tree.root, PUSH_TIMEOUT)
            .await
            .map_err(PushTreeError::Hold);
    }
    push_manifests(conn, tree).await?;
    push_chunks(conn, tree, source, progress).await?;
    hold_file(conn, tree.root, PUSH_TIMEOUT)
        .await
        .map_err(PushTreeError::Hold)
}

/// Pushes every manifest of `tree` and asks the peer to hold it: all a
/// peer needs that has its chunks already.
async fn hold_pushed(conn: &Connection, tree: &Tree) -> Result<(), PushTreeError> {
    push_manifests(conn, tree).await?;
    hold_file(conn, tree.root, PUSH_TIMEOUT)
        .await
        .map_err(PushTreeError::Hold)
}

/// Pushes every manifest of `tree`.
async fn push_manifests(conn: &Connection, tree: &Tree) -> Result<(), PushTreeError> {
    for (id, bytes) in &tree.manifests {
        push_manifest(conn, *id, Bytes::from(bytes.clone()), PUSH_TIMEOUT)
            .await
            .map_err(|source| PushTreeError::Manifest { id: *id, source })?;
    }
    Ok(())
}

/// Pushes every chunk of `tree`, stopping at the first failure.
async fn push_chunks(
    conn: &Connection,
    tree: &Tree,
    source: &ChunkSource,
    progress: &dyn Progress,
) -> Result<(), PushTreeError> {
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
            let data = tokio::task::spawn_blocking(move || source.read(&hash)).await??;
            let len = data.len() as u64;
            push_chunk(&conn, hash, Bytes::from(data), PUSH_TIMEOUT)
                .await
                .map_err(|source| PushTreeError::Chunk { hash, source })?;
            Ok::<u64, PushTreeError>(len)
        });
    }
    while let Some(done) = tasks.join_next().await {
        settle(done, progress, &mut first_error);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Counts a finished chunk push: progress on success, the first error kept.
fn settle(
    done: Result<Result<u64, PushTreeError>, tokio::task::JoinError>,
    progress: &dyn Progress,
    first_error: &mut Option<PushTreeError>,
) {
    match done {
        Ok(Ok(len)) => progress.advance(len),
        Ok(Err(e)) => {
            first_error.get_or_insert(e);
        }
        Err(e) => {
            first_error.get_or_insert(e.into());
        }
    }
}
