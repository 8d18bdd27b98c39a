//! Hard-NAT strategies with the real binaries: `predict` across a sequential
//! APDM NAT (quiet and busy), `birthday` across a random APDM NAT against
//! its formula, each trial checked against the emulator's own mapping log;
//! and the hard caps refusing a greedy plan.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use punchscope::analysis::hardnat::{binomial_interval, birthday_hit_probability, PairClass};
use punchscope::analysis::result::RunResult;
use punchscope::analysis::trial::{Strategy, TrialOutcome, TrialRecord};
use punchscope::lab::nat::{Direction, NatEvent, BACKGROUND_HOST};
use punchscope::lab::{Lab, LabEvent};
use support::lab::*;

fn public_ip(lab: &Lab, router: &str) -> Ipv4Addr {
    lab.scenario()
        .routers
        .iter()
        .find(|r| r.name == router)
        .expect("router in the scenario")
        .config
        .public_ip
}

fn trials(result: &RunResult) -> Vec<TrialRecord> {
    let mut t = result.pairings[0].trials.clone();
    t.sort_by_key(|t| t.trial);
    t
}

/// Mappings router `router` created from `internal_port` towards `remote`, in log order.
fn mappings_to(
    events: &[LabEvent],
    router: &str,
    internal_port: Option<u16>,
    remote: SocketAddrV4,
) -> Vec<u16> {
    events
        .iter()
        .filter(|e| e.router == router)
        .filter_map(|e| match &e.event {
            NatEvent::MappingCreated {
                internal,
                external,
                remote: r,
                ..
            } if *r == remote && internal_port.map_or(true, |p| internal.port() == p) => {
                Some(external.port())
            }
            _ => None,
        })
        .collect()
}

