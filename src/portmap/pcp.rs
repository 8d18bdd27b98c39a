//! PCP (RFC 6887) messages: MAP and ANNOUNCE requests encoded, answers parsed strictly and boundedly, and the epoch check of section 8.5. Sans-io.
//!
//! The probe asks for TCP mappings of its own address only (no THIRD_PARTY
//! option), with no options at all; options in answers are walked with
//! every length checked and otherwise ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::WireError;

/// PCP's version number.
pub const VERSION: u8 = 2;
pub const OP_ANNOUNCE: u8 = 0;
pub const OP_MAP: u8 = 1;
/// IANA protocol number of TCP, what the probe maps.
pub const PROTOCOL_TCP: u8 = 6;
/// Every PCP message starts with this header.
pub const HEADER_LEN: usize = 24;
/// The MAP opcode's data after the header.
pub const MAP_LEN: usize = 36;
/// The largest PCP message (section 7).
pub const MAX_MESSAGE: usize = 1100;
/// A NAT-PMP gateway answers a PCP request with its own UNSUPP_VERSION
/// answer, 8 to 16 bytes long (RFC 6887 section 9).
const NATPMP_ANSWER: std::ops::RangeInclusive<usize> = 8..=16;
const ANSWER_BIT: u8 = 0x80;

/// Result codes of RFC 6887 section 7.4, by name.
pub fn result_name(code: u8) -> String {
    match code {
        0 => "success",
        1 => "unsupported_version",
        2 => "not_authorized",
        3 => "malformed_request",
        4 => "unsupported_opcode",
        5 => "unsupported_option",
        6 => "malformed_option",
        7 => "network_failure",
        8 => "no_resources",
        9 => "unsupported_protocol",
        10 => "user_exceeded_quota",
        11 => "cannot_provide_external",
        12 => "address_mismatch",
        13 => "excessive_remote_peers",
        _ => return format!("unknown_{code}"),
    }
    .to_string()
}

/// Addresses travel as 16 bytes, IPv4 as IPv4-mapped IPv6 (section 5).
fn address_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn header(opcode: u8, lifetime_s: u32, client: IpAddr) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + MAP_LEN);
    m.push(VERSION);
    m.push(opcode);
    m.extend([0, 0]);
    m.extend(lifetime_s.to_be_bytes());
    m.extend(address_bytes(client));
    m
}

/// What a MAP request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// Random, the same for a mapping's creation, renewals and deletion.
    pub nonce: [u8; 12],
    /// The address the request leaves from (the gateway compares it with
    /// the packet's source: ADDRESS_MISMATCH behind another NAT).
    pub client: IpAddr,
    pub internal_port: u16,
    /// 0 for no preference.
    pub suggested_external_port: u16,
    /// 0 deletes the mapping.
    pub lifetime_s: u32,
}

/// A MAP request for TCP (sections 11.1, 11.3; lifetime 0 is a deletion,
/// section 15). No preferred external address: the all-zeros address of the
/// client's family.
pub fn map_request(request: &MapRequest) -> Vec<u8> {
    let mut m = header(OP_MAP, request.lifetime_s, request.client);
    m.extend(request.nonce);
    m.push(PROTOCOL_TCP);
    m.extend([0, 0, 0]);
    m.extend(request.internal_port.to_be_bytes());
    m.extend(request.suggested_external_port.to_be_bytes());
    let any = match request.client {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    m.extend(address_bytes(any));
    m
}

/// An ANNOUNCE request (section 14.1): the header alone, lifetime 0.
pub fn announce_request(client: IpAddr) -> Vec<u8> {
    header(OP_ANNOUNCE, 0, client)
}

/// A parsed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A PCP answer.
    Pcp(PcpAnswer),
    /// A NAT-PMP gateway's "unsupported version" answer: it speaks only NAT-PMP.
    NatPmpOnly { result_code: u16 },
}

/// A PCP answer's header and, for MAP, its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcpAnswer {
    pub opcode: u8,
    pub result_code: u8,
    /// Granted lifetime on success; on an error, how long the error holds.
    pub lifetime_s: u32,
    /// Seconds since the server's state began (section 8.5).
    pub epoch_s: u32,
    pub map: Option<MapAnswer>,
}

/// The MAP data of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapAnswer {
    pub nonce: [u8; 12],
    pub protocol: u8,
    pub internal_port: u16,
    pub external_port: u16,
    /// IPv4 addresses come back as plain IPv4 (unmapped).
    pub external_ip: IpAddr,
}

