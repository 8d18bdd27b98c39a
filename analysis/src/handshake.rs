//! Records of one Bitcoin P2P handshake (v1 plain or BIP324 v2), as measured by `punchscope`.
//!
//! A handshake that fails is still a measurement: the record says which
//! phase failed and why ([`FailureReason`]), so reports can tell a NAT that
//! broke the connection from a peer that speaks another protocol.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which P2P transport the handshake used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The original unencrypted framing (magic, command, length, checksum).
    V1,
    /// BIP324 encrypted transport.
    V2,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::V1 => "v1",
            Transport::V2 => "v2",
        })
    }
}

/// Which side of the connection we were. BIP324 needs exactly one initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sent the first bytes (the `version` in v1, the public key in v2).
    Initiator,
    /// Answered.
    Responder,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        })
    }
}

/// The Bitcoin network whose magic bytes frame (v1) or key (v2) the messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BitcoinNetwork {
    /// Magic f9beb4d9.
    #[default]
    Mainnet,
    /// BIP94 testnet4, magic 1c163f28.
    Testnet4,
    /// The default signet, magic 0a03cf40.
    Signet,
    /// Regtest, magic fabfb5da.
    Regtest,
}

impl BitcoinNetwork {
    /// Every value, in declaration order.
    pub const ALL: [BitcoinNetwork; 4] = [
        BitcoinNetwork::Mainnet,
        BitcoinNetwork::Testnet4,
        BitcoinNetwork::Signet,
        BitcoinNetwork::Regtest,
    ];

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BitcoinNetwork::Mainnet => "mainnet",
            BitcoinNetwork::Testnet4 => "testnet4",
            BitcoinNetwork::Signet => "signet",
            BitcoinNetwork::Regtest => "regtest",
        }
    }
}

