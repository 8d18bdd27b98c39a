//! Rendezvous wire protocol (version 1): messages, line framing and validation, no I/O.
//!
//! Newline-delimited JSON, one object per line, each with `"v": 1` and a
//! `"type"`. The full specification is in `docs/protocol.md` ("Rendezvous
//! protocol"); keep the two in step. The coordinator's logic is the sans-io
//! state machine in [`coordinator`].
//!
//! As with the echo protocol, the coordinator is strict with what clients
//! send (unknown fields are refused: no client message can carry an address)
//! and clients are lenient with what the coordinator sends (unknown fields
//! are ignored, so fields can be added within version 1).
//!
//! Optional client fields added within version 1 (so far `hello.verdict`)
//! are refused by a coordinator that predates them; the client library
//! then says hello again without them (see `rendezvous::Client::connect`).
//! Client messages added within version 1 (so far `campaign_request`) are
//! answered `unknown_type` by such a coordinator, and the client goes on
//! without what it asked for.

use std::net::SocketAddr;
use std::time::Duration;

use super::ndjson::{self, LineError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use punchscope_analysis::classify::Verdict;
use punchscope_analysis::handshake::Role;
use punchscope_analysis::plan::{AttemptTiming, Plan};
use punchscope_analysis::portmap::MappedSide;
use punchscope_analysis::privacy;
use punchscope_analysis::trial::{Family, Strategy, TrialOutcome};

use crate::net::address::AddressPolicy;

pub mod coordinator;
mod pairing;
#[cfg(test)]
mod tests;

/// The protocol version this code speaks.
pub const VERSION: u32 = 1;
/// Every version this code speaks, sent back when a peer speaks another.
pub const SUPPORTED_VERSIONS: &[u32] = &[VERSION];
/// Longest line either side may send, newline included.
pub const MAX_LINE: usize = 8192;
/// Port a client assumes when given only a host name (next to the echo server's 8339).
pub const DEFAULT_PORT: u16 = 8340;
/// Longest pair code, client version or OS string.
pub const MAX_SHORT_TEXT: usize = 64;
/// Largest NAT verdict a client may send in `hello`, in bytes of JSON. A
/// verdict with every finding unknown and its reasons is about 700 bytes.
pub const MAX_VERDICT_BYTES: usize = 2048;

/// Longest campaign name.
pub const MAX_CAMPAIGN_NAME: usize = 100;
/// Longest operator or contact text of a campaign.
pub const MAX_CAMPAIGN_TEXT: usize = 200;
/// Longest collector URL of a campaign.
pub const MAX_COLLECTOR_URL: usize = 300;
/// Largest privacy notice a campaign may hand out, in bytes.
pub const MAX_PRIVACY_NOTICE: usize = 6000;
/// Most echo endpoints a campaign may name: two IPs x two ports in each
/// of the two families. Probes before the dual-stack campaign took at most
/// 4 (see docs/protocol.md, "Preview connection").
pub const MAX_CAMPAIGN_ECHO: usize = 8;
/// Most echo endpoints of one family in a campaign (two IPs x two ports).
pub const MAX_CAMPAIGN_ECHO_PER_FAMILY: usize = 4;

/// What a coordinator tells a volunteer about its campaign before consent
/// (`campaign`, answering `campaign_request`): who runs it, which echo
/// servers classify, where results go, and the privacy notice. A client
/// treats all of it as untrusted input: [`CampaignInfo::check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignInfo {
    /// The campaign's name, e.g. "punchscope pilot 2026".
    pub name: String,
    /// Who runs it (a person or an organisation).
    pub operator: String,
    /// How to reach the operator (e-mail address, web page).
    pub contact: String,
    /// Echo servers for NAT classification: two IPs x two ports at most
    /// per family, the IPv4 ones first (a probe classifies each family
    /// against its own endpoints).
    pub echo: Vec<SocketAddr>,
    /// Where results are uploaded (`http://` or `https://`); absent: results stay with the volunteer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The privacy notice the volunteer consents to (plain text, lines separated by `\n`).
    pub privacy_notice: String,
}

