//! How long the raw-address check takes on adversarial uploads: a 2 MiB
//! string made of one address-like token repeated, the worst case for a
//! scanner that compares hits with each other.
//!
//! Run with `cargo bench -p punchscope-analysis --bench privacy_scan`. Prints
//! the median of 5 runs per input, in milliseconds: finding every literal
//! (what a check would cost if it could not stop at the first raw one),
//! redacting, and the check itself (`find_raw_ip`, what the collector runs).

use std::time::Instant;

use punchscope_analysis::privacy;

const SIZE: usize = 2 * 1024 * 1024;

fn main() {
    let tokens = [
        ("IPv6-like `1::1 `", "1::1 "),
        ("IPv4 `1.2.3.4 `", "1.2.3.4 "),
        ("prefixes `203.0.113.0/24 `", "203.0.113.0/24 "),
        ("decimal `3405803783 `", "3405803783 "),
        ("hex `0xcb007107 `", "0xcb007107 "),
        ("digits and dots `1.1.1.1.1.1`", "1."),
        ("colons and hex `a:a:a:a`", "a:"),
        ("full-width dots `203．0．113．7 `", "203．0．113．7 "),
    ];
    println!(
        "raw-address scan of a {} KiB string, median of 5 runs:",
        SIZE / 1024
    );
    for (name, token) in tokens {
        let text = token.repeat(SIZE / token.len());
        let median = |run: &dyn Fn()| {
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let started = Instant::now();
                    run();
                    started.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            times[2]
        };
        let all = median(&|| {
            std::hint::black_box(privacy::all_ips(&text).len());
        });
        let redact = median(&|| {
            std::hint::black_box(privacy::redact_text(&text).len());
        });
        let check = median(&|| {
            std::hint::black_box(privacy::find_raw_ip(&text));
        });
        println!(
            "  {name:<36} check: {check:>6.1} ms   every literal: {all:>6.1} ms   redact: {redact:>6.1} ms"
        );
    }
}
