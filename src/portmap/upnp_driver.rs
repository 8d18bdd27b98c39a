//! The thin tokio driver of UPnP IGD: SSDP over a UDP socket connected to the gateway's port 1900, then bounded HTTP exchanges with the gateway's own address and nothing else.
//!
//! One pass per run ([`measure_upnp`]): search, fetch the description,
//! pick the WAN connection service, ask the external address, add a
//! mapping for each port (IGDv2 `AddAnyPortMapping`, IGDv1
//! `AddPortMapping`), read its lease back (`GetSpecificPortMappingEntry`),
//! hold what was granted (checking the probe port's mapping with the echo
//! server's dial-back), and delete every mapping asked (`DeletePortMapping`),
//! also one whose answer never came. A stop ends the search and the hold
//! at once and adds nothing more; the deletions still run, each bounded.
//! Every URL followed was checked by [`upnp::gateway_url`] to be on the
//! gateway's address; [`exchange`] checks it again before it connects.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use punchscope_analysis::classify::HopClass;
use punchscope_analysis::portmap::{
    GatewayAnswer, GrantedMapping, MappingAttempt, MappingProtocol, MappingRelease, PortRole,
    MAX_ERRORS_KEPT,
};
use punchscope_analysis::result::MaskedEndpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::driver::{check_reach, PortMapConfig, PortMapError};
use super::upnp::{
    self, Action, HttpAnswer, HttpReader, HttpTarget, SoapAnswer, SsdpSearch, UpnpError,
    WanService, MAX_DESCRIPTION, MAX_SOAP_ANSWER, MAX_SSDP,
};
use crate::probe::Stop;

/// UPnP's bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpnpLimits {
    /// M-SEARCH rounds (each asks IGD:2 and IGD:1), `search_interval` apart.
    pub search_rounds: u32,
    pub search_interval: Duration,
    /// The search gives up this long after its first round.
    pub search_wait: Duration,
    /// One HTTP exchange (connect, request, whole answer) at most this long.
    pub exchange_timeout: Duration,
}

impl Default for UpnpLimits {
    /// Three rounds a second apart, 3.5 s in all (a unicast search is
    /// answered at once); 3 s per HTTP exchange with the router.
    fn default() -> Self {
        UpnpLimits {
            search_rounds: 3,
            search_interval: Duration::from_secs(1),
            search_wait: Duration::from_millis(3500),
            exchange_timeout: Duration::from_secs(3),
        }
    }
}

/// Why an HTTP exchange with the gateway gave no answer.
#[derive(Debug)]
enum ExchangeError {
    Refused,
    Unreachable,
    Timeout,
    Bad(UpnpError),
}

impl ExchangeError {
    fn answer(&self) -> GatewayAnswer {
        match self {
            ExchangeError::Refused => GatewayAnswer::Refused,
            ExchangeError::Unreachable => GatewayAnswer::Unreachable,
            ExchangeError::Timeout => GatewayAnswer::Timeout,
            ExchangeError::Bad(_) => GatewayAnswer::Malformed,
        }
    }

    fn words(&self) -> String {
        match self {
            ExchangeError::Refused => "connection refused".into(),
            ExchangeError::Unreachable => "gateway unreachable".into(),
            ExchangeError::Timeout => "no whole answer in time".into(),
            ExchangeError::Bad(e) => e.to_string(),
        }
    }
}

fn io_error(e: &io::Error) -> ExchangeError {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ExchangeError::Refused,
        Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => ExchangeError::Unreachable,
        _ => ExchangeError::Bad(UpnpError::Io("connection failed or was reset")),
    }
}

