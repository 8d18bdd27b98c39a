//! The NAT emulator core, sans-io: packets and time in, packets and events out.
//!
//! A [`Nat`] never touches a socket or a clock. Its driver feeds it packets read
//! from the LAN and WAN sides with the moment they were read, wakes it at
//! [`Nat::poll_timeout`], and sends whatever [`Nat::poll_transmit`] returns.
//! The WAN link's delay, jitter and loss live inside the core, so that mapping
//! and filtering decisions happen at the instant a packet really reaches the
//! router, and so that tests replay exactly.
//!
//! Layout: [`config`] (what a router is), [`packet`] (IPv4/TCP/UDP/ICMP views
//! and rewrites over `pnet_packet`), [`table`] (mappings, sessions, port
//! allocation), [`link`] (the delay line), [`event`] (the ground-truth log),
//! [`portmap`] (the PCP and NAT-PMP service on the router's LAN address),
//! [`v6`] (IPv6: the stateful firewall's pinholes and NPTv6 prefix translation).

pub mod config;
pub mod event;
mod link;
pub mod packet;
pub mod portmap;
pub mod table;
pub mod v6;
pub mod window;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use punchscope_analysis::nat::UnsolicitedAnswer;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::kernel::portmap::{ClosedAnswer, PortmapSpec};

pub use config::{LinkShape, NatConfig, Timeouts, Translation};
pub use event::{DropReason, NatEvent, RefusalCause, TimedEvent};
pub use packet::Protocol;
pub use table::{Direction, RemovalReason};
pub use v6::{Ipv6Mode, Ipv6Router, Npt};

use link::DelayLine;
use packet::{Body, LinkPacket, Summary, ICMP_PORT_UNREACHABLE, ICMP_TTL_EXCEEDED};
use table::{Inbound, MappingTable, Outbound, TableConfig};

/// The LAN address the background connections of a busy NAT come from
/// (outside every LAN a scenario builds, so never a real host's).
pub const BACKGROUND_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 255, 254);

/// How often expired mappings are swept out (lookups also expire them lazily).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Where a packet leaves the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// Onto the WAN link, towards the internet.
    Wan,
    /// To the host with this LAN address.
    Lan(Ipv4Addr),
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub port: Port,
    pub packet: Vec<u8>,
}

/// Packet counters of one router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NatStats {
    pub from_lan: u64,
    pub from_wan: u64,
    pub to_lan: u64,
    pub to_wan: u64,
    pub refused: u64,
    pub dropped: u64,
    pub lost: u64,
}

/// A packet on the uplink, with the event to log when it reaches the internet.
#[derive(Debug)]
struct Departure {
    packet: Vec<u8>,
    event: Option<NatEvent>,
}

/// One emulated router (see the module docs).
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    table: Option<MappingTable>,
    /// Linux conntrack's TCP window check, when the router has `tcp_window_check`.
    window: Option<window::WindowTracker>,
    uplink: DelayLine<Departure>,
    downlink: DelayLine<Vec<u8>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TimedEvent>,
    rng: SmallRng,
    next_sweep: Option<Instant>,
    stats: NatStats,
    /// What the router's own LAN address answers on port 5351: the PCP and
    /// NAT-PMP service, or (`None`) the closed port's answer.
    portmap: Option<portmap::Responder>,
    portmap_closed: ClosedAnswer,
    /// When the next background connection (another host behind a busy NAT) takes a mapping.
    next_background: Option<Instant>,
    /// Background connections so far (their internal ports are numbered by it).
    background_count: u64,
    /// The IPv6 firewall's pinholes, when the router filters IPv6.
    firewall6: Option<v6::Firewall>,
}

impl Nat {
    pub fn new(config: NatConfig) -> Self {
        let table = match config.translation {
            Translation::None | Translation::Link => None,
            Translation::Nat {
                mapping,
                filtering,
                allocation,
            } => Some(MappingTable::new(TableConfig {
                mapping,
                filtering,
                allocation,
                timeouts: config.timeouts,
                rst_closes: config.rst_closes,
                tcp_loose: config.tcp_loose,
                sequential_base: config.sequential_base,
                sequential_step: config.sequential_step,
                random_ports: config.random_ports,
            })),
        };
        let window =
            (table.is_some() && config.tcp_window_check).then(window::WindowTracker::default);
        let firewall6 = config
            .ipv6
            .as_ref()
            .filter(|v6| v6.mode != Ipv6Mode::Open)
            .map(|v6| {
                v6::Firewall::new(v6::FirewallConfig {
                    filtering: v6.filtering,
                    timeouts: config.timeouts,
                    rst_closes: config.rst_closes,
                    tcp_loose: config.tcp_loose,
                })
            });
        Self {
            window,
            uplink: DelayLine::new(config.uplink),
            downlink: DelayLine::new(config.downlink),
            rng: SmallRng::seed_from_u64(config.seed),
            table,
            config,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_sweep: None,
            stats: NatStats::default(),
            portmap: None,
            portmap_closed: ClosedAnswer::default(),
            next_background: None,
            background_count: 0,
            firewall6,
        }
    }

