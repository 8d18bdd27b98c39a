//! Command-line interface: one clap `Args` struct per subcommand.

use clap::{Parser, Subcommand};

/// Measure how well TCP hole punching works for Bitcoin nodes behind home NATs.
#[derive(Debug, Parser)]
#[command(name = "punchscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {}
