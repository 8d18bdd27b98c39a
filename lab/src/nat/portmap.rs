//! The emulator router's port mapping service: a sans-io PCP (RFC 6887) and NAT-PMP (RFC 6886) server on the router's LAN address, granting mappings in the emulator's own table.
//!
//! A router with `portmap = ["natpmp", "pcp"]` answers on its gateway
//! address, port 5351, as miniupnpd does on a kernel router: a MAP request
//! opens an explicit mapping (it admits anyone until its lifetime ends), a
//! lifetime of 0 deletes it, and each change is a `port_map` event in the
//! lab's log, the same event kind kernel routers report from miniupnpd's
//! log. `portmap_refuse` answers every request NOT_AUTHORIZED with the same
//! answer the kernel routers' refusing responder gives
//! ([`crate::kernel::portmap::refusal`]).
//!
//! The server keeps what the RFCs ask of it and no more: the PCP client
//! address must be the packet's source (ADDRESS_MISMATCH otherwise), a
//! mapping belongs to the nonce that made it (another nonce is
//! NOT_AUTHORIZED), lifetimes are held within the router's bounds, ports
//! outside the router's allowed range are NOT_AUTHORIZED, and the epoch
//! counts seconds since the service first answered.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::kernel::portmap::{refusal, PortmapChange, PortmapEvent, PortmapProtocol, PortmapSpec};

use super::packet::Protocol;

/// The port PCP and NAT-PMP servers listen on.
pub const PORT: u16 = 5351;

const NATPMP_VERSION: u8 = 0;
const PCP_VERSION: u8 = 2;
const ANSWER_BIT: u8 = 0x80;
const PCP_HEADER: usize = 24;
const PCP_MAP_LEN: usize = 36;
/// RFC 6887 section 7: a PCP message is at most 1100 bytes.
const PCP_MAX: usize = 1100;
const PCP_OP_ANNOUNCE: u8 = 0;
const PCP_OP_MAP: u8 = 1;

/// PCP result codes (RFC 6887 section 7.4) this server gives.
mod pcp_result {
    pub const SUCCESS: u8 = 0;
    pub const UNSUPP_VERSION: u8 = 1;
    pub const NOT_AUTHORIZED: u8 = 2;
    pub const MALFORMED_REQUEST: u8 = 3;
    pub const UNSUPP_OPCODE: u8 = 4;
    pub const NO_RESOURCES: u8 = 8;
    pub const UNSUPP_PROTOCOL: u8 = 9;
    pub const ADDRESS_MISMATCH: u8 = 12;
}

/// NAT-PMP result codes (RFC 6886 section 3.5).
mod natpmp_result {
    pub const SUCCESS: u16 = 0;
    pub const NOT_AUTHORIZED: u16 = 2;
    pub const OUT_OF_RESOURCES: u16 = 4;
    pub const UNSUPPORTED_OPCODE: u16 = 5;
}

/// How long an error answer says it holds (RFC 6887 section 7.4: short for NO_RESOURCES, long otherwise).
const SHORT_ERROR_S: u32 = 30;
const LONG_ERROR_S: u32 = 1800;

/// What the service asks of the router's mapping table.
pub trait MappingTable {
    /// Opens or renews an explicit mapping until `until`; the external port, or `None` when none is free.
    fn map(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
        suggested: Option<u16>,
        until: Instant,
    ) -> Option<u16>;
    /// Ends the explicit mapping of `internal`; the port it had, if any.
    fn unmap(&mut self, proto: Protocol, internal: SocketAddrV4) -> Option<u16>;
}

/// One router's PCP and NAT-PMP service.
#[derive(Debug)]
pub struct Responder {
    spec: PortmapSpec,
    public_ip: Ipv4Addr,
    /// When the service first answered: its epoch's zero.
    started: Option<Instant>,
    /// The PCP nonce that owns each mapping (NAT-PMP mappings have none).
    owners: HashMap<(Protocol, SocketAddrV4), Owner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Pcp([u8; 12]),
    NatPmp,
}

/// The answer to one request and the mapping changes it made.
#[derive(Debug, Default, PartialEq)]
pub struct Handled {
    /// The datagram to send back to the client, if the request deserves one.
    pub answer: Option<Vec<u8>>,
    pub events: Vec<PortmapEvent>,
}