    /// The router's port mapping service, from the scenario's `portmap`
    /// keys: PCP and NAT-PMP on its LAN address when enabled (a NAT only),
    /// else the answer of a closed port 5351.
    pub fn with_port_mapping(mut self, spec: PortmapSpec) -> Self {
        self.portmap_closed = spec.closed;
        if spec.enabled && self.table.is_some() {
            self.portmap = Some(portmap::Responder::new(spec, self.config.public_ip));
        }
        self
    }

    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Live mappings as (protocol, internal endpoint, external endpoint, remotes with sessions).
    pub fn mappings(&self) -> Vec<(Protocol, SocketAddrV4, SocketAddrV4, Vec<SocketAddrV4>)> {
        let public_ip = self.config.public_ip;
        self.table
            .iter()
            .flat_map(|t| t.entries())
            .map(|m| {
                (
                    m.proto(),
                    m.internal(),
                    SocketAddrV4::new(public_ip, m.external_port),
                    m.remotes().collect(),
                )
            })
            .collect()
    }

    /// The IPv6 firewall's live pinholes as (protocol, internal endpoint,
    /// remotes with sessions); empty without an IPv6 firewall.
    pub fn pinholes(&self) -> Vec<(Protocol, SocketAddrV6, Vec<SocketAddrV6>)> {
        self.firewall6
            .as_ref()
            .map(v6::Firewall::entries)
            .unwrap_or_default()
    }

    /// A packet a host sent, read from the LAN side at `now`.
    pub fn handle_lan(&mut self, packet: &[u8], now: Instant) {
        self.handle_timeout(now);
        self.stats.from_lan += 1;
        if self.config.translation == Translation::Link {
            // A wire carries IPv4 and IPv6 alike, unchanged.
            return match packet::parse_link(packet) {
                Ok(link) => self.send_up(packet[..link.total_len()].to_vec(), now),
                Err(malformed) => {
                    self.drop(Direction::Outbound, DropReason::Malformed(malformed), now)
                }
            };
        }
        if is_ipv6(packet) && self.config.ipv6.is_some() {
            return self.lan_v6(packet, now);
        }
        if is_ipv6(packet) && !self.config.ipv6_transit.is_empty() {
            return self.transit_v6(Direction::Outbound, packet, now);
        }
        let summary = match packet::parse(packet) {
            Ok(summary) => summary,
            Err(malformed) => {
                return self.drop(Direction::Outbound, DropReason::Malformed(malformed), now)
            }
        };
        self.sweep_if_due(now);
        if summary.dst == self.config.gateway_ip {
            return self.answer_as_router(packet, &summary, now);
        }
        if summary.ttl <= 1 {
            return self.ttl_exceeded(Direction::Outbound, packet, &summary, now);
        }
        if self.table.is_none() {
            return self.send_up(packet::forward(packet, &summary), now);
        }
        let (Some((proto, internal)), Some(remote)) =
            (summary.src_endpoint(), summary.dst_endpoint())
        else {
            return self.drop(Direction::Outbound, DropReason::Unsupported, now);
        };
        if summary.dst == self.config.public_ip {
            return self.hairpin(packet, &summary, proto, internal, remote, now);
        }
        if let (Some(window), Body::Tcp { flags, seq, .. }) = (self.window.as_mut(), summary.body) {
            if let window::WindowVerdict::Invalid { expected } =
                window.outbound(internal, remote, flags, seq)
            {
                // Linux marks it invalid and masquerade lets it out
                // untranslated, where the peer's NAT cannot match it.
                let reason = DropReason::OutOfWindow { seq, expected };
                return self.drop(Direction::Outbound, reason, now);
            }
        }
        let Some(external) = self.map_outbound(&summary, proto, internal, remote, now) else {
            return;
        };
        self.send_up(packet::rewrite(packet, &summary, Some(external), None), now);
    }

    /// A packet from the internet, read from the WAN side at `now`. It reaches
    /// the router after the downlink delay.
    pub fn handle_wan(&mut self, packet: &[u8], now: Instant) {
        self.handle_timeout(now);
        self.stats.from_wan += 1;
        if self
            .downlink
            .send(packet.to_vec(), now, &mut self.rng)
            .is_err()
        {
            self.stats.lost += 1;
            self.log(
                now,
                NatEvent::Lost {
                    direction: Direction::Inbound,
                },
            );
        }
        self.handle_timeout(now);
    }

