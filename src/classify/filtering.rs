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

/// How long to wait for a dial that neither arrived nor was reported: a
/// NAT that drops it silently leaves only the clock to decide.
#[derive(Debug, Clone, Copy)]
pub struct DialWait {
    /// Wait this long after the server accepted the request (or, once every
    /// dial is reported, after the last report) ...
    pub grace: Duration,
    /// ... but never end before this moment.
    pub not_before: Instant,
}

impl DialWait {
    /// The patient wait of a port mapping check: three round trips, at least 300 ms.
    pub fn patient(rtt: Duration) -> DialWait {
        DialWait {
            grace: (rtt * 3).max(DIAL_BACK_GRACE),
            not_before: Instant::now(),
        }
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
    wait: DialWait,
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
    let overall = accepted_at + server_timeout + reply_timeout;
    let mut reported = 0;
    let mut all_reported_at = None;
    let mut results_open = true;
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
            (settled + wait.grace).max(wait.not_before).min(overall)
        };
        tokio::select! {
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
            _ = tokio::time::sleep_until(wake) => break,
        }
    }
    drop(reader);
    let _ = write.shutdown().await;
    Ok(dials)
}

/// Connects from a fresh port to our own public endpoint and checks that our
/// listener, not something else, received it.
pub async fn hairpin(
    target: SocketAddr,
    arrivals: &mut mpsc::Receiver<Arrival>,
    token: &str,
    timeout: Duration,
) -> HairpinObservation {
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
    let mut stream = match tokio::time::timeout_at(deadline, socket.connect(target)).await {
        Err(_) => return observation(false, Some(ProbeFailure::Timeout.to_string())),
        Ok(Err(e)) => return observation(false, Some(ProbeFailure::Connect(e).to_string())),
        Ok(Ok(stream)) => stream,
    };
    let line = format!("{HAIRPIN_PREFIX}{token}\n");
    if let Err(e) = stream.write_all(line.as_bytes()).await {
        return observation(false, Some(format!("write failed: {e}")));
    }
    loop {
        match tokio::time::timeout_at(deadline, arrivals.recv()).await {
            Ok(Some(Arrival::Hairpin { token: t })) if t == token => {
                return observation(true, None)
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => {
                return observation(
                    false,
                    Some("connected, but not to our own listener".to_string()),
                )
            }
        }
    }
}
