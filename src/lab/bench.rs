//! `punchscope lab bench`'s measurement of punchscope itself: how long a full
//! classification takes behind each NAT kind with a slow WAN, and (`lab
//! bench probe`) how long a volunteer's whole `probe` run takes for pairs of
//! NAT kinds. The lab's own figures (core packets/s, TUN latency) come from
//! [`punchscope_lab::bench`].

use std::net::SocketAddr;
use std::time::Instant;

use punchscope_analysis::nat::{Filtering, Mapping, UnsolicitedAnswer};
use serde::Serialize;

use super::services::EchoService;
pub use punchscope_lab::bench::{core_throughput, tun_latency, CoreThroughput, TunLatency};
use punchscope_lab::bench::{percentile, start_lab};
use punchscope_lab::{LabError, Scenario};

/// Wall time of full classifications (mapping, allocation, filtering, hairpin) behind one NAT kind.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifyTiming {
    /// The NAT's behaviour, e.g. `eim/apdf/preserve, unsolicited drop`.
    pub nat: String,
    pub delay_ms: u32,
    pub runs: usize,
    pub median_ms: f64,
    pub max_ms: f64,
    /// Whether every run found the NAT's true mapping and filtering.
    pub all_correct: bool,
    /// Echo endpoints the classification was given (4: two IPs x two ports).
    pub endpoints: usize,
}

/// Everything `lab bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub core: Vec<CoreThroughput>,
    pub tun: Option<TunLatency>,
    pub classify: Vec<ClassifyTiming>,
}

/// The NAT kinds whose classification time is measured.
const CLASSIFY_KINDS: [(Mapping, Filtering, UnsolicitedAnswer); 8] = [
    (Mapping::Eim, Filtering::Eif, UnsolicitedAnswer::Drop),
    (Mapping::Eim, Filtering::Adf, UnsolicitedAnswer::Drop),
    (Mapping::Eim, Filtering::Apdf, UnsolicitedAnswer::Drop),
    (Mapping::Eim, Filtering::Adf, UnsolicitedAnswer::Rst),
    (Mapping::Eim, Filtering::Apdf, UnsolicitedAnswer::Rst),
    (Mapping::Eim, Filtering::Apdf, UnsolicitedAnswer::Icmp),
    (Mapping::Adm, Filtering::Apdf, UnsolicitedAnswer::Drop),
    (Mapping::Apdm, Filtering::Apdf, UnsolicitedAnswer::Drop),
];

const ECHO_ENDPOINTS: [&str; 4] = [
    "198.51.100.10:3478",
    "198.51.100.10:3479",
    "198.51.100.11:3478",
    "198.51.100.11:3479",
];

