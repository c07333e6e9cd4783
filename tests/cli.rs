//! The real `quic-peer` binary, as separate processes: start, join, leave, crash,
//! restart, and refuse bad input with a clear message.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    binary, connected, dir_arg, node, parse_started, run_fails, run_ok, wait_event, wait_until,
    Proc,
};
use quic_peer::{LeftReason, Node, NodeConfig, PeerEvent};

const T: Duration = Duration::from_secs(20);

#[test]
fn listen_then_bootstrap_as_separate_processes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&da)]);
    let started = a.expect_line("[STARTED] Peer active on 127.0.0.1:", T);
    let (addr, a_id) = parse_started(&started);
    a.expect_line("[WAITING] Listening for incoming peer connections...", T);

    // Pin A's id in the bootstrap address.
    let boot = format!("{a_id}@{addr}");
    let mut b = Proc::spawn(&["--bootstrap", &boot, "--data-dir", &dir_arg(&db)]);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    b.expect_line(&format!("[CONNECTED] Connected to peer {a_id}"), T);
    b.expect_line(&format!("[JOIN] {a_id}"), T);
    a.expect_line(&format!("[JOIN] {b_id}"), T);

    a.send("peers");
    a.expect_line("1 connected", T);
    a.expect_line(&b_id.to_string(), T);

    // `exit` sends LEAVE, and the process ends with 0.
    b.send("exit");
    assert!(b.wait(T).success());
    a.expect_line(&format!("[LEAVE] {b_id} left"), Duration::from_secs(2));

    // `quic-peer id` reads the same identity the node used.
    let out = run_ok(&["id", "--data-dir", &dir_arg(&db)]);
    assert_eq!(out.trim(), b_id.to_string());

    a.send("exit");
    assert!(a.wait(T).success());
}

#[test]
fn sigterm_shuts_down_cleanly_with_leave() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&da)]);
    let (addr, _) = parse_started(&a.expect_line("[STARTED]", T));
    let mut b = Proc::spawn(&[
        "--bootstrap",
        &addr.to_string(),
        "--data-dir",
        &dir_arg(&db),
    ]);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    a.expect_line(&format!("[JOIN] {b_id}"), T);
    b.signal("TERM");
    let status = b.wait(T);
    assert!(status.success(), "exit status {status:?}");
    b.expect_line("[STOPPED]", T);
    a.expect_line(&format!("[LEAVE] {b_id} left"), Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_is_reported_within_the_idle_timeout() {
    let a = node(&[]).await;
    let mut events = a.subscribe();
    let db = tempfile::tempdir().unwrap();
    let mut b = Proc::spawn(&[
        "--bootstrap",
        &a.addr().to_string(),
        "--idle-timeout",
        "2",
        "--data-dir",
        &dir_arg(&db),
    ]);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    wait_until("b joined", T, || connected(&a, b_id)).await;

    // SIGKILL: no LEAVE, no CONNECTION_CLOSE; only silence.
    b.signal("KILL");
    let killed = Instant::now();
    let (event, _) = wait_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, PeerEvent::Left { id, .. } if *id == b_id),
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(
        event,
        PeerEvent::Left {
            id: b_id,
            reason: LeftReason::TimedOut
        }
    );
    // The negotiated idle timeout is the smaller of the two: 2 s.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "reported after {took:?}"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_process_keeps_its_id_and_replaces_its_old_connection() {
    // A long idle timeout: the old connection is still "alive" when B returns.
    let a = Node::start(NodeConfig {
        idle_timeout: Duration::from_secs(60),
        ..NodeConfig::local_test()
    })
    .await
    .unwrap();
    let mut events = a.subscribe();
    let db = tempfile::tempdir().unwrap();
    let args = [
        "--bootstrap".to_string(),
        a.addr().to_string(),
        "--data-dir".to_string(),
        dir_arg(&db),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Proc::spawn(&args);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    wait_until("b joined", T, || connected(&a, b_id)).await;
    let old = a.connection(&b_id).unwrap();
    b.signal("KILL");
    b.wait(T);

    let mut b2 = Proc::spawn(&args);
    let (_, b2_id) = parse_started(&b2.expect_line("[STARTED]", T));
    assert_eq!(b2_id, b_id, "same data dir, same id");
    b2.expect_line("[CONNECTED]", T);
    wait_until("new connection replaces the old", T, || {
        a.connection(&b_id)
            .is_some_and(|c| c.stable_id() != old.stable_id())
    })
    .await;
    assert!(old.close_reason().is_some(), "old connection closed");
    // B never stopped being a member.
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(&e, PeerEvent::Left { id, .. } if *id == b_id),
            "spurious {e:?}"
        );
    }
    a.shutdown().await;
}

