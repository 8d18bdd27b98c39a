//! The echo/reflector server: tells each client its observed endpoint and dials back to it on request.
//!
//! Per connection: write the `observed` line at once (a mapping probe costs
//! one round trip), then wait briefly for an optional `dial_back_request`.
//! Dial-backs go only to the connection's observed source endpoint, from the
//! server's own listening endpoints (hence SO_REUSEPORT on the listeners),
//! with a short connect timeout and a per-source-IP rate limit. A semaphore
//! bounds concurrent connections; excess ones get a `busy` line and are
//! closed at once. Connections are also capped per source (IPv4 address,
//! IPv6 /64) and per site (IPv6 /48), so a few sources cannot take every
//! place. The wire format lives in [`crate::proto::echo`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::net::line::{LineConnection, LineConnectionError};
use crate::net::source_limit::{ConnectionCounts, SourceKey, TokenBuckets, SITE_V6_PREFIX};
use crate::proto::echo::{
    self as proto, DialBackRequest, DialKind, DialOutcome, ErrorCode, PlannedDial, ProtoError,
    ServerMessage, MAX_LINE,
};
use crate::proto::ndjson::LineError;

/// Tunables of the echo server. `Default` suits a public deployment.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Connections served at once; more are told `busy` and closed.
    pub max_connections: usize,
    /// Connections at once per source (IPv4 address, IPv6 /64); more are
    /// told `too_many_connections` and closed.
    pub max_connections_per_source: u32,
    /// Connections at once per site (IPv4 address, IPv6 /48).
    pub max_connections_per_site: u32,
    /// How long to wait for the optional request line after `observed`.
    pub request_timeout: Duration,
    /// Shortest dial-back connect timeout; longer when the client is far away.
    pub dial_timeout_min: Duration,
    /// Longest dial-back connect timeout, however slow the client.
    pub dial_timeout_max: Duration,
    /// Dial-back requests a source IP may make at once (bucket size).
    pub dial_back_burst: u32,
    /// One more dial-back request is allowed per this interval.
    pub dial_back_refill: Duration,
    /// Public endpoints to announce instead of the listeners' own addresses
    /// (servers behind a 1:1 NAT), in the order of the listeners.
    pub advertise: Option<Vec<SocketAddr>>,
    /// After shutdown is signalled, how long running connections may take to end.
    pub shutdown_grace: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            max_connections: 1024,
            // A classification opens about ten connections at once, and
            // homes behind one carrier-grade NAT address share its cap.
            max_connections_per_source: 32,
            max_connections_per_site: 128,
            request_timeout: Duration::from_secs(2),
            dial_timeout_min: Duration::from_secs(1),
            dial_timeout_max: Duration::from_secs(3),
            dial_back_burst: 10,
            dial_back_refill: Duration::from_secs(6),
            advertise: None,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// What stops the echo server from starting.
#[derive(Debug, thiserror::Error)]
pub enum EchoServerError {
    #[error("cannot listen on {addr}: {cause}; check that the address is assigned to this host and the port is free")]
    Bind { addr: SocketAddr, cause: io::Error },
    #[error("no listeners given: pass at least one listen address")]
    NoListeners,
    #[error("{advertised} advertised endpoints for {listeners} listeners: give one per listen address, in the same order")]
    AdvertiseMismatch { advertised: usize, listeners: usize },
    #[error("listener has no local address: {0}")]
    LocalAddr(io::Error),
}

/// Binds one listener per address with SO_REUSEADDR and SO_REUSEPORT, so the
/// server can later dial out *from* these same endpoints.
pub fn bind_listeners(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, EchoServerError> {
    addrs.iter().map(|addr| bind_listener(*addr)).collect()
}

/// Binds one reusable listener; see [`bind_listeners`]. Needs a tokio runtime.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener, EchoServerError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = reusable_socket(addr)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind().map_err(|cause| EchoServerError::Bind { addr, cause })
}

