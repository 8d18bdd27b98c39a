//! Filtering and hairpin tests: listen on the filtering port, ask for dial-backs, see what arrives.
//!
//! The filtering port has talked only to the primary server endpoint, so a
//! dial-back from any other server endpoint is unsolicited for the NAT,
//! which is what filtering is about. Waits are driven by the server's
//! reports plus a few measured round trips, never a fixed long sleep.

use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::classify::{DialKind, DialObservation, DialOutcome, HairpinObservation};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::probe::{self, ProbeFailure};
use super::socket;
use crate::net::line::LineConnection;
use crate::proto::echo::{self, DialBackRequest, ServerMessage};

/// Most connections the filtering listener accepts in one run.
const MAX_ARRIVALS: usize = 16;
/// Least time to wait for dial-backs after the server accepted a port
/// mapping check's request.
const DIAL_BACK_GRACE: Duration = Duration::from_millis(300);

/// How long after an answer is due to give up on it: half a round trip,
/// at least 50 ms.
pub fn margin(rtt: Duration) -> Duration {
    (rtt / 2).max(Duration::from_millis(50))
}

/// How long to wait for an answer due one round trip from now: the round
/// trip and its margin, and at least 300 ms less one and a half round
/// trips. Near servers leave a run time to spare, so it keeps the patience
/// a loaded host needs at LAN round trips (300 ms); far ones spend that
/// time in the round trips themselves (from 120 ms on, only they count).
pub fn patience(rtt: Duration) -> Duration {
    (rtt + margin(rtt)).max(Duration::from_millis(300).saturating_sub(rtt * 3 / 2))
}

/// The slowest connect round trip the probes of one run have seen so far.
/// On a loaded host (a busy NAT, a starved server) answers slow down for
/// every test at once, so the waits for silence follow it.
#[derive(Debug, Clone, Default)]
pub struct Pace(std::sync::Arc<std::sync::Mutex<Duration>>);

impl Pace {
    /// Notes a measured round trip.
    pub fn saw(&self, rtt: Duration) {
        let mut slowest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slowest = (*slowest).max(rtt);
    }

    /// The slowest round trip seen so far.
    pub fn rtt(&self) -> Duration {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wait after an answer's due time: the slowest round trip and its margin.
    pub fn grace(&self) -> Duration {
        patience(self.rtt())
    }
}

/// How long to wait for a dial that neither arrived nor was reported: a
/// NAT that drops it silently leaves only the clock to decide.
#[derive(Debug, Clone)]
pub struct DialWait {
    /// Wait this long after the server accepted the request (or, once every
    /// dial is reported, after the last report) ...
    pub grace: Duration,
    /// ... or longer while the run's probes see slower round trips ...
    pub pace: Option<Pace>,
    /// ... and never end before this moment.
    pub not_before: Instant,
    /// When the request was written and the round trip it should take: an
    /// acceptance later than that shows a slow server (or NAT), whose dials
    /// will be as late, so twice the lateness is added to the wait.
    pub asked: Option<(Instant, Duration)>,
}

impl DialWait {
    /// The patient wait of a port mapping check: three round trips, at least 300 ms.
    pub fn patient(rtt: Duration) -> DialWait {
        DialWait {
            grace: (rtt * 3).max(DIAL_BACK_GRACE),
            pace: None,
            not_before: Instant::now(),
            asked: None,
        }
    }

    /// When silence after `settled` means the dials were dropped.
    fn until(&self, settled: Instant) -> Instant {
        let grace = match &self.pace {
            Some(pace) => self.grace.max(pace.grace()),
            None => self.grace,
        };
        (settled + grace).max(self.not_before)
    }
}
/// Prefix of the line a hairpin connection carries.
const HAIRPIN_PREFIX: &str = "punchscope-hairpin ";

/// A connection that reached our filtering listener, by what it said first.
#[derive(Debug)]
pub enum Arrival {
    DialBack { token: String, kind: DialKind },
    Hairpin { token: String },
}

/// Aborts the task when dropped, so no listener outlives the run.
pub struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What reached the filtering port, sorted so the dial-back and hairpin tests can run at once.
pub struct Arrivals {
    /// Only `Arrival::DialBack`.
    pub dial_backs: mpsc::Receiver<Arrival>,
    /// Only `Arrival::Hairpin`.
    pub hairpins: mpsc::Receiver<Arrival>,
}

/// Accepts on the filtering port and reports each connection's first line.
pub fn spawn_listener(listener: TcpListener) -> (TaskGuard, Arrivals) {
    let (dial_tx, dial_backs) = mpsc::channel(MAX_ARRIVALS);
    let (hairpin_tx, hairpins) = mpsc::channel(MAX_ARRIVALS);
    let task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..MAX_ARRIVALS {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (dial_tx, hairpin_tx) = (dial_tx.clone(), hairpin_tx.clone());
            readers.spawn(async move {
                let mut conn = LineConnection::new(stream, echo::MAX_LINE);
                match first_line(&mut conn).await {
                    Some(arrival @ Arrival::DialBack { .. }) => {
                        let _ = dial_tx.send(arrival).await;
                    }
                    Some(arrival @ Arrival::Hairpin { .. }) => {
                        let _ = hairpin_tx.send(arrival).await;
                    }
                    None => {}
                }
            });
        }
        while readers.join_next().await.is_some() {}
    });
    (
        TaskGuard(task),
        Arrivals {
            dial_backs,
            hairpins,
        },
    )
}