/// Times `punchscope classify` (the library call it makes) behind NATs with
/// `delay_ms` one-way WAN delay, `runs` times per NAT kind, one run at a
/// time. `given` is how many of the echo endpoints (two IPs x two
/// ports) it is given: 4, as a campaign hands them out, or 2 (one per IP),
/// when the other port is learnt from the server's announcement.
pub fn classify_timing(
    lab_name: &str,
    delay_ms: u32,
    runs: usize,
    given: usize,
) -> Result<Vec<ClassifyTiming>, LabError> {
    use std::fmt::Write as _;
    let mut toml = String::new();
    for (i, (mapping, filtering, unsolicited)) in CLASSIFY_KINDS.iter().enumerate() {
        let _ = write!(
            toml,
            "[[nat]]\nname = \"n{i}\"\nmapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n\
             unsolicited = \"{unsolicited}\"\ndelay_ms = {delay_ms}\n[[host]]\nname = \"h{i}\"\nnat = \"n{i}\"\n"
        );
    }
    let scenario = Scenario::parse(&toml).expect("built-in scenario");
    let lab = start_lab(lab_name, scenario)?;
    let endpoints: Vec<SocketAddr> = ECHO_ENDPOINTS.iter().map(|e| e.parse().unwrap()).collect();
    let echo = EchoService::start(&lab, &endpoints)?;
    let mut timings = Vec::new();
    let outcome = (|| {
        for (i, (mapping, filtering, unsolicited)) in CLASSIFY_KINDS.iter().enumerate() {
            let mut times = Vec::new();
            let mut all_correct = true;
            for _ in 0..runs {
                let (elapsed, result) = lab
                    .run_in(&format!("h{i}"), || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        let servers = if given >= 4 {
                            ECHO_ENDPOINTS.map(String::from).to_vec()
                        } else {
                            vec![ECHO_ENDPOINTS[0].into(), ECHO_ENDPOINTS[2].into()]
                        };
                        let config = crate::classify::ClassifyConfig {
                            servers,
                            ..Default::default()
                        };
                        let started = Instant::now();
                        let result = runtime.block_on(crate::classify::classify(&config));
                        Ok::<_, std::io::Error>((started.elapsed(), result))
                    })?
                    .map_err(LabError::Traffic)?;
                let correct = result.is_ok_and(|c| {
                    use punchscope_analysis::classify::Finding;
                    c.verdict.mapping == Finding::Known { value: *mapping }
                        && c.verdict.filtering == Finding::Known { value: *filtering }
                });
                all_correct &= correct;
                times.push(elapsed.as_secs_f64() * 1e3);
            }
            timings.push(ClassifyTiming {
                nat: format!("{mapping}/{filtering}/preserve, unsolicited {unsolicited}"),
                delay_ms,
                runs,
                median_ms: percentile(&times, 0.5),
                max_ms: times.iter().copied().fold(0.0, f64::max),
                all_correct,
                endpoints: given,
            });
        }
        Ok::<_, LabError>(())
    })();
    drop(echo);
    lab.shutdown()?;
    outcome.map(|()| timings)
}

/// What `lab bench` measures and how long.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Duration of each core throughput run (64-byte and 1400-byte payloads).
    pub core_duration: std::time::Duration,
    /// Ping-pong round trips for the TUN latency.
    pub round_trips: usize,
    /// Only the core: no lab, no root needed.
    pub core_only: bool,
    /// One-way WAN delay of the NATs in the classification timing.
    pub classify_delay_ms: u32,
    /// Classification runs per NAT kind.
    pub classify_runs: usize,
    /// Echo endpoints classification is given: 4 (two IPs x two ports) or 2 (one per IP).
    pub classify_endpoints: usize,
}

/// Runs `lab bench`: the core always, the TUN path and classification timing
/// unless `core_only`, each in a lab of its own that is removed afterwards.
pub fn run(options: &BenchOptions) -> Result<BenchReport, LabError> {
    let core = [64, 1400]
        .into_iter()
        .map(|payload| core_throughput(payload, 1000, options.core_duration))
        .collect();
    if options.core_only {
        return Ok(BenchReport {
            core,
            tun: None,
            classify: Vec::new(),
        });
    }
    let name = format!("bench{}", std::process::id());
    Ok(BenchReport {
        core,
        tun: Some(tun_latency(&name, options.round_trips)?),
        classify: classify_timing(
            &name,
            options.classify_delay_ms,
            options.classify_runs,
            options.classify_endpoints,
        )?,
    })
}

