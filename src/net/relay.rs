//! Relays, for nodes nobody can dial (circuit relay, as libp2p's v2 and
//! iroh's relays do it). A node behind NAT ([`super::reach`]) reserves a slot
//! at up to [`WANT_RELAYS`] peers that can be dialed ([`Request::Reserve`])
//! and announces them as its relays. A peer that wants to reach it, and has
//! no address for it, asks one of those relays for a circuit
//! ([`Request::Connect`]); the relay asks the node on its reservation's
//! connection ([`Request::Circuit`]), answers yes, and copies the two
//! streams into each other. Each end then runs an ordinary QUIC connection
//! over the circuit ([`CircuitSocket`]) with its own mutual TLS: the relay
//! carries ciphertext it cannot read, and cannot pose as either end (pinned
//! ids, private networks and allow lists are checked end to end as on any
//! connection).
//!
//! What relaying costs the relay, and what bounds it: at most
//! `relay_slots` reservations (one connection each, which the node keeps
//! anyway; [`RESERVATIONS_PER_IP`] from one address), at most
//! `relay_circuits` circuits at once and
//! [`CIRCUITS_PER_PEER`] per asking peer, each ended after
//! `relay_circuit_bytes` or `relay_circuit_time`. Buffering per circuit is
//! bounded by QUIC's stream windows: the copy reads only as fast as the
//! other side takes. A node that cannot be dialed itself relays for nobody.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::circuit::{is_circuit_addr, CircuitSocket};
use super::dial::Route;
use super::endpoint::endpoint_config;
use super::membership::PeerEvent;
use super::router::{RequestStream, ServeFuture, Service};
use super::{lock, ConnectError, Inner, Network, Reachability};
use crate::proto::frame::{read_frame, write_frame};
use crate::proto::wire::{
    Control, ErrorCode, NackReason, Request, Response, Role, MAX_CONTROL_FRAME,
};
use crate::proto::NodeId;

/// Relays a node behind NAT keeps a reservation at.
pub const WANT_RELAYS: usize = 2;
/// Circuits one asking peer may have through this relay at once.
pub const CIRCUITS_PER_PEER: usize = 4;
/// Reservations held for nodes at one address (a carrier NAT's many
/// customers share one; IPv6 counts by /64).
pub const RESERVATIONS_PER_IP: usize = 4;
/// Wait before asking another peer after a reservation was refused.
const RESERVE_RETRY: Duration = Duration::from_secs(10);
/// Public addresses swapped in a hole punch.
pub const PUNCH_ADDRS: usize = 2;
/// One hole punch answered per peer per this long.
const PUNCH_EVERY: Duration = Duration::from_secs(60);
/// A circuit on which nothing moves, or nothing is taken, for this long
/// is ended.
const CIRCUIT_IDLE: Duration = Duration::from_secs(60);

/// What this node relays for others, and where it is relayed itself.
pub(super) struct RelayState {
    /// Nodes this node relays for, by id: their connection.
    reservations: HashMap<NodeId, Connection>,
    /// Circuits through this node.
    circuits: Arc<Semaphore>,
    /// Circuits through this node, by the peer that asked.
    circuits_of: HashMap<NodeId, usize>,
    /// Relays this node holds a reservation at: their id, address, and the
    /// connection the reservation was made on (it dies with it).
    reserved: Vec<(NodeId, SocketAddr, usize)>,
    /// Ids of the peers asked for a reservation, most recent last: asked
    /// again only once the others were.
    asked: Vec<NodeId>,
    /// Circuits this node accepted as a reserved node, at once.
    accepted: Arc<Semaphore>,
    reserving: bool,
    next_reserve: Instant,
    /// When each peer last asked for a hole punch.
    punched: HashMap<NodeId, Instant>,
}

impl RelayState {
    pub(super) fn new(circuits: usize, now: Instant) -> Self {
        RelayState {
            reservations: HashMap::new(),
            circuits: Arc::new(Semaphore::new(circuits)),
            circuits_of: HashMap::new(),
            reserved: Vec::new(),
            asked: Vec::new(),
            accepted: Arc::new(Semaphore::new(circuits)),
            reserving: false,
            next_reserve: now,
            punched: HashMap::new(),
        }
    }
}

