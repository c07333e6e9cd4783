//! The secure transfer demo: what pinned ids, BLAKE3 chunk hashes and QUIC's
//! encryption buy, shown on real nodes on loopback, one claim per step.
//!
//! 1. A transfer to a pinned id succeeds and verifies: B dials `A_ID@addr`,
//!    downloads a file from A, and checks it against the original and against
//!    the manifest whose BLAKE3 hash is the file id.
//! 2. An impostor with another key at the pinned address is refused: a
//!    newcomer D dials `A_ID@(the impostor's address)`; the handshake fails
//!    with a pin mismatch and no connection to the impostor exists afterwards.
//! 3. A peer that serves tampered chunks is caught: T, a peer with its own key
//!    that holds the file and serves every chunk with its bytes flipped (a real
//!    node will not: its store hashes each chunk it reads), and A both serve B
//!    at once; the hash check rejects T's bytes and the file arrives intact.
//! 4. The wire is encrypted: C downloads a file full of a marker string from A
//!    through a UDP relay that keeps every datagram; the marker (or any 16-byte
//!    piece of it) is nowhere in them, not even across datagram boundaries.
//! 5. The nodes that store a file cannot read it: B puts a file full of the
//!    marker, named `secret-report.txt`, encrypted on B (the default); every
//!    node that holds a copy has its data directory searched byte by byte
//!    for the marker, its 16-byte pieces and the name, and none is there; C
//!    reads the file with the ticket, and the id alone does not open it.
//!
//! Each step prints `step N ... OK` or `step N ... FAILED: why`; the program
//! exits non-zero if any step fails.
//!
//! `cargo run --release --example secure_transfer`

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/liar.rs"]
mod liar;

use anyhow::{bail, ensure, Context, Result};
use quic_peer::crypto::tls;
use quic_peer::download::{download, DownloadOptions, DownloadStats, NoProgress, Provider};
use quic_peer::proto::manifest::Manifest;
use quic_peer::proto::wire::Role;
use quic_peer::proto::Hash;
use quic_peer::transfer::fetch_manifest;
use quic_peer::{replication, ConnectError, Node, NodeConfig, NodeId, PeerAddr};
use quic_peer_relay::{Relay, RelayConfig};

/// The file of steps 1 and 3: a few MiB, not a whole number of chunks.
const FILE_SIZE: usize = (4 << 20) + 12_345;
/// Small chunks, so the file has many and both holders in step 3 get some.
const CHUNK_SIZE: u32 = 256 << 10;
/// What the file of step 4 is made of.
const MARKER: &[u8] = b"QUIC-PEER-SECRET-MARKER-";
/// The length of the marker pieces searched for.
const PIECE: usize = 16;
/// The size of the file of step 4.
const MARKER_FILE_SIZE: usize = 2 << 20;
/// Bytes of datagrams the relay keeps: far more than step 4 sends.
const CAPTURE_LIMIT: usize = 64 << 20;
/// Time allowed for one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for one fetch of a manifest.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The nodes and what the steps hand to each other.
struct Demo {
    dir: PathBuf,
    /// Holds the files.
    a: Node,
    /// Downloads in steps 1 and 3.
    b: Node,
    /// Another key, listening at its own address.
    impostor: Node,
    /// A newcomer with no connection to A yet, dialing A's id at the
    /// impostor's address.
    d: Node,
    /// A fresh downloader that reaches A only through the relay.
    c: Node,
    /// The file of steps 1 and 3.
    original: Vec<u8>,
    original_path: PathBuf,
    /// Its id, once A stored it.
    file_id: Option<Hash>,
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let started = Instant::now();
    let tmp = tempfile::tempdir().context("cannot make a temporary directory")?;
    let dir = tmp.path().to_path_buf();
    let original = pseudo_random(FILE_SIZE, 42);
    let original_path = dir.join("report.bin");
    std::fs::write(&original_path, &original)
        .with_context(|| format!("cannot write {}", original_path.display()))?;

