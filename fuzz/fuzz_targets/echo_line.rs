//! Echo protocol lines from the network: framing, then both decoders (the server reads requests, the client reads server lines); every error must encode within the line limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope::proto::echo;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = echo::frame(data) else {
        return;
    };
    if let Err(e) = echo::decode_request(line) {
        let answer = echo::encode_server(&e.to_message());
        assert!(answer.len() <= echo::MAX_LINE, "{} bytes", answer.len());
    }
    let _ = echo::decode_server(line);
});