impl CampaignInfo {
    /// Whether this campaign may be shown and used: short printable texts
    /// (a notice may hold newlines and tabs, nothing else below U+0020, so
    /// it cannot drive the volunteer's terminal), one to eight distinct echo
    /// endpoints, at most four per family, each one `addresses` allows (the
    /// same rule as peers), and an
    /// `http(s)://` collector URL. Both the coordinator (when configured)
    /// and the client (when told) check it.
    pub fn check(&self, addresses: AddressPolicy) -> Result<(), String> {
        for (field, text, max) in [
            ("name", &self.name, MAX_CAMPAIGN_NAME),
            ("operator", &self.operator, MAX_CAMPAIGN_TEXT),
            ("contact", &self.contact, MAX_CAMPAIGN_TEXT),
        ] {
            if text.trim().is_empty() || text.chars().count() > max {
                return Err(format!("campaign {field} must be 1 to {max} characters"));
            }
            if let Some(c) = text.chars().find(|c| is_unprintable(*c)) {
                return Err(format!(
                    "campaign {field} holds the control character {c:?}: one line of printable text only"
                ));
            }
        }
        if self.privacy_notice.trim().is_empty() || self.privacy_notice.len() > MAX_PRIVACY_NOTICE {
            return Err(format!(
                "campaign privacy_notice must be 1 to {MAX_PRIVACY_NOTICE} bytes"
            ));
        }
        if let Some(c) = self
            .privacy_notice
            .chars()
            .find(|c| *c != '\n' && *c != '\t' && is_unprintable(*c))
        {
            return Err(format!(
                "campaign privacy_notice holds the control character {c:?}: plain text only"
            ));
        }
        // An IPv4 address written as IPv6 would be classified as IPv6 (the
        // probe splits its echo endpoints by how they are written).
        if let Some(mapped) = self.echo.iter().find(|e| e.ip() != e.ip().to_canonical()) {
            return Err(format!(
                "campaign echo endpoint {mapped} is an IPv4-mapped IPv6 address: write it as IPv4"
            ));
        }
        let per_family = |family: Family| {
            self.echo
                .iter()
                .filter(|e| Family::of(e.ip()) == family)
                .count()
        };
        let repeated = self
            .echo
            .iter()
            .enumerate()
            .any(|(i, e)| self.echo[..i].contains(e));
        if self.echo.is_empty()
            || self.echo.len() > MAX_CAMPAIGN_ECHO
            || per_family(Family::Ipv4) > MAX_CAMPAIGN_ECHO_PER_FAMILY
            || per_family(Family::Ipv6) > MAX_CAMPAIGN_ECHO_PER_FAMILY
            || repeated
        {
            return Err(format!(
                "campaign echo must list 1 to {MAX_CAMPAIGN_ECHO} distinct endpoints, at most {MAX_CAMPAIGN_ECHO_PER_FAMILY} per family (two IPs x two ports over IPv4, the same over IPv6)"
            ));
        }
        for endpoint in &self.echo {
            addresses
                .check(*endpoint)
                .map_err(|why| format!("campaign echo endpoint refused: {why}"))?;
        }
        if let Some(url) = &self.collector {
            check_collector_url(url)?;
        }
        let answer = ServerMessage::Campaign {
            campaign: self.clone(),
        };
        let line = serde_json::to_string(&answer).expect("a campaign serializes");
        // Room for the envelope's `"v":1,` and the newline.
        if line.len() + 8 > MAX_LINE {
            return Err(format!(
                "the campaign does not fit in one {MAX_LINE}-byte line: shorten the privacy notice"
            ));
        }
        Ok(())
    }
}

