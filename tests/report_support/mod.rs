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
    ClientInfo, MaskedEndpoint, Pairing, RunResult, SanitizedClassification, SanitizedFiltering,
    SanitizedObservations, SanitizedProbe, SCHEMA_VERSION,
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
        }],
    }
}

/// Fresh trial ids as the coordinator makes them (32 hex digits).
pub fn trial_ids(n: usize) -> Vec<Option<String>> {
    (0..n)
        .map(|_| Some(Uuid::new_v4().simple().to_string()))
        .collect()
}