/// A NAT kind of the probe benchmark: mapping, filtering, allocation.
type NatKind = (&'static str, &'static str, &'static str);

/// A home router as most are (Linux masquerade): endpoint-independent
/// mapping, address-and-port-dependent filtering, ports preserved.
const EIM: NatKind = ("eim", "apdf", "preserve");
const APDM_RANDOM: NatKind = ("apdm", "apdf", "random");
const APDM_SEQUENTIAL: NatKind = ("apdm", "apdf", "sequential");

/// The pairs `lab bench probe` times: (name, first host's NAT, second host's NAT).
pub const PROBE_PAIRS: [(&str, NatKind, NatKind); 4] = [
    ("eim-eim", EIM, EIM),
    ("eim-apdm_random", EIM, APDM_RANDOM),
    ("apdm_sequential-eim", APDM_SEQUENTIAL, EIM),
    ("apdm-apdm", APDM_RANDOM, APDM_RANDOM),
];

/// What `lab bench probe` runs.
#[derive(Debug, Clone)]
pub struct ProbeBenchOptions {
    /// The `punchscope` binary started in the namespaces (normally this one).
    pub exe: std::path::PathBuf,
    /// The plan the coordinator hands out (normally probes/default.toml).
    pub plan: std::path::PathBuf,
    /// One-way WAN delay of every NAT.
    pub delay_ms: u32,
    /// Names from [`PROBE_PAIRS`]; empty: all of them.
    pub pairs: Vec<String>,
    /// Logs, spools and each probe's result document.
    pub out: std::path::PathBuf,
    /// Longest one pair may take before its probes are ended.
    pub pair_deadline: std::time::Duration,
}

/// One pair's `probe` runs, each timed from its start to its exit.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeTiming {
    pub pair: String,
    /// Each side's NAT as mapping/filtering/allocation, first side first.
    pub nats: [String; 2],
    pub delay_ms: u32,
    /// Wall time of each side's `probe`, start to exit, in seconds.
    pub wall_s: [f64; 2],
    /// The pair's figure: the slower side.
    pub max_wall_s: f64,
    /// Each side's exit code (`None`: ended by the deadline or a signal).
    pub exit_codes: [Option<i32>; 2],
    /// Trials in each side's result.
    pub trials: [usize; 2],
    /// Trials each side recorded as connected.
    pub connected: [usize; 2],
    /// The RTT-driven attempt timeouts the trials ran with (first side), min and max, in ms.
    pub attempt_timeout_ms: Option<(u32, u32)>,
}

/// Runs the real coordinator and echo server in a lab with one host behind
/// each NAT of the chosen pairs, then, one pair at a time, the real `probe`
/// in both hosts (the second 150 ms after the first, as volunteers arrive),
/// and times each from start to exit. The lab is removed before this returns.
pub fn probe_timing(
    lab_name: &str,
    options: &ProbeBenchOptions,
) -> Result<Vec<ProbeTiming>, LabError> {
    use super::campaign::{spawn_logged, wait_listening, Children, COORDINATOR, ECHO};
    use std::fmt::Write as _;
    let io = LabError::Traffic;
    let pairs: Vec<_> = PROBE_PAIRS
        .iter()
        .filter(|(name, _, _)| options.pairs.is_empty() || options.pairs.iter().any(|p| p == name))
        .collect();
    if pairs.is_empty() {
        return Err(io(std::io::Error::other(format!(
            "no such pair; choose from {}",
            PROBE_PAIRS.map(|p| p.0).join(", ")
        ))));
    }
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs).map_err(io)?;
    let mut toml = String::new();
    for (i, (_, a, b)) in pairs.iter().enumerate() {
        for (side, (mapping, filtering, allocation)) in [("a", a), ("b", b)] {
            let _ = write!(
                toml,
                "[[nat]]\nname = \"n{side}{i}\"\nmapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n\
                 allocation = \"{allocation}\"\ndelay_ms = {}\n[[host]]\nname = \"{side}{i}\"\nnat = \"n{side}{i}\"\n",
                options.delay_ms
            );
        }
    }
    let scenario = Scenario::parse(&toml).expect("built-in scenario");
    let lab = start_lab(lab_name, scenario)?;
    let internet = lab.internet_netns();
    let exe = options.exe.as_path();
    let owned = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut servers = Children(Vec::new());
    let mut echo = owned(&["serve", "echo"]);
    for e in ECHO {
        echo.extend(["--listen".to_string(), e.to_string()]);
    }
    servers
        .0
        .push(spawn_logged(exe, &logs, &internet, "echo", &echo)?);
    let mut rendezvous = owned(&["serve", "rendezvous", "--listen", COORDINATOR, "--plan"]);
    rendezvous.push(options.plan.display().to_string());
    servers.0.push(spawn_logged(
        exe,
        &logs,
        &internet,
        "rendezvous",
        &rendezvous,
    )?);
    let outcome = (|| {
        for endpoint in [ECHO[0], COORDINATOR] {
            wait_listening(&lab, endpoint.parse().expect("constant"))?;
        }
        let mut timings = Vec::new();
        for (i, (name, a, b)) in pairs.iter().enumerate() {
            timings.push(time_pair(&lab, options, i, name, [a, b])?);
        }
        Ok::<_, LabError>(timings)
    })();
    drop(servers);
    lab.shutdown()?;
    outcome
}

