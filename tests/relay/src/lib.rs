//! A UDP impairment relay for tests, benchmarks and the `lossy-relay` example.
//!
//! The kernel on our test machines has no netem, so bad links are made in user
//! space: the relay listens on one address and forwards every datagram to a
//! target, and each direction can drop, duplicate, reorder, delay (with jitter)
//! and rate-limit datagrams, or be blackholed for a while. Decisions come from a
//! seeded random source, one per direction, so a failing run can be repeated.
//!
//! Each client address gets its own upstream socket (connected to the target),
//! so replies find their way back to the client that sent the request, and
//! several nodes can share one relay.
//!
//! ```text
//!  client ──▶ front socket ──[forward shaper]──▶ upstream socket ──▶ target
//!  client ◀── front socket ◀──[backward shaper]── upstream socket ◀── target
//! ```
//!
//! Counters ([`RelayStats`]) let a test prove its traffic really crossed the
//! relay; an optional capture keeps the datagrams so a test can look at what an
//! observer on the path would see.

#![deny(missing_docs)]

use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What one direction of the link does to datagrams.
#[derive(Clone, Debug, PartialEq)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a forwarded datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_gap`, so later ones
    /// overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_gap: Duration,
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// Link rate in bytes per second; `None` is unlimited.
    pub rate: Option<u64>,
    /// Bytes that may wait behind the rate limit before datagrams are dropped
    /// (a router's queue).
    pub queue: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_gap: Duration::from_millis(5),
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate: None,
            queue: 256 << 10,
        }
    }
}

impl Impairment {
    /// A link that drops `loss` of its datagrams and does nothing else.
    pub fn loss(loss: f64) -> Self {
        Impairment {
            loss,
            ..Impairment::default()
        }
    }

    /// Whether every datagram can be sent the moment it arrives.
    fn is_immediate(&self) -> bool {
        self.reorder == 0.0 && self.delay.is_zero() && self.jitter.is_zero() && self.rate.is_none()
    }

    fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("dup", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be between 0 and 1, not {p}"));
            }
        }
        if self.rate == Some(0) {
            return Err("rate must be above 0".into());
        }
        Ok(())
    }
}

/// Parses `loss=0.2,dup=0.01,reorder=0.05,gap=5ms,delay=20ms,jitter=5ms,rate=10M,queue=256k`.
/// Every key is optional; durations take `us`, `ms` or `s` (bare numbers are
/// milliseconds); sizes take `k`, `M` or `G` (powers of 1000).
impl FromStr for Impairment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut imp = Impairment::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match key.trim() {
                "loss" => imp.loss = parse_probability(value)?,
                "dup" | "duplicate" => imp.duplicate = parse_probability(value)?,
                "reorder" => imp.reorder = parse_probability(value)?,
                "gap" | "reorder_gap" => imp.reorder_gap = parse_duration(value)?,
                "delay" => imp.delay = parse_duration(value)?,
                "jitter" => imp.jitter = parse_duration(value)?,
                "rate" => imp.rate = Some(parse_size(value)?),
                "queue" => imp.queue = parse_size(value)?,
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        imp.check()?;
        Ok(imp)
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={},dup={},reorder={},gap={}us,delay={}us,jitter={}us,queue={}",
            self.loss,
            self.duplicate,
            self.reorder,
            self.reorder_gap.as_micros(),
            self.delay.as_micros(),
            self.jitter.as_micros(),
            self.queue
        )?;
        if let Some(rate) = self.rate {
            write!(f, ",rate={rate}")?;
        }
        Ok(())
    }
}

/// Parses a probability: `0.2` or `20%`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let p = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a probability (0.2 or 20%)"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{s:?} is not between 0 and 1"))
    }
}

/// Parses a duration: `250us`, `20ms`, `1.5s`, or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1e-3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (20ms, 1.5s)"))?;
    if !(0.0..=86_400.0 / scale).contains(&v) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parses a size or rate: `1500`, `64k`, `10M`, `1G` (powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, scale) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (1500, 64k, 10M)"))?;
    if !(0.0..1e15).contains(&(v * scale)) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok((v * scale) as u64)
}

/// How a relay treats traffic.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Client to target.
    pub forward: Impairment,
    /// Target to client.
    pub backward: Impairment,
    /// Seed of the random decisions (each direction derives its own).
    pub seed: u64,
    /// Keep copies of up to this many bytes of datagrams (both directions).
    pub capture: usize,
    /// Most client addresses served at once.
    pub max_sessions: usize,
    /// UDP socket buffer size asked for.
    pub socket_buffer: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            forward: Impairment::default(),
            backward: Impairment::default(),
            seed: 1,
            capture: 0,
            max_sessions: 256,
            socket_buffer: 4 << 20,
        }
    }
}

