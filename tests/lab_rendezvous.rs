//! Coordinated trials with the real binaries: `serve rendezvous` in the
//! internet namespace, `probe` in two hosts behind lab NATs; success rates,
//! roles, handshakes and SYN timing checked against the emulator's log.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use punchscope::analysis::handshake::{Role, Transport};
use punchscope::analysis::result::{PairingEnded, RunResult};
use punchscope::analysis::trial::{Strategy, TrialOutcome, TrialRecord};
use punchscope::lab::nat::{Direction, NatEvent};
use punchscope::lab::Lab;
use support::lab::*;
use support::process::ChildGuard;

/// Runs `probe` in alice and bob at once; returns each side's trials, in trial order.
fn probe_pair(lab: &Lab, within: Duration) -> (Vec<TrialRecord>, Vec<TrialRecord>, Vec<Role>) {
    let outputs = probe_alice_and_bob(lab, within);
    let trials = |r: &RunResult| -> Vec<TrialRecord> {
        let mut t = r.pairings[0].trials.clone();
        t.sort_by_key(|t| t.trial);
        t
    };
    let roles = outputs.iter().map(|r| r.pairings[0].role).collect();
    (trials(&outputs[0]), trials(&outputs[1]), roles)
}

fn connected(trials: &[TrialRecord]) -> usize {
    trials
        .iter()
        .filter(|t| t.outcome == TrialOutcome::Connected)
        .count()
}

#[test]
fn eim_pairs_punch_20_of_20_with_alternating_v1_v2_handshakes() {
    let lab = start_lab("rve", &two_nats("delay_ms = 10", "delay_ms = 20"));
    let plan = plan("rve", "trials = 20\nstrategies = [\"simultaneous\"]\ntransports = [\"v1\", \"v2\"]\nnetwork = \"regtest\"\n");
    let _coordinator = start_coordinator(&lab, &plan);
    let (a, b, roles) = probe_pair(&lab, Duration::from_secs(90));
    assert_eq!(
        roles.iter().filter(|r| **r == Role::Initiator).count(),
        1,
        "exactly one initiator: {roles:?}"
    );
    for trials in [&a, &b] {
        assert_eq!(trials.len(), 20);
        assert_eq!(connected(trials), 20, "{trials:#?}");
        for t in trials {
            let h = t
                .handshake
                .as_ref()
                .expect("handshake over every punched socket");
            assert!(h.success, "trial {}: {h:#?}", t.trial);
            let expected = if t.trial % 2 == 0 {
                Transport::V1
            } else {
                Transport::V2
            };
            assert_eq!(h.transport, Some(expected), "trial {}", t.trial);
            assert!(h
                .peer
                .as_ref()
                .is_some_and(|p| p.user_agent.starts_with("/punchscope:")));
            assert_eq!(
                t.peer_outcome,
                Some(TrialOutcome::Connected),
                "trial {}",
                t.trial
            );
        }
    }
}

#[test]
fn rst_and_symmetric_nats_give_the_outcomes_theory_predicts() {
    // Both EIM but answering early SYNs with RST: coordinated timing and retries punch every trial.
    let rst = "unsolicited = \"rst\"\ndelay_ms = 15";
    let lab = start_lab("rvr", &two_nats(rst, rst));
    let fast = "trials = 20\nstrategies = [\"simultaneous\"]\nattempt_timeout_ms = 400\nmax_attempts = 3\nretry_gap_ms = 50\nretry_jitter_ms = 200\n";
    let plan_rst = plan("rvr", fast);
    let coordinator = start_coordinator(&lab, &plan_rst);
    let (a, b, _) = probe_pair(&lab, Duration::from_secs(120));
    assert_eq!((connected(&a), connected(&b)), (20, 20), "rst pair: {a:#?}");
    drop(coordinator);
    drop(lab);

    // Both APDM: never, and each trial says why.
    let lab = start_lab("rvs", &two_nats("mapping = \"apdm\"", "mapping = \"apdm\""));
    let plan_sym = plan("rvs", fast);
    let _coordinator = start_coordinator(&lab, &plan_sym);
    let (a, b, _) = probe_pair(&lab, Duration::from_secs(120));
    for trials in [&a, &b] {
        assert_eq!(trials.len(), 20);
        assert_eq!(connected(trials), 0);
        assert!(trials.iter().all(|t| matches!(
            t.outcome,
            TrialOutcome::Timeout | TrialOutcome::Refused
        ) && !t.attempts.is_empty()));
    }
}

