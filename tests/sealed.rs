//! End-to-end encryption on real nodes: what storage nodes hold, and what a
//! getter needs.
//!
//! - A file put through one node and copied to three others leaves no copy
//!   of a marker string (nor of any 16-byte piece of it) and no file name in
//!   any node's data directory, the owner's included; `get` with the ticket
//!   returns the exact bytes, and resumes from a `.part`.
//! - A directory tree round-trips with its names, empty files and empty
//!   directories; a padded file is stored larger and read back at its size.
//! - The id alone, a wrong key, and a chunk that hashes right but does not
//!   open each fail clearly, with nothing written under the final name.
//! - Nodes that never had the key repair an encrypted file after holders
//!   die; the file is then read from the new copies.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_same_tree, random_bytes, shutdown, store_network, wait_until, StoreNode};
use quic_peer::download::{part_path, DownloadError, DownloadOptions, NoProgress};
use quic_peer::proto::manifest::{Manifest, SealedManifest};
use quic_peer::proto::sealed::{self, Entry, EntryKind, FileKey, Meta, Sealer};
use quic_peer::proto::ticket::{Target, Ticket};
use quic_peer::proto::Hash;
use quic_peer::replication::{PutOptions, PutReport};
use quic_peer::store::FileRecord;
use quic_peer::Node;

const MIB: usize = 1 << 20;
const MARKER: &[u8] = b"QUIC-PEER-PLAINTEXT-MARKER-7f3a9c";
const NAME: &str = "secret-plans-for-2027.txt";

async fn put_sealed(node: &Node, path: &Path, replicas: usize) -> PutReport {
    let opts = PutOptions {
        replicas,
        ..PutOptions::default()
    };
    node.put(path, &opts, Arc::new(NoProgress))
        .await
        .expect("put")
}

/// The file's id and key, with no holders: the DHT finds them.
fn read_cap(report: &PutReport) -> Target {
    Target::Ticket(Ticket {
        id: report.id,
        holders: Vec::new(),
        key: report.key,
    })
}

async fn get(node: &Node, target: Target, out: &Path) -> Result<usize, DownloadError> {
    let opts = DownloadOptions::default();
    node.get(&target, out, &opts, Arc::new(NoProgress))
        .await
        .map(|s| s.chunks_resumed)
}

/// Every regular file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Files and directories below `dir`.
fn entries_below(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            1 + if e.path().is_dir() {
                entries_below(&e.path())
            } else {
                0
            }
        })
        .sum()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_nodes_hold_no_plaintext_and_no_name() {
    let net = store_network(5).await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join(NAME);
    let mut data = random_bytes(3 * MIB + 4321, 1);
    for at in (0..data.len() - MARKER.len()).step_by(65_537) {
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    std::fs::write(&path, &data).unwrap();
    let report = put_sealed(&net[0].node, &path, 3).await;
    assert_eq!(report.remote_copies, 3);
    assert!(report.ticket.to_string().starts_with("qpt2"));

    // Every node that holds it, the owner included: no piece of the marker,
    // no name, anywhere in its data directory.
    let holders: Vec<&StoreNode> = net
        .iter()
        .filter(|n| n.node.store().unwrap().holds(&report.id).unwrap())
        .collect();
    assert_eq!(holders.len(), 4);
    let mut scanned = 0;
    for n in &holders {
        for (file, bytes) in all_files(n.dir.path()) {
            scanned += bytes.len();
            for piece in MARKER.windows(16) {
                assert!(
                    !contains(&bytes, piece),
                    "{} holds plaintext",
                    file.display()
                );
            }
            for name in [NAME.as_bytes(), b"secret-plans"] {
                assert!(!contains(&bytes, name), "{} holds the name", file.display());
            }
        }
    }
    println!(
        "searched {:.1} MiB in the data directories of {} holders: no plaintext, no name",
        scanned as f64 / MIB as f64,
        holders.len()
    );

    // The node without a copy reads it with the ticket, exactly.
    let reader = net
        .iter()
        .find(|n| !n.node.store().unwrap().holds(&report.id).unwrap())
        .unwrap();
    let out = src.path().join("back.txt");
    get(&reader.node, report.ticket.clone().into(), &out)
        .await
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == data);

    // A get cut short resumes: the .part's good chunks are kept.
    let again = src.path().join("again.txt");
    std::fs::write(part_path(&again), &data[..2 * MIB + 100]).unwrap();
    let resumed = get(&reader.node, read_cap(&report), &again).await.unwrap();
    assert_eq!(resumed, 2, "two whole chunks were in the .part");
    assert!(std::fs::read(&again).unwrap() == data);

    // The id alone: the key is missing, and nothing is written.
    let by_id = src.path().join("by-id.txt");
    let e = get(&reader.node, Target::Id(report.id), &by_id).await;
    assert!(
        matches!(e, Err(DownloadError::NeedKey(id)) if id == report.id),
        "{e:?}"
    );
    // A wrong key: refused before anything is written.
    let wrong = Target::Ticket(Ticket {
        key: Some(FileKey::from_bytes([1; 32])),
        ..report.ticket.clone()
    });
    let e = get(&reader.node, wrong, &by_id).await;
    assert!(
        matches!(&e, Err(DownloadError::Sealed { .. }))
            && e.as_ref()
                .unwrap_err()
                .to_string()
                .contains("the key does not open this file"),
        "{e:?}"
    );
    assert!(!by_id.exists() && !part_path(&by_id).exists());
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_round_trips_with_names_empty_files_and_directories() {
    let net = store_network(3).await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("album");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(root.join("a.txt"), b"first file").unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    std::fs::write(root.join("sub/b.bin"), random_bytes(2 * MIB + 17, 3)).unwrap();
    std::fs::write(root.join("sub/deeper/c.txt"), b"deep").unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("sub/small-{i}.txt")), format!("file {i}")).unwrap();
    }
    let report = put_sealed(&net[0].node, &root, 1).await;
    let out = src.path().join("copy");
    get(&net[2].node, read_cap(&report), &out).await.unwrap();
    assert_same_tree(&out, &root);
    assert_eq!(entries_below(&out), 57);
    assert!(
        !out.with_file_name("copy.qp-tree").exists(),
        "the stream is removed"
    );
    // Again into the same place: every file is there, so it is refused.
    let e = get(&net[2].node, read_cap(&report), &out).await;
    assert!(matches!(e, Err(DownloadError::Exists(_))), "{e:?}");

    // A padded file: stored larger, read back at its own size.
    let path = src.path().join("padded.bin");
    let data = random_bytes(MIB + 123_457, 8);
    std::fs::write(&path, &data).unwrap();
    let opts = PutOptions {
        replicas: 1,
        pad: true,
        ..PutOptions::default()
    };
    let report = net[0]
        .node
        .put(&path, &opts, Arc::new(NoProgress))
        .await
        .expect("put");
    let sealed_len = data.len() as u64 + 2 * sealed::TAG_LEN as u64;
    assert_eq!(
        report.size,
        sealed::padme(data.len() as u64) + 2 * sealed::TAG_LEN as u64
    );
    assert!(report.size > sealed_len, "padding added");
    let back = src.path().join("padded.back");
    get(&net[2].node, read_cap(&report), &back).await.unwrap();
    assert!(std::fs::read(&back).unwrap() == data, "the padding is cut");
    shutdown(net).await;
}

