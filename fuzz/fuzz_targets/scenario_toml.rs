//! Lab scenario files in TOML: parse, resolve and validate, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope_lab::Scenario;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Scenario::parse(text);
    }
});
