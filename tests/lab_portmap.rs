//! Port mapping against real routers: kernel routers running Debian's
//! miniupnpd (NAT-PMP, PCP, UPnP IGD) grant, refuse or stay silent, and the
//! probe's client records each, deletes every mapping it got, also when
//! stopped, and the router's own nftables state shows it.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::net::{IpAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use punchscope::analysis::classify::HopClass;
use punchscope::analysis::portmap::{
    GatewayAnswer, MappedSide, MappingProtocol, PortMappingReport, PortRole,
};
use punchscope::analysis::result::RunResult;
use punchscope::analysis::trial::{Strategy, TrialOutcome};
use punchscope::lab::kernel::portmap::{PortmapChange, PortmapProtocol, RouterMapping};
use punchscope::lab::nat::NatEvent;
use punchscope::lab::services::EchoService;
use punchscope::lab::Lab;
use punchscope::portmap::{measure, PortMapConfig, ReachCheck};
use punchscope::probe::Stop;
use support::lab::*;
use support::process::ChildGuard;

/// The port mapping routers (grants, refuses, silent, plain) with one host
/// each (alice, bob, carol, dave), as committed for `lab up`.
const SCENARIO: &str = include_str!("../probes/lab/portmap.toml");
/// The same four routers and hosts, played by the emulator and its own
/// PCP/NAT-PMP responder; `grants` is an APDM/APDF router.
const EMULATOR_SCENARIO: &str = include_str!("../probes/lab/portmap-emulator.toml");

const NODE_PORT: u16 = 8333;
const PROBE_PORT: u16 = 40123;

fn gateway_of(lab: &Lab, host: &str) -> IpAddr {
    let scenario = lab.scenario();
    scenario
        .router_of(scenario.host(host).unwrap())
        .config
        .gateway_ip
        .into()
}

const PCP_NATPMP: &[MappingProtocol] = &[MappingProtocol::Pcp, MappingProtocol::Natpmp];
const UPNP: &[MappingProtocol] = &[MappingProtocol::Upnp];

/// Runs the probe's port mapping client inside `host`'s namespace, with
/// the RFC schedules and UPnP bounds the probe uses, asking `protocols`,
/// holding what it gets for `hold`.
fn measure_from(
    lab: &Lab,
    host: &str,
    protocols: &[MappingProtocol],
    hold: Duration,
    stop: Stop,
) -> PortMappingReport {
    let mut config = PortMapConfig::for_gateway(
        gateway_of(lab, host),
        vec![(PortRole::Node, NODE_PORT), (PortRole::Probe, PROBE_PORT)],
    );
    config.protocols = protocols.to_vec();
    config.hold = hold;
    lab.run_in(host, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), measure(&config, &stop))
                .await
                .expect("port mapping ends within its schedules")
                .expect("sockets open")
        })
    })
    .unwrap()
}

/// Runs alice's client with `protocols` and an hour's hold, and fires its
/// stop (what Ctrl-C does in the probe) once her router (`grants`) holds
/// both ports: the report, what the router held then, and how long it took.
fn stop_once_both_ports_are_held(
    lab: &Lab,
    protocols: &[MappingProtocol],
) -> (PortMappingReport, Vec<RouterMapping>, Duration) {
    let (handle, stop) = Stop::new();
    let started = Instant::now();
    let (report, held) = std::thread::scope(|scope| {
        let stopper = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut held = Vec::new();
            while Instant::now() < deadline && held.len() < 2 {
                std::thread::sleep(Duration::from_millis(20));
                held = lab.port_mappings("grants").unwrap();
            }
            handle.stop();
            held
        });
        let report = measure_from(lab, "alice", protocols, Duration::from_secs(3600), stop);
        (report, stopper.join().unwrap())
    });
    (report, held, started.elapsed())
}

/// The router (`grants`) held both ports for alice while the client ran
/// (`seen`, from [`watch_router`]), and holds nothing now.
fn assert_both_ports_were_held_for_alice_and_are_gone(lab: &Lab, seen: &[RouterMapping]) {
    let alice = lab.scenario().host("alice").unwrap().address;
    for port in [NODE_PORT, PROBE_PORT] {
        let mapping = RouterMapping {
            external_port: port,
            internal: SocketAddrV4::new(alice, port),
        };
        assert!(
            seen.contains(&mapping),
            "the router held {port} for alice: {seen:?}"
        );
    }
    assert_eq!(lab.port_mappings("grants").unwrap(), vec![], "nothing left");
}

/// Every mapping the router's nftables state showed while `work` ran.
fn watch_router<T: Send>(
    lab: &Lab,
    router: &str,
    work: impl FnOnce() -> T + Send,
) -> (T, Vec<RouterMapping>) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen: Vec<RouterMapping> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                for mapping in lab
                    .port_mappings(router)
                    .expect("nft lists the router's table")
                {
                    if !seen.contains(&mapping) {
                        seen.push(mapping);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        (out, watcher.join().unwrap())
    })
}

