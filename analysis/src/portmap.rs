//! Port mapping records: what the default gateway answered when the probe asked it to open a TCP port (PCP, NAT-PMP, UPnP IGD), and whether the mapping was removed again.
//!
//! A [`PortMappingReport`] is an optional part of a [`crate::result::RunResult`]
//! (added within schema version 1: absent in older results and in reference
//! peers' results). Like every part of a result it holds no raw address: the
//! external address a router grants is kept as its /24 or /32 prefix
//! ([`MaskedEndpoint`]) and its class ([`HopClass`]: a private or shared
//! 100.64/10 external address means the router sits behind another NAT, and
//! its mapping opens nothing on the internet).
//!
//! Every enum reads values a newer punchscope adds as `other`, so older
//! readers keep working.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classify::{DialOutcome, HopClass};
use crate::result::MaskedEndpoint;

/// Most malformed answers kept per attempt; more are counted, not kept.
pub const MAX_ERRORS_KEPT: usize = 8;

/// Everything the probe asked the gateway, or why it asked nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortMappingReport {
    /// Why no request was sent, when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<PortMappingSkipped>,
    /// One entry per protocol and port asked, in the order asked.
    #[serde(default)]
    pub attempts: Vec<MappingAttempt>,
}

/// Why the probe did not ask the gateway for a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortMappingSkipped {
    /// The volunteer said no (`--no-portmap`).
    Declined,
    /// The host has no IPv4 default gateway (or the system does not tell).
    NoGateway,
    /// The run stopped (Ctrl-C) before port mapping began.
    Stopped,
    /// A reason a newer punchscope added.
    #[serde(other)]
    Other,
}

/// The protocol a mapping was asked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MappingProtocol {
    /// Port Control Protocol, RFC 6887 (version 2), opcode MAP.
    Pcp,
    /// NAT Port Mapping Protocol, RFC 6886 (version 0).
    Natpmp,
    /// UPnP Internet Gateway Device (IGDv1 or IGDv2): SSDP discovery, then
    /// SOAP AddPortMapping / AddAnyPortMapping. Added within schema version 1.
    Upnp,
    /// A protocol a newer punchscope added.
    #[serde(other)]
    Other,
}

/// Whose port was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PortRole {
    /// The volunteer's Bitcoin node port (8333 unless told otherwise).
    Node,
    /// A port the probe itself listened on during the request.
    Probe,
    /// A `mapped` trial's port, mapped for that trial only. Added within schema version 1.
    Trial,
    /// A role a newer punchscope added.
    #[serde(other)]
    Other,
}

/// How the gateway answered a request, after every retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GatewayAnswer {
    /// A well-formed answer came (its result code says what it meant).
    Answered,
    /// Nothing came within the retransmission schedule.
    Timeout,
    /// ICMP port unreachable: nothing listens on the protocol's port (what
    /// Linux reports as "connection refused" on a UDP socket).
    Refused,
    /// ICMP host or network unreachable.
    Unreachable,
    /// Only answers that could not be used came (malformed, wrong nonce, ...;
    /// `errors` lists them).
    Malformed,
    /// The run stopped (Ctrl-C) before an answer came.
    Stopped,
    /// A value a newer punchscope added.
    #[serde(other)]
    Other,
}

/// One request for one port with one protocol, and its deletion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MappingAttempt {
    pub protocol: MappingProtocol,
    pub port_role: PortRole,
    /// The host's port the mapping was asked for.
    pub internal_port: u16,
    /// The lifetime asked for, in seconds.
    pub requested_lifetime_s: u32,
    pub answer: GatewayAnswer,
    /// Requests sent, retransmissions included (deletion not counted).
    pub requests_sent: u32,
    /// From the first request to the answer, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The answer's result code (0 is success), as the protocol numbers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<u16>,
    /// The result code's name in the RFC, lower case: `success`, `not_authorized`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The protocol version the gateway answered with, when it was not the
    /// one asked (0 to a PCP request: the gateway speaks only NAT-PMP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u8>,
    /// UPnP: the gateway's service that was asked (`WANIPConnection:2`,
    /// `WANIPConnection:1`, `WANPPPConnection:1`); 2 offers AddAnyPortMapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The mapping, when one was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<GrantedMapping>,
    /// Renewals sent while the mapping was held (half its lifetime, or the
    /// gateway's epoch said it lost its state).
    #[serde(default)]
    pub renewals: u32,
    /// Times the gateway's epoch said it had lost its mappings (rebooted).
    #[serde(default)]
    pub lost_state: u32,
    /// Answers that could not be used, in words (at most [`MAX_ERRORS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Unusable answers in all, kept or not.
    #[serde(default)]
    pub error_count: u32,
    /// The deletion of a granted mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<MappingRelease>,
    /// For the probe's own port, while the mapping was held: whether the
    /// echo server's dial-back to the external port got through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reachable: Option<Reachability>,
}

