//! TCP NAT classification: probing I/O against echo servers; the verdict logic is pure.
//!
//! One run, every test at once, their SYNs sent in this order (allocation
//! needs its probes in sequence, and nothing else may take NAT ports
//! between them):
//! 1. Filtering port Lf: listen on it, connect from it to the primary echo
//!    endpoint and ask at once for the dial-backs (other port, other IP);
//!    its answer names the server's endpoints and Lf's public endpoint.
//! 2. Mapping probes from one local port L to the primary endpoint, the same
//!    IP's other port and the other IP, in parallel: those the caller named
//!    now, those only the announcement names once it arrives.
//! 3. Allocation probes from fresh ports to the primary endpoint, one after another.
//! 4. Once those SYNs are out: hairpin (a fresh port to Lf's public
//!    endpoint) and path (SYNs with TTL 1, 2, ... towards the primary
//!    endpoint; the routers' time-exceeded answers show the NAT chain).
//!
//! Lf is not L: after the mapping probes L has talked to every server
//! endpoint, so every dial-back would be solicited and filtering would look
//! endpoint-independent whatever the NAT does.
//!
//! The decision is [`punchscope_analysis::classify::verdict`].
//!
//! Over IPv6 (an IPv6 primary endpoint) the same tests run between IPv6
//! endpoints only, except the path probe, which reads IPv4 ICMP errors; the
//! verdict's `ipv6` reading says whether anything translates and whether
//! the firewall admits connections nobody inside opened.
//!
//! What an echo server says is followed only as far as [`EchoTrust`]
//! allows: the probe connects only to the IPs it was given, and tests
//! hairpinning only towards a public endpoint.

mod error;
mod families;
mod filtering;
mod path;
mod probe;
mod socket;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::join_all;
use punchscope_analysis::classify::{
    Classification, DialKind, DialObservation, FilteringObservation, Observations, Probe,
};
use rand::distributions::{Alphanumeric, DistString};

pub use error::ClassifyError;
pub use families::{classify_families, EchoFamilies, FamilyClassifications, FamilyStep};
use probe::{Answered, ProbeFailure};

use crate::net::address::AddressPolicy;
use crate::proto::echo::{DialBackRequest, ProtoError, DEFAULT_PORT};
use crate::proto::ndjson::LineError;

/// What to probe and how patiently.
#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    /// Echo servers as `HOST[:PORT]`; the first that answers is the primary.
    /// A second one supplies the other IP when the primary announces only one.
    pub servers: Vec<String>,
    /// Local port for the mapping probes (e.g. 8333); any free port if `None`.
    pub local_port: Option<u16>,
    /// Bound on each connect and on each wait for a server line.
    pub connect_timeout: Duration,
    /// Fresh-port probes for the allocation pattern (at least 3 to decide).
    pub allocation_probes: usize,
    /// Whether to test hairpinning.
    pub hairpin: bool,
    /// How far the echo servers' own word is followed.
    pub trust: EchoTrust,
    /// Whether to probe the NAT chain with TTL-limited SYNs (see `path`).
    pub path: bool,
}

/// Which endpoints besides `servers` the classifier connects to. An echo
/// server announces its endpoints and tells us our public endpoint (the
/// hairpin test's target); a hostile one could name anyone's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EchoTrust {
    /// Every endpoint the primary announces, and the hairpin test to the
    /// endpoint it observed: `punchscope classify`, where the user chose the server.
    #[default]
    Announcements,
    /// Announced endpoints only on the given servers' IPs (their other
    /// ports), and the hairpin test only to an endpoint the policy allows:
    /// the probe, whose echo servers may come from a coordinator.
    GivenIps(AddressPolicy),
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            servers: Vec::new(),
            local_port: None,
            connect_timeout: Duration::from_secs(3),
            allocation_probes: 5,
            hairpin: true,
            trust: EchoTrust::default(),
            path: true,
        }
    }
}

