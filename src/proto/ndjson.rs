//! Newline-delimited JSON framing shared by our line protocols: one JSON
//! object per line, a maximum line length, and a `v` version field checked first.

use serde::Serialize;
use serde_json::{Map, Value};

/// A line that fails framing or the version check, before any message-specific parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    LineTooLong,
    Unterminated,
    Malformed(String),
    MissingVersion,
    UnsupportedVersion { got: u64, supported: Vec<u32> },
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    #[serde(flatten)]
    body: &'a T,
}

/// One message as a line with its version field, newline included.
pub fn encode<T: Serialize>(version: u32, body: &T, max_line: usize) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope { v: version, body })
        .expect("protocol messages always serialize");
    debug_assert!(
        line.len() < max_line,
        "message exceeds the maximum line length"
    );
    line.push(b'\n');
    line
}

/// Checks the framing of raw bytes read up to and including a newline (at
/// most `max_line` of them) and returns the text without the newline.
pub fn frame(raw: &[u8], max_line: usize) -> Result<&str, LineError> {
    let body = match raw.strip_suffix(b"\n") {
        Some(body) => body,
        None if raw.len() >= max_line => return Err(LineError::LineTooLong),
        None => return Err(LineError::Unterminated),
    };
    if raw.len() > max_line {
        return Err(LineError::LineTooLong);
    }
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    std::str::from_utf8(body).map_err(|e| LineError::Malformed(format!("not UTF-8: {e}")))
}

/// Parses a line into an object whose `v` is one of `supported`, with `v` removed.
pub fn versioned_object(line: &str, supported: &[u32]) -> Result<Map<String, Value>, LineError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| LineError::Malformed(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(LineError::Malformed("expected a JSON object".into()));
    };
    let v = obj
        .remove("v")
        .and_then(|v| v.as_u64())
        .ok_or(LineError::MissingVersion)?;
    if !supported.iter().any(|s| u64::from(*s) == v) {
        return Err(LineError::UnsupportedVersion {
            got: v,
            supported: supported.to_vec(),
        });
    }
    Ok(obj)
}

/// Implements `From<LineError>` for a protocol's error enum with the same five variants.
macro_rules! from_line_error {
    ($error:ty) => {
        impl From<$crate::proto::ndjson::LineError> for $error {
            fn from(e: $crate::proto::ndjson::LineError) -> Self {
                use $crate::proto::ndjson::LineError;
                match e {
                    LineError::LineTooLong => Self::LineTooLong,
                    LineError::Unterminated => Self::Unterminated,
                    LineError::Malformed(m) => Self::Malformed(m),
                    LineError::MissingVersion => Self::MissingVersion,
                    LineError::UnsupportedVersion { got, supported } => {
                        Self::UnsupportedVersion { got, supported }
                    }
                }
            }
        }
    };
}
pub(crate) use from_line_error;