/// A collector URL a campaign may name: `http://` or `https://` with a
/// host, printable, no spaces, bounded in length. Only ever used to upload.
pub fn check_collector_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_COLLECTOR_URL {
        return Err(format!(
            "campaign collector URL is longer than {MAX_COLLECTOR_URL} bytes"
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || is_unprintable(c)) {
        return Err("campaign collector URL holds spaces or control characters".into());
    }
    let host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(host) if !host.is_empty() && !host.contains('@') => Ok(()),
        Some(_) => Err(format!(
            "campaign collector URL {url:?} has no host (or carries credentials)"
        )),
        None => Err(format!(
            "campaign collector URL {url:?} is not http:// or https://"
        )),
    }
}

/// Control characters (C0, DEL, C1) and the bidirectional overrides that
/// can make text read differently from what it is.
fn is_unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether a client is a volunteer or a researcher-run reference peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Volunteer,
    Reference,
}

/// The first line of a control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The client's software version, e.g. "punchscope 0.1.0" (1 to 64 printable characters).
    pub client_version: String,
    /// The client's operating system, e.g. "linux" (1 to 64 printable characters).
    pub os: String,
    pub mode: Mode,
    /// Pairs only with a client that gives the same code (1 to 64 of `A-Z a-z 0-9 - _`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_code: Option<String>,
    /// How long this client is willing to wait for a peer; the coordinator
    /// uses the smaller of this and its own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u64>,
    /// Must be `true`: the volunteer agrees to exchange public endpoints with a peer.
    pub consent: bool,
    /// This client's NAT classification verdict (no addresses: free text is
    /// redacted to prefixes), relayed to its peer in `paired`. Optional: added
    /// within version 1, so older clients do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Box<Verdict>>,
    /// The IP families this client can run trials in (it reaches the
    /// coordinator in each, at an address it chose itself). Absent (older
    /// clients): the family of this control connection. Added within version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub families: Option<Vec<Family>>,
}

/// What one side says about a finished trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialResult {
    pub trial: u32,
    pub outcome: TrialOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_to_established_ms: Option<f64>,
    pub attempts: u32,
}

/// What a client sends: on a control connection, or the one line of a registration connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First line of a control connection.
    Hello(Hello),
    /// Answer to `ping`, at once.
    Pong { id: u64 },
    /// The low-TTL opening SYN of this trial has been sent.
    Primed { trial: u32 },
    /// This side's outcome of a trial.
    Result(TrialResult),
    /// The client leaves; the coordinator closes.
    Bye,
    /// First and only line of a registration connection.
    Register {
        token: String,
        /// `mapped` trials: the external port this client's router mapped to
        /// the port this connection comes from (PCP, NAT-PMP or UPnP IGD),
        /// when it did. The coordinator sends the peer to the observed
        /// address at this port, never another. Added within version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mapped_port: Option<u16>,
    },
    /// First and only line of a preview connection: what campaign does this
    /// coordinator run? Answered with `campaign` (or an `error`), then closed.
    /// Added within version 1.
    CampaignRequest,
}

/// The paired peer, as far as a client needs to know it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub mode: Mode,
    /// The peer's NAT verdict, when the peer sent one in its `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Box<Verdict>>,
}

