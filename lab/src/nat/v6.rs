//! IPv6 on an emulated router: packet views, RFC 6296 prefix translation (NPTv6) and the stateful firewall's pinholes (RFC 6092).
//!
//! Sans-io like the rest of the core: [`super::Nat`] feeds packets in and
//! decides; this module only reads, translates and keeps the table. IPv6
//! has no NAT here: a firewall keys its pinholes on the host's own
//! endpoint. NPTv6 is stateless and checksum-neutral, so it never touches a
//! transport checksum and the firewall works on internal addresses.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::time::Instant;

use pnet_packet::tcp::TcpFlags;
use punchscope_analysis::nat::Filtering;
use serde::{Deserialize, Serialize};

use super::config::Timeouts;
use super::packet::{Malformed, Protocol, IPV6_HEADER_LEN};
use super::table::RemovalReason;

/// Next header numbers the router reads.
const NEXT_TCP: u8 = 6;
const NEXT_UDP: u8 = 17;
const NEXT_ICMPV6: u8 = 58;
/// Hop limit of what the router itself sends (RST and ICMPv6 answers).
const ORIGINATED_HOP_LIMIT: u8 = 64;
/// An ICMPv6 error must fit in the minimum IPv6 MTU (RFC 4443 section 2.4 (c)).
const MIN_MTU: usize = 1280;

/// ICMPv6 destination unreachable, code 1: administratively prohibited (RFC 4443), what RFC 6092 has a firewall send.
pub const ICMPV6_ADMIN_PROHIBITED: (u8, u8) = (1, 1);
/// ICMPv6 time exceeded, code 0: hop limit exceeded in transit.
pub const ICMPV6_HOP_LIMIT_EXCEEDED: (u8, u8) = (3, 0);

/// What a router does with IPv6 (the scenario's `ipv6` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Mode {
    /// A stateful firewall (RFC 6092): outbound traffic opens a pinhole for
    /// its replies; unsolicited inbound gets the router's `unsolicited` answer.
    Firewall,
    /// Routes IPv6 without filtering: every host is reachable.
    Open,
    /// The firewall, with the LAN's internal prefix translated to the
    /// router's public one by RFC 6296 prefix translation (NPTv6).
    Nptv6,
}

impl std::fmt::Display for Ipv6Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ipv6Mode::Firewall => "firewall",
            Ipv6Mode::Open => "open",
            Ipv6Mode::Nptv6 => "nptv6",
        })
    }
}

/// An emulated router's IPv6 side.
#[derive(Debug, Clone, PartialEq)]
pub struct Ipv6Router {
    pub mode: Ipv6Mode,
    /// The firewall's inbound filtering (the router's `filtering` key).
    pub filtering: Filtering,
    /// The LAN's /64 as the hosts number it (the internal one under NPTv6).
    pub lan_prefix: Ipv6Addr,
    /// The router's LAN address: the source of ICMPv6 errors to its hosts.
    pub gateway: Ipv6Addr,
    /// The router's WAN address: the source of ICMPv6 errors to the internet.
    pub wan: Ipv6Addr,
    /// The prefix translation, under [`Ipv6Mode::Nptv6`].
    pub npt: Option<Npt>,
    /// Each host's IPv6 address (as on its own device) with the IPv4 LAN
    /// address that names its device ([`super::Port::Lan`]).
    pub hosts: Vec<(Ipv6Addr, Ipv4Addr)>,
}

impl Ipv6Router {
    /// Whether `addr` is in the LAN's /64 (as the hosts number it).
    pub fn on_lan(&self, addr: Ipv6Addr) -> bool {
        same_64(addr, self.lan_prefix)
    }

    /// The device (by IPv4 LAN address) of the host that holds `addr`.
    pub fn host_device(&self, addr: Ipv6Addr) -> Option<Ipv4Addr> {
        self.hosts.iter().find(|(a, _)| *a == addr).map(|(_, d)| *d)
    }

    /// Internal to external address (the identity without NPTv6).
    pub fn to_external(&self, addr: Ipv6Addr) -> Option<Ipv6Addr> {
        match &self.npt {
            Some(npt) => npt.outbound(addr),
            None => Some(addr),
        }
    }

