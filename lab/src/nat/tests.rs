//! In-memory tests of the NAT core: every mapping x filtering x allocation
//! combination, answers, TTL, RST handling, timeouts, delay, ICMP and hairpin.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use pnet_packet::tcp::TcpFlags;
use punchscope_analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};

use super::packet::{build, Malformed};
use super::*;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const HOST_B: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 3);

fn ep(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

fn server1() -> SocketAddrV4 {
    ep([198, 51, 100, 10], 3478)
}
fn server1_other_port() -> SocketAddrV4 {
    ep([198, 51, 100, 10], 3479)
}
fn server2() -> SocketAddrV4 {
    ep([198, 51, 100, 11], 3478)
}

/// RFC 1071 one's-complement sum, written independently of `pnet_packet`.
fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        let mut i = 0;
        while i + 1 < chunk.len() {
            sum += u32::from(u16::from_be_bytes([chunk[i], chunk[i + 1]]));
            i += 2;
        }
        if i < chunk.len() {
            sum += u32::from(chunk[i]) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks the IPv4 header checksum and the TCP/UDP/ICMP checksum of a packet
/// by summing it with its checksum field included (a valid packet sums to 0xffff).
fn assert_checksums_valid(packet: &[u8]) {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(
        ones_complement_sum(&[&packet[..ihl]]),
        0xffff,
        "IPv4 header checksum"
    );
    let body = &packet[ihl..total];
    let proto = packet[9];
    match proto {
        6 | 17 => {
            if proto == 17 && body[6..8] == [0, 0] {
                return;
            }
            let len = (body.len() as u16).to_be_bytes();
            let pseudo = [&packet[12..20], &[0, proto], &len[..], body];
            assert_eq!(
                ones_complement_sum(&pseudo),
                0xffff,
                "transport checksum (proto {proto})"
            );
        }
        1 => assert_eq!(ones_complement_sum(&[body]), 0xffff, "ICMP checksum"),
        other => panic!("unexpected protocol {other}"),
    }
}

fn src_of(packet: &[u8]) -> SocketAddrV4 {
    let s = packet::parse(packet).unwrap();
    s.src_endpoint().unwrap().1
}
fn dst_of(packet: &[u8]) -> SocketAddrV4 {
    packet::parse(packet).unwrap().dst_endpoint().unwrap()
}
fn flags_of(packet: &[u8]) -> u8 {
    packet::parse(packet).unwrap().tcp_flags()
}

/// A NAT driven in memory with a controllable clock.
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

    fn nat(mapping: Mapping, filtering: Filtering, allocation: Allocation) -> Self {
        Self::new(NatConfig::nat(mapping, filtering, allocation, PUBLIC))
    }

    fn drain(&mut self) -> Vec<Transmit> {
        let out: Vec<_> = std::iter::from_fn(|| self.nat.poll_transmit()).collect();
        for t in &out {
            assert_checksums_valid(&t.packet);
        }
        out
    }

    fn send_lan(&mut self, packet: Vec<u8>) -> Vec<Transmit> {
        self.nat.handle_lan(&packet, self.now);
        self.drain()
    }

    fn send_wan(&mut self, packet: Vec<u8>) -> Vec<Transmit> {
        self.nat.handle_wan(&packet, self.now);
        self.drain()
    }

    fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        self.now += by;
        self.nat.handle_timeout(self.now);
        self.drain()
    }

    fn events(&mut self) -> Vec<NatEvent> {
        std::iter::from_fn(|| self.nat.poll_event())
            .map(|e| e.event)
            .collect()
    }

    /// Sends a SYN from `internal` to `remote`; returns the public source it left with.
    fn syn_out(&mut self, internal: SocketAddrV4, remote: SocketAddrV4) -> SocketAddrV4 {
        let out = self.send_lan(build::tcp(internal, remote, TcpFlags::SYN, 64, b""));
        assert_eq!(out.len(), 1, "one packet out for a SYN");
        assert_eq!(out[0].port, Port::Wan);
        assert_eq!(dst_of(&out[0].packet), remote, "destination untouched");
        src_of(&out[0].packet)
    }

    /// Sends a SYN from `remote` to `external`; returns what reached the LAN, if anything.
    fn syn_in(&mut self, remote: SocketAddrV4, external: SocketAddrV4) -> Option<Transmit> {
        let out = self.send_wan(build::tcp(remote, external, TcpFlags::SYN, 60, b""));
        out.into_iter().find(|t| matches!(t.port, Port::Lan(_)))
    }
}

fn assert_mapping_behaviour(
    mapping: Mapping,
    e1: SocketAddrV4,
    e2: SocketAddrV4,
    e3: SocketAddrV4,
) {
    match mapping {
        Mapping::Eim => assert!(e1 == e2 && e2 == e3, "eim: {e1} {e2} {e3}"),
        Mapping::Adm => assert!(e1 == e2 && e1 != e3, "adm: {e1} {e2} {e3}"),
        Mapping::Apdm => assert!(e1 != e2 && e2 != e3 && e1 != e3, "apdm: {e1} {e2} {e3}"),
    }
}

