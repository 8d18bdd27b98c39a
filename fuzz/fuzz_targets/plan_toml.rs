//! Probe plans in TOML (files, and plans inside messages and results): parse and validate, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope_analysis::plan::Plan;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(plan) = Plan::from_toml(text) {
            let _ = plan.validate();
        }
    }
});
