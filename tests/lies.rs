//! Peers that lie: every kind of lie is caught, bounded and scored down, the
//! file still arrives intact from an honest holder, and a peer banned in one
//! download is not asked in the next.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::liar::{Liar, Lie};
use common::{get_to, random_bytes, store_network, wait_until, StoreNode};
use quic_peer::download::score::PeerScores;
use quic_peer::download::{download_scored, DownloadOptions, DownloadStats, NoProgress, Provider};
use quic_peer::proto::ticket::Target;
use quic_peer::proto::Hash;

const MIB: usize = 1 << 20;
/// Small chunks, so a file has enough of them for a liar to be caught often.
const CHUNK: u32 = 256 << 10;

/// Two nodes, a file of `size` random bytes put on the first: (network, id,
/// the bytes, a temp dir for outputs).
async fn setup(size: usize, seed: u64) -> (Vec<StoreNode>, Hash, Vec<u8>, tempfile::TempDir) {
    let net = store_network(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(size, seed);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).expect("write");
    let report = common::put_chunked(&net[0].node, &path, 0, CHUNK).await;
    (net, report.id, data, dir)
}

/// Downloads `id` from the liar and the honest holder, with `scores`.
async fn fetch(
    net: &[StoreNode],
    liar: &Liar,
    id: Hash,
    out: &Path,
    opts: &DownloadOptions,
    scores: &PeerScores,
) -> DownloadStats {
    let honest = net[0].node.id();
    let providers = vec![
        Provider {
            id: liar.id,
            conn: liar.connect().await.expect("connect to the liar"),
        },
        Provider {
            id: honest,
            conn: net[1].node.connection(&honest).expect("connected"),
        },
    ];
    download_scored(providers, id, out, opts, Arc::new(NoProgress), scores)
        .await
        .expect("the download succeeds despite the liar")
}

async fn shutdown(net: Vec<StoreNode>) {
    for s in net {
        s.node.shutdown().await;
    }
}

/// Wrong bytes, a wrong length, an endless stream: each is caught at the first
/// chunk, nothing from the liar is written, and it is banned for the next
/// download too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_wrong_lengths_and_endless_streams_ban_the_liar() {
    let (net, id, data, dir) = setup(4 * MIB, 11).await;
    for lie in [Lie::Flip, Lie::Short, Lie::Endless] {
        let liar = Liar::start_with(net[0].node.store().expect("store"), id, lie)
            .await
            .expect("liar");
        let scores = PeerScores::new();
        let opts = DownloadOptions::default();
        let out = dir.path().join(format!("{lie:?}.bin"));
        let stats = fetch(&net, &liar, id, &out, &opts, &scores).await;
        assert_eq!(std::fs::read(&out).expect("read"), data, "{lie:?}");
        let told = liar.lies.load(Ordering::SeqCst);
        assert!(told >= 1, "{lie:?}: the liar was asked");
        assert!(
            stats.bad_chunks >= 1,
            "{lie:?}: the lie was seen: {stats:?}"
        );
        assert!(
            stats.per_peer.iter().all(|(p, _)| *p != liar.id),
            "{lie:?}: nothing from the liar was accepted: {stats:?}"
        );
        assert!(scores.is_banned(&liar.id), "{lie:?}: banned");
        assert_eq!(stats.banned_peers, vec![liar.id], "{lie:?}");
        let score = scores.get(&liar.id).expect("scored");
        assert!(score.bad_data >= 1, "{lie:?}: {score:?}");
        // Bounded: every lying stream ends (an endless one is stopped by the
        // asker as soon as it announces more than a chunk).
        wait_until("the liar's streams end", Duration::from_secs(5), || {
            liar.streaming() == 0
        })
        .await;

        // The next download with the same scores does not ask the liar.
        let again = dir.path().join(format!("{lie:?}-again.bin"));
        let stats = fetch(&net, &liar, id, &again, &opts, &scores).await;
        assert_eq!(std::fs::read(&again).expect("read"), data);
        assert_eq!(
            liar.lies.load(Ordering::SeqCst),
            told,
            "{lie:?}: not asked again"
        );
        assert_eq!(stats.banned_peers, vec![liar.id]);
        assert_eq!(stats.bad_chunks, 0);
        println!(
            "{lie:?}: {told} lie(s) told before the ban, then none; {} chunks from the honest peer",
            stats.chunks_fetched
        );
        liar.close();
    }
    shutdown(net).await;
}

