//! A legitimate client's latency while the collector is flooded: slowloris
//! (partial headers), slow bodies, connection churn, and adversarial 2 MiB
//! uploads, each from many loopback sources, bounded in count and time.
//!
//! Run with `cargo bench --bench collector_floods`. Everything goes to
//! 127.0.0.0/8; every phase stops by itself. Per phase the legitimate
//! client (127.0.0.1) alternates `GET /healthz` and a realistic upload and
//! reports p50, p99 and max of each; figures go in docs/reliability.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use punchscope::analysis::result::MAX_RESULT_BYTES;
use support::collector::*;
use support::http::*;
use support::results::*;
use support::sockets::{connect_from, loopback};

const PHASE: Duration = Duration::from_secs(5);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The legitimate client for one phase: (healthz latencies, upload latencies, failures), ms.
fn measure(collector: &TestCollector, seed: &mut usize) -> (Vec<f64>, Vec<f64>, u32) {
    let agent = agent();
    let url = collector.url();
    let (mut health, mut uploads, mut failed) = (Vec::new(), Vec::new(), 0);
    let end = Instant::now() + PHASE;
    while Instant::now() < end {
        let started = Instant::now();
        if get(&agent, &url, "/healthz", None).0 == 200 {
            health.push(started.elapsed().as_secs_f64() * 1e3);
        } else {
            failed += 1;
        }
        *seed += 1;
        let body = sample_result(*seed, 20).to_json();
        let started = Instant::now();
        if post(&agent, &url, body.as_bytes()).0 == 201 {
            uploads.push(started.elapsed().as_secs_f64() * 1e3);
        } else {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    health.sort_by(f64::total_cmp);
    uploads.sort_by(f64::total_cmp);
    (health, uploads, failed)
}

fn report(name: &str, (health, uploads, failed): (Vec<f64>, Vec<f64>, u32)) {
    println!(
        "  {name:<44} healthz p50 {:>6.1} p99 {:>6.1} max {:>6.1} ms | upload p50 {:>6.1} p99 {:>6.1} max {:>6.1} ms ({} stored) | failed {failed}",
        percentile(&health, 0.5),
        percentile(&health, 0.99),
        health.last().copied().unwrap_or(f64::NAN),
        percentile(&uploads, 0.5),
        percentile(&uploads, 0.99),
        uploads.last().copied().unwrap_or(f64::NAN),
        uploads.len(),
    );
}

/// `count` connections from 20-per-source loopback addresses under 127.`net`/16, each sent `bytes`.
fn hold(collector: &TestCollector, net: u8, count: u32, bytes: &[u8]) -> Vec<std::net::TcpStream> {
    (0..count)
        .map(|i| {
            let source = loopback(net, (i / 20 / 250) as u8, (i / 20 % 250 + 1) as u8);
            let mut stream = connect_from(source, collector.addr);
            let _ = stream.write_all(bytes);
            stream
        })
        .collect()
}

/// Runs `work` on `threads` threads until the phase ends.
fn flood(threads: u8, work: impl Fn(u8, u32) + Send + Sync + 'static) -> impl FnOnce() {
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let work = work.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    work(t, n);
                    n += 1;
                }
            })
        })
        .collect();
    move || {
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
    }
}

fn main() {
    punchscope::net::socket::raise_fd_limit().expect("open-file limit");
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        // The bench's own client uploads many results from 127.0.0.1.
        c.admission.uploads_burst = 100_000;
    });
    let addr = collector.addr;
    let mut seed = 0;
    println!("a legitimate client on 127.0.0.1 during {PHASE:?} of each flood (in-process collector, 2 cores shared with the flood):");
    report("no flood", measure(&collector, &mut seed));

    let slowloris = hold(
        &collector,
        1,
        1000,
        b"POST /v1/results HTTP/1.1\r\nHost: c\r\nContent-Le",
    );
    report(
        "1,000 slowloris (partial headers, 50 sources)",
        measure(&collector, &mut seed),
    );
    drop(slowloris);

    let slow_bodies = hold(
        &collector,
        2,
        1000,
        b"POST /v1/results HTTP/1.1\r\nHost: c\r\nContent-Length: 100000\r\n\r\n{",
    );
    report(
        "1,000 slow bodies (headers + 1 byte, 50 sources)",
        measure(&collector, &mut seed),
    );
    drop(slow_bodies);

    let stop = flood(4, move |t, n| {
        let source = loopback(3, t, (n % 250 + 1) as u8);
        let stream = connect_from(source, addr);
        drop(stream);
    });
    report(
        "connection churn (4 threads, 1,000 sources)",
        measure(&collector, &mut seed),
    );
    stop();

    let mut value = serde_json::to_value(sample_result(1, 1)).unwrap();
    let room = MAX_RESULT_BYTES - value.to_string().len() - 64;
    value["tool_version"] = "1::1 ".repeat(room / 5).into();
    let adversarial = Arc::new(value.to_string());
    let stop = flood(4, move |t, n| {
        let source = loopback(4, t, (n % 250 + 1) as u8);
        let _ = post_from(source, addr, adversarial.as_bytes());
    });
    report(
        "adversarial 2 MiB uploads (4 at a time)",
        measure(&collector, &mut seed),
    );
    stop();
}