/// One HTTP exchange with `target` (which must be on `gateway`): the
/// answer, at most `max` bytes, and our own address on the connection.
async fn exchange(
    gateway: Ipv4Addr,
    target: &HttpTarget,
    request: &[u8],
    max: usize,
    timeout: Duration,
) -> Result<(HttpAnswer, Ipv4Addr), ExchangeError> {
    if *target.addr.ip() != gateway {
        // Unreachable by construction (gateway_url), kept as the last guard.
        return Err(ExchangeError::Bad(UpnpError::OffGateway { what: "URL" }));
    }
    let work = async {
        let mut stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| io_error(&e))?;
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(a)) => *a.ip(),
            _ => Ipv4Addr::UNSPECIFIED,
        };
        stream.write_all(request).await.map_err(|e| io_error(&e))?;
        let mut reader = HttpReader::new(max);
        let mut buffer = vec![0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.map_err(|e| io_error(&e))?;
            if n == 0 {
                return reader.finish(true).map(|a| (a, local)).map_err(ExchangeError::Bad);
            }
            if reader.push(&buffer[..n]).map_err(ExchangeError::Bad)? {
                return reader.finish(false).map(|a| (a, local)).map_err(ExchangeError::Bad);
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ExchangeError::Timeout))
}

/// The gateway's IGD, found and checked.
struct Igd {
    gateway: Ipv4Addr,
    service: WanService,
    control: HttpTarget,
}

/// How the search and description ended, for every record.
enum Found {
    Igd(Igd),
    /// Nothing usable: the answer kind, and the errors on the way.
    Nothing(GatewayAnswer),
}

fn note(record: &mut MappingAttempt, stage: &str, error: impl std::fmt::Display) {
    record.error_count += 1;
    if record.errors.len() < MAX_ERRORS_KEPT {
        record.errors.push(format!("{stage}: {error}"));
    }
}

/// A record of nothing yet, for one port.
fn record(config: &PortMapConfig, role: PortRole, port: u16) -> MappingAttempt {
    MappingAttempt {
        protocol: MappingProtocol::Upnp,
        port_role: role,
        internal_port: port,
        requested_lifetime_s: config.lifetime_s,
        answer: GatewayAnswer::Timeout,
        requests_sent: 0,
        rtt_ms: None,
        result_code: None,
        result: None,
        server_version: None,
        service: None,
        granted: None,
        renewals: 0,
        lost_state: 0,
        errors: Vec::new(),
        error_count: 0,
        release: None,
        reachable: None,
    }
}

