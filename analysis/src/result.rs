//! The result of one probe run ([`RunResult`]): the document a probe uploads and the collector stores, schema version 1.
//!
//! A result holds no raw IP address. Its classification is a
//! [`SanitizedClassification`]: every endpoint is a network prefix (IPv4 /24,
//! IPv6 /32, see [`crate::privacy`]) plus the port, and [`RunResult::sanitize`]
//! reduces any address literal left in free text (error messages, user
//! agents). [`RunResult::new`] sanitizes, and [`RunResult::from_json`], what
//! the collector uses, rejects a document that still holds a raw address.
//!
//! Versioning: readers accept every schema version they know (so far only
//! [`SCHEMA_VERSION`]) and reject a newer one with a message saying to
//! upgrade. Fields a version-1 reader does not know are ignored; a change
//! that matters to readers gets a new version. The JSON Schema of this type
//! ([`json_schema`]) is committed as `datasets/schema/run-result.v1.json`.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::classify::{
    Classification, DialKind, DialObservation, DialOutcome, FilteringObservation,
    HairpinObservation, Observations, Probe, Verdict,
};
use crate::handshake::Role;
use crate::plan::{Plan, PlanError};
use crate::portmap::PortMappingReport;
use crate::privacy;
use crate::trial::TrialRecord;

/// The schema version this code writes (and the newest it reads).
pub const SCHEMA_VERSION: u32 = 1;

/// Largest result the collector accepts, in bytes of JSON. A run of 1000
/// trials with handshakes is about 1 MB; the default plan's 20 trials about 25 kB.
pub const MAX_RESULT_BYTES: usize = 2 * 1024 * 1024;

/// One probe run: who ran it (coarsely), what NAT it found, and every punching trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    /// The version of this format, [`SCHEMA_VERSION`] (1).
    pub schema_version: u32,
    /// A random UUID (version 4) made by the probe for this run; the collector
    /// stores each run id once.
    pub run_id: Uuid,
    /// The punchscope version that produced the result, e.g. "0.1.0".
    pub tool_version: String,
    /// Who ran the probe: a volunteer, or a researcher's reference peer (which
    /// uploads one result per pairing). Results from before this field are volunteers'.
    #[serde(default)]
    pub mode: RunMode,
    /// When the run started (RFC 3339, UTC).
    pub started_at: DateTime<Utc>,
    /// When the run ended (RFC 3339, UTC).
    pub ended_at: DateTime<Utc>,
    pub client: ClientInfo,
    /// The NAT classification of this host, with addresses reduced to prefixes.
    pub classification: SanitizedClassification,
    /// One entry per peer this host was paired with.
    pub pairings: Vec<Pairing>,
    /// What the default gateway answered to port mapping requests (PCP,
    /// NAT-PMP). Added within schema version 1: absent in older results and
    /// in reference peers' results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mapping: Option<PortMappingReport>,
    /// The IPv6 classification of a dual-stack run (given IPv4 and IPv6 echo
    /// endpoints), prefixes only like `classification`, which stays the IPv4
    /// one pairing used. Added within schema version 1: absent in older
    /// results and in runs that did not ask about IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification_v6: Option<SanitizedClassification>,
    /// Why a dual-stack run has no `classification_v6` (no IPv6 route, no
    /// echo server answered over IPv6), in words. Added within schema
    /// version 1: absent when IPv6 was classified or not asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification_v6_missing: Option<String>,
}

/// Who ran a probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// A volunteer's `punchscope probe`: one run, one pairing.
    #[default]
    Volunteer,
    /// A researcher's reference peer (`punchscope probe --serve-peer`): one result per pairing.
    Reference,
}

/// Facts about the volunteer's machine, nothing identifying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClientInfo {
    /// Operating system, as Rust names it ("linux", "macos", "windows", ...).
    pub os: String,
    /// CPU architecture, as Rust names it ("x86_64", "aarch64", ...).
    pub arch: String,
    /// A free label the volunteer chose for the network, e.g. "home-fibre".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_label: Option<String>,
}

