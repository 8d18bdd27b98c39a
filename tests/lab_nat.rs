//! Lab tests of NAT behaviour seen from real sockets in host namespaces:
//! mapping, allocation, filtering, unsolicited-SYN answers, TTL, simultaneous open and delay.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use punchscope::lab::nat::{NatEvent, RefusalCause};
use punchscope::lab::Lab;
use support::lab::*;

const S1P1: &str = "198.51.100.10:3478";
const S1P2: &str = "198.51.100.10:3479";
const S2P1: &str = "198.51.100.11:3478";

fn all_servers(lab: &Lab) -> EndpointReflector {
    EndpointReflector::start(lab, &[S1P1, S1P2, S2P1, "198.51.100.11:3479"])
}

fn local(lab: &Lab, host: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(lab.scenario().host(host).unwrap().address, port)
}

#[test]
fn mapping_and_allocation_are_what_the_scenario_says() {
    let lab = start_lab(
        "map",
        r#"
[[nat]]
name = "eim"
mapping = "eim"
[[nat]]
name = "adm"
mapping = "adm"
[[nat]]
name = "apdm"
mapping = "apdm"
[[nat]]
name = "seq"
mapping = "apdm"
allocation = "sequential"
sequential_step = 2
[[nat]]
name = "rnd"
allocation = "random"
[[host]]
name = "h_eim"
nat = "eim"
[[host]]
name = "h_adm"
nat = "adm"
[[host]]
name = "h_apdm"
nat = "apdm"
[[host]]
name = "h_seq"
nat = "seq"
[[host]]
name = "h_rnd"
nat = "rnd"
"#,
    );
    let _servers = all_servers(&lab);

    // From one local port to IP1:P1, IP1:P2 and IP2:P1.
    let three_ways = |host: &str| {
        let from = local(&lab, host, 40000);
        lab.run_in(host, || [S1P1, S1P2, S2P1].map(|s| observe(from, ep(s))))
            .unwrap()
    };
    let [a, b, c] = three_ways("h_eim");
    assert!(a == b && b == c, "eim: {a} {b} {c}");
    assert_eq!(a.port(), 40000, "preserve keeps the local port");
    let [a, b, c] = three_ways("h_adm");
    assert!(a == b && a != c, "adm: {a} {b} {c}");
    let [a, b, c] = three_ways("h_apdm");
    assert!(a != b && b != c && a != c, "apdm: {a} {b} {c}");

    // Fresh local ports towards one server.
    let fresh_ports = |host: &str| -> Vec<u16> {
        lab.run_in(host, || {
            (41000..41005)
                .map(|p| observe(local(&lab, host, p), ep(S1P1)).port())
                .collect()
        })
        .unwrap()
    };
    let preserved = fresh_ports("h_eim");
    assert_eq!(preserved, (41000..41005).collect::<Vec<_>>());
    let sequential = fresh_ports("h_seq");
    let steps: Vec<i32> = sequential
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    assert_eq!(
        steps,
        [2, 2, 2, 2],
        "sequential with step 2: {sequential:?}"
    );
    let random = fresh_ports("h_rnd");
    let steps: Vec<i32> = random
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    assert_ne!(
        random,
        (41000..41005).collect::<Vec<_>>(),
        "random does not preserve"
    );
    assert!(
        steps.windows(2).any(|w| w[0] != w[1]),
        "random has no constant step: {random:?}"
    );
}

#[test]
fn filtering_admits_exactly_what_the_scenario_says() {
    let lab = start_lab(
        "flt",
        r#"
[[nat]]
name = "eif"
filtering = "eif"
unsolicited = "rst"
[[nat]]
name = "adf"
filtering = "adf"
unsolicited = "rst"
[[nat]]
name = "apdf"
filtering = "apdf"
unsolicited = "rst"
[[host]]
name = "h_eif"
nat = "eif"
[[host]]
name = "h_adf"
nat = "adf"
[[host]]
name = "h_apdf"
nat = "apdf"
"#,
    );
    let _servers = all_servers(&lab);
    for (host, expect_same_ip, expect_other_ip) in [
        ("h_eif", true, true),
        ("h_adf", true, false),
        ("h_apdf", false, false),
    ] {
        let l = local(&lab, host, 42000);
        let (public, listener) = lab
            .run_in(host, || {
                let public = observe(l, ep(S1P1));
                (public, listen_on(l))
            })
            .unwrap();
        // From the same server IP but another port, and from the other IP.
        let attempt = |from_ip: &str| {
            let from = SocketAddrV4::new(from_ip.parse().unwrap(), 0);
            lab.run_in("internet", || {
                connect_from(from, public, Duration::from_secs(3))
            })
            .unwrap()
        };
        let same_ip = attempt("198.51.100.10");
        let other_ip = attempt("198.51.100.11");
        for (result, expected, what) in [
            (&same_ip, expect_same_ip, "same IP"),
            (&other_ip, expect_other_ip, "other IP"),
        ] {
            match result {
                Ok(_) => assert!(expected, "{host}: {what} was admitted"),
                Err(e) => {
                    assert!(!expected, "{host}: {what} refused: {e}");
                    assert_eq!(
                        e.kind(),
                        ErrorKind::ConnectionRefused,
                        "{host}: {what}: the NAT answers RST"
                    );
                }
            }
        }
        // Every admitted connection really reached the host's listener (its final
        // ACK crosses the NAT after the client's connect returned, so wait for it).
        let expected = usize::from(expect_same_ip) + usize::from(expect_other_ip);
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut accepted = 0;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok(_) => accepted += 1,
                Err(_) if accepted >= expected => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert_eq!(accepted, expected, "{host}");
    }
}

