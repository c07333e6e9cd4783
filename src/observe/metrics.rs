//! A node's Prometheus metrics, in a registry of its own so that several
//! nodes in one process (tests, the demo) never share a counter.
//!
//! Counters are bumped where things happen; the gauges (peers, store use,
//! the routing table) and the transport byte counters are brought up to date
//! just before each scrape by the layer that knows them.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A label naming a request kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `get_chunk`, `put_chunk`, `hold`, `dht`, ...
    pub kind: &'static str,
}

/// A request refused or failed, by kind and code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The request kind.
    pub kind: &'static str,
    /// The wire error code or refusal reason.
    pub code: String,
}

/// Which way data went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `in` or `out`.
    pub direction: &'static str,
}

/// What came of something.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, or the kind of failure.
    pub result: &'static str,
}

/// Why a connection closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `leave`, `timed_out`, `closed`, `replaced`.
    pub reason: &'static str,
}

/// What repair did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// `copied`, `trimmed`, `unproven`.
    pub action: &'static str,
}

/// The direction labels.
pub const IN: DirectionLabel = DirectionLabel { direction: "in" };
/// See [`IN`].
pub const OUT: DirectionLabel = DirectionLabel { direction: "out" };

/// One node's metrics. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// The metrics themselves, bumped by every layer through [`Metrics::get`].
pub struct Inner {
    registry: Registry,
    /// Request streams received, by kind.
    pub requests: Family<KindLabel, Counter>,
    /// Requests refused or failed, by kind and code.
    pub errors: Family<ErrorLabels, Counter>,
    /// Connections that came up, by direction.
    pub connections_opened: Family<DirectionLabel, Counter>,
    /// Connections that closed, by reason.
    pub connections_closed: Family<ReasonLabel, Counter>,
    /// Connections up now.
    pub connections: Gauge,
    /// Full nodes that are members now.
    pub peers: Gauge,
    /// Peers known from gossip but not connected.
    pub known_peers: Gauge,
    /// UDP payload bytes of every connection, each way.
    pub transport_bytes: Family<DirectionLabel, Counter>,
    /// Chunks served (`out`) and stored or downloaded (`in`), verified.
    pub chunks: Family<DirectionLabel, Counter>,
    /// Bytes of those chunks.
    pub chunk_bytes: Family<DirectionLabel, Counter>,
    /// DHT lookups run.
    pub dht_lookups: Counter,
    /// How long they took.
    pub dht_lookup_seconds: Histogram,
    /// Contacts in the routing table.
    pub dht_contacts: Gauge,
    /// Bytes stored.
    pub store_bytes: Gauge,
    /// The quota.
    pub store_quota_bytes: Gauge,
    /// Files held.
    pub store_files: Gauge,
    /// What repair did.
    pub repairs: Family<ActionLabel, Counter>,
    /// Peers banned for serving bad data.
    pub bans: Counter,
    /// Gets finished, by result.
    pub downloads: Family<ResultLabel, Counter>,
    /// Their throughput.
    pub download_bytes_per_second: Histogram,
    /// Puts finished, by result.
    pub puts: Family<ResultLabel, Counter>,
    /// Transport bytes of closed connections, and what the counters show.
    transport: Mutex<Transport>,
}