    /// External to internal address; `None` when it is not the LAN's.
    pub fn to_internal(&self, addr: Ipv6Addr) -> Option<Ipv6Addr> {
        let internal = match &self.npt {
            Some(npt) => npt.inbound(addr)?,
            None => addr,
        };
        self.on_lan(internal).then_some(internal)
    }
}

fn same_64(a: Ipv6Addr, b: Ipv6Addr) -> bool {
    a.segments()[..4] == b.segments()[..4]
}

/// One's complement addition of 16-bit words (RFC 1071).
fn ones_add(a: u16, b: u16) -> u16 {
    let sum = u32::from(a) + u32::from(b);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The one's complement sum of a /48 prefix's three words.
fn prefix_sum(prefix: Ipv6Addr) -> u16 {
    let w = prefix.segments();
    ones_add(ones_add(w[0], w[1]), w[2])
}

/// RFC 6296 prefix translation between two /48 prefixes. The adjustment
/// goes into the 16-bit word right after the prefix (bits 48-63, the
/// subnet ID: section 3.4), so the interface identifier (the low 64 bits)
/// is never touched and the address's one's complement sum, hence every
/// transport checksum over it, is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npt {
    internal: Ipv6Addr,
    external: Ipv6Addr,
    /// Added to the subnet word on the way out (internal sum - external sum).
    outbound_adjustment: u16,
}

impl Npt {
    /// The translation between the /48s `internal` and `external` (their low 80 bits are ignored).
    pub fn new(internal: Ipv6Addr, external: Ipv6Addr) -> Npt {
        let mask = |a: Ipv6Addr| {
            let w = a.segments();
            Ipv6Addr::new(w[0], w[1], w[2], 0, 0, 0, 0, 0)
        };
        let (internal, external) = (mask(internal), mask(external));
        Npt {
            internal,
            external,
            outbound_adjustment: ones_add(prefix_sum(internal), !prefix_sum(external)),
        }
    }

    pub fn internal_prefix(&self) -> Ipv6Addr {
        self.internal
    }

    pub fn external_prefix(&self) -> Ipv6Addr {
        self.external
    }

    /// An internal address as the internet sees it; `None` outside the
    /// internal /48, or with a subnet word of 0xFFFF, which RFC 6296
    /// section 3.5 cannot translate.
    pub fn outbound(&self, addr: Ipv6Addr) -> Option<Ipv6Addr> {
        translate(addr, self.internal, self.external, self.outbound_adjustment)
    }

    /// An external address back to the internal one.
    pub fn inbound(&self, addr: Ipv6Addr) -> Option<Ipv6Addr> {
        translate(
            addr,
            self.external,
            self.internal,
            !self.outbound_adjustment,
        )
    }
}

fn translate(addr: Ipv6Addr, from: Ipv6Addr, to: Ipv6Addr, adjustment: u16) -> Option<Ipv6Addr> {
    let mut w = addr.segments();
    let (f, t) = (from.segments(), to.segments());
    if w[..3] != f[..3] || w[3] == 0xffff {
        return None;
    }
    w[..3].copy_from_slice(&t[..3]);
    w[3] = ones_add(w[3], adjustment);
    // 0xFFFF and 0 are the same one's complement number; RFC 6296 writes 0.
    if w[3] == 0xffff {
        w[3] = 0;
    }
    Some(Ipv6Addr::from(w))
}

/// The parts of an IPv6 packet the router decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub total_len: usize,
    pub body: Body6,
}

/// Which way a packet crosses the firewall: out from the LAN, or in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction6 {
    Out,
    In,
}

/// The transport content of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body6 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        seq: u32,
        payload_len: usize,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// An ICMPv6 error (types 1-4) quoting a TCP or UDP packet.
    IcmpError {
        icmp_type: u8,
        code: u8,
        quoted: Quoted6,
    },
    /// An ICMPv6 echo request (128) or reply (129).
    Echo,
    /// Anything else: other ICMPv6, extension headers, other protocols.
    Other {
        next_header: u8,
    },
}

/// The flow an ICMPv6 error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted6 {
    pub proto: Protocol,
    pub src: SocketAddrV6,
    pub dst: SocketAddrV6,
}

impl Summary6 {
    pub fn src_endpoint(&self) -> Option<(Protocol, SocketAddrV6)> {
        match self.body {
            Body6::Tcp { src_port, .. } => Some((Protocol::Tcp, v6(self.src, src_port))),
            Body6::Udp { src_port, .. } => Some((Protocol::Udp, v6(self.src, src_port))),
            _ => None,
        }
    }

