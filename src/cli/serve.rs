//! `punchscope serve ...`: run one of the servers until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use punchscope::server::echo::{self, EchoConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub server: ServeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Echo/reflector server for `punchscope classify`: reports observed endpoints, dials back on request.
    Echo(EchoArgs),
    /// Results collector: stores uploaded run results (HTTP, SQLite).
    Collector(super::collector::CollectorArgs),
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Endpoint to listen on (repeat: two IPs x two ports is the full setup).
    #[arg(long = "listen", value_name = "IP:PORT", required = true)]
    pub listen: Vec<SocketAddr>,
    /// Public endpoint to announce for each --listen, in the same order (servers behind a 1:1 NAT).
    #[arg(long = "advertise", value_name = "IP:PORT")]
    pub advertise: Vec<SocketAddr>,
    /// Connections served at once; more are told `busy` and closed.
    #[arg(long, default_value_t = EchoConfig::default().max_connections)]
    pub max_connections: usize,
    /// Milliseconds to wait for an optional request after the observed line.
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,
    /// Dial-back requests one source IP may make in a burst.
    #[arg(long, default_value_t = EchoConfig::default().dial_back_burst)]
    pub dial_back_burst: u32,
    /// Seconds per dial-back request regained by a source IP.
    #[arg(long, default_value_t = 6)]
    pub dial_back_refill_secs: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    match args.server {
        ServeCommand::Echo(args) => run_echo(args),
        ServeCommand::Collector(args) => super::collector::run(args),
    }
}

fn run_echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let config = EchoConfig {
        max_connections: args.max_connections,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        dial_back_burst: args.dial_back_burst,
        dial_back_refill: Duration::from_secs(args.dial_back_refill_secs),
        advertise: (!args.advertise.is_empty()).then_some(args.advertise),
        ..EchoConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = echo::bind_listeners(&args.listen)?;
        for addr in &args.listen {
            eprintln!("echo: listening on {addr}");
        }
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("echo: shutting down");
        };
        echo::run(listeners, config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
