//! NAT-PMP (RFC 6886) messages: requests encoded, answers parsed strictly and boundedly. Sans-io.
//!
//! Only what the probe needs: the external address request (opcode 0), the
//! TCP mapping request (opcode 2) and its deletion (lifetime 0, suggested
//! external port 0, RFC 6886 section 3.4).

use std::net::Ipv4Addr;

use super::WireError;

/// NAT-PMP's version number.
pub const VERSION: u8 = 0;
/// Opcode of the external address request.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode of a TCP mapping request.
pub const OP_MAP_TCP: u8 = 2;
/// Answers carry the request's opcode plus this.
const ANSWER_BIT: u8 = 128;
/// The longest answer NAT-PMP defines (a mapping answer); anything longer is refused.
pub const MAX_ANSWER: usize = 16;
/// Every answer has at least version, opcode, result code and epoch.
const MIN_ANSWER: usize = 8;

/// Result codes of RFC 6886 section 3.5, by name.
pub fn result_name(code: u16) -> String {
    match code {
        0 => "success",
        1 => "unsupported_version",
        2 => "not_authorized",
        3 => "network_failure",
        4 => "out_of_resources",
        5 => "unsupported_opcode",
        _ => return format!("unknown_{code}"),
    }
    .to_string()
}

/// The external address request: two bytes.
pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// A TCP mapping request for `internal_port` (RFC 6886 section 3.3).
pub fn map_request(internal_port: u16, suggested_external_port: u16, lifetime_s: u32) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = VERSION;
    m[1] = OP_MAP_TCP;
    // m[2..4] reserved, zero.
    m[4..6].copy_from_slice(&internal_port.to_be_bytes());
    m[6..8].copy_from_slice(&suggested_external_port.to_be_bytes());
    m[8..12].copy_from_slice(&lifetime_s.to_be_bytes());
    m
}

/// The deletion of the TCP mapping of `internal_port`: lifetime 0 and
/// suggested external port 0, as section 3.4 requires.
pub fn delete_request(internal_port: u16) -> [u8; 12] {
    map_request(internal_port, 0, 0)
}

/// The part every answer shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerHeader {
    /// The request opcode this answers (without the answer bit).
    pub opcode: u8,
    pub result_code: u16,
    /// Seconds since the gateway's port mapping table was (re)initialised.
    pub epoch_s: u32,
}

/// An answer, parsed: a non-success answer may stop after its header
/// (gateways send 8-byte error answers), so the body is only there on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    ExternalAddress {
        header: AnswerHeader,
        external: Option<Ipv4Addr>,
    },
    Map {
        header: AnswerHeader,
        /// Internal port, external port and lifetime, when the answer carries them.
        mapping: Option<MapBody>,
    },
}

/// The body of a mapping answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBody {
    pub internal_port: u16,
    pub external_port: u16,
    pub lifetime_s: u32,
}

impl Answer {
    pub fn header(&self) -> AnswerHeader {
        match self {
            Answer::ExternalAddress { header, .. } | Answer::Map { header, .. } => *header,
        }
    }
}

