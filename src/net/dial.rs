//! Dialing: resolve, handshake (the verifier proves the peer's id, pinned or
//! learned), JOIN / WELCOME, then hand the connection to its handler.
//!
//! One dial per known peer at a time: a second dial waits for the first to
//! end (a token the first cancels when it ends, however it ends) and then
//! finds the connection up, or dials itself.

use std::net::SocketAddr;
use std::time::Instant;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use super::connection::{close, ConnMeta};
use super::error::{JoinError, PeerLimit};
use super::limits::ConnPermit;
use super::{lock, ConnectError, Network, PeerAddr};
use crate::crypto::tls;
use crate::proto::frame::{read_frame, write_frame, FrameError};
use crate::proto::wire::{
    Control, ErrorCode, Join, Request, Role, Welcome, MAX_ADDRS_PER_PEER, MAX_CONTROL_FRAME,
    PROTOCOL_VERSION,
};
use crate::proto::NodeId;

/// Resolves an address's host (DNS names included).
async fn resolve(addr: &PeerAddr) -> Result<Vec<SocketAddr>, ConnectError> {
    let resolve_err = |source: std::io::Error| ConnectError::Resolve {
        addr: addr.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(resolve_err)?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        )));
    }
    Ok(addrs)
}

/// What a failed JOIN / WELCOME means.
fn join_failed(
    conn: &Connection,
    id: NodeId,
    addr: SocketAddr,
    err: ConnectError,
) -> Result<NodeId, ConnectError> {
    // In a simultaneous dial the peer may close this connection as the loser
    // before our side has read its WELCOME: the pair is still connected,
    // through the other connection.
    if let Some(ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
        if c.error_code == ErrorCode::DuplicateConnection.var_int() {
            return Ok(id);
        }
    }
    // The dialer's side of the handshake ends before the server has checked
    // its certificate, so a refusal shows up here.
    if let Some(refusal) = conn.close_reason().as_ref().and_then(tls::Refusal::of) {
        return Err(ConnectError::Refused { addr, refusal });
    }
    // A peer over a limit completes the handshake only to close the
    // connection saying which limit it hit.
    if let Some(limit) = conn.close_reason().as_ref().and_then(PeerLimit::of) {
        return Err(ConnectError::AtLimit { addr, limit });
    }
    Err(err)
}

/// What a failed handshake means: a refusal by the peer's verifier or at
/// its connection limit, or another failure.
fn handshake_failed(addr: SocketAddr, source: ConnectionError) -> ConnectError {
    if let Some(refusal) = tls::Refusal::of(&source) {
        return ConnectError::Refused { addr, refusal };
    }
    if let Some(limit) = PeerLimit::of(&source) {
        return ConnectError::AtLimit { addr, limit };
    }
    ConnectError::Handshake { addr, source }
}

/// What claiming a dial to a known peer found.
enum Claim {
    /// A connection is up already.
    Connected,
    /// This dial is the one under way; the guard ends it.
    Mine(DialGuard),
}

/// Marks a dial to a peer as under way until dropped, and then wakes every
/// dial that waited for it.
pub(super) struct DialGuard {
    net: Network,
    id: NodeId,
    done: CancellationToken,
}

impl Drop for DialGuard {
    fn drop(&mut self) {
        lock(&self.net.inner.dialing).remove(&self.id);
        self.done.cancel();
    }
}

/// How a dial goes.
#[derive(Clone, Copy)]
pub(super) enum Route<'a> {
    /// From this node's endpoint; a connection to the peer already up is
    /// used instead.
    Direct,
    /// From this node's endpoint, even though a (relayed) connection to the
    /// peer is up: a hole punch. The one-connection rule keeps the direct
    /// one.
    Punch,
    /// Over a relayed circuit's endpoint: the address is the circuit's
    /// made-up one, not one to remember the peer by.
    Circuit(&'a Endpoint),
}