/// Serves the network core's own requests: dial-backs
/// ([`super::reach`]), reservations, circuits and hole punches.
pub(super) struct CoreRequests(pub(super) Weak<Inner>);

impl Service for CoreRequests {
    fn serve(&self, stream: RequestStream) -> ServeFuture {
        let net = self.0.upgrade().map(|inner| Network { inner });
        Box::pin(async move {
            let Some(net) = net else { return };
            let RequestStream {
                peer,
                role,
                conn,
                request,
                mut send,
                recv,
            } = stream;
            let answer = match request {
                Request::DialBack { port, nonce } => {
                    net.dial_back((peer, role, &conn), port, nonce).await
                }
                Request::Reserve => net.reserve_for(peer, role, &conn),
                Request::Punch { addrs } => net.punch_for(peer, &conn, addrs),
                Request::Connect { target } => {
                    return net.connect_for(peer, target, send, recv).await;
                }
                Request::Circuit { from } => {
                    return net.accept_circuit(peer, from, send, recv).await;
                }
                _ => Response::Nack(NackReason::NotAccepted),
            };
            let _ = write_frame(&mut send, &answer, MAX_CONTROL_FRAME).await;
            let _ = send.finish();
        })
    }
}

/// Sends `request` on a new stream of `conn` and reads its one answer,
/// within `timeout`.
pub(super) async fn ask(
    conn: &Connection,
    request: &Request,
    timeout: Duration,
) -> Option<Response> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        write_frame(&mut send, request, MAX_CONTROL_FRAME)
            .await
            .ok()?;
        let _ = send.finish();
        read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
            .await
            .ok()
            .flatten()
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

impl Network {
    /// The relays this node can be reached through: those it holds a
    /// reservation at, while their connection lives.
    pub fn relays(&self) -> Vec<SocketAddr> {
        let reserved = lock(&self.inner.relay).reserved.clone();
        reserved
            .into_iter()
            .filter(|(id, _, conn)| self.reservation_holds(id, *conn))
            .map(|(_, addr, _)| addr)
            .collect()
    }

    /// Whether the connection a reservation at `relay` was made on is still
    /// the live one (a relay that reconnected or restarted forgot it).
    fn reservation_holds(&self, relay: &NodeId, conn: usize) -> bool {
        self.connection(relay)
            .is_some_and(|c| c.stable_id() == conn && c.close_reason().is_none())
    }

    /// Tells every peer what this node can be reached at now.
    pub(super) fn announce_addrs(&self) {
        let (addrs, relays) = (self.listen_addrs(), self.relays());
        for (_, _, handle) in lock(&self.inner.peers).connections() {
            let msg = Control::Addrs {
                addrs: addrs.clone(),
                relays: relays.clone(),
            };
            let _ = handle.control.try_send(msg);
        }
    }

