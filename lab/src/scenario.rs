//! Lab scenario files (TOML): which NATs exist, which hosts sit behind them, and the address plan.
//!
//! Unknown keys and impossible values are errors naming the file and line;
//! missing keys take the defaults documented in docs/lab.md.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use punchscope_analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};
use serde::Deserialize;
use toml::Spanned;

use super::kernel::portmap::{ClosedAnswer, PortmapSpec};
use super::kernel::KernelNat;
use super::nat::{Ipv6Router, LinkShape, NatConfig, Npt, Timeouts, Translation};

/// The default server addresses in the internet namespace.
pub const DEFAULT_SERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 10),
    Ipv4Addr::new(198, 51, 100, 11),
];

/// The IPv6 address of the first server (the `servers` entry at index 0);
/// the server at index `i` is this address plus `i` (2001:db8:5100::10,
/// 2001:db8:5100::11 for the default 198.51.100.10 and .11). Documentation
/// space (RFC 3849), configured only when some router has `ipv6`.
pub const FIRST_SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x10);

/// The IPv6 address of the server at `index` in [`Scenario::servers`].
pub fn server_v6(index: usize) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(FIRST_SERVER_V6) + index as u128)
}

/// A scenario that could not be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A validated scenario with every address assigned.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub servers: Vec<Ipv4Addr>,
    pub routers: Vec<RouterSpec>,
    pub hosts: Vec<HostSpec>,
}

impl Scenario {
    /// Whether any router routes IPv6, so the internet namespace needs it.
    pub fn has_ipv6(&self) -> bool {
        self.routers.iter().any(|r| r.ipv6.is_some())
    }

    /// The servers' IPv6 addresses (see [`server_v6`]), in the order of [`Scenario::servers`].
    pub fn servers_v6(&self) -> Vec<Ipv6Addr> {
        (0..self.servers.len()).map(server_v6).collect()
    }
}

/// One router: a NAT from the file, or the plain router of a public host.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    pub name: String,
    /// What the router does; for a kernel router, what its rule set expresses.
    pub config: NatConfig,
    /// `Some` for `backend = "kernel"`: the Linux NAT that plays this router.
    pub kernel: Option<KernelNat>,
    /// Index into [`Scenario::routers`] of the NAT this one sits behind
    /// (`upstream = "cgn"`): its WAN address is then on that NAT's LAN, in
    /// the shared address space 100.64.0.0/10, as under carrier-grade NAT.
    pub upstream: Option<usize>,
    /// Port mapping (`portmap` keys): PCP and NAT-PMP on the router's LAN
    /// address, by miniupnpd on a kernel router, by the emulator's own
    /// service ([`crate::nat::portmap`]) on an emulator NAT.
    pub portmap: PortmapSpec,
    /// `Some` for a router with the `ipv6` key: its hosts are dual-stack.
    pub ipv6: Option<RouterIpv6>,
}

pub use super::nat::Ipv6Mode;

/// A router's IPv6 side: what it filters and its address plan, all in
/// 2001:db8::/32. Router N (its index in [`Scenario::routers`] plus one)
/// holds 2001:db8:N::/48, which the internet namespace routes to its WAN;
/// its LAN is the /64 2001:db8:N:1::/64. Under NPTv6 the LAN is numbered
/// from the internal prefix fd00:db8:N::/48 instead (a unique local
/// prefix, RFC 4193, that exists only inside the lab), translated to the
/// routed /48 by RFC 6296.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterIpv6 {
    pub mode: Ipv6Mode,
    /// The routed /48 (2001:db8:N::).
    pub prefix: Ipv6Addr,
    /// The router's WAN address (2001:db8:N::1): the source of what the router itself sends.
    pub wan: Ipv6Addr,
    /// The router's LAN address (2001:db8:N:1::1, or fd00:db8:N:1::1 under
    /// NPTv6), its hosts' default gateway.
    pub gateway: Ipv6Addr,
    /// Under NPTv6, the internal /48 the LAN is numbered from (fd00:db8:N::).
    pub internal_prefix: Option<Ipv6Addr>,
}

/// The length of a router's routed IPv6 prefix.
pub const IPV6_ROUTED_PREFIX_LEN: u8 = 48;
/// The length of a router's IPv6 LAN prefix.
pub const IPV6_LAN_PREFIX_LEN: u8 = 64;

impl RouterIpv6 {
    /// The plan of the router at `router` (its index in [`Scenario::routers`]).
    ///
    /// Under NPTv6 the emulator numbers its LAN from fd00:db8:N::/48, whose
    /// translation carries a real RFC 6296 adjustment in the subnet word. A
    /// kernel router numbers it from fd00:30b8:N::/48 instead, whose one's
    /// complement sum equals 2001:db8:N::/48's (0xfd00 + 0x30b8 = 0x2001 +
    /// 0x0db8 in one's complement): nftables' prefix NAT keeps every other
    /// bit, which is RFC 6296 only when the adjustment is zero
    /// ([`crate::kernel::nptv6_ruleset`]).
    pub fn plan(router: usize, mode: Ipv6Mode, kernel: bool) -> Option<RouterIpv6> {
        let n = u16::try_from(router + 1).ok()?;
        let internal = match (mode, kernel) {
            (Ipv6Mode::Nptv6, false) => Some((0xfd00, 0x0db8)),
            (Ipv6Mode::Nptv6, true) => Some((0xfd00, 0x30b8)),
            _ => None,
        };
        let (first, second) = internal.unwrap_or((0x2001, 0x0db8));
        Some(RouterIpv6 {
            mode,
            prefix: Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 0),
            wan: Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1),
            gateway: Ipv6Addr::new(first, second, n, 1, 0, 0, 0, 1),
            internal_prefix: internal.map(|_| Ipv6Addr::new(first, second, n, 0, 0, 0, 0, 0)),
        })
    }

    /// The LAN /64 as the internet sees it (the LAN's own without NPTv6).
    pub fn external_lan(&self) -> Ipv6Addr {
        let lan = Ipv6Addr::from(u128::from(self.gateway) & !0xffff_ffff_ffff_ffffu128);
        self.external(lan)
    }

    /// The prefix translation, under NPTv6.
    pub fn npt(&self) -> Option<Npt> {
        self.internal_prefix
            .map(|internal| Npt::new(internal, self.prefix))
    }

    /// The address the internet sees for a LAN address (itself unless NPTv6).
    pub fn external(&self, address: Ipv6Addr) -> Ipv6Addr {
        self.npt()
            .and_then(|npt| npt.outbound(address))
            .unwrap_or(address)
    }

    /// The emulator's IPv6 side for this plan, with no host yet.
    pub fn emulated(&self, filtering: Filtering) -> Ipv6Router {
        Ipv6Router {
            mode: self.mode,
            filtering,
            lan_prefix: self.gateway,
            gateway: self.gateway,
            wan: self.wan,
            npt: self.npt(),
            hosts: Vec::new(),
        }
    }

    /// The address of the `index`-th host on the LAN (1 is the first host:
    /// 2001:db8:N:1::2, as 192.168.N.2).
    pub fn host(&self, index: u8) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.gateway) + u128::from(index))
    }
}

impl RouterSpec {
    pub fn backend(&self) -> Backend {
        if self.kernel.is_some() {
            Backend::Kernel
        } else {
            Backend::Emulator
        }
    }
}

/// Which machinery plays a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// punchscope's own NAT emulator (`nat`), every RFC 4787 kind.
    #[default]
    Emulator,
    /// A real Linux NAT: nftables and conntrack in a router namespace (`kernel`).
    Kernel,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Emulator => "emulator",
            Backend::Kernel => "kernel",
        })
    }
}

