//! A put in a network of at most R other full nodes pushes every chunk as it
//! cuts the file (every node is a target whatever the id), and only then
//! sends the manifests and the HOLD; in a larger network it learns the id
//! first and places the file on the nodes closest to it. Real nodes in one
//! process, real QUIC on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{get_to, random_bytes, store_network, store_node_with, wait_until, StoreNode};
use quic_peer::dht::{distance, key_of};
use quic_peer::download::NoProgress;
use quic_peer::proto::ticket::Target;
use quic_peer::replication::{PutOptions, PutReport};
use quic_peer::Node;

const MIB: usize = 1 << 20;

async fn put_with(node: &Node, path: &Path, opts: PutOptions) -> PutReport {
    node.put(path, &opts, Arc::new(NoProgress))
        .await
        .expect("put")
}

/// A client node joined through `boot`, once it knows all `n` nodes.
async fn client_knowing(boot: &Node, n: usize) -> Node {
    let client = common::node(&[boot]).await;
    wait_until(
        "the client knows every node",
        Duration::from_secs(20),
        || client.dht().routing_table_len() == n,
    )
    .await;
    client
}

/// `data` written to `name` in `dir`.
fn source(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let src = dir.join(name);
    std::fs::write(&src, data).unwrap();
    src
}

/// Gets `report`'s file on `node` by its ticket and checks its bytes.
async fn get_back(node: &Node, report: &PutReport, dir: &Path, data: &[u8]) {
    let target = Target::Ticket(report.ticket.clone());
    let out = dir.join(format!("back-{}", report.id.fmt_short()));
    get_to(node, target, &out).await.expect("get");
    assert!(
        std::fs::read(&out).expect("read") == data,
        "the copy differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_to_every_node_of_a_small_network_goes_out_in_one_pass() {
    let net = store_network(3).await;
    let client = client_knowing(&net[0].node, 3).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        PutOptions {
            replicas: 3,
            ..PutOptions::default()
        },
        PutOptions::public(3),
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(5 * MIB + 123, i as u64);
        let src = source(dir.path(), &format!("src-{i}"), &data);
        let report = put_with(&client, &src, opts).await;
        assert_eq!(report.remote_copies, 3, "{:?}", report.failures);
        assert_eq!(
            report.in_one_pass, 3,
            "every holder got its chunks as they were cut"
        );
        for s in &net {
            get_back(&s.node, &report, dir.path(), &data).await;
        }
    }
    client.shutdown().await;
    common::shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_store_keeps_its_copy_and_sends_the_others_in_one_pass() {
    let net = store_network(3).await;
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        PutOptions {
            replicas: 2,
            ..PutOptions::default()
        },
        PutOptions::public(2),
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(6 * MIB + 5, 20 + i as u64);
        let src = source(dir.path(), &format!("own-{i}"), &data);
        let report = put_with(&net[0].node, &src, opts).await;
        assert_eq!(report.remote_copies, 2, "{:?}", report.failures);
        assert_eq!(report.in_one_pass, 2);
        assert_eq!(report.holders[0].id, net[0].node.id(), "its own copy first");
        for s in &net[1..] {
            get_back(&s.node, &report, dir.path(), &data).await;
        }
    }
    common::shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_larger_network_the_copy_goes_to_the_closest_after_the_cut() {
    let net = store_network(4).await;
    let client = client_knowing(&net[0].node, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * MIB, 7);
    let src = source(dir.path(), "src", &data);
    let opts = PutOptions {
        replicas: 1,
        ..PutOptions::default()
    };
    let report = put_with(&client, &src, opts).await;
    assert_eq!(report.remote_copies, 1);
    assert_eq!(report.in_one_pass, 0, "four nodes to choose from");
    let key = key_of(&report.id);
    let closest = net
        .iter()
        .map(|s| s.node.id())
        .min_by_key(|id| distance(id, &key))
        .unwrap();
    assert_eq!(report.holders[0].id, closest, "the closest node holds it");
    get_back(&client, &report, dir.path(), &data).await;
    client.shutdown().await;
    common::shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_while_the_file_is_cut_does_not_stop_the_others() {
    let first = common::store_node(&[]).await;
    let boot = first.node.clone();
    let tiny: StoreNode = store_node_with(&[&boot], |c| c.max_storage = MIB as u64).await;
    let net = vec![first, tiny];
    let client = client_knowing(&boot, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4 * MIB, 11);
    let src = source(dir.path(), "src", &data);
    let opts = PutOptions {
        replicas: 2,
        ..PutOptions::default()
    };
    let report = put_with(&client, &src, opts).await;
    assert_eq!(report.remote_copies, 1, "{:?}", report.failures);
    assert_eq!(report.in_one_pass, 1);
    assert_eq!(report.holders[0].id, net[0].node.id());
    assert_eq!(report.failures.len(), 1);
    assert_eq!(
        report.failures[0].0,
        net[1].node.id(),
        "the full node refused"
    );
    get_back(&client, &report, dir.path(), &data).await;
    client.shutdown().await;
    common::shutdown(net).await;
}