#[test]
fn unsolicited_syns_time_out_are_reset_or_get_icmp() {
    let lab = start_lab(
        "uns",
        r#"
[[nat]]
name = "drop"
unsolicited = "drop"
[[nat]]
name = "rst"
unsolicited = "rst"
[[nat]]
name = "icmp"
unsolicited = "icmp"
[[host]]
name = "h_drop"
nat = "drop"
[[host]]
name = "h_rst"
nat = "rst"
[[host]]
name = "h_icmp"
nat = "icmp"
"#,
    );
    let connect_to = |host: &str| {
        let target = SocketAddrV4::new(lab.scenario().host(host).unwrap().public_ip, 5555);
        let from = ep("198.51.100.10:0");
        lab.run_in("internet", || {
            let started = Instant::now();
            let result = connect_from(from, target, Duration::from_millis(1500));
            (
                result.err().map(|e| (e.kind(), e.raw_os_error())),
                started.elapsed(),
            )
        })
        .unwrap()
    };
    let (drop, waited) = connect_to("h_drop");
    assert_eq!(drop.map(|e| e.0), Some(ErrorKind::TimedOut));
    assert!(waited >= Duration::from_millis(1400));
    let (rst, waited) = connect_to("h_rst");
    assert_eq!(rst.and_then(|e| e.1), Some(libc::ECONNREFUSED));
    assert!(
        waited < Duration::from_millis(500),
        "refused at once, took {waited:?}"
    );
    let (icmp, waited) = connect_to("h_icmp");
    let errno = icmp.and_then(|e| e.1);
    assert!(
        errno == Some(libc::EHOSTUNREACH) || errno == Some(libc::ECONNREFUSED),
        "icmp: {errno:?}"
    );
    assert!(
        waited < Duration::from_millis(500),
        "failed at once, took {waited:?}"
    );
    let refused: Vec<_> = lab
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e.event,
                NatEvent::Refused {
                    cause: RefusalCause::NoMapping,
                    ..
                }
            )
        })
        .map(|e| e.router)
        .collect();
    for router in ["drop", "rst", "icmp"] {
        assert!(
            refused.iter().any(|r| r == router),
            "{router} logged its refusal: {refused:?}"
        );
    }
}

#[test]
fn a_ttl_two_syn_opens_its_own_mapping_and_dies_in_the_internet() {
    let lab = start_lab(
        "ttl",
        r#"
[[nat]]
name = "a"
[[nat]]
name = "b"
[[host]]
name = "alice"
nat = "a"
[[host]]
name = "bob"
nat = "b"
"#,
    );
    let bob_public = SocketAddrV4::new(lab.scenario().host("bob").unwrap().public_ip, 43000);
    let send_with_ttl = |ttl: u32, port: u16| {
        let from = local(&lab, "alice", port);
        lab.run_in("alice", || {
            let socket = support::sockets::bound(std::net::SocketAddr::V4(from)).unwrap();
            socket.set_ttl(ttl).unwrap();
            socket
                .connect_timeout(
                    &std::net::SocketAddr::V4(bob_public).into(),
                    Duration::from_millis(700),
                )
                .err()
                .and_then(|e| e.raw_os_error())
        })
        .unwrap()
    };
    let ttl2 = send_with_ttl(2, 43001);
    let ttl1 = send_with_ttl(1, 43002);
    std::thread::sleep(Duration::from_millis(50));
    let events = lab.events();
    let alice_public = lab.scenario().host("alice").unwrap().public_ip;

    // TTL 2: NAT a opened a mapping towards bob, the internet's time-exceeded came back to alice.
    assert!(
        events.iter().any(|e| e.router == "a"
            && matches!(&e.event, NatEvent::MappingCreated { internal, remote, .. }
            if internal.port() == 43001 && *remote == bob_public)),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| e.router == "a"
        && matches!(&e.event, NatEvent::IcmpTranslated { icmp_type: 11, internal, .. } if internal.port() == 43001)));
    assert_eq!(
        ttl2,
        Some(libc::EHOSTUNREACH),
        "alice's kernel saw the time-exceeded"
    );
    // ...and nothing from alice ever reached NAT b.
    assert!(
        !events.iter().any(|e| e.router == "b"),
        "NAT b saw nothing: {:?}",
        events
            .iter()
            .filter(|e| e.router == "b")
            .collect::<Vec<_>>()
    );

    // TTL 1: died at NAT a, no mapping.
    assert!(events.iter().any(|e| e.router == "a"
        && matches!(&e.event, NatEvent::TtlExceeded { src, answered: true, .. } if src.port() == 43002)));
    assert!(!events.iter().any(|e| matches!(&e.event,
        NatEvent::MappingCreated { internal, .. } if internal.port() == 43002)));
    assert_eq!(ttl1, Some(libc::EHOSTUNREACH));
    assert_ne!(alice_public, Ipv4Addr::UNSPECIFIED);
}

