//! The NAT's mapping table: which internal endpoint owns which external port, the
//! remote endpoints (sessions) seen on each mapping, their idle timeouts, and port allocation.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use pnet_packet::tcp::TcpFlags;
use punchscope_analysis::nat::{Allocation, Filtering, Mapping as MappingBehaviour};
use rand::Rng;
use serde::Serialize;

use super::config::Timeouts;
use super::packet::Protocol;

const FIRST_PORT: u16 = 1024;
const PORT_COUNT: u32 = 65536 - FIRST_PORT as u32;

/// What the mapping behaviour keys a mapping on, besides the internal endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RemoteKey {
    Any,
    Address(Ipv4Addr),
    Endpoint(SocketAddrV4),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MappingKey {
    proto: Protocol,
    internal: SocketAddrV4,
    remote: RemoteKey,
}

/// Why a mapping or session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// Idle longer than its timeout.
    Expired,
    /// A TCP RST passed through (`rst_closes`).
    Reset,
    /// A new SYN reused the endpoints of a session closed by FIN both ways:
    /// the old session ends and the SYN is handled as a new connection, as
    /// Linux conntrack does.
    Reopened,
    /// A port mapping protocol's deletion request ended an explicit mapping.
    Unmapped,
}

/// Direction of a packet through the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// LAN to WAN.
    Outbound,
    /// WAN to LAN.
    Inbound,
}

#[derive(Debug, Clone, Default)]
struct Session {
    last_active: Option<Instant>,
    syn_out: bool,
    syn_in: bool,
    fin_out: bool,
    fin_in: bool,
    reset: bool,
}

impl Session {
    /// Closed by FIN in both directions. A reset session is `rst_closes`'s
    /// business: without it, the session and its filter state stay until timeout.
    fn is_closed(&self) -> bool {
        self.fin_out && self.fin_in
    }

    fn is_established(&self) -> bool {
        self.syn_out && self.syn_in && !(self.fin_out && self.fin_in) && !self.reset
    }

    fn timeout(&self, proto: Protocol, timeouts: &Timeouts) -> Duration {
        match proto {
            Protocol::Udp => timeouts.udp,
            Protocol::Tcp if self.is_established() => timeouts.tcp_established,
            Protocol::Tcp => timeouts.tcp_transitory,
        }
    }

    fn expired(&self, proto: Protocol, timeouts: &Timeouts, now: Instant) -> bool {
        let last = self.last_active.expect("sessions are touched on creation");
        now.saturating_duration_since(last) > self.timeout(proto, timeouts)
    }
}

/// One mapping: an internal endpoint bound to an external port.
#[derive(Debug, Clone)]
pub struct MappingEntry {
    key: MappingKey,
    pub external_port: u16,
    sessions: HashMap<SocketAddrV4, Session>,
    /// Until when a port mapping protocol (PCP, NAT-PMP) holds this mapping
    /// open: it admits anyone and outlives its sessions until then.
    explicit_until: Option<Instant>,
}

impl MappingEntry {
    pub fn proto(&self) -> Protocol {
        self.key.proto
    }

    pub fn internal(&self) -> SocketAddrV4 {
        self.key.internal
    }

    /// The remote endpoints this mapping currently has sessions with.
    pub fn remotes(&self) -> impl Iterator<Item = SocketAddrV4> + '_ {
        self.sessions.keys().copied()
    }
}

/// A mapping or session that went away, for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    pub proto: Protocol,
    pub internal: SocketAddrV4,
    pub external_port: u16,
    /// The session's remote; `None` when the whole mapping went.
    pub remote: Option<SocketAddrV4>,
    pub reason: RemovalReason,
}

/// Result of looking up an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Admitted { internal: SocketAddrV4 },
    NoMapping,
    Filtered,
}

/// Result of an outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    Mapped {
        external_port: u16,
        created: bool,
    },
    /// No mapping and this packet may not create one (a non-SYN TCP segment without `tcp_loose`).
    NotAllowed,
    /// Every external port is taken.
    Exhausted,
}