/// Runs `predict` (mixed with `simultaneous`) between alice (EIM) and bob
/// (APDM, sequential, `bob_keys`); returns both sides' trials and the log.
fn predict_run(
    tag: &str,
    bob_keys: &str,
    window: u32,
) -> (Lab, Vec<TrialRecord>, Vec<TrialRecord>) {
    let lab = start_lab(
        tag,
        &two_nats(
            "delay_ms = 10",
            &format!("mapping = \"apdm\"\nallocation = \"sequential\"\n{bob_keys}"),
        ),
    );
    let plan = plan(
        tag,
        &format!(
            "trials = 8\nnetwork = \"regtest\"\nattempt_timeout_ms = 1500\nmax_attempts = 2\nretry_gap_ms = 50\nretry_jitter_ms = 100\n\
             class_strategies = {{ easy_sequential = [\"simultaneous\", \"predict\"] }}\npredict_window = {window}\n"
        ),
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let results = probe_alice_and_bob(&lab, Duration::from_secs(150));
    let (alice, bob) = (trials(&results[0]), trials(&results[1]));
    for t in alice.iter().chain(&bob) {
        assert_eq!(t.pair_class, Some(PairClass::EasySequential), "{t:#?}");
        assert_eq!(
            t.drawn_from.as_deref(),
            Some(&[Strategy::Simultaneous, Strategy::Predict][..])
        );
    }
    // The report counts each trial once, within the class and the mix.
    let rows = report_rows(&results);
    let arm = |name: &str| {
        rows.iter()
            .find(|r| r.arm == name)
            .unwrap_or_else(|| panic!("{name} in {rows:#?}"))
    };
    let predict = arm(&format!("predict(window={window})"));
    assert_eq!(
        (predict.class.as_str(), predict.allocation.as_str()),
        ("easy_sequential", "mix of simultaneous, predict")
    );
    let expected = alice
        .iter()
        .filter(|t| t.strategy == Strategy::Predict)
        .count() as u64;
    assert_eq!(
        (predict.proportion.successes, predict.proportion.n),
        (expected, expected)
    );
    let cost = predict.cost.as_ref().expect("predict has costs");
    assert!(cost
        .ports_per_success
        .is_some_and(|p| p >= f64::from(window)));
    assert_eq!(arm("simultaneous").proportion.successes, 0);
    (lab, alice, bob)
}

/// The report's rows by NAT-pair class for both sides' results.
fn report_rows(results: &[RunResult]) -> Vec<punchscope::analysis::report::hardnat::HardNatRow> {
    let mut agg = punchscope::analysis::report::Aggregator::new();
    for r in results {
        agg.add_run(r);
    }
    let report = punchscope::analysis::report::Report::new(agg.finish(), &["lab".to_string()]);
    eprintln!("{}", report.headline_table());
    // The page shows the same rows.
    let out = tempfile::tempdir().unwrap();
    let files = report.write(out.path()).unwrap();
    let page = std::fs::read_to_string(files.index_html).unwrap();
    assert!(
        page.contains("<section id=hard-nat>"),
        "the page has the section"
    );
    for row in &report.summary.hard_nat {
        assert!(page.contains(&row.arm), "{} on the page", row.arm);
    }
    report.summary.hard_nat
}

/// Every `predict` trial connected where the emulator says it should: bob's
/// NAT mapped his trial port towards alice at a port within the predicted
/// window after his observed one, and alice's connection came from exactly
/// that port. Returns, per predict trial, how many ports the NAT moved past
/// the observed one and how many of those background connections took.
fn check_predict(
    lab: &Lab,
    alice: &[TrialRecord],
    bob: &[TrialRecord],
    window: u32,
) -> Vec<(u16, usize)> {
    let events = lab.events();
    let (a_ip, b_ip) = (public_ip(lab, "a"), public_ip(lab, "b"));
    let mut moved = Vec::new();
    for (a, b) in alice.iter().zip(bob) {
        assert_eq!(a.strategy, b.strategy);
        match a.strategy {
            Strategy::Simultaneous => {
                // Theory: the easy side aims at the hard side's old mapping; never.
                assert_ne!(a.outcome, TrialOutcome::Connected, "{a:#?}");
            }
            Strategy::Predict => {
                assert_eq!(
                    a.outcome,
                    TrialOutcome::Connected,
                    "alice {a:#?}\nbob {b:#?}"
                );
                assert_eq!(b.outcome, TrialOutcome::Connected, "bob {b:#?}");
                assert!(a.handshake.as_ref().is_some_and(|h| h.success));
                let (ah, bh) = (a.hard.as_ref().unwrap(), b.hard.as_ref().unwrap());
                assert_eq!((ah.role.as_str(), ah.window), ("predict_aim", Some(window)));
                assert_eq!(bh.role, "predict_hard");
                assert!(ah.syns_sent >= ah.connects && ah.connects >= 1);
                let observed = b.public_port.expect("bob's registration was observed");
                let toward_alice = SocketAddrV4::new(a_ip, a.public_port.unwrap());
                let mapped = mappings_to(&events, "b", Some(b.local_port), toward_alice);
                assert_eq!(
                    mapped.len(),
                    1,
                    "one mapping from bob's trial port to alice: {mapped:?}"
                );
                let port = mapped[0];
                assert!(
                    port > observed && port <= observed + window as u16,
                    "trial {}: the NAT mapped {port}, observed {observed}, window {window}",
                    a.trial
                );
                assert_eq!(
                    a.peer_port,
                    Some(port),
                    "alice's connection came from the predicted port"
                );
                let background = events
                    .iter()
                    .filter(|e| e.router == "b")
                    .filter(|e| {
                        matches!(&e.event, NatEvent::MappingCreated { internal, external, .. }
                        if *internal.ip() == BACKGROUND_HOST && *external.ip() == b_ip
                            && (observed + 1..port).contains(&external.port()))
                    })
                    .count();
                // Sequential step 1: every port skipped went to another host.
                assert_eq!(
                    background,
                    usize::from(port - observed - 1),
                    "trial {}",
                    a.trial
                );
                moved.push((port - observed, background));
            }
            other => panic!("{other:?} is not in the mix"),
        }
    }
    assert_eq!(moved.len(), 4, "shuffled rounds: 4 of 8 trials are predict");
    moved
}

#[test]
fn predict_connects_across_a_sequential_apdm_nat() {
    let (lab, alice, bob) = predict_run("hnp", "delay_ms = 10", 4);
    let moved = check_predict(&lab, &alice, &bob, 4);
    // A quiet NAT: the next port, every time.
    assert!(moved.iter().all(|(m, bg)| *m == 1 && *bg == 0), "{moved:?}");
}

#[test]
fn predict_connects_across_a_busy_sequential_apdm_nat() {
    // Other hosts open 20 connections per second behind bob's NAT.
    let (lab, alice, bob) = predict_run("hnb", "delay_ms = 25\nbackground_per_s = 20.0", 16);
    let moved = check_predict(&lab, &alice, &bob, 16);
    eprintln!("busy predict: (ports moved, of them background) per trial: {moved:?}");
    let taken: usize = moved.iter().map(|(_, bg)| bg).sum();
    assert!(
        taken > 0,
        "background connections took ports between observation and use: {moved:?}"
    );
}

#[test]
fn birthday_success_matches_the_formula_and_each_hit_in_the_log() {
    // Bob's NAT allocates from 4096 ports; m = 32, n = 64: m*n/range = 0.5.
    let (m, n, first, last) = (32u32, 64u32, 20000u16, 24095u16);
    let lab = start_lab(
        "hnd",
        &two_nats(
            "delay_ms = 10",
            &format!("mapping = \"apdm\"\nallocation = \"random\"\nrandom_ports = [{first}, {last}]\ndelay_ms = 10"),
        ),
    );
    // 30 by default; more for the figures in docs/methodology.md.
    let trials_n = std::env::var("PUNCHSCOPE_BIRTHDAY_TRIALS").map_or(30, |v| v.parse().unwrap());
    let plan = plan(
        "hnd",
        &format!(
            "trials = {trials_n}\nnetwork = \"regtest\"\nattempt_timeout_ms = 1000\nmax_attempts = 1\n\
             class_strategies = {{ easy_random = [\"birthday\"] }}\nbirthday_sockets = {m}\nbirthday_ports = {n}\n\
             birthday_port_range = [{first}, {last}]\nbirthday_pps = 400\n"
        ),
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let started = std::time::Instant::now();
    let results = probe_alice_and_bob(&lab, Duration::from_secs(400));
    eprintln!("birthday: {trials_n} trials in {:?}", started.elapsed());
    let (alice, bob) = (trials(&results[0]), trials(&results[1]));
    let events = lab.events();
    let (a_ip, b_ip) = (public_ip(&lab, "a"), public_ip(&lab, "b"));
    // Each trial's events lie between bob's registration mapping of that
    // trial and the next one's (the OS may reuse a local port, so ports
    // alone do not tell trials apart over many trials). Bob's first
    // mapping towards the coordinator is his control connection.
    let coordinator: SocketAddrV4 = COORDINATOR.parse().unwrap();
    let registrations: Vec<(f64, u16)> = events
        .iter()
        .filter(|e| e.router == "b")
        .filter_map(|e| match &e.event {
            NatEvent::MappingCreated {
                internal, remote, ..
            } if *remote == coordinator => Some((e.t_ms, internal.port())),
            _ => None,
        })
        .skip(1)
        .collect();
    assert_eq!(
        registrations.len(),
        trials_n as usize,
        "one registration per trial"
    );
    let window = |trial: usize| {
        let start = registrations[trial].0;
        let end = registrations.get(trial + 1).map_or(f64::INFINITY, |r| r.0);
        move |e: &&LabEvent| (start..end).contains(&e.t_ms)
    };
    let mut successes = 0;
    for (a, b) in alice.iter().zip(&bob) {
        let in_trial = window(a.trial as usize);
        assert_eq!(
            registrations[a.trial as usize].1, b.local_port,
            "trial {}",
            a.trial
        );
        let events: Vec<LabEvent> = events.iter().filter(in_trial).cloned().collect();
        assert_eq!(
            (a.strategy, a.pair_class),
            (Strategy::Birthday, Some(PairClass::EasyRandom))
        );
        let (ah, bh) = (a.hard.as_ref().unwrap(), b.hard.as_ref().unwrap());
        assert_eq!(
            (ah.role.as_str(), ah.n, ah.range),
            ("birthday_spray", Some(n), Some(4096))
        );
        assert_eq!((bh.role.as_str(), bh.m), ("birthday_open", Some(m)));
        // Ground truth: the ports bob's NAT gave his m connections to alice,
        // and the ports alice's SYNs left for.
        let alice_public = SocketAddrV4::new(a_ip, a.public_port.unwrap());
        let opened: BTreeSet<u16> = mappings_to(&events, "b", None, alice_public)
            .into_iter()
            .collect();
        assert_eq!(
            opened.len(),
            m as usize,
            "trial {}: bob's m mappings",
            a.trial
        );
        assert!(opened.iter().all(|p| (first..=last).contains(p)));
        let sprayed: BTreeSet<u16> = events
            .iter()
            .filter(|e| e.router == "a")
            .filter_map(|e| match &e.event {
                NatEvent::TcpControl {
                    direction: Direction::Outbound,
                    src,
                    dst,
                    flags,
                    ..
                } if *src == alice_public && *dst.ip() == b_ip && flags == "S" => Some(dst.port()),
                _ => None,
            })
            .collect();
        // A hit ends the spray early: the record counts the SYNs that left.
        assert_eq!(sprayed.len() as u32, ah.ports_tried, "trial {}", a.trial);
        assert!(
            ah.ports_tried <= n && (a.outcome == TrialOutcome::Connected || ah.ports_tried == n)
        );
        let hit = !opened.is_disjoint(&sprayed);
        let connected = a.outcome == TrialOutcome::Connected;
        assert_eq!(
            connected, hit,
            "trial {}: connected iff a sprayed port met a mapping",
            a.trial
        );
        assert_eq!(
            b.outcome == TrialOutcome::Connected,
            hit,
            "trial {} (bob)",
            a.trial
        );
        if connected {
            assert!(
                opened.contains(&a.peer_port.unwrap()),
                "alice met one of bob's mappings"
            );
            successes += 1;
        }
    }
    let rows = report_rows(&results);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(
        (rows[0].class_label.as_str(), rows[0].arm.as_str()),
        (
            "EIM-APDM(random)",
            format!("birthday(m={m}, n={n})").as_str()
        )
    );
    assert_eq!(
        (rows[0].proportion.successes, rows[0].proportion.n),
        (successes as u64, u64::from(trials_n))
    );
    // The formula: the exact chance (about 1 - exp(-m*n/range) = 0.39),
    // held to its binomial interval at 99.9%.
    let p = birthday_hit_probability(m, n, 4096);
    let (low, high) = binomial_interval(p, trials_n, 0.001);
    eprintln!(
        "birthday: {successes} of {trials_n} hits (m = {m}, n = {n}, range 4096: p = {p:.3}, 99.9% interval {low}..={high})"
    );
    assert!(
        (low..=high).contains(&successes),
        "{successes} of {trials_n} hits, expected {low}..={high} (p = {p:.3})"
    );
}

#[test]
fn plans_above_the_hard_caps_are_refused_with_what_to_lower() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, words) in [
        (
            "birthday_sockets",
            5000,
            "the hard cap is 256 sockets per trial",
        ),
        (
            "birthday_ports",
            100_000,
            "the hard cap is 1024 ports sprayed per trial",
        ),
        (
            "birthday_pps",
            10_000,
            "the hard cap is 500 SYNs per second",
        ),
        (
            "predict_window",
            1000,
            "the hard cap is 64 predicted ports per trial",
        ),
    ] {
        let plan = plan_in(dir.path(), key, &format!("{key} = {value}\n"));
        // Refused before anything listens: loopback only, and nothing is sent.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_punchscope"))
            .args(["serve", "rendezvous", "--listen", "127.0.0.1:0", "--plan"])
            .arg(&plan)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{key} = {value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("plan field `{key}`: {value} is refused"))
                && stderr.contains(words),
            "{key}: {stderr}"
        );
    }
}
