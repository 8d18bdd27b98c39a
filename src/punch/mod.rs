//! One TCP hole-punching trial: coordinated connects from a known port to the
//! peer's public endpoint, retries, the nonce proof, and the Bitcoin handshake
//! over the punched socket, or the volunteer's own node on it (bridge mode,
//! [`crate::node::bridge`]). Outcomes are data ([`TrialRecord`]); nothing here
//! returns `Err` for what the network did.
//!
//! Layout: [`attempt`] (one connect from the trial port, errno read as a
//! result), [`nonce`] (proving the connection reached the paired peer), this
//! file (the strategies and the record). Ports are bound by
//! [`crate::net::socket`], shared with classification and the lab.

pub mod attempt;
pub mod nonce;

use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::handshake::{BitcoinNetwork, HandshakeBy, Role, Transport};
use punchscope_analysis::plan::{AttemptTiming, Plan, PLAN_VERSION};
use punchscope_analysis::trial::{
    Attempt, AttemptResult, Completion, Strategy, TrialOutcome, TrialRecord,
};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::btc::{self, Accept, HandshakeConfig};
use crate::net::socket;
use crate::node::bridge::{self, NodeBridge};

/// Everything one side needs to run one trial.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    pub trial: u32,
    pub strategy: Strategy,
    pub role: Role,
    /// The local endpoint to bind (usually 0.0.0.0:PORT, the port the coordinator observed).
    pub local: SocketAddr,
    /// The peer's public endpoint, as the coordinator observed it.
    pub peer: SocketAddr,
    /// Our public port as the coordinator observed it (for the record).
    pub public_port: Option<u16>,
    /// The nonce both sides must show each other.
    pub nonce: String,
    /// Wait after `go` before the first SYN, so both sides' SYNs leave together.
    pub start_delay: Duration,
    /// Extra wait injected for skew experiments.
    pub injected_skew: Duration,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    pub retry_gap: Duration,
    pub retry_jitter: Duration,
    /// The pair RTT the attempt timing was derived from, when it was (for the record).
    pub pair_rtt_ms: Option<u32>,
}

/// The Bitcoin handshake to run over a punched socket.
#[derive(Debug, Clone)]
pub struct HandshakeSpec {
    pub transport: Transport,
    pub network: BitcoinNetwork,
    pub step_timeout: Duration,
}

impl TrialSpec {
    /// One side of trial `trial` under `plan`: the plan's strategy for it and
    /// its attempt timing; the responder starts the plan's injected skew late,
    /// as the coordinator has it. No start delay and no public port are
    /// known here: a coordinated caller sets them from `go` and registration.
    pub fn from_plan(
        plan: &Plan,
        trial: u32,
        role: Role,
        local: SocketAddr,
        peer: SocketAddr,
        nonce: String,
    ) -> TrialSpec {
        let injected_skew = match role {
            Role::Initiator => Duration::ZERO,
            Role::Responder => millis(plan.injected_skew_ms),
        };
        TrialSpec {
            trial,
            strategy: plan.strategy_of(trial),
            role,
            local,
            peer,
            public_port: None,
            nonce,
            start_delay: Duration::ZERO,
            injected_skew,
            attempt_timeout: millis(plan.attempt_timeout_ms),
            max_attempts: plan.max_attempts,
            retry_gap: millis(plan.retry_gap_ms),
            retry_jitter: millis(plan.retry_jitter_ms),
            pair_rtt_ms: None,
        }
    }

    /// This spec with the attempt timing a coordinator sent in `go` (already
    /// checked against the plan by the probe's guard).
    pub fn with_timing(self, timing: &AttemptTiming) -> TrialSpec {
        TrialSpec {
            attempt_timeout: millis(timing.attempt_timeout_ms),
            retry_gap: millis(timing.retry_gap_ms),
            retry_jitter: millis(timing.retry_jitter_ms),
            pair_rtt_ms: timing.pair_rtt_ms,
            ..self
        }
    }

    /// The attempt timing this spec runs with, as the trial record keeps it.
    pub fn timing(&self) -> AttemptTiming {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        AttemptTiming {
            attempt_timeout_ms: ms(self.attempt_timeout),
            retry_gap_ms: ms(self.retry_gap),
            retry_jitter_ms: ms(self.retry_jitter),
            pair_rtt_ms: self.pair_rtt_ms,
        }
    }
}

impl HandshakeSpec {
    /// The handshake of trial `trial` under `plan`: its transport, network and step deadline.
    pub fn from_plan(plan: &Plan, trial: u32) -> HandshakeSpec {
        HandshakeSpec {
            transport: plan.transport_of(trial),
            network: plan.network,
            step_timeout: millis(plan.handshake_step_ms),
        }
    }
}

