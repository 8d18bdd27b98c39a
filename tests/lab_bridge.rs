//! Bridge mode through real (emulated) NATs: a regtest `bitcoind` inside
//! each of two lab hosts behind EIM NATs (on the namespace's loopback),
//! `serve rendezvous` assigning roles, and the real `probe --node` in each
//! host. The two nodes peer through every punched hole, v2 and v1 (the
//! nodes' `-v2transport`), and each side's record holds its node's
//! `getpeerinfo` view of the other. With both sides forced to initiate,
//! BIP324 fails and v1 does not, and the records say so.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use punchscope::analysis::handshake::{
    BridgeFailure, HandshakeBy, NodeBridgeRecord, Role, Transport,
};
use punchscope::analysis::result::{PairingEnded, RunResult};
use punchscope::analysis::trial::{TrialOutcome, TrialRecord};
use punchscope::lab::{netns, Lab};
use support::bitcoind::{Bitcoind, NodeSetup};
use support::lab::*;
use support::process::ChildGuard;

const TRIALS: usize = 3;

/// A regtest node inside `host`'s namespace, listening on that namespace's loopback.
fn node_in(lab: &Lab, host: &str, v2transport: bool) -> Bitcoind {
    let ns = lab.host_netns(host).unwrap();
    Bitcoind::start_with(NodeSetup {
        v2transport,
        command: Box::new(move |program| {
            netns::command_in(&ns, program.to_str().unwrap()).unwrap()
        }),
        ..NodeSetup::default()
    })
}

/// Both probes in bridge mode at once (each with `extra` arguments); each side's result.
fn bridged_pair(lab: &Lab, nodes: [&Bitcoind; 2], extra: &[&str]) -> [RunResult; 2] {
    let spools = tempfile::tempdir().unwrap();
    let spawn = |host: &str, node: &Bitcoind| {
        let mut command = probe_command_with_spool(lab, host, &spools.path().join(host));
        command
            .args(["--node", &node.p2p.to_string()])
            .args(["--node-rpc", &node.rpc_url(), "--node-cookie"])
            .arg(node.cookie())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ChildGuard(Some(command.spawn().unwrap()))
    };
    let mut children = [spawn("alice", nodes[0]), spawn("bob", nodes[1])];
    let limit = Duration::from_secs(150);
    let started = Instant::now();
    children.each_mut().map(|guard| {
        while guard.child().try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < limit,
                "probe did not finish in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = guard.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result = RunResult::from_json(std::str::from_utf8(&output.stdout).unwrap()).unwrap();
        assert_eq!(result.pairings.len(), 1);
        assert_eq!(result.pairings[0].ended, PairingEnded::Done);
        result
    })
}

fn plan_body() -> String {
    format!("trials = {TRIALS}\nstrategies = [\"simultaneous\"]\nnetwork = \"regtest\"\nhandshake_step_ms = 4000\n")
}

/// Every trial connected, was bridged, and carries its node's record.
fn bridged(result: &RunResult) -> Vec<(&TrialRecord, &NodeBridgeRecord)> {
    let trials = &result.pairings[0].trials;
    assert_eq!(trials.len(), TRIALS);
    trials
        .iter()
        .map(|t| {
            assert_eq!(t.outcome, TrialOutcome::Connected, "{t:#?}");
            assert_eq!(t.handshake_by, HandshakeBy::Nodes);
            assert!(
                t.handshake.is_none(),
                "punchscope's own handshake did not run"
            );
            (t, t.node_bridge.as_ref().expect("the node's record"))
        })
        .collect()
}

/// Both nodes peered in every trial with `transport`, in the coordinator's roles.
fn assert_nodes_peered(results: &[RunResult; 2], transport: Transport) {
    let roles = results.each_ref().map(|r| r.pairings[0].role);
    assert!(roles.contains(&Role::Initiator) && roles.contains(&Role::Responder));
    let sides = results.each_ref().map(bridged);
    for (side, role) in sides.iter().zip(roles) {
        for (trial, bridge) in side {
            assert!(bridge.success, "trial {}: {bridge:#?}", trial.trial);
            assert_eq!(bridge.role, role);
            let peer = bridge.peer.as_ref().unwrap();
            assert_eq!(peer.transport, Some(transport), "trial {}", trial.trial);
            assert!(peer.version_handshake);
            assert!(
                peer.user_agent.starts_with("/Satoshi:"),
                "{}",
                peer.user_agent
            );
            let connection = match role {
                Role::Initiator => "manual",
                Role::Responder => "inbound",
            };
            assert_eq!(peer.connection_type, connection);
            assert!(peer.ping_ms.is_some(), "the nodes pinged through the hole");
        }
    }
    // Each trial's two records are one connection: the same BIP324 session, the same bytes.
    for ((_, a), (_, b)) in sides[0].iter().zip(&sides[1]) {
        let session = |r: &NodeBridgeRecord| r.peer.as_ref().unwrap().session_id.clone();
        assert_eq!(session(a), session(b));
        assert_eq!(session(a).is_some(), transport == Transport::V2);
        assert_eq!(a.bytes_to_peer, b.bytes_from_peer);
        assert!(a.disconnected || b.disconnected, "one side's node ended it");
    }
}

fn assert_not_misbehaving(nodes: [&Bitcoind; 2]) {
    for node in nodes {
        assert!(!node.log().contains("Misbehaving"), "{}", node.log());
    }
}