#[test]
fn a_router_with_port_mapping_grants_both_protocols_and_every_mapping_is_deleted() {
    let lab = start_lab("pmgrant", SCENARIO);
    let (report, seen) = watch_router(&lab, "grants", || {
        measure_from(
            &lab,
            "alice",
            PCP_NATPMP,
            Duration::from_secs(1),
            Stop::new().1,
        )
    });
    assert_eq!(report.skipped, None);
    assert_eq!(report.attempts.len(), 4, "{report:#?}");
    for protocol in [MappingProtocol::Pcp, MappingProtocol::Natpmp] {
        for (role, port) in [(PortRole::Node, NODE_PORT), (PortRole::Probe, PROBE_PORT)] {
            let attempt = report
                .attempts
                .iter()
                .find(|a| a.protocol == protocol && a.port_role == role)
                .unwrap_or_else(|| panic!("{protocol:?} {role:?} asked: {report:#?}"));
            assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:#?}");
            assert_eq!(attempt.result.as_deref(), Some("success"), "{attempt:#?}");
            let granted = attempt.granted.as_ref().expect("granted");
            assert_eq!(
                granted.external_port, port,
                "miniupnpd keeps the port asked"
            );
            assert!(granted.lifetime_s >= 60, "{granted:?}");
            let external = granted.external.as_ref().expect("external address learned");
            assert_eq!(external.net, "203.0.113.0/24");
            assert_eq!(granted.external_class, Some(HopClass::Public));
            assert!(
                attempt.release.as_ref().is_some_and(|r| r.succeeded),
                "deleted: {attempt:#?}"
            );
            assert!(attempt.errors.is_empty(), "{:?}", attempt.errors);
        }
    }
    // The router's own state: both ports were mapped to alice, and nothing is left.
    assert_both_ports_were_held_for_alice_and_are_gone(&lab, &seen);
    // And its log: PCP mappings added and removed, NAT-PMP removed.
    let portmap_events: Vec<_> = lab
        .events()
        .into_iter()
        .filter_map(|e| match e.event {
            NatEvent::PortMap(p) if e.router == "grants" => Some(p),
            _ => None,
        })
        .collect();
    for (protocol, change) in [
        (PortmapProtocol::Pcp, PortmapChange::Added),
        (PortmapProtocol::Pcp, PortmapChange::Removed),
        (PortmapProtocol::Natpmp, PortmapChange::Requested),
        (PortmapProtocol::Natpmp, PortmapChange::Removed),
    ] {
        assert!(
            portmap_events.iter().any(|e| e.protocol == protocol
                && e.change == change
                && e.external_port == Some(NODE_PORT)),
            "{protocol:?} {change:?} of {NODE_PORT} logged: {portmap_events:?}"
        );
    }
}

#[test]
fn a_refusing_router_answers_not_authorized_and_a_silent_one_times_out() {
    let lab = start_lab("pmrefuse", SCENARIO);
    let (refused, seen) = watch_router(&lab, "refuses", || {
        measure_from(
            &lab,
            "bob",
            PCP_NATPMP,
            Duration::from_secs(1),
            Stop::new().1,
        )
    });
    assert_eq!(refused.attempts.len(), 4);
    for attempt in &refused.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:#?}");
        assert_eq!(attempt.result_code, Some(2), "{attempt:#?}");
        assert_eq!(attempt.result.as_deref(), Some("not_authorized"));
        assert!(attempt.granted.is_none() && attempt.release.is_none());
    }
    assert_eq!(seen, vec![], "nothing was ever mapped");

    let started = Instant::now();
    let silent = measure_from(
        &lab,
        "carol",
        PCP_NATPMP,
        Duration::from_secs(1),
        Stop::new().1,
    );
    for attempt in &silent.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Timeout, "{attempt:#?}");
        assert!(attempt.requests_sent >= 2, "retransmitted: {attempt:#?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(12) && waited < Duration::from_secs(20),
        "PCP's 9 s then NAT-PMP's 3.75 s: {waited:?}"
    );

    // A router that runs nothing on 5351 answers ICMP port unreachable.
    let plain = measure_from(
        &lab,
        "dave",
        PCP_NATPMP,
        Duration::from_secs(1),
        Stop::new().1,
    );
    assert_eq!(plain.attempts.len(), 4);
    for attempt in &plain.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Refused, "{attempt:#?}");
    }
}

#[test]
fn a_stop_while_holding_deletes_every_mapping_at_once() {
    stop_while_holding_deletes_every_mapping("pmstop", SCENARIO);
}

