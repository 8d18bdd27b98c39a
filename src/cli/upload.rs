//! `punchscope upload`: send the spooled results to a collector and say what happened to each.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use punchscope::upload::{self, Spool, UploadPolicy};

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Spool directory holding results waiting for upload
    /// (default: $XDG_STATE_HOME/punchscope/spool or ~/.local/state/punchscope/spool).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The collector, e.g. https://collector.example.org or http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub collector: String,
    /// CA certificates (PEM) to trust besides the built-in roots (a campaign's own CA).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Attempts per result before giving up for this invocation.
    #[arg(long, default_value_t = UploadPolicy::default().max_attempts)]
    pub max_attempts: u32,
    /// Milliseconds before the first retry (doubling each time, at most 8 s).
    #[arg(long, default_value_t = 500)]
    pub initial_backoff_ms: u64,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Exit codes: 0 nothing left to send, 2 some results still pending (try
/// again later), 3 some results were rejected (see the spool's `rejected/`).
pub fn run(args: UploadArgs) -> anyhow::Result<ExitCode> {
    let dir = args.spool.unwrap_or_else(upload::default_spool_dir);
    let spool = Spool::open(&dir)?;
    let policy = UploadPolicy {
        max_attempts: args.max_attempts.max(1),
        initial_backoff: Duration::from_millis(args.initial_backoff_ms),
        request_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        ca_file: args.ca_file,
        ..UploadPolicy::default()
    };
    let waiting = spool.pending()?.len();
    if waiting == 0 {
        println!("nothing to upload in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "uploading {waiting} result(s) from {} to {}",
        dir.display(),
        args.collector
    );
    let report = upload::upload_pending(&spool, &args.collector, &policy)?;
    for run_id in &report.delivered {
        println!("stored          {run_id}");
    }
    for run_id in &report.already_stored {
        println!("already stored  {run_id}");
    }
    for (run_id, reason) in &report.rejected {
        println!("rejected        {run_id}: {reason}");
    }
    for run_id in &report.taken_by_another {
        println!("taken by another uploader of this spool  {run_id}");
    }
    println!(
        "{} stored, {} already stored, {} rejected (kept in {}), {} still pending",
        report.delivered.len(),
        report.already_stored.len(),
        report.rejected.len(),
        spool.rejected_dir().display(),
        report.pending.len()
    );
    if let Some(why) = &report.stopped_because {
        println!("stopped early: {why}; run `punchscope upload` again later");
    }
    Ok(if !report.pending.is_empty() {
        ExitCode::from(2)
    } else if !report.rejected.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
