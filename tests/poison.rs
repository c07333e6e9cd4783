//! DHT denial and poisoning on real nodes: a node whose id was ground to sit
//! closest to a file's key invents providers and contacts
//! (`tests/common/dht_liar.rs`), twenty identities from one address prefix
//! announce themselves for a key, and a third party names a known node at
//! an address where nobody is.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::dht_liar::{DhtLiar, Lies};
use common::{get_to, put, random_bytes, store_network, wait_until, StoreNode};
use quic_peer::dht::kbucket::Contact;
use quic_peer::dht::key_of;
use quic_peer::proto::wire::{DhtRequest, PeerRecord, Response, Role};
use quic_peer::proto::Hash;
use quic_peer::{Node, NodeConfig, NodeId};

const MIB: usize = 1024 * 1024;

/// Whether `node`'s routing table holds `id`.
fn knows(node: &Node, id: NodeId) -> bool {
    node.dht().state().table.contains(&id)
}

/// The addresses `node`'s routing table holds for `id`.
fn table_addrs(node: &Node, id: NodeId) -> Option<Vec<SocketAddr>> {
    node.dht().state().table.get(&id).map(|c| c.addrs.clone())
}

/// A short-lived client that joins through the first node, as
/// `quic-peer get` does: it knows that node only.
async fn client(net: &[StoreNode]) -> Node {
    common::init_logs();
    let node = Node::start(NodeConfig {
        role: Role::Client,
        bootstrap: vec![net[0].node.addr()],
        ..NodeConfig::local_test()
    })
    .await
    .expect("client starts");
    node.net().bootstrap_once().await.expect("the client joins");
    node
}

/// Gets `id` on a fresh client; returns the time the get took.
async fn timed_get(net: &[StoreNode], id: Hash, data: &[u8]) -> Duration {
    let getter = client(net).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.bin");
    let start = Instant::now();
    let stats = get_to(&getter, id, &out).await.expect("get");
    let took = start.elapsed();
    assert!(std::fs::read(&out).expect("read") == data, "{stats:?}");
    getter.shutdown().await;
    took
}

async fn shutdown(net: Vec<StoreNode>) {
    for s in net {
        s.node.shutdown().await;
    }
}

/// The headline: a node closest to the key answers GET_PROVIDERS with 64
/// invented providers and every lookup with invented closer contacts. A get
/// by id still succeeds, a few seconds at most slower than without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_survives_the_closest_node_inventing_64_providers() {
    let net = store_network(6).await;
    let honest: Vec<NodeId> = net.iter().map(|s| s.node.id()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = random_bytes(2 * MIB, 11);
    let path = dir.path().join("f.bin");
    std::fs::write(&path, &data).expect("write");
    let report = put(&net[0].node, &path, 3).await;
    assert_eq!(report.remote_copies, 3, "{:?}", report.failures);

    let normal = timed_get(&net, report.id, &data).await;

    let liar = DhtLiar::start(
        key_of(&report.id),
        &honest,
        &[net[0].node.addr()],
        Lies::default(),
    )
    .await
    .expect("the liar starts");
    wait_until("every node knows the liar", Duration::from_secs(20), || {
        net.iter().all(|s| knows(&s.node, liar.id))
    })
    .await;
    let asked = liar.get_providers_answered();
    let poisoned = timed_get(&net, report.id, &data).await;
    let lies_told = liar.get_providers_answered() - asked;
    println!(
        "get by id: {normal:?} normally, {poisoned:?} with the closest node inventing \
         64 providers ({lies_told} GET_PROVIDERS answered by it)"
    );
    assert!(
        lies_told >= 1,
        "the liar was not asked: the test proves nothing"
    );
    assert!(
        poisoned <= normal + Duration::from_secs(3),
        "poisoned get took {poisoned:?}, normal {normal:?}"
    );
    liar.shutdown().await;
    shutdown(net).await;
}

/// The closest node to the key of a file nobody holds invents 64 providers:
/// `get` checks them all at once and says no peer holds the file after
/// about one handshake timeout, not 64 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_providers_of_a_missing_file_cost_one_timeout() {
    let net = store_network(4).await;
    let honest: Vec<NodeId> = net.iter().map(|s| s.node.id()).collect();
    let missing = Hash::of(b"nobody stored this");
    let liar = DhtLiar::start(
        key_of(&missing),
        &honest,
        &[net[0].node.addr()],
        Lies::default(),
    )
    .await
    .expect("the liar starts");
    wait_until("every node knows the liar", Duration::from_secs(20), || {
        net.iter().all(|s| knows(&s.node, liar.id))
    })
    .await;
    let getter = client(&net).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    let err = get_to(&getter, missing, &dir.path().join("x"))
        .await
        .expect_err("nobody holds it");
    let took = start.elapsed();
    let cfg = NodeConfig::local_test();
    println!("a missing file with 64 invented providers: {err} after {took:?}");
    assert!(err.to_string().contains("no peer holds"), "{err}");
    assert!(liar.get_providers_answered() >= 1, "the liar was not asked");
    assert!(
        took <= cfg.handshake_timeout + cfg.rpc_timeout,
        "took {took:?}"
    );
    getter.shutdown().await;
    liar.shutdown().await;
    shutdown(net).await;
}