impl Responder {
    pub fn new(spec: PortmapSpec, public_ip: Ipv4Addr) -> Self {
        Self {
            spec,
            public_ip,
            started: None,
            owners: HashMap::new(),
        }
    }

    /// Handles one request datagram from `client` at `now`.
    pub fn handle(
        &mut self,
        request: &[u8],
        client: SocketAddrV4,
        now: Instant,
        table: &mut impl MappingTable,
    ) -> Handled {
        let started = *self.started.get_or_insert(now);
        let epoch_s =
            u32::try_from(now.saturating_duration_since(started).as_secs()).unwrap_or(u32::MAX);
        if self.spec.refuse {
            return Handled {
                answer: refusal(request, epoch_s),
                events: Vec::new(),
            };
        }
        match request.first() {
            Some(&NATPMP_VERSION) => self.natpmp(request, client, epoch_s, now, table),
            Some(_) => self.pcp(request, client, epoch_s, now, table),
            None => Handled::default(),
        }
    }

    fn natpmp(
        &mut self,
        request: &[u8],
        client: SocketAddrV4,
        epoch_s: u32,
        now: Instant,
        table: &mut impl MappingTable,
    ) -> Handled {
        let Some(&opcode) = request.get(1) else {
            return Handled::default();
        };
        if opcode & ANSWER_BIT != 0 {
            return Handled::default();
        }
        let header = |result: u16| {
            let mut m = vec![NATPMP_VERSION, ANSWER_BIT | opcode];
            m.extend(result.to_be_bytes());
            m.extend(epoch_s.to_be_bytes());
            m
        };
        let proto = match opcode {
            0 => {
                let mut m = header(natpmp_result::SUCCESS);
                m.extend(self.public_ip.octets());
                return answer_only(m);
            }
            1 => Protocol::Udp,
            2 => Protocol::Tcp,
            _ => return answer_only(header(natpmp_result::UNSUPPORTED_OPCODE)),
        };
        if request.len() < 12 {
            return Handled::default();
        }
        let internal_port = u16::from_be_bytes([request[4], request[5]]);
        let suggested = u16::from_be_bytes([request[6], request[7]]);
        let lifetime_s = u32::from_be_bytes([request[8], request[9], request[10], request[11]]);
        let internal = SocketAddrV4::new(*client.ip(), internal_port);
        let mapped = |result: u16, external_port: u16, lifetime_s: u32| {
            let mut m = header(result);
            m.extend(internal_port.to_be_bytes());
            m.extend(external_port.to_be_bytes());
            m.extend(lifetime_s.to_be_bytes());
            m
        };
        if lifetime_s == 0 {
            // A deletion (RFC 6886 section 3.4); internal port 0 deletes all of the client's mappings.
            let mut events = Vec::new();
            let targets: Vec<SocketAddrV4> = if internal_port == 0 {
                self.owners
                    .keys()
                    .filter(|(p, i)| *p == proto && i.ip() == client.ip())
                    .map(|(_, i)| *i)
                    .collect()
            } else {
                vec![internal]
            };
            for target in targets {
                if let Some(event) = self.unmap(PortmapProtocol::Natpmp, proto, target, table) {
                    events.push(event);
                }
            }
            return Handled {
                answer: Some(mapped(natpmp_result::SUCCESS, 0, 0)),
                events,
            };
        }
        if internal_port == 0 || !self.allowed(internal_port) {
            return answer_only(mapped(natpmp_result::NOT_AUTHORIZED, 0, 0));
        }
        if matches!(self.owners.get(&(proto, internal)), Some(Owner::Pcp(_))) {
            return answer_only(mapped(natpmp_result::NOT_AUTHORIZED, 0, 0));
        }
        let lifetime_s = self.held_lifetime(lifetime_s);
        let suggested = (suggested != 0 && self.allowed(suggested)).then_some(suggested);
        let until = now + Duration::from_secs(u64::from(lifetime_s));
        match table.map(proto, internal, suggested, until) {
            Some(external_port) => {
                self.owners.insert((proto, internal), Owner::NatPmp);
                Handled {
                    answer: Some(mapped(natpmp_result::SUCCESS, external_port, lifetime_s)),
                    events: vec![added(
                        PortmapProtocol::Natpmp,
                        internal,
                        external_port,
                        lifetime_s,
                    )],
                }
            }
            None => answer_only(mapped(natpmp_result::OUT_OF_RESOURCES, 0, 0)),
        }
    }

