//! Transfers: one bidirectional stream per chunk or manifest.
//!
//! [`Transfers`], the service the node registers for GET, PUT, HOLD, HAS and PROVE,
//! answers the requests a peer opens ([`serve`]) from the node's [`Store`],
//! each within [`STREAM_DEADLINE`]; the client half ([`fetch_chunk`], [`push_chunk`], …) opens
//! the streams. Every byte that arrives is checked against its BLAKE3 name before
//! it is stored or handed back. Handlers are generic over the stream traits, so
//! they also run on in-memory pipes.

use std::sync::Arc;

use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{debug, info, warn};

pub mod allowance;
mod budget;
mod hold;

pub use allowance::{AllowancePolicy, Allowances};
pub use budget::{Account, BudgetPermit, ChunkBudget};

use crate::net::router::{RequestStream, ServeFuture};
use crate::net::Service;
use crate::observe::metrics::{IN, OUT};
use crate::observe::{Metrics, Observe};
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::manifest::{Manifest, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};
use crate::proto::wire::{
    ErrorCode, NackReason, Request, RequestKind, Response, MAX_CONTROL_FRAME,
};
use crate::proto::Hash;
use crate::store::{ChunkWriter, Possession, Store, StoreError, Stored};

/// Why fetching from a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The peer does not have it.
    #[error("not found")]
    NotFound,
    /// The peer sent bytes that do not match the hash: it lied or its disk is bad.
    #[error("peer sent bytes that hash to {actual}, not {expected}")]
    BadHash {
        /// What was asked for.
        expected: Hash,
        /// What the bytes hash to.
        actual: Hash,
    },
    /// The peer announced more bytes than any chunk or manifest can have.
    #[error("peer announced {len} bytes, limit {max}")]
    BadLength {
        /// Announced.
        len: u64,
        /// Allowed.
        max: u64,
    },
    /// The peer announced (or sent, hashing right) another size than the
    /// manifest gives: the manifest may be the one that is wrong.
    #[error("{actual} bytes where the manifest says {expected}")]
    WrongSize {
        /// The size the manifest gives.
        expected: u64,
        /// The size of the bytes that hash right.
        actual: u64,
    },
    /// The peer answered something that makes no sense here.
    #[error("unexpected answer {0:?}")]
    Unexpected(Response),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// No stream could be opened on the connection.
    #[error("cannot open a stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// The peer closed the stream without answering.
    #[error("the stream closed without an answer")]
    NoAnswer,
    /// The bytes announced did not all arrive.
    #[error("the bytes were cut off: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The answer did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl FetchError {
    /// Whether the peer proved dishonest (as opposed to slow or unlucky).
    pub fn is_lie(&self) -> bool {
        matches!(
            self,
            FetchError::BadHash { .. }
                | FetchError::BadLength { .. }
                | FetchError::Unexpected(_)
                | FetchError::Frame(FrameError::Wire(_))
        )
    }
}

/// Why pushing to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The peer refused.
    #[error("refused: {0}")]
    Nack(NackReason),
    /// The peer answered something else.
    #[error("unexpected answer {0:?}")]
    Unexpected(Response),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The request could not be made or its answer read.
    #[error(transparent)]
    Stream(FetchError),
    /// The answer did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Longest a peer may take over one transfer stream (a 16 MiB chunk at
/// 100 kB/s), after which the stream is dropped: a peer that stops reading or
/// writing must not pin a buffer (up to a chunk) and a stream forever.
pub const STREAM_DEADLINE: Duration = Duration::from_secs(180);

/// Chunk data moves between disk and peers in pieces of this size.
pub const PIECE: usize = 256 << 10;

/// Longest a peer may take to accept (GET) or send (PUT) one piece: a peer
/// that stops reading or writing loses the stream instead of pinning a
/// piece of the budget.
pub const PIECE_DEADLINE: Duration = Duration::from_secs(20);

/// Where HOLDs are agreed to and heard of: the node's DHT.
pub trait HoldListener: Send + Sync + 'static {
    /// `file` is held, complete, from now on.
    fn held(&self, file: Hash) -> ServeFuture;

    /// Whether this node is among the nodes closest to `file` by its own
    /// routing table, where the network keeps copies: only then does it
    /// agree to hold a file for a peer that is not a friend.
    fn close_to(&self, file: &Hash) -> bool;
}

