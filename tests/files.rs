//! Files across real nodes: put, get, boundaries, trees, lying peers, holders
//! dying mid-download, resume, quota.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_same_tree, at, get_to, put, random_bytes, shutdown, store_network, store_node_with,
    wait_until, StoreNode,
};
use quic_peer::download::{download, DownloadOptions, NoProgress, Provider};
use quic_peer::proto::manifest::{Manifest, DEFAULT_CHUNK_SIZE};
use quic_peer::proto::ticket::Target;
use quic_peer::proto::Hash;
use quic_peer::replication;
use quic_peer::Node;

const MIB: usize = 1 << 20;

fn holders(report: &replication::PutReport) -> Vec<quic_peer::NodeId> {
    report.holders.iter().map(|h| h.id).collect()
}

/// The node of `net` that holds nothing of `report`.
fn non_holder<'a>(net: &'a [StoreNode], report: &replication::PutReport) -> &'a Node {
    let h = holders(report);
    &net.iter()
        .find(|s| !h.contains(&s.node.id()))
        .expect("a node without a copy")
        .node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boundary_sizes_round_trip() {
    let net = store_network(4).await;
    let src = tempfile::tempdir().unwrap();
    let c = DEFAULT_CHUNK_SIZE as usize;
    for (i, size) in [0, 1, c - 1, c, c + 1, 5 * c + c / 2]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, i as u64);
        let path = src.path().join(format!("file-{size}"));
        std::fs::write(&path, &data).unwrap();
        let report = put(&net[0].node, &path, 2).await;
        assert_eq!(report.remote_copies, 2);
        assert_eq!(report.size, size as u64);
        let fetcher = non_holder(&net, &report);
        let out = src.path().join(format!("out-{size}"));
        let stats = get_to(fetcher, report.id, &out).await.expect("get");
        assert_eq!(std::fs::read(&out).unwrap(), data, "size {size}");
        assert_eq!(stats.chunks_fetched, size.div_ceil(c));
        assert!(!quic_peer::download::part_path(&out).exists());
    }
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_of_random_bytes() {
    let net = store_network(3).await;
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(100 * MIB, 7);
    let path = src.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let report = put(&net[0].node, &path, 1).await;
    assert_eq!(report.remote_copies, 1);
    let fetcher = non_holder(&net, &report);
    let out = src.path().join("big.out");
    let stats = get_to(fetcher, report.id, &out).await.expect("get");
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(stats.per_peer.len(), 2, "both holders served");
    assert!(std::fs::read(&out).unwrap() == data, "100 MiB differ");
    shutdown(net).await;
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("docs/empty-dir")).unwrap();
    std::fs::create_dir_all(root.join("data/deeper")).unwrap();
    std::fs::write(root.join("readme.txt"), b"hello tree").unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    std::fs::write(root.join("docs/a.md"), b"# a").unwrap();
    std::fs::write(
        root.join("data/deeper/blob.bin"),
        random_bytes(3 * MIB + 17, 9),
    )
    .unwrap();
    // The same content twice: chunks are shared.
    std::fs::write(root.join("data/copy.bin"), random_bytes(3 * MIB + 17, 9)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_tree_comes_back_the_same() {
    let net = store_network(3).await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    write_tree(&root);
    let report = put(&net[0].node, &root, 1).await;
    let fetcher = non_holder(&net, &report);
    let out = src.path().join("tree-copy");
    let stats = get_to(fetcher, report.id, &out).await.expect("get");
    assert_eq!(stats.files, 5);
    assert_same_tree(&root, &out);
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_bytes_are_caught_and_fetched_from_an_honest_peer() {
    let net = store_network(2).await;
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(8 * MIB, 3);
    let path = src.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let report = put(&net[0].node, &path, 0).await;
    // A peer that holds the file and serves every chunk with its bytes flipped.
    let liar = common::liar::Liar::start(net[0].node.store().unwrap(), report.id)
        .await
        .unwrap();
    let fetcher = &net[1].node;
    let providers = vec![
        Provider {
            id: liar.id,
            conn: liar.connect().await.unwrap(),
        },
        Provider {
            id: net[0].node.id(),
            conn: fetcher.connection(&net[0].node.id()).unwrap(),
        },
    ];
    let out = src.path().join("out.bin");
    let stats = download(
        providers,
        report.id,
        &out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .expect("download succeeds despite the liar");
    assert!(liar.lies.load(Ordering::SeqCst) >= 1, "the liar was asked");
    assert!(stats.bad_chunks >= 1, "the lie was seen: {stats:?}");
    assert!(
        stats.per_peer.iter().all(|(id, _)| *id != liar.id),
        "no chunk from the liar was accepted: {stats:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_mid_download_does_not_stop_it() {
    let net = store_network(4).await;
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(48 * MIB, 5);
    let path = src.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let report = put(&net[0].node, &path, 2).await;
    let fetcher = non_holder(&net, &report).clone();
    // Kill a remote holder once a quarter has arrived.
    let victim = net
        .iter()
        .find(|s| s.node.id() != net[0].node.id() && holders(&report).contains(&s.node.id()))
        .unwrap()
        .node
        .clone();
    let v = victim.clone();
    let progress = at(0.25, move || {
        let v = v.clone();
        tokio::spawn(async move { v.shutdown().await });
    });
    let out = src.path().join("out.bin");
    let stats = fetcher
        .get(
            &Target::Id(report.id),
            &out,
            &DownloadOptions {
                per_peer: 2,
                ..DownloadOptions::default()
            },
            progress.clone(),
        )
        .await
        .expect("download completes from the remaining holders");
    assert!(progress.fired.load(Ordering::SeqCst));
    assert!(stats.per_peer.len() >= 2, "{stats:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_resumes_with_only_the_missing_chunks() {
    let net = store_network(2).await;
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(32 * MIB, 11);
    let path = src.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let report = put(&net[0].node, &path, 1).await;
    let fetcher = &net[1].node;
    // net[1] holds a copy; fetch from net[0] only, into a fresh path.
    let provider = Provider {
        id: net[0].node.id(),
        conn: fetcher.connection(&net[0].node.id()).unwrap(),
    };
    let out = src.path().join("out.bin");
    let stop = Arc::new(tokio::sync::Notify::new());
    let s = stop.clone();
    let progress = at(0.4, move || s.notify_one());
    let opts = DownloadOptions {
        per_peer: 2,
        max_in_flight: 2,
        ..DownloadOptions::default()
    };
    tokio::select! {
        r = download(vec![provider.clone()], report.id, &out, &opts, progress) => {
            panic!("download finished before it was interrupted: {r:?}")
        }
        _ = stop.notified() => {}
    }
    let part = quic_peer::download::part_path(&out);
    assert!(part.exists() && !out.exists(), "only the .part is left");
    // The dropped download's writer thread flushes the verified chunks it still
    // held; in a real process that ends, they would be lost and fetched again.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stats = download(vec![provider], report.id, &out, &opts, Arc::new(NoProgress))
        .await
        .unwrap();
    let total = 32;
    assert_eq!(
        stats.chunks_resumed + stats.chunks_fetched,
        total,
        "{stats:?}"
    );
    assert!(stats.chunks_resumed >= 12, "kept what it had: {stats:?}");
    assert!(
        stats.chunks_fetched < total - 10,
        "fetched only the rest: {stats:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(!part.exists());
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_put_is_refused_and_nothing_stored_is_lost() {
    let small = store_node_with(&[], |c| c.max_storage = 3 * MIB as u64).await;
    let up = common::store_node(&[&small.node]).await;
    wait_until("joined", Duration::from_secs(20), || {
        up.node.connected_peers().contains(&small.node.id())
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    let first = random_bytes(2 * MIB, 1);
    let second = random_bytes(2 * MIB, 2);
    std::fs::write(src.path().join("first"), &first).unwrap();
    std::fs::write(src.path().join("second"), &second).unwrap();

    let ok = put(&up.node, &src.path().join("first"), 1).await;
    assert_eq!(ok.remote_copies, 1);
    let refused = put(&up.node, &src.path().join("second"), 1).await;
    assert_eq!(refused.remote_copies, 0);
    let (_, why) = &refused.failures[0];
    assert!(why.to_string().contains("over quota"), "{why}");

    let store = small.node.store().unwrap();
    assert!(store.used() <= 3 * MIB as u64);
    let files = store.files().unwrap();
    assert_eq!(files.len(), 1, "the refused file is not recorded as held");
    assert_eq!(files[0].id, ok.id);
    assert!(files[0].complete);
    // The first file still comes back whole from the small node.
    let out = src.path().join("back");
    let provider = Provider {
        id: small.node.id(),
        conn: up.node.connection(&small.node.id()).unwrap(),
    };
    download(
        vec![provider],
        ok.id,
        &out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), first);
    small.node.shutdown().await;
    up.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_file_has_no_providers() {
    let net = store_network(2).await;
    let id = Hash::of(b"nobody stored this");
    assert!(net[0]
        .node
        .replication()
        .find_holders(&Target::Id(id))
        .await
        .is_empty());
    let out = tempfile::tempdir().unwrap();
    let err = net[0]
        .node
        .get(
            &Target::Id(id),
            &out.path().join("x"),
            &DownloadOptions::default(),
            Arc::new(NoProgress),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no peer holds"), "{err}");
    assert!(!out.path().join("x").exists());
    // The manifest decoder is strict about what it accepts.
    assert!(Manifest::decode(&[1, 2, 3]).is_err());
    shutdown(net).await;
}

/// An incoming copy cut off before its HOLD (the sender died, the link went
/// dark) leaves chunks and a manifest no held file uses: the node collects
/// them once they are older than the grace period, gives the bytes back to
/// its quota, and keeps every piece of the files it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_incoming_copy_is_collected_and_held_files_are_kept() {
    let b = store_node_with(&[], |c| {
        c.gc_interval = Duration::from_millis(200);
        c.gc_grace = Duration::from_secs(1);
    })
    .await;
    let a = common::store_node(&[&b.node]).await;
    wait_until("joined", Duration::from_secs(20), || {
        a.node.connected_peers().contains(&b.node.id())
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    let kept = random_bytes(2 * MIB, 21);
    std::fs::write(src.path().join("kept"), &kept).unwrap();
    let held = put(&a.node, &src.path().join("kept"), 1).await;
    assert_eq!(held.remote_copies, 1);
    let store = b.node.store().unwrap();
    let held_bytes = store.used();

    // Half a copy: chunks and the manifest, no HOLD.
    let conn = a.node.connection(&b.node.id()).unwrap();
    let data = random_bytes(4 * MIB, 22);
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let mut hashes = Vec::new();
    for piece in data.chunks(chunk) {
        let h = Hash::of(piece);
        quic_peer::transfer::push_chunk(&conn, h, piece.to_vec().into(), Duration::from_secs(10))
            .await
            .unwrap();
        hashes.push(h);
    }
    let manifest = Manifest::File(quic_peer::proto::manifest::FileManifest {
        name: "cut-off".into(),
        size: data.len() as u64,
        chunk_size: DEFAULT_CHUNK_SIZE,
        chunks: hashes.clone(),
    })
    .encode();
    let mid = Hash::of(&manifest);
    quic_peer::transfer::push_manifest(&conn, mid, manifest.into(), Duration::from_secs(10))
        .await
        .unwrap();
    let orphaned = store.used() - held_bytes;
    assert!(orphaned >= data.len() as u64);
    assert!(!store.holds(&mid).unwrap());

    let t = std::time::Instant::now();
    wait_until(
        "the unused pieces are collected",
        Duration::from_secs(15),
        || store.used() == held_bytes,
    )
    .await;
    assert!(hashes.iter().all(|h| !store.has_chunk(h)));
    assert!(store.manifest_bytes(&mid).unwrap().is_none());
    assert!(store.holds(&held.id).unwrap(), "the held file is untouched");
    println!(
        "{orphaned} unused bytes collected {:?} after the copy was cut off (grace 1 s)",
        t.elapsed()
    );
    // And it still comes back whole.
    let out = src.path().join("back");
    get_to(&a.node, held.id, &out).await.expect("get");
    assert_eq!(std::fs::read(&out).unwrap(), kept);
    b.node.shutdown().await;
    a.node.shutdown().await;
}

/// `max_in_flight_bytes` bounds the chunk data a download asks for at once,
/// whatever the number of providers and workers: measured, not assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_never_has_more_bytes_in_flight_than_its_limit() {
    let net = store_network(3).await;
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(6 * MIB, 31);
    let path = src.path().join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let chunk = 256 << 10;
    let report = common::put_chunked(&net[0].node, &path, 1, chunk).await;
    let fetcher = non_holder(&net, &report);
    let providers = || {
        holders(&report)
            .into_iter()
            .map(|id| Provider {
                id,
                conn: fetcher.connection(&id).expect("connected"),
            })
            .collect::<Vec<_>>()
    };
    let mut peaks = Vec::new();
    for limit in [u64::from(chunk), 2 * u64::from(chunk), 24 << 20] {
        let opts = DownloadOptions {
            max_in_flight_bytes: limit,
            ..DownloadOptions::default()
        };
        let out = src.path().join(format!("out-{limit}"));
        let stats = download(providers(), report.id, &out, &opts, Arc::new(NoProgress))
            .await
            .expect("download");
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(
            stats.peak_in_flight_bytes <= limit && stats.peak_in_flight_bytes > 0,
            "limit {limit}: peak {}",
            stats.peak_in_flight_bytes
        );
        peaks.push((limit, stats.peak_in_flight_bytes, stats.elapsed));
    }
    // Unlimited by bytes, the request count (12) is the bound: more than two
    // chunks were in flight, so the smaller limits did bind.
    assert!(peaks[2].1 > 2 * u64::from(chunk), "{peaks:?}");
    println!("(limit, peak in flight, time): {peaks:?}");
    shutdown(net).await;
}