fn assert_allocation(allocation: Allocation, internal_ports: &[u16], external_ports: &[u16]) {
    let steps: Vec<i32> = external_ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    let preserved = internal_ports == external_ports;
    match allocation {
        Allocation::Preserve => assert!(preserved, "preserve: {external_ports:?}"),
        Allocation::Sequential => {
            assert!(!preserved);
            assert!(
                steps.iter().all(|s| *s == 1),
                "sequential step 1: {external_ports:?}"
            );
        }
        Allocation::Random => {
            assert!(!preserved, "random kept ports: {external_ports:?}");
            assert!(
                steps.windows(2).any(|w| w[0] != w[1]),
                "random looked sequential: {external_ports:?}"
            );
        }
    }
}

#[test]
fn every_mapping_filtering_allocation_combination_behaves_as_configured() {
    let mut combinations = 0;
    for &mapping in Mapping::ALL {
        for &filtering in Filtering::ALL {
            for &allocation in Allocation::ALL {
                let mut h = Harness::nat(mapping, filtering, allocation);
                let internal = SocketAddrV4::new(HOST, 5000);

                // Mapping: one internal endpoint towards three destinations.
                let e1 = h.syn_out(internal, server1());
                let e2 = h.syn_out(internal, server1_other_port());
                let e3 = h.syn_out(internal, server2());
                assert_mapping_behaviour(mapping, e1, e2, e3);
                for e in [e1, e2, e3] {
                    assert_eq!(*e.ip(), PUBLIC);
                }
                if allocation == Allocation::Preserve {
                    assert_eq!(e1.port(), 5000, "{mapping} preserve keeps the first port");
                }

                // Allocation: fresh internal ports towards one destination.
                let internal_ports = [6000, 6001, 6002, 6003, 6004];
                let external_ports: Vec<u16> = internal_ports
                    .iter()
                    .map(|p| h.syn_out(SocketAddrV4::new(HOST, *p), server1()).port())
                    .collect();
                assert_allocation(allocation, &internal_ports, &external_ports);

                // Filtering: strangers reaching the mapping made for server1.
                let same_ip_other_port = ep([198, 51, 100, 10], 4000);
                let other_ip = ep([198, 51, 100, 20], 3478);
                let from_same_ip = h.syn_in(same_ip_other_port, e1);
                let from_other_ip = h.syn_in(other_ip, e1);
                let (expect_same_ip, expect_other_ip) = match filtering {
                    Filtering::Eif => (true, true),
                    Filtering::Adf => (true, false),
                    Filtering::Apdf => (false, false),
                };
                assert_eq!(
                    from_same_ip.is_some(),
                    expect_same_ip,
                    "{mapping}/{filtering}/{allocation} same IP"
                );
                assert_eq!(
                    from_other_ip.is_some(),
                    expect_other_ip,
                    "{mapping}/{filtering}/{allocation} other IP"
                );
                for admitted in [from_same_ip, from_other_ip].into_iter().flatten() {
                    assert_eq!(admitted.port, Port::Lan(HOST));
                    assert_eq!(
                        dst_of(&admitted.packet),
                        internal,
                        "translated back to the host"
                    );
                    // The host's answer leaves through the mapping that admitted the stranger.
                    let stranger = src_of(&admitted.packet);
                    let synack =
                        build::tcp(internal, stranger, TcpFlags::SYN | TcpFlags::ACK, 64, b"");
                    let answer = h.send_lan(synack);
                    let combo = format!("{mapping}/{filtering}/{allocation}");
                    assert_eq!(answer.len(), 1, "{combo}: SYN-ACK to {stranger} forwarded");
                    assert_eq!(
                        src_of(&answer[0].packet),
                        e1,
                        "{combo}: same public endpoint"
                    );
                }

                // The server itself is always admitted back, translated to the host.
                let reply = h
                    .send_wan(build::tcp(
                        server1(),
                        e1,
                        TcpFlags::SYN | TcpFlags::ACK,
                        60,
                        b"",
                    ))
                    .pop()
                    .expect("reply admitted");
                assert_eq!(reply.port, Port::Lan(HOST));
                assert_eq!(dst_of(&reply.packet), internal);
                assert_eq!(src_of(&reply.packet), server1());
                combinations += 1;
            }
        }
    }
    assert_eq!(combinations, 27);
}

#[test]
fn sequential_allocation_uses_the_configured_base_and_step() {
    let mut config = NatConfig::nat(
        Mapping::Apdm,
        Filtering::Apdf,
        Allocation::Sequential,
        PUBLIC,
    );
    config.sequential_base = 30000;
    config.sequential_step = 3;
    let mut h = Harness::new(config);
    let ports: Vec<u16> = (0..4)
        .map(|i| {
            h.syn_out(SocketAddrV4::new(HOST, 7000 + i), server1())
                .port()
        })
        .collect();
    assert_eq!(ports, [30000, 30003, 30006, 30009]);
}

#[test]
fn random_allocation_stays_within_the_configured_range() {
    let mut config = NatConfig::nat(Mapping::Apdm, Filtering::Apdf, Allocation::Random, PUBLIC);
    config.random_ports = (20000, 20015);
    let mut h = Harness::new(config);
    let ports: HashSet<u16> = (0..16)
        .map(|i| {
            h.syn_out(SocketAddrV4::new(HOST, 7000 + i), server1())
                .port()
        })
        .collect();
    // Sixteen mappings fill the sixteen ports exactly, none outside.
    assert_eq!(ports, (20000..=20015).collect());
}