/// All mappings of one NAT.
#[derive(Debug)]
pub struct MappingTable {
    mapping: MappingBehaviour,
    filtering: Filtering,
    allocation: Allocation,
    timeouts: Timeouts,
    rst_closes: bool,
    tcp_loose: bool,
    sequential_next: u16,
    sequential_step: u16,
    random_ports: (u16, u16),
    by_external: HashMap<(Protocol, u16), MappingEntry>,
    by_key: HashMap<MappingKey, u16>,
    /// (protocol, internal, remote) -> external port of the mapping holding that session.
    /// Replies belong to their session's mapping even when the mapping behaviour
    /// would key them elsewhere (an ADM/APDM mapping that admitted a stranger under EIF/ADF).
    by_session: HashMap<(Protocol, SocketAddrV4, SocketAddrV4), u16>,
    removals: Vec<Removal>,
    /// Explicit mappings whose lifetime ran out, as (protocol, internal endpoint, external port).
    lapsed: Vec<(Protocol, SocketAddrV4, u16)>,
}

/// The table's behaviour settings.
#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    pub mapping: MappingBehaviour,
    pub filtering: Filtering,
    pub allocation: Allocation,
    pub timeouts: Timeouts,
    pub rst_closes: bool,
    pub tcp_loose: bool,
    pub sequential_base: u16,
    pub sequential_step: u16,
    /// First and last port of `random` allocation.
    pub random_ports: (u16, u16),
}

impl MappingTable {
    pub fn new(config: TableConfig) -> Self {
        Self {
            mapping: config.mapping,
            filtering: config.filtering,
            allocation: config.allocation,
            timeouts: config.timeouts,
            rst_closes: config.rst_closes,
            tcp_loose: config.tcp_loose,
            sequential_next: config.sequential_base.max(FIRST_PORT),
            sequential_step: config.sequential_step.max(1),
            random_ports: (
                config.random_ports.0.max(FIRST_PORT),
                config
                    .random_ports
                    .1
                    .max(config.random_ports.0.max(FIRST_PORT)),
            ),
            by_external: HashMap::new(),
            by_key: HashMap::new(),
            by_session: HashMap::new(),
            removals: Vec::new(),
            lapsed: Vec::new(),
        }
    }