    /// When the core next needs [`Nat::handle_timeout`]: packets in flight,
    /// or the next background connection of a busy NAT.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.uplink.next_release(),
            self.downlink.next_release(),
            self.next_background,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves every packet whose link delay has passed by `now`, in time order.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_background(now);
        loop {
            let up = self.uplink.next_release().filter(|at| *at <= now);
            let down = self.downlink.next_release().filter(|at| *at <= now);
            match (up, down) {
                (Some(u), Some(d)) if d < u => self.arrive_from_wan(now),
                (Some(_), _) => {
                    let (at, departure) = self.uplink.pop_due(now).expect("due");
                    self.stats.to_wan += 1;
                    if let Some(event) = departure.event {
                        self.log(at, event);
                    }
                    self.transmits.push_back(Transmit {
                        port: Port::Wan,
                        packet: departure.packet,
                    });
                }
                (None, Some(_)) => self.arrive_from_wan(now),
                (None, None) => break,
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TimedEvent> {
        self.events.pop_front()
    }

    /// A busy NAT: other hosts behind it open connections as a Poisson
    /// process of `background_per_s`, each taking a fresh mapping (logged as
    /// `MappingCreated` from the reserved LAN address [`BACKGROUND_HOST`]),
    /// as if its SYN had passed. Nothing is sent: only the port is taken.
    /// The first arrival is drawn at the first moment the core sees.
    fn run_background(&mut self, now: Instant) {
        let rate = self.config.background_per_s;
        if rate.is_nan() || rate <= 0.0 || self.table.is_none() {
            return;
        }
        let mut at = match self.next_background {
            Some(at) => at,
            None => {
                let first = now + self.background_gap(rate);
                self.next_background = Some(first);
                first
            }
        };
        // Bounded: a driver that slept long catches up at most this many arrivals.
        for _ in 0..10_000 {
            if at > now {
                break;
            }
            self.background_count += 1;
            let n = self.background_count;
            let internal = SocketAddrV4::new(BACKGROUND_HOST, 1024 + (n % 60_000) as u16);
            let remote = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 200 + (n % 50) as u8), 443);
            let table = self.table.as_mut().expect("translating");
            let outcome = table.outbound(
                Protocol::Tcp,
                internal,
                remote,
                pnet_packet::tcp::TcpFlags::SYN,
                at,
                &mut self.rng,
            );
            if let Outbound::Mapped {
                external_port,
                created: true,
            } = outcome
            {
                let external = SocketAddrV4::new(self.config.public_ip, external_port);
                self.log(
                    at,
                    NatEvent::MappingCreated {
                        proto: Protocol::Tcp,
                        internal,
                        external,
                        remote,
                    },
                );
            }
            at += self.background_gap(rate);
        }
        self.next_background = Some(at.max(now));
    }

    /// An exponential gap between background arrivals at `rate` per second.
    fn background_gap(&mut self, rate: f64) -> Duration {
        use rand::Rng;
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        Duration::from_secs_f64((-u.ln() / rate).min(3600.0))
    }

    fn arrive_from_wan(&mut self, now: Instant) {
        let (at, packet) = self.downlink.pop_due(now).expect("due");
        self.process_inbound(&packet, at);
    }

    fn process_inbound(&mut self, packet: &[u8], now: Instant) {
        if self.config.translation == Translation::Link {
            let link = match packet::parse_link(packet) {
                Ok(link) => link,
                Err(malformed) => {
                    return self.drop(Direction::Inbound, DropReason::Malformed(malformed), now)
                }
            };
            let host = match link {
                LinkPacket::Ipv4 { dst, .. } => dst,
                // A link's only LAN device is the kernel router's WAN, known
                // by its IPv4 address: IPv6 for the router's prefix goes there too.
                LinkPacket::Ipv6 { .. } => self.config.public_ip,
            };
            return self.deliver(packet[..link.total_len()].to_vec(), host, now);
        }
        if is_ipv6(packet) && self.config.ipv6.is_some() {
            return self.wan_v6(packet, now);
        }
        if is_ipv6(packet) && !self.config.ipv6_transit.is_empty() {
            return self.transit_v6(Direction::Inbound, packet, now);
        }
        let summary = match packet::parse(packet) {
            Ok(summary) => summary,
            Err(malformed) => {
                return self.drop(Direction::Inbound, DropReason::Malformed(malformed), now)
            }
        };
        if self.table.is_some() && summary.dst != self.config.public_ip {
            return self.drop(Direction::Inbound, DropReason::NotOurs, now);
        }
        if summary.ttl <= 1 {
            return self.ttl_exceeded(Direction::Inbound, packet, &summary, now);
        }
        if self.table.is_none() {
            return self.deliver(packet::forward(packet, &summary), summary.dst, now);
        }
        match summary.body {
            Body::Tcp { dst_port, .. } | Body::Udp { dst_port, .. } => {
                let (proto, remote) = summary.src_endpoint().expect("TCP or UDP");
                let table = self.table.as_mut().expect("translating");
                let verdict = table.inbound(proto, dst_port, remote, summary.tcp_flags(), now);
                self.log_removals(now);
                match verdict {
                    Inbound::Admitted { internal } => {
                        if let (Some(window), Protocol::Tcp) = (self.window.as_mut(), proto) {
                            window.inbound(internal, remote, summary.tcp_flags());
                        }
                        let out = packet::rewrite(packet, &summary, None, Some(internal));
                        self.deliver(out, *internal.ip(), now);
                    }
                    Inbound::NoMapping => {
                        self.refuse(packet, &summary, RefusalCause::NoMapping, now)
                    }
                    Inbound::Filtered => self.refuse(packet, &summary, RefusalCause::Filtered, now),
                }
            }
            Body::IcmpError {
                icmp_type,
                code,
                quoted,
            } => {
                let table = self.table.as_mut().expect("translating");
                let internal = (*quoted.src.ip() == self.config.public_ip)
                    .then(|| table.related(quoted.proto, quoted.src.port(), quoted.dst, now))
                    .flatten();
                self.log_removals(now);
                match internal {
                    Some(internal) => {
                        let out = packet::rewrite_icmp_error_inbound(packet, &summary, internal);
                        self.log(
                            now,
                            NatEvent::IcmpTranslated {
                                icmp_type,
                                code,
                                internal,
                                remote: quoted.dst,
                            },
                        );
                        self.deliver(out, *internal.ip(), now);
                    }
                    None => self.drop(Direction::Inbound, DropReason::UnrelatedIcmp, now),
                }
            }
            Body::Other { .. } => self.drop(Direction::Inbound, DropReason::Unsupported, now),
        }
    }

