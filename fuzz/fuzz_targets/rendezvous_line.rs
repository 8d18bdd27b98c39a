//! Rendezvous protocol lines from the network: framing, then both decoders; every error must encode within the line limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punchscope::proto::rendezvous;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = rendezvous::frame(data) else {
        return;
    };
    if let Err(e) = rendezvous::decode_client(line) {
        let answer = rendezvous::encode_server(&e.to_message());
        assert!(
            answer.len() <= rendezvous::MAX_LINE,
            "{} bytes",
            answer.len()
        );
    }
    let _ = rendezvous::decode_server(line);
});
