//! Port mapping on kernel routers: Debian's miniupnpd (nftables backend) in the router namespace, answering NAT-PMP and PCP, and UPnP IGD, on the LAN as many home routers do.
//!
//! Sans-io here: the scenario's port mapping settings ([`PortmapSpec`]), the
//! miniupnpd configuration file ([`miniupnpd_config`]), the nftables table
//! it fills and the router rules around it ([`ruleset`]), its log lines as
//! lab events ([`parse_log_line`]) and the router's mappings read back from
//! nftables ([`parse_mappings`]). [`MiniUpnpd`] runs the daemon: a child of
//! the lab process, ended by its PID at teardown (and by `PR_SET_PDEATHSIG`
//! if the lab is killed), its configuration in a temporary folder removed
//! with it.
//!
//! miniupnpd will not map ports when its WAN address is reserved, and lab
//! addresses are (documentation ranges): it is told to learn its address by
//! STUN from the lab's own responder ([`crate::stun`]), which shows it its
//! own address from every port, so it maps. Behind a carrier-grade NAT the
//! same check finds a restrictive NAT, and it refuses, as it would at home.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{LAN_DEVICE, LAN_SIDE, TABLE as NAT_TABLE, WAN_DEVICE};
use crate::events::EventLog;
use crate::nat::{NatEvent, TimedEvent};
use crate::netns::{self, NetnsError};

/// The nftables table miniupnpd writes its rules into (it does not create it).
pub const TABLE: &str = "punchscope_portmap";
/// miniupnpd's chain of DNAT rules, one per mapping.
pub const DNAT_CHAIN: &str = "prerouting_miniupnpd";
/// The port NAT-PMP and PCP servers listen on.
pub const SERVER_PORT: u16 = 5351;
/// The port UPnP's SSDP listens on.
pub const SSDP_PORT: u16 = 1900;
/// How long miniupnpd may take to start (its STUN check waits up to 3 s a round).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What a router without port mapping answers to a request on port 5351.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClosedAnswer {
    /// ICMP port unreachable: what Linux does when nothing listens.
    #[default]
    Icmp,
    /// Nothing at all, as a router whose firewall drops it.
    Drop,
}

/// A router's port mapping, from its scenario keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortmapSpec {
    /// miniupnpd runs and answers NAT-PMP and PCP (one switch in miniupnpd).
    pub enabled: bool,
    /// miniupnpd runs and answers UPnP IGD (SSDP on port 1900, its HTTP server).
    pub upnp: bool,
    /// miniupnpd's `min_lifetime` / `max_lifetime` (PCP lifetimes are held within them).
    pub min_lifetime_s: u32,
    pub max_lifetime_s: u32,
    /// Internal and external ports a host may map.
    pub ports: (u16, u16),
    /// Every request is refused (NOT_AUTHORIZED), fast: the lab's [`Refuser`]
    /// plays the router instead of miniupnpd.
    pub refuse: bool,
    /// Without port mapping: what port 5351 answers.
    pub closed: ClosedAnswer,
}

impl Default for PortmapSpec {
    fn default() -> Self {
        PortmapSpec {
            enabled: false,
            upnp: false,
            min_lifetime_s: 120,
            max_lifetime_s: 86400,
            ports: (1024, 65535),
            refuse: false,
            closed: ClosedAnswer::Icmp,
        }
    }
}

impl PortmapSpec {
    /// Whether miniupnpd runs on the router (a refusing router runs the
    /// lab's [`Refuser`] instead).
    pub fn runs_miniupnpd(&self) -> bool {
        (self.enabled && !self.refuse) || self.upnp
    }

    /// Whether the router answers any port mapping protocol at all.
    pub fn offers_any(&self) -> bool {
        self.enabled || self.upnp
    }

    /// The lines miniupnpd logs once it listens for what it answers.
    pub fn ready_lines(&self) -> Vec<&'static str> {
        let mut lines = Vec::new();
        if self.enabled {
            lines.push("Listening for NAT-PMP/PCP traffic");
        }
        if self.upnp {
            lines.push("HTTP listening on port");
        }
        lines
    }
}

