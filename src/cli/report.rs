//! `punchscope report`: read results (files, JSONL, directories, a collector URL) and write an HTML report with CSV and JSON summaries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use punchscope::analysis::report::{input, Aggregator, Report};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files (one RunResult JSON each), JSONL files (one RunResult or
    /// collector export line each), directories of those, or a collector URL
    /// (http://HOST:PORT, read from GET /v1/results.jsonl).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Directory to write index.html, summary.json, trials.csv and pairs.csv into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// File holding the collector's export token (for a collector URL input).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait to connect to a collector, and between reads of its export.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

fn is_url(input: &str) -> bool {
    input.starts_with("http://") || input.starts_with("https://")
}

/// Streams the collector's export into the aggregator, line by line.
fn read_collector(
    base: &str,
    token_file: Option<&Path>,
    timeout: Duration,
    aggregator: &mut Aggregator,
) -> anyhow::Result<()> {
    let Some(token_file) = token_file else {
        bail!("reading from the collector {base} needs its export token: pass --token-file FILE");
    };
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading the export token from {}", token_file.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", token_file.display());
    }
    let url = format!("{}/v1/results.jsonl", base.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout_read(timeout)
        .build();
    let response = match agent
        .get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body: String = r
                .into_string()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            bail!("the collector at {url} answered {code}: {body}");
        }
        Err(e) => return Err(e).with_context(|| format!("fetching {url}")),
    };
    input::read_jsonl(&url, response.into_reader(), aggregator)
        .with_context(|| format!("reading the export from {url}"))?;
    Ok(())
}

/// Exit code 0 when the report was written (also when the input held no trials).
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout_secs.max(1));
    let mut aggregator = Aggregator::new();
    for source in &args.inputs {
        if is_url(source) {
            read_collector(source, args.token_file.as_deref(), timeout, &mut aggregator)?;
        } else {
            input::read_path(Path::new(source), &mut aggregator)
                .with_context(|| format!("reading {source}"))?;
        }
    }
    let skipped = aggregator.skipped.clone();
    if skipped.total > 0 {
        eprintln!(
            "skipped {} malformed input line(s), not counted:",
            skipped.total
        );
        for e in skipped.examples.iter().take(20) {
            eprintln!("  {}:{}: {}", e.source, e.line, e.reason);
        }
        if skipped.total > 20 {
            eprintln!(
                "  ... and {} more (see summary.json `skipped_lines`)",
                skipped.total - 20
            );
        }
    }
    let report = Report::new(aggregator.finish(), &args.inputs);
    let files = report
        .write(&args.out)
        .with_context(|| format!("writing the report into {}", args.out.display()))?;
    print!("{}", report.headline_table());
    println!("report: {}", files.index_html.display());
    Ok(ExitCode::SUCCESS)
}