/// The transfer service: serves chunks and manifests from the store, takes
/// them into it, and holds files. A node without a store (a client) finds
/// nothing and takes nothing.
pub struct Transfers {
    store: Option<Store>,
    on_hold: Option<Arc<dyn HoldListener>>,
    budget: ChunkBudget,
    allowances: Arc<Allowances>,
    observe: Observe,
}

/// What a handler knows of the stream it serves.
struct Ctx {
    store: Option<Store>,
    /// The peer's share of the chunk memory.
    account: Account,
    /// The peer as the allowances see it.
    uploader: allowance::Uploader,
    allowances: Arc<Allowances>,
    on_hold: Option<Arc<dyn HoldListener>>,
    metrics: Metrics,
}

impl Transfers {
    /// The requests this service answers.
    pub const KINDS: [RequestKind; 7] = [
        RequestKind::GetChunk,
        RequestKind::PutChunk,
        RequestKind::GetManifest,
        RequestKind::PutManifest,
        RequestKind::Hold,
        RequestKind::Has,
        RequestKind::Prove,
    ];

    /// Serves from `store`, holding at most `budget` bytes of chunk data
    /// in memory for peers and storing for each within `allowances`;
    /// `on_hold` agrees to HOLDs and hears of every file held anew; what
    /// it serves and takes is counted in `observe`.
    pub fn new(
        store: Option<Store>,
        on_hold: Option<Arc<dyn HoldListener>>,
        budget: ChunkBudget,
        allowances: Allowances,
        observe: Observe,
    ) -> Self {
        Transfers {
            store,
            on_hold,
            budget,
            allowances: Arc::new(allowances),
            observe,
        }
    }
}

impl Service for Transfers {
    fn serve(&self, stream: RequestStream) -> ServeFuture {
        let ip = stream.conn.remote_address().ip();
        let ctx = Ctx {
            store: self.store.clone(),
            account: self.budget.account(stream.peer, ip),
            uploader: self.allowances.uploader(stream.peer, ip),
            allowances: self.allowances.clone(),
            on_hold: self.on_hold.clone(),
            metrics: self.observe.metrics.clone(),
        };
        let journal = self.observe.journal.clone();
        Box::pin(async move {
            let served = serve(&ctx, stream.request, stream.send, stream.recv);
            let newly_held = match tokio::time::timeout(STREAM_DEADLINE, served).await {
                Ok(newly_held) => newly_held,
                Err(_) => {
                    debug!("transfer stream took too long: dropped");
                    None
                }
            };
            // Only a HOLD that made the file held anew is news.
            if let Some(id) = newly_held {
                let peer = ctx.uploader.source.id.fmt_short();
                info!(file = %id.fmt_short(), %peer, "[STORED] a copy is held here now");
                journal.record(
                    "stored",
                    format!("a copy of {} is held here now, for {peer}", id.fmt_short()),
                );
            }
            if let (Some(id), Some(on_hold)) = (newly_held, ctx.on_hold) {
                on_hold.held(id).await;
            }
        })
    }
}

