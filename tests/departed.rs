//! A holder that dies costs a get nothing: real `quic-peer` processes, one
//! holder killed with SIGKILL, and gets timed (whole processes) before, right
//! after, and once the network noticed the death.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{binary, random_bytes, Proc};

const IDLE_TIMEOUT: &str = "3";

fn start_node(bootstrap: Option<&str>, dir: &std::path::Path) -> (Proc, String) {
    let (mut proc, addr, id) = common::spawn_node(dir, IDLE_TIMEOUT, bootstrap, &["--no-http"]);
    proc.expect_line("[WAITING]", Duration::from_secs(5));
    (proc, format!("{id}@{addr}"))
}

/// Runs `quic-peer get` to the end; its wall time and stdout.
fn timed_get(id: &str, out: &std::path::Path, boot: &str) -> (Duration, String) {
    let _ = std::fs::remove_file(out);
    let started = Instant::now();
    let output = binary()
        .args([
            "get",
            id,
            "-o",
            &out.display().to_string(),
            "--bootstrap",
            boot,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("get runs");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "get failed: {stdout}");
    (took, stdout)
}

#[test]
fn a_killed_holder_does_not_slow_gets_down() {
    let dirs: Vec<_> = (0..5)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (first, boot) = start_node(None, dirs[0].path());
    let mut nodes = vec![first];
    for d in &dirs[1..] {
        nodes.push(start_node(Some(&boot), d.path()).0);
    }
    // Every node sees every other.
    for n in &mut nodes {
        for _ in 0..4 {
            n.expect_line("[JOIN]", Duration::from_secs(20));
        }
    }

    let work = tempfile::tempdir().expect("tempdir");
    // Large enough that the transfer, not the process start, is most of a
    // get: with 64 MiB a get took 0.27 s, and 0.13 s of fixed costs made
    // the ratio below a coin toss.
    let data = random_bytes(256 << 20, 5);
    let src = work.path().join("big.bin");
    std::fs::write(&src, &data).expect("write");
    let put = binary()
        .args([
            "put",
            &src.display().to_string(),
            "--public",
            "--bootstrap",
            &boot,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("put runs");
    let stdout = String::from_utf8_lossy(&put.stdout).to_string();
    assert!(put.status.success(), "{stdout}");
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .trim()
        .to_string();
    // A holder other than the bootstrap node, by its port in the put's report.
    let holder_port = stdout
        .lines()
        .filter(|l| l.starts_with("[SENT] copy held by"))
        .filter_map(|l| {
            l.rsplit_once(':')
                .map(|(_, p)| p.trim_end_matches(')').to_string())
        })
        .find(|p| !boot.ends_with(&format!(":{p}")))
        .expect("a holder other than the bootstrap node");

    let out = work.path().join("out.bin");
    let (before, _) = timed_get(&id, &out, &boot);
    let (again, _) = timed_get(&id, &out, &boot);
    let base = before.min(again);

    let victim = nodes
        .iter_mut()
        .position(|p| {
            p.seen
                .iter()
                .any(|l| l.starts_with("[STARTED]") && l.contains(&format!(":{holder_port} ")))
        })
        .expect("the holder's process");
    let mut dead = nodes.remove(victim);
    dead.signal("KILL");
    let _ = dead.wait(Duration::from_secs(5));

    let (right_after, said) = timed_get(&id, &out, &boot);
    assert!(std::fs::read(&out).expect("read") == data);
    // The others notice within the idle timeout, then a get no longer
    // dials the dead holder at all.
    nodes[0].expect_line("timed out", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    let (later, _) = timed_get(&id, &out, &boot);
    assert!(std::fs::read(&out).expect("read") == data);

    println!(
        "get of 256 MiB: before the kill {:.2} s, right after {:.2} s, once noticed {:.2} s",
        base.as_secs_f64(),
        right_after.as_secs_f64(),
        later.as_secs_f64()
    );
    println!("right after: {}", said.lines().last().unwrap_or_default());
    let limit = base.mul_f64(1.5);
    assert!(
        right_after <= limit,
        "right after the kill: {right_after:?} > {limit:?}"
    );
    assert!(later <= limit, "once noticed: {later:?} > {limit:?}");
}
