//! In-memory handshakes (tokio duplex pipes): our initiator against our responder, and every failure path.
//!
//! All tests run on tokio's paused clock: it only advances when every task
//! is waiting, so a 200 ms deadline fires exactly when a peer is silent and
//! never because a busy CI machine was slow.

use std::time::Duration;

use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;
use punchscope::analysis::handshake::{
    BitcoinNetwork, FailureReason, HandshakeRecord, Phase, Role, Transport,
};
use punchscope::btc::{self, message, v1, Accept, HandshakeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

const STEP: Duration = Duration::from_millis(200);

static CONFIG: std::sync::LazyLock<HandshakeConfig> = std::sync::LazyLock::new(config);

fn config() -> HandshakeConfig {
    HandshakeConfig {
        step_timeout: STEP,
        ..HandshakeConfig::default()
    }
}

fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(64 * 1024)
}

async fn pair(
    transport: Transport,
    accept: Accept,
    config: &HandshakeConfig,
) -> (HandshakeRecord, HandshakeRecord) {
    let (a, b) = pipe();
    let (init, resp) = tokio::join!(
        btc::initiate(a, transport, config),
        btc::respond(b, accept, config)
    );
    (init.unwrap(), resp.unwrap())
}

fn assert_complete(record: &HandshakeRecord, transport: Transport, role: Role) {
    assert!(record.success, "handshake failed: {record:?}");
    assert_eq!(record.failure, None);
    assert_eq!(record.transport, Some(transport));
    assert_eq!(record.role, role);
    let peer = record.peer.as_ref().expect("peer version recorded");
    assert_eq!(peer.user_agent, message::user_agent());
    assert_eq!(peer.protocol_version, 70016);
    assert_eq!(peer.services, 0);
    assert_eq!(peer.start_height, 0);
    assert!(!peer.relay);
    assert!(record.durations.version_ms.is_some());
    assert!(record.durations.verack_ms.is_some());
    assert!(record.durations.ping_ms.is_some());
    assert!(record.bytes_sent > 0 && record.bytes_received > 0);
}

#[tokio::test(start_paused = true)]
async fn v1_initiator_and_responder_complete() {
    for network in BitcoinNetwork::ALL {
        let config = HandshakeConfig {
            network,
            ..config()
        };
        let (init, resp) = pair(Transport::V1, Accept::V1Only, &config).await;
        assert_complete(&init, Transport::V1, Role::Initiator);
        assert_complete(&resp, Transport::V1, Role::Responder);
        assert_eq!(init.network, network);
        assert_eq!(init.durations.v2_key_exchange_ms, None);
        assert_eq!(init.session_id, None);
        // Nothing else is on the wire, so one side's output is the other's input.
        assert_eq!(init.bytes_sent, resp.bytes_received);
        assert_eq!(resp.bytes_sent, init.bytes_received);
        // version (24 + 86 + user agent) + wtxidrelay (24) + sendaddrv2 (24)
        // + verack (24) + ping (32) + pong (32).
        let version_len = 24 + 86 + message::user_agent().len() as u64;
        assert_eq!(init.bytes_sent, version_len + 24 + 24 + 24 + 32 + 32);
    }
}

#[tokio::test(start_paused = true)]
async fn v2_initiator_and_responder_complete_with_matching_session_ids() {
    for network in BitcoinNetwork::ALL {
        let config = HandshakeConfig {
            network,
            v2_max_garbage: 4095,
            v2_decoys: 3,
            ..config()
        };
        let (init, resp) = pair(Transport::V2, Accept::V2Only, &config).await;
        assert_complete(&init, Transport::V2, Role::Initiator);
        assert_complete(&resp, Transport::V2, Role::Responder);
        assert!(init.durations.v2_key_exchange_ms.is_some());
        let id = init.session_id.clone().expect("session id");
        assert_eq!(id.len(), 64);
        assert_eq!(resp.session_id, Some(id));
        assert_eq!(init.bytes_sent, resp.bytes_received);
        assert_eq!(resp.bytes_sent, init.bytes_received);
    }
}

#[tokio::test(start_paused = true)]
async fn responder_accepting_both_detects_each_transport() {
    for transport in [Transport::V1, Transport::V2] {
        let (init, resp) = pair(transport, Accept::Both, &config()).await;
        assert_complete(&init, transport, Role::Initiator);
        assert_complete(&resp, transport, Role::Responder);
        assert_eq!(init.bytes_sent, resp.bytes_received);
    }
}

