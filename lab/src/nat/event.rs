//! Structured events from the NAT emulator: the lab's ground truth of what each router did.

use std::net::{SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use punchscope_analysis::nat::UnsolicitedAnswer;
use serde::Serialize;

use super::packet::{Malformed, Protocol};
use super::table::{Direction, RemovalReason};

/// Something a router did, at a moment of the emulation.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    pub at: Instant,
    pub event: NatEvent,
}

/// Why an inbound packet met no admitting mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCause {
    /// No mapping owns the destination port.
    NoMapping,
    /// A mapping exists but its filtering does not admit this remote.
    Filtered,
}

/// Why a packet was discarded without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    Malformed(Malformed),
    /// Not TCP, UDP or an ICMP error about a translated flow.
    Unsupported,
    /// Addressed to neither the router's public address nor a host behind it.
    NotOurs,
    /// A host sent to the router's own public address and hairpinning is off.
    HairpinDisabled,
    /// A TCP segment other than SYN without a mapping (and `tcp_loose` is off).
    NoMappingForNonSyn,
    /// Every external port is in use.
    PortsExhausted,
    /// An ICMP error about a flow the router has no session for.
    UnrelatedIcmp,
    /// A packet to the router's own LAN address that nothing there answers
    /// (a closed port whose answer is `drop`, or not a SYN or UDP).
    ToRouter,
    /// An IPv6 packet to a destination the router does not route: link-local
    /// or multicast (a host's neighbour discovery and MLD chatter), or not
    /// the router's prefix.
    NotRouted,
    /// An opening TCP segment out of the flow's window (`tcp_window_check`,
    /// Linux conntrack's check: [`super::window`]); `expected` is where the
    /// flow's sequence space ends.
    OutOfWindow {
        seq: u32,
        expected: u32,
    },
}

/// What a router did. Endpoints are as on the wire after translation unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NatEvent {
    /// A new mapping: `internal` is seen as `external`; `remote` is the destination that created it.
    MappingCreated {
        proto: Protocol,
        internal: SocketAddrV4,
        external: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// A mapping and all its filter state are gone.
    MappingRemoved {
        proto: Protocol,
        internal: SocketAddrV4,
        external: SocketAddrV4,
        reason: RemovalReason,
    },
    /// One remote's session on a mapping is gone (the filter no longer admits it).
    SessionRemoved {
        proto: Protocol,
        internal: SocketAddrV4,
        external: SocketAddrV4,
        remote: SocketAddrV4,
        reason: RemovalReason,
    },
    /// A TCP segment with SYN, FIN or RST left the router (outbound: onto the
    /// WAN, after the link delay; inbound: to the host).
    TcpControl {
        direction: Direction,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: String,
        ttl: u8,
    },
    /// An ICMP error about a mapped flow was translated and delivered to the host.
    IcmpTranslated {
        icmp_type: u8,
        code: u8,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
    },
    /// An inbound packet no mapping admitted, and what the router answered.
    Refused {
        proto: Protocol,
        remote: SocketAddrV4,
        external: SocketAddrV4,
        cause: RefusalCause,
        /// `None` when the packet was not a bare SYN: only SYNs are answered.
        answer: Option<UnsolicitedAnswer>,
        flags: String,
    },
    /// A packet whose TTL ran out here; `answered` when an ICMP time-exceeded was sent back.
    TtlExceeded {
        direction: Direction,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        answered: bool,
    },
    /// The link lost a packet (configured loss).
    Lost { direction: Direction },
    /// A packet discarded without an answer.
    Dropped {
        direction: Direction,
        reason: DropReason,
    },
    /// IPv6: a host's outbound packet opened a firewall pinhole for its
    /// endpoint `internal`, seen on the internet as `external` (the same
    /// unless the router translates prefixes, NPTv6); `remote` opened it.
    PinholeCreated {
        proto: Protocol,
        internal: SocketAddrV6,
        external: SocketAddrV6,
        remote: SocketAddrV6,
    },
    /// IPv6: one remote's session on a pinhole is gone (`remote`), or the
    /// whole pinhole with its last session (`remote` absent).
    PinholeRemoved {
        proto: Protocol,
        internal: SocketAddrV6,
        external: SocketAddrV6,
        #[serde(skip_serializing_if = "Option::is_none")]
        remote: Option<SocketAddrV6>,
        reason: RemovalReason,
    },
    /// IPv6: as `tcp_control`, with the hop limit.
    TcpControl6 {
        direction: Direction,
        src: SocketAddrV6,
        dst: SocketAddrV6,
        flags: String,
        hop_limit: u8,
    },
    /// IPv6: an inbound packet the firewall did not admit, and its answer
    /// (`icmp` is ICMPv6 administratively prohibited); `external` is the
    /// destination as it arrived.
    Refused6 {
        proto: Protocol,
        remote: SocketAddrV6,
        external: SocketAddrV6,
        cause: RefusalCause,
        answer: Option<UnsolicitedAnswer>,
        flags: String,
    },
    /// IPv6: a packet whose hop limit ran out here; `answered` when ICMPv6
    /// time exceeded went back.
    HopLimitExceeded {
        direction: Direction,
        src: SocketAddrV6,
        dst: SocketAddrV6,
        answered: bool,
    },
    /// IPv6: an ICMPv6 error about a flow with a session was let in to the host.
    IcmpRelated6 {
        icmp_type: u8,
        code: u8,
        internal: SocketAddrV6,
        remote: SocketAddrV6,
    },
    /// A kernel router's conntrack entry changed (from `conntrack -E`; never
    /// emitted by the emulator).
    Conntrack(crate::kernel::conntrack::ConntrackEvent),
    /// A port mapping was created or removed: by a kernel router's daemon
    /// (miniupnpd, from its log) or by an emulator router's own PCP and
    /// NAT-PMP service ([`super::portmap`]).
    PortMap(crate::kernel::portmap::PortmapEvent),
}

impl NatEvent {
    /// A new mapping as (internal, external) endpoints, whichever backend
    /// reported it: the emulator's `mapping_created`, or a kernel router's
    /// new conntrack entry whose reply goes to another endpoint than the
    /// originator's (a translated flow).
    pub fn new_mapping(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        match self {
            NatEvent::MappingCreated {
                internal, external, ..
            } => Some((*internal, *external)),
            NatEvent::Conntrack(c)
                if c.change == crate::kernel::conntrack::ConntrackChange::New
                    && c.internal != c.external =>
            {
                Some((c.internal, c.external))
            }
            _ => None,
        }
    }
}
