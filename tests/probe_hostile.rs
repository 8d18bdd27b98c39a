//! A probe that trusts no server: a scripted hostile coordinator and a
//! scripted hostile echo server on loopback. Each violation is refused,
//! nothing reaches the target, the pairing ends promptly with the violation
//! recorded, and the run's result is kept.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punchscope::analysis::handshake::Role;
use punchscope::analysis::plan::{AttemptTiming, Plan};
use punchscope::analysis::portmap::MappedSide;
use punchscope::analysis::result::{PairingEnded, RunResult, ViolationRule};
use punchscope::analysis::trial::{Family, Strategy, TrialOutcome};
use punchscope::classify::{classify, ClassifyConfig, EchoTrust};
use punchscope::net::address::AddressPolicy;
use punchscope::probe::{self, PairingOptions, PairingRun, RunEnding, RunOptions, Stop};
use punchscope::proto::echo;
use punchscope::proto::rendezvous::{ClientMessage, Mode, PeerInfo, ServerMessage};
use punchscope::punch::default_plan;
use support::rendezvous::*;
use tokio::io::AsyncWriteExt;

/// A violation must end the pairing well within this.
const PROMPTLY: Duration = Duration::from_secs(5);

fn fast_plan(trials: u32, strategies: &[Strategy]) -> Plan {
    let mut plan = default_plan("hostile");
    plan.trials = trials;
    plan.strategies = strategies.to_vec();
    plan.attempt_timeout_ms = 300;
    plan.max_attempts = 1;
    plan.retry_gap_ms = 0;
    plan.retry_jitter_ms = 0;
    plan.handshake_step_ms = 200;
    plan.low_ttl = 2;
    plan
}

fn paired(plan: &Plan) -> ServerMessage {
    ServerMessage::Paired {
        role: Role::Initiator,
        plan: plan.clone(),
        peer: PeerInfo {
            mode: Mode::Volunteer,
            verdict: None,
        },
    }
}

fn trial(n: u32, strategy: Strategy) -> ServerMessage {
    ServerMessage::Trial {
        trial: n,
        token: format!("{n:032x}"),
        strategy,
        family: None,
    }
}

fn go(n: u32, peer: SocketAddr, delay_ms: u64, strategy: Strategy) -> ServerMessage {
    go_mapped(n, peer, delay_ms, strategy, None)
}

/// `go` with a `mapped` move (`mapped` trials: listen, connect or neither).
fn go_mapped(
    n: u32,
    peer: SocketAddr,
    delay_ms: u64,
    strategy: Strategy,
    mapped: Option<MappedSide>,
) -> ServerMessage {
    ServerMessage::Go {
        trial: n,
        peer,
        delay_ms,
        nonce: "a1".repeat(16),
        strategy,
        injected_skew_ms: 0,
        timing: None,
        mapped,
    }
}

/// Runs one pairing against the script; returns the record and how long it took.
async fn pair_with(script: Vec<ServerMessage>, addresses: AddressPolicy) -> (PairingRun, Duration) {
    let coordinator = ScriptedCoordinator::start(script).await;
    let options = PairingOptions {
        server: coordinator.addr,
        registrars: vec![coordinator.addr],
        hello: volunteer(None),
        read_timeout: Duration::from_secs(2),
        max_wait: Duration::from_secs(2),
        addresses,
        node: None,
        mapper: None,
    };
    let started = Instant::now();
    let run = tokio::time::timeout(
        Duration::from_secs(20),
        probe::run_pairing(&options, |_| {}, std::future::pending()),
    )
    .await
    .expect("the pairing ends")
    .expect("paired");
    let took = started.elapsed();
    // The coordinator reads the bye on its own time.
    let said_bye = || {
        coordinator
            .received
            .lock()
            .unwrap()
            .iter()
            .any(|m| matches!(m, ClientMessage::Bye))
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while !said_bye() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(said_bye(), "the probe says bye to a coordinator it refuses");
    (run, took)
}

fn assert_refused(run: &PairingRun, took: Duration, rule: ViolationRule, trial: Option<u32>) {
    let violation = run
        .pairing
        .coordinator_violation
        .as_ref()
        .unwrap_or_else(|| panic!("no violation recorded: {:#?}", run.pairing));
    assert_eq!(violation.rule, rule, "{violation:?}");
    assert_eq!(violation.trial, trial, "{violation:?}");
    assert_eq!(run.pairing.ended, PairingEnded::CoordinatorLost);
    assert!(took < PROMPTLY, "took {took:?}");
}

/// A loopback endpoint nobody listens on: a planned trial to it ends at once (refused).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((ip(1), 0)).unwrap();
    listener.local_addr().unwrap()
}