impl ClientInfo {
    /// This machine's OS and architecture, with the volunteer's label.
    pub fn this_machine(network_label: Option<String>) -> Self {
        ClientInfo {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            network_label,
        }
    }
}

/// One pairing with a peer and every trial run with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Pairing {
    /// The peer's NAT verdict, when the coordinator relayed it.
    pub peer_verdict: Option<Verdict>,
    /// Our role in this pairing (the Bitcoin handshake role).
    pub role: Role,
    /// The probe plan the coordinator handed out for this pairing.
    pub plan: Plan,
    /// Every trial, in order, as this side saw it.
    pub trials: Vec<TrialRecord>,
    /// How the pairing ended; a pairing cut short keeps its trials.
    #[serde(default)]
    pub ended: PairingEnded,
    /// What the probe refused from the coordinator, when it ended the pairing
    /// for breaking its rules (`ended` is then `coordinator_lost`). Added
    /// within schema version 1: absent in older results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_violation: Option<CoordinatorViolation>,
}

/// A coordinator instruction the probe refused, and the pairing ended on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CoordinatorViolation {
    /// Which rule the instruction broke.
    pub rule: ViolationRule,
    /// The trial it concerned, when it concerned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<u32>,
    /// What was refused, in words (addresses cut to prefixes, as everywhere in a result).
    pub detail: String,
}

/// The rules a probe holds its coordinator to (docs/protocol.md, "What a client refuses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViolationRule {
    /// The plan asks for more than the probe's hard caps (trials, attempts, timeouts).
    PlanLimit,
    /// A trial number out of order, repeated, or beyond the plan's trials.
    TrialOrder,
    /// A strategy other than the plan's for that trial.
    Strategy,
    /// A peer endpoint that is not a public address (loopback, private, port 0, ...).
    PeerAddress,
    /// A start delay or injected skew beyond the bound.
    StartDelay,
    /// A low-TTL prime with another TTL than the plan's, or for a trial that does not prime.
    Ttl,
    /// A step at the wrong moment (a `go` twice, a `prime` after `go`, ...).
    Unexpected,
    /// A `go` whose attempt timing the plan cannot produce (outside its RTT
    /// floors and caps, or not its fixed values).
    Timing,
    /// A trial in an IP family the plan or this probe does not have, or a
    /// peer endpoint of another family than the trial's.
    Family,
    /// A rule a newer punchscope added.
    #[serde(other)]
    Other,
}

/// How a pairing ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PairingEnded {
    /// Every trial of the plan ran.
    #[default]
    Done,
    /// The peer left before the plan was through.
    PeerGone,
    /// The coordinator went away mid-pairing, or broke the probe's rules and
    /// was left (then `coordinator_violation` says what was refused).
    CoordinatorLost,
    /// The volunteer stopped the run (Ctrl-C).
    Interrupted,
}

/// An endpoint with its address reduced to a network prefix; the port is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MaskedEndpoint {
    /// The address's network: "203.0.113.0/24" (IPv4) or "2001:db8::/32" (IPv6).
    pub net: String,
    pub port: u16,
}

impl MaskedEndpoint {
    pub fn new(addr: SocketAddr) -> Self {
        MaskedEndpoint {
            net: privacy::prefix_of(addr.ip()),
            port: addr.port(),
        }
    }
}

/// [`Probe`] with masked endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedProbe {
    /// Our socket's local endpoint (usually a private LAN address, masked too).
    pub local: MaskedEndpoint,
    /// The echo server endpoint we connected to.
    pub server: MaskedEndpoint,
    /// Our public endpoint as the server saw it, if the probe worked.
    pub observed: Option<MaskedEndpoint>,
    /// Time for the TCP handshake, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
}

impl From<&Probe> for SanitizedProbe {
    fn from(p: &Probe) -> Self {
        SanitizedProbe {
            local: MaskedEndpoint::new(p.local),
            server: MaskedEndpoint::new(p.server),
            observed: p.observed.map(MaskedEndpoint::new),
            rtt_ms: p.rtt_ms,
            error: p.error.clone(),
        }
    }
}