/// Searches the gateway's IGD and reads its description; errors go into every record.
async fn find_igd(
    config: &PortMapConfig,
    gateway: Ipv4Addr,
    records: &mut [MappingAttempt],
    stop: &Stop,
) -> Result<Found, PortMapError> {
    let limits = config.upnp;
    let ssdp = SocketAddrV4::new(gateway, config.ssdp_port);
    let socket_error = |source| PortMapError::Socket {
        gateway: ssdp.into(),
        source,
    };
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(socket_error)?;
    // Connected: only the gateway's port 1900 can answer, ICMP errors are reported.
    socket.connect(ssdp).await.map_err(socket_error)?;
    let started = Instant::now();
    let mut search = SsdpSearch::new(
        ssdp,
        limits.search_rounds,
        limits.search_interval,
        limits.search_wait,
        started.into_std(),
    );
    let mut buffer = vec![0u8; MAX_SSDP * 2];
    let mut icmp = None;
    while !search.is_done(Instant::now().into_std()) && icmp.is_none() {
        for datagram in search.poll_transmit(Instant::now().into_std()) {
            if let Err(e) = socket.send(&datagram).await {
                icmp = Some(io_error(&e).answer());
            }
        }
        let wake = Instant::from_std(search.poll_timeout());
        tokio::select! {
            received = socket.recv(&mut buffer) => match received {
                Ok(n) => search.handle_datagram(&buffer[..n], Instant::now().into_std()),
                Err(e) => icmp = Some(io_error(&e).answer()),
            },
            () = tokio::time::sleep_until(wake) => {}
            () = stop.stopped() => {
                for r in records.iter_mut() {
                    r.requests_sent = search.sent;
                    r.answer = GatewayAnswer::Stopped;
                }
                return Ok(Found::Nothing(GatewayAnswer::Stopped));
            }
        }
    }
    for r in records.iter_mut() {
        r.requests_sent = search.sent;
        for e in &search.errors {
            note(r, "SSDP", e);
        }
    }
    if let Some(answer) = icmp.filter(|_| search.found.is_none()) {
        return Ok(Found::Nothing(answer));
    }
    let Some(location) = search.found.take() else {
        let answer = if search.errors.is_empty() {
            GatewayAnswer::Timeout
        } else {
            GatewayAnswer::Malformed
        };
        return Ok(Found::Nothing(answer));
    };
    let failed = |records: &mut [MappingAttempt], stage: &str, e: &dyn std::fmt::Display| {
        for r in records.iter_mut() {
            note(r, stage, e);
        }
        Found::Nothing(GatewayAnswer::Malformed)
    };
    let get = upnp::get_request(&location);
    let fetched = tokio::select! {
        fetched = exchange(
            gateway,
            &location,
            &get,
            MAX_DESCRIPTION,
            limits.exchange_timeout,
        ) => fetched,
        () = stop.stopped() => {
            for r in records.iter_mut() {
                r.answer = GatewayAnswer::Stopped;
            }
            return Ok(Found::Nothing(GatewayAnswer::Stopped));
        }
    };
    let description = match fetched {
        Ok((answer, _)) if answer.status == 200 => upnp::parse_description(&answer.body),
        Ok((answer, _)) => Err(UpnpError::HttpStatus(answer.status)),
        Err(e) => return Ok(failed(records, "description", &e.words())),
    };
    let description = match description {
        Ok(d) => d,
        Err(e) => return Ok(failed(records, "description", &e)),
    };
    // URLBase (UPnP 1.0) is checked like any URL; without it, the location is the base.
    let base = match &description.url_base {
        Some(text) => match upnp::gateway_url("URLBase", text, None, gateway) {
            Ok(base) => base,
            Err(e) => return Ok(failed(records, "description", &e)),
        },
        None => location,
    };
    let mut last_error = None;
    for service in description.services {
        match upnp::gateway_url("controlURL", &service.control_url, Some(&base), gateway) {
            Ok(control) => {
                return Ok(Found::Igd(Igd {
                    gateway,
                    service,
                    control,
                }))
            }
            Err(e) => last_error = Some(e),
        }
    }
    let e = last_error.unwrap_or(UpnpError::NoWanService);
    Ok(failed(records, "description", &e))
}

/// One SOAP action: the answer, or why there was none.
async fn soap(
    igd: &Igd,
    action: &Action,
    exchange_timeout: Duration,
) -> Result<SoapAnswer, ExchangeError> {
    let request = upnp::soap_request(&igd.control, &igd.service.service_type, action);
    let (answer, _) = exchange(
        igd.gateway,
        &igd.control,
        &request,
        MAX_SOAP_ANSWER,
        exchange_timeout,
    )
    .await?;
    upnp::parse_soap_answer(&answer, action).map_err(ExchangeError::Bad)
}

