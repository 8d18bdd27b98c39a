//! Punching trials in the lab, coordinated by the lab itself (a perfect
//! coordinator: both sides share one clock, see `lab::pair`): the real echo
//! server reports each side's public endpoint, then both sides run the real
//! trial code and the Bitcoin handshake over the punched socket.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use punchscope::analysis::handshake::{BitcoinNetwork, Transport};
use punchscope::analysis::trial::{Completion, Strategy, TrialOutcome, TrialRecord};
use punchscope::lab::nat::{DropReason, NatEvent};
use punchscope::lab::pair::{run_pair, PairTrial};
use punchscope::lab::services::EchoService;
use punchscope::lab::Lab;
use punchscope::punch::HandshakeSpec;
use support::lab::*;

fn echo() -> SocketAddr {
    "198.51.100.10:3478".parse().unwrap()
}

fn pair_scenario(a: &str, b: &str) -> String {
    format!(
        "[[nat]]\nname = \"a\"\n{a}\n[[nat]]\nname = \"b\"\n{b}\n\
         [[host]]\nname = \"alice\"\nnat = \"a\"\n[[host]]\nname = \"bob\"\nnat = \"b\"\n"
    )
}

/// Trial `n` between alice (initiator) and bob (responder), with a handshake if a transport is given.
fn trial(
    lab: &Lab,
    n: u32,
    strategy: Strategy,
    transport: Option<Transport>,
) -> (TrialRecord, TrialRecord) {
    let mut t = PairTrial::new(
        "alice",
        "bob",
        n,
        strategy,
        (50000 + n as u16, 51000 + n as u16),
        echo(),
    );
    t.handshake = transport.map(|transport| HandshakeSpec {
        transport,
        network: BitcoinNetwork::Regtest,
        step_timeout: Duration::from_secs(5),
    });
    run_pair(lab, &t).unwrap()
}

#[test]
fn eim_pairs_punch_every_trial_and_complete_v1_and_v2_handshakes() {
    let lab = start_lab(
        "pun",
        &pair_scenario("delay_ms = 10", "delay_ms = 15\nunsolicited = \"rst\""),
    );
    let _echo = EchoService::start(&lab, &[echo()]).unwrap();
    for n in 0..10 {
        let transport = if n % 2 == 0 {
            Transport::V1
        } else {
            Transport::V2
        };
        let (alice, bob) = trial(&lab, n, Strategy::Simultaneous, Some(transport));
        for (who, record) in [("alice", &alice), ("bob", &bob)] {
            assert_eq!(
                record.outcome,
                TrialOutcome::Connected,
                "trial {n} {who}: {record:#?}"
            );
            assert!(record.nonce_verified);
            let handshake = record
                .handshake
                .as_ref()
                .unwrap_or_else(|| panic!("trial {n} {who}: no handshake"));
            assert!(handshake.success, "trial {n} {who}: {handshake:#?}");
            assert_eq!(handshake.transport, Some(transport), "trial {n} {who}");
            let agent = handshake
                .peer
                .as_ref()
                .map(|p| p.user_agent.clone())
                .unwrap_or_default();
            assert!(
                agent.starts_with("/punchscope:"),
                "trial {n} {who}: peer user agent {agent:?}"
            );
            let rtt = record.go_to_established_ms.unwrap();
            assert!(
                rtt >= 40.0,
                "trial {n} {who}: established after {rtt} ms, below the 50 ms path RTT"
            );
        }
        if transport == Transport::V2 {
            assert_eq!(
                alice.handshake.as_ref().unwrap().session_id,
                bob.handshake.as_ref().unwrap().session_id,
                "trial {n}: both sides derived the same BIP324 session"
            );
        }
    }
}

#[test]
fn apdm_pairs_never_punch_and_say_why() {
    let lab = start_lab(
        "pud",
        &pair_scenario("mapping = \"apdm\"", "mapping = \"apdm\""),
    );
    let _echo = EchoService::start(&lab, &[echo()]).unwrap();
    for n in 0..3 {
        let (alice, bob) = trial(&lab, n, Strategy::Simultaneous, None);
        for record in [&alice, &bob] {
            assert!(
                matches!(
                    record.outcome,
                    TrialOutcome::Timeout | TrialOutcome::Refused
                ),
                "trial {n}: {record:#?}"
            );
            assert_eq!(record.attempts.len(), 3, "every attempt is recorded");
        }
    }
}

#[test]
fn against_a_symmetric_nat_only_connect_listen_works_and_the_record_says_which_socket_won() {
    let lab = start_lab(
        "pul",
        &pair_scenario(
            "filtering = \"eif\"",
            "mapping = \"apdm\"\nfiltering = \"apdf\"",
        ),
    );
    let _echo = EchoService::start(&lab, &[echo()]).unwrap();
    let (alice, bob) = trial(&lab, 0, Strategy::Simultaneous, None);
    assert_ne!(alice.outcome, TrialOutcome::Connected, "{alice:#?}");
    assert_ne!(bob.outcome, TrialOutcome::Connected, "{bob:#?}");

    let (alice, bob) = trial(&lab, 1, Strategy::ConnectListen, Some(Transport::V1));
    assert_eq!(alice.outcome, TrialOutcome::Connected, "{alice:#?}");
    assert_eq!(bob.outcome, TrialOutcome::Connected, "{bob:#?}");
    // Bob's SYN left his symmetric NAT from a new port: only alice's listener could take it.
    assert_eq!(alice.completed_by, Some(Completion::Listener));
    assert_eq!(bob.completed_by, Some(Completion::Connect));
    assert!(alice.handshake.as_ref().is_some_and(|h| h.success));
}

