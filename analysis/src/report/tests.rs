//! Unit tests of the report's aggregation: dedupe across sides, NAT joining, splits, sums, empty input.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::aggregate::{Aggregator, NatType};
use super::input::{parse_document, read_jsonl};
use super::summary::Summary;
use super::Report;
use crate::classify::{Finding, Verdict};
use crate::handshake::{
    BitcoinNetwork, BridgeFailure, HandshakeBy, HandshakeRecord, NodeBridgeRecord, NodePeerView,
    Role, Transport,
};
use crate::nat::{Filtering, Mapping};
use crate::plan::Plan;
use crate::result::{
    ClientInfo, CollectedResult, MaskedEndpoint, Pairing, RunMode, RunResult,
    SanitizedClassification, SanitizedObservations, SCHEMA_VERSION,
};
use crate::trial::{Attempt, AttemptResult, Family, TrialOutcome, TrialRecord};

fn verdict(m: Option<Mapping>, f: Option<Filtering>) -> Verdict {
    fn finding<T>(v: Option<T>) -> Finding<T> {
        match v {
            Some(value) => Finding::Known { value },
            None => Finding::Unknown {
                reason: "no echo server answered".into(),
            },
        }
    }
    Verdict {
        no_nat: false,
        mapping: finding(m),
        filtering: finding(f),
        port_preserved: None,
        allocation: Finding::Unknown {
            reason: "not measured".into(),
        },
        hairpin: None,
        missing: vec![],
        path: None,
        ipv6: None,
    }
}

struct T {
    n: u32,
    id: Option<String>,
    outcome: TrialOutcome,
    go_ms: Option<f64>,
    attempts: usize,
    handshake: Option<(Transport, bool)>,
    /// Bridge mode: the node's transport (None: it never listed the peer) and success.
    node: Option<(Option<Transport>, bool)>,
    family: Family,
}

fn t(n: u32, id: Option<&str>, outcome: TrialOutcome) -> T {
    T {
        n,
        id: id.map(str::to_string),
        family: Family::Ipv4,
        outcome,
        go_ms: outcome.is_success().then_some(200.0 + f64::from(n)),
        attempts: 1,
        handshake: None,
        node: None,
    }
}

fn node_bridge(role: Role, transport: Option<Transport>, success: bool) -> NodeBridgeRecord {
    NodeBridgeRecord {
        role,
        success,
        failure: (!success).then_some(BridgeFailure::HandshakeIncomplete),
        peer: transport.map(|transport| NodePeerView {
            connection_type: "inbound".into(),
            transport: Some(transport),
            version_handshake: success,
            user_agent: "/Satoshi:28.1.0/".into(),
            protocol_version: 70016,
            services: 1033,
            session_id: None,
            ping_ms: None,
        }),
        handshake_ms: success.then_some(150.0),
        bytes_to_peer: 400,
        bytes_from_peer: 400,
        disconnected: true,
    }
}

fn run(role: Role, own: Verdict, peer: Option<Verdict>, trials: Vec<T>) -> RunResult {
    let plan = Plan::from_toml("version = 1\nname = \"default\"\n").unwrap();
    let started: DateTime<Utc> = "2026-05-01T10:00:00Z".parse().unwrap();
    let records = trials
        .into_iter()
        .map(|x| TrialRecord {
            trial: x.n,
            trial_id: x.id,
            timing: None,
            mapping: None,
            family: x.family,
            strategy: plan.strategy_of(x.n),
            role,
            local_port: 40000,
            public_port: Some(40000),
            peer_port: Some(50000),
            outcome: x.outcome,
            attempts: (0..x.attempts)
                .map(|i| Attempt {
                    started_ms: i as f64 * 300.0,
                    duration_ms: 100.0,
                    result: if i + 1 == x.attempts && x.outcome.is_success() {
                        AttemptResult::Connected
                    } else {
                        AttemptResult::Refused
                    },
                })
                .collect(),
            go_to_established_ms: x.go_ms,
            completed_by: None,
            claims: Vec::new(),
            nonce_verified: x.outcome.is_success(),
            start_delay_ms: 10.0,
            injected_skew_ms: 0.0,
            peer_outcome: None,
            handshake_by: if x.node.is_some() {
                HandshakeBy::Nodes
            } else {
                HandshakeBy::Punchscope
            },
            handshake: x.handshake.map(|(tr, ok)| {
                let mut h = HandshakeRecord::new(Some(tr), role, BitcoinNetwork::Mainnet);
                h.success = ok;
                h
            }),
            node_bridge: x
                .node
                .map(|(transport, ok)| node_bridge(role, transport, ok)),
            error: None,
            pair_class: None,
            drawn_from: None,
            hard: None,
        })
        .collect();
    RunResult {
        schema_version: SCHEMA_VERSION,
        run_id: Uuid::new_v4(),
        tool_version: "0.1.0".into(),
        mode: RunMode::Volunteer,
        started_at: started,
        ended_at: started,
        client: ClientInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            network_label: None,
        },
        classification: SanitizedClassification {
            server_endpoints: vec![MaskedEndpoint {
                net: "198.51.100.0/24".into(),
                port: 3478,
            }],
            observations: SanitizedObservations {
                mapping: vec![],
                allocation: vec![],
                filtering: None,
                hairpin: None,
            },
            verdict: own,
        },
        pairings: vec![Pairing {
            peer_verdict: peer,
            role,
            plan,
            trials: records,
            ended: Default::default(),
            coordinator_violation: None,
        }],
        port_mapping: None,
        classification_v6: None,
        classification_v6_missing: None,
    }
}

use Filtering::*;
use Mapping::*;
use TrialOutcome::*;

fn eim_apdf() -> Verdict {
    verdict(Some(Eim), Some(Apdf))
}
fn eim_eif() -> Verdict {
    verdict(Some(Eim), Some(Eif))
}

fn summary_of(runs: &[RunResult]) -> (Summary, Vec<super::CountedTrial>) {
    let mut agg = Aggregator::new();
    for r in runs {
        agg.add_run(r);
    }
    let report = Report::new(agg.finish(), &[]);
    (report.summary, report.trials)
}

#[test]
fn a_trial_seen_from_both_sides_counts_once_and_needs_both() {
    let alice = run(
        Role::Initiator,
        eim_apdf(),
        Some(eim_eif()),
        vec![
            t(0, Some("aa00"), Connected),
            t(1, Some("aa01"), Connected),
            t(2, Some("aa02"), Refused),
        ],
    );
    let bob = run(
        Role::Responder,
        eim_eif(),
        Some(eim_apdf()),
        vec![
            t(0, Some("aa00"), Connected),
            t(1, Some("aa01"), Timeout),
            t(2, Some("aa02"), Refused),
        ],
    );
    let (s, trials) = summary_of(&[alice.clone(), bob, alice]);
    assert_eq!(s.input.trial_records, 6);
    assert_eq!(s.input.trials_counted, 3);
    assert_eq!(s.input.trials_both_sides, 3);
    assert_eq!(s.input.duplicate_runs, 1);
    assert_eq!(s.input.sides_disagree, 1);
    // Only trial 0 has both sides connected.
    assert_eq!((s.headline.successes, s.headline.n), (1, 3));
    assert_eq!(trials[1].outcome, Timeout);
    assert!(trials.iter().all(|t| t.sides == 2));
}

