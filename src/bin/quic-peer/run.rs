//! `quic-peer` without a subcommand: runs a node until `exit`, Ctrl-C or
//! SIGTERM, printing the lines its users (and `tests/cli.rs`) read:
//! `[STARTED]` and what the node is, then `[CONNECTED]`, `[JOIN]` and
//! `[LEAVE]` as peers come and go, and `[STOPPED]` once it has shut down.

use anyhow::{Context, Result};
use quic_peer::proto::wire::Role;
use quic_peer::store::datadir::DataDir;
use quic_peer::{Node, NodeConfig, PeerEvent};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::{self, error::RecvError};

use std::net::SocketAddr;
use std::path::Path;

use quic_peer::dashboard::{Dashboard, DashboardOptions};

use crate::args::{HttpArgs, NodeArgs};
use crate::display::say;
use crate::interactive;

/// Runs a node with its data directory locked until it is told to stop, then
/// shuts it down in order.
pub async fn run_node(args: &NodeArgs, http: &HttpArgs) -> Result<()> {
    let config = args.config()?;
    let dir = args.data_dir()?;
    let config = NodeConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..config
    };
    let node = Node::start(config).await?;
    // At once: the first peers connect while the dashboard starts.
    let events = node.subscribe();
    print_started(&node, &dir);
    if !http.no_http {
        serve_dashboard(&node, http.http, dir.path()).await?;
    }
    let printer = tokio::spawn(print_events(node.clone(), events));
    serve_until_exit(&node).await?;
    node.shutdown().await;
    printer.abort();
    say!("[STOPPED] {}", node.id());
    Ok(())
}

/// Says where the node listens, who it is and whom it admits.
fn print_started(node: &Node, dir: &DataDir) {
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
}

/// Serves the dashboard and says where, with the token that lets the page
/// act (a new one each start, as Jupyter does).
async fn serve_dashboard(node: &Node, addr: SocketAddr, data_dir: &Path) -> Result<()> {
    let opts = DashboardOptions {
        addr,
        token: Some(Dashboard::new_token()),
        work_dir: data_dir.join("dashboard"),
    };
    let dashboard = Dashboard::start(node.clone(), opts).await?;
    if let Some(port) = dashboard.moved_from {
        say!(
            "[HTTP] port {port} is taken: serving on {}",
            dashboard.addr()
        );
    }
    say!("[HTTP] dashboard at {}", dashboard.url());
    say!("[HTTP] metrics at http://{}/metrics", dashboard.addr());
    Ok(())
}

/// Runs the commands read on standard input until `exit`, Ctrl-C or SIGTERM.
async fn serve_until_exit(node: &Node) -> Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { say!("[SHUTDOWN] interrupted"); break; }
            _ = term.recv() => { say!("[SHUTDOWN] terminated"); break; }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if !interactive::command(node, line.trim()) {
                        break;
                    }
                }
                // Without a terminal (a service, a test) keep running until a signal.
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    }
    Ok(())
}

/// Prints the node's peer events until it shuts down.
async fn print_events(node: Node, mut events: broadcast::Receiver<PeerEvent>) {
    loop {
        match events.recv().await {
            Ok(event) => print_event(&node, &event),
            Err(RecvError::Lagged(n)) => say!("[WARN] {n} events not shown"),
            Err(RecvError::Closed) => return,
        }
    }
}

fn print_event(node: &Node, event: &PeerEvent) {
    let count = || node.connected_peers().len();
    // How a connection goes: "at ADDR" / "from ADDR", or through a relay.
    let via = |word: &str, addr: &std::net::SocketAddr| match quic_peer::net::is_relayed(addr) {
        true => "through a relay".to_string(),
        false => format!("{word} {addr}"),
    };
    match event {
        PeerEvent::Connected {
            id,
            addr,
            outbound: true,
            ..
        } => say!("[CONNECTED] Connected to peer {id} {}", via("at", addr)),
        PeerEvent::Connected { id, addr, role, .. } => {
            let what = if *role == Role::Client {
                "Client"
            } else {
                "Peer"
            };
            say!("[CONNECTED] {what} {id} connected {}", via("from", addr))
        }
        PeerEvent::Joined { id, addr } => {
            say!(
                "[JOIN] {id} joined {} ({} peers)",
                via("from", addr),
                count()
            )
        }
        PeerEvent::Reachability(r) => say!("[NAT] {r}"),
        PeerEvent::PortMapped { external, local } => {
            say!("[NAT] port mapped by the router (UPnP): {external} to {local}")
        }
        PeerEvent::Relays(relays) if relays.is_empty() => {
            say!("[RELAY] no relay holds a reservation for this node now")
        }
        PeerEvent::Relays(relays) => {
            let list: Vec<String> = relays.iter().map(ToString::to_string).collect();
            say!("[RELAY] reachable through {}", list.join(", "))
        }
        PeerEvent::Left { id, reason } => {
            say!("[LEAVE] {id} {reason} ({} peers)", count())
        }
    }
}
