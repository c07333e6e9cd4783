//! Membership over real QUIC sockets on loopback: joining, gossip, leaving,
//! pinning, the one-connection rule, and hostile control streams.

mod common;

use std::time::Duration;

use common::{connected, node, wait_event, wait_until};
use quic_peer::net::{PeerLimit, Reachability};
use quic_peer::proto::wire::{
    self, ErrorCode, Join, LimitHit, Request, Role, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};
use quic_peer::{ConnectError, Identity, LeftReason, Node, NodeConfig, PeerAddr, PeerEvent};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_in_a_chain_all_learn_each_other() {
    let a = node(&[]).await;
    let b = node(&[&a]).await;
    let c = node(&[&b]).await;
    // C was only told about B; gossip must bring A and C together.
    wait_until("full mesh of three", CONVERGE, || {
        connected(&a, b.id())
            && connected(&a, c.id())
            && connected(&b, c.id())
            && connected(&c, a.id())
    })
    .await;
    for n in [&a, &b, &c] {
        assert_eq!(n.connected_peers().len(), 2);
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_converge_to_full_membership() {
    let first = node(&[]).await;
    let mut nodes = vec![first.clone()];
    for _ in 1..20 {
        nodes.push(node(&[&first]).await);
    }
    let check = nodes.clone();
    wait_until(
        "20 nodes to see 19 peers each",
        Duration::from_secs(40),
        || check.iter().all(|n| n.connected_peers().len() == 19),
    )
    .await;
    // Each pair shares exactly one connection: 20 nodes, 19 each.
    for n in &nodes {
        let ids = n.connected_peers();
        assert_eq!(ids.len(), 19);
        assert!(!ids.contains(&n.id()));
    }
    let stops: Vec<_> = nodes
        .into_iter()
        .map(|n| tokio::spawn(async move { n.shutdown().await }))
        .collect();
    for s in stops {
        s.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_is_reported_at_once() {
    let a = node(&[]).await;
    let b = node(&[&a]).await;
    wait_until("b joined", CONVERGE, || connected(&a, b.id())).await;
    let mut events = a.subscribe();
    b.shutdown().await;
    let bid = b.id();
    let (event, took) = wait_event(
        &mut events,
        Duration::from_secs(2),
        |e| matches!(e, PeerEvent::Left { id, .. } if *id == bid),
    )
    .await;
    assert_eq!(
        event,
        PeerEvent::Left {
            id: bid,
            reason: LeftReason::Leave
        }
    );
    // Far sooner than the 3 s idle timeout: the LEAVE itself was heard.
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!connected(&a, bid));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_id_mismatch_fails_the_handshake() {
    let a = node(&[]).await;
    let c = node(&[]).await;
    let wrong = Identity::generate().unwrap().node_id();
    let addr = PeerAddr::pinned(wrong, a.local_addr());
    let err = c.connect(&addr).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::Handshake { .. }),
        "unexpected error kind: {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("peer id mismatch"), "{text}");
    assert!(text.contains(&wrong.to_string()), "{text}");
    assert!(!connected(&c, a.id()));

    // The right pin works, and so does a bare address, which learns the id.
    assert_eq!(c.connect(&a.addr()).await.unwrap(), a.id());
    let d = node(&[]).await;
    let bare = PeerAddr::from(a.local_addr());
    assert_eq!(d.connect(&bare).await.unwrap(), a.id());
    for n in [a, c, d] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_oneself_is_detected() {
    let a = node(&[]).await;
    let err = a
        .connect(&PeerAddr::from(a.local_addr()))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::SelfDial { .. }), "{err:?}");
    assert!(a.connected_peers().is_empty());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_leave_one_connection() {
    for _ in 0..5 {
        let a = node(&[]).await;
        let b = node(&[]).await;
        let mut a_events = a.subscribe();
        let (to_b, to_a) = (b.addr(), a.addr());
        let (ra, rb) = tokio::join!(a.connect(&to_b), b.connect(&to_a));
        assert_eq!(ra.unwrap(), b.id());
        assert_eq!(rb.unwrap(), a.id());
        wait_until("both connected", CONVERGE, || {
            connected(&a, b.id()) && connected(&b, a.id())
        })
        .await;
        // Give the loser time to close, then check that one connection is left
        // on each side and that it is the same one (it stays up).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ca = a.connection(&b.id()).unwrap();
        let cb = b.connection(&a.id()).unwrap();
        assert!(ca.close_reason().is_none() && cb.close_reason().is_none());
        assert_eq!(
            ca.remote_address(),
            b.local_addr(),
            "a's kept connection goes to b's listening socket"
        );
        assert_eq!(cb.remote_address(), a.local_addr());
        // Nothing left, nobody joined twice.
        while let Ok(e) = a_events.try_recv() {
            assert!(!matches!(e, PeerEvent::Left { .. }), "spurious {e:?}");
        }
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// A raw QUIC client with a valid identity, to speak broken protocol at a node.
async fn raw_client(target: &Node) -> quinn::Connection {
    let identity = Identity::generate().unwrap();
    let (client, _) = quic_peer::crypto::tls::quic_configs(&identity).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(client));
    endpoint
        .connect(
            target.local_addr(),
            quic_peer::crypto::tls::UNPINNED_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap()
}

async fn close_code(conn: &quinn::Connection) -> u64 {
    match tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .expect("node closed the connection")
    {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("closed with {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_control_streams_are_cut_off_while_others_are_served() {
    let a = node(&[]).await;
    let good = node(&[&a]).await;
    wait_until("good peer joined", CONVERGE, || connected(&a, good.id())).await;
    let mut events = a.subscribe();

    // 1. Garbage instead of JOIN.
    let conn = raw_client(&a).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::ProtocolViolation as u64);

    // 2. A length prefix far over the cap.
    let conn = raw_client(&a).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::FrameTooLarge as u64);

    // 3. A JOIN from a future version.
    let conn = raw_client(&a).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let join = Request::Join(Join {
        version: PROTOCOL_VERSION + 1,
        role: Role::Peer,
        listen_addrs: vec![],
        capabilities: 0,
        session: 1,
        relays: Vec::new(),
    });
    let body = postcard::to_allocvec(&join).unwrap();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    send.write_all(&frame).await.unwrap();
    assert_eq!(
        close_code(&conn).await,
        ErrorCode::UnsupportedVersion as u64
    );

    // 4. A proper JOIN, then garbage on the established control stream.
    let conn = raw_client(&a).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let join = Request::Join(Join {
        version: PROTOCOL_VERSION,
        role: Role::Peer,
        listen_addrs: vec![],
        capabilities: 0,
        session: 2,
        relays: Vec::new(),
    });
    send.write_all(&wire::encode(&join, MAX_CONTROL_FRAME).unwrap())
        .await
        .unwrap();
    let welcome: Option<wire::Control> =
        quic_peer::proto::frame::read_frame(&mut recv, MAX_CONTROL_FRAME)
            .await
            .unwrap();
    assert!(matches!(welcome, Some(wire::Control::Welcome(_))));
    send.write_all(&[0, 0, 0, 3, 0x77, 0x77, 0x77])
        .await
        .unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::ProtocolViolation as u64);

    // 5. Silence: a connection that never opens its control stream.
    let conn = raw_client(&a).await;
    assert_eq!(close_code(&conn).await, ErrorCode::Timeout as u64);

    // The well-behaved peer never noticed, and a newcomer can still join.
    assert!(connected(&a, good.id()));
    let gid = good.id();
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(&e, PeerEvent::Left { id, .. } if *id == gid),
            "good peer dropped: {e:?}"
        );
    }
    let late = node(&[&a]).await;
    wait_until("newcomer joined", CONVERGE, || connected(&a, late.id())).await;
    for n in [a, good, late] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_id_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let a = node(&[]).await;
    let config = NodeConfig {
        data_dir: Some(dir.path().to_path_buf()),
        bootstrap: vec![a.addr()],
        ..NodeConfig::local_test()
    };
    let b = Node::start(config.clone()).await.unwrap();
    let first_id = b.id();
    wait_until("b joined", CONVERGE, || connected(&a, first_id)).await;
    b.shutdown().await;
    // The store (and its database lock) closes when the last handle is gone.
    drop(b);
    wait_until("b left", CONVERGE, || !connected(&a, first_id)).await;

    let b = Node::start(config).await.unwrap();
    assert_eq!(b.id(), first_id, "same data dir, same id");
    wait_until("b rejoined", CONVERGE, || connected(&a, first_id)).await;
    for n in [a, b] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extra_peers() {
    let a = Node::start(NodeConfig {
        max_connections: 2,
        ..NodeConfig::local_test()
    })
    .await
    .unwrap();
    let b = node(&[&a]).await;
    let c = node(&[&a]).await;
    wait_until("two peers", CONVERGE, || a.connected_peers().len() == 2).await;
    let d = node(&[]).await;
    let err = d.connect(&a.addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::AtLimit {
                limit: PeerLimit::Said(LimitHit::Total { max: 2 }),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("(--max-connections on that node)"),
        "{err}"
    );
    assert_eq!(a.connected_peers().len(), 2);
    for n in [a, b, c, d] {
        n.shutdown().await;
    }
}

/// Nodes bound to 0.0.0.0 announce nothing until a peer dialed them back
/// (from another port) at an address; then they announce that one, not
/// 0.0.0.0: the first node of a network, only ever dialed, and the one
/// that dialed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_the_unspecified_address_announces_where_it_is_reached() {
    common::init_logs();
    let wildcard = || NodeConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..NodeConfig::local_test()
    };
    let a = Node::start(wildcard()).await.unwrap();
    assert!(
        a.net().listen_addrs().is_empty(),
        "nothing known before any contact"
    );
    let port = a.local_addr().port();
    let b = Node::start(NodeConfig {
        bootstrap: vec![PeerAddr::pinned(a.id(), ([127, 0, 0, 1], port).into())],
        ..wildcard()
    })
    .await
    .unwrap();
    wait_until("a and b connected", CONVERGE, || connected(&a, b.id())).await;
    let a_addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("a dialed back", CONVERGE, || {
        a.net().reachability() == Reachability::Public(a_addr)
    })
    .await;
    assert_eq!(a.net().listen_addrs(), vec![a_addr]);
    let b_port = b.local_addr().port();
    let b_addr: std::net::SocketAddr = ([127, 0, 0, 1], b_port).into();
    wait_until("b dialed back", CONVERGE, || {
        b.net().reachability() == Reachability::Public(b_addr)
    })
    .await;
    assert_eq!(b.net().listen_addrs(), vec![b_addr]);
    // And that is what each knows the other by, once.
    wait_until("a knows b by its address", CONVERGE, || {
        a.peers()
            .iter()
            .any(|p| p.id == b.id() && p.addrs == vec![b_addr])
    })
    .await;
    b.shutdown().await;
    a.shutdown().await;
}
