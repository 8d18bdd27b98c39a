//! The messages of the handshake: our `version`, decoding the peer's, and BIP324 message-type encoding.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{SystemTime, UNIX_EPOCH};

use bitcoin::consensus::encode;
use bitcoin::p2p::address::Address;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_network::VersionMessage;
use bitcoin::p2p::ServiceFlags;

use punchscope_analysis::handshake::{FailureReason, PeerVersion};

/// The protocol version we announce: 70016 is the current one (wtxidrelay,
/// BIP339). `bitcoin::p2p::PROTOCOL_VERSION` is still 70001, so we set it.
pub const OUR_PROTOCOL_VERSION: u32 = 70016;

/// From this protocol version on, Bitcoin Core sends `wtxidrelay` (BIP339)
/// and `sendaddrv2` (BIP155) between `version` and `verack`.
pub const WTXID_RELAY_VERSION: u32 = 70016;

/// BIP14 user agent, e.g. `/punchscope:0.1.0/`.
pub fn user_agent() -> String {
    format!("/punchscope:{}/", env!("CARGO_PKG_VERSION"))
}

/// Our `version`: no services, height 0, no transaction relay, because
/// punchscope is not a node and must not be asked for blocks or transactions.
/// The receiver field is the peer's address when the caller knows it, like
/// Bitcoin Core does; the sender field is unspecified, also like Core.
pub fn our_version(peer: Option<SocketAddr>, nonce: u64) -> VersionMessage {
    // Core's default CService: 16 zero bytes (`::`), port 0.
    let unspecified = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut version = VersionMessage::new(
        ServiceFlags::NONE,
        timestamp,
        Address::new(&peer.unwrap_or(unspecified), ServiceFlags::NONE),
        Address::new(&unspecified, ServiceFlags::NONE),
        nonce,
        user_agent(),
        0,
    );
    version.version = OUR_PROTOCOL_VERSION;
    version.relay = false;
    version
}

/// The messages the handshake acts on; everything else is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Version(Box<VersionMessage>),
    Verack,
    Ping(u64),
    Pong(u64),
    /// Any other command (sendcmpct, feefilter, wtxidrelay, getaddr, ...),
    /// or an unknown BIP324 short id, by name.
    Other(String),
}

/// Decodes the payload of a command with the `bitcoin` crate. Only the
/// commands the handshake needs are decoded, so that a peer's valid but
/// unusual traffic (or a payload the crate rejects) cannot fail it.
pub fn decode(command: &str, payload: &[u8]) -> Result<Incoming, FailureReason> {
    let decode_error = |err: encode::Error| FailureReason::DecodeError {
        detail: format!("{command}: {err}"),
    };
    match command {
        "version" => decode_version(payload).map(|v| Incoming::Version(Box::new(v))),
        // Core ignores any payload of a verack, and so do we.
        "verack" => Ok(Incoming::Verack),
        "ping" => encode::deserialize::<u64>(payload)
            .map(Incoming::Ping)
            .map_err(decode_error),
        "pong" => encode::deserialize::<u64>(payload)
            .map(Incoming::Pong)
            .map_err(decode_error),
        other => Ok(Incoming::Other(other.to_string())),
    }
}

/// Like Bitcoin Core, accepts a `version` without the BIP37 relay byte
/// (peers older than 70001 omit it; absent means "relay") and ignores bytes
/// after it. The `bitcoin` crate requires the byte, so it is added back.
fn decode_version(payload: &[u8]) -> Result<VersionMessage, FailureReason> {
    match encode::deserialize_partial::<VersionMessage>(payload) {
        Ok((version, _consumed)) => Ok(version),
        Err(first) => {
            let mut with_relay = payload.to_vec();
            with_relay.push(1);
            match encode::deserialize::<VersionMessage>(&with_relay) {
                Ok(version) => Ok(version),
                Err(_) => Err(FailureReason::DecodeError {
                    detail: format!("version: {first}"),
                }),
            }
        }
    }
}

/// What the record keeps of the peer's `version`.
pub fn peer_version(version: &VersionMessage) -> PeerVersion {
    PeerVersion {
        user_agent: version.user_agent.clone(),
        protocol_version: version.version,
        services: version.services.to_u64(),
        start_height: version.start_height,
        relay: version.relay,
    }
}

/// BIP324 one-byte message type ids (1..=28); 0 means a 12-byte command follows.
const SHORT_IDS: [&str; 28] = [
    "addr",
    "block",
    "blocktxn",
    "cmpctblock",
    "feefilter",
    "filteradd",
    "filterclear",
    "filterload",
    "getblocks",
    "getblocktxn",
    "getdata",
    "getheaders",
    "headers",
    "inv",
    "mempool",
    "merkleblock",
    "notfound",
    "ping",
    "pong",
    "sendcmpct",
    "tx",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "addrv2",
];