/// Serves one request on a stream whose first frame was `request`; returns
/// the file a HOLD made held anew.
///
/// The store is `None` on clients: GETs find nothing and PUTs are refused.
async fn serve(
    ctx: &Ctx,
    request: Request,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Option<Hash> {
    let store = ctx.store.clone();
    let budget = &ctx.account;
    let mut newly_held = None;
    let kind = request.kind().label();
    // Refusals are counted by kind and reason.
    let answer = |resp: Response| {
        if let Response::Nack(reason) = &resp {
            ctx.metrics.error(kind, reason);
        }
        resp
    };
    let result = match request {
        Request::GetChunk { hash } => match send_chunk(store, budget, hash, &mut send).await {
            Ok(Some(len)) => {
                ctx.metrics.chunk(&OUT, len);
                Ok(())
            }
            other => other.map(|_| ()),
        },
        Request::GetManifest { id } => send_manifest(store, budget, id, &mut send).await,
        Request::Has { id } => {
            let resp = answer_has(store, id).await;
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::Prove {
            id,
            piece,
            offset,
            len,
            nonce,
        } => {
            let resp = answer_proof(store, id, piece, offset, len, nonce).await;
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::PutChunk { hash, len } => {
            let resp = answer(receive_chunk(ctx, hash, len, &mut recv).await);
            if resp == Response::Ack {
                ctx.metrics.chunk(&IN, u64::from(len));
            }
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::PutManifest { id, len } => {
            let resp = answer(receive_manifest(ctx, id, len, &mut recv).await);
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::Hold { id } => {
            let (resp, anew) = hold::hold(ctx, id).await;
            let resp = answer(resp);
            newly_held = anew.then_some(id);
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        _ => {
            // Not a transfer: the node routes these elsewhere.
            write_frame(
                &mut send,
                &Response::Nack(NackReason::NotAccepted),
                MAX_CONTROL_FRAME,
            )
            .await
        }
    };
    if let Err(e) = result {
        debug!("transfer stream ended early: {e}");
        return newly_held;
    }
    let _ = send.finish();
    newly_held
}

/// Serves a manifest from the store, counted against the budget while it
/// is in memory (a manifest may be 16 MiB).
async fn send_manifest(
    store: Option<Store>,
    budget: &Account,
    id: Hash,
    send: &mut quinn::SendStream,
) -> Result<(), FrameError> {
    let data = match &store {
        Some(s) => blocking(s.clone(), move |s| s.manifest_bytes(&id)).await,
        None => Ok(None),
    };
    let _permit = match &data {
        Ok(Some(bytes)) => Some(budget.take(bytes.len()).await),
        _ => None,
    };
    send_found(send, data).await
}

/// The answer to a HAS: found (length 0) if the file is held and complete.
async fn answer_has(store: Option<Store>, id: Hash) -> Response {
    let held = match &store {
        Some(s) => blocking(s.clone(), move |s| s.holds(&id)).await,
        None => Ok(false),
    };
    match held {
        Ok(true) => Response::Found { len: 0 },
        Ok(false) => Response::NotFound,
        Err(e) => {
            warn!("store: {e}");
            Response::NotFound
        }
    }
}

/// The answer to a PROVE: the keyed hash of the range from the store, or
/// why there is none. The chunk read goes through `spawn_blocking`; the
/// range is at most [`MAX_PROOF_LEN`](crate::proto::wire::MAX_PROOF_LEN) bytes and the pieces read to reach it
/// are small.
async fn answer_proof(
    store: Option<Store>,
    id: Hash,
    piece: Hash,
    offset: u32,
    len: u32,
    nonce: [u8; 32],
) -> Response {
    let Some(store) = store else {
        return Response::NotFound;
    };
    match blocking(store, move |s| s.prove(&id, &piece, offset, len, &nonce)).await {
        Ok(Possession::Proof(p)) => Response::Proof(p),
        Ok(Possession::NotHeld) => Response::NotFound,
        Ok(Possession::OutOfRange) => Response::Nack(NackReason::TooLarge),
        Err(e) => {
            warn!("store: {e}");
            Response::NotFound
        }
    }
}

async fn blocking<T: Send + 'static>(
    store: Store,
    f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(move || f(store))
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
}

async fn send_found(
    send: &mut quinn::SendStream,
    data: Result<Option<Vec<u8>>, StoreError>,
) -> Result<(), FrameError> {
    match data {
        Ok(Some(bytes)) => {
            write_frame(
                send,
                &Response::Found {
                    len: bytes.len() as u64,
                },
                MAX_CONTROL_FRAME,
            )
            .await?;
            // Hand the buffer to quinn as it is: no copy.
            send.write_chunk(Bytes::from(bytes))
                .await
                .map_err(|e| FrameError::Io(e.into()))?;
            Ok(())
        }
        Ok(None) => write_frame(send, &Response::NotFound, MAX_CONTROL_FRAME).await,
        Err(e) => {
            warn!("store: {e}");
            write_frame(send, &Response::NotFound, MAX_CONTROL_FRAME).await
        }
    }
}

/// Takes a chunk a peer puts, within its allowance and the quota, piece by
/// piece, verified before it is stored. The bytes of a chunk already stored
/// are read and verified too before it counts as new again for the garbage
/// grace period: a header alone refreshes nothing.
async fn receive_chunk(ctx: &Ctx, hash: Hash, len: u32, recv: &mut quinn::RecvStream) -> Response {
    let Some(store) = ctx.store.clone() else {
        return Response::Nack(NackReason::NotAccepted);
    };
    if len > MAX_CHUNK_SIZE {
        return Response::Nack(NackReason::TooLarge);
    }
    if let Err(e) = ctx.allowances.admit(&store, &ctx.uploader, u64::from(len)) {
        debug!("PUT refused: {e}");
        return Response::Nack(NackReason::OverAllowance);
    }
    if store.has_chunk(&hash) {
        return receive_again(&store, &ctx.account, hash, len, recv).await;
    }
    if !store.fits(u64::from(len)) {
        return Response::Nack(NackReason::OverQuota);
    }
    let begun = blocking(store.clone(), move |s| s.begin_chunk(&hash, u64::from(len))).await;
    let writer = match begun {
        Ok(Some(writer)) => writer,
        Ok(None) => return receive_again(&store, &ctx.account, hash, len, recv).await,
        Err(e) => return store_refusal(e),
    };
    match receive_pieces(writer, &ctx.account, recv).await {
        Ok(_) => Response::Ack,
        Err(Received::Cut(e)) => {
            debug!("chunk upload cut short: {e}");
            Response::Nack(NackReason::TooLarge)
        }
        Err(Received::Store(e)) => store_refusal(e),
    }
}

/// Reads and verifies the bytes of a chunk put again, then counts the
/// stored copy as new for the garbage grace period.
async fn receive_again(
    store: &Store,
    budget: &Account,
    hash: Hash,
    len: u32,
    recv: &mut quinn::RecvStream,
) -> Response {
    let mut hasher = blake3::Hasher::new();
    let mut left = len as usize;
    while left > 0 {
        let want = left.min(PIECE);
        let _permit = budget.take(want).await;
        let read = tokio::time::timeout(PIECE_DEADLINE, recv.read_chunk(want, true)).await;
        let piece = match read {
            Ok(Ok(Some(chunk))) => chunk.bytes,
            _ => return Response::Nack(NackReason::TooLarge),
        };
        if piece.is_empty() || piece.len() > left {
            return Response::Nack(NackReason::TooLarge);
        }
        hasher.update(&piece);
        left -= piece.len();
    }
    let actual = Hash::from_bytes(*hasher.finalize().as_bytes());
    if actual != hash {
        warn!(expected = %hash, %actual, "peer put again a chunk that fails verification");
        return Response::Nack(NackReason::BadHash);
    }
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.touch_chunk(&hash)).await {
        Ok(true) => Response::Ack,
        // Collected meanwhile: the putter tries again.
        _ => Response::Nack(NackReason::Incomplete),
    }
}

/// Why receiving a chunk's bytes stopped.
enum Received {
    /// The stream ended or stalled before every byte came.
    Cut(String),
    /// The store refused them (bad hash, disk).
    Store(StoreError),
}

/// Reads a chunk's bytes piece by piece into `writer` (one piece in memory,
/// counted against `budget`), then verifies and publishes it. Each piece is
/// gathered whole before it goes to the disk: quinn hands over a packet's
/// worth at a time, and a blocking call per packet cost more in thread
/// switches than the disk did.
async fn receive_pieces(
    mut writer: ChunkWriter,
    budget: &Account,
    recv: &mut quinn::RecvStream,
) -> Result<Stored, Received> {
    loop {
        let want = writer.left().min(PIECE as u64) as usize;
        let _permit = budget.take(want).await;
        let piece = read_piece(recv, want).await?;
        let done = tokio::task::spawn_blocking(move || {
            writer.write(&piece)?;
            if writer.left() > 0 {
                Ok(Err(writer))
            } else {
                writer.finish().map(Ok)
            }
        })
        .await
        .map_err(|e| Received::Cut(format!("store task failed: {e}")))?
        .map_err(Received::Store)?;
        match done {
            Ok(stored) => return Ok(stored),
            Err(w) => writer = w,
        }
    }
}

/// Reads the next `len` bytes of a stream, each read within
/// [`PIECE_DEADLINE`].
async fn read_piece(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, Received> {
    let mut piece = Vec::with_capacity(len);
    while piece.len() < len {
        let read =
            tokio::time::timeout(PIECE_DEADLINE, recv.read_chunk(len - piece.len(), true)).await;
        match read {
            Ok(Ok(Some(chunk))) => piece.extend_from_slice(&chunk.bytes),
            Ok(Ok(None)) => return Err(Received::Cut("the stream ended".into())),
            Ok(Err(e)) => return Err(Received::Cut(e.to_string())),
            Err(_) => return Err(Received::Cut("no bytes for too long".into())),
        }
    }
    Ok(piece)
}

/// The answer to a PUT the store refused.
fn store_refusal(e: StoreError) -> Response {
    match e {
        StoreError::BadHash { expected, actual } => {
            warn!(%expected, %actual, "peer uploaded a chunk that fails verification");
            Response::Nack(NackReason::BadHash)
        }
        StoreError::OverQuota { .. } => Response::Nack(NackReason::OverQuota),
        StoreError::TooLarge { .. } => Response::Nack(NackReason::TooLarge),
        e => {
            warn!("store: {e}");
            Response::Nack(NackReason::Internal)
        }
    }
}

/// Serves a chunk from disk piece by piece: one piece in memory at a time,
/// counted against `budget`, each handed to quinn within [`PIECE_DEADLINE`].
/// The last piece is sent only once the whole chunk hashed right (or was
/// verified in the last minutes: [`Store::read_chunk`]); a chunk that fails
/// is deleted and the stream reset, so the asker goes to another holder
/// without blaming this one.
async fn send_chunk(
    store: Option<Store>,
    budget: &Account,
    hash: Hash,
    send: &mut quinn::SendStream,
) -> Result<Option<u64>, FrameError> {
    let opened = match &store {
        Some(s) => blocking(s.clone(), move |s| s.open_chunk(&hash)).await,
        None => Ok(None),
    };
    let mut reader = match opened {
        Ok(Some(reader)) => reader,
        Ok(None) => {
            return write_frame(send, &Response::NotFound, MAX_CONTROL_FRAME)
                .await
                .map(|()| None)
        }
        Err(e) => {
            warn!("store: {e}");
            return write_frame(send, &Response::NotFound, MAX_CONTROL_FRAME)
                .await
                .map(|()| None);
        }
    };
    let len = reader.len();
    write_frame(send, &Response::Found { len }, MAX_CONTROL_FRAME).await?;
    loop {
        let want = reader.left().min(PIECE as u64) as usize;
        let permit = budget.take(want).await;
        // The last piece is read and the chunk verified in one blocking
        // call, and the piece is only sent if the chunk is good.
        let (next, piece) = tokio::task::spawn_blocking(move || {
            let piece = reader.read_piece(want);
            if reader.left() > 0 {
                (Some(reader), piece.map(Some))
            } else {
                let verified = piece.is_ok() && reader.verify();
                (None, piece.map(|p| verified.then_some(p)))
            }
        })
        .await
        .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
        let piece = piece.map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
        let Some(piece) = piece else {
            let _ = send.reset(ErrorCode::Internal.var_int());
            return Err(FrameError::Io(std::io::Error::other(format!(
                "stored chunk {hash} failed verification"
            ))));
        };
        write_piece(send, piece, permit).await?;
        match next {
            Some(r) => reader = r,
            None => return Ok(Some(len)),
        }
    }
}

/// Hands one piece to quinn: it waits for the peer's flow control, at most
/// [`PIECE_DEADLINE`]; the budget is given back once quinn holds the bytes
/// (bounded by the connection's send window from then on).
async fn write_piece(
    send: &mut quinn::SendStream,
    piece: Vec<u8>,
    permit: BudgetPermit,
) -> Result<(), FrameError> {
    let written = tokio::time::timeout(PIECE_DEADLINE, send.write_chunk(Bytes::from(piece))).await;
    drop(permit);
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(FrameError::Io(e.into())),
        Err(_) => {
            let _ = send.reset(ErrorCode::Timeout.var_int());
            Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer stopped reading",
            )))
        }
    }
}

/// Takes a manifest a peer puts, within its allowance, verified and
/// validated before it is stored. One already stored is read and checked
/// too before it counts as new again.
async fn receive_manifest<R: AsyncRead + Unpin>(
    ctx: &Ctx,
    id: Hash,
    len: u32,
    recv: &mut R,
) -> Response {
    let Some(store) = ctx.store.clone() else {
        return Response::Nack(NackReason::NotAccepted);
    };
    if len as usize > MAX_MANIFEST_SIZE {
        return Response::Nack(NackReason::TooLarge);
    }
    if let Err(e) = ctx.allowances.admit(&store, &ctx.uploader, u64::from(len)) {
        debug!("PUT refused: {e}");
        return Response::Nack(NackReason::OverAllowance);
    }
    let _permit = ctx.account.take(len as usize).await;
    let mut data = vec![0u8; len as usize];
    let read = tokio::time::timeout(PIECE_DEADLINE, recv.read_exact(&mut data)).await;
    if !matches!(read, Ok(Ok(_))) {
        return Response::Nack(NackReason::TooLarge);
    }
    if Hash::of(&data) != id {
        warn!(%id, "peer uploaded a manifest that fails verification");
        return Response::Nack(NackReason::BadHash);
    }
    match blocking(store, move |s| s.put_manifest(&data)).await {
        Ok(_) => Response::Ack,
        Err(StoreError::BadManifest(e)) => {
            debug!("invalid manifest: {e}");
            Response::Nack(NackReason::BadManifest)
        }
        Err(e) => {
            warn!("store: {e}");
            Response::Nack(NackReason::Internal)
        }
    }
}

/// Sends `request` on a new stream and reads the response frame; while the
/// peer refuses the stream as over its request rate, asks again after a
/// pause (a `--public` tree of many files is a request per file and per
/// manifest, faster than a node admits from one peer).
///
/// Refused requests to one peer take turns ([`retry_turn`]): the one whose
/// turn it is asks again after its pause, the others wait behind it. Each
/// asking on its own, the many requests of one get (16 manifests, 16 files
/// of 4 workers) came back as a storm of refusals, and a node closes the
/// connection of a peer that goes far beyond its rate.
async fn request(
    conn: &Connection,
    request: &Request,
    body: Option<Bytes>,
) -> Result<(Response, quinn::RecvStream), FetchError> {
    match request_once(conn, request, body.clone()).await {
        Err(e) if is_rate_limited(&e) => {}
        other => return other,
    }
    let turn = retry_turn(conn);
    let _turn = turn.lock().await;
    // Whoever had the turn before may have waited for the bucket already.
    let mut pause = Duration::ZERO;
    loop {
        // At a random point of the pause, so that peers refused together
        // do not come back together. The caller's timeout bounds the whole.
        tokio::time::sleep(pause.mul_f64(rand::random_range(0.5..1.0))).await;
        match request_once(conn, request, body.clone()).await {
            Err(e) if is_rate_limited(&e) => {
                pause = (pause * 2).clamp(RATE_LIMITED_PAUSE, RATE_LIMITED_PAUSE_MAX);
            }
            other => return other,
        }
    }
}

/// The lock refused requests to the peer of `conn` take turns on.
fn retry_turn(conn: &Connection) -> Arc<tokio::sync::Mutex<()>> {
    use std::sync::{Mutex, OnceLock, Weak};
    type Turns = Mutex<std::collections::HashMap<usize, Weak<tokio::sync::Mutex<()>>>>;
    static TURNS: OnceLock<Turns> = OnceLock::new();
    let mut turns = TURNS
        .get_or_init(Turns::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(turn) = turns.get(&conn.stable_id()).and_then(Weak::upgrade) {
        return turn;
    }
    // Connections with no request waiting are forgotten.
    turns.retain(|_, t| t.strong_count() > 0);
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    turns.insert(conn.stable_id(), Arc::downgrade(&turn));
    turn
}

/// The first and the longest pause before asking again a peer that refused
/// a request stream as over its rate ([`ErrorCode::RateLimited`]).
const RATE_LIMITED_PAUSE: Duration = Duration::from_millis(50);
const RATE_LIMITED_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Whether the peer refused the request stream as over its rate: it resets
/// or stops the stream with [`ErrorCode::RateLimited`] before reading it.
fn is_rate_limited(e: &FetchError) -> bool {
    let code = ErrorCode::RateLimited.var_int();
    let io = match e {
        FetchError::Frame(FrameError::Io(io)) => io,
        FetchError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c))) => {
            return *c == code
        }
        _ => return false,
    };
    let inner = io.get_ref();
    inner
        .and_then(|i| i.downcast_ref::<quinn::ReadError>())
        .is_some_and(|r| matches!(r, quinn::ReadError::Reset(c) if *c == code))
        || inner
            .and_then(|i| i.downcast_ref::<quinn::WriteError>())
            .is_some_and(|w| matches!(w, quinn::WriteError::Stopped(c) if *c == code))
}

