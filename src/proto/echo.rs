//! Echo/reflector wire protocol (version 1): message types, line encoding, decoding and validation, no I/O.
//!
//! Newline-delimited JSON, one object per line, each with `"v": 1` and a
//! `"type"`. The full specification, with an example session, is in
//! `docs/protocol.md` ("Echo / reflector protocol"); keep the two in step.
//!
//! Servers are strict with what clients send (unknown fields are refused, so
//! a request can never smuggle a dial target); clients are lenient with what
//! servers send (unknown fields are ignored, so servers can add fields
//! within version 1).

use std::net::SocketAddr;

use super::ndjson::{self, LineError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use punchscope_analysis::classify::{DialKind, DialOutcome};

/// The protocol version this code speaks.
pub const VERSION: u32 = 1;
/// Every version this code speaks, sent back when a peer speaks another.
pub const SUPPORTED_VERSIONS: &[u32] = &[VERSION];
/// Longest line either side may send, newline included.
pub const MAX_LINE: usize = 1024;
/// Port a client assumes when given only a host name (next to Bitcoin's 8333).
pub const DEFAULT_PORT: u16 = 8339;
/// Longest dial-back token.
pub const MAX_TOKEN: usize = 64;

/// Fields a request may never carry: the server only dials the asker's
/// observed endpoint, so any way of naming another endpoint is refused by name.
const TARGET_FIELDS: &[&str] = &[
    "target", "to", "host", "addr", "address", "ip", "port", "endpoint",
];

/// What a server sends: on the control connection, and on dial-back connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First line on every accepted connection.
    Observed {
        /// The source endpoint of the connection as the server saw it.
        observed: SocketAddr,
        /// The server endpoint this connection reached.
        reached: SocketAddr,
        /// Every endpoint the server listens on, `reached` included.
        endpoints: Vec<SocketAddr>,
        /// How long the server waits for an optional request line.
        request_timeout_ms: u64,
    },
    /// The dial-back request was accepted; one `dial_result` per entry follows.
    DialBackAccepted {
        token: String,
        /// The server's connect timeout for each dial.
        timeout_ms: u64,
        dials: Vec<PlannedDial>,
    },
    /// How one dial-back ended, in completion order.
    DialResult {
        token: String,
        kind: DialKind,
        from: Option<SocketAddr>,
        to: SocketAddr,
        outcome: DialOutcome,
        elapsed_ms: u64,
        /// The OS error text for `error` and `unreachable` outcomes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The only line on a dial-back connection the server opened.
    DialBack {
        token: String,
        kind: DialKind,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// The request was refused; the server closes the connection after this line.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        supported_versions: Option<Vec<u32>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// One dial the server is about to make. `from` is absent when the server has
/// no endpoint of that kind (its result will be `unavailable`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedDial {
    pub kind: DialKind,
    pub from: Option<SocketAddr>,
}

/// The only request: dial back to my observed endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialBackRequest {
    /// Chosen by the client, echoed on each dial-back connection.
    pub token: String,
    /// Which dials to make, each at most once.
    pub kinds: Vec<DialKind>,
    /// The port of the asker's own observed address that a `mapped_port`
    /// dial goes to (a port mapping's external port); given with that kind
    /// only. Servers before it refuse the field (`bad_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_port: Option<u16>,
}

/// Machine-readable reason in an `error` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    UnsupportedVersion,
    Malformed,
    LineTooLong,
    UnknownType,
    TargetNotAllowed,
    BadRequest,
    RateLimited,
    Busy,
    /// The client's source (IPv4 address, IPv6 /64) or site (IPv6 /48) holds too many connections.
    TooManyConnections,
    RequestTimeout,
    /// Any code a newer server may add.
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
    #[error("unknown message type {0:?}: expected \"dial_back_request\"")]
    UnknownType(String),
    #[error("field `{0}` is not allowed: the server only ever dials the endpoint it observed for this connection")]
    TargetNotAllowed(String),
    #[error("bad dial_back_request: {0}")]
    BadRequest(String),
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
            ProtoError::TargetNotAllowed(_) => ErrorCode::TargetNotAllowed,
            ProtoError::BadRequest(_) => ErrorCode::BadRequest,
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

fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    ndjson::encode(VERSION, body, MAX_LINE)
}