/// Resolves `HOST[:PORT]` (default port [`DEFAULT_PORT`]) to one endpoint: an
/// address literal as written (IPv6 too, for an IPv6 classification), a
/// name to its first IPv4 address (a name with both must not switch a
/// run to IPv6 behind the caller's back).
pub async fn resolve_server(spec: &str) -> Result<SocketAddr, ClassifyError> {
    let with_port = crate::net::host_port::with_default_port(spec, DEFAULT_PORT);
    if let Ok(addr) = with_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|cause| ClassifyError::Resolve {
            spec: spec.to_string(),
            cause,
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .ok_or_else(|| ClassifyError::NoIpv4Address {
            spec: spec.to_string(),
        })
}

/// Asks the echo server at `server` to dial our own observed address at
/// `mapped_port` (a port mapping's external port) and watches `listener`
/// (the mapping's internal port) for it: the dial's record (`received` is
/// the answer to "mapped and reachable"), or why the server would not.
pub async fn mapped_dial_back(
    server: SocketAddr,
    listener: tokio::net::TcpListener,
    mapped_port: u16,
    timeout: Duration,
) -> Result<DialObservation, String> {
    let any = unspecified(server, 0);
    let socket = if any.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("cannot open a socket: {e}"))?;
    let answered = probe::run(socket, server, timeout)
        .await
        .map_err(|(_, failure)| format!("echo server {server}: {failure}"))?;
    let rtt = rtt_of(&answered.probe);
    let (_listening, mut arrivals) = filtering::spawn_listener(listener);
    let request = DialBackRequest {
        token: Alphanumeric.sample_string(&mut rand::thread_rng(), 16),
        kinds: vec![DialKind::MappedPort],
        mapped_port: Some(mapped_port),
    };
    let dials = filtering::dial_back(
        answered.conn,
        &mut arrivals.dial_backs,
        request,
        filtering::DialWait::patient(rtt),
        timeout,
    )
    .await?;
    dials
        .into_iter()
        .find(|d| d.kind == DialKind::MappedPort)
        .ok_or_else(|| "the server planned no mapped_port dial".to_string())
}

