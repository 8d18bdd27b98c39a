//! The BIP324 v2 packet path after decryption: contents split into a (short id or 12-byte) command and payload, then decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope::btc::message;

fuzz_target!(|data: &[u8]| {
    if let Ok((command, payload)) = message::split_v2_contents(data) {
        let _ = message::decode(&command, payload);
    }
});
