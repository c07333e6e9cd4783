//! What a peer may make this node store: storage is agreed, not imposed.
//!
//! Every byte a peer puts is charged to it twice, by its proven id and by its
//! address prefix (an IPv4 /24, an IPv6 /48; see [`Prefix`]), so identities,
//! which are free, do not multiply what one machine may store. Both charges
//! must stay within the peer's allowance, which depends on who it is:
//!
//! - a *friend* (a peer on loopback, unless `limit_loopback` is set) is
//!   bounded by the quota alone;
//! - a *member* (every peer of a private network, `--network-key`, or of an
//!   allow list, `--allow`) gets the member allowance (the whole quota unless
//!   configured);
//! - a *stranger* gets the stranger allowance.
//!
//! A charge is of one of two kinds:
//!
//! - *held*: the sizes of the files the peer asked this node to hold and it
//!   agreed to (a HOLD for a file this node is among the closest nodes to,
//!   [`Allowances::agree`]). The store keeps these totals across restarts
//!   ([`Store::held_for`]); a file dropped (trimmed by repair) gives its size
//!   back.
//! - *pending*: bytes put that no HOLD covers yet ([`Allowances::admit`]).
//!   Those are garbage unless a HOLD comes, and a garbage pass collects them
//!   after the grace period; the pending charge drains at the rate of one
//!   allowance per `window` (the grace period plus the garbage interval),
//!   so what a peer uploads and never holds is bounded by its allowance per
//!   window, and lives until a garbage pass takes it.
//!
//! A PUT is admitted only if the peer's held, being-held and pending charges
//! with it stay within its allowance, per id and per prefix; a HOLD only if
//! its held and being-held charges with it do (its own bytes are among the
//! pending ones). A PUT over the allowance is refused with
//! [`NackReason::OverAllowance`](crate::proto::wire::NackReason::OverAllowance)
//! before any byte is written.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::NodeId;
use crate::store::{Added, HeldFor, Prefix, Source, Store, StoreError};

/// Pending charges remembered before drained ones are forgotten.
const PENDING_MAX: usize = 16_384;

/// What each kind of peer may store.
#[derive(Clone, Copy, Debug)]
pub struct AllowancePolicy {
    /// Bytes a stranger may store, per id and per address prefix.
    pub stranger: u64,
    /// Bytes a member of a private network may store (`None`: the quota).
    pub member: Option<u64>,
    /// Whether connected peers are members (a network key or an allow list
    /// admitted them).
    pub members: bool,
    /// Whether peers on loopback count as strangers too.
    pub limit_loopback: bool,
    /// How long bytes no HOLD covers may live (grace plus garbage interval).
    pub window: Duration,
}

/// How far a peer is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// On this machine: bounded by the quota alone.
    Friend,
    /// Of the same private network.
    Member,
    /// Anyone else.
    Stranger,
}

/// A peer that puts data, as the allowances see it.
#[derive(Clone, Copy, Debug)]
pub struct Uploader {
    /// Its id and prefix.
    pub source: Source,
    /// How far it is trusted.
    pub trust: Trust,
    /// What it may store, per id and per prefix (`None`: the quota alone).
    pub limit: Option<u64>,
}

/// Why a put or HOLD exceeds an allowance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} would have {wanted} bytes stored by its {by}, over its allowance of {limit}")]
pub struct OverAllowance {
    /// Whose: an id or a prefix.
    pub who: String,
    /// "id" or "address prefix".
    pub by: &'static str,
    /// What it would have with this.
    pub wanted: u64,
    /// Its allowance.
    pub limit: u64,
}

impl Default for AllowancePolicy {
    /// A stranger may store 1 GiB; members and friends the quota.
    fn default() -> Self {
        AllowancePolicy {
            stranger: 1 << 30,
            member: None,
            members: false,
            limit_loopback: false,
            window: Duration::from_secs(2 * 3600),
        }
    }
}

/// A pending charge: bytes that drain away over the window.
#[derive(Clone, Copy, Debug)]
struct Pending {
    bytes: f64,
    at: Instant,
    /// The allowance it drains against.
    limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Id(NodeId),
    Prefix(Prefix),
}

/// The charges not kept by the store.
#[derive(Default)]
struct Charges {
    /// Uploads no HOLD covers yet.
    pending: HashMap<Key, Pending>,
    /// HOLDs agreed to and being recorded in the store.
    holding: HashMap<Key, u64>,
}

/// The allowances of one node.
///
/// One lock covers the charges, and what the store holds for a peer is read
/// under it, so a PUT and a HOLD at once cannot both fit in the room for
/// one.
pub struct Allowances {
    policy: AllowancePolicy,
    charges: Mutex<Charges>,
}

/// What a HOLD has taken from its peer's allowance while the store records
/// it; given back on drop (the HOLD failed or was dropped).
struct Reservation<'a> {
    allowances: &'a Allowances,
    keys: [Key; 2],
    size: u64,
}

