//! `punchscope bench rendezvous`: runs the coordinator benchmark on loopback and prints its figures.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use punchscope::bench::{self, RendezvousBenchOptions};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Idle volunteers held and pairings per second of a coordinator, on loopback.
    Rendezvous(RendezvousBenchArgs),
}

#[derive(Debug, Args)]
pub struct RendezvousBenchArgs {
    /// Idle volunteers to hold at once.
    #[arg(long, default_value_t = 10_000)]
    pub idle: u32,
    /// Pairings to run with fake trials.
    #[arg(long, default_value_t = 1000)]
    pub pairs: u32,
    /// Trials per pairing.
    #[arg(long, default_value_t = 3)]
    pub trials: u32,
    /// Pairings in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Rendezvous(args) => rendezvous(args),
    }
}

fn rendezvous(args: RendezvousBenchArgs) -> anyhow::Result<ExitCode> {
    let figures = bench::rendezvous(&RendezvousBenchOptions {
        idle: args.idle,
        pairs: args.pairs,
        trials: args.trials,
        concurrency: args.concurrency,
        exe: std::env::current_exe().context("cannot find our own executable")?,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (idle, pairs) = (&figures.idle, &figures.pairs);
    println!(
        "coordinator at {} (RSS at start {} KiB)",
        figures.coordinator, idle.rss_start_kib
    );
    println!(
        "idle: {} of {} volunteers held ({} failed), connected and welcomed in {:.2} s ({:.0}/s)",
        idle.held,
        idle.asked,
        idle.failed,
        idle.connect_seconds,
        f64::from(idle.asked) / idle.connect_seconds
    );
    println!(
        "idle: {} heartbeats in one {} s interval; coordinator RSS {} KiB ({:.1} KiB per held volunteer above the {} KiB at start)",
        idle.heartbeats,
        idle.interval_seconds,
        idle.rss_kib,
        idle.rss_kib.saturating_sub(idle.rss_start_kib) as f64 / f64::from(idle.held.max(1)),
        idle.rss_start_kib
    );
    println!(
        "pairs: {} of {} pairings ({} failed) of {} trials each, {} in flight: {:.2} s, {:.0} pairings/s, {:.0} trials/s; coordinator RSS {} KiB",
        pairs.done,
        pairs.asked,
        pairs.failed,
        pairs.trials_per_pairing,
        pairs.concurrency,
        pairs.seconds,
        pairs.pairings_per_second,
        pairs.trials_per_second,
        pairs.rss_kib
    );
    Ok(ExitCode::SUCCESS)
}
