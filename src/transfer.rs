//! Transfers: one bidirectional stream per chunk or manifest.
//!
//! [`Transfers`], the service the node registers for GET, PUT, HOLD and HAS,
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
use tracing::{debug, warn};

use crate::net::router::{RequestStream, ServeFuture};
use crate::net::Service;
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::manifest::{Manifest, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};
use crate::proto::wire::{
    ErrorCode, NackReason, Request, RequestKind, Response, MAX_CONTROL_FRAME,
};
use crate::proto::Hash;
use crate::store::{Store, StoreError};

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
    /// Hashing what arrived failed (the hashing task was lost).
    #[error("hashing failed: {0}")]
    Hashing(#[from] tokio::task::JoinError),
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

/// Hears that this node now holds a file a peer asked it to hold.
pub trait HoldListener: Send + Sync + 'static {
    /// `file` is held, complete, from now on.
    fn held(&self, file: Hash) -> ServeFuture;
}

/// The transfer service: serves chunks and manifests from the store, takes
/// them into it, and holds files. A node without a store (a client) finds
/// nothing and takes nothing.
pub struct Transfers {
    store: Option<Store>,
    on_hold: Option<Arc<dyn HoldListener>>,
}

impl Transfers {
    /// The requests this service answers.
    pub const KINDS: [RequestKind; 6] = [
        RequestKind::GetChunk,
        RequestKind::PutChunk,
        RequestKind::GetManifest,
        RequestKind::PutManifest,
        RequestKind::Hold,
        RequestKind::Has,
    ];

    /// Serves from `store`; `on_hold` hears of every file held anew.
    pub fn new(store: Option<Store>, on_hold: Option<Arc<dyn HoldListener>>) -> Self {
        Transfers { store, on_hold }
    }
}

impl Service for Transfers {
    fn serve(&self, stream: RequestStream) -> ServeFuture {
        let store = self.store.clone();
        let on_hold = self.on_hold.clone();
        Box::pin(async move {
            let held = match &stream.request {
                Request::Hold { id } => Some(*id),
                _ => None,
            };
            let served = serve(store.clone(), stream.request, stream.send, stream.recv);
            if tokio::time::timeout(STREAM_DEADLINE, served).await.is_err() {
                debug!("transfer stream took too long: dropped");
            }
            if let (Some(id), Some(store), Some(on_hold)) = (held, store, on_hold) {
                if store.holds(&id).unwrap_or(false) {
                    on_hold.held(id).await;
                }
            }
        })
    }
}