#[test]
fn two_nodes_peer_through_punched_holes_on_v2_and_v1_in_the_coordinators_roles() {
    let lab = start_lab("brg", &two_nats("delay_ms = 10", "delay_ms = 20"));
    let files = tempfile::tempdir().unwrap();
    let plan = plan_in(files.path(), "brg", &plan_body());
    let _coordinator = start_coordinator(&lab, &plan);
    let _echo = start_echo(&lab);
    for (v2, transport) in [(true, Transport::V2), (false, Transport::V1)] {
        let alice = node_in(&lab, "alice", v2);
        let bob = node_in(&lab, "bob", v2);
        let results = bridged_pair(&lab, [&alice, &bob], &[]);
        assert_nodes_peered(&results, transport);
        assert_not_misbehaving([&alice, &bob]);
        // A connection nobody is using any more is gone from both nodes.
        for node in [&alice, &bob] {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let peers: Vec<serde_json::Value> =
                    serde_json::from_str(&node.cli(&["getpeerinfo"])).unwrap();
                if peers.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "still connected: {peers:#?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn two_initiators_fail_on_v2_as_bip324_predicts_and_the_record_says_so() {
    let lab = start_lab("bri", &two_nats("delay_ms = 5", "delay_ms = 5"));
    let files = tempfile::tempdir().unwrap();
    let plan = plan_in(files.path(), "bri", &plan_body());
    let _coordinator = start_coordinator(&lab, &plan);
    let _echo = start_echo(&lab);
    let both_initiate = ["--node-force-role", "initiator"];

    let alice = node_in(&lab, "alice", true);
    let bob = node_in(&lab, "bob", true);
    let results = bridged_pair(&lab, [&alice, &bob], &both_initiate);
    for result in &results {
        for (trial, bridge) in bridged(result) {
            assert_eq!(bridge.role, Role::Initiator, "forced");
            assert!(!bridge.success, "trial {}: {bridge:#?}", trial.trial);
            assert!(
                matches!(
                    bridge.failure,
                    Some(BridgeFailure::HandshakeIncomplete | BridgeFailure::PeerDropped)
                ),
                "trial {}: {bridge:#?}",
                trial.trial
            );
            let peer = bridge.peer.as_ref().expect("the node listed its attempt");
            assert_eq!(peer.connection_type, "manual");
            assert!(!peer.version_handshake);
        }
    }
    drop((alice, bob));

    // v1 does not care who speaks first: the crossing versions complete.
    let alice = node_in(&lab, "alice", false);
    let bob = node_in(&lab, "bob", false);
    let results = bridged_pair(&lab, [&alice, &bob], &both_initiate);
    for result in &results {
        for (trial, bridge) in bridged(result) {
            assert_eq!(bridge.role, Role::Initiator);
            assert!(bridge.success, "trial {}: {bridge:#?}", trial.trial);
            assert_eq!(bridge.peer.as_ref().unwrap().transport, Some(Transport::V1));
        }
    }
}

#[test]
fn a_reference_peer_hands_its_side_to_its_node_too() {
    use std::io::BufRead;

    let lab = start_lab("brr", &two_nats("delay_ms = 5", "delay_ms = 5"));
    let files = tempfile::tempdir().unwrap();
    let plan = plan_in(files.path(), "brr", &plan_body());
    let _coordinator = start_coordinator_with(&lab, &plan, &["--any-reference"]);
    let _echo = start_echo(&lab);
    let alice = node_in(&lab, "alice", true);
    let bob = node_in(&lab, "bob", true);
    let spools = tempfile::tempdir().unwrap();
    let with_node = |command: &mut std::process::Command, node: &Bitcoind| {
        command
            .args(["--node", &node.p2p.to_string()])
            .args(["--node-rpc", &node.rpc_url(), "--node-cookie"])
            .arg(node.cookie())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
    };
    let mut reference = probe_command_with_spool(&lab, "bob", &spools.path().join("bob"));
    reference.arg("--serve-peer");
    with_node(&mut reference, &bob);
    let mut reference = ChildGuard(Some(reference.spawn().unwrap()));
    // The reference prints one result line per pairing.
    let stdout = reference.child().stdout.take().unwrap();
    let (lines, line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(l).is_err() {
                break;
            }
        }
    });
    // The volunteer prints its human summary (no --json).
    let json_args = probe_command_with_spool(&lab, "alice", &spools.path().join("alice"));
    let mut volunteer = punchscope_in(&lab.host_netns("alice").unwrap());
    volunteer.args(json_args.get_args().filter(|a| *a != "--json"));
    with_node(&mut volunteer, &alice);
    let mut volunteer = ChildGuard(Some(volunteer.spawn().unwrap()));
    assert!(volunteer.wait(Duration::from_secs(120)).success());
    let summary = volunteer.0.take().unwrap().wait_with_output().unwrap();
    let summary = String::from_utf8(summary.stdout).unwrap();
    assert!(
        summary.contains(&format!(
            "Your node's handshakes over punched sockets: {TRIALS} of {TRIALS} completed (0 v1, {TRIALS} v2)"
        )),
        "{summary}"
    );
    let reference_line = line
        .recv_timeout(Duration::from_secs(30))
        .expect("the reference's result for the pairing");
    let pid = libc::pid_t::try_from(reference.child().id()).unwrap();
    // SAFETY: signalling our own child by its PID, as Ctrl-C would.
    unsafe { libc::kill(pid, libc::SIGINT) };
    reference.wait(Duration::from_secs(20));

    let result = RunResult::from_json(&reference_line).unwrap();
    assert_eq!(
        result.mode,
        punchscope::analysis::result::RunMode::Reference
    );
    let pairing = &result.pairings[0];
    for (trial, bridge) in bridged(&result) {
        assert!(bridge.success, "trial {}: {bridge:#?}", trial.trial);
        assert_eq!(bridge.role, pairing.role);
        assert_eq!(bridge.peer.as_ref().unwrap().transport, Some(Transport::V2));
    }
}
