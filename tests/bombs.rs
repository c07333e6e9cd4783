//! Directory bombs (issue 11, attack 5), served over real sockets by the
//! bomb peer of `tests/common/bomb.rs`: a directory whose entries all name
//! one big file manifest, directories of such directories, a chain deeper
//! than any real tree, names with terminal escapes; and `get` writing where
//! files already are.
//!
//! The getter of the bombs is the real binary in its own process, so its
//! peak memory is its own, measured from `/proc/PID/status` (VmHWM).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bomb::{Bomb, Pieces};
use quic_peer::download::{download, DownloadError, DownloadOptions, NoProgress, Provider};
use quic_peer::proto::manifest::MAX_DIR_ENTRIES;
use quic_peer::proto::tree::{TreeError, MAX_TREE_DEPTH, MAX_TREE_ENTRIES};
use quic_peer::proto::Hash;

const KIB: u64 = 1 << 10;
/// A bomb's getter may use this much memory at its peak (VmHWM, KiB), the
/// big file manifest (16 MB) included; without the limits it grew 17 MiB
/// per directory entry.
const PEAK_BOUND_KIB: u64 = 128 << 10;

/// VmHWM (peak resident memory) of process `pid`, in KiB; 0 once it exited.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a run of the binary did: whether it succeeded, its standard error,
/// its peak resident memory (KiB), and whether it was killed for going past
/// `kill_at_kib`.
struct Run {
    success: bool,
    stderr: String,
    peak_kib: u64,
    killed: bool,
    elapsed: Duration,
}

/// Runs the binary with `args`, sampling its peak memory every 5 ms; kills it
/// past `kill_at_kib` or `timeout`.
fn run_sampled(args: &[&str], kill_at_kib: u64, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quic-peer"))
        .args(args)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let (mut peak, mut killed) = (0, false);
    let status = loop {
        peak = peak.max(peak_kib(pid));
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if peak > kill_at_kib || start.elapsed() > timeout {
            killed = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        success: status.success(),
        stderr: reader.join().expect("stderr reader"),
        peak_kib: peak,
        killed,
        elapsed: start.elapsed(),
    }
}

/// Files and directories under `dir` (0 if it does not exist).
fn count_entries(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| 1 + count_entries(&e.path()))
        .sum()
}