#[test]
fn bad_input_gets_one_clear_line_and_a_failing_exit() {
    let err = run_fails(&["--bootstrap", "nonsense"]);
    assert!(err.contains("invalid address"), "{err}");
    let err = run_fails(&["--bootstrap", "zzzz@127.0.0.1:5000"]);
    assert!(err.contains("invalid node id"), "{err}");
    let err = run_fails(&["--listen", "localhost"]);
    assert!(err.contains("--listen"), "{err}");
    let err = run_fails(&["--idle-timeout", "-1", "id"]);
    assert!(err.contains("idle-timeout") || err.contains("-1"), "{err}");

    // A port already taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let d = tempfile::tempdir().unwrap();
    let err = run_fails(&["--listen", &port, "--data-dir", &dir_arg(&d)]);
    assert!(err.contains("already in use"), "{err}");

    // A data dir that is a file.
    let file = d.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = run_fails(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &file.display().to_string(),
    ]);
    assert!(err.contains("data directory"), "{err}");
}

/// The messages a user reads for each bad input, pinned.
#[test]
fn bad_input_messages_say_what_is_wrong_once() {
    let cases: &[(&[&str], &str)] = &[
        (
            // 52 letters of the alphabet, the last one's padding bits set.
            &["get", &format!("{}1", "a".repeat(51)), "-o", "x"],
            "its last character must be 0 or g",
        ),
        (
            &["get", &"a".repeat(51), "-o", "x"],
            "it is 51 characters long; an id is 52 base32 characters",
        ),
        (
            &["get", &format!("{}z", "a".repeat(51)), "-o", "x"],
            "character 52 ('z') is not base32",
        ),
        (
            &[
                "get",
                &format!("{}0", "a".repeat(51)),
                "--key",
                "nope",
                "-o",
                "x",
            ],
            "invalid key: it is 4 characters long; a key is 52 base32 characters",
        ),
        (
            &["put", "Cargo.toml", "--public", "--pad"],
            "cannot be used with",
        ),
        (
            &[
                "put",
                "Cargo.toml",
                "--convergent",
                "--bootstrap",
                "127.0.0.1:9",
            ],
            "--convergent needs --data-dir DIR",
        ),
        (&["--listen", "localhost"], "not IP:PORT or HOST:PORT"),
    ];
    for (args, want) in cases {
        let err = run_fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains('\x1b'),
            "no colour codes into a pipe: {err:?}"
        );
    }
    // Log lines into a file or pipe carry no colour codes: a node whose
    // bootstrap does not answer logs a warning.
    let d = tempfile::tempdir().unwrap();
    let mut node = binary()
        .args(["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&d)])
        .args(["--bootstrap", "127.0.0.1:9", "--idle-timeout", "1"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = node.kill();
    let out = node.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WARN") && !err.contains('\x1b'), "{err:?}");
    // An OS error is said once, not once per layer.
    let err = run_fails(&["keygen", "/nonexistent-dir/net.key"]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `--listen` takes a host name, as `--bootstrap` does.
#[test]
fn listen_takes_a_host_name() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Proc::spawn(&["--listen", "localhost:0", "--data-dir", &dir_arg(&d)]);
    a.expect_line("[STARTED] Peer active on 127.0.0.1:", T);
    a.send("exit");
    assert!(a.wait(T).success());
}

#[test]
fn a_data_dir_serves_one_node_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let mut a = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&d)]);
    a.expect_line("[STARTED]", T);
    let err = run_fails(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&d)]);
    assert!(err.contains("in use by another running node"), "{err}");
    a.send("exit");
    assert!(a.wait(T).success());
}

