//! Ingest benchmark of the collector: realistic 20-trial results POSTed over loopback, durably committed, into SQLite (WAL, synchronous=FULL) and into PostgreSQL (synchronous_commit=on, a local server on a Unix socket).
//!
//! Run with `cargo bench --bench collector_ingest`. Prints results per second
//! and latency percentiles for one sequential client and for many concurrent
//! ones (where group commit shares each fsync between uploads).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::collector::*;
use support::http::*;
use support::results::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// POSTs every body with `clients` threads; returns (elapsed, latencies).
fn ingest(url: &str, bodies: Arc<Vec<String>>, clients: usize) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let bodies = bodies.clone();
            let next = next.clone();
            let url = url.to_string();
            std::thread::spawn(move || {
                let agent = agent();
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return latencies;
                    };
                    let t = Instant::now();
                    let (status, text) = post(&agent, &url, body.as_bytes());
                    assert_eq!(status, 201, "{text}");
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    (elapsed, latencies)
}

fn main() {
    let sequential_n = 500;
    let concurrent_n = 5000;
    let bodies: Vec<String> = (0..sequential_n + concurrent_n)
        .map(|i| sample_result(i, 20).to_json())
        .collect();
    let mean_size = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    println!(
        "collector ingest: realistic results of 20 trials, {mean_size} bytes of JSON each, loopback"
    );
    for store in every_store() {
        println!("store: {}", store.name);
        ingest_into(&store.location, &bodies, sequential_n);
    }
}

fn ingest_into(db: &punchscope::collector::StoreLocation, bodies: &[String], sequential_n: usize) {
    // Every client is one loopback source: lift its per-source limits, which
    // a real campaign's thousands of sources never meet together.
    let collector = TestCollector::start_with(db, None, |c| {
        c.admission.uploads_burst = u32::MAX;
        c.admission.storage_burst_bytes = u32::MAX;
        c.admission.connections_per_source = 1024;
    });
    let url = collector.url();
    let (first, rest) = bodies.split_at(sequential_n);
    let runs = [(1usize, first.to_vec()), (32, rest.to_vec())];
    for (clients, bodies) in runs {
        let n = bodies.len();
        let (elapsed, latencies) = ingest(&url, Arc::new(bodies), clients);
        println!(
            "{clients:>3} client(s): {n} results in {:.2} s = {:.0} results/s durable; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    let stored = db_run_ids(db).len();
    assert_eq!(stored, bodies.len(), "every result stored");
    println!("stored: {stored} rows");
}
