//! Request streams: every bi stream a peer opens after its control stream
//! carries one request. The router takes a token from the peer's bucket,
//! reads the request (bounded in size and time) and hands the stream to the
//! [`Service`] registered for the request's kind.
//!
//! A stream over the rate (`max_requests_per_sec`, `request_burst`) is reset
//! and stopped with [`ErrorCode::RateLimited`] before anything on it is read,
//! and the connection stays up, unless more streams than twice the rate or
//! burst are refused within a second: a peer that keeps opening them
//! regardless is closed with the same code. Garbage where a request should
//! be, or a second JOIN, closes the connection; a request no service serves
//! is refused with [`ErrorCode::UnexpectedMessage`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use quinn::{Connection, RecvStream, SendStream};
use tracing::{debug, warn, Instrument};

use super::connection::close;
use super::limits::{held_back, LogKey, TokenBucket};
use super::Network;
use crate::observe::metrics::KindLabel;
use crate::proto::frame::{read_frame, FrameError};
use crate::proto::wire::{ErrorCode, Request, RequestKind, Role, MAX_CONTROL_FRAME};
use crate::proto::NodeId;

/// A future a service returns for one stream.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One request and the stream it came on, handed to its service.
pub struct RequestStream {
    /// The peer, proven by the handshake.
    pub peer: NodeId,
    /// Full node or client, as its JOIN said.
    pub role: Role,
    /// The connection (for the peer's address, or to close it).
    pub conn: Connection,
    /// The request, already read and decoded.
    pub request: Request,
    /// For the answer.
    pub send: SendStream,
    /// For what follows the request (a PUT's bytes).
    pub recv: RecvStream,
}

/// Serves the requests of the kinds it was registered for. Each stream runs
/// in its own task; a service bounds its own time on it.
pub trait Service: Send + Sync + 'static {
    /// Answers one request.
    fn serve(&self, stream: RequestStream) -> ServeFuture;
}

/// Which service serves which kind of request.
#[derive(Default)]
pub(super) struct Router {
    services: RwLock<HashMap<RequestKind, Arc<dyn Service>>>,
}

impl Router {
    pub(super) fn register(&self, kinds: &[RequestKind], service: Arc<dyn Service>) {
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        for kind in kinds {
            services.insert(*kind, service.clone());
        }
    }

    /// Drops every service: they hold the network, so the node's memory
    /// (and its store's lock) is freed only once they are gone.
    pub(super) fn clear(&self) {
        self.services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    fn get(&self, kind: RequestKind) -> Option<Arc<dyn Service>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&kind)
            .cloned()
    }
}

/// What one peer's request streams may cost, by the limits of `config`.
struct StreamLimit {
    bucket: TokenBucket,
    rate: u32,
    max_refused: u32,
    refused: u32,
    window: Instant,
}

impl StreamLimit {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        StreamLimit {
            bucket: TokenBucket::new(rate, burst, now),
            rate,
            max_refused: rate.max(burst).saturating_mul(2),
            refused: 0,
            window: now,
        }
    }

    /// Counts a refused stream; true once the peer has gone far beyond the
    /// rate within a second.
    fn refuse(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            (self.refused, self.window) = (0, now);
        }
        self.refused += 1;
        self.refused > self.max_refused
    }
}

impl Network {
    /// Accepts the streams a peer opens after the control stream.
    pub(super) async fn accept_streams(self, conn: Connection, peer: NodeId, role: Role) {
        let cfg = &self.inner.config;
        let mut limit =
            StreamLimit::new(cfg.max_requests_per_sec, cfg.request_burst, Instant::now());
        loop {
            let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                return;
            };
            let now = Instant::now();
            if !limit.bucket.take(now) {
                self.observe().metrics.error("any", ErrorCode::RateLimited);
                let _ = send.reset(ErrorCode::RateLimited.var_int());
                let _ = recv.stop(ErrorCode::RateLimited.var_int());
                let rate = limit.rate;
                if limit.refuse(now) {
                    close(
                        &conn,
                        ErrorCode::RateLimited,
                        &format_args!("peer {peer} kept exceeding {rate} requests per second"),
                    );
                    return;
                }
                if let Some(held) = self.gate(LogKey::Rate(peer)) {
                    warn!(
                        %peer,
                        "peer exceeds {rate} requests per second: refusing its extra streams{}",
                        held_back(held)
                    );
                }
                continue;
            }
            let n = self.clone();
            let conn = conn.clone();
            self.inner.tasks.spawn(
                async move { n.route(conn, peer, role, send, recv).await }.in_current_span(),
            );
        }
    }

    /// Reads one stream's request and hands it to its service.
    async fn route(
        self,
        conn: Connection,
        peer: NodeId,
        role: Role,
        send: SendStream,
        mut recv: RecvStream,
    ) {
        let first = tokio::time::timeout(
            self.inner.config.handshake_timeout,
            read_frame::<Request, _>(&mut recv, MAX_CONTROL_FRAME),
        )
        .await;
        let request = match first {
            Err(_) => {
                self.observe().metrics.error("any", ErrorCode::Timeout);
                let _ = recv.stop(ErrorCode::Timeout.var_int());
                return;
            }
            Ok(Ok(Some(Request::Join(_)))) => {
                self.close_hostile(&conn, ErrorCode::ProtocolViolation, &"second JOIN");
                return;
            }
            Ok(Ok(Some(request))) => request,
            Ok(Ok(None)) => {
                let _ = recv.stop(ErrorCode::ProtocolViolation.var_int());
                return;
            }
            // The peer reset the stream, or the connection went: a request
            // given up on, not a bad one.
            Ok(Err(FrameError::Io(e))) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                debug!("request stream ended before its request: {e}");
                return;
            }
            Ok(Err(e)) => {
                self.observe().metrics.error("any", e.code());
                self.close_hostile(&conn, e.code(), &format!("bad request: {e}"));
                return;
            }
        };
        let kind = request.kind();
        let metrics = &self.observe().metrics;
        metrics
            .get()
            .requests
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc();
        let Some(service) = self.inner.router.get(kind) else {
            metrics.error(kind.label(), ErrorCode::UnexpectedMessage);
            let mut send = send;
            let _ = send.reset(ErrorCode::UnexpectedMessage.var_int());
            let _ = recv.stop(ErrorCode::UnexpectedMessage.var_int());
            return;
        };
        let stream = RequestStream {
            peer,
            role,
            conn,
            request,
            send,
            recv,
        };
        service.serve(stream).await;
    }
}
