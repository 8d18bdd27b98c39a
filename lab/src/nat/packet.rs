//! IPv4 packet views, rewrites and answers for the NAT emulator, built on `pnet_packet`; every rewrite recomputes checksums.
//! A bare link also carries IPv6, of which it reads only the fixed header ([`parse_link`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use pnet_packet::icmp::{self, IcmpPacket, IcmpTypes, MutableIcmpPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::{self, Ipv4Packet, MutableIpv4Packet};
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpPacket};
use pnet_packet::udp::{self, MutableUdpPacket, UdpPacket};
use serde::Serialize;

/// TTL of packets the router itself originates (RST and ICMP answers).
const ORIGINATED_TTL: u8 = 64;
/// How much of an offending datagram an ICMP error quotes beyond its IP header (RFC 792).
const ICMP_QUOTE_PAYLOAD: usize = 8;

/// Transport protocols the emulator translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Why a packet could not be handled as a translatable IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    NotIpv4,
    BadHeader,
    Fragment,
    Truncated,
}

/// The parts of an IPv4 packet the NAT decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub header_len: usize,
    pub total_len: usize,
    pub body: Body,
}

/// The transport-level content of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
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
    /// An ICMP error (destination unreachable, time exceeded) quoting a TCP or UDP packet.
    IcmpError {
        icmp_type: u8,
        code: u8,
        quoted: QuotedFlow,
    },
    /// Anything else: ICMP queries, other protocols, ICMP errors quoting something we do not translate.
    Other {
        protocol: u8,
    },
}

/// The flow an ICMP error refers to, read from the datagram it quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotedFlow {
    pub proto: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl Summary {
    /// The transport source endpoint, for TCP and UDP.
    pub fn src_endpoint(&self) -> Option<(Protocol, SocketAddrV4)> {
        match self.body {
            Body::Tcp { src_port, .. } => {
                Some((Protocol::Tcp, SocketAddrV4::new(self.src, src_port)))
            }
            Body::Udp { src_port, .. } => {
                Some((Protocol::Udp, SocketAddrV4::new(self.src, src_port)))
            }
            _ => None,
        }
    }

    /// The transport destination endpoint, for TCP and UDP.
    pub fn dst_endpoint(&self) -> Option<SocketAddrV4> {
        match self.body {
            Body::Tcp { dst_port, .. } | Body::Udp { dst_port, .. } => {
                Some(SocketAddrV4::new(self.dst, dst_port))
            }
            _ => None,
        }
    }

    /// TCP flags, or 0 for anything that is not TCP.
    pub fn tcp_flags(&self) -> u8 {
        match self.body {
            Body::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }

    /// A bare SYN: the start of a new connection attempt (not a SYN-ACK).
    pub fn is_tcp_syn(&self) -> bool {
        let flags = self.tcp_flags();
        flags & TcpFlags::SYN != 0 && flags & (TcpFlags::ACK | TcpFlags::RST) == 0
    }
}

/// The length of the fixed IPv6 header; the payload length field counts what follows it.
pub const IPV6_HEADER_LEN: usize = 40;

/// A packet as a bare link ([`super::Translation::Link`]) sees it: where it
/// goes and how long it is, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPacket {
    Ipv4 { dst: Ipv4Addr, total_len: usize },
    Ipv6 { dst: Ipv6Addr, total_len: usize },
}

impl LinkPacket {
    /// The packet's length by its own header (trailing bytes beyond it are not part of it).
    pub fn total_len(&self) -> usize {
        match *self {
            LinkPacket::Ipv4 { total_len, .. } | LinkPacket::Ipv6 { total_len, .. } => total_len,
        }
    }
}

/// Reads a packet a bare link carries: IPv4 as [`parse`] reads it (so a
/// link refuses what the NAT would), IPv6 by [`parse_ipv6`].
pub fn parse_link(packet: &[u8]) -> Result<LinkPacket, Malformed> {
    match packet.first().map(|first| first >> 4) {
        Some(6) => parse_ipv6(packet),
        _ => parse(packet).map(|summary| LinkPacket::Ipv4 {
            dst: summary.dst,
            total_len: summary.total_len,
        }),
    }
}

