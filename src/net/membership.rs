//! Membership: the peer table, join and leave events, and the rules that keep one
//! connection per pair of nodes.
//!
//! The table is plain data under the node's mutex; it holds no sockets of its own
//! beyond the connection handles it is given, and takes time as an argument, so
//! its rules are tested here without a network. The control stream protocol that
//! feeds it (JOIN / WELCOME / gossip / PING / LEAVE) is driven by [`crate::node`].
//!
//! Rules:
//! - A peer becomes a *member* when its first connection's control stream is up
//!   ([`PeerEvent::Joined`]), and stops being one when its last connection closes
//!   or it says LEAVE ([`PeerEvent::Left`]).
//! - Between two nodes there is one connection. When a second one comes up:
//!   if the peer's session differs, the peer restarted and the new connection
//!   replaces the old; otherwise the connection dialed by the lower NodeId wins,
//!   the same answer on both sides. The loser is closed only after both control
//!   streams are up, with [`ErrorCode::DuplicateConnection`](crate::proto::wire::ErrorCode).
//! - Peers learned from gossip are *known*, not members, until a connection to
//!   them is up; known peers that nobody mentions any more expire.
//! - Clients (short-lived `put`/`get` processes) are never members, never
//!   gossiped and never dialed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::IteratorRandom;
use tokio::sync::mpsc;

use crate::proto::wire::{Control, PeerRecord, Role, MAX_ADDRS_PER_PEER, MAX_RELAYS_PER_PEER};
use crate::proto::NodeId;

/// Most peers kept that are known from gossip but not connected.
pub const MAX_KNOWN: usize = 1024;

/// Why a peer stopped being a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftReason {
    /// It said LEAVE (or closed with the shutdown code).
    Leave,
    /// Nothing was heard from it within the idle timeout.
    TimedOut,
    /// Its connection closed for another reason.
    Closed(String),
}

impl std::fmt::Display for LeftReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeftReason::Leave => f.write_str("left"),
            LeftReason::TimedOut => f.write_str("timed out"),
            LeftReason::Closed(why) => write!(f, "connection closed: {why}"),
        }
    }
}

/// Membership events, delivered to every subscriber of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection to a peer's control stream came up.
    Connected {
        /// The peer.
        id: NodeId,
        /// Its address on this connection.
        addr: SocketAddr,
        /// Whether this node dialed.
        outbound: bool,
        /// Full node or client.
        role: Role,
    },
    /// A full node became a member.
    Joined {
        /// The peer.
        id: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// A member left.
    Left {
        /// The peer.
        id: NodeId,
        /// Why.
        reason: LeftReason,
    },
    /// What this node learned about being dialed from outside changed.
    Reachability(super::Reachability),
    /// The relays this node can be reached through changed (none: it
    /// lost the last one).
    Relays(Vec<SocketAddr>),
    /// The home router forwards `external` to this node's `local` address
    /// (UPnP IGD), as the router says.
    PortMapped {
        /// The router's public address and port, as it says.
        external: SocketAddr,
        /// Where it forwards to.
        local: SocketAddr,
    },
}

/// The live connection to a peer, as the table keeps it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Whether this node dialed it.
    pub outbound: bool,
    /// The peer's session nonce from JOIN/WELCOME.
    pub session: u64,
    /// Queue of frames for the control stream's writer.
    pub control: mpsc::Sender<Control>,
}

impl ConnHandle {
    fn id(&self) -> usize {
        self.conn.stable_id()
    }
}

/// One row of the peer table.
#[derive(Debug)]
pub struct PeerEntry {
    /// The peer's id.
    pub id: NodeId,
    /// Addresses it can be dialed at, best first.
    pub addrs: Vec<SocketAddr>,
    /// Relays it can be reached through.
    pub relays: Vec<SocketAddr>,
    /// Full node or client.
    pub role: Role,
    /// Last time anything was heard from or about it.
    pub last_seen: Instant,
    /// The connection, when there is one.
    pub conn: Option<ConnHandle>,
    /// Whether a [`PeerEvent::Joined`] was emitted and no `Left` since.
    pub member: bool,
    /// A member whose connection was replaced: it stays a member until then
    /// while the winning connection comes up.
    pub grace_until: Option<Instant>,
    /// A dial is under way.
    pub dialing: bool,
    /// Consecutive failed dials.
    pub failures: u32,
    /// Do not dial before this.
    pub next_dial: Instant,
}

