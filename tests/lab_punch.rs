//! Punching trials in the lab, coordinated by the test itself (a perfect
//! coordinator: both sides share one clock): each side learns its public
//! endpoint from an echo listener on its trial port, then both run the real
//! trial code, and the Bitcoin handshake over the punched socket.

mod common;

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::*;
use punchscope::analysis::handshake::{BitcoinNetwork, Role, Transport};
use punchscope::analysis::trial::{Completion, Strategy, TrialOutcome, TrialRecord};
use punchscope::lab::Lab;
use punchscope::punch::{self, HandshakeSpec, TrialSpec};

const ECHO: &str = "198.51.100.10:3478";

fn pair_scenario(a: &str, b: &str) -> String {
    format!(
        "[[nat]]\nname = \"a\"\n{a}\n[[nat]]\nname = \"b\"\n{b}\n\
         [[host]]\nname = \"alice\"\nnat = \"a\"\n[[host]]\nname = \"bob\"\nnat = \"b\"\n"
    )
}

/// Runs trial `n` between alice (initiator) and bob (responder).
fn trial(
    lab: &Lab,
    n: u32,
    strategy: Strategy,
    transport: Transport,
) -> (TrialRecord, TrialRecord) {
    let port = |base: u16| base + n as u16;
    let alice_local = SocketAddrV4::new(lab.scenario().host("alice").unwrap().address, port(50000));
    let bob_local = SocketAddrV4::new(lab.scenario().host("bob").unwrap().address, port(51000));
    // What a coordinator observes on each side's registration connection.
    let alice_public = lab
        .run_in("alice", || observe(alice_local, ep(ECHO)))
        .unwrap();
    let bob_public = lab.run_in("bob", || observe(bob_local, ep(ECHO))).unwrap();
    let nonce = format!("{:032x}", 0xfeed_0000u64 + u64::from(n));
    let spec = |role, local: SocketAddrV4, public: SocketAddrV4, peer: SocketAddrV4| TrialSpec {
        trial: n,
        strategy,
        role,
        local: SocketAddr::V4(SocketAddrV4::new([0, 0, 0, 0].into(), local.port())),
        peer: SocketAddr::V4(peer),
        public_port: Some(public.port()),
        nonce: nonce.clone(),
        start_delay: Duration::ZERO,
        injected_skew: Duration::ZERO,
        attempt_timeout: Duration::from_millis(1500),
        max_attempts: 3,
        retry_gap: Duration::from_millis(100),
        retry_jitter: Duration::from_millis(300),
    };
    let alice_spec = spec(Role::Initiator, alice_local, alice_public, bob_public);
    let bob_spec = spec(Role::Responder, bob_local, bob_public, alice_public);
    let handshake = HandshakeSpec {
        transport,
        network: BitcoinNetwork::Regtest,
        step_timeout: Duration::from_secs(5),
    };
    let go_at = std::time::Instant::now() + Duration::from_millis(50);
    let run = |host: &str, spec: TrialSpec| {
        let handshake = handshake.clone();
        lab.run_in(host, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(punch::run_trial_with_handshake(
                &spec,
                &handshake,
                tokio::time::Instant::from_std(go_at),
            ))
        })
        .unwrap()
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| run("alice", alice_spec));
        let b = s.spawn(|| run("bob", bob_spec));
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
fn eim_pairs_punch_every_trial_and_complete_v1_and_v2_handshakes() {
    let lab = start_lab(
        "pun",
        &pair_scenario("delay_ms = 10", "delay_ms = 15\nunsolicited = \"rst\""),
    );
    let _echo = EchoServer::start(&lab, &[ECHO]);
    for n in 0..10 {
        let transport = if n % 2 == 0 {
            Transport::V1
        } else {
            Transport::V2
        };
        let (alice, bob) = trial(&lab, n, Strategy::Simultaneous, transport);
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
    let _echo = EchoServer::start(&lab, &[ECHO]);
    for n in 0..3 {
        let (alice, bob) = trial(&lab, n, Strategy::Simultaneous, Transport::V1);
        for record in [&alice, &bob] {
            assert!(
                matches!(
                    record.outcome,
                    TrialOutcome::Timeout | TrialOutcome::Refused
                ),
                "trial {n}: {record:#?}"
            );
            assert_eq!(record.attempts.len(), 3, "every attempt is recorded");
            assert!(record.handshake.is_none());
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
    let _echo = EchoServer::start(&lab, &[ECHO]);
    let (alice, bob) = trial(&lab, 0, Strategy::Simultaneous, Transport::V1);
    assert_ne!(alice.outcome, TrialOutcome::Connected, "{alice:#?}");
    assert_ne!(bob.outcome, TrialOutcome::Connected, "{bob:#?}");

    let (alice, bob) = trial(&lab, 1, Strategy::ConnectListen, Transport::V1);
    assert_eq!(alice.outcome, TrialOutcome::Connected, "{alice:#?}");
    assert_eq!(bob.outcome, TrialOutcome::Connected, "{bob:#?}");
    // Bob's SYN left his symmetric NAT from a new port: only alice's listener could take it.
    assert_eq!(alice.completed_by, Some(Completion::Listener));
    assert_eq!(bob.completed_by, Some(Completion::Connect));
    assert!(alice.handshake.as_ref().is_some_and(|h| h.success));
}

/// One trial between alice and bob on the given ports, bob starting `skew` late,
/// after priming both ports with a TTL-2 SYN when the strategy is `low_ttl`.
fn skewed_trial(
    lab: &Lab,
    strategy: Strategy,
    ports: (u16, u16),
    skew: Duration,
) -> (TrialRecord, TrialRecord) {
    let alice_local = SocketAddrV4::new(lab.scenario().host("alice").unwrap().address, ports.0);
    let bob_local = SocketAddrV4::new(lab.scenario().host("bob").unwrap().address, ports.1);
    let alice_public = lab
        .run_in("alice", || observe(alice_local, ep(ECHO)))
        .unwrap();
    let bob_public = lab.run_in("bob", || observe(bob_local, ep(ECHO))).unwrap();
    let any =
        |local: SocketAddrV4| SocketAddr::V4(SocketAddrV4::new([0, 0, 0, 0].into(), local.port()));
    if strategy == Strategy::LowTtl {
        let prime = |host: &str, local: SocketAddrV4, peer: SocketAddrV4| {
            lab.run_in(host, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(punch::prime_low_ttl(any(local), SocketAddr::V4(peer), 2))
            })
            .unwrap()
            .unwrap()
        };
        prime("alice", alice_local, bob_public);
        prime("bob", bob_local, alice_public);
        // The coordinator sends `go` once both reported `primed`.
        std::thread::sleep(Duration::from_millis(300));
    }
    let make =
        |role, local: SocketAddrV4, public: SocketAddrV4, peer: SocketAddrV4, skew| TrialSpec {
            trial: 0,
            strategy,
            role,
            local: any(local),
            peer: SocketAddr::V4(peer),
            public_port: Some(public.port()),
            nonce: "ab".repeat(16),
            start_delay: Duration::ZERO,
            injected_skew: skew,
            attempt_timeout: Duration::from_millis(2000),
            max_attempts: 1,
            retry_gap: Duration::ZERO,
            retry_jitter: Duration::ZERO,
        };
    let alice = make(
        Role::Initiator,
        alice_local,
        alice_public,
        bob_public,
        Duration::ZERO,
    );
    let bob = make(Role::Responder, bob_local, bob_public, alice_public, skew);
    let go_at = std::time::Instant::now() + Duration::from_millis(20);
    let run = |host: &str, spec: TrialSpec| {
        lab.run_in(host, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime
                .block_on(punch::run_trial(
                    &spec,
                    tokio::time::Instant::from_std(go_at),
                ))
                .0
        })
        .unwrap()
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| run("alice", alice));
        let b = s.spawn(|| run("bob", bob));
        (a.join().unwrap(), b.join().unwrap())
    })
}

