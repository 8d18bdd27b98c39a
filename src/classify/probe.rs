//! One mapping probe: connect to an echo server endpoint and read the `observed` line it sends first.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punchscope_analysis::classify::Probe;
use tokio::net::{TcpSocket, TcpStream};

use crate::net::line::{LineConnection, LineConnectionError};
use crate::proto::echo::{self, ProtoError, ServerMessage, MAX_LINE};

/// What the server announced on a probe connection.
#[derive(Debug, Clone)]
pub struct Hello {
    pub observed: SocketAddr,
    pub endpoints: Vec<SocketAddr>,
}

/// Why a probe failed, kept apart so callers can turn some into hard errors.
#[derive(Debug)]
pub enum ProbeFailure {
    Connect(io::Error),
    Timeout,
    Protocol(ProtoError),
    Closed,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeFailure::Connect(e) => write!(f, "connect failed: {e}"),
            ProbeFailure::Timeout => f.write_str("timed out"),
            ProbeFailure::Protocol(e) => write!(f, "bad answer: {e}"),
            ProbeFailure::Closed => f.write_str("server closed without an observed line"),
        }
    }
}

/// A probe that worked: the record, what the server said, and the open
/// connection for callers that continue the conversation.
pub struct Answered {
    pub probe: Probe,
    pub hello: Hello,
    pub conn: LineConnection<TcpStream>,
}

/// Connects `socket` to `server` and reads the observed line, all within `timeout`.
pub async fn run(
    socket: TcpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Answered, (Probe, ProbeFailure)> {
    run_telling(socket, server, timeout, None, None).await
}

/// As [`run`], and writes `request` (a whole line) as soon as the
/// connection is up, before the observed line arrives (the server reads it
/// right after sending that line, so the request costs no round trip of its
/// own), and sends the connect's round trip on `connected` the moment it completes.
pub async fn run_telling(
    socket: TcpSocket,
    server: SocketAddr,
    timeout: Duration,
    request: Option<&[u8]>,
    connected: Option<tokio::sync::oneshot::Sender<Duration>>,
) -> Result<Answered, (Probe, ProbeFailure)> {
    let fallback_local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let failed = |local, rtt_ms, failure: ProbeFailure| {
        let probe = Probe {
            local,
            server,
            observed: None,
            rtt_ms,
            error: Some(failure.to_string()),
        };
        (probe, failure)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let started = Instant::now();
    let stream = match tokio::time::timeout_at(deadline, socket.connect(server)).await {
        Err(_) => return Err(failed(fallback_local, None, ProbeFailure::Timeout)),
        Ok(Err(e)) => return Err(failed(fallback_local, None, ProbeFailure::Connect(e))),
        Ok(Ok(stream)) => stream,
    };
    let rtt = started.elapsed();
    if let Some(connected) = connected {
        let _ = connected.send(rtt);
    }
    let rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
    let local = stream.local_addr().unwrap_or(fallback_local);
    let mut conn = LineConnection::new(stream, MAX_LINE);
    if let Some(request) = request {
        if let Err(e) = conn.write_line(request).await {
            return Err(failed(local, rtt_ms, ProbeFailure::Connect(e)));
        }
    }
    let hello = match read_message_before(&mut conn, deadline).await {
        Err(e) => Err(e),
        Ok(ServerMessage::Observed {
            observed,
            endpoints,
            ..
        }) => Ok(Hello {
            observed,
            endpoints,
        }),
        Ok(other) => Err(ProbeFailure::Protocol(ProtoError::Malformed(format!(
            "expected an observed line first, got {other:?}"
        )))),
    };
    match hello {
        Err(failure) => Err(failed(local, rtt_ms, failure)),
        Ok(hello) => Ok(Answered {
            probe: Probe {
                local,
                server,
                observed: Some(hello.observed),
                rtt_ms,
                error: None,
            },
            hello,
            conn,
        }),
    }
}

/// Reads one server line, waiting until `deadline`.
pub async fn read_message_before<S: tokio::io::AsyncRead + Unpin>(
    conn: &mut LineConnection<S>,
    deadline: tokio::time::Instant,
) -> Result<ServerMessage, ProbeFailure> {
    message(conn.read_line_before(deadline).await)
}

/// Reads one server line. The caller bounds the wait.
pub async fn read_message<S: tokio::io::AsyncRead + Unpin>(
    conn: &mut LineConnection<S>,
) -> Result<ServerMessage, ProbeFailure> {
    message(conn.read_line().await)
}

fn message(
    line: Result<Option<String>, LineConnectionError>,
) -> Result<ServerMessage, ProbeFailure> {
    match line {
        Ok(Some(line)) => echo::decode_server(&line).map_err(ProbeFailure::Protocol),
        Ok(None) => Err(ProbeFailure::Closed),
        Err(LineConnectionError::Line(e)) => Err(ProbeFailure::Protocol(e.into())),
        Err(LineConnectionError::Timeout) => Err(ProbeFailure::Timeout),
        Err(LineConnectionError::Io(e)) => Err(ProbeFailure::Connect(e)),
    }
}
