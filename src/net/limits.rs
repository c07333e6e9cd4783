//! What one source may make the node spend: connections per address
//! (loopback exempt unless told otherwise), request streams per second per
//! peer, refusals explained per second, and log lines per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use crate::proto::NodeId;

use super::lock;

/// Handshakes in progress above which a new, unvalidated address must first
/// echo a QUIC Retry token: a spoofed source address cannot, so it costs the
/// node no handshake and takes no per-address slot.
pub(crate) const RETRY_ABOVE_HANDSHAKES: usize = 64;
/// Refusals per second, node-wide, that may cost a handshake to tell the
/// refused side which limit it hit (see `Network::refuse`); beyond these,
/// and their burst, a refusal is QUIC's bare CONNECTION_REFUSED.
pub(crate) const EXPLAINED_REFUSALS_PER_SEC: u32 = 16;
/// The burst of explained refusals.
pub(crate) const EXPLAINED_REFUSALS_BURST: u32 = 32;
/// A limit hit by one source (an address, a peer) is logged at most once per
/// this long; the repeats in between are counted in the next line.
const LOG_WINDOW: Duration = Duration::from_secs(60);
/// Sources the log gate remembers at most.
const LOG_GATE_MAX: usize = 4096;

/// Live incoming connections per address key (see [`ip_key`]).
pub(crate) type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The address a per-address limit counts: an IPv4 address as it is (also
/// when it arrives IPv4-mapped), an IPv6 address by its /64, which one
/// subscriber usually holds whole.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Whether connections from `ip` are free of the per-address limit: a
/// loopback address (127.0.0.0/8, ::1, also IPv4-mapped) is, unless
/// `limit_loopback`. Nodes on one machine all dial from 127.0.0.1, and a
/// stranger cannot send from there.
pub(crate) fn exempt_from_per_ip(ip: IpAddr, limit_loopback: bool) -> bool {
    !limit_loopback && ip.to_canonical().is_loopback()
}

/// One of an address's connection slots, given back on drop.
pub(crate) struct IpSlot {
    counts: IpCounts,
    key: IpAddr,
}

impl IpSlot {
    /// A slot for `key`, if it has fewer than `max` in use.
    pub(crate) fn take(counts: &IpCounts, key: IpAddr, max: usize) -> Option<IpSlot> {
        let mut c = lock(counts);
        let n = c.get(&key).copied().unwrap_or(0);
        if n >= max {
            return None;
        }
        c.insert(key, n + 1);
        Some(IpSlot {
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// What a connection holds while it lives: its place under
/// `max_connections` and, if it came in, under `max_connections_per_ip`.
pub(crate) struct ConnPermit {
    pub(crate) _total: OwnedSemaphorePermit,
    pub(crate) _ip: Option<IpSlot>,
}

/// Counts a handshake in progress until dropped.
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A source of repeated log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LogKey {
    /// The total connection limit.
    Total,
    /// An address over its connection limit.
    PerIp(IpAddr),
    /// Failed incoming handshakes from an address.
    Handshake(IpAddr),
    /// A peer over its request rate.
    Rate(NodeId),
    /// Connections from an address closed for breaking the protocol.
    Hostile(IpAddr),
}

/// Lets the first line about a source through, then one per [`LOG_WINDOW`],
/// counting the ones held back.
#[derive(Default)]
pub(crate) struct LogGate {
    seen: HashMap<LogKey, (Instant, u64)>,
}

impl LogGate {
    /// `Some(held back since the last line)` if a line about `key` may be
    /// logged now.
    pub(crate) fn check(&mut self, key: LogKey, now: Instant) -> Option<u64> {
        if let Some((since, held)) = self.seen.get_mut(&key) {
            if now.saturating_duration_since(*since) < LOG_WINDOW {
                *held += 1;
                return None;
            }
            let n = *held;
            *since = now;
            *held = 0;
            return Some(n);
        }
        if self.seen.len() >= LOG_GATE_MAX {
            self.seen
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < LOG_WINDOW);
            if self.seen.len() >= LOG_GATE_MAX {
                self.seen.clear();
            }
        }
        self.seen.insert(key, (now, 0));
        Some(0)
    }
}

/// " (N more not logged)" after a gated line, or nothing.
pub(crate) fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last such line)")
    }
}

/// Request streams a connection may open: `rate` per second, up to `burst`
/// at once.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5, "the burst");
        // A tenth of a second buys one more; a long pause refills only to the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(later)).count(), 5);
        // Rate 0: no limit.
        let mut free = TokenBucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| free.take(t0)));
    }

    #[test]
    fn log_gate_lets_one_line_per_source_per_window() {
        let t0 = Instant::now();
        let mut g = LogGate::default();
        let a = LogKey::PerIp([10, 0, 0, 1].into());
        let b = LogKey::PerIp([10, 0, 0, 2].into());
        assert_eq!(g.check(a, t0), Some(0));
        assert_eq!(g.check(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(g.check(a, t0 + Duration::from_secs(2)), None);
        assert_eq!(g.check(b, t0), Some(0), "another source is logged");
        assert_eq!(g.check(a, t0 + LOG_WINDOW), Some(2), "then the count");
        // Bounded however many sources there are.
        for i in 0..(LOG_GATE_MAX as u32 * 2) {
            g.check(LogKey::PerIp(std::net::Ipv4Addr::from(i).into()), t0);
        }
        assert!(g.seen.len() <= LOG_GATE_MAX);
    }

    #[test]
    fn ip_slots_count_per_address_and_come_back() {
        let counts = IpCounts::default();
        let a = ip_key([127, 0, 0, 1].into());
        let b = ip_key([127, 0, 0, 2].into());
        let held: Vec<_> = (0..3)
            .map(|_| IpSlot::take(&counts, a, 3).unwrap())
            .collect();
        assert!(IpSlot::take(&counts, a, 3).is_none());
        assert!(IpSlot::take(&counts, b, 3).is_some());
        drop(held);
        assert!(lock(&counts).is_empty(), "nothing left behind");
        assert!(IpSlot::take(&counts, a, 3).is_some());
    }

    #[test]
    fn loopback_is_exempt_unless_limited() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(exempt_from_per_ip(ip, false), "{ip}");
            assert!(!exempt_from_per_ip(ip, true), "{ip} with --limit-loopback");
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.2",
            "2001:db8::1",
            "::ffff:10.1.2.3",
            "0.0.0.0",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!exempt_from_per_ip(ip, false), "{ip}");
        }
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(x), ip_key(y));
        assert_ne!(ip_key(x), ip_key(z));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(mapped), IpAddr::from([10, 1, 2, 3]));
    }
}
