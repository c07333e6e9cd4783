//! `quic-peer bench`: throughput and memory of put and get between real node
//! processes on loopback, each beside a bare quinn stream of the same size
//! measured in the same run (two processes too), as a ratio.
//!
//! The bench re-runs this same executable for every process it needs: nodes
//! (`--listen`), `put` and `get` clients, and the bare quinn server
//! (`bench-bare-server`, hidden).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use quic_peer::Identity;

/// One row of the results table.
struct Row {
    what: String,
    /// The transfer time the client reports.
    secs: f64,
    bytes: u64,
    rss_kib: Option<u64>,
    /// The bare quinn stream's time to compare with.
    baseline: f64,
    /// Busy CPU seconds of the whole machine meanwhile: every process of
    /// the transfer, sender and receiver.
    cpu: f64,
}

/// Rounds of the gets from the three nodes, one holder and three in turn.
const GET_ROUNDS: usize = 3;
/// Files in the small-files rows, of [`SMALL_FILE`] bytes each.
const SMALL_FILES: usize = 1000;
const SMALL_FILE: usize = 4096;

/// Runs the benchmark with a file of `size_mib` MiB and prints the table.
pub async fn run(size_mib: u64) -> Result<()> {
    let size = size_mib << 20;
    let work = std::env::temp_dir().join(format!("quic-peer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(&work, size).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(work: &Path, size: u64) -> Result<()> {
    let bench = Bench::prepare(work, size)?;
    let bare1 = bench.bare_stream(None).await?;
    let bare_file = bench.bare_stream(Some(&work.join("bare-sink.bin"))).await?;

    let a = NodeProc::start(&bench.exe, &work.join("a"), None)?;
    let (put, sealed) = bench.put(&bench.src, &a, 1, false)?;
    let mut rows = vec![put.row("put, client to 1 node (encrypted)", size, &a, bare1.secs)];
    rows.push(bench.get(
        "get, 1 holder (encrypted)",
        &a,
        &sealed,
        "get1.bin",
        bare1.secs,
    )?);
    let (put, public) = bench.put(&bench.src, &a, 1, true)?;
    rows.push(put.row("put, client to 1 node (--public)", size, &a, bare1.secs));
    rows.push(bench.get(
        "get, 1 holder (--public)",
        &a,
        &public,
        "get1p.bin",
        bare1.secs,
    )?);
    let small = bench.small_files(&a)?;
    // Three fresh nodes: joined to `a`, they would spend the next rows
    // repairing its files (held once, where a node wants three copies).
    drop(a);
    let a = NodeProc::start(&bench.exe, &work.join("a3"), None)?;
    let b = NodeProc::start(&bench.exe, &work.join("b"), Some(&a.pinned))?;
    let c = NodeProc::start(&bench.exe, &work.join("c"), Some(&a.pinned))?;
    std::thread::sleep(Duration::from_secs(2));
    let (put, sealed3) = bench.put(&bench.src, &a, 3, false)?;
    rows.push(put.row(
        "put, client to 3 nodes (encrypted)",
        3 * size,
        &b,
        bare1.secs,
    ));
    let bare2 = bench.bare_stream(None).await?;
    let bare = (bare1.secs + bare2.secs) / 2.0;
    // With three nodes to choose from, one copy goes where the id says:
    // the put must cut the file before it knows where to send it.
    let (put, sealed1) = bench.put(&bench.src, &a, 1, false)?;
    let mut row = put.row(
        "put, client to 1 of 3 nodes (encrypted, 2 passes)",
        size,
        &a,
        bare,
    );
    row.rss_kib = [&a, &b, &c].iter().filter_map(|n| n.peak_rss_kib()).max();
    rows.push(row);
    let (gets, first) = bench.get_rounds([&a, &b, &c], [&sealed1, &sealed3], bare)?;
    rows.extend(gets);
    drop((a, b, c));

    print_table(size, [&bare1, &bare2], &bare_file, &rows);
    let rate = |i: usize| rows[i].bytes as f64 / rows[i].secs;
    println!(
        "In this run: put {:.2} of get's rate (encrypted), {:.2} (--public), {:.2} when the id picks the node (2 passes); get from 3 holders {:.2} of get from 1 of the same nodes ({:.2} in the first round, the holders reading chunks they had just written); encrypted {:.2} of --public for put, {:.2} for get.",
        rate(0) / rate(1),
        rate(2) / rate(3),
        rate(5) / rate(1),
        rate(7) / rate(6),
        first,
        rate(0) / rate(2),
        rate(1) / rate(3),
    );
    print_small(&small);
    Ok(())
}

/// A timed client run: the time it reports, the machine's CPU meanwhile.
struct Timed {
    secs: f64,
    cpu: f64,
    rss_kib: Option<u64>,
    out: String,
}

impl Timed {
    /// A put's row: `bytes` stored in all, the peak RSS of `node` (one that
    /// received a copy).
    fn row(&self, what: &str, bytes: u64, node: &NodeProc, baseline: f64) -> Row {
        Row {
            what: what.into(),
            secs: self.secs,
            bytes,
            rss_kib: node.peak_rss_kib(),
            baseline,
            cpu: self.cpu,
        }
    }
}

/// A bare quinn stream's time and the machine's CPU meanwhile.
struct Bare {
    secs: f64,
    cpu: f64,
}

/// Busy CPU seconds of the whole machine so far (user, nice, system, irq,
/// softirq, steal from /proc/stat), to charge a transfer with what it cost
/// on both sides. The bench expects an otherwise idle machine.
fn busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// The payload, and the executable every process of the bench runs.
struct Bench {
    exe: PathBuf,
    work: PathBuf,
    src: PathBuf,
    /// The payload's chunk hashes, to check what a get wrote.
    src_chunks: Vec<quic_peer::proto::Hash>,
    size: u64,
}

impl Bench {
    /// Writes a payload of `size` bytes into `work` and hashes it.
    fn prepare(work: &Path, size: u64) -> Result<Bench> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        eprintln!("bench: writing a {} MiB file", size >> 20);
        let src = work.join("payload.bin");
        write_payload(&src, size)?;
        let src_chunks = chunk_hashes(&src)?;
        Ok(Bench {
            exe,
            work: work.to_path_buf(),
            src,
            src_chunks,
            size,
        })
    }

    /// Times a bare quinn stream of the payload's size, into `sink` if given.
    async fn bare_stream(&self, sink: Option<&Path>) -> Result<Bare> {
        let cpu = busy_secs();
        let secs = bare_quinn(&self.exe, self.size, sink).await?;
        let cpu = busy_secs() - cpu;
        let to = if sink.is_some() { " to a file" } else { "" };
        eprintln!(
            "bench: bare quinn stream{to} {:.0} MB/s",
            mbps(self.size, secs)
        );
        Ok(Bare { secs, cpu })
    }

    /// Puts a directory of [`SMALL_FILES`] small files on `via`, encrypted
    /// and `--public`, and gets each back: the put and get of each.
    fn small_files(&self, via: &NodeProc) -> Result<Vec<(String, Timed)>> {
        let dir = self.work.join("small");
        std::fs::create_dir_all(&dir)?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..SMALL_FILES {
            let data: Vec<u8> = (0..SMALL_FILE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(dir.join(format!("f{i}")), data)?;
        }
        let mut out = Vec::new();
        for (kind, public) in [("encrypted", false), ("--public", true)] {
            let (put, target) = self.put(&dir, via, 1, public)?;
            out.push((format!("put ({kind})"), put));
            let to = self.work.join(format!("small-{kind}"));
            let mut args = vec!["get"];
            args.extend(target.split(' '));
            args.extend(["-o", path_str(&to), "--bootstrap", &via.pinned]);
            let got = timed_client(&self.exe, &args)?;
            check_same_dir(&dir, &to)?;
            std::fs::remove_dir_all(&to)?;
            out.push((format!("get ({kind})"), got));
        }
        Ok(out)
    }

    /// Puts the payload with `replicas` copies, joining through `via`,
    /// encrypted unless `public`; returns the time the client reports, and
    /// what `get` needs: the id of a public file, the id and key (a ticket
    /// with its holders dropped) of an encrypted one.
    fn put(
        &self,
        src: &Path,
        via: &NodeProc,
        replicas: u32,
        public: bool,
    ) -> Result<(Timed, String)> {
        let replicas = replicas.to_string();
        let src = path_str(src);
        let mut args = vec![
            "put",
            src,
            "--bootstrap",
            &via.pinned,
            "--replicas",
            &replicas,
        ];
        if public {
            args.push("--public");
        }
        let timed = timed_client(&self.exe, &args)?;
        let field = |name: &str| {
            timed
                .out
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let target = match field("key: ") {
            Some(key) => format!(
                "{} --key {key}",
                field("id: ").context("put printed no id")?
            ),
            None => field("id: ").context("put printed no id")?,
        };
        Ok((timed, target))
    }

    /// Gets the payload (`target`: an id, and a key if encrypted) into
    /// `out` in the work directory, joining through `via`, checks it and
    /// removes it.
    fn get(
        &self,
        what: &str,
        via: &NodeProc,
        target: &str,
        out: &str,
        baseline: f64,
    ) -> Result<Row> {
        let got = self.get_timed(via, target, out)?;
        Ok(Row {
            what: what.into(),
            secs: got.secs,
            bytes: self.size,
            rss_kib: got.rss_kib,
            baseline,
            cpu: got.cpu,
        })
    }

    /// [`get`](Bench::get)'s run, as the client reported it.
    fn get_timed(&self, via: &NodeProc, target: &str, out: &str) -> Result<Timed> {
        let out = self.work.join(out);
        let mut args = vec!["get"];
        args.extend(target.split(' '));
        args.extend(["-o", path_str(&out), "--bootstrap", &via.pinned]);
        let got = timed_client(&self.exe, &args)?;
        if chunk_hashes(&out)? != self.src_chunks {
            bail!("{} differs from {}", out.display(), self.src.display());
        }
        std::fs::remove_file(&out)?;
        Ok(got)
    }

    /// Gets `one` (held by one of `nodes`) and `three` (held by all three)
    /// in turn, [`GET_ROUNDS`] times, joining through the first node. Before
    /// each get the nodes' files leave the page cache, so that every get
    /// reads its chunks from disk, as a get of a file stored a while ago
    /// does: otherwise a holder would serve what an earlier round read from
    /// memory, and one holder more often than three. The rows give the
    /// median time; the ratio of rates (three to one) of the first round
    /// is returned beside them.
    fn get_rounds(
        &self,
        nodes: [&NodeProc; 3],
        [one, three]: [&str; 2],
        baseline: f64,
    ) -> Result<([Row; 2], f64)> {
        let mut runs: [Vec<(Timed, usize)>; 2] = Default::default();
        for _ in 0..GET_ROUNDS {
            for (k, target) in [one, three].into_iter().enumerate() {
                nodes.iter().for_each(|n| evict(&n.dir));
                let got = self.get_timed(nodes[0], target, "get-round.bin")?;
                let peers = got
                    .out
                    .lines()
                    .find(|l| l.starts_with("[RECEIVED]"))
                    .and_then(|l| l.split(" from ").nth(1))
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                runs[k].push((got, peers));
            }
        }
        let first = runs[0][0].0.secs / runs[1][0].0.secs;
        let [one_runs, three_runs] = runs;
        let one_what = match one_runs.iter().map(|(_, p)| *p).max().unwrap_or(0) {
            1 => format!("get, 1 holder of 3 nodes (encrypted, median of {GET_ROUNDS})"),
            n => format!(
                "get, 1 holder of 3 nodes, {n} once repair copied it (median of {GET_ROUNDS})"
            ),
        };
        let three_what = format!("get, 3 holders at once (encrypted, median of {GET_ROUNDS})");
        Ok((
            [
                self.median_row(one_what, one_runs, baseline),
                self.median_row(three_what, three_runs, baseline),
            ],
            first,
        ))
    }

    /// The row of the median run (by time) of `runs`, with the highest peak
    /// RSS of them all.
    fn median_row(&self, what: String, mut runs: Vec<(Timed, usize)>, baseline: f64) -> Row {
        runs.sort_by(|x, y| x.0.secs.total_cmp(&y.0.secs));
        let rss_kib = runs.iter().filter_map(|(t, _)| t.rss_kib).max();
        let mid = &runs[runs.len() / 2].0;
        Row {
            what,
            secs: mid.secs,
            bytes: self.size,
            rss_kib,
            baseline,
            cpu: mid.cpu,
        }
    }
}

/// Prints the results as a markdown table, and what its times mean.
fn print_table(size: u64, [bare1, bare2]: [&Bare; 2], bare_file: &Bare, rows: &[Row]) {
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    println!();
    println!(
        "| {} MiB on loopback, {} cores | time | MB/s | bare quinn MB/s | ratio | ratio to bare stream written to a file | CPU s per GiB | peak RSS of receiver |",
        size >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| bare quinn stream, 2 processes (run 1 / run 2) | {:.2} s / {:.2} s | {:.0} / {:.0} | | | | {:.2} / {:.2} | |",
        bare1.secs,
        bare2.secs,
        mbps(size, bare1.secs),
        mbps(size, bare2.secs),
        bare1.cpu / gib(size),
        bare2.cpu / gib(size),
    );
    println!(
        "| bare quinn stream written to a file and synced | {:.2} s | {:.0} | | | | {:.2} | |",
        bare_file.secs,
        mbps(size, bare_file.secs),
        bare_file.cpu / gib(size),
    );
    for r in rows {
        let rate = r.bytes as f64 / r.secs / 1e6;
        println!(
            "| {} | {:.2} s | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.what,
            r.secs,
            rate,
            mbps(size, r.baseline),
            rate / (size as f64 / r.baseline / 1e6),
            rate / mbps(size, bare_file.secs),
            r.cpu / gib(r.bytes),
            r.rss_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!();
    println!("Times are the transfer as the client reports it: for get, from looking for the holders to the");
    println!("file verified, synced and renamed; for put, from reading the file to every copy acknowledged");
    println!("(each chunk synced on the node before it acknowledges). CPU: busy seconds of the whole machine");
    println!("(both sides) per GiB moved. RSS: put rows give a receiving node's peak; get rows the get process's.");
}

/// Prints the small-files rows.
fn print_small(rows: &[(String, Timed)]) {
    println!();
    println!("| {SMALL_FILES} files of {SMALL_FILE} bytes, client and 1 node | time | files/s | CPU s | peak RSS of client |");
    println!("|---|---|---|---|---|");
    for (what, t) in rows {
        println!(
            "| {what} | {:.2} s | {:.0} | {:.2} | {} |",
            t.secs,
            SMALL_FILES as f64 / t.secs,
            t.cpu,
            t.rss_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_else(|| "-".into())
        );
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn write_payload(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Drops the cached pages of every file under `dir`, best effort: the
/// clean ones, which is all of a node's chunks (it syncs what it stores).
fn evict(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            evict(&path);
        } else if let Ok(f) = std::fs::File::open(&path) {
            let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
        }
    }
}

/// The hashes of a file's 1 MiB chunks.
fn chunk_hashes(path: &Path) -> Result<Vec<quic_peer::proto::Hash>> {
    let tree = quic_peer::store::chunker::build_tree(path, 1 << 20, &mut |_, _, _| Ok(()))?;
    Ok(tree.chunk_hashes())
}

/// Checks that the directory `b` holds the same files as `a`.
fn check_same_dir(a: &Path, b: &Path) -> Result<()> {
    let mut n = 0;
    for entry in std::fs::read_dir(a)? {
        let name = entry?.file_name();
        if std::fs::read(a.join(&name))? != std::fs::read(b.join(&name))? {
            bail!("{} differs", b.join(&name).display());
        }
        n += 1;
    }
    if std::fs::read_dir(b)?.count() != n {
        bail!("{} has other files than {}", b.display(), a.display());
    }
    Ok(())
}

/// Peak resident set of a process, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs a client command to completion, polling its peak RSS. The time is the
/// transfer time the client reports (`… in X s`), else the process's wall
/// time; and what it printed.
fn timed_client(exe: &Path, args: &[&str]) -> Result<Timed> {
    eprintln!("bench: quic-peer {}", args.join(" "));
    let start = Instant::now();
    let cpu = busy_secs();
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut rss = None;
    loop {
        if let Some(status) = child.try_wait()? {
            let secs = start.elapsed().as_secs_f64();
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                use std::io::Read;
                o.read_to_string(&mut out)?;
            }
            if !status.success() {
                bail!("quic-peer {} failed: {out}", args.join(" "));
            }
            let reported = out
                .lines()
                .find(|l| l.starts_with("[RECEIVED]") || l.starts_with("[PUT] transferred"))
                .and_then(|l| l.split(" in ").nth(1))
                .and_then(|r| r.split(" s").next())
                .and_then(|v| v.trim().parse::<f64>().ok());
            return Ok(Timed {
                secs: reported.unwrap_or(secs),
                cpu: busy_secs() - cpu,
                rss_kib: rss,
                out,
            });
        }
        if let Some(r) = peak_rss_kib(child.id()) {
            rss = Some(r);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A node process.
struct NodeProc {
    child: Child,
    pinned: String,
    dir: PathBuf,
}

impl NodeProc {
    fn start(exe: &Path, dir: &Path, bootstrap: Option<&str>) -> Result<NodeProc> {
        let mut cmd = Command::new(exe);
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir", path_str(dir)])
            .args(["--max-storage", "64G"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(b) = bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("node printed nothing")??;
        let rest = first
            .split("Peer active on ")
            .nth(1)
            .context("no [STARTED] line")?;
        let (addr, id) = rest.split_once(" (id ").context("no id")?;
        let pinned = format!("{}@{addr}", id.trim_end_matches(')'));
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(NodeProc {
            child,
            pinned,
            dir: dir.to_path_buf(),
        })
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.child.id())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "exit");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Times one bare quinn stream of `size` bytes from a server process to this
/// one; with `sink`, the bytes are written to that file and synced, as a
/// download must.
async fn bare_quinn(exe: &Path, size: u64, sink: Option<&Path>) -> Result<f64> {
    let mut server = Command::new(exe)
        .arg("bench-bare-server")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line.trim().parse().context("bare server address")?;
    let result = bare_client(addr, size, sink).await;
    if let Some(p) = sink {
        let _ = std::fs::remove_file(p);
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn endpoint(server: bool) -> Result<quinn::Endpoint> {
    let identity = Identity::generate()?;
    let (client, srv) = quic_peer::crypto::tls::quic_configs(&identity)?;
    let socket = quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse()?, 4 << 20)?;
    let runtime = quinn::default_runtime().context("no runtime")?;
    let server_config = server.then(|| quinn::ServerConfig::with_crypto(srv));
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server_config,
        socket,
        runtime,
    )?;
    ep.set_default_client_config(quinn::ClientConfig::new(client));
    Ok(ep)
}

async fn bare_client(addr: SocketAddr, size: u64, sink: Option<&Path>) -> Result<f64> {
    let ep = endpoint(false)?;
    let conn = ep
        .connect(addr, quic_peer::crypto::tls::UNPINNED_SERVER_NAME)?
        .await?;
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&size.to_be_bytes()).await?;
    send.finish()?;
    let mut got = 0u64;
    let mut file = match sink {
        Some(p) => Some(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p)?,
        )),
        None => None,
    };
    while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
        got += chunk.bytes.len() as u64;
        if let Some(f) = file.as_mut() {
            f.write_all(&chunk.bytes)?;
        }
    }
    if let Some(f) = file {
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    if got != size {
        bail!("bare stream delivered {got} of {size} bytes");
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok(secs)
}

/// The hidden `bench-bare` command: one bare stream of `size_mib` MiB from a
/// server process to this one, bytes discarded; prints its seconds.
pub async fn bare_only(size_mib: u64) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let secs = bare_quinn(&exe, size_mib << 20, None).await?;
    println!("{secs:.3}");
    Ok(())
}

/// The hidden `bench-bare-server` process: prints its address, serves one stream.
pub async fn bare_server() -> Result<()> {
    let ep = endpoint(true)?;
    println!("{}", ep.local_addr()?);
    let conn = ep.accept().await.context("no connection")?.await?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut len = [0u8; 8];
    recv.read_exact(&mut len).await?;
    let mut left = u64::from_be_bytes(len);
    let block = Bytes::from(vec![0x5au8; 1 << 20]);
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let _ = conn.closed().await;
    Ok(())
}
