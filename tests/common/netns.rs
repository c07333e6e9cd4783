//! Network namespaces for tests that run real `quic-peer` processes on
//! "hosts" of their own: made with iproute2, deleted on drop (which deletes
//! their veths too), also when the test panics. And the node processes in
//! them, driven through their standard input and output.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quic_peer::NodeId;

/// The effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A system binary: on `PATH`, or in the sbin directories that a non-login
/// root shell may not have on it.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Says why a test that needs namespaces cannot run here and passes, or
/// fails if `require_var` is set (CI sets it where they must work).
pub fn skip(test: &str, require_var: &str, why: &str) {
    assert!(
        std::env::var_os(require_var).is_none(),
        "{require_var} is set, but: {why}"
    );
    eprintln!("skipping {test} test: {why}");
}

/// Namespaces made by one test, named after its process so that parallel
/// runs, and leftovers of killed ones, stay apart.
pub struct Namespaces {
    ip: PathBuf,
    tag: String,
    /// Made so far, in order.
    names: Vec<String>,
}

impl Namespaces {
    /// Checks that namespaces can be made here: root and iproute2.
    pub fn new(prefix: &str) -> Result<Namespaces, String> {
        match effective_uid() {
            Some(0) => {}
            Some(uid) => return Err(format!("not running as root (uid {uid})")),
            None => return Err("cannot tell whether this runs as root".into()),
        }
        let ip = find_tool("ip").ok_or("iproute2 `ip` not found")?;
        Ok(Namespaces {
            ip,
            tag: format!("{prefix}{}", std::process::id()),
            names: Vec::new(),
        })
    }

    /// The `ip` binary.
    pub fn ip_bin(&self) -> &Path {
        &self.ip
    }

