//! Reading report inputs as a stream: result files, JSONL files (RunResult or CollectedResult per line, plain or gzip), directories and releases, any reader.
//!
//! Nothing holds more than one line of raw JSON at a time: a line is read
//! into a reused buffer (at most [`MAX_LINE_BYTES`]; a longer line is
//! skipped without being held), parsed, checked by [`RunResult::from_value`]
//! (schema version, types, values, no raw IP address), and handed to the
//! [`Aggregator`]. A line that fails any of that is counted in
//! [`Skipped`] with its source, line number and reason, and the report goes
//! on: malformed input never aborts a report and is never counted as data.
//!
//! The readers hand [`Document`]s to any [`DocumentSink`]: the
//! [`Aggregator`] of a report, or a release's collection of runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::aggregate::Aggregator;
use super::ReportError;
use crate::privacy;
use crate::result::{RunResult, MAX_RESULT_BYTES, SCHEMA_VERSION};

/// One input document: a run, with what a collector export line adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub run: RunResult,
    /// The collector's keyed network group of the upload (lowercase hex),
    /// when the line was an export line carrying one.
    pub source_group: Option<String>,
    /// When the collector stored it, when the line said.
    pub received_at: Option<DateTime<Utc>>,
}

impl Document {
    /// A run read on its own, without a collector's envelope.
    pub fn bare(run: RunResult) -> Self {
        Document {
            run,
            source_group: None,
            received_at: None,
        }
    }
}

/// Where the readers put what they read.
pub trait DocumentSink {
    /// A document that passed every check.
    fn document(&mut self, document: Document);
    /// A line (or file) that did not, and why.
    fn skip(&mut self, source: &str, line: u64, reason: &str);
}

impl DocumentSink for Aggregator {
    fn document(&mut self, document: Document) {
        self.add_document(&document);
    }

    fn skip(&mut self, source: &str, line: u64, reason: &str) {
        self.skipped.add(source, line, reason);
    }
}

/// A collector export line (`CollectedResult`) or a release line, read
/// leniently: only `result` is needed; `source_net` is ignored (a release
/// leaves it out).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    received_at: Option<DateTime<Utc>>,
    #[serde(default)]
    source_group: Option<String>,
    result: RunResult,
}

/// Longest network group kept: an HMAC-SHA256 is 64 hex digits.
const MAX_GROUP_CHARS: usize = 128;

/// A network group as the report keeps it: hex digits only, lowercased;
/// anything else is not a group this code knows how to read, and is dropped.
fn clean_group(group: Option<String>) -> Option<String> {
    group
        .filter(|g| {
            !g.is_empty() && g.len() <= MAX_GROUP_CHARS && g.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|g| g.to_ascii_lowercase())
}

/// Longest input line read: a stored result ([`MAX_RESULT_BYTES`]) plus the
/// collector's wrapper, with room to spare.
pub const MAX_LINE_BYTES: usize = MAX_RESULT_BYTES + 64 * 1024;

/// How deep directories are walked.
pub const MAX_DIR_DEPTH: usize = 8;

/// Skipped lines kept with their full reason (all are counted).
pub const MAX_SKIPPED_EXAMPLES: usize = 100;

/// Longest reason text kept for one skipped line.
const MAX_REASON_CHARS: usize = 300;

/// One input line (or file) that was not counted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLine {
    /// The file, URL or stream name.
    pub source: String,
    /// 1-based line number (1 for a whole-document file).
    pub line: u64,
    pub reason: String,
}

/// Every line that was not counted: the total, a count per kind of reason,
/// and the first [`MAX_SKIPPED_EXAMPLES`] in full.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub total: u64,
    /// Reason kind ("not valid JSON", "field `...`", ...) -> lines.
    pub by_reason: BTreeMap<String, u64>,
    pub examples: Vec<SkippedLine>,
}

impl Skipped {
    /// Records a skipped line.
    pub fn add(&mut self, source: &str, line: u64, reason: &str) {
        self.total += 1;
        *self.by_reason.entry(reason_kind(reason)).or_default() += 1;
        if self.examples.len() < MAX_SKIPPED_EXAMPLES {
            self.examples.push(SkippedLine {
                source: source.to_string(),
                line,
                reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            });
        }
    }
}

/// The kind of a reason, for counting: the text before the first colon
/// ("not valid JSON: expected value at line 1 column 1" -> "not valid JSON").
fn reason_kind(reason: &str) -> String {
    reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .chars()
        .take(80)
        .collect()
}

