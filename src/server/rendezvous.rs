//! The rendezvous coordinator's tokio driver: accepts connections, frames lines, and runs the sans-io core.
//!
//! One task owns the [`Coordinator`] and is the only place decisions are
//! made; it sleeps until the core's next deadline or the next event. Each
//! connection has a writer task (its outbox, written in order, then a
//! polite close) and a reader task (lines of at most [`MAX_LINE`] bytes,
//! forwarded as events). Read deadlines are the core's timers, so a silent
//! client is closed by the same code that tests cover on a fake clock. A
//! client that does not read what it is sent fills its bounded outbox and is
//! closed, so one slow client cannot make the coordinator buffer without
//! bound. The wire format lives in [`crate::proto::rendezvous`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::net::line::{LineConnection, LineConnectionError};
use crate::proto::rendezvous::coordinator::{
    Action, ConnId, Coordinator, CoordinatorConfig, Stats,
};
use crate::proto::rendezvous::{self as proto, ErrorCode, ProtoError, ServerMessage, MAX_LINE};
use crate::server::metrics::{MetricKind, MetricsText};
use punchscope_analysis::plan::PlanError;

/// Tunables of the coordinator server. `Default` suits a public deployment.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// The protocol core: plan, deadlines, per-IP limits, reference policy.
    pub coordinator: CoordinatorConfig,
    /// Connections served at once; more are told `busy` and closed.
    pub max_connections: usize,
    /// Lines queued for one client before it counts as too slow and is closed.
    pub outbox_lines: usize,
    /// Deadline for writing one line to a client.
    pub write_timeout: Duration,
    /// After shutdown is signalled, how long connections may take to close.
    pub shutdown_grace: Duration,
    /// Where the driver publishes the core's counters (about once a second)
    /// for `/metrics`; `None`: nowhere.
    pub metrics: Option<CoordinatorMetrics>,
}

/// The coordinator's counters as last published by its driver.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorMetrics(Arc<Mutex<Stats>>);

impl CoordinatorMetrics {
    pub fn new() -> CoordinatorMetrics {
        CoordinatorMetrics::default()
    }

    pub fn snapshot(&self) -> Stats {
        self.0.lock().expect("metrics lock").clone()
    }

    fn publish(&self, stats: Stats) {
        *self.0.lock().expect("metrics lock") = stats;
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> String {
        let s = self.snapshot();
        let mut outcomes: Vec<(String, u64)> = s
            .trial_outcomes
            .iter()
            .map(|(outcome, n)| (enum_name(outcome), *n))
            .collect();
        outcomes.sort();
        let mut errors: Vec<(String, u64)> = s
            .errors
            .iter()
            .map(|(code, n)| (enum_name(code), *n))
            .collect();
        errors.sort();
        let limited: u64 = [
            ErrorCode::RateLimited,
            ErrorCode::TooManyConnections,
            ErrorCode::Busy,
        ]
        .iter()
        .filter_map(|code| s.errors.get(code))
        .sum();
        let outcome_rows: Vec<([(&str, &str); 1], u64)> = outcomes
            .iter()
            .map(|(v, n)| ([("outcome", v.as_str())], *n))
            .collect();
        let mut families: Vec<(&str, u64)> = s
            .trials_by_family
            .iter()
            .map(|(family, n)| (family.as_str(), *n))
            .collect();
        families.sort();
        let family_rows: Vec<([(&str, &str); 1], u64)> = families
            .iter()
            .map(|(f, n)| ([("family", *f)], *n))
            .collect();
        let error_rows: Vec<([(&str, &str); 1], u64)> = errors
            .iter()
            .map(|(v, n)| ([("code", v.as_str())], *n))
            .collect();
        MetricsText::new()
            .single(
                "punchscope_coordinator_connections",
                MetricKind::Gauge,
                "Open connections.",
                s.connections as u64,
            )
            .single(
                "punchscope_coordinator_waiting_volunteers",
                MetricKind::Gauge,
                "Volunteers waiting for a peer.",
                s.waiting_volunteers as u64,
            )
            .single(
                "punchscope_coordinator_waiting",
                MetricKind::Gauge,
                "Clients waiting for a peer, reference peers included.",
                s.waiting as u64,
            )
            .single(
                "punchscope_coordinator_pairs",
                MetricKind::Gauge,
                "Pairings running now.",
                s.pairs as u64,
            )
            .single(
                "punchscope_coordinator_pairings_started_total",
                MetricKind::Counter,
                "Pairings started.",
                s.pairings_started,
            )
            .single(
                "punchscope_coordinator_pairings_completed_total",
                MetricKind::Counter,
                "Pairings that ran every trial of the plan.",
                s.pairings_completed,
            )
            .single(
                "punchscope_coordinator_trials_completed_total",
                MetricKind::Counter,
                "Trials both sides reported.",
                s.trials_completed,
            )
            .family(
                "punchscope_coordinator_trials_by_family_total",
                MetricKind::Counter,
                "Trials both sides reported, by IP family.",
                &family_rows
                    .iter()
                    .map(|(l, n)| (&l[..], *n))
                    .collect::<Vec<_>>(),
            )
            .family(
                "punchscope_coordinator_trial_outcomes_total",
                MetricKind::Counter,
                "Each side's reported outcome of completed trials.",
                &outcome_rows
                    .iter()
                    .map(|(l, n)| (&l[..], *n))
                    .collect::<Vec<_>>(),
            )
            .family(
                "punchscope_coordinator_errors_total",
                MetricKind::Counter,
                "Error lines sent to clients, by code.",
                &error_rows
                    .iter()
                    .map(|(l, n)| (&l[..], *n))
                    .collect::<Vec<_>>(),
            )
            .single(
                "punchscope_coordinator_rate_limited_total",
                MetricKind::Counter,
                "Clients refused by a limit (rate_limited, too_many_connections, busy).",
                limited,
            )
            .single(
                "punchscope_coordinator_campaign_previews_total",
                MetricKind::Counter,
                "Campaign previews answered.",
                s.campaign_previews,
            )
            .finish()
    }
}

/// A unit enum's wire name (`rate_limited`, `peer_vanished`).
fn enum_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "other".to_string())
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            coordinator: CoordinatorConfig::default(),
            max_connections: 20_000,
            outbox_lines: 64,
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(3),
            metrics: None,
        }
    }
}

