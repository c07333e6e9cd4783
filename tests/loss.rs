//! Bad links: every test here sends its traffic through the UDP impairment
//! relay (`quic_peer_relay`) and asserts the relay's counters, so a pass
//! proves the bytes crossed the lossy path rather than going around it.
//!
//! Nodes that must only be reachable through a relay advertise the relay's
//! address (`NodeConfig::advertise`), so gossip and the DHT spread that address
//! and every connection to them crosses it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{
    at, get_to, init_logs, put, random_bytes, store_node_with, wait_event, wait_until, StoreNode,
};
use quic_peer::download::{download, DownloadOptions, NoProgress, Provider};
use quic_peer::proto::ticket::Target;
use quic_peer::proto::wire::Role;
use quic_peer::replication;
use quic_peer::{LeftReason, Node, NodeConfig, PeerAddr, PeerEvent};
use quic_peer_relay::{Impairment, Relay, RelayConfig};

const MIB: usize = 1 << 20;

/// A store node reachable only through its own relay.
struct Relayed {
    s: StoreNode,
    relay: Relay,
}

impl Relayed {
    fn node(&self) -> &Node {
        &self.s.node
    }

    /// The address others dial: the relay's, pinned to the node's id.
    fn addr(&self) -> PeerAddr {
        PeerAddr::pinned(self.s.node.id(), self.relay.local_addr())
    }
}

/// Starts a store node behind a relay with `config`: the relay's socket is bound
/// first so the node can advertise it.
async fn relayed(bootstrap: Vec<PeerAddr>, config: RelayConfig) -> Relayed {
    let sock =
        quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
    let relay_addr = sock.local_addr().unwrap();
    let s = store_node_with(&[], |c| {
        c.advertise = vec![relay_addr];
        c.bootstrap = bootstrap;
    })
    .await;
    let relay = Relay::start_on(sock, s.node.local_addr(), config).unwrap();
    Relayed { s, relay }
}

/// A client-role node (never dialed back, never gossiped): its only
/// connections are the ones it makes.
async fn client() -> Node {
    init_logs();
    Node::start(NodeConfig {
        role: Role::Client,
        ..NodeConfig::local_test()
    })
    .await
    .unwrap()
}

/// Writes `data` to a temp file and stores it on `node` only.
async fn store_locally(node: &Node, dir: &Path, data: &[u8]) -> replication::PutReport {
    let path = dir.join("src.bin");
    std::fs::write(&path, data).unwrap();
    put(node, &path, 0).await
}

