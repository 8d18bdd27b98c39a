//! `punchscope serve collector`: the results collector over HTTP, storing in SQLite, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use punchscope::collector::{self, SqliteStore};
use punchscope::server::collector::{self as server, CollectorConfig};

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Endpoint to listen on, e.g. 127.0.0.1:8080 (put TLS in front for a public deployment).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// SQLite database file (created if missing; WAL mode).
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Secret key for grouping uploaders by a keyed hash; created (random) if missing.
    /// Default: the database path with `.key` appended. Keep it for the whole campaign.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// File holding the bearer token of `GET /v1/results.jsonl`; without it the export is disabled.
    #[arg(long, value_name = "FILE")]
    pub export_token_file: Option<PathBuf>,
    /// Largest accepted result, in bytes.
    #[arg(long, default_value_t = punchscope::analysis::result::MAX_RESULT_BYTES)]
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a request may take, body included.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
}

pub fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let key_file = args.key_file.clone().unwrap_or_else(|| {
        let mut path = args.db.clone().into_os_string();
        path.push(".key");
        PathBuf::from(path)
    });
    let key = collector::load_or_create_key(&key_file)?;
    let token = args
        .export_token_file
        .as_deref()
        .map(collector::read_secret)
        .transpose()?;
    let export_enabled = token.is_some();
    let config = CollectorConfig {
        max_body_bytes: args.max_body_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        ..CollectorConfig::new(key.as_bytes(), token)
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(punchscope::server::tls::load_server_config(cert, key)?),
        _ => None,
    };
    let store = SqliteStore::open(&args.db)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("listener has no address")?;
        eprintln!(
            "collector: listening on {}://{local} (database {}, export {})",
            if tls.is_some() { "https" } else { "http" },
            args.db.display(),
            if export_enabled {
                "enabled"
            } else {
                "disabled"
            }
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("collector: shutting down");
        };
        match tls {
            Some(tls) => server::run_tls(listener, tls, config, Box::new(store), shutdown).await?,
            None => server::run(listener, config, Box::new(store), shutdown).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}