    let mut demo = Demo {
        a: start(&dir, "a", Role::Peer).await?,
        b: start(&dir, "b", Role::Peer).await?,
        impostor: start(&dir, "impostor", Role::Peer).await?,
        d: start(&dir, "d", Role::Peer).await?,
        c: start(&dir, "c", Role::Client).await?,
        dir,
        original,
        original_path,
        file_id: None,
    };
    println!("nodes (all on loopback, each with its own key and data directory):");
    for (name, node, what) in [
        ("A", &demo.a, "holds the files"),
        ("B", &demo.b, "downloads"),
        ("I", &demo.impostor, "impostor: another key"),
        ("D", &demo.d, "newcomer, dials A's id at I's address"),
        ("C", &demo.c, "downloads through an observing relay"),
    ] {
        println!("  {name} {}  {:<22} {what}", node.id(), node.local_addr());
    }
    println!();

    let mut failed = 0;
    let steps = 5;
    for n in 1..=steps {
        let result = match n {
            1 => run(step1(&mut demo)).await,
            2 => run(step2(&demo)).await,
            3 => run(step3(&demo)).await,
            4 => run(step4(&demo)).await,
            _ => run(step5(&demo)).await,
        };
        match result {
            Ok(()) => println!("step {n} ... OK\n"),
            Err(e) => {
                failed += 1;
                println!("step {n} ... FAILED: {e:#}\n");
            }
        }
    }