#[test]
fn a_busy_nat_moves_a_sequential_allocator_on_between_a_hosts_mappings() {
    let mut config = NatConfig::nat(
        Mapping::Apdm,
        Filtering::Apdf,
        Allocation::Sequential,
        PUBLIC,
    );
    config.sequential_base = 30000;
    config.background_per_s = 50.0;
    let mut h = Harness::new(config);
    let first = h.syn_out(SocketAddrV4::new(HOST, 7000), server1()).port();
    assert!(
        h.nat.poll_timeout().is_some(),
        "the next background arrival is a timer"
    );
    h.advance(Duration::from_secs(1));
    let second = h.syn_out(SocketAddrV4::new(HOST, 7001), server1()).port();
    let background: Vec<u16> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            NatEvent::MappingCreated {
                internal, external, ..
            } if *internal.ip() == BACKGROUND_HOST => Some(external.port()),
            _ => None,
        })
        .collect();
    // About 50 others took ports in that second (Poisson: far from 0 and from 200).
    assert!(
        (20..=100).contains(&background.len()),
        "{}",
        background.len()
    );
    // Every port between the host's two mappings went to a background connection.
    assert_eq!(usize::from(second - first - 1), background.len());
    assert!(background.iter().all(|p| (first + 1..second).contains(p)));
    // A quiet NAT has no timer of its own.
    let quiet = Harness::nat(Mapping::Apdm, Filtering::Apdf, Allocation::Sequential);
    assert_eq!(quiet.nat.poll_timeout(), None);
}

#[test]
fn preserve_takes_the_next_free_port_when_the_internal_one_is_taken() {
    let mut h = Harness::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
    let a = h.syn_out(SocketAddrV4::new(HOST, 5000), server1());
    let b = h.syn_out(SocketAddrV4::new(HOST_B, 5000), server1());
    assert_eq!(a.port(), 5000);
    assert_eq!(b.port(), 5001);
}

#[test]
fn unsolicited_syn_is_dropped_reset_or_answered_with_icmp() {
    let stranger = ep([198, 51, 100, 10], 40000);
    let target = SocketAddrV4::new(PUBLIC, 5000);
    for &answer in UnsolicitedAnswer::ALL {
        let mut config =
            NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
        config.unsolicited = answer;
        let mut h = Harness::new(config);
        let out = h.send_wan(build::tcp(stranger, target, TcpFlags::SYN, 60, b""));
        match answer {
            UnsolicitedAnswer::Drop => assert!(out.is_empty()),
            UnsolicitedAnswer::Rst => {
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].port, Port::Wan);
                let rst = &out[0].packet;
                assert_eq!(src_of(rst), target);
                assert_eq!(dst_of(rst), stranger);
                assert_eq!(flags_of(rst), TcpFlags::RST | TcpFlags::ACK);
                let ack = u32::from_be_bytes(rst[28..32].try_into().unwrap());
                assert_eq!(ack, 1001, "acknowledges the SYN's sequence number + 1");
            }
            UnsolicitedAnswer::Icmp => {
                assert_eq!(out.len(), 1);
                let icmp = &out[0].packet;
                assert_eq!(icmp[9], 1, "ICMP");
                assert_eq!((icmp[20], icmp[21]), (3, 3), "port unreachable");
                assert_eq!(&icmp[12..16], &PUBLIC.octets(), "from the public address");
                assert_eq!(&icmp[16..20], &stranger.ip().octets());
                let quoted = &icmp[28..];
                assert_eq!(
                    &quoted[12..16],
                    &stranger.ip().octets(),
                    "quotes the offending SYN"
                );
            }
        }
        let events = h.events();
        assert!(events.iter().any(|e| matches!(e,
            NatEvent::Refused { cause: RefusalCause::NoMapping, answer: Some(a), .. } if *a == answer)),
            "{events:?}");
    }
}

#[test]
fn non_syn_segments_are_refused_without_an_answer() {
    let mut config = NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
    config.unsolicited = UnsolicitedAnswer::Rst;
    let mut h = Harness::new(config);
    let out = h.send_wan(build::tcp(
        server1(),
        SocketAddrV4::new(PUBLIC, 5000),
        TcpFlags::ACK,
        60,
        b"x",
    ));
    assert!(out.is_empty(), "a stray ACK gets no RST");
}

#[test]
fn ttl_one_dies_at_the_nat_without_a_mapping_and_ttl_two_passes() {
    let mut h = Harness::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
    let internal = SocketAddrV4::new(HOST, 5000);
    let out = h.send_lan(build::tcp(internal, server1(), TcpFlags::SYN, 1, b""));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].port,
        Port::Lan(HOST),
        "time exceeded goes back to the host"
    );
    let icmp = &out[0].packet;
    assert_eq!((icmp[20], icmp[21]), (11, 0));
    assert_eq!(&icmp[12..16], &[192, 168, 1, 1], "from the gateway address");
    assert!(
        h.nat.mappings().is_empty(),
        "no mapping for a packet that died here"
    );

    let out = h.send_lan(build::tcp(internal, server1(), TcpFlags::SYN, 2, b""));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!(out[0].packet[8], 1, "TTL decremented to 1");
    assert_eq!(h.nat.mappings().len(), 1, "the mapping is open");
}

#[test]
fn inbound_ttl_expiry_answers_towards_the_wan() {
    let mut h = Harness::nat(Mapping::Eim, Filtering::Eif, Allocation::Preserve);
    let external = h.syn_out(SocketAddrV4::new(HOST, 5000), server1());
    let out = h.send_wan(build::tcp(
        server1(),
        external,
        TcpFlags::SYN | TcpFlags::ACK,
        1,
        b"",
    ));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!((out[0].packet[20], out[0].packet[21]), (11, 0));
}

