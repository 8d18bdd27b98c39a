//! `punchscope probe`: pair with another volunteer (or a reference peer) through a
//! coordinator and run the plan's punching trials, each with a Bitcoin handshake.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use punchscope::analysis::handshake::Transport;
use punchscope::analysis::trial::TrialOutcome;
use punchscope::probe::{self, PairingEnd, PairingOptions, PairingRecord, Progress};
use punchscope::rendezvous::{Hello, RendezvousError};

/// What the volunteer agrees to before anything is sent.
const CONSENT_NOTICE: &str = "\
punchscope will pair you with another volunteer through the coordinator and try to open
TCP connections between you (hole punching). The coordinator tells your peer the public
IP address and port your connections come from, and tells you theirs; nothing else about
you is shared. Over each connection a Bitcoin P2P handshake (version/verack) is made.";

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long)]
    server: String,
    /// Pair only with a volunteer who gives the same code.
    #[arg(long)]
    pair_code: Option<String>,
    /// Run as a researcher's reference peer: pair with any waiting volunteer, again and again, until Ctrl-C.
    #[arg(long)]
    serve_peer: bool,
    /// How long to wait for a peer.
    #[arg(long, default_value_t = 120)]
    max_wait_secs: u64,
    /// Agree to the notice without being asked (unattended runs).
    #[arg(long)]
    yes: bool,
    /// Print the pairing record as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if !args.serve_peer {
        ask_consent(args.yes)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = resolve(&args.server).await?;
        let max_wait = Duration::from_secs(args.max_wait_secs);
        let mut hello = if args.serve_peer {
            Hello::reference()
        } else {
            Hello::volunteer(max_wait)
        };
        if let Some(code) = &args.pair_code {
            hello = hello.with_pair_code(code.clone());
        }
        let options = PairingOptions {
            server,
            hello,
            read_timeout: Duration::from_secs(30),
            max_wait,
        };
        if args.serve_peer {
            serve_peer(&options, args.json).await
        } else {
            one_pairing(&options, args.json).await
        }
    })
}

fn ask_consent(yes: bool) -> anyhow::Result<()> {
    eprintln!("{CONSENT_NOTICE}");
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("consent needed: run interactively, or pass --yes to agree to the notice above");
    }
    eprint!("Agree and start? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("not started: consent declined")
    }
}

async fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve coordinator `{server}` (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("coordinator `{server}` has no address"))
}

async fn one_pairing(options: &PairingOptions, json: bool) -> anyhow::Result<ExitCode> {
    let record = match probe::run_pairing(options, |p| progress(p, json)).await {
        Ok(record) => record,
        Err(RendezvousError::NoPeer { waited, .. }) => {
            eprintln!(
                "No peer was available after {:.0} s; try again later.",
                waited.as_secs_f64()
            );
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e).context("could not pair through the coordinator"),
    };
    report(&record, json)?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_peer(options: &PairingOptions, json: bool) -> anyhow::Result<ExitCode> {
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            result = probe::run_pairing(options, |p| progress(p, json)) => match result {
                Ok(record) => report(&record, json)?,
                Err(RendezvousError::NoPeer { .. }) => {}
                Err(e) => {
                    eprintln!("reference peer: {e}; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            },
        }
    }
}

fn progress(p: Progress, json: bool) {
    if json {
        return;
    }
    match p {
        Progress::Waiting { waited } => {
            eprintln!("waiting for a peer: {:.0} s", waited.as_secs_f64())
        }
        Progress::Paired { role, trials } => {
            eprintln!("paired as {role:?}; running {trials} trials")
        }
        Progress::TrialDone { trial, outcome } => eprintln!("trial {trial}: {outcome:?}"),
    }
}

fn report(record: &PairingRecord, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(record)?);
        return Ok(());
    }
    let connected = record
        .trials
        .iter()
        .filter(|t| t.outcome == TrialOutcome::Connected)
        .count();
    println!(
        "{connected} of {} trials punched through (paired with a {:?} peer, as {:?}).",
        record.trials.len(),
        record.peer_mode,
        record.role
    );
    for transport in [Transport::V1, Transport::V2] {
        let handshakes: Vec<_> = record
            .trials
            .iter()
            .filter_map(|t| t.handshake.as_ref())
            .filter(|h| {
                h.transport == Some(transport)
                    || (h.transport.is_none() && transport == Transport::V1)
            })
            .collect();
        if !handshakes.is_empty() {
            let ok = handshakes.iter().filter(|h| h.success).count();
            println!(
                "  Bitcoin {transport:?} handshakes: {ok} of {} succeeded",
                handshakes.len()
            );
        }
    }
    match &record.end {
        PairingEnd::Done => {}
        PairingEnd::PeerGone { trial } => println!("  the peer left early (at trial {trial:?})"),
        PairingEnd::CoordinatorLost { error } => println!("  the coordinator was lost: {error}"),
    }
    Ok(())
}
