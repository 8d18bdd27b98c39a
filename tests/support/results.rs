//! Builders of results for the collector, upload, privacy and report tests
//! and the benchmarks: `RunResult`s, their `TrialRecord`s, classifications
//! and the shipped default `Plan`. Two kinds, kept apart on purpose:
//!
//! - [`sample_result`] starts from raw observations (LAN and public
//!   addresses, [`RAW_ADDRESSES`], also in error texts) and goes through
//!   `RunResult::new`, as a probe's result does: the privacy tests check
//!   that none of those addresses survives anywhere.
//! - [`run`] builds one side's run field by field from already sanitized
//!   parts ([`classification`], a [`verdict`] of the test's choosing, one
//!   [`SideTrial`] per trial), so the report tests can work out every
//!   number by hand.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use punchscope::analysis::classify::{
    AllocationPattern, Classification, DialKind, DialObservation, DialOutcome,
    FilteringObservation, Finding, HairpinObservation, Observations, Probe, Verdict,
};
use punchscope::analysis::handshake::{
    BitcoinNetwork, HandshakeBy, HandshakeRecord, PeerVersion, Role, Transport,
};
use punchscope::analysis::nat::{Filtering, Mapping};
use punchscope::analysis::plan::Plan;
use punchscope::analysis::result::{
    ClientInfo, MaskedEndpoint, Pairing, RunMode, RunResult, SanitizedClassification,
    SanitizedFiltering, SanitizedObservations, SanitizedProbe, SCHEMA_VERSION,
};
use punchscope::analysis::trial::{
    Attempt, AttemptResult, Completion, Strategy, TrialOutcome, TrialRecord,
};
use uuid::Uuid;

/// The shipped default plan (probes/default.toml), which every fixture run follows.
pub fn default_plan() -> Plan {
    Plan::from_toml(include_str!("../../probes/default.toml")).unwrap()
}

/// When every fixture run starts.
fn fixture_start() -> DateTime<Utc> {
    "2026-05-01T10:00:00.250Z".parse().unwrap()
}

/// The `version` a punchscope peer sends, as a successful handshake records it.
fn punchscope_peer() -> PeerVersion {
    PeerVersion {
        user_agent: "/punchscope:0.1.0/".into(),
        protocol_version: 70016,
        services: 1033,
        start_height: 0,
        relay: false,
    }
}

// Raw results, sanitized by `RunResult::new`.

/// Addresses that appear in the raw observations and must never be stored.
pub const RAW_ADDRESSES: &[&str] = &[
    "192.168.1.2",
    "203.0.113.2",
    "198.51.100.1",
    "198.51.100.2",
    "2001:db8:aa:bb::2",
    "127.0.0.1",
];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A classification as the classifier makes it: full LAN and public addresses.
pub fn raw_classification(seed: usize) -> Classification {
    let port = 40000 + u16::try_from(seed % 20000).unwrap();
    let local = format!("192.168.1.2:{port}");
    let public = format!("203.0.113.2:{}", port + 7);
    let probe = |server: &str| Probe {
        local: sa(&local),
        server: sa(server),
        observed: Some(sa(&public)),
        rtt_ms: Some(23.25 + seed as f64 / 8.0),
        error: None,
    };
    let observations = Observations {
        mapping: vec![
            probe("198.51.100.1:3478"),
            probe("198.51.100.1:3479"),
            probe("198.51.100.2:3478"),
        ],
        allocation: (0..4)
            .map(|i| Probe {
                local: sa(&format!("192.168.1.2:{}", 41000 + i)),
                server: sa("198.51.100.1:3478"),
                observed: Some(sa(&format!("203.0.113.2:{}", 41000 + i))),
                rtt_ms: Some(22.0),
                error: None,
            })
            .chain(std::iter::once(Probe {
                local: sa("[2001:db8:aa:bb::2]:41010"),
                server: sa("[2001:db8:ff::1]:3478"),
                observed: None,
                rtt_ms: None,
                error: Some("connect to [2001:db8:ff::1]:3478 from 192.168.1.2 timed out".into()),
            }))
            .collect(),
        filtering: Some(FilteringObservation {
            probe: probe("198.51.100.1:3478"),
            dials: vec![
                DialObservation {
                    kind: DialKind::OtherPort,
                    from: Some(sa("198.51.100.1:3479")),
                    server_outcome: Some(DialOutcome::Connected),
                    received: true,
                },
                DialObservation {
                    kind: DialKind::OtherIp,
                    from: Some(sa("198.51.100.2:3478")),
                    server_outcome: Some(DialOutcome::Timeout),
                    received: false,
                },
            ],
            error: None,
        }),
        hairpin: Some(HairpinObservation {
            target: sa(&public),
            reached_listener: false,
            error: Some(format!("connect to {public} refused")),
        }),
    };
    Classification::new(
        vec![
            sa("198.51.100.1:3478"),
            sa("198.51.100.1:3479"),
            sa("198.51.100.2:3478"),
        ],
        observations,
    )
}