/// Parses one document: a [`RunResult`], or a collector export line
/// ([`crate::result::CollectedResult`], whose `result` is checked the same way).
///
/// Accepts and rejects exactly what [`RunResult::from_json`] does, with its
/// messages. A fast path parses straight into the types (about five times
/// faster than going through a `serde_json::Value`) when the text has no
/// escape sequence (so every string literal lies between two quotes, as is)
/// and no string holding a raw IP literal ([`privacy::find_raw_ip`], the
/// scanner of the checked path); anything else, and any failure, takes the
/// checked path that names the offending field.
pub fn parse_document(text: &str) -> Result<RunResult, String> {
    parse_line(text).map(|document| document.run)
}

/// [`parse_document`], keeping the export line's network group and time.
pub fn parse_line(text: &str) -> Result<Document, String> {
    if let Some(document) = parse_fast(text) {
        return Ok(document);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    parse_value(value)
}

/// Whether any string literal (key or value) of a JSON text without escape
/// sequences holds a raw IP address. Strings with neither `.` nor `:` cannot
/// hold one and are not scanned.
fn raw_ip_in_strings(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut start = None;
    let mut suspicious = false;
    for (i, &b) in bytes.iter().enumerate() {
        match (b, start) {
            (b'"', None) => {
                start = Some(i + 1);
                suspicious = false;
            }
            (b'"', Some(s)) => {
                // Quotes are ASCII, so both ends are char boundaries.
                if suspicious && privacy::find_raw_ip(&text[s..i]).is_some() {
                    return true;
                }
                start = None;
            }
            (b'.' | b':', Some(_)) => suspicious = true,
            _ => {}
        }
    }
    false
}

fn parse_fast(text: &str) -> Option<Document> {
    if text.contains('\\') || raw_ip_in_strings(text) {
        return None;
    }
    let looks_collected = !text.trim_start().starts_with("{\"schema_version\"");
    let collected = || {
        serde_json::from_str::<Envelope>(text)
            .ok()
            .map(|e| Document {
                run: e.result,
                source_group: clean_group(e.source_group),
                received_at: e.received_at,
            })
    };
    let direct = || {
        serde_json::from_str::<RunResult>(text)
            .ok()
            .map(Document::bare)
    };
    let document = if looks_collected {
        collected().or_else(direct)
    } else {
        direct().or_else(collected)
    }?;
    let run = &document.run;
    (run.schema_version == SCHEMA_VERSION && run.validate().is_ok()).then_some(document)
}

fn parse_value(mut value: Value) -> Result<Document, String> {
    let is_collected = value
        .as_object()
        .is_some_and(|o| !o.contains_key("schema_version") && o.contains_key("result"));
    if is_collected {
        let source_group = clean_group(
            value
                .get("source_group")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
        let received_at = value
            .get("received_at")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<DateTime<Utc>>().ok());
        let inner = value
            .get_mut("result")
            .map(Value::take)
            .unwrap_or(Value::Null);
        let run = RunResult::from_value(inner).map_err(|e| format!("collected result: {e}"))?;
        return Ok(Document {
            run,
            source_group,
            received_at,
        });
    }
    RunResult::from_value(value)
        .map(Document::bare)
        .map_err(|e| e.to_string())
}

/// What one bounded line read found.
enum LineRead {
    Eof,
    Line,
    /// The line was longer than the limit; its bytes were consumed and dropped.
    TooLong(usize),
}

/// Reads one line (without its newline) into `buf`, holding at most `max` bytes.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match memchr_newline(chunk) {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        total += part.len();
        if total <= max {
            buf.extend_from_slice(part);
        } else {
            buf.clear();
        }
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(LineRead::Eof);
    }
    if total > max {
        return Ok(LineRead::TooLong(total));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(LineRead::Line)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Reads JSONL from `reader`: one RunResult or CollectedResult per line,
/// blank lines ignored. `source` names the stream in skip reasons. Only an
/// I/O error of the reader itself ends the stream early (it is returned).
pub fn read_jsonl(
    source: &str,
    reader: impl Read,
    sink: &mut impl DocumentSink,
) -> Result<(), io::Error> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut line = 0u64;
    loop {
        let read = read_line_bounded(&mut reader, &mut buf, MAX_LINE_BYTES)?;
        line += 1;
        match read {
            LineRead::Eof => return Ok(()),
            LineRead::TooLong(len) => sink.skip(
                source,
                line,
                &format!(
                    "line too long: {len} bytes, more than the {MAX_LINE_BYTES} a result may take"
                ),
            ),
            LineRead::Line => {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed = std::str::from_utf8(&buf)
                    .map_err(|e| format!("not valid JSON: not UTF-8 ({e})"))
                    .and_then(parse_line);
                match parsed {
                    Ok(document) => sink.document(document),
                    Err(reason) => sink.skip(source, line, &reason),
                }
            }
        }
    }
}