#[test]
fn rst_closes_removes_the_session_at_once_or_keeps_it_until_timeout() {
    for rst_closes in [true, false] {
        let mut config =
            NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
        config.rst_closes = rst_closes;
        let mut h = Harness::new(config);
        let internal = SocketAddrV4::new(HOST, 5000);
        let peer = ep([203, 0, 113, 3], 6000);
        let external = h.syn_out(internal, peer);
        // The peer's router answers our early SYN with a RST...
        let rst = build::tcp(peer, external, TcpFlags::RST | TcpFlags::ACK, 60, b"");
        assert_eq!(h.send_wan(rst).len(), 1, "the RST itself reaches the host");
        // ...and the peer's own SYN follows.
        let syn = h.syn_in(peer, external);
        assert_eq!(syn.is_none(), rst_closes, "rst_closes = {rst_closes}");
        let events = h.events();
        let removed = events.iter().any(|e| {
            matches!(
                e,
                NatEvent::MappingRemoved {
                    reason: RemovalReason::Reset,
                    ..
                }
            )
        });
        assert_eq!(removed, rst_closes, "{events:?}");
    }
}

#[test]
fn a_syn_reusing_a_closed_sessions_endpoints_starts_afresh() {
    // ADM + EIF: a stranger's connection is admitted into the mapping made for server1.
    let mut h = Harness::nat(Mapping::Adm, Filtering::Eif, Allocation::Random);
    let internal = SocketAddrV4::new(HOST, 5000);
    let e1 = h.syn_out(internal, server1());
    let stranger = server1_other_port();
    assert!(h.syn_in(stranger, e1).is_some());
    let fin = |h: &mut Harness, from_host: bool| {
        let flags = TcpFlags::FIN | TcpFlags::ACK;
        if from_host {
            h.send_lan(build::tcp(internal, stranger, flags, 64, b""))
        } else {
            h.send_wan(build::tcp(stranger, e1, flags, 60, b""))
        }
    };
    assert_eq!(
        fin(&mut h, true).len(),
        1,
        "the host's FIN follows the admitting mapping"
    );
    assert_eq!(fin(&mut h, false).len(), 1);
    // Later the host itself connects to the same endpoint from the same port:
    // a new connection, so ADM keys it on (internal, server IP) = e1's mapping, not
    // the closed session... which here is the same mapping, reopened cleanly.
    let again = h.syn_out(internal, stranger);
    assert_eq!(again, e1, "same destination IP: ADM reuses the mapping");
    assert!(h.events().iter().any(|e| matches!(
        e,
        NatEvent::SessionRemoved {
            reason: RemovalReason::Reopened,
            ..
        }
    )));

    // APDM: the closed session must not pull a new connection into the old mapping.
    let mut h = Harness::nat(Mapping::Apdm, Filtering::Eif, Allocation::Random);
    let e1 = h.syn_out(internal, server1());
    assert!(h.syn_in(stranger, e1).is_some());
    h.send_lan(build::tcp(
        internal,
        stranger,
        TcpFlags::FIN | TcpFlags::ACK,
        64,
        b"",
    ));
    h.send_wan(build::tcp(
        stranger,
        e1,
        TcpFlags::FIN | TcpFlags::ACK,
        60,
        b"",
    ));
    let fresh = h.syn_out(internal, stranger);
    assert_ne!(fresh, e1, "APDM gives the new connection its own mapping");
}

#[test]
fn transitory_sessions_expire_after_four_minutes_established_ones_live_longer() {
    let mut h = Harness::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
    let internal = SocketAddrV4::new(HOST, 5000);
    let half_open = h.syn_out(internal, server1());
    h.advance(Duration::from_secs(241));
    assert!(
        h.syn_in(server1(), half_open).is_none(),
        "transitory mapping expired"
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        NatEvent::MappingRemoved {
            reason: RemovalReason::Expired,
            ..
        }
    )));

    let internal = SocketAddrV4::new(HOST, 5001);
    let external = h.syn_out(internal, server1());
    let synack = build::tcp(server1(), external, TcpFlags::SYN | TcpFlags::ACK, 60, b"");
    assert_eq!(h.send_wan(synack).len(), 1);
    h.advance(Duration::from_secs(3600));
    let data = build::tcp(server1(), external, TcpFlags::ACK, 60, b"still here");
    assert_eq!(
        h.send_wan(data).len(),
        1,
        "established session survives an idle hour"
    );
    h.advance(Duration::from_secs(2 * 3600 + 5 * 60));
    let late = build::tcp(server1(), external, TcpFlags::ACK, 60, b"too late");
    assert!(
        h.send_wan(late).is_empty(),
        "established session expired after 2 h 4 min"
    );
}