/// Both hosts learn their public endpoint from the echo server, then connect to each other at once.
fn simultaneous_open(
    lab: &Lab,
    port: u16,
    timeout: Duration,
) -> [std::io::Result<std::net::TcpStream>; 2] {
    let alice = local(lab, "alice", port);
    let bob = local(lab, "bob", port);
    let alice_public = lab.run_in("alice", || observe(alice, ep(S1P1))).unwrap();
    let bob_public = lab.run_in("bob", || observe(bob, ep(S1P1))).unwrap();
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            lab.run_in("alice", || {
                barrier.wait();
                connect_from(alice, bob_public, timeout)
            })
            .unwrap()
        });
        let b = s.spawn(|| {
            lab.run_in("bob", || {
                barrier.wait();
                connect_from(bob, alice_public, timeout)
            })
            .unwrap()
        });
        [a.join().unwrap(), b.join().unwrap()]
    })
}

const TWO_NATS: &str = r#"
[[nat]]
name = "a"
mapping = "MAPPING"
filtering = "FILTERING"
delay_ms = DELAY
[[nat]]
name = "b"
mapping = "MAPPING"
filtering = "FILTERING"
delay_ms = DELAY
[[host]]
name = "alice"
nat = "a"
[[host]]
name = "bob"
nat = "b"
"#;

fn two_nats(mapping: &str, filtering: &str, delay_ms: u32) -> String {
    TWO_NATS
        .replace("MAPPING", mapping)
        .replace("FILTERING", filtering)
        .replace("DELAY", &delay_ms.to_string())
}

#[test]
fn simultaneous_open_works_between_eim_nats_and_carries_data_both_ways() {
    let lab = start_lab("sim", &two_nats("eim", "apdf", 5));
    let _servers = all_servers(&lab);
    let [a, b] = simultaneous_open(&lab, 44000, Duration::from_secs(5));
    let (mut a, mut b) = (a.expect("alice connected"), b.expect("bob connected"));
    a.write_all(b"from alice").unwrap();
    b.write_all(b"from bob!!").unwrap();
    let (mut got_a, mut got_b) = ([0u8; 10], [0u8; 10]);
    b.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    b.read_exact(&mut got_b).unwrap();
    a.read_exact(&mut got_a).unwrap();
    assert_eq!(&got_b, b"from alice");
    assert_eq!(&got_a, b"from bob!!");
}

#[test]
fn simultaneous_open_fails_between_apdm_nats() {
    let lab = start_lab("sym", &two_nats("apdm", "apdf", 5));
    let _servers = all_servers(&lab);
    let [a, b] = simultaneous_open(&lab, 44100, Duration::from_secs(3));
    assert!(a.is_err() && b.is_err(), "apdm pair connected: {a:?} {b:?}");
    // The SYNs left from ports the peer never learned, so each NAT filtered the other's.
    let filtered = lab
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e.event,
                NatEvent::Refused {
                    cause: RefusalCause::Filtered,
                    ..
                }
            )
        })
        .count();
    assert!(filtered >= 2, "both NATs filtered the peer's SYN");
}

#[test]
fn round_trip_between_hosts_behind_50ms_nats_is_about_200ms() {
    let lab = start_lab("rtt", &two_nats("eim", "eif", 50));
    let _servers = all_servers(&lab);
    let [a, b] = simultaneous_open(&lab, 44200, Duration::from_secs(5));
    let (mut a, mut b) = (a.expect("alice connected"), b.expect("bob connected"));
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..5 {
            b.read_exact(&mut byte).unwrap();
            b.write_all(&byte).unwrap();
        }
    });
    a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rtts = Vec::new();
    for i in 0..5u8 {
        let started = Instant::now();
        a.write_all(&[i]).unwrap();
        let mut byte = [0u8; 1];
        a.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], i);
        rtts.push(started.elapsed());
    }
    echo.join().unwrap();
    let min = rtts.iter().min().unwrap();
    assert!(
        *min >= Duration::from_millis(200) && *min < Duration::from_millis(260),
        "RTT {rtts:?}"
    );
}
