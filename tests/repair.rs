//! Repair against a liar, and trimming, on real nodes in one process.
//!
//! A lying peer, its id ground to be the closest node to the file, answers
//! HAS "yes", acknowledges every PUT and HOLD without storing a byte, and
//! answers every PROVE with random bytes. Before proofs of possession it was
//! the leader of the file's repair and repair never ran. Now it must fail its
//! challenge: repair still restores R proven copies after the closest honest
//! holder dies, and copies placed beyond R+1 are trimmed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{put, random_bytes, wait_until, StoreNode};
use quic_peer::dht::{distance, key_of};
use quic_peer::download::NoProgress;
use quic_peer::net::router::ServeFuture;
use quic_peer::net::{RequestStream, Service};
use quic_peer::proto::frame::write_frame;
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::proto::wire::{Request, RequestKind, Response, MAX_CONTROL_FRAME};
use quic_peer::proto::Hash;
use quic_peer::replication::{push_tree, ChunkSource};
use quic_peer::store::chunker::Tree;
use quic_peer::store::Store;
use quic_peer::{Identity, Node, NodeConfig};

const R: usize = 3;
const HONEST: usize = 8;

/// Claims to hold everything, takes every copy, proves nothing.
struct LyingHolder;

impl Service for LyingHolder {
    fn serve(&self, mut s: RequestStream) -> ServeFuture {
        Box::pin(async move {
            let resp = match s.request {
                Request::Has { .. } => Response::Found { len: 0 },
                Request::Prove { .. } => Response::Proof(rand::random()),
                Request::PutChunk { .. } | Request::PutManifest { .. } | Request::Hold { .. } => {
                    Response::Ack
                }
                _ => Response::NotFound,
            };
            let _ = s.recv.stop(0u32.into());
            let _ = write_frame(&mut s.send, &resp, MAX_CONTROL_FRAME).await;
            let _ = s.send.finish();
        })
    }
}

/// The id a put of `path` gives, computed in a scratch store.
fn file_id(path: &std::path::Path) -> Hash {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    store.import(path, DEFAULT_CHUNK_SIZE).unwrap().root
}

/// Starts a node whose id is closer to `file` than every node of `net`,
/// lying about every file.
async fn closest_liar(net: &[StoreNode], file: Hash) -> (Node, usize) {
    let key = key_of(&file);
    let best = net
        .iter()
        .map(|s| distance(&s.node.id(), &key))
        .min()
        .unwrap();
    let mut tries = 0;
    let identity = loop {
        tries += 1;
        let i = Identity::generate().unwrap();
        if distance(&i.node_id(), &key) < best {
            break i;
        }
    };
    let config = NodeConfig {
        bootstrap: vec![net[0].node.addr()],
        ..NodeConfig::local_test()
    };
    let liar = Node::start_with_identity(config, identity).await.unwrap();
    let kinds = [
        RequestKind::Has,
        RequestKind::Prove,
        RequestKind::PutChunk,
        RequestKind::PutManifest,
        RequestKind::Hold,
    ];
    liar.net().serve(&kinds, Arc::new(LyingHolder));
    (liar, tries)
}

/// Indices of the live nodes that hold `id`.
fn holders(net: &[StoreNode], alive: &[bool], id: Hash) -> Vec<usize> {
    (0..net.len())
        .filter(|&i| alive[i] && net[i].node.store().unwrap().holds(&id).unwrap_or(false))
        .collect()
}

/// Whether the `R` live nodes closest to the file hold it.
fn closest_hold(net: &[StoreNode], alive: &[bool], order: &[usize], id: Hash) -> bool {
    let held = holders(net, alive, id);
    order
        .iter()
        .filter(|&&i| alive[i])
        .take(R)
        .all(|i| held.contains(i))
}

/// Copies the file from `from` to `to` by hand, as a stray copy.
async fn place_copy(from: &Node, to: &Node, id: Hash) {
    let store = from.store().unwrap().clone();
    let tree = store.tree(&id).unwrap().unwrap();
    let size = store
        .files()
        .unwrap()
        .into_iter()
        .find(|f| f.id == id)
        .unwrap()
        .record
        .size;
    let tree = Tree {
        root: id,
        manifests: tree.into_iter().map(|(h, m)| (h, m.encode())).collect(),
        size,
    };
    let addr = to.local_addr();
    let conn = from
        .net()
        .connection_to(to.id(), &[addr], &[])
        .await
        .unwrap();
    push_tree(&conn, &tree, &ChunkSource::Store(store), &NoProgress)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_finishes_despite_a_liar_and_trims_beyond_r_plus_one() {
    let net = common::store_network(HONEST).await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("f");
    std::fs::write(&path, random_bytes(3 * 1024 * 1024 + 17, 11)).unwrap();
    let id = file_id(&path);
    let key = key_of(&id);
    let mut order: Vec<usize> = (0..HONEST).collect();
    order.sort_by_key(|&i| distance(&net[i].node.id(), &key));

    let (liar, tries) = closest_liar(&net, id).await;
    println!("liar ground in {tries} identities, closest to the file");
    wait_until("everyone knows the liar", Duration::from_secs(30), || {
        net.iter()
            .all(|s| s.node.connected_peers().contains(&liar.id()))
    })
    .await;

    // Put from the farthest node: the liar takes one of the R copies.
    let putter = *order.last().unwrap();
    let report = put(&net[putter].node, &path, R).await;
    assert_eq!(report.id, id);
    assert!(
        report.holders.iter().any(|h| h.id == liar.id()),
        "the liar was a target"
    );
    let mut alive = vec![true; HONEST];
    let start = Instant::now();
    wait_until("R honest closest copies", Duration::from_secs(60), || {
        closest_hold(&net, &alive, &order, id)
    })
    .await;
    println!(
        "R closest honest nodes proven holders {:.1}s after the put",
        start.elapsed().as_secs_f64()
    );

    // The closest honest holder, the leader, dies.
    let victim = order[0];
    net[victim].node.shutdown().await;
    alive[victim] = false;
    let start = Instant::now();
    wait_until(
        "repair after the leader died",
        Duration::from_secs(60),
        || closest_hold(&net, &alive, &order, id),
    )
    .await;
    let restored = start.elapsed();
    let copies = holders(&net, &alive, id).len();
    println!(
        "repair despite the liar: R={R} proven copies restored in {:.1}s, {copies} copies",
        restored.as_secs_f64()
    );

    // Churn: stray copies on two far nodes.
    let live: Vec<usize> = order.iter().copied().filter(|&i| alive[i]).collect();
    let leader = live[0];
    for &far in live.iter().rev().filter(|&&i| i != putter).take(2) {
        place_copy(&net[leader].node, &net[far].node, id).await;
    }
    let placed = holders(&net, &alive, id).len();
    let start = Instant::now();
    wait_until("copies trimmed to R+1", Duration::from_secs(60), || {
        holders(&net, &alive, id).len() <= R + 1
    })
    .await;
    let trimmed_in = start.elapsed();
    // Settled: nothing more is trimmed or copied for a few passes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = holders(&net, &alive, id).len();
    println!(
        "trimming: {placed} copies after churn -> {after} (bound R+1 = {}) in {:.1}s",
        R + 1,
        trimmed_in.as_secs_f64()
    );
    assert!(after <= R + 1, "{after} copies");
    assert!(
        closest_hold(&net, &alive, &order, id),
        "R closest still hold"
    );

    liar.shutdown().await;
    for (s, up) in net.iter().zip(&alive) {
        if *up {
            s.node.shutdown().await;
        }
    }
}
