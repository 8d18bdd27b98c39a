//! In-memory tests of the core's IPv6 side: the firewall's pinholes under
//! every filtering and unsolicited answer, timeouts, RST, hop limit, open
//! routing, and NPTv6 with every output packet's checksums verified.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};

use pnet_packet::tcp::TcpFlags;
use punchscope_analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};

use super::v6::{build, checksum6, parse6, v6, Body6, Ipv6Mode, Ipv6Router, Npt};
use super::*;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const DEVICE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const DEVICE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

fn addr(text: &str) -> Ipv6Addr {
    text.parse().unwrap()
}
fn host() -> SocketAddrV6 {
    v6(addr("2001:db8:1:1::2"), 40000)
}
fn server1() -> SocketAddrV6 {
    v6(addr("2001:db8:5100::10"), 3478)
}
fn server1_other_port() -> SocketAddrV6 {
    v6(addr("2001:db8:5100::10"), 3479)
}
fn server2() -> SocketAddrV6 {
    v6(addr("2001:db8:5100::11"), 3478)
}

/// The lab's plan for router 1 (docs/lab.md), with the given mode and filtering.
fn router(mode: Ipv6Mode, filtering: Filtering) -> Ipv6Router {
    let npt = mode == Ipv6Mode::Nptv6;
    let lan = if npt {
        "fd00:db8:1:1::"
    } else {
        "2001:db8:1:1::"
    };
    let hosts = vec![
        (addr(&format!("{lan}2")), DEVICE),
        (addr(&format!("{lan}3")), DEVICE_B),
    ];
    Ipv6Router {
        mode,
        filtering,
        lan_prefix: addr(lan),
        gateway: addr(&format!("{lan}1")),
        wan: addr("2001:db8:1::1"),
        npt: npt.then(|| Npt::new(addr("fd00:db8:1::"), addr("2001:db8:1::"))),
        hosts,
    }
}

fn config(mode: Ipv6Mode, filtering: Filtering, unsolicited: UnsolicitedAnswer) -> NatConfig {
    let mut config = NatConfig::nat(Mapping::Eim, filtering, Allocation::Preserve, PUBLIC);
    config.unsolicited = unsolicited;
    config.ipv6 = Some(router(mode, filtering));
    config
}

/// Independent of the code under test: a valid transport or ICMPv6
/// checksum sums, pseudo-header included, to zero (0xffff before the complement).
fn assert_checksum_valid(packet: &[u8]) {
    let s = parse6(packet).expect("a valid IPv6 packet");
    let body = &packet[40..s.total_len];
    let next = packet[6];
    assert!(matches!(next, 6 | 17 | 58), "next header {next}");
    assert_eq!(
        checksum6(s.src, s.dst, next, body),
        0,
        "checksum of {next} from {} to {}",
        s.src,
        s.dst
    );
}

struct Harness {
    nat: Nat,
    now: Instant,
}

impl Harness {
    fn new(config: NatConfig) -> Self {
        Self {
            nat: Nat::new(config),
            now: Instant::now(),
        }
    }

    fn drain(&mut self) -> Vec<Transmit> {
        let out: Vec<_> = std::iter::from_fn(|| self.nat.poll_transmit()).collect();
        for t in &out {
            assert_checksum_valid(&t.packet);
        }
        out
    }

    fn lan(&mut self, packet: Vec<u8>) -> Vec<Transmit> {
        assert_checksum_valid(&packet);
        self.nat.handle_lan(&packet, self.now);
        self.drain()
    }

    fn wan(&mut self, packet: Vec<u8>) -> Vec<Transmit> {
        assert_checksum_valid(&packet);
        self.nat.handle_wan(&packet, self.now);
        self.drain()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.nat.handle_timeout(self.now);
    }

    fn events(&mut self) -> Vec<NatEvent> {
        std::iter::from_fn(|| self.nat.poll_event())
            .map(|e| e.event)
            .collect()
    }