/// A plan of nothing but the defaults of `analysis::plan`, for trials no
/// coordinator planned (a manual punch, the lab's own pairs): callers
/// override what they choose, and every other value is the plan's.
pub fn default_plan(name: &str) -> Plan {
    debug_assert!(!name.contains(['"', '\\', '\n']), "a plain name");
    let text = format!("version = {PLAN_VERSION}\nname = \"{name}\"\n");
    Plan::from_toml(&text).expect("the plan's defaults are a valid plan")
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// How long the nonce exchange may take after connecting.
const NONCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the trial from the moment `go` arrived; returns the record and, if
/// it connected to the right peer, the stream.
pub async fn run_trial(spec: &TrialSpec, go_at: Instant) -> (TrialRecord, Option<TcpStream>) {
    let mut record = TrialRecord {
        trial: spec.trial,
        trial_id: Some(spec.nonce.clone()),
        strategy: spec.strategy,
        role: spec.role,
        local_port: spec.local.port(),
        public_port: spec.public_port,
        peer_port: Some(spec.peer.port()),
        outcome: TrialOutcome::Timeout,
        attempts: Vec::new(),
        go_to_established_ms: None,
        completed_by: None,
        nonce_verified: false,
        start_delay_ms: ms(spec.start_delay),
        injected_skew_ms: ms(spec.injected_skew),
        peer_outcome: None,
        handshake_by: HandshakeBy::Punchscope,
        handshake: None,
        node_bridge: None,
        error: None,
        timing: Some(spec.timing()),
    };
    // The listener exists before our first SYN. Under `connect_listen` it takes
    // a peer SYN from an unpredicted port (a symmetric NAT); under `low_ttl` it
    // answers the peer's SYN that our primed NAT admits whenever it comes, so
    // an early SYN never meets a host without a socket (whose RST would tear
    // both NATs' sessions down).
    let listener = if uses_listener(spec.strategy) {
        match socket::listen_on(spec.local) {
            Ok(listener) => Some(listener),
            Err(e) => return local_error(record, format!("cannot listen on {}: {e}", spec.local)),
        }
    } else {
        None
    };
    tokio::time::sleep_until(go_at + spec.start_delay + spec.injected_skew).await;

    let connected = match &listener {
        None => connect_with_retries(spec, go_at, &mut record)
            .await
            .map(|s| (s, Completion::Connect)),
        Some(listener) => {
            tokio::select! {
                stream = connect_with_retries(spec, go_at, &mut record) => stream.map(|s| (s, Completion::Connect)),
                accepted = accept_from_peer(listener, spec.peer.ip()) => Some((accepted, Completion::Listener)),
            }
        }
    };
    drop(listener);
    let Some((mut stream, completion)) = connected else {
        record.outcome = outcome_of_attempts(&record.attempts);
        return (record, None);
    };
    record.go_to_established_ms = Some(ms(go_at.elapsed()));
    record.completed_by = Some(completion);
    match nonce::exchange(&mut stream, &spec.nonce, NONCE_TIMEOUT).await {
        Ok(()) => {
            record.nonce_verified = true;
            record.outcome = TrialOutcome::Connected;
            (record, Some(stream))
        }
        Err(e) => {
            record.outcome = outcome_of_nonce_failure(&e);
            record.error = Some(format!("{completion:?} socket: {e}"));
            (record, None)
        }
    }
}

/// What a failed nonce exchange says. Only a nonce line that is not ours
/// proves another host answered (`wrong_peer`). A socket that reported
/// connected but carried no nonce (silence, close, reset) never reached the
/// peer end to end, e.g. because a NAT dropped or mistranslated the other
/// half of the handshake: the trial did not connect, and is not `wrong_peer`.
fn outcome_of_nonce_failure(error: &nonce::NonceError) -> TrialOutcome {
    use nonce::NonceError;
    match error {
        NonceError::Mismatch | NonceError::Garbage => TrialOutcome::WrongPeer,
        NonceError::Timeout(_) | NonceError::Closed | NonceError::Io(_) => TrialOutcome::Timeout,
    }
}

/// Runs the trial and, if it connected, the Bitcoin handshake over the punched
/// socket: the coordinator's initiator starts it, the responder answers.
pub async fn run_trial_with_handshake(
    spec: &TrialSpec,
    handshake: &HandshakeSpec,
    go_at: Instant,
) -> TrialRecord {
    let (mut record, stream) = run_trial(spec, go_at).await;
    let Some(stream) = stream else {
        return record;
    };
    let config = HandshakeConfig {
        network: handshake.network,
        step_timeout: handshake.step_timeout,
        peer_addr: Some(spec.peer),
        ..HandshakeConfig::default()
    };
    let result = match spec.role {
        Role::Initiator => btc::initiate(stream, handshake.transport, &config).await,
        Role::Responder => btc::respond(stream, Accept::Both, &config).await,
    };
    match result {
        Ok(handshake) => record.handshake = Some(handshake),
        Err(e) => record.error = Some(format!("handshake tool failure: {e}")),
    }
    record
}

/// Runs the trial and, if it connected, hands the punched socket to the
/// volunteer's own node (bridge mode) instead of running punchscope's
/// handshake: the record's `node_bridge` says what the node made of the
/// peer. `handshake.step_timeout` bounds the node's handshake (twice it, as
/// the node also has to connect), within what the coordinator allows a trial.
pub async fn run_trial_with_node(
    spec: &TrialSpec,
    handshake: &HandshakeSpec,
    node: &NodeBridge,
    go_at: Instant,
) -> TrialRecord {
    let (mut record, stream) = run_trial(spec, go_at).await;
    record.handshake_by = HandshakeBy::Nodes;
    if let Some(stream) = stream {
        let within = handshake.step_timeout * 2;
        record.node_bridge = Some(bridge::run(stream, spec.role, node, within).await);
    }
    record
}

/// The `low_ttl` opening move: a SYN from our trial port whose TTL lets it
/// create our own NAT's mapping but die before the peer's NAT.
pub async fn prime_low_ttl(local: SocketAddr, peer: SocketAddr, ttl: u8) -> std::io::Result<()> {
    let socket = socket::bound(local)?;
    socket.set_ttl(u32::from(ttl))?;
    let stream = socket::into_tokio(socket)?;
    // connect() sends the SYN at once; the attempt itself is expected to fail
    // (time exceeded) or hang, and is abandoned: closing a half-open socket sends nothing.
    let _ = tokio::time::timeout(Duration::from_millis(20), stream.connect(peer)).await;
    Ok(())
}

async fn connect_with_retries(
    spec: &TrialSpec,
    go_at: Instant,
    record: &mut TrialRecord,
) -> Option<TcpStream> {
    for attempt in 0..spec.max_attempts {
        if attempt > 0 {
            let jitter_ms = rand::thread_rng().gen_range(0..=spec.retry_jitter.as_millis() as u64);
            tokio::time::sleep(spec.retry_gap + Duration::from_millis(jitter_ms)).await;
        }
        let started = Instant::now();
        let result = attempt::connect_from(spec.local, spec.peer, spec.attempt_timeout).await;
        let result = match result {
            Ok(stream) => match stream.peer_addr() {
                // A socket can look connected after EADDRNOTAVAIL when a listener
                // took the 4-tuple; only a real peer address counts.
                Ok(addr) if addr == spec.peer => Ok(stream),
                Ok(addr) => Err(AttemptResult::Error {
                    detail: format!("connected to {addr}, not the peer"),
                }),
                Err(e) => Err(attempt::result_of(&e)),
            },
            Err(attempt::ConnectError::Timeout) => Err(AttemptResult::Timeout),
            Err(attempt::ConnectError::Io(e)) => Err(attempt::result_of(&e)),
        };
        let connected = result.is_ok();
        record.attempts.push(Attempt {
            started_ms: ms(started.duration_since(go_at)),
            duration_ms: ms(started.elapsed()),
            result: match &result {
                Ok(_) => AttemptResult::Connected,
                Err(r) => r.clone(),
            },
        });
        if connected {
            return result.ok();
        }
        let taken = matches!(&result, Err(r) if taken_by_listener(r));
        if uses_listener(spec.strategy) && taken {
            // The 4-tuple belongs to a connection our listener accepted: give it the win.
            tokio::time::sleep(spec.attempt_timeout).await;
            return None;
        }
    }
    // Out of attempts: with a listener still racing, keep it in the race until it too gives up.
    if uses_listener(spec.strategy) {
        tokio::time::sleep(spec.attempt_timeout).await;
    }
    None
}

/// Strategies that also listen on the trial port while connecting.
fn uses_listener(strategy: Strategy) -> bool {
    matches!(strategy, Strategy::ConnectListen | Strategy::LowTtl)
}

/// Accepts the peer's connection on our trial port; strangers are closed and ignored.
async fn accept_from_peer(
    listener: &tokio::net::TcpListener,
    peer_ip: std::net::IpAddr,
) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, from)) if from.ip() == peer_ip => return stream,
            Ok(_) => continue,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// An attempt that found its 4-tuple already held by a connection our own