#[test]
fn a_third_record_or_same_role_twice_is_a_duplicate() {
    let a = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("x1"), Connected)],
    );
    let a_again_other_run = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("x1"), Refused)],
    );
    let (s, _) = summary_of(&[a, a_again_other_run]);
    assert_eq!(s.input.trials_counted, 1);
    assert_eq!(s.input.duplicate_trial_records, 1);
    assert_eq!(s.headline.successes, 1);
}

#[test]
fn records_without_trial_id_count_on_their_own() {
    let a = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, None, Connected), t(1, None, Connected)],
    );
    let b = run(
        Role::Responder,
        eim_eif(),
        None,
        vec![t(0, None, Connected), t(1, None, Refused)],
    );
    let (s, _) = summary_of(&[a, b]);
    assert_eq!(s.input.trials_counted, 4);
    assert_eq!(s.input.trials_without_id, 4);
    assert_eq!(s.headline.successes, 3);
}

#[test]
fn nat_types_join_by_trial_id_and_fall_back_to_peer_verdict() {
    // Joined: each side's own verdict, whatever the other side's peer_verdict says.
    let a = run(
        Role::Initiator,
        eim_apdf(),
        Some(verdict(Some(Apdm), Some(Apdf))),
        vec![t(0, Some("j0"), Connected)],
    );
    let b = run(
        Role::Responder,
        eim_eif(),
        None,
        vec![t(0, Some("j0"), Connected)],
    );
    // One side only: the peer's type comes from peer_verdict.
    let c = run(
        Role::Responder,
        verdict(Some(Apdm), Some(Apdf)),
        Some(verdict(Some(Adm), Some(Adf))),
        vec![t(0, Some("c0"), Refused)],
    );
    // Unknown own verdict and no peer verdict: unknown.
    let d = run(
        Role::Initiator,
        verdict(Some(Eim), None),
        None,
        vec![t(0, Some("d0"), Connected)],
    );
    let (s, trials) = summary_of(&[a, b, c, d]);
    assert_eq!(trials[0].initiator_nat.to_string(), "eim/apdf");
    assert_eq!(trials[0].responder_nat.to_string(), "eim/eif");
    assert_eq!(trials[1].initiator_nat.to_string(), "adm/adf");
    assert_eq!(trials[1].responder_nat.to_string(), "apdm/apdf");
    assert_eq!(trials[2].initiator_nat.to_string(), "eim/unknown");
    assert_eq!(trials[2].responder_nat, NatType::UNKNOWN);
    let cell = s.pair("eim/apdf", "eim/eif").unwrap();
    assert_eq!(
        (cell.nat_a.as_str(), cell.nat_b.as_str()),
        ("eim/eif", "eim/apdf")
    );
    assert_eq!((cell.proportion.successes, cell.proportion.n), (1, 1));
    let cell = s.pair("apdm/apdf", "adm/adf").unwrap();
    assert_eq!((cell.proportion.successes, cell.proportion.n), (0, 1));
    assert_eq!(
        s.nat_types,
        [
            "eim/eif",
            "eim/apdf",
            "eim/unknown",
            "adm/adf",
            "apdm/apdf",
            "unknown"
        ]
    );
}

#[test]
fn the_nodes_handshake_is_counted_beside_punchscopes_own_by_transport() {
    // Trials 0-2 punchscope's own handshake (v1, v2, v1), 3-6 bridged to
    // the nodes: 3 v2 both complete, 4 v2 the responder's node incomplete,
    // 5 v1 both complete, 6 no node listed the peer; 7 did not connect.
    const IDS: [&str; 8] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"];
    let own = [Transport::V1, Transport::V2, Transport::V1];
    let mut a_trials = Vec::new();
    let mut b_trials = Vec::new();
    for n in 0..8u32 {
        let outcome = if n < 7 { Connected } else { Timeout };
        let mut x = t(n, Some(IDS[n as usize]), outcome);
        let mut y = t(n, Some(IDS[n as usize]), outcome);
        match n {
            0..=2 => {
                x.handshake = Some((own[n as usize], true));
                y.handshake = Some((own[n as usize], true));
            }
            3 | 4 => {
                x.node = Some((Some(Transport::V2), true));
                y.node = Some((Some(Transport::V2), n == 3));
            }
            5 => {
                x.node = Some((Some(Transport::V1), true));
                y.node = Some((Some(Transport::V1), true));
            }
            6 => {
                x.node = Some((None, false));
                y.node = Some((None, false));
            }
            _ => {}
        }
        a_trials.push(x);
        b_trials.push(y);
    }
    let a = run(Role::Initiator, eim_apdf(), None, a_trials);
    let b = run(Role::Responder, eim_apdf(), None, b_trials);
    let (s, trials) = summary_of(&[a, b]);
    assert_eq!((s.handshake.v1.successes, s.handshake.v1.n), (2, 2));
    assert_eq!((s.handshake.v2.successes, s.handshake.v2.n), (1, 1));
    assert_eq!(
        s.handshake.without_handshake, 0,
        "bridged trials are not missing one"
    );
    let nodes = s.node_handshake.as_ref().expect("bridged trials");
    assert_eq!(nodes.bridged_trials, 4);
    assert_eq!(nodes.transport_unknown, 1);
    assert_eq!((nodes.v2.successes, nodes.v2.n), (1, 2));
    assert_eq!((nodes.v1.successes, nodes.v1.n), (1, 1));
    assert_eq!(trials[4].node_handshake_success, Some(false));
    assert_eq!(trials[4].node_handshake_transport, Some(Transport::V2));
    assert_eq!(trials[0].node_handshake_success, None);
    let html = super::html::render(&s).unwrap();
    assert!(html.contains("<section id=node-handshake>"));
    assert!(html.contains("4 connected trials handed the socket"));

    // Without bridged trials the summary has no such part, and its JSON no such field.
    let plain = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, None, Connected)],
    );
    let (s, _) = summary_of(&[plain]);
    assert!(s.node_handshake.is_none());
    assert!(serde_json::to_value(&s)
        .unwrap()
        .get("node_handshake")
        .is_none());
    assert!(!super::html::render(&s).unwrap().contains("node-handshake"));
}

