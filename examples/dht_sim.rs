//! The DHT simulator: the real routing table and lookup code over 1,000 and
//! 10,000 simulated nodes (fixed seed), healthy, with 10% of nodes not
//! answering, and after churn; and healthy again with the disjoint paths
//! that provider lookups run on. Prints a table.
//!
//! `cargo run --release --example dht_sim [-- SEED]`

use quic_peer::dht::sim::{rounds_bound, Report, Sim};

fn row(n: usize, case: &str, r: &Report) {
    println!(
        "| {n} | {case} | {} | {} | {} | {:.1} | {:.1}% | {} |",
        r.lookups,
        r.median_rounds,
        r.p95_rounds,
        r.mean_requests,
        r.success_pct(),
        rounds_bound(n)
    );
}

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("| nodes | case | lookups | median rounds | p95 rounds | requests per lookup | success | target median |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in [1_000, 10_000] {
        let start = std::time::Instant::now();
        let mut sim = Sim::new(seed);
        sim.join(n);
        row(n, "healthy", &sim.measure(1000));
        sim.set_paths(quic_peer::dht::PATHS);
        let paths = format!("healthy, {} disjoint paths", quic_peer::dht::PATHS);
        row(n, &paths, &sim.measure(1000));
        sim.set_paths(1);
        // Churn: a quarter leave silently, as many new nodes join.
        let mut churned = Sim::new(seed);
        churned.join(n);
        churned.fail(0.25);
        churned.join(n / 4);
        row(
            n,
            "after churn (25% left, 25% joined)",
            &churned.measure(1000),
        );
        sim.fail(0.10);
        row(n, "10% not answering", &sim.measure(1000));
        eprintln!(
            "{n} nodes simulated in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}