async fn first_line(conn: &mut LineConnection<TcpStream>) -> Option<Arrival> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let line = conn.read_line_before(deadline).await.ok()??;
    let line = line.trim_end();
    if let Some(token) = line.strip_prefix(HAIRPIN_PREFIX) {
        return Some(Arrival::Hairpin {
            token: token.to_string(),
        });
    }
    match echo::decode_server(line).ok()? {
        ServerMessage::DialBack { token, kind, .. } => Some(Arrival::DialBack { token, kind }),
        _ => None,
    }
}

/// Sends `request` on `control` (the filtering test asks for both
/// filtering dials; a port mapping check for `mapped_port`) and records
/// what the server did and what reached our listener. `Err` carries the
/// server's refusal.
pub async fn dial_back(
    mut control: LineConnection<TcpStream>,
    arrivals: &mut mpsc::Receiver<Arrival>,
    request: DialBackRequest,
    wait: DialWait,
    reply_timeout: Duration,
) -> Result<Vec<DialObservation>, String> {
    control
        .write_line(&echo::encode_request(&request))
        .await
        .map_err(|e| format!("cannot send the dial-back request: {e}"))?;
    dial_back_requested(control, arrivals, &request.token, wait, reply_timeout).await
}

/// As [`dial_back`], for a request with `token` already written on `control`.
pub async fn dial_back_requested(
    control: LineConnection<TcpStream>,
    arrivals: &mut mpsc::Receiver<Arrival>,
    token: &str,
    mut wait: DialWait,
    reply_timeout: Duration,
) -> Result<Vec<DialObservation>, String> {
    let (mut read, mut write) = control.into_split();
    let first = probe::read_message_before(&mut read, Instant::now() + reply_timeout).await;
    let (planned, server_timeout) = match first {
        Err(ProbeFailure::Timeout) => return Err("no answer to the dial-back request".into()),
        Err(e) => return Err(format!("dial-back request failed: {e}")),
        Ok(ServerMessage::DialBackAccepted {
            dials, timeout_ms, ..
        }) => (dials, Duration::from_millis(timeout_ms)),
        Ok(ServerMessage::Error { message, .. }) => return Err(message),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
    };
    let mut dials: Vec<DialObservation> = planned
        .iter()
        .map(|p| DialObservation {
            kind: p.kind,
            from: p.from,
            server_outcome: None,
            received: false,
        })
        .collect();
    // The control connection is read in its own task, so the loop below
    // races two channels: the server's reports and our listener's arrivals.
    let (results_tx, mut results) = mpsc::channel(8);
    let reader = TaskGuard(tokio::spawn(async move {
        while let Ok(msg) = probe::read_message(&mut read).await {
            if results_tx.send(msg).await.is_err() {
                break;
            }
        }
    }));
    // An admitted dial-back reaches our listener about one round trip after the
    // server accepted the request (its SYN, our SYN-ACK, its ACK and line), so
    // waiting for the server's own dial timeout on a silently dropped SYN would
    // only cost time. `wait` leaves room for scheduling delays on a busy host.
    let accepted_at = Instant::now();
    if let Some((asked_at, rtt)) = wait.asked {
        let lateness = accepted_at.saturating_duration_since(asked_at + rtt);
        wait.grace += lateness * 2;
    }
    let overall = accepted_at + server_timeout + reply_timeout;
    let mut reported = 0;
    let mut all_reported_at = None;
    let mut results_open = true;
    let mut last_look = false;
    loop {
        let connected_missing = dials
            .iter()
            .any(|d| d.server_outcome == Some(DialOutcome::Connected) && !d.received);
        if reported == dials.len() && !connected_missing {
            break;
        }
        let settled = all_reported_at.unwrap_or(accepted_at);
        let wake = if connected_missing {
            overall
        } else {
            wait.until(settled).min(overall)
        };
        // Biased: what already arrived counts before the clock does.
        tokio::select! {
            biased;
            msg = results.recv(), if results_open => match msg {
                Some(ServerMessage::DialResult { token: t, kind, outcome, .. }) if t == token => {
                    if let Some(d) = dials.iter_mut().find(|d| d.kind == kind) {
                        d.server_outcome = Some(outcome);
                        reported += 1;
                    }
                    if reported == dials.len() {
                        all_reported_at = Some(Instant::now());
                    }
                }
                Some(_) => {}
                None => {
                    results_open = false;
                    all_reported_at.get_or_insert_with(Instant::now);
                }
            },
            arrival = arrivals.recv() => {
                if let Some(Arrival::DialBack { token: t, kind }) = arrival {
                    if t == token {
                        if let Some(d) = dials.iter_mut().find(|d| d.kind == kind) {
                            d.received = true;
                        }
                    }
                }
            }
            () = sleep_running(wake) => {
                // Slower round trips seen meanwhile push the end further.
                if !connected_missing && wait.until(settled).min(overall) > Instant::now() {
                    continue;
                }
                if last_look {
                    break;
                }
                // A starved process wakes late: let the listener and reader
                // tasks hand over what is already here before calling it silence.
                last_look = true;
                settle_tasks().await;
            }
        }
    }
    drop(reader);
    let _ = write.shutdown().await;
    Ok(dials)
}