#[test]
fn strategy_and_transport_splits_and_joined_timings() {
    let mut a_trials = Vec::new();
    let mut b_trials = Vec::new();
    const IDS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];
    // Strategies cycle simultaneous, connect_listen, low_ttl. Trials 0-3
    // connect on both sides; 4 and 5 fail.
    for n in 0..6u32 {
        let outcome = if n < 4 { Connected } else { Timeout };
        let transport = if n % 2 == 0 {
            Transport::V1
        } else {
            Transport::V2
        };
        let mut x = t(n, Some(IDS[n as usize]), outcome);
        let mut y = t(n, Some(IDS[n as usize]), outcome);
        if outcome.is_success() {
            x.handshake = Some((transport, true));
            // The responder's side of trial 2 (v1) failed its handshake.
            y.handshake = Some((transport, n != 2));
            x.go_ms = Some(100.0 * f64::from(n + 1));
            y.go_ms = Some(100.0 * f64::from(n + 1) + 7.0);
            y.attempts = if n == 3 { 3 } else { 1 };
        }
        a_trials.push(x);
        b_trials.push(y);
    }
    let a = run(Role::Initiator, eim_apdf(), None, a_trials);
    let b = run(Role::Responder, eim_apdf(), None, b_trials);
    let (s, trials) = summary_of(&[a, b]);
    let by = |name: &str| {
        let row = s.strategies.iter().find(|r| r.strategy == name).unwrap();
        (row.proportion.successes, row.proportion.n)
    };
    assert_eq!(by("simultaneous"), (2, 2)); // trials 0, 3
    assert_eq!(by("connect_listen"), (1, 2)); // 1 yes, 4 no
    assert_eq!(by("low_ttl"), (1, 2)); // 2 yes, 5 no
                                       // v1: trials 0 and 2 (2 failed on one side); v2: trials 1 and 3.
    assert_eq!((s.handshake.v1.successes, s.handshake.v1.n), (1, 2));
    assert_eq!((s.handshake.v2.successes, s.handshake.v2.n), (2, 2));
    // Joined time is the later side's; attempts the larger side's.
    assert_eq!(trials[0].go_to_established_ms, Some(107.0));
    assert_eq!(trials[3].attempts, 3);
    assert_eq!(s.time_to_connect.p50_ms, Some(207.0));
    assert_eq!(s.time_to_connect.max_ms, Some(407.0));
    assert_eq!(s.attempts.histogram, vec![(1, 3), (3, 1)]);
    assert_eq!(
        (
            s.attempts.first_attempt.successes,
            s.attempts.first_attempt.n
        ),
        (3, 4)
    );
}

#[test]
fn counts_add_up_over_cells_strategies_and_outcomes() {
    let mut runs = Vec::new();
    let types = [
        eim_apdf(),
        eim_eif(),
        verdict(Some(Apdm), Some(Apdf)),
        verdict(None, None),
    ];
    for i in 0..12u32 {
        let outcomes = [Connected, Refused, Timeout, Connected, PeerVanished];
        let trials = (0..5u32)
            .map(|n| t(n, None, outcomes[((i + n) % 5) as usize]))
            .collect();
        let own = types[(i % 4) as usize].clone();
        let peer = (i % 3 != 0).then(|| types[((i + 1) % 4) as usize].clone());
        runs.push(run(Role::Initiator, own, peer, trials));
    }
    let (s, _) = summary_of(&runs);
    let total = s.input.trials_counted;
    assert_eq!(total, 60);
    let cells: u64 = s.nat_pairs.iter().map(|c| c.proportion.n).sum();
    let cell_ok: u64 = s.nat_pairs.iter().map(|c| c.proportion.successes).sum();
    let strategies: u64 = s.strategies.iter().map(|r| r.proportion.n).sum();
    let strategy_ok: u64 = s.strategies.iter().map(|r| r.proportion.successes).sum();
    let outcomes: u64 = s.outcomes.values().sum();
    assert_eq!((cells, strategies, outcomes), (total, total, total));
    assert_eq!(cell_ok, s.headline.successes);
    assert_eq!(strategy_ok, s.headline.successes);
    assert_eq!(s.outcomes["connected"], s.headline.successes);
    assert_eq!(s.headline.successes, 24); // 2 of every 5 outcomes connect
    let class_runs: u64 = s.classification.types.iter().map(|x| x.1).sum();
    assert_eq!(class_runs, 12);
}

#[test]
fn an_empty_input_makes_a_report_without_nan() {
    let (s, trials) = summary_of(&[]);
    assert!(trials.is_empty());
    assert_eq!(s.headline.rate, None);
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.to_lowercase().contains("nan"), "{json}");
    let page = super::html::render(&s).unwrap();
    assert!(page.contains("No data"));
    assert!(!page.contains("NaN"));
}

#[test]
fn jsonl_lines_of_both_kinds_are_read_and_bad_ones_skipped() {
    let a = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("k0"), Connected)],
    );
    let b = run(
        Role::Responder,
        eim_eif(),
        None,
        vec![t(0, Some("k0"), Connected)],
    );
    let collected = CollectedResult {
        received_at: "2026-05-01T11:00:00Z".parse().unwrap(),
        source_net: "203.0.113.0/24".into(),
        source_group: "ab".repeat(32),
        result: b,
    };
    let mut leaky = serde_json::to_value(&a).unwrap();
    leaky["run_id"] = Uuid::new_v4().to_string().into();
    leaky["pairings"][0]["trials"][0]["error"] = "peer 203.0.113.77 vanished".into();
    let text = format!(
        "{}\n\n{{\"schema_version\": 1,\n{}\n{}\nnot json at all\n",
        a.to_json(),
        serde_json::to_string(&collected).unwrap(),
        leaky
    );
    let mut agg = Aggregator::new();
    read_jsonl("mem.jsonl", text.as_bytes(), &mut agg).unwrap();
    let skipped = agg.skipped.clone();
    let (s, _) = {
        let report = Report::new(agg.finish(), &[]);
        (report.summary, report.trials)
    };
    assert_eq!(s.input.runs, 2);
    assert_eq!(s.input.trials_both_sides, 1);
    assert_eq!(skipped.total, 3);
    let lines: Vec<u64> = skipped.examples.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 5, 6]);
    assert!(
        skipped.examples[1].reason.contains("raw")
            || skipped.examples[1].reason.contains("full IP")
    );
    assert!(!skipped.examples[1].reason.contains("203.0.113.77"));
    assert!(parse_document("[]").is_err());
}

