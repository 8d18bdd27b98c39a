//! NAT chains: home routers (emulator and kernel) behind a carrier-grade NAT
//! in the shared address space 100.64.0.0/10; what the internet sees, what
//! `classify` reports of the chain, and `low_ttl` with a measured TTL.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::net::{SocketAddr, SocketAddrV4};

use punchscope::analysis::classify::{Classification, Finding, HopClass};
use punchscope::analysis::nat::Mapping;
use punchscope::analysis::trial::{Strategy, TrialOutcome};
use punchscope::lab::nat::NatEvent;
use punchscope::lab::pair::{run_pair, PairTrial};
use punchscope::lab::services::EchoService;
use punchscope::lab::Lab;
use support::lab::*;

const S1P1: &str = "198.51.100.10:3478";
const S1P2: &str = "198.51.100.10:3479";
const S2P1: &str = "198.51.100.11:3478";
const S2P2: &str = "198.51.100.11:3479";

fn local(lab: &Lab, host: &str, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(lab.scenario().host(host).unwrap().address, port)
}

const CHAIN: &str = r#"
[[nat]]
name = "cgn"
mapping = "eim"
delay_ms = 2
[[nat]]
name = "home"
upstream = "cgn"
delay_ms = 1
[[nat]]
name = "khome"
upstream = "cgn"
backend = "kernel"
[[host]]
name = "alice"
nat = "home"
[[host]]
name = "carol"
nat = "khome"
[[nat]]
name = "solo"
[[host]]
name = "dave"
nat = "solo"
"#;

/// The same chains behind kernel CGNs (nftables masquerade in a namespace
/// of their own): `kcgn` is EIM (masquerade), `rcgn` APDM (masquerade
/// fully-random); `phone` sits directly on `kcgn`'s LAN beside the home routers.
const KERNEL_CGN_CHAINS: &str = r#"
[[nat]]
name = "kcgn"
backend = "kernel"
delay_ms = 2
[[nat]]
name = "home"
upstream = "kcgn"
delay_ms = 1
[[nat]]
name = "khome"
upstream = "kcgn"
backend = "kernel"
[[nat]]
name = "rcgn"
backend = "kernel"
mapping = "apdm"
allocation = "random"
[[nat]]
name = "rhome"
upstream = "rcgn"
[[host]]
name = "alice"
nat = "home"
[[host]]
name = "carol"
nat = "khome"
[[host]]
name = "phone"
nat = "kcgn"
[[host]]
name = "erin"
nat = "rhome"
"#;

#[test]
fn home_routers_behind_a_cgn_reach_the_internet_as_the_cgn() {
    let lab = start_lab("chmap", CHAIN);
    assert_hosts_reach_the_internet_as_their_cgn(&lab, "cgn", &["alice", "carol"]);
}