/// Runs every test against the configured echo servers and decides the verdict.
pub async fn classify(config: &ClassifyConfig) -> Result<Classification, ClassifyError> {
    if config.servers.is_empty() {
        return Err(ClassifyError::NoServer);
    }
    let mut servers = Vec::new();
    for spec in &config.servers {
        servers.push(resolve_server(spec).await?);
    }
    // Mixed, the findings would compare one family's mappings with the
    // other's: meaningless, and a dual-stack host is two classifications.
    if servers.iter().any(SocketAddr::is_ipv4) && servers.iter().any(SocketAddr::is_ipv6) {
        return Err(ClassifyError::MixedFamilies {
            servers: servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // The first server that answers is the primary. Every test starts at
    // once against the presumed primary; if it does not answer, they are
    // dropped and started again against the next.
    let mut reasons = Vec::new();
    for primary in &servers {
        if let Some(classification) =
            classify_with(config, *primary, &servers, &mut reasons).await?
        {
            return Ok(classification);
        }
    }
    Err(ClassifyError::ServerUnreachable {
        tried: servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        reason: reasons.join("; "),
    })
}

/// No test waits for silence (a dropped dial-back, hairpin or path SYN)
/// less than this after the run started: at LAN round trips, scheduling on
/// a busy host, not the network, sets how late an answer can be.
const SETTLE_FLOOR: Duration = Duration::from_millis(350);

use filtering::patience;

/// One run with `primary` as the primary endpoint; `Ok(None)` (with the
/// reason pushed) when it did not answer.
///
/// Time, in round trips R to the servers: the filtering port's connect (R)
/// carries the dial-back request at once, so its dial-backs arrive at 3 R;
/// the mapping probes to endpoints the caller named, and the allocation
/// probes behind them, start with it and end at about 2 R. Endpoints only
/// the server's announcement names (2 R) are probed after it, ending at 4 R.
/// The hairpin and path tests start once the allocation probes' SYNs are
/// out and end within a round trip. SYNs that take NAT ports leave in a
/// fixed order (filtering port, mapping port, the allocation probes, then
/// everything else), so nothing lands between two allocation probes.
async fn classify_with(
    config: &ClassifyConfig,
    primary: SocketAddr,
    servers: &[SocketAddr],
    reasons: &mut Vec<String>,
) -> Result<Option<Classification>, ClassifyError> {
    use tokio::time::Instant;
    let run_start = Instant::now();
    let timeout = config.connect_timeout;
    let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    let request = crate::proto::echo::encode_request(&DialBackRequest {
        token: token.clone(),
        kinds: vec![DialKind::OtherPort, DialKind::OtherIp],
        mapped_port: None,
    });

    // 1. The filtering port Lf: listening, then connecting to the primary.
    let (listener, lf_port) = socket::listener(unspecified(primary, 0))?;
    let (lf_socket, _) = socket::bound(unspecified(primary, lf_port))?;
    let (lf_connected, lf_rtt) = tokio::sync::oneshot::channel();
    let filtering_probe = start(probe::run_telling(
        lf_socket,
        primary,
        timeout,
        Some(&request),
        Some(lf_connected),
    ))
    .await;
    // 2. The mapping port L, to every endpoint the caller named.
    let early_targets = mapping_targets(primary, &[], servers);
    let local = unspecified(primary, config.local_port.unwrap_or(0));
    let (first, l_port) = socket::bound(local)?;
    if config.local_port.is_some_and(|p| p != l_port) {
        return Err(ClassifyError::LocalPortNotKept {
            requested: local.port(),
            got: l_port,
        });
    }
    let l_local = SocketAddr::new(local.ip(), l_port);
    let mut early_sockets = vec![first];
    for _ in 1..early_targets.len() {
        early_sockets.push(socket::bound(l_local)?.0);
    }
    let mut early = Vec::new();
    for (socket, target) in early_sockets.into_iter().zip(&early_targets) {
        early.push((*target, start(probe::run(socket, *target, timeout)).await));
    }
    // 3. The allocation probes, which say when their SYNs are all out.
    let (allocation_sent, allocation_out) = tokio::sync::watch::channel(false);
    let pace = filtering::Pace::default();
    let allocation = async {
        // Near servers (Lf connected within 50 ms) leave time to spread the
        // SYNs, so a loaded NAT or server sees no burst; far ones do not, and
        // the probes start 50 ms in, 10 ms apart.
        let near = matches!(tokio::time::timeout(NEAR, lf_rtt).await, Ok(Ok(_)));
        let spacing = if near {
            ALLOCATION_SPACING * 4
        } else {
            ALLOCATION_SPACING
        };
        allocation_probes(
            primary,
            config.allocation_probes,
            timeout,
            spacing,
            allocation_sent,
            pace.clone(),
        )
        .await
    };

    let (hello_tx, hello_rx) = tokio::sync::watch::channel(None::<(probe::Hello, Duration)>);
    // How many of the tests the hairpin test outwaits (filtering, mapping,
    // allocation) are done.
    let (done_tx, done_rx) = tokio::sync::watch::channel(0u8);
    let done = || done_tx.send_modify(|n| *n += 1);
    let (listener_guard, arrivals) = filtering::spawn_listener(listener);
    let filtering::Arrivals {
        mut dial_backs,
        mut hairpins,
    } = arrivals;
    // Lf: the answer, then the dial-backs asked for with the connect.
    let filtering_test = async {
        // Owned here, so that a failed Lf drops it and the tests waiting on it end.
        let hello_tx = hello_tx;
        let answered = match filtering_probe.finish().await {
            Ok(answered) => answered,
            Err((_, failure)) => return Err(failure),
        };
        let rtt = rtt_of(&answered.probe);
        pace.saw(rtt);
        let _ = hello_tx.send(Some((answered.hello.clone(), rtt)));
        let wait = filtering::DialWait {
            grace: patience(rtt),
            pace: Some(pace.clone()),
            // Written as soon as the connect completed.
            asked: Some((run_start + rtt, rtt)),
            not_before: run_start + SETTLE_FLOOR,
        };
        let dialed =
            filtering::dial_back_requested(answered.conn, &mut dial_backs, &token, wait, timeout)
                .await;
        done();
        Ok((answered.probe, answered.hello, dialed))
    };
    let early_mapping = async {
        let probes = finish_probes(early, &pace).await?;
        done();
        Ok::<_, ClassifyError>(probes)
    };
    let allocation = async {
        let probes = allocation.await;
        done();
        probes
    };
    // Everything that needs the announcement, after the allocation SYNs.
    let late_tests = async {
        let mut out = allocation_out.clone();
        let _ = out.wait_for(|sent| *sent).await;
        let mut hello_rx = hello_rx.clone();
        let (hello, rtt_now) = match hello_rx.wait_for(Option::is_some).await {
            Ok(hello) => hello.clone().expect("waited for it"),
            // Lf never answered: nothing else is worth starting.
            Err(_) => return Ok(None),
        };
        let announced: Vec<SocketAddr> = match config.trust {
            EchoTrust::Announcements => hello.endpoints.clone(),
            EchoTrust::GivenIps(_) => hello
                .endpoints
                .iter()
                .filter(|e| servers.iter().any(|s| s.ip() == e.ip()))
                .copied()
                .collect(),
        };
        let targets = mapping_targets(primary, &announced, servers);
        let late_targets: Vec<SocketAddr> = targets
            .iter()
            .filter(|t| !early_targets.contains(t))
            .copied()
            .collect();
        let late_mapping = async {
            let mut running = Vec::new();
            for target in &late_targets {
                let (socket, _) = socket::bound(l_local)?;
                running.push((*target, start(probe::run(socket, *target, timeout)).await));
            }
            finish_probes(running, &pace).await
        };
        let hairpin_allowed = match config.trust {
            EchoTrust::Announcements => true,
            EchoTrust::GivenIps(policy) => policy.check(hello.observed).is_ok(),
        };
        let hairpin = async {
            if config.hairpin && hairpin_allowed {
                // A hairpinned SYN never leaves the LAN: a round trip to the
                // servers is ample, the settle floor covers a busy host, and
                // the test never gives up before the others are done (on a
                // starved host they all take longer).
                let until = (Instant::now() + patience(rtt_now)).max(run_start + SETTLE_FLOOR);
                let mut others = done_rx.clone();
                let (started, pace) = (Instant::now(), pace.clone());
                let give_up = async move {
                    let mut until = until;
                    // Slower round trips seen meanwhile push the end further.
                    for _ in 0..8 {
                        filtering::sleep_running(until).await;
                        until = started + pace.grace();
                        if until <= Instant::now() {
                            break;
                        }
                    }
                    let _ = others.wait_for(|n| *n >= 3).await;
                };
                let observed = hello.observed;
                Some(filtering::hairpin(observed, &mut hairpins, &token, give_up, timeout).await)
            } else {
                None
            }
        };
        let path = async {
            // The path probe reads IPv4 ICMP errors; the verdict of an IPv6
            // run lists it as missing.
            if config.path && primary.is_ipv4() {
                // Routers and the server answer within one round trip.
                let until = (Instant::now() + patience(rtt_now)).max(run_start + SETTLE_FLOOR);
                let wait = until.saturating_duration_since(Instant::now()).min(timeout);
                Some(path::probe(primary, wait).await)
            } else {
                None
            }
        };
        let (late_mapping, hairpin, path) = tokio::join!(late_mapping, hairpin, path);
        Ok::<_, ClassifyError>(Some((targets, late_mapping?, hairpin, path)))
    };
    let (filtered, early_mapping, allocation, late) =
        tokio::join!(filtering_test, early_mapping, allocation, late_tests);
    drop(listener_guard);
    let (filter_probe, hello, dialed) = match filtered {
        Ok(done) => done,
        Err(failure) => {
            fatal(primary, &failure)?;
            reasons.push(format!("{primary}: {failure}"));
            return Ok(None);
        }
    };
    let early_mapping = early_mapping?;
    let Some((targets, late_mapping, hairpin, path)) = late? else {
        return Ok(None);
    };
    // The mapping probes in the order of `targets`: primary, other port, other IP.
    let mapping: Vec<Probe> = targets
        .iter()
        .filter_map(|t| {
            early_mapping
                .iter()
                .chain(&late_mapping)
                .find(|(target, _)| target == t)
                .map(|(_, probe)| probe.clone())
        })
        .collect();
    let filtering = Some(match dialed {
        Ok(dials) => FilteringObservation {
            probe: filter_probe,
            dials,
            error: None,
        },
        Err(error) => FilteringObservation {
            probe: filter_probe,
            dials: Vec::new(),
            error: Some(error),
        },
    });
    let observations = Observations {
        mapping,
        allocation,
        filtering,
        hairpin,
    };
    let classification = Classification::new(hello.endpoints, observations);
    Ok(Some(match path {
        Some(path) => classification.with_path(path),
        None => classification,
    }))
}

/// The measured round trip of an answered probe (100 ms when unknown).
fn rtt_of(probe: &Probe) -> Duration {
    Duration::from_secs_f64(probe.rtt_ms.unwrap_or(100.0) / 1000.0)
}

/// A mapping probe's record (its round trip noted in `pace`); a failure no
/// other probe can work around is an error.
fn finish_probe(
    outcome: Result<Answered, (Probe, ProbeFailure)>,
    pace: &filtering::Pace,
) -> Result<Probe, ClassifyError> {
    match outcome {
        Ok(answered) => {
            pace.saw(rtt_of(&answered.probe));
            Ok(answered.probe)
        }
        Err((probe, failure)) => {
            fatal(probe.server, &failure)?;
            Ok(probe)
        }
    }
}

/// Finishes started mapping probes together, so each is polled when its own
/// answer comes (a round trip measured late would be a slow round trip), and
/// keeps their records in order.
async fn finish_probes<F>(
    started: Vec<(SocketAddr, Started<F>)>,
    pace: &filtering::Pace,
) -> Result<Vec<(SocketAddr, Probe)>, ClassifyError>
where
    F: std::future::Future<Output = Result<Answered, (Probe, ProbeFailure)>>,
{
    let finished = join_all(
        started
            .into_iter()
            .map(|(target, running)| async move { (target, running.finish().await) }),
    )
    .await;
    let mut probes = Vec::new();
    for (target, outcome) in finished {
        probes.push((target, finish_probe(outcome, pace)?));
    }
    Ok(probes)
}

/// A future polled once, so that a connect() inside it has sent its SYN
/// before the caller starts the next one: the NAT allocates ports in that order.
enum Started<F: std::future::Future> {
    Done(F::Output),
    Running(std::pin::Pin<Box<F>>),
}

impl<F: std::future::Future> Started<F> {
    async fn finish(self) -> F::Output {
        match self {
            Started::Done(output) => output,
            Started::Running(future) => future.await,
        }
    }
}

/// Polls `future` once (its connect() sends the SYN) and keeps it to finish later.
async fn start<F: std::future::Future>(future: F) -> Started<F> {
    use std::task::Poll;
    let mut future = Box::pin(future);
    let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match polled {
        Poll::Ready(output) => Started::Done(output),
        Poll::Pending => Started::Running(future),
    }
}

fn unspecified(like: SocketAddr, port: u16) -> SocketAddr {
    let ip: IpAddr = if like.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, port)
}

/// Failures that no other server or probe can work around.
fn fatal(server: SocketAddr, failure: &ProbeFailure) -> Result<(), ClassifyError> {
    match failure {
        ProbeFailure::Connect(e)
            if server.is_ipv4() && e.raw_os_error() == Some(libc::ENETUNREACH) =>
        {
            Err(ClassifyError::NoIpv4Route { server })
        }
        ProbeFailure::Protocol(e @ ProtoError::Line(LineError::UnsupportedVersion { .. })) => {
            Err(ClassifyError::ServerVersion {
                server,
                message: e.to_string(),
            })
        }
        ProbeFailure::Protocol(e) => Err(ClassifyError::Protocol {
            server,
            message: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Primary, same IP other port, other IP (same port preferred): from the
/// primary's announcement, else from the other `--server` addresses.
fn mapping_targets(
    primary: SocketAddr,
    announced: &[SocketAddr],
    servers: &[SocketAddr],
) -> Vec<SocketAddr> {
    let known: Vec<SocketAddr> = announced
        .iter()
        .chain(servers)
        .filter(|e| e.is_ipv4() == primary.is_ipv4())
        .copied()
        .collect();
    let other_port = known
        .iter()
        .find(|e| e.ip() == primary.ip() && e.port() != primary.port());
    let other_ips: Vec<_> = known.iter().filter(|e| e.ip() != primary.ip()).collect();
    let other_ip = other_ips
        .iter()
        .find(|e| e.port() == primary.port())
        .or(other_ips.first())
        .copied();
    std::iter::once(primary)
        .chain(other_port.copied())
        .chain(other_ip.copied())
        .collect()
}

/// Spacing of the allocation probes' SYNs: enough for the NAT to see them in
/// launch order (one path keeps packet order), short enough to cost one round trip in all.
const ALLOCATION_SPACING: Duration = Duration::from_millis(10);
/// Servers whose connect answers within this are near.
const NEAR: Duration = Duration::from_millis(50);

/// Fresh local ports, each to the primary, their SYNs sent one after
/// another a few milliseconds apart in launch order (which is the order
/// the NAT allocates in); `sent` turns true once all are out.
async fn allocation_probes(
    primary: SocketAddr,
    count: usize,
    timeout: Duration,
    spacing: Duration,
    sent: tokio::sync::watch::Sender<bool>,
    pace: filtering::Pace,
) -> Vec<Probe> {
    let first = tokio::time::Instant::now() + spacing;
    let mut running = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(first + spacing * i as u32).await;
        running.push(match socket::bound(unspecified(primary, 0)) {
            Err(e) => Err(Probe {
                local: unspecified(primary, 0),
                server: primary,
                observed: None,
                rtt_ms: None,
                error: Some(e.to_string()),
            }),
            Ok((socket, _)) => Ok(start(probe::run(socket, primary, timeout)).await),
        });
    }
    let _ = sent.send(true);
    // Finished together: each probe's round trip is measured when it happens.
    join_all(running.into_iter().map(|probe| async {
        match probe {
            Err(unbound) => unbound,
            Ok(started) => match started.finish().await {
                Ok(answered) => {
                    pace.saw(rtt_of(&answered.probe));
                    answered.probe
                }
                Err((probe, _)) => probe,
            },
        }
    }))
    .await
}