#[test]
fn the_fast_parse_accepts_and_rejects_exactly_what_from_json_does() {
    let a = run(
        Role::Initiator,
        eim_apdf(),
        Some(eim_eif()),
        vec![t(0, Some("f0"), Connected), t(1, None, Refused)],
    );
    let text = a.to_json();
    assert_eq!(
        parse_document(&text).unwrap(),
        RunResult::from_json(&text).unwrap()
    );
    let mut value = serde_json::to_value(&a).unwrap();
    // A raw address in a value, behind an escape, in a key, in IPv6 form:
    // every one is refused by both readers.
    let mut cases = Vec::new();
    value["pairings"][0]["trials"][1]["error"] = "peer 203.0.113.77 reset".into();
    cases.push(value.to_string());
    cases.push(
        value
            .to_string()
            .replace("203.0.113.77", "\\u0032\\u0030\\u0033.0.113.77"),
    );
    value["pairings"][0]["trials"][1]["error"] = serde_json::Value::Null;
    value["client"]["network_label"] = "home 2001:db8:1:2::7".into();
    cases.push(value.to_string());
    value["client"]["network_label"] = serde_json::Value::Null;
    let mut keyed = value.clone();
    keyed["client"]["10.1.2.3"] = 1.into();
    cases.push(keyed.to_string());
    let mut newer = value.clone();
    newer["schema_version"] = 2.into();
    cases.push(newer.to_string());
    for case in &cases {
        let slow = RunResult::from_json(case).unwrap_err().to_string();
        assert_eq!(parse_document(case).unwrap_err(), slow, "{case}");
    }
    // Prefixes, times and versions are not addresses.
    assert!(text.contains("198.51.100.0/24") && text.contains("10:00:00"));
    assert!(parse_document(&value.to_string()).is_ok());
}

#[test]
fn a_reference_peers_results_join_each_volunteers_trials_once_and_stay_out_of_the_population() {
    // One reference peer (public, eim/eif) served two volunteers: it uploaded
    // one result per pairing, as the volunteers did.
    let reference = |peer: Verdict, ids: [&'static str; 2]| {
        let mut r = run(
            Role::Responder,
            eim_eif(),
            Some(peer),
            vec![t(0, Some(ids[0]), Connected), t(1, Some(ids[1]), Refused)],
        );
        r.mode = RunMode::Reference;
        r
    };
    let first = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("r1t0"), Connected), t(1, Some("r1t1"), Refused)],
    );
    let second = run(
        Role::Initiator,
        verdict(Some(Apdm), Some(Apdf)),
        Some(eim_eif()),
        vec![t(0, Some("r2t0"), Connected), t(1, Some("r2t1"), Refused)],
    );
    let runs = [
        first,
        reference(eim_apdf(), ["r1t0", "r1t1"]),
        second,
        reference(verdict(Some(Apdm), Some(Apdf)), ["r2t0", "r2t1"]),
    ];
    let (s, trials) = summary_of(&runs);
    assert_eq!(s.input.runs, 4);
    assert_eq!(s.input.reference_runs, 2);
    assert_eq!(s.input.trials_counted, 4, "each trial once");
    assert_eq!(s.input.trials_both_sides, 4, "both sides of each joined");
    assert!(trials.iter().all(|t| t.sides == 2));
    assert!(
        trials
            .iter()
            .all(|t| !t.initiator_nat.is_unknown() && !t.responder_nat.is_unknown()),
        "the first volunteer heard no verdict, but the reference uploaded its own classification"
    );
    assert_eq!(
        s.classification.runs, 2,
        "the population is the volunteers'"
    );
    let types: Vec<&str> = s
        .classification
        .types
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(types, ["eim/apdf", "apdm/apdf"]);
}

#[test]
fn success_splits_by_carrier_grade_nat_with_the_peer_verdict_filling_a_missing_side() {
    use crate::classify::{path_verdict, HopAnswer, HopObservation, PathObservation};
    let behind = |hops: &[&str]| {
        let mut v = eim_apdf();
        v.path = Some(path_verdict(&PathObservation {
            hops: (1u8..)
                .zip(hops)
                .map(|(ttl, from)| HopObservation {
                    ttl,
                    answer: HopAnswer::TimeExceeded {
                        from: from.parse().unwrap(),
                    },
                })
                .collect(),
            error: None,
        }));
        v
    };
    let cgn = behind(&["192.168.1.1", "100.64.0.1", "198.51.100.1"]);
    let home = behind(&["192.168.1.1", "198.51.100.1"]);
    // Joined: alice behind CGNAT, bob not. One success in two.
    let alice = run(
        Role::Initiator,
        cgn.clone(),
        Some(home.clone()),
        vec![t(0, Some("c0"), Connected), t(1, Some("c1"), Timeout)],
    );
    let bob = run(
        Role::Responder,
        home.clone(),
        Some(cgn),
        vec![t(0, Some("c0"), Connected), t(1, Some("c1"), Timeout)],
    );
    // One side only, the peer told about: neither behind CGNAT, a success.
    let carol = run(
        Role::Initiator,
        home.clone(),
        Some(home),
        vec![t(0, Some("h0"), Connected)],
    );
    // No path measurement anywhere.
    let dave = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("n0"), Refused)],
    );
    let (s, _) = summary_of(&[alice, bob, carol, dave]);
    let row = |group: &str| {
        let r = s.cgnat.iter().find(|r| r.group == group).unwrap();
        (r.proportion.successes, r.proportion.n)
    };
    assert_eq!(row("behind_cgnat"), (1, 2));
    assert_eq!(row("no_cgnat"), (1, 1));
    assert_eq!(row("not_measured"), (0, 1));
    let html = super::html::render(&s).unwrap();
    assert!(html.contains("Success with and without carrier-grade NAT"));
}

/// A run as a collector export line would carry it: with a network group.
fn from_network(run: RunResult, group: &str) -> super::input::Document {
    super::input::Document {
        run,
        source_group: Some(group.to_string()),
        received_at: None,
    }
}

