//! Runs the secure transfer demo (`examples/secure_transfer.rs`) as a process
//! and checks that every step held.
//!
//! `cargo test` builds the example beside this test; a run filtered to this
//! test (`cargo test --test secure_transfer`) builds it here if it is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Time allowed for the demo to run (it takes a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for building it (cargo may wait for another build's lock).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
const STEPS: usize = 5;

/// `target/<profile>`, from this test's own path `target/<profile>/deps/NAME-HASH`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// Output of a finished process.
struct Finished {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to the end, killing it after `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
            panic!("{what} did not finish within {timeout:?}; killed\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Finished {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The example binary in this test's profile. A plain `cargo test` builds
/// every example alongside the tests (with the same features, so nothing is
/// rebuilt); only when it is missing (a run filtered to this test) is it built
/// here. A `cargo build` would unify features without the dev-dependencies and
/// recompile the library, and the next `cargo test` would recompile it back.
fn build_example() -> PathBuf {
    let profile_dir = profile_dir();
    let exe = profile_dir.join("examples/secure_transfer");
    if exe.is_file() {
        return exe;
    }
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile directory name");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "secure_transfer", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let built = run(cmd, BUILD_TIMEOUT);
    assert!(
        built.status.success(),
        "building the example failed ({}):\n{}",
        built.status,
        built.stderr
    );
    let exe = profile_dir.join("examples/secure_transfer");
    assert!(exe.is_file(), "no example binary at {}", exe.display());
    exe
}

#[test]
fn secure_transfer_demo_holds_every_step() {
    let exe = build_example();
    let mut cmd = Command::new(&exe);
    cmd.env("RUST_LOG", "error");
    let started = Instant::now();
    let done = run(cmd, RUN_TIMEOUT);
    println!(
        "--- {} ({}, {:.1} s)\n{}",
        exe.display(),
        done.status,
        started.elapsed().as_secs_f64(),
        done.stdout
    );
    if !done.stderr.is_empty() {
        println!("--- stderr\n{}", done.stderr);
    }
    assert!(done.status.success(), "the demo failed: {}", done.status);
    let lines: Vec<&str> = done.stdout.lines().collect();
    for n in 1..=STEPS {
        let ok = format!("step {n} ... OK");
        assert!(
            lines.iter().any(|l| l.trim() == ok),
            "no line {ok:?} in the output"
        );
    }
    assert!(
        !done.stdout.contains("FAILED"),
        "a step failed though the exit status was success"
    );
    assert!(
        done.stdout.contains(&format!("all {STEPS} steps held")),
        "no summary line"
    );
    // The demo prints every node's id.
    let ids = lines
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|w| w.parse::<quic_peer::NodeId>().is_ok())
        })
        .count();
    assert!(ids >= 6, "expected six node ids in the output, found {ids}");
}
