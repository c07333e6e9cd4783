//! One handler per connection, once its control stream is up: registered in
//! the membership table (the pair's one connection, or closed as a
//! duplicate), then four tasks: the control reader (gossip, PING, LEAVE),
//! the control writer, the request-stream router, and a watcher that
//! unregisters the peer when the connection closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::limits::ConnPermit;
use super::membership::{ConnHandle, LeftReason, PeerEvent, Registered, TOLD_ROUNDS};
use super::{lock, Network};
use crate::observe::metrics::{ReasonLabel, IN, OUT};
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::wire::{Control, ErrorCode, LeaveReason, Role, MAX_CONTROL_FRAME};
use crate::proto::NodeId;

/// Control frames queued per connection before gossip is dropped.
const CONTROL_QUEUE: usize = 64;
/// At most [`ADDRS_PER_WINDOW`] changes of a peer's addresses are taken
/// per this long.
const ADDRS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
const ADDRS_PER_WINDOW: u32 = 8;

/// Who is at the other end of a connection, as JOIN / WELCOME said.
pub(super) struct ConnMeta {
    pub(super) id: NodeId,
    pub(super) role: Role,
    pub(super) outbound: bool,
    pub(super) session: u64,
    /// The address it was reached at, then those it announced.
    pub(super) addrs: Vec<SocketAddr>,
    /// The relays it announced.
    pub(super) relays: Vec<SocketAddr>,
}

/// Closes `conn` with `code` and logs why.
pub(super) fn close(conn: &Connection, code: ErrorCode, why: &dyn std::fmt::Display) {
    warn!(remote = %conn.remote_address(), code = ?code, "closing connection: {why}");
    conn.close(code.var_int(), code.reason());
}

/// Why a connection ended, and whether it was replaced by a newer one.
fn left_reason(err: &ConnectionError) -> (LeftReason, bool) {
    match err {
        ConnectionError::ApplicationClosed(c) => {
            match ErrorCode::from_code(c.error_code.into_inner()) {
                Some(ErrorCode::Shutdown) => (LeftReason::Leave, false),
                Some(ErrorCode::DuplicateConnection) => (
                    LeftReason::Closed("replaced by another connection".into()),
                    true,
                ),
                Some(code) => (
                    LeftReason::Closed(format!("closed by peer: {code:?}")),
                    false,
                ),
                None => (LeftReason::Closed(c.to_string()), false),
            }
        }
        ConnectionError::TimedOut => (LeftReason::TimedOut, false),
        ConnectionError::LocallyClosed => (LeftReason::Closed("closed locally".into()), false),
        other => (LeftReason::Closed(other.to_string()), false),
    }
}