#[test]
fn low_ttl_priming_survives_a_start_skew_that_breaks_rst_nats() {
    let rst = "unsolicited = \"rst\"\ndelay_ms = 50";
    let lab = start_lab("put", &pair_scenario(rst, rst));
    let _echo = EchoService::start(&lab, &[echo()]).unwrap();
    let skewed = |strategy, ports| {
        let mut t = PairTrial::new("alice", "bob", 0, strategy, ports, echo());
        t.plan.injected_skew_ms = 150;
        t.plan.max_attempts = 1;
        t.plan.attempt_timeout_ms = 2000;
        run_pair(&lab, &t).unwrap()
    };
    // Without priming, alice's SYN reaches bob's NAT before bob opened it: RST.
    let (a, b) = skewed(Strategy::Simultaneous, (52000, 52001));
    assert_eq!(a.outcome, TrialOutcome::Refused, "{a:#?}");
    assert_ne!(b.outcome, TrialOutcome::Connected, "{b:#?}");

    // Primed with a TTL-2 SYN, the same skew does no harm.
    let (a, b) = skewed(Strategy::LowTtl, (52100, 52101));
    assert_eq!(a.outcome, TrialOutcome::Connected, "{a:#?}");
    assert_eq!(b.outcome, TrialOutcome::Connected, "{b:#?}");
    assert_eq!(a.attempts.len(), 1, "one attempt was enough: {a:#?}");
    assert_eq!(
        b.completed_by,
        Some(Completion::Listener),
        "bob's listener answered alice's early SYN"
    );
}

/// The same skewed `low_ttl` trials behind three pairs of RST-answering
/// routers at 50 ms one way: the emulator as it was (no window check), the
/// emulator with Linux conntrack's window check, and real Linux NATs. The
/// second must fail as the third does, and for the reason the third does
/// (docs/methodology.md): our opening segments, from new sockets, are out
/// of the window the priming SYN set once the peer's SYN came in.
#[test]
fn with_linux_s_window_check_the_emulator_fails_skewed_low_ttl_as_linux_does() {
    const TRIALS: u32 = 3;
    let mut toml = String::new();
    for (pair, keys) in [
        ("e", ""),
        ("w", "tcp_window_check = true\n"),
        ("k", "backend = \"kernel\"\n"),
    ] {
        for side in ["a", "b"] {
            toml.push_str(&format!(
                "[[nat]]\nname = \"{pair}{side}\"\nunsolicited = \"rst\"\ndelay_ms = 50\n{keys}\
                 [[host]]\nname = \"{pair}_{side}\"\nnat = \"{pair}{side}\"\n"
            ));
        }
    }
    let lab = start_lab("pwin", &toml);
    let _echo = EchoService::start(&lab, &[echo()]).unwrap();
    let connected = std::thread::scope(|s| {
        let runs: Vec<_> = ["e", "w", "k"]
            .into_iter()
            .enumerate()
            .map(|(i, pair)| {
                let lab = &lab;
                s.spawn(move || {
                    let mut connected = 0;
                    for n in 0..TRIALS {
                        let base = 53000 + (i as u16) * 100 + (n as u16) * 2;
                        let (a, b) = (format!("{pair}_a"), format!("{pair}_b"));
                        let mut t =
                            PairTrial::new(&a, &b, n, Strategy::LowTtl, (base, base + 1), echo());
                        t.plan.injected_skew_ms = 150;
                        t.plan.max_attempts = 1;
                        t.plan.attempt_timeout_ms = 2000;
                        let (a, b) = run_pair(lab, &t).unwrap();
                        let both = a.outcome == TrialOutcome::Connected
                            && b.outcome == TrialOutcome::Connected;
                        connected += u32::from(both);
                    }
                    (pair, connected)
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap())
            .collect::<std::collections::HashMap<_, _>>()
    });
    assert_eq!(
        (connected["e"], connected["w"], connected["k"]),
        (TRIALS, 0, 0),
        "emulator / emulator with window check / Linux: {connected:?}"
    );
    let out_of_window = lab
        .events()
        .into_iter()
        .filter(|e| {
            e.router.starts_with('w')
                && matches!(
                    e.event,
                    NatEvent::Dropped {
                        reason: DropReason::OutOfWindow { .. },
                        ..
                    }
                )
        })
        .count();
    assert!(
        out_of_window >= TRIALS as usize,
        "the window check dropped them: {out_of_window}"
    );
    assert!(
        lab.events().iter().all(|e| !e.router.starts_with('e')
            || !matches!(
                e.event,
                NatEvent::Dropped {
                    reason: DropReason::OutOfWindow { .. },
                    ..
                }
            )),
        "no check without the key"
    );
}

#[test]
fn the_manual_punch_command_connects_two_hosts_and_runs_a_handshake() {
    let lab = start_lab("pum", &pair_scenario("delay_ms = 10", "delay_ms = 10"));
    // Port-preserving NATs: each side's public endpoint is its public IP and the bound port.
    let public = |host: &str| lab.scenario().host(host).unwrap().public_ip;
    let spawn = |host: &str, peer: std::net::Ipv4Addr, role: &str| {
        punchscope::lab::netns::command_in(
            &lab.host_netns(host).unwrap(),
            env!("CARGO_BIN_EXE_punchscope"),
        )
        .unwrap()
        .args([
            "punch",
            "--bind",
            "40000",
            "--peer",
            &format!("{peer}:40000"),
        ])
        .args(["--nonce", "shared-word", "--handshake-role", role, "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let alice = spawn("alice", public("bob"), "initiator");
    let bob = spawn("bob", public("alice"), "responder");
    for (who, child) in [("alice", alice), ("bob", bob)] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{who}: exit {:?}", output.status);
        let record: TrialRecord = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(record.outcome, TrialOutcome::Connected, "{who}");
        assert!(record.handshake.is_some_and(|h| h.success), "{who}");
    }
}
