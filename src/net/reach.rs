//! Reachability: whether strangers can dial this node, learned the way
//! libp2p's AutoNAT learns it. A node listening on an unspecified address
//! (`--listen 0.0.0.0:PORT`) asks up to [`ASK`] connected peers to dial it
//! back ([`Request::DialBack`]); each dials, from a fresh UDP port, the IP
//! address it sees the node at and the node's port, and shows the node's
//! nonce on that probe connection ([`Request::Probe`]). A fresh port matters:
//! a dial from the peer's own port would come back through the node's NAT
//! mapping for the connection it already has, and prove nothing.
//!
//! The node believes only a nonce that arrived. One is enough to be
//! reachable (at the address the peers that reached it agree on); without
//! one, two peers (one, if only one is connected) that answered they could
//! not reach it make it *behind NAT*. Until then nothing is announced: a
//! node bound to `0.0.0.0` gossips no address it has not seen work. The
//! verdict changes what the node announces ([`Network::listen_addrs`]) and is
//! sent to every peer ([`Control::Addrs`]); a node with nothing to announce
//! is neither gossiped nor made a DHT contact.
//!
//! What a dial-back costs the peer that makes it, and what bounds it: one UDP
//! socket and one handshake of at most [`PROBE_TIMEOUT`], at most
//! [`DIALS_AT_ONCE`] at a time node-wide and one per asking peer per
//! [`DIAL_BACK_EVERY`]; it only ever dials the IP address the asking
//! connection comes from, so it cannot be aimed at a third party.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::Endpoint;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

use super::circuit::is_circuit_addr;
use super::endpoint::{bind_socket, endpoint_config};
use super::membership::PeerEvent;
use super::relay::ask;
use super::{lock, Network};
use crate::crypto::tls;
use crate::proto::frame::{read_frame, write_frame};
use crate::proto::wire::{ErrorCode, NackReason, Request, Response, Role, MAX_CONTROL_FRAME};
use crate::proto::NodeId;

/// Peers asked per check.
pub const ASK: usize = 3;
/// Time a dial-back's handshake and probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Dial-backs one node makes for others at once.
pub const DIALS_AT_ONCE: usize = 4;
/// One dial-back per asking peer per this long.
pub const DIAL_BACK_EVERY: Duration = Duration::from_secs(5);
/// A verdict is checked again after this long.
pub const RECHECK: Duration = Duration::from_secs(600);
/// An inconclusive check (no peer, no answers) is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(10);

/// Whether this node can be dialed from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reachability {
    /// Not known yet: no peer answered a dial-back request.
    Unknown,
    /// Peers dialed it back at this address.
    Public(SocketAddr),
    /// `failed` peers tried to dial it back and could not: it is behind a
    /// NAT or a firewall.
    BehindNat {
        /// Peers whose dial-back did not arrive.
        failed: usize,
    },
}

impl std::fmt::Display for Reachability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reachability::Unknown => f.write_str("reachability unknown"),
            Reachability::Public(addr) => write!(f, "reachable at {addr}"),
            Reachability::BehindNat { failed } => write!(
                f,
                "behind NAT ({failed} peer{} could not dial back): announcing no address",
                if *failed == 1 { "" } else { "s" }
            ),
        }
    }
}

/// How one peer's dial-back went, as the asking node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The nonce arrived; the peer says it dialed this address, and
    /// `confirmed` if the probe came in on that very IP address (a node
    /// with no NAT in front sees its public address arrive).
    Arrived {
        /// The address the peer says it dialed.
        addr: SocketAddr,
        /// The probe came in on that IP address.
        confirmed: bool,
    },
    /// The peer tried and the nonce did not arrive.
    Failed,
    /// No usable answer: refused, timed out, or the connection failed.
    NoAnswer,
}

/// The verdict of one round of dial-backs, or `None` if it says nothing.
///
/// An arrival proves the node can be dialed, but the address is the
/// dialer's word: it counts when the probe came in on that IP address, or
/// when two peers that reached the node name the same one. One peer alone
/// cannot make a node announce someone else's address.
pub fn verdict(outcomes: &[Outcome]) -> Option<Reachability> {
    let mut named: Vec<(SocketAddr, usize)> = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Arrived {
                addr,
                confirmed: true,
            } => return Some(Reachability::Public(*addr)),
            Outcome::Arrived { addr, .. } => match named.iter_mut().find(|(a, _)| a == addr) {
                Some((_, n)) => *n += 1,
                None => named.push((*addr, 1)),
            },
            _ => {}
        }
    }
    if let Some((addr, _)) = named.iter().find(|(_, n)| *n >= 2) {
        return Some(Reachability::Public(*addr));
    }
    if !named.is_empty() {
        // Reached, but where is one peer's word: ask again later.
        return None;
    }
    let failed = outcomes.iter().filter(|o| **o == Outcome::Failed).count();
    (failed > 0 && failed >= outcomes.len().min(2)).then_some(Reachability::BehindNat { failed })
}