    /// Drops reservations whose relay went away; behind NAT, asks another
    /// reachable peer for one while fewer than [`WANT_RELAYS`] are held.
    pub(super) fn maybe_reserve(&self, now: Instant) {
        if self.inner.config.role != Role::Peer || self.is_shutting_down() {
            return;
        }
        let behind_nat = matches!(self.reachability(), Reachability::BehindNat { .. });
        let lost = {
            let mut r = lock(&self.inner.relay);
            let before = r.reserved.len();
            r.reserved
                .retain(|(id, _, conn)| self.reservation_holds(id, *conn));
            before != r.reserved.len()
        };
        if lost {
            self.relays_changed();
        }
        let candidate = {
            let mut r = lock(&self.inner.relay);
            if !behind_nat || r.reserving || now < r.next_reserve || r.reserved.len() >= WANT_RELAYS
            {
                return;
            }
            let taken: Vec<NodeId> = r.reserved.iter().map(|(id, ..)| *id).collect();
            // Reachable full peers, those not asked lately first.
            let mut found: Vec<_> = self
                .peers()
                .into_iter()
                .filter(|p| {
                    p.role == Role::Peer
                        && p.state != super::PeerState::Known
                        && !p.relayed
                        && !p.addrs.is_empty()
                        && !taken.contains(&p.id)
                })
                .collect();
            found.sort_by_key(|p| r.asked.iter().position(|a| *a == p.id));
            let Some(peer) = found.into_iter().next() else {
                return;
            };
            r.asked.retain(|a| *a != peer.id);
            r.asked.push(peer.id);
            let over = r.asked.len().saturating_sub(64);
            r.asked.drain(..over);
            r.reserving = true;
            (peer.id, peer.addrs[0])
        };
        let n = self.clone();
        self.inner.tasks.spawn(async move {
            let (relay, addr) = candidate;
            let held = n.reserve_at(relay).await;
            let mut r = lock(&n.inner.relay);
            r.reserving = false;
            match held {
                Some(conn) => {
                    r.reserved.push((relay, addr, conn));
                    drop(r);
                    n.relays_changed();
                }
                None => r.next_reserve = Instant::now() + RESERVE_RETRY,
            }
        });
    }

    /// Says where this node can be reached through now, to the operator
    /// and to every peer.
    fn relays_changed(&self) {
        let relays = self.relays();
        match relays.as_slice() {
            [] => debug!("no relay"),
            _ => debug!(?relays, "relayed"),
        }
        self.emit(PeerEvent::Relays(relays));
        self.announce_addrs();
    }

    /// Asks `relay` for a reservation; the id of the connection it holds
    /// on if granted.
    async fn reserve_at(&self, relay: NodeId) -> Option<usize> {
        let conn = self.connection(&relay)?;
        let answer = ask(
            &conn,
            &Request::Reserve,
            self.inner.config.handshake_timeout,
        )
        .await;
        let held = matches!(answer, Some(Response::Ack));
        debug!(relay = %relay.fmt_short(), held, "reservation");
        held.then(|| conn.stable_id())
    }

    /// Answers a RESERVE from `peer`.
    fn reserve_for(&self, peer: NodeId, role: Role, conn: &Connection) -> Response {
        let slots = self.inner.config.relay_slots;
        if slots == 0 || role != Role::Peer || self.listen_addrs().is_empty() {
            return Response::Nack(NackReason::NotAccepted);
        }
        let mut r = lock(&self.inner.relay);
        r.reservations.retain(|_, c| c.close_reason().is_none());
        let block = super::ip_key(conn.remote_address().ip());
        let from_block = r
            .reservations
            .values()
            .filter(|c| super::ip_key(c.remote_address().ip()) == block)
            .count();
        if !r.reservations.contains_key(&peer)
            && (r.reservations.len() >= slots || from_block >= RESERVATIONS_PER_IP)
        {
            return Response::Nack(NackReason::NotAccepted);
        }
        if r.reservations.insert(peer, conn.clone()).is_none() {
            info!(peer = %peer.fmt_short(), "[RELAY] relaying for a node behind NAT");
        }
        Response::Ack
    }

    /// Answers a CONNECT from `peer` to `target`: asks `target`, then
    /// carries the circuit until it ends or reaches its limits.
    async fn connect_for(
        &self,
        peer: NodeId,
        target: NodeId,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        let opened = self.open_circuit(peer, target).await;
        let answer = match &opened {
            Ok(_) => Response::Ack,
            Err(reason) => Response::Nack(*reason),
        };
        if write_frame(&mut send, &answer, MAX_CONTROL_FRAME)
            .await
            .is_err()
        {
            return;
        }
        let Ok((to_target, from_target, _slot)) = opened else {
            let _ = send.finish();
            return;
        };
        debug!(from = %peer.fmt_short(), to = %target.fmt_short(), "circuit open");
        let cfg = &self.inner.config;
        let budget = Arc::new(AtomicU64::new(cfg.relay_circuit_bytes));
        tokio::select! {
            _ = pump(recv, to_target, budget.clone()) => {}
            _ = pump(from_target, send, budget.clone()) => {}
            _ = tokio::time::sleep(cfg.relay_circuit_time) => {}
            _ = self.inner.stopping.cancelled() => {}
        }
        let carried = cfg.relay_circuit_bytes - budget.load(Ordering::Relaxed);
        debug!(from = %peer.fmt_short(), to = %target.fmt_short(), carried, "circuit closed");
    }

