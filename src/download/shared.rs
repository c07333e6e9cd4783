//! What the workers of one download share, across its files: the peers'
//! standing (scores, useless answers), the stats, the last error, and the
//! bytes of chunk data in flight.
//!
//! A failed request is judged here, in one place ([`Shared::score_failure`]),
//! whether it was for a manifest or a chunk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tracing::warn;

use crate::download::score::{Offense, PeerScores, BAN_FOR};
use crate::download::{DownloadStats, UNHELPFUL_LIMIT};
use crate::proto::NodeId;
use crate::transfer::FetchError;

/// Shared between the workers of one download (across files).
pub(super) struct Shared {
    pub(super) scores: PeerScores,
    /// Useless answers (NOT_FOUND, a wrong size) per peer in this download.
    unhelpful: Mutex<HashMap<NodeId, usize>>,
    /// Chunk bytes requested and not yet answered (or given up on).
    in_flight_bytes: AtomicU64,
    pub(super) stats: Mutex<DownloadStats>,
    pub(super) last_error: Mutex<String>,
    /// A sealed chunk that hashed right but did not open: no peer has a
    /// better copy, so the download ends with it, and is not retried.
    pub(super) unopenable: Mutex<Option<(usize, crate::proto::sealed::SealError)>>,
}

impl Shared {
    /// The state of a download that starts with `stats` (the banned providers
    /// already skipped) and records what peers do in `scores`.
    pub(super) fn new(scores: PeerScores, stats: DownloadStats) -> Shared {
        Shared {
            scores,
            unhelpful: Mutex::new(HashMap::new()),
            in_flight_bytes: AtomicU64::new(0),
            stats: Mutex::new(stats),
            last_error: Mutex::new(String::new()),
            unopenable: Mutex::new(None),
        }
    }

    /// Records what a failed request says about the peer; true if it is not to
    /// be asked again in this download (banned, or out of useful answers).
    pub(super) fn score_failure(
        &self,
        p: &NodeId,
        e: &FetchError,
        what: &dyn std::fmt::Display,
    ) -> bool {
        let offense = match e {
            e if e.is_lie() => Some(Offense::BadData),
            FetchError::NotFound => Some(Offense::FalseClaim),
            FetchError::Timeout => Some(Offense::Timeout),
            _ => None,
        };
        // One line per ban, not one per lie: several may be in flight at once.
        if let Some(o) = offense {
            if self.scores.offend(*p, o) {
                warn!(
                    peer = %p,
                    "peer sent bad data for {what}: {e}; banned for {} min",
                    BAN_FOR.as_secs() / 60
                );
            }
        }
        if matches!(e, FetchError::NotFound | FetchError::WrongSize { .. }) {
            *lock(&self.unhelpful).entry(*p).or_default() += 1;
        }
        if self.scores.is_banned(p) {
            let mut s = lock(&self.stats);
            if !s.banned_peers.contains(p) {
                s.banned_peers.push(*p);
            }
        }
        self.gave_up_on(p)
    }

    /// Asks `p` nothing more in this download, as if it had run out of
    /// useful answers.
    pub(super) fn rule_out(&self, p: NodeId) {
        lock(&self.unhelpful).insert(p, UNHELPFUL_LIMIT);
    }

    /// Whether `p` is not to be asked anything more in this download.
    pub(super) fn gave_up_on(&self, p: &NodeId) -> bool {
        self.scores.is_banned(p)
            || lock(&self.unhelpful)
                .get(p)
                .is_some_and(|n| *n >= UNHELPFUL_LIMIT)
    }
}

/// Locks `m`, taking it over from a holder that panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request's bytes as in flight while it lives, and keeps the peak.
pub(super) struct InFlight<'a> {
    shared: &'a Shared,
    len: u64,
}

impl<'a> InFlight<'a> {
    /// Counts `len` bytes as asked for until this is dropped.
    pub(super) fn new(shared: &'a Shared, len: u64) -> Self {
        let now = shared.in_flight_bytes.fetch_add(len, Ordering::SeqCst) + len;
        let mut s = lock(&shared.stats);
        s.peak_in_flight_bytes = s.peak_in_flight_bytes.max(now);
        InFlight { shared, len }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared
            .in_flight_bytes
            .fetch_sub(self.len, Ordering::SeqCst);
    }
}