/// What stops the coordinator from starting.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousServerError {
    #[error("cannot listen on {addr}: {cause}; check that the address is assigned to this host and the port is free")]
    Bind { addr: SocketAddr, cause: io::Error },
    #[error("the coordinator's plan is not usable: {0}")]
    Plan(#[from] PlanError),
}

/// Binds the listening socket (SO_REUSEADDR, so a restarted coordinator can
/// bind while old connections sit in TIME_WAIT) with a deep accept backlog
/// for bursts of registrations. `[::]:PORT` serves both families (IPv6
/// trials register over IPv6, IPv4 ones over IPv4), whatever the host's
/// `bindv6only` default; a specific IPv6 address serves IPv6 only. Needs a
/// tokio runtime.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener, RendezvousServerError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if let SocketAddr::V6(v6) = addr {
            socket.set_only_v6(!v6.ip().is_unspecified())?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        TcpListener::from_std(socket.into())
    };
    bind().map_err(|cause| RendezvousServerError::Bind { addr, cause })
}

enum Event {
    Connected {
        conn: ConnId,
        addr: SocketAddr,
        outbox: mpsc::Sender<Arc<[u8]>>,
    },
    Line {
        conn: ConnId,
        line: Result<String, ProtoError>,
    },
    Closed {
        conn: ConnId,
    },
}

