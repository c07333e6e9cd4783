//! `lossy-relay`: a UDP impairment relay between real processes.
//!
//! ```text
//! cargo run --release --example lossy-relay -- \
//!     --listen 127.0.0.1:6000 --to 127.0.0.1:5000 --loss 0.2 --delay 20ms --dup 0.01
//! quic-peer --bootstrap 127.0.0.1:6000        # this node's link to :5000 is lossy
//! ```
//!
//! The shortcut flags set both directions; `--forward SPEC` / `--backward SPEC`
//! set one direction fully (`loss=0.2,dup=0.01,reorder=0.05,gap=5ms,delay=20ms,
//! jitter=5ms,rate=10M,queue=256k`). `--blackhole-after 5s --blackhole-for 10s`
//! takes the link down for a while (repeating with `--blackhole-every`).
//! Counters are printed every `--stats-every` and on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use quic_peer_relay::{
    parse_duration, parse_probability, parse_size, Impairment, Relay, RelayConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "lossy-relay",
    about = "A UDP relay that drops, duplicates, reorders, delays and rate-limits datagrams"
)]
struct Args {
    /// Address to receive datagrams on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward them to.
    #[arg(long)]
    to: SocketAddr,
    /// Drop probability, both ways (0.2 or 20%).
    #[arg(long, value_parser = parse_probability)]
    loss: Option<f64>,
    /// Duplicate probability, both ways.
    #[arg(long, value_parser = parse_probability)]
    dup: Option<f64>,
    /// Reorder probability, both ways.
    #[arg(long, value_parser = parse_probability)]
    reorder: Option<f64>,
    /// One-way delay, both ways (20ms).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Jitter on the delay, both ways.
    #[arg(long, value_parser = parse_duration)]
    jitter: Option<Duration>,
    /// Rate limit in bytes per second, both ways (10M).
    #[arg(long, value_parser = parse_size)]
    rate: Option<u64>,
    /// The whole client-to-target setting (overrides the shortcuts).
    #[arg(long)]
    forward: Option<Impairment>,
    /// The whole target-to-client setting (overrides the shortcuts).
    #[arg(long)]
    backward: Option<Impairment>,
    /// Seed of the random decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Take the link down this long after starting.
    #[arg(long, value_parser = parse_duration, requires = "blackhole_for")]
    blackhole_after: Option<Duration>,
    /// For this long.
    #[arg(long, value_parser = parse_duration, requires = "blackhole_after")]
    blackhole_for: Option<Duration>,
    /// And again this long after each outage began.
    #[arg(long, value_parser = parse_duration, requires = "blackhole_after")]
    blackhole_every: Option<Duration>,
    /// Print counters this often (0 = only at exit).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    stats_every: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut both = Impairment::default();
    if let Some(v) = args.loss {
        both.loss = v;
    }
    if let Some(v) = args.dup {
        both.duplicate = v;
    }
    if let Some(v) = args.reorder {
        both.reorder = v;
    }
    if let Some(v) = args.delay {
        both.delay = v;
    }
    if let Some(v) = args.jitter {
        both.jitter = v;
    }
    if args.rate == Some(0) {
        anyhow::bail!("--rate must be above 0");
    }
    both.rate = args.rate;
    let config = RelayConfig {
        forward: args.forward.clone().unwrap_or_else(|| both.clone()),
        backward: args.backward.clone().unwrap_or(both),
        seed: args.seed,
        ..RelayConfig::default()
    };
    let relay = Relay::start(args.listen, args.to, config.clone())
        .await
        .with_context(|| format!("cannot start the relay on {}", args.listen))?;
    println!(
        "relaying {} -> {} (seed {})\n  forward:  {}\n  backward: {}",
        relay.local_addr(),
        args.to,
        args.seed,
        config.forward,
        config.backward
    );

    if let (Some(after), Some(len)) = (args.blackhole_after, args.blackhole_for) {
        let every = args.blackhole_every;
        let relay_ref = &relay;
        let outages = async move {
            tokio::time::sleep(after).await;
            loop {
                println!("link down for {len:?}");
                relay_ref.set_blackhole(true);
                tokio::time::sleep(len).await;
                relay_ref.set_blackhole(false);
                println!("link up");
                match every {
                    Some(e) => tokio::time::sleep(e.saturating_sub(len)).await,
                    None => std::future::pending::<()>().await,
                }
            }
        };
        run(&relay, args.stats_every, outages).await;
    } else {
        run(&relay, args.stats_every, std::future::pending::<()>()).await;
    }
    print_stats(&relay);
    Ok(())
}

/// Runs until Ctrl-C, printing counters every `every`.
async fn run(relay: &Relay, every: Duration, outages: impl std::future::Future<Output = ()>) {
    tokio::pin!(outages);
    let mut tick = tokio::time::interval(if every.is_zero() {
        Duration::from_secs(86_400)
    } else {
        every
    });
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = &mut outages => {}
            _ = tick.tick() => {
                if !every.is_zero() {
                    print_stats(relay);
                }
            }
        }
    }
}

fn print_stats(relay: &Relay) {
    let s = relay.stats();
    println!(
        "clients {}\n  forward:  {}\n  backward: {}",
        s.sessions, s.forward, s.backward
    );
}
