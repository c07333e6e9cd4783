//! Peer scores: what a node remembers, across downloads, about peers that lied
//! to it or wasted its time.
//!
//! Only proof bans. **Bad data** (bytes that fail their hash, more bytes
//! announced than any chunk can have, an answer that makes no sense, an
//! undecodable manifest) is proof: an honest node never sends it, since its
//! store hashes every chunk it reads. One offence bans the peer for
//! [`BAN_FOR`], and a banned peer is asked nothing by any download.
//!
//! **Denials** (NOT_FOUND from a peer named as a holder) and **timeouts** are
//! not proof: the claim that a peer holds a file may come from a third party
//! (a ticket, a DHT node answering a lookup) or be stale, and a timeout may be
//! the downloader's own link. They add to a penalty that halves every
//! [`HALF_LIFE`] and only ranks the peer: peers are asked best first, so a
//! peer that keeps denying or stalling is asked last. Within one download a
//! peer that denies the manifest, or keeps denying chunks, is not asked again
//! (see [`crate::download`]). Timeouts within [`TIMEOUT_WINDOW`] of the first
//! one counted are one offence: one stall of a link times out every request in
//! flight on it at once.
//!
//! The table is bounded ([`MAX_TRACKED`] peers; the least remarkable are
//! forgotten first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::proto::NodeId;

/// How long a ban lasts.
pub const BAN_FOR: Duration = Duration::from_secs(30 * 60);
/// Time for a penalty to halve.
pub const HALF_LIFE: Duration = Duration::from_secs(5 * 60);
/// Timeouts this close together are one offence.
pub const TIMEOUT_WINDOW: Duration = Duration::from_secs(5);
/// Peers tracked at most.
pub const MAX_TRACKED: usize = 10_000;

/// Something a peer did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offense {
    /// Sent bytes that fail verification, or a malformed answer.
    BadData,
    /// Named as a holder, but answered NOT_FOUND.
    FalseClaim,
    /// Did not answer in time.
    Timeout,
}

impl Offense {
    fn penalty(self) -> f64 {
        match self {
            Offense::BadData => 100.0,
            Offense::FalseClaim => 10.0,
            Offense::Timeout => 25.0,
        }
    }
}

/// What is known of one peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerScore {
    /// Current (decayed) penalty.
    pub penalty: f64,
    /// Verified chunks and manifests it served.
    pub served: u64,
    /// Offences, by kind: bad data, false claims, timeouts.
    pub bad_data: u32,
    /// See [`Offense::FalseClaim`].
    pub false_claims: u32,
    /// See [`Offense::Timeout`].
    pub timeouts: u32,
    /// Times it was banned.
    pub bans: u32,
    /// Time left on its ban, if banned.
    pub banned_for: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Entry {
    score: PeerScore,
    updated: Instant,
    banned_until: Option<Instant>,
    last_timeout: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            score: PeerScore::default(),
            updated: now,
            banned_until: None,
            last_timeout: None,
        }
    }

    /// The penalty decayed to `now`.
    fn penalty_at(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        let p = self.score.penalty * 0.5f64.powf(dt / HALF_LIFE.as_secs_f64());
        if p < 0.01 {
            0.0
        } else {
            p
        }
    }

    fn decay(&mut self, now: Instant) {
        self.score.penalty = self.penalty_at(now);
        self.updated = now;
        if self.banned_until.is_some_and(|t| t <= now) {
            self.banned_until = None;
        }
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|t| t > now)
    }
}

/// The scores a node keeps. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PeerScores {
    inner: Arc<Mutex<HashMap<NodeId, Entry>>>,
    /// Bumped at every ban.
    bans: Counter,
}

impl PeerScores {
    /// An empty table.
    pub fn new() -> PeerScores {
        PeerScores::default()
    }