impl Reservation<'_> {
    /// The file is recorded: if it was `counted` as held for the peer, the
    /// bytes it uploaded for it are no longer pending.
    fn finish(self, counted: bool) {
        let mut c = self.allowances.lock();
        if counted {
            for key in self.keys {
                if let Some(p) = c.pending.get_mut(&key) {
                    p.bytes = (p.bytes - self.size as f64).max(0.0);
                }
            }
        }
        // The drop that follows gives back the reservation, under no lock.
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut c = self.allowances.lock();
        for key in self.keys {
            if let Some(v) = c.holding.get_mut(&key) {
                *v = v.saturating_sub(self.size);
                if *v == 0 {
                    c.holding.remove(&key);
                }
            }
        }
    }
}

impl Allowances {
    /// Allowances under `policy`.
    pub fn new(policy: AllowancePolicy) -> Self {
        Allowances {
            policy,
            charges: Mutex::new(Charges::default()),
        }
    }

    /// The peer `id` connected from `ip`, classified.
    pub fn uploader(&self, id: NodeId, ip: IpAddr) -> Uploader {
        let p = &self.policy;
        let trust = if ip.to_canonical().is_loopback() && !p.limit_loopback {
            Trust::Friend
        } else if p.members {
            Trust::Member
        } else {
            Trust::Stranger
        };
        let limit = match trust {
            Trust::Friend => None,
            Trust::Member => p.member,
            Trust::Stranger => Some(p.stranger),
        };
        Uploader {
            source: Source {
                id,
                prefix: Prefix::of(ip),
            },
            trust,
            limit,
        }
    }

    /// Charges `bytes` put by `up` that no HOLD covers yet, if they fit in
    /// its allowance beside what it holds here.
    pub fn admit(&self, store: &Store, up: &Uploader, bytes: u64) -> Result<(), OverAllowance> {
        let Some(limit) = up.limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut c = self.lock();
        let held = store.held_for(&up.source);
        let keys = keys(up);
        for key in keys {
            let level = self.drained(c.pending.get(&key), now);
            let wanted = held_by(&held, key)
                .saturating_add(c.holding.get(&key).copied().unwrap_or(0))
                .saturating_add(level.ceil() as u64)
                .saturating_add(bytes);
            if wanted > limit {
                return Err(over(key, wanted, limit));
            }
        }
        if c.pending.len() + 2 > PENDING_MAX {
            self.make_room(&mut c.pending, now);
            if c.pending.len() + 2 > PENDING_MAX {
                return Err(OverAllowance {
                    who: "this node".into(),
                    by: "uploads in progress from too many sources",
                    wanted: bytes,
                    limit: 0,
                });
            }
        }
        for key in keys {
            let level = self.drained(c.pending.get(&key), now);
            c.pending.insert(
                key,
                Pending {
                    bytes: level + bytes as f64,
                    at: now,
                    limit,
                },
            );
        }
        Ok(())
    }

    /// Forgets the pending charges of ids (those of their prefixes keep
    /// the bound) and of prefixes that have drained.
    fn make_room(&self, pending: &mut HashMap<Key, Pending>, now: Instant) {
        pending.retain(|k, p| matches!(k, Key::Prefix(_)) && self.drained(Some(p), now) >= 1.0);
    }

    /// Checks a HOLD of `size` bytes by `up` against its allowance and, if
    /// it fits, runs `record` (which makes the file held for `up`, off the
    /// async threads); if the store counted it for `up`, the file's bytes
    /// count as held, no longer pending.
    pub async fn agree(
        &self,
        store: &Store,
        up: &Uploader,
        size: u64,
        record: impl FnOnce() -> Result<Added, StoreError> + Send + 'static,
    ) -> Result<Result<Added, StoreError>, OverAllowance> {
        let reservation = self.reserve(store, up, size)?;
        let out = tokio::task::spawn_blocking(record)
            .await
            .unwrap_or_else(|e| Err(StoreError::Db(format!("store task failed: {e}"))));
        if let Some(r) = reservation {
            r.finish(out.as_ref().is_ok_and(|a| a.counted));
        }
        Ok(out)
    }