/// A 32 MiB file crosses a link with `loss` each way, 2% duplication and 2%
/// reordering, and arrives byte for byte.
async fn file_through_loss(loss: f64, seed: u64) {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let holder = store_node_with(&[], |_| {}).await;
    let data = random_bytes(32 * MIB, seed);
    let report = store_locally(&holder.node, dir.path(), &data).await;
    let imp = Impairment {
        loss,
        duplicate: 0.02,
        reorder: 0.02,
        ..Impairment::default()
    };
    let relay = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        holder.node.local_addr(),
        RelayConfig {
            seed,
            ..RelayConfig::symmetric(imp)
        },
    )
    .await
    .unwrap();
    let getter = client().await;
    let id = getter
        .connect(&PeerAddr::pinned(holder.node.id(), relay.local_addr()))
        .await
        .expect("the handshake survives the loss");
    let provider = Provider {
        id,
        conn: getter.connection(&id).unwrap(),
    };
    assert_eq!(provider.conn.remote_address(), relay.local_addr());
    let out = dir.path().join("out.bin");
    let stats = download(
        vec![provider],
        report.id,
        &out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .expect("download completes");
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(std::fs::read(&out).unwrap() == data, "bytes differ");

    let s = relay.stats();
    eprintln!(
        "loss {loss}: {:?}\n  back: {}\n  fwd: {}",
        stats.elapsed, s.backward, s.forward
    );
    assert!(
        s.backward.bytes_out >= data.len() as u64,
        "the file crossed the relay: {s:?}"
    );
    for d in [s.forward, s.backward] {
        // Each datagram is dropped with probability `loss`: the measured
        // rate is within three standard deviations of it (the forward
        // direction carries only a few hundred datagrams of requests and
        // acknowledgements, so its rate wanders more than the data's).
        let rate = d.loss_rate();
        let sigma = (loss * (1.0 - loss) / d.datagrams_in.max(1) as f64).sqrt();
        assert!(
            (rate - loss).abs() <= 3.0 * sigma + 0.01,
            "drop rate {rate:.3} near the setting {loss} (3 sigma = {:.3}): {d}",
            3.0 * sigma
        );
        assert!(d.duplicated > 0 && d.reordered > 0, "{d}");
    }
    getter.shutdown().await;
    holder.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_whole_through_a_clean_relay() {
    file_through_loss(0.0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_whole_through_5_percent_loss() {
    file_through_loss(0.05, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_whole_through_20_percent_loss() {
    file_through_loss(0.20, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_whole_through_30_percent_loss() {
    file_through_loss(0.30, 4).await;
}

/// Eight nodes, each reachable only through its own relay dropping 20% of
/// datagrams both ways: JOIN and gossip still build the full mesh, DHT lookups
/// find the holders of a file, and nodes that never held it fetch it by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_gossip_and_lookups_work_at_20_percent_loss() {
    const N: usize = 8;
    let lossy = |seed| RelayConfig {
        seed,
        ..RelayConfig::symmetric(Impairment {
            duplicate: 0.01,
            ..Impairment::loss(0.2)
        })
    };
    let first = relayed(Vec::new(), lossy(100)).await;
    let boot = first.addr();
    let mut net = vec![first];
    for i in 1..N {
        net.push(relayed(vec![boot.clone()], lossy(100 + i as u64)).await);
    }
    let nodes: Vec<Node> = net.iter().map(|r| r.node().clone()).collect();
    wait_until(
        "a full mesh through lossy links",
        Duration::from_secs(60),
        || nodes.iter().all(|n| n.connected_peers().len() == N - 1),
    )
    .await;
    // No connection went around the relays: none has a node's own socket as
    // its remote end (through a relay, the dialer sees the relay's address and
    // the listener the relay's upstream socket).
    let real: Vec<_> = nodes.iter().map(|n| n.local_addr()).collect();
    for n in &nodes {
        for id in n.connected_peers() {
            let remote = n.connection(&id).unwrap().remote_address();
            assert!(
                !real.contains(&remote),
                "{remote}: a connection bypassed the relays"
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * MIB, 77);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let report = put(&nodes[3], &path, 2).await;
    assert_eq!(report.remote_copies, 2, "{:?}", report.failures);
    let holders: Vec<_> = report.holders.iter().map(|h| h.id).collect();

    // Lookups from every node find at least one holder.
    for n in &nodes {
        let found = n.dht().lookup_providers(report.id, 8).await;
        assert!(
            found.providers.iter().any(|p| holders.contains(&p.id)),
            "{} found no holder",
            n.id().fmt_short()
        );
    }
    // Two nodes that hold nothing fetch it by id alone.
    let mut fetched = 0;
    for n in nodes.iter().filter(|n| !holders.contains(&n.id())).take(2) {
        let out = dir.path().join(format!("out-{fetched}.bin"));
        get_to(n, report.id, &out)
            .await
            .expect("get by id through lossy links");
        assert!(std::fs::read(&out).unwrap() == data);
        fetched += 1;
    }
    assert_eq!(fetched, 2);

    // A relay sits in front of each node; one whose node dialed every peer
    // itself carries nothing, so only the relays together must have: the
    // check above shows no connection went around them.
    let mut total = quic_peer_relay::DirStats::default();
    let mut used = 0;
    for r in &net {
        let s = r.relay.stats();
        used += usize::from(s.sessions > 0 && s.bytes_out() > 0);
        total.datagrams_in += s.forward.datagrams_in + s.backward.datagrams_in;
        total.dropped_loss += s.forward.dropped_loss + s.backward.dropped_loss;
    }
    let rate = total.loss_rate();
    eprintln!(
        "mesh of {N} at 20% loss: {} datagrams, {:.1}% dropped",
        total.datagrams_in,
        rate * 100.0
    );
    assert!(used >= N / 2, "only {used} of {N} relays carried traffic");
    assert!((0.17..0.23).contains(&rate), "drop rate {rate}");
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A link blackholed for longer than the idle timeout is reported as a leave
/// (timed out) on both sides, and the peers find each other again when it
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_is_a_leave_and_heals_when_it_returns() {
    let a = relayed(Vec::new(), RelayConfig::default()).await;
    let b = relayed(vec![a.addr()], RelayConfig::default()).await;
    wait_until("a and b connected", Duration::from_secs(10), || {
        a.node().connected_peers().contains(&b.node().id())
            && b.node().connected_peers().contains(&a.node().id())
    })
    .await;
    let mut a_events = a.node().subscribe();
    let mut b_events = b.node().subscribe();
    let idle = a.node().config().idle_timeout;
    let outage = idle + Duration::from_secs(2);
    a.relay.blackhole_for(outage);
    b.relay.blackhole_for(outage);

    let (b_id, a_id) = (b.node().id(), a.node().id());
    let left = |id| move |e: &PeerEvent| matches!(e, PeerEvent::Left { id: x, .. } if *x == id);
    let (e, took) = wait_event(&mut a_events, idle * 3, left(b_id)).await;
    assert!(
        matches!(
            e,
            PeerEvent::Left {
                reason: LeftReason::TimedOut,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        took >= idle.mul_f64(0.8),
        "not before the idle timeout: {took:?}"
    );
    let (e, _) = wait_event(&mut b_events, idle * 3, left(a_id)).await;
    assert!(
        matches!(
            e,
            PeerEvent::Left {
                reason: LeftReason::TimedOut,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        a.relay.stats().forward.dropped_blackhole + b.relay.stats().forward.dropped_blackhole > 0
    );

    // The link comes back; they reconnect on their own.
    let joined = |id| move |e: &PeerEvent| matches!(e, PeerEvent::Joined { id: x, .. } if *x == id);
    let (_, took) = wait_event(&mut a_events, Duration::from_secs(30), joined(b_id)).await;
    eprintln!("rejoined {took:?} after the leave");
    assert!(
        !a.relay.is_blackholed(),
        "rejoined only after the link returned"
    );
    wait_until("both see the other again", Duration::from_secs(10), || {
        a.node().connected_peers().contains(&b_id) && b.node().connected_peers().contains(&a_id)
    })
    .await;
    a.node().shutdown().await;
    b.node().shutdown().await;
}

/// Downloads from a single holder through a relay that goes dark at 30% of the
/// way for `outage`; returns the stats and whether the bytes matched.
async fn download_across_outage(outage: Duration, seed: u64) -> quic_peer::download::DownloadStats {
    let holder = relayed(Vec::new(), RelayConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * MIB, seed);
    let report = store_locally(holder.node(), dir.path(), &data).await;
    assert_eq!(
        report.ticket.holders[0].addrs,
        vec![holder.relay.local_addr()]
    );
    let getter = client().await;
    let relay = Arc::new(holder.relay);
    let r = relay.clone();
    let progress = at(0.3, move || r.blackhole_for(outage));
    let out = dir.path().join("out.bin");
    let opts = DownloadOptions {
        max_in_flight: 4,
        per_peer: 4,
        retry_for: Duration::from_secs(30),
        ..DownloadOptions::default()
    };
    let stats = getter
        .get(
            &Target::Ticket(report.ticket.clone()),
            &out,
            &opts,
            progress.clone(),
        )
        .await
        .expect("the download completes once the path returns");
    assert!(progress.fired.load(std::sync::atomic::Ordering::SeqCst));
    assert!(std::fs::read(&out).unwrap() == data, "bytes differ");
    let s = relay.stats();
    assert!(
        s.forward.dropped_blackhole + s.backward.dropped_blackhole > 0,
        "{s:?}"
    );
    assert!(s.backward.bytes_out >= data.len() as u64, "{s:?}");
    getter.shutdown().await;
    holder.s.node.shutdown().await;
    stats
}

/// Dark for less than the idle timeout: QUIC rides it out and the first
/// attempt completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_rides_out_a_short_outage() {
    init_logs();
    let stats = download_across_outage(Duration::from_millis(1500), 21).await;
    assert_eq!(stats.attempts, 1, "{stats:?}");
}

/// Dark for longer than the idle timeout: the connection dies, the attempt is
/// incomplete, and `get` finds the holder again when the path returns and
/// resumes from the chunks it already wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_only_path_goes_dark_resumes_when_it_returns() {
    init_logs();
    let stats = download_across_outage(Duration::from_secs(5), 22).await;
    assert!(stats.attempts >= 2, "{stats:?}");
    assert!(
        stats.chunks_resumed >= 5,
        "resumed from the .part: {stats:?}"
    );
    assert_eq!(stats.chunks_resumed + stats.chunks_fetched, 24, "{stats:?}");
}

/// End game: when one of two holders goes silent mid-download, the chunks it
/// was sending are asked of the other once nothing else is left, and the
/// download finishes before the silent connection has even timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_does_not_hold_up_the_last_chunks() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(24 * MIB, 31);
    let h1 = relayed(Vec::new(), RelayConfig::default()).await;
    let h2 = relayed(Vec::new(), RelayConfig::default()).await;
    let report = store_locally(h1.node(), dir.path(), &data).await;
    store_locally(h2.node(), dir.path(), &data).await;
    let getter = client().await;
    let mut providers = Vec::new();
    for h in [&h1, &h2] {
        let id = getter.connect(&h.addr()).await.unwrap();
        providers.push(Provider {
            id,
            conn: getter.connection(&id).unwrap(),
        });
    }
    let silent_at = Arc::new(std::sync::Mutex::new(None));
    let (relay, at_) = (Arc::new(h1.relay), silent_at.clone());
    let r = relay.clone();
    let progress = at(0.5, move || {
        r.set_blackhole(true);
        *at_.lock().unwrap() = Some(std::time::Instant::now());
    });
    let out = dir.path().join("out.bin");
    let stats = download(
        providers,
        report.id,
        &out,
        &DownloadOptions::default(),
        progress,
    )
    .await
    .expect("the other holder finishes the download");
    let after = silent_at.lock().unwrap().expect("went silent").elapsed();
    let idle = getter.config().idle_timeout;
    eprintln!("finished {after:?} after one holder went silent: {stats:?}");
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(stats.endgame_requests > 0, "{stats:?}");
    assert!(
        after < idle,
        "done {after:?} after the silence, before the {idle:?} idle timeout"
    );
    getter.shutdown().await;
    h2.s.node.shutdown().await;
    h1.s.node.shutdown().await;
}
