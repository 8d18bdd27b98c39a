//! What validating one upload costs the collector: time and peak memory of
//! `RunResult::from_json` (UTF-8 check, JSON parse, privacy scan, types,
//! values) on 2 MiB bodies, realistic and adversarial.
//!
//! Run with `cargo bench --bench collector_validation`. The target (issue
//! 16): a 2 MiB adversarial body validated in under 100 ms on one core of
//! the 2-core development machine. Peak memory is what the validation
//! allocates beyond the body itself, counted by a wrapping allocator; the
//! collector bounds the total by validating at most `validation_workers`
//! uploads at once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use punchscope::analysis::result::{RunResult, MAX_RESULT_BYTES};

/// The system allocator, counting bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A result whose `tool_version` string is `token` repeated up to about 2 MiB of body.
fn padded(token: &str) -> String {
    let mut value = serde_json::to_value(support::results::sample_result(1, 1)).unwrap();
    let room = MAX_RESULT_BYTES - value.to_string().len() - 64;
    value["tool_version"] = token.repeat(room / token.len()).into();
    value.to_string()
}

/// A realistic result grown to about 2 MiB by its trials (many small values).
fn many_trials() -> String {
    let mut trials = 20;
    loop {
        let body = support::results::sample_result(1, trials).to_json();
        if body.len() > MAX_RESULT_BYTES - 40_000 {
            return body;
        }
        trials += 20;
    }
}

fn main() {
    let inputs: Vec<(&str, String)> = vec![
        (
            "realistic, 20 trials (17 KB)",
            support::results::sample_result(1, 20).to_json(),
        ),
        ("realistic, grown by trials to 2 MiB", many_trials()),
        ("string of `1::1 `", padded("1::1 ")),
        ("string of `1.2.3.4 `", padded("1.2.3.4 ")),
        ("string of `203.0.113.0/24 `", padded("203.0.113.0/24 ")),
        ("string of `3405803783 `", padded("3405803783 ")),
        ("string of `0xcb007107 `", padded("0xcb007107 ")),
        ("string of `a:`", padded("a:")),
        ("string of `203．0．113．7 `", padded("203．0．113．7 ")),
    ];
    println!("validation of one upload (RunResult::from_json), median of 5 runs, peak memory beyond the body:");
    for (name, body) in &inputs {
        let mut times = Vec::new();
        let mut peak = 0;
        for _ in 0..5 {
            let before = IN_USE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let started = Instant::now();
            let verdict = RunResult::from_json(std::hint::black_box(body));
            times.push(started.elapsed().as_secs_f64() * 1e3);
            let ok = verdict.is_ok();
            drop(verdict);
            peak = PEAK.load(Ordering::Relaxed) - before;
            std::hint::black_box(ok);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  {name:<40} {:>5} KiB  {:>7.1} ms  peak {:>6.1} MiB ({:.1}x the body)",
            body.len() / 1024,
            times[2],
            peak as f64 / (1024.0 * 1024.0),
            peak as f64 / body.len() as f64
        );
    }
}
