//! `punchscope report`'s one library call: read results from files,
//! directories, JSONL or a collector (through [`crate::collector::client`])
//! into the analysis crate's aggregator, and write the report. `lab run`
//! calls it too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use punchscope_analysis::report::input::{self, DocumentSink, Skipped};
use punchscope_analysis::report::{
    compare, Aggregator, Report, ReportConfig, ReportError, ReportFiles,
};

use crate::collector::{ClientError, ClientOptions, CollectorClient};

/// What to read and where to write.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Paths (files, JSONL, directories) or collector URLs (`http(s)://...`).
    pub inputs: Vec<String>,
    /// Directory for index.html, summary.json, trials.csv and pairs.csv.
    pub out: PathBuf,
    /// File holding the collector's export token (needed for a collector URL).
    pub token_file: Option<PathBuf>,
    /// Bound on connecting to a collector and on each read of its export.
    pub timeout: Duration,
    /// A PEM file of CA certificates trusted besides the built-in roots (HTTPS collectors).
    pub ca_file: Option<PathBuf>,
}

/// A report written.
#[derive(Debug)]
pub struct ReportOutcome {
    pub report: Report,
    pub files: ReportFiles,
    /// Input lines that were not counted, with why.
    pub skipped: Skipped,
}

/// Why no report was written.
#[derive(Debug, thiserror::Error)]
pub enum ReportRunError {
    #[error("reading from the collector {url} needs its export token: pass --token-file FILE")]
    NeedToken { url: String },
    #[error("reading the export token from {path}: {cause}")]
    Token {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error(transparent)]
    Collector(#[from] ClientError),
    #[error("reading the export from {url}: {cause}")]
    Export { url: String, cause: std::io::Error },
    #[error("reading {source_name}: {cause}")]
    Read {
        source_name: String,
        cause: ReportError,
    },
    #[error("writing the report into {dir}: {cause}")]
    Write { dir: PathBuf, cause: ReportError },
    #[error("--compare takes exactly two inputs (A and B), not {0}")]
    CompareTwo(usize),
}

/// Whether an input names a collector rather than a path.
pub fn is_collector_url(input: &str) -> bool {
    input.starts_with("http://") || input.starts_with("https://")
}

/// Reads every input and writes the report into `options.out`.
pub fn build(options: &ReportOptions) -> Result<ReportOutcome, ReportRunError> {
    build_with(options, &ReportConfig::default())
}

/// Reads every input (paths, releases, collector URLs) into `sink`.
pub fn read_inputs(
    options: &ReportOptions,
    sink: &mut impl DocumentSink,
) -> Result<(), ReportRunError> {
    for source in &options.inputs {
        if is_collector_url(source) {
            read_collector(source, options, sink)?;
        } else {
            input::read_path(Path::new(source), sink).map_err(|cause| ReportRunError::Read {
                source_name: source.clone(),
                cause,
            })?;
        }
    }
    Ok(())
}

/// [`build`] with a bootstrap and listing threshold of one's own.
pub fn build_with(
    options: &ReportOptions,
    config: &ReportConfig,
) -> Result<ReportOutcome, ReportRunError> {
    let mut aggregator = Aggregator::new();
    read_inputs(options, &mut aggregator)?;
    let skipped = aggregator.skipped.clone();
    let labels: Vec<String> = options.inputs.iter().map(|i| input_label(i)).collect();
    let report = Report::with_config(aggregator.finish(), &labels, config);
    let files = report
        .write(&options.out)
        .map_err(|cause| ReportRunError::Write {
            dir: options.out.clone(),
            cause,
        })?;
    Ok(ReportOutcome {
        report,
        files,
        skipped,
    })
}

/// Two reports side by side, written.
#[derive(Debug)]
pub struct ComparisonOutcome {
    pub a: Report,
    pub b: Report,
    pub comparison: compare::Comparison,
    /// `index.html` and `comparison.json` in the output directory.
    pub index_html: PathBuf,
    pub comparison_json: PathBuf,
}

/// `report --compare A B`: each of the two inputs (a release, a file, a
/// directory or a collector) is reported on its own into `out/a` and
/// `out/b`, and `out/index.html` and `out/comparison.json` hold both side by side.
pub fn build_comparison(
    options: &ReportOptions,
    config: &ReportConfig,
) -> Result<ComparisonOutcome, ReportRunError> {
    let [a, b] = options.inputs.as_slice() else {
        return Err(ReportRunError::CompareTwo(options.inputs.len()));
    };
    let side = |input: &String, dir: &str| {
        build_with(
            &ReportOptions {
                inputs: vec![input.clone()],
                out: options.out.join(dir),
                ..options.clone()
            },
            config,
        )
    };
    let a_out = side(a, "a")?;
    let b_out = side(b, "b")?;
    let comparison = compare::compare(
        &input_label(a),
        &a_out.report.summary,
        &input_label(b),
        &b_out.report.summary,
    );
    let write_err = |cause: std::io::Error, path: &Path| ReportRunError::Write {
        dir: options.out.clone(),
        cause: ReportError::Io {
            path: path.to_path_buf(),
            cause,
        },
    };
    let index_html = options.out.join("index.html");
    let comparison_json = options.out.join("comparison.json");
    let page = compare::render(&comparison).map_err(|cause| ReportRunError::Write {
        dir: options.out.clone(),
        cause,
    })?;
    std::fs::write(&index_html, page).map_err(|e| write_err(e, &index_html))?;
    let mut json = serde_json::to_string_pretty(&comparison).expect("a comparison serializes");
    json.push('\n');
    std::fs::write(&comparison_json, json).map_err(|e| write_err(e, &comparison_json))?;
    Ok(ComparisonOutcome {
        a: a_out.report,
        b: b_out.report,
        comparison,
        index_html,
        comparison_json,
    })
}

/// Streams the collector's export into the sink, line by line.
fn read_collector(
    base: &str,
    options: &ReportOptions,
    sink: &mut impl DocumentSink,
) -> Result<(), ReportRunError> {
    let Some(token_file) = &options.token_file else {
        return Err(ReportRunError::NeedToken {
            url: base.to_string(),
        });
    };
    let token = std::fs::read_to_string(token_file).map_err(|cause| ReportRunError::Token {
        path: token_file.clone(),
        cause,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ReportRunError::EmptyToken(token_file.clone()));
    }
    let client = CollectorClient::with_options(
        base,
        &ClientOptions {
            timeout: options.timeout,
            ca_file: options.ca_file.clone(),
        },
    )?;
    let url = client.export_url();
    let export = client.export(token)?;
    input::read_jsonl(&url, export, sink).map_err(|cause| ReportRunError::Export { url, cause })
}

/// How an input is named in the report: as given when relative or a URL; an
/// absolute path relative to the working directory when it lies below it,
/// else by its file name, so that a report does not record the layout of
/// the machine that made it.
pub fn input_label(input: &str) -> String {
    let path = Path::new(input);
    if is_collector_url(input) || !path.is_absolute() {
        return input.to_string();
    }
    if let Some(relative) = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
    {
        return relative.display().to_string();
    }
    path.file_name()
        .map_or_else(|| input.to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_inputs_are_not_recorded_with_the_machines_layout() {
        assert_eq!(input_label("results.jsonl"), "results.jsonl");
        assert_eq!(input_label("dir/a.json"), "dir/a.json");
        assert_eq!(
            input_label("http://198.51.100.10:8080"),
            "http://198.51.100.10:8080"
        );
        let cwd = std::env::current_dir().unwrap();
        let inside = cwd.join("campaign-out").join("results.jsonl");
        assert_eq!(
            input_label(&inside.display().to_string()),
            "campaign-out/results.jsonl"
        );
        assert_eq!(
            input_label("/nonexistent-root-dir/x/results.jsonl"),
            "results.jsonl"
        );
    }
}