    /// An empty table that counts its bans in `bans` (a node's metric).
    pub fn counting(bans: Counter) -> PeerScores {
        PeerScores {
            bans,
            ..PeerScores::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `peer`'s entry, made if new (forgetting another if the table is full).
    fn entry(map: &mut HashMap<NodeId, Entry>, peer: NodeId, now: Instant) -> &mut Entry {
        if !map.contains_key(&peer) && map.len() >= MAX_TRACKED {
            forget_one(map, now);
        }
        map.entry(peer).or_insert_with(|| Entry::new(now))
    }

    /// Records an offence; true if it got the peer banned just now.
    pub fn offend(&self, peer: NodeId, offense: Offense) -> bool {
        self.offend_at(peer, offense, Instant::now())
    }

    /// [`PeerScores::offend`] at a given time.
    pub fn offend_at(&self, peer: NodeId, offense: Offense, now: Instant) -> bool {
        let mut map = self.lock();
        let e = Self::entry(&mut map, peer, now);
        e.decay(now);
        match offense {
            Offense::BadData => e.score.bad_data += 1,
            Offense::FalseClaim => e.score.false_claims += 1,
            Offense::Timeout => e.score.timeouts += 1,
        }
        if offense == Offense::Timeout {
            // The window opens at a counted timeout and is not stretched by
            // the ones inside it: stalls that never stop keep counting.
            if e.last_timeout
                .is_some_and(|t| now.saturating_duration_since(t) < TIMEOUT_WINDOW)
            {
                return false;
            }
            e.last_timeout = Some(now);
        }
        e.score.penalty += offense.penalty();
        if offense != Offense::BadData || e.banned(now) {
            return false;
        }
        e.score.bans += 1;
        e.banned_until = Some(now + BAN_FOR);
        self.bans.inc();
        true
    }

    /// Records a verified chunk or manifest from `peer`.
    pub fn served(&self, peer: NodeId) {
        let now = Instant::now();
        Self::entry(&mut self.lock(), peer, now).score.served += 1;
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &NodeId) -> bool {
        self.is_banned_at(peer, Instant::now())
    }

    /// [`PeerScores::is_banned`] at a given time.
    pub fn is_banned_at(&self, peer: &NodeId, now: Instant) -> bool {
        self.lock().get(peer).is_some_and(|e| e.banned(now))
    }

    /// What is known of `peer`, if anything.
    pub fn get(&self, peer: &NodeId) -> Option<PeerScore> {
        let now = Instant::now();
        let mut map = self.lock();
        let e = map.get_mut(peer)?;
        e.decay(now);
        let mut s = e.score.clone();
        s.banned_for = e.banned_until.map(|t| t.saturating_duration_since(now));
        Some(s)
    }

    /// Sort key: unbanned peers first, then the smallest penalty, then the
    /// most served.
    pub fn rank(&self, peer: &NodeId) -> (bool, u64, std::cmp::Reverse<u64>) {
        let now = Instant::now();
        let map = self.lock();
        match map.get(peer) {
            None => (false, 0, std::cmp::Reverse(0)),
            Some(e) => (
                e.banned(now),
                e.penalty_at(now).round() as u64,
                std::cmp::Reverse(e.score.served),
            ),
        }
    }
}

/// Drops the entry that matters least: not banned, least penalty, least served.
fn forget_one(map: &mut HashMap<NodeId, Entry>, now: Instant) {
    let victim = map
        .iter()
        .min_by(|(_, a), (_, b)| {
            let key = |e: &Entry| (e.banned(now), e.score.penalty, e.score.served);
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(id, _)| *id);
    if let Some(id) = victim {
        map.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn bad_data_bans_at_once_and_the_ban_ends() {
        let s = PeerScores::new();
        let t0 = Instant::now();
        assert!(!s.is_banned_at(&id(1), t0));
        assert!(s.offend_at(id(1), Offense::BadData, t0));
        assert!(s.is_banned_at(&id(1), t0 + BAN_FOR - Duration::from_secs(1)));
        assert!(!s.is_banned_at(&id(1), t0 + BAN_FOR));
        assert!(!s.is_banned_at(&id(2), t0));
    }

    #[test]
    fn denials_and_timeouts_rank_a_peer_down_but_never_ban_it() {
        let s = PeerScores::new();
        let t0 = Instant::now();
        for _ in 0..50 {
            assert!(!s.offend_at(id(1), Offense::FalseClaim, t0));
        }
        assert!(!s.is_banned_at(&id(1), t0));
        // Timeouts at one moment (a stalled link) count once...
        for _ in 0..8 {
            assert!(!s.offend_at(id(2), Offense::Timeout, t0));
        }
        let one = s.get(&id(2)).unwrap().penalty;
        assert!((24.0..=25.0).contains(&one), "{one}");
        // ...a peer that stalls every second counts once a window.
        for i in 1..=20u32 {
            assert!(!s.offend_at(id(2), Offense::Timeout, t0 + Duration::from_secs(1) * i));
        }
        let score = s.get(&id(2)).unwrap();
        assert_eq!((score.timeouts, score.bans), (28, 0));
        assert!(
            score.penalty > 4.0 * one * 0.9,
            "windows at 0, 5, 10, 15, 20 s: {score:?}"
        );
        assert!(!s.is_banned(&id(2)));
        // The penalty decays: a half-life later it is halved.
        let later = t0 + Duration::from_secs(20) + HALF_LIFE;
        s.offend_at(id(3), Offense::FalseClaim, t0);
        assert!(!s.offend_at(id(3), Offense::FalseClaim, later));
        let p = s.get(&id(3)).unwrap().penalty;
        assert!((14.0..=15.5).contains(&p), "{p}");
    }

    #[test]
    fn ranking_prefers_clean_then_proven_peers() {
        let s = PeerScores::new();
        s.served(id(1));
        s.offend(id(2), Offense::FalseClaim);
        s.offend(id(3), Offense::BadData);
        let mut peers = vec![id(3), id(2), id(4), id(1)];
        peers.sort_by_key(|p| s.rank(p));
        assert_eq!(peers, vec![id(1), id(4), id(2), id(3)]);
    }

    #[test]
    fn the_table_is_bounded_and_keeps_bans() {
        let s = PeerScores::new();
        s.offend(NodeId::from_bytes([0xff; 32]), Offense::BadData);
        for i in 0..MAX_TRACKED as u32 + 10 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            s.served(NodeId::from_bytes(b));
        }
        assert_eq!(s.lock().len(), MAX_TRACKED);
        assert!(s.is_banned(&NodeId::from_bytes([0xff; 32])));
    }
}