#[test]
fn link_delay_holds_packets_and_inbound_decisions_happen_on_arrival() {
    let mut config = NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
    let delay = Duration::from_millis(50);
    config.uplink.delay = delay;
    config.downlink.delay = delay;
    let mut h = Harness::new(config);
    let internal = SocketAddrV4::new(HOST, 5000);
    let peer = ep([203, 0, 113, 3], 5000);
    let external = SocketAddrV4::new(PUBLIC, 5000);

    // The peer's SYN reaches our WAN side before our host has sent anything...
    assert!(h
        .send_wan(build::tcp(peer, external, TcpFlags::SYN, 60, b""))
        .is_empty());
    h.advance(Duration::from_millis(10));
    // ...our host's SYN opens the mapping 10 ms later...
    let out = h.send_lan(build::tcp(internal, peer, TcpFlags::SYN, 64, b""));
    assert!(out.is_empty(), "held on the uplink");
    assert_eq!(
        h.nat.poll_timeout(),
        Some(h.now + Duration::from_millis(40))
    );
    // ...so when the peer's SYN arrives (t = 50 ms) the mapping admits it.
    let out = h.advance(Duration::from_millis(40));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Lan(HOST));
    let out = h.advance(Duration::from_millis(20));
    assert_eq!(out.len(), 1, "our SYN leaves at t = 60 ms");
    assert_eq!(out[0].port, Port::Wan);
}

#[test]
fn icmp_errors_about_a_mapped_flow_are_translated_to_the_host() {
    let mut h = Harness::nat(Mapping::Eim, Filtering::Apdf, Allocation::Sequential);
    let internal = SocketAddrV4::new(HOST, 5000);
    let peer = ep([203, 0, 113, 3], 6000);
    let out = h.send_lan(build::tcp(internal, peer, TcpFlags::SYN, 2, b""));
    let sent = out[0].packet.clone();
    // The next router drops it (TTL 1) and sends time exceeded to our public address.
    let summary = packet::parse(&sent).unwrap();
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let icmp = packet::icmp_error_for(&sent, &summary, router, 11, 0);
    let out = h.send_wan(icmp);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Lan(HOST));
    let delivered = &out[0].packet;
    assert_eq!(
        &delivered[16..20],
        &HOST.octets(),
        "outer destination is the host"
    );
    let quoted = &delivered[28..];
    assert_eq!(&quoted[12..16], &HOST.octets(), "quoted source is the host");
    assert_eq!(
        u16::from_be_bytes([quoted[20], quoted[21]]),
        5000,
        "quoted source port is internal"
    );
    assert_eq!(
        ones_complement_sum(&[&quoted[..20]]),
        0xffff,
        "quoted header checksum"
    );

    // An ICMP error about a flow we never sent is dropped.
    let unrelated = build::tcp(
        SocketAddrV4::new(PUBLIC, 20001),
        ep([203, 0, 113, 9], 1),
        TcpFlags::SYN,
        1,
        b"",
    );
    let s = packet::parse(&unrelated).unwrap();
    assert!(h
        .send_wan(packet::icmp_error_for(&unrelated, &s, router, 11, 0))
        .is_empty());
}

#[test]
fn hairpin_loops_back_translated_whatever_the_filtering_or_is_dropped() {
    for (hairpin, filtering) in [
        (true, Filtering::Eif),
        (true, Filtering::Apdf),
        (false, Filtering::Eif),
    ] {
        let mut config = NatConfig::nat(Mapping::Eim, filtering, Allocation::Preserve, PUBLIC);
        config.hairpin = hairpin;
        let mut h = Harness::new(config);
        let b = SocketAddrV4::new(HOST_B, 7000);
        let b_public = h.syn_out(b, server1());
        let a = SocketAddrV4::new(HOST, 5000);
        let out = h.send_lan(build::tcp(a, b_public, TcpFlags::SYN, 64, b""));
        if hairpin {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].port, Port::Lan(HOST_B));
            assert_eq!(dst_of(&out[0].packet), b);
            assert_eq!(
                src_of(&out[0].packet),
                SocketAddrV4::new(PUBLIC, 5000),
                "source is a's public endpoint"
            );
        } else {
            assert!(out.is_empty());
        }
    }
}

#[test]
fn a_router_without_translation_forwards_and_decrements_ttl() {
    let public_host = Ipv4Addr::new(203, 0, 113, 50);
    let mut h = Harness::new(NatConfig::router(Ipv4Addr::new(192, 0, 2, 1)));
    let me = SocketAddrV4::new(public_host, 8333);
    let out = h.send_lan(build::tcp(me, server1(), TcpFlags::SYN, 64, b""));
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!(src_of(&out[0].packet), me);
    assert_eq!(out[0].packet[8], 63);
    let out = h.send_wan(build::tcp(
        ep([198, 51, 100, 10], 999),
        me,
        TcpFlags::SYN,
        60,
        b"",
    ));
    assert_eq!(
        out[0].port,
        Port::Lan(public_host),
        "unsolicited SYNs reach a public host"
    );
}

#[test]
fn udp_is_mapped_and_filtered_like_tcp() {
    let mut h = Harness::nat(Mapping::Apdm, Filtering::Apdf, Allocation::Random);
    let internal = SocketAddrV4::new(HOST, 5000);
    let out = h.send_lan(build::udp(internal, server1(), 64, b"hello"));
    let external = src_of(&out[0].packet);
    let reply = h.send_wan(build::udp(server1(), external, 60, b"hi"));
    assert_eq!(reply.len(), 1);
    assert_eq!(dst_of(&reply[0].packet), internal);
    assert!(h
        .send_wan(build::udp(server2(), external, 60, b"x"))
        .is_empty());
}

