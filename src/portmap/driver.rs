//! The thin tokio driver of port mapping sessions: one UDP socket per mapping, connected to the gateway's port, so only the gateway's datagrams arrive and ICMP errors are reported.
//!
//! [`measure`] asks each protocol in turn (PCP, then NAT-PMP, so one
//! protocol's mapping never meets the other's), all ports of a protocol at
//! once; holds what was granted for [`PortMapConfig::hold`]; and deletes it
//! before going on. A stop (Ctrl-C) deletes at once and asks nothing more.
//! Every wait is bounded by the sessions' schedules and an outer deadline.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use punchscope_analysis::portmap::{
    MappingAttempt, MappingProtocol, PortMappingReport, PortRole, Reachability,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::session::{IcmpError, Session, SessionSpec};
use super::upnp::SSDP_PORT;
use super::upnp_driver::{measure_upnp, UpnpLimits};
use super::{Schedule, DEFAULT_LIFETIME_S, SERVER_PORT};
use crate::probe::Stop;

/// Receive buffer: larger than any PCP message (1100 bytes), so that an
/// oversized datagram is seen as such rather than cut to a valid length.
const RECEIVE_BUFFER: usize = 2048;

/// What to ask, of whom.
#[derive(Debug, Clone)]
pub struct PortMapConfig {
    /// The gateway with its port ([`SERVER_PORT`]; tests give a loopback responder).
    pub gateway: SocketAddr,
    /// Asked in this order.
    pub protocols: Vec<MappingProtocol>,
    /// The ports to map, each with whose it is.
    pub ports: Vec<(PortRole, u16)>,
    pub lifetime_s: u32,
    /// How long granted mappings are held before they are deleted.
    pub hold: Duration,
    pub pcp_schedule: Schedule,
    pub natpmp_schedule: Schedule,
    /// Checks a granted mapping of the probe's own port from the internet
    /// during the hold; `None` skips it.
    pub reach: Option<ReachCheck>,
    /// The gateway's SSDP port for UPnP IGD ([`super::upnp::SSDP_PORT`]; tests give a loopback responder's).
    pub ssdp_port: u16,
    /// UPnP IGD's search rounds and HTTP exchange bound.
    pub upnp: UpnpLimits,
}

/// "Mapped and reachable": the echo server is asked to dial our own public
/// address at the external port granted for the probe's port, and the
/// probe's listener behind the mapping watches for it.
#[derive(Debug, Clone)]
pub struct ReachCheck {
    /// An echo server the probe classified against (and so may contact).
    pub echo: SocketAddr,
    /// The listener on the probe's own port, the mapping's internal port.
    pub listener: Arc<std::net::TcpListener>,
    /// Bound on each step (connect, answers); the whole check takes at most three.
    pub step_timeout: Duration,
}

/// What a session says once the gateway has given its verdict.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settled {
    pub(super) role: PortRole,
    /// The external port, while a mapping is held.
    pub(super) held: Option<u16>,
}

impl PortMapConfig {
    /// PCP then NAT-PMP at `gateway`'s port 5351, RFC schedules (bounded),
    /// then UPnP IGD at its port 1900; a short lifetime.
    pub fn for_gateway(gateway: IpAddr, ports: Vec<(PortRole, u16)>) -> Self {
        PortMapConfig {
            gateway: SocketAddr::new(gateway, SERVER_PORT),
            protocols: vec![
                MappingProtocol::Pcp,
                MappingProtocol::Natpmp,
                MappingProtocol::Upnp,
            ],
            ports,
            lifetime_s: DEFAULT_LIFETIME_S,
            hold: Duration::from_secs(1),
            pcp_schedule: Schedule::pcp(),
            natpmp_schedule: Schedule::natpmp(),
            reach: None,
            ssdp_port: SSDP_PORT,
            upnp: UpnpLimits::default(),
        }
    }

    fn schedule(&self, protocol: MappingProtocol) -> Schedule {
        match protocol {
            MappingProtocol::Natpmp => self.natpmp_schedule,
            _ => self.pcp_schedule,
        }
    }
}

/// Why port mapping could not run at all (a measurement outcome is never one).
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    #[error("cannot open a UDP socket towards the gateway {gateway}: {source}; check the host's network, or run with --no-portmap")]
    Socket {
        gateway: SocketAddr,
        source: io::Error,
    },
}

