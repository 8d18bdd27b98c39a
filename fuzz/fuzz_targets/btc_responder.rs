//! A whole responder handshake fed the fuzzer's bytes as the peer's side: transport detection, v1 framing, and the BIP324 key exchange (ellswift key, garbage and its terminator search).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use punchscope::btc::{self, Accept, HandshakeConfig};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        theirs.write_all(data).await.unwrap();
        theirs.shutdown().await.unwrap();
        let config = HandshakeConfig {
            // The peer's bytes end with EOF, so no phase waits; short anyway.
            step_timeout: Duration::from_millis(200),
            max_message_size: 1 << 20,
            ..HandshakeConfig::default()
        };
        let _ = btc::respond(ours, Accept::Both, &config).await;
        drop(theirs);
    });
});