/// Serves one request on a stream whose first frame was `request`.
///
/// `store` is `None` on clients: GETs find nothing and PUTs are refused.
pub async fn serve(
    store: Option<Store>,
    request: Request,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match request {
        Request::GetChunk { hash } => {
            // `read_chunk` hashes what it read: a chunk that fails is deleted
            // and answered NOT_FOUND, so the asker goes to another holder.
            let data = match &store {
                Some(s) => blocking(s.clone(), move |s| s.read_chunk(&hash)).await,
                None => Ok(None),
            };
            send_found(&mut send, data).await
        }
        Request::GetManifest { id } => {
            let data = match &store {
                Some(s) => blocking(s.clone(), move |s| s.manifest_bytes(&id)).await,
                None => Ok(None),
            };
            send_found(&mut send, data).await
        }
        Request::Has { id } => {
            let held = match &store {
                Some(s) => blocking(s.clone(), move |s| s.holds(&id)).await,
                None => Ok(false),
            };
            let resp = match held {
                Ok(true) => Response::Found { len: 0 },
                Ok(false) => Response::NotFound,
                Err(e) => {
                    warn!("store: {e}");
                    Response::NotFound
                }
            };
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::PutChunk { hash, len } => {
            let resp = receive_chunk(store, hash, len, &mut recv).await;
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::PutManifest { id, len } => {
            let resp = receive_manifest(store, id, len, &mut recv).await;
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::Hold { id } => {
            let resp = match store {
                None => Response::Nack(NackReason::NotAccepted),
                Some(s) => blocking(s, move |s| hold(&s, &id))
                    .await
                    .unwrap_or_else(|e| {
                        warn!("store: {e}");
                        Response::Nack(NackReason::Internal)
                    }),
            };
            write_frame(&mut send, &resp, MAX_CONTROL_FRAME).await
        }
        Request::Join(_) | Request::Dht(_) => {
            // The node routes these elsewhere.
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
        return;
    }
    let _ = send.finish();
}

/// Answers HOLD: ACK once every piece of the file or tree `id` is stored and
/// it is recorded as held; NACK `Incomplete` while a piece is missing, and
/// `TooLarge` for a tree past the limits of [`crate::proto::tree`] (which no
/// getter would accept).
fn hold(store: &Store, id: &Hash) -> Result<Response, StoreError> {
    let stats = match store.checked_tree(id) {
        Ok(Some(tree)) => tree.stats,
        Ok(None) => return Ok(Response::Nack(NackReason::Incomplete)),
        Err(e @ StoreError::Tree { .. }) => {
            debug!("HOLD refused: {e}");
            return Ok(Response::Nack(NackReason::TooLarge));
        }
        Err(e) => return Err(e),
    };
    if !store.missing_chunks(id)?.is_some_and(|m| m.is_empty()) {
        return Ok(Response::Nack(NackReason::Incomplete));
    }
    let Some(m) = store.manifest(id)? else {
        return Ok(Response::Nack(NackReason::Incomplete));
    };
    let complete = store.add_file(
        id,
        &crate::store::FileRecord {
            name: m.name().to_string(),
            size: stats.size,
            is_dir: matches!(m, Manifest::Dir(_)),
        },
    )?;
    Ok(if complete {
        Response::Ack
    } else {
        Response::Nack(NackReason::Incomplete)
    })
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

async fn receive_chunk<R: AsyncRead + Unpin>(
    store: Option<Store>,
    hash: Hash,
    len: u32,
    recv: &mut R,
) -> Response {
    let Some(store) = store else {
        return Response::Nack(NackReason::NotAccepted);
    };
    if len > MAX_CHUNK_SIZE {
        return Response::Nack(NackReason::TooLarge);
    }
    if store.touch_chunk(&hash) {
        return Response::Ack;
    }
    if !store.fits(u64::from(len)) {
        return Response::Nack(NackReason::OverQuota);
    }
    let mut data = vec![0u8; len as usize];
    if let Err(e) = recv.read_exact(&mut data).await {
        debug!("chunk upload cut short: {e}");
        return Response::Nack(NackReason::TooLarge);
    }
    match blocking(store, move |s| s.put_chunk(&hash, &data)).await {
        Ok(_) => Response::Ack,
        Err(StoreError::BadHash { expected, actual }) => {
            warn!(%expected, %actual, "peer uploaded a chunk that fails verification");
            Response::Nack(NackReason::BadHash)
        }
        Err(StoreError::OverQuota { .. }) => Response::Nack(NackReason::OverQuota),
        Err(e) => {
            warn!("store: {e}");
            Response::Nack(NackReason::Internal)
        }
    }
}

async fn receive_manifest<R: AsyncRead + Unpin>(
    store: Option<Store>,
    id: Hash,
    len: u32,
    recv: &mut R,
) -> Response {
    let Some(store) = store else {
        return Response::Nack(NackReason::NotAccepted);
    };
    if len as usize > MAX_MANIFEST_SIZE {
        return Response::Nack(NackReason::TooLarge);
    }
    if matches!(
        blocking(store.clone(), move |s| s.touch_manifest(&id)).await,
        Ok(true)
    ) {
        return Response::Ack;
    }
    let mut data = vec![0u8; len as usize];
    if recv.read_exact(&mut data).await.is_err() {
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

/// Sends `request` on a new stream and reads the response frame.
async fn request(
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
    let mut data = vec![0u8; len as usize];
    recv.read_exact(&mut data).await?;
    let (data, actual) = tokio::task::spawn_blocking(move || {
        let h = Hash::of(&data);
        (data, h)
    })
    .await?;
    if actual != name {
        return Err(FetchError::BadHash {
            expected: name,
            actual,
        });
    }
    if let Some(e) = expected.filter(|e| *e != data.len() as u64) {
        return Err(FetchError::WrongSize {
            expected: e,
            actual: data.len() as u64,
        });
    }
    Ok(data)
}

/// Fetches and verifies one chunk that should be `len` bytes.
///
/// Bytes that do not hash to `hash` are [`FetchError::BadHash`] (the peer
/// lied); more than any chunk can be is [`FetchError::BadLength`] (a lie);
/// another size than `len` is [`FetchError::WrongSize`]: either the manifest
/// that gave `len` is wrong or the peer is, and only the hash could tell, so
/// it blames no one.
pub async fn fetch_chunk(
    conn: &Connection,
    hash: Hash,
    len: u64,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(
        timeout,
        fetch_raw(
            conn,
            Request::GetChunk { hash },
            hash,
            Some(len),
            u64::from(MAX_CHUNK_SIZE),
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
