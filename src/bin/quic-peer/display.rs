//! What the user reads: the `say!` line printer, human sizes, the progress
//! of a transfer, and the reports of a finished put or get.
//!
//! The bracketed lines (`[PUT]`, `[RECEIVED]`, `[PROGRESS]`…) are the
//! command's output, read by people, scripts and `tests/cli.rs` alike; they
//! are printed here on purpose, never through the log.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use quic_peer::download::{DownloadStats, Progress};
use quic_peer::replication::{PutReport, Shortfall};
use quic_peer::NodeId;

/// Prints a line for the user, flushing so that pipes see it at once.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}
pub(crate) use say;

/// A byte count as people read it: `12.01 MiB`.
pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// Prints what a put stored, where, how fast, and the id and ticket to get it.
pub fn print_put(report: &PutReport, me: NodeId) {
    say!("[PUT] {} bytes stored as {}", report.size, report.id);
    let secs = report.elapsed.as_secs_f64().max(1e-6);
    let sent = report.size * report.remote_copies as u64;
    say!(
        "[PUT] transferred {sent} bytes to {} node{} in {secs:.2} s ({:.1} MB/s)",
        report.remote_copies,
        if report.remote_copies == 1 { "" } else { "s" },
        sent as f64 / secs / 1e6
    );
    if report.in_one_pass > 0 {
        let n = report.in_one_pass;
        say!(
            "[PUT] {n} cop{} sent while the file was {}, in one pass (this network \
             has no other full nodes to choose from)",
            if n == 1 { "y" } else { "ies" },
            if report.key.is_some() {
                "encrypted"
            } else {
                "read"
            }
        );
    }
    for h in &report.holders {
        if h.id == me {
            say!("[PUT] this node keeps a copy too");
            continue;
        }
        let mut addrs: Vec<String> = h.addrs.iter().map(ToString::to_string).collect();
        addrs.extend(h.relays.iter().map(|r| format!("relay={r}")));
        say!("[SENT] copy held by {} ({})", h.id, addrs.join(","));
    }
    for (id, why) in &report.failures {
        say!("[WARN] {id} did not take a copy: {why}");
    }
    say!("[PUT] {}", copies_line(report));
    match report.key {
        Some(_) => say!(
            "[PUT] encrypted on this machine: the nodes that store it cannot read it; \
             the ticket (or the id with the key) opens it, so share it as a secret"
        ),
        None => say!("[PUT] stored in plaintext (--public): anyone with the id can read it"),
    }
    say!("id: {}", report.id);
    if let Some(key) = report.key {
        say!("key: {key}");
    }
    say!("ticket: {}", report.ticket);
}

/// `N of M copies stored on other nodes`, and why not all when not all: too
/// few nodes found, or nodes that refused or failed (the first one's reason).
fn copies_line(report: &PutReport) -> String {
    let wanted = report.wanted;
    let head = format!(
        "{} of {wanted} cop{} stored on other nodes",
        report.remote_copies,
        if wanted == 1 { "y" } else { "ies" }
    );
    let nodes = |n: usize| if n == 1 { "node" } else { "nodes" };
    match report.shortfall() {
        None => head,
        Some(Shortfall::FewerNodes { found: 0 }) => format!("{head} (no other full node found)"),
        Some(Shortfall::FewerNodes { found }) => {
            format!("{head} (only {found} other full {} found)", nodes(found))
        }
        Some(Shortfall::Failed { failed, found }) => {
            let first = report
                .failures
                .first()
                .map(|(id, why)| match failed {
                    1 => format!(": {}: {why}", id.fmt_short()),
                    _ => format!("; the first, {}: {why}", id.fmt_short()),
                })
                .unwrap_or_default();
            format!(
                "{head}: {failed} of the {found} {} found did not take one{first}",
                nodes(found)
            )
        }
    }
}

/// Prints what a get wrote to `out`, how fast, from how many peers, and any
/// peer it banned.
pub fn print_get(out: &Path, stats: &DownloadStats) {
    let secs = stats.elapsed.as_secs_f64().max(1e-6);
    // The speed of what came over the network: not what a resume found.
    let fetched = stats.bytes.saturating_sub(stats.resumed_bytes);
    say!(
        "[RECEIVED] {} ({} bytes in {} file{}) in {:.2} s{}, {:.1} MB/s from {} peer{}; chunks fetched {}, resumed {}, bad {}{}",
        out.display(),
        stats.bytes,
        stats.files,
        if stats.files == 1 { "" } else { "s" },
        secs,
        match stats.finding.as_secs_f64() {
            f if f >= 0.005 => format!(" ({f:.2} s finding the holders)"),
            _ => String::new(),
        },
        fetched as f64 / secs / 1e6,
        stats.per_peer.len(),
        if stats.per_peer.len() == 1 { "" } else { "s" },
        stats.chunks_fetched,
        stats.chunks_resumed,
        stats.bad_chunks,
        match stats.copies {
            0 => String::new(),
            n => format!("; {n} file{} copied from an identical one", plural(n)),
        }
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

/// "s" unless `n` is one.
fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A progress bar on a terminal, plain lines every 10% otherwise.
pub struct TransferProgress {
    what: &'static str,
    bar: Mutex<Option<indicatif::ProgressBar>>,
    plain: Mutex<PlainProgress>,
    start: Instant,
}

/// Where a transfer without a terminal stands, in bytes.
#[derive(Default)]
struct PlainProgress {
    total: u64,
    done: u64,
    /// The last tenth of `total` a line was printed for.
    decile: u64,
}

impl TransferProgress {
    /// A progress for a transfer labelled `what` ("put", "get").
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(TransferProgress {
            what,
            bar: Mutex::new(None),
            plain: Mutex::new(PlainProgress::default()),
            start: Instant::now(),
        })
    }

    /// Clears the bar, if there is one, before the report is printed.
    pub fn finish(&self) {
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
            *self.plain.lock().unwrap_or_else(|e| e.into_inner()) = PlainProgress {
                total,
                ..PlainProgress::default()
            };
            say!(
                "[{}] {name}: {} to {}",
                self.what.to_uppercase(),
                human(total),
                if self.what == "put" {
                    "send"
                } else {
                    "receive"
                }
            );
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(bytes);
            return;
        }
        let mut p = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        p.done += bytes;
        if p.total == 0 {
            return;
        }
        let decile = p.done * 10 / p.total;
        if decile > p.decile {
            p.decile = decile;
            let secs = self.start.elapsed().as_secs_f64().max(1e-6);
            say!(
                "[PROGRESS] {} {}% ({} of {}, {:.1} MB/s)",
                self.what,
                decile * 10,
                human(p.done),
                human(p.total),
                p.done as f64 / secs / 1e6
            );
        }
    }
}