    /// Adds namespace `name` (its full name is returned) and brings its `lo`
    /// up.
    pub fn add(&mut self, name: &str) -> Result<String, String> {
        let ns = format!("{}-{name}", self.tag);
        self.ip(&["netns", "add", &ns])?;
        self.names.push(ns.clone());
        self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip ARGS`; the error says what failed and what `ip` said.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        run(Command::new(&self.ip).args(args))
    }

    /// Runs `program ARGS` inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &Path, args: &[&str]) -> Result<(), String> {
        run(Command::new(&self.ip)
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args))
    }

    /// Runs `program ARGS` inside namespace `ns` and returns its output.
    pub fn output(&self, ns: &str, program: &Path, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.ip)
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// Starts `program ARGS` inside namespace `ns` as a daemon, its output
    /// to `log`; it is killed when the returned guard drops.
    pub fn daemon(&self, ns: &str, program: &Path, args: &[&str], log: &Path) -> Daemon {
        let log = File::create(log).expect("daemon log");
        let child = Command::new(&self.ip)
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        Daemon(child)
    }

    /// A veth pair: `a_name` in `a`, `b_name` in `b`, both up, each with
    /// its address (CIDR) if given.
    pub fn link(
        &self,
        (a, a_name, a_cidr): (&str, &str, Option<&str>),
        (b, b_name, b_cidr): (&str, &str, Option<&str>),
    ) -> Result<(), String> {
        self.ip(&[
            "-n", a, "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b,
        ])?;
        for (ns, name, cidr) in [(a, a_name, a_cidr), (b, b_name, b_cidr)] {
            if let Some(cidr) = cidr {
                self.ip(&["-n", ns, "addr", "add", cidr, "dev", name])?;
            }
            self.ip(&["-n", ns, "link", "set", name, "up"])?;
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            if let Err(e) = self.ip(&["netns", "del", ns]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}

/// A process running in a namespace, killed on drop (before the namespace
/// goes: hold it in a field declared before the [`Namespaces`]).
pub struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd`; the error says what failed and what it said.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One `quic-peer` node running in a namespace; its stdout lines arrive on a
/// channel, its log goes to a file quoted when something fails.
pub struct Host {
    /// What the test calls it.
    pub name: String,
    /// Its id, from its `[STARTED]` line.
    pub id: NodeId,
    proc: super::Proc,
    log: PathBuf,
}

impl Host {
    /// Starts `quic-peer ARGS` in namespace `ns` (`ip netns exec` execs the
    /// binary, so the child is the node itself), logging to `log`, and
    /// waits for its `[STARTED]` line.
    pub fn start(ns: &Namespaces, net_ns: &str, name: &str, args: &[&str], log: &Path) -> Host {
        let mut cmd = Command::new(ns.ip_bin());
        cmd.args(["netns", "exec", net_ns, env!("CARGO_BIN_EXE_quic-peer")])
            .args(args)
            .env("RUST_LOG", "warn,quic_peer=info")
            .stderr(File::create(log).expect("log file"));
        let mut host = Host {
            name: name.to_string(),
            id: NodeId::from_bytes([0; 32]),
            proc: super::Proc::from_command(cmd),
            log: log.to_path_buf(),
        };
        let started = host.expect_line("[STARTED] Peer active on ", T);
        host.id = super::parse_started(&started).1;
        host
    }

    /// Waits for a stdout line for which `pred` holds; returns it.
    pub fn expect(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.proc.lines.recv_timeout(left) {
                Ok(line) => {
                    self.proc.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    panic!(
                        "{}: no {what} within {timeout:?}\n--- stdout (last 40 lines) ---\n{}\n--- log (last 40 lines) ---\n{}",
                        self.name,
                        tail(&self.proc.seen.join("\n"), 40),
                        tail(&log, 40)
                    )
                }
            }
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect(&format!("line containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Forgets the lines printed so far, so that later waits see only new ones.
    pub fn drain(&mut self) {
        while let Ok(line) = self.proc.lines.try_recv() {
            self.proc.seen.push(line);
        }
    }

    /// Types a command on the node's standard input.
    pub fn send(&mut self, line: &str) {
        let stdin = self.proc.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    /// The address the node gives others for itself (the `id` command).
    pub fn advertised(&mut self) -> String {
        self.send("id");
        let line = self.expect_line(&format!("{}@", self.id), T);
        let (_, addr) = line.trim().split_once('@').expect("ID@ADDR");
        addr.to_string()
    }

    /// The rows of the `peers` command about connected full nodes.
    pub fn peer_rows(&mut self) -> Vec<String> {
        self.send("peers");
        let summary = self.expect_line(" connected, ", T);
        let listed: usize = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|n| n.parse::<usize>().expect("count"))
            .sum();
        (0..listed)
            .map(|_| self.expect("peer table row", T, |l| l.starts_with("  ")))
            .filter(|line| line.contains("connected (") && !line.contains(" client "))
            .collect()
    }

    /// The `peers` command: connected full nodes, each with the addresses this
    /// node has for it.
    pub fn peers(&mut self) -> Vec<(NodeId, Vec<String>)> {
        let mut peers = Vec::new();
        for line in self.peer_rows() {
            let mut words = line.split_whitespace();
            let id = words.next().expect("id").parse().expect("node id");
            // The row ends with the addresses, comma-separated, if it has any.
            let addrs = match words.last() {
                Some("ago") | None => Vec::new(),
                Some(list) => list.split(',').map(str::to_string).collect(),
            };
            peers.push((id, addrs));
        }
        peers
    }

    /// Whether `files` lists `id` as held in full.
    pub fn holds(&mut self, id: &str) -> bool {
        self.send("files");
        let summary = self.expect_line(" files, ", T);
        let count: usize = summary
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("file count");
        let rows: Vec<String> = (0..count)
            .map(|_| self.expect("files row", T, |l| l.starts_with("  ")))
            .collect();
        rows.iter()
            .any(|row| row.contains(id) && !row.contains("(incomplete)"))
    }
}

impl Host {
    /// Waits for the node to exit (after `exit` was typed), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.proc.wait(timeout)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// Time allowed for any one thing a host is asked.
pub const T: Duration = Duration::from_secs(20);

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