    /// A circuit from `peer` to `target`, if the limits allow one and
    /// `target` takes it: the streams to `target` and the circuit's permit.
    async fn open_circuit(
        &self,
        peer: NodeId,
        target: NodeId,
    ) -> Result<(SendStream, RecvStream, CircuitSlot), NackReason> {
        if self.inner.config.relay_slots == 0 || peer == target {
            return Err(NackReason::NotAccepted);
        }
        let (conn, slot) = {
            let mut r = lock(&self.inner.relay);
            let conn = r
                .reservations
                .get(&target)
                .filter(|c| c.close_reason().is_none())
                .cloned()
                .ok_or(NackReason::Unreachable)?;
            if r.circuits_of.get(&peer).copied().unwrap_or(0) >= CIRCUITS_PER_PEER {
                return Err(NackReason::NotAccepted);
            }
            let permit = r
                .circuits
                .clone()
                .try_acquire_owned()
                .map_err(|_| NackReason::NotAccepted)?;
            *r.circuits_of.entry(peer).or_insert(0) += 1;
            let slot = CircuitSlot {
                net: self.clone(),
                peer,
                _permit: permit,
            };
            (conn, slot)
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            write_frame(
                &mut send,
                &Request::Circuit { from: peer },
                MAX_CONTROL_FRAME,
            )
            .await
            .ok()?;
            match read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(Response::Ack)) => Some((send, recv)),
                _ => None,
            }
        };
        match tokio::time::timeout(self.inner.config.handshake_timeout, ask).await {
            Ok(Some((send, recv))) => Ok((send, recv, slot)),
            _ => Err(NackReason::Unreachable),
        }
    }

    /// Answers a CIRCUIT from `relay`: if this node holds a reservation
    /// there, takes the circuit and accepts `from`'s connection over it as
    /// any other (handshake, limits, JOIN).
    async fn accept_circuit(
        &self,
        relay: NodeId,
        from: NodeId,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        // Only from a relay this node reserved at, and at most as many at
        // once as this node would relay itself.
        let taken = {
            let r = lock(&self.inner.relay);
            let reserved = r.reserved.iter().any(|(id, ..)| *id == relay);
            reserved
                .then(|| r.accepted.clone().try_acquire_owned().ok())
                .flatten()
        };
        let server = self.inner.server_config.clone();
        let ready = taken.is_some() && !self.is_shutting_down();
        let (Some(server), Some(taken)) = (server.filter(|_| ready), taken) else {
            let no = Response::Nack(NackReason::NotAccepted);
            let _ = write_frame(&mut send, &no, MAX_CONTROL_FRAME).await;
            let _ = send.finish();
            return;
        };
        if write_frame(&mut send, &Response::Ack, MAX_CONTROL_FRAME)
            .await
            .is_err()
        {
            return;
        }
        debug!(from = %from.fmt_short(), relay = %relay.fmt_short(), "circuit accepted");
        let ended = self.inner.cancel.child_token();
        let (socket, _) = CircuitSocket::new(send, recv, ended.clone());
        let Some(endpoint) = self.circuit_endpoint(socket, Some(server)) else {
            ended.cancel();
            return;
        };
        self.hold_circuit(endpoint.clone(), ended.clone(), Some(taken));
        let incoming = tokio::time::timeout(self.inner.config.handshake_timeout, endpoint.accept());
        let Ok(Some(incoming)) = incoming.await else {
            ended.cancel();
            return;
        };
        // One connection per circuit: no more are accepted on it.
        endpoint.set_server_config(None);
        // Under the total limit; the per-address limit and Retry do not
        // apply: every circuit has a made-up address, and the relay
        // bounds them per asking peer.
        let Ok(total) = self.inner.permits.clone().try_acquire_owned() else {
            incoming.refuse();
            ended.cancel();
            return;
        };
        let permit = super::limits::ConnPermit {
            _total: total,
            _ip: None,
        };
        self.clone().handle_incoming(incoming, permit).await;
    }

    /// An endpoint on a circuit's socket (a server if `server` is given).
    fn circuit_endpoint(
        &self,
        socket: Arc<CircuitSocket>,
        server: Option<quinn::ServerConfig>,
    ) -> Option<Endpoint> {
        let runtime = quinn::default_runtime()?;
        Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime).ok()
    }

    /// Keeps a circuit's endpoint until the circuit ends or its connection
    /// is gone, then closes both.
    fn hold_circuit(
        &self,
        endpoint: Endpoint,
        ended: CancellationToken,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let grace = self.inner.config.handshake_timeout;
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let idle = async {
                // Idle before its connection came up says nothing.
                tokio::time::sleep(grace).await;
                endpoint.wait_idle().await;
            };
            tokio::select! {
                _ = ended.cancelled() => {}
                _ = idle => {}
            }
            endpoint.close(ErrorCode::Shutdown.var_int(), b"circuit ended");
            ended.cancel();
        });
    }

    /// Reaches `target` through the relay at `relay`: asks for a circuit and
    /// dials `target` over it.
    pub(super) async fn dial_relayed(
        &self,
        relay: SocketAddr,
        target: NodeId,
    ) -> Result<NodeId, ConnectError> {
        let relayed = |reason: String| ConnectError::Relay {
            relay,
            target,
            reason,
        };
        let conn = match self.connection_at(relay) {
            Some(conn) => conn,
            None => {
                let id = self.dial(relay, None).await?;
                self.connection(&id).ok_or(ConnectError::Replaced(id))?
            }
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &Request::Connect { target }, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| e.to_string())?;
            match read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME).await {
                Ok(Some(Response::Ack)) => Ok((send, recv)),
                Ok(Some(Response::Nack(reason))) => Err(reason.to_string()),
                Ok(_) => Err("no answer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let (send, recv) = tokio::time::timeout(self.inner.config.handshake_timeout, ask)
            .await
            .map_err(|_| relayed("no answer in time".into()))?
            .map_err(relayed)?;
        let ended = self.inner.cancel.child_token();
        let (socket, peer_addr) = CircuitSocket::new(send, recv, ended.clone());
        let Some(endpoint) = self.circuit_endpoint(socket, None) else {
            ended.cancel();
            return Err(relayed("no circuit endpoint".into()));
        };
        self.hold_circuit(endpoint.clone(), ended.clone(), None);
        let dialed = self
            .dial_on(Route::Circuit(&endpoint), peer_addr, Some(target))
            .await;
        match &dialed {
            Ok(_) => {
                // Try for a direct path; the relayed one serves meanwhile.
                let n = self.clone();
                self.inner.tasks.spawn(async move { n.punch(target).await });
            }
            Err(_) => ended.cancel(),
        }
        dialed
    }

    /// The live connection to the peer dialed or announced at `addr`.
    fn connection_at(&self, addr: SocketAddr) -> Option<Connection> {
        self.peers()
            .into_iter()
            .filter(|p| p.state != super::PeerState::Known && p.addrs.contains(&addr))
            .find_map(|p| self.connection(&p.id))
            .filter(|c| c.close_reason().is_none())
    }
}

