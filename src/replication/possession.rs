//! Checking that a peer holds a file, for repair: a challenge drawn from
//! this node's own copy ([`Challenge`]: a random chunk, a random range of
//! at most [`PROOF_RANGE`] bytes in it, a fresh nonce), the answer this node
//! expects, and what the peer's answer shows ([`Shown`]).
//!
//! A claim (HAS) is never enough: a peer counts as a holder only if its
//! keyed hash matches. A peer that says it holds nothing is *missing* (a
//! target repair may copy to); one that answers wrong, refuses a range
//! inside the piece or answers nonsense has *failed* and is distrusted for a
//! while ([`Distrust`]): repair neither counts it nor copies to it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quinn::Connection;
use rand::Rng;

use crate::proto::{Hash, NodeId};
use crate::store::chunker::Tree;
use crate::store::{Possession, Store};
use crate::transfer::{prove, Challenge, FetchError};

/// Bytes a challenge asks to be hashed (fewer in a shorter piece).
pub const PROOF_RANGE: u32 = 4096;

/// Most (file, peer) pairs remembered as distrusted.
const DISTRUST_MAX: usize = 4096;

/// What a peer showed when challenged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// It proved it holds the file.
    Holds,
    /// It said it does not hold the file.
    Missing,
    /// It answered wrong or out of turn: it claims what it cannot show.
    Failed,
    /// No answer (timeout, closed stream): neither holder nor target now.
    Silent,
}

/// A challenge and the answer an honest holder gives.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// What to send.
    pub challenge: Challenge,
    /// The keyed hash this node computed from its own copy.
    pub answer: [u8; 32],
}

/// The pieces a challenge may name: every chunk, or the manifests of a
/// tree without chunks.
pub fn pieces(tree: &Tree) -> Vec<Hash> {
    let chunks = tree.chunk_hashes();
    if chunks.is_empty() {
        tree.manifests.iter().map(|(id, _)| *id).collect()
    } else {
        chunks
    }
}

/// Draws a challenge from this node's copy of `file` (blocking: reads a
/// chunk). `None` if this node cannot answer it itself (a piece went
/// missing): then it proves nothing about others either.
pub fn draw(store: &Store, file: Hash, pieces: &[Hash]) -> Option<Expected> {
    let mut rng = rand::rng();
    let piece = *pieces.get(rng.random_range(0..pieces.len().max(1)))?;
    let plen = store.piece_len(&piece).ok()??;
    let len = u32::try_from(plen.min(u64::from(PROOF_RANGE))).ok()?;
    let room = u32::try_from(plen - u64::from(len)).unwrap_or(u32::MAX);
    let offset = rng.random_range(0..=room);
    let nonce: [u8; 32] = rng.random();
    match store.prove(&file, &piece, offset, len, &nonce) {
        Ok(Possession::Proof(answer)) => Some(Expected {
            challenge: Challenge {
                id: file,
                piece,
                offset,
                len,
                nonce,
            },
            answer,
        }),
        _ => None,
    }
}

/// Challenges the peer on `conn` and judges its answer.
pub async fn check(conn: &Connection, expected: &Expected, timeout: Duration) -> Shown {
    judge(prove(conn, expected.challenge, timeout).await, expected)
}

/// What an answer to `expected`'s challenge shows.
fn judge(answer: Result<Possession, FetchError>, expected: &Expected) -> Shown {
    match answer {
        Ok(Possession::Proof(p)) if p == expected.answer => Shown::Holds,
        Ok(Possession::NotHeld) => Shown::Missing,
        // A wrong hash, or a range refused that this node could answer.
        Ok(_) => Shown::Failed,
        Err(e) if e.is_lie() => Shown::Failed,
        Err(_) => Shown::Silent,
    }
}

/// Peers that failed a challenge for a file, and until when they are not
/// asked again.
#[derive(Default)]
pub struct Distrust {
    until: HashMap<(Hash, NodeId), Instant>,
}

impl Distrust {
    /// Remembers that `peer` failed for `file`, for `period`.
    pub fn add(&mut self, file: Hash, peer: NodeId, period: Duration) {
        let now = Instant::now();
        if self.until.len() >= DISTRUST_MAX {
            self.until.retain(|_, t| *t > now);
        }
        if self.until.len() < DISTRUST_MAX {
            self.until.insert((file, peer), now + period);
        }
    }

    /// Whether `peer` failed for `file` lately.
    pub fn has(&self, file: Hash, peer: NodeId) -> bool {
        self.until
            .get(&(file, peer))
            .is_some_and(|t| *t > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wire::{NackReason, Response};

    fn expected() -> Expected {
        Expected {
            challenge: Challenge {
                id: Hash::of(b"f"),
                piece: Hash::of(b"c"),
                offset: 0,
                len: 10,
                nonce: [1; 32],
            },
            answer: [7; 32],
        }
    }

    #[test]
    fn only_the_right_hash_counts_as_holding() {
        let e = expected();
        assert_eq!(judge(Ok(Possession::Proof([7; 32])), &e), Shown::Holds);
        assert_eq!(judge(Ok(Possession::Proof([8; 32])), &e), Shown::Failed);
        assert_eq!(judge(Ok(Possession::OutOfRange), &e), Shown::Failed);
        assert_eq!(judge(Ok(Possession::NotHeld), &e), Shown::Missing);
        let nonsense = FetchError::Unexpected(Response::Nack(NackReason::Internal));
        assert_eq!(judge(Err(nonsense), &e), Shown::Failed);
        assert_eq!(judge(Err(FetchError::Timeout), &e), Shown::Silent);
    }

    #[test]
    fn a_drawn_challenge_is_answered_by_the_holder_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, vec![3u8; 10_000]).unwrap();
        let tree = store.import(&src, 4096).unwrap();
        let pieces = pieces(&tree);
        assert!(!pieces.is_empty());
        for _ in 0..20 {
            let e = draw(&store, tree.root, &pieces).unwrap();
            let c = e.challenge;
            let got = store.prove(&c.id, &c.piece, c.offset, c.len, &c.nonce);
            assert_eq!(got.unwrap(), Possession::Proof(e.answer));
        }
        // An empty file is proven over its manifest.
        let empty = dir.path().join("e");
        std::fs::write(&empty, b"").unwrap();
        let tree = store.import(&empty, 4096).unwrap();
        let e = draw(&store, tree.root, &super::pieces(&tree)).unwrap();
        assert_eq!(e.challenge.piece, tree.root);
        // Not held: no challenge.
        store.release_file(&tree.root).unwrap();
        assert!(draw(&store, tree.root, &super::pieces(&tree)).is_none());
    }

    #[test]
    fn distrust_expires() {
        let mut d = Distrust::default();
        let (f, p) = (Hash::of(b"f"), NodeId::from_bytes([1; 32]));
        d.add(f, p, Duration::from_secs(60));
        assert!(d.has(f, p));
        assert!(!d.has(Hash::of(b"g"), p));
        d.add(f, p, Duration::ZERO);
        assert!(!d.has(f, p));
    }
}
