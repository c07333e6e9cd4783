//! Floods and limits, on loopback: a node under a flood of bad handshakes,
//! garbage streams and GETs for unknown hashes still serves a well-behaved
//! peer, in bounded memory; the per-address connection limit and the
//! per-peer request rate each answer with their own refusal.
//!
//! Linux routes all of 127.0.0.0/8 to the loopback interface, so attackers
//! bind 127.0.x.y addresses of their own, and the target counts loopback
//! against the per-address limit (`--limit-loopback`, off by default): the
//! limit applies to each as it would to hosts on a network.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::adversary::{endpoint, ip, join, memory, valid_client};
use common::{get_to, node, parse_started, put, random_bytes, store_node_with, wait_until, Proc};
use quic_peer::net::PeerLimit;
use quic_peer::proto::wire::{
    self, ErrorCode, LimitHit, Request, Response, Role, ALPN, MAX_CONTROL_FRAME,
};
use quic_peer::proto::Hash;
use quic_peer::{ConnectError, Node, NodeConfig, NodeId, PeerAddr};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

const MIB: usize = 1 << 20;

/// Accepts any server certificate: the attackers do not care who answers.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client presenting a self-signed ECDSA certificate (not Ed25519, so not
/// a node id), speaking the right ALPN so the handshake gets as far as the
/// certificate check.
fn ecdsa_client(alg: &'static rcgen::SignatureAlgorithm) -> quinn::ClientConfig {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    NotFound,
    RateLimited,
    Other(String),
}

/// One GET for a hash nobody has, on its own stream.
async fn get_unknown(conn: &quinn::Connection) -> Answer {
    let limited = ErrorCode::RateLimited.var_int();
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Answer::Other(e.to_string()),
    };
    let req = Request::GetChunk {
        hash: Hash::from_bytes(rand::random()),
    };
    match send
        .write_all(&wire::encode(&req, MAX_CONTROL_FRAME).unwrap())
        .await
    {
        Ok(()) => {}
        Err(quinn::WriteError::Stopped(code)) if code == limited => return Answer::RateLimited,
        Err(e) => return Answer::Other(e.to_string()),
    }
    let _ = send.finish();
    match recv.read_to_end(1024).await {
        Ok(bytes) => match wire::decode::<Response>(&bytes, MAX_CONTROL_FRAME) {
            Ok(Some((Response::NotFound, _))) => Answer::NotFound,
            other => Answer::Other(format!("{other:?}")),
        },
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == limited => {
            Answer::RateLimited
        }
        Err(e) => Answer::Other(e.to_string()),
    }
}

#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    rounds: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    connected: AtomicU64,
    closed_by_node: AtomicU64,
    still_open: AtomicU64,
    not_found: AtomicU64,
    rate_limited: AtomicU64,
    other: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Handshakes with bad certificates, until told to stop and at least 500:
/// ECDSA P-256 and P-384 self-signed client certificates, and valid identities
/// that pin the wrong node id, from 25 addresses, 25 at a time.
async fn bad_certificates(target: SocketAddr, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    const ADDRS: u8 = 25;
    const PER_ADDR: usize = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for a in 1..=ADDRS {
        let (counts, stop) = (counts.clone(), stop.clone());
        tasks.spawn(async move {
            let mut ep = endpoint(ip(2, 0, a));
            for i in 0.. {
                if i >= PER_ADDR && stop.load(Ordering::Relaxed) {
                    break;
                }
                let (cfg, name) = match i % 3 {
                    0 => (
                        ecdsa_client(&rcgen::PKCS_ECDSA_P256_SHA256),
                        quic_peer::crypto::tls::UNPINNED_SERVER_NAME.to_string(),
                    ),
                    1 => (
                        ecdsa_client(&rcgen::PKCS_ECDSA_P384_SHA384),
                        quic_peer::crypto::tls::UNPINNED_SERVER_NAME.to_string(),
                    ),
                    _ => {
                        let wrong = NodeId::from_bytes(rand::random());
                        (
                            valid_client(),
                            quic_peer::crypto::tls::server_name_for(Some(wrong)),
                        )
                    }
                };
                let connecting = match ep.connect_with(cfg, target, &name) {
                    Ok(c) => {
                        add(&counts.attempts);
                        c
                    }
                    Err(_) => {
                        // The attacker's own endpoint gave up (its driver hit
                        // a socket error under load): take a fresh one.
                        add(&counts.other);
                        ep = endpoint(ip(2, 0, a));
                        continue;
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), connecting).await {
                    Err(_) => add(&counts.timed_out),
                    Ok(Ok(conn)) => {
                        // Only a refusal later would be right; the client side
                        // of a handshake can finish before the server's check.
                        match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await {
                            Ok(_) => add(&counts.failed),
                            Err(_) => add(&counts.connected),
                        }
                    }
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(c)))
                        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                    {
                        add(&counts.refused)
                    }
                    Ok(Err(_)) => add(&counts.failed),
                }
            }
            ep.close(0u32.into(), b"");
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Rounds of 200 connections with valid identities that send garbage, until
/// told to stop (at least one round): random bytes as the first stream, a
/// valid length with a body that does not decode, or a proper JOIN followed by
/// request streams of garbage. 40 addresses, 5 connections each, all at once.
async fn garbage(target: SocketAddr, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    for round in 0u64.. {
        if round > 0 && stop.load(Ordering::Relaxed) {
            break;
        }
        garbage_round(target, counts.clone(), round).await;
        add(&counts.rounds);
    }
}

async fn garbage_round(target: SocketAddr, counts: Arc<Counts>, round: u64) {
    const ADDRS: u8 = 40;
    const PER_ADDR: usize = 5;
    let mut tasks = tokio::task::JoinSet::new();
    for a in 1..=ADDRS {
        let ep = endpoint(ip(3, 0, a));
        for i in 0..PER_ADDR {
            let (ep, counts) = (ep.clone(), counts.clone());
            let seed = round * 10_000 + u64::from(a) * 100 + i as u64;
            tasks.spawn(async move {
                let conn = match i % 3 {
                    0 | 1 => {
                        let conn = match ep
                            .connect_with(
                                valid_client(),
                                target,
                                quic_peer::crypto::tls::UNPINNED_SERVER_NAME,
                            )
                            .unwrap()
                            .await
                        {
                            Ok(c) => c,
                            Err(_) => return add(&counts.refused),
                        };
                        let mut bytes = random_bytes(16 << 10, seed);
                        if i % 3 == 1 {
                            // A length under the cap, a body that is noise.
                            bytes[..4].copy_from_slice(&1000u32.to_be_bytes());
                        }
                        if let Ok((mut send, _recv)) = conn.open_bi().await {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.finish();
                        }
                        conn
                    }
                    _ => {
                        let role = if a % 2 == 0 { Role::Peer } else { Role::Client };
                        let joined = match join(&ep, target, role).await {
                            Ok(j) => j,
                            Err(_) => return add(&counts.refused),
                        };
                        for s in 0..8 {
                            if let Ok((mut send, _recv)) = joined.conn.open_bi().await {
                                let _ = send.write_all(&random_bytes(4096, seed * 8 + s)).await;
                                let _ = send.finish();
                            }
                        }
                        joined.conn.clone()
                    }
                };
                match tokio::time::timeout(Duration::from_secs(15), conn.closed()).await {
                    Ok(quinn::ConnectionError::ApplicationClosed(_)) => add(&counts.closed_by_node),
                    Ok(_) => add(&counts.other),
                    Err(_) => add(&counts.still_open),
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// A joined peer asking for unknown hashes, 16 streams at a time, until told
/// to stop; cut off by the node, it comes back with a new identity. Returns
/// when and why it was first cut off, and how many times it came back.
async fn hammer(
    target: SocketAddr,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> (Option<(Duration, quinn::ConnectionError)>, u32) {
    let start = Instant::now();
    let ep = endpoint(ip(4, 0, 1));
    let (mut first_cut, mut comebacks) = (None, 0);
    while !stop.load(Ordering::Relaxed) {
        let joined = match join(&ep, target, Role::Client).await {
            Ok(j) => j,
            Err(_) => {
                add(&counts.other);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (conn, counts, stop) = (joined.conn.clone(), counts.clone(), stop.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match get_unknown(&conn).await {
                        Answer::NotFound => add(&counts.not_found),
                        Answer::RateLimited => add(&counts.rate_limited),
                        Answer::Other(_) => {
                            add(&counts.other);
                            if conn.close_reason().is_some() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        if let Some(cut) = joined.conn.close_reason() {
            first_cut.get_or_insert((start.elapsed(), cut));
            comebacks += 1;
        }
    }
    (first_cut, comebacks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_node_still_serves_a_well_behaved_peer_in_bounded_memory() {
    // The target is the real binary with its default limits, in a process of
    // its own, so its memory is its own: the attackers and the good peer run
    // here.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_string_lossy().to_string();
    // The attackers are on 127.x.y.z, which is exempt from the per-address
    // limit unless --limit-loopback.
    let mut target = Proc::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--limit-loopback",
        "--data-dir",
        &data_dir,
    ]);
    let (addr, target_id) =
        parse_started(&target.expect_line("[STARTED]", Duration::from_secs(30)));
    let pid = target.child.id();

    let src = tempfile::tempdir().unwrap();
    let data = random_bytes(16 * MIB, 7);
    let path = src.path().join("sixteen.bin");
    std::fs::write(&path, &data).unwrap();
    let good = store_node_with(&[], |c| {
        c.bootstrap = vec![PeerAddr::pinned(target_id, addr)]
    })
    .await;
    wait_until("good peer joined", Duration::from_secs(10), || {
        common::connected(&good.node, target_id)
    })
    .await;
    // Stored on the target (one copy); the good peer's own copy is not used:
    // a get never asks itself.
    let report = put(&good.node, &path, 1).await;
    assert!(report.holders.iter().any(|h| h.id == target_id));
    let good = good.node.clone();

    // The same get without a flood, for comparison.
    let fetch = |out: std::path::PathBuf| {
        let (good, ticket) = (good.clone(), report.ticket.clone());
        async move {
            let t = Instant::now();
            let stats = get_to(&good, ticket, &out)
                .await
                .expect("the well-behaved get completes");
            (stats, t.elapsed())
        }
    };
    let quiet = src.path().join("quiet.bin");
    let (_, quiet_time) = fetch(quiet.clone()).await;
    assert!(std::fs::read(&quiet).unwrap() == data);
    std::fs::remove_file(&quiet).unwrap();

    let (rss0, hwm0) = memory(pid);
    let started = Instant::now();
    let counts = Arc::new(Counts::default());
    let bad = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = Arc::new(AtomicBool::new(false));
    let hammerer = tokio::spawn(hammer(addr, counts.clone(), stop.clone()));
    let bad_certs = tokio::spawn({
        let stop = flood_stop.clone();
        async move {
            bad_certificates(addr, bad.clone(), stop).await;
            (bad, started.elapsed())
        }
    });
    let junk = tokio::spawn({
        let (counts, stop) = (counts.clone(), flood_stop.clone());
        async move {
            garbage(addr, counts, stop).await;
            started.elapsed()
        }
    });
    // Let the flood build up, then fetch.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = src.path().join("fetched.bin");
    let get_start = started.elapsed();
    // Every part of the flood runs until told to stop: it is on for the
    // whole get.
    let flooding = || !bad_certs.is_finished() && !junk.is_finished() && !hammerer.is_finished();
    assert!(flooding(), "the flood is on when the get starts");
    let (stats, get_time) = fetch(out.clone()).await;
    let get_end = started.elapsed();
    assert!(flooding(), "the flood is still on when the get ends");
    assert!(std::fs::read(&out).unwrap() == data, "bytes identical");
    // Keep the flood on for five seconds at least, sampling the target's
    // memory: it must level off, not climb with the number of attackers.
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(5) || samples.len() < 2 {
        samples.push((started.elapsed().as_secs_f32(), memory(pid).0 / 1024));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(flooding(), "the flood ran throughout");
    flood_stop.store(true, Ordering::Relaxed);

    let (bad, bad_end) = bad_certs.await.unwrap();
    let junk_end = junk.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (cut, comebacks) = hammerer.await.unwrap();
    let flood_time = started.elapsed();
    let (rss1, hwm1) = memory(pid);

    println!(
        "get of 16 MiB: {quiet_time:?} without a flood, {get_time:?} under it ({} chunks; get ran {get_start:?}..{get_end:?} into the flood)",
        stats.chunks_fetched,
    );
    println!(
        "flood: bad certificates done at {bad_end:?}, garbage at {junk_end:?}, hammering stopped at {flood_time:?}"
    );
    println!(
        "bad certificates: {} attempts: {} failed the handshake, {} refused before it, {} timed out, {} connected, {} attacker endpoint failures",
        get(&bad.attempts),
        get(&bad.failed),
        get(&bad.refused),
        get(&bad.timed_out),
        get(&bad.connected),
        get(&bad.other)
    );
    println!(
        "garbage: {} rounds of 200 connections: {} closed by the node, {} refused, {} still open, {} other",
        get(&counts.rounds),
        get(&counts.closed_by_node),
        get(&counts.refused),
        get(&counts.still_open),
        get(&counts.other)
    );
    println!(
        "hammering GETs for unknown hashes: {} answered NotFound, {} refused as RateLimited",
        get(&counts.not_found),
        get(&counts.rate_limited)
    );
    println!(
        "hammering peer: first cut off {cut:?} (after that long, and why); came back with a new identity {comebacks} times"
    );
    if let Some((_, quinn::ConnectionError::ApplicationClosed(c))) = &cut {
        assert_eq!(c.error_code, ErrorCode::RateLimited.var_int());
    }
    println!(
        "target RSS during the flood (s, MiB): {}",
        samples
            .iter()
            .map(|(t, m)| format!("{t:.1}: {m}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "memory of the target node process: VmRSS {} -> {} MiB (growth {} MiB), VmHWM {} -> {} MiB",
        rss0 / 1024,
        rss1 / 1024,
        rss1.saturating_sub(rss0) / 1024,
        hwm0 / 1024,
        hwm1 / 1024
    );

    assert_eq!(get(&bad.connected), 0, "no bad certificate got in");
    assert!(get(&bad.attempts) >= 500, "at least 500 bad certificates");
    assert_eq!(
        get(&bad.failed) + get(&bad.refused) + get(&bad.timed_out),
        get(&bad.attempts),
        "every bad certificate failed"
    );
    assert!(get(&counts.rounds) >= 1);
    assert_eq!(
        get(&counts.still_open),
        0,
        "every garbage connection was cut off"
    );
    assert!(get(&counts.closed_by_node) > 0);
    assert!(get(&counts.not_found) > 0);
    assert!(
        hwm1.saturating_sub(rss0) < 200 * 1024,
        "the target's memory peaked {} MiB above where it started",
        hwm1.saturating_sub(rss0) / 1024
    );
    assert!(
        common::connected(&good, target_id),
        "the good peer kept its connection"
    );
    good.shutdown().await;
    drop(target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ninth_connection_from_one_address_is_refused() {
    common::init_logs();
    let a = Node::start(NodeConfig {
        max_connections_per_ip: 8,
        limit_loopback: true,
        ..NodeConfig::local_test()
    })
    .await
    .unwrap();
    let here = endpoint(ip(0, 0, 1));
    let mut held = Vec::new();
    for i in 0..8 {
        let j = join(&here, a.local_addr(), Role::Client)
            .await
            .unwrap_or_else(|e| panic!("connection {i} is within the limit: {e}"));
        held.push(j);
    }
    // The ninth from 127.0.0.1, a real node dialing: refused without a
    // slot, and told which limit it hit.
    let d = node(&[]).await;
    let err = d.connect(&a.addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::AtLimit {
                limit: PeerLimit::Said(LimitHit::PerAddress { max: 8 }),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("--max-connections-per-ip"),
        "{err}"
    );
    println!("ninth connection from 127.0.0.1: {err}");
    // A raw one likewise, closed with ConnectionLimit and the limit.
    match join(&here, a.local_addr(), Role::Client).await {
        Err(e) => assert!(e.contains("connection limit: per-address 8"), "{e}"),
        Ok(_) => panic!("a ninth connection from 127.0.0.1 got in"),
    }
    // Another address is not affected.
    let other = endpoint(ip(0, 0, 2));
    let _j = join(&other, a.local_addr(), Role::Client)
        .await
        .expect("127.0.0.2 has its own limit");
    // A slot comes back when its connection closes.
    let gone = held.pop().unwrap();
    gone.conn.close(0u32.into(), b"bye");
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match d.connect(&a.addr()).await {
            Ok(id) => {
                assert_eq!(id, a.id());
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "slot never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(held.iter().all(|j| j.conn.close_reason().is_none()));
    d.shutdown().await;
    a.shutdown().await;
}

/// A real node refusing at each of its connection limits tells the dialer
/// which limit it hit and which flag governs it; so does `put` through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_dialer_is_told_the_limit_and_its_flag() {
    common::init_logs();
    let t = Duration::from_secs(30);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("small.bin");
    std::fs::write(&file, random_bytes(1000, 3)).unwrap();
    let file = file.to_string_lossy().to_string();
    let cases: [(&[&str], LimitHit, &str); 2] = [
        (
            &["--limit-loopback", "--max-connections-per-ip", "1"],
            LimitHit::PerAddress { max: 1 },
            "limit of 1 connection from one address (--max-connections-per-ip",
        ),
        (
            &["--max-connections", "1"],
            LimitHit::Total { max: 1 },
            "limit of 1 connection in all (--max-connections on that node)",
        ),
    ];
    for (flags, hit, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = common::dir_arg(&dir);
        let mut args = vec!["--listen", "127.0.0.1:0", "--data-dir", &data_dir];
        args.extend_from_slice(flags);
        let mut target = Proc::spawn(&args);
        let (addr, id) = parse_started(&target.expect_line("[STARTED]", t));
        let first = node(&[]).await;
        first
            .connect(&PeerAddr::pinned(id, addr))
            .await
            .expect("the first connection is within the limit");
        let second = node(&[]).await;
        let started = Instant::now();
        let err = second
            .connect(&PeerAddr::pinned(id, addr))
            .await
            .unwrap_err();
        println!("{flags:?}, a second dial ({:?}): {err}", started.elapsed());
        assert!(
            matches!(err, ConnectError::AtLimit { limit: PeerLimit::Said(h), .. } if h == hit),
            "{err:?}"
        );
        assert!(err.to_string().contains(says), "{err}");
        // What the user of `put` reads.
        let stderr = common::run_fails(&["put", &file, "--bootstrap", &addr.to_string()]);
        println!("{flags:?}, put: {}", stderr.trim());
        assert!(stderr.contains(says), "{stderr}");
        second.shutdown().await;
        first.shutdown().await;
        drop(target);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_rate_are_refused_with_rate_limited() {
    common::init_logs();
    let a = Node::start(NodeConfig {
        max_requests_per_sec: 20,
        request_burst: 10,
        ..NodeConfig::local_test()
    })
    .await
    .unwrap();
    let ep = endpoint(ip(0, 0, 1));
    let j = join(&ep, a.local_addr(), Role::Client).await.unwrap();
    let t = Instant::now();
    let answers = all_at_once(&j.conn, 40).await;
    let elapsed = t.elapsed();
    let found = answers.iter().filter(|a| **a == Answer::NotFound).count();
    let limited = answers
        .iter()
        .filter(|a| **a == Answer::RateLimited)
        .count();
    println!("40 GETs at once in {elapsed:?}: {found} answered, {limited} rate limited");
    assert_eq!(found + limited, 40, "{answers:?}");
    // The burst, plus what the rate refilled meanwhile.
    let allowed = 10 + (elapsed.as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        found >= 10 && found <= allowed,
        "{found} answered, allowed {allowed}"
    );
    assert!(limited > 0);
    // The connection stays up, and the bucket refills.
    assert!(j.conn.close_reason().is_none());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_unknown(&j.conn).await, Answer::NotFound);
    // A peer that keeps going regardless (over twice the rate or burst
    // refused within a second) is closed with the same code.
    let _ = all_at_once(&j.conn, 200).await;
    match tokio::time::timeout(Duration::from_secs(5), j.conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, ErrorCode::RateLimited.var_int())
        }
        other => panic!("expected a RateLimited close, got {other:?}"),
    }
    a.shutdown().await;
}

/// `n` GETs for unknown hashes at once.
async fn all_at_once(conn: &quinn::Connection, n: usize) -> Vec<Answer> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let conn = conn.clone();
        tasks.spawn(async move { get_unknown(&conn).await });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.push(r.unwrap());
    }
    out
}

/// `max_streams` is QUIC's own stream limit, given to the peer in the
/// handshake: a peer with that many streams open waits for the node to close
/// one before it can open another (a peer that ignores the limit breaks QUIC
/// itself and is closed with STREAM_LIMIT_ERROR by quinn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_open_more_streams_than_max_streams() {
    common::init_logs();
    let a = Node::start(NodeConfig {
        max_streams: 4,
        ..NodeConfig::local_test()
    })
    .await
    .unwrap();
    let here = endpoint(ip(0, 1, 1));
    let joined = join(&here, a.local_addr(), Role::Client).await.unwrap();
    // The control stream is one: three more stay open, silent.
    let mut open = Vec::new();
    for _ in 0..3 {
        let (mut send, recv) = joined.conn.open_bi().await.unwrap();
        send.write_all(&[0]).await.unwrap();
        open.push((send, recv));
    }
    let blocked = tokio::time::timeout(Duration::from_millis(500), joined.conn.open_bi()).await;
    assert!(
        blocked.is_err(),
        "a fifth stream opened past max_streams = 4"
    );
    // One closes (the node gives up on a stream with no request in time, or
    // the peer resets it): the next may open.
    let (mut send, _recv) = open.pop().unwrap();
    send.reset(0u32.into()).unwrap();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), joined.conn.open_bi())
        .await
        .expect("a stream opens once one has closed")
        .unwrap();
    send.write_all(
        &wire::encode(
            &Request::Has {
                id: Hash::of(b"none"),
            },
            MAX_CONTROL_FRAME,
        )
        .unwrap(),
    )
    .await
    .unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1024).await.unwrap();
    assert!(matches!(
        wire::decode::<Response>(&answer, MAX_CONTROL_FRAME),
        Ok(Some((Response::NotFound, _)))
    ));
    a.shutdown().await;
}

/// A `--public` tree of many small files is a request per file and per
/// manifest: more than a node admits from one peer. The putter and the
/// getter are refused, pause, ask again, and both finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_more_requests_than_the_rate_admits_still_goes_both_ways() {
    let slow = |c: &mut NodeConfig| {
        c.max_requests_per_sec = 50;
        c.request_burst = 20;
    };
    let holder = common::store_node_with(&[], slow).await;
    let owner = common::store_node_with(&[&holder.node], slow).await;
    let getter = common::store_node_with(&[&holder.node], slow).await;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("many");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..80u64 {
        std::fs::write(tree.join(format!("f{i}")), common::random_bytes(512, i)).unwrap();
    }
    // About 160 requests to the holder (a manifest and a chunk per file).
    let t = Instant::now();
    let report = common::put(&owner.node, &tree, 1).await;
    println!("put of 80 files at 50 requests/s: {:?}", t.elapsed());
    let out = dir.path().join("back");
    let t = Instant::now();
    common::get_to(&getter.node, report.id, &out)
        .await
        .expect("get");
    println!("get of 80 files at 50 requests/s: {:?}", t.elapsed());
    common::assert_same_tree(&tree, &out);
    // Refused and asking again in turn, neither went so far beyond the
    // rate that the holder closed its connection.
    let holder_id = holder.node.id();
    assert!(common::connected(&owner.node, holder_id));
    assert!(common::connected(&getter.node, holder_id));
    common::shutdown(vec![getter, owner, holder]).await;
}