/// What Ctrl-C does while alice's router (`grants`) holds both PCP mappings.
fn stop_while_holding_deletes_every_mapping(lab_name: &str, scenario: &str) {
    let lab = start_lab(lab_name, scenario);
    let (report, held, took) = stop_once_both_ports_are_held(&lab, PCP_NATPMP);
    assert!(took < Duration::from_secs(30), "the hour-long hold was cut");
    assert_eq!(held.len(), 2, "both ports were mapped: {held:?}");
    assert_eq!(
        report.attempts.len(),
        2,
        "NAT-PMP was not asked after the stop"
    );
    for attempt in &report.attempts {
        assert_eq!(attempt.protocol, MappingProtocol::Pcp);
        assert!(
            attempt.release.as_ref().is_some_and(|r| r.succeeded),
            "{attempt:#?}"
        );
    }
    assert_eq!(
        lab.port_mappings("grants").unwrap(),
        vec![],
        "the router holds nothing"
    );
}

/// The volunteer's real `probe` in alice's namespace, the echo servers
/// running, no coordinator (a stop comes before the probe would look for
/// one); its result goes to `spool` and to stdout.
fn spawn_probe(lab: &Lab, spool: &std::path::Path) -> ChildGuard {
    let mut command = punchscope_in(&lab.host_netns("alice").unwrap());
    command
        .args(["probe", "--server", "198.51.100.10:7000"])
        .args([
            "--echo",
            "198.51.100.10:3478",
            "--echo",
            "198.51.100.11:3478",
        ])
        .args([
            "--yes",
            "--json",
            "--quiet",
            "--node-port",
            "8333",
            "--spool",
        ])
        .arg(spool);
    ChildGuard::spawn_piped(&mut command)
}

fn start_echo_servers(lab: &Lab) -> EchoService {
    let endpoints: Vec<std::net::SocketAddr> = [
        "198.51.100.10:3478",
        "198.51.100.10:3479",
        "198.51.100.11:3478",
        "198.51.100.11:3479",
    ]
    .iter()
    .map(|e| e.parse().unwrap())
    .collect();
    EchoService::start(lab, &endpoints).unwrap()
}

/// Ctrl-C to the probe this test started; its output once it exited (within 30 s).
fn interrupt(mut guard: ChildGuard) -> std::process::Output {
    let pid = guard.0.as_ref().unwrap().id();
    // SAFETY: kill on our own child's PID, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while guard.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the probe exits after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
    guard.0.take().unwrap().wait_with_output().unwrap()
}

/// The volunteer's real `probe`, Ctrl-C'd while its router holds its PCP
/// mappings: it deletes them before it exits, and its result (as the
/// collector would accept it) says so.
#[test]
fn the_probe_deletes_its_mappings_on_ctrl_c_and_records_them() {
    let lab = start_lab("pmprobe", SCENARIO);
    let _echo = start_echo_servers(&lab);
    let spool = tempfile::tempdir().unwrap();
    let guard = spawn_probe(&lab, spool.path());

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut held = Vec::new();
    while Instant::now() < deadline && held.len() < 2 {
        std::thread::sleep(Duration::from_millis(10));
        held = lab.port_mappings("grants").unwrap();
    }
    assert_eq!(held.len(), 2, "the probe got both ports mapped: {held:?}");
    assert!(held.iter().any(|m| m.external_port == NODE_PORT));
    let output = interrupt(guard);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "interrupted: {stderr}");
    assert_eq!(
        lab.port_mappings("grants").unwrap(),
        vec![],
        "nothing left open"
    );

    let result = RunResult::from_json(std::str::from_utf8(&output.stdout).unwrap())
        .expect("a result the collector accepts: no raw address");
    let report = result.port_mapping.expect("port mapping recorded");
    assert_eq!(report.attempts.len(), 2, "PCP only: {report:#?}");
    let node = report
        .attempts
        .iter()
        .find(|a| a.port_role == PortRole::Node)
        .unwrap();
    assert_eq!(node.internal_port, NODE_PORT);
    assert_eq!(node.protocol, MappingProtocol::Pcp);
    assert_eq!(
        node.granted
            .as_ref()
            .unwrap()
            .external
            .as_ref()
            .unwrap()
            .net,
        "203.0.113.0/24"
    );
    for attempt in &report.attempts {
        assert!(
            attempt.release.as_ref().is_some_and(|r| r.succeeded),
            "{attempt:#?}"
        );
    }
    let spooled: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(spooled.len(), 1, "the result is kept in the spool");
}