/// A holder that announces a chunk and then trickles it: each request is cut
/// at the chunk timeout, the liar's streams are stopped, the peer is scored
/// down for its timeouts, and with an honest holder beside it the file
/// arrives without waiting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_holder_is_cut_off_at_the_timeout_and_scored_down() {
    // Four chunks.
    let (net, id, data, dir) = setup(MIB, 12).await;
    let liar = Liar::start_with(net[0].node.store().expect("store"), id, Lie::Trickle)
        .await
        .expect("liar");
    let scores = PeerScores::new();
    let opts = DownloadOptions {
        chunk_timeout: Duration::from_secs(1),
        ..DownloadOptions::default()
    };

    // The liar alone: every request times out, each chunk is offered again
    // twice, then the download gives up, with the .part kept.
    let out = dir.path().join("alone.bin");
    let provider = Provider {
        id: liar.id,
        conn: liar.connect().await.expect("connect to the liar"),
    };
    let start = Instant::now();
    let err = download_scored(
        vec![provider],
        id,
        &out,
        &opts,
        Arc::new(NoProgress),
        &scores,
    )
    .await
    .expect_err("nothing can be fetched from a slow loris");
    let alone = start.elapsed();
    assert!(
        matches!(
            err,
            quic_peer::download::DownloadError::Incomplete { missing: 4, .. }
        ),
        "{err}"
    );
    assert!(!out.exists());
    assert!(
        alone < Duration::from_secs(8),
        "bounded: gave up after {alone:?}"
    );
    wait_until(
        "the trickling streams are stopped",
        Duration::from_secs(5),
        || liar.streaming() == 0,
    )
    .await;
    let score = scores.get(&liar.id).expect("scored");
    assert!(score.timeouts >= 4 && score.penalty > 0.0, "{score:?}");
    // A timeout is not proof (it may be this side's link): ranked down, not
    // banned.
    assert!(!scores.is_banned(&liar.id));
    let asked = liar.lies.load(Ordering::SeqCst);

    // Beside an honest holder the file arrives; the liar's stalls cost no more
    // than the end game's wait.
    let out = dir.path().join("out.bin");
    let start = Instant::now();
    let stats = fetch(&net, &liar, id, &out, &opts, &scores).await;
    let took = start.elapsed();
    assert_eq!(std::fs::read(&out).expect("read"), data);
    assert!(
        stats.per_peer.iter().all(|(p, _)| *p != liar.id),
        "{stats:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    wait_until(
        "the trickling streams are stopped",
        Duration::from_secs(5),
        || liar.streaming() == 0,
    )
    .await;
    println!(
        "slow loris: alone, {asked} requests cut at 1 s and given up after {alone:?}; \
         beside an honest peer the file took {took:?}; {score:?}"
    );
    liar.close();
    shutdown(net).await;
}

