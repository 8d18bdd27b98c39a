//! Loopback tests of whole pairings with fake trial runners: endpoints, nonces, delays, priming, relays, peers that vanish.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punchscope::analysis::handshake::Role;
use punchscope::analysis::trial::{Strategy, TrialOutcome};
use punchscope::proto::rendezvous::{ClientMessage, ErrorCode, ServerMessage, TrialResult};
use punchscope::rendezvous::{register_port, Client, Step, TrialReport};
use support::rendezvous::*;
use support::sockets::trial_socket;
use support::WAIT;

#[derive(Debug, Default)]
struct SideLog {
    observed: Vec<SocketAddr>,
    /// (trial, peer, delay_ms, nonce, injected_skew_ms, when received)
    gos: Vec<(u32, SocketAddr, u64, String, u64, Instant)>,
    primes: Vec<(u32, SocketAddr, u8)>,
    peer_results: Vec<(u32, TrialOutcome)>,
    done: Option<u32>,
}

const A_OUTCOMES: [TrialOutcome; 3] = [
    TrialOutcome::Connected,
    TrialOutcome::Refused,
    TrialOutcome::Connected,
];
const B_OUTCOMES: [TrialOutcome; 3] = [
    TrialOutcome::Connected,
    TrialOutcome::Timeout,
    TrialOutcome::WrongPeer,
];