#[test]
fn default_data_dirs_give_concurrent_nodes_distinct_ids() {
    let home = tempfile::tempdir().unwrap();
    let spawn = || {
        let mut child = binary()
            .args(["--listen", "127.0.0.1:0"])
            .env("QUIC_PEER_HOME", home.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let started = lines.next().unwrap().unwrap();
        (child, parse_started(&started).1)
    };
    let (mut c1, id1) = spawn();
    let (mut c2, id2) = spawn();
    assert_ne!(id1, id2, "two running nodes never share an identity");
    for c in [&mut c1, &mut c2] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // The first slot comes back with the first id.
    let (mut c3, id3) = spawn();
    assert_eq!(id3, id1);
    c3.kill().unwrap();
    c3.wait().unwrap();
}

fn field(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
        .trim()
        .to_string()
}

/// `put` says why it placed fewer copies than asked: a network with fewer
/// nodes is success, said so; nodes that refused are an error, after the
/// report, naming the refusal.
#[test]
fn put_says_why_it_placed_fewer_copies() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&dirs[0])]);
    let (addr, a_id) = parse_started(&a.expect_line("[STARTED]", T));
    let boot = format!("{a_id}@{addr}");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("f.bin");
    std::fs::write(&src, common::random_bytes(100_000, 5)).unwrap();
    let src_arg = src.display().to_string();
    let put = ["put", &src_arg, "--bootstrap", &boot, "--replicas", "3"];

    // One node: one copy, and why.
    let stdout = run_ok(&put);
    assert!(
        stdout.contains("[PUT] 1 of 3 copies stored on other nodes (only 1 other full node found)"),
        "{stdout}"
    );

    // Three nodes, one of them at its connection limit (its two peers).
    let mut b = Proc::spawn(&["--bootstrap", &boot, "--data-dir", &dir_arg(&dirs[1])]);
    b.expect_line("[JOIN]", T);
    let full = ["--max-connections", "2", "--data-dir", &dir_arg(&dirs[2])];
    let mut c = Proc::spawn(&[&["--bootstrap", &boot][..], &full].concat());
    c.expect_line("(2 peers)", T);
    a.expect_line("(2 peers)", T);
    let out = binary()
        .args(put)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}{stderr}");
    assert!(!out.status.success(), "a refusal is a failure");
    assert!(
        stdout.contains(
            "[PUT] 2 of 3 copies stored on other nodes: 1 of the 3 nodes found did not take one"
        ) && stdout.contains("limit of 2 connections in all (--max-connections on that node)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ticket: "),
        "the report comes first: {stdout}"
    );
    assert!(
        stderr.contains("put stored only 2 of 3 copies: 1 node refused or failed"),
        "{stderr}"
    );
    for p in [&mut a, &mut b, &mut c] {
        p.send("exit");
        assert!(p.wait(T).success());
    }
}

