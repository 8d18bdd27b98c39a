//! `punchscope serve collector`: the results collector over HTTP(S), storing in SQLite or PostgreSQL, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use punchscope::collector::{self, StoreLocation};
use punchscope::server::collector::{self as server, CollectorConfig};

#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Endpoint to listen on, e.g. 127.0.0.1:8080 (put TLS in front for a public deployment).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Where results are stored: a SQLite file (created mode 0600 if
    /// missing; WAL mode), or a PostgreSQL database as a `postgresql://`
    /// connection string (e.g. `postgresql:///punchscope?host=/run/postgresql`).
    #[arg(long, alias = "database", value_name = "PATH|URL", value_parser = parse_location)]
    pub db: StoreLocation,
    /// Secret key for grouping uploaders by a keyed hash; created (random, mode 0600) if missing.
    /// Default: $XDG_CONFIG_HOME/punchscope/collector.key (else ~/.config/...). Keep it for the
    /// whole campaign, and apart from the database.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Allow the key file inside the database's directory (a backup of it then holds both).
    #[arg(long)]
    pub allow_key_beside_db: bool,
    /// File holding the bearer token of `GET /v1/results.jsonl`; without it the export is disabled.
    #[arg(long, value_name = "FILE")]
    pub export_token_file: Option<PathBuf>,
    /// Largest accepted result, in bytes.
    #[arg(long, default_value_t = punchscope::analysis::result::MAX_RESULT_BYTES)]
    pub max_body_bytes: usize,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Connections open at once; more are answered 503.
    #[arg(long, alias = "max-concurrent-requests", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections open at once per source (IPv4 address, IPv6 /56); more are answered 429.
    #[arg(long, default_value_t = 32)]
    pub max_connections_per_source: u32,
    /// Seconds a request may take, body included.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Uploads one source may make in a burst (then one every 2 s).
    #[arg(long, default_value_t = 600)]
    pub uploads_per_source_burst: u32,
    /// MiB of results one source may store per day.
    #[arg(long, default_value_t = 64)]
    pub storage_mib_per_source_per_day: u32,
}

fn parse_location(text: &str) -> Result<StoreLocation, String> {
    if text.is_empty() {
        return Err("give a SQLite file or a postgresql:// connection string".into());
    }
    Ok(StoreLocation::parse(text))
}

pub fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let key_file = match &args.key_file {
        Some(path) => path.clone(),
        None => collector::default_key_path(),
    };
    if let (Some(db), false) = (args.db.sqlite_path(), args.allow_key_beside_db) {
        collector::check_key_apart(db, &key_file)?;
    }
    let key = collector::load_or_create_key(&key_file)?;
    let files = [
        Some(("grouping key", key_file.as_path())),
        args.db.sqlite_path().map(|db| ("database", db)),
    ];
    for (what, path) in files.into_iter().flatten() {
        if collector::readable_by_others(path) {
            eprintln!(
                "collector: warning: the {what} {} is readable by other users (chmod 600 it)",
                path.display()
            );
        }
    }
    let token = args
        .export_token_file
        .as_deref()
        .map(collector::read_secret)
        .transpose()?;
    let export_enabled = token.is_some();
    let mut config = CollectorConfig {
        max_body_bytes: args.max_body_bytes,
        max_connections: args.max_connections,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        ..CollectorConfig::new(key.as_bytes(), token)
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(punchscope::server::tls::load_server_config(cert, key)?),
        _ => None,
    };
    config.admission.connections_per_source = args.max_connections_per_source;
    config.admission.uploads_burst = args.uploads_per_source_burst;
    config.admission.storage_burst_bytes = args
        .storage_mib_per_source_per_day
        .saturating_mul(1024 * 1024);
    let store = args.db.open()?;
    punchscope::net::socket::raise_fd_limit().context("cannot raise the open-file limit")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("listener has no address")?;
        eprintln!(
            "collector: listening on {}://{local} (database {}, key {}, export {})",
            if tls.is_some() { "https" } else { "http" },
            args.db,
            key_file.display(),
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
            Some(tls) => server::run_tls(listener, tls, config, store, shutdown).await?,
            None => server::run(listener, config, store, shutdown).await?,
        }
        Ok(ExitCode::SUCCESS)
    })
}
