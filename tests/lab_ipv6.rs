//! Dual-stack hosts behind kernel routers with `ipv6`: no translation, a
//! stateful firewall (or none) in its place, seen from real IPv6 sockets.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use punchscope::analysis::classify::{Classification, Finding};
use punchscope::lab::nat::{DropReason, NatEvent};
use punchscope::lab::{netns, Lab};
use support::lab::*;

/// The first server's IPv6 address (docs/lab.md, "IPv6").
const SERVER_V6: &str = "[2001:db8:5100::10]:3478";
const SERVER_V4: &str = "198.51.100.10:3478";
/// The port the hosts' own listeners and trial sockets use.
const HOST_PORT: u16 = 45000;
/// How long an unsolicited connect waits before counting as unanswered.
const UNANSWERED: Duration = Duration::from_millis(1500);

fn address_v6(lab: &Lab, host: &str) -> Ipv6Addr {
    lab.scenario()
        .host(host)
        .unwrap()
        .address_v6
        .unwrap_or_else(|| panic!("{host} has an IPv6 address"))
}

/// Connects from `local` to the endpoint reflector at `server`; returns the
/// source endpoint the server saw.
fn seen_by_server(local: SocketAddr, server: &str) -> SocketAddr {
    observe_any(local, server.parse().unwrap())
}

/// A listener on the host's IPv6 address, and a connect to it from the
/// server's address in the internet namespace; the connect's result kind.
fn knock_from_internet(lab: &Lab, host: &str) -> Result<(), ErrorKind> {
    let target = SocketAddr::new(IpAddr::V6(address_v6(lab, host)), HOST_PORT);
    let _listener = lab
        .run_in(host, || {
            let socket = support::sockets::bound(target).expect("bind the host's listener");
            socket.listen(16).expect("listen");
            socket
        })
        .unwrap();
    lab.run_in("internet", || {
        let from: SocketAddr = "[2001:db8:5100::10]:0".parse().unwrap();
        connect_any(from, target, UNANSWERED)
            .map(drop)
            .map_err(|e| e.kind())
    })
    .unwrap()
}

#[test]
fn a_dual_stack_host_reaches_ipv6_servers_untranslated_and_ipv4_ones_translated() {
    let lab = start_lab(
        "v6out",
        r#"
[[nat]]
name = "fw"
backend = "kernel"
ipv6 = "firewall"
delay_ms = 5
[[nat]]
name = "emu"
[[host]]
name = "alice"
nat = "fw"
[[host]]
name = "carol"
nat = "emu"
"#,
    );
    let _servers = EndpointReflector::start(&lab, &[SERVER_V6, SERVER_V4]);
    let alice = lab.scenario().host("alice").unwrap().clone();
    let own_v6 = SocketAddr::new(IpAddr::V6(address_v6(&lab, "alice")), 40000);
    let own_v4 = SocketAddr::new(IpAddr::V4(alice.address), 40001);
    let (seen_v6, v6_took, seen_v4) = lab
        .run_in("alice", || {
            let started = Instant::now();
            let seen_v6 = seen_by_server(own_v6, SERVER_V6);
            (
                seen_v6,
                started.elapsed(),
                seen_by_server(own_v4, SERVER_V4),
            )
        })
        .unwrap();
    assert!(
        v6_took >= Duration::from_millis(2 * 10),
        "IPv6 crosses the emulated link: a connect and the server's line over 5 ms each way take 20 ms, took {v6_took:?}"
    );
    assert_eq!(
        seen_v6, own_v6,
        "IPv6: the server sees the host's own global address and port"
    );
    assert_eq!(
        seen_v4.ip(),
        IpAddr::V4(alice.public_ip),
        "IPv4 is still masqueraded to the router's public address"
    );
    assert_ne!(alice.public_ip, alice.address);

    // An emulator router beside it stays IPv4 only, and no IPv6 reaches it.
    let carol = lab.scenario().host("carol").unwrap().clone();
    assert_eq!(carol.address_v6, None);
    let carol_local = SocketAddr::new(IpAddr::V4(carol.address), 40000);
    let seen = lab
        .run_in("carol", || seen_by_server(carol_local, SERVER_V4))
        .unwrap();
    assert_eq!(seen.ip(), IpAddr::V4(carol.public_ip));
    let unreadable: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| {
            e.router == "emu"
                && matches!(
                    e.event,
                    NatEvent::Dropped {
                        reason: DropReason::Malformed(_),
                        ..
                    }
                )
        })
        .collect();
    assert!(
        unreadable.is_empty(),
        "the emulator router got packets it cannot read: {unreadable:?}"
    );
}