    pub fn dst_endpoint(&self) -> Option<SocketAddrV6> {
        match self.body {
            Body6::Tcp { dst_port, .. } | Body6::Udp { dst_port, .. } => {
                Some(v6(self.dst, dst_port))
            }
            _ => None,
        }
    }

    pub fn tcp_flags(&self) -> u8 {
        match self.body {
            Body6::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }

    /// A bare SYN (not a SYN-ACK).
    pub fn is_tcp_syn(&self) -> bool {
        let flags = self.tcp_flags();
        flags & TcpFlags::SYN != 0 && flags & (TcpFlags::ACK | TcpFlags::RST) == 0
    }
}

/// An IPv6 socket address without flow label or scope.
pub fn v6(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

fn addr_at(bytes: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[at..at + 16]);
    Ipv6Addr::from(octets)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Reads an IPv6 packet: the fixed header, then TCP, UDP or ICMPv6 right
/// after it. Extension headers are not followed (`Other`): nothing in the
/// lab sends them, and a home router's firewall drops what it cannot read.
pub fn parse6(packet: &[u8]) -> Result<Summary6, Malformed> {
    if packet.len() < IPV6_HEADER_LEN {
        return Err(Malformed::Truncated);
    }
    if packet[0] >> 4 != 6 {
        return Err(Malformed::BadHeader);
    }
    let total_len = IPV6_HEADER_LEN + usize::from(u16_at(packet, 4));
    if total_len > packet.len() {
        return Err(Malformed::Truncated);
    }
    let next_header = packet[6];
    let transport = &packet[IPV6_HEADER_LEN..total_len];
    let body = match next_header {
        NEXT_TCP => {
            if transport.len() < 20 {
                return Err(Malformed::Truncated);
            }
            let data_offset = usize::from(transport[12] >> 4) * 4;
            if data_offset < 20 || data_offset > transport.len() {
                return Err(Malformed::BadHeader);
            }
            Body6::Tcp {
                src_port: u16_at(transport, 0),
                dst_port: u16_at(transport, 2),
                flags: transport[13],
                seq: u32::from_be_bytes([transport[4], transport[5], transport[6], transport[7]]),
                payload_len: transport.len() - data_offset,
            }
        }
        NEXT_UDP => {
            if transport.len() < 8 {
                return Err(Malformed::Truncated);
            }
            Body6::Udp {
                src_port: u16_at(transport, 0),
                dst_port: u16_at(transport, 2),
            }
        }
        NEXT_ICMPV6 => parse_icmpv6(transport),
        other => Body6::Other { next_header: other },
    };
    Ok(Summary6 {
        src: addr_at(packet, 8),
        dst: addr_at(packet, 24),
        hop_limit: packet[7],
        total_len,
        body,
    })
}

fn parse_icmpv6(transport: &[u8]) -> Body6 {
    let other = Body6::Other {
        next_header: NEXT_ICMPV6,
    };
    let Some(&icmp_type) = transport.first() else {
        return other;
    };
    match icmp_type {
        128 | 129 => Body6::Echo,
        1..=4 => {
            // The quoted packet starts after the 8-byte ICMPv6 header.
            let Some(quote) = transport.get(8..) else {
                return other;
            };
            if quote.len() < IPV6_HEADER_LEN + 4 || quote[0] >> 4 != 6 {
                return other;
            }
            let proto = match quote[6] {
                NEXT_TCP => Protocol::Tcp,
                NEXT_UDP => Protocol::Udp,
                _ => return other,
            };
            let ports = &quote[IPV6_HEADER_LEN..];
            Body6::IcmpError {
                icmp_type,
                code: transport[1],
                quoted: Quoted6 {
                    proto,
                    src: v6(addr_at(quote, 8), u16_at(ports, 0)),
                    dst: v6(addr_at(quote, 24), u16_at(ports, 2)),
                },
            }
        }
        _ => other,
    }
}

/// Copies a packet (trimmed to its length), with new addresses where given
/// and the hop limit decremented. NPTv6 addresses are checksum-neutral, so
/// no checksum changes: that is the point of RFC 6296.
pub fn forward6(
    packet: &[u8],
    summary: &Summary6,
    src: Option<Ipv6Addr>,
    dst: Option<Ipv6Addr>,
) -> Vec<u8> {
    let mut out = packet[..summary.total_len].to_vec();
    out[7] = summary.hop_limit - 1;
    if let Some(src) = src {
        out[8..24].copy_from_slice(&src.octets());
    }
    if let Some(dst) = dst {
        out[24..40].copy_from_slice(&dst.octets());
    }
    out
}

/// Rewrites the quoted source of an inbound ICMPv6 error (the host's
/// external address) to its internal one, and the outer destination.
/// Both changes are checksum-neutral, so the ICMPv6 checksum stays valid.
pub fn rewrite_icmp_error6(packet: &[u8], summary: &Summary6, internal: Ipv6Addr) -> Vec<u8> {
    let mut out = forward6(packet, summary, None, Some(internal));
    // Outer header, ICMPv6 header, then the quoted header's source address.
    let at = IPV6_HEADER_LEN + 8 + 8;
    out[at..at + 16].copy_from_slice(&internal.octets());
    out
}

/// The IPv6 pseudo-header checksum of a transport body (RFC 8200 section 8.1).
pub fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, body: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(body.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next_header]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn header6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8], hop: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + payload.len());
    out.extend([0x60, 0, 0, 0]);
    out.extend((payload.len() as u16).to_be_bytes());
    out.extend([next_header, hop]);
    out.extend(src.octets());
    out.extend(dst.octets());
    out.extend(payload);
    out
}