/// Parses one datagram from the server. Lengths are checked before every
/// read; nothing panics on any input. Whether a MAP answer is *ours*
/// (nonce, port, protocol) is [`MapAnswer::check`]'s job.
pub fn parse_answer(bytes: &[u8]) -> Result<Answer, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MAX_MESSAGE,
        });
    }
    if bytes.first() == Some(&super::natpmp::VERSION) && NATPMP_ANSWER.contains(&bytes.len()) {
        let result_code = u16::from_be_bytes([bytes[2], bytes[3]]);
        if bytes[1] >= ANSWER_BIT && result_code == 1 {
            return Ok(Answer::NatPmpOnly { result_code });
        }
    }
    if bytes.len() < HEADER_LEN {
        return Err(WireError::Short {
            len: bytes.len(),
            min: HEADER_LEN,
        });
    }
    if bytes.len() % 4 != 0 {
        return Err(WireError::Misaligned { len: bytes.len() });
    }
    if bytes[0] != VERSION {
        return Err(WireError::Version {
            found: bytes[0],
            expected: VERSION,
        });
    }
    if bytes[1] & ANSWER_BIT == 0 {
        return Err(WireError::NotAnAnswer);
    }
    let opcode = bytes[1] & !ANSWER_BIT;
    let result_code = bytes[3];
    let lifetime_s = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let epoch_s = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let (map, options) = match opcode {
        OP_ANNOUNCE => (None, &bytes[HEADER_LEN..]),
        OP_MAP => {
            let end = HEADER_LEN + MAP_LEN;
            if bytes.len() < end {
                return Err(WireError::Short {
                    len: bytes.len(),
                    min: end,
                });
            }
            let d = &bytes[HEADER_LEN..end];
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&d[..12]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&d[20..36]);
            let map = MapAnswer {
                nonce,
                protocol: d[12],
                internal_port: u16::from_be_bytes([d[16], d[17]]),
                external_port: u16::from_be_bytes([d[18], d[19]]),
                external_ip: IpAddr::V6(Ipv6Addr::from(ip)).to_canonical(),
            };
            (Some(map), &bytes[end..])
        }
        other => return Err(WireError::UnknownOpcode { found: other }),
    };
    check_options(options)?;
    Ok(Answer::Pcp(PcpAnswer {
        opcode,
        result_code,
        lifetime_s,
        epoch_s,
        map,
    }))
}

/// Walks the options after the opcode data: 4-byte headers, lengths within
/// the datagram, data padded to 4 bytes (section 7.3).
fn check_options(mut rest: &[u8]) -> Result<(), WireError> {
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(WireError::BadOption {
                why: "an option header is cut short",
            });
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = len.div_ceil(4) * 4;
        if 4 + padded > rest.len() {
            return Err(WireError::BadOption {
                why: "an option is longer than the answer",
            });
        }
        rest = &rest[4 + padded..];
    }
    Ok(())
}

