//! Real Linux NATs as lab routers (`backend = "kernel"`): nftables and
//! conntrack in a router namespace, the emulator in series as the WAN link.
//! Mapping, answers and conntrack ground truth seen from real sockets.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod common;

use std::io::ErrorKind;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::*;
use punchscope::lab::Lab;

const S1P1: &str = "198.51.100.10:3478";
const S1P2: &str = "198.51.100.10:3479";
const S2P1: &str = "198.51.100.11:3478";

fn local(lab: &Lab, host: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(lab.scenario().host(host).unwrap().address, port)
}

#[test]
fn kernel_nats_map_as_their_rule_set_says_and_log_conntrack_events() {
    let lab = start_lab(
        "kmap",
        r#"
[[nat]]
name = "masq"
backend = "kernel"
delay_ms = 5
[[nat]]
name = "rand"
backend = "kernel"
mapping = "apdm"
allocation = "random"
[[nat]]
name = "hash"
backend = "kernel"
mapping = "adm"
allocation = "random"
[[host]]
name = "h_masq"
nat = "masq"
[[host]]
name = "h_rand"
nat = "rand"
[[host]]
name = "h_hash"
nat = "hash"
"#,
    );
    let _servers = EchoServer::start(&lab, &[S1P1, S1P2, S2P1]);
    let three_ways = |host: &str| {
        let from = local(&lab, host, 40000);
        lab.run_in(host, || [S1P1, S1P2, S2P1].map(|s| observe(from, ep(s))))
            .unwrap()
    };
    let started = Instant::now();
    let [a, b, c] = three_ways("h_masq");
    assert!(a == b && b == c, "masquerade is EIM: {a} {b} {c}");
    assert_eq!(a.port(), 40000, "masquerade keeps the local port");
    assert!(
        started.elapsed() >= Duration::from_millis(3 * 20),
        "three connects and answers over a 5 ms link take at least 60 ms"
    );
    let [a, b, c] = three_ways("h_rand");
    assert!(
        a != b && b != c && a != c,
        "fully-random is APDM: {a} {b} {c}"
    );
    let [a, b, c] = three_ways("h_hash");
    assert!(a == b && a != c, "hashed snat is ADM: {a} {b} {c}");

    let events = lab.events();
    let mapped: Vec<_> = events
        .iter()
        .filter(|e| e.router == "masq")
        .filter_map(|e| e.event.new_mapping())
        .collect();
    assert_eq!(
        mapped.len(),
        3,
        "one conntrack entry per connection: {mapped:?}"
    );
    assert!(mapped.iter().all(
        |(internal, external)| *internal == local(&lab, "h_masq", 40000)
            && external.port() == 40000
    ));
}

#[test]
fn unsolicited_syns_are_dropped_reset_or_refused_with_icmp() {
    let lab = start_lab(
        "kuns",
        r#"
[[nat]]
name = "drop"
backend = "kernel"
[[nat]]
name = "rst"
backend = "kernel"
unsolicited = "rst"
[[nat]]
name = "icmp"
backend = "kernel"
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
    let public = |host: &str| lab.scenario().host(host).unwrap().public_ip;
    let knock = |host: &str| {
        let target = SocketAddrV4::new(public(host), 45000);
        lab.run_in("internet", || {
            let started = Instant::now();
            let result = connect_from(ep("198.51.100.10:0"), target, Duration::from_millis(700));
            (result.map(|_| ()).map_err(|e| e.kind()), started.elapsed())
        })
        .unwrap()
    };
    let (result, _) = knock("h_drop");
    assert_eq!(result, Err(ErrorKind::TimedOut), "drop: silence");
    let (result, took) = knock("h_rst");
    assert_eq!(result, Err(ErrorKind::ConnectionRefused), "rst");
    assert!(
        took < Duration::from_millis(300),
        "rst answers at once: {took:?}"
    );
    let (result, took) = knock("h_icmp");
    assert_eq!(
        result,
        Err(ErrorKind::ConnectionRefused),
        "icmp port unreachable"
    );
    assert!(
        took < Duration::from_millis(300),
        "icmp answers at once: {took:?}"
    );
}
