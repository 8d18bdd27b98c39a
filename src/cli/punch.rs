//! `punchscope punch`: one manual trial between two people who exchanged public endpoints out of band.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use punchscope::analysis::handshake::{Role, Transport};
use punchscope::analysis::trial::{Strategy, TrialOutcome, TrialRecord};
use punchscope::punch::{self, HandshakeSpec, TrialSpec};

#[derive(Debug, Args)]
pub struct PunchArgs {
    /// Local port to punch from: the port whose public mapping the peer knows.
    #[arg(long)]
    bind: u16,
    /// The peer's public endpoint.
    #[arg(long)]
    peer: SocketAddr,
    /// A word both sides pass, proving the connection reached the right peer.
    #[arg(long)]
    nonce: String,
    #[arg(long, value_enum, default_value_t = StrategyArg::ConnectListen)]
    strategy: StrategyArg,
    /// Connect attempts at most.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
    /// Milliseconds one attempt may wait.
    #[arg(long, default_value_t = 3000)]
    attempt_timeout_ms: u32,
    /// After connecting, run a Bitcoin handshake: one side `initiator`, the other `responder`.
    #[arg(long, value_enum)]
    handshake_role: Option<RoleArg>,
    /// Transport the initiator uses.
    #[arg(long, value_enum, default_value_t = TransportArg::V2)]
    transport: TransportArg,
    /// Print the trial record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    Simultaneous,
    ConnectListen,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Initiator,
    Responder,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    V1,
    V2,
}

pub fn run(args: PunchArgs) -> anyhow::Result<ExitCode> {
    let local: SocketAddr = if args.peer.is_ipv4() {
        ([0, 0, 0, 0], args.bind).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, args.bind).into()
    };
    // Everything the flags do not say is the plan's default.
    let mut plan = punch::default_plan("manual punch");
    plan.strategies = vec![match args.strategy {
        StrategyArg::Simultaneous => Strategy::Simultaneous,
        StrategyArg::ConnectListen => Strategy::ConnectListen,
    }];
    plan.transports = vec![match args.transport {
        TransportArg::V1 => Transport::V1,
        TransportArg::V2 => Transport::V2,
    }];
    plan.max_attempts = args.attempts.max(1);
    plan.attempt_timeout_ms = args.attempt_timeout_ms;
    let role = match args.handshake_role {
        Some(RoleArg::Responder) => Role::Responder,
        _ => Role::Initiator,
    };
    let spec = TrialSpec::from_plan(&plan, 0, role, local, args.peer, args.nonce);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let record = runtime.block_on(async {
        let go_at = tokio::time::Instant::now();
        match args.handshake_role {
            None => punch::run_trial(&spec, go_at).await.0,
            Some(_) => {
                let handshake = HandshakeSpec::from_plan(&plan, 0);
                punch::run_trial_with_handshake(&spec, &handshake, go_at).await
            }
        }
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        print_summary(&record);
    }
    Ok(if record.outcome == TrialOutcome::Connected {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_summary(record: &TrialRecord) {
    println!(
        "{:?} after {} attempt(s){}",
        record.outcome,
        record.attempts.len(),
        record
            .go_to_established_ms
            .map_or(String::new(), |ms| format!(", established in {ms:.0} ms"))
    );
    for (i, attempt) in record.attempts.iter().enumerate() {
        println!(
            "  attempt {}: at {:.0} ms, {:?} after {:.0} ms",
            i + 1,
            attempt.started_ms,
            attempt.result,
            attempt.duration_ms
        );
    }
    if let Some(h) = &record.handshake {
        let agent = h.peer.as_ref().map_or("-", |p| p.user_agent.as_str());
        println!(
            "  Bitcoin handshake ({:?}): success {}, peer {agent}",
            h.transport, h.success
        );
    }
    if let Some(e) = &record.error {
        println!("  error: {e}");
    }
}