impl Network {
    /// Dials `addr`, runs JOIN/WELCOME, and returns the peer's proven id.
    ///
    /// If a connection to that peer already exists the new one is resolved by
    /// the one-connection rule, and the id is still returned.
    pub async fn connect(&self, addr: &PeerAddr) -> Result<NodeId, ConnectError> {
        let addrs = resolve(addr).await?;
        let mut last = None;
        for a in addrs {
            match self.dial(a, addr.id).await {
                Ok(id) => return Ok(id),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::Resolve {
            addr: addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    /// The live connection to `id`, dialing `addrs` in turn if there is none,
    /// then through `relays` in turn.
    pub async fn connection_to(
        &self,
        id: NodeId,
        addrs: &[SocketAddr],
        relays: &[SocketAddr],
    ) -> Result<Connection, ConnectError> {
        if let Some(conn) = self.connection(&id).filter(|c| c.close_reason().is_none()) {
            return Ok(conn);
        }
        let mut last = ConnectError::NoAddress(id);
        for addr in addrs {
            match self.dial(*addr, Some(id)).await {
                Ok(_) => match self.connection(&id) {
                    Some(conn) => return Ok(conn),
                    None => last = ConnectError::Replaced(id),
                },
                Err(e) => last = e,
            }
        }
        for relay in relays {
            match self.dial_relayed(*relay, id).await {
                Ok(_) => match self.connection(&id) {
                    Some(conn) => return Ok(conn),
                    None => last = ConnectError::Replaced(id),
                },
                Err(e) => {
                    debug!(peer = %id.fmt_short(), %relay, "relayed dial failed: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Dials one address, expecting `expect` if given.
    pub(super) async fn dial(
        &self,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<NodeId, ConnectError> {
        self.dial_on(Route::Direct, addr, expect).await
    }

    /// Dials `addr` the way `route` says.
    pub(super) async fn dial_on(
        &self,
        route: Route<'_>,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<NodeId, ConnectError> {
        let circuit = match route {
            Route::Circuit(endpoint) => Some(endpoint),
            _ => None,
        };
        if self.inner.stopping.is_cancelled() {
            return Err(ConnectError::ShuttingDown);
        }
        // The verifier would refuse it; do not spend a handshake on it.
        if let (Some(id), Some(allow)) = (expect, &self.inner.config.allow) {
            if !allow.contains(&id) {
                return Err(ConnectError::NotAllowed(id));
            }
        }
        // A second connection to a known peer would only be closed as a
        // duplicate: wait for a dial under way, or reuse a connection.
        let _guard = match expect.filter(|_| !matches!(route, Route::Punch)) {
            Some(id) => match self.claim_dial(id, addr).await? {
                Claim::Connected => return Ok(id),
                Claim::Mine(guard) => Some(guard),
            },
            None => None,
        };
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConnectError::Limit(self.inner.config.max_connections))?;
        let (conn, id) = self.handshake(circuit, addr, expect).await?;
        let span = info_span!("conn", remote = %addr, peer = %id.fmt_short());
        let (send, recv, welcome) = match self.join(&conn, addr).instrument(span.clone()).await {
            Ok(joined) => joined,
            Err(e) => return join_failed(&conn, id, addr, e),
        };
        debug!(observed = %welcome.observed_addr, "welcomed");
        if circuit.is_none() {
            self.seen_at(welcome.observed_addr);
        }
        lock(&self.inner.peers).learn(&welcome.peers, Instant::now());
        let mut addrs = if circuit.is_some() {
            Vec::new()
        } else {
            vec![addr]
        };
        addrs.extend(
            welcome
                .listen_addrs
                .iter()
                .copied()
                .take(MAX_ADDRS_PER_PEER),
        );
        let meta = ConnMeta {
            id,
            role: Role::Peer,
            outbound: true,
            session: welcome.session,
            addrs,
            relays: welcome.relays.clone(),
        };
        let permit = ConnPermit {
            _total: permit,
            _ip: None,
        };
        self.run_connection(conn, meta, send, recv, permit, span);
        Ok(id)
    }

    /// Marks a dial to `id` as under way, first waiting (up to the handshake
    /// timeout) for one already under way to end.
    async fn claim_dial(&self, id: NodeId, addr: SocketAddr) -> Result<Claim, ConnectError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        loop {
            if self
                .connection(&id)
                .is_some_and(|c| c.close_reason().is_none())
            {
                return Ok(Claim::Connected);
            }
            let under_way = {
                let mut dialing = lock(&self.inner.dialing);
                match dialing.get(&id) {
                    Some(done) => done.clone(),
                    None => {
                        let done = CancellationToken::new();
                        dialing.insert(id, done.clone());
                        return Ok(Claim::Mine(DialGuard {
                            net: self.clone(),
                            id,
                            done,
                        }));
                    }
                }
            };
            if tokio::time::timeout_at(deadline, under_way.cancelled())
                .await
                .is_err()
            {
                return Err(ConnectError::Timeout { addr });
            }
        }
    }

    /// The QUIC and TLS handshake: returns the connection and the peer's
    /// proven id, or closes it (a dial to oneself, an id other than the
    /// pinned one).
    async fn handshake(
        &self,
        circuit: Option<&Endpoint>,
        addr: SocketAddr,
        expect: Option<NodeId>,
    ) -> Result<(Connection, NodeId), ConnectError> {
        let connecting = circuit
            .unwrap_or(&self.inner.endpoint)
            .connect_with(
                self.inner.client_config.clone(),
                addr,
                &tls::server_name_for(expect),
            )
            .map_err(|source| ConnectError::Dial { addr, source })?;
        let conn = match tokio::time::timeout(self.inner.config.handshake_timeout, connecting).await
        {
            Err(_) => return Err(ConnectError::Timeout { addr }),
            Ok(Err(source)) => return Err(handshake_failed(addr, source)),
            Ok(Ok(conn)) => conn,
        };
        let Some(id) = tls::peer_node_id(&conn) else {
            close(&conn, ErrorCode::Internal, &"no peer certificate");
            return Err(ConnectError::Join {
                addr,
                reason: JoinError::NoCertificate,
            });
        };
        if id == self.id() {
            conn.close(ErrorCode::SelfDial.var_int(), ErrorCode::SelfDial.reason());
            return Err(ConnectError::SelfDial { addr });
        }
        if let Some(expected) = expect.filter(|e| *e != id) {
            // The verifier already refuses this; kept as a second line.
            conn.close(
                ErrorCode::NotAllowed.var_int(),
                ErrorCode::NotAllowed.reason(),
            );
            return Err(tls::PinMismatch {
                expected,
                actual: id,
            }
            .into());
        }
        if expect.is_none() {
            // Worth a line on a node that runs for long; a short-lived put
            // or get would print it every time.
            if self.inner.config.role == Role::Peer {
                info!(peer = %id, %addr, "peer id learned on first contact (address was not pinned)");
            } else {
                debug!(peer = %id, %addr, "peer id learned on first contact (address was not pinned)");
            }
        }
        Ok((conn, id))
    }

    /// Opens the control stream, sends JOIN and reads WELCOME, within the
    /// handshake timeout.
    async fn join(
        &self,
        conn: &Connection,
        addr: SocketAddr,
    ) -> Result<(SendStream, RecvStream, Welcome), ConnectError> {
        let join_err = |reason: JoinError| ConnectError::Join { addr, reason };
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| join_err(e.into()))?;
            let join = Request::Join(Join {
                version: PROTOCOL_VERSION,
                role: self.inner.config.role,
                listen_addrs: self.listen_addrs(),
                relays: self.relays(),
                capabilities: 0,
                session: self.inner.session,
            });
            write_frame(&mut send, &join, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| join_err(e.into()))?;
            match read_frame::<Control, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(Control::Welcome(w))) => Ok((send, recv, w)),
                Ok(Some(_)) => {
                    close(conn, ErrorCode::UnexpectedMessage, &"expected WELCOME");
                    Err(join_err(JoinError::NotWelcome))
                }
                Ok(None) => Err(join_err(JoinError::Closed)),
                Err(e) => {
                    if let FrameError::Wire(w) = &e {
                        close(conn, w.code(), w);
                    }
                    Err(join_err(e.into()))
                }
            }
        };
        match tokio::time::timeout(self.inner.config.handshake_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                close(conn, ErrorCode::Timeout, &"no WELCOME in time");
                Err(ConnectError::Timeout { addr })
            }
        }
    }
}
