//! Bitcoin v1 framing: a 24-byte header checked as Bitcoin Core does, then the payload decoded by its command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope::btc::{message, v1};
use punchscope_analysis::handshake::BitcoinNetwork;

fuzz_target!(|data: &[u8]| {
    let Some((header, payload)) = data.split_first_chunk::<{ v1::HEADER_LEN }>() else {
        return;
    };
    let magic = punchscope::btc::magic(BitcoinNetwork::Mainnet);
    // Also with the right magic, so the fuzzer gets past the magic check.
    let mut with_magic = *header;
    with_magic[..4].copy_from_slice(&magic.to_bytes());
    for header in [header, &with_magic] {
        if let Ok(header) = v1::parse_header(header, magic, 1 << 20) {
            let _ = message::decode(&header.command, payload);
        }
    }
});