/// Reads one file: a `.json` file holding one document (pretty-printed or
/// not) is read whole; a `.gz` file is gzip-compressed JSONL; anything else,
/// or a `.json` file with one document per line, is read as JSONL.
pub fn read_file(path: &Path, sink: &mut impl DocumentSink) -> Result<(), ReportError> {
    let source = path.display().to_string();
    let io = |e| ReportError::Io {
        path: path.to_path_buf(),
        cause: e,
    };
    if path.extension().is_some_and(|e| e == "gz") {
        let file = File::open(path).map_err(io)?;
        return read_jsonl(&source, GzDecoder::new(BufReader::new(file)), sink).map_err(io);
    }
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len <= MAX_LINE_BYTES as u64 {
            let text = std::fs::read(path).map_err(io)?;
            let text = String::from_utf8_lossy(&text);
            // One document, possibly spread over several lines.
            if let Ok(value) = serde_json::from_str::<Value>(&text) {
                match parse_value(value) {
                    Ok(document) => sink.document(document),
                    Err(reason) => sink.skip(&source, 1, &reason),
                }
                return Ok(());
            }
            // Not one document: JSONL (each line then reports its own error).
        }
    }
    let file = File::open(path).map_err(io)?;
    read_jsonl(&source, file, sink).map_err(io)
}

/// The file of a release directory that holds its results.
pub const RELEASE_RESULTS: &str = "results.jsonl.gz";
/// The checksum file that marks a directory as a release.
pub const RELEASE_CHECKSUMS: &str = "SHA256SUMS";

/// Whether a directory is a dataset release (`punchscope dataset publish`):
/// its results are read, not its summary, schema or other JSON files.
pub fn is_release(dir: &Path) -> bool {
    dir.join(RELEASE_RESULTS).is_file() && dir.join(RELEASE_CHECKSUMS).is_file()
}

fn is_result_file(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    [".json", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The files a path stands for: the file itself; a release's
/// `results.jsonl.gz`; or every `.json`, `.jsonl`, `.ndjson` (and those
/// gzipped) file under a directory (at most [`MAX_DIR_DEPTH`] deep, hidden
/// entries skipped), in name order.
pub fn input_files(path: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let meta = std::fs::metadata(path).map_err(|e| ReportError::Io {
        path: path.to_path_buf(),
        cause: e,
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    if is_release(path) {
        return Ok(vec![path.join(RELEASE_RESULTS)]);
    }
    let mut files = Vec::new();
    walk(path, 0, &mut files)?;
    Ok(files)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    if depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let io = |e| ReportError::Io {
        path: dir.to_path_buf(),
        cause: e,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(io)?;
        if kind.is_dir() {
            walk(&path, depth + 1, files)?;
        } else if kind.is_file() && is_result_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

/// Reads a file, a release, or a directory of result files.
pub fn read_path(path: &Path, sink: &mut impl DocumentSink) -> Result<(), ReportError> {
    for file in input_files(path)? {
        read_file(&file, sink)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines_drop_long_ones_and_keep_going() {
        let text = b"short\r\n0123456789abcdef\nlast";
        let mut reader = BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_bounded(&mut reader, &mut buf, 10).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"short");
        assert!(matches!(
            read_line_bounded(&mut reader, &mut buf, 10).unwrap(),
            LineRead::TooLong(16)
        ));
        assert!(matches!(
            read_line_bounded(&mut reader, &mut buf, 10).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"last");
        assert!(matches!(
            read_line_bounded(&mut reader, &mut buf, 10).unwrap(),
            LineRead::Eof
        ));
    }

    #[test]
    fn skipped_lines_are_counted_by_kind() {
        let mut s = Skipped::default();
        s.add("a.jsonl", 3, "not valid JSON: EOF while parsing");
        s.add("a.jsonl", 4, "not valid JSON: expected value");
        s.add(
            "b.jsonl",
            1,
            "field `run_id`: must be a random (version 4) UUID",
        );
        assert_eq!(s.total, 3);
        assert_eq!(s.by_reason["not valid JSON"], 2);
        assert_eq!(s.by_reason["field `run_id`"], 1);
        assert_eq!(s.examples[2].line, 1);
    }
}