#[test]
fn home_routers_and_a_phone_behind_a_kernel_cgn_reach_the_internet_as_the_cgn() {
    let lab = start_lab("chkmap", KERNEL_CGN_CHAINS);
    assert_hosts_reach_the_internet_as_their_cgn(&lab, "kcgn", &["alice", "carol", "phone"]);
    let namespaces = namespaces_of(lab.name());
    assert!(
        namespaces.contains(&lab.router_netns("kcgn")),
        "the kernel CGN has its own namespace: {namespaces:?}"
    );
    let name = lab.name().to_string();
    lab.shutdown().unwrap();
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

/// Each host is seen by two servers at `cgn`'s public address, with one
/// port (EIM at both NATs); `cgn` mapped only shared addresses (the home
/// routers' WANs, or a host directly on its LAN), never a home LAN's.
fn assert_hosts_reach_the_internet_as_their_cgn(lab: &Lab, cgn: &str, hosts: &[&str]) {
    let _servers = EndpointReflector::start(lab, &[S1P1, S2P1]);
    let cgn_public = lab
        .scenario()
        .routers
        .iter()
        .find(|r| r.name == cgn)
        .expect("the CGN is in the scenario")
        .config
        .public_ip;
    for &host in hosts {
        let from = local(lab, host, 41000);
        let seen = lab
            .run_in(host, || [S1P1, S2P1].map(|s| observe(from, ep(s))))
            .unwrap();
        assert_eq!(*seen[0].ip(), cgn_public, "{host}: {seen:?}");
        assert_eq!(seen[0], seen[1], "{host}: EIM at both NATs: {seen:?}");
    }
    let internal: Vec<_> = lab
        .events()
        .iter()
        .filter(|e| e.router == cgn)
        .filter_map(|e| e.event.new_mapping())
        .map(|(internal, _)| *internal.ip())
        .collect();
    assert!(!internal.is_empty());
    assert!(
        internal.iter().all(|ip| ip.octets()[..2] == [100, 64]),
        "{internal:?}"
    );
}

/// The real `classify --json` in `host`, against the lab's echo servers.
fn classify_in(lab: &Lab, host: &str) -> Classification {
    let output = punchscope::lab::netns::command_in(
        &lab.host_netns(host).unwrap(),
        env!("CARGO_BIN_EXE_punchscope"),
    )
    .unwrap()
    .args(["classify", "--json", "--server", S1P1, "--server", S2P1])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{host}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn classify_reports_the_chain_and_cgnat_behind_either_home_backend() {
    let lab = start_lab("chcls", CHAIN);
    // Both server IPs, two ports each: what classification asks.
    let _echo = start_echo(&lab);
    use HopClass::*;
    // The servers live in the internet namespace itself: the first hop
    // after the NATs is the destination (a public router on the internet).
    for (host, hops, nat_hops, cgnat) in [
        ("alice", vec![Private, Shared, Destination], 2, true),
        ("carol", vec![Private, Shared, Destination], 2, true),
        ("dave", vec![Private, Destination], 1, false),
    ] {
        // Two EIM NATs in a row map as one.
        assert_classified(&lab, host, &hops, nat_hops, cgnat, Mapping::Eim);
    }
}

#[test]
fn classify_reports_the_chain_cgnat_and_the_cgns_mapping_behind_a_kernel_cgn() {
    let lab = start_lab("chkcls", KERNEL_CGN_CHAINS);
    // Both server IPs, two ports each: what classification asks.
    let _echo = start_echo(&lab);
    use HopClass::*;
    let chain = [Private, Shared, Destination];
    // The kernel CGN answers time exceeded from its LAN address (100.64.M.1)
    // to the routers behind it too, so the chain shows as behind an emulator CGN.
    assert_classified(&lab, "alice", &chain, 2, true, Mapping::Eim);
    assert_classified(&lab, "carol", &chain, 2, true, Mapping::Eim);
    // A fully-random CGN makes the whole chain APDM, whatever the home NAT does.
    assert_classified(&lab, "erin", &chain, 2, true, Mapping::Apdm);
}

/// `classify` in `host` reports these path hops, NAT hops, CGNAT (in the
/// path and the summary), a prime TTL one past the NATs, and `mapping`.
fn assert_classified(
    lab: &Lab,
    host: &str,
    hops: &[HopClass],
    nat_hops: u8,
    cgnat: bool,
    mapping: Mapping,
) {
    let c = classify_in(lab, host);
    let path = c.verdict.path.clone().expect("the path probe ran");
    assert_eq!(path.hops, hops, "{host}: {:?}", c.path);
    assert_eq!(path.nat_hops, Some(nat_hops), "{host}");
    assert_eq!(path.cgnat, Some(cgnat), "{host}");
    assert_eq!(path.prime_ttl, Some(nat_hops + 1), "{host}");
    assert_eq!(
        c.verdict.mapping,
        Finding::Known { value: mapping },
        "{host}: {:?}",
        c.verdict
    );
    assert_eq!(
        c.verdict.summary().contains("carrier-grade"),
        cgnat,
        "{host}"
    );
}

/// Two CGNAT chains: a home EIM router behind an RST-answering EIM CGN with
/// 50 ms one way to the internet, on each side.
const TWO_CHAINS: &str = r#"
[[nat]]
name = "cgn_a"
unsolicited = "rst"
delay_ms = 50
[[nat]]
name = "home_a"
upstream = "cgn_a"
[[nat]]
name = "cgn_b"
unsolicited = "rst"
delay_ms = 50
[[nat]]
name = "home_b"
upstream = "cgn_b"
[[host]]
name = "alice"
nat = "home_a"
[[host]]
name = "bob"
nat = "home_b"
"#;

/// The same two chains behind kernel CGNs (masquerade, `reject with tcp
/// reset` for unsolicited SYNs): an emulator home router on one side, a
/// kernel one on the other. Linux's TCP window check is off on the kernel
/// routers (`nf_conntrack_tcp_be_liberal`): with it, a primed Linux NAT
/// that the peer's SYN passes first lets the answer out untranslated, and
/// `low_ttl` under skew fails whatever the TTL (docs/methodology.md, "Why
/// `low_ttl` breaks on Linux"), which would hide what the TTL does.
const TWO_KERNEL_CGN_CHAINS: &str = r#"
[[nat]]
name = "cgn_a"
backend = "kernel"
unsolicited = "rst"
tcp_window_check = false
delay_ms = 50
[[nat]]
name = "home_a"
upstream = "cgn_a"
[[nat]]
name = "cgn_b"
backend = "kernel"
unsolicited = "rst"
tcp_window_check = false
delay_ms = 50
[[nat]]
name = "home_b"
upstream = "cgn_b"
backend = "kernel"
tcp_window_check = false
[[host]]
name = "alice"
nat = "home_a"
[[host]]
name = "bob"
nat = "home_b"
"#;

const LOW_TTL_TRIALS: u32 = 5;

/// The echo servers classification and the trials need, on both server addresses and ports.
fn lab_servers() -> Vec<SocketAddr> {
    [S1P1, S1P2, S2P1, S2P2]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The prime TTLs `classify` measures for alice and bob, each behind CGNAT.
fn measured_prime_ttls(lab: &Lab) -> (u8, u8) {
    let measured = |host: &str| {
        let path = classify_in(lab, host).verdict.path.expect("path probed");
        assert_eq!(path.cgnat, Some(true), "{host}: {path:?}");
        path.prime_ttl.expect("a complete path")
    };
    (measured("alice"), measured("bob"))
}

/// `LOW_TTL_TRIALS` `low_ttl` trials from alice to bob with these prime
/// TTLs, the responder 150 ms late, one attempt each, from `*port` on:
/// how many connected on both sides, and every pair of outcomes.
fn low_ttl_trials(
    lab: &Lab,
    server: SocketAddr,
    prime_ttls: (u8, u8),
    port: &mut u16,
) -> (u32, Vec<(TrialOutcome, TrialOutcome)>) {
    let mut connected = 0;
    let mut outcomes = Vec::new();
    for n in 0..LOW_TTL_TRIALS {
        let mut t = PairTrial::new(
            "alice",
            "bob",
            n,
            Strategy::LowTtl,
            (*port, *port + 1),
            server,
        );
        *port += 2;
        t.prime_ttls = Some(prime_ttls);
        // The responder starts 150 ms late: beyond the 100 ms an early SYN
        // needs to reach the peer's CGN. One attempt, so no retry hides it.
        t.plan.injected_skew_ms = 150;
        t.plan.max_attempts = 1;
        let (a, b) = run_pair(lab, &t).unwrap();
        if a.outcome == TrialOutcome::Connected && b.outcome == TrialOutcome::Connected {
            connected += 1;
        }
        outcomes.push((a.outcome, b.outcome));
    }
    (connected, outcomes)
}

#[test]
fn low_ttl_primes_the_whole_chain_with_the_measured_ttl_and_not_with_a_fixed_2() {
    let lab = start_lab("chttl", TWO_CHAINS);
    let servers = lab_servers();
    let _echo = EchoService::start(&lab, &servers).unwrap();
    let ttls = measured_prime_ttls(&lab);
    assert_eq!(ttls, (3, 3), "home NAT + CGN: the prime must pass two NATs");
    let mut port = 31000;
    let (with_measured, measured_outcomes) = low_ttl_trials(&lab, servers[0], ttls, &mut port);
    let (with_fixed, fixed_outcomes) = low_ttl_trials(&lab, servers[0], (2, 2), &mut port);
    eprintln!(
        "low_ttl across two CGNAT chains, 150 ms skew: measured TTL {ttls:?} {with_measured}/{LOW_TTL_TRIALS} {measured_outcomes:?}; fixed TTL 2 {with_fixed}/{LOW_TTL_TRIALS} {fixed_outcomes:?}"
    );
    assert_eq!(with_measured, LOW_TTL_TRIALS, "{measured_outcomes:?}");
    assert_eq!(
        with_fixed, 0,
        "a TTL 2 prime dies at the home side's CGN and opens only the home NAT: {fixed_outcomes:?}"
    );
    // The fixed prime died inside the chain: the CGNs logged it as time exceeded.
    let died_in_cgn = lab
        .events()
        .iter()
        .filter(|e| e.router.starts_with("cgn_"))
        .filter(|e| matches!(e.event, NatEvent::TtlExceeded { .. }))
        .count();
    assert!(died_in_cgn >= 2 * LOW_TTL_TRIALS as usize, "{died_in_cgn}");
}

/// How many ICMP time exceeded messages a kernel router's namespace has
/// sent (`OutTimeExcds` of /proc/net/snmp, which is per namespace): the
/// ground truth of primes that died there, as conntrack never sees them.
fn time_exceeded_sent_by(lab: &Lab, router: &str) -> u64 {
    let output = punchscope::lab::netns::command_in(&lab.router_netns(router), "cat")
        .unwrap()
        .arg("/proc/net/snmp")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let snmp = String::from_utf8(output.stdout).unwrap();
    let icmp: Vec<Vec<&str>> = snmp
        .lines()
        .filter(|line| line.starts_with("Icmp:"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let [names, values] = icmp.as_slice() else {
        panic!("{router}: no Icmp header and values in /proc/net/snmp: {snmp}");
    };
    let column = names
        .iter()
        .position(|name| *name == "OutTimeExcds")
        .expect("OutTimeExcds counted");
    values[column].parse().unwrap()
}

fn time_exceeded_sent_by_both_cgns(lab: &Lab) -> u64 {
    time_exceeded_sent_by(lab, "cgn_a") + time_exceeded_sent_by(lab, "cgn_b")
}

#[test]
fn low_ttl_behind_kernel_cgns_primes_the_whole_chain_with_the_measured_ttl_and_not_with_a_fixed_2()
{
    let lab = start_lab("chkttl", TWO_KERNEL_CGN_CHAINS);
    let servers = lab_servers();
    let _echo = EchoService::start(&lab, &servers).unwrap();
    let ttls = measured_prime_ttls(&lab);
    assert_eq!(
        ttls,
        (3, 3),
        "home NAT (emulator or kernel) + kernel CGN: the prime must pass two NATs"
    );
    let mut port = 31000;
    let before = time_exceeded_sent_by_both_cgns(&lab);
    let (with_measured, measured_outcomes) = low_ttl_trials(&lab, servers[0], ttls, &mut port);
    let died_in_cgn_measured = time_exceeded_sent_by_both_cgns(&lab) - before;
    let before = time_exceeded_sent_by_both_cgns(&lab);
    let (with_fixed, fixed_outcomes) = low_ttl_trials(&lab, servers[0], (2, 2), &mut port);
    let died_in_cgn_fixed = time_exceeded_sent_by_both_cgns(&lab) - before;
    eprintln!(
        "low_ttl across two kernel-CGN chains, 150 ms skew: measured TTL {ttls:?} {with_measured}/{LOW_TTL_TRIALS} {measured_outcomes:?}, {died_in_cgn_measured} died in a CGN; fixed TTL 2 {with_fixed}/{LOW_TTL_TRIALS} {fixed_outcomes:?}, {died_in_cgn_fixed} died in a CGN"
    );
    assert_eq!(with_measured, LOW_TTL_TRIALS, "{measured_outcomes:?}");
    assert_eq!(
        died_in_cgn_measured, 0,
        "a prime with the measured TTL passes both NATs of its chain"
    );
    assert_eq!(
        with_fixed, 0,
        "a TTL 2 prime dies at the home side's CGN and opens only the home NAT: {fixed_outcomes:?}"
    );
    // Each side's prime died in its own CGN, which answered time exceeded.
    assert!(
        died_in_cgn_fixed >= 2 * u64::from(LOW_TTL_TRIALS),
        "{died_in_cgn_fixed}"
    );

    // Linux's default, the window check on, on every kernel router: the
    // measured TTL still primes the chain, but the peer's SYN passes the
    // primed NATs first, and the answer leaves untranslated (timeouts, not
    // refusals), as between two kernel home routers.
    for router in ["cgn_a", "cgn_b", "home_b"] {
        punchscope::lab::netns::set_sysctls(
            &lab.router_netns(router),
            &[("netfilter/nf_conntrack_tcp_be_liberal", "0")],
        )
        .unwrap();
    }
    let (with_window_check, checked_outcomes) = low_ttl_trials(&lab, servers[0], ttls, &mut port);
    eprintln!(
        "the same with the window check on: measured TTL {with_window_check}/{LOW_TTL_TRIALS} {checked_outcomes:?}"
    );
    assert_eq!(with_window_check, 0, "{checked_outcomes:?}");
    assert!(
        checked_outcomes
            .iter()
            .all(|(a, b)| *a == TrialOutcome::Timeout && *b == TrialOutcome::Timeout),
        "{checked_outcomes:?}"
    );
}