#[test]
fn against_a_symmetric_nat_connect_listen_succeeds_where_simultaneous_fails() {
    let lab = start_lab(
        "rvl",
        &two_nats("filtering = \"eif\"", "mapping = \"apdm\""),
    );
    let plan = plan(
        "rvl",
        "trials = 10\nstrategies = [\"simultaneous\", \"connect_listen\"]\nattempt_timeout_ms = 500\nmax_attempts = 2\nretry_gap_ms = 50\nretry_jitter_ms = 100\n",
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let (a, b, _) = probe_pair(&lab, Duration::from_secs(120));
    for trials in [&a, &b] {
        let by = |s: Strategy| trials.iter().filter(move |t| t.strategy == s);
        assert_eq!(
            by(Strategy::Simultaneous)
                .filter(|t| t.outcome == TrialOutcome::Connected)
                .count(),
            0
        );
        assert_eq!(
            by(Strategy::ConnectListen)
                .filter(|t| t.outcome == TrialOutcome::Connected)
                .count(),
            5
        );
    }
    // The record says which socket won: alice (EIF) took bob's SYN on her listener.
    assert!(a
        .iter()
        .filter(|t| t.strategy == Strategy::ConnectListen)
        .all(|t| t.completed_by == Some(punchscope::analysis::trial::Completion::Listener)));
}

#[test]
fn with_asymmetric_delays_both_syns_leave_their_hosts_together() {
    let lab = start_lab("rvt", &two_nats("delay_ms = 10", "delay_ms = 80"));
    let plan = plan(
        "rvt",
        "trials = 20\nstrategies = [\"simultaneous\"]\nrtt_samples = 5\n",
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let (a, b, _) = probe_pair(&lab, Duration::from_secs(120));
    assert_eq!((connected(&a), connected(&b)), (20, 20));
    let events = lab.events();
    // When a side's first SYN to its peer left its host: the emulator logs it
    // leaving the WAN link, one configured uplink delay later (no jitter here).
    let uplink_ms = |router: &str| match router {
        "a" => 10.0,
        _ => 80.0,
    };
    let first_syn = |router: &str, t: &TrialRecord| -> (f64, f64) {
        events
            .iter()
            .filter(|e| e.router == router)
            .find_map(|e| match &e.event {
                NatEvent::TcpControl {
                    direction: Direction::Outbound,
                    src,
                    dst,
                    flags,
                    ..
                } if flags == "S"
                    && Some(src.port()) == t.public_port
                    && Some(dst.port()) == t.peer_port =>
                {
                    Some((e.t_ms - uplink_ms(router), e.t_ms))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no SYN from {router} to the peer in trial {}", t.trial))
    };
    let mut together = 0;
    let mut gaps = Vec::new();
    for (ta, tb) in a.iter().zip(&b) {
        let ((left_a, internet_a), (left_b, internet_b)) = (first_syn("a", ta), first_syn("b", tb));
        gaps.push(((left_a - left_b).abs(), (internet_a - internet_b).abs()));
        if (left_a - left_b).abs() <= 10.0 {
            together += 1;
        }
    }
    assert!(
        together >= 18,
        "SYNs left within 10 ms in {together}/20 trials; (host gap, internet gap): {gaps:?}"
    );
    // Path RTT between the hosts: 2 x (10 + 80) ms.
    let path_rtt = 180.0;
    let mut times: Vec<f64> = a
        .iter()
        .chain(&b)
        .filter_map(|t| t.go_to_established_ms)
        .collect();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    assert!(
        median <= 1.5 * path_rtt,
        "median go->established {median} ms vs path RTT {path_rtt} ms"
    );
}

#[test]
fn a_peer_killed_mid_pairing_ends_the_other_sides_record_cleanly() {
    let lab = start_lab("rvk", &two_nats("delay_ms = 5", "delay_ms = 5"));
    let plan = plan(
        "rvk",
        "trials = 200\nstrategies = [\"simultaneous\"]\nnetwork = \"regtest\"\n",
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let _echo = start_echo(&lab);
    let spools = tempfile::tempdir().unwrap();
    let spawn = |host: &str| {
        probe_command_with_spool(&lab, host, &spools.path().join(host))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let alice = ChildGuard(Some(spawn("alice")));
    let mut bob = ChildGuard(Some(spawn("bob")));
    // Let a few trials run, then bob's process dies without a word.
    std::thread::sleep(Duration::from_millis(2500));
    let mut bob_process = bob.0.take().unwrap();
    bob_process.kill().unwrap(); // SIGKILL, by the PID we own
    bob_process.wait().unwrap();
    let mut alice = alice;
    let started = Instant::now();
    let output = loop {
        if alice.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break alice.0.take().unwrap().wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "alice hung after her peer died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(output.status.success());
    let result = RunResult::from_json(std::str::from_utf8(&output.stdout).unwrap()).unwrap();
    assert_eq!(result.pairings[0].ended, PairingEnded::PeerGone);
    let trials = result.pairings[0].trials.clone();
    assert!(
        !trials.is_empty() && trials.len() < 200,
        "the trials before the peer died are kept"
    );
    assert!(
        trials
            .iter()
            .filter(|t| t.outcome == TrialOutcome::Connected)
            .count()
            >= 1
    );
}

#[test]
fn the_volunteers_summary_says_what_happened() {
    let lab = start_lab(
        "rvo",
        &two_nats("delay_ms = 5", "delay_ms = 5\nunsolicited = \"rst\""),
    );
    let plan = plan("rvo", "trials = 4\nstrategies = [\"simultaneous\"]\ntransports = [\"v1\", \"v2\"]\nnetwork = \"regtest\"\n");
    let _coordinator = start_coordinator(&lab, &plan);
    let _echo = start_echo(&lab);
    let spools = tempfile::tempdir().unwrap();
    let run = |host: &str| {
        let mut command = probe_command_with_spool(&lab, host, &spools.path().join(host));
        // The human summary: no --json (the --quiet progress is on stderr anyway).
        let args: Vec<_> = command
            .get_args()
            .map(|a| a.to_owned())
            .filter(|a| a != "--json")
            .collect();
        let mut plain = punchscope_in(&lab.host_netns(host).unwrap());
        plain
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let _ = &mut command;
        plain.spawn().unwrap()
    };
    let (alice, bob) = (run("alice"), run("bob"));
    for (who, child) in [("alice", alice), ("bob", bob)] {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{who}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("Your NAT: Endpoint-independent mapping, port-preserving"),
            "{who}: {text}"
        );
        assert!(
            text.contains("4 of 4 trials punched through"),
            "{who}: {text}"
        );
        assert!(
            text.contains("Bitcoin v1 handshakes over punched sockets: 2 of 2 succeeded"),
            "{who}: {text}"
        );
        assert!(
            text.contains("Bitcoin v2 handshakes over punched sockets: 2 of 2 succeeded"),
            "{who}: {text}"
        );
        let result_line = lines
            .iter()
            .find(|l| l.starts_with("Result: "))
            .expect("the result's path");
        let path = result_line["Result: ".len()..].split(" (").next().unwrap();
        assert!(
            std::path::Path::new(path).exists(),
            "{who}: the result file {path} exists"
        );
        assert!(
            result_line.contains("not uploaded (no --collector)"),
            "{who}: {result_line}"
        );
    }
}

#[test]
fn ctrl_c_stops_the_probe_and_keeps_the_partial_result() {
    let lab = start_lab("rvc", &two_nats("delay_ms = 5", "delay_ms = 5"));
    let plan = plan(
        "rvc",
        "trials = 200\nstrategies = [\"simultaneous\"]\nnetwork = \"regtest\"\n",
    );
    let _coordinator = start_coordinator(&lab, &plan);
    let _echo = start_echo(&lab);
    let spools = tempfile::tempdir().unwrap();
    let spawn = |host: &str| {
        probe_command_with_spool(&lab, host, &spools.path().join(host))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut alice = ChildGuard(Some(spawn("alice")));
    let _bob = ChildGuard(Some(spawn("bob")));
    std::thread::sleep(Duration::from_millis(2500));
    let pid = alice.0.as_ref().unwrap().id();
    // SAFETY: signalling the child we spawned, by its PID, as Ctrl-C would.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let started = Instant::now();
    let output = loop {
        if alice.0.as_mut().unwrap().try_wait().unwrap().is_some() {
            break alice.0.take().unwrap().wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the probe did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(output.status.code(), Some(4), "interrupted runs exit 4");
    let result = RunResult::from_json(std::str::from_utf8(&output.stdout).unwrap()).unwrap();
    assert_eq!(result.pairings[0].ended, PairingEnded::Interrupted);
    let trials = &result.pairings[0].trials;
    assert!(
        !trials.is_empty() && trials.len() < 200,
        "{} trials kept",
        trials.len()
    );
    // The same partial result waits in the spool for upload.
    let spool = spools.path().join("alice");
    let spooled = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert!(spooled >= 1, "the interrupted result is in the spool");
}
