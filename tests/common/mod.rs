//! Helpers shared by the integration tests: real nodes on 127.0.0.1:0, waiting
//! for conditions and events, and driving the real binary.
#![allow(dead_code)]

pub mod adversary;
pub mod bomb;
pub mod dht_liar;
pub mod http;
pub mod liar;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quic_peer::download::{DownloadError, DownloadOptions, DownloadStats, NoProgress};
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::proto::ticket::Target;
use quic_peer::replication::PutReport;
use quic_peer::{Node, NodeConfig, NodeId, PeerEvent};

/// Sends the library's logs to the test output (shown for failing tests);
/// `RUST_LOG` sets the level.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Starts a node on loopback with short timers, joining through `bootstrap`.
pub async fn node(bootstrap: &[&Node]) -> Node {
    init_logs();
    Node::start(NodeConfig {
        bootstrap: bootstrap.iter().map(|n| n.addr()).collect(),
        ..NodeConfig::local_test()
    })
    .await
    .expect("node starts")
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for an event matching `pred`, returning it and how long it took.
pub async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<PeerEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&PeerEvent) -> bool,
) -> (PeerEvent, Duration) {
    let start = Instant::now();
    let found = tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .expect("event in time");
    (found, start.elapsed())
}

/// Whether `node` has a live connection to a full node `id`.
pub fn connected(node: &Node, id: NodeId) -> bool {
    node.connected_peers().contains(&id)
}

/// Puts `path` from `node` on `replicas` other nodes in plaintext (default
/// chunk size, no progress), and expects it to work.
pub async fn put(node: &Node, path: &std::path::Path, replicas: usize) -> PutReport {
    put_chunked(node, path, replicas, DEFAULT_CHUNK_SIZE).await
}

/// [`put`] in chunks of `chunk_size` bytes.
pub async fn put_chunked(
    node: &Node,
    path: &std::path::Path,
    replicas: usize,
    chunk_size: u32,
) -> PutReport {
    let opts = quic_peer::replication::PutOptions {
        chunk_size: chunk_size.into(),
        ..quic_peer::replication::PutOptions::public(replicas)
    };
    node.put(path, &opts, Arc::new(NoProgress))
        .await
        .expect("put")
}

/// Gets `target` (a file id or a ticket) to `out` from whoever holds it, with
/// default options and no progress.
pub async fn get_to(
    node: &Node,
    target: impl Into<Target>,
    out: &std::path::Path,
) -> Result<DownloadStats, DownloadError> {
    node.get(
        &target.into(),
        out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
    )
    .await
}

/// Writes `data` to a file in `dir`, puts it from `from` on `replicas`
/// nodes, gets it on `to` by id, and checks that the same bytes came back.
pub async fn round_trip(
    from: &Node,
    to: &Node,
    dir: &std::path::Path,
    data: &[u8],
    replicas: usize,
) -> PutReport {
    let src = dir.join(format!("src-{}", data.len()));
    std::fs::write(&src, data).expect("write the source file");
    let report = put(from, &src, replicas).await;
    let out = dir.join(format!("back-{}", data.len()));
    get_to(to, report.id, &out).await.expect("get");
    assert!(
        std::fs::read(&out).expect("read the copy") == data,
        "the copy of {} bytes differs",
        data.len()
    );
    report
}

/// The compiled `quic-peer` binary.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quic-peer"))
}

/// Runs the binary to the end with `args` (no stdin, `RUST_LOG=warn`),
/// asserts that it succeeded and returns its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = binary()
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the binary to the end with `args` (no stdin, no logs), asserts that
/// it failed with a short message, and returns its standard error.
pub fn run_fails(args: &[&str]) -> String {
    let out = binary()
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
        "short message expected, got:\n{err}"
    );
    err
}

/// A temp dir as a command-line argument.
pub fn dir_arg(dir: &tempfile::TempDir) -> String {
    dir.path().display().to_string()
}

/// A running `quic-peer` process whose stdout lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Spawns the binary with `args`, stdin piped, stdout read line by line.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = binary();
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit());
        Proc::from_command(cmd)
    }

    /// Spawns `cmd` (its stderr already set) with stdin piped and stdout read
    /// line by line.
    pub fn from_command(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Writes a line to the process's stdin.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Sends the process a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary as a node on loopback with its store in `data_dir`,
/// short timers (`idle_timeout` seconds, gossip every 0.5 s), joining
/// through `bootstrap`, plus `extra` flags; returns it once it printed
/// `[STARTED]`, with its address and id.
pub fn spawn_node(
    data_dir: &std::path::Path,
    idle_timeout: &str,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> (Proc, std::net::SocketAddr, NodeId) {
    let data = data_dir.display().to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--idle-timeout",
        idle_timeout,
        "--gossip-interval",
        "0.5",
    ];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    args.extend(extra);
    let mut proc = Proc::spawn(&args);
    let started = proc.expect_line("[STARTED]", Duration::from_secs(20));
    let (addr, id) = parse_started(&started);
    (proc, addr, id)
}

/// Parses `[STARTED] Peer active on ADDR (id ID)`.
pub fn parse_started(line: &str) -> (std::net::SocketAddr, NodeId) {
    let rest = line.split("Peer active on ").nth(1).expect("started line");
    let (addr, rest) = rest.split_once(" (id ").expect("id part");
    let id = rest.trim_end_matches(')');
    (addr.parse().expect("addr"), id.parse().expect("id"))
}

/// A full node with a store in its own temp directory (kept alive with it).
pub struct StoreNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
}