/// Reads an IPv6 packet's fixed header: version 6, and a payload length
/// that, with the 40-byte header, fits in what was read. Extension headers
/// and the payload are left alone: a link does not look into them.
pub fn parse_ipv6(packet: &[u8]) -> Result<LinkPacket, Malformed> {
    let ip = Ipv6Packet::new(packet).ok_or(Malformed::Truncated)?;
    if ip.get_version() != 6 {
        return Err(Malformed::BadHeader);
    }
    let total_len = IPV6_HEADER_LEN + usize::from(ip.get_payload_length());
    if total_len > packet.len() {
        return Err(Malformed::Truncated);
    }
    Ok(LinkPacket::Ipv6 {
        dst: ip.get_destination(),
        total_len,
    })
}

/// Reads the fields the NAT needs, rejecting what it cannot translate.
pub fn parse(packet: &[u8]) -> Result<Summary, Malformed> {
    let ip = Ipv4Packet::new(packet).ok_or(Malformed::NotIpv4)?;
    if ip.get_version() != 4 {
        return Err(Malformed::NotIpv4);
    }
    let header_len = usize::from(ip.get_header_length()) * 4;
    let total_len = usize::from(ip.get_total_length());
    if header_len < 20 || total_len < header_len {
        return Err(Malformed::BadHeader);
    }
    if total_len > packet.len() {
        return Err(Malformed::Truncated);
    }
    // More-fragments flag or a non-zero offset: TCP here always sets DF, so we do not reassemble.
    if ip.get_flags() & 0b001 != 0 || ip.get_fragment_offset() != 0 {
        return Err(Malformed::Fragment);
    }
    let transport = &packet[header_len..total_len];
    let body = match ip.get_next_level_protocol() {
        IpNextHeaderProtocols::Tcp => {
            let tcp = TcpPacket::new(transport).ok_or(Malformed::Truncated)?;
            let data_offset = usize::from(tcp.get_data_offset()) * 4;
            if data_offset < 20 || data_offset > transport.len() {
                return Err(Malformed::BadHeader);
            }
            Body::Tcp {
                src_port: tcp.get_source(),
                dst_port: tcp.get_destination(),
                flags: tcp.get_flags(),
                seq: tcp.get_sequence(),
                payload_len: transport.len() - data_offset,
            }
        }
        IpNextHeaderProtocols::Udp => {
            let udp = UdpPacket::new(transport).ok_or(Malformed::Truncated)?;
            Body::Udp {
                src_port: udp.get_source(),
                dst_port: udp.get_destination(),
            }
        }
        IpNextHeaderProtocols::Icmp => parse_icmp(transport),
        other => Body::Other { protocol: other.0 },
    };
    Ok(Summary {
        src: ip.get_source(),
        dst: ip.get_destination(),
        ttl: ip.get_ttl(),
        header_len,
        total_len,
        body,
    })
}

fn parse_icmp(transport: &[u8]) -> Body {
    let other = Body::Other {
        protocol: IpNextHeaderProtocols::Icmp.0,
    };
    let Some(icmp) = IcmpPacket::new(transport) else {
        return other;
    };
    let icmp_type = icmp.get_icmp_type();
    if icmp_type != IcmpTypes::DestinationUnreachable && icmp_type != IcmpTypes::TimeExceeded {
        return other;
    }
    // The quoted datagram starts after the 8-byte ICMP header (type, code, checksum, 4 unused bytes).
    let Some(quote) = transport.get(8..) else {
        return other;
    };
    match parse_quoted(quote) {
        Some(quoted) => Body::IcmpError {
            icmp_type: icmp_type.0,
            code: icmp.get_icmp_code().0,
            quoted,
        },
        None => other,
    }
}