/// A timer that fires this late means the process was not running.
const LATE: Duration = Duration::from_millis(15);

/// Sleeps until `until`, and on while the wake-up comes late: time this
/// process was starved of CPU (a loaded host) is not time in which an
/// answer failed to arrive, so each late wake-up waits twice its lateness more.
pub async fn sleep_running(until: Instant) {
    let mut until = until;
    for _ in 0..8 {
        tokio::time::sleep_until(until).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(until);
        if late < LATE {
            return;
        }
        until = now + late * 2;
    }
}

/// Lets the runtime poll its I/O driver and run ready tasks a few times
/// (accepting, reading a first line, passing it on): on a starved host an
/// answer can be in the kernel while our tasks have not run yet.
async fn settle_tasks() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Connects from a fresh port to our own public endpoint and checks that our
/// listener, not something else, received it.
///
/// It gives up when `give_up` resolves, and in any case after `timeout`:
/// the caller decides how long silence takes to mean "no hairpinning".
pub async fn hairpin(
    target: SocketAddr,
    arrivals: &mut mpsc::Receiver<Arrival>,
    token: &str,
    give_up: impl std::future::Future<Output = ()>,
    timeout: Duration,
) -> HairpinObservation {
    tokio::pin!(give_up);
    let unspecified = SocketAddr::new(
        if target.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        0,
    );
    let observation = |reached_listener, error: Option<String>| HairpinObservation {
        target,
        reached_listener,
        error,
    };
    let socket = match socket::bound(unspecified) {
        Ok((s, _)) => s,
        Err(e) => return observation(false, Some(e.to_string())),
    };
    let deadline = Instant::now() + timeout;
    let connected = tokio::select! {
        connected = tokio::time::timeout_at(deadline, socket.connect(target)) => connected,
        () = &mut give_up => return observation(false, Some(ProbeFailure::Timeout.to_string())),
    };
    let mut stream = match connected {
        Err(_) => return observation(false, Some(ProbeFailure::Timeout.to_string())),
        Ok(Err(e)) => return observation(false, Some(ProbeFailure::Connect(e).to_string())),
        Ok(Ok(stream)) => stream,
    };
    let line = format!("{HAIRPIN_PREFIX}{token}\n");
    if let Err(e) = stream.write_all(line.as_bytes()).await {
        return observation(false, Some(format!("write failed: {e}")));
    }
    // Connected: something answered. If it is our listener, the line is
    // there at once; only a loaded host delays it, so the wait is now the
    // whole timeout, not `give_up`.
    loop {
        let arrival = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .ok()
            .flatten();
        match arrival {
            Some(Arrival::Hairpin { token: t }) if t == token => return observation(true, None),
            Some(_) => continue,
            None => {
                return observation(
                    false,
                    Some("connected, but not to our own listener".to_string()),
                )
            }
        }
    }
}
