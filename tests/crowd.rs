//! A crowd on one host: thirty real `quic-peer` processes on 127.0.0.1 with
//! the default limits. Every node dials from the same address, which the
//! per-address connection limit exempts (loopback is a friend), so all of
//! them join through the first, form one network, and a file put through one
//! node gets every copy it asked for and comes back whole through another.
//!
//! Each node has a data directory of its own in a temp dir and listens on
//! 127.0.0.1:0; no other flag is given. Timings are printed (run it with
//! `--nocapture`, in release: `cargo test --release --test crowd`).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{binary, dir_arg, parse_started, random_bytes, run_ok, Proc};
use quic_peer::NodeId;

/// Nodes in the crowd.
const NODES: usize = 30;
/// Time allowed for a process to start.
const START: Duration = Duration::from_secs(30);
/// Time allowed for the whole crowd to connect.
const FORM: Duration = Duration::from_secs(45);
/// Bytes in the file put and fetched: a few chunks and a bit.
const SIZE: usize = 4 * (1 << 20) + 12_345;

/// How many full nodes `p` is connected to, by its `peers` command (the
/// `[JOIN] … (N peers)` lines are not exact: a connection replaced under the
/// one-connection rule can print one less).
fn connected(p: &mut Proc) -> usize {
    p.send("peers");
    let line = p.expect_line(" connected, ", Duration::from_secs(10));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a peer count: {line}"))
}

/// The value after `key` on the first line of `stdout` that starts with it.
fn field(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{stdout}"))
        .trim()
        .to_string()
}

/// Where a node's standard error (its warnings) goes: beside its data.
fn log(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("node.log")
}

/// Starts the crowd: the first node, then the others joining through it, all
/// at once. Returns the processes and each one's address and id.
fn start(dirs: &[tempfile::TempDir]) -> (Vec<Proc>, Vec<(SocketAddr, NodeId)>) {
    let node = |dir: &tempfile::TempDir, boot: Option<&str>| {
        let data_dir = dir_arg(dir);
        let mut cmd = binary();
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir", &data_dir])
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(log(dir)).expect("log file"));
        if let Some(boot) = boot {
            cmd.args(["--bootstrap", boot]);
        }
        Proc::from_command(cmd)
    };
    let mut first = node(&dirs[0], None);
    let (addr, id) = parse_started(&first.expect_line("[STARTED]", START));
    let boot = format!("{id}@{addr}");
    let mut procs = vec![first];
    procs.extend(dirs[1..].iter().map(|d| node(d, Some(&boot))));
    let mut started = vec![(addr, id)];
    for p in &mut procs[1..] {
        started.push(parse_started(&p.expect_line("[STARTED]", START)));
    }
    (procs, started)
}

/// Waits until every node has every other as a peer.
fn wait_for_full_mesh(procs: &mut [Proc], since: Instant) {
    let all = procs.len() - 1;
    let mut counts = vec![0usize; procs.len()];
    loop {
        for (p, count) in procs.iter_mut().zip(&mut counts) {
            if *count < all {
                *count = connected(p);
            }
        }
        if counts.iter().all(|&n| n == all) {
            return;
        }
        assert!(
            since.elapsed() < FORM,
            "the crowd did not connect in {FORM:?}; peers per node: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn thirty_nodes_on_one_host_form_a_network_and_store_a_file() {
    let dirs: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let t0 = Instant::now();
    let (mut procs, addrs) = start(&dirs);
    let started = t0.elapsed();
    wait_for_full_mesh(&mut procs, t0);
    let formed = t0.elapsed();

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("crowd.bin");
    let data = random_bytes(SIZE, 30);
    std::fs::write(&src, &data).unwrap();
    let boot = |i: usize| format!("{}@{}", addrs[i].1, addrs[i].0);

    let t = Instant::now();
    let stdout = run_ok(&["put", &src.display().to_string(), "--bootstrap", &boot(0)]);
    let put_time = t.elapsed();
    assert!(
        stdout.contains("[PUT] 3 of 3 copies stored on other nodes\n"),
        "{stdout}"
    );
    let id = field(&stdout, "id: ");
    let key = field(&stdout, "key: ");

    // By id and key, through another node: the DHT finds the holders.
    let out = work.path().join("back.bin");
    let t = Instant::now();
    let stdout = run_ok(&[
        "get",
        &id,
        "--key",
        &key,
        "-o",
        &out.display().to_string(),
        "--bootstrap",
        &boot(NODES - 1),
    ]);
    let get_time = t.elapsed();
    assert!(stdout.contains("[RECEIVED]"), "{stdout}");
    assert!(std::fs::read(&out).unwrap() == data, "the copy differs");

    println!(
        "{NODES} processes on 127.0.0.1, default limits: all started in {:.1} s, \
         full mesh ({} peers each) {:.1} s after the first start; \
         put of {SIZE} bytes (3 of 3 copies) {:.2} s, get by id {:.2} s",
        started.as_secs_f64(),
        NODES - 1,
        formed.as_secs_f64(),
        put_time.as_secs_f64(),
        get_time.as_secs_f64()
    );
    for p in &mut procs {
        p.send("exit");
    }
    for p in &mut procs {
        assert!(p.wait(Duration::from_secs(10)).success());
    }
    // Nobody refused anybody.
    for d in &dirs {
        let warnings = std::fs::read_to_string(log(d)).unwrap_or_default();
        assert!(!warnings.contains("refusing"), "{warnings}");
    }
}
