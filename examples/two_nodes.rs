//! Two nodes on loopback: one dials the other with its id pinned, both see each
//! other as members, and one leaves.
//!
//! `cargo run --release --example two_nodes`

use anyhow::Result;
use quic_peer::{Node, NodeConfig, PeerEvent};

#[tokio::main]
async fn main() -> Result<()> {
    let a = Node::start(NodeConfig::local_test()).await?;
    let b = Node::start(NodeConfig::local_test()).await?;
    println!("a: {}  (dial it as {})", a.id(), a.addr());
    println!("b: {}", b.id());

    let mut events = a.subscribe();
    let id = b.connect(&a.addr()).await?;
    assert_eq!(
        id,
        a.id(),
        "the pinned id is the one proven in the handshake"
    );
    while let Ok(event) = events.recv().await {
        if let PeerEvent::Joined { id, addr } = event {
            println!("a sees b join: {id} from {addr}");
            break;
        }
    }
    for p in b.peers() {
        println!("b's peer table: {} {} rtt {:?}", p.id, p.state, p.rtt);
    }
    b.shutdown().await;
    while let Ok(event) = events.recv().await {
        if let PeerEvent::Left { id, reason } = event {
            println!("a sees b leave: {id} ({reason})");
            break;
        }
    }
    a.shutdown().await;
    Ok(())
}