/// miniupnpd's configuration for a router whose hosts are on `lan_net`/24,
/// learning its address from the STUN responder at `stun`.
pub fn miniupnpd_config(spec: &PortmapSpec, lan_net: Ipv4Addr, stun: SocketAddrV4) -> String {
    let (low, high) = spec.ports;
    format!(
        "# Written by punchscope's lab for one kernel router; removed with it.
ext_ifname={WAN_DEVICE}
listening_ip={LAN_DEVICE}
enable_natpmp={}
enable_upnp={}
ext_perform_stun=yes
ext_stun_host={}
ext_stun_port={}
secure_mode=yes
system_uptime=no
min_lifetime={}
max_lifetime={}
upnp_table_name={TABLE}
upnp_nat_table_name={TABLE}
upnp_forward_chain=miniupnpd
upnp_nat_chain={DNAT_CHAIN}
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow {low}-{high} {lan_net}/24 {low}-{high}
deny 0-65535 0.0.0.0/0 0-65535
",
        yes_no(spec.enabled),
        yes_no(spec.upnp),
        stun.ip(),
        stun.port(),
        spec.min_lifetime_s,
        spec.max_lifetime_s,
    )
}

fn yes_no(on: bool) -> &'static str {
    if on {
        "yes"
    } else {
        "no"
    }
}

/// The nftables script (for `nft -f -`, after the router's own rule set)
/// of a router's port mapping: with miniupnpd, its table and chains, STUN
/// answers from the lab's servers let in, and DNAT-ed connections forwarded;
/// without, the [`ClosedAnswer`] of ports 5351 and 1900. `None` when nothing is to add.
pub fn ruleset(spec: &PortmapSpec, servers: &[Ipv4Addr]) -> Option<String> {
    if !spec.offers_any() {
        return match spec.closed {
            ClosedAnswer::Icmp => None,
            ClosedAnswer::Drop => Some(format!(
                "insert rule ip {NAT_TABLE} input iifname \"{LAN_SIDE}\" udp dport {{ {SERVER_PORT}, {SSDP_PORT} }} drop\n"
            )),
        };
    }
    let servers: Vec<String> = servers.iter().map(Ipv4Addr::to_string).collect();
    let ports: Vec<String> = crate::stun::PORTS.iter().map(u16::to_string).collect();
    Some(format!(
        "table inet {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tjump miniupnpd
\t}}
\tchain miniupnpd {{
\t}}
\tchain prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tjump {DNAT_CHAIN}
\t}}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tjump postrouting_miniupnpd
\t}}
\tchain {DNAT_CHAIN} {{
\t}}
\tchain postrouting_miniupnpd {{
\t}}
}}
# miniupnpd's STUN check: the answers of the lab's responder come in on the WAN.
insert rule ip {NAT_TABLE} input iifname \"{WAN_DEVICE}\" ip saddr {{ {} }} udp sport {{ {} }} accept
# A connection miniupnpd's DNAT let in is forwarded to its host.
insert rule ip {NAT_TABLE} forward ct status dnat accept
",
        servers.join(", "),
        ports.join(", "),
    ))
}

/// One port mapping as the router's nftables state holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RouterMapping {
    pub external_port: u16,
    pub internal: SocketAddrV4,
}

/// The mappings in `nft list chain inet punchscope_portmap prerouting_miniupnpd`:
/// lines like `iif "wan0" @nh,72,8 0x6 th dport 8333 dnat ip to 192.168.1.2:8333`.
pub fn parse_mappings(listing: &str) -> Vec<RouterMapping> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .windows(2)
                    .find(|w| w[0] == key)
                    .map(|w| w[1].to_string())
            };
            let external_port = after("dport")?.parse().ok()?;
            let target = words
                .windows(3)
                .find(|w| w[0] == "dnat" && w[2] == "to")
                .map(|_| words.last().copied())??;
            Some(RouterMapping {
                external_port,
                internal: target.parse().ok()?,
            })
        })
        .collect()
}

/// Which protocol a miniupnpd log line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortmapProtocol {
    Natpmp,
    Pcp,
    Upnp,
}

/// What happened to a mapping, as miniupnpd logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortmapChange {
    /// A NAT-PMP request (miniupnpd logs no separate success; lifetime 0 asks a deletion).
    Requested,
    Added,
    Removed,
    Failed,
    /// The mapping's lifetime ran out without a renewal (emulator routers
    /// report it; miniupnpd's log does not say).
    Expired,
}

/// A port mapping event of a kernel router, from miniupnpd's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortmapEvent {
    pub protocol: PortmapProtocol,
    pub change: PortmapChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<SocketAddrV4>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u32>,
}