/// One try of [`request`].
async fn request_once(
    conn: &Connection,
    request: &Request,
    body: Option<Bytes>,
) -> Result<(Response, quinn::RecvStream), FetchError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, request, MAX_CONTROL_FRAME).await?;
    if let Some(body) = body {
        // The receiver may answer early and stop the stream (already stored, over
        // quota): the answer below says what happened.
        let _ = send.write_chunk(body).await;
    }
    let _ = send.finish();
    let resp = read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
        .await?
        .ok_or(FetchError::NoAnswer)?;
    Ok((resp, recv))
}

/// Fetches the bytes named `name` and verifies them. `max` is the hard cap
/// for the kind (a chunk, a manifest): more than that is a lie. `expected`,
/// if known, is the size a manifest gives: more than that is not read (memory
/// stays bounded by what was asked for) and fewer is read and hashed, so that
/// bytes hashing right but of the wrong size blame the manifest, not the peer.
async fn fetch_raw(
    conn: &Connection,
    req: Request,
    name: Hash,
    expected: Option<u64>,
    max: u64,
    buf: Vec<u8>,
) -> Result<Vec<u8>, FetchError> {
    let (resp, mut recv) = request(conn, &req, None).await?;
    let len = match resp {
        Response::Found { len } => len,
        Response::NotFound => return Err(FetchError::NotFound),
        other => return Err(FetchError::Unexpected(other)),
    };
    if len > max {
        // Nothing this big exists: a lie, and possibly an endless stream.
        let _ = recv.stop(ErrorCode::FrameTooLarge.var_int());
        return Err(FetchError::BadLength { len, max });
    }
    if let Some(e) = expected.filter(|e| len > *e) {
        let _ = recv.stop(ErrorCode::FrameTooLarge.var_int());
        return Err(FetchError::WrongSize {
            expected: e,
            actual: len,
        });
    }
    let data = read_hashed(&mut recv, len as usize, name, buf).await?;
    if let Some(e) = expected.filter(|e| *e != data.len() as u64) {
        return Err(FetchError::WrongSize {
            expected: e,
            actual: data.len() as u64,
        });
    }
    Ok(data)
}