/// The BIP324 short id of a command, if it has one.
pub fn short_id(command: &str) -> Option<u8> {
    SHORT_IDS
        .iter()
        .position(|c| *c == command)
        .map(|i| i as u8 + 1)
}

/// BIP324 packet contents of a message: the short id and the payload, or
/// 0x00, the command NUL-padded to 12 bytes, and the payload. The payload is
/// the `bitcoin` crate's v1 encoding of the message body.
pub fn v2_contents(message: &NetworkMessage) -> Vec<u8> {
    let command = message.cmd();
    let payload = encode::serialize(message);
    let mut out = Vec::with_capacity(13 + payload.len());
    match short_id(command) {
        Some(id) => out.push(id),
        None => {
            out.push(0);
            let mut padded = [0u8; 12];
            padded[..command.len()].copy_from_slice(command.as_bytes());
            out.extend_from_slice(&padded);
        }
    }
    out.extend_from_slice(&payload);
    out
}

/// Splits BIP324 packet contents into command and payload.
pub fn split_v2_contents(contents: &[u8]) -> Result<(String, &[u8]), FailureReason> {
    match contents.first() {
        None => Err(FailureReason::DecodeError {
            detail: "empty BIP324 packet".to_string(),
        }),
        Some(0) => {
            if contents.len() < 13 {
                return Err(FailureReason::DecodeError {
                    detail: format!(
                        "BIP324 long message type needs 13 bytes, got {}",
                        contents.len()
                    ),
                });
            }
            let command = parse_command(&contents[1..13])?;
            Ok((command, &contents[13..]))
        }
        Some(&id) => {
            let command = match SHORT_IDS.get(id as usize - 1) {
                Some(name) => name.to_string(),
                // Core ignores messages with an unassigned short id.
                None => format!("unknown short id {id}"),
            };
            Ok((command, &contents[1..]))
        }
    }
}

/// A command field: printable ASCII, then NUL padding only (as Core's
/// `IsMessageTypeValid` demands).
pub fn parse_command(field: &[u8]) -> Result<String, FailureReason> {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let (name, padding) = field.split_at(end);
    let printable = name.iter().all(|b| (0x20..=0x7e).contains(b));
    if !printable || padding.iter().any(|b| *b != 0) {
        return Err(FailureReason::Garbage {
            detail: format!("invalid command field {}", hex(field)),
        });
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_follow_bip324() {
        assert_eq!(short_id("addr"), Some(1));
        assert_eq!(short_id("ping"), Some(18));
        assert_eq!(short_id("pong"), Some(19));
        assert_eq!(short_id("addrv2"), Some(28));
        assert_eq!(short_id("version"), None);
        assert_eq!(short_id("verack"), None);
        assert_eq!(short_id("wtxidrelay"), None);
        assert_eq!(short_id("sendaddrv2"), None);
    }

    #[test]
    fn v2_contents_of_ping_and_verack() {
        let ping = v2_contents(&NetworkMessage::Ping(0x0102030405060708));
        assert_eq!(ping, [18, 8, 7, 6, 5, 4, 3, 2, 1]);
        let verack = v2_contents(&NetworkMessage::Verack);
        assert_eq!(verack, b"\x00verack\x00\x00\x00\x00\x00\x00");
        let (command, payload) = split_v2_contents(&ping).unwrap();
        assert_eq!((command.as_str(), payload.len()), ("ping", 8));
        let (command, payload) = split_v2_contents(&verack).unwrap();
        assert_eq!((command.as_str(), payload.len()), ("verack", 0));
        let (command, _) = split_v2_contents(&[200, 1]).unwrap();
        assert_eq!(command, "unknown short id 200");
        assert!(split_v2_contents(&[]).is_err());
        assert!(split_v2_contents(&[0, b'v']).is_err());
    }

    #[test]
    fn our_version_tells_the_truth() {
        let peer: SocketAddr = "127.0.0.1:8333".parse().unwrap();
        let version = our_version(Some(peer), 42);
        assert_eq!(version.version, 70016);
        assert_eq!(version.services, ServiceFlags::NONE);
        assert_eq!(version.start_height, 0);
        assert!(!version.relay);
        assert_eq!(version.nonce, 42);
        assert_eq!(version.user_agent, user_agent());
        assert!(version.user_agent.starts_with("/punchscope:"));
        assert_eq!(version.receiver.port, 8333);
        assert_eq!(
            version.receiver.address,
            std::net::Ipv4Addr::new(127, 0, 0, 1)
                .to_ipv6_mapped()
                .segments()
        );
        assert_eq!(version.sender.port, 0);
        assert_eq!(version.sender.address, [0u16; 8]);
        assert_eq!(our_version(None, 1).receiver.address, [0u16; 8]);
    }

    #[test]
    fn command_field_rules() {
        assert_eq!(parse_command(b"version\0\0\0\0\0").unwrap(), "version");
        assert!(parse_command(b"ver\0sion\0\0\0\0").is_err());
        assert!(parse_command(b"\xffersion\0\0\0\0\0").is_err());
    }
}