/// A real node that announces itself in the DHT as a holder of a file it does
/// not have: `get` by id hears of its record, checks it (HAS), is told no,
/// and never asks it for anything. A record is not the node's own word (a
/// DHT node may invent it), so the denial does not rank it down either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_provider_record_is_checked_and_not_believed() {
    let net = store_network(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(8 * MIB, 13);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).expect("write");
    let report = common::put_chunked(&net[0].node, &path, 0, CHUNK).await;
    let (holder, fetcher, impostor) = (&net[0].node, &net[1].node, &net[2].node);
    assert!(
        impostor.dht().announce(report.id).await >= 1,
        "the false record is stored"
    );
    let found = fetcher
        .dht()
        .find_providers(report.id, 16, Vec::new())
        .await;
    let proven: Vec<_> = found.proven.iter().map(|p| p.record.id).collect();
    assert_eq!(proven, vec![holder.id()], "{found:?}");
    assert_eq!(found.heard, 2, "{found:?}");
    let providers = fetcher
        .replication()
        .find_holders(&Target::Id(report.id))
        .await;
    assert!(
        providers.iter().all(|p| p.id != impostor.id()),
        "the false provider is not handed to the download"
    );

    for round in 0..2 {
        let out = dir.path().join(format!("out-{round}.bin"));
        let stats = get_to(fetcher, report.id, &out).await.expect("get");
        assert_eq!(std::fs::read(&out).expect("read"), data);
        assert_eq!(stats.attempts, 1, "{stats:?}");
        assert!(
            stats.per_peer.iter().all(|(p, _)| *p != impostor.id()),
            "{stats:?}"
        );
    }
    let scores = fetcher.scores();
    assert!(
        scores
            .get(&impostor.id())
            .is_none_or(|s| s.false_claims == 0),
        "asked for chunks it never claimed itself"
    );
    assert!(!scores.is_banned(&impostor.id()));
    println!(
        "false provider: heard of {} records, {} refuted by HAS, never asked for a chunk",
        found.heard, found.refuted
    );
    shutdown(net).await;
}

/// A manifest that gives a chunk another size than its bytes have (anyone can
/// make one and have it held: HOLD only checks that the chunks are there)
/// fails the download with the sizes named, and the honest holder, which sent
/// exactly the bytes the hash names, is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconsistent_manifest_fails_without_blaming_the_holder() {
    let (net, id, data, dir) = setup(MIB - 10, 14).await;
    let store = net[0].node.store().expect("store");
    let Some(quic_peer::proto::manifest::Manifest::File(real)) =
        store.manifest(&id).expect("manifest")
    else {
        panic!("a file manifest");
    };
    // Same chunks, but a size that makes the last one ten bytes longer.
    let fake =
        quic_peer::proto::manifest::Manifest::File(quic_peer::proto::manifest::FileManifest {
            size: real.size + 10,
            ..real.clone()
        })
        .encode();
    let fake_id = Hash::of(&fake);
    let conn = net[1]
        .node
        .connection(&net[0].node.id())
        .expect("connected");
    quic_peer::transfer::push_manifest(&conn, fake_id, fake.into(), Duration::from_secs(5))
        .await
        .expect("the fake manifest is stored");
    quic_peer::transfer::hold_file(&conn, fake_id, Duration::from_secs(5))
        .await
        .expect("and held: every chunk it names is there");

    let scores = PeerScores::new();
    let provider = Provider {
        id: net[0].node.id(),
        conn: conn.clone(),
    };
    let out = dir.path().join("fake.bin");
    let err = download_scored(
        vec![provider],
        fake_id,
        &out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
        &scores,
    )
    .await
    .expect_err("the manifest cannot be satisfied");
    assert!(err.to_string().contains("where the manifest says"), "{err}");
    assert!(!out.exists());
    assert!(!scores.is_banned(&net[0].node.id()));
    let score = scores.get(&net[0].node.id()).expect("scored");
    assert_eq!(score.bad_data, 0, "{score:?}");
    // The real file still comes from the same holder.
    let real_out = dir.path().join("real.bin");
    let provider = Provider {
        id: net[0].node.id(),
        conn,
    };
    download_scored(
        vec![provider],
        id,
        &real_out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
        &scores,
    )
    .await
    .expect("the real file");
    assert_eq!(std::fs::read(&real_out).expect("read"), data);
    println!("inconsistent manifest: {err}");
    shutdown(net).await;
}