/// Asks, holds and deletes every mapping of `config`; the report says what
/// the gateway did. `Err` only when no socket could be opened.
pub async fn measure(
    config: &PortMapConfig,
    stop: &Stop,
) -> Result<PortMappingReport, PortMapError> {
    let mut report = PortMappingReport::default();
    for &protocol in &config.protocols {
        if stop.is_stopped() {
            break;
        }
        let attempts = match protocol {
            MappingProtocol::Upnp => measure_upnp(config, stop).await?,
            _ => measure_protocol(config, protocol, stop).await?,
        };
        report.attempts.extend(attempts);
    }
    Ok(report)
}

async fn measure_protocol(
    config: &PortMapConfig,
    protocol: MappingProtocol,
    stop: &Stop,
) -> Result<Vec<MappingAttempt>, PortMapError> {
    let (release_tx, release_rx) = watch::channel(false);
    let (settled_tx, mut settled_rx) = mpsc::channel(config.ports.len().max(1));
    let mut tasks = Vec::new();
    for &(role, port) in &config.ports {
        tasks.push(
            spawn_session(
                config,
                protocol,
                (role, port),
                release_rx.clone(),
                settled_tx.clone(),
            )
            .await?,
        );
    }
    drop(settled_tx);
    // Each session says once whether it holds a mapping; the hold (and the
    // reachability check) is only for gateways that granted something.
    let all_settled = async {
        let mut held = Vec::new();
        for _ in 0..tasks.len() {
            match settled_rx.recv().await {
                Some(settled) if settled.held.is_some() => held.push(settled),
                Some(_) => {}
                None => break,
            }
        }
        held
    };
    let mut reachability = None;
    tokio::select! {
        held = all_settled => {
            if !held.is_empty() {
                let probe_port = held
                    .iter()
                    .find(|s| s.role == PortRole::Probe)
                    .and_then(|s| s.held);
                reachability = hold_and_check(config, probe_port, stop).await;
            }
        }
        () = stop.stopped() => {}
    }
    let _ = release_tx.send(true);
    let mut records = Vec::new();
    for task in tasks {
        if let Ok(record) = task.await {
            records.push(record);
        }
    }
    if let Some(reached) = reachability {
        if let Some(record) = records
            .iter_mut()
            .find(|r| r.port_role == PortRole::Probe && r.granted.is_some())
        {
            record.reachable = Some(reached);
        }
    }
    Ok(records)
}

/// Starts one port's session on a socket of its own: it asks, says once
/// (on `settled`) whether it holds a mapping, keeps it (renewing) until
/// `release` turns true, deletes it and returns its record.
pub(super) async fn spawn_session(
    config: &PortMapConfig,
    protocol: MappingProtocol,
    (role, port): (PortRole, u16),
    release: watch::Receiver<bool>,
    settled: mpsc::Sender<Settled>,
) -> Result<tokio::task::JoinHandle<MappingAttempt>, PortMapError> {
    let schedule = config.schedule(protocol);
    let socket = connected_socket(config.gateway).await?;
    let client = socket
        .local_addr()
        .map_err(|source| PortMapError::Socket {
            gateway: config.gateway,
            source,
        })?
        .ip();
    let spec = SessionSpec {
        protocol,
        port_role: role,
        internal_port: port,
        lifetime_s: config.lifetime_s,
        client,
        schedule,
        seed: rand::random(),
    };
    // Creation, hold and deletion each end by their schedule; this only
    // guards against a bug keeping a task alive.
    let reach = config
        .reach
        .as_ref()
        .map_or(Duration::ZERO, |r| r.step_timeout * 3);
    let bound = schedule.max_wait * 4 + config.hold + reach + Duration::from_secs(30);
    Ok(tokio::spawn(run_session(
        socket, spec, release, settled, bound,
    )))
}

/// Holds granted mappings for [`PortMapConfig::hold`] and meanwhile, when
/// the probe's own port was granted (`probe_port`, external) and a check is
/// configured, checks it from the internet; a stop cuts the hold short.
/// The check's outcome, if it ran to its end.
pub(super) async fn hold_and_check(
    config: &PortMapConfig,
    probe_port: Option<u16>,
    stop: &Stop,
) -> Option<Reachability> {
    let check = async {
        match (&config.reach, probe_port) {
            (Some(reach), Some(port)) => Some(check_reach(reach, port).await),
            _ => None,
        }
    };
    let hold = async { tokio::join!(check, tokio::time::sleep(config.hold)).0 };
    tokio::select! {
        checked = hold => checked,
        () = stop.stopped() => None,
    }
}