    /// Takes `size` from `up`'s allowance for a HOLD being recorded (none
    /// for a peer bounded by the quota alone).
    fn reserve(
        &self,
        store: &Store,
        up: &Uploader,
        size: u64,
    ) -> Result<Option<Reservation<'_>>, OverAllowance> {
        let Some(limit) = up.limit else {
            return Ok(None);
        };
        let mut c = self.lock();
        let held = store.held_for(&up.source);
        let keys = keys(up);
        for key in keys {
            let wanted = held_by(&held, key)
                .saturating_add(c.holding.get(&key).copied().unwrap_or(0))
                .saturating_add(size);
            if wanted > limit {
                return Err(over(key, wanted, limit));
            }
        }
        for key in keys {
            let v = c.holding.entry(key).or_insert(0);
            *v = v.saturating_add(size);
        }
        Ok(Some(Reservation {
            allowances: self,
            keys,
            size,
        }))
    }

    /// A pending charge drained to `now`.
    fn drained(&self, p: Option<&Pending>, now: Instant) -> f64 {
        let Some(p) = p else { return 0.0 };
        let secs = self.policy.window.as_secs_f64().max(1.0);
        let gone = now.saturating_duration_since(p.at).as_secs_f64() * p.limit as f64 / secs;
        (p.bytes - gone).max(0.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Charges> {
        self.charges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn keys(up: &Uploader) -> [Key; 2] {
    [Key::Id(up.source.id), Key::Prefix(up.source.prefix)]
}

fn held_by(held: &HeldFor, key: Key) -> u64 {
    match key {
        Key::Id(_) => held.by_id,
        Key::Prefix(_) => held.by_prefix,
    }
}

fn over(key: Key, wanted: u64, limit: u64) -> OverAllowance {
    let (who, by) = match key {
        Key::Id(id) => (id.fmt_short().to_string(), "id"),
        Key::Prefix(p) => (p.to_string(), "address prefix"),
    };
    OverAllowance {
        who,
        by,
        wanted,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(window: Duration) -> AllowancePolicy {
        AllowancePolicy {
            stranger: 1000,
            member: Some(5000),
            members: false,
            limit_loopback: false,
            window,
        }
    }

    fn id(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn loopback_is_a_friend_members_and_strangers_have_limits() {
        let a = Allowances::new(policy(Duration::from_secs(60)));
        let friend = a.uploader(id(1), "127.0.0.1".parse().unwrap());
        assert_eq!((friend.trust, friend.limit), (Trust::Friend, None));
        let stranger = a.uploader(id(1), "203.0.113.1".parse().unwrap());
        assert_eq!(
            (stranger.trust, stranger.limit),
            (Trust::Stranger, Some(1000))
        );
        let a = Allowances::new(AllowancePolicy {
            members: true,
            limit_loopback: true,
            ..policy(Duration::from_secs(60))
        });
        let member = a.uploader(id(1), "127.0.0.1".parse().unwrap());
        assert_eq!((member.trust, member.limit), (Trust::Member, Some(5000)));
    }

    #[test]
    fn identities_on_one_prefix_share_one_allowance_that_drains() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let a = Allowances::new(policy(Duration::from_millis(1000)));
        let one = a.uploader(id(1), "203.0.113.1".parse().unwrap());
        let two = a.uploader(id(2), "203.0.113.2".parse().unwrap());
        let elsewhere = a.uploader(id(3), "198.51.100.1".parse().unwrap());
        a.admit(&store, &one, 600).unwrap();
        let e = a.admit(&store, &two, 600).unwrap_err();
        assert_eq!(e.by, "address prefix");
        assert_eq!(e.who, "203.0.113.0/24");
        a.admit(&store, &elsewhere, 1000).unwrap();
        assert!(a.admit(&store, &elsewhere, 100).is_err());
        // The window drains the pending charge.
        std::thread::sleep(Duration::from_millis(700));
        a.admit(&store, &two, 600).unwrap();
    }

    fn record_again() -> crate::store::FileRecord {
        crate::store::FileRecord {
            name: "f".into(),
            size: 300,
            is_dir: false,
        }
    }

    #[tokio::test]
    async fn held_files_count_against_the_allowance_and_free_the_pending_charge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 700]).unwrap();
        let file = store.import(&path, 1 << 20).unwrap().root;
        let a = Allowances::new(policy(Duration::from_secs(3600)));
        let up = a.uploader(id(1), "203.0.113.1".parse().unwrap());
        a.admit(&store, &up, 700).unwrap();
        let record = crate::store::FileRecord {
            name: "f".into(),
            size: 700,
            is_dir: false,
        };
        let s = store.clone();
        let source = up.source;
        let held = a.agree(&store, &up, 700, move || {
            s.add_file_for(&file, &record, Some((&source, 700)))
        });
        assert!(held.await.unwrap().unwrap().counted);
        // 700 held, nothing pending: 300 more fit, 301 do not.
        assert!(a.admit(&store, &up, 301).is_err());
        a.admit(&store, &up, 300).unwrap();
        // Held again (a second HOLD of the same file): it counted already,
        // so the pending charge stays.
        let s = store.clone();
        let again = a.agree(&store, &up, 300, move || {
            s.add_file_for(&file, &record_again(), Some((&source, 300)))
        });
        assert!(!again.await.unwrap().unwrap().counted);
        assert!(
            a.admit(&store, &up, 1).is_err(),
            "a repeated HOLD refunded nothing"
        );
        let too_big = a
            .agree(&store, &up, 301, || unreachable!("not recorded"))
            .await
            .unwrap_err();
        assert_eq!(
            (too_big.by, too_big.wanted, too_big.limit),
            ("id", 1001, 1000)
        );
    }
}
