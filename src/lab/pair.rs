//! Trials between two lab hosts coordinated by the lab itself, a perfect
//! coordinator sharing one clock with both sides, and the skew experiment built on it.
//!
//! Each side learns its public endpoint for the trial port from an echo server
//! in the internet namespace (as a coordinator observes it), `low_ttl` trials
//! are primed first, then both sides run the real trial code from the same
//! instant (plus any injected skew on the responder).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use punchscope_analysis::handshake::Role;
use punchscope_analysis::plan::Plan;
use punchscope_analysis::trial::{Strategy, TrialOutcome, TrialRecord};
use serde::Serialize;

use super::instance::{Lab, LabError};
use crate::net::line::LineConnection;
use crate::net::socket;
use crate::proto::echo::{self, ServerMessage};
use crate::punch::{self, HandshakeSpec, TrialSpec};

/// One trial between two hosts of a lab.
#[derive(Debug, Clone)]
pub struct PairTrial {
    pub initiator: String,
    pub responder: String,
    pub trial: u32,
    /// Strategy (`plan.strategy_of(trial)`), attempt timing, low TTL, and the
    /// responder's extra start delay (`injected_skew_ms`).
    pub plan: Plan,
    /// Local port of each side (initiator, responder).
    pub ports: (u16, u16),
    /// Echo server endpoint (in the internet namespace) that reports observed endpoints.
    pub echo: SocketAddr,
    /// Run this Bitcoin handshake over the punched socket.
    pub handshake: Option<HandshakeSpec>,
    /// `low_ttl` priming TTL of each side (initiator, responder), as the
    /// coordinator sends it from each side's measured path; `None`: the
    /// plan's fixed `low_ttl` for both.
    pub prime_ttls: Option<(u8, u8)>,
}

impl PairTrial {
    /// A `strategy` trial under the default plan, with quicker attempts:
    /// lab links answer within milliseconds, so shorter waits only make
    /// failing trials end sooner.
    pub fn new(
        initiator: &str,
        responder: &str,
        trial: u32,
        strategy: Strategy,
        ports: (u16, u16),
        echo: SocketAddr,
    ) -> Self {
        let mut plan = punch::default_plan("lab pair");
        plan.strategies = vec![strategy];
        plan.attempt_timeout_ms = 1500;
        plan.max_attempts = 3;
        plan.retry_gap_ms = 100;
        plan.retry_jitter_ms = 300;
        Self {
            initiator: initiator.to_string(),
            responder: responder.to_string(),
            trial,
            plan,
            ports,
            echo,
            handshake: None,
            prime_ttls: None,
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.plan.strategy_of(self.trial)
    }
}

/// Asks the echo server which public endpoint it sees for `local`; the
/// connect and the answer each get five seconds.
pub async fn observe(local: SocketAddr, echo_server: SocketAddr) -> std::io::Result<SocketAddr> {
    const WAIT: Duration = Duration::from_secs(5);
    let socket = socket::into_tokio(socket::bound(local)?)?;
    let stream = tokio::time::timeout(WAIT, socket.connect(echo_server))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut conn = LineConnection::new(stream, echo::MAX_LINE);
    let line = conn
        .read_line_before(tokio::time::Instant::now() + WAIT)
        .await
        .map_err(std::io::Error::other)?;
    match line.as_deref().map(echo::decode_server) {
        Some(Ok(ServerMessage::Observed { observed, .. })) => Ok(observed),
        other => Err(std::io::Error::other(format!(
            "echo server answered {other:?}"
        ))),
    }
}

/// Runs `work` to completion on a runtime of its own, in the calling thread
/// (inside a lab host's namespace).
fn block_on<T>(work: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

fn any_port(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new([0, 0, 0, 0].into(), port))
}

/// Runs one trial on both sides; returns (initiator's record, responder's record).
pub fn run_pair(lab: &Lab, t: &PairTrial) -> Result<(TrialRecord, TrialRecord), LabError> {
    let (a_port, b_port) = t.ports;
    let a_public = lab
        .run_in(&t.initiator, || block_on(observe(any_port(a_port), t.echo)))?
        .map_err(LabError::Traffic)?;
    let b_public = lab
        .run_in(&t.responder, || block_on(observe(any_port(b_port), t.echo)))?
        .map_err(LabError::Traffic)?;
    if t.strategy() == Strategy::LowTtl {
        let prime = |host: &str, port: u16, peer: SocketAddr, ttl: u8| {
            lab.run_in(host, move || {
                block_on(punch::prime_low_ttl(any_port(port), peer, ttl))
            })
        };
        let (a_ttl, b_ttl) = t.prime_ttls.unwrap_or((t.plan.low_ttl, t.plan.low_ttl));
        prime(&t.initiator, a_port, b_public, a_ttl)?.map_err(LabError::Traffic)?;
        prime(&t.responder, b_port, a_public, b_ttl)?.map_err(LabError::Traffic)?;
        // What the coordinator waits for: both sides reported their priming SYN sent.
        std::thread::sleep(Duration::from_millis(50));
    }
    let nonce = format!("{:032x}", rand::random::<u128>());
    let spec = |role, port: u16, public: SocketAddr, peer: SocketAddr| TrialSpec {
        public_port: Some(public.port()),
        ..TrialSpec::from_plan(&t.plan, t.trial, role, any_port(port), peer, nonce.clone())
    };
    let a_spec = spec(Role::Initiator, a_port, a_public, b_public);
    let b_spec = spec(Role::Responder, b_port, b_public, a_public);
    let go_at = Instant::now() + Duration::from_millis(20);
    let run = |host: &str, spec: TrialSpec| {
        lab.run_in(host, move || {
            block_on(async {
                let go_at = tokio::time::Instant::from_std(go_at);
                Ok(match &t.handshake {
                    Some(handshake) => {
                        punch::run_trial_with_handshake(&spec, handshake, go_at).await
                    }
                    None => punch::run_trial(&spec, go_at).await.0,
                })
            })
        })
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(&t.initiator, a_spec));
        let b = s.spawn(|| run(&t.responder, b_spec));
        (
            a.join().expect("initiator thread"),
            b.join().expect("responder thread"),
        )
    });
    let mut a = a?.map_err(LabError::Traffic)?;
    let mut b = b?.map_err(LabError::Traffic)?;
    a.peer_outcome = Some(b.outcome);
    b.peer_outcome = Some(a.outcome);
    Ok((a, b))
}