/// listener took (EADDRNOTAVAIL): the peer's SYN came first. Not a local
/// failure: the race belongs to the listener.
fn taken_by_listener(result: &AttemptResult) -> bool {
    matches!(result, AttemptResult::Error { detail } if detail.contains("EADDRNOTAVAIL"))
}

fn outcome_of_attempts(attempts: &[Attempt]) -> TrialOutcome {
    if attempts.iter().any(|a| taken_by_listener(&a.result)) {
        // Our listener held the peer's connection and never completed it.
        return TrialOutcome::Timeout;
    }
    match attempts.last().map(|a| &a.result) {
        Some(AttemptResult::Refused) => TrialOutcome::Refused,
        Some(AttemptResult::Unreachable) => TrialOutcome::Unreachable,
        Some(AttemptResult::Error { .. })
            if attempts
                .iter()
                .all(|a| matches!(a.result, AttemptResult::Error { .. })) =>
        {
            TrialOutcome::LocalError
        }
        _ => TrialOutcome::Timeout,
    }
}

fn local_error(mut record: TrialRecord, error: String) -> (TrialRecord, Option<TcpStream>) {
    record.outcome = TrialOutcome::LocalError;
    record.error = Some(error);
    (record, None)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_foreign_nonce_is_the_wrong_peer() {
        use nonce::NonceError;
        assert_eq!(
            outcome_of_nonce_failure(&NonceError::Mismatch),
            TrialOutcome::WrongPeer
        );
        assert_eq!(
            outcome_of_nonce_failure(&NonceError::Garbage),
            TrialOutcome::WrongPeer
        );
        for silent in [
            NonceError::Timeout(Duration::from_secs(5)),
            NonceError::Closed,
            NonceError::Io(std::io::ErrorKind::ConnectionReset.into()),
        ] {
            assert_eq!(
                outcome_of_nonce_failure(&silent),
                TrialOutcome::Timeout,
                "{silent}"
            );
        }
    }

    #[test]
    fn a_tuple_taken_by_our_listener_is_not_a_local_error() {
        let attempt = |result| Attempt {
            started_ms: 0.0,
            duration_ms: 0.1,
            result,
        };
        let taken = attempt(AttemptResult::Error {
            detail: "EADDRNOTAVAIL: Cannot assign requested address (os error 99)".into(),
        });
        assert_eq!(outcome_of_attempts(&[taken]), TrialOutcome::Timeout);
        let bind_failed = attempt(AttemptResult::Error {
            detail: "Address already in use".into(),
        });
        assert_eq!(
            outcome_of_attempts(&[bind_failed]),
            TrialOutcome::LocalError
        );
    }

    #[test]
    fn specs_take_the_plan_and_the_responder_takes_the_skew() {
        let mut plan = default_plan("t");
        plan.strategies = vec![Strategy::Simultaneous, Strategy::LowTtl];
        plan.transports = vec![Transport::V1, Transport::V2];
        plan.network = BitcoinNetwork::Regtest;
        plan.injected_skew_ms = 150;
        plan.attempt_timeout_ms = 1234;
        plan.max_attempts = 7;
        plan.retry_gap_ms = 11;
        plan.retry_jitter_ms = 22;
        plan.handshake_step_ms = 3456;
        let (local, peer) = (
            "0.0.0.0:4000".parse().unwrap(),
            "192.0.2.1:5000".parse().unwrap(),
        );
        let initiator = TrialSpec::from_plan(&plan, 1, Role::Initiator, local, peer, "n".into());
        assert_eq!(initiator.strategy, Strategy::LowTtl);
        assert_eq!(initiator.attempt_timeout, Duration::from_millis(1234));
        assert_eq!(initiator.max_attempts, 7);
        assert_eq!(initiator.retry_gap, Duration::from_millis(11));
        assert_eq!(initiator.retry_jitter, Duration::from_millis(22));
        assert_eq!(initiator.injected_skew, Duration::ZERO);
        assert_eq!(initiator.start_delay, Duration::ZERO);
        assert_eq!((initiator.local, initiator.peer), (local, peer));
        let responder = TrialSpec::from_plan(&plan, 2, Role::Responder, local, peer, "n".into());
        assert_eq!(responder.strategy, Strategy::Simultaneous);
        assert_eq!(responder.injected_skew, Duration::from_millis(150));
        let handshake = HandshakeSpec::from_plan(&plan, 1);
        assert_eq!(handshake.transport, Transport::V2);
        assert_eq!(handshake.network, BitcoinNetwork::Regtest);
        assert_eq!(handshake.step_timeout, Duration::from_millis(3456));
        assert_eq!(initiator.timing(), plan.fixed_timing());
        let timing = AttemptTiming {
            attempt_timeout_ms: 400,
            retry_gap_ms: 100,
            retry_jitter_ms: 50,
            pair_rtt_ms: Some(200),
        };
        let sent = initiator.with_timing(&timing);
        assert_eq!(sent.attempt_timeout, Duration::from_millis(400));
        assert_eq!(sent.retry_gap, Duration::from_millis(100));
        assert_eq!(sent.retry_jitter, Duration::from_millis(50));
        assert_eq!(sent.timing(), timing);
    }
}