/// The real `probe` asks UPnP IGD after PCP and NAT-PMP; Ctrl-C'd while
/// miniupnpd holds its two UPnP mappings (the router's log says so), it
/// deletes both before it exits, and its result records all three
/// protocols, UPnP's grants and their deletions.
#[test]
fn the_probe_asks_upnp_last_and_deletes_its_upnp_mappings_on_ctrl_c() {
    let lab = start_lab("pmprobeup", SCENARIO);
    let _echo = start_echo_servers(&lab);
    let spool = tempfile::tempdir().unwrap();
    let guard = spawn_probe(&lab, spool.path());
    let upnp_added = |lab: &Lab| {
        lab.events()
            .into_iter()
            .filter(|e| {
                matches!(&e.event, NatEvent::PortMap(p)
                    if e.router == "grants"
                        && p.protocol == PortmapProtocol::Upnp
                        && p.change == PortmapChange::Added)
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && upnp_added(&lab) < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(upnp_added(&lab), 2, "miniupnpd added both UPnP mappings");
    let output = interrupt(guard);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "interrupted: {stderr}");
    assert_eq!(
        lab.port_mappings("grants").unwrap(),
        vec![],
        "nothing left open"
    );

    let result = RunResult::from_json(std::str::from_utf8(&output.stdout).unwrap())
        .expect("a result the collector accepts: no raw address");
    let report = result.port_mapping.expect("port mapping recorded");
    let protocols: Vec<MappingProtocol> = report.attempts.iter().map(|a| a.protocol).collect();
    assert_eq!(
        protocols,
        [
            MappingProtocol::Pcp,
            MappingProtocol::Pcp,
            MappingProtocol::Natpmp,
            MappingProtocol::Natpmp,
            MappingProtocol::Upnp,
            MappingProtocol::Upnp,
        ],
        "{report:#?}"
    );
    for attempt in &report.attempts {
        // The last add may still be in flight when the stop comes (the
        // router logs the mapping before its answer arrives): then it is
        // `stopped`, and deleted all the same.
        assert!(
            attempt.granted.is_some()
                || (attempt.protocol == MappingProtocol::Upnp
                    && attempt.port_role == PortRole::Probe
                    && attempt.answer == GatewayAnswer::Stopped),
            "{attempt:#?}"
        );
        assert!(
            attempt.release.as_ref().is_some_and(|r| r.succeeded),
            "{attempt:#?}"
        );
    }
    let upnp_node = &report.attempts[4];
    assert_eq!(upnp_node.service.as_deref(), Some("WANIPConnection:2"));
    assert_eq!(
        upnp_node
            .granted
            .as_ref()
            .unwrap()
            .external
            .as_ref()
            .unwrap()
            .net,
        "203.0.113.0/24"
    );
}

/// The ground truth behind "mapped and reachable": while the router holds
/// the probe port's mapping, a connection from the internet to the router's
/// public address and the granted port reaches the host's listener; once
/// the mapping is deleted, it no longer does.
#[test]
fn a_granted_mapping_is_reachable_from_the_internet_until_it_is_deleted() {
    let lab = start_lab("pmreach", SCENARIO);
    let public = lab.scenario().routers[0].config.public_ip;
    assert_eq!(lab.scenario().routers[0].name, "grants");
    let target = std::net::SocketAddr::from((public, PROBE_PORT));
    let listener = lab
        .run_in("alice", || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", PROBE_PORT)).unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .unwrap();
    let dial = || {
        lab.run_in("internet", || {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&std::net::SocketAddr::from(([198, 51, 100, 10], 0)).into())?;
            socket.connect_timeout(&target.into(), Duration::from_secs(1))?;
            Ok::<_, std::io::Error>(std::net::TcpStream::from(socket))
        })
        .unwrap()
    };
    let accepted = || {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match listener.accept() {
                Ok((_, from)) => return Some(from),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        }
    };

    let (handle, stop) = Stop::new();
    let (report, reached) = std::thread::scope(|scope| {
        let checker = scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline
                && !lab
                    .port_mappings("grants")
                    .unwrap()
                    .iter()
                    .any(|m| m.external_port == PROBE_PORT)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let connected = dial().is_ok();
            let from = accepted();
            handle.stop();
            (connected, from)
        });
        let report = measure_from(&lab, "alice", PCP_NATPMP, Duration::from_secs(3600), stop);
        (report, checker.join().unwrap())
    });
    let (connected, from) = reached;
    assert!(connected, "the mapped port took the connection");
    assert_eq!(
        from.map(|f| f.ip()),
        Some(IpAddr::from([198, 51, 100, 10])),
        "and it reached alice's listener from the internet"
    );
    assert!(report
        .attempts
        .iter()
        .all(|a| a.release.as_ref().is_some_and(|r| r.succeeded)));
    assert!(dial().is_err(), "deleted: the router drops the SYN again");
    assert_eq!(accepted(), None);
}