/// One host namespace.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub name: String,
    /// Index into [`Scenario::routers`].
    pub router: usize,
    /// The address on the host's own interface (private behind a NAT, public otherwise).
    pub address: Ipv4Addr,
    /// The prefix length of that address on the host's interface.
    pub prefix_len: u8,
    /// The public address the internet sees for this host.
    pub public_ip: Ipv4Addr,
    /// The host's IPv6 address on its own device (in its router's LAN /64),
    /// when its router has `ipv6`: the internet sees this very address,
    /// except under NPTv6 (see [`HostSpec::public_v6`]).
    pub address_v6: Option<Ipv6Addr>,
    /// The IPv6 address the internet sees for the host: `address_v6`, or its
    /// NPTv6 translation.
    pub public_v6: Option<Ipv6Addr>,
    /// Whether the host has IPv4 (`ipv4 = false`: IPv6 only). An IPv6-only
    /// host keeps its place in the IPv4 plan (`address`: the emulator names
    /// its device by it) but gets no IPv4 address or route.
    pub ipv4: bool,
    /// What `lab run` starts in this host.
    pub role: HostRole,
}

/// What a host does in a `lab run` campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// Runs `punchscope probe` once, like a volunteer.
    #[default]
    Volunteer,
    /// Runs `punchscope probe --serve-peer`, a researcher's reference peer.
    Reference,
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ScenarioError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and validates scenario text; errors say the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ScenarioFile =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        resolve(file, text)
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn router_of(&self, host: &HostSpec) -> &RouterSpec {
        &self.routers[host.router]
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    lab: LabSection,
    #[serde(default)]
    nat: Vec<NatSection>,
    #[serde(default)]
    host: Vec<HostSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabSection {
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_servers")]
    servers: Spanned<Vec<Ipv4Addr>>,
}

impl Default for LabSection {
    fn default() -> Self {
        Self {
            seed: 0,
            servers: Spanned::new(0..0, DEFAULT_SERVERS.to_vec()),
        }
    }
}

fn default_servers() -> Spanned<Vec<Ipv4Addr>> {
    LabSection::default().servers
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MappingSetting {
    None,
    Eim,
    Adm,
    Apdm,
}

/// A probability in `[0, 1]`, rejected at parse time (with its line) otherwise.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(try_from = "f64")]
struct Probability(f64);

impl TryFrom<f64> for Probability {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!("loss must be between 0.0 and 1.0, got {value}"))
        }
    }
}

/// A port allocation step of at least 1.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u16")]
struct Step(u16);

impl TryFrom<u16> for Step {
    type Error = String;

    fn try_from(value: u16) -> Result<Self, Self::Error> {
        if value == 0 {
            Err("sequential_step must be at least 1".into())
        } else {
            Ok(Self(value))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatSection {
    name: Spanned<String>,
    public_ip: Option<Spanned<Ipv4Addr>>,
    backend: Option<Spanned<Backend>>,
    /// The NAT this one sits behind (a carrier-grade NAT).
    upstream: Option<Spanned<String>>,
    #[serde(default = "defaults::mapping")]
    mapping: MappingSetting,
    #[serde(default = "defaults::filtering")]
    filtering: Filtering,
    #[serde(default = "defaults::allocation")]
    allocation: Allocation,
    #[serde(default = "defaults::unsolicited")]
    unsolicited: UnsolicitedAnswer,
    #[serde(default)]
    hairpin: bool,
    #[serde(default = "defaults::yes")]
    rst_closes: bool,
    #[serde(default)]
    tcp_loose: bool,
    /// Linux conntrack's TCP window check; unset: on for kernel routers
    /// (Linux's default), off for the emulator.
    #[serde(default)]
    tcp_window_check: Option<bool>,
    #[serde(default)]
    delay_ms: u32,
    #[serde(default)]
    jitter_ms: u32,
    #[serde(default)]
    loss: Probability,
    #[serde(default = "defaults::sequential_base")]
    sequential_base: u16,
    #[serde(default = "defaults::sequential_step")]
    sequential_step: Step,
    /// First and last port of `random` allocation (emulator only).
    random_ports: Option<Spanned<[u16; 2]>>,
    /// Background connections per second from other hosts behind the NAT (emulator only).
    background_per_s: Option<Spanned<f64>>,
    #[serde(default = "defaults::tcp_established_s")]
    tcp_established_timeout_s: u32,
    #[serde(default = "defaults::tcp_transitory_s")]
    tcp_transitory_timeout_s: u32,
    #[serde(default = "defaults::udp_s")]
    udp_timeout_s: u32,
    /// Port mapping protocols the router answers (kernel routers: miniupnpd; emulator NATs: their own service).
    portmap: Option<Spanned<Vec<PortmapSetting>>>,
    portmap_min_lifetime_s: Option<Spanned<u32>>,
    portmap_max_lifetime_s: Option<Spanned<u32>>,
    portmap_ports: Option<Spanned<[u16; 2]>>,
    portmap_refuse: Option<Spanned<bool>>,
    portmap_closed: Option<Spanned<ClosedAnswer>>,
    /// Dual-stack hosts: the router routes IPv6 as a firewall or openly (kernel routers only so far).
    ipv6: Option<Spanned<Ipv6Mode>>,
}

/// A port mapping protocol a scenario may name.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PortmapSetting {
    Natpmp,
    Pcp,
    Upnp,
}

/// The `portmap` keys of a NAT, checked: what miniupnpd (kernel routers)
/// and the emulator's service (NATs that translate) can play.
fn portmap_spec(
    nat: &NatSection,
    kernel: bool,
    at: &dyn Fn(std::ops::Range<usize>, String) -> String,
) -> Result<PortmapSpec, String> {
    let mut spec = PortmapSpec::default();
    let protocols = nat.portmap.as_ref();
    let enabled = protocols.is_some_and(|p| !p.get_ref().is_empty());
    if let Some(protocols) = protocols.filter(|_| enabled) {
        let list = protocols.get_ref();
        if !kernel && matches!(nat.mapping, MappingSetting::None) {
            return Err(at(
                protocols.span(),
                "portmap needs a NAT (mapping other than \"none\"): a router without translation has nothing to map".into(),
            ));
        }
        spec.upnp = list.contains(&PortmapSetting::Upnp);
        if spec.upnp && !kernel {
            return Err(at(
                protocols.span(),
                "portmap = \"upnp\" (UPnP IGD) is played by miniupnpd on kernel routers only (backend = \"kernel\")".into(),
            ));
        }
        let natpmp = list.contains(&PortmapSetting::Natpmp);
        let pcp = list.contains(&PortmapSetting::Pcp);
        if natpmp != pcp {
            return Err(at(
                protocols.span(),
                "the lab's routers answer NAT-PMP and PCP together (miniupnpd has one switch for both): give both \"natpmp\" and \"pcp\", or neither".into(),
            ));
        }
        spec.enabled = natpmp && pcp;
    }
    let needs_portmap = |span: std::ops::Range<usize>, key: &str| {
        Err(at(
            span,
            format!("{key} needs portmap (\"natpmp\" and \"pcp\", \"upnp\")"),
        ))
    };
    if let Some(v) = &nat.portmap_min_lifetime_s {
        if !enabled {
            return needs_portmap(v.span(), "portmap_min_lifetime_s");
        }
        spec.min_lifetime_s = *v.get_ref();
    }
    if let Some(v) = &nat.portmap_max_lifetime_s {
        if !enabled {
            return needs_portmap(v.span(), "portmap_max_lifetime_s");
        }
        spec.max_lifetime_s = *v.get_ref();
        if spec.max_lifetime_s < spec.min_lifetime_s {
            return Err(at(
                v.span(),
                format!(
                    "portmap_max_lifetime_s {} is below portmap_min_lifetime_s {}",
                    spec.max_lifetime_s, spec.min_lifetime_s
                ),
            ));
        }
    }
    if let Some(v) = &nat.portmap_ports {
        if !enabled {
            return needs_portmap(v.span(), "portmap_ports");
        }
        let [low, high] = *v.get_ref();
        if low == 0 || low > high {
            return Err(at(
                v.span(),
                format!("portmap_ports [{low}, {high}] must be a range [low, high] with 1 <= low <= high"),
            ));
        }
        spec.ports = (low, high);
    }
    if let Some(v) = &nat.portmap_refuse {
        if !enabled {
            return needs_portmap(v.span(), "portmap_refuse");
        }
        if spec.upnp && *v.get_ref() {
            return Err(at(
                v.span(),
                "portmap_refuse plays a router refusing NAT-PMP and PCP; the lab has no refusing UPnP router: leave \"upnp\" out".into(),
            ));
        }
        spec.refuse = *v.get_ref();
    }
    if let Some(v) = &nat.portmap_closed {
        if enabled {
            return Err(at(
                v.span(),
                "portmap_closed is what a router *without* port mapping answers; this one has portmap".into(),
            ));
        }
        spec.closed = *v.get_ref();
    }
    Ok(spec)
}

/// Defaults for omitted NAT keys: a typical home router (EIM, port-preserving, APDF, drops strangers).
mod defaults {
    use super::*;

    pub fn mapping() -> MappingSetting {
        MappingSetting::Eim
    }
    pub fn filtering() -> Filtering {
        Filtering::Apdf
    }
    pub fn allocation() -> Allocation {
        Allocation::Preserve
    }
    pub fn unsolicited() -> UnsolicitedAnswer {
        UnsolicitedAnswer::Drop
    }
    pub fn yes() -> bool {
        true
    }
    pub fn sequential_base() -> u16 {
        20000
    }
    pub fn sequential_step() -> Step {
        Step(1)
    }
    pub fn tcp_established_s() -> u32 {
        Timeouts::default().tcp_established.as_secs() as u32
    }
    pub fn tcp_transitory_s() -> u32 {
        Timeouts::default().tcp_transitory.as_secs() as u32
    }
    pub fn udp_s() -> u32 {
        Timeouts::default().udp.as_secs() as u32
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    name: Spanned<String>,
    nat: Spanned<String>,
    /// Only for `nat = "none"`: the host's public address.
    public_ip: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    role: HostRole,
    /// `false`: an IPv6-only host (its router must have `ipv6`).
    ipv4: Option<Spanned<bool>>,
}

/// Whether `ip` lies in the documentation ranges lab public addresses come from (RFC 5737).
pub fn is_documentation_address(ip: Ipv4Addr) -> bool {
    matches!(
        ip.octets(),
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]
    )
}

/// Names become parts of namespace and file names: keep them short and plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name `{name}` must be 1-24 characters of a-z, 0-9 and _"
        ))
    }
}