/// Side A: the client library, as the probe will use it, with scripted outcomes.
async fn run_library_side(mut client: Client) -> SideLog {
    let mut log = SideLog::default();
    let pairing = client
        .wait_for_pairing(|_| {}, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(pairing.role, Role::Initiator);
    for _ in 0..100 {
        match client.next().await.unwrap() {
            Step::Trial { token, .. } => {
                let socket = trial_socket(ip(2));
                let local = socket.local_addr().unwrap().as_socket().unwrap();
                let observed = register_port(socket, client.server(), &token, None, WAIT)
                    .await
                    .unwrap();
                assert_eq!(observed, local, "no NAT on loopback: observed = local");
                // The trial binds the same port again at once.
                let again =
                    punchscope::net::socket::bound(local).expect("the registered port is reusable");
                again.listen(1).unwrap();
                log.observed.push(observed);
            }
            Step::Prime { trial, peer, ttl } => {
                log.primes.push((trial, peer, ttl));
                client.primed(trial).await.unwrap();
            }
            Step::Go {
                trial,
                peer,
                delay,
                nonce,
                injected_skew,
                ..
            } => {
                let at = Instant::now();
                let ms = |d: Duration| d.as_millis() as u64;
                log.gos
                    .push((trial, peer, ms(delay), nonce, ms(injected_skew), at));
                let report = TrialReport {
                    outcome: A_OUTCOMES[trial as usize],
                    go_to_established_ms: Some(12.5),
                    attempts: 1,
                };
                client.report(trial, &report).await.unwrap();
            }
            Step::PeerResult { trial, outcome } => log.peer_results.push((trial, outcome)),
            Step::PeerGone { trial } => panic!("peer gone in trial {trial:?}"),
            Step::Done { trials } => {
                log.done = Some(trials);
                break;
            }
        }
    }
    log
}

#[tokio::test]
async fn a_whole_pairing_hands_out_observed_endpoints_nonces_and_rtt_based_delays() {
    const PONG_DELAY: Duration = Duration::from_millis(80);
    const PRIME_DELAY: Duration = Duration::from_millis(300);
    let plan = plan(
        3,
        "[\"simultaneous\", \"low_ttl\", \"connect_listen\"]",
        40,
        3,
    );
    let server = start(fast_config(plan)).await;
    let a = Client::connect_from(Some(ip(2)), server.addr, volunteer(None), WAIT)
        .await
        .unwrap();
    let a = tokio::spawn(run_library_side(a));
    // Side B: raw lines, slow to answer pings and slow to prime.
    let mut b = Raw::connect(ip(3), server.addr).await;
    b.send(&ClientMessage::Hello(volunteer(None))).await;
    let mut log = SideLog::default();
    let mut pings = [0u32; 3];
    let mut current = 0u32;
    let mut primed_sent = None;
    for _ in 0..200 {
        match b.recv().await.expect("no close before done") {
            ServerMessage::Welcome { .. } | ServerMessage::Waiting { .. } => {}
            ServerMessage::Paired { role, .. } => assert_eq!(role, Role::Responder),
            ServerMessage::Ping { id } => {
                pings[current as usize] += 1;
                tokio::time::sleep(PONG_DELAY).await;
                b.send(&ClientMessage::Pong { id }).await;
            }
            ServerMessage::Trial { trial, token, .. } => {
                current = trial;
                let socket = trial_socket(ip(3));
                let observed = register_port(socket, server.addr, &token, None, WAIT)
                    .await
                    .unwrap();
                log.observed.push(observed);
            }
            ServerMessage::Prime { trial, peer, ttl } => {
                log.primes.push((trial, peer, ttl));
                tokio::time::sleep(PRIME_DELAY).await;
                primed_sent = Some(Instant::now());
                b.send(&ClientMessage::Primed { trial }).await;
            }
            ServerMessage::Go {
                trial,
                peer,
                delay_ms,
                nonce,
                injected_skew_ms,
                ..
            } => {
                log.gos.push((
                    trial,
                    peer,
                    delay_ms,
                    nonce,
                    injected_skew_ms,
                    Instant::now(),
                ));
                let result = TrialResult {
                    trial,
                    outcome: B_OUTCOMES[trial as usize],
                    go_to_established_ms: None,
                    attempts: 2,
                };
                b.send(&ClientMessage::Result(result)).await;
            }
            ServerMessage::PeerResult { trial, outcome } => log.peer_results.push((trial, outcome)),
            ServerMessage::Done { trials } => {
                log.done = Some(trials);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(b.recv().await, None, "the coordinator closes after done");
    let a = tokio::time::timeout(WAIT, a).await.unwrap().unwrap();

    assert_eq!((a.done, log.done), (Some(3), Some(3)));
    assert_eq!(pings, [3, 3, 3], "plan.rtt_samples pings per trial");
    assert_eq!((a.observed.len(), log.observed.len()), (3, 3));
    for trial in 0..3 {
        let (ga, gb) = (&a.gos[trial], &log.gos[trial]);
        // Each go carries the peer's endpoint as observed on its registration connection.
        assert_eq!(ga.1, log.observed[trial]);
        assert_eq!(gb.1, a.observed[trial]);
        assert_ne!(gb.1.port(), 0);
        assert_eq!(ga.3, gb.3, "same nonce on both sides");
        assert_eq!(ga.3.len(), 32);
        assert!(ga.3.bytes().all(|c| c.is_ascii_hexdigit()));
        // A answers pings at once, B after 80 ms: A waits about 40 ms so both SYNs leave together.
        assert!((25..=60).contains(&ga.2), "initiator delay {} ms", ga.2);
        assert_eq!(ga.4, 0, "the initiator gets no injected skew");
        assert_eq!(
            (gb.2, gb.4),
            (40, 40),
            "the responder waits only the injected skew"
        );
    }
    assert_ne!(a.gos[0].3, a.gos[1].3, "a fresh nonce per trial");
    // Trial 1 is low_ttl: prime with the plan's TTL and the peer's endpoint, go only after both primed.
    assert_eq!(a.primes, vec![(1, log.observed[1], 2)]);
    assert_eq!(log.primes, vec![(1, a.observed[1], 2)]);
    assert!(
        a.gos[1].5 >= primed_sent.unwrap(),
        "go waited for the slow side's primed"
    );
    // Each side hears the other's outcome.
    let expect = |outcomes: [TrialOutcome; 3]| -> Vec<(u32, TrialOutcome)> {
        outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| (i as u32, *o))
            .collect()
    };
    assert_eq!(a.peer_results, expect(B_OUTCOMES));
    assert_eq!(log.peer_results, expect(A_OUTCOMES));
    server.stop().await;
}

/// Pairs a library client (127.0.0.2) with a raw one (127.0.0.3) and returns
/// them after both received `trial` 0 (the raw side's token returned).
async fn paired(server: SocketAddr) -> (Client, Raw, String) {
    let mut a = Client::connect_from(Some(ip(2)), server, volunteer(None), WAIT)
        .await
        .unwrap();
    let mut b = Raw::connect(ip(3), server).await;
    b.send(&ClientMessage::Hello(volunteer(None))).await;
    a.wait_for_pairing(|_| {}, WAIT).await.unwrap();
    let mut token = None;
    while token.is_none() {
        match b.recv().await.expect("open") {
            ServerMessage::Trial { token: t, .. } => token = Some(t),
            ServerMessage::Ping { id } => b.send(&ClientMessage::Pong { id }).await,
            _ => {}
        }
    }
    // The trial's RTT sample (plan.rtt_samples = 1) follows the trial message.
    match b.recv().await {
        Some(ServerMessage::Ping { id }) => b.send(&ClientMessage::Pong { id }).await,
        other => panic!("expected a ping, got {other:?}"),
    }
    (a, b, token.unwrap())
}

#[tokio::test]
async fn a_peer_that_disappears_mid_trial_is_reported_promptly() {
    let server = start(fast_config(plan(3, "[\"simultaneous\"]", 0, 1))).await;
    let (mut a, mut b, token) = paired(server.addr).await;
    let Step::Trial { token: ta, .. } = a.next().await.unwrap() else {
        panic!("trial first");
    };
    register_port(trial_socket(ip(2)), server.addr, &ta, None, WAIT)
        .await
        .unwrap();
    register_port(trial_socket(ip(3)), server.addr, &token, None, WAIT)
        .await
        .unwrap();
    loop {
        match b.recv().await.expect("open") {
            ServerMessage::Go { .. } => break,
            ServerMessage::Ping { id } => b.send(&ClientMessage::Pong { id }).await,
            _ => {}
        }
    }
    assert!(matches!(a.next().await.unwrap(), Step::Go { trial: 0, .. }));
    drop(b);
    let started = Instant::now();
    assert_eq!(a.next().await.unwrap(), Step::PeerGone { trial: Some(0) });
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_side_that_never_registers_times_the_trial_out_cleanly() {
    let server = start(fast_config(plan(3, "[\"simultaneous\"]", 0, 1))).await;
    let (mut a, mut b, b_token) = paired(server.addr).await;
    let started = Instant::now();
    let Step::Trial {
        token, strategy, ..
    } = a.next().await.unwrap()
    else {
        panic!("trial first");
    };
    assert_eq!(strategy, Strategy::Simultaneous);
    register_port(trial_socket(ip(2)), server.addr, &token, None, WAIT)
        .await
        .unwrap();
    // B never registers: after register_timeout (1 s) it is blamed, A hears peer_gone.
    assert_eq!(a.next().await.unwrap(), Step::PeerGone { trial: Some(0) });
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    b.expect_error_and_close(ErrorCode::RegisterTimeout).await;
    // The token died with the trial.
    let late = register_port(trial_socket(ip(3)), server.addr, &b_token, None, WAIT).await;
    assert!(
        matches!(
            late,
            Err(punchscope::rendezvous::RendezvousError::Server {
                code: ErrorCode::UnknownToken,
                ..
            })
        ),
        "{late:?}"
    );
    server.stop().await;
}
