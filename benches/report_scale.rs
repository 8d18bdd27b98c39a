//! Report at scale: a synthetic JSONL campaign of 50,000 runs x 20 trials (1,000,000 trial records, 500,000 trials after joining both sides), reported by the real binary.
//!
//! Run with `cargo bench --bench report_scale`. Prints the input size, the
//! time, trial records per second and the report process's peak RSS (from
//! getrusage of the reaped child, so only punchscope is measured). `REPORT_BENCH_PAIRS`
//! changes the number of pairings (default 25,000, two runs each), and
//! `REPORT_BENCH_RESAMPLES` the bootstrap's resamples (default 1000), so
//! that the bootstrap's share of the time can be told apart.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::BufWriter;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Runs the command and returns (exit status ok, elapsed seconds, peak RSS in KiB, stdout, CPU seconds).
/// The RSS is getrusage(RUSAGE_CHILDREN)'s: the largest child this process reaped,
/// and punchscope is the only one.
fn run_measured(cmd: &mut Command) -> (bool, f64, i64, String, f64) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start punchscope");
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    }
    let status = child.wait().expect("wait for punchscope");
    let elapsed = started.elapsed().as_secs_f64();
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a valid out-pointer for the duration of the call.
    let r = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(r, 0, "getrusage failed");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = seconds(usage.ru_utime) + seconds(usage.ru_stime);
    (status.success(), elapsed, usage.ru_maxrss, text, cpu)
}

fn main() {
    let pairs: usize = std::env::var("REPORT_BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let trials = 20;
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("campaign.jsonl");
    let t = Instant::now();
    let runs = {
        let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&jsonl).unwrap());
        support::synthetic::write_synthetic_jsonl(&mut out, pairs, trials, 42)
    };
    let bytes = std::fs::metadata(&jsonl).unwrap().len();
    let records = runs * trials;
    println!(
        "report_scale: {runs} runs x {trials} trials = {records} trial records ({} trials after joining both sides), {:.0} MB of JSONL (generated in {:.1} s)",
        records / 2,
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let out = dir.path().join("report");
    let resamples = std::env::var("REPORT_BENCH_RESAMPLES").unwrap_or_else(|_| "1000".into());
    let (ok, secs, rss_kib, stdout, cpu) = run_measured(
        Command::new(env!("CARGO_BIN_EXE_punchscope"))
            .arg("report")
            .arg(&jsonl)
            .arg("--out")
            .arg(&out)
            .arg("--bootstrap-resamples")
            .arg(&resamples),
    );
    assert!(ok, "punchscope report failed");
    print!("{stdout}");
    println!(
        "report ({resamples} bootstrap resamples): {secs:.2} s ({cpu:.2} s of CPU), {:.0} trial records/s, {:.0} MB/s of JSONL, peak RSS {:.0} MiB",
        records as f64 / secs,
        bytes as f64 / 1e6 / secs,
        rss_kib as f64 / 1024.0
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["input"]["trial_records"], records as u64);
    assert_eq!(summary["input"]["trials_counted"], (records / 2) as u64);
}