/// Reads one miniupnpd log line; `None` for lines that are not about a mapping.
///
/// ```text
/// miniupnpd[13123]: NAT-PMP port mapping request : 8333->192.168.1.2:8333 tcp lifetime=120s
/// miniupnpd[13123]: NAT-PMP TCP port 8333 mapping removed
/// miniupnpd[13123]: PCP MAP: added mapping TCP 9000->192.168.1.2:9000 'PCP MAP 0a1b...'
/// miniupnpd[13123]: PCP: TCP port 9000 mapping removed
/// miniupnpd[13123]: AddPortMapping: ext port 8333 to 192.168.1.2:8333 protocol TCP for: punchscope probe leaseduration=120 rhost=
/// miniupnpd[13123]: redirecting port 8333 to 192.168.1.2:8333 protocol TCP for: punchscope probe
/// miniupnpd[13123]: DeletePortMapping: external port: 8333, protocol: TCP
/// ```
pub fn parse_log_line(line: &str) -> Option<PortmapEvent> {
    let text = line.split_once("]: ").map_or(line, |(_, t)| t);
    let arrow = |word: &str| -> Option<(u16, SocketAddrV4)> {
        let (external, internal) = word.split_once("->")?;
        Some((external.parse().ok()?, internal.parse().ok()?))
    };
    let event = |protocol, change, ends: Option<(u16, SocketAddrV4)>, lifetime_s| PortmapEvent {
        protocol,
        change,
        external_port: ends.map(|e| e.0),
        internal: ends.map(|e| e.1),
        lifetime_s,
    };
    if let Some(rest) = text.strip_prefix("NAT-PMP port mapping request : ") {
        let mut words = rest.split_whitespace();
        let ends = arrow(words.next()?)?;
        let lifetime = words
            .find_map(|w| w.strip_prefix("lifetime="))
            .and_then(|l| l.trim_end_matches('s').parse().ok());
        return Some(event(
            PortmapProtocol::Natpmp,
            PortmapChange::Requested,
            Some(ends),
            lifetime,
        ));
    }
    for action in ["AddPortMapping: ext port ", "AddAnyPortMapping: ext port "] {
        if let Some(rest) = text.strip_prefix(action) {
            // "8333 to 192.168.1.2:8333 protocol TCP for: ... leaseduration=120 rhost=..."
            let mut words = rest.split_whitespace();
            let external = words.next()?.parse().ok()?;
            let internal = words.nth(1)?.parse().ok()?;
            let lifetime = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("leaseduration="))
                .and_then(|l| l.parse().ok());
            // Logged as the request arrives, like NAT-PMP's.
            return Some(event(
                PortmapProtocol::Upnp,
                PortmapChange::Requested,
                Some((external, internal)),
                lifetime,
            ));
        }
    }
    // Any protocol's mapping, once nftables holds it; NAT-PMP and PCP name
    // theirs in the description, a UPnP client's is its own (ours: "punchscope probe").
    if let Some(rest) = text.strip_prefix("redirecting port ") {
        // "8333 to 192.168.1.2:8333 protocol TCP for: punchscope probe"
        let (ends, description) = rest.split_once(" for: ")?;
        if description.starts_with("NAT-PMP") || description.starts_with("PCP") {
            return None;
        }
        let mut words = ends.split_whitespace();
        let external = words.next()?.parse().ok()?;
        let internal = words.nth(1)?.parse().ok()?;
        return Some(event(
            PortmapProtocol::Upnp,
            PortmapChange::Added,
            Some((external, internal)),
            None,
        ));
    }
    if let Some(rest) = text.strip_prefix("DeletePortMapping: external port: ") {
        let port = rest.split(',').next()?.trim().parse().ok()?;
        return Some(PortmapEvent {
            protocol: PortmapProtocol::Upnp,
            change: PortmapChange::Removed,
            external_port: Some(port),
            internal: None,
            lifetime_s: None,
        });
    }
    if let Some(rest) = text.strip_prefix("PCP MAP: added mapping ") {
        let ends = rest.split_whitespace().nth(1).and_then(arrow)?;
        return Some(event(
            PortmapProtocol::Pcp,
            PortmapChange::Added,
            Some(ends),
            None,
        ));
    }
    let removed = |rest: &str, protocol| {
        let port = rest.split_whitespace().nth(2)?.parse().ok()?;
        rest.ends_with("mapping removed").then_some(PortmapEvent {
            protocol,
            change: PortmapChange::Removed,
            external_port: Some(port),
            internal: None,
            lifetime_s: None,
        })
    };
    if let Some(rest) = text.strip_prefix("NAT-PMP ") {
        if rest.ends_with("mapping removed") {
            return removed(rest, PortmapProtocol::Natpmp);
        }
    }
    if let Some(rest) = text.strip_prefix("PCP: ") {
        if rest.ends_with("mapping removed") {
            return removed(rest, PortmapProtocol::Pcp);
        }
    }
    for (prefix, protocol) in [
        ("Failed to add NAT-PMP", PortmapProtocol::Natpmp),
        (
            "Failed to find available eport for NAT-PMP",
            PortmapProtocol::Natpmp,
        ),
        ("Failed to remove NAT-PMP", PortmapProtocol::Natpmp),
        ("Failed to remove PCP", PortmapProtocol::Pcp),
    ] {
        if text.starts_with(prefix) {
            return Some(event(protocol, PortmapChange::Failed, None, None));
        }
    }
    None
}