    tokio::join!(
        demo.a.shutdown(),
        demo.b.shutdown(),
        demo.impostor.shutdown(),
        demo.d.shutdown(),
        demo.c.shutdown(),
    );
    let took = started.elapsed();
    if failed == 0 {
        println!("all {steps} steps held ({:.1} s)", took.as_secs_f64());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{failed} of {steps} steps FAILED ({:.1} s)",
            took.as_secs_f64()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Runs one step under [`STEP_TIMEOUT`].
async fn run(step: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .with_context(|| format!("the step did not finish within {STEP_TIMEOUT:?}"))?
}

/// Starts a node on loopback with a data directory of its own.
async fn start(dir: &Path, name: &str, role: Role) -> Result<Node> {
    let config = NodeConfig {
        data_dir: Some(dir.join(format!("node-{name}"))),
        role,
        // Repair would copy the demo's files to the other nodes in the
        // background; every copy here is made on purpose.
        repair_interval: Duration::from_secs(3600),
        ..NodeConfig::local_test()
    };
    Node::start(config)
        .await
        .with_context(|| format!("node {name} did not start"))
}

/// A (full node with a store) stores the file at `path` locally only.
async fn store_locally(node: &Node, path: &Path) -> Result<replication::PutReport> {
    let report = node
        .put(
            path,
            &quic_peer::replication::PutOptions {
                chunk_size: CHUNK_SIZE.into(),
                ..quic_peer::replication::PutOptions::public(0)
            },
            Arc::new(NoProgress),
        )
        .await
        .with_context(|| format!("storing {} failed", path.display()))?;
    ensure!(
        report.holders.iter().any(|h| h.id == node.id()),
        "the node does not hold its own copy: {report:?}"
    );
    Ok(report)
}

/// Step 1: B dials A pinned, downloads the file and verifies it.
async fn step1(demo: &mut Demo) -> Result<()> {
    println!("step 1: a transfer to a pinned id succeeds and verifies");
    let (a, b) = (&demo.a, &demo.b);
    let report = store_locally(a, &demo.original_path).await?;
    let id = report.id;
    demo.file_id = Some(id);
    println!(
        "   A stored {} ({} bytes, {} KiB chunks) as {id}",
        demo.original_path.display(),
        report.size,
        CHUNK_SIZE >> 10
    );

    let pinned = PeerAddr::pinned(a.id(), a.local_addr());
    let proven = b
        .connect(&pinned)
        .await
        .with_context(|| format!("B could not connect to {pinned}"))?;
    ensure!(proven == a.id(), "the handshake proved {proven}, not A");
    let conn = b
        .connection(&a.id())
        .context("B has no connection to A after connecting")?;
    let cert_id = tls::peer_node_id(&conn).context("A presented no certificate")?;
    ensure!(
        cert_id == a.id(),
        "A's certificate is for {cert_id}, not {}",
        a.id()
    );
    println!("   B dialed {pinned}: the handshake proved A's key");

    let out = demo.dir.join("step1-received.bin");
    let stats = fetch(vec![provider(a.id(), conn.clone())], id, &out).await?;
    let got = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    ensure!(
        got == demo.original,
        "the received file differs from the original ({} bytes against {})",
        got.len(),
        demo.original.len()
    );
    println!(
        "   B received {} bytes in {} chunks from A; they equal the original",
        stats.bytes, stats.chunks_fetched
    );

    // Check the file against its id without the download engine: the manifest
    // hashes to the id, and every chunk of the file hashes to its manifest entry.
    let (manifest_bytes, manifest) = fetch_manifest(&conn, id, FETCH_TIMEOUT)
        .await
        .context("B could not fetch the manifest from A")?;
    let digest = blake3::hash(&manifest_bytes);
    ensure!(
        digest.as_bytes() == id.as_bytes(),
        "BLAKE3 of the manifest is {digest}, not the file id"
    );
    let Manifest::File(f) = manifest else {
        bail!("the manifest is not a file's");
    };
    ensure!(
        f.size == got.len() as u64,
        "the manifest says {} bytes, the file has {}",
        f.size,
        got.len()
    );
    for (i, want) in f.chunks.iter().enumerate() {
        let (offset, len) = f.chunk_range(i);
        let offset = usize::try_from(offset).context("chunk offset")?;
        let piece = got
            .get(offset..offset + len)
            .with_context(|| format!("chunk {i} is past the end of the file"))?;
        ensure!(
            Hash::of(piece) == *want,
            "chunk {i} does not match its hash"
        );
    }
    println!(
        "   BLAKE3 of the manifest B fetched is the file id {}; all {} chunks of the received file match its hashes",
        Hash::from_bytes(*digest.as_bytes()),
        f.chunks.len()
    );
    Ok(())
}

/// Step 2: a dial to A's id at the impostor's address fails in the handshake.
async fn step2(demo: &Demo) -> Result<()> {
    println!("step 2: an impostor with another key at the pinned address is refused");
    let (a, d, impostor) = (&demo.a, &demo.d, &demo.impostor);
    ensure!(
        d.connection(&a.id()).is_none(),
        "D is already connected to A: the dial would not reach the impostor"
    );
    let target = PeerAddr::pinned(a.id(), impostor.local_addr());
    println!("   D dials {target} (A's id, I's address)");
    match d.connect(&target).await {
        Ok(id) => bail!("the dial succeeded and proved {id}: the impostor was accepted"),
        Err(e @ ConnectError::Handshake { .. }) => {
            let text = e.to_string();
            ensure!(
                text.contains("peer id mismatch"),
                "the handshake failed, but not for the pinned id: {text}"
            );
            ensure!(
                text.contains(&a.id().to_string()) && text.contains(&impostor.id().to_string()),
                "the error does not name both ids: {text}"
            );
            println!("   refused in the handshake: {text}");
        }
        Err(e) => bail!("the dial failed, but not in the handshake: {e}"),
    }

    // Nothing was admitted on either side.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (name, node) in [("D", d), ("B", &demo.b)] {
        ensure!(
            node.connection(&impostor.id()).is_none(),
            "{name} has a connection to the impostor"
        );
        ensure!(
            !node.peers().iter().any(|p| p.id == impostor.id()),
            "the impostor is in {name}'s peer table"
        );
    }
    ensure!(
        d.connection(&a.id()).is_none(),
        "D has a connection it believes is A's"
    );
    ensure!(
        !impostor.peers().iter().any(|p| p.id == d.id()),
        "the impostor admitted D"
    );
    println!("   D and B have no connection to I's id, and I admitted nobody");

    // The same pin at A's real address works: the refusal was about the key.
    let real = PeerAddr::pinned(a.id(), a.local_addr());
    let proven = d
        .connect(&real)
        .await
        .with_context(|| format!("D could not connect to the real A at {real}"))?;
    ensure!(proven == a.id(), "the real A proved {proven}");
    println!("   control: D dials {real} and the handshake proves A");
    Ok(())
}

/// Step 3: T serves tampered chunks; B downloads from T and A and gets the
/// original anyway.
async fn step3(demo: &Demo) -> Result<()> {
    println!("step 3: tampered chunks are caught; the file arrives intact from an honest peer");
    let (a, b) = (&demo.a, &demo.b);
    let id = demo.file_id.context("step 1 did not store the file")?;
    let store = a.store().context("A has no store")?;
    let t = liar::Liar::start(store, id).await?;
    println!(
        "   T {} at {}: its own key, holds the file, serves every chunk with its bytes flipped",
        t.id, t.addr
    );
    let providers = vec![
        provider(t.id, t.connect().await.context("B could not connect to T")?),
        provider(a.id(), b.connection(&a.id()).context("no connection to A")?),
    ];
    let out = demo.dir.join("step3-received.bin");
    let stats = fetch(providers, id, &out).await?;
    let from = |id: NodeId| {
        stats
            .per_peer
            .iter()
            .filter(|(p, _)| *p == id)
            .map(|(_, n)| *n)
            .sum::<usize>()
    };
    println!(
        "   B asked T and A: {} bad chunks caught, {} chunks accepted from T, {} from A",
        stats.bad_chunks,
        from(t.id),
        from(a.id())
    );
    ensure!(
        stats.bad_chunks >= 1,
        "no bad chunk was seen: T was never asked ({stats:?})"
    );
    ensure!(
        t.lies.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "T was never asked for a chunk"
    );
    ensure!(
        from(t.id) == 0,
        "chunks from the tampering peer were accepted ({stats:?})"
    );
    let got = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    ensure!(
        got == demo.original,
        "the received file differs from the original"
    );
    println!("   the {} bytes received equal the original", got.len());
    Ok(())
}

/// Step 4: C downloads a file of markers through a capturing relay; the marker
/// is nowhere in the captured datagrams.
async fn step4(demo: &Demo) -> Result<()> {
    println!("step 4: the bytes on the wire are encrypted");
    let (a, c) = (&demo.a, &demo.c);
    let plain: Vec<u8> = MARKER
        .iter()
        .copied()
        .cycle()
        .take(MARKER_FILE_SIZE)
        .collect();
    let path = demo.dir.join("marker.txt");
    std::fs::write(&path, &plain).with_context(|| format!("cannot write {}", path.display()))?;
    let report = store_locally(a, &path).await?;
    let pieces = marker_pieces();
    // The search itself works: it finds the marker in the plaintext.
    let in_plain = count(&plain, MARKER);
    ensure!(
        in_plain > 0 && count_pieces(&plain, &pieces) > 0,
        "the search does not find the marker even in the plaintext"
    );
    println!(
        "   A stored {} bytes of {:?} repeated as {} (the marker is {in_plain} times in the plaintext)",
        plain.len(),
        String::from_utf8_lossy(MARKER),
        report.id
    );

    let relay = Relay::start(
        "127.0.0.1:0".parse().context("relay address")?,
        a.local_addr(),
        RelayConfig {
            capture: CAPTURE_LIMIT,
            ..RelayConfig::default()
        },
    )
    .await
    .context("the relay did not start")?;
    let via = PeerAddr::pinned(a.id(), relay.local_addr());
    println!(
        "   relay {} -> A {}; C dials {via}",
        relay.local_addr(),
        a.local_addr()
    );
    let result = async {
        let proven = c
            .connect(&via)
            .await
            .with_context(|| format!("C could not connect to {via}"))?;
        ensure!(proven == a.id(), "the handshake proved {proven}, not A");
        let conn = c
            .connection(&a.id())
            .context("C has no connection to A after connecting")?;
        ensure!(
            conn.remote_address() == relay.local_addr(),
            "C's connection to A goes to {}, not through the relay",
            conn.remote_address()
        );
        let out = demo.dir.join("step4-received.txt");
        let stats = fetch(vec![provider(a.id(), conn)], report.id, &out).await?;
        let got = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
        ensure!(got == plain, "the received file differs from the original");
        println!(
            "   C received {} bytes in {} chunks through the relay; they verify and equal the original",
            stats.bytes, stats.chunks_fetched
        );
        Ok(())
    }
    .await;
    let stats = relay.stats();
    let captured = relay.captured();
    relay.stop();
    result?;

    let size = plain.len() as u64;
    println!(
        "   the relay forwarded {} bytes C->A and {} bytes A->C",
        stats.forward.bytes_out, stats.backward.bytes_out
    );
    ensure!(
        stats.backward.bytes_out >= size,
        "the relay forwarded only {} bytes from A, less than the file's {size}: the transfer went around it",
        stats.backward.bytes_out
    );
    let total: usize = captured.iter().map(|d| d.len()).sum();
    ensure!(
        total as u64 >= size,
        "the relay captured only {total} bytes, less than the file"
    );
    ensure!(
        total + (64 << 10) < CAPTURE_LIMIT,
        "the capture filled up at {total} bytes: datagrams may be missing from it"
    );

    let mut whole = Vec::with_capacity(total);
    let mut in_datagrams = 0;
    for d in &captured {
        if count(d, MARKER) > 0 || count_pieces(d, &pieces) > 0 {
            in_datagrams += 1;
        }
        whole.extend_from_slice(d);
    }
    let in_whole = count(&whole, MARKER) + count_pieces(&whole, &pieces);
    println!(
        "   searched {} captured datagrams ({total} bytes) for the {}-byte marker and its {} {PIECE}-byte pieces: found in {in_datagrams} datagrams, {in_whole} times in their concatenation",
        captured.len(),
        MARKER.len(),
        pieces.len()
    );
    ensure!(
        in_datagrams == 0 && in_whole == 0,
        "plaintext is visible on the wire"
    );
    Ok(())
}

/// Step 5: B puts a file encrypted; the nodes that hold it cannot read it.
async fn step5(demo: &Demo) -> Result<()> {
    println!("step 5: the nodes that store a file hold ciphertext only");
    const NAME: &str = "secret-report.txt";
    // Another marker than step 4's (which A holds in plaintext), sharing
    // no 16-byte piece with it: lowercase.
    const SEALED_MARKER: &[u8] = b"quic-peer-sealed-marker/";
    let plain: Vec<u8> = SEALED_MARKER
        .iter()
        .copied()
        .cycle()
        .take(MARKER_FILE_SIZE)
        .collect();
    let path = demo.dir.join(NAME);
    std::fs::write(&path, &plain).with_context(|| format!("cannot write {}", path.display()))?;
    let opts = replication::PutOptions {
        replicas: 2,
        ..replication::PutOptions::default()
    };
    let report = demo
        .b
        .put(&path, &opts, Arc::new(NoProgress))
        .await
        .context("B's put failed")?;
    ensure!(report.key.is_some(), "the put was not encrypted");
    ensure!(report.remote_copies >= 1, "no other node took a copy");
    println!(
        "   B encrypted {NAME} ({} bytes of {:?} repeated) and stored it as {}, on {} other node(s)",
        plain.len(),
        String::from_utf8_lossy(SEALED_MARKER),
        report.id,
        report.remote_copies
    );
    let pieces = pieces_of(SEALED_MARKER);
    ensure!(
        count_pieces(&plain, &pieces) > 0,
        "the search does not find the marker even in the plaintext"
    );
    let names = [
        ("A", &demo.a, "a"),
        ("B", &demo.b, "b"),
        ("I", &demo.impostor, "impostor"),
        ("D", &demo.d, "d"),
    ];
    let mut searched = 0;
    for (label, node, dir) in names {
        if !report.holders.iter().any(|h| h.id == node.id()) {
            continue;
        }
        let data_dir = demo.dir.join(format!("node-{dir}"));
        let (bytes, files, found) = search_dir(&data_dir, NAME.as_bytes(), SEALED_MARKER, &pieces)?;
        println!(
            "   {label} holds a copy: searched its data directory, {files} files, {bytes} bytes: {found} hits for the marker, its {PIECE}-byte pieces or the name"
        );
        ensure!(
            found == 0,
            "{label}'s data directory holds plaintext or the name"
        );
        searched += 1;
    }
    ensure!(searched >= 2, "only {searched} holders were searched");

    let out = demo.dir.join("step5-received.txt");
    // The holders, without the key: the id alone (the verify capability).
    let no_key = quic_peer::proto::ticket::Ticket {
        key: None,
        ..report.ticket.clone()
    };
    let by_id = demo
        .c
        .get(
            &no_key.into(),
            &out,
            &DownloadOptions::default(),
            Arc::new(NoProgress),
        )
        .await;
    let refused = by_id.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        refused.contains("its ticket (which carries the key) is needed") && !out.exists(),
        "the id alone opened the file, or failed otherwise: {refused}"
    );
    println!("   C with the id alone, from the holders: {refused}");
    let stats = demo
        .c
        .get(
            &report.ticket.clone().into(),
            &out,
            &DownloadOptions::default(),
            Arc::new(NoProgress),
        )
        .await
        .context("C could not read the file with the ticket")?;
    let got = std::fs::read(&out).with_context(|| format!("cannot read {}", out.display()))?;
    ensure!(got == plain, "the file C read differs from the original");
    println!(
        "   C read it with the ticket: {} bytes, every chunk checked by hash and by its AEAD tag, equal to the original",
        stats.bytes
    );
    Ok(())
}