/// Runs and times one pair's two probes (hosts `a{i}` and `b{i}`).
fn time_pair(
    lab: &punchscope_lab::Lab,
    options: &ProbeBenchOptions,
    i: usize,
    name: &str,
    kinds: [&NatKind; 2],
) -> Result<ProbeTiming, LabError> {
    use super::campaign::{spawn_logged, Children, COORDINATOR, ECHO};
    let io = LabError::Traffic;
    let logs = options.out.join("logs");
    let mut probes = Children(Vec::new());
    let mut started = Vec::new();
    for side in ["a", "b"] {
        let host = format!("{side}{i}");
        let spool = options.out.join("spool").join(&host);
        let mut args: Vec<String> = ["probe", "--server", COORDINATOR]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // All four echo endpoints, as a campaign hands them out.
        for e in ECHO {
            args.extend(["--echo".to_string(), e.to_string()]);
        }
        args.extend(
            [
                "--pair-code",
                name,
                "--spool",
                &spool.display().to_string(),
                "--yes",
                "--json",
                "--quiet",
                "--max-wait-secs",
                "30",
            ]
            .map(str::to_string),
        );
        let ns = lab.host_netns(&host)?;
        started.push(Instant::now());
        probes
            .0
            .push(spawn_logged(&options.exe, &logs, &ns, &host, &args)?);
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let deadline = Instant::now() + options.pair_deadline;
    let mut wall_s = [0.0; 2];
    let mut exit_codes = [None; 2];
    for (side, (_, child)) in probes.0.iter_mut().enumerate() {
        let status = loop {
            match child.try_wait().map_err(io)? {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => break None,
                None => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        wall_s[side] = started[side].elapsed().as_secs_f64();
        exit_codes[side] = status.and_then(|s| s.code());
    }
    drop(probes);
    let mut trials = [0; 2];
    let mut connected = [0; 2];
    let mut timeouts = Vec::new();
    for (side, host) in [format!("a{i}"), format!("b{i}")].iter().enumerate() {
        let text = std::fs::read_to_string(logs.join(format!("{host}.out"))).unwrap_or_default();
        let Ok(result) = punchscope_analysis::result::RunResult::from_json(&text) else {
            continue;
        };
        for pairing in &result.pairings {
            trials[side] += pairing.trials.len();
            connected[side] += pairing
                .trials
                .iter()
                .filter(|t| t.outcome.is_success())
                .count();
            if side == 0 {
                timeouts.extend(
                    pairing
                        .trials
                        .iter()
                        .filter_map(|t| t.timing.map(|t| t.attempt_timeout_ms)),
                );
            }
        }
    }
    let nat = |(m, f, a): &NatKind| format!("{m}/{f}/{a}");
    Ok(ProbeTiming {
        pair: name.to_string(),
        nats: [nat(kinds[0]), nat(kinds[1])],
        delay_ms: options.delay_ms,
        max_wall_s: wall_s[0].max(wall_s[1]),
        wall_s,
        exit_codes,
        trials,
        connected,
        attempt_timeout_ms: timeouts
            .iter()
            .min()
            .zip(timeouts.iter().max())
            .map(|(a, b)| (*a, *b)),
    })
}