#[tokio::test(start_paused = true)]
async fn v2_sessions_differ_between_connections() {
    let (a, _) = pair(Transport::V2, Accept::Both, &config()).await;
    let (b, _) = pair(Transport::V2, Accept::Both, &config()).await;
    assert_ne!(a.session_id, b.session_id);
}

/// Runs our v1 initiator against a fake peer that sends `bytes` after
/// reading our version, and returns the record and the time it took.
async fn initiator_against(
    bytes: Vec<u8>,
    config: &HandshakeConfig,
) -> (HandshakeRecord, Duration) {
    let (ours, mut theirs) = pipe();
    let fake = async move {
        let mut header = [0u8; 24];
        theirs.read_exact(&mut header).await.unwrap();
        theirs.write_all(&bytes).await.unwrap();
        // Keep the pipe open until the initiator gives up.
        let mut sink = Vec::new();
        let _ = theirs.read_to_end(&mut sink).await;
    };
    let started = Instant::now();
    let (record, ()) = tokio::join!(btc::initiate(ours, Transport::V1, config), fake);
    (record.unwrap(), started.elapsed())
}

fn frame(network: BitcoinNetwork, message: NetworkMessage) -> Vec<u8> {
    v1::encode_message(btc::magic(network), message)
}

fn a_version() -> NetworkMessage {
    NetworkMessage::Version(message::our_version(None, 7))
}

fn assert_failed(record: &HandshakeRecord, phase: Phase, reason: FailureReason) {
    assert!(!record.success);
    assert_eq!(record.failed_phase, Some(phase), "{record:?}");
    assert_eq!(record.failure, Some(reason), "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn wrong_magic_is_recorded() {
    let bytes = frame(BitcoinNetwork::Testnet4, a_version());
    let (record, elapsed) = initiator_against(bytes, &config()).await;
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::WrongMagic {
            expected: "f9beb4d9".into(),
            got: "1c163f28".into(),
        },
    );
    assert!(elapsed < STEP);
}