#[test]
fn unsolicited_ipv6_is_dropped_reset_or_prohibited_by_a_firewall_and_let_in_when_open() {
    let lab = start_lab(
        "v6in",
        r#"
[[nat]]
name = "fwdrop"
backend = "kernel"
ipv6 = "firewall"
[[nat]]
name = "fwrst"
backend = "kernel"
ipv6 = "firewall"
unsolicited = "rst"
[[nat]]
name = "fwicmp"
backend = "kernel"
ipv6 = "firewall"
unsolicited = "icmp"
[[nat]]
name = "open"
backend = "kernel"
ipv6 = "open"
[[host]]
name = "h_drop"
nat = "fwdrop"
[[host]]
name = "h_rst"
nat = "fwrst"
[[host]]
name = "h_icmp"
nat = "fwicmp"
[[host]]
name = "h_open"
nat = "open"
"#,
    );
    assert_eq!(
        knock_from_internet(&lab, "h_drop"),
        Err(ErrorKind::TimedOut),
        "drop: silence"
    );
    assert_eq!(
        knock_from_internet(&lab, "h_rst"),
        Err(ErrorKind::ConnectionRefused),
        "rst: the firewall resets"
    );
    assert_eq!(
        knock_from_internet(&lab, "h_icmp"),
        Err(ErrorKind::PermissionDenied),
        "icmp: ICMPv6 administratively prohibited (EACCES)"
    );
    assert_eq!(
        knock_from_internet(&lab, "h_open"),
        Ok(()),
        "an open router lets the stranger in"
    );
}

#[test]
fn two_firewalled_hosts_connect_by_simultaneous_open_but_not_one_sided() {
    let lab = start_lab(
        "v6pair",
        r#"
[[nat]]
name = "fwa"
backend = "kernel"
ipv6 = "firewall"
delay_ms = 10
[[nat]]
name = "fwb"
backend = "kernel"
ipv6 = "firewall"
delay_ms = 10
[[host]]
name = "alice"
nat = "fwa"
[[host]]
name = "bob"
nat = "fwb"
"#,
    );
    simultaneous_open_but_not_one_sided(&lab);
}

/// Between `alice` and `bob`, each behind its own IPv6 firewall (which
/// drops strangers): a one-sided connect times out, and a simultaneous open
/// from fixed ports connects each from its own address, untranslated.
fn simultaneous_open_but_not_one_sided(lab: &Lab) {
    let alice = SocketAddr::new(IpAddr::V6(address_v6(lab, "alice")), HOST_PORT);
    let bob = SocketAddr::new(IpAddr::V6(address_v6(lab, "bob")), HOST_PORT);
    let (alice_ns, bob_ns) = (
        lab.host_netns("alice").unwrap(),
        lab.host_netns("bob").unwrap(),
    );

    // One-sided: bob listens but never connects; alice's SYN meets bob's firewall.
    let _bob_listener = netns::run_in(&bob_ns, || {
        let socket = support::sockets::bound(bob).unwrap();
        socket.listen(16).unwrap();
        socket
    })
    .unwrap();
    let one_sided = netns::run_in(&alice_ns, || {
        connect_any(alice, bob, UNANSWERED).map_err(|e| e.kind())
    })
    .unwrap();
    assert_eq!(
        one_sided.map(drop),
        Err(ErrorKind::TimedOut),
        "unsolicited: bob's firewall drops it"
    );
    drop(_bob_listener);

    // Both sides at once, from the same ports, a few attempts: each SYN
    // opens its own firewall's pinhole for the other's.
    let attempts = 3;
    let mut connected = None;
    for attempt in 0..attempts {
        let start = Barrier::new(2);
        let side = |ns: &str, local: SocketAddr, remote: SocketAddr| {
            netns::run_in(ns, || {
                start.wait();
                connect_any(local, remote, Duration::from_secs(4))
                    .map(|stream| (stream.local_addr().unwrap(), stream.peer_addr().unwrap()))
                    .map_err(|e| e.kind())
            })
            .unwrap()
        };
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| side(&alice_ns, alice, bob));
            let b = scope.spawn(|| side(&bob_ns, bob, alice));
            (a.join().unwrap(), b.join().unwrap())
        });
        match (a, b) {
            (Ok(a), Ok(b)) => {
                connected = Some((attempt, a, b));
                break;
            }
            other => eprintln!("simultaneous open attempt {attempt}: {other:?}"),
        }
    }
    let (_, a, b) = connected.expect("simultaneous open connects within the attempts");
    assert_eq!(
        a,
        (alice, bob),
        "alice: her own address to bob's, untranslated"
    );
    assert_eq!(b, (bob, alice), "bob: his own address to alice's");
}