/// "Mapped and reachable", as the probe measures it: while the router holds
/// the probe port's mapping, the echo server dials the host's own public
/// address at the granted port, and the probe's listener behind the mapping
/// receives it, with each protocol's mapping.
#[test]
fn the_echo_servers_dial_back_reaches_the_probe_through_its_mapping() {
    dial_back_reaches_the_probe_through_its_mapping(
        "pmecho",
        SCENARIO,
        &[
            MappingProtocol::Pcp,
            MappingProtocol::Natpmp,
            MappingProtocol::Upnp,
        ],
    );
}

/// Runs the probe's client with its reachability check in alice (behind
/// `grants`); each protocol's mapping must carry the echo server's dial-back.
fn dial_back_reaches_the_probe_through_its_mapping(
    lab_name: &str,
    scenario: &str,
    protocols: &[MappingProtocol],
) {
    let lab = start_lab(lab_name, scenario);
    let echo: std::net::SocketAddr = "198.51.100.10:3478".parse().unwrap();
    let _echo = EchoService::start(&lab, &[echo, "198.51.100.11:3478".parse().unwrap()]).unwrap();
    let (listener, port) = lab
        .run_in("alice", || {
            let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            (std::sync::Arc::new(listener), port)
        })
        .unwrap();
    let mut config = PortMapConfig::for_gateway(
        gateway_of(&lab, "alice"),
        vec![(PortRole::Node, NODE_PORT), (PortRole::Probe, port)],
    );
    config.protocols = protocols.to_vec();
    config.reach = Some(ReachCheck {
        echo,
        listener,
        step_timeout: Duration::from_secs(5),
    });
    let report = lab
        .run_in("alice", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(90), measure(&config, &Stop::new().1))
                    .await
                    .expect("bounded")
                    .expect("sockets open")
            })
        })
        .unwrap();
    for &protocol in protocols {
        let probe = report
            .attempts
            .iter()
            .find(|a| a.protocol == protocol && a.port_role == PortRole::Probe)
            .unwrap();
        let reachable = probe
            .reachable
            .as_ref()
            .unwrap_or_else(|| panic!("{probe:#?}"));
        assert!(reachable.reached, "{protocol:?}: {reachable:?}");
        assert_eq!(
            reachable.server_outcome,
            Some(punchscope::analysis::classify::DialOutcome::Connected)
        );
        let node = report
            .attempts
            .iter()
            .find(|a| a.protocol == protocol && a.port_role == PortRole::Node)
            .unwrap();
        assert_eq!(node.reachable, None, "only the probe's own port is dialed");
        assert!(probe.release.as_ref().is_some_and(|r| r.succeeded));
    }
    assert_eq!(lab.port_mappings("grants").unwrap(), vec![]);
}

/// UPnP IGD against miniupnpd: SSDP finds the IGDv2 device on the gateway,
/// AddAnyPortMapping maps both ports on the public address, the router's
/// nftables state and log show it, and DeletePortMapping leaves nothing.
#[test]
fn a_router_with_upnp_grants_both_ports_and_every_mapping_is_deleted() {
    let lab = start_lab("pmupnp", SCENARIO);
    let (report, seen) = watch_router(&lab, "grants", || {
        measure_from(&lab, "alice", UPNP, Duration::from_secs(1), Stop::new().1)
    });
    assert_eq!(report.attempts.len(), 2, "{report:#?}");
    for (role, port) in [(PortRole::Node, NODE_PORT), (PortRole::Probe, PROBE_PORT)] {
        let attempt = report
            .attempts
            .iter()
            .find(|a| a.port_role == role)
            .unwrap_or_else(|| panic!("{role:?} asked: {report:#?}"));
        assert_eq!(attempt.protocol, MappingProtocol::Upnp);
        assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:#?}");
        assert_eq!(attempt.result.as_deref(), Some("success"), "{attempt:#?}");
        assert_eq!(attempt.service.as_deref(), Some("WANIPConnection:2"));
        assert!(attempt.errors.is_empty(), "{:?}", attempt.errors);
        let granted = attempt.granted.as_ref().expect("granted");
        assert_eq!(
            granted.external_port, port,
            "AddAnyPortMapping kept the port"
        );
        assert!(
            (60..=120).contains(&granted.lifetime_s),
            "the lease the router reports, bounded as asked: {granted:?}"
        );
        assert_eq!(granted.external.as_ref().unwrap().net, "203.0.113.0/24");
        assert_eq!(granted.external_class, Some(HopClass::Public));
        let release = attempt.release.as_ref().expect("deleted");
        assert!(release.succeeded, "{attempt:#?}");
    }
    assert_both_ports_were_held_for_alice_and_are_gone(&lab, &seen);
    let upnp_events: Vec<_> = lab
        .events()
        .into_iter()
        .filter_map(|e| match e.event {
            NatEvent::PortMap(p) if e.router == "grants" && p.protocol == PortmapProtocol::Upnp => {
                Some(p)
            }
            _ => None,
        })
        .collect();
    for change in [PortmapChange::Added, PortmapChange::Removed] {
        assert!(
            upnp_events
                .iter()
                .any(|e| e.change == change && e.external_port == Some(NODE_PORT)),
            "UPnP {change:?} of {NODE_PORT} logged: {upnp_events:?}"
        );
    }
}