#[test]
fn outbound_non_syn_without_mapping_needs_tcp_loose() {
    for loose in [false, true] {
        let mut config =
            NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
        config.tcp_loose = loose;
        let mut h = Harness::new(config);
        let out = h.send_lan(build::tcp(
            SocketAddrV4::new(HOST, 5000),
            server1(),
            TcpFlags::ACK,
            64,
            b"x",
        ));
        assert_eq!(out.len(), usize::from(loose));
    }
}

#[test]
fn loss_is_applied_per_direction_and_logged() {
    let mut config = NatConfig::nat(Mapping::Eim, Filtering::Eif, Allocation::Preserve, PUBLIC);
    config.uplink.loss = 1.0;
    let mut h = Harness::new(config);
    let out = h.send_lan(build::tcp(
        SocketAddrV4::new(HOST, 5000),
        server1(),
        TcpFlags::SYN,
        64,
        b"",
    ));
    assert!(out.is_empty());
    assert!(h.events().contains(&NatEvent::Lost {
        direction: Direction::Outbound
    }));
    assert_eq!(h.nat.stats().lost, 1);
}

#[test]
fn garbage_never_panics_and_is_logged_as_dropped() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let mut h = Harness::nat(Mapping::Apdm, Filtering::Adf, Allocation::Random);
    let valid = build::tcp(
        SocketAddrV4::new(HOST, 5000),
        server1(),
        TcpFlags::SYN,
        64,
        b"payload",
    );
    for i in 0..20_000 {
        let mut packet = if i % 2 == 0 {
            let len = rng.gen_range(0..80);
            (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()
        } else {
            // Mutate a valid packet so parsing gets past the first checks.
            let mut p = valid.clone();
            let at = rng.gen_range(0..p.len());
            p[at] = rng.gen();
            p
        };
        if i % 3 == 0 {
            packet.truncate(rng.gen_range(0..=packet.len()));
        }
        h.nat.handle_lan(&packet, h.now);
        h.nat.handle_wan(&packet, h.now);
        while h.nat.poll_transmit().is_some() {}
    }
    assert!(h.nat.stats().dropped > 0);
}

#[test]
fn control_segments_are_logged_when_they_leave() {
    let mut config = NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
    config.uplink.delay = Duration::from_millis(30);
    let mut h = Harness::new(config);
    let start = h.now;
    h.send_lan(build::tcp(
        SocketAddrV4::new(HOST, 5000),
        server1(),
        TcpFlags::SYN,
        64,
        b"",
    ));
    h.send_lan(build::tcp(
        SocketAddrV4::new(HOST, 5000),
        server1(),
        TcpFlags::ACK,
        64,
        b"data",
    ));
    h.advance(Duration::from_millis(30));
    let timed: Vec<_> = std::iter::from_fn(|| h.nat.poll_event()).collect();
    let controls: Vec<_> = timed
        .iter()
        .filter(|e| matches!(e.event, NatEvent::TcpControl { .. }))
        .collect();
    assert_eq!(controls.len(), 1, "only the SYN is logged: {timed:?}");
    assert_eq!(controls[0].at, start + Duration::from_millis(30));
    let kinds: HashSet<_> = timed
        .iter()
        .map(|e| std::mem::discriminant(&e.event))
        .collect();
    assert_eq!(kinds.len(), 2, "mapping created + tcp control");
}

#[test]
fn a_link_passes_packets_unchanged_ttl_included_after_its_delay() {
    let mut config = NatConfig::router(PUBLIC);
    config.translation = Translation::Link;
    config.uplink.delay = Duration::from_millis(5);
    config.downlink.delay = Duration::from_millis(5);
    let mut h = Harness::new(config);
    let router_side = SocketAddrV4::new(PUBLIC, 40000);
    let peer = ep([203, 0, 113, 3], 5000);

    // A TTL 1 SYN is no business of a wire: it passes, TTL untouched.
    let syn = build::tcp(router_side, peer, TcpFlags::SYN, 1, b"");
    assert!(h.send_lan(syn.clone()).is_empty(), "held for the delay");
    let out = h.advance(Duration::from_millis(5));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!(out[0].packet, syn, "byte for byte");

    let reply = build::tcp(peer, router_side, TcpFlags::SYN | TcpFlags::ACK, 60, b"");
    assert!(h.send_wan(reply.clone()).is_empty());
    let out = h.advance(Duration::from_millis(5));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Lan(PUBLIC));
    assert_eq!(out[0].packet, reply);
    assert!(h.nat.mappings().is_empty(), "a link keeps no state");
}

/// A NAT-PMP TCP mapping request (RFC 6886 section 3.3) from `HOST:40123` to the gateway.
fn natpmp_request(internal_port: u16, suggested: u16, lifetime_s: u32) -> Vec<u8> {
    let mut request = vec![0, 2, 0, 0];
    request.extend(internal_port.to_be_bytes());
    request.extend(suggested.to_be_bytes());
    request.extend(lifetime_s.to_be_bytes());
    let gateway = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), portmap::PORT);
    build::udp(SocketAddrV4::new(HOST, 40123), gateway, 64, &request)
}

/// The one answer the router sent back to the host: (result, external port, lifetime).
fn natpmp_answer(out: &[Transmit]) -> (u16, u16, u32) {
    assert_eq!(out.len(), 1, "one answer");
    assert_eq!(out[0].port, Port::Lan(HOST));
    let summary = packet::parse(&out[0].packet).unwrap();
    assert_eq!(summary.src_endpoint().unwrap().1.port(), portmap::PORT);
    let body = packet::udp_payload(&out[0].packet, &summary);
    assert_eq!(body.len(), 16, "{body:?}");
    let word = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let lifetime = u32::from_be_bytes(body[12..16].try_into().unwrap());
    (word(2), word(10), lifetime)
}