    fn pcp(
        &mut self,
        request: &[u8],
        client: SocketAddrV4,
        epoch_s: u32,
        now: Instant,
        table: &mut impl MappingTable,
    ) -> Handled {
        // Too short, too long or misaligned: silently dropped (RFC 6887 section 8.3).
        if request.len() < PCP_HEADER || request.len() > PCP_MAX || request.len() % 4 != 0 {
            return Handled::default();
        }
        let opcode = request[1];
        if opcode & ANSWER_BIT != 0 {
            return Handled::default();
        }
        let public_ip = self.public_ip;
        let reply = |result: u8, lifetime_s: u32, external: Option<u16>| {
            pcp_answer(
                request,
                result,
                lifetime_s,
                epoch_s,
                external.map(|port| (port, public_ip)),
            )
        };
        if request[0] != PCP_VERSION {
            return answer_only(reply(pcp_result::UNSUPP_VERSION, LONG_ERROR_S, None));
        }
        let claimed = Ipv6Addr::from(<[u8; 16]>::try_from(&request[8..24]).expect("16 bytes"));
        match opcode {
            PCP_OP_ANNOUNCE => return answer_only(reply(pcp_result::SUCCESS, 0, None)),
            PCP_OP_MAP => {}
            _ => return answer_only(reply(pcp_result::UNSUPP_OPCODE, LONG_ERROR_S, None)),
        }
        if request.len() < PCP_HEADER + PCP_MAP_LEN {
            return answer_only(reply(pcp_result::MALFORMED_REQUEST, LONG_ERROR_S, None));
        }
        if claimed.to_ipv4_mapped() != Some(*client.ip()) {
            return answer_only(reply(pcp_result::ADDRESS_MISMATCH, LONG_ERROR_S, None));
        }
        let map = &request[PCP_HEADER..PCP_HEADER + PCP_MAP_LEN];
        let nonce: [u8; 12] = map[..12].try_into().expect("12 bytes");
        let proto = match map[12] {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return answer_only(reply(pcp_result::UNSUPP_PROTOCOL, LONG_ERROR_S, None)),
        };
        let internal_port = u16::from_be_bytes([map[16], map[17]]);
        let suggested = u16::from_be_bytes([map[18], map[19]]);
        let lifetime_s = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
        if internal_port == 0 {
            return answer_only(reply(pcp_result::MALFORMED_REQUEST, LONG_ERROR_S, None));
        }
        let internal = SocketAddrV4::new(*client.ip(), internal_port);
        let owner = self.owners.get(&(proto, internal)).copied();
        if owner.is_some_and(|o| o != Owner::Pcp(nonce)) {
            // Another client's (or another protocol's) mapping: section 11.3.
            return answer_only(reply(pcp_result::NOT_AUTHORIZED, LONG_ERROR_S, None));
        }
        if lifetime_s == 0 {
            let events = self
                .unmap(PortmapProtocol::Pcp, proto, internal, table)
                .into_iter()
                .collect();
            return Handled {
                answer: Some(reply(pcp_result::SUCCESS, 0, None)),
                events,
            };
        }
        if !self.allowed(internal_port) {
            return answer_only(reply(pcp_result::NOT_AUTHORIZED, LONG_ERROR_S, None));
        }
        let lifetime_s = self.held_lifetime(lifetime_s);
        let suggested = (suggested != 0 && self.allowed(suggested)).then_some(suggested);
        let until = now + Duration::from_secs(u64::from(lifetime_s));
        match table.map(proto, internal, suggested, until) {
            Some(external_port) => {
                self.owners.insert((proto, internal), Owner::Pcp(nonce));
                Handled {
                    answer: Some(reply(pcp_result::SUCCESS, lifetime_s, Some(external_port))),
                    events: vec![added(
                        PortmapProtocol::Pcp,
                        internal,
                        external_port,
                        lifetime_s,
                    )],
                }
            }
            None => answer_only(reply(pcp_result::NO_RESOURCES, SHORT_ERROR_S, None)),
        }
    }

