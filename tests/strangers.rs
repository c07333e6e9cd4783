//! What one stranger can make a node spend. The target is the real binary,
//! in a process of its own with its default limits, so its memory and CPU
//! are its own; the stranger is a raw QUIC peer (`common::adversary`).
//!
//! - Memory: 8 connections of 63 GET streams each for a stored 16 MiB
//!   chunk, with huge flow-control windows, never read. Before chunk data
//!   was streamed, each such GET read the whole chunk into memory and held
//!   it until the stream deadline: about 1 GiB per connection.
//! - CPU: thousands of HOLDs of a file the target already holds. Before, each
//!   walked the file's tree, committed a write transaction and started an
//!   announce.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::adversary::{ip, join, memory};
use common::{get_to, parse_started, random_bytes, store_node_with, wait_until, Proc};
use quic_peer::proto::frame::write_frame;
use quic_peer::proto::manifest::{Manifest, MAX_CHUNK_SIZE};
use quic_peer::proto::wire::{Request, Response, Role, MAX_CONTROL_FRAME};
use quic_peer::proto::Hash;
use quic_peer::PeerAddr;

const MIB: usize = 1 << 20;
/// Connections the stranger opens (the per-address limit).
const CONNECTIONS: u8 = 8;
/// GET streams per connection: the stream limit, less the control stream.
const STREAMS: usize = 63;

/// The target (the real binary with its default limits, in a process of
/// its own) and an honest peer joined to it.
struct Scene {
    _dir: tempfile::TempDir,
    target: Proc,
    addr: std::net::SocketAddr,
    target_id: quic_peer::NodeId,
    pid: u32,
    good: common::StoreNode,
}

async fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_string_lossy().to_string();
    let mut target = Proc::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &data_dir]);
    let (addr, target_id) =
        parse_started(&target.expect_line("[STARTED]", Duration::from_secs(30)));
    let pid = target.child.id();
    let good = store_node_with(&[], |c| {
        c.bootstrap = vec![PeerAddr::pinned(target_id, addr)]
    })
    .await;
    wait_until("honest peer joined", Duration::from_secs(10), || {
        common::connected(&good.node, target_id)
    })
    .await;
    Scene {
        _dir: dir,
        target,
        addr,
        target_id,
        pid,
        good,
    }
}

/// A client endpoint on `ip` that advertises windows far larger than any
/// chunk, so that only the target's own limits bound what it buffers.
fn greedy_endpoint(addr: std::net::IpAddr) -> quinn::Endpoint {
    let mut t = quinn::TransportConfig::default();
    t.receive_window(quinn::VarInt::from_u32(1 << 30));
    t.stream_receive_window(quinn::VarInt::from_u32(64 << 20));
    let mut client = common::adversary::valid_client();
    client.transport_config(Arc::new(t));
    let mut ep = quinn::Endpoint::client(std::net::SocketAddr::new(addr, 0)).expect("endpoint");
    ep.set_default_client_config(client);
    ep
}