#[test]
fn put_and_get_as_separate_processes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &dir_arg(&da)]);
    let (addr, a_id) = parse_started(&a.expect_line("[STARTED]", T));
    let boot = format!("{a_id}@{addr}");
    let mut b = Proc::spawn(&["--bootstrap", &boot, "--data-dir", &dir_arg(&db)]);
    let (_, b_id) = parse_started(&b.expect_line("[STARTED]", T));
    a.expect_line(&format!("[JOIN] {b_id}"), T);

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("payload.bin");
    let data = common::random_bytes(3 * 1024 * 1024 + 5, 42);
    std::fs::write(&src, &data).unwrap();

    let src_arg = src.display().to_string();
    let stdout = run_ok(&["put", &src_arg, "--bootstrap", &boot, "--replicas", "2"]);
    assert!(stdout.contains("[PUT] 2 of 2 copies"), "{stdout}");
    assert!(
        stdout.contains("[PUT] encrypted on this machine"),
        "{stdout}"
    );
    let id = field(&stdout, "id: ");
    let key = field(&stdout, "key: ");
    let ticket = field(&stdout, "ticket: ");
    assert!(ticket.starts_with("qpt2"), "{ticket}");

    // By ticket, with no bootstrap at all: the ticket says where to go.
    let dest = work.path().join("by-ticket.bin");
    let dest_arg = dest.display().to_string();
    let stdout = run_ok(&["get", &ticket, "-o", &dest_arg]);
    assert!(stdout.contains("[RECEIVED]"), "{stdout}");
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // Again: the file there is the one asked for, so it is kept. Another
    // file there is not overwritten, unless with --force.
    run_ok(&["get", &ticket, "-o", &dest_arg]);
    std::fs::write(&dest, b"someone else's file").unwrap();
    let err = run_fails(&["get", &ticket, "-o", &dest_arg]);
    assert!(
        err.contains(&format!("refusing to overwrite {dest_arg}")) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"someone else's file");
    run_ok(&["get", &ticket, "-o", &dest_arg, "--force"]);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // By id alone: the file is encrypted, and the id does not open it.
    let dest = work.path().join("by-id.bin");
    let dest_arg = dest.display().to_string();
    let err = run_fails(&["get", &id, "-o", &dest_arg, "--bootstrap", &boot]);
    assert!(
        err.contains("names an encrypted file; its ticket (which carries the key) is needed"),
        "{err}"
    );
    assert!(!dest.exists() && !quic_peer::download::part_path(&dest).exists());
    // A wrong key: refused, nothing written.
    let wrong = quic_peer::proto::sealed::FileKey::from_bytes([1; 32]).to_string();
    let err = run_fails(&[
        "get",
        &id,
        "--key",
        &wrong,
        "-o",
        &dest_arg,
        "--bootstrap",
        &boot,
    ]);
    assert!(err.contains("the key does not open this file"), "{err}");
    assert!(!dest.exists() && !quic_peer::download::part_path(&dest).exists());
    // A truncated ticket: a clear message.
    let err = run_fails(&["get", &ticket[..ticket.len() - 10], "-o", &dest_arg]);
    assert!(err.contains("invalid ticket"), "{err}");
    // By id and key, through the bootstrap node.
    run_ok(&[
        "get",
        &id,
        "--key",
        &key,
        "-o",
        &dest_arg,
        "--bootstrap",
        &boot,
    ]);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // The running nodes list it.
    a.send("files");
    a.expect_line(&id, T);

    // Unknown id, unwritable output, unreachable network: a message and a failure,
    // and nothing under the final name.
    let unknown = quic_peer::proto::Hash::of(b"never stored").to_string();
    let dest = work.path().join("unknown.bin");
    let err = run_fails(&[
        "get",
        &unknown,
        "-o",
        &dest.display().to_string(),
        "--bootstrap",
        &boot,
    ]);
    assert!(err.contains("no peer holds"), "{err}");
    assert!(!dest.exists());
    let err = run_fails(&[
        "get",
        &ticket,
        "-o",
        "/nonexistent-dir/x.bin",
        "--bootstrap",
        &boot,
    ]);
    assert!(err.contains("cannot write"), "{err}");
    let err = run_fails(&[
        "get",
        &id,
        "-o",
        &work.path().join("never.bin").display().to_string(),
        "--bootstrap",
        "127.0.0.1:1",
        "--idle-timeout",
        "1",
    ]);
    assert!(err.contains("cannot reach the network"), "{err}");
    let err = run_fails(&["get", "not-an-id", "-o", "x"]);
    assert!(err.contains("invalid"), "{err}");

    // The interactive node can put and get too.
    let second = work.path().join("second.txt");
    std::fs::write(&second, b"typed at the prompt").unwrap();
    b.send(&format!("put {} 1", second.display()));
    let id2 = b
        .expect_line("ticket: ", T)
        .trim_start_matches("ticket: ")
        .to_string();
    let back = work.path().join("second.back");
    a.send(&format!("get {id2} {}", back.display()));
    a.expect_line("[RECEIVED]", T);
    assert_eq!(std::fs::read(&back).unwrap(), b"typed at the prompt");
    std::fs::write(&back, b"edited since").unwrap();
    a.send(&format!("get {id2} {}", back.display()));
    let refused = a.expect_line("[ERROR]", T);
    assert!(refused.contains("refusing to overwrite"), "{refused}");
    assert_eq!(std::fs::read(&back).unwrap(), b"edited since");
    a.send(&format!("get {id2} {} --force", back.display()));
    a.expect_line("[RECEIVED]", T);
    assert_eq!(std::fs::read(&back).unwrap(), b"typed at the prompt");

    for p in [&mut a, &mut b] {
        p.send("exit");
        assert!(p.wait(T).success());
    }
}