/// Hashed as it arrives, in steps this large (a whole number of BLAKE3's
/// 1 KiB chunks, enough for its widest SIMD batch): short enough to run on
/// the async threads, long enough to hash at full speed.
const HASH_STEP: usize = 64 << 10;

/// Reads the `len` bytes of a body into `buf` (emptied first; a buffer
/// reused saves zeroing and page faults) and checks that they hash to
/// `name`, hashing as they arrive.
async fn read_hashed(
    recv: &mut quinn::RecvStream,
    len: usize,
    name: Hash,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, FetchError> {
    buf.clear();
    buf.reserve_exact(len);
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0;
    while buf.len() < len {
        let piece = recv
            .read_chunk(len - buf.len(), true)
            .await
            .map_err(|e| FetchError::Read(quinn::ReadExactError::ReadError(e)))?
            .ok_or(FetchError::Read(quinn::ReadExactError::FinishedEarly(
                buf.len(),
            )))?;
        buf.extend_from_slice(&piece.bytes);
        let upto = hashed + (buf.len() - hashed) / HASH_STEP * HASH_STEP;
        if upto > hashed {
            hasher.update(&buf[hashed..upto]);
            hashed = upto;
        }
    }
    hasher.update(&buf[hashed..]);
    let actual = Hash::from(hasher.finalize());
    if actual != name {
        return Err(FetchError::BadHash {
            expected: name,
            actual,
        });
    }
    Ok(buf)
}

/// Fetches and verifies one chunk that should be `len` bytes.
///
/// Bytes that do not hash to `hash` are [`FetchError::BadHash`] (the peer
/// lied); more than any chunk can be is [`FetchError::BadLength`] (a lie);
/// another size than `len` is [`FetchError::WrongSize`]: either the manifest
/// that gave `len` is wrong or the peer is, and only the hash could tell, so
/// it blames no one.
///
/// The bytes go into `buf`, a buffer to reuse (its contents are dropped;
/// `Vec::new()` for none).
pub async fn fetch_chunk(
    conn: &Connection,
    hash: Hash,
    len: u64,
    timeout: Duration,
    buf: Vec<u8>,
) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(
        timeout,
        fetch_raw(
            conn,
            Request::GetChunk { hash },
            hash,
            Some(len),
            u64::from(MAX_CHUNK_SIZE),
            buf,
        ),
    )
    .await
    .map_err(|_| FetchError::Timeout)?
}