#[test]
fn a_granted_port_mapping_admits_anyone_until_deleted_or_lapsed() {
    // An APDM/APDF router: without the mapping nothing from outside gets in.
    let config = NatConfig::nat(Mapping::Apdm, Filtering::Apdf, Allocation::Random, PUBLIC);
    let spec = crate::kernel::portmap::PortmapSpec {
        enabled: true,
        min_lifetime_s: 60,
        max_lifetime_s: 120,
        ..Default::default()
    };
    let mut h = Harness {
        nat: Nat::new(config).with_port_mapping(spec),
        now: Instant::now(),
    };
    let external = SocketAddrV4::new(PUBLIC, 8333);
    assert!(h.syn_in(server1(), external).is_none(), "closed before");

    let (result, port, lifetime) = natpmp_answer(&h.send_lan(natpmp_request(8333, 8333, 300)));
    assert_eq!(
        (result, port, lifetime),
        (0, 8333, 120),
        "granted, lifetime capped"
    );
    for remote in [server1(), server2(), ep([192, 0, 2, 9], 50000)] {
        let through = h
            .syn_in(remote, external)
            .expect("anyone reaches the mapped port");
        assert_eq!(dst_of(&through.packet), SocketAddrV4::new(HOST, 8333));
    }

    // Deleted (lifetime 0, external port 0): closed again at once.
    let (result, _, lifetime) = natpmp_answer(&h.send_lan(natpmp_request(8333, 0, 0)));
    assert_eq!((result, lifetime), (0, 0));
    h.advance(Duration::from_secs(600));
    assert!(
        h.syn_in(ep([192, 0, 2, 10], 50001), external).is_none(),
        "closed after deletion"
    );

    // Granted again and left to lapse: closed after its lifetime.
    let (result, port, _) = natpmp_answer(&h.send_lan(natpmp_request(8333, 8333, 60)));
    assert_eq!((result, port), (0, 8333));
    h.advance(Duration::from_secs(61));
    assert!(
        h.syn_in(ep([192, 0, 2, 11], 50002), external).is_none(),
        "closed after its lifetime"
    );

    let changes: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            NatEvent::PortMap(p) => Some((p.change, p.external_port)),
            _ => None,
        })
        .collect();
    use crate::kernel::portmap::PortmapChange::*;
    assert_eq!(
        changes,
        vec![
            (Added, Some(8333)),
            (Removed, Some(8333)),
            (Added, Some(8333)),
            (Expired, Some(8333)),
        ]
    );
}

#[test]
fn a_router_without_port_mapping_answers_as_configured() {
    use crate::kernel::portmap::{ClosedAnswer, PortmapSpec};
    for (closed, answered) in [(ClosedAnswer::Icmp, true), (ClosedAnswer::Drop, false)] {
        let config = NatConfig::nat(Mapping::Eim, Filtering::Eif, Allocation::Preserve, PUBLIC);
        let spec = PortmapSpec {
            closed,
            ..PortmapSpec::default()
        };
        let mut h = Harness {
            nat: Nat::new(config).with_port_mapping(spec),
            now: Instant::now(),
        };
        let out = h.send_lan(natpmp_request(8333, 8333, 120));
        assert!(
            out.iter().all(|t| t.port == Port::Lan(HOST)),
            "nothing leaves for the internet"
        );
        let port_unreachable = out.iter().any(|t| {
            packet::parse(&t.packet).is_ok_and(|s| {
                matches!(
                    s.body,
                    packet::Body::IcmpError {
                        icmp_type: 3,
                        code: 3,
                        ..
                    }
                )
            })
        });
        assert_eq!(port_unreachable, answered, "{closed:?}: {out:?}");
        assert_eq!(out.len(), usize::from(answered));
    }
}

/// The `low_ttl` shape on a Linux-like router: our priming SYN opens the
/// flow, the peer's SYN comes in, and our next opening segment carries a
/// new socket's sequence number, about a million ahead.
fn primed_then_peer_first(window_check: bool) -> (Vec<Transmit>, Vec<NatEvent>) {
    let mut config = NatConfig::nat(Mapping::Eim, Filtering::Apdf, Allocation::Preserve, PUBLIC);
    config.tcp_window_check = window_check;
    let mut h = Harness::new(config);
    let (us, peer) = (ep([192, 168, 1, 2], 40000), ep([203, 0, 113, 9], 40001));
    let prime = 7_000_000;
    let later = prime + 70_000_000 / 64;
    let out = h.send_lan(build::tcp_with_seq(us, peer, TcpFlags::SYN, 2, prime, b""));
    assert_eq!(out.len(), 1, "the priming SYN leaves");
    let external = src_of(&out[0].packet);
    assert!(
        h.syn_in(peer, external).is_some(),
        "the peer's SYN is admitted"
    );
    let syn_ack = TcpFlags::SYN | TcpFlags::ACK;
    let out = h.send_lan(build::tcp_with_seq(us, peer, syn_ack, 64, later, b""));
    (out, h.events())
}

