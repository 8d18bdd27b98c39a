//! `punchscope dataset publish`: write a dataset release (results, tables, schema, report, provenance, checksums) from results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use punchscope::analysis::report::cluster::{
    BootstrapConfig, DEFAULT_RESAMPLES, DEFAULT_SEED, MAX_RESAMPLES,
};
use punchscope::analysis::report::summary::DEFAULT_MIN_GROUP_TRIALS;
use punchscope::analysis::report::ReportConfig;
use punchscope::dataset::{self, PublishOptions};
use punchscope::report::ReportOptions;

#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    pub command: DatasetCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Write a release directory: results.jsonl.gz, trials.csv, pairs.csv, the schema, README.md with provenance, the report and SHA256SUMS; the same input gives the same bytes.
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Result files, JSONL files, directories, earlier releases, or a collector URL (http://HOST:PORT).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// The release directory (new or empty, or an earlier release with --replace).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The campaign's name, recorded in the README (letters, digits, '.', '-', '_').
    #[arg(long)]
    pub campaign: String,
    /// Write over an earlier release in --out (only its own files are removed).
    #[arg(long)]
    pub replace: bool,
    /// Trials a network, label or client needs to be listed on its own.
    #[arg(long, default_value_t = DEFAULT_MIN_GROUP_TRIALS)]
    pub min_group_trials: u64,
    /// Resamples of each cluster bootstrap interval.
    #[arg(long, default_value_t = DEFAULT_RESAMPLES, value_parser = clap::value_parser!(u32).range(100..=i64::from(MAX_RESAMPLES)))]
    pub bootstrap_resamples: u32,
    /// File holding the collector's export token (for a collector URL input).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait to connect to a collector, and between reads of its export.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

pub fn run(args: DatasetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DatasetCommand::Publish(args) => publish(args),
    }
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let release = dataset::publish(&PublishOptions {
        source: ReportOptions {
            inputs: args.inputs,
            out: args.out,
            token_file: args.token_file,
            timeout: Duration::from_secs(args.timeout_secs.max(1)),
        },
        campaign: args.campaign,
        config: ReportConfig {
            bootstrap: BootstrapConfig {
                resamples: args.bootstrap_resamples,
                seed: DEFAULT_SEED,
            },
            min_group_trials: args.min_group_trials,
        },
        replace: args.replace,
    })?;
    let skipped = &release.report.summary.skipped_lines;
    if skipped.total > 0 {
        eprintln!(
            "skipped {} malformed input line(s), listed in the release's README and summary.json",
            skipped.total
        );
    }
    print!("{}", release.report.headline_table());
    println!(
        "release: {} ({} runs, {} duplicate copies left out)",
        release.dir.display(),
        release.runs,
        release.duplicate_runs
    );
    for (name, hex) in &release.checksums {
        println!("  {hex}  {name}");
    }
    Ok(ExitCode::SUCCESS)
}