/// Parses an answer to a request of `expected_opcode`. Every length is
/// checked before it is read; nothing panics on any input.
pub fn parse_answer(bytes: &[u8], expected_opcode: u8) -> Result<Answer, WireError> {
    if bytes.len() > MAX_ANSWER {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: MAX_ANSWER,
        });
    }
    if bytes.len() < MIN_ANSWER {
        return Err(WireError::Short {
            len: bytes.len(),
            min: MIN_ANSWER,
        });
    }
    if bytes[0] != VERSION {
        return Err(WireError::Version {
            found: bytes[0],
            expected: VERSION,
        });
    }
    if bytes[1] < ANSWER_BIT {
        return Err(WireError::NotAnAnswer);
    }
    let opcode = bytes[1] - ANSWER_BIT;
    if opcode != expected_opcode {
        return Err(WireError::Opcode {
            found: opcode,
            expected: expected_opcode,
        });
    }
    let header = AnswerHeader {
        opcode,
        result_code: u16::from_be_bytes([bytes[2], bytes[3]]),
        epoch_s: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    };
    let body = &bytes[MIN_ANSWER..];
    let success = header.result_code == 0;
    match opcode {
        OP_EXTERNAL_ADDRESS => {
            let external = match body {
                [a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
                [] if !success => None,
                _ => {
                    return Err(WireError::Length {
                        len: bytes.len(),
                        expected: 12,
                    })
                }
            };
            Ok(Answer::ExternalAddress { header, external })
        }
        _ => {
            let mapping = match body.len() {
                8 => Some(MapBody {
                    internal_port: u16::from_be_bytes([body[0], body[1]]),
                    external_port: u16::from_be_bytes([body[2], body[3]]),
                    lifetime_s: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                }),
                0 if !success => None,
                _ => {
                    return Err(WireError::Length {
                        len: bytes.len(),
                        expected: 16,
                    })
                }
            };
            Ok(Answer::Map { header, mapping })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_answer(result: u16, epoch: u32, internal: u16, external: u16, life: u32) -> Vec<u8> {
        let mut m = vec![0, 130];
        m.extend(result.to_be_bytes());
        m.extend(epoch.to_be_bytes());
        m.extend(internal.to_be_bytes());
        m.extend(external.to_be_bytes());
        m.extend(life.to_be_bytes());
        m
    }

    #[test]
    fn requests_are_laid_out_as_the_rfc_draws_them() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_request(8333, 8333, 7200),
            [0, 2, 0, 0, 0x20, 0x8d, 0x20, 0x8d, 0, 0, 0x1c, 0x20]
        );
        assert_eq!(
            delete_request(8333),
            [0, 2, 0, 0, 0x20, 0x8d, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_granted_mapping_and_an_external_address_parse() {
        let answer = parse_answer(&map_answer(0, 77, 8333, 40000, 3600), OP_MAP_TCP).unwrap();
        assert_eq!(
            answer,
            Answer::Map {
                header: AnswerHeader {
                    opcode: 2,
                    result_code: 0,
                    epoch_s: 77
                },
                mapping: Some(MapBody {
                    internal_port: 8333,
                    external_port: 40000,
                    lifetime_s: 3600
                })
            }
        );
        let external = [0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 2];
        assert_eq!(
            parse_answer(&external, OP_EXTERNAL_ADDRESS).unwrap(),
            Answer::ExternalAddress {
                header: AnswerHeader {
                    opcode: 0,
                    result_code: 0,
                    epoch_s: 9
                },
                external: Some(Ipv4Addr::new(203, 0, 113, 2))
            }
        );
    }

    #[test]
    fn short_error_answers_are_answers_and_short_successes_are_not() {
        let refused = [0, 130, 0, 2, 0, 0, 0, 5];
        let answer = parse_answer(&refused, OP_MAP_TCP).unwrap();
        assert_eq!(answer.header().result_code, 2);
        assert_eq!(result_name(2), "not_authorized");
        assert_eq!(result_name(77), "unknown_77");
        let short_success = [0, 130, 0, 0, 0, 0, 0, 5];
        assert_eq!(
            parse_answer(&short_success, OP_MAP_TCP),
            Err(WireError::Length {
                len: 8,
                expected: 16
            })
        );
    }

    #[test]
    fn every_malformed_answer_is_an_error_never_a_panic() {
        let good = map_answer(0, 1, 8333, 8333, 60);
        assert!(matches!(
            parse_answer(&good[..5], OP_MAP_TCP),
            Err(WireError::Short { len: 5, .. })
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            parse_answer(&long, OP_MAP_TCP),
            Err(WireError::Oversized { len: 17, .. })
        ));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert!(matches!(
            parse_answer(&v2, OP_MAP_TCP),
            Err(WireError::Version { found: 2, .. })
        ));
        let mut request = good.clone();
        request[1] = 2;
        assert_eq!(
            parse_answer(&request, OP_MAP_TCP),
            Err(WireError::NotAnAnswer)
        );
        let mut udp = good.clone();
        udp[1] = 129;
        assert!(matches!(
            parse_answer(&udp, OP_MAP_TCP),
            Err(WireError::Opcode { found: 1, .. })
        ));
        assert!(matches!(
            parse_answer(&good[..12], OP_MAP_TCP),
            Err(WireError::Length { len: 12, .. })
        ));
        // Every prefix and every single-byte corruption of a good answer parses or errs.
        for len in 0..=good.len() {
            let _ = parse_answer(&good[..len], OP_MAP_TCP);
        }
        for i in 0..good.len() {
            for value in [0u8, 1, 127, 128, 255] {
                let mut bad = good.clone();
                bad[i] = value;
                let _ = parse_answer(&bad, OP_MAP_TCP);
                let _ = parse_answer(&bad, OP_EXTERNAL_ADDRESS);
            }
        }
    }
}
