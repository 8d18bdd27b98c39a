//! `punchscope probe`: the volunteer's one command. Notice and consent, NAT
//! classification, pairing through a coordinator, trials with Bitcoin
//! handshakes, the result written to the spool and uploaded, then a summary.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use punchscope::analysis::classify::{Classification, Observations};
use punchscope::analysis::handshake::Transport;
use punchscope::analysis::privacy::PRIVACY_NOTICE;
use punchscope::analysis::result::{ClientInfo, Pairing, PairingEnded, RunMode, RunResult};
use punchscope::analysis::trial::TrialOutcome;
use punchscope::classify::{self, ClassifyConfig};
use punchscope::probe::{self, PairingEnd, PairingOptions, PairingRecord, Progress};
use punchscope::rendezvous::{Hello, RendezvousError};
use punchscope::upload::{self, Spool, UploadPolicy};

/// Exit codes beyond 0 (done) and 1 (the tool failed).
const EXIT_NO_PEER: u8 = 3;
const EXIT_INTERRUPTED: u8 = 4;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The coordinator, HOST:PORT.
    #[arg(long)]
    server: String,
    /// Echo servers for NAT classification, HOST:PORT (give two IPs for a full
    /// verdict). Required for a volunteer; a reference peer classifies too when given them.
    #[arg(long = "echo", required_unless_present = "serve_peer")]
    echo: Vec<String>,
    /// Collector to upload the result to, e.g. http://collector.example:8080 (else it stays in the spool).
    #[arg(long)]
    collector: Option<String>,
    /// Where results wait until the collector has them.
    #[arg(long)]
    spool: Option<PathBuf>,
    /// A label for your network, e.g. "home-fibre" (kept in the result).
    #[arg(long)]
    label: Option<String>,
    /// Pair only with a volunteer who gives the same code.
    #[arg(long)]
    pair_code: Option<String>,
    /// Run as a researcher's reference peer: pair with any waiting volunteer, again and again, until Ctrl-C.
    #[arg(long)]
    serve_peer: bool,
    /// How long to wait for a peer.
    #[arg(long, default_value_t = 120)]
    max_wait_secs: u64,
    /// Agree to the privacy notice without being asked (unattended runs).
    #[arg(long)]
    yes: bool,
    /// Print the result document (JSON) on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.serve_peer {
        return runtime.block_on(serve_peer(&args));
    }
    ask_consent(args.yes, args.quiet)?;
    runtime.block_on(volunteer(&args))
}

fn ask_consent(yes: bool, quiet: bool) -> anyhow::Result<()> {
    if !quiet || !yes {
        eprintln!("{PRIVACY_NOTICE}");
    }
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

/// A stop signal shared by every step of a run: Ctrl-C or SIGTERM (a lab
/// campaign ends reference peers with SIGTERM and expects their last result
/// uploaded). It stays set once it fired, so a signal arriving between two
/// pairings is not lost.
fn stop_signal() -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(term) => {
                    term.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        let _ = tx.send(true);
    });
    move || {
        let mut rx = rx.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        })
    }
}

async fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(server)
        .await
        .with_context(|| format!("cannot resolve `{server}` (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("`{server}` has no address"))
}

fn spinner(quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        None,
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

async fn volunteer(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let started_at = chrono::Utc::now();
    let quiet = args.quiet || args.json;
    let bar = spinner(quiet);

    bar.set_message("classifying your NAT (mapping, filtering, port allocation)");
    let classification = classify::classify(&ClassifyConfig {
        servers: args.echo.clone(),
        ..ClassifyConfig::default()
    })
    .await
    .context("could not classify your NAT")?;
    bar.set_message(format!("your NAT: {}", classification.verdict.summary()));

    let server = resolve(&args.server).await?;
    let max_wait = Duration::from_secs(args.max_wait_secs);
    let mut hello = Hello::volunteer(max_wait).with_verdict(&classification.verdict);
    if let Some(code) = &args.pair_code {
        hello = hello.with_pair_code(code.clone());
    }
    let options = PairingOptions {
        server,
        hello,
        read_timeout: Duration::from_secs(30),
        max_wait,
    };
    let mut total = 0u32;
    let progress = |p: Progress| match p {
        Progress::Waiting { waited } => {
            bar.set_message(format!("waiting for a peer: {:.0} s", waited.as_secs_f64()))
        }
        Progress::Paired { role, trials } => {
            total = trials;
            bar.set_message(format!("paired (we are the {role:?}); trial 1 of {trials}"))
        }
        Progress::TrialDone { trial, outcome } => bar.set_message(format!(
            "trial {} of {total}: last one {outcome:?}",
            trial + 2
        )),
    };
    let stop = stop_signal();
    let mut no_peer_after = None;
    let mut interrupted_waiting = false;
    let record = match probe::run_pairing(&options, progress, stop()).await {
        Ok(record) => Some(record),
        Err(RendezvousError::NoPeer { waited, .. }) => {
            no_peer_after = Some(waited);
            None
        }
        Err(RendezvousError::Interrupted) => {
            interrupted_waiting = true;
            None
        }
        Err(e) => {
            bar.finish_and_clear();
            return Err(e).context("could not pair through the coordinator");
        }
    };
    bar.finish_and_clear();

    let pairings: Vec<Pairing> = record.iter().map(pairing_of).collect();
    let result = RunResult::new(
        env!("CARGO_PKG_VERSION"),
        started_at,
        chrono::Utc::now(),
        ClientInfo::this_machine(args.label.clone()),
        &classification,
        pairings,
    );
    let (saved, uploaded) = spool_and_upload(&result, args).await?;

    if args.json {
        println!("{}", result.to_json());
    } else {
        println!("Your NAT: {}", classification.verdict.summary());
        if let Some(waited) = no_peer_after {
            println!(
                "No peer was available after {:.0} s; your NAT classification is saved all the same.",
                waited.as_secs_f64()
            );
        }
        summarize(record.as_ref(), &saved, &uploaded);
    }
    Ok(match record.map(|r| r.end) {
        None if interrupted_waiting => ExitCode::from(EXIT_INTERRUPTED),
        None => ExitCode::from(EXIT_NO_PEER),
        Some(PairingEnd::Interrupted) => ExitCode::from(EXIT_INTERRUPTED),
        Some(_) => ExitCode::SUCCESS,
    })
}

/// Writes the result to the spool, then uploads what is pending when a
/// collector was given; returns the spooled file and what became of the upload.
async fn spool_and_upload(
    result: &RunResult,
    args: &ProbeArgs,
) -> anyhow::Result<(std::path::PathBuf, String)> {
    let spool_dir = args.spool.clone().unwrap_or_else(upload::default_spool_dir);
    let spool = Spool::open(&spool_dir)
        .with_context(|| format!("cannot use the spool {}", spool_dir.display()))?;
    let saved = spool
        .store(result)
        .context("cannot write the result to the spool")?;
    let uploaded = match &args.collector {
        None => "not uploaded (no --collector); `punchscope upload --collector URL` sends it later"
            .to_string(),
        Some(collector) => {
            let (spool, collector) = (spool_dir.clone(), collector.clone());
            let report = tokio::task::spawn_blocking(move || {
                let spool = Spool::open(&spool)?;
                upload::upload_pending(&spool, &collector, &UploadPolicy::default())
            })
            .await?;
            match report {
                Ok(r) if r.pending.is_empty() && r.rejected.is_empty() => "uploaded".to_string(),
                Ok(r) => format!(
                    "{} result(s) still waiting in the spool; run `punchscope upload` later",
                    r.pending.len()
                ),
                Err(e) => format!("upload failed ({e}); the result stays in the spool"),
            }
        }
    };

    Ok((saved, uploaded))
}

fn pairing_of(r: &PairingRecord) -> Pairing {
    Pairing {
        peer_verdict: r.peer_verdict.clone(),
        role: r.role,
        plan: r.plan.clone(),
        trials: r.trials.clone(),
        ended: match r.end {
            PairingEnd::Done => PairingEnded::Done,
            PairingEnd::PeerGone { .. } => PairingEnded::PeerGone,
            PairingEnd::CoordinatorLost { .. } => PairingEnded::CoordinatorLost,
            PairingEnd::Interrupted => PairingEnded::Interrupted,
        },
    }
}

fn summarize(record: Option<&PairingRecord>, saved: &std::path::Path, uploaded: &str) {
    if let Some(record) = record {
        let connected = record
            .trials
            .iter()
            .filter(|t| t.outcome == TrialOutcome::Connected)
            .count();
        println!(
            "{connected} of {} trials punched through, paired with a {:?} peer (we were the {:?}).",
            record.trials.len(),
            record.peer_mode,
            record.role
        );
        for transport in [Transport::V1, Transport::V2] {
            let runs: Vec<_> = record
                .trials
                .iter()
                .filter_map(|t| t.handshake.as_ref())
                .filter(|h| h.transport == Some(transport))
                .collect();
            if !runs.is_empty() {
                let ok = runs.iter().filter(|h| h.success).count();
                println!(
                    "Bitcoin {transport:?} handshakes over punched sockets: {ok} of {} succeeded",
                    runs.len()
                );
            }
        }
        match &record.end {
            PairingEnd::Done => {}
            PairingEnd::PeerGone { .. } => {
                println!("The peer left before the end; the trials so far are kept.")
            }
            PairingEnd::CoordinatorLost { error } => {
                println!("The coordinator was lost ({error}); the trials so far are kept.")
            }
            PairingEnd::Interrupted => println!("Stopped by you; the trials so far are kept."),
        }
    }
    println!("Result: {} ({uploaded})", saved.display());
}

/// A reference peer's result of one pairing.
fn reference_result(
    started_at: chrono::DateTime<chrono::Utc>,
    classification: &Classification,
    record: &PairingRecord,
) -> RunResult {
    let mut result = RunResult::new(
        env!("CARGO_PKG_VERSION"),
        started_at,
        chrono::Utc::now(),
        ClientInfo::this_machine(None),
        classification,
        vec![pairing_of(record)],
    );
    result.mode = RunMode::Reference;
    result
}

async fn serve_peer(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let mut hello = Hello::reference();
    let mut started_at = chrono::Utc::now();
    // Without echo servers the reference's results say its NAT is unknown.
    let mut classification = Classification::new(
        Vec::new(),
        Observations {
            mapping: Vec::new(),
            allocation: Vec::new(),
            filtering: None,
            hairpin: None,
        },
    );
    if !args.echo.is_empty() {
        classification = classify::classify(&ClassifyConfig {
            servers: args.echo.clone(),
            ..ClassifyConfig::default()
        })
        .await
        .context("could not classify the reference peer's NAT")?;
        if !args.quiet {
            eprintln!("reference peer: NAT {}", classification.verdict.summary());
        }
        hello = hello.with_verdict(&classification.verdict);
    }
    let options = PairingOptions {
        server: resolve(&args.server).await?,
        hello,
        read_timeout: Duration::from_secs(30),
        max_wait: Duration::from_secs(args.max_wait_secs),
    };
    let stop = stop_signal();
    loop {
        match probe::run_pairing(&options, |_| {}, stop()).await {
            Ok(record) => {
                // Every pairing is a result of its own, so the reference's side
                // of each trial is in the data as the volunteer's is.
                let result = reference_result(started_at, &classification, &record);
                let (_, uploaded) = spool_and_upload(&result, args).await?;
                if !args.quiet {
                    eprintln!("reference peer: result {} {uploaded}", result.run_id);
                }
                if record.end == PairingEnd::Interrupted {
                    return Ok(ExitCode::SUCCESS);
                }
                started_at = chrono::Utc::now();
                if args.json {
                    println!("{}", serde_json::to_string(&record)?);
                } else if !args.quiet {
                    let connected = record
                        .trials
                        .iter()
                        .filter(|t| t.outcome == TrialOutcome::Connected)
                        .count();
                    eprintln!(
                        "reference peer: pairing done, {connected} of {} trials connected",
                        record.trials.len()
                    );
                }
            }
            Err(RendezvousError::NoPeer { .. }) => {}
            Err(RendezvousError::Interrupted) => return Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("reference peer: {e}; retrying in 5 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = stop() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    }
}
