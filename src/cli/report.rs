//! `punchscope report`: read results (files, JSONL, directories, a collector URL) and write an HTML report with CSV and JSON summaries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use punchscope::report::{self, ReportOptions};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files (one RunResult JSON each), JSONL files (one RunResult or
    /// collector export line each), directories of those, or a collector URL
    /// (http(s)://HOST[:PORT], read from GET /v1/results.jsonl).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Directory to write index.html, summary.json, trials.csv and pairs.csv into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// File holding the collector's export token (for a collector URL input).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust besides the built-in roots, for an HTTPS collector with its own CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Seconds to wait to connect to a collector, and between reads of its export.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Exit code 0 when the report was written (also when the input held no trials).
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let outcome = report::build(&ReportOptions {
        inputs: args.inputs,
        out: args.out,
        token_file: args.token_file,
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        ca_file: args.ca_file,
    })?;
    let skipped = &outcome.skipped;
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
    print!("{}", outcome.report.headline_table());
    println!("report: {}", outcome.files.index_html.display());
    Ok(ExitCode::SUCCESS)
}