/// Lets any stray connect reach the target before counting.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn trials_beyond_the_plan_are_refused_and_never_dialled() {
    let peer = closed_port();
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(1, &[Strategy::Simultaneous]);
    // The measured attack: a plan of one trial, then trial after trial to ports of the coordinator's choosing.
    let mut script = vec![paired(&plan), trial(0, Strategy::Simultaneous)];
    script.push(go(0, peer, 0, Strategy::Simultaneous));
    script.push(ServerMessage::PeerResult {
        trial: 0,
        outcome: TrialOutcome::Refused,
    });
    for n in 1..30 {
        script.push(trial(n, Strategy::Simultaneous));
        script.push(go(n, target.addr, 0, Strategy::Simultaneous));
    }
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::TrialOrder, Some(1));
    assert_eq!(
        run.pairing.trials.len(),
        1,
        "the planned trial ran and is kept"
    );
    settle().await;
    assert_eq!(target.connections(), 0, "nothing reached the target");
}

/// A `mapped` trial with a probe that registered no mapping (it has no
/// mapper): a coordinator that tells it to listen, or gives no mapped move,
/// is refused before anything is sent; `neither` is an `unmapped` trial
/// with no packet; a mapped move on another strategy is refused.
#[tokio::test]
async fn a_mapped_move_that_does_not_fit_the_registration_is_refused() {
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(2, &[Strategy::Mapped, Strategy::Simultaneous]);
    let mapped_go = |n: u32, strategy: Strategy, mapped: Option<MappedSide>| {
        go_mapped(n, target.addr, 0, strategy, mapped)
    };
    for mapped in [Some(MappedSide::Listen), None] {
        let script = vec![
            paired(&plan),
            trial(0, Strategy::Mapped),
            mapped_go(0, Strategy::Mapped, mapped),
        ];
        let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
        assert_refused(&run, took, ViolationRule::Unexpected, Some(0));
    }
    let script = vec![
        paired(&plan),
        trial(0, Strategy::Mapped),
        mapped_go(0, Strategy::Mapped, Some(MappedSide::Neither)),
        ServerMessage::PeerResult {
            trial: 0,
            outcome: TrialOutcome::Unmapped,
        },
        trial(1, Strategy::Simultaneous),
        mapped_go(1, Strategy::Simultaneous, Some(MappedSide::Connect)),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::Unexpected, Some(1));
    assert_eq!(run.pairing.trials.len(), 1);
    assert_eq!(run.pairing.trials[0].outcome, TrialOutcome::Unmapped);
    settle().await;
    assert_eq!(target.connections(), 0, "nothing reached the target");
}