/// A TCP RST|ACK answering an IPv6 SYN from the endpoint it was sent to
/// (as `reject with tcp reset` does), acknowledging the SYN.
pub fn tcp_reset6(syn: &Summary6) -> Vec<u8> {
    let Body6::Tcp {
        src_port,
        dst_port,
        seq,
        payload_len,
        ..
    } = syn.body
    else {
        unreachable!("tcp_reset6 called on a non-TCP packet")
    };
    let ack = seq.wrapping_add(1).wrapping_add(payload_len as u32);
    let tcp = tcp_segment(
        v6(syn.dst, dst_port),
        v6(syn.src, src_port),
        TcpFlags::RST | TcpFlags::ACK,
        0,
        ack,
        0,
        b"",
    );
    header6(syn.dst, syn.src, NEXT_TCP, &tcp, ORIGINATED_HOP_LIMIT)
}

fn tcp_segment(
    src: SocketAddrV6,
    dst: SocketAddrV6,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&window.to_be_bytes());
    tcp.extend(payload);
    let sum = checksum6(*src.ip(), *dst.ip(), NEXT_TCP, &tcp);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    tcp
}

/// An ICMPv6 error about `offending` from `from` to its source, quoting as
/// much of it as fits in the minimum MTU.
pub fn icmp_error6(
    offending: &[u8],
    summary: &Summary6,
    from: Ipv6Addr,
    kind: (u8, u8),
) -> Vec<u8> {
    let quote_len = summary.total_len.min(MIN_MTU - IPV6_HEADER_LEN - 8);
    let mut icmp = vec![kind.0, kind.1, 0, 0, 0, 0, 0, 0];
    icmp.extend(&offending[..quote_len]);
    let sum = checksum6(from, summary.src, NEXT_ICMPV6, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    header6(from, summary.src, NEXT_ICMPV6, &icmp, ORIGINATED_HOP_LIMIT)
}

/// Builds IPv6 test packets with valid checksums; also for the benchmark.
pub mod build {
    use super::*;

    /// A TCP segment with the given flags and hop limit.
    pub fn tcp6(
        src: SocketAddrV6,
        dst: SocketAddrV6,
        flags: u8,
        hop: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let ack = u32::from(flags & TcpFlags::ACK != 0);
        let tcp = tcp_segment(src, dst, flags, 1000, ack, 65535, payload);
        header6(*src.ip(), *dst.ip(), NEXT_TCP, &tcp, hop)
    }

    /// A UDP datagram with a checksum (mandatory over IPv6).
    pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6, hop: u8, payload: &[u8]) -> Vec<u8> {
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend(payload);
        let sum = match checksum6(*src.ip(), *dst.ip(), NEXT_UDP, &udp) {
            0 => 0xffff,
            sum => sum,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        header6(*src.ip(), *dst.ip(), NEXT_UDP, &udp, hop)
    }

    /// An ICMPv6 echo request.
    pub fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8) -> Vec<u8> {
        let mut icmp = vec![128, 0, 0, 0, 0, 1, 0, 1];
        let sum = checksum6(src, dst, NEXT_ICMPV6, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        header6(src, dst, NEXT_ICMPV6, &icmp, hop)
    }
}

/// A firewall's verdict on an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound6 {
    Admitted,
    /// No pinhole for the destination endpoint.
    NoPinhole,
    /// A pinhole exists but its filtering does not admit this sender.
    Filtered,
}