/// [`DialObservation`] with a masked endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedDial {
    pub kind: DialKind,
    /// The server endpoint it dialed from, if it had one.
    pub from: Option<MaskedEndpoint>,
    /// What the server reported about its connect, if it reported in time.
    pub server_outcome: Option<DialOutcome>,
    /// Whether our listener received the dial-back.
    pub received: bool,
}

impl From<&DialObservation> for SanitizedDial {
    fn from(d: &DialObservation) -> Self {
        SanitizedDial {
            kind: d.kind,
            from: d.from.map(MaskedEndpoint::new),
            server_outcome: d.server_outcome,
            received: d.received,
        }
    }
}

/// [`FilteringObservation`] with masked endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedFiltering {
    pub probe: SanitizedProbe,
    pub dials: Vec<SanitizedDial>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// [`HairpinObservation`] with a masked endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedHairpin {
    /// Our own public endpoint that we dialed.
    pub target: MaskedEndpoint,
    pub reached_listener: bool,
    pub error: Option<String>,
}

/// [`Observations`] with masked endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedObservations {
    /// From one local port, one probe per distinct server endpoint.
    pub mapping: Vec<SanitizedProbe>,
    /// From several fresh local ports, each to the primary endpoint, in order.
    pub allocation: Vec<SanitizedProbe>,
    pub filtering: Option<SanitizedFiltering>,
    pub hairpin: Option<SanitizedHairpin>,
}

impl From<&Observations> for SanitizedObservations {
    fn from(o: &Observations) -> Self {
        SanitizedObservations {
            mapping: o.mapping.iter().map(SanitizedProbe::from).collect(),
            allocation: o.allocation.iter().map(SanitizedProbe::from).collect(),
            filtering: o
                .filtering
                .as_ref()
                .map(|f: &FilteringObservation| SanitizedFiltering {
                    probe: SanitizedProbe::from(&f.probe),
                    dials: f.dials.iter().map(SanitizedDial::from).collect(),
                    error: f.error.clone(),
                }),
            hairpin: o
                .hairpin
                .as_ref()
                .map(|h: &HairpinObservation| SanitizedHairpin {
                    target: MaskedEndpoint::new(h.target),
                    reached_listener: h.reached_listener,
                    error: h.error.clone(),
                }),
        }
    }
}

/// [`Classification`] as it goes into a result: masked observations and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SanitizedClassification {
    /// Every endpoint the primary echo server announced, masked.
    pub server_endpoints: Vec<MaskedEndpoint>,
    pub observations: SanitizedObservations,
    /// The verdict, decided on the probe from the unmasked observations.
    pub verdict: Verdict,
}

impl From<&Classification> for SanitizedClassification {
    fn from(c: &Classification) -> Self {
        SanitizedClassification {
            server_endpoints: c
                .server_endpoints
                .iter()
                .map(|e| MaskedEndpoint::new(*e))
                .collect(),
            observations: SanitizedObservations::from(&c.observations),
            verdict: c.verdict.clone(),
        }
    }
}

/// Why a result document cannot be read or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("the result has no integer `schema_version` field: is this a punchscope result?")]
    NoVersion,
    #[error("result schema version {found} is newer than this punchscope understands ({SCHEMA_VERSION}); upgrade punchscope")]
    Newer { found: u64 },
    #[error("result schema version {found} is not one this punchscope reads (it reads {SCHEMA_VERSION})")]
    Unsupported { found: u64 },
    #[error("field `{path}`: {message}")]
    Invalid { path: String, message: String },
    #[error("field `{path}` contains a full IP address; results may only hold network prefixes such as 203.0.113.0/24 (run RunResult::sanitize)")]
    RawIp { path: String },
}

/// Longest free label a volunteer may give the network.
pub const MAX_LABEL_CHARS: usize = 64;

impl RunResult {
    /// A new volunteer's result with a fresh run id, already sanitized (a
    /// reference peer sets [`RunResult::mode`] afterwards).
    pub fn new(
        tool_version: &str,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        client: ClientInfo,
        classification: &Classification,
        pairings: Vec<Pairing>,
    ) -> Self {
        let mut result = RunResult {
            schema_version: SCHEMA_VERSION,
            run_id: Uuid::new_v4(),
            tool_version: tool_version.to_string(),
            mode: RunMode::Volunteer,
            started_at,
            ended_at,
            client,
            classification: SanitizedClassification::from(classification),
            pairings,
            port_mapping: None,
            classification_v6: None,
            classification_v6_missing: None,
        };
        result.sanitize();
        result
    }