/// One initiator trial as the probe records it before sanitizing: two
/// attempts, the second connecting or failing with an error text that names
/// the peer's raw address.
fn unsanitized_trial(n: u32, plan: &Plan, connected: bool) -> TrialRecord {
    let strategy = plan.strategy_of(n);
    let transport = plan.transport_of(n);
    let handshake = connected.then(|| {
        let mut h = HandshakeRecord::new(Some(transport), Role::Initiator, BitcoinNetwork::Mainnet);
        h.success = true;
        h.durations.version_ms = Some(101.5);
        h.durations.verack_ms = Some(50.25);
        h.durations.ping_ms = Some(50.125);
        if transport == Transport::V2 {
            h.durations.v2_key_exchange_ms = Some(151.0);
            h.session_id = Some(format!("{:064x}", u64::from(n) * 7919));
        }
        h.bytes_sent = 310;
        h.bytes_received = 322;
        h.peer = Some(punchscope_peer());
        h
    });
    TrialRecord {
        trial: n,
        trial_id: None,
        timing: None,
        family: Default::default(),
        strategy,
        role: Role::Initiator,
        local_port: 50000 + u16::try_from(n).unwrap(),
        public_port: Some(60000 + u16::try_from(n).unwrap()),
        peer_port: Some(61000 + u16::try_from(n).unwrap()),
        outcome: if connected {
            TrialOutcome::Connected
        } else {
            TrialOutcome::Refused
        },
        attempts: vec![
            Attempt {
                started_ms: 0.0,
                duration_ms: 101.0 + f64::from(n) / 3.0,
                result: AttemptResult::Refused,
            },
            Attempt {
                started_ms: 512.5,
                duration_ms: 203.0,
                result: if connected {
                    AttemptResult::Connected
                } else {
                    AttemptResult::Error {
                        detail: "connect to 203.0.113.2:61000 failed: Connection refused".into(),
                    }
                },
            },
        ],
        go_to_established_ms: connected.then_some(715.5),
        completed_by: connected.then_some(if strategy == Strategy::ConnectListen {
            Completion::Listener
        } else {
            Completion::Connect
        }),
        claims: Vec::new(),
        nonce_verified: connected,
        start_delay_ms: 25.0,
        injected_skew_ms: 0.0,
        peer_outcome: Some(if connected {
            TrialOutcome::Connected
        } else {
            TrialOutcome::Timeout
        }),
        handshake_by: HandshakeBy::Punchscope,
        handshake,
        node_bridge: None,
        error: None,
        pair_class: None,
        drawn_from: None,
        hard: None,
        mapping: None,
    }
}

/// A realistic result: one pairing of `trials` trials (about 2 in 3
/// connect), raw addresses in the classification and in error texts, made
/// with `RunResult::new` (so sanitized, as a probe makes it).
pub fn sample_result(seed: usize, trials: u32) -> RunResult {
    let plan = default_plan();
    let classification = raw_classification(seed);
    let started = fixture_start();
    let ended = started + chrono::Duration::milliseconds(90_000 + seed as i64);
    RunResult::new(
        "0.1.0",
        started,
        ended,
        ClientInfo::this_machine(Some("home-fibre".into())),
        &classification,
        vec![Pairing {
            peer_verdict: Some(raw_classification(seed + 1).verdict),
            role: Role::Initiator,
            plan: plan.clone(),
            trials: (0..trials)
                .map(|n| unsanitized_trial(n, &plan, n % 3 != 2))
                .collect(),
            ended: punchscope::analysis::result::PairingEnded::Done,
            coordinator_violation: None,
        }],
    )
}

// Sanitized runs, built field by field.

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
        ipv6: None,
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

fn side_record(
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
            h.peer = Some(punchscope_peer());
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
        timing: None,
        family: Default::default(),
        strategy,
        role,
        local_port: 40000 + n as u16,
        public_port: Some(40000 + n as u16),
        peer_port: Some(52000 + n as u16),
        outcome: side.outcome,
        attempts,
        go_to_established_ms: side.go_ms,
        completed_by: side.outcome.is_success().then_some(Completion::Connect),
        claims: Vec::new(),
        nonce_verified: side.outcome.is_success(),
        start_delay_ms: 12.5,
        injected_skew_ms: 0.0,
        peer_outcome: None,
        handshake_by: HandshakeBy::Punchscope,
        handshake,
        node_bridge: None,
        error: None,
        pair_class: None,
        drawn_from: None,
        hard: None,
        mapping: None,
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
    let started = fixture_start();
    let trials = sides
        .iter()
        .enumerate()
        .map(|(n, s)| side_record(&plan, n as u32, trial_ids[n].clone(), role, s))
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
        classification_v6: None,
        classification_v6_missing: None,
    }
}

/// Fresh trial ids as the coordinator makes them (32 hex digits).
pub fn trial_ids(n: usize) -> Vec<Option<String>> {
    (0..n)
        .map(|_| Some(Uuid::new_v4().simple().to_string()))
        .collect()
}