    fn unmap(
        &mut self,
        protocol: PortmapProtocol,
        proto: Protocol,
        internal: SocketAddrV4,
        table: &mut impl MappingTable,
    ) -> Option<PortmapEvent> {
        self.owners.remove(&(proto, internal))?;
        let external_port = table.unmap(proto, internal)?;
        Some(PortmapEvent {
            protocol,
            change: PortmapChange::Removed,
            external_port: Some(external_port),
            internal: Some(internal),
            lifetime_s: None,
        })
    }

    /// The table let an explicit mapping lapse: forget its owner and say
    /// which protocol had made it (`None` when this service did not).
    pub fn lapsed(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
        external_port: u16,
    ) -> Option<PortmapEvent> {
        let protocol = match self.owners.remove(&(proto, internal))? {
            Owner::Pcp(_) => PortmapProtocol::Pcp,
            Owner::NatPmp => PortmapProtocol::Natpmp,
        };
        Some(PortmapEvent {
            protocol,
            change: PortmapChange::Expired,
            external_port: Some(external_port),
            internal: Some(internal),
            lifetime_s: None,
        })
    }

    fn allowed(&self, port: u16) -> bool {
        (self.spec.ports.0..=self.spec.ports.1).contains(&port)
    }

    fn held_lifetime(&self, asked_s: u32) -> u32 {
        asked_s.clamp(self.spec.min_lifetime_s, self.spec.max_lifetime_s)
    }
}

fn answer_only(answer: Vec<u8>) -> Handled {
    Handled {
        answer: Some(answer),
        events: Vec::new(),
    }
}

fn added(
    protocol: PortmapProtocol,
    internal: SocketAddrV4,
    external_port: u16,
    lifetime_s: u32,
) -> PortmapEvent {
    PortmapEvent {
        protocol,
        change: PortmapChange::Added,
        external_port: Some(external_port),
        internal: Some(internal),
        lifetime_s: Some(lifetime_s),
    }
}