/// Asks the echo server to dial our public address at `external_port` and
/// watches the probe's listener; every outcome is a record.
pub(super) async fn check_reach(reach: &ReachCheck, external_port: u16) -> Reachability {
    let failed = |error: String| Reachability {
        reached: false,
        server_outcome: None,
        error: Some(error),
    };
    let listener = reach.listener.try_clone().and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    });
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => return failed(format!("cannot watch the probe's port: {e}")),
    };
    let check =
        crate::classify::mapped_dial_back(reach.echo, listener, external_port, reach.step_timeout);
    match tokio::time::timeout(reach.step_timeout * 3, check).await {
        Ok(Ok(dial)) => Reachability {
            reached: dial.received,
            server_outcome: dial.server_outcome,
            error: None,
        },
        Ok(Err(why)) => failed(why),
        Err(_) => failed("the echo server's dial-back did not end in time".into()),
    }
}

/// A UDP socket of the gateway's family, connected to it.
async fn connected_socket(gateway: SocketAddr) -> Result<UdpSocket, PortMapError> {
    let any: IpAddr = match gateway {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let error = |source| PortMapError::Socket { gateway, source };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0))
        .await
        .map_err(error)?;
    socket.connect(gateway).await.map_err(error)?;
    Ok(socket)
}

/// The ICMP error an I/O error on a connected UDP socket stands for.
fn icmp_of(error: &io::Error) -> IcmpError {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => IcmpError::PortUnreachable,
        _ => IcmpError::Unreachable,
    }
}