    /// Finds or creates the outbound mapping; `None` when the packet was dropped.
    fn map_outbound(
        &mut self,
        summary: &Summary,
        proto: Protocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Option<SocketAddrV4> {
        let public_ip = self.config.public_ip;
        let table = self.table.as_mut().expect("translating");
        let outcome = table.outbound(
            proto,
            internal,
            remote,
            summary.tcp_flags(),
            now,
            &mut self.rng,
        );
        match outcome {
            Outbound::Mapped {
                external_port,
                created,
            } => {
                let external = SocketAddrV4::new(public_ip, external_port);
                if created {
                    self.log(
                        now,
                        NatEvent::MappingCreated {
                            proto,
                            internal,
                            external,
                            remote,
                        },
                    );
                }
                self.log_removals(now);
                Some(external)
            }
            Outbound::NotAllowed => {
                self.drop(Direction::Outbound, DropReason::NoMappingForNonSyn, now);
                None
            }
            Outbound::Exhausted => {
                self.drop(Direction::Outbound, DropReason::PortsExhausted, now);
                None
            }
        }
    }

    /// A host sent to the router's own public address: loop it back to the
    /// host owning that mapping, translated as if it came from outside
    /// (RFC 5382 REQ-8), or drop it when hairpinning is off. Hairpinned
    /// packets need a mapping but pass any filtering: both ends are ours.
    fn hairpin(
        &mut self,
        packet: &[u8],
        summary: &Summary,
        proto: Protocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
    ) {
        if !self.config.hairpin {
            return self.drop(Direction::Outbound, DropReason::HairpinDisabled, now);
        }
        let Some(external) = self.map_outbound(summary, proto, internal, remote, now) else {
            return;
        };
        let table = self.table.as_mut().expect("translating");
        let verdict =
            table.hairpin_inbound(proto, remote.port(), external, summary.tcp_flags(), now);
        self.log_removals(now);
        match verdict {
            Inbound::Admitted { internal: target } => {
                let out = packet::rewrite(packet, summary, Some(external), Some(target));
                self.deliver(out, *target.ip(), now);
            }
            // Hairpinned SYNs without a mapping are refused silently: an answer would loop back into the LAN.
            Inbound::NoMapping | Inbound::Filtered => {
                let cause = if verdict == Inbound::NoMapping {
                    RefusalCause::NoMapping
                } else {
                    RefusalCause::Filtered
                };
                self.stats.refused += 1;
                self.log(
                    now,
                    NatEvent::Refused {
                        proto,
                        remote: external,
                        external: remote,
                        cause,
                        answer: None,
                        flags: packet::flags_text(summary.tcp_flags()),
                    },
                );
            }
        }
    }

    /// A host's packet to the router's own LAN address: the port mapping
    /// service answers on port 5351; anything else meets a closed port (an
    /// ICMP port unreachable or a RST, as Linux answers, or nothing when the
    /// router drops it).
    fn answer_as_router(&mut self, packet: &[u8], summary: &Summary, now: Instant) {
        let gateway = self.config.gateway_ip;
        if let (Body::Udp { dst_port, .. }, Some((Protocol::Udp, client))) =
            (summary.body, summary.src_endpoint())
        {
            if let (portmap::PORT, Some(responder), Some(table)) =
                (dst_port, self.portmap.as_mut(), self.table.as_mut())
            {
                let request = packet::udp_payload(packet, summary);
                let mut explicit = ExplicitMappings {
                    table,
                    rng: &mut self.rng,
                    now,
                };
                let handled = responder.handle(request, client, now, &mut explicit);
                for event in handled.events {
                    self.log(now, NatEvent::PortMap(event));
                }
                self.log_removals(now);
                if let Some(answer) = handled.answer {
                    let from = SocketAddrV4::new(gateway, portmap::PORT);
                    self.deliver(
                        packet::build::udp(from, client, 64, &answer),
                        summary.src,
                        now,
                    );
                }
                return;
            }
        }
        let answer = match (summary.body, self.portmap_closed) {
            (_, ClosedAnswer::Drop) => None,
            (Body::Udp { .. }, ClosedAnswer::Icmp) => {
                let (icmp_type, code) = ICMP_PORT_UNREACHABLE;
                Some(packet::icmp_error_for(
                    packet, summary, gateway, icmp_type, code,
                ))
            }
            (Body::Tcp { .. }, ClosedAnswer::Icmp) if summary.is_tcp_syn() => {
                Some(packet::tcp_reset_for(summary))
            }
            _ => None,
        };
        match answer {
            Some(answer) => self.deliver(answer, summary.src, now),
            None => self.drop(Direction::Outbound, DropReason::ToRouter, now),
        }
    }

    /// An inbound packet nothing admits: answer a bare SYN as configured.
    fn refuse(&mut self, packet: &[u8], summary: &Summary, cause: RefusalCause, now: Instant) {
        self.stats.refused += 1;
        let (proto, remote) = summary.src_endpoint().expect("TCP or UDP");
        let external = summary.dst_endpoint().expect("TCP or UDP");
        let answer = unsolicited_answer(proto, summary.is_tcp_syn(), self.config.unsolicited);
        self.log(
            now,
            NatEvent::Refused {
                proto,
                remote,
                external,
                cause,
                answer,
                flags: packet::flags_text(summary.tcp_flags()),
            },
        );
        match answer {
            Some(UnsolicitedAnswer::Rst) => self.send_up(packet::tcp_reset_for(summary), now),
            Some(UnsolicitedAnswer::Icmp) => {
                let (icmp_type, code) = ICMP_PORT_UNREACHABLE;
                let icmp =
                    packet::icmp_error_for(packet, summary, self.config.public_ip, icmp_type, code);
                self.send_up(icmp, now);
            }
            Some(UnsolicitedAnswer::Drop) | None => {}
        }
    }

    /// A packet that would leave with TTL 0: dropped here, before any mapping,
    /// with ICMP time-exceeded back to its source (never about an ICMP error).
    fn ttl_exceeded(
        &mut self,
        direction: Direction,
        packet: &[u8],
        summary: &Summary,
        now: Instant,
    ) {
        let answered = !matches!(summary.body, Body::IcmpError { .. });
        self.log(
            now,
            NatEvent::TtlExceeded {
                direction,
                src: summary
                    .src_endpoint()
                    .map_or(SocketAddrV4::new(summary.src, 0), |(_, e)| e),
                dst: summary
                    .dst_endpoint()
                    .unwrap_or(SocketAddrV4::new(summary.dst, 0)),
                answered,
            },
        );
        if !answered {
            return;
        }
        let (icmp_type, code) = ICMP_TTL_EXCEEDED;
        match direction {
            Direction::Outbound => {
                let icmp = packet::icmp_error_for(
                    packet,
                    summary,
                    self.config.gateway_ip,
                    icmp_type,
                    code,
                );
                self.deliver(icmp, summary.src, now);
            }
            Direction::Inbound => {
                let icmp =
                    packet::icmp_error_for(packet, summary, self.config.public_ip, icmp_type, code);
                self.send_up(icmp, now);
            }
        }
    }

    /// Puts a finished packet on the uplink.
    fn send_up(&mut self, packet: Vec<u8>, now: Instant) {
        let event = control_event(Direction::Outbound, &packet);
        if self
            .uplink
            .send(Departure { packet, event }, now, &mut self.rng)
            .is_err()
        {
            self.stats.lost += 1;
            self.log(
                now,
                NatEvent::Lost {
                    direction: Direction::Outbound,
                },
            );
        }
        self.handle_timeout(now);
    }

    /// Hands a finished packet to a host on the LAN.
    fn deliver(&mut self, packet: Vec<u8>, host: Ipv4Addr, now: Instant) {
        if let Some(event) = control_event(Direction::Inbound, &packet) {
            self.log(now, event);
        }
        self.stats.to_lan += 1;
        self.transmits.push_back(Transmit {
            port: Port::Lan(host),
            packet,
        });
    }

    fn drop(&mut self, direction: Direction, reason: DropReason, now: Instant) {
        self.stats.dropped += 1;
        self.log(now, NatEvent::Dropped { direction, reason });
    }

    fn log(&mut self, at: Instant, event: NatEvent) {
        self.events.push_back(TimedEvent { at, event });
    }

    fn log_removals(&mut self, now: Instant) {
        self.log_removals_v6(now);
        let public_ip = self.config.public_ip;
        let Some(table) = self.table.as_mut() else {
            return;
        };
        let removals: Vec<_> = table.drain_removals().collect();
        let lapsed: Vec<_> = table.drain_lapsed().collect();
        for (proto, internal, external_port) in lapsed {
            let event = self
                .portmap
                .as_mut()
                .and_then(|service| service.lapsed(proto, internal, external_port));
            if let Some(event) = event {
                self.log(now, NatEvent::PortMap(event));
            }
        }
        for removal in removals {
            let external = SocketAddrV4::new(public_ip, removal.external_port);
            if let (Some(window), Some(remote), Protocol::Tcp) =
                (self.window.as_mut(), removal.remote, removal.proto)
            {
                window.forget(removal.internal, remote);
            }
            let event = match removal.remote {
                Some(remote) => NatEvent::SessionRemoved {
                    proto: removal.proto,
                    internal: removal.internal,
                    external,
                    remote,
                    reason: removal.reason,
                },
                None => NatEvent::MappingRemoved {
                    proto: removal.proto,
                    internal: removal.internal,
                    external,
                    reason: removal.reason,
                },
            };
            self.log(now, event);
        }
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.table.is_none() && self.firewall6.is_none() {
            return;
        }
        match self.next_sweep {
            Some(at) if at > now => {}
            _ => {
                if let Some(table) = self.table.as_mut() {
                    table.sweep(now);
                }
                if let Some(firewall) = self.firewall6.as_mut() {
                    firewall.sweep(now);
                }
                self.next_sweep = Some(now + SWEEP_INTERVAL);
                self.log_removals(now);
            }
        }
    }
}

/// Whether a packet's version nibble says IPv6.
fn is_ipv6(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b >> 4 == 6)
}

