//! v1 framing checked against fixed bytes from the protocol documentation, not against our own encoder.

use bitcoin::p2p::message::NetworkMessage;
use punchscope::analysis::handshake::{BitcoinNetwork, FailureReason};
use punchscope::btc::message::{self, Incoming};
use punchscope::btc::{self, v1};

/// The "version" hexdump from the Bitcoin wiki's "Protocol documentation"
/// page (a Satoshi 0.7.2 client, protocol 60002, no BIP37 relay byte).
/// Its checksum 358d4932 was also checked independently with Python's hashlib.
const WIKI_VERSION: &str = "
f9 be b4 d9 76 65 72 73 69 6f 6e 00 00 00 00 00
64 00 00 00 35 8d 49 32 62 ea 00 00 01 00 00 00
00 00 00 00 11 b2 d0 50 00 00 00 00 01 00 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 ff ff
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 00 00 ff ff 00 00 00 00 00 00
3b 2e b3 5d 8c e6 17 65 0f 2f 53 61 74 6f 73 68
69 3a 30 2e 37 2e 32 2f c0 3e 03 00";

fn unhex(text: &str) -> Vec<u8> {
    let digits: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn decodes_the_wiki_version_message() {
    let bytes = unhex(WIKI_VERSION);
    assert_eq!(bytes.len(), 124);
    let header: [u8; 24] = bytes[..24].try_into().unwrap();
    let magic = btc::magic(BitcoinNetwork::Mainnet);
    let header = v1::parse_header(&header, magic, btc::DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    assert_eq!(header.command, "version");
    assert_eq!(header.length, 100);
    assert_eq!(header.checksum, [0x35, 0x8d, 0x49, 0x32]);
    let payload = &bytes[24..];
    assert_eq!(v1::checksum(payload), header.checksum);

    let Incoming::Version(version) = message::decode(&header.command, payload).unwrap() else {
        panic!("not a version");
    };
    assert_eq!(version.version, 60002);
    assert_eq!(version.services.to_u64(), 1);
    assert_eq!(version.timestamp, 0x50d0b211); // 2012-12-18 18:12:33 UTC
    assert_eq!(version.nonce, 0x6517e68c5db32e3b);
    assert_eq!(version.user_agent, "/Satoshi:0.7.2/");
    assert_eq!(version.start_height, 212672);
    // No relay byte: BIP37 says that means "relay".
    assert!(version.relay);
    assert_eq!(version.receiver.services.to_u64(), 1);
    assert_eq!(version.receiver.port, 0);
    assert_eq!(version.sender.services.to_u64(), 0);

    let peer = message::peer_version(&version);
    assert_eq!(peer.protocol_version, 60002);
    assert_eq!(peer.start_height, 212672);
}

#[test]
fn reader_rejects_corrupted_wiki_bytes() {
    let bytes = unhex(WIKI_VERSION);
    let magic = btc::magic(BitcoinNetwork::Mainnet);
    // The same bytes on testnet4 have the wrong magic.
    let header: [u8; 24] = bytes[..24].try_into().unwrap();
    let testnet4 = btc::magic(BitcoinNetwork::Testnet4);
    assert_eq!(
        v1::parse_header(&header, testnet4, 1000),
        Err(FailureReason::WrongMagic {
            expected: "1c163f28".into(),
            got: "f9beb4d9".into()
        })
    );
    // A 99-byte limit rejects the 100-byte payload.
    assert_eq!(
        v1::parse_header(&header, magic, 99),
        Err(FailureReason::Oversized { len: 100, max: 99 })
    );
    // One flipped payload bit no longer matches the checksum.
    let mut payload = bytes[24..].to_vec();
    payload[50] ^= 1;
    assert_ne!(v1::checksum(&payload), [0x35, 0x8d, 0x49, 0x32]);
}

#[test]
fn our_headers_match_hand_computed_bytes() {
    // verack: empty payload; SHA256d("") starts 5df6e0e2 (checksum of every
    // empty-payload message).
    let verack = v1::encode_message(btc::magic(BitcoinNetwork::Mainnet), NetworkMessage::Verack);
    assert_eq!(
        verack,
        unhex("f9beb4d9 76657261636b000000000000 00000000 5df6e0e2")
    );

    // ping with nonce 0 on regtest: 8 zero bytes, SHA256d starts 7ef0ca62.
    let ping = v1::encode_message(btc::magic(BitcoinNetwork::Regtest), NetworkMessage::Ping(0));
    assert_eq!(
        ping,
        unhex("fabfb5da 70696e670000000000000000 08000000 7ef0ca62 0000000000000000")
    );

    // The magics of the other networks (testnet4 per BIP94).
    let pong = v1::encode_message(
        btc::magic(BitcoinNetwork::Testnet4),
        NetworkMessage::Pong(0x0807060504030201),
    );
    assert_eq!(&pong[..4], &[0x1c, 0x16, 0x3f, 0x28]);
    assert_eq!(&pong[4..16], b"pong\0\0\0\0\0\0\0\0");
    assert_eq!(&pong[24..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        btc::magic(BitcoinNetwork::Signet).to_bytes(),
        [0x0a, 0x03, 0xcf, 0x40]
    );
}

#[test]
fn our_version_payload_layout() {
    let ours = message::our_version(Some("192.0.2.1:8333".parse().unwrap()), 0x1122334455667788);
    let bytes = v1::encode_message(
        btc::magic(BitcoinNetwork::Mainnet),
        NetworkMessage::Version(ours),
    );
    let agent = message::user_agent();
    let payload = &bytes[24..];
    assert_eq!(&bytes[4..16], b"version\0\0\0\0\0");
    assert_eq!(payload.len(), 86 + agent.len());
    assert_eq!(&bytes[16..20], &(payload.len() as u32).to_le_bytes());
    assert_eq!(&payload[0..4], &70016u32.to_le_bytes());
    assert_eq!(&payload[4..12], &[0u8; 8]); // services NONE
                                            // receiver: services 0, ::ffff:192.0.2.1, port 8333 big-endian
    assert_eq!(&payload[20..28], &[0u8; 8]);
    assert_eq!(
        &payload[28..46],
        &unhex("00000000000000000000ffff c0000201 208d")[..]
    );
    // sender: all zero (services, address, port)
    assert_eq!(&payload[46..72], &[0u8; 26]);
    assert_eq!(&payload[72..80], &0x1122334455667788u64.to_le_bytes());
    assert_eq!(payload[80] as usize, agent.len());
    assert_eq!(&payload[81..81 + agent.len()], agent.as_bytes());
    let rest = &payload[81 + agent.len()..];
    assert_eq!(rest, &[0, 0, 0, 0, 0]); // start height 0, relay false
}