/// A snapshot of one peer, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's id.
    pub id: NodeId,
    /// Where it can be dialed.
    pub addrs: Vec<SocketAddr>,
    /// Relays it can be reached through.
    pub relays: Vec<SocketAddr>,
    /// Full node or client.
    pub role: Role,
    /// Whether a connection is up, and who dialed.
    pub state: PeerState,
    /// Time since anything was heard from or about it.
    pub last_seen: Duration,
    /// Round-trip time on the connection.
    pub rtt: Option<Duration>,
    /// The connection runs through a relay.
    pub relayed: bool,
}

/// Connection state of a peer in a [`PeerInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Connected; this node dialed.
    Outbound,
    /// Connected; the peer dialed.
    Inbound,
    /// Learned from gossip, not connected.
    Known,
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Outbound => "connected (out)",
            PeerState::Inbound => "connected (in)",
            PeerState::Known => "known",
        })
    }
}

/// What [`PeerTable::register`] decided.
#[derive(Debug)]
pub enum Registered {
    /// The connection is now the peer's connection. `replaced` is the previous
    /// one, for the caller to close.
    Accepted {
        /// A [`PeerEvent::Joined`] to emit, if the peer just became a member.
        joined: bool,
        /// The connection this one replaced.
        replaced: Option<quinn::Connection>,
    },
    /// Another connection to the same peer wins; close this one.
    Duplicate,
}

/// The peer table.
#[derive(Debug)]
pub struct PeerTable {
    me: NodeId,
    peers: HashMap<NodeId, PeerEntry>,
    /// Whom each connected peer's gossip named, and when last: the links of
    /// the network as this node knows it (the dashboard's picture).
    told: HashMap<NodeId, HashMap<NodeId, Instant>>,
}

/// Peers remembered per teller for [`PeerTable::links`].
pub const TOLD_PER_PEER: usize = 64;
/// Gossip rounds a peer's naming of another is remembered.
pub const TOLD_ROUNDS: u32 = 3;

/// Delay before redialing a peer after `failures` failed dials.
pub fn dial_backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.min(6);
    Duration::from_secs(secs.min(60))
}

/// Whether an address can be dialed from elsewhere (not 0.0.0.0, not port 0,
/// not a relayed circuit's made-up address).
pub fn dialable(addr: &SocketAddr) -> bool {
    !addr.ip().is_unspecified() && addr.port() != 0 && !super::circuit::is_circuit_addr(addr)
}

fn merge_addrs(into: &mut Vec<SocketAddr>, from: impl IntoIterator<Item = SocketAddr>) {
    merge_up_to(into, from, MAX_ADDRS_PER_PEER);
}

/// The dialable ones of `from` not in `into` yet, while `into` holds fewer
/// than `max`.
fn merge_up_to(into: &mut Vec<SocketAddr>, from: impl IntoIterator<Item = SocketAddr>, max: usize) {
    for a in from {
        if dialable(&a) && !into.contains(&a) && into.len() < max {
            into.push(a);
        }
    }
}

/// Whether `conn` runs through a relay.
fn relayed(conn: &quinn::Connection) -> bool {
    super::circuit::is_circuit_addr(&conn.remote_address())
}

/// The dialable ones of `relays`, at most [`MAX_RELAYS_PER_PEER`].
pub fn relay_list(relays: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    merge_up_to(&mut out, relays.iter().copied(), MAX_RELAYS_PER_PEER);
    out
}

impl PeerTable {
    /// An empty table for the node `me`.
    pub fn new(me: NodeId) -> Self {
        PeerTable {
            me,
            peers: HashMap::new(),
            told: HashMap::new(),
        }
    }

    fn entry(&mut self, id: NodeId, role: Role, now: Instant) -> &mut PeerEntry {
        self.peers.entry(id).or_insert_with(|| PeerEntry {
            id,
            addrs: Vec::new(),
            relays: Vec::new(),
            role,
            last_seen: now,
            conn: None,
            member: false,
            grace_until: None,
            dialing: false,
            failures: 0,
            next_dial: now,
        })
    }