fn parse_quoted(quote: &[u8]) -> Option<QuotedFlow> {
    let ip = Ipv4Packet::new(quote)?;
    let header_len = usize::from(ip.get_header_length()) * 4;
    let ports = quote.get(header_len..header_len + 4)?;
    let proto = match ip.get_next_level_protocol() {
        IpNextHeaderProtocols::Tcp => Protocol::Tcp,
        IpNextHeaderProtocols::Udp => Protocol::Udp,
        _ => return None,
    };
    let src_port = u16::from_be_bytes([ports[0], ports[1]]);
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    Some(QuotedFlow {
        proto,
        src: SocketAddrV4::new(ip.get_source(), src_port),
        dst: SocketAddrV4::new(ip.get_destination(), dst_port),
    })
}

/// Copies a packet (trimmed to its IPv4 total length), rewrites source and/or
/// destination endpoint, decrements the TTL and recomputes every checksum.
///
/// `summary` must come from [`parse`] of the same bytes and describe TCP or UDP.
pub fn rewrite(
    packet: &[u8],
    summary: &Summary,
    new_src: Option<SocketAddrV4>,
    new_dst: Option<SocketAddrV4>,
) -> Vec<u8> {
    let mut out = packet[..summary.total_len].to_vec();
    let (header, transport) = out.split_at_mut(summary.header_len);
    let src = new_src.map_or(summary.src, |e| *e.ip());
    let dst = new_dst.map_or(summary.dst, |e| *e.ip());
    match summary.body {
        Body::Tcp { .. } => {
            let mut tcp = MutableTcpPacket::new(transport).expect("parsed as TCP");
            if let Some(e) = new_src {
                tcp.set_source(e.port());
            }
            if let Some(e) = new_dst {
                tcp.set_destination(e.port());
            }
            tcp.set_checksum(0);
            let sum = tcp::ipv4_checksum(&tcp.to_immutable(), &src, &dst);
            tcp.set_checksum(sum);
        }
        Body::Udp { .. } => {
            let mut udp = MutableUdpPacket::new(transport).expect("parsed as UDP");
            if let Some(e) = new_src {
                udp.set_source(e.port());
            }
            if let Some(e) = new_dst {
                udp.set_destination(e.port());
            }
            // A zero UDP checksum means "none" (RFC 768): keep it that way.
            if udp.get_checksum() != 0 {
                udp.set_checksum(0);
                let sum = udp::ipv4_checksum(&udp.to_immutable(), &src, &dst);
                udp.set_checksum(if sum == 0 { 0xffff } else { sum });
            }
        }
        _ => {}
    }
    finish_ip_header(header, Some(src), Some(dst), summary.ttl - 1);
    out
}

/// Copies a packet unchanged but for a decremented TTL (a router without translation).
pub fn forward(packet: &[u8], summary: &Summary) -> Vec<u8> {
    let mut out = packet[..summary.total_len].to_vec();
    finish_ip_header(&mut out[..summary.header_len], None, None, summary.ttl - 1);
    out
}

/// Translates an ICMP error arriving from the WAN about a mapped flow: the outer
/// destination and the quoted source (the public endpoint) become `internal`.
///
/// The quoted transport checksum is left as it is: only 8 bytes of it are
/// quoted in general, and kernels do not verify it.
pub fn rewrite_icmp_error_inbound(
    packet: &[u8],
    summary: &Summary,
    internal: SocketAddrV4,
) -> Vec<u8> {
    let mut out = packet[..summary.total_len].to_vec();
    let (header, icmp_bytes) = out.split_at_mut(summary.header_len);
    let quote = &mut icmp_bytes[8..];
    let quoted_header_len = usize::from(quote[0] & 0x0f) * 4;
    quote[12..16].copy_from_slice(&internal.ip().octets());
    quote[quoted_header_len..quoted_header_len + 2].copy_from_slice(&internal.port().to_be_bytes());
    // The quoted header's own checksum covers the header only.
    let quoted_header = &mut quote[..quoted_header_len];
    quoted_header[10..12].copy_from_slice(&[0, 0]);
    let sum = ipv4::checksum(&Ipv4Packet::new(quoted_header).expect("quoted header"));
    quoted_header[10..12].copy_from_slice(&sum.to_be_bytes());
    {
        let mut icmp = MutableIcmpPacket::new(icmp_bytes).expect("parsed as ICMP");
        icmp.set_checksum(0);
        let sum = icmp::checksum(&icmp.to_immutable());
        icmp.set_checksum(sum);
    }
    finish_ip_header(header, None, Some(*internal.ip()), summary.ttl - 1);
    out
}