impl RelayConfig {
    /// The same impairment both ways.
    pub fn symmetric(imp: Impairment) -> Self {
        RelayConfig {
            forward: imp.clone(),
            backward: imp,
            ..RelayConfig::default()
        }
    }
}

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to target.
    Forward,
    /// Target to client.
    Backward,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent on (duplicates included).
    pub datagrams_out: u64,
    /// Bytes sent on (duplicates included).
    pub bytes_out: u64,
    /// Dropped by the loss setting.
    pub dropped_loss: u64,
    /// Dropped because the link was blackholed.
    pub dropped_blackhole: u64,
    /// Dropped because the queue behind the rate limit was full.
    pub dropped_queue: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Held back so later datagrams overtook them.
    pub reordered: u64,
    /// Sends the OS refused.
    pub send_errors: u64,
}

impl DirStats {
    /// The share of received datagrams dropped by the loss setting.
    pub fn loss_rate(&self) -> f64 {
        if self.datagrams_in == 0 {
            0.0
        } else {
            self.dropped_loss as f64 / self.datagrams_in as f64
        }
    }
}

impl fmt::Display for DirStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {} dgrams / {} B, out {} / {} B, lost {} ({:.1}%), blackholed {}, queue drops {}, dup {}, reordered {}",
            self.datagrams_in,
            self.bytes_in,
            self.datagrams_out,
            self.bytes_out,
            self.dropped_loss,
            100.0 * self.loss_rate(),
            self.dropped_blackhole,
            self.dropped_queue,
            self.duplicated,
            self.reordered
        )
    }
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to target.
    pub forward: DirStats,
    /// Target to client.
    pub backward: DirStats,
    /// Client addresses seen.
    pub sessions: u64,
}

impl RelayStats {
    /// Bytes sent on in both directions.
    pub fn bytes_out(&self) -> u64 {
        self.forward.bytes_out + self.backward.bytes_out
    }
}

#[derive(Default)]
struct Counters {
    datagrams_in: AtomicU64,
    bytes_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_out: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_blackhole: AtomicU64,
    dropped_queue: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            datagrams_in: self.datagrams_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            datagrams_out: self.datagrams_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_blackhole: self.dropped_blackhole.load(Relaxed),
            dropped_queue: self.dropped_queue.load(Relaxed),
            duplicated: self.duplicated.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
        }
    }
}

/// One direction's settings and counters.
struct Link {
    impairment: Mutex<Impairment>,
    blackhole: AtomicBool,
    counters: Counters,
}

struct Shared {
    forward: Link,
    backward: Link,
    sessions: AtomicU64,
    capture: Mutex<(usize, Vec<Bytes>)>,
    capture_limit: usize,
}