impl Network {
    /// Registers a connection whose control stream is up and starts its tasks.
    pub(super) fn run_connection(
        &self,
        conn: Connection,
        meta: ConnMeta,
        send: SendStream,
        recv: RecvStream,
        permit: ConnPermit,
        span: tracing::Span,
    ) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        if !self.register(&conn, &meta, tx.clone(), &span) {
            return;
        }
        let (id, role) = (meta.id, meta.role);
        let cancel = self.inner.cancel.child_token();
        self.inner
            .writers
            .spawn(control_writer(conn.clone(), send, rx, cancel.clone()).instrument(span.clone()));
        let n = self.clone();
        let c = conn.clone();
        self.inner.tasks.spawn(
            async move { n.control_reader(c, id, role, recv, tx).await }.instrument(span.clone()),
        );
        let n = self.clone();
        let c = conn.clone();
        self.inner
            .tasks
            .spawn(async move { n.accept_streams(c, id, role).await }.instrument(span.clone()));
        self.proven(id, role, &meta.addrs, &meta.relays);
        if role == Role::Peer {
            // The first peer can tell at once whether this node can be
            // dialed: before it gossips this node on.
            self.maybe_check_reachability(Instant::now());
        }
        let n = self.clone();
        self.inner
            .tasks
            .spawn(async move { n.watch(conn, id, cancel, permit).await }.instrument(span));
    }

    /// Makes `conn` the pair's one connection (closing the one it replaces)
    /// and says so; false if it lost to an existing one and was closed.
    fn register(
        &self,
        conn: &Connection,
        meta: &ConnMeta,
        control: mpsc::Sender<Control>,
        span: &tracing::Span,
    ) -> bool {
        let handle = ConnHandle {
            conn: conn.clone(),
            outbound: meta.outbound,
            session: meta.session,
            control,
        };
        let outcome = lock(&self.inner.peers).register(
            meta.id,
            meta.role,
            (&meta.addrs, &meta.relays),
            handle,
            Instant::now(),
        );
        let duplicate = ErrorCode::DuplicateConnection;
        let joined = match outcome {
            Registered::Duplicate => {
                debug!(parent: span, peer = %meta.id, "duplicate connection closed");
                conn.close(duplicate.var_int(), duplicate.reason());
                return false;
            }
            Registered::Accepted { joined, replaced } => {
                if let Some(old) = replaced {
                    debug!(parent: span, peer = %meta.id, "connection replaced");
                    old.close(duplicate.var_int(), duplicate.reason());
                }
                joined
            }
        };
        let addr = conn.remote_address();
        let direction = if meta.outbound { OUT } else { IN };
        self.observe()
            .metrics
            .get()
            .connections_opened
            .get_or_create(&direction)
            .inc();
        self.emit(PeerEvent::Connected {
            id: meta.id,
            addr,
            outbound: meta.outbound,
            role: meta.role,
        });
        if joined {
            self.emit(PeerEvent::Joined { id: meta.id, addr });
        }
        true
    }

    /// Waits for the connection to close, then unregisters the peer.
    async fn watch(
        self,
        conn: Connection,
        id: NodeId,
        cancel: CancellationToken,
        permit: ConnPermit,
    ) {
        let err = tokio::select! {
            e = conn.closed() => e,
            _ = cancel.cancelled() => return,
        };
        let (reason, replaced) = left_reason(&err);
        debug!(reason = %reason, "connection closed");
        let metrics = &self.observe().metrics;
        let why = match (&reason, replaced) {
            (_, true) => "replaced",
            (LeftReason::Leave, _) => "leave",
            (LeftReason::TimedOut, _) => "timed_out",
            (LeftReason::Closed(_), _) => "closed",
        };
        metrics
            .get()
            .connections_closed
            .get_or_create(&ReasonLabel { reason: why })
            .inc();
        let left = {
            let mut peers = lock(&self.inner.peers);
            // Its bytes move from live to closed under the lock the metrics
            // read both under, so they are never counted twice.
            metrics.connection_closed(&conn.stats());
            peers.unregister(
                id,
                conn.stable_id(),
                reason,
                replaced,
                self.inner.config.handshake_timeout,
                Instant::now(),
            )
        };
        if let Some(reason) = left {
            self.left(id, reason);
        }
        drop(permit);
    }

    async fn control_reader(
        self,
        conn: Connection,
        id: NodeId,
        role: Role,
        mut recv: RecvStream,
        tx: mpsc::Sender<Control>,
    ) {
        let mut readdressed = (Instant::now(), 0u32);
        loop {
            let msg = match read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    // The peer finished its control stream: it is going away.
                    self.peer_left(&conn, id);
                    return;
                }
                Err(FrameError::Wire(e)) => {
                    close(&conn, e.code(), &e);
                    return;
                }
                Err(FrameError::Io(e)) => {
                    if conn.close_reason().is_none() {
                        close(
                            &conn,
                            ErrorCode::ProtocolViolation,
                            &format!("control stream failed: {e}"),
                        );
                    }
                    return;
                }
            };
            lock(&self.inner.peers).seen(id, Instant::now());
            match msg {
                Control::Welcome(_) => {
                    close(&conn, ErrorCode::UnexpectedMessage, &"WELCOME after JOIN");
                    return;
                }
                Control::Peers(records) => {
                    if role == Role::Client {
                        close(&conn, ErrorCode::UnexpectedMessage, &"gossip from a client");
                        return;
                    }
                    let new = {
                        let mut peers = lock(&self.inner.peers);
                        let ttl = self.inner.config.gossip_interval * TOLD_ROUNDS;
                        peers.told(id, &records, Instant::now(), ttl);
                        peers.learn(&records, Instant::now())
                    };
                    debug!(count = records.len(), new, "gossip received");
                }
                Control::Ping(n) => {
                    let _ = tx.try_send(Control::Pong(n));
                }
                Control::Pong(_) => {}
                Control::Addrs { addrs, relays } => {
                    // A node's addresses change rarely (a verdict, a relay
                    // won or lost): more than a few changes a window are
                    // ignored.
                    let now = Instant::now();
                    if now.duration_since(readdressed.0) > ADDRS_WINDOW {
                        readdressed = (now, 0);
                    }
                    if readdressed.1 >= ADDRS_PER_WINDOW {
                        continue;
                    }
                    readdressed.1 += 1;
                    let (addrs, relays) = lock(&self.inner.peers).readdress(id, &addrs, &relays);
                    debug!(?addrs, ?relays, "peer announced new addresses");
                    self.proven(id, role, &addrs, &relays);
                }
                Control::Leave(LeaveReason::Shutdown) => {
                    self.peer_left(&conn, id);
                    return;
                }
            }
        }
    }

    /// The peer said LEAVE: report it at once and close our side.
    fn peer_left(&self, conn: &Connection, id: NodeId) {
        let left = lock(&self.inner.peers).unregister(
            id,
            conn.stable_id(),
            LeftReason::Leave,
            false,
            Duration::ZERO,
            Instant::now(),
        );
        if let Some(reason) = left {
            self.left(id, reason);
        }
        conn.close(ErrorCode::Ok.var_int(), ErrorCode::Ok.reason());
    }
}

/// Writes queued control frames. After LEAVE it finishes the stream and waits
/// (bounded) for the peer to have it.
async fn control_writer(
    conn: Connection,
    mut send: SendStream,
    mut rx: mpsc::Receiver<Control>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = conn.closed() => return,
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let leaving = matches!(msg, Control::Leave(_));
        if let Err(e) = write_frame(&mut send, &msg, MAX_CONTROL_FRAME).await {
            debug!("control stream write failed: {e}");
            return;
        }
        if leaving {
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            return;
        }
    }
}
