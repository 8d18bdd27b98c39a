//! Dataset releases (`punchscope dataset publish`): one campaign's results, tables, schema, report and provenance in a directory whose bytes depend only on the input.
//!
//! A release holds:
//! - `results.jsonl.gz`: every distinct run, one line each, sorted by
//!   `run_id`: `{"received_at", "source_group", "result"}` (the collector's
//!   export line without `source_net`), gzip with a fixed header (no file
//!   name, mtime 0, OS "unknown"), so the same runs give the same bytes;
//! - the report: `index.html`, `summary.json`, `trials.csv`, `pairs.csv`;
//! - `schema/run-result.v1.json`, the JSON Schema of a result;
//! - `README.md`: provenance (campaign, dates, tool versions, counts, what
//!   was removed and why), computed from the data, never from the clock;
//! - `SHA256SUMS`, in `sha256sum -c` format, over every other file.
//!
//! Runs are sorted and deduplicated before they are counted, so the order
//! in which inputs are given or a collector returns them changes nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::report::input::{Document, DocumentSink, Skipped, RELEASE_CHECKSUMS, RELEASE_RESULTS};
use crate::report::stats::{percent, percent_bare};
use crate::report::{Aggregator, Report, ReportConfig, ReportError};
use crate::result::{json_schema_text, RunResult, SCHEMA_VERSION};

/// Where the schema goes inside a release.
pub const RELEASE_SCHEMA: &str = "schema/run-result.v1.json";

/// Every document read for a release, and every line skipped.
#[derive(Debug, Default)]
pub struct Collection {
    pub documents: Vec<Document>,
    pub skipped: Skipped,
}

impl DocumentSink for Collection {
    fn document(&mut self, document: Document) {
        self.documents.push(document);
    }

    fn skip(&mut self, source: &str, line: u64, reason: &str) {
        self.skipped.add(source, line, reason);
    }
}

/// What a release is called and how its report is computed.
#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// The campaign's name, e.g. "lab-campaign-2026-11-21".
    pub campaign: String,
    /// The inputs as they are named in the report and the README (no machine layout).
    pub inputs: Vec<String>,
    pub config: ReportConfig,
}

/// Why a release could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// A release written: its files (relative paths, sorted) with their SHA-256.
#[derive(Debug)]
pub struct Release {
    pub dir: PathBuf,
    pub checksums: Vec<(String, String)>,
    pub report: Report,
    /// Runs in `results.jsonl.gz`.
    pub runs: usize,
    /// Copies of a run read more than once, left out.
    pub duplicate_runs: usize,
}