/// The log entry for a TCP segment carrying SYN, FIN or RST; data segments are only counted.
fn control_event(direction: Direction, packet: &[u8]) -> Option<NatEvent> {
    use pnet_packet::tcp::TcpFlags;
    if is_ipv6(packet) {
        let summary = v6::parse6(packet).ok()?;
        let flags = summary.tcp_flags();
        if flags & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) == 0 {
            return None;
        }
        return Some(NatEvent::TcpControl6 {
            direction,
            src: summary.src_endpoint()?.1,
            dst: summary.dst_endpoint()?,
            flags: packet::flags_text(flags),
            hop_limit: summary.hop_limit,
        });
    }
    let summary = packet::parse(packet).ok()?;
    let Body::Tcp { flags, .. } = summary.body else {
        return None;
    };
    if flags & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) == 0 {
        return None;
    }
    let (_, src) = summary.src_endpoint()?;
    Some(NatEvent::TcpControl {
        direction,
        src,
        dst: summary.dst_endpoint()?,
        flags: packet::flags_text(flags),
        ttl: summary.ttl,
    })
}

/// What an unsolicited inbound packet gets, in either family: a bare SYN
/// the router's `unsolicited` answer, UDP an ICMP error only under `icmp`
/// (there is no UDP reset), any other TCP segment nothing.
fn unsolicited_answer(
    proto: Protocol,
    bare_syn: bool,
    configured: UnsolicitedAnswer,
) -> Option<UnsolicitedAnswer> {
    match proto {
        Protocol::Tcp if bare_syn => Some(configured),
        Protocol::Udp => Some(match configured {
            UnsolicitedAnswer::Icmp => UnsolicitedAnswer::Icmp,
            UnsolicitedAnswer::Drop | UnsolicitedAnswer::Rst => UnsolicitedAnswer::Drop,
        }),
        Protocol::Tcp => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_v6;

/// The NAT's table as the port mapping service sees it: explicit mappings, at one moment.
struct ExplicitMappings<'a> {
    table: &'a mut MappingTable,
    rng: &'a mut SmallRng,
    now: Instant,
}

impl portmap::MappingTable for ExplicitMappings<'_> {
    fn map(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
        suggested: Option<u16>,
        until: Instant,
    ) -> Option<u16> {
        self.table
            .map_explicit(proto, internal, suggested, until, self.now, self.rng)
    }

    fn unmap(&mut self, proto: Protocol, internal: SocketAddrV4) -> Option<u16> {
        self.table.unmap_explicit(proto, internal)
    }
}