    /// Records a dual-stack run's IPv6 classification, or why there is none
    /// (`Err`, in words: such a run still has its IPv4 classification and
    /// pairing), sanitized like the rest of the result.
    pub fn set_ipv6_classification(&mut self, outcome: Result<&Classification, String>) {
        match outcome {
            Ok(classification) => {
                self.classification_v6 = Some(SanitizedClassification::from(classification));
                self.classification_v6_missing = None;
            }
            Err(why) => {
                self.classification_v6 = None;
                self.classification_v6_missing = Some(why);
            }
        }
        self.sanitize();
    }

    /// Reduces every IP address literal anywhere in the result (endpoints,
    /// error messages, user agents, labels) to its prefix. Idempotent.
    pub fn sanitize(&mut self) {
        let Ok(mut value) = serde_json::to_value(&*self) else {
            return;
        };
        privacy::redact_json(&mut value);
        // Only strings changed, none of them typed fields (ids, times, enum
        // names hold no address literal), so the value still fits the type.
        if let Ok(clean) = serde_json::from_value(value) {
            *self = clean;
        }
    }

    /// Reads and checks a result: schema version, types, values, and that it
    /// holds no raw IP address. Every reader (collector, report) goes through here.
    pub fn from_json(text: &str) -> Result<RunResult, ResultError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| ResultError::Json(e.to_string()))?;
        Self::from_value(value)
    }

    /// As [`RunResult::from_json`], from parsed JSON.
    pub fn from_value(value: Value) -> Result<RunResult, ResultError> {
        let Some(object) = value.as_object() else {
            return Err(ResultError::Invalid {
                path: ".".into(),
                message: "a result must be a JSON object".into(),
            });
        };
        let version = object
            .get("schema_version")
            .and_then(Value::as_u64)
            .ok_or(ResultError::NoVersion)?;
        if version > u64::from(SCHEMA_VERSION) {
            return Err(ResultError::Newer { found: version });
        }
        if version != u64::from(SCHEMA_VERSION) {
            return Err(ResultError::Unsupported { found: version });
        }
        if let Some(path) = privacy::find_raw_ip_in_json(&value) {
            return Err(ResultError::RawIp { path });
        }
        let result: RunResult =
            serde_path_to_error::deserialize(value).map_err(|e| ResultError::Invalid {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        result.validate()?;
        Ok(result)
    }

    /// Checks values beyond their types.
    pub fn validate(&self) -> Result<(), ResultError> {
        let invalid = |path: &str, message: &str| ResultError::Invalid {
            path: path.to_string(),
            message: message.to_string(),
        };
        if self.run_id.get_version_num() != 4 {
            return Err(invalid("run_id", "must be a random (version 4) UUID"));
        }
        if self.ended_at < self.started_at {
            return Err(invalid("ended_at", "is before started_at"));
        }
        if self.tool_version.is_empty() || self.tool_version.len() > 64 {
            return Err(invalid("tool_version", "must be 1 to 64 characters"));
        }
        if let Some(label) = &self.client.network_label {
            if label.chars().count() > MAX_LABEL_CHARS {
                return Err(invalid(
                    "client.network_label",
                    "must be at most 64 characters",
                ));
            }
        }
        for (i, pairing) in self.pairings.iter().enumerate() {
            pairing
                .plan
                .validate()
                .map_err(|e: PlanError| ResultError::Invalid {
                    path: format!("pairings[{i}].plan"),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The result as one line of JSON (no newline inside), as spooled, uploaded and stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a RunResult always serializes")
    }
}

/// One line of the collector's export (`GET /v1/results.jsonl`): a stored
/// result exactly as uploaded (after validation), with what the collector added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectedResult {
    /// When the collector stored it (RFC 3339, UTC).
    pub received_at: DateTime<Utc>,
    /// The uploader's network prefix (IPv4 /24, IPv6 /32).
    pub source_net: String,
    /// A keyed hash (HMAC-SHA256, hex) of the uploader's address: equal for
    /// runs uploaded from the same address, meaningless without the collector's key.
    pub source_group: String,
    pub result: RunResult,
}

/// The JSON Schema of [`RunResult`], as committed in `datasets/schema/run-result.v1.json`.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(RunResult)).expect("a schema serializes")
}

/// The JSON Schema as the committed file holds it: pretty-printed, ending with a newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{self, DialObservation, FilteringObservation, Probe};
    use crate::handshake::{BitcoinNetwork, HandshakeBy, HandshakeRecord, Transport};
    use crate::trial::{Attempt, AttemptResult, Strategy, TrialOutcome};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn classification() -> Classification {
        let probe = |local: &str, server: &str, observed: &str| Probe {
            local: sa(local),
            server: sa(server),
            observed: Some(sa(observed)),
            rtt_ms: Some(21.5),
            error: None,
        };
        let observations = Observations {
            mapping: vec![
                probe(
                    "192.168.1.2:40000",
                    "198.51.100.1:3478",
                    "203.0.113.2:40000",
                ),
                probe(
                    "192.168.1.2:40000",
                    "198.51.100.1:3479",
                    "203.0.113.2:40000",
                ),
                probe(
                    "192.168.1.2:40000",
                    "198.51.100.2:3478",
                    "203.0.113.2:40000",
                ),
            ],
            allocation: vec![],
            filtering: Some(FilteringObservation {
                probe: probe(
                    "192.168.1.2:40001",
                    "198.51.100.1:3478",
                    "203.0.113.2:40001",
                ),
                dials: vec![DialObservation {
                    kind: DialKind::OtherIp,
                    from: Some(sa("198.51.100.2:3478")),
                    server_outcome: Some(DialOutcome::Timeout),
                    received: false,
                }],
                error: Some("too many dial-back requests from 203.0.113.2: retry".into()),
            }),
            hairpin: None,
        };
        Classification::new(vec![sa("198.51.100.1:3478")], observations)
    }

    fn trial() -> TrialRecord {
        let mut handshake = HandshakeRecord::new(
            Some(Transport::V1),
            Role::Initiator,
            BitcoinNetwork::Mainnet,
        );
        handshake.failure = Some(crate::handshake::FailureReason::Io {
            detail: "connection reset by 2001:db8:7:8::9".into(),
        });
        TrialRecord {
            trial: 0,
            trial_id: None,
            timing: None,
            family: Default::default(),
            strategy: Strategy::Simultaneous,
            role: Role::Initiator,
            local_port: 40002,
            public_port: Some(40002),
            peer_port: Some(51000),
            outcome: TrialOutcome::Connected,
            attempts: vec![Attempt {
                started_ms: 0.0,
                duration_ms: 203.25,
                result: AttemptResult::Error {
                    detail: "bind 192.168.1.2:40002 failed".into(),
                },
            }],
            go_to_established_ms: Some(203.25),
            completed_by: None,
            claims: Vec::new(),
            nonce_verified: true,
            start_delay_ms: 12.0,
            injected_skew_ms: 0.0,
            peer_outcome: Some(TrialOutcome::Connected),
            handshake_by: HandshakeBy::Punchscope,
            handshake: Some(handshake),
            node_bridge: None,
            error: None,
            pair_class: None,
            drawn_from: None,
            hard: None,
            mapping: None,
        }
    }

    fn result() -> RunResult {
        let plan = Plan::from_toml("version = 1\nname = \"t\"\n").unwrap();
        RunResult::new(
            "0.1.0",
            "2026-05-01T10:00:00Z".parse().unwrap(),
            "2026-05-01T10:02:30.5Z".parse().unwrap(),
            ClientInfo::this_machine(Some("home-fibre".into())),
            &classification(),
            vec![Pairing {
                peer_verdict: Some(classify::verdict(&classification().observations)),
                role: Role::Initiator,
                plan,
                trials: vec![trial()],
                ended: PairingEnded::Done,
                coordinator_violation: None,
            }],
        )
    }

    #[test]
    fn a_new_result_holds_prefixes_and_ports_only() {
        let r = result();
        let json = r.to_json();
        for raw in [
            "192.168.1.2",
            "203.0.113.2",
            "198.51.100.1",
            "2001:db8:7:8::9",
        ] {
            assert!(!json.contains(raw), "{raw} leaked into {json}");
        }
        let probe = &r.classification.observations.mapping[0];
        assert_eq!(probe.local.net, "192.168.1.0/24");
        assert_eq!(probe.observed.as_ref().unwrap().net, "203.0.113.0/24");
        assert_eq!(probe.observed.as_ref().unwrap().port, 40000);
        let filtering = r.classification.observations.filtering.as_ref().unwrap();
        assert_eq!(
            filtering.error.as_deref(),
            Some("too many dial-back requests from 203.0.113.0/24: retry")
        );
        assert_eq!(privacy::find_raw_ip_in_json(&json_schema()), None);
    }

    #[test]
    fn results_round_trip_and_keep_every_number() {
        let r = result();
        let back = RunResult::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        assert!(!r.to_json().contains('\n'));
    }

    #[test]
    fn versions_types_and_raw_addresses_are_checked() {
        let mut value = serde_json::to_value(result()).unwrap();
        value["schema_version"] = 7.into();
        let e = RunResult::from_value(value.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "result schema version 7 is newer than this punchscope understands (1); upgrade punchscope"
        );
        value["schema_version"] = 0.into();
        assert!(matches!(
            RunResult::from_value(value.clone()),
            Err(ResultError::Unsupported { found: 0 })
        ));
        value["schema_version"] = "1".into();
        assert_eq!(
            RunResult::from_value(value.clone()),
            Err(ResultError::NoVersion)
        );
        value["schema_version"] = 1.into();

        let mut wrong = value.clone();
        wrong["pairings"][0]["trials"][0]["local_port"] = "forty".into();
        match RunResult::from_value(wrong).unwrap_err() {
            ResultError::Invalid { path, .. } => {
                assert_eq!(path, "pairings[0].trials[0].local_port")
            }
            e => panic!("unexpected {e}"),
        }

        let mut leaky = value.clone();
        leaky["pairings"][0]["trials"][0]["error"] = "peer 203.0.113.77 vanished".into();
        match RunResult::from_value(leaky).unwrap_err() {
            ResultError::RawIp { path } => assert_eq!(path, "pairings[0].trials[0].error"),
            e => panic!("unexpected {e}"),
        }

        let mut backwards = value;
        backwards["ended_at"] = "2026-05-01T09:00:00Z".into();
        assert!(RunResult::from_value(backwards)
            .unwrap_err()
            .to_string()
            .contains("ended_at"));
        assert!(matches!(
            RunResult::from_json("{\"schema_version\": 1,"),
            Err(ResultError::Json(_))
        ));
    }

    #[test]
    fn a_result_without_mode_is_a_volunteers_and_a_reference_result_says_so() {
        let mut value = serde_json::to_value(result()).unwrap();
        assert_eq!(value["mode"], "volunteer");
        value.as_object_mut().unwrap().remove("mode");
        assert_eq!(
            RunResult::from_value(value.clone()).unwrap().mode,
            RunMode::Volunteer
        );
        value["mode"] = "reference".into();
        assert_eq!(
            RunResult::from_value(value).unwrap().mode,
            RunMode::Reference
        );
    }

    #[test]
    fn fields_a_newer_punchscope_adds_are_ignored_everywhere() {
        let r = result();
        let mut value = serde_json::to_value(&r).unwrap();
        value["uploader_hint"] = "new top-level field".into();
        value["client"]["cpu_count"] = 8.into();
        value["classification"]["verdict"]["mapping_confidence"] = 0.9.into();
        value["pairings"][0]["relay_used"] = false.into();
        value["pairings"][0]["plan"]["pacing_ms"] = 25.into();
        value["pairings"][0]["trials"][0]["ecn"] = "off".into();
        value["pairings"][0]["trials"][0]["handshake"]["cipher"] = "x".into();
        let back = RunResult::from_value(value).unwrap();
        assert_eq!(back, r, "the known fields read as written");
    }

    #[test]
    fn a_coordinator_violation_is_kept_and_later_rules_read_as_other() {
        let mut r = result();
        r.pairings[0].ended = PairingEnded::CoordinatorLost;
        r.pairings[0].coordinator_violation = Some(CoordinatorViolation {
            rule: ViolationRule::PeerAddress,
            trial: Some(3),
            detail: "go: peer 10.1.2.3:22 is private, not a public address".into(),
        });
        r.sanitize();
        let violation = r.pairings[0].coordinator_violation.as_ref().unwrap();
        assert_eq!(
            violation.detail,
            "go: peer 10.1.2.0/24:22 is private, not a public address"
        );
        let mut value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            value["pairings"][0]["coordinator_violation"]["rule"],
            "peer_address"
        );
        assert_eq!(RunResult::from_value(value.clone()).unwrap(), r);
        value["pairings"][0]["coordinator_violation"]["rule"] = "rule_of_2030".into();
        let later = RunResult::from_value(value.clone()).unwrap();
        assert_eq!(
            later.pairings[0]
                .coordinator_violation
                .as_ref()
                .unwrap()
                .rule,
            ViolationRule::Other
        );
        // Results from before the field read as having no violation.
        value["pairings"][0]
            .as_object_mut()
            .unwrap()
            .remove("coordinator_violation");
        let older = RunResult::from_value(value).unwrap();
        assert_eq!(older.pairings[0].coordinator_violation, None);
        assert!(!result().to_json().contains("coordinator_violation"));
    }

    #[test]
    fn a_port_mapping_report_is_optional_and_holds_prefixes_only() {
        use crate::classify::HopClass;
        use crate::portmap::*;
        let mut r = result();
        assert!(
            !r.to_json().contains("port_mapping"),
            "absent unless measured"
        );
        r.port_mapping = Some(PortMappingReport {
            skipped: None,
            attempts: vec![MappingAttempt {
                protocol: MappingProtocol::Pcp,
                port_role: PortRole::Node,
                internal_port: 8333,
                requested_lifetime_s: 120,
                answer: GatewayAnswer::Answered,
                requests_sent: 1,
                rtt_ms: Some(1.5),
                result_code: Some(0),
                result: Some("success".into()),
                server_version: None,
                service: None,
                granted: Some(GrantedMapping {
                    lifetime_s: 120,
                    external: Some(MaskedEndpoint::new(sa("203.0.113.2:8333"))),
                    external_port: 8333,
                    external_class: Some(HopClass::Public),
                }),
                renewals: 0,
                lost_state: 0,
                errors: vec!["answer from 192.168.1.1 was short".into()],
                error_count: 1,
                reachable: None,
                release: Some(MappingRelease {
                    answer: GatewayAnswer::Answered,
                    result_code: Some(0),
                    succeeded: true,
                    requests_sent: 1,
                }),
            }],
        });
        let leaky = serde_json::to_value(&r).unwrap();
        assert!(matches!(
            RunResult::from_value(leaky),
            Err(ResultError::RawIp { .. })
        ));
        r.sanitize();
        let attempt = &r.port_mapping.as_ref().unwrap().attempts[0];
        assert_eq!(attempt.errors[0], "answer from 192.168.1.0/24 was short");
        assert_eq!(
            attempt
                .granted
                .as_ref()
                .unwrap()
                .external
                .as_ref()
                .unwrap()
                .net,
            "203.0.113.0/24"
        );
        assert_eq!(RunResult::from_json(&r.to_json()).unwrap(), r);
        // Results from before the field read as not measured.
        let mut value = serde_json::to_value(&r).unwrap();
        value.as_object_mut().unwrap().remove("port_mapping");
        assert_eq!(RunResult::from_value(value).unwrap().port_mapping, None);
    }

    /// Fails when the Rust types and the committed JSON Schema drift apart.
    /// Regenerate with `PUNCHSCOPE_BLESS_SCHEMA=1 cargo test -p punchscope-analysis schema`.
    /// An IPv6 classification as a dual-stack probe makes it, untranslated
    /// behind a firewall, with raw addresses everywhere.
    fn classification_v6() -> Classification {
        let probe = |local: &str, server: &str| Probe {
            local: sa(local),
            server: sa(server),
            observed: Some(sa(local)),
            rtt_ms: Some(1.5),
            error: None,
        };
        let observations = Observations {
            mapping: vec![
                probe("[2001:db8:7:8::9]:40000", "[2001:db8:5100::10]:3478"),
                probe("[2001:db8:7:8::9]:40000", "[2001:db8:5100::11]:3478"),
            ],
            // A probe that failed, with the address in its words.
            allocation: vec![Probe {
                observed: None,
                error: Some("connect from 2001:db8:7:8::9 timed out".into()),
                ..probe("[2001:db8:7:8::9]:40002", "[2001:db8:5100::10]:3478")
            }],
            filtering: Some(FilteringObservation {
                probe: probe("[2001:db8:7:8::9]:40001", "[2001:db8:5100::10]:3478"),
                dials: vec![DialObservation {
                    kind: DialKind::OtherIp,
                    from: Some(sa("[2001:db8:5100::11]:3478")),
                    server_outcome: Some(DialOutcome::Timeout),
                    received: false,
                }],
                error: None,
            }),
            hairpin: None,
        };
        Classification::new(vec![sa("[2001:db8:5100::10]:3478")], observations)
    }

    #[test]
    fn an_ipv6_classification_is_optional_holds_prefixes_only_and_round_trips() {
        let mut r = result();
        let json = r.to_json();
        assert!(!json.contains("classification_v6"), "absent unless asked");
        r.set_ipv6_classification(Ok(&classification_v6()));
        let json = r.to_json();
        for raw in ["2001:db8:7:8::9", "2001:db8:5100::10", "2001:db8:5100::11"] {
            assert!(!json.contains(raw), "{raw} leaked into {json}");
        }
        let v6 = r.classification_v6.as_ref().unwrap();
        assert_eq!(v6.observations.mapping[0].local.net, "2001:db8::/32");
        assert_eq!(v6.observations.mapping[0].local.port, 40000);
        let ipv6 = v6.verdict.ipv6.as_ref().expect("an IPv6 verdict");
        assert_eq!(ipv6.translated, Some(false));
        assert_eq!(ipv6.unsolicited_admitted, Some(false));
        // The IPv4 classification beside it is untouched.
        assert_eq!(r.classification, result().classification);
        assert_eq!(RunResult::from_json(&json).unwrap(), r);

        // A failed IPv6 classification is a reason, also cut to prefixes.
        r.set_ipv6_classification(Err(
            "echo server [2001:db8:5100::10]:3478: no route to host".into(),
        ));
        let json = r.to_json();
        assert!(!json.contains("2001:db8:5100::10"), "{json}");
        assert_eq!(r.classification_v6, None);
        assert!(r
            .classification_v6_missing
            .as_deref()
            .unwrap()
            .contains("no route to host"));
        assert_eq!(RunResult::from_json(&json).unwrap(), r);

        // Unsanitized, the collector's check refuses it.
        let mut leaky = serde_json::to_value(result()).unwrap();
        leaky["classification_v6"] =
            serde_json::to_value(SanitizedClassification::from(&classification_v6())).unwrap();
        leaky["classification_v6"]["observations"]["filtering"]["error"] =
            "no dial-back reached 2001:db8:7:8::9".into();
        assert!(matches!(
            RunResult::from_value(leaky),
            Err(ResultError::RawIp { .. })
        ));
    }

    #[test]
    fn committed_json_schema_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../datasets/schema/run-result.v1.json"
        );
        let generated = json_schema_text();
        if std::env::var_os("PUNCHSCOPE_BLESS_SCHEMA").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "datasets/schema/run-result.v1.json is out of date with the RunResult types: \
             regenerate it with `PUNCHSCOPE_BLESS_SCHEMA=1 cargo test -p punchscope-analysis schema` \
             and, if the change is not backward compatible, raise SCHEMA_VERSION"
        );
    }
}
