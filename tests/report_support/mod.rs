//! Fixtures for the report tests and the report benchmark: pairs of realistic, sanitized runs whose trials share the coordinator's trial ids.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use punchscope::analysis::classify::{AllocationPattern, Finding, Verdict};
use punchscope::analysis::handshake::{
    BitcoinNetwork, HandshakeRecord, PeerVersion, Role, Transport,
};
use punchscope::analysis::nat::{Filtering, Mapping};
use punchscope::analysis::plan::Plan;
use punchscope::analysis::result::{
    ClientInfo, MaskedEndpoint, Pairing, RunMode, RunResult, SanitizedClassification,
    SanitizedFiltering, SanitizedObservations, SanitizedProbe, SCHEMA_VERSION,
};
use punchscope::analysis::trial::{Attempt, AttemptResult, Completion, TrialOutcome, TrialRecord};
use uuid::Uuid;

/// A verdict as the classifier states it; `None` parts are `unknown` findings.
pub fn verdict(mapping: Option<Mapping>, filtering: Option<Filtering>) -> Verdict {
    fn finding<T>(v: Option<T>, missing: &str) -> Finding<T> {
        match v {
            Some(value) => Finding::Known { value },
            None => Finding::Unknown {
                reason: missing.to_string(),
            },
        }
    }
    Verdict {
        no_nat: false,
        mapping: finding(mapping, "no mapping probe was answered"),
        filtering: finding(filtering, "the echo server made no dial-backs"),
        port_preserved: Some(true),
        allocation: Finding::Known {
            value: AllocationPattern::Preserving,
        },
        hairpin: Some(false),
        missing: vec![],
        path: None,
    }
}

fn masked(net: &str, port: u16) -> MaskedEndpoint {
    MaskedEndpoint {
        net: net.to_string(),
        port,
    }
}

/// A sanitized classification with prefixes only, as a probe uploads it.
pub fn classification(v: Verdict, port: u16) -> SanitizedClassification {
    let probe = |server_port: u16, server_net: &str| SanitizedProbe {
        local: masked("192.168.1.0/24", port),
        server: masked(server_net, server_port),
        observed: Some(masked("203.0.113.0/24", port)),
        rtt_ms: Some(23.5),
        error: None,
    };
    SanitizedClassification {
        server_endpoints: vec![
            masked("198.51.100.0/24", 3478),
            masked("198.51.100.0/24", 3479),
        ],
        observations: SanitizedObservations {
            mapping: vec![
                probe(3478, "198.51.100.0/24"),
                probe(3479, "198.51.100.0/24"),
            ],
            allocation: vec![],
            filtering: Some(SanitizedFiltering {
                probe: probe(3478, "198.51.100.0/24"),
                dials: vec![],
                error: None,
            }),
            hairpin: None,
        },
        verdict: v,
    }
}

/// What one side saw in one trial.
#[derive(Debug, Clone)]
pub struct SideTrial {
    pub outcome: TrialOutcome,
    pub go_ms: Option<f64>,
    pub attempts: usize,
    /// Handshake success over the punched socket, when one ran.
    pub handshake_ok: Option<bool>,
}

impl SideTrial {
    pub fn connected(go_ms: f64, attempts: usize, handshake_ok: bool) -> Self {
        SideTrial {
            outcome: TrialOutcome::Connected,
            go_ms: Some(go_ms),
            attempts,
            handshake_ok: Some(handshake_ok),
        }
    }

    pub fn failed(outcome: TrialOutcome, attempts: usize) -> Self {
        SideTrial {
            outcome,
            go_ms: None,
            attempts,
            handshake_ok: None,
        }
    }
}

pub fn default_plan() -> Plan {
    Plan::from_toml(include_str!("../../probes/default.toml")).unwrap()
}