#[test]
fn pairings_and_networks_are_the_clusters_and_small_groups_are_not_listed() {
    use super::summary::ReportConfig;
    // alice (network aa) and bob (network bb): one pairing of 4 joined
    // trials. carol (network aa again, a second run from alice's address)
    // with a peer not in the input: one pairing of 2. dave has no group: his
    // run is its own network.
    let ids = ["p0", "p1", "p2", "p3"];
    let alice = run(
        Role::Initiator,
        eim_apdf(),
        Some(eim_eif()),
        ids.iter()
            .enumerate()
            .map(|(i, id)| t(i as u32, Some(id), Connected))
            .collect(),
    );
    let bob = run(
        Role::Responder,
        eim_eif(),
        Some(eim_apdf()),
        ids.iter()
            .enumerate()
            .map(|(i, id)| t(i as u32, Some(id), if i == 3 { Refused } else { Connected }))
            .collect(),
    );
    let carol = run(
        Role::Initiator,
        eim_apdf(),
        None,
        vec![t(0, Some("c0"), Connected), t(1, Some("c1"), Timeout)],
    );
    let dave = run(Role::Initiator, eim_eif(), None, vec![t(0, None, Refused)]);
    let mut agg = Aggregator::new();
    agg.add_document(&from_network(alice.clone(), "AA"));
    agg.add_document(&from_network(bob.clone(), "bb"));
    agg.add_document(&from_network(carol.clone(), "aa"));
    agg.add_document(&super::input::Document::bare(dave));
    let aggregated = agg.finish();
    // Both sides' pairing entries are one pairing, named by the smaller entry.
    assert_eq!(aggregated.pairing_ids.len(), 3);
    let first = std::cmp::min(alice.run_id, bob.run_id);
    assert_eq!(aggregated.pairing_ids[0], format!("{first}/0"));
    assert!(aggregated.trials[..4].iter().all(|t| t.pairing == 0));
    // Groups are lowercased: alice's and carol's runs share one network.
    assert_eq!(aggregated.networks, ["aa", "bb"]);
    let config = ReportConfig {
        min_group_trials: 5,
        ..ReportConfig::default()
    };
    let report = Report::with_config(aggregated, &[], &config);
    let s = &report.summary;
    assert_eq!((s.uncertainty.pairings, s.uncertainty.networks), (3, 3));
    assert_eq!(
        (
            s.uncertainty.keyed_networks,
            s.uncertainty.runs_without_group
        ),
        (2, 1)
    );
    // Network aa: alice's 4 trials and carol's 2 = 6 (listed, 4/6); bb: 4 (below 5).
    let rows = &s.networks.table.rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key, "aa");
    assert_eq!((rows[0].runs, rows[0].pairings), (2, 2));
    assert_eq!((rows[0].proportion.successes, rows[0].proportion.n), (4, 6));
    assert_eq!(
        (s.networks.table.groups, s.networks.table.trials_unlisted),
        (2, 4)
    );
    assert_eq!(s.networks.rate_histogram[6], ("60-70%".to_string(), 1));
    // Pairings: alice-bob connected at least once but not every time; carol's
    // once; dave's never.
    let v = &s.pairing_view;
    assert_eq!(
        (
            v.connected_at_least_once.successes,
            v.connected_at_least_once.n
        ),
        (2, 3)
    );
    assert_eq!(v.connected_every_time.successes, 0);
    // The headline's clusters: 3 pairings, 3 networks.
    let c = s.headline.clustered.unwrap();
    assert_eq!((c.pairings.clusters, c.networks.unwrap().clusters), (3, 3));
}

#[test]
fn port_mapping_is_tallied_per_volunteer_run_and_shown_escaped() {
    use crate::classify::HopClass;
    use crate::portmap::*;
    let attempt = |protocol, answer, result: &str, granted: Option<u32>| MappingAttempt {
        protocol,
        port_role: PortRole::Node,
        internal_port: 8333,
        requested_lifetime_s: 120,
        answer,
        requests_sent: 1,
        rtt_ms: Some(2.0),
        result_code: None,
        result: (answer == GatewayAnswer::Answered).then(|| result.to_string()),
        server_version: None,
        service: None,
        granted: granted.map(|lifetime_s| GrantedMapping {
            lifetime_s,
            external: None,
            external_port: 8333,
            external_class: Some(HopClass::Public),
        }),
        renewals: 0,
        lost_state: 0,
        errors: vec![],
        error_count: 0,
        reachable: None,
        release: granted.map(|_| MappingRelease {
            answer: GatewayAnswer::Answered,
            result_code: Some(0),
            succeeded: true,
            requests_sent: 1,
        }),
    };
    let with = |report: PortMappingReport, mode: RunMode| {
        let mut r = run(Role::Initiator, eim_apdf(), None, vec![]);
        r.mode = mode;
        r.port_mapping = Some(report);
        r
    };
    let granted = PortMappingReport {
        skipped: None,
        attempts: vec![
            attempt(
                MappingProtocol::Pcp,
                GatewayAnswer::Answered,
                "success",
                Some(120),
            ),
            attempt(
                MappingProtocol::Natpmp,
                GatewayAnswer::Answered,
                "success",
                Some(7200),
            ),
        ],
    };
    let refused = PortMappingReport {
        skipped: None,
        attempts: vec![
            attempt(
                MappingProtocol::Pcp,
                GatewayAnswer::Answered,
                "<script>x</script>",
                None,
            ),
            attempt(MappingProtocol::Natpmp, GatewayAnswer::Timeout, "", None),
        ],
    };
    let runs = vec![
        with(granted.clone(), RunMode::Volunteer),
        with(refused, RunMode::Volunteer),
        with(
            PortMappingReport::skipped(PortMappingSkipped::NoGateway),
            RunMode::Volunteer,
        ),
        // A reference peer's record is not the population's.
        with(granted, RunMode::Reference),
        run(Role::Initiator, eim_apdf(), None, vec![]),
    ];
    let (s, _) = summary_of(&runs);
    let pm = &s.port_mapping;
    assert_eq!(pm.runs, 3);
    assert_eq!(pm.skipped.get("no_gateway"), Some(&1));
    let pcp = pm.protocols.iter().find(|p| p.protocol == "pcp").unwrap();
    assert_eq!(
        (pcp.asked, pcp.answered.successes, pcp.granted.successes),
        (2, 2, 1)
    );
    assert_eq!((pcp.deleted.successes, pcp.deleted.n), (1, 1));
    let natpmp = pm
        .protocols
        .iter()
        .find(|p| p.protocol == "natpmp")
        .unwrap();
    assert_eq!((natpmp.answered.successes, natpmp.answered.n), (1, 2));
    assert_eq!(natpmp.lifetime_s.unwrap().max, 7200.0);

    let page = super::html::render(&s).unwrap();
    assert!(
        page.contains("<section id=portmap>"),
        "the section is there"
    );
    assert!(page.contains("1 of 2 (50.0%"), "shares with intervals");
    assert!(
        !page.contains("<script>x"),
        "result names from results are escaped"
    );
    // A summary from before port mapping reads as having none, and the page leaves the section out.
    let mut value = serde_json::to_value(&s).unwrap();
    value.as_object_mut().unwrap().remove("port_mapping");
    let older: Summary = serde_json::from_value(value).unwrap();
    assert_eq!(older.port_mapping.runs, 0);
    assert!(!super::html::render(&older).unwrap().contains("id=portmap"));
}