    /// Records a connection whose control stream is up, applying the
    /// one-connection-per-pair rule.
    pub fn register(
        &mut self,
        id: NodeId,
        role: Role,
        (addrs, relays): (&[SocketAddr], &[SocketAddr]),
        handle: ConnHandle,
        now: Instant,
    ) -> Registered {
        let me = self.me;
        let e = self.entry(id, role, now);
        e.role = role;
        e.last_seen = now;
        e.dialing = false;
        e.failures = 0;
        // The addresses just proven first, then the ones known before; no
        // duplicates (a peer's listen address is often the one it dialed from).
        let mut fresh = Vec::new();
        merge_addrs(&mut fresh, addrs.iter().copied());
        merge_addrs(&mut fresh, e.addrs.iter().copied());
        e.addrs = fresh;
        e.relays = relay_list(relays);

        let replaced = match &e.conn {
            None => None,
            Some(old) if old.conn.close_reason().is_some() => Some(old.conn.clone()),
            Some(old) if old.session != handle.session => Some(old.conn.clone()),
            // A direct path beats a relayed one, on both sides alike.
            Some(old) if relayed(&old.conn) != relayed(&handle.conn) => {
                if relayed(&handle.conn) {
                    return Registered::Duplicate;
                }
                Some(old.conn.clone())
            }
            Some(old) => {
                // Same peer process, two live connections: the one dialed by the
                // lower id wins, on both sides.
                let winner_is_outbound = me < id;
                if handle.outbound == winner_is_outbound && old.outbound != winner_is_outbound {
                    Some(old.conn.clone())
                } else {
                    return Registered::Duplicate;
                }
            }
        };
        e.conn = Some(handle);
        e.grace_until = None;
        let joined = role == Role::Peer && !e.member;
        if joined {
            e.member = true;
        }
        Registered::Accepted { joined, replaced }
    }

    /// Replaces the addresses and relays `id` announced (its
    /// [`Control::Addrs`](crate::proto::wire::Control::Addrs)), keeping the
    /// address this node dialed it at. Returns its addresses and relays now.
    pub fn readdress(
        &mut self,
        id: NodeId,
        addrs: &[SocketAddr],
        relays: &[SocketAddr],
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let Some(e) = self.peers.get_mut(&id) else {
            return (Vec::new(), Vec::new());
        };
        let mut fresh = Vec::new();
        if let Some(c) = e.conn.as_ref().filter(|c| c.outbound) {
            merge_addrs(&mut fresh, [c.conn.remote_address()]);
        }
        merge_addrs(&mut fresh, addrs.iter().copied());
        e.addrs = fresh.clone();
        e.relays = relay_list(relays);
        (fresh, e.relays.clone())
    }

    /// Removes the connection `conn_id` of peer `id` if it is still the current
    /// one. Returns the `Left` reason to emit, if the peer stopped being a member.
    ///
    /// `replaced` is true when the connection was closed as a duplicate: the peer
    /// stays a member for `grace` while the winning connection comes up.
    pub fn unregister(
        &mut self,
        id: NodeId,
        conn_id: usize,
        reason: LeftReason,
        replaced: bool,
        grace: Duration,
        now: Instant,
    ) -> Option<LeftReason> {
        let e = self.peers.get_mut(&id)?;
        if e.conn.as_ref().map(ConnHandle::id) != Some(conn_id) {
            return None;
        }
        e.conn = None;
        if replaced && e.member {
            e.grace_until = Some(now + grace);
            return None;
        }
        self.drop_member(id, reason)
    }

    fn drop_member(&mut self, id: NodeId, reason: LeftReason) -> Option<LeftReason> {
        let e = self.peers.get_mut(&id)?;
        let was_member = e.member;
        e.member = false;
        e.grace_until = None;
        if e.role == Role::Client || reason == LeftReason::Leave {
            // A client is forgotten; a peer that left on purpose is not redialed
            // until someone gossips it again.
            self.peers.remove(&id);
        }
        was_member.then_some(reason)
    }