/// IPv6 through the router (see [`v6`]): routed as is, or with the source
/// prefix translated (NPTv6), through the firewall's pinholes unless open.
impl Nat {
    fn lan_v6(&mut self, packet: &[u8], now: Instant) {
        let summary = match v6::parse6(packet) {
            Ok(summary) => summary,
            Err(malformed) => {
                return self.drop(Direction::Outbound, DropReason::Malformed(malformed), now)
            }
        };
        self.sweep_if_due(now);
        let router = self.config.ipv6.as_ref().expect("an IPv6 router");
        // Only the LAN's own addresses leave, only to global destinations:
        // a host's neighbour discovery and MLD chatter stay on the link.
        if !router.on_lan(summary.src) || !is_routable(summary.dst) || router.on_lan(summary.dst) {
            return self.drop(Direction::Outbound, DropReason::NotRouted, now);
        }
        if router.to_internal(summary.dst).is_some() {
            // A host's own external (NPTv6) address: no hairpinning over IPv6.
            return self.drop(Direction::Outbound, DropReason::HairpinDisabled, now);
        }
        if summary.hop_limit <= 1 {
            return self.hop_limit_exceeded(Direction::Outbound, packet, &summary, now);
        }
        let Some(external) = router.to_external(summary.src) else {
            return self.drop(Direction::Outbound, DropReason::NotRouted, now);
        };
        let new_src = (external != summary.src).then_some(external);
        if let (Some(firewall), Some((proto, internal)), Some(remote)) = (
            self.firewall6.as_mut(),
            summary.src_endpoint(),
            summary.dst_endpoint(),
        ) {
            match firewall.outbound(proto, internal, remote, summary.tcp_flags(), now) {
                v6::Outbound6::NotAllowed => {
                    return self.drop(Direction::Outbound, DropReason::NoMappingForNonSyn, now)
                }
                v6::Outbound6::Passed { created } => {
                    if created {
                        self.log(
                            now,
                            NatEvent::PinholeCreated {
                                proto,
                                internal,
                                external: v6::v6(external, internal.port()),
                                remote,
                            },
                        );
                    }
                    self.log_removals(now);
                }
            }
        }
        self.send_up(v6::forward6(packet, &summary, new_src, None), now);
    }

