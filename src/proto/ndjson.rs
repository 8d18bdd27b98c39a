//! Newline-delimited JSON framing shared by our line protocols: one JSON
//! object per line, a maximum line length, and a `v` version field checked first.

use serde::Serialize;
use serde_json::{Map, Value};

/// A line that fails framing or the version check, before any message-specific
/// parsing. The `Display` text is what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {max} bytes: send shorter lines")]
    LineTooLong { max: usize },
    #[error("line ended without a newline: terminate every message with \\n")]
    Unterminated,
    #[error("not a JSON object: {0}")]
    Malformed(String),
    #[error("missing or non-integer field `v`: every message carries the protocol version")]
    MissingVersion,
    #[error(
        "protocol version {got} is not spoken here (supported: {supported:?}): upgrade punchscope"
    )]
    UnsupportedVersion { got: u64, supported: Vec<u32> },
}

/// Longest error text a server sends on a line: error texts can quote what
/// the peer sent (an unknown type, a bad value), and the answer must stay
/// within the line limit whatever the peer sent.
pub const MAX_ERROR_TEXT: usize = 256;

/// `text` cut to at most `max` bytes (at a character boundary, `...` marking
/// the cut). Every server bounds the error texts it sends with this.
pub fn bounded_text(mut text: String, max: usize) -> String {
    const CUT: &str = "...";
    if text.len() > max {
        let mut end = max.saturating_sub(CUT.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(CUT);
    }
    text
}

/// A server message that may carry an error text (which can quote the peer).
pub trait ServerLine: Serialize + Clone {
    /// The error text, if this message is an error.
    fn error_text(&self) -> Option<&str>;
    /// The same, to cut it.
    fn error_text_mut(&mut self) -> Option<&mut String>;
}

/// A server message as a line, its error text (if any) first cut to
/// [`MAX_ERROR_TEXT`]: every server of every line protocol answers this way.
pub fn encode_server_line<T: ServerLine>(version: u32, msg: &T, max_line: usize) -> Vec<u8> {
    if msg.error_text().is_some_and(|t| t.len() > MAX_ERROR_TEXT) {
        let mut bounded = msg.clone();
        if let Some(text) = bounded.error_text_mut() {
            *text = bounded_text(std::mem::take(text), MAX_ERROR_TEXT);
        }
        return encode(version, &bounded, max_line);
    }
    encode(version, msg, max_line)
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

/// How many of `buffered` bytes make the next line, newline included, once
/// it is complete (`None`: read more). A reader calls this after every read;
/// `max_line` bytes without a newline are an error, so a reader never
/// buffers more than one line's worth plus one read.
pub fn next_line_len(buffered: &[u8], max_line: usize) -> Result<Option<usize>, LineError> {
    let window = &buffered[..buffered.len().min(max_line)];
    match window.iter().position(|b| *b == b'\n') {
        Some(newline) => Ok(Some(newline + 1)),
        None if buffered.len() >= max_line => Err(LineError::LineTooLong { max: max_line }),
        None => Ok(None),
    }
}

/// Checks the framing of raw bytes read up to and including a newline (at
/// most `max_line` of them) and returns the text without the newline.
pub fn frame(raw: &[u8], max_line: usize) -> Result<&str, LineError> {
    let body = match raw.strip_suffix(b"\n") {
        Some(body) => body,
        None if raw.len() >= max_line => return Err(LineError::LineTooLong { max: max_line }),
        None => return Err(LineError::Unterminated),
    };
    if raw.len() > max_line {
        return Err(LineError::LineTooLong { max: max_line });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_line_len_finds_the_first_newline_within_the_limit() {
        assert_eq!(next_line_len(b"", 8), Ok(None));
        assert_eq!(next_line_len(b"{}", 8), Ok(None));
        assert_eq!(next_line_len(b"{}\n{}\n", 8), Ok(Some(3)));
        assert_eq!(next_line_len(b"1234567\n", 8), Ok(Some(8)));
        assert_eq!(
            next_line_len(b"12345678\n", 8),
            Err(LineError::LineTooLong { max: 8 })
        );
        assert_eq!(
            next_line_len(b"12345678", 8),
            Err(LineError::LineTooLong { max: 8 })
        );
    }

    #[test]
    fn frame_and_next_line_len_agree_on_the_limit() {
        for len in 1..=10 {
            let mut raw = vec![b'x'; len - 1];
            raw.push(b'\n');
            let framed = frame(&raw, 8).is_ok();
            let found = next_line_len(&raw, 8) == Ok(Some(len));
            assert_eq!(framed, found, "a {len}-byte line");
        }
    }

    #[test]
    fn bounded_text_cuts_long_texts_at_a_character_boundary() {
        assert_eq!(bounded_text("short".into(), 10), "short");
        assert_eq!(bounded_text("0123456789abc".into(), 10), "0123456...");
        let cut = bounded_text("ééééééé".into(), 10);
        assert!(cut.len() <= 10 && cut.ends_with("..."), "{cut}");
    }
}
