//! Private networks and allow lists on real nodes over loopback: members meet
//! and exchange files; outsiders, other networks and unlisted ids are refused
//! inside the handshake, with a clear error on both sides, and never join.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{
    binary, connected, dir_arg, get_to, parse_started, put, random_bytes, run_fails, run_ok,
    store_node_with, wait_until, Proc,
};
use quic_peer::crypto::netkey::NetworkKey;
use quic_peer::crypto::tls::Refusal;
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::{ConnectError, Node, NodeConfig, NodeId, PeerAddr, PeerEvent};

const T: Duration = Duration::from_secs(20);

/// A node on loopback in `network` (or in none), admitting `allow` (or anyone).
async fn start(network: Option<&NetworkKey>, allow: Option<&[NodeId]>) -> Node {
    common::init_logs();
    Node::start(NodeConfig {
        network_key: network.cloned(),
        allow: allow.map(|ids| ids.iter().copied().collect()),
        ..NodeConfig::local_test()
    })
    .await
    .expect("node starts")
}

/// Fails if `node` reported any event about `id` (nothing joined, nothing
/// connected), after giving late events a moment.
async fn assert_no_events_about(
    events: &mut tokio::sync::broadcast::Receiver<PeerEvent>,
    node: &Node,
    id: NodeId,
) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(e) = events.try_recv() {
        let about = match &e {
            PeerEvent::Connected { id: who, .. }
            | PeerEvent::Joined { id: who, .. }
            | PeerEvent::Left { id: who, .. } => *who == id,
            PeerEvent::Reachability(_) | PeerEvent::Relays(_) | PeerEvent::PortMapped { .. } => {
                false
            }
        };
        assert!(!about, "{} reported {e:?}", node.id().fmt_short());
    }
    assert!(!connected(node, id));
    assert!(node.connection(&id).is_none(), "a connection was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_connect_and_exchange_a_file() {
    let net = NetworkKey::generate().unwrap();
    let a = store_node_with(&[], |c| c.network_key = Some(net.clone())).await;
    let boot = a.node.clone();
    let b = store_node_with(&[&boot], |c| c.network_key = Some(net.clone())).await;
    wait_until("members connected", T, || {
        connected(&a.node, b.node.id()) && connected(&b.node, a.node.id())
    })
    .await;

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("members-only.bin");
    let data = random_bytes(3 * DEFAULT_CHUNK_SIZE as usize + 17, 6);
    std::fs::write(&src, &data).unwrap();
    let report = put(&a.node, &src, 1).await;
    assert_eq!(report.remote_copies, 1);
    assert!(report.holders.iter().any(|h| h.id == b.node.id()));
    let out = work.path().join("back.bin");
    get_to(&b.node, report.id, &out).await.expect("get");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_is_refused_in_the_handshake_both_ways() {
    let net = NetworkKey::generate().unwrap();
    let member = start(Some(&net), None).await;
    let outsider = start(None, None).await;
    let mut member_events = member.subscribe();
    let mut outsider_events = outsider.subscribe();

    // The outsider dials the member: the member's verifier refuses its
    // certificate, and the outsider is told why.
    let err = outsider.connect(&member.addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                refusal: Refusal::NotMember,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not a member of the peer's private network"),
        "{text}"
    );
    // Unpinned, the same.
    let err = outsider
        .connect(&PeerAddr::from(member.local_addr()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("private network"), "{err}");
    assert_no_events_about(&mut member_events, &member, outsider.id()).await;

    // The member dials the outsider: the member refuses the outsider's
    // certificate on its own side.
    let err = member.connect(&outsider.addr()).await.unwrap_err();
    assert!(matches!(err, ConnectError::Handshake { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "peer {} is not a member of this private network",
            outsider.id()
        )),
        "{text}"
    );
    assert!(text.contains("no membership proof"), "{text}");
    assert_no_events_about(&mut outsider_events, &outsider, member.id()).await;
    assert_no_events_about(&mut member_events, &member, outsider.id()).await;

    member.shutdown().await;
    outsider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_network_key_is_refused() {
    let (n1, n2) = (
        NetworkKey::generate().unwrap(),
        NetworkKey::generate().unwrap(),
    );
    let a = start(Some(&n1), None).await;
    let c = start(Some(&n2), None).await;
    let mut a_events = a.subscribe();
    let mut c_events = c.subscribe();
    for (from, to) in [(&c, &a), (&a, &c)] {
        let err = from.connect(&to.addr()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not a member of this private network")
                && text.contains("different network key"),
            "{text}"
        );
    }
    assert_no_events_about(&mut a_events, &a, c.id()).await;
    assert_no_events_about(&mut c_events, &c, a.id()).await;
    // A member of the right network still gets in.
    let b = start(Some(&n1), None).await;
    assert_eq!(b.connect(&a.addr()).await.unwrap(), a.id());
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_admits_listed_ids_and_refuses_others() {
    let listed = start(None, None).await;
    let other = start(None, None).await;
    let strict = start(None, Some(&[listed.id()])).await;
    let mut events = strict.subscribe();

    // A listed id gets in.
    assert_eq!(listed.connect(&strict.addr()).await.unwrap(), strict.id());
    wait_until("listed peer joined", T, || connected(&strict, listed.id())).await;

    // Another id is refused in the handshake, and told why.
    let err = other.connect(&strict.addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                refusal: Refusal::NotAllowed,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not on the peer's allow list"),
        "{err}"
    );
    assert_no_events_about(&mut events, &strict, other.id()).await;

    // Dialing out: an unlisted pinned id is not even dialed; an unlisted peer
    // behind a bare address is refused by the verifier.
    let err = strict.connect(&other.addr()).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::NotAllowed(id) if id == other.id()),
        "{err:?}"
    );
    let err = strict
        .connect(&PeerAddr::from(other.local_addr()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "peer {} is not on this node's allow list",
            other.id()
        )),
        "{err}"
    );
    assert_no_events_about(&mut events, &strict, other.id()).await;
    assert!(connected(&strict, listed.id()), "the listed peer stays");

    for n in [listed, other, strict] {
        n.shutdown().await;
    }
}

/// The real binary: `keygen`, two members joining with `--network-key`, and a
/// third process without the key refused with a clear message.
#[test]
fn cli_keygen_members_join_and_outsider_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("net.key");
    let key_arg = key.display().to_string();
    let out = binary().args(["keygen", &key_arg]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[KEYGEN]"), "{stdout}");
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.lines().any(|l| l.starts_with("qpnk1")), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No silent overwrite.
    let out = binary().args(["keygen", &key_arg]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);

    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir_arg(&da),
        "--network-key",
        &key_arg,
    ]);
    let (addr, a_id) = parse_started(&a.expect_line("[STARTED]", T));
    a.expect_line("[PRIVATE] member of private network", T);
    let boot = format!("{a_id}@{addr}");
    let mut b = Proc::spawn(&[
        "--bootstrap",
        &boot,
        "--data-dir",
        &dir_arg(&db),
        "--network-key",
        &key_arg,
    ]);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    b.expect_line(&format!("[JOIN] {a_id}"), T);
    a.expect_line(&format!("[JOIN] {b_id}"), T);

    // A third node without the key: its bootstrap is refused, and it says why.
    let mut c = binary()
        .args(["--bootstrap", &boot, "--data-dir", &dir_arg(&dc)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = c.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = loop {
        let line = rx.recv_timeout(T).expect("a refusal on stderr");
        if line.contains("private network") {
            break line;
        }
    };
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        line.contains("refused this node: this node is not a member of the peer's private network"),
        "{line}"
    );

    // `put` without the key fails with the same reason; with it, it works.
    let src = work.path().join("f.txt");
    std::fs::write(&src, b"members only").unwrap();
    let src_arg = src.display().to_string();
    let put = ["put", &src_arg, "--bootstrap", &boot, "--replicas", "1"];
    let err = run_fails(&put);
    assert!(
        err.contains("cannot reach the network") && err.contains("not a member"),
        "{err}"
    );
    let stdout = run_ok(&[&put[..], &["--network-key", &key_arg]].concat());
    assert!(stdout.contains("[PUT] 1 of 1 copy"), "{stdout}");

    // Nobody outside joined the members.
    a.send("peers");
    a.expect_line("1 connected", T);
    for p in [&mut a, &mut b] {
        p.send("exit");
        assert!(p.wait(T).success());
    }
    assert!(
        !a.seen.iter().chain(&b.seen).any(|l| l.contains("[JOIN]")
            && !l.contains(&a_id.to_string())
            && !l.contains(&b_id.to_string())),
        "an outsider joined: {:?}",
        a.seen
    );
}