/// Fetches and verifies a manifest.
pub async fn fetch_manifest(
    conn: &Connection,
    id: Hash,
    timeout: Duration,
) -> Result<(Vec<u8>, Manifest), FetchError> {
    let bytes = tokio::time::timeout(
        timeout,
        fetch_raw(
            conn,
            Request::GetManifest { id },
            id,
            None,
            MAX_MANIFEST_SIZE as u64,
            Vec::new(),
        ),
    )
    .await
    .map_err(|_| FetchError::Timeout)??;
    let m = Manifest::decode(&bytes).map_err(|e| FetchError::Frame(FrameError::Wire(e)))?;
    Ok((bytes, m))
}

/// Asks whether the peer holds `id`.
pub async fn has(conn: &Connection, id: Hash, timeout: Duration) -> Result<bool, FetchError> {
    let (resp, _) = tokio::time::timeout(timeout, request(conn, &Request::Has { id }, None))
        .await
        .map_err(|_| FetchError::Timeout)??;
    match resp {
        Response::Found { .. } => Ok(true),
        Response::NotFound => Ok(false),
        other => Err(FetchError::Unexpected(other)),
    }
}

/// A challenge for [`prove`]: which bytes of which file to hash, and the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The file id.
    pub id: Hash,
    /// A chunk or manifest of the file.
    pub piece: Hash,
    /// Where the range starts in the piece.
    pub offset: u32,
    /// Its length, at most [`MAX_PROOF_LEN`](crate::proto::wire::MAX_PROOF_LEN).
    pub len: u32,
    /// The key of the keyed hash.
    pub nonce: [u8; 32],
}