fn record(
    plan: &Plan,
    n: u32,
    trial_id: Option<String>,
    role: Role,
    side: &SideTrial,
) -> TrialRecord {
    let strategy = plan.strategy_of(n);
    let transport = plan.transport_of(n);
    let attempts = (0..side.attempts)
        .map(|i| Attempt {
            started_ms: i as f64 * 412.5,
            duration_ms: 101.25,
            result: if i + 1 == side.attempts && side.outcome.is_success() {
                AttemptResult::Connected
            } else if side.outcome == TrialOutcome::Timeout {
                AttemptResult::Timeout
            } else {
                AttemptResult::Refused
            },
        })
        .collect();
    let handshake = side.handshake_ok.map(|ok| {
        let mut h = HandshakeRecord::new(Some(transport), role, BitcoinNetwork::Mainnet);
        h.success = ok;
        h.durations.version_ms = Some(51.5);
        if ok {
            h.durations.verack_ms = Some(50.25);
            h.durations.ping_ms = Some(50.0);
            h.peer = Some(PeerVersion {
                user_agent: "/punchscope:0.1.0/".into(),
                protocol_version: 70016,
                services: 1033,
                start_height: 0,
                relay: false,
            });
        } else {
            h.failure = Some(punchscope::analysis::handshake::FailureReason::PeerClosed {
                phase: punchscope::analysis::handshake::Phase::Verack,
            });
            h.failed_phase = Some(punchscope::analysis::handshake::Phase::Verack);
        }
        if transport == Transport::V2 {
            h.durations.v2_key_exchange_ms = Some(102.0);
            h.session_id = ok.then(|| format!("{:064x}", u64::from(n) * 7919 + 1));
        }
        h.bytes_sent = 310;
        h.bytes_received = 322;
        h
    });
    TrialRecord {
        trial: n,
        trial_id,
        strategy,
        role,
        local_port: 40000 + n as u16,
        public_port: Some(40000 + n as u16),
        peer_port: Some(52000 + n as u16),
        outcome: side.outcome,
        attempts,
        go_to_established_ms: side.go_ms,
        completed_by: side.outcome.is_success().then_some(Completion::Connect),
        nonce_verified: side.outcome.is_success(),
        start_delay_ms: 12.5,
        injected_skew_ms: 0.0,
        peer_outcome: None,
        handshake,
        error: None,
    }
}

/// One side's run of one pairing.
pub fn run(
    role: Role,
    own: Verdict,
    peer: Option<Verdict>,
    trial_ids: &[Option<String>],
    sides: &[SideTrial],
) -> RunResult {
    let plan = default_plan();
    let started: DateTime<Utc> = "2026-05-01T10:00:00.250Z".parse().unwrap();
    let trials = sides
        .iter()
        .enumerate()
        .map(|(n, s)| record(&plan, n as u32, trial_ids[n].clone(), role, s))
        .collect();
    RunResult {
        schema_version: SCHEMA_VERSION,
        run_id: Uuid::new_v4(),
        tool_version: "0.1.0".into(),
        mode: RunMode::Volunteer,
        started_at: started,
        ended_at: started + chrono::Duration::seconds(95),
        client: ClientInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            network_label: Some("home-fibre".into()),
        },
        classification: classification(own, 40000),
        pairings: vec![Pairing {
            peer_verdict: peer,
            role,
            plan,
            trials,
            ended: Default::default(),
            coordinator_violation: None,
        }],
        port_mapping: None,
    }
}

/// Fresh trial ids as the coordinator makes them (32 hex digits).
pub fn trial_ids(n: usize) -> Vec<Option<String>> {
    (0..n)
        .map(|_| Some(Uuid::new_v4().simple().to_string()))
        .collect()
}

/// NAT types a synthetic campaign draws from, with rough weights.
const SYNTHETIC_TYPES: &[(Option<Mapping>, Option<Filtering>, u32)] = &[
    (Some(Mapping::Eim), Some(Filtering::Apdf), 40),
    (Some(Mapping::Eim), Some(Filtering::Adf), 10),
    (Some(Mapping::Eim), Some(Filtering::Eif), 10),
    (Some(Mapping::Apdm), Some(Filtering::Apdf), 15),
    (Some(Mapping::Adm), Some(Filtering::Adf), 5),
    (Some(Mapping::Eim), None, 10),
    (None, None, 10),
];

fn pick_type(rng: &mut impl rand::Rng) -> (Option<Mapping>, Option<Filtering>) {
    let total: u32 = SYNTHETIC_TYPES.iter().map(|t| t.2).sum();
    let mut x = rng.gen_range(0..total);
    for &(m, f, w) in SYNTHETIC_TYPES {
        if x < w {
            return (m, f);
        }
        x -= w;
    }
    (None, None)
}