    fn wan_v6(&mut self, packet: &[u8], now: Instant) {
        let summary = match v6::parse6(packet) {
            Ok(summary) => summary,
            Err(malformed) => {
                return self.drop(Direction::Inbound, DropReason::Malformed(malformed), now)
            }
        };
        self.sweep_if_due(now);
        let router = self.config.ipv6.as_ref().expect("an IPv6 router");
        if !is_routable(summary.dst) {
            return self.drop(Direction::Inbound, DropReason::NotRouted, now);
        }
        let (Some(internal), true) = (router.to_internal(summary.dst), is_routable(summary.src))
        else {
            return self.drop(Direction::Inbound, DropReason::NotOurs, now);
        };
        // An address of the LAN no host holds: nothing would answer neighbour discovery.
        let Some(device) = router.host_device(internal) else {
            return self.drop(Direction::Inbound, DropReason::NotOurs, now);
        };
        if summary.hop_limit <= 1 {
            return self.hop_limit_exceeded(Direction::Inbound, packet, &summary, now);
        }
        let new_dst = (internal != summary.dst).then_some(internal);
        let npt = router.npt;
        let Some(firewall) = self.firewall6.as_mut() else {
            // Open: everything is routed to its host.
            return self.deliver(v6::forward6(packet, &summary, None, new_dst), device, now);
        };
        match summary.body {
            v6::Body6::Tcp { .. } | v6::Body6::Udp { .. } => {
                let (proto, remote) = summary.src_endpoint().expect("TCP or UDP");
                let to = v6::v6(internal, summary.dst_endpoint().expect("TCP or UDP").port());
                let verdict = firewall.inbound(proto, to, remote, summary.tcp_flags(), now);
                self.log_removals(now);
                match verdict {
                    v6::Inbound6::Admitted => {
                        self.deliver(v6::forward6(packet, &summary, None, new_dst), device, now)
                    }
                    v6::Inbound6::NoPinhole => {
                        self.refuse_v6(packet, &summary, RefusalCause::NoMapping, now)
                    }
                    v6::Inbound6::Filtered => {
                        self.refuse_v6(packet, &summary, RefusalCause::Filtered, now)
                    }
                }
            }
            v6::Body6::IcmpError {
                icmp_type,
                code,
                quoted,
            } => {
                let host = match npt {
                    Some(npt) => npt.inbound(*quoted.src.ip()),
                    None => Some(*quoted.src.ip()),
                };
                let related = host.filter(|host| {
                    firewall.related(
                        quoted.proto,
                        v6::v6(*host, quoted.src.port()),
                        quoted.dst,
                        now,
                    )
                });
                self.log_removals(now);
                match related {
                    Some(host) if host == internal => {
                        self.log(
                            now,
                            NatEvent::IcmpRelated6 {
                                icmp_type,
                                code,
                                internal: v6::v6(host, quoted.src.port()),
                                remote: quoted.dst,
                            },
                        );
                        self.deliver(v6::rewrite_icmp_error6(packet, &summary, host), device, now);
                    }
                    _ => self.drop(Direction::Inbound, DropReason::UnrelatedIcmp, now),
                }
            }
            // Echo passes, as RFC 4890 asks of a firewall.
            v6::Body6::Echo => {
                self.deliver(v6::forward6(packet, &summary, None, new_dst), device, now)
            }
            v6::Body6::Other { .. } => self.drop(Direction::Inbound, DropReason::Unsupported, now),
        }
    }

    /// An inbound IPv6 packet the firewall did not admit: a bare SYN gets
    /// the router's `unsolicited` answer (RST from the address it was sent
    /// to, or ICMPv6 administratively prohibited from the router's WAN
    /// address); UDP gets ICMPv6 under `icmp`; anything else nothing.
    fn refuse_v6(
        &mut self,
        packet: &[u8],
        summary: &v6::Summary6,
        cause: RefusalCause,
        now: Instant,
    ) {
        self.stats.refused += 1;
        let (proto, remote) = summary.src_endpoint().expect("TCP or UDP");
        let external = summary.dst_endpoint().expect("TCP or UDP");
        let answer = unsolicited_answer(proto, summary.is_tcp_syn(), self.config.unsolicited);
        self.log(
            now,
            NatEvent::Refused6 {
                proto,
                remote,
                external,
                cause,
                answer,
                flags: packet::flags_text(summary.tcp_flags()),
            },
        );
        let wan = self.config.ipv6.as_ref().expect("an IPv6 router").wan;
        match answer {
            Some(UnsolicitedAnswer::Rst) => self.send_up(v6::tcp_reset6(summary), now),
            Some(UnsolicitedAnswer::Icmp) => {
                let icmp = v6::icmp_error6(packet, summary, wan, v6::ICMPV6_ADMIN_PROHIBITED);
                self.send_up(icmp, now);
            }
            Some(UnsolicitedAnswer::Drop) | None => {}
        }
    }

