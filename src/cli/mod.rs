//! Command-line interface of the `punchscope` binary: one clap `Args` struct per subcommand, each in its own file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod classify;
mod collector;
mod dataset;
mod handshake;
#[cfg(all(feature = "lab", target_os = "linux"))]
mod lab;
mod probe;
mod punch;
mod report;
mod serve;
mod upload;

/// Measure how well TCP hole punching works for Bitcoin nodes behind home NATs.
#[derive(Debug, Parser)]
#[command(name = "punchscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Classify the NAT in front of this host (mapping, filtering, port allocation, hairpinning).
    Classify(classify::ClassifyArgs),
    /// Run a server (`serve echo`, `serve rendezvous`).
    Serve(serve::ServeArgs),
    /// Build NAT labs in network namespaces and run things inside them.
    #[cfg(all(feature = "lab", target_os = "linux"))]
    Lab(lab::LabArgs),
    /// Pair with a volunteer through a coordinator and run punching trials with Bitcoin handshakes.
    Probe(probe::ProbeArgs),
    /// One manual punching trial to a peer whose public endpoint you know (exit 0 connected, 2 not).
    Punch(punch::PunchArgs),
    /// Run a Bitcoin P2P handshake (v1 or BIP324 v2) with a node, or answer one (`--listen`).
    Handshake(handshake::HandshakeArgs),
    /// Benchmarks on loopback (`bench rendezvous`).
    Bench(bench::BenchArgs),
    /// Upload the spooled results to a collector; results leave the spool only once stored.
    Upload(upload::UploadArgs),
    /// Aggregate results into a self-contained HTML report (success per NAT pair, strategy, v1/v2) with CSV and JSON.
    Report(report::ReportArgs),
    /// Dataset releases (`dataset publish`): results, tables, schema, report, provenance and checksums, byte-identical for the same input.
    Dataset(dataset::DatasetArgs),
}

/// Runs the chosen subcommand. Errors carry context for the user; `main` prints them.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Serve(args) => serve::run(args),
        #[cfg(all(feature = "lab", target_os = "linux"))]
        Command::Lab(args) => lab::run(args),
        Command::Probe(args) => probe::run(args),
        Command::Punch(args) => punch::run(args),
        Command::Handshake(args) => handshake::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Upload(args) => upload::run(args),
        Command::Report(args) => report::run(args),
        Command::Dataset(args) => dataset::run(args),
    }
}
