//! The `punchscope` binary: parse the command line, call the library, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use punchscope::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