/// Asks the peer to prove it holds a file: its answer to `challenge`, which
/// the caller compares with its own. [`FetchError::NotFound`] if the peer
/// says it does not hold the file; any other answer than a proof or a
/// refusal is [`FetchError::Unexpected`].
pub async fn prove(
    conn: &Connection,
    challenge: Challenge,
    timeout: Duration,
) -> Result<Possession, FetchError> {
    let Challenge {
        id,
        piece,
        offset,
        len,
        nonce,
    } = challenge;
    let req = Request::Prove {
        id,
        piece,
        offset,
        len,
        nonce,
    };
    let (resp, _) = tokio::time::timeout(timeout, request(conn, &req, None))
        .await
        .map_err(|_| FetchError::Timeout)??;
    match resp {
        Response::Proof(p) => Ok(Possession::Proof(p)),
        Response::NotFound => Ok(Possession::NotHeld),
        Response::Nack(NackReason::TooLarge) => Ok(Possession::OutOfRange),
        other => Err(FetchError::Unexpected(other)),
    }
}

async fn push(
    conn: &Connection,
    req: Request,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<(), PushError> {
    let result = tokio::time::timeout(timeout, request(conn, &req, body))
        .await
        .map_err(|_| PushError::Timeout)?;
    match result {
        Ok((Response::Ack, _)) => Ok(()),
        Ok((Response::Nack(r), _)) => Err(PushError::Nack(r)),
        Ok((other, _)) => Err(PushError::Unexpected(other)),
        Err(FetchError::Frame(e)) => Err(PushError::Frame(e)),
        Err(e) => Err(PushError::Stream(e)),
    }
}

/// Offers a chunk; Ok once the peer verified and stored it.
pub async fn push_chunk(
    conn: &Connection,
    hash: Hash,
    data: Bytes,
    timeout: Duration,
) -> Result<(), PushError> {
    let len = u32::try_from(data.len()).map_err(|_| PushError::Nack(NackReason::TooLarge))?;
    push(conn, Request::PutChunk { hash, len }, Some(data), timeout).await
}

/// Offers a manifest; Ok once the peer verified and stored it.
pub async fn push_manifest(
    conn: &Connection,
    id: Hash,
    bytes: Bytes,
    timeout: Duration,
) -> Result<(), PushError> {
    let len = u32::try_from(bytes.len()).map_err(|_| PushError::Nack(NackReason::TooLarge))?;
    push(conn, Request::PutManifest { id, len }, Some(bytes), timeout).await
}

/// Asks the peer to hold `id`; Ok once it has every piece and recorded it.
pub async fn hold_file(conn: &Connection, id: Hash, timeout: Duration) -> Result<(), PushError> {
    push(conn, Request::Hold { id }, None, timeout).await
}
