//! NAT chains: home routers (emulator and kernel) behind a carrier-grade NAT
//! in the shared address space 100.64.0.0/10; what the internet sees, what
//! `classify` reports of the chain, and `low_ttl` with a measured TTL.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod common;

use std::net::SocketAddrV4;

use common::*;
use punchscope::lab::Lab;

const S1P1: &str = "198.51.100.10:3478";
const S2P1: &str = "198.51.100.11:3478";

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