/// Success of one strategy at one skew.
#[derive(Debug, Clone, Serialize)]
pub struct SkewPoint {
    pub strategy: Strategy,
    pub skew_ms: u64,
    pub trials: u32,
    /// Trials where both sides connected and proved the nonce.
    pub successes: u32,
    /// Trials whose initiator saw at least one refused attempt.
    pub with_refusals: u32,
    pub median_attempts: f64,
}

/// The skew experiment: for each skew and strategy, `trials` trials between
/// `initiator` and `responder` (the lab decides their NATs).
pub fn skew_sweep(
    lab: &Lab,
    (initiator, responder): (&str, &str),
    echo: SocketAddr,
    skews: &[Duration],
    strategies: &[Strategy],
    trials: u32,
    max_attempts: u32,
) -> Result<Vec<SkewPoint>, LabError> {
    let mut points = Vec::new();
    let mut port = 30000u16;
    for &strategy in strategies {
        for &skew in skews {
            let mut successes = 0;
            let mut with_refusals = 0;
            let mut attempts = Vec::new();
            for trial in 0..trials {
                let mut t = PairTrial::new(
                    initiator,
                    responder,
                    trial,
                    strategy,
                    (port, port + 1),
                    echo,
                );
                port = port.wrapping_add(2).max(30000);
                t.plan.injected_skew_ms = u32::try_from(skew.as_millis()).unwrap_or(u32::MAX);
                t.plan.max_attempts = max_attempts;
                t.plan.attempt_timeout_ms = 1500;
                t.plan.retry_gap_ms = 200;
                t.plan.retry_jitter_ms = 1000;
                let (a, b) = run_pair(lab, &t)?;
                if a.outcome == TrialOutcome::Connected && b.outcome == TrialOutcome::Connected {
                    successes += 1;
                }
                if a.attempts
                    .iter()
                    .any(|x| x.result == punchscope_analysis::trial::AttemptResult::Refused)
                {
                    with_refusals += 1;
                }
                attempts.push(a.attempts.len() as f64);
            }
            attempts.sort_by(f64::total_cmp);
            points.push(SkewPoint {
                strategy,
                skew_ms: skew.as_millis() as u64,
                trials,
                successes,
                with_refusals,
                median_attempts: attempts.get(attempts.len() / 2).copied().unwrap_or(0.0),
            });
        }
    }
    Ok(points)
}

/// `lab experiment skew`: builds the lab of `scenario` (hosts `alice` and
/// `bob`), an echo server in it, runs [`skew_sweep`] for the simultaneous and
/// low-TTL strategies, and removes the lab.
pub fn skew_experiment(
    scenario: &std::path::Path,
    skews: &[Duration],
    trials: u32,
    max_attempts: u32,
) -> Result<Vec<SkewPoint>, LabError> {
    let lab = super::start_from_file(
        scenario,
        super::LabOptions {
            name: format!("exp{}", std::process::id()),
            event_log: None,
        },
    )?;
    let echo: SocketAddr = "198.51.100.10:3478".parse().expect("constant");
    let service = super::services::EchoService::start(&lab, &[echo])?;
    let points = skew_sweep(
        &lab,
        ("alice", "bob"),
        echo,
        skews,
        &[Strategy::Simultaneous, Strategy::LowTtl],
        trials,
        max_attempts,
    );
    drop(service);
    lab.shutdown()?;
    points
}
