//! `punchscope handshake`: one Bitcoin P2P handshake (v1 or BIP324 v2) with any node, or answer as a responder.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use punchscope::analysis::handshake::{BitcoinNetwork, FailureReason, HandshakeRecord, Transport};
use punchscope::btc::{self, Accept, HandshakeConfig};
use tokio::net::{TcpListener, TcpStream};

/// Run a Bitcoin P2P handshake (version, verack, ping) and report what happened.
///
/// Without --v1 or --v2 the initiator tries BIP324 v2 first and, like
/// Bitcoin Core, retries with v1 when the peer closes the connection without
/// answering (a v1-only node); a listener accepts both.
#[derive(Debug, Args)]
pub struct HandshakeArgs {
    /// Node to connect to, as HOST:PORT.
    #[arg(required_unless_present = "listen", conflicts_with = "listen")]
    pub target: Option<String>,
    /// Answer handshakes on this address instead of connecting.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// With --listen: number of connections to answer before exiting.
    #[arg(long, default_value_t = 1, requires = "listen")]
    pub count: u32,
    /// Only the plain v1 transport.
    #[arg(long, conflicts_with = "v2")]
    pub v1: bool,
    /// Only the BIP324 v2 transport.
    #[arg(long)]
    pub v2: bool,
    /// mainnet, testnet4, signet or regtest.
    #[arg(long, default_value = "mainnet")]
    pub network: BitcoinNetwork,
    /// Print one JSON record per handshake instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Deadline of the TCP connect and of each handshake phase, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub timeout: f64,
    /// Largest message payload accepted, in bytes.
    #[arg(long, default_value_t = btc::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
}

pub fn run(args: HandshakeArgs) -> anyhow::Result<ExitCode> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let records = runtime.block_on(async {
        match args.listen {
            Some(addr) => listen(&args, addr).await,
            None => connect(&args).await,
        }
    })?;
    let all_ok = records.last().is_some_and(|r| r.success)
        && (args.listen.is_none() || records.iter().all(|r| r.success));
    Ok(ExitCode::from(if all_ok { 0 } else { 2 }))
}

fn config(args: &HandshakeArgs, peer: Option<SocketAddr>) -> HandshakeConfig {
    HandshakeConfig {
        network: args.network,
        step_timeout: Duration::from_secs_f64(args.timeout),
        max_message_size: args.max_message_size,
        peer_addr: peer,
        ..HandshakeConfig::default()
    }
}

async fn connect(args: &HandshakeArgs) -> anyhow::Result<Vec<HandshakeRecord>> {
    let target = args.target.as_deref().expect("clap requires a target");
    let attempts: &[Transport] = if args.v1 {
        &[Transport::V1]
    } else if args.v2 {
        &[Transport::V2]
    } else {
        &[Transport::V2, Transport::V1]
    };
    let mut records = Vec::new();
    for &transport in attempts {
        let stream = connect_tcp(target, args.timeout).await?;
        no_delay(&stream)?;
        let peer = stream.peer_addr().ok();
        let record = btc::initiate(stream, transport, &config(args, peer))
            .await
            .context("handshake")?;
        print_record(args, &record, peer)?;
        let retry_v1 = record.failure == Some(FailureReason::V1OnlyPeer);
        records.push(record);
        if !retry_v1 {
            break;
        }
    }
    Ok(records)
}

async fn connect_tcp(target: &str, timeout: f64) -> anyhow::Result<TcpStream> {
    let connecting = TcpStream::connect(target);
    match tokio::time::timeout(Duration::from_secs_f64(timeout), connecting).await {
        Err(_) => bail!("connecting to {target}: no answer within {timeout} s"),
        Ok(result) => result.with_context(|| format!("connecting to {target}")),
    }
}

/// Like Bitcoin Core: without TCP_NODELAY, Nagle's algorithm holds a small
/// message until the previous one is acknowledged, and the peer's delayed
/// ACK adds ~40 ms to a phase.
fn no_delay(stream: &TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true).context("setting TCP_NODELAY")
}

async fn listen(args: &HandshakeArgs, addr: SocketAddr) -> anyhow::Result<Vec<HandshakeRecord>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts bind port 0 and read the real port from here.
    eprintln!("listening on {local}");
    let accept = if args.v1 {
        Accept::V1Only
    } else if args.v2 {
        Accept::V2Only
    } else {
        Accept::Both
    };
    let mut records = Vec::new();
    for _ in 0..args.count {
        let (stream, peer) = listener.accept().await.context("accepting a connection")?;
        no_delay(&stream)?;
        let record = btc::respond(stream, accept, &config(args, Some(peer)))
            .await
            .context("handshake")?;
        print_record(args, &record, Some(peer))?;
        records.push(record);
    }
    Ok(records)
}

fn print_record(
    args: &HandshakeArgs,
    record: &HandshakeRecord,
    peer: Option<SocketAddr>,
) -> anyhow::Result<()> {
    // writeln! rather than println!, so a closed stdout (`| head`) is an
    // error to report, not a panic.
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::to_string(record).context("encoding JSON")?;
        writeln!(out, "{json}")?;
        return Ok(());
    }
    let transport = record
        .transport
        .map_or_else(|| "undetected transport".to_string(), |t| t.to_string());
    let peer = peer.map_or_else(|| "peer".to_string(), |p| p.to_string());
    let role = record.role;
    match &record.failure {
        None => writeln!(out, "{transport} handshake with {peer} as {role}: ok")?,
        Some(reason) => writeln!(
            out,
            "{transport} handshake with {peer} as {role}: FAILED: {reason}"
        )?,
    }
    if let Some(v) = &record.peer {
        writeln!(
            out,
            "  peer: {} protocol {} services 0x{:x} height {} relay {}",
            v.user_agent, v.protocol_version, v.services, v.start_height, v.relay
        )?;
    }
    if let Some(id) = &record.session_id {
        writeln!(out, "  session id: {id}")?;
    }
    let d = &record.durations;
    let phases = [
        ("key exchange", d.v2_key_exchange_ms),
        ("version", d.version_ms),
        ("verack", d.verack_ms),
        ("ping", d.ping_ms),
    ];
    let timings: Vec<String> = phases
        .iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name} {ms:.1} ms")))
        .collect();
    if !timings.is_empty() {
        writeln!(out, "  {}", timings.join(", "))?;
    }
    writeln!(
        out,
        "  {} bytes sent, {} bytes received",
        record.bytes_sent, record.bytes_received
    )?;
    Ok(())
}
