//! `punchscope lab bench`'s measurement of punchscope itself: how long a full
//! classification takes behind each NAT kind with a slow WAN. The lab's own
//! figures (core packets/s, TUN latency) come from [`punchscope_lab::bench`].

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
/// `delay_ms` one-way WAN delay, `runs` times per NAT kind, one run at a time.
pub fn classify_timing(
    lab_name: &str,
    delay_ms: u32,
    runs: usize,
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
                        let config = crate::classify::ClassifyConfig {
                            servers: vec![ECHO_ENDPOINTS[0].into(), ECHO_ENDPOINTS[2].into()],
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
        classify: classify_timing(&name, options.classify_delay_ms, options.classify_runs)?,
    })
}