/// miniupnpd could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot write miniupnpd's configuration in {dir}: {source}")]
    Files { dir: PathBuf, source: io::Error },
    #[error("cannot start miniupnpd in {netns}: {source} (apt-get install miniupnpd-nftables)")]
    Spawn { netns: String, source: io::Error },
    #[error("miniupnpd in {netns} did not start listening within {START_TIMEOUT:?}; its last words: {log}")]
    NotReady { netns: String, log: String },
}

/// A running miniupnpd in a router namespace, logging its mappings to the
/// lab's event log until it is dropped (ended by PID, folder removed).
pub struct MiniUpnpd {
    child: Child,
    reader: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl MiniUpnpd {
    /// Writes the configuration into `dir` (created), starts miniupnpd in
    /// `netns_name` and waits until it has logged every one of `ready_lines`
    /// (it listens for what it answers).
    pub fn start(
        netns_name: &str,
        router: &str,
        dir: &Path,
        config: &str,
        ready_lines: Vec<&'static str>,
        events: Arc<EventLog>,
    ) -> Result<Self, PortmapError> {
        let files = |source| PortmapError::Files {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(files)?;
        let config_path = dir.join("miniupnpd.conf");
        std::fs::write(&config_path, config).map_err(files)?;
        // Its whole log, beside its configuration, for whoever inspects a running lab.
        let mut log = std::fs::File::create(dir.join("miniupnpd.log")).map_err(files)?;
        let mut command = netns::command_in(netns_name, "miniupnpd")?;
        command
            .arg("-f")
            .arg(&config_path)
            .arg("-d")
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. If the lab process dies without
        // its teardown (kill -9), miniupnpd dies with it.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| PortmapError::Spawn {
            netns: netns_name.to_string(),
            source,
        })?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let router = router.to_string();
        let reader = std::thread::spawn(move || {
            let mut last = std::collections::VecDeque::new();
            let mut ready = Some(ready_tx);
            let mut waiting = ready_lines;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                waiting.retain(|l| !line.contains(l));
                if waiting.is_empty() {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                if let Some(event) = parse_log_line(&line) {
                    events.record(
                        &router,
                        [TimedEvent {
                            at: Instant::now(),
                            event: NatEvent::PortMap(event),
                        }],
                    );
                }
                if ready.is_some() {
                    last.push_back(line);
                    if last.len() > 5 {
                        last.pop_front();
                    }
                }
            }
            if let Some(tx) = ready {
                let _ = tx.send(Err(Vec::from(last).join(" | ")));
            }
        });
        let mut daemon = MiniUpnpd {
            child,
            reader: Some(reader),
            dir: dir.to_path_buf(),
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => Ok(daemon),
            outcome => {
                let log = match outcome {
                    Ok(Err(log)) => log,
                    _ => "(nothing)".into(),
                };
                daemon.stop();
                Err(PortmapError::NotReady {
                    netns: netns_name.to_string(),
                    log,
                })
            }
        }
    }

