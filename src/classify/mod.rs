//! TCP NAT classification: probing I/O against echo servers; the verdict logic is pure.
//!
//! One run, in this order (allocation needs its probes in sequence, and
//! nothing else may take NAT ports meanwhile):
//! 1. Filtering port Lf: listen on it, connect from it to the primary echo
//!    endpoint, learn the server's endpoints and Lf's public endpoint.
//! 2. While the server dials back to Lf (other port, other IP):
//!    mapping probes from one local port L to the primary endpoint, the same
//!    IP's other port and the other IP, in parallel; then allocation probes
//!    from fresh ports to the primary endpoint, one after another.
//! 3. Hairpin: connect from a fresh port to Lf's public endpoint.
//! 4. Path: SYNs with TTL 1, 2, ... towards the primary endpoint; the
//!    routers' time-exceeded answers show the NAT chain (`path`).
//!
//! Lf is not L: after the mapping probes L has talked to every server
//! endpoint, so every dial-back would be solicited and filtering would look
//! endpoint-independent whatever the NAT does.
//!
//! The decision is [`punchscope_analysis::classify::verdict`].
//!
//! What an echo server says is followed only as far as [`EchoTrust`]
//! allows: the probe connects only to the IPs it was given, and tests
//! hairpinning only towards a public endpoint.

mod error;
mod filtering;
mod path;
mod probe;
mod socket;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use punchscope_analysis::classify::{
    Classification, DialKind, DialObservation, FilteringObservation, Observations, Probe,
};
use rand::distributions::{Alphanumeric, DistString};
use tokio::task::JoinSet;

pub use error::ClassifyError;
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

/// Resolves `HOST[:PORT]` (default port [`DEFAULT_PORT`]) to one IPv4 endpoint.
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
    let rtt = Duration::from_secs_f64(answered.probe.rtt_ms.unwrap_or(100.0) / 1000.0);
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
        rtt,
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
    let timeout = config.connect_timeout;
    let (primary, answered, listener_guard, mut arrivals) =
        open_filtering_port(&servers, timeout).await?;
    let announced: Vec<SocketAddr> = match config.trust {
        EchoTrust::Announcements => answered.hello.endpoints.clone(),
        EchoTrust::GivenIps(_) => answered
            .hello
            .endpoints
            .iter()
            .filter(|e| servers.iter().any(|s| s.ip() == e.ip()))
            .copied()
            .collect(),
    };
    let targets = mapping_targets(primary, &announced, &servers);
    let rtt = Duration::from_secs_f64(answered.probe.rtt_ms.unwrap_or(100.0) / 1000.0);
    let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    let filter_probe = answered.probe.clone();
    let filter_public = answered.hello.observed;

    let dial_backs = filtering::dial_back(
        answered.conn,
        &mut arrivals.dial_backs,
        DialBackRequest {
            token: token.clone(),
            kinds: vec![DialKind::OtherPort, DialKind::OtherIp],
            mapped_port: None,
        },
        rtt,
        timeout,
    );
    // The hairpin attempt runs alongside: it stays on the LAN, so its wait
    // overlaps the WAN round trips of the other tests.
    let hairpin_allowed = match config.trust {
        EchoTrust::Announcements => true,
        EchoTrust::GivenIps(policy) => policy.check(filter_public).is_ok(),
    };
    let hairpin = async {
        if config.hairpin && hairpin_allowed {
            let wait = (rtt * 4).clamp(Duration::from_millis(500), timeout);
            Some(filtering::hairpin(filter_public, &mut arrivals.hairpins, &token, wait).await)
        } else {
            None
        }
    };
    let probes = async {
        let mapping = mapping_probes(
            unspecified(primary, config.local_port.unwrap_or(0)),
            &targets,
            timeout,
        )
        .await?;
        let allocation = allocation_probes(primary, config.allocation_probes, timeout).await;
        Ok::<_, ClassifyError>((mapping, allocation))
    };
    let (dialed, probes, hairpin) = tokio::join!(dial_backs, probes, hairpin);
    let (mapping, allocation) = probes?;
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
    drop(listener_guard);
    let observations = Observations {
        mapping,
        allocation,
        filtering,
        hairpin,
    };
    let classification = Classification::new(answered.hello.endpoints, observations);
    if !config.path {
        return Ok(classification);
    }
    // Last, once nothing else needs NAT ports: its SYNs open mappings too.
    // A router answers within the path's round trip; silence costs the wait.
    let wait = (rtt * 3).clamp(Duration::from_millis(300), timeout);
    Ok(classification.with_path(path::probe(primary, wait).await))
}