/// A firewall's verdict on an outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound6 {
    /// Passed; `created` when it opened the pinhole.
    Passed { created: bool },
    /// A TCP segment other than SYN with no pinhole (and `tcp_loose` off).
    NotAllowed,
}

/// A session or pinhole that went, for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal6 {
    pub proto: Protocol,
    pub internal: SocketAddrV6,
    /// `Some`: one remote's session; `None`: the whole pinhole.
    pub remote: Option<SocketAddrV6>,
    pub reason: RemovalReason,
}

#[derive(Debug, Clone, Copy, Default)]
struct Session {
    last: Option<Instant>,
    syn_out: bool,
    syn_in: bool,
    fin_out: bool,
    fin_in: bool,
}

impl Session {
    fn established(&self) -> bool {
        self.syn_out && self.syn_in && !(self.fin_out && self.fin_in)
    }

    fn expired(&self, proto: Protocol, timeouts: &Timeouts, now: Instant) -> bool {
        let timeout = match proto {
            Protocol::Udp => timeouts.udp,
            Protocol::Tcp if self.established() => timeouts.tcp_established,
            Protocol::Tcp => timeouts.tcp_transitory,
        };
        self.last
            .is_some_and(|last| now.saturating_duration_since(last) >= timeout)
    }
}

/// The firewall's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallConfig {
    pub filtering: Filtering,
    pub timeouts: Timeouts,
    pub rst_closes: bool,
    pub tcp_loose: bool,
}

/// The pinholes of a stateful IPv6 firewall: per internal endpoint (a
/// host's own address and port, before any NPTv6), the remote endpoints it
/// has sessions with. The same session rules as the IPv4 table: idle
/// timeouts, RST and FIN, a SYN reopening a finished session.
#[derive(Debug)]
pub struct Firewall {
    config: FirewallConfig,
    pinholes: HashMap<(Protocol, SocketAddrV6), HashMap<SocketAddrV6, Session>>,
    removals: Vec<Removal6>,
}

impl Firewall {
    pub fn new(config: FirewallConfig) -> Self {
        Self {
            config,
            pinholes: HashMap::new(),
            removals: Vec::new(),
        }
    }

    /// Live pinholes as (protocol, internal endpoint, remotes with sessions).
    pub fn entries(&self) -> Vec<(Protocol, SocketAddrV6, Vec<SocketAddrV6>)> {
        let mut out: Vec<_> = self
            .pinholes
            .iter()
            .map(|((proto, internal), sessions)| {
                (*proto, *internal, sessions.keys().copied().collect())
            })
            .collect();
        out.sort_by_key(|(_, internal, _)| *internal);
        out
    }

    /// A packet from `internal` to `remote` with TCP `flags` (0 for UDP).
    pub fn outbound(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
        flags: u8,
        now: Instant,
    ) -> Outbound6 {
        self.expire(proto, internal, now);
        let bare_syn = flags & TcpFlags::SYN != 0 && flags & (TcpFlags::ACK | TcpFlags::RST) == 0;
        let exists = self.pinholes.contains_key(&(proto, internal));
        if proto == Protocol::Tcp && !exists && !bare_syn && !self.config.tcp_loose {
            return Outbound6::NotAllowed;
        }
        if bare_syn {
            self.reopen_if_finished(proto, internal, remote);
        }
        let created = !self.pinholes.contains_key(&(proto, internal));
        self.touch((proto, internal, remote), flags, Direction6::Out, now);
        Outbound6::Passed { created }
    }