/// Serves `pieces` from a bomb and runs `quic-peer get TICKET -o OUT` on
/// `root` as its own process; prints what it cost and returns the run, the
/// bomb and the output path (inside `work`).
async fn get_bomb(
    what: &str,
    pieces: Pieces,
    root: Hash,
    work: &Path,
) -> (Run, Bomb, std::path::PathBuf) {
    let bomb = Bomb::start(pieces).expect("the bomb starts");
    let ticket = bomb.ticket(root);
    let out = work.join("out");
    let out_arg = out.display().to_string();
    let run = tokio::task::spawn_blocking(move || {
        run_sampled(
            &["get", &ticket, "-o", &out_arg, "--retry-for", "0"],
            4 * PEAK_BOUND_KIB,
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap();
    println!(
        "{what}: getter peak RSS {} MiB{}, {} manifest requests, {} entries written, {:.2?}; \
         error: {}",
        run.peak_kib / KIB,
        if run.killed { " (killed)" } else { "" },
        bomb.manifests_asked(),
        count_entries(&out),
        run.elapsed,
        run.stderr.trim(),
    );
    assert!(
        !run.killed,
        "the getter went past {} MiB",
        4 * PEAK_BOUND_KIB / KIB
    );
    assert!(!run.success, "the bomb must be refused");
    assert!(
        run.peak_kib < PEAK_BOUND_KIB,
        "peak RSS {} MiB, over {} MiB",
        run.peak_kib / KIB,
        PEAK_BOUND_KIB / KIB
    );
    assert_eq!(count_entries(&out), 0, "nothing written");
    (run, bomb, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_bomb_is_refused_by_the_real_binary_in_bounded_memory() {
    // One file manifest near the 16 MiB cap (half a million chunk hashes, a
    // 488 MiB file of one repeated chunk), named by every entry of a
    // directory as large as a manifest may be: 100,000 entries, 51 TB.
    let mut pieces = Pieces::default();
    let file = pieces.big_file("f", 500_000);
    let root = pieces.wide("bomb", MAX_DIR_ENTRIES, file);
    let work = tempfile::tempdir().unwrap();
    let what = format!("{MAX_DIR_ENTRIES} entries naming one 16 MB file manifest");
    let (run, bomb, _) = get_bomb(&what, pieces, root, work.path()).await;
    assert_eq!(bomb.asked(&file), 1, "the shared manifest is fetched once");
    assert_eq!(bomb.manifests_asked(), 2);
    // Within the entry limit; the copies would need 51 TB of disk.
    assert!(
        run.stderr
            .contains("the download needs 51200000000000 bytes"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_bomb_is_refused_for_its_entries_by_the_real_binary() {
    // 1000 entries naming a directory of 1000 entries naming the big file:
    // three manifests, 1,001,001 paths.
    let mut pieces = Pieces::default();
    let file = pieces.big_file("f", 500_000);
    let root = pieces.nested(2, 1000, file);
    let work = tempfile::tempdir().unwrap();
    let what = "1000 x 1000 entries naming one 16 MB file manifest";
    let (run, bomb, _) = get_bomb(what, pieces, root, work.path()).await;
    assert_eq!(bomb.manifests_asked(), 3, "each manifest fetched once");
    let expected = format!("refusing the tree {root}: it has more than {MAX_TREE_ENTRIES} files");
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

/// A provider connected to `bomb`.
async fn provider(bomb: &Bomb) -> Provider {
    Provider {
        id: bomb.id,
        conn: bomb.connect().await.expect("connect to the bomb"),
    }
}

/// Downloads `root` from `bomb` to `out` in this process.
async fn get_from(
    bomb: &Bomb,
    root: Hash,
    out: &Path,
    force: bool,
) -> Result<quic_peer::download::DownloadStats, DownloadError> {
    let opts = DownloadOptions {
        force,
        ..DownloadOptions::default()
    };
    download(
        vec![provider(bomb).await],
        root,
        out,
        &opts,
        Arc::new(NoProgress),
    )
    .await
}

#[tokio::test]
async fn a_chain_deeper_than_the_limit_is_refused_and_one_at_it_is_written() {
    let data = common::random_bytes(3000, 5);
    let mut pieces = Pieces::default();
    let file = pieces.file("leaf", &data, 1024);
    let at_limit = pieces.chain(MAX_TREE_DEPTH, file);
    let over = pieces.chain(MAX_TREE_DEPTH + 1, file);
    let bomb = Bomb::start(pieces).unwrap();
    let work = tempfile::tempdir().unwrap();

    let out = work.path().join("over");
    let err = get_from(&bomb, over, &out, false).await.unwrap_err();
    println!("a chain of {} directories: {err}", MAX_TREE_DEPTH + 1);
    assert!(
        matches!(
            err,
            DownloadError::Tree {
                reason: TreeError::TooDeep {
                    max: MAX_TREE_DEPTH
                },
                ..
            }
        ),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");

    let out = work.path().join("at");
    get_from(&bomb, at_limit, &out, false)
        .await
        .expect("256 levels are fine");
    let leaf = (0..MAX_TREE_DEPTH).fold(out, |p, _| p.join("d"));
    assert_eq!(std::fs::read(leaf).unwrap(), data);
    // Each level is a distinct manifest, fetched once, for both downloads.
    assert_eq!(
        bomb.asked(&file),
        1,
        "over the limit: never reached the file"
    );
    assert_eq!(
        bomb.manifests_asked(),
        (MAX_TREE_DEPTH + 1) as u64 + MAX_TREE_DEPTH as u64 + 1
    );
}

#[tokio::test]
async fn a_manifest_named_twice_is_fetched_once_and_written_as_a_copy() {
    // root/{a,b} are one directory manifest holding x; root/c is x again.
    let data = common::random_bytes(5000, 9);
    let mut pieces = Pieces::default();
    let x = pieces.file("x", &data, 1024);
    let sub = pieces.raw_dir("sub", &[("x".into(), x)]);
    let root = pieces.raw_dir(
        "root",
        &[("a".into(), sub), ("b".into(), sub), ("x".into(), x)],
    );
    let bomb = Bomb::start(pieces).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    let stats = get_from(&bomb, root, &out, false).await.expect("get");
    for p in ["a/x", "b/x", "x"] {
        assert_eq!(std::fs::read(out.join(p)).unwrap(), data, "{p}");
    }
    println!(
        "a tree naming one file manifest three times: {} manifest requests, {} chunks fetched, {} copies",
        bomb.manifests_asked(),
        stats.chunks_fetched,
        stats.copies
    );
    assert_eq!(
        (bomb.asked(&root), bomb.asked(&sub), bomb.asked(&x)),
        (1, 1, 1)
    );
    assert_eq!((stats.files, stats.copies, stats.chunks_fetched), (3, 2, 5));
    assert_eq!(stats.bytes, 3 * data.len() as u64);
}

#[tokio::test]
async fn names_with_control_characters_are_refused_and_nothing_is_written() {
    let mut pieces = Pieces::default();
    let x = pieces.file("x", b"payload", 1024);
    let names = [
        "\x1b]0;owned\x07title",
        "\x1b[2J\x1b[Hclear",
        "csi\u{9b}31m",
        "del\x7f",
        "two\nlines",
    ];
    let roots: Vec<Hash> = names
        .iter()
        .map(|n| pieces.raw_dir("d", &[("ok".into(), x), (n.to_string(), x)]))
        .collect();
    let bomb = Bomb::start(pieces).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (name, root) in names.iter().zip(roots) {
        let out = work.path().join("out");
        let err = get_from(&bomb, root, &out, false)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a control character"), "{name:?}: {err}");
        assert!(
            !err.chars().any(char::is_control),
            "printed escaped: {err:?}"
        );
        assert!(!out.exists(), "{name:?}: nothing written");
        if name.starts_with('\x1b') {
            println!("a directory entry named {name:?}: {err}");
        }
    }
}

#[tokio::test]
async fn a_get_writes_nothing_over_a_file_in_the_way_unless_forced() {
    let (one, two) = (common::random_bytes(2000, 1), common::random_bytes(3000, 2));
    let mut pieces = Pieces::default();
    let (a, b) = (pieces.file("a", &one, 1024), pieces.file("b", &two, 1024));
    let root = pieces.raw_dir("root", &[("a".into(), a), ("b".into(), b)]);
    let bomb = Bomb::start(pieces).unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("b"), b"mine").unwrap();

    let err = get_from(&bomb, root, &out, false).await.unwrap_err();
    println!("a file in the way: {err}");
    assert!(
        matches!(&err, DownloadError::Exists(p) if *p == out.join("b")),
        "{err}"
    );
    assert!(
        !out.join("a").exists(),
        "refused before anything is written"
    );
    assert_eq!(std::fs::read(out.join("b")).unwrap(), b"mine");

    let stats = get_from(&bomb, root, &out, true).await.expect("forced");
    assert_eq!(std::fs::read(out.join("a")).unwrap(), one);
    assert_eq!(std::fs::read(out.join("b")).unwrap(), two);
    // Once there, the files are the download's: kept, not refused.
    let again = get_from(&bomb, root, &out, false).await.expect("again");
    assert_eq!(again.chunks_fetched, 0);
    assert_eq!(again.chunks_resumed, stats.chunks_fetched);
}
