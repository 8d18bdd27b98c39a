//! Punching trials: the strategies a plan chooses and the record of one trial as one side saw it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::handshake::{HandshakeBy, HandshakeRecord, NodeBridgeRecord, Role};

/// The IP family a trial runs in: both sides' trial sockets, their observed
/// endpoints and every packet of the trial are of this family.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// IPv4, through NAT44 (and maybe CGNAT).
    #[default]
    Ipv4,
    /// IPv6, through the router's stateful firewall (and any NPTv6 or NAT66).
    Ipv6,
}

impl Family {
    pub const ALL: &'static [Family] = &[Family::Ipv4, Family::Ipv6];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family of `address`. An IPv4-mapped IPv6 address is IPv4.
    pub fn of(address: std::net::IpAddr) -> Family {
        match address.to_canonical() {
            std::net::IpAddr::V4(_) => Family::Ipv4,
            std::net::IpAddr::V6(_) => Family::Ipv6,
        }
    }
    /// The family a classification verdict was measured in: an IPv6
    /// classification carries its `ipv6` reading.
    pub fn of_verdict(verdict: &crate::classify::Verdict) -> Family {
        if verdict.ipv6.is_some() {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a trial tries to open the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Both sides connect() to each other at the coordinated moment, retrying
    /// on refusal or timeout with the plan's spacing.
    Simultaneous,
    /// As `simultaneous`, and each side also listens on its port; whichever
    /// socket completes first wins, the other is closed.
    ConnectListen,
    /// Each side first sends a SYN whose TTL opens its own NAT's mapping but
    /// dies before the peer's NAT; only when both did does the coordinator
    /// send `go`, and then each side connects and listens as in
    /// `connect_listen`: the peer's SYN passes the primed NAT whenever it
    /// arrives and meets a socket, so start skew no longer matters.
    LowTtl,
    /// For an endpoint-independent side paired with a sequential
    /// address(-and-port)-dependent one: the easy side connects and listens,
    /// aiming at the plan's `predict_window` ports after the hard side's
    /// observed port (its classification's step apart), where the hard
    /// side's NAT will put its connection to the easy side.
    Predict,
    /// For an endpoint-independent side paired with a random
    /// address(-and-port)-dependent one: the hard side opens the plan's
    /// `birthday_sockets` (m) connections to the easy side; the easy side
    /// sends SYNs from its one port to `birthday_ports` (n) random ports of
    /// the hard side's address. A hit connects: about 1 - exp(-m*n/range).
    Birthday,
    /// No punching: a side whose router granted a port mapping (PCP,
    /// NAT-PMP or UPnP IGD) for its trial port listens behind it, and the
    /// other side connects straight to the mapped external port. Neither
    /// side holding a mapping makes the trial `unmapped` (nothing is sent).
    Mapped,
}

impl Strategy {
    pub const ALL: &'static [Strategy] = &[
        Strategy::Simultaneous,
        Strategy::ConnectListen,
        Strategy::LowTtl,
        Strategy::Predict,
        Strategy::Birthday,
        Strategy::Mapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Simultaneous => "simultaneous",
            Strategy::ConnectListen => "connect_listen",
            Strategy::LowTtl => "low_ttl",
            Strategy::Predict => "predict",
            Strategy::Birthday => "birthday",
            Strategy::Mapped => "mapped",
        }
    }

    /// The hard-NAT strategies: they need a NAT-pair class (each side's
    /// move depends on both verdicts), so a plan may name them only in
    /// `class_strategies`.
    pub fn is_hard_nat(self) -> bool {
        matches!(self, Strategy::Predict | Strategy::Birthday)
    }
}

/// What one connect() attempt ended in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AttemptResult {
    /// The socket connected (the trial then checks the nonce).
    Connected,
    /// ECONNREFUSED: a RST (from the peer's NAT or host) or ICMP port unreachable.
    Refused,
    /// No answer within the attempt's time.
    Timeout,
    /// EHOSTUNREACH / ENETUNREACH: an ICMP error.
    Unreachable,
    /// Anything else the kernel said.
    Error { detail: String },
}

