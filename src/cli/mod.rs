//! Command-line interface of the `punchscope` binary: one clap `Args` struct per subcommand, each in its own file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod handshake;

/// Measure how well TCP hole punching works for Bitcoin nodes behind home NATs.
#[derive(Debug, Parser)]
#[command(name = "punchscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Handshake(handshake::HandshakeArgs),
}

/// Runs the chosen subcommand. Errors carry context for the user; `main` prints them.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Handshake(args) => handshake::run(args),
    }
}