impl Network {
    /// Records an address a peer saw this node's direct connection come
    /// from: where a hole punch asks to be dialed. The last
    /// [`PUNCH_ADDRS`] distinct ones are kept.
    pub(super) fn seen_at(&self, addr: SocketAddr) {
        if !super::membership::dialable(&addr) {
            return;
        }
        let mut seen = lock(&self.inner.seen_at);
        seen.retain(|a| *a != addr);
        seen.insert(0, addr);
        seen.truncate(PUNCH_ADDRS);
    }

    /// Hole punching, from the side that dialed through the relay: swaps
    /// public addresses with `peer` on the relayed connection, then both
    /// dial at once. A direct connection that comes up replaces the
    /// relayed one; if none does, the relayed one stays.
    async fn punch(&self, peer: NodeId) {
        let Some(conn) = self.connection(&peer) else {
            return;
        };
        let mine = lock(&self.inner.seen_at).clone();
        if mine.is_empty() {
            return;
        }
        let request = Request::Punch { addrs: mine };
        let timeout = self.inner.config.handshake_timeout;
        let Some(Response::Addrs(theirs)) = ask(&conn, &request, timeout).await else {
            debug!(peer = %peer.fmt_short(), "no hole punch: no answer");
            return;
        };
        self.dial_punched(peer, theirs).await;
    }