/// Asks UPnP IGD for every port of `config`, holds, checks and deletes; the
/// records say what the gateway did. `Err` only when no socket could be opened.
pub(super) async fn measure_upnp(
    config: &PortMapConfig,
    stop: &Stop,
) -> Result<Vec<MappingAttempt>, PortMapError> {
    let mut records: Vec<MappingAttempt> = config
        .ports
        .iter()
        .map(|&(role, port)| record(config, role, port))
        .collect();
    let gateway = match config.gateway.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => {
            for r in &mut records {
                r.answer = GatewayAnswer::Unreachable;
                note(r, "SSDP", "the gateway is IPv6; IGD is asked over IPv4 only");
            }
            return Ok(records);
        }
    };
    let igd = match find_igd(config, gateway, &mut records, stop).await? {
        Found::Igd(igd) => igd,
        Found::Nothing(answer) => {
            for r in &mut records {
                r.answer = answer;
            }
            return Ok(records);
        }
    };
    let timeout = config.upnp.exchange_timeout;
    for r in &mut records {
        r.service = Some(igd.service.short.clone());
    }

    // The external address, once (it is the router's, not the mapping's).
    let mut external_ip = None;
    if !stop.is_stopped() {
        match soap(&igd, &Action::GetExternalIpAddress, timeout).await {
            Ok(SoapAnswer::Done(values)) => {
                external_ip = values
                    .get("NewExternalIPAddress")
                    .and_then(|v| v.parse::<Ipv4Addr>().ok());
                if external_ip.is_none() {
                    for r in &mut records {
                        note(r, "GetExternalIPAddress", "no usable address in the answer");
                    }
                }
            }
            Ok(SoapAnswer::Fault(code)) => {
                for r in &mut records {
                    note(r, "GetExternalIPAddress", upnp::fault_name(code));
                }
            }
            Err(e) => {
                for r in &mut records {
                    note(r, "GetExternalIPAddress", e.words());
                }
            }
        }
    }

    // Add, port by port; remember every external port that may be mapped.
    let mut to_delete: Vec<Option<u16>> = vec![None; records.len()];
    for (i, r) in records.iter_mut().enumerate() {
        if stop.is_stopped() {
            r.answer = GatewayAnswer::Stopped;
            continue;
        }
        to_delete[i] = add(config, &igd, r, external_ip, stop).await;
    }

    // Hold what was granted; check the probe port's mapping from the internet.
    let granted: Vec<(PortRole, u16)> = records
        .iter()
        .filter_map(|r| r.granted.as_ref().map(|g| (r.port_role, g.external_port)))
        .collect();
    if !granted.is_empty() && !stop.is_stopped() {
        let probe_port = granted
            .iter()
            .find(|(role, _)| *role == PortRole::Probe)
            .map(|(_, port)| *port);
        let check = async {
            match (&config.reach, probe_port) {
                (Some(reach), Some(port)) => Some(check_reach(reach, port).await),
                _ => None,
            }
        };
        let hold = async { tokio::join!(check, tokio::time::sleep(config.hold)).0 };
        tokio::select! {
            checked = hold => {
                if let Some(reached) = checked {
                    if let Some(r) = records
                        .iter_mut()
                        .find(|r| r.port_role == PortRole::Probe && r.granted.is_some())
                    {
                        r.reachable = Some(reached);
                    }
                }
            }
            () = stop.stopped() => {}
        }
    }

    // Delete everything that may be mapped, stop or not: each exchange is bounded.
    for (r, external_port) in records.iter_mut().zip(to_delete) {
        let Some(external_port) = external_port else {
            continue;
        };
        let action = Action::DeletePortMapping { external_port };
        let (answer, result_code, succeeded) = match soap(&igd, &action, timeout).await {
            Ok(SoapAnswer::Done(_)) => (GatewayAnswer::Answered, Some(0), true),
            Ok(SoapAnswer::Fault(code)) => {
                note(r, "DeletePortMapping", upnp::fault_name(code));
                (GatewayAnswer::Answered, code, false)
            }
            Err(e) => {
                note(r, "DeletePortMapping", e.words());
                (e.answer(), None, false)
            }
        };
        r.release = Some(MappingRelease {
            answer,
            result_code,
            succeeded,
            requests_sent: 1,
        });
    }
    Ok(records)
}

