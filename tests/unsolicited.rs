//! Storage is agreed, not imposed: what a stranger can make nodes store.
//!
//! Three nodes count loopback peers as strangers (`limit_loopback`), with a
//! quota of 48 MiB and a stranger allowance of 8 MiB. A stranger with 20
//! identities on one address (127.0.9.1) puts and HOLDs 1 MiB files on all
//! three, identity after identity, and puts more chunks it never holds.
//! Before allowances every node took it all until its quota was full, and
//! an honest replica was then refused `OverQuota`; now each node takes at
//! most the allowance from that address, and an honest put of 3 copies
//! still fits. A PUT header alone for a stored chunk refreshes nothing.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::adversary::{endpoint, ip, join};
use common::{random_bytes, store_node_with, wait_until, StoreNode};
use quic_peer::proto::frame::{read_frame, write_frame};
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::proto::wire::{NackReason, Request, Response, Role, MAX_CONTROL_FRAME};
use quic_peer::proto::Hash;
use quic_peer::transfer::{hold_file, push_chunk, push_manifest, PushError};

const MIB: u64 = 1 << 20;
const QUOTA: u64 = 48 * MIB;
const ALLOWANCE: u64 = 8 * MIB;
const IDENTITIES: u8 = 20;
/// Files each identity tries to have held on each node.
const FILES_EACH: u64 = 3;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A file of `len` random bytes chunked: its chunks and manifests.
struct Upload {
    id: Hash,
    chunks: Vec<(Hash, Bytes)>,
    manifests: Vec<(Hash, Bytes)>,
}

fn upload(dir: &std::path::Path, len: usize, seed: u64) -> Upload {
    let path = dir.join(format!("f{seed}"));
    std::fs::write(&path, random_bytes(len, seed)).unwrap();
    let mut chunks = Vec::new();
    let tree =
        quic_peer::store::chunker::build_tree(&path, DEFAULT_CHUNK_SIZE, &mut |hash, data, _| {
            chunks.push((hash, Bytes::copy_from_slice(data)));
            Ok(())
        })
        .unwrap();
    Upload {
        id: tree.root,
        chunks,
        manifests: tree
            .manifests
            .into_iter()
            .map(|(h, b)| (h, Bytes::from(b)))
            .collect(),
    }
}

/// Puts every piece of `u` and HOLDs it; the first refusal is returned.
async fn put_and_hold(conn: &quinn::Connection, u: &Upload) -> Result<(), PushError> {
    for (h, data) in &u.chunks {
        push_chunk(conn, *h, data.clone(), TIMEOUT).await?;
    }
    for (h, bytes) in &u.manifests {
        push_manifest(conn, *h, bytes.clone(), TIMEOUT).await?;
    }
    hold_file(conn, u.id, TIMEOUT).await
}