/// The reachability state of a node: its verdict, the dial-backs it asked
/// for, and those it made for others.
pub(super) struct ReachState {
    pub(super) verdict: Reachability,
    /// Nonces asked for, by the peer asked; a probe showing one (from that
    /// peer) moves it to `arrived`.
    pending: HashMap<u64, NodeId>,
    arrived: Vec<(u64, Option<IpAddr>)>,
    checking: bool,
    pub(super) next_check: Instant,
    /// When each peer was last dialed back.
    dialed: HashMap<NodeId, Instant>,
    dials: Arc<Semaphore>,
}

impl ReachState {
    pub(super) fn new(now: Instant) -> Self {
        ReachState {
            verdict: Reachability::Unknown,
            pending: HashMap::new(),
            arrived: Vec::new(),
            checking: false,
            next_check: now,
            dialed: HashMap::new(),
            dials: Arc::new(Semaphore::new(DIALS_AT_ONCE)),
        }
    }
}

impl Network {
    /// What this node knows about being dialed from outside.
    pub fn reachability(&self) -> Reachability {
        lock(&self.inner.reach).verdict.clone()
    }

    /// Whether what this node announces depends on a dial-back: it listens
    /// on an unspecified address and was given no `--advertise`.
    fn needs_dial_back(&self) -> bool {
        let cfg = &self.inner.config;
        cfg.role == Role::Peer
            && cfg.advertise.is_empty()
            && self.local_addr().ip().is_unspecified()
    }

    /// Starts a reachability check if one is due and a full peer is connected.
    pub(super) fn maybe_check_reachability(&self, now: Instant) {
        if !self.needs_dial_back() || self.is_shutting_down() {
            return;
        }
        {
            let mut r = lock(&self.inner.reach);
            if r.checking || now < r.next_check {
                return;
            }
            if lock(&self.inner.peers).connected_peers() == 0 {
                return;
            }
            r.checking = true;
        }
        let n = self.clone();
        self.inner.tasks.spawn(async move {
            let found = n.check_reachability().await;
            let changed = {
                let mut r = lock(&n.inner.reach);
                r.checking = false;
                r.next_check = Instant::now() + if found.is_some() { RECHECK } else { RETRY };
                match found {
                    Some(v) if v != r.verdict => {
                        r.verdict = v.clone();
                        Some(v)
                    }
                    _ => None,
                }
            };
            if let Some(v) = changed {
                n.reachability_changed(v);
            }
        });
    }

