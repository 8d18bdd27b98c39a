//! One TCP hole-punching trial: coordinated connects from a known port to the
//! peer's public endpoint, retries, the nonce proof, and the Bitcoin handshake
//! over the punched socket, or the volunteer's own node on it (bridge mode,
//! [`crate::node::bridge`]). Outcomes are data ([`TrialRecord`]); nothing here
//! returns `Err` for what the network did.
//!
//! Layout: [`attempt`] (one connect from the trial port, errno read as a
//! result), [`nonce`] (proving the connection reached the paired peer), this
//! file (the strategies and the record), [`hard`] (the many-SYN moves of
//! `predict` and `birthday`). Ports are bound by
//! [`crate::net::socket`], shared with classification and the lab.

pub mod attempt;
pub mod hard;
pub mod nonce;

use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::handshake::{BitcoinNetwork, HandshakeBy, Role, Transport};
use punchscope_analysis::plan::{AttemptTiming, Plan, PLAN_VERSION};
use punchscope_analysis::portmap::MappedSide;
use punchscope_analysis::trial::{
    Attempt, AttemptResult, ClaimNonce, Completion, SocketClaim, Strategy, TrialOutcome,
    TrialRecord,
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
    /// The plan's injected skew: the most either side may start late (only
    /// the responder does), so a listener waits for it whichever side it is.
    pub skew_cap: Duration,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
    pub retry_gap: Duration,
    pub retry_jitter: Duration,
    /// `predict` and `birthday`: this side's move (set by the pairing from
    /// both verdicts, after the guard saw its targets); `None` otherwise.
    pub hard: Option<hard::HardMove>,
    /// The pair RTT the attempt timing was derived from, when it was (for the record).
    pub pair_rtt_ms: Option<u32>,
    /// `mapped`: listen behind our mapping, connect to the peer's, or do
    /// nothing (the coordinator's `go` said, the guard checked); `None` otherwise.
    pub mapped: Option<MappedSide>,
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
            skew_cap: millis(plan.injected_skew_ms),
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
            hard: None,
            pair_rtt_ms: None,
            mapped: None,
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
        trial_id: Some(spec.nonce.clone()),
        local_port: spec.local.port(),
        public_port: spec.public_port,
        peer_port: Some(spec.peer.port()),
        start_delay_ms: ms(spec.start_delay),
        injected_skew_ms: ms(spec.injected_skew),
        timing: Some(spec.timing()),
        ..TrialRecord::unrun(spec.trial, spec.strategy, spec.role, TrialOutcome::Timeout)
    };
    match spec.mapped {
        // Neither side holds a mapping: nothing to try, nothing is sent.
        Some(MappedSide::Neither | MappedSide::Other) => {
            record.outcome = TrialOutcome::Unmapped;
            return (record, None);
        }
        Some(MappedSide::Listen) => {
            // Behind our mapping: only listen, for as long as the peer may
            // keep trying; our listener takes only the peer's address.
            let listener = match socket::listen_on(spec.local) {
                Ok(listener) => listener,
                Err(e) => {
                    return local_error(record, format!("cannot listen on {}: {e}", spec.local))
                }
            };
            let peer_tries = tokio::time::sleep_until(go_at + peer_window(spec));
            let no_connect = async {
                peer_tries.await;
                None
            };
            let race = race_for_nonce(spec, no_connect, Some(&listener)).await;
            drop(listener);
            return finish(go_at, record, race);
        }
        // Connecting to the peer's mapping is a plain connect with retries.
        Some(MappedSide::Connect) | None => {}
    }
    if let Some(hard_move) = &spec.hard {
        tokio::time::sleep_until(go_at + spec.start_delay + spec.injected_skew).await;
        let (connected, hard_record) =
            hard::run(spec, hard_move, go_at, &mut record.attempts).await;
        record.hard = Some(hard_record);
        let race = race_for_nonce(spec, std::future::ready(connected), None).await;
        return finish(go_at, record, race);
    }
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

    let connect = async {
        let stream = connect_with_retries(spec, go_at, &mut record).await;
        stream.map(|stream| (stream, Completion::Connect))
    };
    let race = race_for_nonce(spec, connect, listener.as_ref()).await;
    drop(listener);
    finish(go_at, record, race)
}

/// The record's outcome from the race: the socket that carried the nonce,
/// or why none did.
fn finish(go_at: Instant, mut record: TrialRecord, race: Race) -> (TrialRecord, Option<TcpStream>) {
    let Some(first) = race.claims.first() else {
        record.outcome = outcome_of_attempts(&record.attempts);
        return (record, None);
    };
    record.go_to_established_ms = race.established.map(|at| ms(at.duration_since(go_at)));
    record.completed_by = Some(race.winner.as_ref().map_or(first.by, |(_, by)| *by));
    if race.claims.len() > 1 {
        record.claims = race.claims.clone();
    }
    match race.winner {
        Some((stream, _)) => {
            // Under `predict` and `birthday` the port that answered is one of many tried.
            if let Ok(peer) = stream.peer_addr() {
                record.peer_port = Some(peer.port());
            }
            record.nonce_verified = true;
            record.outcome = TrialOutcome::Connected;
            (record, Some(stream))
        }
        None => {
            let foreign = race.claims.iter().any(|c| c.nonce == ClaimNonce::Foreign);
            record.outcome = if foreign {
                TrialOutcome::WrongPeer
            } else {
                TrialOutcome::Timeout
            };
            record.error = Some(race.failures.join("; "));
            (record, None)
        }
    }
}