/// Starts a node with a store, joining through `bootstrap`.
pub async fn store_node(bootstrap: &[&Node]) -> StoreNode {
    store_node_with(bootstrap, |_| {}).await
}

/// Like [`store_node`], with a chance to change the config.
pub async fn store_node_with(
    bootstrap: &[&Node],
    tweak: impl FnOnce(&mut NodeConfig),
) -> StoreNode {
    init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig {
        bootstrap: bootstrap.iter().map(|n| n.addr()).collect(),
        data_dir: Some(dir.path().to_path_buf()),
        ..NodeConfig::local_test()
    };
    tweak(&mut config);
    let node = Node::start(config).await.expect("node starts");
    StoreNode { node, dir }
}

/// `n` nodes with stores, all joined through the first, fully connected.
pub async fn store_network(n: usize) -> Vec<StoreNode> {
    store_network_until(n, "full mesh", Duration::from_secs(30), |x| {
        x.connected_peers().len() == n - 1
    })
    .await
}

/// `n` nodes with stores joined through the first, once `ready` holds for all.
pub async fn store_network_until(
    n: usize,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&Node) -> bool,
) -> Vec<StoreNode> {
    let first = store_node(&[]).await;
    let boot = first.node.clone();
    let mut all = vec![first];
    for _ in 1..n {
        all.push(store_node(&[&boot]).await);
    }
    let nodes: Vec<Node> = all.iter().map(|s| s.node.clone()).collect();
    wait_until(what, timeout, || nodes.iter().all(&ready)).await;
    all
}

/// Shuts every node of `net` down.
pub async fn shutdown(net: Vec<StoreNode>) {
    for s in net {
        s.node.shutdown().await;
    }
}

/// Asserts that the trees at `a` and `b` hold the same names, kinds and
/// bytes.
pub fn assert_same_tree(a: &std::path::Path, b: &std::path::Path) {
    let mut entries: Vec<_> = std::fs::read_dir(a).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    let mut other: Vec<_> = std::fs::read_dir(b).unwrap().map(|e| e.unwrap()).collect();
    other.sort_by_key(|e| e.file_name());
    let names = |v: &Vec<std::fs::DirEntry>| v.iter().map(|e| e.file_name()).collect::<Vec<_>>();
    assert_eq!(names(&entries), names(&other), "in {}", a.display());
    for e in entries {
        let (pa, pb) = (e.path(), b.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            assert!(pb.is_dir());
            assert_same_tree(&pa, &pb);
        } else {
            assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        }
    }
}

/// Deterministic pseudo-random bytes (fast, no allocation games).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Progress that runs a closure once, when a fraction of the bytes is done.
pub struct At {
    total: AtomicU64,
    done: AtomicU64,
    fraction: f64,
    pub fired: std::sync::atomic::AtomicBool,
    action: Box<dyn Fn() + Send + Sync>,
}

impl quic_peer::download::Progress for At {
    fn begin(&self, _: &str, total: u64) {
        self.total.store(total, Ordering::SeqCst);
    }
    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
        let total = self.total.load(Ordering::SeqCst).max(1);
        if done as f64 / total as f64 >= self.fraction && !self.fired.swap(true, Ordering::SeqCst) {
            (self.action)();
        }
    }
}

pub fn at(fraction: f64, action: impl Fn() + Send + Sync + 'static) -> Arc<At> {
    Arc::new(At {
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        fraction,
        fired: Default::default(),
        action: Box::new(action),
    })
}

impl Proc {
    /// Like [`Proc::spawn`], with standard error written to `log`: never a
    /// terminal, so transfers print plain `[PROGRESS]` lines.
    pub fn spawn_logged(args: &[&str], log: &std::path::Path) -> Proc {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = binary();
        cmd.args(args)
            .env("RUST_LOG", "warn,quic_peer=info")
            .stderr(stderr);
        Proc::from_command(cmd)
    }

    /// The next stdout line; panics after `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(_) => panic!("no line within {timeout:?}; saw:\n{}", self.seen.join("\n")),
        }
    }

    /// Sends `files` and returns the listed files: (id, line).
    pub fn files(&mut self, timeout: Duration) -> Vec<(String, String)> {
        self.send("files");
        let head = self.expect_line(" files, ", timeout);
        let n: usize = head
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("bad files line {head:?}"));
        (0..n)
            .map(|_| {
                let line = self.next_line(timeout);
                let id = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                (id, line)
            })
            .collect()
    }
}

/// Every chunk file in the store of the node whose data directory is `data_dir`.
pub fn chunk_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(data_dir.join("store/chunks")) else {
        return out;
    };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            out.extend(files.flatten().map(|f| f.path()));
        }
    }
    out
}

/// Chunk files whose bytes do not hash to their name.
pub fn bad_chunks(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    chunk_files(data_dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Ok(hash) = name.parse::<quic_peer::proto::Hash>() else {
                return true;
            };
            std::fs::read(p).map_or(true, |b| quic_peer::proto::Hash::of(&b) != hash)
        })
        .collect()
}

/// Files in a store that are not chunks or its database: temp files of writes
/// that did not finish, anything stray.
pub fn temp_files(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let store = data_dir.join("store");
    let mut out: Vec<_> = std::fs::read_dir(store.join("tmp"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.extend(chunk_files(data_dir).into_iter().filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.parse::<quic_peer::proto::Hash>().is_err())
    }));
    if let Ok(entries) = std::fs::read_dir(&store) {
        for e in entries.flatten() {
            let name = e.file_name();
            if !["chunks", "tmp", "meta.redb"].contains(&name.to_str().unwrap_or_default()) {
                out.push(e.path());
            }
        }
    }
    out
}