/// A router whose firewall drops port 1900 gives UPnP `timeout` after the
/// search's bound; one that runs nothing there answers ICMP (`refused`).
/// A stop while the router holds UPnP mappings deletes them at once.
#[test]
fn upnp_silence_refusal_and_a_stop_while_holding() {
    let lab = start_lab("pmupsil", SCENARIO);
    let started = Instant::now();
    let silent = measure_from(&lab, "carol", UPNP, Duration::from_secs(1), Stop::new().1);
    assert_eq!(silent.attempts.len(), 2);
    for attempt in &silent.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Timeout, "{attempt:#?}");
        assert_eq!(attempt.requests_sent, 6, "three rounds of two M-SEARCH");
        assert!(attempt.granted.is_none() && attempt.release.is_none());
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(3400) && waited < Duration::from_secs(8),
        "the search's 3.5 s: {waited:?}"
    );
    let plain = measure_from(&lab, "dave", UPNP, Duration::from_secs(1), Stop::new().1);
    for attempt in &plain.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Refused, "{attempt:#?}");
    }

    let (report, held, took) = stop_once_both_ports_are_held(&lab, UPNP);
    assert!(took < Duration::from_secs(30), "the hold was cut");
    assert_eq!(held.len(), 2, "both ports were mapped: {held:?}");
    for attempt in &report.attempts {
        assert!(attempt.granted.is_some(), "{attempt:#?}");
        assert!(
            attempt.release.as_ref().is_some_and(|r| r.succeeded),
            "{attempt:#?}"
        );
    }
    assert_eq!(lab.port_mappings("grants").unwrap(), vec![], "nothing left");
}

// The emulator's routers: the same client against its own responder.

#[test]
fn an_emulator_router_grants_both_protocols_in_its_table_and_every_mapping_is_deleted() {
    let lab = start_lab("pmemu", EMULATOR_SCENARIO);
    let (report, seen) = watch_router(&lab, "grants", || {
        measure_from(
            &lab,
            "alice",
            PCP_NATPMP,
            Duration::from_secs(1),
            Stop::new().1,
        )
    });
    assert_eq!(report.attempts.len(), 4, "{report:#?}");
    for attempt in &report.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:#?}");
        assert_eq!(attempt.result.as_deref(), Some("success"), "{attempt:#?}");
        let granted = attempt.granted.as_ref().expect("granted");
        assert_eq!(granted.external_port, attempt.internal_port);
        assert!((60..=3600).contains(&granted.lifetime_s), "{granted:?}");
        assert_eq!(
            granted.external.as_ref().map(|e| e.net.as_str()),
            Some("203.0.113.0/24")
        );
        assert_eq!(granted.external_class, Some(HopClass::Public));
        assert!(attempt.release.as_ref().is_some_and(|r| r.succeeded));
        assert!(attempt.errors.is_empty(), "{:?}", attempt.errors);
    }
    assert_both_ports_were_held_for_alice_and_are_gone(&lab, &seen);
    let changes: Vec<_> = lab
        .events()
        .into_iter()
        .filter_map(|e| match e.event {
            NatEvent::PortMap(p) if e.router == "grants" => Some((p.protocol, p.change)),
            _ => None,
        })
        .collect();
    for protocol in [PortmapProtocol::Pcp, PortmapProtocol::Natpmp] {
        for change in [PortmapChange::Added, PortmapChange::Removed] {
            let count = changes.iter().filter(|c| **c == (protocol, change)).count();
            assert_eq!(
                count, 2,
                "{protocol:?} {change:?} for both ports: {changes:?}"
            );
        }
    }
}