fn reusable_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// Serves on every listener until `shutdown` completes, then lets running
/// connections end (up to `config.shutdown_grace`) and returns.
pub async fn run(
    listeners: Vec<TcpListener>,
    config: EchoConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EchoServerError> {
    if listeners.is_empty() {
        return Err(EchoServerError::NoListeners);
    }
    let local: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<io::Result<_>>()
        .map_err(EchoServerError::LocalAddr)?;
    let public = match &config.advertise {
        Some(adv) if adv.len() != local.len() => {
            return Err(EchoServerError::AdvertiseMismatch {
                advertised: adv.len(),
                listeners: local.len(),
            })
        }
        Some(adv) => adv.clone(),
        None => local.clone(),
    };
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let shared = Arc::new(Shared {
        endpoints: Endpoints { local, public },
        dial_back_budget: Mutex::new(TokenBuckets::new(
            config.dial_back_burst.max(1),
            config.dial_back_refill,
            MAX_TRACKED_SOURCES,
        )),
        open_per_source: Mutex::new(OpenPerSource {
            sources: ConnectionCounts::new(config.max_connections_per_source),
            sites: ConnectionCounts::new(config.max_connections_per_site),
        }),
        config,
        permits,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut acceptors = JoinSet::new();
    for listener in listeners {
        acceptors.spawn(accept_loop(listener, shared.clone(), stop_rx.clone()));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    acceptors.shutdown().await;
    // Every connection holds a permit: having them all back means all ended.
    let all = u32::try_from(shared.config.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        shared.config.shutdown_grace,
        shared.permits.acquire_many(all),
    )
    .await;
    Ok(())
}

struct Shared {
    config: EchoConfig,
    endpoints: Endpoints,
    /// Dial-back requests per source (IPv4 address or IPv6 /64).
    dial_back_budget: Mutex<TokenBuckets>,
    open_per_source: Mutex<OpenPerSource>,
    permits: Arc<Semaphore>,
}

/// Connections open per source and per site.
struct OpenPerSource {
    sources: ConnectionCounts,
    sites: ConnectionCounts,
}

/// A connection's place in the per-source counts, given back when dropped.
struct SourcePlace {
    shared: Arc<Shared>,
    source: SourceKey,
}

impl Drop for SourcePlace {
    fn drop(&mut self) {
        let mut open = self.shared.open_per_source();
        open.sources.close(self.source);
        open.sites.close(self.source.widened(SITE_V6_PREFIX));
    }
}

/// Above this many tracked sources, full dial-back buckets are forgotten.
const MAX_TRACKED_SOURCES: usize = 10_000;

/// The listeners' own addresses and what to announce for each.
struct Endpoints {
    local: Vec<SocketAddr>,
    public: Vec<SocketAddr>,
}

impl Endpoints {
    fn public_of(&self, local: SocketAddr) -> SocketAddr {
        self.local
            .iter()
            .position(|l| *l == local)
            .map_or(local, |i| self.public[i])
    }

    /// The local endpoint to dial from for `kind`, given the endpoint reached.
    fn dial_source(&self, reached: SocketAddr, kind: DialKind) -> Option<SocketAddr> {
        let same_family = |e: &&SocketAddr| e.is_ipv4() == reached.is_ipv4();
        let mut candidates = self.local.iter().filter(same_family);
        match kind {
            DialKind::OtherPort => candidates
                .find(|e| e.ip() == reached.ip() && e.port() != reached.port())
                .copied(),
            // The endpoint the asker reached: its own mapping to us is not
            // what is tested, the router's port mapping is.
            DialKind::MappedPort => Some(reached),
            DialKind::OtherIp => {
                let others: Vec<_> = candidates.filter(|e| e.ip() != reached.ip()).collect();
                // The same port on the other IP keeps the test to one changed variable.
                others
                    .iter()
                    .find(|e| e.port() == reached.port())
                    .or(others.first())
                    .map(|e| **e)
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("echo: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            let busy = ServerMessage::Error {
                code: ErrorCode::Busy,
                message: "server busy: too many connections, try again in a few seconds".into(),
                supported_versions: None,
                retry_after_ms: Some(5000),
            };
            let _ = stream.try_write(&proto::encode_server(&busy));
            continue;
        };
        let place = match Shared::take_source_place(&shared, peer) {
            Ok(place) => place,
            Err(message) => {
                let refusal = ServerMessage::Error {
                    code: ErrorCode::TooManyConnections,
                    message,
                    supported_versions: None,
                    retry_after_ms: Some(5000),
                };
                let _ = stream.try_write(&proto::encode_server(&refusal));
                continue;
            }
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_connection(stream, peer, &shared) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            drop(place);
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, observed: SocketAddr, shared: &Shared) {
    let Ok(reached) = stream.local_addr() else {
        return;
    };
    // Lines go out at once: with Nagle, `dial_back_accepted` would wait for
    // the client's (delayed) ACK of the observed line, a round trip or more.
    let _ = stream.set_nodelay(true);
    let config = &shared.config;
    let mut conn = LineConnection::new(stream, MAX_LINE);
    let hello = ServerMessage::Observed {
        observed,
        reached: shared.endpoints.public_of(reached),
        endpoints: shared.endpoints.public.clone(),
        request_timeout_ms: millis(config.request_timeout),
    };
    if conn
        .write_line(&proto::encode_server(&hello))
        .await
        .is_err()
    {
        return;
    }
    let sent = Instant::now();
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    let reply = match conn.read_line_before(deadline).await {
        Err(LineConnectionError::Timeout) => Some(error_line(
            ErrorCode::RequestTimeout,
            "no request within the deadline: close right after the observed line if you need nothing else",
        )),
        Ok(None) => return,
        Err(LineConnectionError::Line(e)) => Some(ProtoError::from(e).to_message()),
        // The line the client is told is the one it always was; the socket is
        // most likely gone anyway.
        Err(LineConnectionError::Io(e)) => Some(
            ProtoError::from(LineError::Malformed(format!("read failed: {e}"))).to_message(),
        ),
        Ok(Some(line)) => match proto::decode_request(&line) {
            Err(e) => Some(e.to_message()),
            Ok(req) => match shared.take_dial_back(observed) {
                Err(wait) => Some(ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "too many dial-back requests from {}: retry in {} ms",
                        observed.ip(),
                        millis(wait)
                    ),
                    supported_versions: None,
                    retry_after_ms: Some(millis(wait)),
                }),
                Ok(()) => {
                    let dial_timeout = dial_timeout(config, sent.elapsed());
                    let dialed =
                        dial_back(&mut conn, shared, reached, observed, req, dial_timeout).await;
                    finish(conn, dialed).await;
                    return;
                }
            },
        },
    };
    if let Some(reply) = reply {
        let _ = conn.write_line(&proto::encode_server(&reply)).await;
    }
    finish(conn, Vec::new()).await;
}

fn error_line(code: ErrorCode, message: &str) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        supported_versions: None,
        retry_after_ms: None,
    }
}

/// A few times the time the client took to answer `observed` (about one
/// round trip), within the configured bounds: a far client gets longer.
fn dial_timeout(config: &EchoConfig, request_rtt: Duration) -> Duration {
    (request_rtt * 4).clamp(config.dial_timeout_min, config.dial_timeout_max)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Makes the requested dials in parallel, reporting each result as it comes.
/// Returns the connected dial-back streams, to be closed politely.
async fn dial_back(
    conn: &mut LineConnection<TcpStream>,
    shared: &Shared,
    reached: SocketAddr,
    observed: SocketAddr,
    req: DialBackRequest,
    timeout: Duration,
) -> Vec<TcpStream> {
    let plan: Vec<(DialKind, Option<SocketAddr>)> = req
        .kinds
        .iter()
        .map(|k| (*k, shared.endpoints.dial_source(reached, *k)))
        .collect();
    let accepted = ServerMessage::DialBackAccepted {
        token: req.token.clone(),
        timeout_ms: millis(timeout),
        dials: plan
            .iter()
            .map(|(kind, from)| PlannedDial {
                kind: *kind,
                from: from.map(|f| shared.endpoints.public_of(f)),
            })
            .collect(),
    };
    if conn
        .write_line(&proto::encode_server(&accepted))
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut dials = JoinSet::new();
    for (kind, from) in plan {
        // Only ever the asker's observed address: its observed port, or for
        // `mapped_port` the port it named (validated: present and not 0).
        let to = match (kind, req.mapped_port) {
            (DialKind::MappedPort, Some(port)) => SocketAddr::new(observed.ip(), port),
            _ => observed,
        };
        let line = from.map(|f| {
            proto::encode_server(&ServerMessage::DialBack {
                token: req.token.clone(),
                kind,
                from: shared.endpoints.public_of(f),
                to,
            })
        });
        dials.spawn(async move {
            let started = Instant::now();
            let (outcome, detail, stream) = match (from, line) {
                (Some(from), Some(line)) => dial(from, to, &line, timeout).await,
                _ => (DialOutcome::Unavailable, None, None),
            };
            (kind, from, to, outcome, detail, stream, started.elapsed())
        });
    }
    let mut connected = Vec::new();
    while let Some(Ok((kind, from, to, outcome, detail, stream, elapsed))) = dials.join_next().await
    {
        connected.extend(stream);
        let result = ServerMessage::DialResult {
            token: req.token.clone(),
            kind,
            from: from.map(|f| shared.endpoints.public_of(f)),
            to,
            outcome,
            elapsed_ms: millis(elapsed),
            detail,
        };
        if conn
            .write_line(&proto::encode_server(&result))
            .await
            .is_err()
        {
            break;
        }
    }
    connected
}

/// One dial-back: connect from `from` to `to` and write `line` on success.
async fn dial(
    from: SocketAddr,
    to: SocketAddr,
    line: &[u8],
    timeout: Duration,
) -> (DialOutcome, Option<String>, Option<TcpStream>) {
    let connect = async {
        let socket = reusable_socket(from)?;
        socket.bind(from)?;
        socket.connect(to).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => (DialOutcome::Timeout, None, None),
        Ok(Ok(mut stream)) => match stream.write_all(line).await {
            Ok(()) => (DialOutcome::Connected, None, Some(stream)),
            Err(e) => (
                DialOutcome::Connected,
                Some(format!("write failed: {e}")),
                None,
            ),
        },
        Ok(Err(e)) => {
            // By errno: the io::ErrorKind variants for these are newer than our MSRV.
            let outcome = match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => DialOutcome::Refused,
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => DialOutcome::Unreachable,
                // An ICMPv6 "administratively prohibited" answer (a firewall
                // refusing the connection; IPv4's arrives as EHOSTUNREACH).
                // Over IPv4, EACCES is this host's own rules: our error.
                Some(libc::EACCES) if to.is_ipv6() => DialOutcome::Unreachable,
                _ => DialOutcome::Error,
            };
            (outcome, Some(e.to_string()), None)
        }
    }
}

/// Closes after the client does, so TIME_WAIT lands on the client's side and
/// the server's endpoints stay free for the next dial-back to the same
/// client; unread input is drained so the close is a FIN, not a RST that
/// could destroy an error line the client has not read yet.
async fn finish(mut conn: LineConnection<TcpStream>, dial_backs: Vec<TcpStream>) {
    const LINGER: Duration = Duration::from_secs(2);
    const DRAIN_LIMIT: u64 = 64 * 1024;
    let _ = conn.shutdown().await;
    let control = async move { conn.drain(DRAIN_LIMIT).await };
    let dial_backs = async move {
        let mut waits = JoinSet::new();
        for mut stream in dial_backs {
            waits.spawn(async move {
                let _ = stream.shutdown().await;
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut (&mut stream).take(DRAIN_LIMIT), &mut sink).await;
            });
        }
        while waits.join_next().await.is_some() {}
    };
    let _ = tokio::time::timeout(LINGER, async { tokio::join!(control, dial_backs) }).await;
}

impl Shared {
    fn open_per_source(&self) -> std::sync::MutexGuard<'_, OpenPerSource> {
        self.open_per_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a connection from `peer` against its source's and site's caps,
    /// or says which cap is reached.
    fn take_source_place(shared: &Arc<Shared>, peer: SocketAddr) -> Result<SourcePlace, String> {
        let source = SourceKey::of(peer.ip());
        let site = source.widened(SITE_V6_PREFIX);
        let mut open = shared.open_per_source();
        if !open.sources.try_open(source) {
            return Err(format!(
                "too many connections from {source}: at most {} at once, retry in a few seconds",
                shared.config.max_connections_per_source
            ));
        }
        if !open.sites.try_open(site) {
            open.sources.close(source);
            return Err(format!(
                "too many connections from your network {site}: at most {} at once, retry in a few seconds",
                shared.config.max_connections_per_site
            ));
        }
        Ok(SourcePlace {
            shared: shared.clone(),
            source,
        })
    }

    /// Takes one dial-back token for the client's source, or says how long until one is free.
    fn take_dial_back(&self, observed: SocketAddr) -> Result<(), Duration> {
        let mut budget = self
            .dial_back_budget
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        budget.take(SourceKey::of(observed.ip()), Instant::now(), 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_sources_pick_the_other_port_and_the_other_ip() {
        let e = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let eps = Endpoints {
            local: vec![
                e("10.0.0.1:1"),
                e("10.0.0.1:2"),
                e("10.0.0.2:2"),
                e("10.0.0.2:1"),
            ],
            public: vec![
                e("198.51.100.1:1"),
                e("198.51.100.1:2"),
                e("198.51.100.2:2"),
                e("198.51.100.2:1"),
            ],
        };
        assert_eq!(
            eps.dial_source(e("10.0.0.1:1"), DialKind::OtherPort),
            Some(e("10.0.0.1:2"))
        );
        assert_eq!(
            eps.dial_source(e("10.0.0.1:1"), DialKind::OtherIp),
            Some(e("10.0.0.2:1"))
        );
        assert_eq!(
            eps.dial_source(e("10.0.0.2:2"), DialKind::OtherIp),
            Some(e("10.0.0.1:2"))
        );
        assert_eq!(eps.public_of(e("10.0.0.2:1")), e("198.51.100.2:1"));
        let single = Endpoints {
            local: vec![e("10.0.0.1:1")],
            public: vec![e("10.0.0.1:1")],
        };
        assert_eq!(
            single.dial_source(e("10.0.0.1:1"), DialKind::OtherPort),
            None
        );
        assert_eq!(single.dial_source(e("10.0.0.1:1"), DialKind::OtherIp), None);
    }

    #[test]
    fn dial_timeout_grows_with_distance_within_bounds() {
        let config = EchoConfig::default();
        assert_eq!(
            dial_timeout(&config, Duration::from_millis(5)),
            config.dial_timeout_min
        );
        assert_eq!(
            dial_timeout(&config, Duration::from_millis(500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            dial_timeout(&config, Duration::from_secs(5)),
            config.dial_timeout_max
        );
    }
}