/// Opens `STREAMS` GETs for `chunk` on one connection and never reads them;
/// returns the streams (kept open) once all are sent.
async fn never_read(
    conn: &quinn::Connection,
    chunk: Hash,
    sent: &AtomicU64,
) -> Vec<(quinn::SendStream, quinn::RecvStream)> {
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let Ok((mut send, recv)) = conn.open_bi().await else {
            break;
        };
        let get = Request::GetChunk { hash: chunk };
        if write_frame(&mut send, &get, MAX_CONTROL_FRAME)
            .await
            .is_err()
        {
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        held.push((send, recv));
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_read_gets_cost_their_window_not_the_chunk() {
    let Scene {
        _dir,
        mut target,
        addr,
        target_id,
        pid,
        good,
    } = scene().await;

    // One 16 MiB chunk on the target, put by the honest peer.
    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(16 * MIB, 11);
    let path = src.path().join("sixteen.bin");
    std::fs::write(&path, &data).unwrap();
    let report = common::put_chunked(&good.node, &path, 1, MAX_CHUNK_SIZE).await;
    assert!(report.holders.iter().any(|h| h.id == target_id));
    let chunk = match Manifest::decode(&report_manifest(&good.node, report.id)) {
        Ok(Manifest::File(f)) => f.chunks[0],
        other => panic!("a file manifest: {other:?}"),
    };
    let quiet = src.path().join("quiet.bin");
    let t = Instant::now();
    get_to(&good.node, report.ticket.clone(), &quiet)
        .await
        .expect("quiet get");
    let quiet_time = t.elapsed();
    std::fs::remove_file(&quiet).unwrap();

    // The stranger: 8 connections from one address, 63 never-read GETs each.
    let (rss0, _) = memory(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (sent, stop) = (sent.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let ep = greedy_endpoint(ip(5, 0, 1));
            let Ok(joined) = join(&ep, addr, Role::Client).await else {
                return;
            };
            let _held = never_read(&joined.conn, chunk, &sent).await;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    wait_until("the GETs are sent", Duration::from_secs(20), || {
        sent.load(Ordering::Relaxed) >= u64::from(CONNECTIONS) * STREAMS as u64 / 2
    })
    .await;

    // The honest get under attack, while the target's memory is sampled.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (sampling, peak) = (sampling.clone(), peak.clone());
        async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(memory(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // Let the never-read streams fill every window first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = src.path().join("under-attack.bin");
    let t = Instant::now();
    get_to(&good.node, report.ticket.clone(), &out)
        .await
        .expect("the honest get completes under the attack");
    let attacked_time = t.elapsed();
    assert!(std::fs::read(&out).unwrap() == data);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    let (_, hwm) = memory(pid);
    let peak = peak.load(Ordering::Relaxed).max(hwm);
    println!(
        "never-read GETs: {} streams of a 16 MiB chunk on {CONNECTIONS} connections; \
         target RSS {} MiB before, peak {} MiB; honest 16 MiB get {:.2} s quiet, {:.2} s under attack",
        sent.load(Ordering::Relaxed),
        rss0 / 1024,
        peak / 1024,
        quiet_time.as_secs_f64(),
        attacked_time.as_secs_f64()
    );
    assert!(
        peak < 200 * 1024,
        "the target's peak RSS was {} MiB",
        peak / 1024
    );
    good.node.shutdown().await;
    target.send("exit");
}

/// The encoded manifest of `id` from `node`'s store.
fn report_manifest(node: &quic_peer::Node, id: Hash) -> Vec<u8> {
    node.store()
        .expect("a store")
        .manifest_bytes(&id)
        .expect("store")
        .expect("the manifest")
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_flood_costs_a_store_lookup_each() {
    const HOLDS: usize = 2000;
    let Scene {
        _dir,
        mut target,
        addr,
        target_id,
        pid,
        good,
    } = scene().await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("held.bin");
    std::fs::write(&path, random_bytes(3 * MIB, 12)).unwrap();
    let report = common::put(&good.node, &path, 1).await;
    assert!(report.holders.iter().any(|h| h.id == target_id));
    // Let the put's own announce settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ep = common::adversary::endpoint(ip(6, 0, 1));
    let joined = join(&ep, addr, Role::Client).await.expect("joined");
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut acks = 0;
    for _ in 0..HOLDS {
        if common::adversary::ask(&joined.conn, &Request::Hold { id: report.id }).await
            == Some(Response::Ack)
        {
            acks += 1;
        }
    }
    let elapsed = started.elapsed();
    // Detached work (announces) would still be running: give it time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu0;
    println!(
        "HOLD flood: {HOLDS} HOLDs of a held file ({acks} acknowledged) in {:.2} s; \
         target CPU {:.2} s ({:.0} us per HOLD)",
        elapsed.as_secs_f64(),
        cpu,
        cpu * 1e6 / HOLDS as f64
    );
    assert_eq!(acks, HOLDS, "a held file is acknowledged");
    assert!(cpu < 2.0, "{HOLDS} HOLDs cost the target {cpu:.2} s of CPU");
    good.node.shutdown().await;
    target.send("exit");
}