#[test]
fn an_emulator_router_refuses_stays_silent_or_answers_icmp_as_configured() {
    let lab = start_lab("pmemurf", EMULATOR_SCENARIO);
    let refused = measure_from(
        &lab,
        "bob",
        PCP_NATPMP,
        Duration::from_secs(1),
        Stop::new().1,
    );
    assert_eq!(refused.attempts.len(), 4);
    for attempt in &refused.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Answered, "{attempt:#?}");
        assert_eq!(attempt.result.as_deref(), Some("not_authorized"));
        assert!(attempt.granted.is_none() && attempt.release.is_none());
    }
    assert!(lab
        .events()
        .iter()
        .all(|e| !matches!(e.event, NatEvent::PortMap(_))));
    let silent = measure_from(
        &lab,
        "carol",
        PCP_NATPMP,
        Duration::from_secs(1),
        Stop::new().1,
    );
    for attempt in &silent.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Timeout, "{attempt:#?}");
    }
    let plain = measure_from(
        &lab,
        "dave",
        PCP_NATPMP,
        Duration::from_secs(1),
        Stop::new().1,
    );
    for attempt in &plain.attempts {
        assert_eq!(attempt.answer, GatewayAnswer::Refused, "{attempt:#?}");
    }
}

#[test]
fn the_echo_servers_dial_back_reaches_the_probe_through_an_emulator_mapping() {
    dial_back_reaches_the_probe_through_its_mapping("pmemuecho", EMULATOR_SCENARIO, PCP_NATPMP);
}

#[test]
fn a_stop_deletes_every_emulator_mapping_at_once() {
    stop_while_holding_deletes_every_mapping("pmemustop", EMULATOR_SCENARIO);
}

const MAPPED_PLAN: &str = "trials = 4\nstrategies = [\"mapped\"]\nnetwork = \"regtest\"\n";

/// Runs the `mapped` plan between alice (router `a`, `alice_router` keys)
/// and bob (router `b`, no port mapping) with the real coordinator and
/// probes, and checks: every trial connects with alice listening behind
/// the mapping of her trial port (asked with `protocol`) and bob
/// connecting to it; each trial port's mapping is in the router's log,
/// added and removed; none is left.
fn mapped_trials_connect_through_alices_mapping(
    tag: &str,
    alice_router: &str,
    b_router: &str,
    protocol: MappingProtocol,
) {
    let lab = start_lab(tag, &two_nats(alice_router, b_router));
    let mapped_plan = plan(tag, MAPPED_PLAN);
    let _coordinator = start_coordinator(&lab, &mapped_plan);
    let results = probe_alice_and_bob(&lab, Duration::from_secs(120));
    let (alice, bob) = (&results[0].pairings[0], &results[1].pairings[0]);
    assert_eq!((alice.trials.len(), bob.trials.len()), (4, 4));
    let alice_ip = lab.scenario().host("alice").unwrap().address;
    let mut trial_ports = Vec::new();
    for (a, b) in alice.trials.iter().zip(&bob.trials) {
        assert_eq!(
            (a.strategy, b.strategy),
            (Strategy::Mapped, Strategy::Mapped)
        );
        assert_eq!(
            (a.outcome, b.outcome),
            (TrialOutcome::Connected, TrialOutcome::Connected),
            "{a:#?}\n{b:#?}"
        );
        let (am, bm) = (a.mapping.as_ref().unwrap(), b.mapping.as_ref().unwrap());
        assert_eq!(
            (am.side, bm.side),
            (Some(MappedSide::Listen), Some(MappedSide::Connect))
        );
        assert!(
            bm.asked.is_none(),
            "bob's router maps nothing: bob asks nothing"
        );
        let asked = am.asked.as_ref().expect("alice asked for her trial port");
        assert_eq!(
            (asked.protocol, asked.port_role),
            (protocol, PortRole::Trial)
        );
        assert_eq!(asked.internal_port, a.local_port);
        let granted = asked.granted.as_ref().expect("granted");
        assert_eq!(
            b.peer_port,
            Some(granted.external_port),
            "bob aimed at the mapped port"
        );
        assert!(
            asked.release.as_ref().is_some_and(|r| r.succeeded),
            "{asked:#?}"
        );
        // Bob's SYN came in through the mapping, not a punched hole: alice sent nothing.
        assert!(a.attempts.is_empty(), "the listening side sends nothing");
        trial_ports.push((a.local_port, granted.external_port));
    }
    // The router's own log: each trial port added and removed, nothing left.
    let changes: Vec<_> = lab
        .events()
        .into_iter()
        .filter_map(|e| match e.event {
            NatEvent::PortMap(p) if e.router == "a" => {
                Some((p.change, p.external_port, p.internal))
            }
            _ => None,
        })
        .collect();
    for (local, external) in trial_ports {
        for change in [PortmapChange::Added, PortmapChange::Removed] {
            assert!(
                changes.iter().any(|(c, ext, internal)| *c == change
                    && *ext == Some(external)
                    && internal.map_or(true, |i| i == SocketAddrV4::new(alice_ip, local))),
                "{change:?} for trial port {local} -> {external}: {changes:?}"
            );
        }
    }
    assert_eq!(lab.port_mappings("a").unwrap(), vec![], "no mapping left");
}

