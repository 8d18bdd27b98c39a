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

use super::driver::{hold_and_check, PortMapConfig, PortMapError};
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
                return reader
                    .finish(true)
                    .map(|a| (a, local))
                    .map_err(ExchangeError::Bad);
            }
            if reader.push(&buffer[..n]).map_err(ExchangeError::Bad)? {
                return reader
                    .finish(false)
                    .map(|a| (a, local))
                    .map_err(ExchangeError::Bad);
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
    Igd(Box<Igd>),
    /// Nothing usable: the answer kind (the errors are in the records).
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
    MappingAttempt::unanswered(MappingProtocol::Upnp, role, port, config.lifetime_s)
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
                return Ok(Found::Igd(Box::new(Igd {
                    gateway,
                    service,
                    control,
                })))
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

/// UPnP mappings asked and not yet deleted: what [`open_upnp`] leaves for
/// [`close_upnp`].
pub(super) struct UpnpOpened {
    /// One record per port, in the order asked.
    pub(super) records: Vec<MappingAttempt>,
    /// The gateway's IGD, when one was found (nothing to delete otherwise).
    igd: Option<Box<Igd>>,
    /// Per record, the external port the router may have mapped.
    to_delete: Vec<Option<u16>>,
    exchange_timeout: Duration,
}

/// Asks UPnP IGD for every port of `config`, holds, checks and deletes; the
/// records say what the gateway did. `Err` only when no socket could be opened.
pub(super) async fn measure_upnp(
    config: &PortMapConfig,
    stop: &Stop,
) -> Result<Vec<MappingAttempt>, PortMapError> {
    let mut opened = open_upnp(config, stop).await?;
    // Hold what was granted; check the probe port's mapping from the internet.
    let granted: Vec<(PortRole, u16)> = opened
        .records
        .iter()
        .filter_map(|r| r.granted.as_ref().map(|g| (r.port_role, g.external_port)))
        .collect();
    if !granted.is_empty() && !stop.is_stopped() {
        let probe_port = granted
            .iter()
            .find(|(role, _)| *role == PortRole::Probe)
            .map(|(_, port)| *port);
        let checked = hold_and_check(config, probe_port, stop).await;
        if let Some(reached) = checked {
            if let Some(r) = opened
                .records
                .iter_mut()
                .find(|r| r.port_role == PortRole::Probe && r.granted.is_some())
            {
                r.reachable = Some(reached);
            }
        }
    }
    Ok(close_upnp(opened).await)
}

/// Finds the gateway's IGD and asks a mapping for each of `config`'s ports;
/// [`close_upnp`] deletes them.
pub(super) async fn open_upnp(
    config: &PortMapConfig,
    stop: &Stop,
) -> Result<UpnpOpened, PortMapError> {
    let timeout = config.upnp.exchange_timeout;
    let mut records: Vec<MappingAttempt> = config
        .ports
        .iter()
        .map(|&(role, port)| record(config, role, port))
        .collect();
    let nothing = |records| UpnpOpened {
        to_delete: vec![None; config.ports.len()],
        records,
        igd: None,
        exchange_timeout: timeout,
    };
    let gateway = match config.gateway.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => {
            for r in &mut records {
                r.answer = GatewayAnswer::Unreachable;
                note(
                    r,
                    "SSDP",
                    "the gateway is IPv6; IGD is asked over IPv4 only",
                );
            }
            return Ok(nothing(records));
        }
    };
    let igd = match find_igd(config, gateway, &mut records, stop).await? {
        Found::Igd(igd) => igd,
        Found::Nothing(answer) => {
            for r in &mut records {
                r.answer = answer;
            }
            return Ok(nothing(records));
        }
    };
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

    Ok(UpnpOpened {
        records,
        igd: Some(igd),
        to_delete,
        exchange_timeout: timeout,
    })
}