    /// Answers `peer`'s PUNCH on a relayed connection with this node's
    /// public addresses, and dials its own.
    fn punch_for(&self, peer: NodeId, conn: &Connection, theirs: Vec<SocketAddr>) -> Response {
        if !is_circuit_addr(&conn.remote_address()) || self.is_shutting_down() {
            return Response::Nack(NackReason::NotAccepted);
        }
        {
            let mut r = lock(&self.inner.relay);
            let now = Instant::now();
            r.punched
                .retain(|_, at| now.duration_since(*at) < PUNCH_EVERY);
            if r.punched.insert(peer, now).is_some() {
                return Response::Nack(NackReason::NotAccepted);
            }
        }
        let n = self.clone();
        self.inner
            .tasks
            .spawn(async move { n.dial_punched(peer, theirs).await });
        Response::Addrs(lock(&self.inner.seen_at).clone())
    }

    /// Dials `peer` directly at each of `addrs` (at most [`PUNCH_ADDRS`]) at
    /// once, from this node's own socket: what opens this side's NAT for the
    /// peer's packets.
    async fn dial_punched(&self, peer: NodeId, addrs: Vec<SocketAddr>) {
        let mut dials = tokio::task::JoinSet::new();
        for addr in addrs
            .into_iter()
            .filter(super::membership::dialable)
            .take(PUNCH_ADDRS)
        {
            let n = self.clone();
            dials.spawn(async move { (addr, n.dial_on(Route::Punch, addr, Some(peer)).await) });
        }
        while let Some(Ok((addr, result))) = dials.join_next().await {
            match result {
                Ok(_) => {
                    info!(peer = %peer.fmt_short(), %addr, "[PUNCH] direct connection, no longer relayed");
                    return;
                }
                Err(e) => debug!(peer = %peer.fmt_short(), %addr, "hole punch failed: {e}"),
            }
        }
    }
}

/// A circuit's place under the relay's limits, given back when dropped.
struct CircuitSlot {
    net: Network,
    peer: NodeId,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for CircuitSlot {
    fn drop(&mut self) {
        let mut r = lock(&self.net.inner.relay);
        if let Some(n) = r.circuits_of.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                r.circuits_of.remove(&self.peer);
            }
        }
    }
}

/// Copies `from` into `to` while `budget` lasts, and while each read and
/// write takes less than [`CIRCUIT_IDLE`] (both ends' QUIC keep-alives pass
/// through a live circuit far more often).
async fn pump(mut from: RecvStream, mut to: SendStream, budget: Arc<AtomicU64>) {
    loop {
        let read = tokio::time::timeout(CIRCUIT_IDLE, from.read_chunk(64 << 10, true)).await;
        let chunk = match read {
            Ok(Ok(Some(chunk))) => chunk.bytes,
            _ => break,
        };
        let n = chunk.len() as u64;
        let left = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n));
        let written = tokio::time::timeout(CIRCUIT_IDLE, to.write_chunk(chunk)).await;
        if left.is_err() || !matches!(written, Ok(Ok(()))) {
            break;
        }
    }
    let _ = to.finish();
}