fn line_of(text: &str, span: &std::ops::Range<usize>) -> usize {
    punchscope_analysis::toml_lines::line_of(text, span.start)
}

fn resolve(file: ScenarioFile, text: &str) -> Result<Scenario, String> {
    let at = |span: std::ops::Range<usize>, message: String| -> String {
        format!("line {}: {message}", line_of(text, &span))
    };
    let servers = file.lab.servers.get_ref().clone();
    if servers.is_empty() {
        return Err(at(
            file.lab.servers.span(),
            "servers must list at least one address".into(),
        ));
    }
    for ip in &servers {
        if !is_documentation_address(*ip) {
            return Err(at(
                file.lab.servers.span(),
                format!("server address {ip} is outside the documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24"),
            ));
        }
    }
    let mut used_public: HashSet<Ipv4Addr> = servers.iter().copied().collect();
    let mut claim = |ip: &Spanned<Ipv4Addr>, what: &str| -> Result<Ipv4Addr, String> {
        let addr = *ip.get_ref();
        if !is_documentation_address(addr) {
            return Err(at(
                ip.span(),
                format!("{what} {addr} is outside the documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24"),
            ));
        }
        if !used_public.insert(addr) {
            return Err(at(ip.span(), format!("{what} {addr} is used twice")));
        }
        Ok(addr)
    };

    // Explicit public addresses first, so automatic ones never collide with them.
    let mut nat_public = Vec::new();
    for nat in &file.nat {
        check_name(nat.name.get_ref()).map_err(|m| at(nat.name.span(), m))?;
        if nat.name.get_ref() == "none" {
            return Err(at(nat.name.span(), "a NAT cannot be named `none`".into()));
        }
        nat_public.push(
            nat.public_ip
                .as_ref()
                .map(|ip| claim(ip, "public_ip"))
                .transpose()?,
        );
    }
    let mut host_public = Vec::new();
    for host in &file.host {
        let name = host.name.get_ref();
        check_name(name).map_err(|m| at(host.name.span(), m))?;
        if name == "internet" {
            return Err(at(
                host.name.span(),
                "`internet` is the name of the lab's core namespace".into(),
            ));
        }
        match &host.public_ip {
            Some(ip) if host.nat.get_ref() != "none" => {
                return Err(at(
                    ip.span(),
                    format!("host `{name}` is behind NAT `{}`: only hosts with nat = \"none\" have their own public_ip", host.nat.get_ref()),
                ))
            }
            Some(ip) => host_public.push(Some(claim(ip, "public_ip")?)),
            None => host_public.push(None),
        }
    }
    let upstreams = resolve_upstreams(&file.nat, &at)?;
    let mut next_auto = 2u8;
    let mut auto_public = |used: &mut HashSet<Ipv4Addr>| -> Result<Ipv4Addr, String> {
        while next_auto < 255 {
            let ip = Ipv4Addr::new(203, 0, 113, next_auto);
            next_auto += 1;
            if used.insert(ip) {
                return Ok(ip);
            }
        }
        Err(
            "more public addresses needed than 203.0.113.0/24 offers; give public_ip explicitly"
                .into(),
        )
    };

    let mut routers = Vec::new();
    let mut router_by_name: HashMap<String, usize> = HashMap::new();
    for (i, nat) in file.nat.iter().enumerate() {
        let name = nat.name.get_ref().clone();
        if router_by_name.contains_key(&name) {
            return Err(at(
                nat.name.span(),
                format!("NAT `{name}` is defined twice"),
            ));
        }
        let public_ip = match (nat_public[i], upstreams[i]) {
            (Some(ip), _) => ip,
            // Given its address on the upstream's LAN below.
            (None, Some(_)) => Ipv4Addr::UNSPECIFIED,
            (None, None) => auto_public(&mut used_public)?,
        };
        let translation = match nat.mapping {
            MappingSetting::None => Translation::None,
            MappingSetting::Eim => nat_translation(Mapping::Eim, nat),
            MappingSetting::Adm => nat_translation(Mapping::Adm, nat),
            MappingSetting::Apdm => nat_translation(Mapping::Apdm, nat),
        };
        let link = LinkShape {
            delay: Duration::from_millis(nat.delay_ms.into()),
            jitter: Duration::from_millis(nat.jitter_ms.into()),
            loss: nat.loss.0,
        };
        let random_ports = match &nat.random_ports {
            None => (1024, u16::MAX),
            Some(spanned) => {
                let [first, last] = *spanned.get_ref();
                if first < 1024 || first > last {
                    return Err(at(
                        spanned.span(),
                        format!("NAT `{name}`: random_ports = [{first}, {last}] must be [first, last] with 1024 <= first <= last"),
                    ));
                }
                (first, last)
            }
        };
        let background_per_s = match &nat.background_per_s {
            None => 0.0,
            Some(spanned) => {
                let rate = *spanned.get_ref();
                if !(0.0..=1000.0).contains(&rate) {
                    return Err(at(
                        spanned.span(),
                        format!("NAT `{name}`: background_per_s = {rate} must be between 0 and 1000 connections per second"),
                    ));
                }
                rate
            }
        };
        let config = NatConfig {
            random_ports,
            background_per_s,
            translation,
            public_ip,
            gateway_ip: Ipv4Addr::new(192, 168, 0, 1), // set per LAN below
            unsolicited: nat.unsolicited,
            hairpin: nat.hairpin,
            rst_closes: nat.rst_closes,
            tcp_loose: nat.tcp_loose,
            tcp_window_check: nat
                .tcp_window_check
                .unwrap_or(matches!(&nat.backend, Some(b) if *b.get_ref() == Backend::Kernel)),
            timeouts: Timeouts {
                tcp_established: Duration::from_secs(nat.tcp_established_timeout_s.into()),
                tcp_transitory: Duration::from_secs(nat.tcp_transitory_timeout_s.into()),
                udp: Duration::from_secs(nat.udp_timeout_s.into()),
            },
            sequential_base: nat.sequential_base,
            sequential_step: nat.sequential_step.0,
            uplink: link,
            downlink: link,
            seed: file.lab.seed.wrapping_add(i as u64),
            ipv6: None,               // set below, once the plan is known
            ipv6_transit: Vec::new(), // set once the routers behind are known
        };
        let is_kernel = matches!(&nat.backend, Some(b) if *b.get_ref() == Backend::Kernel);
        for (key, span) in [
            ("random_ports", nat.random_ports.as_ref().map(|s| s.span())),
            (
                "background_per_s",
                nat.background_per_s.as_ref().map(|s| s.span()),
            ),
        ] {
            if let (true, Some(span)) = (is_kernel, span) {
                return Err(at(
                    span,
                    format!("NAT `{name}`: {key} is an emulator key; a kernel router cannot play it (use the emulator)"),
                ));
            }
        }
        let kernel = match &nat.backend {
            Some(backend) if *backend.get_ref() == Backend::Kernel => Some(
                KernelNat::for_config(&config)
                    .map_err(|m| at(backend.span(), format!("NAT `{name}`: {m}")))?,
            ),
            _ => None,
        };
        let portmap = portmap_spec(nat, kernel.is_some(), &at)?;
        let ipv6 = match &nat.ipv6 {
            None => None,
            Some(mode) => {
                let refuse = |why: &str| Err(at(mode.span(), format!("NAT `{name}`: ipv6 {why}")));
                let is_upstream = file
                    .nat
                    .iter()
                    .any(|n| n.upstream.as_ref().is_some_and(|u| u.get_ref() == &name));
                if is_upstream {
                    return refuse("is not built for a router others sit behind (upstream): it routes their IPv6 unfiltered by itself; give ipv6 to the routers behind it");
                }
                Some(
                    RouterIpv6::plan(i, *mode.get_ref(), kernel.is_some()).ok_or_else(|| {
                        at(
                            mode.span(),
                            "too many routers for the IPv6 address plan".into(),
                        )
                    })?,
                )
            }
        };
        let mut config = config;
        if kernel.is_none() {
            config.ipv6 = ipv6.map(|plan| plan.emulated(nat.filtering));
        }
        router_by_name.insert(name.clone(), routers.len());
        routers.push(RouterSpec {
            name,
            config,
            kernel,
            upstream: upstreams[i],
            portmap,
            ipv6,
        });
    }

    // A NAT behind another gets the next address of that NAT's LAN, which
    // is in the shared address space (see `lan_address`), before its hosts.
    let mut lan_hosts: HashMap<usize, u8> = HashMap::new();
    for i in 0..routers.len() {
        let Some(upstream) = routers[i].upstream else {
            continue;
        };
        let index = lan_hosts.entry(upstream).or_insert(0);
        *index += 1;
        let wan_ip = lan_address(upstream, true, *index).ok_or_else(|| {
            at(
                file.nat[i].name.span(),
                "too many NATs or hosts for the address plan".into(),
            )
        })?;
        routers[i].config.public_ip = wan_ip;
        routers[upstream].config.gateway_ip = lan_address(upstream, true, 0).expect("in range");
    }
    let is_upstream: HashSet<usize> = routers.iter().filter_map(|r| r.upstream).collect();
    // An upstream routes the IPv6 of the routers behind it, unfiltered.
    for i in 0..routers.len() {
        if let (Some(upstream), Some(v6)) = (routers[i].upstream, routers[i].ipv6) {
            let wan = routers[i].config.public_ip;
            routers[upstream].config.ipv6_transit.push((v6.prefix, wan));
        }
    }

    let mut hosts: Vec<HostSpec> = Vec::new();
    for (i, host) in file.host.iter().enumerate() {
        let name = host.name.get_ref().clone();
        if hosts.iter().any(|h| h.name == name) {
            return Err(at(
                host.name.span(),
                format!("host `{name}` is defined twice"),
            ));
        }
        let nat_name = host.nat.get_ref();
        let router = if nat_name == "none" {
            // A public host gets a plain router of its own.
            let public_ip = match host_public[i] {
                Some(ip) => ip,
                None => auto_public(&mut used_public)?,
            };
            let mut config = NatConfig::router(public_ip);
            config.seed = file.lab.seed.wrapping_add(1000 + i as u64);
            routers.push(RouterSpec {
                name: format!("{name}_router"),
                config,
                kernel: None,
                upstream: None,
                portmap: PortmapSpec::default(),
                ipv6: None,
            });
            routers.len() - 1
        } else {
            *router_by_name.get(nat_name).ok_or_else(|| {
                at(
                    host.nat.span(),
                    format!("host `{name}` refers to unknown NAT `{nat_name}` (defined: {}; or \"none\")",
                        file.nat.iter().map(|n| n.name.get_ref().as_str()).collect::<Vec<_>>().join(", ")),
                )
            })?
        };
        let index = lan_hosts.entry(router).or_insert(0);
        *index += 1;
        let (address, prefix_len, public_ip) = match routers[router].config.translation {
            Translation::Nat { .. } => {
                let shared = is_upstream.contains(&router);
                let address = lan_address(router, shared, *index).ok_or_else(|| {
                    at(
                        host.name.span(),
                        "too many NATs or hosts for the address plan".into(),
                    )
                })?;
                routers[router].config.gateway_ip =
                    lan_address(router, shared, 0).expect("in range");
                // What the internet sees: the outermost NAT's address.
                let outermost = routers[router].upstream.unwrap_or(router);
                (address, 24, routers[outermost].config.public_ip)
            }
            Translation::None | Translation::Link => {
                if *index > 1 {
                    return Err(at(host.nat.span(), format!("router `{nat_name}` does not translate: only one host can sit behind it")));
                }
                let public_ip = routers[router].config.public_ip;
                // The router's own address (source of its ICMP errors) is not the host's.
                routers[router].config.gateway_ip =
                    Ipv4Addr::new(192, 0, 2, (router as u8).wrapping_add(1));
                (public_ip, 32, public_ip)
            }
        };
        let address_v6 = routers[router].ipv6.map(|v6| v6.host(*index));
        let public_v6 = routers[router]
            .ipv6
            .zip(address_v6)
            .map(|(v6, a)| v6.external(a));
        if let (Some(emulated), Some(a)) = (routers[router].config.ipv6.as_mut(), address_v6) {
            // The emulator delivers IPv6 to the device named by the host's IPv4 address.
            emulated.hosts.push((a, address));
        }
        let ipv4 = match &host.ipv4 {
            Some(flag) if !*flag.get_ref() && address_v6.is_none() => {
                return Err(at(
                    flag.span(),
                    format!("host `{name}`: ipv4 = false needs a router with ipv6 (`{nat_name}` has none): give the router ipv6 = \"firewall\", \"open\" or \"nptv6\""),
                ));
            }
            Some(flag) => *flag.get_ref(),
            None => true,
        };
        hosts.push(HostSpec {
            public_v6,
            ipv4,
            name,
            router,
            address,
            prefix_len,
            public_ip,
            address_v6,
            role: host.role,
        });
    }
    // A router with no host serves no purpose and would get no interface: refuse it.
    for (i, router) in routers.iter().enumerate() {
        // NATs behind it count: a carrier-grade NAT may serve only home routers.
        if !lan_hosts.contains_key(&i) {
            let span = file.nat.get(i).map(|n| n.name.span()).unwrap_or(0..0);
            return Err(at(
                span,
                format!("NAT `{}` has no host behind it", router.name),
            ));
        }
    }
    Ok(Scenario {
        seed: file.lab.seed,
        servers,
        routers,
        hosts,
    })
}