/// Asks a mapping for `r`'s port and reads its lease back; the external
/// port to delete later, when the router may have mapped one.
async fn add(
    config: &PortMapConfig,
    igd: &Igd,
    r: &mut MappingAttempt,
    external_ip: Option<Ipv4Addr>,
    stop: &Stop,
) -> Option<u16> {
    let timeout = config.upnp.exchange_timeout;
    let port = r.internal_port;
    // NewInternalClient: our own address towards the router (secure-mode
    // routers map only the asker's own address).
    let client = match local_ipv4(igd).await {
        Some(ip) => ip,
        None => {
            r.answer = GatewayAnswer::Unreachable;
            note(r, "AddPortMapping", "no local IPv4 address towards the gateway");
            return None;
        }
    };
    let mut action = if igd.service.version >= 2 {
        Action::AddAnyPortMapping {
            external_port: port,
            internal_port: port,
            internal_client: client,
            lease_s: config.lifetime_s,
        }
    } else {
        Action::AddPortMapping {
            external_port: port,
            internal_port: port,
            internal_client: client,
            lease_s: config.lifetime_s,
        }
    };
    let started = Instant::now();
    loop {
        r.requests_sent += 1;
        let outcome = tokio::select! {
            outcome = soap(igd, &action, timeout) => outcome,
            () = stop.stopped() => {
                // The router may have mapped it already: delete it too.
                r.answer = GatewayAnswer::Stopped;
                return Some(port);
            }
        };
        r.rtt_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        match outcome {
            Ok(SoapAnswer::Done(values)) => {
                r.answer = GatewayAnswer::Answered;
                r.result_code = Some(0);
                r.result = Some("success".into());
                let external_port = match action {
                    Action::AddAnyPortMapping { .. } => {
                        match values.get("NewReservedPort").and_then(|v| v.parse::<u16>().ok()) {
                            Some(p) if p != 0 => p,
                            _ => {
                                note(r, action.name(), "no usable NewReservedPort; the port asked is assumed");
                                port
                            }
                        }
                    }
                    _ => port,
                };
                let lifetime_s = lease_of(igd, r, external_port, timeout).await;
                r.granted = Some(GrantedMapping {
                    lifetime_s: lifetime_s.unwrap_or(config.lifetime_s),
                    external: external_ip
                        .map(|ip| MaskedEndpoint::new(SocketAddr::new(ip.into(), external_port))),
                    external_port,
                    external_class: external_ip.map(|ip| HopClass::of(ip.into())),
                });
                return Some(external_port);
            }
            Ok(SoapAnswer::Fault(code)) => {
                // An IGDv2 router without AddAnyPortMapping: ask the IGDv1 way.
                if code == Some(401) && matches!(action, Action::AddAnyPortMapping { .. }) {
                    note(r, action.name(), upnp::fault_name(code));
                    action = Action::AddPortMapping {
                        external_port: port,
                        internal_port: port,
                        internal_client: client,
                        lease_s: config.lifetime_s,
                    };
                    continue;
                }
                r.answer = GatewayAnswer::Answered;
                r.result_code = code;
                r.result = Some(upnp::fault_name(code).into());
                // Refused: nothing mapped. A router that only grants
                // permanent leases (725) is not asked for one: a mapping
                // whose deletion failed would stay open for good.
                return None;
            }
            Err(e) => {
                r.answer = e.answer();
                note(r, action.name(), e.words());
                // The request may have been carried out before the answer was lost.
                return matches!(e, ExchangeError::Timeout | ExchangeError::Bad(_)).then_some(port);
            }
        }
    }
}

/// The lease the router holds for `external_port`, as it reports it (0 is permanent).
async fn lease_of(
    igd: &Igd,
    r: &mut MappingAttempt,
    external_port: u16,
    timeout: Duration,
) -> Option<u32> {
    let action = Action::GetSpecificPortMappingEntry { external_port };
    match soap(igd, &action, timeout).await {
        Ok(SoapAnswer::Done(values)) => {
            let lease = values
                .get("NewLeaseDuration")
                .and_then(|v| v.parse::<u32>().ok());
            if lease.is_none() {
                note(r, action.name(), "no usable NewLeaseDuration");
            }
            lease
        }
        Ok(SoapAnswer::Fault(code)) => {
            note(r, action.name(), upnp::fault_name(code));
            None
        }
        Err(e) => {
            note(r, action.name(), e.words());
            None
        }
    }
}

/// This host's IPv4 address on the route to the gateway (a UDP socket's
/// `connect` picks it; nothing is sent).
async fn local_ipv4(igd: &Igd) -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    socket.connect(igd.control.addr).await.ok()?;
    match socket.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}