/// One server message as a line, newline included.
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

/// A dial-back request as a line, newline included.
pub fn encode_request(req: &DialBackRequest) -> Vec<u8> {
    #[derive(Serialize)]
    struct Tagged<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(flatten)]
        req: &'a DialBackRequest,
    }
    encode(&Tagged {
        kind: "dial_back_request",
        req,
    })
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

/// Decodes and validates a client's request line (server side).
pub fn decode_request(line: &str) -> Result<DialBackRequest, ProtoError> {
    let mut obj = versioned_object(line)?;
    if let Some(field) = TARGET_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        return Err(ProtoError::TargetNotAllowed(field.to_string()));
    }
    match obj.remove("type") {
        Some(Value::String(t)) if t == "dial_back_request" => {}
        Some(Value::String(t)) => return Err(ProtoError::UnknownType(t)),
        _ => return Err(ProtoError::Malformed("missing string field `type`".into())),
    }
    let req: DialBackRequest = serde_json::from_value(Value::Object(obj))
        .map_err(|e| ProtoError::BadRequest(e.to_string()))?;
    validate_request(&req)?;
    Ok(req)
}

fn validate_request(req: &DialBackRequest) -> Result<(), ProtoError> {
    let t = &req.token;
    if t.is_empty() || t.len() > MAX_TOKEN {
        return Err(ProtoError::BadRequest(format!(
            "token must be 1 to {MAX_TOKEN} characters"
        )));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProtoError::BadRequest(
            "token may only contain A-Z, a-z, 0-9, '-' and '_'".into(),
        ));
    }
    if req.kinds.is_empty() {
        return Err(ProtoError::BadRequest(
            "kinds must name at least one dial".into(),
        ));
    }
    for (i, k) in req.kinds.iter().enumerate() {
        if req.kinds[..i].contains(k) {
            return Err(ProtoError::BadRequest(format!(
                "kind {k:?} is listed twice"
            )));
        }
    }
    match (req.kinds.contains(&DialKind::MappedPort), req.mapped_port) {
        (true, Some(port)) if port != 0 => Ok(()),
        (true, _) => Err(ProtoError::BadRequest(
            "kind mapped_port needs mapped_port, 1 to 65535".into(),
        )),
        (false, Some(_)) => Err(ProtoError::BadRequest(
            "mapped_port is only for kind mapped_port".into(),
        )),
        (false, None) => Ok(()),
    }
}