#[tokio::test]
async fn trials_out_of_order_and_a_second_go_are_refused() {
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(5, &[Strategy::Simultaneous]);
    let script = vec![
        paired(&plan),
        trial(2, Strategy::Simultaneous),
        go(2, target.addr, 0, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::TrialOrder, Some(2));

    let script = vec![
        paired(&plan),
        trial(0, Strategy::Simultaneous),
        go(0, closed_port(), 0, Strategy::Simultaneous),
        go(0, target.addr, 0, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::Unexpected, Some(0));
    settle().await;
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn peers_outside_public_addresses_are_refused() {
    // The real policy: a loopback peer is what a coordinator would use to
    // make a probe scan its own host.
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(2, &[Strategy::Simultaneous]);
    for peer in [target.addr, SocketAddr::new(target.addr.ip(), 0)] {
        let script = vec![
            paired(&plan),
            trial(0, Strategy::Simultaneous),
            go(0, peer, 0, Strategy::Simultaneous),
        ];
        let (run, took) = pair_with(script, AddressPolicy::Public).await;
        assert_refused(&run, took, ViolationRule::PeerAddress, Some(0));
        assert!(run.pairing.trials.is_empty());
    }
    settle().await;
    assert_eq!(target.connections(), 0);
}

/// A trial in a family this probe did not offer, or a peer of another
/// family than the trial's, is refused before anything is sent.
#[tokio::test]
async fn a_trial_outside_our_families_or_a_peer_of_another_family_is_refused() {
    let target_v6 = CountingListener::start(std::net::Ipv6Addr::LOCALHOST.into()).await;
    let mut plan = fast_plan(2, &[Strategy::Simultaneous]);
    plan.families = vec![Family::Ipv4, Family::Ipv6];
    // This probe registers at an IPv4 coordinator only: no IPv6 trials.
    let ipv6_trial = ServerMessage::Trial {
        trial: 0,
        token: format!("{:032x}", 0),
        strategy: Strategy::Simultaneous,
        family: Some(Family::Ipv6),
    };
    let script = vec![
        paired(&plan),
        ipv6_trial,
        go(0, target_v6.addr, 0, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::Family, Some(0));
    // An IPv4 trial whose go names an IPv6 peer.
    let script = vec![
        paired(&plan),
        trial(0, Strategy::Simultaneous),
        go(0, target_v6.addr, 0, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::Family, Some(0));
    settle().await;
    assert_eq!(target_v6.connections(), 0, "nothing reached the target");
}

#[tokio::test]
async fn an_endless_start_delay_is_refused_at_once() {
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(2, &[Strategy::Simultaneous]);
    let script = vec![
        paired(&plan),
        trial(0, Strategy::Simultaneous),
        go(0, target.addr, 1 << 63, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::StartDelay, Some(0));
    settle().await;
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn an_endless_attempt_timeout_or_retry_gap_is_refused_at_once() {
    let mut plan = fast_plan(2, &[Strategy::Simultaneous]);
    plan.attempt_timeout_rtt_factor = Some(2.0);
    plan.retry_gap_rtt_factor = Some(0.5);
    let fair = plan.attempt_timing(Duration::from_millis(100)).unwrap();
    for hostile in [
        AttemptTiming {
            attempt_timeout_ms: u32::MAX,
            ..fair
        },
        AttemptTiming {
            retry_gap_ms: plan.retry_gap_cap_ms + 1,
            ..fair
        },
    ] {
        let target = CountingListener::start(ip(1)).await;
        let mut go = go(0, target.addr, 0, Strategy::Simultaneous);
        if let ServerMessage::Go { timing, .. } = &mut go {
            *timing = Some(hostile);
        }
        let script = vec![paired(&plan), trial(0, Strategy::Simultaneous), go];
        let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
        assert_refused(&run, took, ViolationRule::Timing, Some(0));
        settle().await;
        assert_eq!(target.connections(), 0, "{hostile:?}");
    }
}

#[tokio::test]
async fn a_prime_with_another_ttl_than_the_plans_is_refused() {
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(2, &[Strategy::LowTtl]);
    let script = vec![
        paired(&plan),
        trial(0, Strategy::LowTtl),
        ServerMessage::Prime {
            trial: 0,
            peer: target.addr,
            ttl: 64,
        },
        go(0, target.addr, 0, Strategy::LowTtl),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::Ttl, Some(0));
    settle().await;
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn a_plan_above_the_hard_caps_is_refused_before_any_trial() {
    let target = CountingListener::start(ip(1)).await;
    let mut plan = fast_plan(2, &[Strategy::Simultaneous]);
    plan.max_attempts = 20;
    let script = vec![
        paired(&plan),
        trial(0, Strategy::Simultaneous),
        go(0, target.addr, 0, Strategy::Simultaneous),
    ];
    let (run, took) = pair_with(script, AddressPolicy::PublicOrLoopback).await;
    assert_refused(&run, took, ViolationRule::PlanLimit, None);
    assert!(run
        .pairing
        .coordinator_violation
        .as_ref()
        .unwrap()
        .detail
        .contains("max_attempts"));
    settle().await;
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn a_whole_run_keeps_its_result_with_the_violation_in_the_spool() {
    let echo = support::echo::start(support::echo::fast_config()).await;
    let target = CountingListener::start(ip(1)).await;
    let plan = fast_plan(3, &[Strategy::Simultaneous]);
    let coordinator = ScriptedCoordinator::start(vec![
        paired(&plan),
        trial(0, Strategy::Simultaneous),
        go(0, target.addr, 0, Strategy::Simultaneous),
    ])
    .await;
    let spool = tempfile::tempdir().unwrap();
    let options = RunOptions {
        coordinator: vec![coordinator.addr.to_string()],
        echo: vec![echo.primary().to_string()],
        collector: None,
        ca_file: None,
        spool: spool.path().to_path_buf(),
        label: None,
        pair_code: None,
        max_wait: Duration::from_secs(2),
        addresses: AddressPolicy::Public,
        node: None,
        // Never ask the machine's own gateway from a test.
        port_mapping: None,
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        probe::run(options, |_| {}, Stop::new().1),
    )
    .await
    .expect("the run ends")
    .expect("the run itself works");
    assert_eq!(outcome.ending, RunEnding::Paired);
    let spooled = std::fs::read_to_string(&outcome.spooled).unwrap();
    let result = RunResult::from_json(&spooled).unwrap();
    let violation = result.pairings[0].coordinator_violation.as_ref().unwrap();
    assert_eq!(violation.rule, ViolationRule::PeerAddress);
    assert!(
        violation.detail.contains("127.0.0.0/24") && violation.detail.contains("loopback"),
        "addressed cut to prefixes: {}",
        violation.detail
    );
    settle().await;
    assert_eq!(target.connections(), 0);
}

/// An echo server that announces a stranger's endpoint as one of its own and
/// as the client's public endpoint, then refuses every request.
async fn hostile_echo(stranger: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let observed = echo::ServerMessage::Observed {
                observed: stranger,
                reached: addr,
                endpoints: vec![addr, stranger, SocketAddr::new(stranger.ip(), addr.port())],
                request_timeout_ms: 500,
            };
            let _ = stream.write_all(&echo::encode_server(&observed)).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                drop(stream);
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_classifier_dials_only_the_echo_ips_it_was_given() {
    let stranger = CountingListener::start(ip(3)).await;
    let (echo_addr, echo_task) = hostile_echo(stranger.addr).await;
    let config = ClassifyConfig {
        servers: vec![echo_addr.to_string()],
        connect_timeout: Duration::from_secs(1),
        allocation_probes: 3,
        trust: EchoTrust::GivenIps(AddressPolicy::Public),
        ..ClassifyConfig::default()
    };
    let classification = tokio::time::timeout(Duration::from_secs(20), classify(&config))
        .await
        .expect("classification ends")
        .expect("classification runs");
    echo_task.abort();
    let o = &classification.observations;
    assert!(
        o.mapping
            .iter()
            .chain(&o.allocation)
            .all(|p| p.server.ip() == echo_addr.ip()),
        "only the given IP: {o:#?}"
    );
    assert_eq!(
        o.hairpin, None,
        "no hairpin test towards a loopback 'public' endpoint"
    );
    settle().await;
    assert_eq!(stranger.connections(), 0, "nothing reached the stranger");
}
