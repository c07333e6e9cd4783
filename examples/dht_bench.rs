//! DHT lookups measured: real nodes on loopback (20, 60, 150 in one process)
//! and the simulator (1,000 and 10,000 nodes), in one table.
//!
//! `cargo run --release --example dht_bench`

use std::time::{Duration, Instant};

use quic_peer::dht::sim::{rounds_bound, Sim};
use quic_peer::{Node, NodeConfig};
use rand::Rng;

async fn real(n: usize, lookups: usize) -> anyhow::Result<()> {
    let config = NodeConfig {
        target_peers: 8,
        ..NodeConfig::local_test()
    };
    let first = Node::start(config.clone()).await?;
    let mut nodes = vec![first.clone()];
    for _ in 1..n {
        nodes.push(
            Node::start(NodeConfig {
                bootstrap: vec![first.addr()],
                ..config.clone()
            })
            .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !nodes
        .iter()
        .all(|x| x.dht().routing_table_len() >= 8.min(n - 1))
    {
        anyhow::ensure!(Instant::now() < deadline, "routing tables did not fill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the joins' own lookups settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sizes = |nodes: &[Node]| {
        let t: Vec<usize> = nodes.iter().map(|x| x.dht().routing_table_len()).collect();
        let c: Vec<usize> = nodes.iter().map(|x| x.connected_peers().len()).collect();
        format!(
            "table min {} max {}, connected min {} max {}",
            t.iter().min().unwrap_or(&0),
            t.iter().max().unwrap_or(&0),
            c.iter().min().unwrap_or(&0),
            c.iter().max().unwrap_or(&0)
        )
    };
    eprintln!("{n} nodes before lookups: {}", sizes(&nodes));
    let mut rng = rand::rng();
    let mut times = Vec::new();
    let mut rounds = Vec::new();
    let mut found = 0;
    for _ in 0..lookups {
        let from = &nodes[rng.random_range(0..n)];
        let target = nodes[rng.random_range(0..n)].id();
        let out = from.dht().lookup(target).await;
        if target == from.id() || out.closest.first().is_some_and(|c| c.id == target) {
            found += 1;
        }
        times.push(out.elapsed);
        rounds.push(out.rounds);
    }
    eprintln!("{n} nodes after lookups: {}", sizes(&nodes));
    times.sort();
    rounds.sort_unstable();
    println!(
        "| {n} real | {lookups} | {:.1} ms | {:.1} ms | {} | {} | {:.0}% | {} |",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() * 95 / 100].as_secs_f64() * 1000.0,
        rounds[rounds.len() / 2],
        rounds[rounds.len() * 95 / 100],
        100.0 * found as f64 / lookups as f64,
        rounds_bound(n)
    );
    for node in nodes {
        tokio::spawn(async move { node.shutdown().await });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

fn simulated(n: usize, down: f64) {
    let mut sim = Sim::new(7);
    sim.join(n);
    if down > 0.0 {
        sim.fail(down);
    }
    let r = sim.measure(1000);
    println!(
        "| {n} simulated{} | {} | - | - | {} | {} | {:.0}% | {} |",
        if down > 0.0 {
            ", 10% not answering"
        } else {
            ""
        },
        r.lookups,
        r.median_rounds,
        r.p95_rounds,
        r.success_pct(),
        rounds_bound(n)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    println!("| nodes | lookups | median latency | p95 latency | median rounds | p95 rounds | found the target | target median rounds |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [20, 60, 150] {
        real(n, 200).await?;
    }
    for n in [1_000, 10_000] {
        simulated(n, 0.0);
        simulated(n, 0.10);
    }
    Ok(())
}