/// Decodes a server line (client side). Unknown fields are ignored.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn server_messages_round_trip_and_start_with_the_version() {
        let msgs = [
            ServerMessage::Observed {
                observed: sa("203.0.113.7:40000"),
                reached: sa("198.51.100.1:3478"),
                endpoints: vec![sa("198.51.100.1:3478"), sa("[2001:db8::1]:3479")],
                request_timeout_ms: 2000,
            },
            ServerMessage::DialBackAccepted {
                token: "abc".into(),
                timeout_ms: 1000,
                dials: vec![PlannedDial {
                    kind: DialKind::OtherIp,
                    from: None,
                }],
            },
            ServerMessage::DialResult {
                token: "abc".into(),
                kind: DialKind::OtherPort,
                from: Some(sa("198.51.100.1:3479")),
                to: sa("203.0.113.7:40000"),
                outcome: DialOutcome::Timeout,
                elapsed_ms: 1000,
                detail: None,
            },
            ProtoError::Line(LineError::UnsupportedVersion {
                got: 7,
                supported: vec![1],
            })
            .to_message(),
        ];
        for msg in msgs {
            let line = encode_server(&msg);
            assert!(line.starts_with(b"{\"v\":1,\"type\":\""), "{line:?}");
            assert_eq!(line.last(), Some(&b'\n'));
            let text = frame(&line).unwrap();
            assert_eq!(decode_server(text).unwrap(), msg);
        }
    }

    #[test]
    fn request_round_trips() {
        let req = DialBackRequest {
            token: "k9_-Z".into(),
            kinds: vec![DialKind::OtherPort, DialKind::OtherIp],
            mapped_port: None,
        };
        let line = encode_request(&req);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"v\":1,\"type\":\"dial_back_request\",\"token\":\"k9_-Z\",\"kinds\":[\"other_port\",\"other_ip\"]}\n"
        );
        assert_eq!(decode_request(frame(&line).unwrap()).unwrap(), req);
    }

    #[test]
    fn requests_naming_a_target_are_refused_by_name() {
        for field in TARGET_FIELDS {
            let line = format!(
                r#"{{"v":1,"type":"dial_back_request","token":"t","kinds":["other_ip"],"{field}":"192.0.2.1:80"}}"#
            );
            let err = decode_request(&line).unwrap_err();
            assert_eq!(err, ProtoError::TargetNotAllowed(field.to_string()));
            assert_eq!(err.code(), ErrorCode::TargetNotAllowed);
        }
        let other =
            r#"{"v":1,"type":"dial_back_request","token":"t","kinds":["other_ip"],"via":1}"#;
        assert_eq!(
            decode_request(other).unwrap_err().code(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn bad_requests_get_the_right_code() {
        let cases = [
            (
                r#"{"v":2,"type":"dial_back_request","token":"t","kinds":["other_ip"]}"#,
                ErrorCode::UnsupportedVersion,
            ),
            (
                r#"{"type":"dial_back_request","token":"t","kinds":["other_ip"]}"#,
                ErrorCode::Malformed,
            ),
            (
                r#"{"v":"1","type":"dial_back_request"}"#,
                ErrorCode::Malformed,
            ),
            ("hello", ErrorCode::Malformed),
            ("[1,2]", ErrorCode::Malformed),
            (r#"{"v":1,"type":"stats"}"#, ErrorCode::UnknownType),
            (r#"{"v":1,"token":"t"}"#, ErrorCode::Malformed),
            (
                r#"{"v":1,"type":"dial_back_request","token":"","kinds":["other_ip"]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"v":1,"type":"dial_back_request","token":"a b","kinds":["other_ip"]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"v":1,"type":"dial_back_request","token":"t","kinds":[]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"v":1,"type":"dial_back_request","token":"t","kinds":["other_ip","other_ip"]}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"v":1,"type":"dial_back_request","token":"t","kinds":["same_endpoint"]}"#,
                ErrorCode::BadRequest,
            ),
        ];
        for (line, code) in cases {
            assert_eq!(
                decode_request(line).map_err(|e| e.code()),
                Err(code),
                "{line}"
            );
        }
        let long = format!(
            r#"{{"v":1,"type":"dial_back_request","token":"{}","kinds":["other_ip"]}}"#,
            "a".repeat(MAX_TOKEN + 1)
        );
        assert_eq!(
            decode_request(&long).unwrap_err().code(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn unsupported_version_message_names_what_is_spoken() {
        let err = decode_server(r#"{"v":9,"type":"observed"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "protocol version 9 is not spoken here (supported: [1]): upgrade punchscope"
        );
    }

    #[test]
    fn framing_limits() {
        assert_eq!(frame(b"{}\r\n"), Ok("{}"));
        assert_eq!(frame(b"{}"), Err(ProtoError::Line(LineError::Unterminated)));
        let full = vec![b'x'; MAX_LINE];
        assert_eq!(
            frame(&full),
            Err(ProtoError::Line(LineError::LineTooLong { max: MAX_LINE }))
        );
        let mut exact = vec![b' '; MAX_LINE - 1];
        exact.push(b'\n');
        assert!(frame(&exact).is_ok());
        assert!(matches!(
            frame(b"\xff\n"),
            Err(ProtoError::Line(LineError::Malformed(_)))
        ));
    }

    #[test]
    fn clients_ignore_unknown_server_fields_and_report_unknown_types() {
        let msg = decode_server(
            r#"{"v":1,"type":"dial_back","token":"t","kind":"other_port","from":"192.0.2.1:1","to":"192.0.2.2:2","new":true}"#,
        )
        .unwrap();
        assert!(matches!(msg, ServerMessage::DialBack { .. }));
        assert_eq!(
            decode_server(r#"{"v":1,"type":"teapot"}"#),
            Err(ProtoError::UnknownType("teapot".into()))
        );
        let future_code =
            decode_server(r#"{"v":1,"type":"error","code":"new_code","message":"m"}"#);
        assert!(matches!(
            future_code,
            Ok(ServerMessage::Error {
                code: ErrorCode::Other,
                ..
            })
        ));
    }
}