/// `mapped` trials: one that no router mapped a port for is in no count and
/// no rate (only `trials_unmapped`); the tried ones are compared with
/// punching within the same pairing, each side's trials with Wilson
/// intervals, on the port mapping section of the page.
#[test]
fn unmapped_trials_are_left_out_and_mapped_is_compared_within_the_pairing() {
    use crate::portmap::PortMappingReport;
    use crate::trial::Strategy;
    let outcomes = [Connected, Timeout, Timeout, Connected, Connected, Unmapped];
    let ids = ["m0", "m1", "m2", "m3", "m4", "m5"];
    let side = |role: Role, own: Verdict, peer: Verdict| {
        let trials = (0..6u32)
            .map(|n| t(n, Some(ids[n as usize]), outcomes[n as usize]))
            .collect();
        let mut r = run(role, own, Some(peer), trials);
        for record in &mut r.pairings[0].trials {
            record.strategy = if record.trial < 3 {
                Strategy::Simultaneous
            } else {
                Strategy::Mapped
            };
        }
        r.port_mapping = Some(PortMappingReport::default());
        r
    };
    let alice = side(Role::Initiator, eim_apdf(), eim_eif());
    let bob = side(Role::Responder, eim_eif(), eim_apdf());
    let (s, trials) = summary_of(&[alice, bob]);
    assert_eq!(s.input.trials_unmapped, 1);
    assert_eq!(s.input.trials_counted, 5);
    assert!(trials.iter().all(|t| t.outcome != Unmapped));
    assert_eq!((s.headline.successes, s.headline.n), (3, 5));
    let mapped = s
        .strategies
        .iter()
        .find(|r| r.strategy == "mapped")
        .unwrap();
    assert_eq!((mapped.proportion.successes, mapped.proportion.n), (2, 2));
    let c = s
        .pairing_view
        .comparisons
        .iter()
        .find(|c| c.strategy_a == "simultaneous" && c.strategy_b == "mapped")
        .expect("simultaneous and mapped compared within the pairing");
    let d = &c.difference;
    assert_eq!(
        (d.successes_a, d.trials_a, d.successes_b, d.trials_b),
        (1, 3, 2, 2)
    );
    let page = super::html::render(&s).unwrap();
    assert!(
        page.contains("strategy beside punching"),
        "the mapped table"
    );
    assert!(page.contains("not tried (neither router mapped a port, left out of every rate): 1"));
    // mapped − punching, oriented: 100% − 33.3% = +66.7 points.
    assert!(
        page.contains("<td class=num>+66.7</td>"),
        "oriented difference"
    );
    assert!(
        page.contains("2 of 2 (100.0%"),
        "mapped with its Wilson interval"
    );
}

/// One side's `unmapped` does not erase a trial its peer recorded: only a
/// `mapped` trial every side calls `unmapped` is left out.
#[test]
fn one_sides_unmapped_does_not_erase_its_peers_trial() {
    use crate::trial::Strategy;
    let side = |role: Role, outcome: TrialOutcome, strategy: Strategy| {
        let mut r = run(
            role,
            eim_apdf(),
            Some(eim_eif()),
            vec![t(0, Some("u0"), outcome)],
        );
        r.pairings[0].trials[0].strategy = strategy;
        r
    };
    let (s, _) = summary_of(&[
        side(Role::Initiator, Unmapped, Strategy::Mapped),
        side(Role::Responder, Connected, Strategy::Mapped),
    ]);
    assert_eq!((s.input.trials_unmapped, s.input.trials_counted), (0, 1));
    assert_eq!(s.input.sides_disagree, 1);
    assert_eq!(s.headline.successes, 0);
    // `unmapped` on a strategy that has no mapping to lack is not "untried".
    let (s, _) = summary_of(&[
        side(Role::Initiator, Unmapped, Strategy::Simultaneous),
        side(Role::Responder, Unmapped, Strategy::Simultaneous),
    ]);
    assert_eq!((s.input.trials_unmapped, s.input.trials_counted), (0, 1));
}

/// Dual-stack runs: the IPv6 breakdown counts each volunteer run's
/// `classification_v6` once (reference peers not), with Wilson intervals,
/// and stays off the page and out of summary.json when no run asked about IPv6.
#[test]
fn ipv6_classifications_are_broken_down_per_volunteer_run() {
    use crate::classify::Ipv6Verdict;
    let dual_stack = |translated: Option<bool>, admitted: Option<bool>, mode: RunMode| {
        let mut r = run(Role::Initiator, eim_apdf(), None, vec![]);
        r.mode = mode;
        let mut v6 = r.classification.clone();
        v6.server_endpoints = vec![MaskedEndpoint {
            net: "2001:db8::/32".into(),
            port: 3478,
        }];
        v6.verdict = Verdict {
            no_nat: translated == Some(false),
            ipv6: Some(Ipv6Verdict {
                translated,
                translation: None,
                unsolicited_admitted: admitted,
            }),
            ..verdict(None, Some(Apdf))
        };
        r.classification_v6 = Some(v6);
        r
    };
    let mut no_route = run(Role::Initiator, eim_apdf(), None, vec![]);
    no_route.classification_v6_missing =
        Some("IPv6 not classified: no echo server answered: no route to host".into());
    let runs = vec![
        dual_stack(Some(false), Some(false), RunMode::Volunteer),
        dual_stack(Some(false), Some(false), RunMode::Volunteer),
        dual_stack(Some(false), Some(true), RunMode::Volunteer),
        // Translation measured, admission not (one server IP).
        dual_stack(Some(true), None, RunMode::Volunteer),
        // A reference peer's classification is not the population's.
        dual_stack(Some(true), Some(true), RunMode::Reference),
        no_route,
        // IPv4 only.
        run(Role::Initiator, eim_apdf(), None, vec![]),
        // IPv6 only: its one classification is the IPv6 one.
        {
            let mut only = dual_stack(Some(false), Some(false), RunMode::Volunteer);
            only.classification = only.classification_v6.take().unwrap();
            only
        },
    ];
    let (s, _) = summary_of(&runs);
    let ipv6 = &s.ipv6;
    assert_eq!((ipv6.runs, ipv6.ipv6_only, ipv6.missing), (5, 1, 1));
    assert_eq!((ipv6.translated.successes, ipv6.translated.n), (1, 5));
    assert_eq!(
        (
            ipv6.unsolicited_admitted.successes,
            ipv6.unsolicited_admitted.n
        ),
        (1, 4)
    );
    let (low, high) = super::stats::wilson(1, 4, super::stats::Z_95).unwrap();
    assert_eq!(ipv6.unsolicited_admitted.low, Some(low));
    assert_eq!(ipv6.unsolicited_admitted.high, Some(high));
    // The IPv4 classification tables count every volunteer run as before,
    // but for the IPv6-only one (its NAT type is not an IPv4 one).
    assert_eq!(s.classification.runs, 6);

    let page = super::html::render(&s).unwrap();
    assert!(
        page.contains("<h3 id=ipv6>IPv6</h3>"),
        "the breakdown is there"
    );
    assert!(
        page.contains(&super::html::esc(&ipv6.unsolicited_admitted.describe())),
        "rates with intervals"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["ipv6"]["translated"]["n"], 5);
    assert_eq!(json["ipv6"]["ipv6_only"], 1);

    // IPv4-only runs: no breakdown on the page, none in summary.json.
    let (plain, _) = summary_of(&[run(Role::Initiator, eim_apdf(), None, vec![])]);
    assert!(plain.ipv6.is_empty());
    assert!(!super::html::render(&plain).unwrap().contains("id=ipv6"));
    let json = serde_json::to_value(&plain).unwrap();
    assert!(json.get("ipv6").is_none(), "{json}");
    // A summary from before the breakdown reads as having none.
    let mut value = serde_json::to_value(&s).unwrap();
    value.as_object_mut().unwrap().remove("ipv6");
    let older: Summary = serde_json::from_value(value).unwrap();
    assert!(older.ipv6.is_empty());
}

