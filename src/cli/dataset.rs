//! `punchscope dataset publish`: write a dataset release (results, tables, schema, report, provenance, checksums) from results.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use punchscope::dataset::{self, PublishOptions};

use super::report::{CollectorAccessArgs, StatisticsArgs};

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
    #[command(flatten)]
    pub statistics: StatisticsArgs,
    #[command(flatten)]
    pub collector: CollectorAccessArgs,
}

pub fn run(args: DatasetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DatasetCommand::Publish(args) => publish(args),
    }
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let release = dataset::publish(&PublishOptions {
        config: args.statistics.config(),
        source: args.collector.options(args.inputs, args.out),
        campaign: args.campaign,
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
