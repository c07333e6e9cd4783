//! The command line: the clap structs, the parsers of sizes and durations
//! they use, and the translation of the node flags into a [`NodeConfig`].
//!
//! Flags that shape a node are global (`NodeArgs`), so `put` and `get` take
//! `--bootstrap`, `--network-key` or `--data-dir` after the subcommand too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quic_peer::config::Congestion;
use quic_peer::crypto::netkey::NetworkKey;
use quic_peer::proto::ticket::Target;
use quic_peer::store::datadir::DataDir;
use quic_peer::{NodeConfig, NodeId, PeerAddr};

/// A decentralized file storage network over QUIC.
///
/// Start the first node with `quic-peer --listen 0.0.0.0:5000`, then join others
/// with `quic-peer --bootstrap HOST:5000`. A running node reads commands on
/// standard input: `put PATH [REPLICAS] [--public]`, `get ID|TICKET OUT
/// [--force]`, `files`, `peers`, `id`, `help`, `exit`.
#[derive(Parser, Debug)]
#[command(name = "quic-peer", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub node: NodeArgs,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// Where a running node serves its dashboard and metrics.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Serve the dashboard and /metrics at ADDR (HOST:PORT); if the port is
    /// taken, a free one. A non-loopback address needs the token for
    /// everything, not just actions.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8480", value_parser = parse_listen)]
    pub http: SocketAddr,
    /// Serve no dashboard and no metrics.
    #[arg(long, conflicts_with = "http")]
    pub no_http: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
        /// Chunk size in bytes (1K to 16M) [default: 1M, doubling for files
        /// over 256M up to 4M].
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Store it in plaintext, for content meant for everyone (by
        /// default a file is encrypted on this machine and only its ticket
        /// opens it).
        #[arg(long, conflicts_with_all = ["convergent", "pad"])]
        public: bool,
        /// Derive the key from the content and the convergence secret kept
        /// in --data-dir, so the same file put twice is stored once; anyone
        /// with that secret can confirm a guess of the content.
        #[arg(long)]
        convergent: bool,
        /// Round the stored size up (Padmé, at most 12% more) so the nodes
        /// that store it do not learn its exact size.
        #[arg(long)]
        pad: bool,
    },
    /// Fetch a file or directory by id or ticket, verify it, and write it.
    Get {
        /// The file id, or a ticket from `put` (an encrypted file needs its
        /// ticket, or its id and --key).
        target: Target,
        /// The key of an encrypted file given by its id (`put` prints it).
        #[arg(long, value_name = "KEY")]
        key: Option<quic_peer::proto::sealed::FileKey>,
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
        #[arg(long, value_name = "SIZE", default_value = "12M", value_parser = parse_size)]
        max_in_flight: u64,
        /// Replace files already at the output path (or in the output
        /// directory) that differ from the download; without it, get refuses
        /// and names the file. Directories are never replaced.
        #[arg(long)]
        force: bool,
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
    /// One bare quinn stream of SIZE_MIB between two processes: prints its
    /// seconds (for examples/compare.sh).
    #[command(hide = true)]
    BenchBare {
        /// Stream size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// Run a small network on loopback and show it working.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Keep the nodes and their dashboards running after the demo,
        /// until Ctrl-C.
        #[arg(long)]
        stay: bool,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// UDP address to listen on, as IP:PORT or HOST:PORT [default:
    /// 0.0.0.0:0, an ephemeral port]
    #[arg(long, value_name = "ADDR", global = true, value_parser = parse_listen)]
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
    pub data_dir: Option<PathBuf>,

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
    /// an IPv6 address counts by its /64. More are refused, and told so.
    /// Loopback (127.0.0.0/8, ::1) is exempt unless --limit-loopback.
    #[arg(long, value_name = "N", default_value_t = 8, global = true)]
    max_connections_per_ip: usize,

    /// Apply --max-connections-per-ip to loopback addresses too (by default
    /// nodes on this machine, which all dial from 127.0.0.1, are exempt).
    #[arg(long, global = true)]
    limit_loopback: bool,

    /// Nodes behind NAT this node relays for at once (it relays only while
    /// peers can dial it). Each relayed connection is ended after 1 GiB or
    /// 30 minutes, whichever comes first; at most 16 run at once.
    #[arg(long, value_name = "N", default_value_t = 32, global = true)]
    relay_slots: usize,

    /// Relay for nobody (the same as --relay-slots 0).
    #[arg(long, global = true)]
    no_relay: bool,

    /// Behind NAT, do not ask the home router to forward this node's port
    /// (UPnP IGD). The mapping is renewed while the node runs and removed
    /// when it stops.
    #[arg(long, global = true)]
    no_port_mapping: bool,

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
    /// What a stranger may make this node store (files it agreed to hold
    /// plus uploads not held yet), counted per node id and per address
    /// block (IPv4 /24, IPv6 /48), so new ids do not multiply it. Peers on
    /// loopback are exempt unless --limit-loopback.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size, global = true)]
    stranger_allowance: u64,
    /// What a member of this private network (--network-key or --allow)
    /// may make this node store; by default the whole --max-storage.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, global = true)]
    member_allowance: Option<u64>,
    /// Chunk data held in memory for peers at once, node-wide (pieces read
    /// from disk for GETs, received for PUTs), e.g. 32M; at least 16M.
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size, global = true)]
    chunk_memory: u64,
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

impl NodeArgs {
    /// The node configuration these flags describe, checked.
    pub fn config(&self) -> Result<NodeConfig> {
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
            limit_loopback: self.limit_loopback,
            relay_slots: if self.no_relay { 0 } else { self.relay_slots },
            port_mapping: !self.no_port_mapping,
            max_streams: self.max_streams,
            max_requests_per_sec: self.max_requests_per_sec,
            request_burst: self.max_requests_per_sec.saturating_mul(2),
            max_storage: self.max_storage,
            stranger_allowance: self.stranger_allowance,
            member_allowance: self.member_allowance,
            chunk_memory: usize::try_from(self.chunk_memory)
                .context("--chunk-memory is too large")?,
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

    /// Locks the `--data-dir`, or the first free default one, for a running node.
    pub fn data_dir(&self) -> Result<DataDir> {
        Ok(match &self.data_dir {
            Some(dir) => DataDir::lock(dir)?,
            None => DataDir::default_slot()?,
        })
    }
}

/// A flag given in seconds, checked to be positive and under a day.
fn seconds(name: &str, secs: f64) -> Result<Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs < 86_400.0) {
        anyhow::bail!("--{name} must be a number of seconds between 0 and 86400, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
/// A listening address: `IP:PORT`, or `HOST:PORT` resolved now (its first
/// IPv4 address, as a node on `localhost` wants 127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("not IP:PORT or HOST:PORT ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{s} resolves to no address"))
}

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