async fn nodes() -> Vec<StoreNode> {
    let tweak = |c: &mut quic_peer::NodeConfig| {
        c.limit_loopback = true;
        c.max_storage = QUOTA;
        c.stranger_allowance = ALLOWANCE;
    };
    let first = store_node_with(&[], tweak).await;
    let second = store_node_with(&[&first.node], tweak).await;
    let third = store_node_with(&[&first.node, &second.node], tweak).await;
    let nodes = vec![first, second, third];
    wait_until("the nodes see each other", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.node.connected_peers().len() >= 2)
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_identities_on_one_address_store_one_allowance() {
    let nodes = nodes().await;
    let src = tempfile::tempdir().unwrap();
    let stranger = endpoint(ip(9, 0, 1));
    let mut held = [0u64; 3];
    let mut refused = [0usize; 3];
    let mut seed = 1000;
    for _ in 0..IDENTITIES {
        for (i, n) in nodes.iter().enumerate() {
            // A new identity each time: `join` makes one.
            let joined = join(&stranger, n.node.local_addr(), Role::Client)
                .await
                .expect("the stranger joins");
            for _ in 0..FILES_EACH {
                seed += 1;
                let u = upload(src.path(), MIB as usize, seed);
                match put_and_hold(&joined.conn, &u).await {
                    Ok(()) => held[i] += MIB,
                    Err(PushError::Nack(NackReason::OverAllowance)) => refused[i] += 1,
                    Err(e) => panic!("unexpected refusal: {e}"),
                }
            }
            // And chunks it never holds.
            seed += 1;
            let u = upload(src.path(), MIB as usize, seed);
            let _ = push_chunk(&joined.conn, u.chunks[0].0, u.chunks[0].1.clone(), TIMEOUT).await;
            joined.conn.close(0u32.into(), b"bye");
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let used = n.node.store().unwrap().used();
        println!(
            "node {i}: the stranger ({IDENTITIES} ids on 127.0.9.1) had {} MiB held and {} files \
             refused; store holds {:.1} MiB of {} MiB (allowance {} MiB)",
            held[i] / MIB,
            refused[i],
            used as f64 / MIB as f64,
            QUOTA / MIB,
            ALLOWANCE / MIB
        );
        assert!(
            used <= ALLOWANCE + MIB / 2,
            "node {i} stores {used} bytes for one address, allowance {ALLOWANCE}"
        );
        assert!(refused[i] > 0, "node {i} refused nothing");
    }

    // An honest put of 3 copies still fits.
    let path = src.path().join("honest.bin");
    std::fs::write(&path, random_bytes(6 * MIB as usize, 7)).unwrap();
    let report = common::put(&nodes[0].node, &path, 2).await;
    println!(
        "honest put of 6 MiB: {} copies on other nodes of {} wanted; failures {:?}",
        report.remote_copies, report.wanted, report.failures
    );
    assert_eq!(report.remote_copies, 2, "honest replicas fit");
    for n in &nodes {
        assert!(n.node.store().unwrap().holds(&report.id).unwrap());
    }
    for n in nodes {
        n.node.shutdown().await;
    }
}

/// Sets a stored chunk's modification time `ago` into the past.
fn age(path: &std::path::Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn chunk_path(dir: &std::path::Path, hash: &Hash) -> std::path::PathBuf {
    let name = hash.to_string();
    dir.join("store/chunks").join(&name[..2]).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_header_alone_refreshes_nothing() {
    let node = store_node_with(&[], |_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let ep = endpoint(ip(9, 0, 2));
    let joined = join(&ep, node.node.local_addr(), Role::Client)
        .await
        .unwrap();
    let u = upload(src.path(), 300_000, 5);
    let (hash, data) = u.chunks[0].clone();
    push_chunk(&joined.conn, hash, data.clone(), TIMEOUT)
        .await
        .unwrap();
    let path = chunk_path(node.dir.path(), &hash);
    let day = Duration::from_secs(24 * 3600);
    age(&path, day);

    // The header, then nothing: refused, and the chunk stays old.
    let (mut send, mut recv) = joined.conn.open_bi().await.unwrap();
    let header = Request::PutChunk {
        hash,
        len: data.len() as u32,
    };
    write_frame(&mut send, &header, MAX_CONTROL_FRAME)
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = read_frame::<Response, _>(&mut recv, MAX_CONTROL_FRAME)
        .await
        .unwrap();
    assert_eq!(answer, Some(Response::Nack(NackReason::TooLarge)));
    let old = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap_or_default()
            > day / 2
    };
    assert!(old(&path), "a header alone made the chunk new");

    // Wrong bytes refresh nothing either; the right ones do.
    let mut wrong = data.to_vec();
    wrong[0] ^= 1;
    let e = push_chunk(&joined.conn, hash, Bytes::from(wrong), TIMEOUT).await;
    assert!(
        matches!(e, Err(PushError::Nack(NackReason::BadHash))),
        "{e:?}"
    );
    assert!(old(&path));
    push_chunk(&joined.conn, hash, data, TIMEOUT).await.unwrap();
    assert!(!old(&path), "the whole chunk, verified, counts as new");
    node.node.shutdown().await;
}