/// The `index`-th address of router `router`'s LAN (0: the router itself):
/// 192.168.N.x for a home LAN, 100.64.N.x (the shared address space of
/// RFC 6598, which ISPs number their CGN customers from) for a NAT that
/// other NATs sit behind. `None` when the plan runs out of numbers.
fn lan_address(router: usize, shared: bool, index: u8) -> Option<Ipv4Addr> {
    if router >= 254 || index >= 250 {
        return None;
    }
    let lan = router as u8 + 1;
    let host = 1 + index;
    Some(if shared {
        Ipv4Addr::new(100, 64, lan, host)
    } else {
        Ipv4Addr::new(192, 168, lan, host)
    })
}

/// For each NAT, the index of the NAT it sits behind, refusing chains the
/// lab cannot build, with the line of the `upstream` key.
fn resolve_upstreams(
    nats: &[NatSection],
    at: &impl Fn(std::ops::Range<usize>, String) -> String,
) -> Result<Vec<Option<usize>>, String> {
    let index_of = |name: &str| nats.iter().position(|n| n.name.get_ref() == name);
    let mut upstreams = Vec::new();
    for nat in nats {
        let Some(upstream) = &nat.upstream else {
            upstreams.push(None);
            continue;
        };
        let name = nat.name.get_ref();
        let refuse = |message: String| Err(at(upstream.span(), format!("NAT `{name}`: {message}")));
        let Some(u) = index_of(upstream.get_ref()) else {
            return refuse(format!(
                "upstream `{}` is not a NAT of this scenario (defined: {})",
                upstream.get_ref(),
                nats.iter()
                    .map(|n| n.name.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let up = &nats[u];
        if up.name.get_ref() == name {
            return refuse("a NAT cannot be its own upstream".into());
        }
        if up.upstream.is_some() {
            return refuse(format!(
                "upstream `{}` has an upstream itself: chains of more than two NATs are not supported",
                up.name.get_ref()
            ));
        }
        if up.mapping == MappingSetting::None || nat.mapping == MappingSetting::None {
            return refuse("a chain is a NAT behind a NAT: mapping = \"none\" cannot take part (a plain router gives its host a public address)".into());
        }
        let kernel_upstream = matches!(&up.backend, Some(b) if *b.get_ref() == Backend::Kernel);
        if let (true, Some(portmap)) = (kernel_upstream, &up.portmap) {
            if !portmap.get_ref().is_empty() {
                return Err(at(
                    portmap.span(),
                    format!(
                        "NAT `{0}`: portmap on a kernel router that NAT `{name}` sits behind is not supported: miniupnpd is set up for the bridge of `{0}`'s own hosts, not for the links of the routers behind it. Remove portmap from `{0}`, or use the emulator (backend = \"emulator\") for the carrier-grade NAT",
                        up.name.get_ref()
                    ),
                ));
            }
        }
        if let Some(ip) = &nat.public_ip {
            return Err(at(
                ip.span(),
                format!("NAT `{name}` sits behind `{}`: its WAN address comes from the shared space 100.64.0.0/10 of its upstream; remove public_ip", up.name.get_ref()),
            ));
        }
        upstreams.push(Some(u));
    }
    Ok(upstreams)
}

fn nat_translation(mapping: Mapping, nat: &NatSection) -> Translation {
    Translation::Nat {
        mapping,
        filtering: nat.filtering,
        allocation: nat.allocation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[nat]]
name = "home"
public_ip = "203.0.113.2"
mapping = "eim"
filtering = "apdf"
allocation = "preserve"
unsolicited = "drop"
hairpin = false
rst_closes = true
delay_ms = 20
jitter_ms = 0
loss = 0.0

[[host]]
name = "alice"
nat = "home"

[[host]]
name = "bob"
nat = "none"
"#;

    #[test]
    fn the_documented_example_parses_with_an_address_plan() {
        let s = Scenario::parse(EXAMPLE).unwrap();
        assert_eq!(s.servers, DEFAULT_SERVERS);
        let alice = s.host("alice").unwrap();
        assert_eq!(alice.address, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(alice.public_ip, Ipv4Addr::new(203, 0, 113, 2));
        let home = s.router_of(alice);
        assert_eq!(home.config.gateway_ip, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(home.config.uplink.delay, Duration::from_millis(20));
        let bob = s.host("bob").unwrap();
        assert_eq!(bob.address, bob.public_ip);
        assert_eq!(
            bob.public_ip,
            Ipv4Addr::new(203, 0, 113, 3),
            "next free automatic address"
        );
        assert_eq!(s.router_of(bob).config.translation, Translation::None);
    }

    #[test]
    fn omitted_keys_take_the_documented_defaults() {
        let s = Scenario::parse("[[nat]]\nname = \"n\"\n[[host]]\nname = \"h\"\nnat = \"n\"\n")
            .unwrap();
        let c = &s.routers[0].config;
        assert_eq!(
            c.translation,
            Translation::Nat {
                mapping: Mapping::Eim,
                filtering: Filtering::Apdf,
                allocation: Allocation::Preserve
            }
        );
        assert_eq!(c.unsolicited, UnsolicitedAnswer::Drop);
        assert!(c.rst_closes && !c.hairpin && !c.tcp_loose);
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.uplink, LinkShape::default());
    }

    fn error_of(text: &str) -> String {
        Scenario::parse(text).unwrap_err()
    }

    #[test]
    fn busy_and_small_range_nats_are_emulator_keys_checked_with_their_line() {
        let nat = |keys: &str| {
            format!("[[nat]]\nname = \"n\"\nmapping = \"apdm\"\nallocation = \"random\"\n{keys}\n[[host]]\nname = \"h\"\nnat = \"n\"\n")
        };
        let s = Scenario::parse(&nat(
            "random_ports = [20000, 20255]\nbackend = \"emulator\"\nbackground_per_s = 12.5",
        ))
        .unwrap();
        let c = &s.routers[0].config;
        assert_eq!(c.random_ports, (20000, 20255));
        assert_eq!(c.background_per_s, 12.5);
        let d = &Scenario::parse(&nat("")).unwrap().routers[0].config;
        assert_eq!((d.random_ports, d.background_per_s), ((1024, 65535), 0.0));
        let e = error_of(&nat("random_ports = [30000, 20000]"));
        assert!(e.contains("line 5") && e.contains("random_ports"), "{e}");
        let e = error_of(&nat("background_per_s = -1.0"));
        assert!(
            e.contains("line 5") && e.contains("background_per_s"),
            "{e}"
        );
        let e = error_of(&nat("backend = \"kernel\"\nbackground_per_s = 5.0"));
        assert!(e.contains("line 6") && e.contains("emulator key"), "{e}");
    }

    #[test]
    fn unknown_keys_and_impossible_values_name_the_line() {
        let e = error_of("[[nat]]\nname = \"n\"\nmaping = \"eim\"\n");
        assert!(
            e.contains("line 3") && e.contains("unknown field `maping`"),
            "{e}"
        );
        let e = error_of("[[nat]]\nname = \"n\"\nmapping = \"symmetric\"\n");
        assert!(e.contains("line 3") && e.contains("symmetric"), "{e}");
        let e = error_of("[[nat]]\nname = \"n\"\nloss = 1.5\n");
        assert!(
            e.contains("line 3") && e.contains("between 0.0 and 1.0"),
            "{e}"
        );
        let e = error_of("[[nat]]\nname = \"n\"\ndelay_ms = -5\n");
        assert!(e.contains("line 3"), "{e}");
        let e = error_of("[[nat]]\nname = \"n\"\nsequential_step = 0\n");
        assert!(e.contains("line 3") && e.contains("at least 1"), "{e}");
    }

    #[test]
    fn inconsistent_scenarios_are_refused_with_the_line() {
        let e = error_of("[[host]]\nname = \"h\"\nnat = \"hom\"\n");
        assert!(
            e.contains("line 3") && e.contains("unknown NAT `hom`"),
            "{e}"
        );
        let e = error_of(
            "[[nat]]\nname = \"n\"\npublic_ip = \"8.8.8.8\"\n[[host]]\nname = \"h\"\nnat = \"n\"\n",
        );
        assert!(
            e.contains("line 3") && e.contains("documentation ranges"),
            "{e}"
        );
        let e = error_of("[[nat]]\nname = \"n\"\npublic_ip = \"198.51.100.10\"\n[[host]]\nname = \"h\"\nnat = \"n\"\n");
        assert!(e.contains("used twice"), "{e}");
        let e = error_of("[[host]]\nname = \"Alice\"\nnat = \"none\"\n");
        assert!(e.contains("line 2") && e.contains("a-z"), "{e}");
        let e = error_of("[[nat]]\nname = \"n\"\n[[host]]\nname = \"h\"\nnat = \"none\"\n");
        assert!(
            e.contains("line 2") && e.contains("no host behind it"),
            "{e}"
        );
        let e = error_of("[[host]]\nname = \"internet\"\nnat = \"none\"\n");
        assert!(e.contains("core namespace"), "{e}");
        let e =
            error_of("[lab]\nservers = [\"10.0.0.1\"]\n[[host]]\nname = \"h\"\nnat = \"none\"\n");
        assert!(
            e.contains("line 2") && e.contains("documentation ranges"),
            "{e}"
        );
    }

    #[test]
    fn several_hosts_share_a_nat_with_distinct_lan_addresses() {
        let s = Scenario::parse(
            "[[nat]]\nname = \"n\"\n[[host]]\nname = \"a\"\nnat = \"n\"\n[[host]]\nname = \"b\"\nnat = \"n\"\n",
        )
        .unwrap();
        assert_eq!(s.host("a").unwrap().address, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(s.host("b").unwrap().address, Ipv4Addr::new(192, 168, 1, 3));
        assert_eq!(
            s.host("a").unwrap().public_ip,
            s.host("b").unwrap().public_ip
        );
    }

    #[test]
    fn kernel_routers_take_what_linux_expresses_and_refuse_the_rest_naming_the_key() {
        let s = Scenario::parse(
            "[[nat]]\nname = \"k\"\nbackend = \"kernel\"\nmapping = \"apdm\"\nallocation = \"random\"\n[[host]]\nname = \"h\"\nnat = \"k\"\n",
        )
        .unwrap();
        assert_eq!(s.routers[0].backend(), Backend::Kernel);
        assert_eq!(s.routers[0].kernel, Some(KernelNat::MasqueradeFullyRandom));
        let e = error_of("[[nat]]\nname = \"k\"\nbackend = \"kernel\"\nfiltering = \"eif\"\n[[host]]\nname = \"h\"\nnat = \"k\"\n");
        assert!(
            e.contains("line 3") && e.contains("filtering = \"eif\""),
            "{e}"
        );
        let e = error_of("[[nat]]\nname = \"k\"\nbackend = \"linux\"\n");
        assert!(e.contains("line 3") && e.contains("linux"), "{e}");
        let s = Scenario::parse("[[nat]]\nname = \"n\"\n[[host]]\nname = \"h\"\nnat = \"n\"\n")
            .unwrap();
        assert_eq!(s.routers[0].backend(), Backend::Emulator, "the default");
    }

    #[test]
    fn ipv6_gives_a_kernel_routers_hosts_global_addresses_in_its_prefix() {
        let s = Scenario::parse(
            "[[nat]]\nname = \"v4\"\nbackend = \"kernel\"\n[[nat]]\nname = \"fw\"\nbackend = \"kernel\"\nipv6 = \"firewall\"\nunsolicited = \"rst\"\n[[nat]]\nname = \"open\"\nbackend = \"kernel\"\nipv6 = \"open\"\n[[host]]\nname = \"a\"\nnat = \"v4\"\n[[host]]\nname = \"b\"\nnat = \"fw\"\n[[host]]\nname = \"c\"\nnat = \"fw\"\n[[host]]\nname = \"d\"\nnat = \"open\"\n",
        )
        .unwrap();
        assert!(s.has_ipv6());
        assert_eq!(s.routers[0].ipv6, None, "absent: IPv4 only");
        assert_eq!(s.host("a").unwrap().address_v6, None);
        let fw = s.routers[1].ipv6.unwrap();
        assert_eq!(fw.mode, Ipv6Mode::Firewall);
        let v6 = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        assert_eq!(fw.prefix, v6("2001:db8:2::"));
        assert_eq!(fw.wan, v6("2001:db8:2::1"));
        assert_eq!(fw.gateway, v6("2001:db8:2:1::1"));
        assert_eq!(s.routers[1].config.unsolicited, UnsolicitedAnswer::Rst);
        let b = s.host("b").unwrap();
        assert_eq!(b.address_v6, Some(v6("2001:db8:2:1::2")));
        assert_eq!(b.address, Ipv4Addr::new(192, 168, 2, 2), "IPv4 as ever");
        assert_eq!(s.host("c").unwrap().address_v6, Some(v6("2001:db8:2:1::3")));
        assert_eq!(s.routers[2].ipv6.unwrap().mode, Ipv6Mode::Open);
        assert_eq!(s.host("d").unwrap().address_v6, Some(v6("2001:db8:3:1::2")));
        assert_eq!(
            s.servers_v6(),
            [v6("2001:db8:5100::10"), v6("2001:db8:5100::11")]
        );
        let plain = Scenario::parse("[[nat]]\nname = \"n\"\n[[host]]\nname = \"h\"\nnat = \"n\"\n")
            .unwrap();
        assert!(!plain.has_ipv6());
    }

    #[test]
    fn ipv6_where_the_lab_cannot_build_it_is_refused_naming_the_key_and_line() {
        let e = error_of("[[nat]]\nname = \"k\"\nbackend = \"kernel\"\nipv6 = \"nat66\"\n[[host]]\nname = \"h\"\nnat = \"k\"\n");
        assert!(e.contains("line 4") && e.contains("nat66"), "{e}");
        // Behind a CGN: the CGN routes the router's IPv6 unfiltered.
        let chained = CHAIN.replacen(
            "upstream = \"cgn\"\nbackend = \"kernel\"",
            "upstream = \"cgn\"\nbackend = \"kernel\"\nipv6 = \"firewall\"",
            1,
        );
        let s = Scenario::parse(&chained).unwrap();
        let khome = &s.routers[2];
        let v6 = khome.ipv6.expect("ipv6 behind a CGN");
        assert_eq!(
            s.routers[0].config.ipv6_transit,
            vec![(v6.prefix, khome.config.public_ip)],
            "the CGN carries the home router's /48 to its shared WAN address"
        );
        assert!(s.routers[0].ipv6.is_none());
        let emulated_chain =
            CHAIN.replacen("name = \"cgn\"", "name = \"cgn\"\nipv6 = \"firewall\"", 1);
        let e = error_of(&emulated_chain);
        assert!(
            e.contains("line 4") && e.contains("others sit behind"),
            "{e}"
        );
    }

    #[test]
    fn a_host_may_be_ipv6_only_behind_a_router_with_ipv6_and_nowhere_else() {
        let s = Scenario::parse(
            "[[nat]]\nname = \"fw\"\nipv6 = \"firewall\"\n[[host]]\nname = \"a\"\nnat = \"fw\"\nipv4 = false\n[[host]]\nname = \"b\"\nnat = \"fw\"\n",
        )
        .unwrap();
        let (a, b) = (s.host("a").unwrap(), s.host("b").unwrap());
        assert!(!a.ipv4 && b.ipv4);
        assert!(
            a.address_v6.is_some(),
            "an IPv6-only host has its IPv6 address"
        );
        let e = error_of(
            "[[nat]]\nname = \"v4\"\n[[host]]\nname = \"a\"\nnat = \"v4\"\nipv4 = false\n",
        );
        assert!(e.contains("line 6") && e.contains("ipv4 = false"), "{e}");
        let e = error_of("[[host]]\nname = \"a\"\nnat = \"none\"\nipv4 = false\n");
        assert!(e.contains("ipv4 = false"), "{e}");
    }

    #[test]
    fn ipv6_on_emulator_routers_gives_the_core_its_hosts_and_nptv6_an_internal_prefix() {
        let s = Scenario::parse(
            "[[nat]]\nname = \"fw\"\nipv6 = \"firewall\"\nfiltering = \"adf\"\n[[nat]]\nname = \"npt\"\nipv6 = \"nptv6\"\n[[host]]\nname = \"a\"\nnat = \"fw\"\n[[host]]\nname = \"b\"\nnat = \"npt\"\n[[host]]\nname = \"c\"\nnat = \"npt\"\n",
        )
        .unwrap();
        let v6 = |text: &str| text.parse::<Ipv6Addr>().unwrap();
        let fw = s.routers[0]
            .config
            .ipv6
            .as_ref()
            .expect("the emulator's IPv6 side");
        assert_eq!(fw.mode, Ipv6Mode::Firewall);
        assert_eq!(
            fw.filtering,
            Filtering::Adf,
            "from the router's filtering key"
        );
        assert_eq!(fw.npt, None);
        assert_eq!(
            fw.hosts,
            vec![(v6("2001:db8:1:1::2"), Ipv4Addr::new(192, 168, 1, 2))]
        );
        let a = s.host("a").unwrap();
        assert_eq!(
            (a.address_v6, a.public_v6),
            (Some(v6("2001:db8:1:1::2")), Some(v6("2001:db8:1:1::2")))
        );

        let npt = s.routers[1].config.ipv6.as_ref().unwrap();
        assert_eq!(npt.mode, Ipv6Mode::Nptv6);
        assert_eq!(
            npt.gateway,
            v6("fd00:db8:2:1::1"),
            "the LAN is numbered from the internal prefix"
        );
        assert_eq!(npt.wan, v6("2001:db8:2::1"));
        let b = s.host("b").unwrap();
        assert_eq!(b.address_v6, Some(v6("fd00:db8:2:1::2")));
        let public = b.public_v6.unwrap();
        assert_eq!(
            public.segments()[..3],
            [0x2001, 0xdb8, 2],
            "in the routed /48"
        );
        assert_eq!(
            public.segments()[4..],
            [0, 0, 0, 2],
            "interface identifier kept"
        );
        assert_eq!(npt.npt.unwrap().inbound(public), b.address_v6);
        assert_eq!(npt.hosts.len(), 2);
        // A kernel router numbers its NPTv6 LAN from a prefix of the same
        // one's complement sum: nftables' prefix NAT is then RFC 6296.
        let k = Scenario::parse("[[nat]]\nname = \"k\"\nbackend = \"kernel\"\nipv6 = \"nptv6\"\n[[host]]\nname = \"h\"\nnat = \"k\"\n").unwrap();
        let h = k.host("h").unwrap();
        assert_eq!(h.address_v6, Some(v6("fd00:30b8:1:1::2")));
        assert_eq!(h.public_v6, Some(v6("2001:db8:1:1::2")), "zero adjustment");
        assert_eq!(
            k.routers[0].ipv6.unwrap().external_lan(),
            v6("2001:db8:1:1::")
        );
        assert_eq!(
            s.routers[1].ipv6.unwrap().external_lan(),
            v6("2001:db8:2:dd00::")
        );
        // Kernel routers get no emulator IPv6 side: nftables plays it.
        let k = Scenario::parse("[[nat]]\nname = \"k\"\nbackend = \"kernel\"\nipv6 = \"firewall\"\n[[host]]\nname = \"h\"\nnat = \"k\"\n").unwrap();
        assert!(k.routers[0].config.ipv6.is_none() && k.routers[0].ipv6.is_some());
    }

    const CHAIN: &str = r#"
[[nat]]
name = "cgn"
mapping = "apdm"
allocation = "random"
[[nat]]
name = "home"
upstream = "cgn"
[[nat]]
name = "khome"
upstream = "cgn"
backend = "kernel"
[[host]]
name = "alice"
nat = "home"
[[host]]
name = "carol"
nat = "khome"
[[host]]
name = "phone"
nat = "cgn"
"#;

    #[test]
    fn a_nat_behind_a_cgn_gets_a_shared_address_and_its_hosts_the_cgns_public_one() {
        let s = Scenario::parse(CHAIN).unwrap();
        let cgn = &s.routers[0];
        assert_eq!(cgn.upstream, None);
        assert_eq!(cgn.config.public_ip, Ipv4Addr::new(203, 0, 113, 2));
        assert_eq!(cgn.config.gateway_ip, Ipv4Addr::new(100, 64, 1, 1));
        let (home, khome) = (&s.routers[1], &s.routers[2]);
        assert_eq!(home.upstream, Some(0));
        assert_eq!(home.config.public_ip, Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(khome.config.public_ip, Ipv4Addr::new(100, 64, 1, 3));
        assert_eq!(khome.backend(), Backend::Kernel);
        let alice = s.host("alice").unwrap();
        assert_eq!(alice.address, Ipv4Addr::new(192, 168, 2, 2));
        assert_eq!(
            alice.public_ip, cgn.config.public_ip,
            "the internet sees the CGN"
        );
        assert_eq!(s.host("carol").unwrap().public_ip, cgn.config.public_ip);
        let phone = s.host("phone").unwrap();
        assert_eq!(
            phone.address,
            Ipv4Addr::new(100, 64, 1, 4),
            "directly on the CGN's LAN"
        );
        assert_eq!(phone.public_ip, cgn.config.public_ip);
    }

    #[test]
    fn a_kernel_cgn_takes_either_home_backend_and_hosts_of_its_own() {
        let kernel_cgn = CHAIN.replacen(
            "mapping = \"apdm\"\nallocation = \"random\"",
            "mapping = \"apdm\"\nallocation = \"random\"\nbackend = \"kernel\"",
            1,
        );
        let s = Scenario::parse(&kernel_cgn).unwrap();
        let cgn = &s.routers[0];
        assert_eq!(cgn.kernel, Some(KernelNat::MasqueradeFullyRandom));
        assert_eq!(cgn.config.gateway_ip, Ipv4Addr::new(100, 64, 1, 1));
        let (home, khome) = (&s.routers[1], &s.routers[2]);
        assert_eq!((home.upstream, khome.upstream), (Some(0), Some(0)));
        assert_eq!(home.backend(), Backend::Emulator);
        assert_eq!(khome.kernel, Some(KernelNat::Masquerade));
        assert_eq!(home.config.public_ip, Ipv4Addr::new(100, 64, 1, 2));
        assert_eq!(khome.config.public_ip, Ipv4Addr::new(100, 64, 1, 3));
        for host in ["alice", "carol", "phone"] {
            assert_eq!(
                s.host(host).unwrap().public_ip,
                cgn.config.public_ip,
                "{host}: the internet sees the CGN"
            );
        }
        assert_eq!(
            s.host("phone").unwrap().address,
            Ipv4Addr::new(100, 64, 1, 4)
        );
        // Port mapping on the home routers behind a kernel CGN stays theirs to offer.
        let with_home_portmap = kernel_cgn.replacen(
            "upstream = \"cgn\"\n",
            "upstream = \"cgn\"\nportmap = [\"natpmp\", \"pcp\"]\n",
            1,
        );
        let s = Scenario::parse(&with_home_portmap).unwrap();
        assert!(s.routers[1].portmap.enabled && !s.routers[0].portmap.enabled);
    }

    #[test]
    fn chains_the_lab_cannot_build_are_refused_naming_the_line() {
        let home_behind = |cgn_keys: &str, home_keys: &str| {
            error_of(&format!(
                "[[nat]]\nname = \"cgn\"\n{cgn_keys}\n[[nat]]\nname = \"home\"\nupstream = \"cgn\"\n{home_keys}\n[[host]]\nname = \"h\"\nnat = \"home\"\n"
            ))
        };
        let e = home_behind("backend = \"kernel\"\nportmap = [\"natpmp\", \"pcp\"]", "");
        assert!(
            e.contains("line 4") && e.contains("portmap on a kernel router"),
            "{e}"
        );
        let e = home_behind("mapping = \"none\"", "");
        assert!(
            e.contains("line 6") && e.contains("mapping = \"none\""),
            "{e}"
        );
        let e = home_behind("", "public_ip = \"203.0.113.9\"");
        assert!(e.contains("line 7") && e.contains("100.64.0.0/10"), "{e}");
        let e = home_behind("upstream = \"home\"", "");
        assert!(e.contains("more than two NATs"), "{e}");
        let e = error_of("[[nat]]\nname = \"home\"\nupstream = \"cgm\"\n[[host]]\nname = \"h\"\nnat = \"home\"\n");
        assert!(e.contains("line 3") && e.contains("`cgm`"), "{e}");
        let e = error_of("[[nat]]\nname = \"home\"\nupstream = \"home\"\n[[host]]\nname = \"h\"\nnat = \"home\"\n");
        assert!(e.contains("its own upstream"), "{e}");
    }

    #[test]
    fn port_mapping_keys_are_read_and_what_the_lab_cannot_play_is_refused_with_the_line() {
        let kernel = |keys: &str| {
            format!("[[nat]]\nname = \"k\"\nbackend = \"kernel\"\n{keys}\n[[host]]\nname = \"h\"\nnat = \"k\"\n")
        };
        let s = Scenario::parse(&kernel(
            "portmap = [\"natpmp\", \"pcp\"]\nportmap_min_lifetime_s = 13\nportmap_max_lifetime_s = 600\nportmap_ports = [8000, 9000]",
        ))
        .unwrap();
        let p = &s.routers[0].portmap;
        assert!(p.enabled && !p.refuse);
        assert_eq!(
            (p.min_lifetime_s, p.max_lifetime_s, p.ports),
            (13, 600, (8000, 9000))
        );
        let s = Scenario::parse(&kernel(
            "portmap = [\"pcp\", \"natpmp\"]\nportmap_refuse = true",
        ))
        .unwrap();
        assert!(s.routers[0].portmap.refuse);
        let s = Scenario::parse(&kernel("portmap_closed = \"drop\"")).unwrap();
        assert_eq!(s.routers[0].portmap.closed, ClosedAnswer::Drop);
        assert!(!s.routers[0].portmap.enabled);
        assert_eq!(
            Scenario::parse(&kernel("")).unwrap().routers[0].portmap,
            PortmapSpec::default()
        );

        for (keys, expected) in [
            ("portmap = [\"pcp\"]", "one switch"),
            ("portmap = [\"upnp\", \"pcp\"]", "one switch"),
            ("portmap = [\"upnp\"]\nportmap_refuse = true", "no refusing UPnP"),
            ("portmap = [\"natpmp\", \"pcp\"]\nportmap_closed = \"drop\"", "portmap_closed"),
            ("portmap_refuse = true", "portmap_refuse needs portmap"),
            ("portmap = [\"natpmp\", \"pcp\"]\nportmap_ports = [9000, 8000]", "1 <= low <= high"),
            ("portmap = [\"natpmp\", \"pcp\"]\nportmap_min_lifetime_s = 60\nportmap_max_lifetime_s = 30", "below"),
        ] {
            let e = error_of(&kernel(keys));
            assert!(
                (4..=6).any(|line| e.starts_with(&format!("line {line}:"))),
                "{keys}: {e}"
            );
            assert!(e.contains(expected), "{keys}: {e}");
        }
        let emulator = |keys: &str| {
            format!("[[nat]]\nname = \"e\"\n{keys}\n[[host]]\nname = \"h\"\nnat = \"e\"\n")
        };
        let s = Scenario::parse(&emulator("portmap = [\"natpmp\", \"pcp\"]\nportmap_min_lifetime_s = 13\nportmap_max_lifetime_s = 13")).unwrap();
        assert!(s.routers[0].portmap.enabled && s.routers[0].kernel.is_none());
        assert_eq!(s.routers[0].portmap.max_lifetime_s, 13);
        let s = Scenario::parse(&emulator("portmap_closed = \"drop\"")).unwrap();
        assert_eq!(s.routers[0].portmap.closed, ClosedAnswer::Drop);
        let e = error_of(&emulator(
            "mapping = \"none\"\nportmap = [\"natpmp\", \"pcp\"]",
        ));
        assert!(e.contains("line 4") && e.contains("nothing to map"), "{e}");
        let s = Scenario::parse(&kernel("portmap = [\"natpmp\", \"pcp\", \"upnp\"]")).unwrap();
        assert!(s.routers[0].portmap.enabled && s.routers[0].portmap.upnp);
        let s = Scenario::parse(&kernel("portmap = [\"upnp\"]")).unwrap();
        let p = &s.routers[0].portmap;
        assert!(!p.enabled && p.upnp && p.runs_miniupnpd());
        let e = error_of(&emulator("portmap = [\"upnp\"]"));
        assert!(
            e.contains("line 3") && e.contains("kernel routers only"),
            "{e}"
        );
        let e = error_of(&kernel("portmap = [\"igd\"]"));
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn the_committed_port_mapping_scenario_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../probes/lab/portmap.toml");
        let s = Scenario::load(Path::new(path)).unwrap();
        let enabled: Vec<bool> = s.routers.iter().map(|r| r.portmap.enabled).collect();
        assert_eq!(enabled, [true, true, false, false]);
        let upnp: Vec<bool> = s.routers.iter().map(|r| r.portmap.upnp).collect();
        assert_eq!(upnp, [true, false, false, false]);
        assert!(s.routers[1].portmap.refuse);
        assert_eq!(s.routers[2].portmap.closed, ClosedAnswer::Drop);
    }
}