/// A sealed file whose chunk 1 was sealed under another key: every chunk
/// hashes as its manifest says, but chunk 1 does not open with the file's
/// key. Stored on `node` as held.
fn tampered_file(node: &Node, key: &FileKey) -> Hash {
    let sealer = Sealer::new(key);
    let other = Sealer::new(&FileKey::from_bytes([2; 32]));
    let data = random_bytes(3 * 1024, 9);
    let meta = Meta {
        chunk_size: 1024,
        stream_len: data.len() as u64,
        entries: vec![Entry {
            parent: None,
            name: "t.bin".into(),
            kind: EntryKind::File(data.len() as u64),
        }],
    };
    let store = node.store().unwrap();
    let mut hashes = Vec::new();
    for (i, c) in data.chunks(1024).enumerate() {
        let mut c = c.to_vec();
        let s = if i == 1 { &other } else { &sealer };
        s.seal_chunk(i as u64, &mut c);
        let h = Hash::of(&c);
        store.put_chunk(&h, &c).unwrap();
        hashes.push(h);
    }
    let m = Manifest::Sealed(SealedManifest {
        version: sealed::VERSION,
        commitment: sealer.commitment(),
        meta: sealer.seal_meta(&meta, false),
        body: sealed::body(1024, meta.stream_len, hashes),
    });
    let (id, _) = store.put_manifest(&m.encode()).unwrap();
    let record = FileRecord {
        name: sealed::BODY_NAME.into(),
        size: meta.stream_len,
        is_dir: false,
    };
    assert!(store.add_file(&id, &record).unwrap());
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_open_fails_the_get_with_nothing_written() {
    let net = store_network(2).await;
    let key = FileKey::random();
    let id = tampered_file(&net[0].node, &key);
    net[0].node.dht().announce(id).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("t.bin");
    let target = Target::Ticket(Ticket {
        id,
        holders: Vec::new(),
        key: Some(key),
    });
    let started = std::time::Instant::now();
    let e = get(&net[1].node, target, &out).await;
    assert!(
        matches!(&e, Err(DownloadError::Unopenable { chunk: 1, .. })),
        "{e:?}"
    );
    let text = e.unwrap_err().to_string();
    assert!(
        text.contains("chunk 1: the key does not open this chunk"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not retried: no peer has a better copy"
    );
    assert!(!out.exists(), "nothing under the final name");
    shutdown(net).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_key_repair_an_encrypted_file() {
    let net = store_network(6).await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("kept.bin");
    let data = random_bytes(2 * MIB + 99, 5);
    std::fs::write(&path, &data).unwrap();
    let report = put_sealed(&net[0].node, &path, 2).await;
    assert_eq!(report.remote_copies, 2);
    let holds = |n: &StoreNode| n.node.store().unwrap().holds(&report.id).unwrap_or(false);
    let first: Vec<usize> = (0..net.len()).filter(|&i| holds(&net[i])).collect();
    assert_eq!(first.len(), 3);
    // Two of the three copies go: the owner's and one other.
    let gone = [first[0], first[1]];
    for &i in &gone {
        net[i].node.shutdown().await;
    }
    let alive: Vec<usize> = (0..net.len()).filter(|i| !gone.contains(i)).collect();
    wait_until(
        "repair restores the copies",
        Duration::from_secs(60),
        || alive.iter().filter(|&&i| holds(&net[i])).count() >= 3,
    )
    .await;
    // Read from the new copies, with the key the repairers never had.
    let reader = alive
        .iter()
        .find(|&&i| !holds(&net[i]))
        .copied()
        .unwrap_or(alive[0]);
    let out = src.path().join("back.bin");
    get(&net[reader].node, read_cap(&report), &out)
        .await
        .unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    for &i in &alive {
        net[i].node.shutdown().await;
    }
}