/// Searches every file under `dir`: (bytes, files, hits of `name`, of
/// `marker` or of one of `pieces`).
fn search_dir(
    dir: &Path,
    name: &[u8],
    marker: &[u8],
    pieces: &HashSet<[u8; PIECE]>,
) -> Result<(usize, usize, usize)> {
    let (mut bytes, mut files, mut found) = (0, 0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            bytes += data.len();
            files += 1;
            found += count(&data, name) + count(&data, marker) + count_pieces(&data, pieces);
        }
    }
    Ok((bytes, files, found))
}

fn provider(id: NodeId, conn: quinn::Connection) -> Provider {
    Provider { id, conn }
}

/// Downloads `id` from `providers` to `out`.
async fn fetch(providers: Vec<Provider>, id: Hash, out: &Path) -> Result<DownloadStats> {
    download(
        providers,
        id,
        out,
        &DownloadOptions::default(),
        Arc::new(NoProgress),
    )
    .await
    .with_context(|| format!("downloading {id} failed"))
}

/// Every [`PIECE`]-byte window of the repeated [`MARKER`]: one per rotation.
fn marker_pieces() -> HashSet<[u8; PIECE]> {
    pieces_of(MARKER)
}

/// Every [`PIECE`]-byte window of `marker` repeated: one per rotation.
fn pieces_of(marker: &[u8]) -> HashSet<[u8; PIECE]> {
    (0..marker.len())
        .map(|start| {
            let mut piece = [0u8; PIECE];
            for (k, b) in piece.iter_mut().enumerate() {
                *b = marker[(start + k) % marker.len()];
            }
            piece
        })
        .collect()
}

/// Occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Positions in `hay` where one of `pieces` starts.
fn count_pieces(hay: &[u8], pieces: &HashSet<[u8; PIECE]>) -> usize {
    hay.windows(PIECE)
        .filter(|w| <[u8; PIECE]>::try_from(*w).is_ok_and(|p| pieces.contains(&p)))
        .count()
}

/// Deterministic bytes that do not compress or repeat.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