#[tokio::test(start_paused = true)]
async fn garbage_is_recorded() {
    // Right magic, then a command field that is not NUL-padded ASCII.
    let mut bytes = btc::magic(BitcoinNetwork::Mainnet).to_bytes().to_vec();
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef].repeat(5));
    let (record, _) = initiator_against(bytes, &config()).await;
    assert_eq!(record.failed_phase, Some(Phase::Version));
    assert!(matches!(
        record.failure,
        Some(FailureReason::Garbage { .. })
    ));

    // Random bytes from the start are most likely a wrong magic.
    let (record, _) = initiator_against(vec![0x42; 100], &config()).await;
    assert!(matches!(
        record.failure,
        Some(FailureReason::WrongMagic { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn oversized_length_is_recorded_before_reading_the_payload() {
    let mut header = btc::magic(BitcoinNetwork::Mainnet).to_bytes().to_vec();
    header.extend_from_slice(b"version\0\0\0\0\0");
    header.extend_from_slice(&5_000_000u32.to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    let (record, elapsed) = initiator_against(header, &config()).await;
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::Oversized {
            len: 5_000_000,
            max: 4_000_000,
        },
    );
    assert!(elapsed < STEP);

    // A smaller configured limit applies to ordinary messages too.
    let small = HandshakeConfig {
        max_message_size: 50,
        ..config()
    };
    let version = frame(BitcoinNetwork::Mainnet, a_version());
    let payload_len = (version.len() - 24) as u64;
    let (record, _) = initiator_against(version, &small).await;
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::Oversized {
            len: payload_len,
            max: 50,
        },
    );
}

#[tokio::test(start_paused = true)]
async fn bad_checksum_is_recorded() {
    let mut bytes = frame(BitcoinNetwork::Mainnet, a_version());
    bytes[20] ^= 0xff;
    let (record, _) = initiator_against(bytes, &config()).await;
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::BadChecksum {
            command: "version".into(),
        },
    );
}

#[tokio::test(start_paused = true)]
async fn silence_times_out_at_the_deadline() {
    let (record, elapsed) = initiator_against(Vec::new(), &config()).await;
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::Timeout {
            phase: Phase::Version,
        },
    );
    assert!(elapsed >= STEP && elapsed < STEP * 2, "{elapsed:?}");

    // A peer that answers version but never verack times out in that phase.
    let mut bytes = frame(BitcoinNetwork::Mainnet, a_version());
    bytes.extend(frame(
        BitcoinNetwork::Mainnet,
        NetworkMessage::SendCmpct(bitcoin::p2p::message_compact_blocks::SendCmpct {
            send_compact: false,
            version: 2,
        }),
    ));
    let (record, elapsed) = initiator_against(bytes, &config()).await;
    assert_failed(
        &record,
        Phase::Verack,
        FailureReason::Timeout {
            phase: Phase::Verack,
        },
    );
    assert!(record.peer.is_some());
    assert!(elapsed >= STEP && elapsed < STEP * 3, "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn early_close_is_recorded() {
    // Closed before anything.
    let (ours, theirs) = pipe();
    drop(theirs);
    let record = btc::initiate(ours, Transport::V1, &config()).await.unwrap();
    assert_failed(
        &record,
        Phase::Version,
        FailureReason::PeerClosed {
            phase: Phase::Version,
        },
    );

    // Closed halfway through a header.
    let (ours, mut theirs) = pipe();
    let fake = async move {
        let mut header = [0u8; 24];
        theirs.read_exact(&mut header).await.unwrap();
        theirs.write_all(&header[..10]).await.unwrap();
    };
    let started = Instant::now();
    let (record, ()) = tokio::join!(btc::initiate(ours, Transport::V1, &CONFIG), fake);
    assert_failed(
        &record.unwrap(),
        Phase::Version,
        FailureReason::PeerClosed {
            phase: Phase::Version,
        },
    );
    assert!(started.elapsed() < STEP);
}

#[tokio::test(start_paused = true)]
async fn responder_failures_are_recorded() {
    // Silence: a responder accepting both cannot even tell the transport.
    let (ours, _theirs) = pipe();
    let record = btc::respond(ours, Accept::Both, &config()).await.unwrap();
    assert_eq!(record.transport, None);
    assert_failed(
        &record,
        Phase::Detect,
        FailureReason::Timeout {
            phase: Phase::Detect,
        },
    );

    // A v1 initiator on another network looks like v2 to a dual responder
    // (the magic differs), so it fails in the key exchange, not silently.
    let (ours, mut theirs) = pipe();
    let fake = async move {
        theirs
            .write_all(&frame(BitcoinNetwork::Regtest, a_version()))
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(STEP * 3, theirs.read_to_end(&mut sink)).await;
    };
    let (record, ()) = tokio::join!(btc::respond(ours, Accept::Both, &CONFIG), fake);
    let record = record.unwrap();
    assert_eq!(record.transport, Some(Transport::V2));
    assert_eq!(record.failed_phase, Some(Phase::V2KeyExchange));
    assert!(record.failure.is_some());
}

#[tokio::test(start_paused = true)]
async fn v2_initiator_against_v1_only_responder_is_v1_only_peer() {
    let (init, resp) = pair(Transport::V2, Accept::V1Only, &config()).await;
    assert_failed(&init, Phase::V2KeyExchange, FailureReason::V1OnlyPeer);
    assert_eq!(init.bytes_received, 0);
    assert_eq!(init.transport, Some(Transport::V2));
    // The v1 responder saw 64 random bytes where a header should be.
    assert_eq!(resp.failed_phase, Some(Phase::Version));
    assert!(matches!(
        resp.failure,
        Some(FailureReason::WrongMagic { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn v1_initiator_against_v2_only_responder_is_v1_only_peer() {
    let (init, resp) = pair(Transport::V1, Accept::V2Only, &config()).await;
    assert_failed(&resp, Phase::V2KeyExchange, FailureReason::V1OnlyPeer);
    assert!(!init.success);
}

#[tokio::test(start_paused = true)]
async fn v2_garbage_without_terminator_is_recorded() {
    let (ours, mut theirs) = pipe();
    let fake = async move {
        let mut key = [0u8; 64];
        theirs.read_exact(&mut key).await.unwrap();
        // A key (any 64 bytes decode) and then 5000 bytes of garbage.
        theirs.write_all(&[0x55; 64 + 5000]).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(STEP * 3, theirs.read_to_end(&mut sink)).await;
    };
    let (record, ()) = tokio::join!(btc::initiate(ours, Transport::V2, &CONFIG), fake);
    let record = record.unwrap();
    assert_eq!(record.failed_phase, Some(Phase::V2KeyExchange));
    assert!(
        matches!(&record.failure, Some(FailureReason::Garbage { detail }) if detail.contains("terminator")),
        "{record:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn v2_silence_times_out_in_key_exchange() {
    let (ours, _theirs) = pipe();
    let started = Instant::now();
    let record = btc::initiate(ours, Transport::V2, &config()).await.unwrap();
    assert_failed(
        &record,
        Phase::V2KeyExchange,
        FailureReason::Timeout {
            phase: Phase::V2KeyExchange,
        },
    );
    assert!(started.elapsed() >= STEP && started.elapsed() < STEP * 2);
}

#[tokio::test(start_paused = true)]
async fn v2_oversized_packet_is_recorded() {
    // Our initiator with a tiny limit against our responder: the key
    // exchange passes, the encrypted `version` is larger than the limit.
    let tiny = HandshakeConfig {
        max_message_size: 10,
        ..config()
    };
    // Decoys are packets too, and would trip the limit during the key exchange.
    let no_decoys = HandshakeConfig {
        v2_decoys: 0,
        ..config()
    };
    let (a, b) = pipe();
    let (init, resp) = tokio::join!(
        btc::initiate(a, Transport::V2, &tiny),
        btc::respond(b, Accept::V2Only, &no_decoys)
    );
    let init = init.unwrap();
    assert_eq!(init.failed_phase, Some(Phase::Version), "{init:?}");
    assert!(matches!(
        init.failure,
        Some(FailureReason::Oversized { max: 23, .. })
    ));
    assert!(!resp.unwrap().success);
}

#[tokio::test(start_paused = true)]
async fn tolerates_what_a_real_node_sends_around_the_handshake() {
    // A scripted v1 peer in Bitcoin Core's order: version, wtxidrelay,
    // sendaddrv2, verack, then sendcmpct, ping, feefilter, getheaders and an
    // unknown command before it answers our ping.
    let network = BitcoinNetwork::Mainnet;
    let magic: Magic = btc::magic(network);
    let (ours, mut theirs) = pipe();
    let fake = async move {
        let mut core_version = message::our_version(None, 99);
        core_version.user_agent = "/Satoshi:28.1.0/".into();
        core_version.services =
            bitcoin::p2p::ServiceFlags::NETWORK | bitcoin::p2p::ServiceFlags::WITNESS;
        core_version.start_height = 900_000;
        core_version.relay = true;
        let mut out = Vec::new();
        for m in [
            NetworkMessage::Version(core_version),
            NetworkMessage::WtxidRelay,
            NetworkMessage::SendAddrV2,
            NetworkMessage::Verack,
            NetworkMessage::SendCmpct(bitcoin::p2p::message_compact_blocks::SendCmpct {
                send_compact: false,
                version: 2,
            }),
            NetworkMessage::Ping(5),
            NetworkMessage::FeeFilter(1000),
            NetworkMessage::Unknown {
                command: "sendtxrcncl".try_into().unwrap(),
                payload: vec![1, 2, 3],
            },
        ] {
            out.extend(v1::encode_message(magic, m));
        }
        theirs.write_all(&out).await.unwrap();
        // Read our version, wtxidrelay, sendaddrv2, verack, pong(5) and ping;
        // answer the ping, and ping once more in the same moment, as a node
        // may: that ping must be answered too, and then we close cleanly.
        let mut got = Vec::new();
        for _ in 0..10 {
            let mut header = [0u8; 24];
            theirs.read_exact(&mut header).await.unwrap();
            let header = v1::parse_header(&header, magic, 1000).unwrap();
            let mut payload = vec![0u8; header.length as usize];
            theirs.read_exact(&mut payload).await.unwrap();
            match header.command.as_str() {
                "ping" => {
                    let nonce = u64::from_le_bytes(payload.try_into().unwrap());
                    let mut answer = v1::encode_message(magic, NetworkMessage::Pong(nonce));
                    answer.extend(v1::encode_message(magic, NetworkMessage::Ping(77)));
                    theirs.write_all(&answer).await.unwrap();
                    got.push("ping".to_string());
                }
                "pong" => {
                    let nonce = u64::from_le_bytes(payload.try_into().unwrap());
                    got.push(format!("pong {nonce}"));
                }
                other => got.push(other.to_string()),
            }
            if got.len() == 7 {
                break;
            }
        }
        // Then our side closes: end of stream, nothing more.
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        (got, rest.len())
    };
    let (record, (got, after_close)) =
        tokio::join!(btc::initiate(ours, Transport::V1, &CONFIG), fake);
    let record = record.unwrap();
    assert!(record.success, "{record:?}");
    assert_eq!(got[..4], ["version", "wtxidrelay", "sendaddrv2", "verack"]);
    let mut middle = got[4..6].to_vec();
    middle.sort();
    assert_eq!(middle, ["ping", "pong 5"]);
    assert_eq!(
        got[6], "pong 77",
        "the peer's late ping is answered before we close"
    );
    assert_eq!(after_close, 0);
    let peer = record.peer.unwrap();
    assert_eq!(peer.user_agent, "/Satoshi:28.1.0/");
    assert_eq!(peer.services, 1 | 8);
    assert_eq!(peer.start_height, 900_000);
    assert!(peer.relay);
}

#[tokio::test(start_paused = true)]
async fn v2_corrupted_packet_fails_authentication() {
    // With no garbage and no decoys the responder's key exchange is exactly
    // 64 (key) + 16 (terminator) + 20 (empty version packet) bytes; the
    // byte flipped after that lies inside its encrypted `version`.
    let quiet = HandshakeConfig {
        v2_max_garbage: 0,
        v2_decoys: 0,
        ..config()
    };
    let (init_end, mut relay_a) = pipe();
    let (mut relay_b, resp_end) = pipe();
    let relay = async move {
        let (mut a_read, mut a_write) = tokio::io::split(&mut relay_a);
        let (mut b_read, mut b_write) = tokio::io::split(&mut relay_b);
        let forward = async {
            let _ = tokio::io::copy(&mut a_read, &mut b_write).await;
            let _ = b_write.shutdown().await;
        };
        let backward = async {
            let mut offset = 0usize;
            let mut buf = [0u8; 4096];
            loop {
                let n = match b_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for (i, byte) in buf[..n].iter_mut().enumerate() {
                    if offset + i == 110 {
                        *byte ^= 0x01;
                    }
                }
                offset += n;
                if a_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = a_write.shutdown().await;
        };
        tokio::join!(forward, backward);
    };
    let (init, resp, ()) = tokio::join!(
        btc::initiate(init_end, Transport::V2, &CONFIG),
        btc::respond(resp_end, Accept::V2Only, &quiet),
        relay
    );
    let init = init.unwrap();
    assert_failed(&init, Phase::Version, FailureReason::DecryptFailed);
    assert!(init.session_id.is_some());
    assert!(!resp.unwrap().success);
}

#[tokio::test(start_paused = true)]
async fn v2_skips_decoys_and_unknown_short_ids_from_another_implementation() {
    // The peer is the bip324 crate's own high-level Protocol, sending a decoy
    // before every message and a message with an unassigned short id.
    use bip324::futures::Protocol;
    use bip324::io::Payload;

    let magic = btc::magic(BitcoinNetwork::Signet).to_bytes();
    let signet = HandshakeConfig {
        network: BitcoinNetwork::Signet,
        ..config()
    };
    let (ours, theirs) = pipe();
    let peer = async move {
        let (reader, writer) = tokio::io::split(theirs);
        let mut protocol = Protocol::new(
            magic,
            bip324::Role::Responder,
            Some(vec![7u8; 100]),
            Some(vec![vec![1u8; 10], vec![2u8; 20]]),
            reader,
            writer,
        )
        .await
        .expect("crate handshake");
        let mut core_version = message::our_version(None, 3);
        core_version.user_agent = "/bip324-crate-peer/".into();
        let messages = [
            message::v2_contents(&NetworkMessage::Version(core_version)),
            vec![250, 1, 2, 3],
            message::v2_contents(&NetworkMessage::Verack),
        ];
        let mut ours_seen = Vec::new();
        // Read our version first, as a responder must.
        let first = protocol.read().await.unwrap();
        ours_seen.push(message::split_v2_contents(first.contents()).unwrap().0);
        for contents in messages {
            protocol
                .write(&Payload::decoy(vec![0u8; 33]))
                .await
                .unwrap();
            protocol.write(&Payload::genuine(contents)).await.unwrap();
        }
        // Answer our ping (skipping the decoys the crate hands us).
        for _ in 0..10 {
            let payload = protocol.read().await.unwrap();
            if payload.packet_type() == bip324::PacketType::Decoy {
                continue;
            }
            let (command, body) = message::split_v2_contents(payload.contents()).unwrap();
            ours_seen.push(command.clone());
            if command == "ping" {
                let pong = message::v2_contents(&NetworkMessage::Pong(u64::from_le_bytes(
                    body.try_into().unwrap(),
                )));
                protocol.write(&Payload::decoy(vec![9u8; 5])).await.unwrap();
                protocol.write(&Payload::genuine(pong)).await.unwrap();
                break;
            }
        }
        ours_seen
    };
    let (record, seen) = tokio::join!(btc::initiate(ours, Transport::V2, &signet), peer);
    let record = record.unwrap();
    assert!(record.success, "{record:?}");
    assert_eq!(record.peer.unwrap().user_agent, "/bip324-crate-peer/");
    assert_eq!(
        seen,
        ["version", "wtxidrelay", "sendaddrv2", "verack", "ping"]
    );
}