fn finish_ip_header(header: &mut [u8], src: Option<Ipv4Addr>, dst: Option<Ipv4Addr>, ttl: u8) {
    let mut ip = MutableIpv4Packet::new(header).expect("IPv4 header");
    if let Some(src) = src {
        ip.set_source(src);
    }
    if let Some(dst) = dst {
        ip.set_destination(dst);
    }
    ip.set_ttl(ttl);
    ip.set_checksum(0);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
}

/// A TCP RST|ACK answering a SYN, as a router's `reject with tcp reset` sends it.
///
/// It appears to come from the endpoint the SYN was sent to, and acknowledges
/// the SYN so the sender's kernel accepts it (RFC 9293 section 3.10.7.3).
pub fn tcp_reset_for(syn: &Summary) -> Vec<u8> {
    let Body::Tcp {
        src_port,
        dst_port,
        seq,
        payload_len,
        ..
    } = syn.body
    else {
        unreachable!("tcp_reset_for called on a non-TCP packet")
    };
    let mut out = vec![0u8; 40];
    let (header, transport) = out.split_at_mut(20);
    {
        let mut tcp = MutableTcpPacket::new(transport).expect("20 bytes");
        tcp.set_source(dst_port);
        tcp.set_destination(src_port);
        tcp.set_sequence(0);
        // SYN occupies one sequence number, plus any data it carried.
        tcp.set_acknowledgement(seq.wrapping_add(1).wrapping_add(payload_len as u32));
        tcp.set_data_offset(5);
        tcp.set_flags(TcpFlags::RST | TcpFlags::ACK);
        tcp.set_window(0);
        let sum = tcp::ipv4_checksum(&tcp.to_immutable(), &syn.dst, &syn.src);
        tcp.set_checksum(sum);
    }
    build_ip_header(header, syn.dst, syn.src, IpNextHeaderProtocols::Tcp.0, 40);
    out
}

/// An ICMP error about `offending`, sent from `from` to the offending packet's source.
///
/// `icmp_type`/`code`: 3/3 port unreachable, 11/0 TTL exceeded in transit.
pub fn icmp_error_for(
    offending: &[u8],
    summary: &Summary,
    from: Ipv4Addr,
    icmp_type: u8,
    code: u8,
) -> Vec<u8> {
    let quote_len = (summary.header_len + ICMP_QUOTE_PAYLOAD).min(summary.total_len);
    let total = 20 + 8 + quote_len;
    let mut out = vec![0u8; total];
    let (header, icmp_bytes) = out.split_at_mut(20);
    icmp_bytes[8..].copy_from_slice(&offending[..quote_len]);
    {
        let mut icmp = MutableIcmpPacket::new(icmp_bytes).expect("ICMP buffer");
        icmp.set_icmp_type(icmp::IcmpType(icmp_type));
        icmp.set_icmp_code(icmp::IcmpCode(code));
        let sum = icmp::checksum(&icmp.to_immutable());
        icmp.set_checksum(sum);
    }
    build_ip_header(
        header,
        from,
        summary.src,
        IpNextHeaderProtocols::Icmp.0,
        total as u16,
    );
    out
}