/// The `mapped` strategy on emulator routers: alice's (APDM/APDF, so no
/// punched hole would let bob in) maps each trial port with PCP, the first
/// protocol that granted; between two routers without port mapping every
/// trial is `unmapped`: no attempt, no SYN.
#[test]
fn the_mapped_strategy_connects_to_the_side_whose_router_mapped_its_port() {
    mapped_trials_connect_through_alices_mapping(
        "mapped",
        "mapping = \"apdm\"\nfiltering = \"apdf\"\nallocation = \"random\"\nportmap = [\"natpmp\", \"pcp\"]",
        "",
        MappingProtocol::Pcp,
    );
    let lab = start_lab("unmapped", &two_nats("", ""));
    let unmapped_plan = plan("unmapped", MAPPED_PLAN);
    let _coordinator = start_coordinator(&lab, &unmapped_plan);
    let results = probe_alice_and_bob(&lab, Duration::from_secs(120));
    for result in &results {
        let trials = &result.pairings[0].trials;
        assert_eq!(trials.len(), 4);
        for t in trials {
            assert_eq!(t.outcome, TrialOutcome::Unmapped, "{t:#?}");
            assert!(t.attempts.is_empty());
            assert_eq!(
                t.mapping.as_ref().and_then(|m| m.side),
                Some(MappedSide::Neither)
            );
        }
    }
}

/// The `mapped` strategy on real Linux routers: alice's kernel router runs
/// miniupnpd with UPnP IGD only, bob's is a plain masquerade.
#[test]
fn the_mapped_strategy_maps_trial_ports_with_miniupnpd_over_upnp() {
    mapped_trials_connect_through_alices_mapping(
        "mapupnp",
        "backend = \"kernel\"\nportmap = [\"upnp\"]\nportmap_min_lifetime_s = 60\nportmap_max_lifetime_s = 3600",
        "backend = \"kernel\"",
        MappingProtocol::Upnp,
    );
}

/// Ctrl-C while a `mapped` trial holds its mapping: alice's home router
/// (behind a CGN, so bob's connects to the CGN's address never arrive and
/// alice listens through the whole attempt window) holds her trial port's
/// mapping; the probe deletes it before it exits, and the router's own
/// table and log say so.
#[test]
fn ctrl_c_during_a_mapped_trial_deletes_its_mapping() {
    let lab = start_lab(
        "mapstop",
        "[[nat]]\nname = \"carrier\"\nfiltering = \"apdf\"\nunsolicited = \"drop\"\n\
         [[nat]]\nname = \"a\"\nupstream = \"carrier\"\nportmap = [\"natpmp\", \"pcp\"]\n\
         [[nat]]\nname = \"b\"\n\
         [[host]]\nname = \"alice\"\nnat = \"a\"\n[[host]]\nname = \"bob\"\nnat = \"b\"\n",
    );
    let mapped_plan = plan(
        "mapstop",
        "trials = 4\nstrategies = [\"mapped\"]\nnetwork = \"regtest\"\n\
         attempt_timeout_ms = 3000\nmax_attempts = 3\nretry_gap_ms = 100\nretry_jitter_ms = 100\n",
    );
    let _coordinator = start_coordinator(&lab, &mapped_plan);
    let _echo = start_echo(&lab);
    let spools = tempfile::tempdir().unwrap();
    let spawn = |host: &str| {
        ChildGuard::spawn_piped(&mut probe_command_with_spool(
            &lab,
            host,
            &spools.path().join(host),
        ))
    };
    let alice = spawn("alice");
    let _bob = spawn("bob");
    // The run's own measurement maps the node port and the probe's port
    // together; after it, a single mapping without the node port is a
    // trial port's (held while alice listens through the attempt window).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut node_seen = false;
    let trial_mapping = loop {
        assert!(Instant::now() < deadline, "no trial mapping appeared");
        std::thread::sleep(Duration::from_millis(10));
        let held = lab.port_mappings("a").unwrap();
        node_seen |= held.iter().any(|m| m.internal.port() == NODE_PORT);
        if node_seen && held.len() == 1 && held[0].internal.port() != NODE_PORT {
            // Still alone a moment later: a trial's, not half of a measurement's pair.
            std::thread::sleep(Duration::from_millis(200));
            if lab.port_mappings("a").unwrap() == held {
                break held[0];
            }
        }
    };
    let output = interrupt(alice);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "interrupted: {stderr}");
    assert_eq!(lab.port_mappings("a").unwrap(), vec![], "nothing left open");
    let removed = lab.events().into_iter().any(|e| {
        e.router == "a"
            && matches!(e.event, NatEvent::PortMap(ref p)
                if p.change == PortmapChange::Removed && p.external_port == Some(trial_mapping.external_port))
    });
    assert!(removed, "the router's log has the trial mapping's removal");
}