/// One session over its socket until it is finished: sends, receives,
/// timers; says when it is settled; releases when told.
async fn run_session(
    socket: UdpSocket,
    spec: SessionSpec,
    mut release: watch::Receiver<bool>,
    settled: mpsc::Sender<Settled>,
    bound: Duration,
) -> MappingAttempt {
    let role = spec.port_role;
    // The deletion's own bound once it is asked: its retransmission schedule.
    let release_bound = spec.schedule.max_wait + Duration::from_secs(1);
    let mut deadline = Instant::now() + bound;
    let mut session = Session::new(spec, Instant::now().into_std());
    let mut told_settled = false;
    let mut released = false;
    let mut buffer = vec![0u8; RECEIVE_BUFFER];
    loop {
        if Instant::now() >= deadline {
            if released {
                break;
            }
            // Out of time while holding: delete anyway (never leave a mapping
            // behind), within the deletion's own bound.
            released = true;
            session.release(Instant::now().into_std());
            deadline = Instant::now() + release_bound;
        }
        if session.is_finished() {
            break;
        }
        while let Some(datagram) = session.poll_transmit() {
            if let Err(e) = socket.send(&datagram).await {
                session.handle_icmp(icmp_of(&e), Instant::now().into_std());
            }
        }
        if session.is_settled() && !told_settled {
            told_settled = true;
            let _ = settled
                .send(Settled {
                    role,
                    held: session.is_held().then(|| session.external_port()).flatten(),
                })
                .await;
        }
        if session.is_finished() {
            break;
        }
        let wake = session
            .poll_timeout()
            .map_or(deadline, Instant::from_std)
            .min(deadline);
        tokio::select! {
            received = socket.recv(&mut buffer) => {
                let now = Instant::now().into_std();
                match received {
                    Ok(n) => session.handle_datagram(&buffer[..n], now),
                    Err(e) => session.handle_icmp(icmp_of(&e), now),
                }
            }
            () = tokio::time::sleep_until(wake) => session.handle_timeout(Instant::now().into_std()),
            changed = release.wait_for(|r| *r), if !released => {
                released = true;
                let _ = changed;
                session.release(Instant::now().into_std());
            }
        }
    }
    if !told_settled {
        let _ = settled.send(Settled { role, held: None }).await;
    }
    session.into_record()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use punchscope_analysis::portmap::GatewayAnswer;

    use super::*;

    /// A gateway on loopback that grants every PCP and NAT-PMP request and
    /// keeps what it received.
    struct FakeGateway {
        addr: SocketAddr,
        received: Arc<Mutex<Vec<Vec<u8>>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeGateway {
        async fn start(answers: bool) -> FakeGateway {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let received = Arc::new(Mutex::new(Vec::new()));
            let log = received.clone();
            let task = tokio::spawn(async move {
                let mut buffer = [0u8; 1200];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buffer).await else {
                        return;
                    };
                    let request = buffer[..n].to_vec();
                    log.lock().unwrap().push(request.clone());
                    if answers {
                        let answer = grant(&request);
                        let _ = socket.send_to(&answer, from).await;
                    }
                }
            });
            FakeGateway {
                addr,
                received,
                task,
            }
        }

        fn received(&self) -> Vec<Vec<u8>> {
            self.received.lock().unwrap().clone()
        }
    }

    impl Drop for FakeGateway {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// What a granting gateway answers: the port asked, the lifetime asked.
    fn grant(request: &[u8]) -> Vec<u8> {
        let external = Ipv4Addr::new(203, 0, 113, 7);
        match request.first() {
            Some(2) => {
                let mut m = request.to_vec();
                m[1] |= 0x80;
                m[3] = 0;
                m[8..12].copy_from_slice(&100u32.to_be_bytes());
                m[12..24].fill(0);
                m[42..44].copy_from_slice(&request[40..42]);
                m[44..60].copy_from_slice(&external.to_ipv6_mapped().octets());
                m
            }
            _ if request.get(1) == Some(&0) => {
                let mut m = vec![0, 128, 0, 0, 0, 0, 0, 100];
                m.extend(external.octets());
                m
            }
            _ => {
                let mut m = vec![0, 130, 0, 0, 0, 0, 0, 100];
                m.extend(&request[4..6]);
                m.extend(&request[6..8]);
                m.extend(&request[8..12]);
                m
            }
        }
    }

    fn config(gateway: SocketAddr) -> PortMapConfig {
        let fast = |initial_ms: u64| Schedule {
            initial: Duration::from_millis(initial_ms),
            max_interval: Duration::from_secs(1),
            jitter: 0.1,
            max_wait: Duration::from_millis(initial_ms * 7),
        };
        PortMapConfig {
            gateway,
            protocols: vec![MappingProtocol::Pcp, MappingProtocol::Natpmp],
            ports: vec![(PortRole::Node, 8333), (PortRole::Probe, 40123)],
            lifetime_s: 120,
            hold: Duration::from_millis(50),
            pcp_schedule: fast(100),
            natpmp_schedule: fast(50),
            reach: None,
            ssdp_port: SSDP_PORT,
            upnp: UpnpLimits::default(),
        }
    }

    #[tokio::test]
    async fn every_grant_on_loopback_is_recorded_and_deleted() {
        let gateway = FakeGateway::start(true).await;
        let report = tokio::time::timeout(
            Duration::from_secs(20),
            measure(&config(gateway.addr), &Stop::new().1),
        )
        .await
        .expect("bounded")
        .unwrap();
        assert_eq!(report.attempts.len(), 4);
        for attempt in &report.attempts {
            assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:?}");
            let granted = attempt.granted.as_ref().unwrap();
            assert_eq!(granted.external_port, attempt.internal_port);
            assert_eq!(granted.external.as_ref().unwrap().net, "203.0.113.0/24");
            assert!(attempt.release.as_ref().unwrap().succeeded, "{attempt:?}");
        }
        let received = gateway.received();
        let pcp_deletes = received
            .iter()
            .filter(|m| m[0] == 2 && m[4..8] == [0, 0, 0, 0])
            .count();
        let natpmp_deletes = received
            .iter()
            .filter(|m| m[0] == 0 && m.len() == 12 && m[8..12] == [0, 0, 0, 0])
            .count();
        assert_eq!((pcp_deletes, natpmp_deletes), (2, 2));
    }

    #[tokio::test]
    async fn silence_and_a_closed_port_are_outcomes() {
        let silent = FakeGateway::start(false).await;
        let report = measure(&config(silent.addr), &Stop::new().1).await.unwrap();
        assert!(report
            .attempts
            .iter()
            .all(|a| a.answer == GatewayAnswer::Timeout && a.requests_sent >= 2));
        assert!(silent.received().len() >= 8);

        // A port nobody listens on: loopback answers ICMP port unreachable.
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap()
        };
        let report = measure(&config(closed), &Stop::new().1).await.unwrap();
        assert_eq!(report.attempts.len(), 4);
        assert!(
            report
                .attempts
                .iter()
                .all(|a| a.answer == GatewayAnswer::Refused),
            "{:?}",
            report.attempts
        );
    }

    #[tokio::test]
    async fn a_stop_during_the_hold_deletes_at_once_and_asks_nothing_more() {
        let gateway = FakeGateway::start(true).await;
        let mut config = config(gateway.addr);
        config.hold = Duration::from_secs(3600);
        let (handle, stop) = Stop::new();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            handle.stop();
        });
        let report = tokio::time::timeout(Duration::from_secs(10), measure(&config, &stop))
            .await
            .expect("the stop cuts the hour-long hold")
            .unwrap();
        stopper.await.unwrap();
        assert_eq!(
            report.attempts.len(),
            2,
            "NAT-PMP is not asked after the stop"
        );
        assert!(report
            .attempts
            .iter()
            .all(|a| a.release.as_ref().is_some_and(|r| r.succeeded)));
    }

    /// A `mapped` trial's port: held from `open` until `release` (no
    /// deletion before), then deleted once, for each protocol.
    #[tokio::test]
    async fn a_trial_port_is_held_until_released_then_deleted() {
        use crate::portmap::trial::TrialMapper;
        let gateway = FakeGateway::start(true).await;
        let deletes = || {
            gateway
                .received()
                .iter()
                .filter(|m| match m[0] {
                    2 => m[4..8] == [0, 0, 0, 0],
                    _ => m.len() == 12 && m[8..12] == [0, 0, 0, 0],
                })
                .count()
        };
        for (n, protocol) in [MappingProtocol::Pcp, MappingProtocol::Natpmp]
            .into_iter()
            .enumerate()
        {
            let mapper = TrialMapper::with_config(config(gateway.addr), protocol);
            let held = tokio::time::timeout(Duration::from_secs(10), mapper.open(40999))
                .await
                .expect("bounded")
                .unwrap();
            assert_eq!(held.external_port(), Some(40999), "{protocol:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(deletes(), n, "{protocol:?}: no deletion while held");
            let record = tokio::time::timeout(Duration::from_secs(10), held.release())
                .await
                .expect("bounded")
                .expect("a record");
            assert_eq!(record.port_role, PortRole::Trial);
            assert_eq!(record.protocol, protocol);
            assert!(
                record.release.as_ref().is_some_and(|r| r.succeeded),
                "{record:?}"
            );
            assert_eq!(deletes(), n + 1, "{protocol:?}: deleted once");
        }
    }

    /// A gateway that stopped answering costs a trial at most the open bound,
    /// and the trial registers no mapping.
    #[tokio::test]
    async fn a_silent_gateway_leaves_the_trial_unmapped_within_the_bound() {
        use crate::portmap::trial::{TrialMapper, OPEN_WITHIN};
        let silent = FakeGateway::start(false).await;
        let mut slow = config(silent.addr);
        slow.pcp_schedule.max_wait = OPEN_WITHIN * 2;
        let mapper = TrialMapper::with_config(slow, MappingProtocol::Pcp);
        let started = std::time::Instant::now();
        let held = mapper.open(40998).await.unwrap();
        assert_eq!(held.external_port(), None);
        assert!(started.elapsed() < OPEN_WITHIN + Duration::from_secs(1));
        assert!(started.elapsed() >= OPEN_WITHIN, "waited for the answer");
        let record = tokio::time::timeout(Duration::from_secs(30), held.release())
            .await
            .expect("bounded")
            .expect("a record");
        assert!(record.granted.is_none(), "{record:?}");
    }

    /// A session still holding when its time is up deletes the mapping
    /// itself (within the deletion's schedule) rather than leave it.
    #[tokio::test]
    async fn a_session_out_of_time_deletes_what_it_holds() {
        let gateway = FakeGateway::start(true).await;
        let config = config(gateway.addr);
        let socket = connected_socket(gateway.addr).await.unwrap();
        let spec = SessionSpec {
            protocol: MappingProtocol::Pcp,
            port_role: PortRole::Trial,
            internal_port: 40997,
            lifetime_s: 120,
            client: socket.local_addr().unwrap().ip(),
            schedule: config.pcp_schedule,
            seed: 7,
        };
        // The release sender stays alive: nobody asks for the deletion.
        let (_release, release_rx) = watch::channel(false);
        let (settled_tx, _settled_rx) = mpsc::channel(1);
        let record = tokio::time::timeout(
            Duration::from_secs(10),
            run_session(
                socket,
                spec,
                release_rx,
                settled_tx,
                Duration::from_millis(500),
            ),
        )
        .await
        .expect("bounded by the session's time and the deletion's schedule");
        assert!(record.granted.is_some(), "{record:?}");
        assert!(
            record.release.as_ref().is_some_and(|r| r.succeeded),
            "{record:?}"
        );
        let deletes = gateway
            .received()
            .iter()
            .filter(|m| m[0] == 2 && m[4..8] == [0, 0, 0, 0])
            .count();
        assert_eq!(deletes, 1);
    }
}
