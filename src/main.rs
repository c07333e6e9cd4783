//! The `quic-peer` command: parses the command line and drives the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quic_peer::datadir::{self, DataDir};
use quic_peer::wire::Role;
use quic_peer::{Identity, Node, NodeConfig, PeerAddr, PeerEvent, PeerState};
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this node's id.
    Id,
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
            ..NodeConfig::default()
        };
        cfg.handshake_timeout = cfg.handshake_timeout.min(idle.max(Duration::from_secs(1)));
        if cfg.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
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
        Some(Command::Demo { nodes }) => demo(nodes).await,
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

/// Runs one interactive command; false means exit.
fn command(node: &Node, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("exit" | "quit") => return false,
        Some("peers") => print_peers(node),
        Some("id") => say!("{}", node.addr()),
        Some("help") => say!("commands: peers, id, exit"),
        Some(other) => say!("unknown command {other:?}; commands: peers, id, exit"),
    }
    true
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
        (2..=64).contains(&nodes),
        "--nodes must be between 2 and 64"
    );
    let base = NodeConfig::local_test();
    let first = Node::start(base.clone()).await?;
    say!(
        "[STARTED] node 0 on {} (id {})",
        first.local_addr(),
        first.id()
    );
    let mut all = vec![first.clone()];
    for i in 1..nodes {
        let node = Node::start(NodeConfig {
            bootstrap: vec![first.addr()],
            ..base.clone()
        })
        .await?;
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
    say!("[JOIN] all {nodes} nodes see each other through gossip (bootstrap was node 0 only)");
    let leaving = all.pop().context("no nodes")?;
    let mut events = all[0].subscribe();
    leaving.shutdown().await;
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(PeerEvent::Left { id, reason }) = events.recv().await {
                if id == leaving.id() {
                    return reason;
                }
            }
        }
    })
    .await
    .context("node 0 did not see the LEAVE")?;
    say!("[LEAVE] node {} {left}; node 0 noticed at once", nodes - 1);
    let stops: Vec<_> = all
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move { n.shutdown().await })
        })
        .collect();
    for s in stops {
        s.await?;
    }
    say!("[DONE] demo finished");
    Ok(())
}