impl Shared {
    fn link(&self, dir: Direction) -> &Link {
        match dir {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    fn capture(&self, data: &Bytes) {
        if self.capture_limit == 0 {
            return;
        }
        let mut c = lock(&self.capture);
        if c.0 + data.len() <= self.capture_limit {
            c.0 += data.len();
            c.1.push(data.clone());
        }
    }
}

/// Binds a UDP socket with `buffer`-byte send and receive buffers asked of the
/// kernel (it may grant less: `net.core.rmem_max`).
fn bind_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running relay; dropping it stops it.
pub struct Relay {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    target: SocketAddr,
    stop: CancellationToken,
}

impl Relay {
    /// Binds `listen` and relays to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        config: RelayConfig,
    ) -> std::io::Result<Relay> {
        let socket = bind_socket(listen, config.socket_buffer)?;
        Relay::start_on(socket, target, config)
    }

    /// Relays from an already bound socket to `target`: bind first when the
    /// relay's address must be known before the target exists (a node that
    /// advertises its relay). Must be called inside a tokio runtime.
    pub fn start_on(
        socket: std::net::UdpSocket,
        target: SocketAddr,
        config: RelayConfig,
    ) -> std::io::Result<Relay> {
        for imp in [&config.forward, &config.backward] {
            imp.check().map_err(std::io::Error::other)?;
        }
        socket.set_nonblocking(true)?;
        let front = Arc::new(UdpSocket::from_std(socket)?);
        let local_addr = front.local_addr()?;
        let link = |imp: Impairment| Link {
            impairment: Mutex::new(imp),
            blackhole: AtomicBool::new(false),
            counters: Counters::default(),
        };
        let shared = Arc::new(Shared {
            forward: link(config.forward.clone()),
            backward: link(config.backward.clone()),
            sessions: AtomicU64::new(0),
            capture: Mutex::new((0, Vec::new())),
            capture_limit: config.capture,
        });
        let stop = CancellationToken::new();
        let (fwd_tx, fwd_rx) = mpsc::channel(8192);
        let (back_tx, back_rx) = mpsc::channel(8192);
        tokio::spawn(shape(
            shared.clone(),
            Direction::Forward,
            StdRng::seed_from_u64(config.seed),
            fwd_rx,
            front.clone(),
            stop.clone(),
        ));
        tokio::spawn(shape(
            shared.clone(),
            Direction::Backward,
            StdRng::seed_from_u64(config.seed ^ 0x9E37_79B9_7F4A_7C15),
            back_rx,
            front.clone(),
            stop.clone(),
        ));
        tokio::spawn(front_loop(
            shared.clone(),
            front,
            target,
            config,
            fwd_tx,
            back_tx,
            stop.clone(),
        ));
        debug!(%local_addr, %target, "relay started");
        Ok(Relay {
            shared,
            local_addr,
            target,
            stop,
        })
    }

    /// Where clients send datagrams.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where datagrams go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forward: self.shared.forward.counters.snapshot(),
            backward: self.shared.backward.counters.snapshot(),
            sessions: self.shared.sessions.load(Relaxed),
        }
    }

    /// Drops every datagram both ways (`true`) or restores the link.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.forward.blackhole.store(on, Relaxed);
        self.shared.backward.blackhole.store(on, Relaxed);
        debug!(relay = %self.local_addr, on, "blackhole");
    }

    /// Whether the link is blackholed now.
    pub fn is_blackholed(&self) -> bool {
        self.shared.forward.blackhole.load(Relaxed)
    }

    /// Blackholes the link now and restores it after `d`.
    pub fn blackhole_for(&self, d: Duration) {
        self.set_blackhole(true);
        let shared = self.shared.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => {
                    shared.forward.blackhole.store(false, Relaxed);
                    shared.backward.blackhole.store(false, Relaxed);
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Changes what one direction does, from the next datagram on.
    pub fn set_impairment(&self, dir: Direction, imp: Impairment) -> Result<(), String> {
        imp.check()?;
        *lock(&self.shared.link(dir).impairment) = imp;
        Ok(())
    }

    /// Changes what both directions do.
    pub fn set_both(&self, imp: Impairment) -> Result<(), String> {
        self.set_impairment(Direction::Forward, imp.clone())?;
        self.set_impairment(Direction::Backward, imp)
    }

    /// The datagrams captured so far (both directions, up to the capture limit).
    pub fn captured(&self) -> Vec<Bytes> {
        lock(&self.shared.capture).1.clone()
    }

    /// Stops relaying.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a shaped datagram goes.
enum Out {
    /// Up to the target, on a session's connected socket.
    Up(Arc<UdpSocket>),
    /// Back to a client, from the front socket.
    Down(SocketAddr),
}

/// Receives from clients, creating a session (upstream socket and its reader)
/// for each new client address.
async fn front_loop(
    shared: Arc<Shared>,
    front: Arc<UdpSocket>,
    target: SocketAddr,
    config: RelayConfig,
    fwd: mpsc::Sender<(Out, Bytes)>,
    back: mpsc::Sender<(Out, Bytes)>,
    stop: CancellationToken,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            r = front.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep going.
                    debug!("relay receive: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let up = match sessions.get(&from) {
            Some(up) => up.clone(),
            None => {
                if sessions.len() >= config.max_sessions {
                    warn!(%from, "relay: too many clients; datagram dropped");
                    continue;
                }
                let bind = if target.is_ipv4() {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                } else {
                    SocketAddr::from(([0u16; 8], 0))
                };
                let up = match bind_socket(bind, config.socket_buffer).and_then(|s| {
                    s.set_nonblocking(true)?;
                    UdpSocket::from_std(s)
                }) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        warn!("relay: cannot open an upstream socket: {e}");
                        continue;
                    }
                };
                if let Err(e) = up.connect(target).await {
                    warn!(%target, "relay: cannot reach the target: {e}");
                    continue;
                }
                shared.sessions.fetch_add(1, Relaxed);
                tokio::spawn(back_loop(up.clone(), from, back.clone(), stop.clone()));
                sessions.insert(from, up.clone());
                up
            }
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        if fwd.send((Out::Up(up), data)).await.is_err() {
            return;
        }
    }
}

/// Receives the target's replies to one client.
async fn back_loop(
    up: Arc<UdpSocket>,
    client: SocketAddr,
    back: mpsc::Sender<(Out, Bytes)>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            r = up.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    debug!("relay upstream receive: {e}");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        if back.send((Out::Down(client), data)).await.is_err() {
            return;
        }
    }
}

