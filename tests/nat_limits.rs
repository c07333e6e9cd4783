//! What a stranger gets from the NAT requests (dial-backs, reservations,
//! circuits, hole punches) sent by hand to a real node on loopback: a clear
//! refusal wherever it has no business, the bounds where it has, and a
//! connection that stays up and served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::adversary::{ask, endpoint, ip, join};
use quic_peer::proto::wire::{NackReason, Request, Response, Role};
use quic_peer::NodeId;

fn nack(reason: NackReason) -> Option<Response> {
    Some(Response::Nack(reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_clear_refusals_and_bounded_relaying() {
    let node = common::node(&[]).await;
    let addr = node.addr();
    let target: SocketAddr = format!("{}:{}", addr.host, addr.port).parse().unwrap();
    let ep = endpoint(ip(7, 0, 1));
    let client = join(&ep, target, Role::Client)
        .await
        .expect("client joined");
    let peer = join(&ep, target, Role::Peer).await.expect("peer joined");

    // Dial-backs: not for clients, not to port 0; a real one to a port
    // where nobody listens fails within its bound, and a second at once
    // is refused.
    let dial_back = |port| Request::DialBack { port, nonce: 7 };
    assert_eq!(
        ask(&client.conn, &dial_back(9)).await,
        nack(NackReason::NotAccepted)
    );
    assert_eq!(
        ask(&peer.conn, &dial_back(0)).await,
        nack(NackReason::NotAccepted)
    );
    let started = Instant::now();
    let closed = std::net::UdpSocket::bind("127.7.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    assert_eq!(
        ask(&peer.conn, &dial_back(port)).await,
        nack(NackReason::Unreachable)
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(7), "a dial-back took {took:?}");
    assert_eq!(
        ask(&peer.conn, &dial_back(port)).await,
        nack(NackReason::NotAccepted)
    );

    // Circuits: to a node with no reservation; a CIRCUIT from a node this
    // one holds no reservation at; a PUNCH on a direct connection.
    let nobody = NodeId::from_bytes([9; 32]);
    let connect = Request::Connect { target: nobody };
    assert_eq!(
        ask(&client.conn, &connect).await,
        nack(NackReason::Unreachable)
    );
    let circuit = Request::Circuit { from: nobody };
    assert_eq!(
        ask(&peer.conn, &circuit).await,
        nack(NackReason::NotAccepted)
    );
    let punch = Request::Punch {
        addrs: vec!["192.0.2.1:9".parse().unwrap()],
    };
    assert_eq!(ask(&peer.conn, &punch).await, nack(NackReason::NotAccepted));

    // Reservations: not for clients; for full nodes, at most four from one
    // address.
    assert_eq!(
        ask(&client.conn, &Request::Reserve).await,
        nack(NackReason::NotAccepted)
    );
    let mut held = vec![peer];
    for _ in 0..4 {
        held.push(join(&ep, target, Role::Peer).await.expect("peer joined"));
    }
    let mut answers = Vec::new();
    for p in &held {
        answers.push(ask(&p.conn, &Request::Reserve).await);
    }
    let granted = answers
        .iter()
        .filter(|a| **a == Some(Response::Ack))
        .count();
    assert_eq!(granted, 4, "{answers:?}");
    assert_eq!(answers[4], nack(NackReason::NotAccepted));

    // A probe nobody asked for, as the first stream of a connection.
    let conn = ep
        .connect_with(
            common::adversary::valid_client(),
            target,
            quic_peer::crypto::tls::UNPINNED_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    let probe = Request::Probe { nonce: 1 };
    assert_eq!(ask(&conn, &probe).await, nack(NackReason::NotAccepted));

    // Through all of it the stranger's connections stay up, and served.
    for p in &held {
        assert!(p.conn.close_reason().is_none());
    }
    let has = Request::Has {
        id: quic_peer::proto::Hash::of(b"nothing"),
    };
    assert_eq!(ask(&client.conn, &has).await, Some(Response::NotFound));
    node.shutdown().await;
}
