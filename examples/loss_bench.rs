//! Get throughput against loss and delay, through the impairment relay, each
//! beside bare quinn streams through the same relay settings in the same run.
//!
//! ```text
//! cargo run --release --example loss_bench -- [--size-mib 16] [--cap 60s]
//!     [--losses 0,1,5,10,20,30] [--rtts 0,20,100]
//! ```
//!
//! For each cell (loss each way, added round-trip time) three transfers of the
//! same size cross a fresh relay with the same seed:
//! - **bare stock**: one quinn stream, quinn's default transport (Cubic, MTU
//!   discovery up to 1452), bytes discarded;
//! - **bare node**: one quinn stream with the node's own transport settings
//!   (BBR, MTU up to 6000, bounded windows), bytes discarded;
//! - **get**: a client node downloads a file from a holder through the relay:
//!   chunk streams, BLAKE3 checks, the file written to disk.
//!
//! A transfer still running after `--cap` is stopped and its rate is what it
//! moved so far (marked `>`). Everything runs in one process on loopback, so
//! the relay competes for the same two cores: compare within a row.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use quic_peer::download::{download, DownloadOptions, NoProgress, Progress, Provider};
use quic_peer::proto::manifest::DEFAULT_CHUNK_SIZE;
use quic_peer::proto::wire::Role;
use quic_peer::{Identity, Node, NodeConfig, PeerAddr};
use quic_peer_relay::{parse_duration, Impairment, Relay, RelayConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Bytes per transfer, in MiB.
    #[arg(long, default_value_t = 16)]
    size_mib: u64,
    /// Longest one transfer may run.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    cap: Duration,
    /// Loss rates each way, in percent.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5,10,20,30")]
    losses: Vec<f64>,
    /// Added round-trip times, in milliseconds (half each way).
    #[arg(long, value_delimiter = ',', default_value = "0,20,100")]
    rtts: Vec<u64>,
    /// Runs per transfer in each cell; the median is shown.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Chunk requests in flight (the download's default when not given).
    #[arg(long)]
    in_flight: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let size = args.size_mib << 20;
    let work = tempfile::tempdir()?;

    // The holder: a node with the file in its store.
    let holder = Node::start(NodeConfig {
        data_dir: Some(work.path().join("holder")),
        idle_timeout: Duration::from_secs(20),
        keep_alive: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(20),
        ..NodeConfig::local_test()
    })
    .await?;
    let src = work.path().join("payload.bin");
    write_payload(&src, size)?;
    let report = holder
        .put(
            &src,
            &quic_peer::replication::PutOptions {
                chunk_size: DEFAULT_CHUNK_SIZE.into(),
                ..quic_peer::replication::PutOptions::public(0)
            },
            Arc::new(NoProgress),
        )
        .await?;
    std::fs::remove_file(&src)?;

    let stock = BareServer::start(false).await?;
    let tuned = BareServer::start(true).await?;

    println!(
        "{} MiB per transfer, cap {:?}, median of {} runs; MB/s (1 MB = 10^6 bytes)\n",
        args.size_mib, args.cap, args.reps
    );
    println!(
        "| loss | RTT added | bare stock | bare node | get | get time | get / bare node | get / bare stock |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &rtt in &args.rtts {
        for &loss in &args.losses {
            let imp = Impairment {
                loss: loss / 100.0,
                delay: Duration::from_millis(rtt) / 2,
                ..Impairment::default()
            };
            let cfg = RelayConfig {
                seed: 7,
                ..RelayConfig::symmetric(imp)
            };
            let (mut b_stock, mut b_tuned, mut g) = (Vec::new(), Vec::new(), Vec::new());
            let out = work.path().join("out.bin");
            for _ in 0..args.reps.max(1) {
                b_stock.push(stock.measure(&cfg, size, args.cap).await?);
                b_tuned.push(tuned.measure(&cfg, size, args.cap).await?);
                g.push(
                    get_through(
                        &holder,
                        report.id,
                        &out,
                        &cfg,
                        size,
                        args.cap,
                        args.in_flight,
                    )
                    .await?,
                );
                let _ = std::fs::remove_file(&out);
                let _ = std::fs::remove_file(quic_peer::download::part_path(&out));
            }
            let (b_stock, b_tuned, g) = (median(b_stock), median(b_tuned), median(g));
            println!(
                "| {loss}% | {rtt} ms | {} | {} | {} | {} | {:.2} | {:.2} |",
                b_stock.rate(),
                b_tuned.rate(),
                g.rate(),
                g.time(),
                g.mbps() / b_tuned.mbps(),
                g.mbps() / b_stock.mbps(),
            );
        }
    }
    holder.shutdown().await;
    Ok(())
}

