//! Which chunk of a file to ask of whom: one queue per file shared by all its
//! workers, with the chunks each provider failed, the chunks in flight and
//! since when, and the end game.
//!
//! Pure bookkeeping, no I/O, time passed in: a worker [`Queue::take`]s a
//! chunk and reports back with [`Queue::complete`] or [`Queue::retry`].
//!
//! - A chunk a provider failed is not offered to it again, unless every
//!   provider failed what is left and nothing is in flight: then it is offered
//!   to them all again, [`REOPEN_ROUNDS`] times.
//! - End game: once nothing is left to hand out, a chunk in flight for
//!   [`ENDGAME_AFTER`] is asked of a second provider too. The first copy to
//!   arrive is written; the other is dropped.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::NodeId;

/// Times a chunk that every provider failed is offered to them all again
/// (a timeout or a lost stream is often passing).
const REOPEN_ROUNDS: u8 = 2;

/// End game: once nothing is left to hand out, a chunk in flight this long is
/// asked of a second provider too, so one slow or silent peer cannot hold up
/// the last chunks until its connection times out.
const ENDGAME_AFTER: Duration = Duration::from_millis(750);

/// Per-file work queue.
pub(super) struct Queue {
    pending: VecDeque<usize>,
    /// Providers that failed each chunk.
    failed: Vec<Vec<NodeId>>,
    /// Times each chunk was reopened to every provider after all had failed it.
    reopened: Vec<u8>,
    /// Chunks being fetched: since when, and from whom.
    active: HashMap<usize, (Instant, Vec<NodeId>)>,
    /// Chunks fetched and handed to the writer.
    finished: Vec<bool>,
    in_flight: usize,
    remaining: usize,
}

impl Queue {
    /// A queue of `n` chunks, those marked in `have` already done.
    pub(super) fn new(n: usize, have: &[bool]) -> Queue {
        Queue {
            pending: (0..n).filter(|&i| !have[i]).collect(),
            failed: vec![Vec::new(); n],
            reopened: vec![0; n],
            active: HashMap::new(),
            finished: have.to_vec(),
            in_flight: 0,
            remaining: have.iter().filter(|h| !**h).count(),
        }
    }

    /// Chunks not yet fetched.
    pub(super) fn remaining(&self) -> usize {
        self.remaining
    }

    /// Requests out (end-game duplicates counted).
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands out nothing more that is still pending.
    pub(super) fn abandon(&mut self) {
        self.pending.clear();
    }

    /// The next chunk `p` may try, and whether it is an end-game duplicate of
    /// a request already in flight elsewhere.
    pub(super) fn take(&mut self, p: NodeId, now: Instant) -> Option<(usize, bool)> {
        if let Some(i) = self.take_pending(p) {
            self.in_flight += 1;
            self.active.insert(i, (now, vec![p]));
            return Some((i, false));
        }
        if !self.pending.is_empty() {
            return None;
        }
        let i = self.join_straggler(p, now)?;
        self.in_flight += 1;
        Some((i, true))
    }

    /// Removes and returns the first pending chunk `p` has not failed.
    fn take_pending(&mut self, p: NodeId) -> Option<usize> {
        let mut pos = self.first_untried(p);
        if pos.is_none() && self.in_flight == 0 && self.reopen() {
            pos = self.first_untried(p);
        }
        pos.and_then(|pos| self.pending.remove(pos))
    }

    /// Where in `pending` the first chunk `p` has not failed is.
    fn first_untried(&self, p: NodeId) -> Option<usize> {
        self.pending
            .iter()
            .position(|&i| !self.failed[i].contains(&p))
    }

    /// Every provider failed what is left: gives it another round or two.
    /// True if any chunk was reopened.
    fn reopen(&mut self) -> bool {
        let mut again = false;
        for &i in &self.pending {
            if self.reopened[i] < REOPEN_ROUNDS {
                self.reopened[i] += 1;
                self.failed[i].clear();
                again = true;
            }
        }
        again
    }

