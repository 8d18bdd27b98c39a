//! The raw-address scan and redaction on any text: redacted text holds no raw address, and a raw address found is among the literals listed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope_analysis::privacy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = privacy::find_raw_ip(text);
    let all = privacy::all_ips(text);
    if found.is_some() {
        assert!(!all.is_empty(), "a raw address is one of the literals");
    }
    let redacted = privacy::redact_text(text);
    assert!(
        privacy::find_raw_ip(&redacted).is_none(),
        "redaction left a raw address: {redacted:?}"
    );
});
