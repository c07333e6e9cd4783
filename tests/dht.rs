//! The DHT on real nodes: sixty of them in one process on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{get_to, put, random_bytes, store_node, wait_until, StoreNode};
use quic_peer::dht::kbucket::Contact;
use quic_peer::dht::sim::rounds_bound;
use quic_peer::proto::wire::{DhtRequest, NackReason, PeerRecord, Response};
use quic_peer::proto::Hash;
use quic_peer::{Identity, Node};

const R: usize = 3;

async fn network(n: usize) -> Vec<StoreNode> {
    common::store_network_until(n, "routing tables filled", Duration::from_secs(60), |x| {
        x.dht().routing_table_len() >= 10 && x.connected_peers().len() >= 10
    })
    .await
}

/// Live nodes that hold `id`.
fn holders(net: &[StoreNode], alive: &[bool], id: Hash) -> usize {
    net.iter()
        .zip(alive)
        .filter(|(s, up)| {
            **up && s
                .node
                .store()
                .is_some_and(|st| st.holds(&id).unwrap_or(false))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_nodes_find_files_and_survive_losing_a_third() {
    let net = network(60).await;
    let src = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, from) in [7usize, 23, 41].into_iter().enumerate() {
        let data = random_bytes(2 * 1024 * 1024 + i, i as u64);
        let path = src.path().join(format!("f{i}"));
        std::fs::write(&path, &data).unwrap();
        let report = put(&net[from].node, &path, R).await;
        assert_eq!(report.remote_copies, R, "{:?}", report.failures);
        files.push((report.id, data));
    }

    // Every node finds every file's providers with a lookup, in few rounds.
    let mut rounds = Vec::new();
    for s in &net {
        for (id, _) in &files {
            let found = s.node.dht().lookup_providers(*id, 1).await;
            assert!(
                !found.providers.is_empty() || s.node.store().unwrap().holds(id).unwrap(),
                "node {} found no provider of {id}",
                s.node.id().fmt_short()
            );
            let full = s.node.dht().lookup(quic_peer::dht::key_of(id)).await;
            rounds.push(full.rounds);
        }
    }
    rounds.sort_unstable();
    let median = rounds[rounds.len() / 2];
    assert!(
        median <= rounds_bound(60),
        "median rounds {median} at 60 nodes"
    );

    // Kill a third at random, R-1 at a time, waiting for repair in between.
    let mut alive = vec![true; net.len()];
    let mut order: Vec<usize> = (1..net.len()).collect();
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(60));
    let victims: Vec<usize> = order.into_iter().take(20).collect();
    for wave in victims.chunks(R - 1) {
        for &v in wave {
            net[v].node.shutdown().await;
            alive[v] = false;
        }
        let start = Instant::now();
        for (id, _) in &files {
            let deadline = start + Duration::from_secs(40);
            while holders(&net, &alive, *id) < R {
                assert!(
                    Instant::now() < deadline,
                    "file {id} stuck at {} copies",
                    holders(&net, &alive, *id)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    // Every file still comes back whole, fetched through a live node by id.
    let fetcher = net.iter().zip(&alive).find(|(_, a)| **a).unwrap().0;
    for (i, (id, data)) in files.iter().enumerate() {
        let out = src.path().join(format!("back{i}"));
        get_to(&fetcher.node, *id, &out).await.unwrap();
        assert_eq!(&std::fs::read(&out).unwrap(), data);
    }
    for (s, up) in net.iter().zip(&alive) {
        if *up {
            s.node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_provider_is_accepted_only_for_the_senders_own_id() {
    let a = store_node(&[]).await;
    let b = store_node(&[&a.node]).await;
    wait_until("joined", Duration::from_secs(20), || {
        b.node.connected_peers().contains(&a.node.id())
    })
    .await;
    let file = Hash::of(b"a file");
    let key = quic_peer::dht::key_of(&file);
    let to_a = Contact {
        id: a.node.id(),
        addrs: vec![a.node.local_addr()],
        relays: Vec::new(),
    };
    let someone_else = Identity::generate().unwrap().node_id();
    let forged = b
        .node
        .dht()
        .rpc(
            &to_a,
            DhtRequest::AddProvider {
                key,
                provider: PeerRecord {
                    id: someone_else,
                    addrs: vec!["127.0.0.1:9".parse().unwrap()],
                    relays: Vec::new(),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(forged, Response::Nack(NackReason::NotAccepted));
    let own = b
        .node
        .dht()
        .rpc(
            &to_a,
            DhtRequest::AddProvider {
                key,
                provider: PeerRecord {
                    id: b.node.id(),
                    addrs: vec![b.node.local_addr()],
                    relays: Vec::new(),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(own, Response::Ack);
    let ids: Vec<_> = a
        .node
        .dht()
        .local_providers(file)
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![b.node.id()]);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_contacts_and_records() {
    let a = store_node(&[]).await;
    let others = [store_node(&[&a.node]).await, store_node(&[&a.node]).await];
    let file = Hash::of(b"remembered");
    wait_until("contacts", Duration::from_secs(20), || {
        a.node.dht().routing_table_len() >= 2
    })
    .await;
    let to_a = Contact {
        id: a.node.id(),
        addrs: vec![a.node.local_addr()],
        relays: Vec::new(),
    };
    let ack = others[0]
        .node
        .dht()
        .rpc(
            &to_a,
            DhtRequest::AddProvider {
                key: quic_peer::dht::key_of(&file),
                provider: PeerRecord {
                    id: others[0].node.id(),
                    addrs: vec![others[0].node.local_addr()],
                    relays: Vec::new(),
                },
            },
        )
        .await
        .unwrap();
    assert_eq!(ack, Response::Ack);
    let contacts = a.node.dht().routing_table_len();

    let dir = a.dir;
    let config = a.node.config().clone();
    a.node.shutdown().await;
    drop(a.node);
    // No bootstrap: what it knows now comes from its own store.
    let a = Node::start(quic_peer::NodeConfig {
        bootstrap: vec![],
        ..config
    })
    .await
    .unwrap();
    assert_eq!(a.dht().routing_table_len(), contacts);
    let ids: Vec<_> = a
        .dht()
        .local_providers(file)
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, vec![others[0].node.id()]);
    a.shutdown().await;
    for o in others {
        o.node.shutdown().await;
    }
    drop(dir);
}
