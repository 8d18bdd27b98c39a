//! Configuration of one emulated router: translation behaviour, answers, timeouts and WAN link shape.

use std::net::Ipv4Addr;
use std::time::Duration;

use punchscope_analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};

/// Whether and how the router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// A plain router: hosts behind it have public addresses.
    None,
    /// A bare link in series with a router that lives elsewhere (a kernel
    /// router's WAN): packets pass unchanged, TTL included, with only the
    /// link's delay, jitter and loss. It is a wire, not a hop.
    Link,
    /// A NAT with the given RFC 4787 behaviours.
    Nat {
        mapping: Mapping,
        filtering: Filtering,
        allocation: Allocation,
    },
}

/// One direction of the WAN link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkShape {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each packet gets an extra uniform random delay in `[-jitter, +jitter]`
    /// (never below zero). Packets keep their order: a packet never overtakes
    /// an earlier one on the same link, as on a single real queue.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a packet is lost.
    pub loss: f64,
}

/// Idle timeouts, per RFC 5382 (TCP) and RFC 4787 (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// An established TCP session (RFC 5382 REQ-5: at least 2 h 4 min).
    pub tcp_established: Duration,
    /// A TCP session that is opening, closing or was reset (RFC 5382: 4 min).
    pub tcp_transitory: Duration,
    /// A UDP session (RFC 4787 REQ-5: at least 2 min, 5 min recommended).
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            udp: Duration::from_secs(5 * 60),
        }
    }
}

/// Everything that defines one emulated router.
#[derive(Debug, Clone, PartialEq)]
pub struct NatConfig {
    pub translation: Translation,
    /// The router's WAN address; for a NAT also the public address of every mapping.
    pub public_ip: Ipv4Addr,
    /// The router's LAN-side address: the source of ICMP errors it sends to its hosts.
    pub gateway_ip: Ipv4Addr,
    pub unsolicited: UnsolicitedAnswer,
    pub hairpin: bool,
    /// A TCP RST passing through ends its session at once (and the mapping with
    /// its last session), as Linux conntrack does; otherwise the session turns
    /// transitory and times out.
    pub rst_closes: bool,
    /// Create a TCP mapping for any outbound segment, not only a SYN
    /// (Linux `nf_conntrack_tcp_loose=1`).
    pub tcp_loose: bool,
    /// Check our opening TCP segments against the flow's window as Linux
    /// conntrack does ([`super::window`]); off, any sequence number passes.
    pub tcp_window_check: bool,
    pub timeouts: Timeouts,
    /// First port handed out by `sequential` allocation.
    pub sequential_base: u16,
    /// Distance between consecutive `sequential` allocations.
    pub sequential_step: u16,
    /// First and last port `random` allocation draws from (default
    /// 1024..=65535); a small range makes birthday punching measurable fast.
    pub random_ports: (u16, u16),
    /// Background connections per second from other hosts behind this NAT
    /// (a "busy" NAT): each takes a fresh mapping, so a sequential
    /// allocator's next port moves on between a host's mappings. 0: none.
    pub background_per_s: f64,
    /// LAN -> WAN.
    pub uplink: LinkShape,
    /// WAN -> LAN.
    pub downlink: LinkShape,
    /// Seeds the random choices (ports, jitter, loss) so a run can be replayed.
    pub seed: u64,
    /// The router's IPv6 side (`ipv6` key): a firewall, NPTv6 or open
    /// routing for its dual-stack hosts. `None`: IPv4 only.
    pub ipv6: Option<super::v6::Ipv6Router>,
    /// IPv6 the router carries for the routers behind it (a carrier-grade
    /// NAT routing its customers' IPv6 unfiltered, as ISPs do): each
    /// downstream router's routed /48 with the LAN address (IPv4) of its
    /// WAN. Empty: none.
    pub ipv6_transit: Vec<(std::net::Ipv6Addr, Ipv4Addr)>,
}

impl NatConfig {
    /// A NAT with the given behaviours and every other setting at its default.
    pub fn nat(
        mapping: Mapping,
        filtering: Filtering,
        allocation: Allocation,
        public_ip: Ipv4Addr,
    ) -> Self {
        Self {
            translation: Translation::Nat {
                mapping,
                filtering,
                allocation,
            },
            ..Self::router(public_ip)
        }
    }

    /// A router without translation, every other setting at its default.
    pub fn router(public_ip: Ipv4Addr) -> Self {
        Self {
            translation: Translation::None,
            public_ip,
            gateway_ip: Ipv4Addr::new(192, 168, 1, 1),
            unsolicited: UnsolicitedAnswer::Drop,
            hairpin: false,
            rst_closes: true,
            tcp_loose: false,
            tcp_window_check: false,
            timeouts: Timeouts::default(),
            sequential_base: 20000,
            sequential_step: 1,
            random_ports: (1024, u16::MAX),
            background_per_s: 0.0,
            uplink: LinkShape::default(),
            downlink: LinkShape::default(),
            seed: 0,
            ipv6: None,
            ipv6_transit: Vec::new(),
        }
    }
}