    /// Members whose replaced connection has no successor after the grace period.
    pub fn expire_grace(&mut self, now: Instant) -> Vec<(NodeId, LeftReason)> {
        let ids: Vec<NodeId> = self
            .peers
            .values()
            .filter(|e| e.conn.is_none() && e.grace_until.is_some_and(|t| t <= now))
            .map(|e| e.id)
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let reason = LeftReason::Closed("replaced connection never came up".into());
                self.drop_member(id, reason).map(|r| (id, r))
            })
            .collect()
    }

    /// Adds peers told by gossip or WELCOME. Returns how many were new.
    ///
    /// At most [`MAX_KNOWN`] peers are kept that are not connected, so a flood of
    /// made-up records cannot grow the table.
    pub fn learn(&mut self, records: &[PeerRecord], now: Instant) -> usize {
        let me = self.me;
        let mut new = 0;
        let mut known = self.peers.values().filter(|e| e.conn.is_none()).count();
        for r in records.iter().filter(|r| r.id != me) {
            let addrs: Vec<SocketAddr> = r.addrs.iter().copied().filter(dialable).collect();
            let relays = relay_list(&r.relays);
            if addrs.is_empty() && relays.is_empty() {
                continue;
            }
            if !self.peers.contains_key(&r.id) {
                if known >= MAX_KNOWN {
                    continue;
                }
                known += 1;
                new += 1;
            }
            let e = self.entry(r.id, Role::Peer, now);
            if e.role == Role::Client {
                continue;
            }
            merge_addrs(&mut e.addrs, addrs);
            if e.conn.is_none() {
                e.last_seen = now;
                if !relays.is_empty() {
                    e.relays = relays;
                }
            }
        }
        new
    }

    /// `teller`'s gossip named the peers in `records` (its connections).
    /// At most [`TOLD_PER_PEER`] are remembered per teller, each for `ttl`.
    pub fn told(&mut self, teller: NodeId, records: &[PeerRecord], now: Instant, ttl: Duration) {
        let named = self.told.entry(teller).or_default();
        named.retain(|_, at| now.saturating_duration_since(*at) <= ttl);
        for r in records.iter().filter(|r| r.id != teller) {
            if named.len() < TOLD_PER_PEER || named.contains_key(&r.id) {
                named.insert(r.id, now);
            }
        }
    }

    /// Forgets what `id` told and what was told of it (it left).
    pub fn forget_told(&mut self, id: &NodeId) {
        self.told.remove(id);
        for named in self.told.values_mut() {
            named.remove(id);
        }
    }

    /// Links between peers as connected peers' gossip within `ttl` named
    /// them, plus this node's own connections to full nodes.
    pub fn links(&mut self, now: Instant, ttl: Duration) -> Vec<(NodeId, NodeId)> {
        let connected: Vec<NodeId> = self
            .peers
            .values()
            .filter(|e| e.conn.is_some() && e.role == Role::Peer)
            .map(|e| e.id)
            .collect();
        self.told.retain(|teller, named| {
            named.retain(|_, at| now.saturating_duration_since(*at) <= ttl);
            connected.contains(teller) && !named.is_empty()
        });
        let mut links: Vec<(NodeId, NodeId)> = connected.iter().map(|id| (self.me, *id)).collect();
        for (teller, named) in &self.told {
            links.extend(
                named
                    .keys()
                    .filter(|n| **n != self.me)
                    .map(|n| (*teller, *n)),
            );
        }
        links
    }

    /// Marks activity from a connected peer.
    pub fn seen(&mut self, id: NodeId, now: Instant) {
        if let Some(e) = self.peers.get_mut(&id) {
            e.last_seen = now;
        }
    }

    /// Forgets known peers nobody has mentioned for `ttl`, and peers that failed
    /// to answer too many dials.
    pub fn expire_known(&mut self, now: Instant, ttl: Duration, max_failures: u32) {
        self.peers.retain(|_, e| {
            e.conn.is_some()
                || e.dialing
                || e.grace_until.is_some()
                || (now.saturating_duration_since(e.last_seen) < ttl && e.failures < max_failures)
        });
    }

    /// Up to `max` known peers to dial now; they are marked as being dialed.
    pub fn dial_candidates(&mut self, now: Instant, max: usize) -> Vec<(NodeId, Vec<SocketAddr>)> {
        let mut rng = rand::rng();
        let picked: Vec<NodeId> = self
            .peers
            .values()
            .filter(|e| {
                e.role == Role::Peer
                    && e.conn.is_none()
                    && !e.dialing
                    && e.next_dial <= now
                    && !e.addrs.is_empty()
            })
            .map(|e| e.id)
            .choose_multiple(&mut rng, max);
        picked
            .into_iter()
            .filter_map(|id| {
                let e = self.peers.get_mut(&id)?;
                e.dialing = true;
                Some((id, e.addrs.clone()))
            })
            .collect()
    }

    /// A dial to `id` failed: back off before the next.
    pub fn dial_failed(&mut self, id: NodeId, now: Instant) {
        if let Some(e) = self.peers.get_mut(&id) {
            e.dialing = false;
            e.failures += 1;
            e.next_dial = now + dial_backoff(e.failures);
        }
    }

    /// A dial to `id` ended (successfully or as a duplicate).
    pub fn dial_done(&mut self, id: NodeId) {
        if let Some(e) = self.peers.get_mut(&id) {
            e.dialing = false;
        }
    }

    /// A random sample of up to `max` connected full nodes, for gossip.
    pub fn sample(&self, max: usize, exclude: NodeId) -> Vec<PeerRecord> {
        let mut rng = rand::rng();
        self.peers
            .values()
            .filter(|e| e.id != exclude && e.role == Role::Peer && e.conn.is_some())
            .filter(|e| !e.addrs.is_empty() || !e.relays.is_empty())
            .choose_multiple(&mut rng, max)
            .into_iter()
            .map(|e| PeerRecord {
                id: e.id,
                addrs: e.addrs.clone(),
                relays: e.relays.clone(),
            })
            .collect()
    }

    /// The control-stream queues of all connected full nodes and clients.
    pub fn connections(&self) -> Vec<(NodeId, Role, ConnHandle)> {
        self.peers
            .values()
            .filter_map(|e| e.conn.clone().map(|c| (e.id, e.role, c)))
            .collect()
    }

    /// The connection to `id`, if one is up.
    pub fn connection(&self, id: &NodeId) -> Option<quinn::Connection> {
        self.peers.get(id)?.conn.as_ref().map(|c| c.conn.clone())
    }

    /// Number of connected full nodes.
    pub fn connected_peers(&self) -> usize {
        self.peers
            .values()
            .filter(|e| e.role == Role::Peer && e.conn.is_some())
            .count()
    }

    /// Number of peers known from gossip and not connected.
    pub fn known_peers(&self) -> usize {
        self.peers.values().filter(|e| e.conn.is_none()).count()
    }

    /// A snapshot of every peer, members first.
    pub fn snapshot(&self, now: Instant) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|e| PeerInfo {
                id: e.id,
                addrs: e.addrs.clone(),
                relays: e.relays.clone(),
                role: e.role,
                state: match &e.conn {
                    Some(c) if c.outbound => PeerState::Outbound,
                    Some(_) => PeerState::Inbound,
                    None => PeerState::Known,
                },
                last_seen: now.saturating_duration_since(e.last_seen),
                rtt: e.conn.as_ref().map(|c| c.conn.rtt()),
                relayed: e.conn.as_ref().is_some_and(|c| relayed(&c.conn)),
            })
            .collect();
        out.sort_by_key(|p| (p.state == PeerState::Known, p.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn gossip_learns_dialable_peers_only() {
        let now = Instant::now();
        let mut t = PeerTable::new(id(1));
        let records = vec![
            PeerRecord {
                id: id(1),
                addrs: vec![addr(1)],
                relays: Vec::new(),
            },
            PeerRecord {
                id: id(2),
                addrs: vec!["0.0.0.0:5".parse().unwrap(), addr(2)],
                relays: Vec::new(),
            },
            PeerRecord {
                id: id(3),
                addrs: vec!["0.0.0.0:5".parse().unwrap()],
                relays: Vec::new(),
            },
        ];
        assert_eq!(t.learn(&records, now), 1);
        let snap = t.snapshot(now);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].id, id(2));
        assert_eq!(snap[0].addrs, vec![addr(2)]);
        assert_eq!(snap[0].state, PeerState::Known);

        let dial = t.dial_candidates(now, 10);
        assert_eq!(dial, vec![(id(2), vec![addr(2)])]);
        assert!(t.dial_candidates(now, 10).is_empty(), "already dialing");
        t.dial_failed(id(2), now);
        assert!(t.dial_candidates(now, 10).is_empty(), "backing off");
        assert_eq!(t.dial_candidates(now + dial_backoff(1), 10).len(), 1);
    }

    #[test]
    fn known_peers_expire_when_nobody_mentions_them() {
        let now = Instant::now();
        let mut t = PeerTable::new(id(1));
        t.learn(
            &[PeerRecord {
                id: id(2),
                addrs: vec![addr(2)],
                relays: Vec::new(),
            }],
            now,
        );
        t.expire_known(now + Duration::from_secs(1), Duration::from_secs(5), 3);
        assert_eq!(t.snapshot(now).len(), 1);
        t.expire_known(now + Duration::from_secs(6), Duration::from_secs(5), 3);
        assert!(t.snapshot(now).is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(dial_backoff(0), Duration::from_secs(1));
        assert_eq!(dial_backoff(1), Duration::from_secs(2));
        assert_eq!(dial_backoff(5), Duration::from_secs(32));
        assert_eq!(dial_backoff(6), Duration::from_secs(60));
        assert_eq!(dial_backoff(60), Duration::from_secs(60));
    }
}