    /// A SYN from `internal` to `remote`; the source it left with.
    fn syn_out(&mut self, internal: SocketAddrV6, remote: SocketAddrV6) -> SocketAddrV6 {
        let out = self.lan(build::tcp6(internal, remote, TcpFlags::SYN, 64, b""));
        assert_eq!(out.len(), 1, "one packet out for a SYN");
        assert_eq!(out[0].port, Port::Wan);
        let s = parse6(&out[0].packet).unwrap();
        assert_eq!(s.hop_limit, 63, "hop limit decremented");
        assert_eq!(s.dst_endpoint(), Some(remote));
        s.src_endpoint().unwrap().1
    }

    /// A packet from `remote` to `external`: what reached the LAN, and what went back to the WAN.
    fn tcp_in(
        &mut self,
        remote: SocketAddrV6,
        external: SocketAddrV6,
        flags: u8,
    ) -> (Option<Transmit>, Option<Transmit>) {
        let out = self.wan(build::tcp6(remote, external, flags, 60, b""));
        assert!(out.len() <= 1, "{out:?}");
        let to_lan = out.iter().find(|t| matches!(t.port, Port::Lan(_))).cloned();
        let to_wan = out.into_iter().find(|t| t.port == Port::Wan);
        (to_lan, to_wan)
    }
}

#[test]
fn the_firewall_admits_by_its_filtering_and_answers_strangers_as_configured() {
    for filtering in [Filtering::Eif, Filtering::Adf, Filtering::Apdf] {
        for unsolicited in [
            UnsolicitedAnswer::Drop,
            UnsolicitedAnswer::Rst,
            UnsolicitedAnswer::Icmp,
        ] {
            let what = format!("{filtering:?} {unsolicited:?}");
            let mut h = Harness::new(config(Ipv6Mode::Firewall, filtering, unsolicited));
            // Before any outbound packet: no pinhole, the answer is the configured one.
            let (lan, wan) = h.tcp_in(server1(), host(), TcpFlags::SYN);
            assert!(lan.is_none(), "{what}: unsolicited SYN reached the host");
            match (unsolicited, wan) {
                (UnsolicitedAnswer::Drop, None) => {}
                (UnsolicitedAnswer::Rst, Some(t)) => {
                    let s = parse6(&t.packet).unwrap();
                    assert_eq!(s.tcp_flags(), TcpFlags::RST | TcpFlags::ACK, "{what}");
                    assert_eq!(
                        s.src_endpoint().unwrap().1,
                        host(),
                        "{what}: from the address it was sent to"
                    );
                    assert_eq!(s.dst_endpoint(), Some(server1()));
                }
                (UnsolicitedAnswer::Icmp, Some(t)) => {
                    let s = parse6(&t.packet).unwrap();
                    assert_eq!(
                        s.src,
                        addr("2001:db8:1::1"),
                        "{what}: from the router's WAN address"
                    );
                    let Body6::IcmpError {
                        icmp_type,
                        code,
                        quoted,
                    } = s.body
                    else {
                        panic!("{what}: {s:?}")
                    };
                    assert_eq!(
                        (icmp_type, code),
                        (1, 1),
                        "{what}: administratively prohibited"
                    );
                    assert_eq!((quoted.src, quoted.dst), (server1(), host()));
                }
                (_, other) => panic!("{what}: answered {other:?}"),
            }

            // The host opens a pinhole towards server1: it leaves untranslated.
            assert_eq!(
                h.syn_out(host(), server1()),
                host(),
                "{what}: no translation"
            );
            let (lan, _) = h.tcp_in(server1(), host(), TcpFlags::SYN | TcpFlags::ACK);
            let lan = lan.unwrap_or_else(|| panic!("{what}: the answer reached the host"));
            assert_eq!(lan.port, Port::Lan(DEVICE));
            let expect = |remote: SocketAddrV6| match filtering {
                Filtering::Eif => true,
                Filtering::Adf => remote.ip() == server1().ip(),
                Filtering::Apdf => remote == server1(),
            };
            for remote in [server1_other_port(), server2()] {
                let (lan, _) = h.tcp_in(remote, host(), TcpFlags::SYN);
                assert_eq!(lan.is_some(), expect(remote), "{what}: from {remote}");
            }
            // Another port of the host has no pinhole whatever the filtering.
            let other = v6(*host().ip(), 40001);
            assert!(
                h.tcp_in(server1(), other, TcpFlags::SYN).0.is_none(),
                "{what}"
            );

            let events = h.events();
            assert!(
                events.iter().any(|e| matches!(e, NatEvent::PinholeCreated { internal, remote, .. } if *internal == host() && *remote == server1())),
                "{what}: {events:?}"
            );
            assert!(
                events.iter().any(|e| matches!(e, NatEvent::Refused6 { cause: RefusalCause::NoMapping, answer: Some(a), .. } if *a == unsolicited)),
                "{what}: {events:?}"
            );
            assert!(events.iter().any(|e| matches!(e, NatEvent::TcpControl6 { direction: Direction::Outbound, flags, .. } if flags == "S")), "{what}");
        }
    }
}

