//! `punchscope report`: read results (files, JSONL, directories, a collector URL) and write an HTML report with CSV and JSON summaries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use punchscope::analysis::report::cluster::{
    BootstrapConfig, DEFAULT_RESAMPLES, DEFAULT_SEED, MAX_RESAMPLES,
};
use punchscope::analysis::report::stats::{percent, percent_bare};
use punchscope::analysis::report::summary::DEFAULT_MIN_GROUP_TRIALS;
use punchscope::analysis::report::ReportConfig;
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
    #[command(flatten)]
    pub collector: CollectorAccessArgs,
    /// Two inputs A and B (e.g. two dataset releases) reported each on its
    /// own (DIR/a, DIR/b) and side by side (DIR/index.html, DIR/comparison.json).
    #[arg(long)]
    pub compare: bool,
    #[command(flatten)]
    pub statistics: StatisticsArgs,
}

/// How to read a collector URL input (`report` and `dataset publish`).
#[derive(Debug, Args)]
pub struct CollectorAccessArgs {
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

impl CollectorAccessArgs {
    /// The report's options for these inputs and output directory.
    pub fn options(self, inputs: Vec<String>, out: PathBuf) -> ReportOptions {
        ReportOptions {
            inputs,
            out,
            token_file: self.token_file,
            timeout: Duration::from_secs(self.timeout_secs.max(1)),
            ca_file: self.ca_file,
        }
    }
}

/// The report's statistics (`report` and `dataset publish`).
#[derive(Debug, Args)]
pub struct StatisticsArgs {
    /// Trials a network, label or client needs to be listed on its own.
    #[arg(long, default_value_t = DEFAULT_MIN_GROUP_TRIALS)]
    pub min_group_trials: u64,
    /// Resamples of each cluster bootstrap interval.
    #[arg(long, default_value_t = DEFAULT_RESAMPLES, value_parser = clap::value_parser!(u32).range(100..=i64::from(MAX_RESAMPLES)))]
    pub bootstrap_resamples: u32,
}

impl StatisticsArgs {
    pub fn config(&self) -> ReportConfig {
        ReportConfig {
            bootstrap: BootstrapConfig {
                resamples: self.bootstrap_resamples,
                seed: DEFAULT_SEED,
            },
            min_group_trials: self.min_group_trials,
        }
    }
}

/// Exit code 0 when the report was written (also when the input held no trials).
pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let config = args.statistics.config();
    let options = args.collector.options(args.inputs, args.out);
    if args.compare {
        return compare(&options, &config);
    }
    let outcome = report::build_with(&options, &config)?;
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

/// `--compare A B`: prints each rate of both and writes the side-by-side page.
fn compare(options: &ReportOptions, config: &ReportConfig) -> anyhow::Result<ExitCode> {
    let outcome = report::build_comparison(options, config)?;
    let c = &outcome.comparison;
    println!("A: {}\nB: {}", c.a, c.b);
    let rate = |p: &Option<punchscope::analysis::report::Proportion>| {
        p.as_ref()
            .and_then(|p| {
                p.rate
                    .map(|r| format!("{} ({}/{})", percent(r), p.successes, p.n))
            })
            .unwrap_or_else(|| "-".to_string())
    };
    for r in c
        .rates
        .iter()
        .filter(|r| r.section == "headline" || r.section == "strategy")
    {
        let difference = match (r.difference, r.low, r.high) {
            (Some(d), Some(l), Some(h)) => format!(
                "{:+.1} points [{}, {}]",
                d * 100.0,
                percent_bare(l),
                percent_bare(h)
            ),
            _ => "-".to_string(),
        };
        println!(
            "  {:<28} A {:<20} B {:<20} B-A {difference}",
            format!("{} {}", r.section, r.row),
            rate(&r.a),
            rate(&r.b)
        );
    }
    println!("comparison: {}", outcome.index_html.display());
    Ok(ExitCode::SUCCESS)
}