/// A datagram waiting for its time.
struct Pending {
    due: Instant,
    seq: u64,
    out: Out,
    data: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the earliest.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// One direction's shaper: applies the impairment and sends each datagram on
/// at its time.
async fn shape(
    shared: Arc<Shared>,
    dir: Direction,
    mut rng: StdRng,
    mut rx: mpsc::Receiver<(Out, Bytes)>,
    front: Arc<UdpSocket>,
    stop: CancellationToken,
) {
    let link = shared.link(dir);
    let c = &link.counters;
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut seq = 0u64;
    // When the rate-limited link is next free to start sending.
    let mut next_free = Instant::now();
    loop {
        let next_due = heap.peek().map(|p| p.due);
        let msg = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|p| p.due <= now) {
                    let Some(p) = heap.pop() else { break };
                    if link.blackhole.load(Relaxed) {
                        c.dropped_blackhole.fetch_add(1, Relaxed);
                    } else {
                        send(&front, c, p.out, &p.data).await;
                    }
                }
                continue;
            }
            msg = rx.recv() => msg,
        };
        let Some((out, data)) = msg else { return };
        c.datagrams_in.fetch_add(1, Relaxed);
        c.bytes_in.fetch_add(data.len() as u64, Relaxed);
        shared.capture(&data);
        if link.blackhole.load(Relaxed) {
            c.dropped_blackhole.fetch_add(1, Relaxed);
            continue;
        }
        let imp = lock(&link.impairment).clone();
        if imp.loss > 0.0 && rng.random::<f64>() < imp.loss {
            c.dropped_loss.fetch_add(1, Relaxed);
            continue;
        }
        let copies = if imp.duplicate > 0.0 && rng.random::<f64>() < imp.duplicate {
            c.duplicated.fetch_add(1, Relaxed);
            2
        } else {
            1
        };
        if imp.is_immediate() && heap.is_empty() {
            for _ in 0..copies {
                send(&front, c, out.clone_ref(), &data).await;
            }
            continue;
        }
        let now = Instant::now();
        let mut depart = now;
        if let Some(rate) = imp.rate {
            let start = next_free.max(now);
            let backlog = start.duration_since(now);
            if backlog.as_secs_f64() * rate as f64 > imp.queue as f64 {
                c.dropped_queue.fetch_add(1, Relaxed);
                continue;
            }
            depart = start + Duration::from_secs_f64(data.len() as f64 / rate as f64);
            next_free = depart;
        }
        for _ in 0..copies {
            let mut due = depart + imp.delay;
            if !imp.jitter.is_zero() {
                let j = imp.jitter.as_secs_f64();
                let off = rng.random_range(-j..=j);
                due = if off >= 0.0 {
                    due + Duration::from_secs_f64(off)
                } else {
                    due.checked_sub(Duration::from_secs_f64(-off))
                        .unwrap_or(depart)
                        .max(depart)
                };
            }
            if imp.reorder > 0.0 && rng.random::<f64>() < imp.reorder {
                c.reordered.fetch_add(1, Relaxed);
                due += imp.reorder_gap;
            }
            seq += 1;
            heap.push(Pending {
                due,
                seq,
                out: out.clone_ref(),
                data: data.clone(),
            });
        }
    }
}

impl Out {
    fn clone_ref(&self) -> Out {
        match self {
            Out::Up(s) => Out::Up(s.clone()),
            Out::Down(a) => Out::Down(*a),
        }
    }
}