impl fmt::Display for BitcoinNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A network name that is none of [`BitcoinNetwork::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Bitcoin network {0:?} (expected mainnet, testnet4, signet or regtest)")]
pub struct UnknownNetwork(pub String);

impl FromStr for BitcoinNetwork {
    type Err = UnknownNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mainnet" | "main" | "bitcoin" => Ok(BitcoinNetwork::Mainnet),
            "testnet4" => Ok(BitcoinNetwork::Testnet4),
            "signet" => Ok(BitcoinNetwork::Signet),
            "regtest" => Ok(BitcoinNetwork::Regtest),
            _ => Err(UnknownNetwork(s.to_string())),
        }
    }
}

/// The steps of a handshake, each with its own deadline and duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Responder only, accepting both transports: reading the first 16 bytes
    /// to tell v1 from v2.
    Detect,
    /// BIP324: public keys, garbage, garbage terminators, version packets.
    V2KeyExchange,
    /// Sending our `version` and receiving the peer's.
    Version,
    /// Sending our `verack` and receiving the peer's.
    Verack,
    /// One `ping` of ours answered by a `pong` with the same nonce.
    Ping,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Detect => "transport detection",
            Phase::V2KeyExchange => "v2 key exchange",
            Phase::Version => "version exchange",
            Phase::Verack => "verack exchange",
            Phase::Ping => "ping/pong",
        })
    }
}

/// Why a handshake did not complete. These are measurement outcomes, not
/// program errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FailureReason {
    /// The phase's deadline passed before the peer sent what it needed.
    #[error("timed out during {phase}")]
    Timeout { phase: Phase },
    /// The peer closed the connection (EOF or reset) during the phase.
    #[error("peer closed the connection during {phase}")]
    PeerClosed { phase: Phase },
    /// A v1 header started with another network's magic (hex of the 4 bytes).
    #[error("wrong network magic: expected {expected}, got {got}")]
    WrongMagic { expected: String, got: String },
    /// A v1 payload did not match the checksum in its header.
    #[error("bad checksum on a {command:?} message")]
    BadChecksum { command: String },
    /// A message announced a payload larger than we accept.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: u64, max: u64 },
    /// Bytes that are not a message at all (e.g. a command that is not
    /// printable ASCII, or no BIP324 garbage terminator within 4111 bytes).
    #[error("garbage from peer: {detail}")]
    Garbage { detail: String },
    /// A well-framed message whose payload did not decode.
    #[error("could not decode a message: {detail}")]
    DecodeError { detail: String },
    /// A BIP324 packet failed authentication (wrong key, corrupted stream).
    #[error("BIP324 packet failed authentication")]
    DecryptFailed,
    /// v2 initiator: the peer closed the connection before sending a single
    /// byte of its key, which is what a v1-only node does (Bitcoin Core then
    /// reconnects with v1). v2-only responder: the peer sent a v1 `version`.
    #[error("peer speaks v1 only")]
    V1OnlyPeer,
    /// Any other I/O error on the connection.
    #[error("I/O error: {detail}")]
    Io { detail: String },
}

/// Time spent in each phase, in milliseconds. A phase that was not reached
/// (or does not apply, like the key exchange in v1) is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PhaseDurations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2_key_exchange_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verack_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<f64>,
}

/// What the peer said about itself in its `version` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PeerVersion {
    /// `user_agent` (BIP14 subversion), e.g. "/Satoshi:28.1.0/".
    pub user_agent: String,
    pub protocol_version: u32,
    /// Service bits as a raw number.
    pub services: u64,
    pub start_height: i32,
    pub relay: bool,
}

/// One handshake, successful or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HandshakeRecord {
    /// The transport spoken; `None` only when a responder accepting both
    /// failed before the peer's first bytes told which (phase `detect`).
    pub transport: Option<Transport>,
    pub role: Role,
    pub network: BitcoinNetwork,
    /// True when our ping was answered with a matching pong after both
    /// `version` and both `verack` messages.
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureReason>,
    /// The phase in which the failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_phase: Option<Phase>,
    pub durations: PhaseDurations,
    /// Bytes written to / read from the connection, transport overhead included.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerVersion>,
    /// v2 only: the BIP324 session id as lowercase hex, in the byte order of
    /// Bitcoin Core's `getpeerinfo` `session_id`, so both ends can be matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl HandshakeRecord {
    /// An empty record: nothing measured yet, not successful.
    pub fn new(transport: Option<Transport>, role: Role, network: BitcoinNetwork) -> Self {
        HandshakeRecord {
            transport,
            role,
            network,
            success: false,
            failure: None,
            failed_phase: None,
            durations: PhaseDurations::default(),
            bytes_sent: 0,
            bytes_received: 0,
            peer: None,
            session_id: None,
        }
    }
}

/// Which handshake a trial measured over its punched socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeBy {
    /// punchscope's own v1 or BIP324 v2 handshake (the trial's `handshake`).
    /// Results from before bridge mode measured this one.
    #[default]
    Punchscope,
    /// The volunteers' own Bitcoin nodes, the punched socket spliced to each
    /// (`punchscope probe --node`): the trial's `node_bridge`.
    Nodes,
}

impl fmt::Display for HandshakeBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeBy::Punchscope => "punchscope",
            HandshakeBy::Nodes => "nodes",
        })
    }
}

/// Bridge mode: the punched socket handed to the volunteer's own node, and
/// what that node (asked over its RPC, `getpeerinfo`) said about the peer.
/// The node speaks for itself: v1 or v2 is its own choice (`-v2transport`),
/// not the plan's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeBridgeRecord {
    /// The role our node played: `initiator` (it connected out, through us,
    /// after `addnode ... onetry`, and sent the first bytes) or `responder`
    /// (the socket was spliced to its P2P port: an inbound peer). Normally the
    /// coordinator's role; an experiment may force another.
    pub role: Role,
    /// The node completed the version handshake with the peer: it sent and
    /// received `verack` (its `getpeerinfo` counts both).
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<BridgeFailure>,
    /// The node's view of the peer as last listed, when it listed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<NodePeerView>,
    /// From the punched socket being handed over to the node listing the
    /// handshake as complete, in milliseconds (at the RPC polling's resolution,
    /// 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_ms: Option<f64>,
    /// Bytes relayed from our node to the peer, and from the peer to our node.
    pub bytes_to_peer: u64,
    pub bytes_from_peer: u64,
    /// Our `disconnectnode` ended the connection at the end of the trial;
    /// false when the peer had hung up first, the node had dropped it, or
    /// the call failed.
    pub disconnected: bool,
}

/// One peer as the node's `getpeerinfo` listed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodePeerView {
    /// `inbound` (responder) or `manual` (initiator, `addnode onetry`).
    pub connection_type: String,
    /// The transport the node speaks with the peer (`transport_protocol_type`);
    /// absent while the node was still detecting it, or for a node before v26.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Both `verack`s went through.
    pub version_handshake: bool,
    /// The peer's user agent (`subver`), empty until its `version` came.
    pub user_agent: String,
    pub protocol_version: u32,
    /// The peer's service bits.
    pub services: u64,
    /// v2: the BIP324 session id, the same on both nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The node's ping round trip to the peer, once a `pong` came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_ms: Option<f64>,
}

/// Why the nodes' handshake was not measured complete: an outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BridgeFailure {
    /// Responder: the node's P2P port did not take our connection.
    NodeUnreachable { detail: String },
    /// An RPC call to our node failed (`addnode`, `getpeerinfo`).
    Rpc { call: String, detail: String },
    /// Initiator: the node did not connect to our loopback port after `addnode onetry`.
    NodeDidNotConnect,
    /// The node never listed the bridged connection among its peers.
    PeerNotListed,
    /// The node listed the peer, then dropped it before the handshake
    /// completed (a v1 node meeting a v2 key, a BIP324 failure).
    PeerDropped,
    /// The node still listed the peer without a complete handshake when we
    /// stopped waiting (two BIP324 initiators wait for each other's terminator).
    HandshakeIncomplete,
    /// Our side could not set the bridge up (no loopback port to listen on).
    LocalError { detail: String },
    /// A kind a newer punchscope added.
    #[serde(other)]
    Other,
}

impl fmt::Display for BridgeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BridgeFailure::NodeUnreachable { detail } => {
                write!(
                    f,
                    "the node's P2P port did not take the connection: {detail}"
                )
            }
            BridgeFailure::Rpc { call, detail } => write!(f, "node RPC `{call}` failed: {detail}"),
            BridgeFailure::NodeDidNotConnect => {
                f.write_str("the node did not connect after addnode onetry")
            }
            BridgeFailure::PeerNotListed => f.write_str("the node never listed the peer"),
            BridgeFailure::PeerDropped => {
                f.write_str("the node dropped the peer before the handshake completed")
            }
            BridgeFailure::HandshakeIncomplete => {
                f.write_str("the node's handshake with the peer did not complete in time")
            }
            BridgeFailure::LocalError { detail } => write!(f, "bridge not set up: {detail}"),
            BridgeFailure::Other => f.write_str("a failure this version does not know"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_json_is_tagged_snake_case() {
        let reason = FailureReason::Timeout {
            phase: Phase::V2KeyExchange,
        };
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(json, r#"{"kind":"timeout","phase":"v2_key_exchange"}"#);
        let back: FailureReason = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reason);
        assert_eq!(
            serde_json::to_string(&FailureReason::V1OnlyPeer).unwrap(),
            r#"{"kind":"v1_only_peer"}"#
        );
        assert_eq!(FailureReason::V1OnlyPeer.to_string(), "peer speaks v1 only");
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut record = HandshakeRecord::new(
            Some(Transport::V2),
            Role::Initiator,
            BitcoinNetwork::Testnet4,
        );
        record.failure = Some(FailureReason::Oversized {
            len: 5_000_000,
            max: 4_000_000,
        });
        record.failed_phase = Some(Phase::Version);
        record.durations.v2_key_exchange_ms = Some(1.5);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["transport"], "v2");
        assert_eq!(json["network"], "testnet4");
        assert_eq!(json["failure"]["kind"], "oversized");
        assert_eq!(json["failed_phase"], "version");
        assert!(json["durations"].get("ping_ms").is_none());
        let back: HandshakeRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn bridge_records_round_trip_and_later_failures_read_as_other() {
        let record = NodeBridgeRecord {
            role: Role::Initiator,
            success: false,
            failure: Some(BridgeFailure::Rpc {
                call: "addnode".into(),
                detail: "refused".into(),
            }),
            peer: None,
            handshake_ms: None,
            bytes_to_peer: 0,
            bytes_from_peer: 0,
            disconnected: false,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["failure"]["kind"], "rpc");
        assert!(json.get("peer").is_none());
        assert_eq!(
            serde_json::from_value::<NodeBridgeRecord>(json).unwrap(),
            record
        );
        let later: BridgeFailure =
            serde_json::from_str(r#"{"kind":"failure_of_2030","x":1}"#).unwrap();
        assert_eq!(later, BridgeFailure::Other);
        assert_eq!(serde_json::to_value(HandshakeBy::Nodes).unwrap(), "nodes");
    }

    #[test]
    fn network_names_parse() {
        for network in BitcoinNetwork::ALL {
            assert_eq!(network.as_str().parse::<BitcoinNetwork>().unwrap(), network);
        }
        assert_eq!(
            "bitcoin".parse::<BitcoinNetwork>().unwrap(),
            BitcoinNetwork::Mainnet
        );
        assert!("testnet3".parse::<BitcoinNetwork>().is_err());
    }
}