/// "Mapped and reachable": the echo server dialed the probe's own public
/// address at the granted external port (never anything else), and the
/// probe's listener behind the mapping saw it, or did not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reachability {
    /// The dial-back reached the probe's listener through the mapping.
    pub reached: bool,
    /// What the echo server reported about its connect (`connected`,
    /// `refused`, `timeout`, ...), when it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_outcome: Option<DialOutcome>,
    /// Why there was no dial-back (an echo server without `mapped_port`
    /// dial-backs, no echo server answered), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the gateway granted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GrantedMapping {
    /// The lifetime granted, in seconds.
    pub lifetime_s: u32,
    /// The external endpoint: the address's prefix and the port.
    /// NAT-PMP gives the address in a second answer: `None` when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<MaskedEndpoint>,
    /// The external port granted.
    pub external_port: u16,
    /// The class of the external address: `private` or `shared` (100.64/10)
    /// means another NAT sits between the router and the internet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_class: Option<HopClass>,
}

/// The deletion of a granted mapping, asked before the probe exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MappingRelease {
    pub answer: GatewayAnswer,
    /// The deletion answer's result code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<u16>,
    /// The gateway confirmed the mapping is gone.
    pub succeeded: bool,
    pub requests_sent: u32,
}

impl PortMappingReport {
    /// A report of nothing asked, and why.
    pub fn skipped(why: PortMappingSkipped) -> Self {
        PortMappingReport {
            skipped: Some(why),
            attempts: Vec::new(),
        }
    }

    /// One sentence for the volunteer: per protocol, what the gateway did
    /// with the node's port (or the first port asked).
    pub fn summary(&self) -> String {
        match self.skipped {
            Some(PortMappingSkipped::Declined) => return "not asked (--no-portmap)".into(),
            Some(PortMappingSkipped::NoGateway) => return "no default gateway to ask".into(),
            Some(PortMappingSkipped::Stopped) => return "not asked: stopped before".into(),
            Some(PortMappingSkipped::Other) => return "not asked".into(),
            None => {}
        }
        let mut parts = Vec::new();
        let mut seen = Vec::new();
        for attempt in &self.attempts {
            if seen.contains(&attempt.protocol) {
                continue;
            }
            seen.push(attempt.protocol);
            let shown = self
                .attempts
                .iter()
                .find(|a| a.protocol == attempt.protocol && a.port_role == PortRole::Node)
                .unwrap_or(attempt);
            let reach = self
                .attempts
                .iter()
                .filter(|a| a.protocol == shown.protocol)
                .find_map(|a| a.reachable.as_ref())
                .map_or("", |r| match (r.reached, &r.error) {
                    (true, _) => " (reachable from the internet)",
                    (false, None) => " (not reachable from the internet)",
                    (false, Some(_)) => "",
                });
            parts.push(format!(
                "{} {}{reach}",
                protocol_words(shown.protocol),
                shown.words()
            ));
        }
        if parts.is_empty() {
            return "nothing asked".into();
        }
        parts.join("; ")
    }
}

fn protocol_words(protocol: MappingProtocol) -> &'static str {
    match protocol {
        MappingProtocol::Pcp => "PCP",
        MappingProtocol::Natpmp => "NAT-PMP",
        MappingProtocol::Upnp => "UPnP IGD",
        MappingProtocol::Other => "another protocol",
    }
}

impl MappingAttempt {
    /// A request not answered yet (a timeout until something comes back).
    pub fn unanswered(
        protocol: MappingProtocol,
        port_role: PortRole,
        internal_port: u16,
        requested_lifetime_s: u32,
    ) -> Self {
        MappingAttempt {
            protocol,
            port_role,
            internal_port,
            requested_lifetime_s,
            answer: GatewayAnswer::Timeout,
            requests_sent: 0,
            rtt_ms: None,
            result_code: None,
            result: None,
            server_version: None,
            service: None,
            granted: None,
            renewals: 0,
            lost_state: 0,
            errors: Vec::new(),
            error_count: 0,
            release: None,
            reachable: None,
        }
    }