    /// Asks up to [`ASK`] connected full peers to dial this node back.
    async fn check_reachability(&self) -> Option<Reachability> {
        use rand::seq::IteratorRandom;
        let port = self.local_addr().port();
        let asked = lock(&self.inner.peers)
            .connections()
            .into_iter()
            .filter(|(_, role, h)| *role == Role::Peer && h.conn.close_reason().is_none())
            // A relayed link's peer sees a made-up address: it cannot dial back.
            .filter(|(_, _, h)| !is_circuit_addr(&h.conn.remote_address()))
            .choose_multiple(&mut rand::rng(), ASK);
        let mut tasks = JoinSet::new();
        for (id, _, handle) in asked {
            let n = self.clone();
            tasks.spawn(async move { n.ask_dial_back(id, &handle.conn, port).await });
        }
        let mut outcomes = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            outcomes.push(joined.unwrap_or(Outcome::NoAnswer));
        }
        debug!(?outcomes, "dial-backs");
        verdict(&outcomes)
    }

    /// One dial-back request to `id`, and whether its nonce arrived.
    async fn ask_dial_back(&self, id: NodeId, conn: &quinn::Connection, port: u16) -> Outcome {
        let nonce: u64 = rand::random();
        lock(&self.inner.reach).pending.insert(nonce, id);
        let request = Request::DialBack { port, nonce };
        let answer = ask(conn, &request, PROBE_TIMEOUT * 2).await;
        // The probe is answered before its dialer answers us: by now a
        // nonce that came has been seen.
        let arrived = {
            let mut r = lock(&self.inner.reach);
            r.pending.remove(&nonce);
            let at = r.arrived.iter().position(|(n, _)| *n == nonce);
            at.map(|i| r.arrived.swap_remove(i).1)
        };
        match answer {
            Some(Response::Dialed(addr)) if arrived.is_some() && addr.port() == port => {
                let confirmed = arrived.flatten() == Some(addr.ip());
                Outcome::Arrived { addr, confirmed }
            }
            // A claim without the nonce is no better than a failure.
            Some(Response::Dialed(_)) | Some(Response::Nack(NackReason::Unreachable)) => {
                Outcome::Failed
            }
            _ => Outcome::NoAnswer,
        }
    }

    /// A probe connection from `prober` showed `nonce`, coming in on
    /// `local_ip`: true if this node asked `prober` for it.
    pub(super) fn probe_arrived(
        &self,
        prober: NodeId,
        nonce: u64,
        local_ip: Option<IpAddr>,
    ) -> bool {
        let mut r = lock(&self.inner.reach);
        if r.pending.get(&nonce) != Some(&prober) {
            return false;
        }
        r.pending.remove(&nonce);
        r.arrived.push((nonce, local_ip));
        true
    }

    /// Says the new verdict, and tells every peer what to dial now.
    fn reachability_changed(&self, v: Reachability) {
        debug!("{v}");
        self.observe().journal.record("nat", v.to_string());
        self.emit(PeerEvent::Reachability(v));
        self.announce_addrs();
    }

    /// Answers a peer's [`Request::DialBack`]: dials it back from a fresh
    /// port, if the bounds allow it now.
    pub(super) async fn dial_back(
        &self,
        (peer, role, conn): (NodeId, Role, &quinn::Connection),
        port: u16,
        nonce: u64,
    ) -> Response {
        if role != Role::Peer
            || port == 0
            || self.is_shutting_down()
            || is_circuit_addr(&conn.remote_address())
        {
            return Response::Nack(NackReason::NotAccepted);
        }
        let permit = {
            let mut r = lock(&self.inner.reach);
            let now = Instant::now();
            r.dialed
                .retain(|_, at| now.duration_since(*at) < DIAL_BACK_EVERY);
            if r.dialed.contains_key(&peer) {
                return Response::Nack(NackReason::NotAccepted);
            }
            let Ok(permit) = r.dials.clone().try_acquire_owned() else {
                return Response::Nack(NackReason::NotAccepted);
            };
            r.dialed.insert(peer, now);
            permit
        };
        let target = SocketAddr::new(conn.remote_address().ip(), port);
        let probed = tokio::time::timeout(PROBE_TIMEOUT, self.probe(target, peer, nonce)).await;
        drop(permit);
        match probed {
            Ok(Ok(())) => Response::Dialed(target),
            Ok(Err(why)) => {
                debug!(peer = %peer.fmt_short(), %target, "dial-back failed: {why}");
                Response::Nack(NackReason::Unreachable)
            }
            Err(_) => {
                debug!(peer = %peer.fmt_short(), %target, "dial-back timed out");
                Response::Nack(NackReason::Unreachable)
            }
        }
    }

    /// Dials `target` from a fresh UDP port, expecting `id`, and shows
    /// `nonce` on a probe stream.
    async fn probe(&self, target: SocketAddr, id: NodeId, nonce: u64) -> Result<(), String> {
        let any = match self.local_addr().ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = bind_socket(SocketAddr::new(any, 0), 64 << 10).map_err(|e| e.to_string())?;
        let runtime = quinn::default_runtime().ok_or("no async runtime")?;
        let endpoint =
            Endpoint::new(endpoint_config(), None, socket, runtime).map_err(|e| e.to_string())?;
        let result = async {
            let conn = endpoint
                .connect_with(
                    self.inner.client_config.clone(),
                    target,
                    &tls::server_name_for(Some(id)),
                )
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &Request::Probe { nonce }, MAX_CONTROL_FRAME)
                .await
                .map_err(|e| e.to_string())?;
            let answer = read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME).await;
            conn.close(ErrorCode::Ok.var_int(), b"probe done");
            match answer {
                Ok(Some(Response::Ack)) => Ok(()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        .await;
        endpoint.close(ErrorCode::Ok.var_int(), b"probe done");
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_counts_when_seen_arriving_or_named_by_two() {
        let a = addr("203.0.113.1:5000");
        let b = addr("198.51.100.7:5000");
        use Outcome::*;
        let seen = |addr| Arrived {
            addr,
            confirmed: true,
        };
        let said = |addr| Arrived {
            addr,
            confirmed: false,
        };
        assert_eq!(
            verdict(&[Failed, seen(a), NoAnswer]),
            Some(Reachability::Public(a))
        );
        assert_eq!(
            verdict(&[said(b), said(a), said(a)]),
            Some(Reachability::Public(a))
        );
        // One peer's word alone, even with failures beside it, says nothing.
        assert_eq!(verdict(&[said(b), Failed, Failed]), None);
    }

    #[test]
    fn behind_nat_takes_two_failures_or_the_only_peer() {
        use Outcome::*;
        assert_eq!(
            verdict(&[Failed, Failed, NoAnswer]),
            Some(Reachability::BehindNat { failed: 2 })
        );
        assert_eq!(
            verdict(&[Failed]),
            Some(Reachability::BehindNat { failed: 1 })
        );
        // One peer saying so among three is not enough: it may lie.
        assert_eq!(verdict(&[Failed, NoAnswer, NoAnswer]), None);
        assert_eq!(verdict(&[NoAnswer, NoAnswer]), None);
        assert_eq!(verdict(&[]), None);
    }
}