/// A third party names a node at an address where nobody is. A node it is
/// told to that knows the node keeps the address it proved; a node that
/// lost the contact learns it again from the node's own connection, not
/// from the third party.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_does_not_move_a_known_contact() {
    let net = store_network(3).await;
    let (asker, named) = (&net[0].node, &net[1].node);
    let real = table_addrs(asker, named.id()).expect("the asker knows the named node");
    let liar = DhtLiar::start(
        named.id(),
        &[],
        &[asker.addr()],
        Lies {
            misdirect: vec![named.id()],
            ..Lies::default()
        },
    )
    .await
    .expect("the liar starts");
    wait_until("the asker knows the liar", Duration::from_secs(20), || {
        knows(asker, liar.id)
    })
    .await;
    let dead = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .any(|a| a.ip().to_string().starts_with("192.0.2."))
    };

    // Known: lookups through the liar leave the proven address alone.
    for target in [named.id(), liar.id, asker.id()] {
        asker.dht().lookup(target).await;
    }
    assert!(liar.find_node_answered() >= 1, "the liar was not asked");
    let after = table_addrs(asker, named.id()).expect("still known");
    assert_eq!(after, real, "a third party moved a known contact");

    // Lost: with only the liar to ask, the named node is heard of from the
    // liar alone, at a dead address, while the connection to it is up.
    {
        let mut state = asker.dht().state();
        for c in state.table.contacts() {
            if c.id != liar.id {
                state.table.remove(&c.id);
            }
        }
    }
    let asked = liar.find_node_answered();
    asker.dht().lookup(named.id()).await;
    assert!(liar.find_node_answered() > asked, "the liar was not asked");
    let relearned = table_addrs(asker, named.id()).unwrap_or_default();
    assert!(
        !dead(&relearned),
        "the third party's address went into the table: {relearned:?}"
    );
    println!(
        "named node: proven {real:?}, after the liar's answers {after:?}, relearned {relearned:?}"
    );
    liar.shutdown().await;
    shutdown(net).await;
}

/// Twenty identities, each a full node of its own, from twenty addresses of
/// one /24 announce themselves as providers of a key after an honest
/// provider did: the honest record stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_identities_from_one_prefix_do_not_evict_an_honest_record() {
    let net = store_network(2).await;
    let (keeper, honest) = (&net[0].node, &net[1].node);
    let file = Hash::of(b"a popular file");
    let key = key_of(&file);
    let to_keeper = Contact {
        id: keeper.id(),
        addrs: vec![keeper.local_addr()],
        relays: Vec::new(),
    };
    let announce = |from: Node| {
        let (to, addr) = (to_keeper.clone(), keeper.addr());
        async move {
            from.connect(&addr).await.expect("connects to the keeper");
            let provider = PeerRecord {
                id: from.id(),
                addrs: vec![from.local_addr()],
                relays: Vec::new(),
            };
            from.dht()
                .rpc(&to, DhtRequest::AddProvider { key, provider })
                .await
        }
    };
    let ack = announce(honest.clone()).await.expect("announce");
    assert_eq!(ack, Response::Ack);

    let mut sybils = Vec::new();
    for i in 1..=20u8 {
        let node = Node::start(NodeConfig {
            listen: SocketAddr::from(([127, 1, 2, i], 0)),
            ..NodeConfig::local_test()
        })
        .await
        .expect("a sybil starts");
        let answer = announce(node.clone()).await.expect("sybil announce");
        assert_eq!(answer, Response::Ack, "records are not refused");
        sybils.push(node);
    }
    let kept: Vec<NodeId> = keeper
        .dht()
        .local_providers(file)
        .into_iter()
        .map(|p| p.id)
        .collect();
    let from_sybils = kept.iter().filter(|id| **id != honest.id()).count();
    println!(
        "after 20 sybils from 127.1.2.0/24: {} records kept, {from_sybils} theirs",
        kept.len()
    );
    assert!(kept.contains(&honest.id()), "the honest record was evicted");
    for s in sybils {
        s.shutdown().await;
    }
    shutdown(net).await;
}