/// What the sockets that reported the connection showed.
struct Race {
    /// The socket that carried the peer's nonce, if one did.
    winner: Option<(TcpStream, Completion)>,
    /// Every socket that reported the connection, in order.
    claims: Vec<SocketClaim>,
    /// When the first of them did.
    established: Option<Instant>,
    /// Each failed nonce exchange, in words.
    failures: Vec<String>,
}

/// Runs our connect attempts (or a hard-NAT move: whatever socket it
/// connected) and (under strategies that listen) our listener side by side, and the nonce exchange on every socket that
/// reports the connection, as it does: our connect and our listener can
/// both claim one 4-tuple (a simultaneous open next to an accept), and only
/// the nonce tells which one reached the peer. The first that carries it
/// wins; the others are closed. The race ends with a winner, or when the
/// connect attempts are over and no exchange is pending.
async fn race_for_nonce(
    spec: &TrialSpec,
    connect: impl std::future::Future<Output = Option<(TcpStream, Completion)>>,
    listener: Option<&tokio::net::TcpListener>,
) -> Race {
    use futures_util::stream::{FuturesUnordered, StreamExt};

    let mut race = Race {
        winner: None,
        claims: Vec::new(),
        established: None,
        failures: Vec::new(),
    };
    tokio::pin!(connect);
    let mut connecting = true;
    let mut exchanges = FuturesUnordered::new();
    let exchange = |mut stream: TcpStream, by: Completion| async move {
        let result = nonce::exchange(&mut stream, &spec.nonce, NONCE_TIMEOUT).await;
        (stream, by, result)
    };
    let claim = |race: &mut Race, by: Completion| {
        race.established.get_or_insert_with(Instant::now);
        race.claims.push(SocketClaim {
            by,
            nonce: ClaimNonce::Unchecked,
        });
    };
    loop {
        let accept = async {
            match listener {
                Some(listener) => accept_from_peer(listener, spec.peer.ip()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            connected = &mut connect, if connecting => {
                connecting = false;
                if let Some((stream, by)) = connected {
                    claim(&mut race, by);
                    exchanges.push(exchange(stream, by));
                }
            }
            stream = accept => {
                claim(&mut race, Completion::Listener);
                exchanges.push(exchange(stream, Completion::Listener));
            }
            Some((stream, by, result)) = exchanges.next() => {
                let index = race
                    .claims
                    .iter()
                    .position(|c| c.by == by && c.nonce == ClaimNonce::Unchecked)
                    .expect("every exchange has its claim");
                match result {
                    Ok(()) => {
                        race.claims[index].nonce = ClaimNonce::Verified;
                        race.winner = Some((stream, by));
                        break;
                    }
                    Err(e) => {
                        race.claims[index].nonce = match outcome_of_nonce_failure(&e) {
                            TrialOutcome::WrongPeer => ClaimNonce::Foreign,
                            _ => ClaimNonce::Missing,
                        };
                        race.failures.push(format!("{by:?} socket: {e}"));
                        close_cleanly(stream).await;
                    }
                }
            }
            else => break,
        }
        if !connecting && exchanges.is_empty() {
            break;
        }
    }
    // Sockets still exchanging lost the race: they stay `unchecked` and close.
    drop(exchanges);
    race
}

/// Closes a socket that lost the race with a FIN rather than a reset where
/// the kernel allows (unread bytes make it a reset), within a short bound.
async fn close_cleanly(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.shutdown()).await;
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

/// The `low_ttl` opening move: a SYN from our trial port whose TTL (IPv6:
/// hop limit) lets it create our own NAT's mapping (or firewall pinhole) but
/// die before the peer's.
pub async fn prime_low_ttl(local: SocketAddr, peer: SocketAddr, ttl: u8) -> std::io::Result<()> {
    let socket = socket::bound(local)?;
    // IPv6 has no TTL: its hop limit does the same.
    match local {
        SocketAddr::V4(_) => socket.set_ttl(u32::from(ttl))?,
        SocketAddr::V6(_) => socket.set_unicast_hops_v6(u32::from(ttl))?,
    }
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

/// How long after `go` the peer's connect attempts may still arrive: the
/// coordinator's delays have both sides start at our start delay, the peer
/// up to the plan's injected skew later; then every attempt with its retry
/// gap and jitter, and one attempt's time more for the last SYN's way.
fn peer_window(spec: &TrialSpec) -> Duration {
    let attempts = spec.max_attempts.max(1);
    spec.start_delay
        + spec.skew_cap
        + spec.attempt_timeout * (attempts + 1)
        + (spec.retry_gap + spec.retry_jitter) * (attempts - 1)
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

    /// Our connect reaches a silent host that accepts (it reports connected
    /// and never shows a nonce) while the real peer reaches our listener: the
    /// listener's socket carries the nonce and wins, and the record names
    /// both claims. Before, the first socket to report won and the trial was
    /// recorded as not connected.
    #[tokio::test]
    async fn when_two_of_our_sockets_claim_the_one_with_the_nonce_wins() {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut spec = TrialSpec::from_plan(
            &default_plan("t"),
            0,
            Role::Initiator,
            free_port(),
            silent.local_addr().unwrap(),
            "n0nce".into(),
        );
        spec.strategy = Strategy::ConnectListen;
        spec.max_attempts = 1;
        spec.attempt_timeout = Duration::from_secs(2);
        let local = spec.local;
        let held = tokio::spawn(async move {
            // Accepts our connect and says nothing.
            let (stream, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(stream);
        });
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut stream = TcpStream::connect(local).await.unwrap();
            nonce::exchange(&mut stream, "n0nce", Duration::from_secs(5)).await
        });
        let (record, stream) = run_trial(&spec, Instant::now()).await;
        assert_eq!(record.outcome, TrialOutcome::Connected, "{record:#?}");
        assert!(stream.is_some() && record.nonce_verified);
        assert_eq!(record.completed_by, Some(Completion::Listener));
        assert_eq!(
            record.claims,
            vec![
                SocketClaim {
                    by: Completion::Connect,
                    nonce: ClaimNonce::Unchecked
                },
                SocketClaim {
                    by: Completion::Listener,
                    nonce: ClaimNonce::Verified
                },
            ]
        );
        assert!(peer.await.unwrap().is_ok(), "the peer saw our nonce");
        held.abort();
    }

    /// `mapped`, listening side: sends nothing, ignores a stranger, and
    /// still accepts the peer when it starts the plan's whole injected skew
    /// late (the responder does, whichever side listens).
    #[tokio::test]
    async fn a_mapped_listener_waits_for_a_late_peer_and_ignores_strangers() {
        let free_port = |ip: &str| {
            std::net::TcpListener::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
        };
        let (local, peer) = (free_port("127.0.0.1"), free_port("127.0.0.3"));
        let mut plan = default_plan("t");
        plan.injected_skew_ms = 2500;
        plan.max_attempts = 1;
        plan.attempt_timeout_ms = 300;
        let spec = TrialSpec {
            strategy: Strategy::Mapped,
            mapped: Some(MappedSide::Listen),
            ..TrialSpec::from_plan(&plan, 0, Role::Initiator, local, peer, "n0nce".into())
        };
        assert!(peer_window(&spec) >= Duration::from_millis(2500 + 300));
        let go_at = Instant::now();
        let stranger = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let socket = socket::bound("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut stream = socket::into_tokio(socket)
                .unwrap()
                .connect(local)
                .await
                .unwrap();
            nonce::exchange(&mut stream, "n0nce", Duration::from_millis(500)).await
        });
        let late_peer = tokio::spawn(async move {
            // The whole skew late, after the listener's own attempt window.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let socket = socket::bound(peer).unwrap();
            let mut stream = socket::into_tokio(socket)
                .unwrap()
                .connect(local)
                .await
                .unwrap();
            nonce::exchange(&mut stream, "n0nce", Duration::from_secs(5)).await
        });
        let (record, stream) = run_trial(&spec, go_at).await;
        assert_eq!(record.outcome, TrialOutcome::Connected, "{record:#?}");
        assert!(stream.is_some());
        assert_eq!(record.completed_by, Some(Completion::Listener));
        assert!(
            record.attempts.is_empty(),
            "the listening side sends nothing"
        );
        assert!(late_peer.await.unwrap().is_ok(), "the peer saw our nonce");
        assert!(
            stranger.await.unwrap().is_err(),
            "a stranger's connection is closed unanswered"
        );
    }

    /// `mapped` with no mapping on either side: `unmapped`, nothing sent.
    #[tokio::test]
    async fn an_unmapped_trial_sends_nothing() {
        let spec = TrialSpec {
            strategy: Strategy::Mapped,
            mapped: Some(MappedSide::Neither),
            ..TrialSpec::from_plan(
                &default_plan("t"),
                0,
                Role::Responder,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                "n0nce".into(),
            )
        };
        let (record, stream) = run_trial(&spec, Instant::now()).await;
        assert_eq!(record.outcome, TrialOutcome::Unmapped);
        assert!(stream.is_none() && record.attempts.is_empty());
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
