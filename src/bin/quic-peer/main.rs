//! The `quic-peer` command: parses the command line and drives the library.

mod bench;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quic_peer::config::Congestion;
use quic_peer::crypto::netkey::NetworkKey;
use quic_peer::download::{DownloadOptions, DownloadStats, Progress};
use quic_peer::proto::manifest::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use quic_peer::proto::ticket::Target;
use quic_peer::proto::wire::Role;
use quic_peer::replication::PutReport;
use quic_peer::store::datadir::{self, DataDir};
use quic_peer::{Identity, Node, NodeConfig, NodeId, PeerAddr, PeerEvent, PeerState};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncBufReadExt;

/// A decentralized file storage network over QUIC.
///
/// Start the first node with `quic-peer --listen 0.0.0.0:5000`, then join others
/// with `quic-peer --bootstrap HOST:5000`. A running node reads commands on
/// standard input: `peers`, `exit`.
#[derive(Parser, Debug)]
#[command(name = "quic-peer", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    node: NodeArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct NodeArgs {
    /// UDP address to listen on [default: 0.0.0.0:0, an ephemeral port]
    #[arg(long, value_name = "ADDR", global = true)]
    listen: Option<SocketAddr>,

    /// A node to join through, as HOST:PORT or ID@HOST:PORT (pins its id). Repeatable.
    #[arg(long, value_name = "ADDR", global = true)]
    bootstrap: Vec<PeerAddr>,

    /// Address to announce to peers instead of the listening one. Repeatable.
    #[arg(long, value_name = "ADDR", global = true)]
    advertise: Vec<SocketAddr>,

    /// Where this node keeps its identity [default: the first free
    /// ~/.local/share/quic-peer/node-N]
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// Seconds without traffic after which a peer is considered gone.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, global = true)]
    idle_timeout: f64,

    /// Seconds between peer-list gossip rounds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, global = true)]
    gossip_interval: f64,

    /// Connections to other nodes to keep.
    #[arg(long, value_name = "N", default_value_t = 32, global = true)]
    target_peers: usize,

    /// Hard limit on connections.
    #[arg(long, value_name = "N", default_value_t = 256, global = true)]
    max_connections: usize,

    /// Incoming connections (handshakes included) from one address at once;
    /// an IPv6 address counts by its /64. More are refused before their
    /// handshake.
    #[arg(long, value_name = "N", default_value_t = 8, global = true)]
    max_connections_per_ip: usize,

    /// Requests (get, put, has, hold, DHT) one peer may make per second, in
    /// bursts of up to twice that; more are refused with a rate-limited
    /// error. 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 1000, global = true)]
    max_requests_per_sec: u32,

    /// Streams one peer may have open on a connection at once (QUIC's own
    /// limit: a peer that wants more waits for one to close).
    /// At least 2: the control stream takes one.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(2..=10_000), global = true)]
    max_streams: u32,

    /// Most bytes of chunk data this node stores, e.g. 500M, 20G.
    #[arg(long, value_name = "SIZE", default_value = "10G", value_parser = parse_size, global = true)]
    max_storage: u64,
    /// QUIC congestion control: bbr copes with random loss, cubic and
    /// new-reno halve their rate on every loss.
    #[arg(long, value_enum, default_value_t = Congestion::Bbr, global = true)]
    congestion: Congestion,

    /// Join the private network whose key is in FILE (made by `quic-peer
    /// keygen`): only nodes holding the same key can connect, either way.
    #[arg(long, value_name = "FILE", global = true)]
    network_key: Option<PathBuf>,

    /// Connect only with this node id, either way. Repeatable; without it any
    /// node may connect. `put` and `get` reach such a node only if their own id
    /// (from their --data-dir) is listed there.
    #[arg(long, value_name = "ID", global = true)]
    allow: Vec<NodeId>,
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit in {s:?}: use ms, s, m or h")),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s or 5m"))?;
    let secs = v * scale;
    if !(0.0..=7.0 * 86_400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `1024`, `64K`, `500M`, `20G`, `1T` (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown unit in {s:?}: use K, M, G or T")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1048576, 512K, 500M or 20G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id.
    Id,
    /// Write a new random private-network key to FILE (mode 0600), for
    /// `--network-key`.
    Keygen {
        /// Where to write the key.
        file: PathBuf,
        /// Replace FILE if it exists (nodes holding the old key are shut out).
        #[arg(long)]
        force: bool,
    },
    /// Store a file or directory on the network; prints its id and a ticket.
    Put {
        /// The file or directory.
        path: PathBuf,
        /// Copies to place on other nodes.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Chunk size in bytes (1K to 16M).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: u64,
    },
    /// Fetch a file or directory by id or ticket, verify it, and write it.
    Get {
        /// The file id, or a ticket from `put`.
        target: Target,
        /// Where to write it.
        #[arg(short, long, value_name = "PATH")]
        out: PathBuf,
        /// After an attempt that got part of the file, keep looking for
        /// providers and resuming this long (30s, 5m; 0 to give up at once).
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        retry_for: Duration,
        /// Chunk data requested at once, across all peers (at least one
        /// chunk); as much again may wait to be written in order. Bounds the
        /// download's memory.
        #[arg(long, value_name = "SIZE", default_value = "24M", value_parser = parse_size)]
        max_in_flight: u64,
    },
    /// Measure put and get throughput against a bare quinn stream.
    Bench {
        /// File size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// The bare quinn server the bench measures against.
    #[command(hide = true)]
    BenchBareServer,
    /// Run a small network on loopback and show it working.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
}

fn seconds(name: &str, secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 86_400.0) {
        anyhow::bail!("--{name} must be a number of seconds between 0 and 86400, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

impl NodeArgs {
    fn config(&self) -> Result<NodeConfig> {
        let idle = seconds("idle-timeout", self.idle_timeout)?;
        let mut cfg = NodeConfig {
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            advertise: self.advertise.clone(),
            bootstrap: self.bootstrap.clone(),
            idle_timeout: idle,
            keep_alive: (idle / 4).max(Duration::from_millis(100)),
            gossip_interval: seconds("gossip-interval", self.gossip_interval)?,
            target_peers: self.target_peers,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            max_streams: self.max_streams,
            max_requests_per_sec: self.max_requests_per_sec,
            request_burst: self.max_requests_per_sec.saturating_mul(2),
            max_storage: self.max_storage,
            congestion: self.congestion,
            network_key: match &self.network_key {
                Some(path) => Some(NetworkKey::load(path)?),
                None => None,
            },
            allow: (!self.allow.is_empty()).then(|| self.allow.iter().copied().collect()),
            ..NodeConfig::default()
        };
        cfg.handshake_timeout = cfg.handshake_timeout.min(idle.max(Duration::from_secs(1)));
        if cfg.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        if cfg.max_connections_per_ip == 0 {
            anyhow::bail!("--max-connections-per-ip must be at least 1");
        }
        Ok(cfg)
    }

    fn data_dir(&self) -> Result<DataDir> {
        Ok(match &self.data_dir {
            Some(dir) => DataDir::lock(dir)?,
            None => DataDir::default_slot()?,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Standard input is read on a blocking thread that never returns by itself:
    // do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,quic_peer=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Id) => {
            let dir = match &cli.node.data_dir {
                Some(d) => d.clone(),
                None => datadir::default_path().context("no data directory: set --data-dir")?,
            };
            let identity = Identity::load_or_create(&dir)?;
            println!("{}", identity.node_id());
            Ok(())
        }
        Some(Command::Keygen { file, force }) => keygen(&file, force),
        Some(Command::Demo { nodes }) => demo(nodes).await,
        Some(Command::Bench { size_mib }) => bench::run(size_mib).await,
        Some(Command::BenchBareServer) => bench::bare_server().await,
        Some(Command::Put {
            path,
            replicas,
            chunk_size,
        }) => cli_put(&cli.node, &path, replicas, chunk_size).await,
        Some(Command::Get {
            target,
            out,
            retry_for,
            max_in_flight,
        }) => cli_get(&cli.node, &target, &out, retry_for, max_in_flight).await,
        None => run_node(&cli.node).await,
    }
}

/// Prints a line for the user, flushing so that pipes see it at once.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

async fn run_node(args: &NodeArgs) -> Result<()> {
    let config = args.config()?;
    let dir = args.data_dir()?;
    let config = NodeConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..config
    };
    let node = Node::start(config).await?;
    say!(
        "[STARTED] Peer active on {} (id {})",
        node.local_addr(),
        node.id()
    );
    say!("[DATA] {}", dir.path().display());
    if let Some(key) = &node.config().network_key {
        say!("[PRIVATE] member of private network {}", key.fingerprint());
    }
    if let Some(allow) = &node.config().allow {
        say!("[ALLOW] only {} listed peer(s) may connect", allow.len());
    }
    say!("[WAITING] Listening for incoming peer connections...");
    let printer = tokio::spawn(print_events(node.clone()));

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { say!("[SHUTDOWN] interrupted"); break; }
            _ = term.recv() => { say!("[SHUTDOWN] terminated"); break; }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if !command(&node, line.trim()) {
                        break;
                    }
                }
                // Without a terminal (a service, a test) keep running until a signal.
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    node.shutdown().await;
    printer.abort();
    say!("[STOPPED] {}", node.id());
    Ok(())
}

fn keygen(file: &std::path::Path, force: bool) -> Result<()> {
    let key = NetworkKey::write_new(file, force)?;
    say!(
        "[KEYGEN] wrote a new network key to {} (network {})",
        file.display(),
        key.fingerprint()
    );
    say!(
        "give it to every member over a safe channel and start them with --network-key {}",
        file.display()
    );
    Ok(())
}

const HELP: &str = "commands: put PATH [REPLICAS], get ID|TICKET OUT, files, peers, id, exit";

/// Runs one interactive command; false means exit. Transfers run in the
/// background and print when they finish.
fn command(node: &Node, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("exit" | "quit") => return false,
        Some("peers") => print_peers(node),
        Some("files") => print_files(node),
        Some("id") => say!("{}", node.addr()),
        Some("help") => say!("{HELP}"),
        Some("put") => {
            let Some(path) = words.next() else {
                say!("usage: put PATH [REPLICAS]");
                return true;
            };
            let replicas = match words.next().map(str::parse::<usize>) {
                None => 3,
                Some(Ok(r)) => r,
                Some(Err(_)) => {
                    say!("usage: put PATH [REPLICAS]");
                    return true;
                }
            };
            let (node, path) = (node.clone(), PathBuf::from(path));
            tokio::spawn(async move {
                let progress = TransferProgress::new("put");
                match node
                    .put(&path, replicas, DEFAULT_CHUNK, progress.clone())
                    .await
                {
                    Ok(report) => {
                        progress.finish();
                        print_put(&report);
                    }
                    Err(e) => say!("[ERROR] put {}: {e}", path.display()),
                }
            });
        }
        Some("get") => {
            let (Some(target), Some(out)) = (words.next(), words.next()) else {
                say!("usage: get ID|TICKET OUT");
                return true;
            };
            let target: Target = match target.parse() {
                Ok(t) => t,
                Err(e) => {
                    say!("[ERROR] {e}");
                    return true;
                }
            };
            let (node, out) = (node.clone(), PathBuf::from(out));
            tokio::spawn(async move {
                let progress = TransferProgress::new("get");
                let opts = DownloadOptions::default();
                match node.get(&target, &out, &opts, progress.clone()).await {
                    Ok(stats) => {
                        progress.finish();
                        print_get(&out, &stats);
                    }
                    Err(e) => say!("[ERROR] get {}: {e}", target.id()),
                }
            });
        }
        Some(other) => say!("unknown command {other:?}; {HELP}"),
    }
    true
}

const DEFAULT_CHUNK: u32 = quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;

fn print_files(node: &Node) {
    let Some(store) = node.store() else {
        say!("this node has no store");
        return;
    };
    match store.files() {
        Ok(files) => {
            say!(
                "{} files, {} of {} stored",
                files.len(),
                human(store.used()),
                human(store.quota())
            );
            for f in files {
                say!(
                    "  {}  {:>10}  {}{}{}",
                    f.id,
                    human(f.record.size),
                    f.record.name,
                    if f.record.is_dir { "/" } else { "" },
                    if f.complete { "" } else { "  (incomplete)" }
                );
            }
        }
        Err(e) => say!("[ERROR] {e}"),
    }
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

fn print_put(report: &PutReport) {
    say!("[PUT] {} bytes stored as {}", report.size, report.id);
    let secs = report.elapsed.as_secs_f64().max(1e-6);
    let sent = report.size * report.remote_copies as u64;
    say!(
        "[PUT] transferred {sent} bytes to {} node{} in {secs:.2} s ({:.1} MB/s)",
        report.remote_copies,
        if report.remote_copies == 1 { "" } else { "s" },
        sent as f64 / secs / 1e6
    );
    for h in &report.holders {
        let addrs: Vec<String> = h.addrs.iter().map(ToString::to_string).collect();
        say!("[SENT] copy held by {} ({})", h.id, addrs.join(","));
    }
    for (id, why) in &report.failures {
        say!("[WARN] {id} did not take a copy: {why}");
    }
    let copies = report.remote_copies;
    say!(
        "[PUT] {copies} of {} cop{} stored on other nodes{}",
        report.wanted,
        if report.wanted == 1 { "y" } else { "ies" },
        if copies < report.wanted {
            " (the network has fewer nodes to give)"
        } else {
            ""
        }
    );
    say!("id: {}", report.id);
    say!("ticket: {}", report.ticket);
}

fn print_get(out: &std::path::Path, stats: &DownloadStats) {
    let secs = stats.elapsed.as_secs_f64().max(1e-6);
    say!(
        "[RECEIVED] {} ({} bytes in {} file{}) in {:.2} s, {:.1} MB/s from {} peer{}; chunks fetched {}, resumed {}, bad {}",
        out.display(),
        stats.bytes,
        stats.files,
        if stats.files == 1 { "" } else { "s" },
        secs,
        stats.bytes as f64 / secs / 1e6,
        stats.per_peer.len(),
        if stats.per_peer.len() == 1 { "" } else { "s" },
        stats.chunks_fetched,
        stats.chunks_resumed,
        stats.bad_chunks
    );
    if !stats.banned_peers.is_empty() {
        say!(
            "banned for misbehaving: {}",
            stats
                .banned_peers
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// A progress bar on a terminal, plain lines every 10% otherwise.
struct TransferProgress {
    what: &'static str,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    plain: Mutex<(u64, u64, u64)>, // total, done, last decile printed
    start: std::time::Instant,
}

impl TransferProgress {
    fn new(what: &'static str) -> Arc<Self> {
        Arc::new(TransferProgress {
            what,
            bar: Mutex::new(None),
            plain: Mutex::new((0, 0, 0)),
            start: std::time::Instant::now(),
        })
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

impl Progress for TransferProgress {
    fn begin(&self, name: &str, total: u64) {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{} {name}", self.what));
            *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
        } else {
            *self.plain.lock().unwrap_or_else(|e| e.into_inner()) = (total, 0, 0);
            say!(
                "[{}] {name}: {} to transfer",
                self.what.to_uppercase(),
                human(total)
            );
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(bytes);
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        p.1 += bytes;
        if p.0 == 0 {
            return;
        }
        let decile = p.1 * 10 / p.0;
        if decile > p.2 {
            p.2 = decile;
            let secs = self.start.elapsed().as_secs_f64().max(1e-6);
            say!(
                "[PROGRESS] {} {}% ({} of {}, {:.1} MB/s)",
                self.what,
                decile * 10,
                human(p.1),
                human(p.0),
                p.1 as f64 / secs / 1e6
            );
        }
    }
}

/// Starts a short-lived client node and joins through the bootstrap nodes.
///
/// Its identity is a throwaway one, or with `--data-dir` that directory's
/// (locked while the returned guard lives, so it is not a running node's),
/// which lets nodes with an allow list admit it.
async fn client(args: &NodeArgs, need_bootstrap: bool) -> Result<(Node, Option<DataDir>)> {
    let config = NodeConfig {
        role: Role::Client,
        data_dir: None,
        ..args.config()?
    };
    if need_bootstrap && config.bootstrap.is_empty() {
        anyhow::bail!("--bootstrap ADDR is required to reach the network");
    }
    let (node, dir) = match &args.data_dir {
        Some(dir) => {
            let dir = DataDir::lock(dir)?;
            let identity = Identity::load_or_create(dir.path())?;
            (
                Node::start_with_identity(config, identity).await?,
                Some(dir),
            )
        }
        None => (Node::start(config).await?, None),
    };
    if !args.bootstrap.is_empty() {
        if let Err(last) = node.net().bootstrap_once().await {
            if need_bootstrap {
                node.shutdown().await;
                anyhow::bail!(
                    "cannot reach the network: no bootstrap node could be joined ({last})"
                );
            }
        }
    }
    Ok((node, dir))
}

async fn cli_put(
    args: &NodeArgs,
    path: &std::path::Path,
    replicas: usize,
    chunk_size: u64,
) -> Result<()> {
    anyhow::ensure!(replicas >= 1, "--replicas must be at least 1");
    let chunk_size = u32::try_from(chunk_size)
        .ok()
        .filter(|c| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(c))
        .with_context(|| {
            format!("--chunk-size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
        })?;
    std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (node, _dir) = client(args, true).await?;
    let progress = TransferProgress::new("put");
    let result = node.put(path, replicas, chunk_size, progress.clone()).await;
    progress.finish();
    node.shutdown().await;
    let report = result?;
    print_put(&report);
    Ok(())
}

async fn cli_get(
    args: &NodeArgs,
    target: &Target,
    out: &std::path::Path,
    retry_for: Duration,
    max_in_flight: u64,
) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "cannot write {}: {} is not a directory",
        out.display(),
        dir.display()
    );
    let probe = dir.join(format!(".quic-peer-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write {}: directory is not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);

    let need_bootstrap = matches!(target, Target::Id(_));
    let (node, _dir) = client(args, need_bootstrap).await?;
    let progress = TransferProgress::new("get");
    let opts = DownloadOptions {
        retry_for,
        max_in_flight_bytes: max_in_flight,
        ..DownloadOptions::default()
    };
    let result = node.get(target, out, &opts, progress.clone()).await;
    progress.finish();
    node.shutdown().await;
    let stats = result?;
    print_get(out, &stats);
    Ok(())
}

fn print_peers(node: &Node) {
    let peers = node.peers();
    let members = peers
        .iter()
        .filter(|p| p.state != PeerState::Known && p.role == Role::Peer)
        .count();
    say!("{} connected, {} known", members, peers.len() - members);
    for p in peers {
        let addrs: Vec<String> = p.addrs.iter().map(ToString::to_string).collect();
        let rtt = p
            .rtt
            .map(|r| format!("{:.1} ms", r.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        let role = if p.role == Role::Client {
            " client"
        } else {
            ""
        };
        say!(
            "  {}  {:<16}{}  rtt {:>9}  seen {:>5.1}s ago  {}",
            p.id,
            p.state,
            role,
            rtt,
            p.last_seen.as_secs_f64(),
            addrs.join(",")
        );
    }
}

async fn print_events(node: Node) {
    let mut events = node.subscribe();
    loop {
        match events.recv().await {
            Ok(event) => print_event(&node, &event),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                say!("[WARN] {n} events not shown")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn print_event(node: &Node, event: &PeerEvent) {
    let count = || node.connected_peers().len();
    match event {
        PeerEvent::Connected {
            id,
            addr,
            outbound: true,
            ..
        } => say!("[CONNECTED] Connected to peer {id} at {addr}"),
        PeerEvent::Connected { id, addr, role, .. } => {
            let what = if *role == Role::Client {
                "Client"
            } else {
                "Peer"
            };
            say!("[CONNECTED] {what} {id} connected from {addr}")
        }
        PeerEvent::Joined { id, addr } => {
            say!("[JOIN] {id} joined from {addr} ({} peers)", count())
        }
        PeerEvent::Left { id, reason } => {
            say!("[LEAVE] {id} {reason} ({} peers)", count())
        }
    }
}

async fn demo(nodes: usize) -> Result<()> {
    anyhow::ensure!(
        (5..=64).contains(&nodes),
        "--nodes must be between 5 and 64"
    );
    let work = std::env::temp_dir().join(format!("quic-peer-demo-{}", std::process::id()));
    let result = run_demo(nodes, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_demo(nodes: usize, work: &std::path::Path) -> Result<()> {
    const REPLICAS: usize = 3;
    let started = std::time::Instant::now();
    let config = |i: usize, bootstrap: Vec<PeerAddr>| NodeConfig {
        data_dir: Some(work.join(format!("node-{i}"))),
        bootstrap,
        ..NodeConfig::local_test()
    };
    let first = Node::start(config(0, vec![])).await?;
    say!(
        "[STARTED] node 0 on {} (id {})",
        first.local_addr(),
        first.id()
    );
    let mut all = vec![first.clone()];
    for i in 1..nodes {
        let node = Node::start(config(i, vec![first.addr()])).await?;
        say!(
            "[STARTED] node {i} on {} (id {})",
            node.local_addr(),
            node.id()
        );
        all.push(node);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let min = all
            .iter()
            .map(|n| n.connected_peers().len())
            .min()
            .unwrap_or(0);
        if min == nodes - 1 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "membership did not converge: smallest view has {min} of {} peers",
            nodes - 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say!("[JOIN] all {nodes} nodes see each other (each was told only of node 0; gossip did the rest)");

    // A file of random bytes, a few chunks long.
    let src = work.join("demo-file.bin");
    let size = 12 * 1024 * 1024 + 12_345;
    let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&src, &data)?;
    let uploader = &all[1];
    let report = uploader
        .put(
            &src,
            REPLICAS,
            DEFAULT_CHUNK,
            Arc::new(quic_peer::download::NoProgress),
        )
        .await?;
    let index = |id: &quic_peer::NodeId| all.iter().position(|n| n.id() == *id);
    let holder_names: Vec<String> = report
        .holders
        .iter()
        .filter_map(|h| index(&h.id))
        .map(|i| format!("node {i}"))
        .collect();
    say!(
        "[PUT] node 1 stored {} ({} bytes, {} chunks) as {}",
        src.display(),
        size,
        (size as u64).div_ceil(u64::from(DEFAULT_CHUNK)),
        report.id
    );
    say!("[SENT] copies held by {}", holder_names.join(", "));
    anyhow::ensure!(
        report.remote_copies == REPLICAS,
        "expected {REPLICAS} remote copies, got {}",
        report.remote_copies
    );

    // Stop one remote holder.
    let victim = report
        .holders
        .iter()
        .filter_map(|h| index(&h.id))
        .find(|&i| i != 1)
        .context("no remote holder")?;
    all[victim].shutdown().await;
    say!("[LEAVE] node {victim}, a holder, stopped");

    // Fetch through a node that holds nothing, by id alone.
    let fetcher = (0..nodes)
        .find(|i| *i != victim && !report.holders.iter().any(|h| Some(*i) == index(&h.id)))
        .context("no node without a copy")?;
    let out = work.join("fetched.bin");
    let stats = all[fetcher]
        .get(
            &Target::Id(report.id),
            &out,
            &DownloadOptions::default(),
            Arc::new(quic_peer::download::NoProgress),
        )
        .await?;
    let fetched = std::fs::read(&out)?;
    anyhow::ensure!(
        fetched == data,
        "the fetched file differs from the original"
    );
    let from: Vec<String> = stats
        .per_peer
        .iter()
        .map(|(id, n)| {
            format!(
                "node {} ({n} chunks)",
                index(id)
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    say!(
        "[RECEIVED] node {fetcher} fetched {} bytes from {} in {:.0} ms; every chunk verified",
        stats.bytes,
        from.join(", "),
        stats.elapsed.as_secs_f64() * 1000.0
    );
    say!("[CHECK] byte for byte identical to the original: yes");

    let stops: Vec<_> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| {
            let n = n.clone();
            tokio::spawn(async move { n.shutdown().await })
        })
        .collect();
    for s in stops {
        s.await?;
    }
    say!(
        "[DONE] demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