    /// A packet whose hop limit would reach 0: dropped, with ICMPv6 time
    /// exceeded to its source (from the LAN or WAN address), never about an ICMPv6 error.
    fn hop_limit_exceeded(
        &mut self,
        direction: Direction,
        packet: &[u8],
        summary: &v6::Summary6,
        now: Instant,
    ) {
        let answered = !matches!(summary.body, v6::Body6::IcmpError { .. });
        let endpoint = |ip, port: Option<u16>| v6::v6(ip, port.unwrap_or(0));
        let src_port = summary.src_endpoint().map(|(_, e)| e.port());
        let dst_port = summary.dst_endpoint().map(|e| e.port());
        self.log(
            now,
            NatEvent::HopLimitExceeded {
                direction,
                src: endpoint(summary.src, src_port),
                dst: endpoint(summary.dst, dst_port),
                answered,
            },
        );
        if !answered {
            return;
        }
        let router = self.config.ipv6.as_ref().expect("an IPv6 router");
        let kind = v6::ICMPV6_HOP_LIMIT_EXCEEDED;
        match direction {
            Direction::Outbound => {
                let icmp = v6::icmp_error6(packet, summary, router.gateway, kind);
                if let Some(device) = router.host_device(summary.src) {
                    self.deliver(icmp, device, now);
                }
            }
            Direction::Inbound => {
                let icmp = v6::icmp_error6(packet, summary, router.wan, kind);
                self.send_up(icmp, now);
            }
        }
    }

    /// IPv6 of the routers behind this one, routed without filtering:
    /// outbound from their prefixes to anywhere global, inbound to the
    /// router whose /48 holds the destination. The hop limit is
    /// decremented; one that runs out is dropped (this router has no IPv6
    /// address of its own to answer from).
    fn transit_v6(&mut self, direction: Direction, packet: &[u8], now: Instant) {
        let summary = match v6::parse6(packet) {
            Ok(summary) => summary,
            Err(malformed) => return self.drop(direction, DropReason::Malformed(malformed), now),
        };
        let behind = |addr: std::net::Ipv6Addr| {
            self.config
                .ipv6_transit
                .iter()
                .find(|(prefix, _)| prefix.segments()[..3] == addr.segments()[..3])
                .map(|(_, device)| *device)
        };
        let (from_behind, to_behind) = (behind(summary.src), behind(summary.dst));
        let routed = is_routable(summary.dst) && is_routable(summary.src);
        let target = match direction {
            Direction::Outbound if routed && from_behind.is_some() && to_behind.is_none() => None,
            Direction::Inbound if routed && to_behind.is_some() => to_behind,
            _ => return self.drop(direction, DropReason::NotRouted, now),
        };
        if summary.hop_limit <= 1 {
            let endpoint = |ip, port: Option<u16>| v6::v6(ip, port.unwrap_or(0));
            let event = NatEvent::HopLimitExceeded {
                direction,
                src: endpoint(summary.src, summary.src_endpoint().map(|(_, e)| e.port())),
                dst: endpoint(summary.dst, summary.dst_endpoint().map(|e| e.port())),
                answered: false,
            };
            return self.log(now, event);
        }
        let out = v6::forward6(packet, &summary, None, None);
        match target {
            Some(device) => self.deliver(out, device, now),
            None => self.send_up(out, now),
        }
    }

    fn log_removals_v6(&mut self, now: Instant) {
        let Some(firewall) = self.firewall6.as_mut() else {
            return;
        };
        let removals: Vec<_> = firewall.drain_removals().collect();
        let router = self.config.ipv6.as_ref().expect("an IPv6 router");
        let events: Vec<_> = removals
            .into_iter()
            .map(|r| NatEvent::PinholeRemoved {
                proto: r.proto,
                internal: r.internal,
                external: v6::v6(
                    router
                        .to_external(*r.internal.ip())
                        .unwrap_or(*r.internal.ip()),
                    r.internal.port(),
                ),
                remote: r.remote,
                reason: r.reason,
            })
            .collect();
        for event in events {
            self.log(now, event);
        }
    }
}

/// A destination a router forwards: not multicast, link-local, loopback or unspecified.
fn is_routable(addr: std::net::Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    !(addr.is_multicast()
        || addr.is_loopback()
        || addr.is_unspecified()
        || (first & 0xffc0) == 0xfe80)
}