/// The payload of a UDP datagram [`parse`] accepted (empty for any other
/// packet), bounded by both the IP and the UDP lengths.
pub fn udp_payload<'a>(packet: &'a [u8], summary: &Summary) -> &'a [u8] {
    if !matches!(summary.body, Body::Udp { .. }) {
        return &[];
    }
    let start = summary.header_len + 8;
    let udp_len = packet
        .get(summary.header_len + 4..summary.header_len + 6)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let end = (summary.header_len + udp_len)
        .min(summary.total_len)
        .min(packet.len());
    packet.get(start..end).unwrap_or(&[])
}

/// ICMP type 3 code 3.
pub const ICMP_PORT_UNREACHABLE: (u8, u8) = (3, 3);
/// ICMP type 11 code 0.
pub const ICMP_TTL_EXCEEDED: (u8, u8) = (11, 0);

fn build_ip_header(header: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total: u16) {
    let mut ip = MutableIpv4Packet::new(header).expect("20 bytes");
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length(total);
    ip.set_flags(0b010); // don't fragment
    ip.set_ttl(ORIGINATED_TTL);
    ip.set_next_level_protocol(pnet_packet::ip::IpNextHeaderProtocol(protocol));
    ip.set_source(src);
    ip.set_destination(dst);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
}

/// TCP flags as a short string for logs: "S", "SA", "R", "RA", "F", "FA", "A", "PA".
pub fn flags_text(flags: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (TcpFlags::SYN, 'S'),
        (TcpFlags::FIN, 'F'),
        (TcpFlags::RST, 'R'),
        (TcpFlags::PSH, 'P'),
        (TcpFlags::ACK, 'A'),
    ] {
        if flags & bit != 0 {
            s.push(c);
        }
    }
    s
}

/// Builds test packets; also used by the benchmark.
pub mod build {
    use super::*;

    /// A TCP segment with the given flags, TTL and payload, checksums correct.
    pub fn tcp(
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
        ttl: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        tcp_with_seq(src, dst, flags, ttl, 1000, payload)
    }

    /// As [`tcp`], with the given sequence number.
    pub fn tcp_with_seq(
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
        ttl: u8,
        seq: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut out = vec![0u8; total];
        let (header, transport) = out.split_at_mut(20);
        {
            let mut tcp = MutableTcpPacket::new(transport).expect("buffer");
            tcp.set_source(src.port());
            tcp.set_destination(dst.port());
            tcp.set_sequence(seq);
            tcp.set_acknowledgement(if flags & TcpFlags::ACK != 0 { 1 } else { 0 });
            tcp.set_data_offset(5);
            tcp.set_flags(flags);
            tcp.set_window(65535);
            tcp.set_payload(payload);
            let sum = tcp::ipv4_checksum(&tcp.to_immutable(), src.ip(), dst.ip());
            tcp.set_checksum(sum);
        }
        build_ip_header(
            header,
            *src.ip(),
            *dst.ip(),
            IpNextHeaderProtocols::Tcp.0,
            total as u16,
        );
        MutableIpv4Packet::new(header).expect("header").set_ttl(ttl);
        refresh_ip_checksum(&mut out);
        out
    }

    /// A UDP datagram with a checksum.
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut out = vec![0u8; total];
        let (header, transport) = out.split_at_mut(20);
        {
            let mut udp = MutableUdpPacket::new(transport).expect("buffer");
            udp.set_source(src.port());
            udp.set_destination(dst.port());
            udp.set_length((8 + payload.len()) as u16);
            udp.set_payload(payload);
            let sum = udp::ipv4_checksum(&udp.to_immutable(), src.ip(), dst.ip());
            udp.set_checksum(sum);
        }
        build_ip_header(
            header,
            *src.ip(),
            *dst.ip(),
            IpNextHeaderProtocols::Udp.0,
            total as u16,
        );
        MutableIpv4Packet::new(header).expect("header").set_ttl(ttl);
        refresh_ip_checksum(&mut out);
        out
    }

    fn refresh_ip_checksum(packet: &mut [u8]) {
        let mut ip = MutableIpv4Packet::new(&mut packet[..20]).expect("header");
        ip.set_checksum(0);
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
    }
}