/// A PCP answer to `request` (RFC 6887 section 7.2): the request's header
/// and MAP data echoed (options are not answered), the answer bit, result,
/// lifetime and epoch set, reserved bytes zeroed, and for MAP the assigned
/// external port and address (zero when none was assigned).
fn pcp_answer(
    request: &[u8],
    result: u8,
    lifetime_s: u32,
    epoch_s: u32,
    external: Option<(u16, Ipv4Addr)>,
) -> Vec<u8> {
    let opcode = request[1];
    let len = if opcode == PCP_OP_MAP && request.len() >= PCP_HEADER + PCP_MAP_LEN {
        PCP_HEADER + PCP_MAP_LEN
    } else {
        PCP_HEADER
    };
    let mut m = request[..len].to_vec();
    m[0] = PCP_VERSION;
    m[1] = opcode | ANSWER_BIT;
    m[2] = 0;
    m[3] = result;
    m[4..8].copy_from_slice(&lifetime_s.to_be_bytes());
    m[8..12].copy_from_slice(&epoch_s.to_be_bytes());
    m[12..24].fill(0);
    if len > PCP_HEADER {
        let map = &mut m[PCP_HEADER..];
        map[13..16].fill(0);
        let (port, ip) = external.map_or((0, [0u8; 16]), |(port, ip)| {
            (port, ip.to_ipv6_mapped().octets())
        });
        map[18..20].copy_from_slice(&port.to_be_bytes());
        map[20..36].copy_from_slice(&ip);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table that grants the suggested port or counts up from 40000.
    #[derive(Default)]
    struct FakeTable {
        held: HashMap<(Protocol, SocketAddrV4), (u16, Instant)>,
        next: u16,
        full: bool,
    }

    impl MappingTable for FakeTable {
        fn map(
            &mut self,
            proto: Protocol,
            internal: SocketAddrV4,
            suggested: Option<u16>,
            until: Instant,
        ) -> Option<u16> {
            if self.full {
                return None;
            }
            if let Some((port, held_until)) = self.held.get_mut(&(proto, internal)) {
                *held_until = until;
                return Some(*port);
            }
            let port = suggested.unwrap_or_else(|| {
                self.next += 1;
                40000 + self.next
            });
            self.held.insert((proto, internal), (port, until));
            Some(port)
        }

        fn unmap(&mut self, proto: Protocol, internal: SocketAddrV4) -> Option<u16> {
            self.held.remove(&(proto, internal)).map(|(port, _)| port)
        }
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 40123);

    fn spec() -> PortmapSpec {
        PortmapSpec {
            enabled: true,
            min_lifetime_s: 60,
            max_lifetime_s: 600,
            ports: (1024, 65535),
            ..PortmapSpec::default()
        }
    }

    fn pcp_map(nonce: u8, internal_port: u16, suggested: u16, lifetime_s: u32) -> Vec<u8> {
        let mut m = vec![PCP_VERSION, PCP_OP_MAP, 0, 0];
        m.extend(lifetime_s.to_be_bytes());
        m.extend(CLIENT.ip().to_ipv6_mapped().octets());
        m.extend([nonce; 12]);
        m.extend([6, 0, 0, 0]);
        m.extend(internal_port.to_be_bytes());
        m.extend(suggested.to_be_bytes());
        m.extend([0u8; 16]);
        m
    }

    fn natpmp_map(internal_port: u16, suggested: u16, lifetime_s: u32) -> Vec<u8> {
        let mut m = vec![NATPMP_VERSION, 2, 0, 0];
        m.extend(internal_port.to_be_bytes());
        m.extend(suggested.to_be_bytes());
        m.extend(lifetime_s.to_be_bytes());
        m
    }

    fn u16_at(m: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([m[at], m[at + 1]])
    }

    fn u32_at(m: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
    }

    #[test]
    fn a_pcp_map_is_granted_held_within_bounds_and_deleted_by_its_nonce_only() {
        let (mut r, mut t, now) = (
            Responder::new(spec(), PUBLIC),
            FakeTable::default(),
            Instant::now(),
        );
        let h = r.handle(&pcp_map(1, 8333, 8333, 7200), CLIENT, now, &mut t);
        let a = h.answer.expect("answered");
        assert_eq!((a[0], a[1], a[3]), (2, 0x81, pcp_result::SUCCESS));
        assert_eq!(u32_at(&a, 4), 600, "lifetime held to the router's maximum");
        assert_eq!(&a[24..36], &[1u8; 12], "nonce echoed");
        assert_eq!(u16_at(&a, 24 + 16), 8333, "internal port echoed");
        assert_eq!(u16_at(&a, 24 + 18), 8333, "the suggested port granted");
        assert_eq!(&a[24 + 20..], &PUBLIC.to_ipv6_mapped().octets());
        assert_eq!(h.events.len(), 1);
        assert_eq!(h.events[0].change, PortmapChange::Added);
        assert_eq!(
            h.events[0].internal,
            Some(SocketAddrV4::new(*CLIENT.ip(), 8333))
        );

        let other = r.handle(&pcp_map(9, 8333, 0, 0), CLIENT, now, &mut t);
        assert_eq!(other.answer.unwrap()[3], pcp_result::NOT_AUTHORIZED);
        assert!(other.events.is_empty());
        assert_eq!(t.held.len(), 1, "another nonce deletes nothing");

        let later = now + Duration::from_secs(5);
        let del = r.handle(&pcp_map(1, 8333, 0, 0), CLIENT, later, &mut t);
        let a = del.answer.unwrap();
        assert_eq!(
            (a[3], u32_at(&a, 4), u32_at(&a, 8)),
            (pcp_result::SUCCESS, 0, 5)
        );
        assert_eq!(del.events[0].change, PortmapChange::Removed);
        assert!(t.held.is_empty());
    }

    #[test]
    fn pcp_errors_say_what_was_wrong() {
        let (mut r, mut t, now) = (
            Responder::new(spec(), PUBLIC),
            FakeTable::default(),
            Instant::now(),
        );
        let mut spoofed = pcp_map(1, 8333, 0, 120);
        spoofed[8..24].copy_from_slice(&Ipv4Addr::new(192, 168, 1, 9).to_ipv6_mapped().octets());
        let code = |r: &mut Responder, t: &mut FakeTable, m: &[u8]| {
            r.handle(m, CLIENT, now, t).answer.map(|a| a[3])
        };
        assert_eq!(
            code(&mut r, &mut t, &spoofed),
            Some(pcp_result::ADDRESS_MISMATCH)
        );
        let mut udp_all = pcp_map(1, 8333, 0, 120);
        udp_all[24 + 12] = 0;
        assert_eq!(
            code(&mut r, &mut t, &udp_all),
            Some(pcp_result::UNSUPP_PROTOCOL)
        );
        assert_eq!(
            code(&mut r, &mut t, &pcp_map(1, 0, 0, 120)),
            Some(pcp_result::MALFORMED_REQUEST)
        );
        let mut peer = pcp_map(1, 8333, 0, 120);
        peer[1] = 2;
        assert_eq!(code(&mut r, &mut t, &peer), Some(pcp_result::UNSUPP_OPCODE));
        let mut v1 = pcp_map(1, 8333, 0, 120);
        v1[0] = 1;
        assert_eq!(code(&mut r, &mut t, &v1), Some(pcp_result::UNSUPP_VERSION));
        assert_eq!(
            code(&mut r, &mut t, &pcp_map(1, 8333, 0, 120)[..30]),
            None,
            "misaligned: dropped"
        );
        let mut answer = pcp_map(1, 8333, 0, 120);
        answer[1] |= ANSWER_BIT;
        assert_eq!(
            code(&mut r, &mut t, &answer),
            None,
            "an answer is not answered"
        );
        let mut narrow = Responder::new(
            PortmapSpec {
                ports: (8000, 9000),
                ..spec()
            },
            PUBLIC,
        );
        assert_eq!(
            code(&mut narrow, &mut t, &pcp_map(1, 7000, 0, 120)),
            Some(pcp_result::NOT_AUTHORIZED)
        );
        t.full = true;
        assert_eq!(
            code(&mut r, &mut t, &pcp_map(2, 9000, 0, 120)),
            Some(pcp_result::NO_RESOURCES)
        );
        assert!(t.held.is_empty(), "nothing was granted");
    }

    #[test]
    fn natpmp_maps_deletes_and_tells_the_external_address() {
        let (mut r, mut t, now) = (
            Responder::new(spec(), PUBLIC),
            FakeTable::default(),
            Instant::now(),
        );
        let ext = r.handle(&[0, 0], CLIENT, now, &mut t).answer.unwrap();
        assert_eq!(
            ext,
            [&[0u8, 128, 0, 0, 0, 0, 0, 0][..], &PUBLIC.octets()].concat()
        );

        let h = r.handle(&natpmp_map(9000, 0, 30), CLIENT, now, &mut t);
        let a = h.answer.unwrap();
        assert_eq!((a.len(), a[1], u16_at(&a, 2)), (16, 130, 0));
        assert_eq!(u16_at(&a, 8), 9000);
        assert_eq!(u16_at(&a, 10), 40001, "no suggestion: the table's choice");
        assert_eq!(u32_at(&a, 12), 60, "lifetime held to the router's minimum");
        assert_eq!(h.events[0].protocol, PortmapProtocol::Natpmp);

        // PCP cannot take over a NAT-PMP mapping.
        let a = r
            .handle(&pcp_map(1, 9000, 0, 120), CLIENT, now, &mut t)
            .answer
            .unwrap();
        assert_eq!(a[3], pcp_result::NOT_AUTHORIZED);

        let del = r.handle(&natpmp_map(9000, 0, 0), CLIENT, now, &mut t);
        let a = del.answer.unwrap();
        assert_eq!((u16_at(&a, 2), u16_at(&a, 10), u32_at(&a, 12)), (0, 0, 0));
        assert_eq!(del.events.len(), 1);
        assert!(t.held.is_empty());

        let a = r.handle(&[0, 7], CLIENT, now, &mut t).answer.unwrap();
        assert_eq!(u16_at(&a, 2), natpmp_result::UNSUPPORTED_OPCODE);
        assert!(
            r.handle(&[0, 2, 0], CLIENT, now, &mut t).answer.is_none(),
            "short: dropped"
        );
    }

    #[test]
    fn a_refusing_router_grants_nothing() {
        let mut r = Responder::new(
            PortmapSpec {
                refuse: true,
                ..spec()
            },
            PUBLIC,
        );
        let mut t = FakeTable::default();
        let now = Instant::now();
        let pcp = r.handle(&pcp_map(1, 8333, 0, 120), CLIENT, now, &mut t);
        assert_eq!(pcp.answer.unwrap()[3], pcp_result::NOT_AUTHORIZED);
        let natpmp = r.handle(&natpmp_map(8333, 0, 120), CLIENT, now, &mut t);
        assert_eq!(
            u16_at(&natpmp.answer.unwrap(), 2),
            natpmp_result::NOT_AUTHORIZED
        );
        assert!(t.held.is_empty());
    }
}