/// One line of `results.jsonl.gz`.
#[derive(Serialize)]
struct ReleaseLine<'a> {
    received_at: Option<DateTime<Utc>>,
    source_group: Option<&'a str>,
    result: &'a RunResult,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ReleaseError + '_ {
    move |cause| ReleaseError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The one copy kept of each run: sorted by run id; of copies, the one with
/// a network group, then the earliest received, then the smallest JSON.
fn distinct_runs(mut documents: Vec<Document>) -> (Vec<Document>, usize) {
    let key = |d: &Document| (d.run.run_id, d.source_group.is_none(), d.received_at);
    documents.sort_by(|a, b| {
        key(a)
            .cmp(&key(b))
            .then_with(|| a.source_group.cmp(&b.source_group))
            .then_with(|| a.run.to_json().cmp(&b.run.to_json()))
    });
    let before = documents.len();
    documents.dedup_by(|later, first| later.run.run_id == first.run.run_id);
    let duplicates = before - documents.len();
    (documents, duplicates)
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The runs as gzip-compressed JSONL with a fixed header.
fn results_gz(documents: &[Document]) -> io::Result<Vec<u8>> {
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::default());
    for d in documents {
        let line = ReleaseLine {
            received_at: d.received_at,
            source_group: d.source_group.as_deref(),
            result: &d.run,
        };
        serde_json::to_writer(&mut gz, &line).map_err(io::Error::other)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Writes a release of `collection` into `dir`, which must not hold
/// anything yet (or not exist).
pub fn write_release(
    collection: Collection,
    options: &ReleaseOptions,
    dir: &Path,
) -> Result<Release, ReleaseError> {
    let Collection { documents, skipped } = collection;
    let (documents, duplicate_runs) = distinct_runs(documents);
    let mut aggregator = Aggregator::new();
    aggregator.skipped = skipped;
    for d in &documents {
        aggregator.add_document(d);
    }
    let report = Report::with_config(aggregator.finish(), &options.inputs, &options.config);

    std::fs::create_dir_all(dir.join("schema")).map_err(io_err(dir))?;
    report.write(dir)?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io_err(&path))
    };
    write(
        RELEASE_RESULTS,
        &results_gz(&documents).map_err(io_err(&dir.join(RELEASE_RESULTS)))?,
    )?;
    write(RELEASE_SCHEMA, json_schema_text().as_bytes())?;
    write(
        "README.md",
        readme(options, &report, &documents, duplicate_runs).as_bytes(),
    )?;

    let mut names = vec![
        "README.md",
        "index.html",
        "pairs.csv",
        RELEASE_RESULTS,
        RELEASE_SCHEMA,
        "summary.json",
        "trials.csv",
    ];
    names.sort_unstable();
    let mut checksums = Vec::new();
    let mut sums = String::new();
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let hex = sha256_hex(&bytes);
        let _ = writeln!(sums, "{hex}  {name}");
        checksums.push((name.to_string(), hex));
    }
    write(RELEASE_CHECKSUMS, sums.as_bytes())?;
    Ok(Release {
        dir: dir.to_path_buf(),
        checksums,
        report,
        runs: documents.len(),
        duplicate_runs,
    })
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn range(times: impl Iterator<Item = DateTime<Utc>>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    times.fold(None, |acc, t| match acc {
        None => Some((t, t)),
        Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
    })
}

/// The release's README: what is in it, where it came from, what was left out.
fn readme(
    options: &ReleaseOptions,
    report: &Report,
    documents: &[Document],
    duplicate_runs: usize,
) -> String {
    let s = &report.summary;
    let c = &s.input;
    let mut r = String::new();
    let _ = writeln!(r, "# punchscope dataset release: {}\n", options.campaign);
    let _ = writeln!(
        r,
        "Made by `punchscope dataset publish` (punchscope {}) from {}, with\n\n```sh\npunchscope dataset publish {} --campaign {} --min-group-trials {} --bootstrap-resamples {} --out DIR\n```\n",
        env!("CARGO_PKG_VERSION"),
        options.inputs.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", "),
        options.inputs.join(" "),
        options.campaign,
        options.config.min_group_trials,
        options.config.bootstrap.resamples,
    );
    r.push_str(
        "The same input gives the same bytes: nothing here depends on when or where it was made. \
Check the files with `sha256sum -c SHA256SUMS`.\n\n",
    );
    r.push_str("## Files\n\n| file | what |\n|---|---|\n");
    for (file, what) in [
        (RELEASE_RESULTS, "every run, one JSON line each, sorted by `run_id`: `received_at` and `source_group` from the collector (null when the run was not read from a collector export) and `result`, the run result (schema below)"),
        ("trials.csv", "one row per counted trial (both sides' records joined), with its pairing and its volunteers' networks"),
        ("pairs.csv", "success per pair of NAT types"),
        ("summary.json", "every number of the report, with per-trial and clustered intervals"),
        ("index.html", "the report: a self-contained page"),
        (RELEASE_SCHEMA, &format!("the JSON Schema of one run result (schema version {SCHEMA_VERSION})")),
        ("SHA256SUMS", "SHA-256 of every other file"),
    ] {
        let _ = writeln!(r, "| `{file}` | {what} |");
    }
    r.push_str(
        "\nHow to load it in Python (pandas) and R: `datasets/README.md` of punchscope.\n\n",
    );

    r.push_str("## Provenance\n\n");
    let _ = writeln!(r, "- Campaign: {}", options.campaign);
    if let Some((first, _)) = range(documents.iter().map(|d| d.run.started_at)) {
        let last = range(documents.iter().map(|d| d.run.ended_at)).map_or(first, |x| x.1);
        let _ = writeln!(
            r,
            "- Runs: the first started at {}, the last ended at {} (UTC)",
            time(first),
            time(last)
        );
    }
    if let Some((first, last)) = range(documents.iter().filter_map(|d| d.received_at)) {
        let _ = writeln!(
            r,
            "- Received by the collector: {} to {}",
            time(first),
            time(last)
        );
    }
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    let mut clients: BTreeMap<String, u64> = BTreeMap::new();
    for d in documents {
        *versions.entry(d.run.tool_version.as_str()).or_default() += 1;
        *clients
            .entry(format!("{}/{}", d.run.client.os, d.run.client.arch))
            .or_default() += 1;
    }
    let list = |m: &mut dyn Iterator<Item = (String, u64)>| {
        m.map(|(k, n)| format!("{k} ({n} runs)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        r,
        "- punchscope versions that made the results: {}",
        list(&mut versions.iter().map(|(k, n)| (k.to_string(), *n)))
    );
    let _ = writeln!(r, "- Clients: {}", list(&mut clients.into_iter()));
    let _ = writeln!(
        r,
        "- Counts: {} runs ({} volunteers', {} reference peers'), {} pairing entries forming {} pairings, {} trial records, \
         {} trials counted ({} joined from both sides, {} one side only, {} without trial id), {} volunteer networks ({} keyed network groups).",
        c.runs,
        c.runs - c.reference_runs,
        c.reference_runs,
        c.pairings,
        s.uncertainty.pairings,
        c.trial_records,
        c.trials_counted,
        c.trials_both_sides,
        c.trials_one_side,
        c.trials_without_id,
        s.uncertainty.networks,
        s.uncertainty.keyed_networks
    );
    let h = &s.headline;
    if let (Some(rate), Some((low, high, _))) = (h.rate, h.quoted()) {
        let _ = writeln!(
            r,
            "- Headline: {} of trials connected ({} of {}); 95% interval clustered by pairing {}–{}% \
             (per-trial Wilson {}–{}%). Quote the clustered interval: see the report's *Uncertainty* section.",
            percent(rate),
            h.successes,
            h.n,
            percent_bare(low),
            percent_bare(high),
            h.low.map_or("–".into(), percent_bare),
            h.high.map_or("–".into(), percent_bare),
        );
    }

    r.push_str("\n## What was removed, and why\n\n");
    let sk = &s.skipped_lines;
    if sk.total == 0 {
        r.push_str("- Malformed input lines: none.\n");
    } else {
        let reasons: Vec<String> = sk
            .by_reason
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = writeln!(
            r,
            "- {} input line(s) failed the checks the collector runs on uploads (schema version, types, values, no raw IP address) \
             and are neither here nor counted. By reason: {}.",
            sk.total,
            reasons.join("; ")
        );
    }
    let _ = writeln!(
        r,
        "- {duplicate_runs} duplicate copies of a run (same `run_id`, e.g. a file and an export) were left out; one copy of each run is kept \
         (the one with the collector's network group, then the earliest received)."
    );
    r.push_str("- `source_net`, the uploader's network prefix (IPv4 /24, IPv6 /32), is dropped from every line: grouping by network \
needs only `source_group`, the collector's keyed hash of the address, which names no network. The runs' own masked endpoints \
(prefixes and ports, as the schema describes) are kept.\n");
    r.push_str("- Fields unknown to this punchscope version are not carried over: each result is written from its parsed form.\n");
    r.push_str("- Nothing else: every run that passed the checks is here, with every trial, failures included.\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_output_has_a_fixed_header_and_reads_back() {
        let bytes = results_gz(&[]).unwrap();
        // Magic, deflate, no flags, mtime 0, OS 255.
        assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255][..]);
        assert_eq!(results_gz(&[]).unwrap(), bytes);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