/// A made-up chance that a pair punches, loosely after the lab's findings
/// (EIM on both sides punches; APDM rarely does). Synthetic, for tests only.
fn synthetic_chance(
    a: (Option<Mapping>, Option<Filtering>),
    b: (Option<Mapping>, Option<Filtering>),
) -> f64 {
    let eim = |t: (Option<Mapping>, Option<Filtering>)| t.0 == Some(Mapping::Eim);
    match (eim(a), eim(b)) {
        (true, true) => 0.9,
        (true, false) | (false, true) => 0.35,
        _ => 0.08,
    }
}

/// Volunteers' network labels and systems a synthetic campaign draws from.
const SYNTHETIC_LABELS: &[&str] = &["home-fibre", "home-cable", "home-dsl", "mobile"];
const SYNTHETIC_SYSTEMS: &[&str] = &["linux", "macos", "windows"];

/// Writes `pairs` pairings (two runs each, both sides of `trials` trials
/// sharing trial ids) as collector export lines, deterministically from
/// `seed`. Each run is uploaded from one of `pairs` networks (keyed groups),
/// so a network takes part in two pairings on average, never both sides of
/// one. Returns the runs written. Synthetic numbers: for tests and
/// benchmarks only.
pub fn write_synthetic_jsonl(
    out: &mut impl std::io::Write,
    pairs: usize,
    trials: usize,
    seed: u64,
) -> usize {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut runs = 0;
    for _ in 0..pairs {
        let a = pick_type(&mut rng);
        let b = pick_type(&mut rng);
        let chance = synthetic_chance(a, b);
        let ids: Vec<Option<String>> = (0..trials)
            .map(|_| Some(format!("{:032x}", rng.gen::<u128>())))
            .collect();
        let mut side_a = Vec::with_capacity(trials);
        let mut side_b = Vec::with_capacity(trials);
        for n in 0..trials {
            // low_ttl (every third trial from 2) does a little better.
            let bonus = if n % 3 == 2 { 0.1 } else { 0.0 };
            if rng.gen_bool((chance + bonus).min(1.0)) {
                let attempts = if rng.gen_bool(0.85) {
                    1
                } else {
                    rng.gen_range(2..=4)
                };
                let go = 180.0 + rng.gen::<f64>().powi(3) * 900.0 + (attempts - 1) as f64 * 450.0;
                let ok_a = rng.gen_bool(0.97);
                let ok_b = ok_a || rng.gen_bool(0.5);
                side_a.push(SideTrial::connected(go, attempts, ok_a));
                side_b.push(SideTrial::connected(
                    go + rng.gen_range(0.0..15.0),
                    attempts,
                    ok_b,
                ));
            } else {
                let outcome = if rng.gen_bool(0.6) {
                    TrialOutcome::Refused
                } else {
                    TrialOutcome::Timeout
                };
                side_a.push(SideTrial::failed(outcome, 4));
                side_b.push(SideTrial::failed(TrialOutcome::Timeout, 4));
            }
        }
        let va = verdict(a.0, a.1);
        let vb = verdict(b.0, b.1);
        let ra = run(Role::Initiator, va.clone(), Some(vb.clone()), &ids, &side_a);
        let rb = run(Role::Responder, vb, Some(va), &ids, &side_b);
        let network_a = rng.gen_range(0..pairs.max(2));
        let network_b = (network_a + rng.gen_range(1..pairs.max(2))) % pairs.max(2);
        for (mut r, network) in [(ra, network_a), (rb, network_b)] {
            r.client.network_label =
                Some(SYNTHETIC_LABELS[rng.gen_range(0..SYNTHETIC_LABELS.len())].to_string());
            r.client.os = SYNTHETIC_SYSTEMS[rng.gen_range(0..SYNTHETIC_SYSTEMS.len())].to_string();
            let line = punchscope::analysis::result::CollectedResult {
                received_at: r.ended_at,
                source_net: "203.0.113.0/24".into(),
                source_group: format!(
                    "{:064x}",
                    (network as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ),
                result: r,
            };
            serde_json::to_writer(&mut *out, &line).unwrap();
            out.write_all(b"\n").unwrap();
            runs += 1;
        }
    }
    runs
}