/// One connect() attempt within a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    /// When it started, in milliseconds after `go`.
    pub started_ms: f64,
    /// How long it lasted.
    pub duration_ms: f64,
    #[serde(flatten)]
    pub result: AttemptResult,
}

/// Which of our sockets completed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// Our connect() (in a simultaneous open, both SYNs crossed, or the peer's
    /// SYN-ACK answered ours).
    Connect,
    /// Our listener accepted the peer's connect (`connect_listen`).
    Listener,
}

/// One of our sockets that reported the connection in a trial where more
/// than one did (our connect and our listener racing on one 4-tuple), and
/// what its nonce exchange showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SocketClaim {
    pub by: Completion,
    pub nonce: ClaimNonce,
}

/// What one claiming socket's nonce exchange showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimNonce {
    /// It carried the peer's nonce: the trial's connection.
    Verified,
    /// Another nonce, or bytes that are not a nonce line: not our peer.
    Foreign,
    /// Silence, a close or a reset: it never reached the peer end to end.
    Missing,
    /// Still exchanging when another socket carried the nonce; closed.
    Unchecked,
}

/// How a trial ended, as data: only `local_error` means our side could not
/// even try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrialOutcome {
    /// Connected, and both sides proved they are the paired peers (nonce).
    Connected,
    /// Every attempt was refused (RST or ICMP port unreachable).
    Refused,
    /// Attempts timed out (or mixed timeouts and refusals ending in a timeout).
    Timeout,
    /// An ICMP host/network unreachable ended it.
    Unreachable,
    /// A connection was made, but not to the paired peer (nonce mismatch).
    WrongPeer,
    /// The peer left (or the coordinator lost it) before the trial finished.
    PeerVanished,
    /// Our side could not run the trial (e.g. the port could not be bound).
    LocalError,
    /// `mapped` only: neither side's router granted a mapping for its trial
    /// port, so nothing was sent. Not a failure of anything: reports leave
    /// these trials out of every success rate. Added within schema version 1.
    Unmapped,
}

impl TrialOutcome {
    pub fn is_success(self) -> bool {
        self == TrialOutcome::Connected
    }

    /// Whether the trial was tried at all: an `unmapped` one never was, and
    /// counts in no rate.
    pub fn was_tried(self) -> bool {
        self != TrialOutcome::Unmapped
    }
}