/// What `classify --json` decided, from its finished child (which must have succeeded).
fn classification_of(child: std::process::Child, what: &str) -> Classification {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{what}: classify failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: bad JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn classify_over_ipv6_tells_a_firewall_from_an_open_router_and_leaves_ipv4_as_it_was() {
    use punchscope::analysis::classify::{
        AllocationPattern, Finding, Ipv6Translation, Ipv6Verdict,
    };
    use punchscope::analysis::nat::{Filtering, Mapping};
    const ROUNDS: usize = 5;
    let lab = start_lab(
        "v6cls",
        r#"
[[nat]]
name = "fwdrop"
backend = "kernel"
ipv6 = "firewall"
[[nat]]
name = "fwrst"
backend = "kernel"
ipv6 = "firewall"
unsolicited = "rst"
[[nat]]
name = "open"
backend = "kernel"
ipv6 = "open"
[[host]]
name = "h_drop"
nat = "fwdrop"
[[host]]
name = "h_rst"
nat = "fwrst"
[[host]]
name = "h_open"
nat = "open"
"#,
    );
    let _echo = start_echo_dual_stack(&lab);
    let v6_servers = ["[2001:db8:5100::10]:3478", "[2001:db8:5100::11]:3478"];
    let v4_servers = [SERVER_V4, "198.51.100.11:3478"];
    // (host, whether its router lets unsolicited IPv6 in)
    let hosts = [("h_drop", false), ("h_rst", false), ("h_open", true)];
    let mut checked = 0;
    for round in 0..ROUNDS {
        let runs: Vec<_> = hosts
            .iter()
            .map(|&(host, open)| {
                (
                    host,
                    open,
                    classify_in(&lab, host, &v6_servers),
                    classify_in(&lab, host, &v4_servers),
                )
            })
            .collect();
        for (host, open, v6_run, v4_run) in runs {
            let what = format!("round {round} {host}");
            let v6 = classification_of(v6_run, &format!("{what} IPv6"));
            let v = &v6.verdict;
            assert_eq!(
                v.ipv6,
                Some(Ipv6Verdict {
                    translated: Some(false),
                    translation: Some(Ipv6Translation::Untranslated),
                    unsolicited_admitted: Some(open),
                }),
                "{what} IPv6: {v:?}"
            );
            assert!(v.no_nat, "{what} IPv6: no translation: {v:?}");
            let filtering = if open {
                Filtering::Eif
            } else {
                Filtering::Apdf
            };
            assert_eq!(
                v.filtering,
                Finding::Known { value: filtering },
                "{what} IPv6: {v:?}"
            );
            let summary = if open {
                "IPv6: no NAT, no firewall in the way: reachable, peers can connect to you directly"
            } else {
                "IPv6: no NAT, firewall admits only connections you opened: punching needed"
            };
            assert_eq!(v.summary(), summary, "{what} IPv6");
            assert!(
                v6.path.is_none() && v.missing.iter().any(|m| m.contains("IPv4 only")),
                "{what} IPv6: the path probe is skipped and listed as missing: {v:?}"
            );
            assert_eq!(
                v.hairpin,
                Some(true),
                "{what} IPv6: the host's public address is its own, so the hairpin connect reaches it"
            );
            let own = address_v6(&lab, host);
            assert!(
                v6.observations.mapping.iter().all(|p| p.local.ip() == own),
                "{what} IPv6: every probe left from the host's own address: {:?}",
                v6.observations.mapping
            );

            // IPv4 beside it: the router's NAT, as without `ipv6`.
            let v4 = classification_of(v4_run, &format!("{what} IPv4")).verdict;
            assert_eq!(v4.ipv6, None, "{what} IPv4: {v4:?}");
            assert!(!v4.no_nat, "{what} IPv4: masqueraded: {v4:?}");
            assert_eq!(
                (
                    &v4.mapping,
                    &v4.filtering,
                    &v4.allocation,
                    v4.port_preserved,
                    v4.hairpin
                ),
                (
                    &Finding::Known {
                        value: Mapping::Eim
                    },
                    &Finding::Known {
                        value: Filtering::Apdf
                    },
                    &Finding::Known {
                        value: AllocationPattern::Preserving
                    },
                    Some(true),
                    Some(false)
                ),
                "{what} IPv4: the kernel router's defaults: {v4:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, ROUNDS * hosts.len(), "every run was checked");
}

/// The real `probe` in `host` against echo endpoints of both families,
/// waiting 2 s for a peer nobody sends: its exit code must say "no peer".
/// Its result as printed (checked to equal the spooled one, and read as the
/// collector reads it), and the printed text.
fn dual_stack_probe_without_peer(
    lab: &Lab,
    host: &str,
) -> (punchscope::analysis::result::RunResult, String) {
    use punchscope::analysis::result::RunResult;
    use support::process::ChildGuard;
    /// `probe`'s exit code when no peer came (src/cli/probe.rs).
    const EXIT_NO_PEER: i32 = 3;
    let spool = tempfile::tempdir().unwrap();
    let mut probe = ChildGuard::spawn_piped(&mut probe_command_with_echo(
        lab,
        host,
        spool.path(),
        &[
            "[2001:db8:5100::10]:3478",
            SERVER_V4,
            "[2001:db8:5100::11]:3478",
            "198.51.100.11:3478",
        ],
        2,
    ));
    probe.wait(Duration::from_secs(120));
    let output = probe.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(EXIT_NO_PEER),
        "{host}: no peer came: {stderr}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let result = RunResult::from_json(stdout.trim())
        .unwrap_or_else(|e| panic!("{host}: the collector would refuse it ({e}): {stdout}"));
    // The spool's results are its `.json` files (beside them are its folders).
    let spooled: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|x| x == "json"))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    assert_eq!(
        spooled.len(),
        1,
        "{host}: one result in the spool: {spooled:?}"
    );
    assert_eq!(
        RunResult::from_json(spooled[0].trim()).unwrap(),
        result,
        "{host}: the spooled result is the printed one"
    );
    (result, stdout)
}

/// The volunteer's one command in a dual-stack host: `probe` given echo
/// endpoints of both families classifies each with its own (the IPv4 one is
/// what pairing uses), and the result carries both, prefixes only. A host
/// with no IPv6 route gets its IPv4 result and a reason for the missing
/// IPv6 one. Nobody else comes to the coordinator (the probes run one after
/// the other), so each run ends with "no peer" after a short wait.
#[test]
fn a_dual_stack_probe_keeps_both_classifications_in_its_result() {
    use punchscope::analysis::classify::{Finding, Ipv6Translation, Ipv6Verdict};
    use punchscope::analysis::nat::{Filtering, Mapping};
    let lab = start_lab(
        "v6probe",
        r#"
[[nat]]
name = "fw"
backend = "kernel"
ipv6 = "firewall"
[[nat]]
name = "v4only"
backend = "kernel"
[[host]]
name = "alice"
nat = "fw"
[[host]]
name = "bob"
nat = "v4only"
"#,
    );
    let _echo = start_echo_dual_stack(&lab);
    let plan = plan("v6probe", "");
    let _coordinator = start_coordinator(&lab, &plan);

    // bob has IPv4 only: the IPv6 classification is missing, in words, and
    // the run is the IPv4 one it would have been.
    let (without_v6, _) = dual_stack_probe_without_peer(&lab, "bob");
    assert_eq!(without_v6.classification_v6, None);
    let why = without_v6
        .classification_v6_missing
        .as_deref()
        .expect("a reason for the missing IPv6 classification");
    assert!(why.starts_with("IPv6 not classified"), "{why}");
    assert_eq!(without_v6.classification.verdict.ipv6, None);
    assert!(!without_v6.classification.verdict.no_nat);

    let (result, stdout) = dual_stack_probe_without_peer(&lab, "alice");
    let own_v6 = address_v6(&lab, "alice").to_string();
    assert!(
        !stdout.contains(&own_v6) && !stdout.contains("2001:db8:5100::10"),
        "no raw IPv6 address: {stdout}"
    );

    // IPv4: the kernel router's NAT, the classification pairing used.
    let v4 = &result.classification;
    // (The servers announce endpoints of both families; the probes go to IPv4 ones.)
    assert!(
        v4.observations
            .mapping
            .iter()
            .all(|p| p.server.net == "198.51.100.0/24" && p.observed.is_some()),
        "every IPv4 probe went to an IPv4 server: {v4:?}"
    );
    assert_eq!(v4.verdict.ipv6, None, "{v4:?}");
    assert!(!v4.verdict.no_nat, "masqueraded: {v4:?}");
    assert_eq!(
        (&v4.verdict.mapping, &v4.verdict.filtering),
        (
            &Finding::Known {
                value: Mapping::Eim
            },
            &Finding::Known {
                value: Filtering::Apdf
            }
        ),
        "{v4:?}"
    );

    // IPv6: untranslated behind the firewall, which turns unsolicited connections away.
    let v6 = result
        .classification_v6
        .as_ref()
        .unwrap_or_else(|| panic!("an IPv6 classification: {stdout}"));
    assert_eq!(result.classification_v6_missing, None);
    assert_eq!(
        v6.verdict.ipv6,
        Some(Ipv6Verdict {
            translated: Some(false),
            translation: Some(Ipv6Translation::Untranslated),
            unsolicited_admitted: Some(false),
        }),
        "{v6:?}"
    );
    assert!(
        v6.observations
            .mapping
            .iter()
            .all(|p| p.local.net == "2001:db8::/32" && p.server.net == "2001:db8::/32"),
        "every IPv6 probe is kept as a /32 prefix: {v6:?}"
    );
}

#[test]
fn an_ipv6_lab_leaves_no_namespace_behind() {
    let lab = start_lab(
        "v6gone",
        r#"
[[nat]]
name = "fw"
backend = "kernel"
ipv6 = "firewall"
[[host]]
name = "h"
nat = "fw"
"#,
    );
    let name = lab.name().to_string();
    assert_eq!(
        namespaces_of(&name).len(),
        3,
        "internet, the router, the host: {:?}",
        namespaces_of(&name)
    );
    drop(lab);
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

#[test]
fn two_hosts_behind_emulator_apdf_firewalls_connect_by_simultaneous_open_but_not_one_sided() {
    let lab = start_lab(
        "v6epair",
        r#"
[[nat]]
name = "fwa"
ipv6 = "firewall"
filtering = "apdf"
delay_ms = 10
[[nat]]
name = "fwb"
ipv6 = "firewall"
filtering = "apdf"
delay_ms = 10
[[host]]
name = "alice"
nat = "fwa"
[[host]]
name = "bob"
nat = "fwb"
"#,
    );
    simultaneous_open_but_not_one_sided(&lab);
    // The emulator's own log says why the one-sided SYN failed.
    let refused = lab
        .events()
        .into_iter()
        .filter(|e| e.router == "fwb" && matches!(e.event, NatEvent::Refused6 { .. }))
        .count();
    assert!(refused >= 1, "bob's firewall logged the stranger's SYN");
}

/// Every IPv6 firewall kind the emulator plays (unsolicited answer x
/// filtering), NPTv6 and an open router, one host each, in one lab.
const EMULATOR_V6: &str = r#"
[[nat]]
name = "drop_eif"
ipv6 = "firewall"
filtering = "eif"
[[nat]]
name = "drop_adf"
ipv6 = "firewall"
filtering = "adf"
[[nat]]
name = "drop_apdf"
ipv6 = "firewall"
filtering = "apdf"
[[nat]]
name = "rst_eif"
ipv6 = "firewall"
filtering = "eif"
unsolicited = "rst"
[[nat]]
name = "rst_adf"
ipv6 = "firewall"
filtering = "adf"
unsolicited = "rst"
[[nat]]
name = "rst_apdf"
ipv6 = "firewall"
filtering = "apdf"
unsolicited = "rst"
[[nat]]
name = "icmp_eif"
ipv6 = "firewall"
filtering = "eif"
unsolicited = "icmp"
[[nat]]
name = "icmp_adf"
ipv6 = "firewall"
filtering = "adf"
unsolicited = "icmp"
[[nat]]
name = "icmp_apdf"
ipv6 = "firewall"
filtering = "apdf"
unsolicited = "icmp"
[[nat]]
name = "npt"
ipv6 = "nptv6"
[[nat]]
name = "open"
ipv6 = "open"
[[host]]
name = "h_drop_eif"
nat = "drop_eif"
[[host]]
name = "h_drop_adf"
nat = "drop_adf"
[[host]]
name = "h_drop_apdf"
nat = "drop_apdf"
[[host]]
name = "h_rst_eif"
nat = "rst_eif"
[[host]]
name = "h_rst_adf"
nat = "rst_adf"
[[host]]
name = "h_rst_apdf"
nat = "rst_apdf"
[[host]]
name = "h_icmp_eif"
nat = "icmp_eif"
[[host]]
name = "h_icmp_adf"
nat = "icmp_adf"
[[host]]
name = "h_icmp_apdf"
nat = "icmp_apdf"
[[host]]
name = "h_npt"
nat = "npt"
[[host]]
name = "h_open"
nat = "open"
"#;

#[test]
fn classify_over_ipv6_is_right_behind_every_emulator_firewall_nptv6_and_an_open_router() {
    use punchscope::analysis::classify::{DialKind, DialOutcome, Finding, Ipv6Translation};
    use punchscope::analysis::nat::{Filtering, UnsolicitedAnswer};
    const ROUNDS: usize = 5;
    let lab = start_lab("v6ecls", EMULATOR_V6);
    let _echo = start_echo_dual_stack(&lab);
    let v6_servers = ["[2001:db8:5100::10]:3478", "[2001:db8:5100::11]:3478"];
    // (host, its router's filtering as classify should find it, what a
    // refused dial-back meets, whether unsolicited IPv6 gets in)
    let mut hosts = Vec::new();
    for answer in [
        UnsolicitedAnswer::Drop,
        UnsolicitedAnswer::Rst,
        UnsolicitedAnswer::Icmp,
    ] {
        for filtering in [Filtering::Eif, Filtering::Adf, Filtering::Apdf] {
            let host = format!("h_{answer}_{filtering}");
            hosts.push((host, filtering, Some(answer), filtering == Filtering::Eif));
        }
    }
    hosts.push((
        "h_npt".into(),
        Filtering::Apdf,
        Some(UnsolicitedAnswer::Drop),
        false,
    ));
    hosts.push(("h_open".into(), Filtering::Eif, None, true));
    let mut checked = 0;
    for round in 0..ROUNDS {
        // Every host at once: the lab's routers share one thread, as always.
        let runs: Vec<_> = hosts
            .iter()
            .map(|(host, ..)| classify_in(&lab, host, &v6_servers))
            .collect();
        for ((host, filtering, answer, admitted), run) in hosts.iter().zip(runs) {
            let what = format!("round {round} {host}");
            let c = classification_of(run, &what);
            let v = &c.verdict;
            let npt = host == "h_npt";
            let ipv6 = v
                .ipv6
                .unwrap_or_else(|| panic!("{what}: an IPv6 reading: {v:?}"));
            let expected_kind = if npt {
                Ipv6Translation::Nptv6
            } else {
                Ipv6Translation::Untranslated
            };
            assert_eq!(ipv6.translation, Some(expected_kind), "{what}: {v:?}");
            assert_eq!(ipv6.translated, Some(npt), "{what}: {v:?}");
            // Every cell is read exactly: ICMPv6 administratively prohibited
            // reaches the echo server as EACCES, which it reports as
            // `unreachable` (src/server/echo.rs), a refused dial-back.
            assert_eq!(ipv6.unsolicited_admitted, Some(*admitted), "{what}: {v:?}");
            assert_eq!(
                v.filtering,
                Finding::Known { value: *filtering },
                "{what}: {v:?}"
            );
            assert_eq!(v.no_nat, !npt, "{what}: {v:?}");
            let seen = lab.scenario().host(host).unwrap().public_v6.unwrap();
            assert!(
                c.observations
                    .mapping
                    .iter()
                    .all(|p| p.observed.map(|o| o.ip()) == Some(IpAddr::V6(seen))),
                "{what}: every probe seen from the host's public address {seen}: {:?}",
                c.observations.mapping
            );
            if npt {
                assert!(
                    v.summary().starts_with("IPv6: prefix translation (NPTv6"),
                    "{what}: {}",
                    v.summary()
                );
            }
            // The refused dial-back meets the router's unsolicited answer.
            if !admitted {
                let dial = c
                    .observations
                    .filtering
                    .as_ref()
                    .and_then(|f| f.dials.iter().find(|d| d.kind == DialKind::OtherIp))
                    .unwrap_or_else(|| panic!("{what}: an other-IP dial-back: {c:?}"));
                assert!(!dial.received, "{what}");
                let outcome = dial.server_outcome;
                let fits = match answer {
                    Some(UnsolicitedAnswer::Rst) => outcome == Some(DialOutcome::Refused),
                    Some(UnsolicitedAnswer::Icmp) => outcome == Some(DialOutcome::Unreachable),
                    _ => matches!(outcome, None | Some(DialOutcome::Timeout)),
                };
                assert!(fits, "{what}: {answer:?} answered as {outcome:?}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUNDS * hosts.len(), "every run was checked");

    // Strangers meet each answer, and get in through the open router.
    assert_eq!(
        knock_from_internet(&lab, "h_drop_apdf"),
        Err(ErrorKind::TimedOut)
    );
    assert_eq!(
        knock_from_internet(&lab, "h_rst_adf"),
        Err(ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        knock_from_internet(&lab, "h_icmp_eif"),
        Err(ErrorKind::PermissionDenied),
        "ICMPv6 administratively prohibited"
    );
    assert_eq!(knock_from_internet(&lab, "h_open"), Ok(()));
    let malformed: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e.event,
                NatEvent::Dropped {
                    reason: DropReason::Malformed(_),
                    ..
                }
            )
        })
        .collect();
    assert!(malformed.is_empty(), "{malformed:?}");
    let name = lab.name().to_string();
    drop(lab);
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

#[test]
fn classify_reads_a_kernel_routers_nptv6_as_nptv6_and_its_firewall_as_apdf() {
    use punchscope::analysis::classify::Ipv6Translation;
    use punchscope::analysis::nat::Filtering;
    const ROUNDS: usize = 5;
    let lab = start_lab(
        "v6knpt",
        r#"
[[nat]]
name = "knpt"
backend = "kernel"
ipv6 = "nptv6"
[[host]]
name = "h"
nat = "knpt"
"#,
    );
    let host = lab.scenario().host("h").unwrap().clone();
    let (inside, outside) = (host.address_v6.unwrap(), host.public_v6.unwrap());
    assert_ne!(
        inside, outside,
        "the LAN is numbered from the internal prefix"
    );
    let _echo = start_echo_dual_stack(&lab);
    for round in 0..ROUNDS {
        let what = format!("round {round}");
        let c = classification_of(
            classify_in(
                &lab,
                "h",
                &["[2001:db8:5100::10]:3478", "[2001:db8:5100::11]:3478"],
            ),
            &what,
        );
        let v = &c.verdict;
        let ipv6 = v.ipv6.unwrap_or_else(|| panic!("{what}: {v:?}"));
        assert_eq!(
            (ipv6.translation, ipv6.translated, ipv6.unsolicited_admitted),
            (Some(Ipv6Translation::Nptv6), Some(true), Some(false)),
            "{what}: {v:?}"
        );
        assert_eq!(
            v.filtering,
            Finding::Known {
                value: Filtering::Apdf
            },
            "{what}: {v:?}"
        );
        assert!(
            c.observations
                .mapping
                .iter()
                .all(|p| p.local.ip() == IpAddr::V6(inside)
                    && p.observed.map(|o| o.ip()) == Some(IpAddr::V6(outside))),
            "{what}: from {inside}, seen as {outside}: {:?}",
            c.observations.mapping
        );
    }
}

/// Home routers with `ipv6` behind carrier-grade NATs of both backends:
/// the CGN routes their IPv6 unfiltered, as ISPs do, so over IPv6 each
/// host is seen as itself (or its NPTv6 address) and only its own router
/// filters, while over IPv4 it is seen as the CGN.
#[test]
fn ipv6_crosses_a_cgn_of_either_backend_unfiltered_while_ipv4_is_translated_twice() {
    let lab = start_lab(
        "v6chain",
        r#"
[[nat]]
name = "cgn"
mapping = "apdm"
allocation = "random"
[[nat]]
name = "home"
upstream = "cgn"
ipv6 = "firewall"
[[nat]]
name = "khome"
upstream = "cgn"
backend = "kernel"
ipv6 = "firewall"
[[nat]]
name = "kcgn"
backend = "kernel"
[[nat]]
name = "nhome"
upstream = "kcgn"
ipv6 = "nptv6"
unsolicited = "rst"
[[host]]
name = "alice"
nat = "home"
[[host]]
name = "carol"
nat = "khome"
[[host]]
name = "dave"
nat = "nhome"
"#,
    );
    let _servers = EndpointReflector::start(&lab, &[SERVER_V6, SERVER_V4]);
    for (name, cgn) in [("alice", "cgn"), ("carol", "cgn"), ("dave", "kcgn")] {
        let host = lab.scenario().host(name).unwrap().clone();
        let own_v6 = SocketAddr::new(IpAddr::V6(host.address_v6.unwrap()), 40000);
        let own_v4 = SocketAddr::new(IpAddr::V4(host.address), 40001);
        let (seen_v6, seen_v4) = lab
            .run_in(name, || {
                (
                    seen_by_server(own_v6, SERVER_V6),
                    seen_by_server(own_v4, SERVER_V4),
                )
            })
            .unwrap();
        assert_eq!(
            seen_v6,
            SocketAddr::new(IpAddr::V6(host.public_v6.unwrap()), 40000),
            "{name}: over IPv6 the CGN translates nothing"
        );
        let cgn_public = lab
            .scenario()
            .routers
            .iter()
            .find(|r| r.name == cgn)
            .unwrap()
            .config
            .public_ip;
        assert_eq!(
            seen_v4.ip(),
            IpAddr::V4(cgn_public),
            "{name}: IPv4 leaves as the CGN"
        );
    }
    // A stranger meets the home router's own firewall, not the CGN's NAT:
    // dave's answers with a reset.
    let dave = lab.scenario().host("dave").unwrap().clone();
    let target = SocketAddr::new(IpAddr::V6(dave.public_v6.unwrap()), HOST_PORT);
    let refused = lab
        .run_in("internet", || {
            let from: SocketAddr = "[2001:db8:5100::10]:0".parse().unwrap();
            connect_any(from, target, UNANSWERED)
                .map(drop)
                .map_err(|e| e.kind())
        })
        .unwrap();
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}

/// `punchscope classify` given echo servers of both families classifies
/// each apart in a dual-stack host (the JSON names them as a result does),
/// and an IPv6-only host's one classification is its IPv6 one.
#[test]
fn the_classify_command_splits_the_families_and_an_ipv6_only_host_gets_its_ipv6_reading() {
    let lab = start_lab(
        "v6cli",
        "[[nat]]\nname = \"fw\"\nfiltering = \"adf\"\nipv6 = \"firewall\"\n\
         [[host]]\nname = \"dual\"\nnat = \"fw\"\n\
         [[host]]\nname = \"only6\"\nnat = \"fw\"\nipv4 = false\n",
    );
    let _echo = start_echo_dual_stack(&lab);
    let both = [
        SERVER_V4,
        "198.51.100.11:3478",
        SERVER_V6,
        "[2001:db8:5100::11]:3478",
    ];
    let output = classify_in(&lab, "dual", &both).wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let v4: Classification = serde_json::from_value(json["classification"].clone()).unwrap();
    let v6: Classification = serde_json::from_value(json["classification_v6"].clone()).unwrap();
    assert!(!v4.verdict.no_nat && v4.verdict.ipv6.is_none(), "{v4:?}");
    assert!(
        v6.verdict.no_nat && v6.verdict.ipv6.is_some_and(|r| r.translated == Some(false)),
        "{v6:?}"
    );
    let only6 = classification_of(classify_in(&lab, "only6", &both), "only6");
    assert!(
        only6.verdict.ipv6.is_some(),
        "the IPv6-only host's one reading is IPv6: {only6:?}"
    );
    assert!(only6
        .observations
        .mapping
        .iter()
        .all(|p| p.server.is_ipv6()));
}