/// One transfer's outcome.
struct Run {
    bytes: u64,
    secs: f64,
    capped: bool,
    /// Why the transfer failed (the connection died), if it did.
    failed: Option<String>,
}

impl Run {
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
    fn rate(&self) -> String {
        if self.failed.is_some() {
            return format!("failed ({:.1})", self.mbps());
        }
        format!("{}{:.1}", if self.capped { ">" } else { "" }, self.mbps())
    }
    fn time(&self) -> String {
        if let Some(why) = &self.failed {
            format!("failed after {:.1} s: {why}", self.secs)
        } else if self.capped {
            format!("> {:.1} s", self.secs)
        } else {
            format!("{:.2} s", self.secs)
        }
    }
}

/// The run with the median rate.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.mbps().total_cmp(&b.mbps()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn write_payload(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Counts bytes as a download makes progress (for a capped run).
#[derive(Default)]
struct Count(AtomicU64);

impl Progress for Count {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A client node downloads the file from `holder` through a relay with `cfg`.
async fn get_through(
    holder: &Node,
    id: quic_peer::proto::Hash,
    out: &Path,
    cfg: &RelayConfig,
    size: u64,
    cap: Duration,
    in_flight: Option<usize>,
) -> Result<Run> {
    let relay = Relay::start("127.0.0.1:0".parse()?, holder.local_addr(), cfg.clone()).await?;
    let client = Node::start(NodeConfig {
        role: Role::Client,
        idle_timeout: Duration::from_secs(20),
        keep_alive: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(20),
        ..NodeConfig::local_test()
    })
    .await?;
    // Joining can fail at high loss (every handshake packet is a coin toss):
    // try a few times before calling the cell failed.
    let mut joined = Err(anyhow::anyhow!("not tried"));
    for _ in 0..3 {
        match client
            .connect(&PeerAddr::pinned(holder.id(), relay.local_addr()))
            .await
        {
            Ok(id) => {
                joined = Ok(id);
                break;
            }
            Err(e) => joined = Err(e.into()),
        }
    }
    let peer = match joined {
        Ok(id) => id,
        Err(e) => {
            client.shutdown().await;
            return Ok(Run {
                bytes: 0,
                secs: 0.0,
                capped: false,
                failed: Some(format!("could not join: {e}")),
            });
        }
    };
    let conn = client.connection(&peer).context("no connection")?;
    let count = Arc::new(Count::default());
    let mut opts = DownloadOptions {
        chunk_timeout: cap,
        ..DownloadOptions::default()
    };
    if let Some(n) = in_flight {
        opts.max_in_flight = n;
        opts.per_peer = n;
    }
    let start = Instant::now();
    let result = tokio::time::timeout(
        cap,
        download(
            vec![Provider { id: peer, conn }],
            id,
            out,
            &opts,
            count.clone(),
        ),
    )
    .await;
    let secs = start.elapsed().as_secs_f64();
    client.shutdown().await;
    let run = match result {
        Ok(Ok(stats)) => {
            if stats.bytes != size {
                bail!("get delivered {} of {size} bytes", stats.bytes);
            }
            Run {
                bytes: size,
                secs,
                capped: false,
                failed: None,
            }
        }
        Ok(Err(e)) => Run {
            bytes: count.0.load(Ordering::Relaxed),
            secs,
            capped: false,
            failed: Some(e.to_string()),
        },
        Err(_) => Run {
            bytes: count.0.load(Ordering::Relaxed),
            secs,
            capped: true,
            failed: None,
        },
    };
    if relay.stats().backward.bytes_out < run.bytes {
        bail!("the transfer did not cross the relay");
    }
    Ok(run)
}

/// A quinn endpoint that answers each stream's 8-byte length with that many
/// bytes.
struct BareServer {
    ep: quinn::Endpoint,
    client: quinn::Endpoint,
}

impl BareServer {
    /// `tuned`: the node's transport and endpoint settings; else quinn's stock.
    async fn start(tuned: bool) -> Result<BareServer> {
        let transport = if tuned {
            let cfg = NodeConfig {
                idle_timeout: Duration::from_secs(20),
                ..NodeConfig::default()
            };
            quic_peer::net::endpoint::transport_config(&cfg)?
        } else {
            let mut t = quinn::TransportConfig::default();
            t.max_idle_timeout(Some(Duration::from_secs(20).try_into()?));
            t
        };
        let transport = Arc::new(transport);
        let endpoint_config = || {
            if tuned {
                quic_peer::net::endpoint::endpoint_config()
            } else {
                quinn::EndpointConfig::default()
            }
        };
        let identity = Identity::generate()?;
        let (client_crypto, server_crypto) = quic_peer::crypto::tls::quic_configs(&identity)?;
        let mut server_config = quinn::ServerConfig::with_crypto(server_crypto);
        server_config.transport_config(transport.clone());
        let runtime = quinn::default_runtime().context("no runtime")?;
        let ep = quinn::Endpoint::new(
            endpoint_config(),
            Some(server_config),
            quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse()?, 4 << 20)?,
            runtime.clone(),
        )?;
        let server = ep.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let mut len = [0u8; 8];
                            if recv.read_exact(&mut len).await.is_err() {
                                return;
                            }
                            let mut left = u64::from_be_bytes(len);
                            let block = Bytes::from(vec![0x5au8; 1 << 20]);
                            while left > 0 {
                                let n = left.min(block.len() as u64) as usize;
                                if send.write_chunk(block.slice(..n)).await.is_err() {
                                    return;
                                }
                                left -= n as u64;
                            }
                            let _ = send.finish();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
        let mut client_config = quinn::ClientConfig::new(client_crypto);
        client_config.transport_config(transport);
        let mut client = quinn::Endpoint::new(
            endpoint_config(),
            None,
            quic_peer::net::endpoint::bind_socket("127.0.0.1:0".parse()?, 4 << 20)?,
            runtime,
        )?;
        client.set_default_client_config(client_config);
        Ok(BareServer { ep, client })
    }

