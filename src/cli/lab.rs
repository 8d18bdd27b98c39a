//! `punchscope lab`: build NAT labs from scenario files, remove stale ones, run commands inside hosts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use punchscope::lab::{self, netns, LabOptions, INTERNET};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build a lab, print one JSON line when it is ready, hold it until Ctrl-C / SIGTERM, then remove it.
    Up {
        /// Scenario file (TOML), e.g. probes/lab/basic.toml.
        scenario: PathBuf,
        /// Lab name: prefix of its namespaces (NAME-internet, NAME-HOST). a-z, 0-9, _.
        #[arg(long, default_value = "ps")]
        name: String,
        /// Also write every router event to this JSONL file.
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// Remove the namespaces of a lab whose process was killed.
    Down {
        #[arg(long, default_value = "ps")]
        name: String,
    },
    /// Benchmark the emulator core (packets/s), the latency the TUN path adds, and classification time (needs root).
    Bench(BenchArgs),
    /// Run a whole campaign: servers, reference peers and a probe per volunteer host, then the report.
    Run(RunArgs),
    /// Run a measurement experiment in a lab (`skew`: start skew vs strategy).
    Experiment(ExperimentArgs),
    /// Run a command inside a lab host (or `internet`), with its exit code.
    Exec {
        /// Lab name.
        name: String,
        /// Host name from the scenario, or `internet`.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Campaign scenario.
    #[arg(default_value = "probes/lab/campaign.toml")]
    scenario: PathBuf,
    /// The plan the coordinator hands out.
    #[arg(long, default_value = "probes/lab/campaign-plan.toml")]
    plan: PathBuf,
    /// Output folder: results, report, logs, the lab's event log.
    #[arg(long, default_value = "campaign-out")]
    out: PathBuf,
    #[arg(long, default_value = "campaign")]
    name: String,
    /// Longest the volunteers may take, in seconds.
    #[arg(long, default_value_t = 240)]
    deadline_secs: u64,
}

fn campaign(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = punchscope::lab::Scenario::load(&args.scenario)?;
    let options = lab::campaign::CampaignOptions {
        exe: std::env::current_exe()?,
        lab_name: args.name,
        plan: std::fs::canonicalize(&args.plan)
            .map_err(|e| anyhow::anyhow!("plan {}: {e}", args.plan.display()))?,
        out: std::path::absolute(&args.out)?,
        deadline: std::time::Duration::from_secs(args.deadline_secs),
    };
    eprintln!("campaign: starting the lab, servers, reference peers and volunteers...");
    let outcome = lab::campaign::run(scenario, &options)?;
    eprintln!(
        "campaign: {} of {} volunteers completed a pairing in {:.0} s; {} results stored",
        outcome.completed, outcome.volunteers, outcome.seconds, outcome.results
    );
    for (host, code) in &outcome.others {
        eprintln!(
            "  {host}: exit {code:?} (see {})",
            options
                .out
                .join("logs")
                .join(format!("{host}.err"))
                .display()
        );
    }
    print!("{}", outcome.headline);
    // Lab campaigns only: which machinery played each volunteer's router
    // (the results' network label is the router's name).
    println!("Routers (network label: backend, behind):");
    for router in outcome.routers.iter().filter(|r| r.mapping != "none") {
        println!(
            "  {}: {}{}{}",
            router.name,
            router.backend,
            router
                .kernel_nat
                .as_deref()
                .map_or(String::new(), |k| format!(" ({k})")),
            router
                .upstream
                .as_deref()
                .map_or(String::new(), |u| format!(", behind {u}"))
        );
    }
    println!("Report: {}", outcome.report_html.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
struct ExperimentArgs {
    /// Which experiment: `skew` sweeps the responder's start skew for each strategy.
    #[arg(value_parser = ["skew"])]
    kind: String,
    /// Lab scenario with hosts `alice` and `bob`.
    #[arg(long, default_value = "probes/lab/skew.toml")]
    scenario: PathBuf,
    /// Skews to inject, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,50,100,150,300")]
    skews_ms: Vec<u64>,
    /// Trials per skew and strategy.
    #[arg(long, default_value_t = 10)]
    trials: u32,
    /// Connect attempts per trial.
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
    #[arg(long)]
    json: bool,
}

fn experiment(args: ExperimentArgs) -> anyhow::Result<ExitCode> {
    let skews: Vec<Duration> = args
        .skews_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    let points =
        lab::pair::skew_experiment(&args.scenario, &skews, args.trials, args.max_attempts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&points)?);
    } else {
        println!("strategy        skew   success   trials with refused attempts   median attempts");
        for p in &points {
            println!(
                "{:<14} {:>4} ms   {:>2}/{:<2}     {:>2}                             {:.0}",
                p.strategy.as_str(),
                p.skew_ms,
                p.successes,
                p.trials,
                p.with_refusals,
                p.median_attempts
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// `probe`: time whole volunteer runs instead (see `lab bench probe --help`).
    #[command(subcommand)]
    what: Option<BenchWhat>,
    /// Seconds per core throughput run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Ping-pong round trips for the TUN latency.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Skip the lab measurements: TUN path and classification (no root needed).
    #[arg(long)]
    core_only: bool,
    /// One-way WAN delay of the NATs in the classification timing.
    #[arg(long, default_value_t = 50)]
    classify_delay_ms: u32,
    /// Classification runs per NAT kind.
    #[arg(long, default_value_t = 5)]
    classify_runs: usize,
    /// Echo endpoints classification is given: 4 (two IPs x two ports, as a
    /// campaign hands out) or 2 (one per IP; the other port comes from the
    /// server's announcement, one round trip later).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(2..=4))]
    classify_endpoints: u8,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            scenario,
            name,
            events,
        } => up(scenario, name, events),
        LabCommand::Down { name } => {
            let removed = lab::remove_stale(&name)?;
            if removed.is_empty() {
                eprintln!("lab {name}: nothing to remove");
            } else {
                eprintln!("lab {name}: removed {}", removed.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            name,
            host,
            command,
        } => exec(&name, &host, &command),
        LabCommand::Bench(args) => bench(args),
        LabCommand::Experiment(args) => experiment(args),
        LabCommand::Run(args) => campaign(args),
    }
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Time the real `probe` from start to exit, under the real coordinator
    /// and echo server, for pairs of NAT kinds behind a slow WAN (needs root).
    Probe(ProbeBenchArgs),
}

#[derive(Debug, Args)]
struct ProbeBenchArgs {
    /// The plan the coordinator hands out.
    #[arg(long, default_value = "probes/default.toml")]
    plan: PathBuf,
    /// One-way WAN delay of every NAT.
    #[arg(long, default_value_t = 50)]
    delay_ms: u32,
    /// Only these pairs (repeatable): eim-eim, eim-apdm_random, apdm_sequential-eim, apdm-apdm.
    #[arg(long = "pair")]
    pairs: Vec<String>,
    /// Logs, spools and each probe's result document (`logs/HOST.out`).
    #[arg(long, default_value = "bench-probe-out")]
    out: PathBuf,
    /// Longest one pair may take before its probes are ended.
    #[arg(long, default_value_t = 600)]
    pair_deadline_secs: u64,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

fn bench_probe(args: ProbeBenchArgs) -> anyhow::Result<ExitCode> {
    // The plan is read here first, so a typo fails before any lab is built.
    let text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("reading the plan {}", args.plan.display()))?;
    let plan = punchscope::analysis::plan::Plan::from_toml(&text)
        .with_context(|| format!("plan {}", args.plan.display()))?;
    let timings = lab::bench::probe_timing(
        &format!("bprobe{}", std::process::id()),
        &lab::bench::ProbeBenchOptions {
            exe: std::env::current_exe().context("finding this punchscope binary")?,
            plan: args.plan.clone(),
            delay_ms: args.delay_ms,
            pairs: args.pairs,
            out: args.out,
            pair_deadline: Duration::from_secs(args.pair_deadline_secs),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&timings)?);
    } else {
        println!(
            "`probe` wall time, start to exit, plan {:?} ({} trials), one-way WAN delay {} ms:",
            plan.name, plan.trials, args.delay_ms
        );
        for t in &timings {
            let timeouts = t
                .attempt_timeout_ms
                .map_or("fixed".to_string(), |(lo, hi)| format!("{lo}-{hi} ms"));
            println!(
                "  {:<22} {:>6.1} s (sides {:.1} s, {:.1} s; exit {:?}/{:?}; per side: trials {} and {}, connected {} and {}; attempt timeout {timeouts})",
                t.pair,
                t.max_wall_s,
                t.wall_s[0],
                t.wall_s[1],
                t.exit_codes[0],
                t.exit_codes[1],
                t.trials[0],
                t.trials[1],
                t.connected[0],
                t.connected[1],
            );
        }
    }
    // A pair whose probes did not both finish their plan is a failed run of the benchmark.
    let complete = timings
        .iter()
        .all(|t| t.exit_codes == [Some(0), Some(0)] && t.trials == [plan.trials as usize; 2]);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        eprintln!("some probes did not run the whole plan: see the logs folder");
        ExitCode::FAILURE
    })
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(BenchWhat::Probe(probe)) = args.what {
        return bench_probe(probe);
    }
    let BenchArgs {
        what: _,
        seconds,
        round_trips,
        core_only,
        classify_delay_ms,
        classify_runs,
        classify_endpoints,
        json,
    } = args;
    let report = lab::bench::run(&lab::bench::BenchOptions {
        core_duration: Duration::from_secs_f64(seconds),
        round_trips,
        core_only,
        classify_delay_ms,
        classify_runs,
        classify_endpoints: usize::from(classify_endpoints),
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("NAT emulator core, one instance, one core (1000 flows, both directions):");
    for c in &report.core {
        println!(
            "  {:>5} B payload: {:>12.0} packets/s ({} packets in {:.2} s)",
            c.payload_bytes, c.packets_per_second, c.packets, c.seconds
        );
    }
    if let Some(t) = &report.tun {
        println!(
            "TUN path, zero configured delay ({} 1-byte TCP round trips):",
            t.round_trips
        );
        println!(
            "  through the NAT: median {:.1} us, p99 {:.1} us",
            t.through_nat_median_us, t.through_nat_p99_us
        );
        println!(
            "  loopback in the internet namespace: median {:.1} us",
            t.loopback_median_us
        );
        println!("  added per packet: {:.1} us", t.added_per_packet_us);
    }
    if !report.classify.is_empty() {
        println!("Full classification (mapping, allocation, filtering, hairpin, path), one-way WAN delay {classify_delay_ms} ms, {classify_endpoints} echo endpoints given:");
        for c in &report.classify {
            println!(
                "  {:<40} median {:>6.0} ms, max {:>6.0} ms over {} runs{}",
                c.nat,
                c.median_ms,
                c.max_ms,
                c.runs,
                if c.all_correct {
                    ""
                } else {
                    "  (SOME RUNS MISCLASSIFIED)"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn up(scenario: PathBuf, name: String, events: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let lab = lab::start_from_file(
        &scenario,
        LabOptions {
            name,
            event_log: events,
        },
    )?;
    println!("{}", serde_json::to_string(&lab.info())?);
    eprintln!(
        "lab {} is up; run commands with `punchscope lab exec {} HOST -- CMD`; Ctrl-C removes it",
        lab.name(),
        lab.name()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal = runtime.block_on(wait_for_stop_signal())?;
    drop(runtime);
    eprintln!("lab {}: {signal}, removing", lab.name());
    lab.shutdown()?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

fn exec(name: &str, host: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let ns = format!("{name}-{host}");
    if !netns::exists(&ns) {
        bail!("lab {name} has no namespace for `{host}` ({ns}); is the lab up? (hosts are named in its scenario, or `{INTERNET}`)");
    }
    let status = netns::command_in(&ns, &command[0])?
        .args(&command[1..])
        .status()
        .with_context(|| format!("cannot run `{}` in {ns}", command[0]))?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(128),
    })
}