#[test]
fn low_ttl_priming_survives_a_start_skew_that_breaks_rst_nats() {
    let rst = "unsolicited = \"rst\"\ndelay_ms = 50";
    let lab = start_lab("put", &pair_scenario(rst, rst));
    let _echo = EchoServer::start(&lab, &[ECHO]);
    let skew = Duration::from_millis(150);

    // Without priming, alice's SYN reaches bob's NAT before bob's opened it: RST.
    let (a, b) = skewed_trial(&lab, Strategy::Simultaneous, (52000, 52001), skew);
    assert_eq!(a.outcome, TrialOutcome::Refused, "{a:#?}");
    assert_ne!(b.outcome, TrialOutcome::Connected, "{b:#?}");

    // Primed with a TTL-2 SYN, the same skew does no harm.
    let (a, b) = skewed_trial(&lab, Strategy::LowTtl, (52100, 52101), skew);
    assert_eq!(a.outcome, TrialOutcome::Connected, "{a:#?}");
    assert_eq!(b.outcome, TrialOutcome::Connected, "{b:#?}");
    assert_eq!(a.attempts.len(), 1, "one attempt was enough: {a:#?}");
    assert_eq!(
        b.completed_by,
        Some(Completion::Listener),
        "bob's listener answered alice's early SYN"
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