impl MapAnswer {
    /// Whether this answer is to our MAP request (section 11.4: nonce,
    /// protocol and internal port must all match).
    pub fn check(&self, request: &MapRequest) -> Result<(), WireError> {
        if self.nonce != request.nonce {
            return Err(WireError::Nonce);
        }
        if self.protocol != PROTOCOL_TCP {
            return Err(WireError::Protocol {
                found: self.protocol,
            });
        }
        if self.internal_port != request.internal_port {
            return Err(WireError::InternalPort {
                found: self.internal_port,
                expected: request.internal_port,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));

    fn request() -> MapRequest {
        MapRequest {
            nonce: *b"nonce-twelve",
            client: CLIENT,
            internal_port: 8333,
            suggested_external_port: 8333,
            lifetime_s: 120,
        }
    }

    /// An answer as a server builds it: the request's MAP data with the
    /// assigned port and address.
    pub(crate) fn map_answer(
        request: &MapRequest,
        result: u8,
        lifetime: u32,
        epoch: u32,
        external: (Ipv4Addr, u16),
    ) -> Vec<u8> {
        let mut m = map_request(request);
        m[1] = OP_MAP | ANSWER_BIT;
        m[2] = 0;
        m[3] = result;
        m[4..8].copy_from_slice(&lifetime.to_be_bytes());
        m[8..12].copy_from_slice(&epoch.to_be_bytes());
        m[12..24].fill(0);
        m[42..44].copy_from_slice(&external.1.to_be_bytes());
        m[44..60].copy_from_slice(&external.0.to_ipv6_mapped().octets());
        m
    }

    #[test]
    fn a_map_request_is_sixty_bytes_laid_out_as_section_11_says() {
        let m = map_request(&request());
        assert_eq!(m.len(), HEADER_LEN + MAP_LEN);
        assert_eq!(&m[..4], &[2, 1, 0, 0]);
        assert_eq!(&m[4..8], &120u32.to_be_bytes());
        assert_eq!(
            &m[8..24],
            &Ipv4Addr::new(192, 168, 1, 2).to_ipv6_mapped().octets()
        );
        assert_eq!(&m[24..36], b"nonce-twelve");
        assert_eq!(&m[36..40], &[6, 0, 0, 0]);
        assert_eq!(&m[40..44], &[0x20, 0x8d, 0x20, 0x8d]);
        assert_eq!(&m[44..60], &Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
        let announce = announce_request(CLIENT);
        assert_eq!(announce.len(), HEADER_LEN);
        assert_eq!(&announce[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_granted_mapping_parses_and_is_checked_against_the_request() {
        let r = request();
        let bytes = map_answer(&r, 0, 60, 1000, (Ipv4Addr::new(203, 0, 113, 2), 40000));
        let Answer::Pcp(answer) = parse_answer(&bytes).unwrap() else {
            panic!("a PCP answer")
        };
        assert_eq!(
            (
                answer.opcode,
                answer.result_code,
                answer.lifetime_s,
                answer.epoch_s
            ),
            (OP_MAP, 0, 60, 1000)
        );
        let map = answer.map.unwrap();
        assert_eq!(map.external_ip, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)));
        assert_eq!(map.external_port, 40000);
        assert_eq!(map.check(&r), Ok(()));
        let other = MapRequest {
            nonce: *b"someone-else",
            ..r
        };
        assert_eq!(map.check(&other), Err(WireError::Nonce));
        let other_port = MapRequest {
            internal_port: 9000,
            ..r
        };
        assert!(matches!(
            map.check(&other_port),
            Err(WireError::InternalPort { found: 8333, .. })
        ));
        let mut udp = bytes.clone();
        udp[36] = 17;
        let Answer::Pcp(udp) = parse_answer(&udp).unwrap() else {
            panic!()
        };
        assert_eq!(
            udp.map.unwrap().check(&r),
            Err(WireError::Protocol { found: 17 })
        );
        assert_eq!(result_name(2), "not_authorized");
        assert_eq!(result_name(200), "unknown_200");
    }

    #[test]
    fn a_natpmp_gateway_says_it_speaks_only_natpmp() {
        assert_eq!(
            parse_answer(&[0, 129, 0, 1, 0, 0, 0, 9]),
            Ok(Answer::NatPmpOnly { result_code: 1 })
        );
        // Another version-0 answer is not one we understand.
        assert!(matches!(
            parse_answer(&[0, 129, 0, 0, 0, 0, 0, 9]),
            Err(WireError::Short { .. })
        ));
    }

    #[test]
    fn options_are_walked_within_the_answer() {
        let r = request();
        let mut bytes = map_answer(&r, 0, 60, 1, (Ipv4Addr::new(203, 0, 113, 2), 1));
        // A PREFER_FAILURE-like option with no data, then one with 5 bytes padded to 8.
        bytes.extend([2, 0, 0, 0, 1, 0, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0]);
        assert!(parse_answer(&bytes).is_ok());
        let mut long = map_answer(&r, 0, 60, 1, (Ipv4Addr::new(203, 0, 113, 2), 1));
        long.extend([1, 0, 0, 200, 0, 0, 0, 0]);
        assert!(matches!(
            parse_answer(&long),
            Err(WireError::BadOption { .. })
        ));
    }

    #[test]
    fn every_malformed_answer_is_an_error_never_a_panic() {
        let r = request();
        let good = map_answer(&r, 0, 60, 1, (Ipv4Addr::new(203, 0, 113, 2), 40000));
        assert!(matches!(
            parse_answer(&good[..20]),
            Err(WireError::Short { len: 20, .. })
        ));
        assert!(matches!(
            parse_answer(&good[..40]),
            Err(WireError::Short { len: 40, min: 60 })
        ));
        assert!(matches!(
            parse_answer(&good[..58]),
            Err(WireError::Misaligned { len: 58 })
        ));
        assert!(matches!(
            parse_answer(&vec![2u8; MAX_MESSAGE + 4]),
            Err(WireError::Oversized { .. })
        ));
        let mut request_echo = good.clone();
        request_echo[1] = OP_MAP;
        assert_eq!(parse_answer(&request_echo), Err(WireError::NotAnAnswer));
        let mut peer = good.clone();
        peer[1] = 2 | ANSWER_BIT;
        assert_eq!(
            parse_answer(&peer),
            Err(WireError::UnknownOpcode { found: 2 })
        );
        let mut v1 = good.clone();
        v1[0] = 1;
        assert!(matches!(
            parse_answer(&v1),
            Err(WireError::Version { found: 1, .. })
        ));
        for len in 0..=good.len() {
            let _ = parse_answer(&good[..len]);
        }
        for i in 0..good.len() {
            for value in [0u8, 1, 2, 127, 128, 129, 255] {
                let mut bad = good.clone();
                bad[i] = value;
                let _ = parse_answer(&bad);
            }
        }
    }
}