#[test]
fn with_the_window_check_a_new_sockets_answer_after_the_peers_syn_is_dropped() {
    let (out, events) = primed_then_peer_first(true);
    assert!(out.is_empty(), "out of window: {out:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            NatEvent::Dropped {
                reason: DropReason::OutOfWindow {
                    expected: 7_000_001,
                    ..
                },
                ..
            }
        )),
        "{events:?}"
    );
    let (out, _) = primed_then_peer_first(false);
    assert_eq!(out.len(), 1, "without the check it passes");
}

/// An IPv6 TCP SYN (fixed header and a bare 20-byte TCP header) from
/// `src` to `dst`, port 40000 to 443. A link reads only the fixed header,
/// so the TCP checksum is left zero.
fn ipv6_syn(src: std::net::Ipv6Addr, dst: std::net::Ipv6Addr) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend(20u16.to_be_bytes()); // payload length
    packet.extend([6, 64]); // next header TCP, hop limit
    packet.extend(src.octets());
    packet.extend(dst.octets());
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = TcpFlags::SYN;
    packet.extend(tcp);
    packet
}

const HOST_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 2);
const SERVER_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x10);

#[test]
fn ipv6_headers_are_read_to_their_length_and_refused_when_short_or_not_version_6() {
    let syn = ipv6_syn(HOST_V6, SERVER_V6);
    assert_eq!(
        packet::parse_link(&syn),
        Ok(packet::LinkPacket::Ipv6 {
            dst: SERVER_V6,
            total_len: 60
        })
    );
    let mut padded = syn.clone();
    padded.extend([0; 7]);
    assert_eq!(
        packet::parse_link(&padded).map(|p| p.total_len()),
        Ok(60),
        "trailing bytes are not the packet's"
    );
    assert_eq!(
        packet::parse_link(&syn[..39]),
        Err(Malformed::Truncated),
        "shorter than the fixed header"
    );
    assert_eq!(
        packet::parse_link(&syn[..59]),
        Err(Malformed::Truncated),
        "payload length beyond what was read"
    );
    let mut longer_claim = syn.clone();
    longer_claim[4..6].copy_from_slice(&21u16.to_be_bytes());
    assert_eq!(packet::parse_link(&longer_claim), Err(Malformed::Truncated));
    let mut version_5 = syn.clone();
    version_5[0] = 0x50;
    assert_eq!(packet::parse_ipv6(&version_5), Err(Malformed::BadHeader));
    assert_eq!(
        packet::parse(&syn),
        Err(Malformed::NotIpv4),
        "the NAT itself reads IPv4 only"
    );
}

#[test]
fn a_link_carries_ipv6_unchanged_after_its_delay_and_drops_short_packets() {
    let mut config = NatConfig::router(PUBLIC);
    config.translation = Translation::Link;
    config.uplink.delay = Duration::from_millis(5);
    config.downlink.delay = Duration::from_millis(5);
    let mut nat = Nat::new(config);
    let start = Instant::now();
    let drain = |nat: &mut Nat| std::iter::from_fn(|| nat.poll_transmit()).collect::<Vec<_>>();

    let outbound = ipv6_syn(HOST_V6, SERVER_V6);
    let mut padded = outbound.clone();
    padded.extend([0xee; 4]);
    nat.handle_lan(&padded, start);
    assert!(drain(&mut nat).is_empty(), "held for the delay");
    nat.handle_timeout(start + Duration::from_millis(5));
    let out = drain(&mut nat);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].port, Port::Wan);
    assert_eq!(out[0].packet, outbound, "byte for byte, padding cut");

    let inbound = ipv6_syn(SERVER_V6, HOST_V6);
    nat.handle_wan(&inbound, start + Duration::from_millis(10));
    nat.handle_timeout(start + Duration::from_millis(15));
    let out = drain(&mut nat);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].port,
        Port::Lan(PUBLIC),
        "to the link's one LAN device, the kernel router's WAN"
    );
    assert_eq!(out[0].packet, inbound);

    nat.handle_lan(&outbound[..50], start + Duration::from_millis(20));
    nat.handle_wan(&inbound[..30], start + Duration::from_millis(20));
    nat.handle_timeout(start + Duration::from_millis(30));
    assert!(drain(&mut nat).is_empty(), "short packets never leave");
    let drops: Vec<_> = std::iter::from_fn(|| nat.poll_event())
        .filter_map(|e| match e.event {
            NatEvent::Dropped { direction, reason } => Some((direction, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        drops,
        [
            (
                Direction::Outbound,
                DropReason::Malformed(Malformed::Truncated)
            ),
            (
                Direction::Inbound,
                DropReason::Malformed(Malformed::Truncated)
            ),
        ]
    );
}

#[test]
fn without_the_ipv6_key_every_mode_but_a_link_refuses_ipv6() {
    for config in [
        NatConfig::router(PUBLIC),
        NatConfig::nat(Mapping::Eim, Filtering::Eif, Allocation::Preserve, PUBLIC),
    ] {
        let mut h = Harness::new(config);
        assert!(h.send_lan(ipv6_syn(HOST_V6, SERVER_V6)).is_empty());
        assert!(h.send_wan(ipv6_syn(SERVER_V6, HOST_V6)).is_empty());
        let malformed = h
            .events()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    NatEvent::Dropped {
                        reason: DropReason::Malformed(Malformed::NotIpv4),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(malformed, 2, "both directions refused as not IPv4");
    }
}