    /// End game: the oldest straggler this peer has not tried, asked of at
    /// most two peers at once; `p` is added to its askers.
    fn join_straggler(&mut self, p: NodeId, now: Instant) -> Option<usize> {
        let failed = &self.failed;
        let (&i, (_, askers)) = self
            .active
            .iter_mut()
            .filter(|(i, (since, askers))| {
                askers.len() < 2
                    && !askers.contains(&p)
                    && !failed[**i].contains(&p)
                    && now.saturating_duration_since(*since) >= ENDGAME_AFTER
            })
            // Oldest first; among equals the earliest in the file, which the
            // in-order writer is most likely waiting for.
            .min_by_key(|(i, (since, _))| (*since, **i))?;
        askers.push(p);
        Some(i)
    }

    /// `p` fetched chunk `i`: true if it is the first copy (to be written),
    /// false if another provider's copy won.
    pub(super) fn complete(&mut self, i: usize, p: NodeId) -> bool {
        self.in_flight -= 1;
        if let Some((_, askers)) = self.active.get_mut(&i) {
            askers.retain(|a| *a != p);
        }
        if self.active.get(&i).is_some_and(|(_, a)| a.is_empty()) {
            self.active.remove(&i);
        }
        if self.finished[i] {
            return false;
        }
        self.finished[i] = true;
        self.remaining -= 1;
        true
    }

    /// `p` failed chunk `i`: it goes back in the queue unless another
    /// provider is still fetching it or already has.
    pub(super) fn retry(&mut self, i: usize, p: NodeId) {
        self.in_flight -= 1;
        self.failed[i].push(p);
        let others = match self.active.get_mut(&i) {
            Some((_, askers)) => {
                askers.retain(|a| *a != p);
                !askers.is_empty()
            }
            None => false,
        };
        if !others {
            self.active.remove(&i);
            if !self.finished[i] {
                self.pending.push_back(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_skips_chunks_a_peer_failed() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let now = Instant::now();
        let mut q = Queue::new(3, &[false; 3]);
        assert_eq!(q.take(a, now), Some((0, false)));
        q.retry(0, a);
        assert_eq!(q.take(a, now), Some((1, false)));
        assert_eq!(q.take(a, now), Some((2, false)));
        assert_eq!(q.take(a, now), None, "only chunk 0 is left and a failed it");
        assert_eq!(q.take(b, now), Some((0, false)));
        assert!(q.complete(0, b));
        assert_eq!(q.remaining, 2);
        // When every provider failed a chunk and nothing is in flight, it is
        // offered again, REOPEN_ROUNDS times.
        assert!(q.complete(1, a));
        assert!(q.complete(2, a));
        q.finished[1] = false;
        q.pending.push_back(1);
        q.remaining = 1;
        for _ in 0..REOPEN_ROUNDS {
            q.failed[1] = vec![a, b];
            assert_eq!(q.take(a, now), Some((1, false)));
            q.retry(1, a);
            q.failed[1].push(b);
        }
        assert_eq!(q.take(a, now), None, "given up after the rounds");
    }

    #[test]
    fn end_game_asks_a_second_peer_for_stragglers_only() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let c = NodeId::from_bytes([3; 32]);
        let t0 = Instant::now();
        let mut q = Queue::new(3, &[false, true, false]);
        assert_eq!(q.remaining, 2, "chunk 1 was resumed");
        assert_eq!(q.take(a, t0), Some((0, false)));
        assert_eq!(q.take(a, t0), Some((2, false)));
        // Nothing pending; a's requests are young: b waits.
        assert_eq!(q.take(b, t0), None);
        let later = t0 + ENDGAME_AFTER;
        assert_eq!(q.take(b, later), Some((0, true)), "the oldest straggler");
        assert_eq!(q.take(b, later), Some((2, true)));
        assert_eq!(q.take(c, later), None, "two askers at most");
        // b's copy of 0 wins; a's late copy is dropped, not written twice.
        assert!(q.complete(0, b));
        assert!(!q.complete(0, a));
        // a fails 2 while b still fetches it: not queued again.
        q.retry(2, a);
        assert!(q.pending.is_empty());
        assert!(q.complete(2, b));
        assert_eq!((q.remaining, q.in_flight), (0, 0));
        assert!(q.active.is_empty());
    }
}