#[test]
fn non_syn_segments_and_udp_are_refused_as_the_ipv4_core_does() {
    let mut h = Harness::new(config(
        Ipv6Mode::Firewall,
        Filtering::Apdf,
        UnsolicitedAnswer::Rst,
    ));
    // A stray ACK is dropped without an answer; an outbound one opens nothing.
    let (lan, wan) = h.tcp_in(server1(), host(), TcpFlags::ACK);
    assert!(lan.is_none() && wan.is_none());
    assert!(h
        .lan(build::tcp6(host(), server1(), TcpFlags::ACK, 64, b""))
        .is_empty());
    assert!(h.nat.pinholes().is_empty());
    // UDP opens a pinhole for its answers; a stranger's datagram gets nothing under `rst`.
    let out = h.lan(build::udp6(host(), server1(), 64, b"hi"));
    assert_eq!(out.len(), 1);
    assert_eq!(h.wan(build::udp6(server1(), host(), 60, b"ok")).len(), 1);
    assert!(h.wan(build::udp6(server2(), host(), 60, b"no")).is_empty());
    let mut icmp = Harness::new(config(
        Ipv6Mode::Firewall,
        Filtering::Apdf,
        UnsolicitedAnswer::Icmp,
    ));
    let out = icmp.wan(build::udp6(server2(), host(), 60, b"no"));
    assert_eq!(out.len(), 1, "ICMPv6 for UDP under `icmp`");
    assert_eq!(out[0].port, Port::Wan);
}

#[test]
fn pinholes_time_out_as_sessions_do_and_a_rst_closes_them() {
    let mut h = Harness::new(config(
        Ipv6Mode::Firewall,
        Filtering::Apdf,
        UnsolicitedAnswer::Drop,
    ));
    h.syn_out(host(), server1());
    // Transitory: gone after 4 minutes without a SYN back.
    h.advance(Duration::from_secs(239));
    assert_eq!(h.nat.pinholes().len(), 1, "still there after 239 s");
    h.advance(Duration::from_secs(1));
    assert!(
        h.tcp_in(server1(), host(), TcpFlags::ACK).0.is_none(),
        "expired"
    );
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            NatEvent::PinholeRemoved {
                remote: None,
                reason: RemovalReason::Expired,
                ..
            }
        )),
        "{events:?}"
    );

    // Established (a SYN each way) lives 2 h 4 min idle, until a RST passes.
    h.syn_out(host(), server1());
    assert!(h
        .tcp_in(server1(), host(), TcpFlags::SYN | TcpFlags::ACK)
        .0
        .is_some());
    h.advance(Duration::from_secs(3600));
    assert!(
        h.tcp_in(server1(), host(), TcpFlags::ACK).0.is_some(),
        "established"
    );
    assert_eq!(
        h.lan(build::tcp6(host(), server1(), TcpFlags::RST, 64, b""))
            .len(),
        1
    );
    assert!(h.nat.pinholes().is_empty(), "rst_closes: gone at once");
    let events = h.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            NatEvent::PinholeRemoved {
                reason: RemovalReason::Reset,
                ..
            }
        )),
        "{events:?}"
    );
}