/// Serves until `shutdown` completes, then tells every client
/// (`error`/`shutting_down`), closes, waits up to `config.shutdown_grace`
/// and returns.
pub async fn run(
    listener: TcpListener,
    config: RendezvousConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RendezvousServerError> {
    let mut core = Coordinator::new(config.coordinator.clone(), StdRng::from_entropy())?;
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let (events_tx, mut events) = mpsc::channel::<Event>(4096);
    let acceptor = tokio::spawn(accept_loop(
        listener,
        events_tx,
        permits.clone(),
        config.clone(),
    ));
    let mut outboxes: HashMap<ConnId, mpsc::Sender<Arc<[u8]>>> = HashMap::new();
    tokio::pin!(shutdown);
    // Counters are published on a tick, not per event: a snapshot walks every connection.
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    loop {
        let deadline = core.poll_timeout();
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                let now = Instant::now();
                match event {
                    Event::Connected { conn, addr, outbox } => {
                        outboxes.insert(conn, outbox);
                        core.connected(now, conn, addr);
                    }
                    Event::Line { conn, line } => core.line(now, conn, line.as_deref().map_err(Clone::clone)),
                    Event::Closed { conn } => core.closed(now, conn),
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => core.handle_timeout(Instant::now()),
            _ = publish.tick(), if config.metrics.is_some() => {
                if let Some(metrics) = &config.metrics {
                    metrics.publish(core.stats());
                }
            }
        }
        apply(&mut core, &mut outboxes);
    }
    acceptor.abort();
    core.shutdown();
    apply(&mut core, &mut outboxes);
    outboxes.clear();
    // Every connection holds a permit: having them all back means all ended.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(config.shutdown_grace, permits.acquire_many(all)).await;
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

/// Carries out the core's actions. A client whose outbox is full is too
/// slow: it is closed, and the core hears about it like any other close.
fn apply(core: &mut Coordinator, outboxes: &mut HashMap<ConnId, mpsc::Sender<Arc<[u8]>>>) {
    while let Some(action) = core.poll_action() {
        match action {
            Action::Send { conn, msg } => {
                let Some(outbox) = outboxes.get(&conn) else {
                    continue;
                };
                if outbox.try_send(proto::encode_server(&msg).into()).is_err() {
                    outboxes.remove(&conn);
                    core.closed(Instant::now(), conn);
                }
            }
            Action::Close { conn } => {
                outboxes.remove(&conn);
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    events: mpsc::Sender<Event>,
    permits: Arc<Semaphore>,
    config: RendezvousConfig,
) {
    let mut next_id: ConnId = 0;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("rendezvous: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let busy = ServerMessage::Error {
                code: ErrorCode::Busy,
                message: "coordinator busy: too many connections, try again in a minute".into(),
                supported_versions: None,
                retry_after_ms: Some(60_000),
            };
            let _ = stream.try_write(&proto::encode_server(&busy));
            continue;
        };
        next_id += 1;
        let conn = next_id;
        let events = events.clone();
        let config = config.clone();
        tokio::spawn(async move {
            connection(stream, conn, addr, events, &config).await;
            drop(permit);
        });
    }
}

/// Writes the outbox in order until the core closes the connection (drops
/// the outbox), then half-closes and waits briefly for the client's EOF, so
/// the close is a FIN and the last line (an `error`, `done`) is not lost to a
/// RST.
async fn connection(
    stream: TcpStream,
    conn: ConnId,
    addr: SocketAddr,
    events: mpsc::Sender<Event>,
    config: &RendezvousConfig,
) {
    const LINGER: Duration = Duration::from_secs(2);
    let _ = stream.set_nodelay(true);
    let (outbox, mut lines) = mpsc::channel(config.outbox_lines.max(1));
    if events
        .send(Event::Connected { conn, addr, outbox })
        .await
        .is_err()
    {
        return;
    }
    let (read, mut write) = LineConnection::new(stream, MAX_LINE).into_split();
    let mut reader = tokio::spawn(read_lines(read, conn, events.clone()));
    while let Some(line) = lines.recv().await {
        let deadline = tokio::time::Instant::now() + config.write_timeout;
        match write.write_line_before(&line, deadline).await {
            Ok(()) => {}
            Err(_) => {
                let _ = events.send(Event::Closed { conn }).await;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(LINGER, write.shutdown()).await;
    if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}

/// Forwards lines as events until EOF or an unframeable line; after a bad
/// line it only drains (bounded), so the error line can reach the client.
async fn read_lines(
    mut read: LineConnection<OwnedReadHalf>,
    conn: ConnId,
    events: mpsc::Sender<Event>,
) {
    const DRAIN_LIMIT: u64 = 64 * 1024;
    loop {
        let line = match read.read_line().await {
            Ok(Some(line)) => Ok(line),
            Err(LineConnectionError::Line(e)) => Err(ProtoError::from(e)),
            Ok(None) | Err(LineConnectionError::Io(_) | LineConnectionError::Timeout) => {
                let _ = events.send(Event::Closed { conn }).await;
                return;
            }
        };
        let bad = line.is_err();
        if events.send(Event::Line { conn, line }).await.is_err() {
            return;
        }
        if bad {
            read.drain(DRAIN_LIMIT).await;
            return;
        }
    }
}