/// `--allow` on the real binary: `put` reaches an allow-listed node only with
/// an identity (its `--data-dir`) that is on the list.
#[test]
fn cli_allow_list_admits_a_listed_client_only() {
    let (da, dclient) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let client_id = run_ok(&["id", "--data-dir", &dir_arg(&dclient)])
        .trim()
        .to_string();
    let mut a = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir_arg(&da),
        "--allow",
        &client_id,
    ]);
    let (addr, a_id) = parse_started(&a.expect_line("[STARTED]", T));
    a.expect_line("[ALLOW] only 1 listed peer(s) may connect", T);
    let boot = format!("{a_id}@{addr}");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.txt");
    std::fs::write(&src, b"for listed eyes").unwrap();
    let src_arg = src.display().to_string();
    let put = |extra: &[&str]| {
        binary()
            .args(["put", &src_arg, "--bootstrap", &boot, "--replicas", "1"])
            .args(extra)
            .env("RUST_LOG", "off")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // A throwaway identity is not on the list.
    let out = put(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on the peer's allow list"), "{err}");
    // The listed identity is. (Nodes without a store hold nothing, so the copy
    // lands on the one full node.)
    let out = put(&["--data-dir", &dir_arg(&dclient)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[PUT] 1 of 1 copy"), "{stdout}");
    a.send("exit");
    assert!(a.wait(T).success());
}