    /// Ends the daemon by its PID: SIGTERM (it removes its rules), SIGKILL
    /// after 2 s; then its reader and its folder.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill on our own child's PID, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for MiniUpnpd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a refusal says it holds (RFC 6887 section 7.4: NOT_AUTHORIZED is a long-lifetime error).
const REFUSAL_LIFETIME_S: u32 = 1800;

/// The answer of a gateway that refuses every port mapping: PCP
/// NOT_AUTHORIZED (RFC 6887 section 7.4) or NAT-PMP result 2, "Not
/// Authorized/Refused" (RFC 6886 section 3.5), each echoing what the
/// request carried as the RFCs ask. `epoch_s` is the responder's uptime.
/// `None` for what no gateway answers (too short, an answer itself).
pub fn refusal(request: &[u8], epoch_s: u32) -> Option<Vec<u8>> {
    const NOT_AUTHORIZED: u8 = 2;
    let (&version, rest) = request.split_first()?;
    let &opcode = rest.first()?;
    if opcode & 0x80 != 0 {
        return None;
    }
    match version {
        0 => {
            // NAT-PMP: the request's opcode + 128, result, epoch; a mapping
            // answer also echoes the internal port, with no external port and no lifetime.
            let mut m = vec![0, 128 + opcode, 0, NOT_AUTHORIZED];
            m.extend(epoch_s.to_be_bytes());
            match opcode {
                0 => m.extend([0u8; 4]),
                1 | 2 if request.len() >= 12 => {
                    m.extend(&request[4..6]);
                    m.extend([0u8; 6]);
                }
                _ => {}
            }
            Some(m)
        }
        _ if request.len() < 24 || request.len() > 1100 || request.len() % 4 != 0 => None,
        _ => {
            // PCP: the request echoed (opcode data included), answer bit set,
            // result, lifetime of the error, epoch, reserved bytes zeroed;
            // any other version is refused as UNSUPP_VERSION (result 1).
            let mut m = request.to_vec();
            m[0] = 2;
            m[1] = opcode | 0x80;
            m[2] = 0;
            m[3] = if version == 2 { NOT_AUTHORIZED } else { 1 };
            m[4..8].copy_from_slice(&REFUSAL_LIFETIME_S.to_be_bytes());
            m[8..12].copy_from_slice(&epoch_s.to_be_bytes());
            m[12..24].fill(0);
            if opcode == 1 && m.len() >= 60 {
                // MAP: no external port or address assigned.
                m[42..60].fill(0);
            }
            Some(m)
        }
    }
}

/// The lab's refusing gateway: a socket on the router's LAN address, port
/// 5351, answering every request with [`refusal`] until dropped. It plays
/// `portmap_refuse` in place of miniupnpd, whose own refusal (a deny rule)
/// answers only after walking every external port, about 60 s a request.
pub struct Refuser {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Refuser {
    pub fn start(netns_name: &str, gateway: Ipv4Addr) -> Result<Refuser, PortmapError> {
        let addr = SocketAddrV4::new(gateway, SERVER_PORT);
        let socket =
            netns::run_in(netns_name, || std::net::UdpSocket::bind(addr))?.map_err(|source| {
                PortmapError::Spawn {
                    netns: netns_name.to_string(),
                    source,
                }
            })?;
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|source| PortmapError::Spawn {
                netns: netns_name.to_string(),
                source,
            })?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut buffer = [0u8; 1101];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let epoch = u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX);
                if let Some(answer) = refusal(&buffer[..n], epoch) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        Ok(Refuser {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_says_what_the_scenario_asked() {
        let stun: SocketAddrV4 = "198.51.100.10:3478".parse().unwrap();
        let spec = PortmapSpec {
            enabled: true,
            min_lifetime_s: 13,
            max_lifetime_s: 600,
            ports: (8000, 9000),
            ..PortmapSpec::default()
        };
        let text = miniupnpd_config(&spec, Ipv4Addr::new(192, 168, 3, 0), stun);
        for line in [
            "ext_ifname=wan0\n",
            "listening_ip=lan\n",
            "enable_natpmp=yes\n",
            "enable_upnp=no\n",
            "listening_ip=lan\n",
            "ext_stun_host=198.51.100.10\n",
            "min_lifetime=13\n",
            "max_lifetime=600\n",
            "allow 8000-9000 192.168.3.0/24 8000-9000\ndeny 0-65535 0.0.0.0/0 0-65535\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn the_rules_open_what_miniupnpd_needs_or_close_port_5351() {
        let servers = [
            Ipv4Addr::new(198, 51, 100, 10),
            Ipv4Addr::new(198, 51, 100, 11),
        ];
        let on = PortmapSpec {
            enabled: true,
            ..PortmapSpec::default()
        };
        let rules = ruleset(&on, &servers).unwrap();
        assert!(rules.contains("table inet punchscope_portmap {"), "{rules}");
        assert!(rules.contains("chain prerouting_miniupnpd {"), "{rules}");
        assert!(
            rules.contains(
                "ip saddr { 198.51.100.10, 198.51.100.11 } udp sport { 3478, 3479 } accept"
            ),
            "{rules}"
        );
        assert!(rules.contains("forward ct status dnat accept"), "{rules}");
        assert_eq!(ruleset(&PortmapSpec::default(), &servers), None);
        let silent = PortmapSpec {
            closed: ClosedAnswer::Drop,
            ..PortmapSpec::default()
        };
        assert_eq!(
            ruleset(&silent, &servers).unwrap(),
            "insert rule ip punchscope_nat input iifname \"lan*\" udp dport { 5351, 1900 } drop\n"
        );
        let upnp_only = PortmapSpec {
            upnp: true,
            ..PortmapSpec::default()
        };
        assert!(ruleset(&upnp_only, &servers)
            .unwrap()
            .contains("chain prerouting_miniupnpd {"));
    }

    #[test]
    fn mappings_are_read_back_from_the_dnat_chain() {
        let listing = "table inet punchscope_portmap {
	chain prerouting_miniupnpd {
		iif \"wan0\" @nh,72,8 0x6 th dport 8333 dnat ip to 192.168.77.2:8333
		iif \"wan0\" @nh,72,8 0x6 th dport 9000 dnat ip to 192.168.77.2:41000
	}
}";
        assert_eq!(
            parse_mappings(listing),
            vec![
                RouterMapping {
                    external_port: 8333,
                    internal: "192.168.77.2:8333".parse().unwrap()
                },
                RouterMapping {
                    external_port: 9000,
                    internal: "192.168.77.2:41000".parse().unwrap()
                },
            ]
        );
        assert!(parse_mappings("table inet punchscope_portmap {\n}\n").is_empty());
    }

    #[test]
    fn the_refusal_echoes_each_request_as_the_rfcs_ask() {
        let natpmp = [0, 2, 0, 0, 0x20, 0x8d, 0x20, 0x8d, 0, 0, 0, 120];
        assert_eq!(
            refusal(&natpmp, 7).unwrap(),
            [0, 130, 0, 2, 0, 0, 0, 7, 0x20, 0x8d, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            refusal(&[0, 0], 7).unwrap(),
            [0, 128, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0]
        );
        let mut pcp = vec![2, 1, 0, 0, 0, 0, 0, 120];
        pcp.extend([0u8; 16]);
        pcp.extend(*b"nonce-twelve");
        pcp.extend([6, 0, 0, 0, 0x20, 0x8d, 0x20, 0x8d]);
        pcp.extend([0xffu8; 16]);
        let answer = refusal(&pcp, 9).unwrap();
        assert_eq!(answer.len(), 60);
        assert_eq!(&answer[..4], &[2, 0x81, 0, 2], "NOT_AUTHORIZED");
        assert_eq!(&answer[8..12], &9u32.to_be_bytes());
        assert_eq!(&answer[24..36], b"nonce-twelve");
        assert_eq!(&answer[40..42], &[0x20, 0x8d], "internal port echoed");
        assert!(answer[42..60].iter().all(|b| *b == 0), "nothing assigned");
        let mut v1 = pcp.clone();
        v1[0] = 1;
        assert_eq!(refusal(&v1, 9).unwrap()[3], 1, "UNSUPP_VERSION");
        assert_eq!(refusal(&answer, 9), None, "answers are not answered");
        for len in 0..pcp.len() {
            let _ = refusal(&pcp[..len], 9);
        }
        assert_eq!(refusal(&[], 9), None);
        assert_eq!(refusal(&[2; 2000], 9), None);
    }

    #[test]
    fn upnp_switches_on_miniupnpd_and_its_readiness() {
        let stun: SocketAddrV4 = "198.51.100.10:3478".parse().unwrap();
        let spec = PortmapSpec {
            upnp: true,
            ..PortmapSpec::default()
        };
        let text = miniupnpd_config(&spec, Ipv4Addr::new(192, 168, 3, 0), stun);
        assert!(
            text.contains("enable_natpmp=no\nenable_upnp=yes\n"),
            "{text}"
        );
        assert!(spec.runs_miniupnpd() && spec.offers_any());
        assert_eq!(spec.ready_lines(), ["HTTP listening on port"]);
        let refusing = PortmapSpec {
            enabled: true,
            refuse: true,
            ..PortmapSpec::default()
        };
        assert!(!refusing.runs_miniupnpd() && refusing.offers_any());
        assert!(!PortmapSpec::default().offers_any());
    }

    #[test]
    fn upnp_log_lines_become_mapping_events() {
        let added = parse_log_line(
            "miniupnpd[7]: AddAnyPortMapping: ext port 8333 to 192.168.77.2:8333 protocol TCP for: punchscope probe leaseduration=120 rhost=",
        )
        .unwrap();
        assert_eq!(
            (
                added.protocol,
                added.change,
                added.external_port,
                added.lifetime_s
            ),
            (
                PortmapProtocol::Upnp,
                PortmapChange::Requested,
                Some(8333),
                Some(120)
            )
        );
        assert_eq!(added.internal, Some("192.168.77.2:8333".parse().unwrap()));
        let v1 = parse_log_line(
            "miniupnpd[7]: AddPortMapping: ext port 9000 to 192.168.77.2:41000 protocol TCP for: x leaseduration=0 rhost=NULL",
        )
        .unwrap();
        assert_eq!((v1.external_port, v1.lifetime_s), (Some(9000), Some(0)));
        let gone =
            parse_log_line("miniupnpd[7]: DeletePortMapping: external port: 8333, protocol: TCP")
                .unwrap();
        assert_eq!(
            (gone.protocol, gone.change, gone.external_port),
            (PortmapProtocol::Upnp, PortmapChange::Removed, Some(8333))
        );
        assert!(parse_log_line("miniupnpd[7]: AddPortMapping: ext port x to y").is_none());
        let added = parse_log_line(
            "miniupnpd[7]: redirecting port 8333 to 192.168.77.2:8333 protocol TCP for: punchscope probe",
        )
        .unwrap();
        assert_eq!(
            (added.protocol, added.change, added.external_port),
            (PortmapProtocol::Upnp, PortmapChange::Added, Some(8333))
        );
        assert!(parse_log_line(
            "miniupnpd[7]: redirecting port 8333 to 192.168.77.2:8333 protocol TCP for: NAT-PMP 8333 tcp"
        )
        .is_none(), "NAT-PMP's own lines say it");
        assert!(parse_log_line("miniupnpd[7]: HTTP listening on port 34567").is_none());
    }

    #[test]
    fn log_lines_become_mapping_events() {
        let natpmp = parse_log_line(
            "miniupnpd[13123]: NAT-PMP port mapping request : 8333->192.168.77.2:8333 tcp lifetime=120s",
        )
        .unwrap();
        assert_eq!(
            (
                natpmp.protocol,
                natpmp.change,
                natpmp.external_port,
                natpmp.lifetime_s
            ),
            (
                PortmapProtocol::Natpmp,
                PortmapChange::Requested,
                Some(8333),
                Some(120)
            )
        );
        assert_eq!(natpmp.internal, Some("192.168.77.2:8333".parse().unwrap()));
        let pcp = parse_log_line(
            "miniupnpd[1]: PCP MAP: added mapping TCP 9000->192.168.77.2:9000 'PCP MAP bf3b420cdff9548e85f51d42'",
        )
        .unwrap();
        assert_eq!(
            (pcp.protocol, pcp.change, pcp.external_port),
            (PortmapProtocol::Pcp, PortmapChange::Added, Some(9000))
        );
        let gone = parse_log_line("miniupnpd[1]: NAT-PMP TCP port 8333 mapping removed").unwrap();
        assert_eq!(
            (gone.change, gone.external_port),
            (PortmapChange::Removed, Some(8333))
        );
        let gone = parse_log_line("miniupnpd[1]: PCP: TCP port 9000 mapping removed").unwrap();
        assert_eq!(
            (gone.protocol, gone.external_port),
            (PortmapProtocol::Pcp, Some(9000))
        );
        assert!(
            parse_log_line("miniupnpd[1]: Listening for NAT-PMP/PCP traffic on port 5351")
                .is_none()
        );
        assert!(parse_log_line("miniupnpd[1]: NAT-PMP port mapping request : garbage").is_none());
        assert_eq!(
            parse_log_line("miniupnpd[1]: Failed to add NAT-PMP 8333 tcp->192.168.1.2:8333 'x'")
                .map(|e| e.change),
            Some(PortmapChange::Failed)
        );
    }
}