/// What the coordinator sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome { session: String },
    /// Answer to `campaign_request`; the coordinator closes after this.
    Campaign { campaign: CampaignInfo },
    /// Heartbeat while no peer is found.
    Waiting { waited_ms: u64 },
    /// A peer was found; trials follow.
    Paired {
        role: Role,
        plan: Plan,
        peer: PeerInfo,
    },
    /// No peer within the wait; the coordinator closes after this.
    NoPeer { waited_ms: u64, reason: String },
    /// An RTT sample: answer with `pong` and the same id at once.
    Ping { id: u64 },
    /// A trial starts: register a fresh local port with this token.
    Trial {
        trial: u32,
        token: String,
        strategy: Strategy,
        /// The IP family of this trial: register from a fresh port of this
        /// family, at the coordinator's address of this family. Absent
        /// (older coordinators): IPv4. Added within version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        family: Option<Family>,
    },
    /// `low_ttl` only: send the opening SYN with this TTL to `peer`, then `primed`.
    Prime {
        trial: u32,
        peer: SocketAddr,
        ttl: u8,
    },
    /// Connect to `peer` after `delay_ms` (which includes `injected_skew_ms`).
    Go {
        trial: u32,
        peer: SocketAddr,
        delay_ms: u64,
        nonce: String,
        strategy: Strategy,
        injected_skew_ms: u64,
        /// The attempt timeout, retry gap and jitter of this trial, from the
        /// plan's RTT factors and the pair's measured RTT; the same for both
        /// sides. Absent for a plan without RTT factors (and from older
        /// coordinators): the plan's fixed values apply. Added within version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timing: Option<AttemptTiming>,
        /// `mapped` trials only: whether this side listens behind its
        /// mapping (`peer` is then the connecting side's observed endpoint),
        /// connects to the peer's mapped port (`peer` is the peer's observed
        /// address at that port), or neither (no side registered a mapping:
        /// nothing is sent). Added within version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mapped: Option<MappedSide>,
    },
    /// The other side's outcome of a trial, once both reported.
    PeerResult { trial: u32, outcome: TrialOutcome },
    /// The peer left; the pairing is over and the coordinator closes.
    PeerGone {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trial: Option<u32>,
    },
    /// Every trial of the plan ran; the coordinator closes.
    Done { trials: u32 },
    /// Only line on a registration connection: the source endpoint seen.
    Registered { observed: SocketAddr },
    /// Something was refused; the coordinator closes after this.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        supported_versions: Option<Vec<u32>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Machine-readable reason in an `error` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    Malformed,
    LineTooLong,
    UnknownType,
    BadRequest,
    /// A valid message at the wrong moment (e.g. `primed` outside a low-TTL trial).
    Unexpected,
    ConsentRequired,
    ReferenceNotAllowed,
    /// No first line within the deadline.
    HelloTimeout,
    PingTimeout,
    RegisterTimeout,
    PrimedTimeout,
    ResultTimeout,
    UnknownToken,
    /// The registration came from another IP than the control connection.
    IpMismatch,
    TooManyConnections,
    RateLimited,
    Busy,
    /// A client could not keep up with what the coordinator sends.
    TooSlow,
    ShuttingDown,
    /// `campaign_request` to a coordinator whose operator described no campaign.
    NoCampaign,
    /// Any code a newer coordinator may add.
    #[serde(other)]
    Other,
}

/// Why a line could not be accepted. The `Display` text is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The line itself: framing, JSON, version.
    #[error(transparent)]
    Line(#[from] LineError),
    /// A framed, versioned JSON object that is not a well-formed message.
    #[error("not a JSON object: {0}")]
    Malformed(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("bad message: {0}")]
    BadRequest(String),
    #[error("consent must be true: the coordinator tells your public endpoint to your peer only with your consent")]
    ConsentRequired,
}

impl ProtoError {
    /// The error code to put in the `error` line for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Line(LineError::LineTooLong { .. }) => ErrorCode::LineTooLong,
            ProtoError::Line(LineError::UnsupportedVersion { .. }) => ErrorCode::UnsupportedVersion,
            ProtoError::Line(
                LineError::Unterminated | LineError::Malformed(_) | LineError::MissingVersion,
            )
            | ProtoError::Malformed(_) => ErrorCode::Malformed,
            ProtoError::UnknownType(_) => ErrorCode::UnknownType,
            ProtoError::BadRequest(_) => ErrorCode::BadRequest,
            ProtoError::ConsentRequired => ErrorCode::ConsentRequired,
        }
    }

    /// The `error` line that tells the peer about this failure.
    pub fn to_message(&self) -> ServerMessage {
        let supported_versions = match self {
            ProtoError::Line(LineError::UnsupportedVersion { supported, .. }) => {
                Some(supported.clone())
            }
            _ => None,
        };
        ServerMessage::Error {
            code: self.code(),
            message: self.to_string(),
            supported_versions,
            retry_after_ms: None,
        }
    }
}

/// An `error` line without extra fields.
pub fn error_message(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        supported_versions: None,
        retry_after_ms: None,
    }
}

fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    ndjson::encode(VERSION, body, MAX_LINE)
}

/// One coordinator message as a line, newline included.
pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    ndjson::encode_server_line(VERSION, msg, MAX_LINE)
}

impl ndjson::ServerLine for ServerMessage {
    fn error_text(&self) -> Option<&str> {
        match self {
            ServerMessage::Error { message, .. } => Some(message),
            _ => None,
        }
    }
    fn error_text_mut(&mut self) -> Option<&mut String> {
        match self {
            ServerMessage::Error { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// One client message as a line, newline included.
pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    encode(msg)
}

/// Checks the framing of raw bytes read up to and including a newline (at
/// most [`MAX_LINE`] of them) and returns the text without the newline.
pub fn frame(raw: &[u8]) -> Result<&str, ProtoError> {
    Ok(ndjson::frame(raw, MAX_LINE)?)
}

/// Parses a line into an object whose `v` this code speaks, with `v` removed.
fn versioned_object(line: &str) -> Result<Map<String, Value>, ProtoError> {
    Ok(ndjson::versioned_object(line, SUPPORTED_VERSIONS)?)
}

const CLIENT_TYPES: &[&str] = &[
    "hello",
    "pong",
    "primed",
    "result",
    "bye",
    "register",
    "campaign_request",
];

/// Decodes and validates a client line (coordinator side).
pub fn decode_client(line: &str) -> Result<ClientMessage, ProtoError> {
    let obj = versioned_object(line)?;
    match obj.get("type") {
        Some(Value::String(t)) if CLIENT_TYPES.contains(&t.as_str()) => {}
        Some(Value::String(t)) => return Err(ProtoError::UnknownType(t.clone())),
        _ => return Err(ProtoError::Malformed("missing string field `type`".into())),
    }
    let msg: ClientMessage = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ProtoError::BadRequest(e.to_string()))?;
    validate_client(&msg)?;
    Ok(msg)
}

fn validate_client(msg: &ClientMessage) -> Result<(), ProtoError> {
    let bad = |s: String| Err(ProtoError::BadRequest(s));
    match msg {
        ClientMessage::Hello(h) => {
            for (name, text) in [("client_version", &h.client_version), ("os", &h.os)] {
                if text.is_empty()
                    || text.len() > MAX_SHORT_TEXT
                    || text.chars().any(|c| c.is_control())
                {
                    return bad(format!(
                        "{name} must be 1 to {MAX_SHORT_TEXT} printable characters"
                    ));
                }
            }
            if let Some(code) = &h.pair_code {
                if !is_token(code, MAX_SHORT_TEXT) {
                    return bad(format!(
                        "pair_code must be 1 to {MAX_SHORT_TEXT} characters from A-Z a-z 0-9 - _"
                    ));
                }
            }
            if let Some(verdict) = &h.verdict {
                validate_verdict(verdict)?;
            }
            if let Some(families) = &h.families {
                let repeated = families
                    .iter()
                    .enumerate()
                    .any(|(i, f)| families[..i].contains(f));
                if families.is_empty() || repeated {
                    return bad("families must name ipv4, ipv6 or both, each once".into());
                }
            }
            if !h.consent {
                return Err(ProtoError::ConsentRequired);
            }
        }
        ClientMessage::Register { token, .. } if !is_token(token, MAX_SHORT_TEXT) => {
            return bad("token must be the one from the `trial` message".into());
        }
        ClientMessage::Register {
            mapped_port: Some(port),
            ..
        } if *port < MIN_MAPPED_PORT => {
            return bad(format!(
                "mapped_port must be a port from {MIN_MAPPED_PORT} to 65535"
            ));
        }
        ClientMessage::Result(r) => {
            if let Some(ms) = r.go_to_established_ms {
                if !ms.is_finite() || ms < 0.0 {
                    return bad("go_to_established_ms must be a non-negative number".into());
                }
            }
            if r.attempts > 1000 {
                return bad("attempts must be at most 1000".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// A verdict is relayed to another client as it was received, so it is held
/// to what a result may hold: bounded in size, and no full IP address in its
/// free text (the client redacts to prefixes before sending).
fn validate_verdict(verdict: &Verdict) -> Result<(), ProtoError> {
    let value = serde_json::to_value(verdict).expect("a verdict serializes");
    let size = value.to_string().len();
    if size > MAX_VERDICT_BYTES {
        return Err(ProtoError::BadRequest(format!(
            "verdict is {size} bytes of JSON, at most {MAX_VERDICT_BYTES} are accepted"
        )));
    }
    if let Some(path) = privacy::find_raw_ip_in_json(&value) {
        return Err(ProtoError::BadRequest(format!(
            "verdict field `{path}` holds a full IP address: send network prefixes only"
        )));
    }
    Ok(())
}

fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes a coordinator line (client side). Unknown fields are ignored.
pub fn decode_server(line: &str) -> Result<ServerMessage, ProtoError> {
    let obj = versioned_object(line)?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    serde_json::from_value(Value::Object(obj)).map_err(|e| {
        if e.to_string().starts_with("unknown variant") {
            ProtoError::UnknownType(kind)
        } else {
            ProtoError::Malformed(e.to_string())
        }
    })
}

/// How long a trial may take from `go` to both results, for this plan: every
/// attempt with its worst-case gap (at the caps of RTT-driven timing), a Bitcoin handshake of five steps, the
/// largest start delay, and a margin for slow links. Both the coordinator
/// (its deadline for `result`) and clients (how long to wait for the next
/// message) use this.
pub fn result_deadline(plan: &Plan) -> Duration {
    // The longest timing any RTT may give: the deadline holds whatever `go` said.
    let timing = plan.timing_bound();
    let attempts = u64::from(plan.max_attempts)
        * (u64::from(timing.attempt_timeout_ms)
            + u64::from(timing.retry_gap_ms)
            + u64::from(timing.retry_jitter_ms));
    let handshake = 5 * u64::from(plan.handshake_step_ms);
    let delay = u64::from(plan.injected_skew_ms) + MAX_START_DELAY_MS;
    Duration::from_millis(attempts + handshake + delay + hard_nat_ms(plan) + RESULT_MARGIN_MS)
}

/// The extra time a `birthday` trial needs beyond the attempts: both
/// sides' SYNs paced at the plan's rate. Zero when no mix lists `birthday`.
pub fn hard_nat_ms(plan: &Plan) -> u64 {
    let birthday = plan
        .class_strategies
        .values()
        .any(|mix| mix.contains(&Strategy::Birthday));
    if !birthday {
        return 0;
    }
    let syns = u64::from(plan.birthday_sockets) + u64::from(plan.birthday_ports);
    syns * 1000 / u64::from(plan.birthday_pps.max(1))
}

/// The lowest port a `register` may name as its router's mapped port: a
/// peer cannot send the other side to a well-known service port of its
/// (possibly shared, carrier-grade NAT) address. Routers map the asked
/// port or a high one.
pub const MIN_MAPPED_PORT: u16 = 1024;

/// The start delays compensate RTT differences and are capped at this.
pub const MAX_START_DELAY_MS: u64 = 5_000;
const RESULT_MARGIN_MS: u64 = 5_000;

/// Per-side start delays (initiator, responder) so both sides' SYNs leave at
/// the same moment: `go` reaches a side about rtt/2 after it is sent, so the
/// nearer side waits half the RTT difference. The responder also gets the
/// plan's injected skew. Delays are capped at [`MAX_START_DELAY_MS`].
pub fn start_delays(
    rtt_initiator: Duration,
    rtt_responder: Duration,
    injected_skew: Duration,
) -> (Duration, Duration) {
    let far = rtt_initiator.max(rtt_responder);
    let cap = Duration::from_millis(MAX_START_DELAY_MS);
    let initiator = ((far - rtt_initiator) / 2).min(cap);
    let responder = ((far - rtt_responder) / 2).min(cap) + injected_skew;
    (initiator, responder)
}

/// Milliseconds as an integer for the wire, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