#[derive(Default)]
struct Transport {
    closed: [u64; 2],
    reported: [u64; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("quic_peer");
        let inner = Inner {
            requests: Family::default(),
            errors: Family::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            connections: Gauge::default(),
            peers: Gauge::default(),
            known_peers: Gauge::default(),
            transport_bytes: Family::default(),
            chunks: Family::default(),
            chunk_bytes: Family::default(),
            dht_lookups: Counter::default(),
            dht_lookup_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            dht_contacts: Gauge::default(),
            store_bytes: Gauge::default(),
            store_quota_bytes: Gauge::default(),
            store_files: Gauge::default(),
            repairs: Family::default(),
            bans: Counter::default(),
            downloads: Family::default(),
            download_bytes_per_second: Histogram::new(exponential_buckets(1e5, 4.0, 10)),
            puts: Family::default(),
            transport: Mutex::new(Transport::default()),
            registry: Registry::default(),
        };
        inner.register_connections(&mut registry);
        inner.register_data(&mut registry);
        inner.register_work(&mut registry);
        // The byte counters show 0 rather than nothing before any traffic.
        for dir in [IN, OUT] {
            let _ = inner.transport_bytes.get_or_create(&dir);
            let _ = inner.chunks.get_or_create(&dir);
            let _ = inner.chunk_bytes.get_or_create(&dir);
        }
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// The metrics, to bump.
    pub fn get(&self) -> &Inner {
        &self.inner
    }

    /// A request of `kind` was refused or failed with `code`.
    pub fn error(&self, kind: &'static str, code: impl std::fmt::Debug) {
        let code = format!("{code:?}");
        self.inner
            .errors
            .get_or_create(&ErrorLabels { kind, code })
            .inc();
    }

    /// A verified chunk of `bytes` went `dir` (served, stored, downloaded).
    pub fn chunk(&self, dir: &DirectionLabel, bytes: u64) {
        self.inner.chunks.get_or_create(dir).inc();
        self.inner.chunk_bytes.get_or_create(dir).inc_by(bytes);
    }

    /// A connection closed: its bytes stay counted.
    pub fn connection_closed(&self, stats: &quinn::ConnectionStats) {
        let mut t = self
            .inner
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.closed[0] += stats.udp_rx.bytes;
        t.closed[1] += stats.udp_tx.bytes;
    }

    /// Brings the transport counters up to the bytes of the connections
    /// still up (`[received, sent]`) plus those of closed ones.
    pub fn transport_now(&self, live: [u64; 2]) -> [u64; 2] {
        let mut t = self
            .inner
            .transport
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut totals = [0; 2];
        for (i, dir) in [IN, OUT].iter().enumerate() {
            let total = t.closed[i].saturating_add(live[i]);
            if total > t.reported[i] {
                self.inner
                    .transport_bytes
                    .get_or_create(dir)
                    .inc_by(total - t.reported[i]);
                t.reported[i] = total;
            }
            totals[i] = t.reported[i];
        }
        totals
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

impl Inner {
    /// Requests, connections, peers, transport bytes.
    fn register_connections(&self, r: &mut Registry) {
        r.register(
            "requests",
            "Request streams received, by kind",
            self.requests.clone(),
        );
        r.register(
            "request_errors",
            "Requests refused or failed, by kind and code",
            self.errors.clone(),
        );
        r.register(
            "connections_opened",
            "Connections that came up, by direction",
            self.connections_opened.clone(),
        );
        r.register(
            "connections_closed",
            "Connections that closed, by reason",
            self.connections_closed.clone(),
        );
        r.register("connections", "Connections up", self.connections.clone());
        r.register("peers", "Full nodes that are members", self.peers.clone());
        r.register(
            "known_peers",
            "Peers known from gossip, not connected",
            self.known_peers.clone(),
        );
        r.register_with_unit(
            "transport",
            "UDP payload bytes of all connections, by direction",
            Unit::Bytes,
            self.transport_bytes.clone(),
        );
    }

    /// Chunks, the DHT, the bytes stored.
    fn register_data(&self, r: &mut Registry) {
        r.register(
            "chunks",
            "Verified chunks served (out) and received (in)",
            self.chunks.clone(),
        );
        r.register_with_unit(
            "chunk",
            "Bytes of verified chunks served (out) and received (in)",
            Unit::Bytes,
            self.chunk_bytes.clone(),
        );
        r.register("dht_lookups", "DHT lookups run", self.dht_lookups.clone());
        r.register_with_unit(
            "dht_lookup",
            "Time a DHT lookup took",
            Unit::Seconds,
            self.dht_lookup_seconds.clone(),
        );
        r.register(
            "dht_contacts",
            "Contacts in the routing table",
            self.dht_contacts.clone(),
        );
        r.register_with_unit(
            "store",
            "Bytes stored",
            Unit::Bytes,
            self.store_bytes.clone(),
        );
        r.register_with_unit(
            "store_quota",
            "The storage quota",
            Unit::Bytes,
            self.store_quota_bytes.clone(),
        );
    }

    /// Files held, repairs, bans, gets and puts.
    fn register_work(&self, r: &mut Registry) {
        r.register("store_files", "Files held", self.store_files.clone());
        r.register(
            "repairs",
            "Repair actions: copies restored, trimmed, holders unproven",
            self.repairs.clone(),
        );
        r.register(
            "bans",
            "Peers banned for serving bad data",
            self.bans.clone(),
        );
        r.register(
            "downloads",
            "Gets finished, by result",
            self.downloads.clone(),
        );
        r.register(
            "download_throughput_bytes_per_second",
            "Throughput of finished gets",
            self.download_bytes_per_second.clone(),
        );
        r.register("puts", "Puts finished, by result", self.puts.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_do_not_share_counters() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.get().chunks.get_or_create(&IN).inc();
        assert!(a
            .encode()
            .contains("quic_peer_chunks_total{direction=\"in\"} 1"));
        assert!(!b.encode().contains("direction=\"in\"} 1"));
    }

    #[test]
    fn transport_bytes_never_go_back() {
        let m = Metrics::new();
        assert_eq!(m.transport_now([100, 50]), [100, 50]);
        // A connection closing moves its bytes from live to closed.
        let mut stats = quinn::ConnectionStats::default();
        stats.udp_rx.bytes = 120;
        stats.udp_tx.bytes = 60;
        m.connection_closed(&stats);
        assert_eq!(m.transport_now([0, 0]), [120, 60]);
        assert_eq!(m.transport_now([0, 0]), [120, 60]);
        assert!(m
            .encode()
            .contains("quic_peer_transport_bytes_total{direction=\"in\"} 120"));
    }
}