    /// Mappings and sessions removed since the last call.
    pub fn drain_removals(&mut self) -> impl Iterator<Item = Removal> + '_ {
        self.removals.drain(..)
    }

    /// The explicit mappings whose lifetime ran out since the last call.
    pub fn drain_lapsed(&mut self) -> impl Iterator<Item = (Protocol, SocketAddrV4, u16)> + '_ {
        self.lapsed.drain(..)
    }

    pub fn len(&self) -> usize {
        self.by_external.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_external.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &MappingEntry> {
        self.by_external.values()
    }

    fn key_for(&self, proto: Protocol, internal: SocketAddrV4, remote: SocketAddrV4) -> MappingKey {
        let remote = match self.mapping {
            MappingBehaviour::Eim => RemoteKey::Any,
            MappingBehaviour::Adm => RemoteKey::Address(*remote.ip()),
            MappingBehaviour::Apdm => RemoteKey::Endpoint(remote),
        };
        MappingKey {
            proto,
            internal,
            remote,
        }
    }

    /// Translates an outbound packet's source, creating the mapping if needed.
    pub fn outbound(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        tcp_flags: u8,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Outbound {
        if is_bare_syn(tcp_flags) {
            if let Some(port) = self.by_session.get(&(proto, internal, remote)).copied() {
                self.end_if_closed((proto, port), remote);
            }
        }
        let key = self.key_for(proto, internal, remote);
        let candidates = [
            self.by_session.get(&(proto, internal, remote)).copied(),
            self.by_key.get(&key).copied(),
        ];
        let existing = candidates
            .into_iter()
            .flatten()
            .find(|port| self.refresh_expiry((proto, *port), now));
        let (external_port, created) = match existing {
            Some(port) => (port, false),
            None => {
                let may_create = proto == Protocol::Udp || self.tcp_loose || is_bare_syn(tcp_flags);
                if !may_create {
                    return Outbound::NotAllowed;
                }
                let Some(port) = self.allocate(proto, internal.port(), rng) else {
                    return Outbound::Exhausted;
                };
                self.by_key.insert(key, port);
                self.by_external.insert(
                    (proto, port),
                    MappingEntry {
                        key,
                        external_port: port,
                        sessions: HashMap::new(),
                        explicit_until: None,
                    },
                );
                (port, true)
            }
        };
        self.touch(
            proto,
            external_port,
            remote,
            Direction::Outbound,
            tcp_flags,
            now,
        );
        Outbound::Mapped {
            external_port,
            created,
        }
    }

    /// Decides whether an inbound packet from `remote` to `external_port` is admitted.
    ///
    /// An admitted packet updates (or opens) its session; a refused one changes nothing.
    pub fn inbound(
        &mut self,
        proto: Protocol,
        external_port: u16,
        remote: SocketAddrV4,
        tcp_flags: u8,
        now: Instant,
    ) -> Inbound {
        self.lookup_inbound(proto, external_port, remote, tcp_flags, now, true)
    }

    /// Like [`MappingTable::inbound`] for a packet one of our own hosts hairpinned:
    /// it needs a mapping but is not filtered, as the router knows both ends.
    pub fn hairpin_inbound(
        &mut self,
        proto: Protocol,
        external_port: u16,
        remote: SocketAddrV4,
        tcp_flags: u8,
        now: Instant,
    ) -> Inbound {
        self.lookup_inbound(proto, external_port, remote, tcp_flags, now, false)
    }

    fn lookup_inbound(
        &mut self,
        proto: Protocol,
        external_port: u16,
        remote: SocketAddrV4,
        tcp_flags: u8,
        now: Instant,
        filter: bool,
    ) -> Inbound {
        let id = (proto, external_port);
        if proto == Protocol::Tcp && is_bare_syn(tcp_flags) {
            self.end_if_closed(id, remote);
        }
        if !self.by_external.contains_key(&id) || !self.refresh_expiry(id, now) {
            return Inbound::NoMapping;
        }
        let entry = &self.by_external[&id];
        let admitted = match self.filtering {
            _ if !filter => true,
            _ if entry.explicit_until.is_some() => true,
            Filtering::Eif => true,
            Filtering::Adf => entry.sessions.keys().any(|r| r.ip() == remote.ip()),
            Filtering::Apdf => entry.sessions.contains_key(&remote),
        };
        if !admitted {
            return Inbound::Filtered;
        }
        let internal = entry.key.internal;
        self.touch(
            proto,
            external_port,
            remote,
            Direction::Inbound,
            tcp_flags,
            now,
        );
        Inbound::Admitted { internal }
    }

    /// The internal endpoint behind `external_port` if `remote` has a live
    /// session on it: what an ICMP error about that flow may be delivered to.
    pub fn related(
        &mut self,
        proto: Protocol,
        external_port: u16,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Option<SocketAddrV4> {
        let id = (proto, external_port);
        if !self.by_external.contains_key(&id) || !self.refresh_expiry(id, now) {
            return None;
        }
        let entry = &self.by_external[&id];
        entry
            .sessions
            .contains_key(&remote)
            .then_some(entry.key.internal)
    }

    /// Drops every expired session and mapping (bounds memory; lookups also expire lazily).
    pub fn sweep(&mut self, now: Instant) {
        let ids: Vec<_> = self.by_external.keys().copied().collect();
        for id in ids {
            self.refresh_expiry(id, now);
        }
    }

    /// Opens (or renews) an explicit mapping for `internal`, as a PCP MAP or
    /// NAT-PMP request asks: it admits inbound packets from anyone until
    /// `until` and outlives its sessions until then. An existing mapping of
    /// the internal endpoint that any remote may use (the EIM one, or an
    /// earlier explicit one) is reused with its port; otherwise the
    /// `suggested` port is taken if free, else one by the allocation rule.
    /// Returns the external port; `None` when every port is taken.
    pub fn map_explicit(
        &mut self,
        proto: Protocol,
        internal: SocketAddrV4,
        suggested: Option<u16>,
        until: Instant,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<u16> {
        let key = MappingKey {
            proto,
            internal,
            remote: RemoteKey::Any,
        };
        if let Some(port) = self.by_key.get(&key).copied() {
            if self.refresh_expiry((proto, port), now) {
                let entry = self.by_external.get_mut(&(proto, port)).expect("alive");
                entry.explicit_until = Some(until);
                return Some(port);
            }
        }
        let port = match suggested.filter(|p| self.port_free(proto, *p)) {
            Some(port) => port,
            None => self.allocate(proto, internal.port(), rng)?,
        };
        self.by_key.insert(key, port);
        self.by_external.insert(
            (proto, port),
            MappingEntry {
                key,
                external_port: port,
                sessions: HashMap::new(),
                explicit_until: Some(until),
            },
        );
        Some(port)
    }

    /// Ends the explicit mapping of `internal` (a deletion request); the
    /// mapping stays as an ordinary one while it still has sessions. Returns
    /// the external port it had, or `None` when there was none.
    pub fn unmap_explicit(&mut self, proto: Protocol, internal: SocketAddrV4) -> Option<u16> {
        let key = MappingKey {
            proto,
            internal,
            remote: RemoteKey::Any,
        };
        let port = self.by_key.get(&key).copied()?;
        let id = (proto, port);
        self.by_external.get(&id)?.explicit_until?;
        self.end_explicit(id, RemovalReason::Unmapped);
        Some(port)
    }

    /// The mapping's explicit hold ends: with no session left, the mapping goes.
    fn end_explicit(&mut self, id: (Protocol, u16), reason: RemovalReason) {
        let Some(entry) = self.by_external.get_mut(&id) else {
            return;
        };
        entry.explicit_until = None;
        if entry.sessions.is_empty() {
            self.remove_mapping(id, reason);
        }
    }

    /// Removes the expired sessions of one mapping; returns whether the mapping is still alive.
    fn refresh_expiry(&mut self, id: (Protocol, u16), now: Instant) -> bool {
        let timeouts = self.timeouts;
        let Some(entry) = self.by_external.get_mut(&id) else {
            return false;
        };
        let proto = entry.key.proto;
        let expired: Vec<SocketAddrV4> = entry
            .sessions
            .iter()
            .filter(|(_, session)| session.expired(proto, &timeouts, now))
            .map(|(remote, _)| *remote)
            .collect();
        for remote in expired {
            self.end_session(id, remote, RemovalReason::Expired);
        }
        let lapsed = self
            .by_external
            .get(&id)
            .and_then(|entry| entry.explicit_until)
            .is_some_and(|until| now >= until);
        if lapsed {
            if let Some(entry) = self.by_external.get(&id) {
                self.lapsed
                    .push((entry.key.proto, entry.key.internal, id.1));
            }
            self.end_explicit(id, RemovalReason::Expired);
        }
        self.by_external.contains_key(&id)
    }

    /// Ends one session (the filter state for that remote); the mapping goes
    /// with its last session.
    fn end_session(&mut self, id: (Protocol, u16), remote: SocketAddrV4, reason: RemovalReason) {
        let Some(entry) = self.by_external.get_mut(&id) else {
            return;
        };
        if entry.sessions.remove(&remote).is_none() {
            return;
        }
        let (proto, internal) = (entry.key.proto, entry.key.internal);
        let mapping_alive = !entry.sessions.is_empty() || entry.explicit_until.is_some();
        self.by_session.remove(&(proto, internal, remote));
        self.removals.push(Removal {
            proto,
            internal,
            external_port: id.1,
            remote: Some(remote),
            reason,
        });
        if !mapping_alive {
            self.remove_mapping(id, reason);
        }
    }

    fn remove_mapping(&mut self, id: (Protocol, u16), reason: RemovalReason) {
        if let Some(entry) = self.by_external.remove(&id) {
            self.by_key.remove(&entry.key);
            for remote in entry.sessions.keys() {
                self.by_session
                    .remove(&(entry.key.proto, entry.key.internal, *remote));
            }
            self.removals.push(Removal {
                proto: entry.key.proto,
                internal: entry.key.internal,
                external_port: id.1,
                remote: None,
                reason,
            });
        }
    }

    /// Records a packet on a session, following TCP flags for timeouts and RST handling.
    fn touch(
        &mut self,
        proto: Protocol,
        external_port: u16,
        remote: SocketAddrV4,
        direction: Direction,
        tcp_flags: u8,
        now: Instant,
    ) {
        let id = (proto, external_port);
        let entry = self
            .by_external
            .get_mut(&id)
            .expect("touch on a live mapping");
        let internal = entry.key.internal;
        let session = entry.sessions.entry(remote).or_default();
        session.last_active = Some(now);
        self.by_session
            .insert((proto, internal, remote), external_port);
        if proto != Protocol::Tcp {
            return;
        }
        let outbound = direction == Direction::Outbound;
        if tcp_flags & TcpFlags::SYN != 0 {
            if outbound {
                session.syn_out = true;
            } else {
                session.syn_in = true;
            }
            session.reset = false;
        }
        if tcp_flags & TcpFlags::FIN != 0 {
            if outbound {
                session.fin_out = true;
            } else {
                session.fin_in = true;
            }
        }
        if tcp_flags & TcpFlags::RST != 0 {
            if self.rst_closes {
                self.end_session(id, remote, RemovalReason::Reset);
            } else {
                session.reset = true;
            }
        }
    }

    /// Ends the session with `remote` on mapping `id` if it is closed (a new
    /// SYN is about to reuse its endpoints), and the mapping with its last session.
    fn end_if_closed(&mut self, id: (Protocol, u16), remote: SocketAddrV4) {
        let closed = self
            .by_external
            .get(&id)
            .and_then(|entry| entry.sessions.get(&remote))
            .is_some_and(Session::is_closed);
        if closed {
            self.end_session(id, remote, RemovalReason::Reopened);
        }
    }

    fn port_free(&self, proto: Protocol, port: u16) -> bool {
        port >= FIRST_PORT && !self.by_external.contains_key(&(proto, port))
    }

    /// Picks the external port of a new mapping.
    fn allocate(&mut self, proto: Protocol, internal_port: u16, rng: &mut impl Rng) -> Option<u16> {
        match self.allocation {
            Allocation::Preserve => {
                let start = internal_port.max(FIRST_PORT);
                self.scan_from(proto, start, 1)
            }
            Allocation::Sequential => {
                let port = self.scan_from(proto, self.sequential_next, self.sequential_step)?;
                self.sequential_next = step_port(port, self.sequential_step);
                Some(port)
            }
            Allocation::Random => {
                let (first, last) = self.random_ports;
                for _ in 0..64 {
                    let port = rng.gen_range(first..=last);
                    if self.port_free(proto, port) {
                        return Some(port);
                    }
                }
                // Crowded: the first free port from a random start, within the range.
                let start = rng.gen_range(first..=last);
                (start..=last)
                    .chain(first..start)
                    .find(|p| self.port_free(proto, *p))
            }
        }
    }

    /// The first free port at `start`, `start + step`, ... wrapping within the port range.
    fn scan_from(&self, proto: Protocol, start: u16, step: u16) -> Option<u16> {
        let mut port = start.max(FIRST_PORT);
        for _ in 0..PORT_COUNT {
            if self.port_free(proto, port) {
                return Some(port);
            }
            port = step_port(port, step);
        }
        // A step that shares a factor with the range size may skip free ports; fall back to all of them.
        (FIRST_PORT..=u16::MAX).find(|p| self.port_free(proto, *p))
    }
}

/// A SYN without ACK or RST: the first segment of a new connection.
fn is_bare_syn(tcp_flags: u8) -> bool {
    tcp_flags & TcpFlags::SYN != 0 && tcp_flags & (TcpFlags::ACK | TcpFlags::RST) == 0
}

fn step_port(port: u16, step: u16) -> u16 {
    let offset = (u32::from(port - FIRST_PORT) + u32::from(step)) % PORT_COUNT;
    FIRST_PORT + offset as u16
}