#[test]
fn simultaneous_open_passes_two_apdf_firewalls_and_a_one_sided_syn_does_not() {
    let mut a = Harness::new(config(
        Ipv6Mode::Firewall,
        Filtering::Apdf,
        UnsolicitedAnswer::Drop,
    ));
    let mut b_config = config(Ipv6Mode::Firewall, Filtering::Apdf, UnsolicitedAnswer::Drop);
    let b_host = v6(addr("2001:db8:2:1::2"), 45000);
    if let Some(v6side) = b_config.ipv6.as_mut() {
        v6side.lan_prefix = addr("2001:db8:2:1::");
        v6side.gateway = addr("2001:db8:2:1::1");
        v6side.hosts = vec![(*b_host.ip(), DEVICE)];
    }
    let mut b = Harness::new(b_config);
    let a_host = v6(*host().ip(), 45000);
    // One-sided: a's SYN passes its own firewall and dies at b's.
    let out = a.lan(build::tcp6(a_host, b_host, TcpFlags::SYN, 64, b""));
    assert!(
        b.wan(out[0].packet.clone()).is_empty(),
        "b drops the stranger's SYN"
    );
    // b's SYN crosses a's (the pinhole a's SYN opened), and a's next one b's.
    let out = b.lan(build::tcp6(b_host, a_host, TcpFlags::SYN, 64, b""));
    let reached = a.wan(out[0].packet.clone());
    assert_eq!(reached.len(), 1);
    assert_eq!(reached[0].port, Port::Lan(DEVICE));
    let out = a.lan(build::tcp6(
        a_host,
        b_host,
        TcpFlags::SYN | TcpFlags::ACK,
        64,
        b"",
    ));
    assert_eq!(
        b.wan(out[0].packet.clone()).len(),
        1,
        "the SYN-ACK reaches b"
    );
}

#[test]
fn hop_limits_are_decremented_and_expiry_answered_with_icmpv6() {
    let mut h = Harness::new(config(
        Ipv6Mode::Firewall,
        Filtering::Apdf,
        UnsolicitedAnswer::Drop,
    ));
    let out = h.lan(build::tcp6(host(), server1(), TcpFlags::SYN, 1, b""));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].port,
        Port::Lan(DEVICE),
        "time exceeded back to the host"
    );
    let s = parse6(&out[0].packet).unwrap();
    assert_eq!(
        s.src,
        addr("2001:db8:1:1::1"),
        "from the router's LAN address"
    );
    assert!(matches!(
        s.body,
        Body6::IcmpError {
            icmp_type: 3,
            code: 0,
            ..
        }
    ));
    assert!(
        h.nat.pinholes().is_empty(),
        "no pinhole for a packet that died here"
    );
    // A hop limit 2 SYN leaves; the time exceeded from beyond is related and let in.
    h.syn_out(host(), server1());
    let router_beyond = addr("2001:db8:5100::1");
    let syn = build::tcp6(host(), server1(), TcpFlags::SYN, 1, b"");
    let summary = parse6(&syn).unwrap();
    let icmp = v6::icmp_error6(&syn, &summary, router_beyond, (3, 0));
    let mut icmp = icmp;
    // Addressed from beyond to the host (icmp_error6 addresses the quoted source).
    assert_eq!(&icmp[24..40], &host().ip().octets());
    icmp[7] = 60;
    let out = h.wan(icmp);
    assert_eq!(out.len(), 1, "a related ICMPv6 error passes");
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, NatEvent::IcmpRelated6 { .. })),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, NatEvent::HopLimitExceeded { answered: true, .. })));
}

