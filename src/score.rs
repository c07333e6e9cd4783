//! Peer scores: what a node remembers, across downloads, about peers that lied
//! to it or wasted its time.
//!
//! Three kinds of misbehaviour are told apart:
//!
//! - **Bad data** (bytes that fail their hash, a length other than the one
//!   asked for, an answer that makes no sense, an undecodable manifest). An
//!   honest node never sends these: its store hashes every chunk it reads. One
//!   offence bans the peer for [`BAN_FOR`].
//! - **False claims**: a peer that was named as a holder (in the DHT or a
//!   ticket) answers NOT_FOUND for the file's manifest or chunks.
//! - **Timeouts**: a request that got no answer in time (a slow-loris peer that
//!   trickles bytes, or one that never answers).
//!
//! False claims and timeouts add to a penalty (timeouts within
//! [`TIMEOUT_WINDOW`] of each other count once: one stall of a link times out
//! every request in flight on it at once) that halves every [`HALF_LIFE`];
//! a peer whose penalty reaches [`BAN_AT`] is banned for [`BAN_FOR`] and its
//! penalty starts again from zero. A lost connection is not an offence (a
//! peer may crash or move; that is what retries are for).
//!
//! A banned peer is not asked for anything by downloads and is left out of
//! the provider lists a node acts on. The table is bounded
//! ([`MAX_TRACKED`] peers; the least remarkable are forgotten first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::identity::NodeId;

/// Penalty at which a peer is banned.
pub const BAN_AT: f64 = 100.0;
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
            Offense::BadData => BAN_AT,
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

    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.score.penalty *= 0.5f64.powf(dt / HALF_LIFE.as_secs_f64());
        if self.score.penalty < 0.01 {
            self.score.penalty = 0.0;
        }
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
}

impl PeerScores {
    /// An empty table.
    pub fn new() -> PeerScores {
        PeerScores::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an offence; true if it got the peer banned just now.
    pub fn offend(&self, peer: NodeId, offense: Offense) -> bool {
        self.offend_at(peer, offense, Instant::now())
    }

    /// [`PeerScores::offend`] at a given time.
    pub fn offend_at(&self, peer: NodeId, offense: Offense, now: Instant) -> bool {
        let mut map = self.lock();
        if !map.contains_key(&peer) && map.len() >= MAX_TRACKED {
            forget_one(&mut map, now);
        }
        let e = map.entry(peer).or_insert_with(|| Entry::new(now));
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
        if e.banned(now) {
            return false;
        }
        e.score.penalty += offense.penalty();
        if e.score.penalty < BAN_AT {
            return false;
        }
        e.score.penalty = 0.0;
        e.score.bans += 1;
        e.banned_until = Some(now + BAN_FOR);
        warn!(
            peer = %peer,
            ?offense,
            "peer banned for {} min: bad data {}, false claims {}, timeouts {}",
            BAN_FOR.as_secs() / 60,
            e.score.bad_data,
            e.score.false_claims,
            e.score.timeouts
        );
        true
    }

    /// Records a verified chunk or manifest from `peer`.
    pub fn served(&self, peer: NodeId) {
        let now = Instant::now();
        let mut map = self.lock();
        if !map.contains_key(&peer) && map.len() >= MAX_TRACKED {
            forget_one(&mut map, now);
        }
        map.entry(peer)
            .or_insert_with(|| Entry::new(now))
            .score
            .served += 1;
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
            Some(e) => {
                let dt = now.saturating_duration_since(e.updated).as_secs_f64();
                let penalty = e.score.penalty * 0.5f64.powf(dt / HALF_LIFE.as_secs_f64());
                (
                    e.banned(now),
                    penalty.round() as u64,
                    std::cmp::Reverse(e.score.served),
                )
            }
        }
    }

    /// Peers banned now.
    pub fn banned(&self) -> Vec<NodeId> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, e)| e.banned(now))
            .map(|(id, _)| *id)
            .collect()
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
        assert_eq!(s.banned(), vec![id(1)]);
    }

    #[test]
    fn false_claims_and_timeouts_add_up_and_decay() {
        let s = PeerScores::new();
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(!s.offend_at(id(1), Offense::FalseClaim, t0), "claim {i}");
        }
        // Nine claims, then a quiet half-life: the penalty halves, so the
        // tenth claim does not ban.
        let later = t0 + HALF_LIFE;
        assert!(!s.offend_at(id(1), Offense::FalseClaim, later));
        // Timeouts at one moment (a stalled link) count once...
        for _ in 0..8 {
            assert!(!s.offend_at(id(2), Offense::Timeout, t0));
        }
        // ...but a peer that stalls every second, without end, counts once a
        // window and is banned after four.
        let mut banned_at = None;
        for i in 1..=40u32 {
            let t = t0 + Duration::from_secs(1) * i;
            if s.offend_at(id(2), Offense::Timeout, t) {
                banned_at.get_or_insert(i);
            }
        }
        // Windows open at 0, 5, 10, 15 and 20 s; decay keeps four of them
        // just under the bar.
        assert_eq!(banned_at, Some(20));
        assert!(s.is_banned_at(&id(2), t0 + Duration::from_secs(40)));
        let score = s.get(&id(2)).unwrap();
        assert_eq!((score.timeouts, score.bans), (48, 1));
        assert!(score.banned_for.is_some());
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
