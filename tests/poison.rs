//! DHT denial and poisoning on real nodes, with a lying DHT node
//! (`tests/common/dht_liar.rs`): a third party names a known node at an
//! address where nobody is.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dht_liar::{DhtLiar, Lies};
use common::{store_network, wait_until, StoreNode};
use quic_peer::{Node, NodeId};

/// Whether `node`'s routing table holds `id`.
fn knows(node: &Node, id: NodeId) -> bool {
    node.dht().state().table.contains(&id)
}

/// The addresses `node`'s routing table holds for `id`.
fn table_addrs(node: &Node, id: NodeId) -> Option<Vec<SocketAddr>> {
    node.dht().state().table.get(&id).map(|c| c.addrs.clone())
}

async fn shutdown(net: Vec<StoreNode>) {
    for s in net {
        s.node.shutdown().await;
    }
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
        asker.dht().lookup(target, None).await;
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
    asker.dht().lookup(named.id(), None).await;
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