/// Both sides' runs of one pairing: trial `n` (id `{prefix}{n}`) in the
/// family and with the outcome given, every trial `simultaneous`.
fn pairing_in_families(prefix: &str, trials: &[(Family, TrialOutcome)]) -> [RunResult; 2] {
    let side = |role: Role, own: Verdict, peer: Verdict| {
        let records = trials
            .iter()
            .enumerate()
            .map(|(n, (family, outcome))| T {
                family: *family,
                ..t(n as u32, Some(&format!("{prefix}{n}")), *outcome)
            })
            .collect();
        let mut r = run(role, own, Some(peer), records);
        for record in &mut r.pairings[0].trials {
            record.strategy = crate::trial::Strategy::Simultaneous;
        }
        r
    };
    [
        side(Role::Initiator, eim_apdf(), eim_eif()),
        side(Role::Responder, eim_eif(), eim_apdf()),
    ]
}

/// `n` trials in `family`, the first `connected` of them connected.
fn trials_in(family: Family, connected: usize, n: usize) -> Vec<(Family, TrialOutcome)> {
    (0..n)
        .map(|i| (family, if i < connected { Connected } else { Timeout }))
        .collect()
}

/// Trials of two families are split into per-family tables that add up to
/// the pooled ones; a trial whose sides name different families stays in
/// the pooled rates and in no family.
#[test]
fn trials_split_by_family_and_a_family_disagreement_is_in_no_family() {
    let mut trials = trials_in(Family::Ipv4, 3, 4);
    trials.extend(trials_in(Family::Ipv6, 1, 3));
    let [mut alice, bob] = pairing_in_families("f", &trials);
    // Trial 6 (IPv6, timed out) as alice saw it: over IPv4. It cannot be both.
    alice.pairings[0].trials[6].family = Family::Ipv4;
    let (s, counted) = summary_of(&[alice, bob]);
    assert_eq!(s.input.trials_counted, 7);
    assert_eq!(s.input.family_disagree, 1);
    assert_eq!(counted[6].family, None);
    assert_eq!((s.headline.successes, s.headline.n), (4, 7));
    assert_eq!(
        s.family_trials
            .iter()
            .map(|(f, n)| (f.as_str(), *n))
            .collect::<Vec<_>>(),
        [("ipv4", 4), ("ipv6", 2)]
    );
    let family = |name: &str| s.families.iter().find(|f| f.family == name).unwrap();
    let (v4, v6) = (&family("ipv4").tables, &family("ipv6").tables);
    assert_eq!((v4.headline.successes, v4.headline.n), (3, 4));
    assert_eq!((v6.headline.successes, v6.headline.n), (1, 2));
    // Every split table is the family's own: strategies, NAT pairs, handshakes.
    assert_eq!(v6.strategies.len(), 1);
    assert_eq!(
        (
            v6.strategies[0].proportion.successes,
            v6.strategies[0].proportion.n
        ),
        (1, 2)
    );
    let cell = v4.pair("eim/apdf", "eim/eif").unwrap();
    assert_eq!((cell.proportion.successes, cell.proportion.n), (3, 4));
    assert_eq!(
        (v4.handshake.connected_trials, v6.handshake.connected_trials),
        (3, 1)
    );
    // A family's row has the per-trial Wilson interval of its own counts.
    let (low, high) = super::stats::wilson(3, 4, super::stats::Z_95).unwrap();
    assert_eq!((v4.headline.low, v4.headline.high), (Some(low), Some(high)));

    let page = super::html::render(&s).unwrap();
    assert!(page.contains("<th>IP family</th>"), "a family column");
    assert!(
        page.contains("<tr><td>IPv6 trials</td>"),
        "a headline row per family"
    );
    assert!(
        page.contains("<h3>IPv6</h3>"),
        "a NAT-pair matrix per family"
    );
    assert!(
        page.contains("name different IP families (in pooled rates only)</td><td class=num>1</td>")
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["families"][1]["family"], "ipv6");
    assert_eq!(json["families"][1]["headline"]["n"], 2);
    assert_eq!(json["input"]["family_disagree"], 1);
}

/// The IPv4/IPv6 comparison takes only the pairings that ran a strategy in
/// both families: a pairing that ran IPv6 alone does not enter it.
#[test]
fn the_paired_family_comparison_uses_only_pairings_that_ran_both_families() {
    let mut both = trials_in(Family::Ipv4, 4, 5);
    both.extend(trials_in(Family::Ipv6, 1, 5));
    let [a1, a2] = pairing_in_families("p", &both);
    let [b1, b2] = pairing_in_families("q", &both);
    let [c1, c2] = pairing_in_families("r", &trials_in(Family::Ipv6, 5, 5));
    let (s, _) = summary_of(&[a1, a2, b1, b2, c1, c2]);
    let c = s
        .family_comparison
        .as_ref()
        .expect("some trials ran over IPv6");
    assert_eq!(c.pairings_both, 2);
    assert_eq!(c.pairings_one_family.get("ipv6"), Some(&1));
    assert_eq!(c.strategies.len(), 1);
    let row = &c.strategies[0];
    assert_eq!(row.strategy, "simultaneous");
    // Pairing r's 5/5 over IPv6 is not in the comparison: 2 of 10, not 7 of 15.
    assert_eq!((row.ipv4.successes, row.ipv4.n), (8, 10));
    assert_eq!((row.ipv6.successes, row.ipv6.n), (2, 10));
    // Wilson 95%, worked by hand: 8/10 -> [0.4902, 0.9433], 2/10 -> [0.0567, 0.5098].
    let close = |x: Option<f64>, want: f64| (x.unwrap() - want).abs() < 1e-4;
    assert!(
        close(row.ipv4.low, 0.4902) && close(row.ipv4.high, 0.9433),
        "{:?}",
        row.ipv4
    );
    assert!(
        close(row.ipv6.low, 0.0567) && close(row.ipv6.high, 0.5098),
        "{:?}",
        row.ipv6
    );
    // IPv6 - IPv4 = 0.2 - 0.8; both pairings alike, so every resample says so too.
    let d = &row.difference;
    assert_eq!(d.pairings, 2);
    assert!((d.difference + 0.6).abs() < 1e-12);
    assert!(close(d.low, -0.6) && close(d.high, -0.6), "{d:?}");
    assert_eq!((d.a_better, d.b_better, d.ties), (0, 2, 0));
    assert_eq!(d.sign_test_p, Some(0.5));

    let page = super::html::render(&s).unwrap();
    assert!(page.contains("<section id=families>"));
    assert!(
        page.contains("<td class=num>-60.0</td>"),
        "IPv6 - IPv4 in points"
    );
    assert!(
        page.contains("8 of 10 (80.0%, 49.0–94.3%)"),
        "IPv4 with its Wilson interval"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["family_comparison"]["strategies"][0]["ipv6"]["n"], 10);
}

