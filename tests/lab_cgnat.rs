//! NAT chains: home routers (emulator and kernel) behind a carrier-grade NAT
//! in the shared address space 100.64.0.0/10; what the internet sees, what
//! `classify` reports of the chain, and `low_ttl` with a measured TTL.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod common;

use std::net::{SocketAddr, SocketAddrV4};

use common::*;
use punchscope::analysis::classify::{Classification, Finding, HopClass};
use punchscope::analysis::nat::Mapping;
use punchscope::lab::services::EchoService;
use punchscope::lab::Lab;

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

#[test]
fn home_routers_behind_a_cgn_reach_the_internet_as_the_cgn() {
    let lab = start_lab("chmap", CHAIN);
    let _servers = EchoServer::start(&lab, &[S1P1, S2P1]);
    let cgn_public = lab.scenario().routers[0].config.public_ip;
    for host in ["alice", "carol"] {
        let from = local(&lab, host, 41000);
        let seen = lab
            .run_in(host, || [S1P1, S2P1].map(|s| observe(from, ep(s))))
            .unwrap();
        assert_eq!(*seen[0].ip(), cgn_public, "{host}: {seen:?}");
        assert_eq!(seen[0], seen[1], "{host}: EIM at both NATs: {seen:?}");
    }
    // The CGN mapped the home routers' shared addresses, not the hosts'.
    let internal: Vec<_> = lab
        .events()
        .iter()
        .filter(|e| e.router == "cgn")
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
    let servers: Vec<SocketAddr> = [S1P1, S1P2, S2P1, S2P2]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let _echo = EchoService::start(&lab, &servers).unwrap();
    use HopClass::*;
    // The servers live in the internet namespace itself: the first hop
    // after the NATs is the destination (a public router on the internet).
    for (host, hops, nat_hops, cgnat) in [
        ("alice", vec![Private, Shared, Destination], 2, true),
        ("carol", vec![Private, Shared, Destination], 2, true),
        ("dave", vec![Private, Destination], 1, false),
    ] {
        let c = classify_in(&lab, host);
        let path = c.verdict.path.clone().expect("the path probe ran");
        assert_eq!(path.hops, hops, "{host}: {:?}", c.path);
        assert_eq!(path.nat_hops, Some(nat_hops), "{host}");
        assert_eq!(path.cgnat, Some(cgnat), "{host}");
        assert_eq!(path.prime_ttl, Some(nat_hops + 1), "{host}");
        assert_eq!(
            c.verdict.mapping,
            Finding::Known {
                value: Mapping::Eim
            },
            "{host}: two EIM NATs in a row map as one"
        );
        assert_eq!(
            c.verdict.summary().contains("carrier-grade"),
            cgnat,
            "{host}"
        );
    }
}