    /// A packet from `remote` to `internal` (already translated back from NPTv6).
    pub fn inbound(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
        flags: u8,
        now: Instant,
    ) -> Inbound6 {
        self.expire(proto, internal, now);
        let Some(sessions) = self.pinholes.get(&(proto, internal)) else {
            return Inbound6::NoPinhole;
        };
        let admitted = match self.config.filtering {
            Filtering::Eif => true,
            Filtering::Adf => sessions.keys().any(|r| r.ip() == remote.ip()),
            Filtering::Apdf => sessions.contains_key(&remote),
        };
        if !admitted {
            return Inbound6::Filtered;
        }
        if flags & TcpFlags::SYN != 0 && flags & TcpFlags::ACK == 0 {
            self.reopen_if_finished(proto, internal, remote);
        }
        self.touch((proto, internal, remote), flags, Direction6::In, now);
        Inbound6::Admitted
    }

    /// Records a packet of the session (`proto`, `internal`, `remote`),
    /// opening it if new: its time, its SYN and FIN by direction; a RST
    /// ends it.
    fn touch(
        &mut self,
        (proto, internal, remote): (Protocol, SocketAddrV6, SocketAddrV6),
        flags: u8,
        direction: Direction6,
        now: Instant,
    ) {
        let session = self
            .pinholes
            .entry((proto, internal))
            .or_default()
            .entry(remote)
            .or_default();
        session.last = Some(now);
        let (syn, fin) = (flags & TcpFlags::SYN != 0, flags & TcpFlags::FIN != 0);
        match direction {
            Direction6::Out => {
                session.syn_out |= syn;
                session.fin_out |= fin;
            }
            Direction6::In => {
                session.syn_in |= syn;
                session.fin_in |= fin;
            }
        }
        if flags & TcpFlags::RST != 0 {
            self.reset(proto, internal, remote);
        }
    }

    /// Whether an ICMPv6 error about the flow `internal` -> `remote` belongs to a session.
    pub fn related(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
        now: Instant,
    ) -> bool {
        self.expire(proto, internal, now);
        self.pinholes
            .get(&(proto, internal))
            .is_some_and(|s| s.contains_key(&remote))
    }

    /// Expires idle sessions of every pinhole.
    pub fn sweep(&mut self, now: Instant) {
        let keys: Vec<_> = self.pinholes.keys().copied().collect();
        for (proto, internal) in keys {
            self.expire(proto, internal, now);
        }
    }

    pub fn drain_removals(&mut self) -> impl Iterator<Item = Removal6> + '_ {
        self.removals.drain(..)
    }

    fn expire(&mut self, proto: Protocol, internal: SocketAddrV6, now: Instant) {
        let timeouts = self.config.timeouts;
        let Some(sessions) = self.pinholes.get_mut(&(proto, internal)) else {
            return;
        };
        let mut gone: Vec<_> = sessions
            .iter()
            .filter(|(_, s)| s.expired(proto, &timeouts, now))
            .map(|(r, _)| *r)
            .collect();
        gone.sort();
        for remote in gone {
            self.remove_session(proto, internal, remote, RemovalReason::Expired);
        }
    }

    fn reopen_if_finished(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
    ) {
        let finished = self
            .pinholes
            .get(&(proto, internal))
            .and_then(|s| s.get(&remote))
            .is_some_and(|s| s.fin_out && s.fin_in);
        if finished {
            self.remove_session(proto, internal, remote, RemovalReason::Reopened);
        }
    }

    fn reset(&mut self, proto: Protocol, internal: SocketAddrV6, remote: SocketAddrV6) {
        if self.config.rst_closes {
            self.remove_session(proto, internal, remote, RemovalReason::Reset);
        } else if let Some(session) = self
            .pinholes
            .get_mut(&(proto, internal))
            .and_then(|s| s.get_mut(&remote))
        {
            // Transitory from now on: it times out.
            session.syn_in = false;
        }
    }

    fn remove_session(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
        reason: RemovalReason,
    ) {
        let Some(sessions) = self.pinholes.get_mut(&(proto, internal)) else {
            return;
        };
        if sessions.remove(&remote).is_none() {
            return;
        }
        self.removals.push(Removal6 {
            proto,
            internal,
            remote: Some(remote),
            reason,
        });
        if sessions.is_empty() {
            self.pinholes.remove(&(proto, internal));
            self.removals.push(Removal6 {
                proto,
                internal,
                remote: None,
                reason,
            });
        }
    }
}