/// Two families but no pairing that ran both: said in plain words, no table.
#[test]
fn with_no_pairing_in_both_families_the_comparison_says_so() {
    let [a1, a2] = pairing_in_families("p", &trials_in(Family::Ipv4, 2, 3));
    let [b1, b2] = pairing_in_families("q", &trials_in(Family::Ipv6, 1, 3));
    let (s, _) = summary_of(&[a1, a2, b1, b2]);
    assert_eq!(s.families.len(), 2, "the tables are still split");
    let c = s.family_comparison.as_ref().unwrap();
    assert_eq!((c.pairings_both, c.strategies.len()), (0, 0));
    assert_eq!(c.note, super::summary::NO_PAIRING_IN_BOTH_FAMILIES);
    let page = super::html::render(&s).unwrap();
    let section = &page[page.find("<section id=families>").unwrap()..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(section.contains(&super::html::esc(
        super::summary::NO_PAIRING_IN_BOTH_FAMILIES
    )));
    assert!(!section.contains("<table"), "no empty table: {section}");
}

/// Records from before families (no `family` key) are IPv4 trials, and an
/// IPv4-only campaign has no family split and no comparison: the page and
/// summary.json are as before, with only the family named.
#[test]
fn older_records_without_a_family_count_as_ipv4() {
    let [alice, bob] = pairing_in_families("o", &trials_in(Family::Ipv4, 2, 3));
    let older = |r: &RunResult| {
        let mut value = serde_json::to_value(r).unwrap();
        for record in value["pairings"][0]["trials"].as_array_mut().unwrap() {
            assert!(record.as_object_mut().unwrap().remove("family").is_some());
        }
        RunResult::from_json(&value.to_string()).expect("an older record is valid")
    };
    let (s, counted) = summary_of(&[older(&alice), older(&bob)]);
    assert!(counted.iter().all(|t| t.family == Some(Family::Ipv4)));
    assert_eq!(s.family_trials.get("ipv4"), Some(&3));
    assert!(s.families.is_empty() && s.family_comparison.is_none());
    let json = serde_json::to_value(&s).unwrap();
    assert!(json.get("families").is_none() && json.get("family_comparison").is_none());
    let page = super::html::render(&s).unwrap();
    assert!(page.contains("IP family: every trial ran over IPv4."));
    assert!(!page.contains("IP family</th>") && !page.contains("id=families"));
    // A summary from before families reads as having none.
    let mut value = json;
    value.as_object_mut().unwrap().remove("family_trials");
    value["input"]
        .as_object_mut()
        .unwrap()
        .remove("family_disagree");
    let before: Summary = serde_json::from_value(value).unwrap();
    assert!(before.family_trials.is_empty());
}

/// `--compare` puts each family's rates beside the other report's: an
/// IPv4-only report's tables are its IPv4 tables, and it has no IPv6 rate.
#[test]
fn compare_matches_each_familys_rates_and_an_ipv4_only_report_is_its_ipv4() {
    let mut both = trials_in(Family::Ipv4, 4, 5);
    both.extend(trials_in(Family::Ipv6, 1, 5));
    let (dual, _) = summary_of(&pairing_in_families("d", &both));
    let (v4_only, _) = summary_of(&pairing_in_families("v", &trials_in(Family::Ipv4, 2, 4)));
    let c = super::compare::compare("A", &v4_only, "B", &dual);
    let row = |section: &str, row: &str| {
        c.rates
            .iter()
            .find(|r| r.section == section && r.row == row)
            .unwrap_or_else(|| panic!("no row {section} / {row}"))
    };
    let v4 = row("ipv4 headline", "all trials");
    assert_eq!(v4.a.map(|p| (p.successes, p.n)), Some((2, 4)));
    assert_eq!(v4.b.map(|p| (p.successes, p.n)), Some((4, 5)));
    let v6 = row("ipv6 strategy", "simultaneous");
    assert_eq!(v6.a, None, "A ran nothing over IPv6");
    assert_eq!(v6.b.map(|p| (p.successes, p.n)), Some((1, 5)));
    assert_eq!(v6.difference, None);
    // The pooled rows are as they were: all of B's trials.
    let pooled = row("headline", "all trials");
    assert_eq!(pooled.b.map(|p| (p.successes, p.n)), Some((5, 10)));
    // Two IPv4-only reports have no family rows at all.
    let plain = super::compare::compare("A", &v4_only, "B", &v4_only);
    assert!(plain.rates.iter().all(|r| !r.section.starts_with("ipv")));
}

/// The terminal's headline table names each family's rows and prints the
/// IPv4/IPv6 comparison, or says plainly that there is none.
#[test]
fn the_headline_table_shows_each_family_and_the_paired_comparison() {
    let mut both = trials_in(Family::Ipv4, 4, 5);
    both.extend(trials_in(Family::Ipv6, 1, 5));
    let report = |runs: &[RunResult]| {
        let mut agg = Aggregator::new();
        for r in runs {
            agg.add_run(r);
        }
        Report::new(agg.finish(), &[]).headline_table()
    };
    let text = report(&pairing_in_families("h", &both));
    assert!(text.contains("ipv6 strategy simultaneous"), "{text}");
    assert!(
        text.contains("simultaneous: ipv4 80.0% [37.6, 96.4] (4/5), ipv6 20.0% [3.6, 62.4] (1/5), difference -60.0 points (no interval: 1 pairing)"),
        "{text}"
    );
    let [a1, a2] = pairing_in_families("p", &trials_in(Family::Ipv4, 2, 3));
    let [b1, b2] = pairing_in_families("q", &trials_in(Family::Ipv6, 1, 3));
    let text = report(&[a1, a2, b1, b2]);
    assert!(
        text.contains(super::summary::NO_PAIRING_IN_BOTH_FAMILIES),
        "{text}"
    );
    let plain = report(&pairing_in_families("o", &trials_in(Family::Ipv4, 2, 3)));
    assert!(
        !plain.contains("ipv4") && !plain.contains("ipv6"),
        "{plain}"
    );
}

/// The port mapping section gives the `mapped` trials of each family when
/// the trials ran in two.
#[test]
fn mapped_trials_are_given_per_family_in_the_port_mapping_section() {
    use crate::portmap::PortMappingReport;
    let mut trials = trials_in(Family::Ipv4, 2, 2);
    trials.extend(trials_in(Family::Ipv6, 1, 3));
    let mut runs = pairing_in_families("m", &trials);
    for r in &mut runs {
        r.port_mapping = Some(PortMappingReport::default());
        for record in &mut r.pairings[0].trials {
            record.strategy = crate::trial::Strategy::Mapped;
        }
    }
    let (s, _) = summary_of(&runs);
    let page = super::html::render(&s).unwrap();
    assert!(
        page.contains("Tried: connected in 3 of 5 (60.0%, 23.1–88.2%) (IPv4 2 of 2 (100.0%, 34.2–100.0%); IPv6 1 of 3 (33.3%, 6.1–79.2%))"),
        "{}",
        &page[page.find("Tried:").unwrap()..][..200]
    );
}
