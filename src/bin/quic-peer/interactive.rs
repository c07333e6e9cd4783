//! The commands a running node reads on standard input, one a line:
//! `put PATH [REPLICAS] [--public]`, `get ID|TICKET OUT [--force]`, `files`, `peers`,
//! `id`, `help` and `exit`.
//!
//! A command never blocks the loop that reads them: transfers run as tasks
//! and print their report when they finish.

use std::path::PathBuf;
use std::str::SplitWhitespace;

use quic_peer::download::DownloadOptions;
use quic_peer::proto::ticket::Target;
use quic_peer::proto::wire::Role;
use quic_peer::replication::{PutOptions, Sealing};
use quic_peer::{Node, PeerState};

use crate::display::{human, print_get, print_put, say, TransferProgress};

const HELP: &str =
    "commands: put PATH [REPLICAS] [--public], get ID|TICKET OUT [--force], files, peers, id, exit";

/// Runs one interactive command; false means exit. Transfers run in the
/// background and print when they finish.
pub fn command(node: &Node, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("exit" | "quit") => return false,
        Some("peers") => print_peers(node),
        Some("files") => print_files(node),
        Some("id") => say!("{}", node.addr()),
        Some("help") => say!("{HELP}"),
        Some("put") => put(node, words),
        Some("get") => get(node, words),
        Some(other) => say!("unknown command {other:?}; {HELP}"),
    }
    true
}

/// `put PATH [REPLICAS] [--public]`, three replicas unless told, encrypted
/// unless `--public`.
fn put(node: &Node, words: SplitWhitespace<'_>) {
    const USAGE: &str = "usage: put PATH [REPLICAS] [--public]";
    let (flags, rest): (Vec<&str>, Vec<&str>) = words.partition(|w| w.starts_with("--"));
    let sealing = match flags[..] {
        [] => Sealing::Random,
        ["--public"] => Sealing::Public,
        _ => {
            say!("{USAGE}");
            return;
        }
    };
    let mut words = rest.into_iter();
    let Some(path) = words.next() else {
        say!("{USAGE}");
        return;
    };
    let replicas = match words.next().map(str::parse::<usize>) {
        None => 3,
        Some(Ok(r)) => r,
        Some(Err(_)) => {
            say!("{USAGE}");
            return;
        }
    };
    let opts = PutOptions {
        replicas,
        sealing,
        ..PutOptions::default()
    };
    tokio::spawn(put_in_background(node.clone(), PathBuf::from(path), opts));
}

async fn put_in_background(node: Node, path: PathBuf, opts: PutOptions) {
    let progress = TransferProgress::new("put");
    match node.put(&path, &opts, progress.clone()).await {
        Ok(report) => {
            progress.finish();
            print_put(&report, node.id());
        }
        Err(e) => say!("[ERROR] put {}: {e}", path.display()),
    }
}

/// `get ID|TICKET OUT [--force]`: `--force` (anywhere) replaces files in
/// the way, as `quic-peer get --force` does.
fn get(node: &Node, words: SplitWhitespace<'_>) {
    const USAGE: &str = "usage: get ID|TICKET OUT [--force]";
    let (flags, rest): (Vec<&str>, Vec<&str>) = words.partition(|w| w.starts_with("--"));
    let force = match flags[..] {
        [] => false,
        ["--force"] => true,
        _ => {
            say!("{USAGE}");
            return;
        }
    };
    let [target, out] = rest[..] else {
        say!("{USAGE}");
        return;
    };
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => {
            say!("[ERROR] {e}");
            return;
        }
    };
    let opts = DownloadOptions {
        force,
        ..DownloadOptions::default()
    };
    tokio::spawn(get_in_background(
        node.clone(),
        target,
        PathBuf::from(out),
        opts,
    ));
}

async fn get_in_background(node: Node, target: Target, out: PathBuf, opts: DownloadOptions) {
    let progress = TransferProgress::new("get");
    match node.get(&target, &out, &opts, progress.clone()).await {
        Ok(stats) => {
            progress.finish();
            print_get(&out, &stats);
        }
        Err(e) => {
            progress.finish();
            say!("[ERROR] get {}: {e}", target.id());
        }
    }
}

/// `peers`: how many are connected, then one line each.
fn print_peers(node: &Node) {
    let peers = node.peers();
    let members = peers
        .iter()
        .filter(|p| p.state != PeerState::Known && p.role == Role::Peer)
        .count();
    say!("{} connected, {} known", members, peers.len() - members);
    for p in peers {
        let mut addrs: Vec<String> = p.addrs.iter().map(ToString::to_string).collect();
        addrs.extend(p.relays.iter().map(|r| format!("relay={r}")));
        let rtt = p
            .rtt
            .map(|r| format!("{:.1} ms", r.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        let role = match (p.role, p.relayed) {
            (Role::Client, _) => " client",
            (_, true) => " relayed",
            _ => "",
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

/// `files`: the store's use of its quota, then one line per file.
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