#[test]
fn an_open_router_routes_everything_and_the_hosts_chatter_stays_on_the_link() {
    let mut h = Harness::new(config(
        Ipv6Mode::Open,
        Filtering::Apdf,
        UnsolicitedAnswer::Rst,
    ));
    let (lan, wan) = h.tcp_in(server2(), host(), TcpFlags::SYN);
    assert_eq!(lan.map(|t| t.port), Some(Port::Lan(DEVICE)));
    assert!(wan.is_none());
    assert!(h.wan(build::echo6(*server1().ip(), *host().ip(), 60)).len() == 1);
    // MLD / neighbour discovery towards multicast never leaves.
    let mut chatter = build::udp6(host(), v6(addr("ff02::16"), 0), 1, b"");
    assert!(h.nat.config().ipv6.is_some());
    h.nat.handle_lan(&chatter, h.now);
    chatter[8..24].copy_from_slice(&addr("fe80::2").octets());
    h.nat.handle_lan(&chatter, h.now);
    assert!(h.drain().is_empty());
    let drops = h
        .events()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                NatEvent::Dropped {
                    reason: DropReason::NotRouted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(drops, 2);
    // Traffic to a LAN address no host holds goes nowhere.
    let nobody = v6(addr("2001:db8:1:1::99"), 80);
    assert_eq!(h.tcp_in(server1(), nobody, TcpFlags::SYN), (None, None));
}

#[test]
fn nptv6_is_rfc_6296_checksum_neutral_and_keeps_the_interface_identifier() {
    let npt = Npt::new(addr("fd00:db8:1::"), addr("2001:db8:1::"));
    let sum = |a: Ipv6Addr| {
        let total: u32 = a.segments().iter().map(|w| u32::from(*w)).sum();
        let folded = (total & 0xffff) + (total >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        // 0xffff and 0 are the same one's complement number.
        if folded == 0xffff {
            0
        } else {
            folded
        }
    };
    for subnet in [0u16, 1, 2, 0x1234, 0xfffe] {
        for iid in [[0, 0, 0, 2], [0x0211, 0x22ff, 0xfe33, 0x4455], [0xffff; 4]] {
            let w = [0xfd00, 0xdb8, 1, subnet, iid[0], iid[1], iid[2], iid[3]];
            let internal = Ipv6Addr::from(w);
            let external = npt.outbound(internal).expect("translatable");
            assert_eq!(external.segments()[..3], [0x2001, 0xdb8, 1]);
            assert_eq!(
                external.segments()[4..],
                iid,
                "interface identifier untouched"
            );
            assert_eq!(
                sum(external),
                sum(internal),
                "checksum-neutral: {internal} -> {external}"
            );
            assert_eq!(npt.inbound(external), Some(internal), "reversible");
        }
    }
    assert_eq!(
        npt.outbound(addr("fd00:db8:1:ffff::2")),
        None,
        "RFC 6296 3.5: 0xFFFF cannot be translated"
    );
    assert_eq!(npt.outbound(addr("fd00:db8:2:1::2")), None, "another /48");

    // Through the router: the source prefix is translated, ports and
    // checksums are untouched, and the firewall works on the inside.
    let mut h = Harness::new(config(
        Ipv6Mode::Nptv6,
        Filtering::Apdf,
        UnsolicitedAnswer::Rst,
    ));
    let inside = v6(addr("fd00:db8:1:1::2"), 40000);
    let syn = build::tcp6(inside, server1(), TcpFlags::SYN, 64, b"payload");
    let out = h.lan(syn.clone());
    assert_eq!(out.len(), 1);
    let left = parse6(&out[0].packet).unwrap();
    let external = left.src_endpoint().unwrap().1;
    assert_eq!(Some(*external.ip()), npt.outbound(*inside.ip()));
    assert_eq!(external.port(), inside.port(), "port preserved");
    assert_eq!(
        &out[0].packet[40..],
        &syn[40..],
        "transport bytes, checksum included, unchanged"
    );
    let (lan, _) = h.tcp_in(server1(), external, TcpFlags::SYN | TcpFlags::ACK);
    let lan = lan.expect("the answer reaches the host");
    assert_eq!(lan.port, Port::Lan(DEVICE));
    assert_eq!(
        parse6(&lan.packet).unwrap().dst,
        *inside.ip(),
        "translated back"
    );
    let (lan, wan) = h.tcp_in(server2(), external, TcpFlags::SYN);
    assert!(lan.is_none(), "APDF filters behind NPTv6 too");
    let rst = parse6(&wan.expect("rst").packet).unwrap();
    assert_eq!(
        rst.src_endpoint().unwrap().1,
        external,
        "the RST comes from the external address"
    );
    // The internal address is not reachable from outside, nor is the host's own external address from inside.
    assert_eq!(
        h.tcp_in(server1(), inside, TcpFlags::SYN | TcpFlags::ACK),
        (None, None)
    );
    assert!(h
        .lan(build::tcp6(inside, external, TcpFlags::SYN, 64, b""))
        .is_empty());
    let events = h.events();
    assert!(events.iter().any(|e| matches!(e, NatEvent::PinholeCreated { internal, external: e_ext, .. } if *internal == inside && *e_ext == external)), "{events:?}");
}

#[test]
fn ipv6_garbage_never_panics_and_is_logged() {
    let mut h = Harness::new(config(
        Ipv6Mode::Nptv6,
        Filtering::Eif,
        UnsolicitedAnswer::Icmp,
    ));
    let syn = build::tcp6(
        v6(addr("fd00:db8:1:1::2"), 1),
        server1(),
        TcpFlags::SYN,
        64,
        b"",
    );
    for len in 1..syn.len() {
        h.nat.handle_lan(&syn[..len], h.now);
        let mut flipped = syn[..len].to_vec();
        flipped[0] = 0x60;
        h.nat.handle_wan(&flipped, h.now);
    }
    assert!(h.drain().is_empty());
    assert!(h
        .events()
        .iter()
        .all(|e| matches!(e, NatEvent::Dropped { .. })));
}

#[test]
fn a_cgn_routes_the_ipv6_of_the_routers_behind_it_unfiltered() {
    let home_wan = Ipv4Addr::new(100, 64, 1, 2);
    let mut config = NatConfig::nat(Mapping::Apdm, Filtering::Apdf, Allocation::Random, PUBLIC);
    config.ipv6_transit = vec![(addr("2001:db8:2::"), home_wan)];
    let mut h = Harness::new(config);
    let behind = v6(addr("2001:db8:2:1::2"), 40000);
    // Outbound from the home router's prefix: passed on, hop limit decremented.
    let out = h.lan(build::tcp6(behind, server1(), TcpFlags::SYN, 63, b""));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!(parse6(&out[0].packet).unwrap().hop_limit, 62);
    // Inbound to it: to the home router's WAN, unfiltered (a stranger too).
    let (lan, _) = h.tcp_in(server2(), behind, TcpFlags::SYN);
    assert_eq!(lan.map(|t| t.port), Some(Port::Lan(home_wan)));
    // Nothing for other prefixes, either way; no hop to spare is dropped.
    assert_eq!(h.tcp_in(server1(), host(), TcpFlags::SYN), (None, None));
    assert!(h
        .lan(build::tcp6(host(), server1(), TcpFlags::SYN, 64, b""))
        .is_empty());
    assert!(h
        .lan(build::tcp6(behind, server1(), TcpFlags::SYN, 1, b""))
        .is_empty());
    let events = h.events();
    let not_routed = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                NatEvent::Dropped {
                    reason: DropReason::NotRouted,
                    ..
                }
            )
        })
        .count();
    assert_eq!(not_routed, 2, "{events:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        NatEvent::HopLimitExceeded {
            answered: false,
            ..
        }
    )));
    assert!(h.nat.mappings().is_empty(), "IPv6 takes no IPv4 mapping");
}