    fn addr(&self) -> Result<SocketAddr> {
        Ok(self.ep.local_addr()?)
    }

    /// One stream of `size` bytes through a fresh relay with `cfg`.
    async fn measure(&self, cfg: &RelayConfig, size: u64, cap: Duration) -> Result<Run> {
        let relay = Relay::start("127.0.0.1:0".parse()?, self.addr()?, cfg.clone()).await?;
        let conn = self
            .client
            .connect(
                relay.local_addr(),
                quic_peer::crypto::tls::UNPINNED_SERVER_NAME,
            )?
            .await?;
        let got = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let g = got.clone();
        let transfer = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&size.to_be_bytes()).await?;
            send.finish()?;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
                g.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        };
        let result = tokio::time::timeout(cap, transfer).await;
        let secs = start.elapsed().as_secs_f64();
        conn.close(0u32.into(), b"done");
        let bytes = got.load(Ordering::Relaxed);
        let run = match result {
            Ok(Ok(())) if bytes == size => Run {
                bytes,
                secs,
                capped: false,
                failed: None,
            },
            Ok(Ok(())) => bail!("bare stream delivered {bytes} of {size} bytes"),
            Ok(Err(e)) => Run {
                bytes,
                secs,
                capped: false,
                failed: Some(e.to_string()),
            },
            Err(_) => Run {
                bytes,
                secs,
                capped: true,
                failed: None,
            },
        };
        if relay.stats().backward.bytes_out < run.bytes {
            bail!("the bare stream did not cross the relay");
        }
        Ok(run)
    }
}