/// Deletes every mapping [`open_upnp`] may have made, stopped or not: each
/// exchange is bounded. Returns the records with their deletions.
pub(super) async fn close_upnp(opened: UpnpOpened) -> Vec<MappingAttempt> {
    let UpnpOpened {
        mut records,
        igd,
        to_delete,
        exchange_timeout: timeout,
    } = opened;
    let Some(igd) = igd else {
        return records;
    };
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
    records
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
            note(
                r,
                "AddPortMapping",
                "no local IPv4 address towards the gateway",
            );
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
                        match values
                            .get("NewReservedPort")
                            .and_then(|v| v.parse::<u16>().ok())
                        {
                            Some(p) if p != 0 => p,
                            _ => {
                                note(
                                    r,
                                    action.name(),
                                    "no usable NewReservedPort; the port asked is assumed",
                                );
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

#[cfg(test)]
mod tests {
    //! A hostile gateway on loopback: every kind of bad answer is a record,
    //! nothing crashes, and nothing but the gateway (127.0.0.1) is
    //! contacted: a trap listener on 127.0.0.2 counts every connection.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;

    use super::*;
    use crate::portmap::upnp::tests::DESCRIPTION_XML;
    use crate::portmap::Schedule;

    /// What the fake gateway's HTTP server does with a request.
    #[derive(Clone)]
    enum Reply {
        Bytes(Vec<u8>),
        /// Reads the request, then says nothing.
        Hang,
        /// One byte every 50 ms, forever.
        Trickle,
    }

    type Handler = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

    struct FakeIgd {
        ssdp: SocketAddr,
        /// SOAP actions (or GET paths) asked, in order.
        asked: Arc<Mutex<Vec<String>>>,
        /// M-SEARCH datagrams received.
        searches: Arc<AtomicUsize>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeIgd {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    /// Answers every M-SEARCH with `ssdp(http_port)` and serves HTTP with `handler`.
    async fn fake_igd(
        ssdp: impl Fn(u16) -> Vec<u8> + Send + Sync + 'static,
        handler: Handler,
    ) -> FakeIgd {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_port = http.local_addr().unwrap().port();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ssdp_addr = udp.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let searches = Arc::new(AtomicUsize::new(0));
        let counted = searches.clone();
        let udp_task = tokio::spawn(async move {
            let mut buffer = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
                if buffer[..n].starts_with(b"M-SEARCH * HTTP/1.1\r\n") {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let _ = udp.send_to(&ssdp(http_port), from).await;
                }
            }
        });
        let log = asked.clone();
        let http_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = http.accept().await {
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    // The head, then the body by its Content-Length.
                    loop {
                        let Ok(n) = stream.read(&mut buffer).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|l| l.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if body.len() >= length {
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                    let action = text
                        .lines()
                        .find_map(|l| l.strip_prefix("SOAPAction: "))
                        .and_then(|a| a.trim_matches('"').split_once('#'))
                        .map(|(_, a)| a.to_string())
                        .unwrap_or_default();
                    log.lock().unwrap().push(if action.is_empty() {
                        format!("GET {path}")
                    } else {
                        action.clone()
                    });
                    match handler(&path, &action) {
                        Reply::Bytes(bytes) => {
                            let _ = stream.write_all(&bytes).await;
                        }
                        Reply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                        Reply::Trickle => loop {
                            if stream.write_all(b"x").await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        },
                    }
                });
            }
        });
        FakeIgd {
            ssdp: ssdp_addr,
            asked,
            searches,
            tasks: vec![udp_task, http_task],
        }
    }

    /// A listener on another loopback address: anything the probe must never contact.
    struct Trap {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Trap {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn trap() -> Trap {
        let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        Trap {
            addr,
            connections,
            task,
        }
    }

    fn ssdp_to(location: String) -> impl Fn(u16) -> Vec<u8> + Send + Sync + 'static {
        move |port| {
            format!(
                "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\nLOCATION: {}\r\n\r\n",
                location.replace("{port}", &port.to_string())
            )
            .into_bytes()
        }
    }

    fn on_gateway() -> impl Fn(u16) -> Vec<u8> + Send + Sync + 'static {
        ssdp_to("http://127.0.0.1:{port}/rootDesc.xml".into())
    }

    fn http(status: &str, body: &str) -> Reply {
        Reply::Bytes(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    fn envelope(inner: &str) -> String {
        format!("<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>")
    }

    fn fault(code: u16) -> Reply {
        http(
            "500 Internal Server Error",
            &envelope(&format!("<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>x</errorDescription></UPnPError></detail></s:Fault>")),
        )
    }

    fn ok(action: &str, values: &str) -> Reply {
        http(
            "200 OK",
            &envelope(&format!(
                "<u:{action}Response xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\">{values}</u:{action}Response>"
            )),
        )
    }

    /// A router that grants everything; `lease` is what it reports back.
    fn granting(path: &str, action: &str, lease: u32) -> Reply {
        match (path, action) {
            ("/rootDesc.xml", "") => http("200 OK", DESCRIPTION_XML),
            (_, "GetExternalIPAddress") => ok(
                action,
                "<NewExternalIPAddress>203.0.113.9</NewExternalIPAddress>",
            ),
            (_, "AddAnyPortMapping") => ok(action, "<NewReservedPort>18333</NewReservedPort>"),
            (_, "AddPortMapping" | "DeletePortMapping") => ok(action, ""),
            (_, "GetSpecificPortMappingEntry") => ok(
                action,
                &format!("<NewLeaseDuration>{lease}</NewLeaseDuration>"),
            ),
            _ => http("404 Not Found", ""),
        }
    }

    fn config(igd: &FakeIgd) -> PortMapConfig {
        let unused = Schedule::natpmp();
        PortMapConfig {
            gateway: SocketAddr::new(igd.ssdp.ip(), 9),
            protocols: vec![MappingProtocol::Upnp],
            ports: vec![(PortRole::Node, 8333), (PortRole::Probe, 40123)],
            lifetime_s: 120,
            hold: Duration::from_millis(50),
            pcp_schedule: unused,
            natpmp_schedule: unused,
            reach: None,
            ssdp_port: igd.ssdp.port(),
            upnp: UpnpLimits {
                search_rounds: 2,
                search_interval: Duration::from_millis(200),
                search_wait: Duration::from_millis(600),
                exchange_timeout: Duration::from_millis(500),
            },
        }
    }

    async fn run(igd: &FakeIgd) -> Vec<MappingAttempt> {
        tokio::time::timeout(
            Duration::from_secs(20),
            measure_upnp(&config(igd), &Stop::new().1),
        )
        .await
        .expect("bounded")
        .expect("sockets open")
    }

    #[tokio::test]
    async fn a_granting_igd2_router_is_asked_read_back_and_every_mapping_deleted() {
        let igd = fake_igd(on_gateway(), Arc::new(|p: &str, a: &str| granting(p, a, 0))).await;
        let records = run(&igd).await;
        assert_eq!(records.len(), 2);
        for r in &records {
            assert_eq!(r.answer, GatewayAnswer::Answered, "{r:#?}");
            assert_eq!(
                (r.result_code, r.result.as_deref()),
                (Some(0), Some("success"))
            );
            assert_eq!(r.service.as_deref(), Some("WANIPConnection:2"));
            let g = r.granted.as_ref().unwrap();
            assert_eq!(g.external_port, 18333, "the port the router reserved");
            assert_eq!(
                g.lifetime_s, 0,
                "a permanent lease is recorded as the router said"
            );
            assert_eq!(g.external.as_ref().unwrap().net, "203.0.113.0/24");
            assert_eq!(g.external_class, Some(HopClass::Public));
            assert!(r.release.as_ref().unwrap().succeeded);
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
        let asked = igd.asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            [
                "GET /rootDesc.xml",
                "GetExternalIPAddress",
                "AddAnyPortMapping",
                "GetSpecificPortMappingEntry",
                "AddAnyPortMapping",
                "GetSpecificPortMappingEntry",
                "DeletePortMapping",
                "DeletePortMapping",
            ]
        );
        assert_eq!(
            igd.searches.load(Ordering::Relaxed),
            2,
            "one round was enough"
        );
    }

    #[tokio::test]
    async fn an_igd1_router_is_asked_with_add_port_mapping_for_the_port_itself() {
        let v1 = DESCRIPTION_XML.replace(
            "<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><controlURL>/ctl/IPConn</controlURL></service>",
            "",
        );
        assert!(!v1.contains("WANIPConnection:2"));
        let igd = fake_igd(
            on_gateway(),
            Arc::new(move |p: &str, a: &str| match p {
                "/rootDesc.xml" => http("200 OK", &v1),
                _ => granting(p, a, 120),
            }),
        )
        .await;
        for r in run(&igd).await {
            assert_eq!(r.service.as_deref(), Some("WANIPConnection:1"));
            let g = r.granted.as_ref().unwrap();
            assert_eq!((g.external_port, g.lifetime_s), (r.internal_port, 120));
            assert!(r.release.as_ref().unwrap().succeeded);
        }
        let asked = igd.asked.lock().unwrap().clone();
        assert_eq!(asked.iter().filter(|a| *a == "AddPortMapping").count(), 2);
        assert!(!asked.iter().any(|a| a == "AddAnyPortMapping"), "{asked:?}");
    }

    #[tokio::test]
    async fn locations_and_urls_off_the_gateway_are_recorded_and_never_contacted() {
        let trap = trap().await;
        let elsewhere = format!("http://{}/rootDesc.xml", trap.addr);
        // The LOCATION itself.
        let igd = fake_igd(
            ssdp_to(elsewhere.clone()),
            Arc::new(|p: &str, a: &str| granting(p, a, 120)),
        )
        .await;
        let records = run(&igd).await;
        for r in &records {
            assert_eq!(r.answer, GatewayAnswer::Malformed, "{r:#?}");
            assert!(
                r.errors[0].contains("not on the gateway's address: not contacted"),
                "{:?}",
                r.errors
            );
            assert!(
                !r.errors.iter().any(|e| e.contains("127.0.0.2")),
                "no address in the record"
            );
        }
        assert!(igd.asked.lock().unwrap().is_empty());
        // A controlURL, and a URLBase, elsewhere.
        let control = DESCRIPTION_XML.replace("/ctl/", &format!("http://{}/ctl/", trap.addr));
        let base = DESCRIPTION_XML.replace(
            "<specVersion>",
            &format!("<URLBase>http://{}/</URLBase><specVersion>", trap.addr),
        );
        for description in [control, base] {
            let igd = fake_igd(
                on_gateway(),
                Arc::new(move |p: &str, _: &str| match p {
                    "/rootDesc.xml" => http("200 OK", &description),
                    _ => http("404 Not Found", ""),
                }),
            )
            .await;
            let records = run(&igd).await;
            for r in &records {
                assert_eq!(r.answer, GatewayAnswer::Malformed);
                assert!(
                    r.errors.iter().any(|e| e.contains("not contacted")),
                    "{:?}",
                    r.errors
                );
            }
            assert_eq!(*igd.asked.lock().unwrap(), ["GET /rootDesc.xml"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            trap.connections.load(Ordering::Relaxed),
            0,
            "nothing else was contacted"
        );
    }

    #[tokio::test]
    async fn malformed_ssdp_answers_are_errors_and_the_search_ends_in_time() {
        for (answer, expected) in [
            (b"garbage".to_vec(), "not an HTTP"),
            (b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec(), "status 404"),
            (b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n".to_vec(), "no LOCATION"),
            (vec![b'H'; 3000], "longer than"),
            (
                b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n".to_vec(),
                "not http",
            ),
        ] {
            let igd = fake_igd(
                move |_| answer.clone(),
                Arc::new(|p: &str, a: &str| granting(p, a, 120)),
            )
            .await;
            let records = run(&igd).await;
            for r in &records {
                assert_eq!(r.answer, GatewayAnswer::Malformed, "{r:#?}");
                assert!(r.errors[0].contains(expected), "{expected}: {:?}", r.errors);
                assert_eq!(r.requests_sent, 4, "two rounds of two");
            }
            assert!(igd.asked.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn oversized_malicious_or_slow_descriptions_are_bounded_errors() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><root>&b;</root>"#;
        let deep = format!("{}{}", "<a>".repeat(8_000), "</a>".repeat(8_000));
        let big = format!("<root>{}</root>", " ".repeat(70_000));
        let chunked_lie =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\nabc".to_string();
        let cases: Vec<(Reply, &str)> = vec![
            (http("200 OK", laughs), "XML"),
            (http("200 OK", &deep), "deeper"),
            (http("200 OK", &big), "longer than"),
            (
                Reply::Bytes(big.clone().into_bytes()),
                "head longer than 8 KiB",
            ),
            (
                Reply::Bytes(b"<root/>\r\n\r\n".to_vec()),
                "not an HTTP status line",
            ),
            (Reply::Bytes(chunked_lie.into_bytes()), "ended before"),
            (http("302 Found", ""), "status 302"),
            (Reply::Hang, "no whole answer in time"),
            (Reply::Trickle, "no whole answer in time"),
        ];
        for (reply, expected) in cases {
            let started = Instant::now();
            let igd = fake_igd(
                on_gateway(),
                Arc::new(move |_: &str, _: &str| reply.clone()),
            )
            .await;
            let records = run(&igd).await;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "bounded: {expected}"
            );
            for r in &records {
                assert_eq!(r.answer, GatewayAnswer::Malformed, "{r:#?}");
                assert!(
                    r.errors
                        .iter()
                        .any(|e| e.starts_with("description: ") && e.contains(expected)),
                    "{expected}: {:?}",
                    r.errors
                );
            }
        }
    }

    #[tokio::test]
    async fn soap_faults_are_results_and_unanswered_adds_are_deleted_anyway() {
        // Refused with 718: recorded, nothing to delete.
        let igd = fake_igd(
            on_gateway(),
            Arc::new(|p: &str, a: &str| match a {
                "AddAnyPortMapping" => fault(718),
                _ => granting(p, a, 120),
            }),
        )
        .await;
        for r in run(&igd).await {
            assert_eq!(r.answer, GatewayAnswer::Answered);
            assert_eq!(r.result_code, Some(718));
            assert_eq!(r.result.as_deref(), Some("conflict_in_mapping_entry"));
            assert!(r.granted.is_none() && r.release.is_none());
        }
        assert!(!igd
            .asked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "DeletePortMapping"));

        // Only permanent leases (725): recorded, and no permanent mapping is asked.
        let igd = fake_igd(
            on_gateway(),
            Arc::new(|p: &str, a: &str| match a {
                "AddAnyPortMapping" => fault(725),
                _ => granting(p, a, 120),
            }),
        )
        .await;
        for r in run(&igd).await {
            assert_eq!(r.result.as_deref(), Some("only_permanent_leases_supported"));
            assert_eq!(
                r.requests_sent,
                2 + 1,
                "two M-SEARCH, one add: no retry with lease 0"
            );
        }

        // No AddAnyPortMapping (401): asked again the IGDv1 way.
        let igd = fake_igd(
            on_gateway(),
            Arc::new(|p: &str, a: &str| match a {
                "AddAnyPortMapping" => fault(401),
                _ => granting(p, a, 120),
            }),
        )
        .await;
        for r in run(&igd).await {
            let g = r.granted.as_ref().expect("granted by AddPortMapping");
            assert_eq!((g.external_port, g.lifetime_s), (r.internal_port, 120));
            assert!(r.errors[0].contains("invalid_action"), "{:?}", r.errors);
        }

        // The add hangs: timeout, and its port is deleted in case it was mapped.
        let igd = fake_igd(
            on_gateway(),
            Arc::new(|p: &str, a: &str| match a {
                "AddAnyPortMapping" => Reply::Hang,
                "GetExternalIPAddress" => fault(501),
                _ => granting(p, a, 120),
            }),
        )
        .await;
        for r in run(&igd).await {
            assert_eq!(r.answer, GatewayAnswer::Timeout, "{r:#?}");
            assert!(r.granted.is_none());
            assert!(r.release.as_ref().unwrap().succeeded, "deleted anyway");
            assert!(
                r.errors[0].contains("GetExternalIPAddress: action_failed"),
                "{:?}",
                r.errors
            );
        }
        let deletes = igd
            .asked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == "DeletePortMapping")
            .count();
        assert_eq!(deletes, 2);
    }

    #[tokio::test]
    async fn a_stop_during_the_hold_deletes_at_once() {
        let igd = fake_igd(
            on_gateway(),
            Arc::new(|p: &str, a: &str| granting(p, a, 120)),
        )
        .await;
        let mut config = config(&igd);
        config.hold = Duration::from_secs(3600);
        let (handle, stop) = Stop::new();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            handle.stop();
        });
        let records = tokio::time::timeout(Duration::from_secs(10), measure_upnp(&config, &stop))
            .await
            .expect("the stop cuts the hold")
            .unwrap();
        stopper.await.unwrap();
        for r in &records {
            assert!(
                r.granted.is_some() && r.release.as_ref().unwrap().succeeded,
                "{r:#?}"
            );
        }
    }

    #[tokio::test]
    async fn silence_and_a_closed_ssdp_port_are_outcomes() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let igd = FakeIgd {
            ssdp: silent.local_addr().unwrap(),
            asked: Arc::default(),
            searches: Arc::default(),
            tasks: Vec::new(),
        };
        for r in run(&igd).await {
            assert_eq!((r.answer, r.requests_sent), (GatewayAnswer::Timeout, 4));
        }
        drop(silent);
        for r in run(&igd).await {
            assert_eq!(r.answer, GatewayAnswer::Refused, "ICMP port unreachable");
        }
    }
}