fn unspecified(like: SocketAddr, port: u16) -> SocketAddr {
    let ip: IpAddr = if like.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    SocketAddr::new(ip, port)
}

/// The primary endpoint, the answered probe from the filtering port, and that port's listener.
type FilteringPort = (
    SocketAddr,
    Answered,
    filtering::TaskGuard,
    filtering::Arrivals,
);

/// Step 1: the first server that answers becomes the primary.
async fn open_filtering_port(
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<FilteringPort, ClassifyError> {
    let mut reasons = Vec::new();
    for server in servers {
        let (listener, port) = socket::listener(unspecified(*server, 0))?;
        let (socket, _) = socket::bound(unspecified(*server, port))?;
        match probe::run(socket, *server, timeout).await {
            Ok(answered) => {
                let (guard, arrivals) = filtering::spawn_listener(listener);
                return Ok((*server, answered, guard, arrivals));
            }
            Err((_, failure)) => {
                fatal(*server, &failure)?;
                reasons.push(format!("{server}: {failure}"));
            }
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

/// Step 2a: from one local port, one probe per target, in parallel.
async fn mapping_probes(
    local: SocketAddr,
    targets: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Probe>, ClassifyError> {
    let (first, port) = socket::bound(local)?;
    let mut sockets = vec![first];
    for _ in 1..targets.len() {
        sockets.push(socket::bound(SocketAddr::new(local.ip(), port))?.0);
    }
    let mut running = JoinSet::new();
    for (i, (socket, target)) in sockets.into_iter().zip(targets).enumerate() {
        let target = *target;
        running.spawn(async move { (i, probe::run(socket, target, timeout).await) });
    }
    let mut probes = Vec::new();
    while let Some(joined) = running.join_next().await {
        let Ok((i, outcome)) = joined else { continue };
        let probe = match outcome {
            Ok(answered) => answered.probe,
            Err((probe, failure)) => {
                fatal(probe.server, &failure)?;
                probe
            }
        };
        probes.push((i, probe));
    }
    probes.sort_by_key(|(i, _)| *i);
    let probes: Vec<Probe> = probes.into_iter().map(|(_, p)| p).collect();
    let requested = local.port();
    if requested != 0 {
        if let Some(p) = probes.iter().find(|p| p.local.port() != requested) {
            return Err(ClassifyError::LocalPortNotKept {
                requested,
                got: p.local.port(),
            });
        }
    }
    Ok(probes)
}

/// Spacing of the allocation probes' SYNs: enough for the NAT to see them in
/// launch order (one path keeps packet order), short enough to cost one round trip in all.
const ALLOCATION_SPACING: Duration = Duration::from_millis(10);

/// Step 2b: fresh local ports, each to the primary, launched a few
/// milliseconds apart and ordered by when each SYN left. Run on a
/// current-thread runtime, so that no two connect() calls race.
async fn allocation_probes(primary: SocketAddr, count: usize, timeout: Duration) -> Vec<Probe> {
    let mut running = tokio::task::JoinSet::new();
    for i in 0..count {
        running.spawn(async move {
            tokio::time::sleep(ALLOCATION_SPACING * i as u32).await;
            // Stamped with no await point before connect() issues the SYN: under
            // load timers fire together and tasks run out of index order, but the
            // stamps give the order the NAT saw the SYNs in.
            let sent = std::time::Instant::now();
            let probe = match socket::bound(unspecified(primary, 0)) {
                Err(e) => Probe {
                    local: unspecified(primary, 0),
                    server: primary,
                    observed: None,
                    rtt_ms: None,
                    error: Some(e.to_string()),
                },
                Ok((socket, _)) => match probe::run(socket, primary, timeout).await {
                    Ok(answered) => answered.probe,
                    Err((probe, _)) => probe,
                },
            };
            (sent, probe)
        });
    }
    let mut probes: Vec<(std::time::Instant, Probe)> = Vec::with_capacity(count);
    while let Some(joined) = running.join_next().await {
        if let Ok(done) = joined {
            probes.push(done);
        }
    }
    // The order the SYNs left in is the order the NAT allocated in.
    probes.sort_by_key(|(sent, _)| *sent);
    probes.into_iter().map(|(_, probe)| probe).collect()
}