/// One trial as one side saw it. Ports only: public addresses never go in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrialRecord {
    /// Trial number within the pairing, from 0.
    pub trial: u32,
    /// The coordinator's nonce for this trial: the same on both sides' records,
    /// so a trial seen from both sides is counted once. Random, not secret.
    #[serde(default)]
    pub trial_id: Option<String>,
    pub strategy: Strategy,
    /// The IP family the trial ran in, as the coordinator drew it from the
    /// plan's `families`. Added within schema version 1: absent in older
    /// results, which ran over IPv4.
    #[serde(default)]
    pub family: Family,
    /// Initiator or responder, as the coordinator assigned (the Bitcoin handshake roles).
    pub role: Role,
    /// Our local port for this trial.
    pub local_port: u16,
    /// Our public port as the coordinator observed it.
    pub public_port: Option<u16>,
    /// The peer's public port we aimed at.
    pub peer_port: Option<u16>,
    pub outcome: TrialOutcome,
    pub attempts: Vec<Attempt>,
    /// From `go` to the connection established, if it was.
    pub go_to_established_ms: Option<f64>,
    pub completed_by: Option<Completion>,
    /// When more than one of our sockets reported the connection: each of
    /// them, in the order they did, and what its nonce exchange showed. The
    /// one that carried the nonce is `completed_by`; the others were closed.
    /// Added within schema version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<SocketClaim>,
    /// Both sides sent and checked the coordinator's nonce over the connection.
    pub nonce_verified: bool,
    /// The wait the coordinator told us before sending our first SYN, so both leave together.
    pub start_delay_ms: f64,
    /// A deliberate extra start skew injected by the plan (skew experiments).
    pub injected_skew_ms: f64,
    /// The peer's outcome for the same trial, as the coordinator relayed it.
    pub peer_outcome: Option<TrialOutcome>,
    /// Which handshake this trial measures over a punched socket (every trial
    /// of a bridge-mode pairing says `nodes`, connected or not): punchscope's
    /// own (`handshake`) or the volunteers' nodes' (`node_bridge`).
    /// Added within schema version 1: absent in older results, which measured punchscope's own.
    #[serde(default)]
    pub handshake_by: HandshakeBy,
    /// punchscope's own Bitcoin handshake over the punched socket, if the trial connected.
    pub handshake: Option<HandshakeRecord>,
    /// Bridge mode: the volunteer's node on the punched socket, if the trial
    /// connected (`handshake` is then absent). Added within schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_bridge: Option<NodeBridgeRecord>,
    /// What went wrong locally, for `local_error`.
    pub error: Option<String>,
    /// The NAT-pair class this side derived from both verdicts, when the
    /// plan has strategy mixes per class (`class_strategies`). Added within
    /// schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_class: Option<crate::hardnat::PairClass>,
    /// The strategies this trial's strategy was drawn from at random (the
    /// plan's mix for `pair_class`): absent when the plan's rotation chose
    /// it. Rates are compared only within one allocation. Added within schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drawn_from: Option<Vec<Strategy>>,
    /// `predict` and `birthday`: this side's move, ports tried and SYNs
    /// sent. Added within schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<crate::hardnat::HardTrialRecord>,
    /// The attempt timeout, retry gap and jitter this trial ran with (RTT-driven
    /// ones carry the pair RTT they came from). Added within schema version 1:
    /// absent in older results, which used their plan's fixed values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<crate::plan::AttemptTiming>,
    /// `mapped`: which side listened behind a mapping and, for this side,
    /// the mapping it held for the trial port (asked before registering,
    /// deleted after the trial). Added within schema version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<crate::portmap::TrialMapping>,
}

impl TrialRecord {
    /// One side's record of a trial before anything was measured: no
    /// ports, no attempt, no connection, `outcome` as given. Callers set
    /// what they know over it.
    pub fn unrun(trial: u32, strategy: Strategy, role: Role, outcome: TrialOutcome) -> Self {
        TrialRecord {
            trial,
            trial_id: None,
            strategy,
            family: Family::Ipv4,
            role,
            local_port: 0,
            public_port: None,
            peer_port: None,
            outcome,
            attempts: Vec::new(),
            go_to_established_ms: None,
            completed_by: None,
            claims: Vec::new(),
            nonce_verified: false,
            start_delay_ms: 0.0,
            injected_skew_ms: 0.0,
            peer_outcome: None,
            handshake_by: HandshakeBy::Punchscope,
            handshake: None,
            node_bridge: None,
            error: None,
            pair_class: None,
            drawn_from: None,
            hard: None,
            timing: None,
            mapping: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_and_outcomes_serialize_as_documented() {
        let attempt = Attempt {
            started_ms: 0.0,
            duration_ms: 101.5,
            result: AttemptResult::Refused,
        };
        let json = serde_json::to_value(&attempt).unwrap();
        assert_eq!(json["result"], "refused");
        assert_eq!(json["duration_ms"], 101.5);
        assert_eq!(
            serde_json::to_value(TrialOutcome::PeerVanished).unwrap(),
            "peer_vanished"
        );
        assert_eq!(serde_json::to_value(Strategy::LowTtl).unwrap(), "low_ttl");
        let back: Attempt = serde_json::from_value(json).unwrap();
        assert_eq!(back, attempt);
    }
}