async fn send(front: &UdpSocket, c: &Counters, out: Out, data: &[u8]) {
    let r = match out {
        Out::Up(up) => up.send(data).await,
        Out::Down(to) => front.send_to(data, to).await,
    };
    match r {
        Ok(n) => {
            c.datagrams_out.fetch_add(1, Relaxed);
            c.bytes_out.fetch_add(n as u64, Relaxed);
        }
        Err(_) => {
            c.send_errors.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impairment_specs_parse() {
        let imp: Impairment = "loss=0.2, dup=1%, reorder=0.05, gap=3ms, delay=20ms, jitter=500us, rate=10M, queue=64k"
            .parse()
            .unwrap();
        assert_eq!(imp.loss, 0.2);
        assert_eq!(imp.duplicate, 0.01);
        assert_eq!(imp.reorder, 0.05);
        assert_eq!(imp.reorder_gap, Duration::from_millis(3));
        assert_eq!(imp.delay, Duration::from_millis(20));
        assert_eq!(imp.jitter, Duration::from_micros(500));
        assert_eq!(imp.rate, Some(10_000_000));
        assert_eq!(imp.queue, 64_000);
        assert_eq!("".parse::<Impairment>().unwrap(), Impairment::default());
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_millis(7));
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "loss=1.5",
            "loss=-0.1",
            "loss",
            "delay=fast",
            "rate=0",
            "colour=blue",
            "jitter=-3ms",
            "dup=NaN",
        ] {
            assert!(bad.parse::<Impairment>().is_err(), "{bad} accepted");
        }
    }

    async fn echo_server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    /// Sends `n` numbered datagrams through the relay to an echo server and
    /// returns the numbers that came back, in arrival order.
    async fn round_trip(relay: &Relay, n: u32) -> Vec<u32> {
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        client.connect(relay.local_addr()).await.unwrap();
        let rx = client.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while let Ok(Ok(len)) =
                tokio::time::timeout(Duration::from_millis(300), rx.recv(&mut buf)).await
            {
                assert_eq!(len, 4);
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
            got
        });
        for i in 0..n {
            client.send(&i.to_be_bytes()).await.unwrap();
            if i % 32 == 31 {
                // Pace a little so socket buffers never overflow.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn clean_relay_forwards_everything_in_order() {
        let target = echo_server().await;
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            RelayConfig::default(),
        )
        .await
        .unwrap();
        let got = round_trip(&relay, 2000).await;
        assert_eq!(got, (0..2000).collect::<Vec<_>>());
        let s = relay.stats();
        assert_eq!(s.forward.datagrams_out, 2000);
        assert_eq!(s.backward.datagrams_out, 2000);
        assert_eq!(s.sessions, 1);
    }

    #[tokio::test]
    async fn loss_is_near_the_setting_and_repeatable_by_seed() {
        let target = echo_server().await;
        let cfg = RelayConfig {
            forward: Impairment::loss(0.2),
            seed: 42,
            ..RelayConfig::default()
        };
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = Relay::start(listen, target, cfg.clone()).await.unwrap();
        let got_a = round_trip(&a, 4000).await;
        let b = Relay::start(listen, target, cfg).await.unwrap();
        let got_b = round_trip(&b, 4000).await;
        let rate = a.stats().forward.loss_rate();
        assert!((0.17..0.23).contains(&rate), "loss rate {rate}");
        assert_eq!(got_a, got_b, "same seed, same drops");
        assert_eq!(a.stats().backward.dropped_loss, 0);
    }

    #[tokio::test]
    async fn duplicates_reorders_and_delays() {
        let target = echo_server().await;
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            RelayConfig {
                forward: "dup=0.1,reorder=0.1,gap=4ms,delay=10ms,jitter=2ms"
                    .parse()
                    .unwrap(),
                ..RelayConfig::default()
            },
        )
        .await
        .unwrap();
        let start = Instant::now();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.local_addr()).await.unwrap();
        client.send(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        client.recv(&mut buf).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(8), "delay applied");

        let got = round_trip(&relay, 1000).await;
        let s = relay.stats();
        assert!(s.forward.duplicated > 50, "{s:?}");
        assert!(s.forward.reordered > 50, "{s:?}");
        assert_eq!(got.len() as u64, 1000 + s.forward.duplicated);
        let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions > 20, "reordered: {inversions} inversions");
    }

    #[tokio::test]
    async fn rate_limit_and_blackhole() {
        let target = echo_server().await;
        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            target,
            RelayConfig {
                // 200 kB/s with a 4 kB queue: a burst of 1000 x 1 kB mostly drops.
                forward: "rate=200k,queue=4k".parse().unwrap(),
                ..RelayConfig::default()
            },
        )
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.local_addr()).await.unwrap();
        for _ in 0..1000 {
            client.send(&[7u8; 1000]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let s = relay.stats();
        assert!(s.forward.dropped_queue > 500, "{s:?}");

        relay.blackhole_for(Duration::from_millis(300));
        client.send(b"gone").await.unwrap();
        let mut buf = [0u8; 2000];
        assert!(
            tokio::time::timeout(Duration::from_millis(150), async {
                loop {
                    let n = client.recv(&mut buf).await.unwrap();
                    if &buf[..n] == b"gone" {
                        break;
                    }
                }
            })
            .await
            .is_err(),
            "blackholed datagram arrived"
        );
        assert!(relay.stats().forward.dropped_blackhole >= 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!relay.is_blackholed());
        client.send(b"back").await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let n = client.recv(&mut buf).await.unwrap();
                if &buf[..n] == b"back" {
                    break;
                }
            }
        })
        .await
        .expect("the restored link carries datagrams again");
    }
}