    /// What happened, in a few words: "granted port 8333 as 8333 for 120 s, then deleted".
    pub fn words(&self) -> String {
        let port = self.internal_port;
        match (&self.granted, self.answer) {
            (Some(g), _) => {
                let behind = match g.external_class {
                    Some(HopClass::Private) => {
                        " (its external address is private: another NAT is in front)"
                    }
                    Some(HopClass::Shared) => {
                        " (its external address is in 100.64/10: carrier-grade NAT in front)"
                    }
                    _ => "",
                };
                let deleted = match &self.release {
                    Some(r) if r.succeeded => "then deleted",
                    _ => "deletion not confirmed (it expires by itself)",
                };
                // IGDv1: a lease of 0 is a permanent mapping.
                let lifetime = match (self.protocol, g.lifetime_s) {
                    (MappingProtocol::Upnp, 0) => "permanently".to_string(),
                    (_, s) => format!("for {s} s"),
                };
                format!(
                    "granted port {port} as {} {lifetime}{behind}, {deleted}",
                    g.external_port
                )
            }
            (None, GatewayAnswer::Answered) => match (self.server_version, &self.result) {
                (Some(0), _) => "not spoken (the gateway answered as NAT-PMP)".into(),
                (_, Some(result)) if result == "success" => {
                    format!("answered success for port {port} but granted no lifetime")
                }
                (_, Some(result)) => format!("refused port {port}: {result}"),
                (_, None) => format!("answered for port {port} without a mapping"),
            },
            (None, GatewayAnswer::Timeout) => "no answer".into(),
            (None, GatewayAnswer::Refused) if self.protocol == MappingProtocol::Upnp => {
                "refused: nothing listens on the gateway's port 1900 or its UPnP server".into()
            }
            (None, GatewayAnswer::Refused) => {
                "refused: nothing listens on the gateway's port 5351".into()
            }
            (None, GatewayAnswer::Unreachable) => "gateway unreachable".into(),
            (None, GatewayAnswer::Malformed) => "only malformed answers".into(),
            (None, GatewayAnswer::Stopped) => "stopped before an answer".into(),
            (None, GatewayAnswer::Other) => "an unknown outcome".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(protocol: MappingProtocol, role: PortRole, answer: GatewayAnswer) -> MappingAttempt {
        let port = if role == PortRole::Node { 8333 } else { 40000 };
        MappingAttempt {
            answer,
            requests_sent: 1,
            ..MappingAttempt::unanswered(protocol, role, port, 120)
        }
    }

    #[test]
    fn the_summary_says_per_protocol_what_happened_to_the_node_port() {
        let mut granted = attempt(
            MappingProtocol::Pcp,
            PortRole::Node,
            GatewayAnswer::Answered,
        );
        granted.granted = Some(GrantedMapping {
            lifetime_s: 13,
            external: None,
            external_port: 8333,
            external_class: Some(HopClass::Shared),
        });
        granted.release = Some(MappingRelease {
            answer: GatewayAnswer::Answered,
            result_code: Some(0),
            succeeded: true,
            requests_sent: 1,
        });
        let report = PortMappingReport {
            skipped: None,
            attempts: vec![
                attempt(
                    MappingProtocol::Pcp,
                    PortRole::Probe,
                    GatewayAnswer::Timeout,
                ),
                granted,
                attempt(
                    MappingProtocol::Natpmp,
                    PortRole::Node,
                    GatewayAnswer::Refused,
                ),
            ],
        };
        assert_eq!(
            report.summary(),
            "PCP granted port 8333 as 8333 for 13 s (its external address is in 100.64/10: carrier-grade NAT in front), then deleted; \
             NAT-PMP refused: nothing listens on the gateway's port 5351"
        );
        assert_eq!(
            PortMappingReport::skipped(PortMappingSkipped::Declined).summary(),
            "not asked (--no-portmap)"
        );
        let mut refused = attempt(
            MappingProtocol::Pcp,
            PortRole::Node,
            GatewayAnswer::Answered,
        );
        refused.result = Some("not_authorized".into());
        assert_eq!(refused.words(), "refused port 8333: not_authorized");
    }

    #[test]
    fn values_a_newer_punchscope_adds_read_as_other() {
        let json = r#"{"skipped":"router_on_fire","attempts":[{"protocol":"upnp_igd3",
            "port_role":"wallet","internal_port":8333,"requested_lifetime_s":120,
            "answer":"teleported","requests_sent":1,"colour":"blue"}]}"#;
        let report: PortMappingReport = serde_json::from_str(json).unwrap();
        assert_eq!(report.skipped, Some(PortMappingSkipped::Other));
        let attempt = &report.attempts[0];
        assert_eq!(attempt.protocol, MappingProtocol::Other);
        assert_eq!(attempt.port_role, PortRole::Other);
        assert_eq!(attempt.answer, GatewayAnswer::Other);
        assert_eq!((attempt.renewals, attempt.error_count), (0, 0));
        assert!(attempt.granted.is_none() && attempt.release.is_none());
    }
}

/// Which side of a `mapped` trial listened behind its router's mapping, as
/// the coordinator decided from both sides' registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MappedSide {
    /// This side listened; the peer connected to its mapped external port.
    Listen,
    /// The peer listened behind its mapping; this side connected to it.
    Connect,
    /// Neither side held a mapping: the trial was not tried (`unmapped`).
    Neither,
    /// A value a newer punchscope added.
    #[serde(other)]
    Other,
}

impl MappedSide {
    pub fn as_str(self) -> &'static str {
        match self {
            MappedSide::Listen => "listen",
            MappedSide::Connect => "connect",
            MappedSide::Neither => "neither",
            MappedSide::Other => "other",
        }
    }
}

/// A `mapped` trial's mapping, as one side saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrialMapping {
    /// What this side did, as the coordinator's `go` said; absent when no
    /// `go` came (the peer left, or the pairing ended first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<MappedSide>,
    /// The mapping this side asked its gateway for, for its trial port, and
    /// its deletion after the trial; absent when it asked for none (port
    /// mapping declined, or no protocol had granted one earlier in the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<MappingAttempt>,
}
