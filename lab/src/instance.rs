//! A running lab: builds namespaces, devices and router tasks from a scenario, and tears all of it down.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use super::driver::{run_router, RouterCore, RouterIo};
use super::events::{EventLog, LabEvent};
use super::kernel::conntrack::{ConntrackError, ConntrackWatch};
use super::kernel::portmap::{self, MiniUpnpd, PortmapError, Refuser, RouterMapping};
use super::kernel::{self, KernelNat};
use super::lock::{LabLock, LockError};
use super::nat::{Nat, NatConfig, NatEvent, Translation};
use super::netns::{self, NetnsError};
use super::scenario::{
    check_name, Backend, HostSpec, Ipv6Mode, RouterSpec, Scenario, ScenarioError,
    IPV6_LAN_PREFIX_LEN, IPV6_ROUTED_PREFIX_LEN,
};
use super::stun::{self, StunError, StunResponder};
use super::tun::{Tun, TunError};

/// The name of the core namespace within a lab.
pub const INTERNET: &str = "internet";
/// The host side's device name inside each host namespace.
const HOST_DEVICE: &str = "lan0";

/// What went wrong building or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("invalid lab name: {0}")]
    Name(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    #[error(transparent)]
    Stun(#[from] StunError),
    #[error(transparent)]
    Portmap(#[from] PortmapError),
    #[error("cannot write the event log {path}: {source}")]
    EventLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the lab's router thread: {0}")]
    Runtime(std::io::Error),
    #[error("traffic inside the lab failed: {0}")]
    Traffic(std::io::Error),
    #[error("lab has no host named `{0}`")]
    UnknownHost(String),
}

/// How to run a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Prefix of every namespace: `NAME-internet`, `NAME-HOST`.
    pub name: String,
    /// Also write every router event to this JSONL file.
    pub event_log: Option<PathBuf>,
}

/// A lab that exists until it is dropped or shut down.
pub struct Lab {
    name: String,
    scenario: Scenario,
    namespaces: Vec<String>,
    routers: Option<RouterThread>,
    /// One `conntrack -E` per kernel router, ended before its namespace goes.
    conntrack: Vec<ConntrackWatch>,
    /// One miniupnpd per kernel router with port mapping, ended first at teardown.
    miniupnpd: Vec<MiniUpnpd>,
    /// The refusing responder of each router with `portmap_refuse`.
    refusers: Vec<Refuser>,
    /// The STUN responder those miniupnpd check their address with.
    stun: Option<StunResponder>,
    events: Arc<EventLog>,
    _lock: LabLock,
}

struct RouterThread {
    shutdown: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

/// What a started lab looks like, printed by `lab up` as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    pub lab: String,
    pub internet: InternetInfo,
    pub routers: Vec<RouterInfo>,
    pub hosts: Vec<HostInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InternetInfo {
    pub netns: String,
    pub servers: Vec<Ipv4Addr>,
    /// The servers' IPv6 addresses, when some router has `ipv6`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers_v6: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouterInfo {
    pub name: String,
    /// `emulator` or `kernel` (a real Linux NAT).
    pub backend: Backend,
    /// A kernel router's NAT statement (`masquerade`, `masquerade fully-random`, `snat hashed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_nat: Option<String>,
    /// The router's WAN address: public, or in 100.64.0.0/10 behind an upstream NAT.
    pub public_ip: Ipv4Addr,
    /// The NAT this one sits behind (a carrier-grade NAT), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// `none` for a plain router, else the mapping behaviour.
    pub mapping: String,
    pub filtering: Option<String>,
    pub allocation: Option<String>,
    pub unsolicited: String,
    pub delay_ms: f64,
    /// The router answers port mapping: NAT-PMP and PCP, UPnP IGD or both (`portmap`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub portmap: bool,
    /// What the router does with IPv6 (`ipv6`: firewall or open), if it routes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Mode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub name: String,
    pub netns: String,
    /// The host's IPv4 address and what the internet sees of it; both
    /// absent for an IPv6-only host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<Ipv4Addr>,
    /// The host's global IPv6 address, behind a router with `ipv6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Addr>,
    /// What the internet sees of it when that differs (NPTv6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_v6: Option<Ipv6Addr>,
    pub router: String,
}

/// Removes the namespaces of a lab left behind by a killed process.
///
/// Fails if a live process still runs a lab of that name. Returns what was removed.
pub fn remove_stale(name: &str) -> Result<Vec<String>, LabError> {
    check_name(name).map_err(LabError::Name)?;
    let _lock = LabLock::acquire(name)?;
    remove_namespaces_of(name)
}

/// The temporary folder of a kernel router's miniupnpd (configuration, PID file).
fn portmap_dir(lab: &str, router: &str) -> PathBuf {
    std::env::temp_dir().join(format!("punchscope-lab-{lab}-{router}"))
}

/// Lab names cannot contain '-', so `NAME-` names exactly this lab's
/// namespaces (and `punchscope-lab-NAME-` its miniupnpd folders).
fn remove_namespaces_of(name: &str) -> Result<Vec<String>, LabError> {
    let folder_prefix = format!("punchscope-lab-{name}-");
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.filter_map(Result::ok) {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&folder_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let prefix = format!("{name}-");
    let mut removed = Vec::new();
    for ns in netns::list() {
        if ns.starts_with(&prefix) {
            netns::delete(&ns)?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

impl Lab {
    /// Builds the lab. On any error, everything built so far is removed.
    pub fn start(scenario: Scenario, options: LabOptions) -> Result<Lab, LabError> {
        let name = options.name;
        check_name(&name).map_err(LabError::Name)?;
        let lock = LabLock::acquire(&name)?;
        remove_namespaces_of(&name)?;
        let log_file = options
            .event_log
            .as_deref()
            .map(|path| {
                File::create(path).map_err(|source| LabError::EventLog {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        let mut lab = Lab {
            events: Arc::new(EventLog::new(Instant::now(), log_file)),
            name,
            scenario,
            namespaces: Vec::new(),
            routers: None,
            conntrack: Vec::new(),
            miniupnpd: Vec::new(),
            refusers: Vec::new(),
            stun: None,
            _lock: lock,
        };
        // From here on, an early return drops `lab`, which tears down what exists.
        let routers = lab.build()?;
        lab.start_routers(routers)?;
        lab.start_portmap()?;
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The namespace of the internet core (servers live here).
    pub fn internet_netns(&self) -> String {
        format!("{}-{INTERNET}", self.name)
    }

    /// The namespace of a kernel router (`-` cannot occur in host names, so
    /// this never names a host's namespace).
    pub fn router_netns(&self, router: &str) -> String {
        format!("{}-nat-{router}", self.name)
    }

    /// The namespace of a host.
    pub fn host_netns(&self, host: &str) -> Result<String, LabError> {
        self.scenario
            .host(host)
            .map(|h| format!("{}-{}", self.name, h.name))
            .ok_or_else(|| LabError::UnknownHost(host.to_string()))
    }

    /// Runs `f` on a thread inside a host's namespace (or `internet`).
    pub fn run_in<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let ns = if host == INTERNET {
            self.internet_netns()
        } else {
            self.host_netns(host)?
        };
        Ok(netns::run_in(&ns, f)?)
    }

    /// The port mappings a router holds now: the ground truth of what it
    /// granted. A kernel router's are miniupnpd's DNAT rules in its nftables
    /// state; an emulator router's are the explicit mappings its table
    /// reported opening and not yet closing (deleted or lapsed), in order.
    pub fn port_mappings(&self, router: &str) -> Result<Vec<RouterMapping>, LabError> {
        let is_kernel = self
            .scenario
            .routers
            .iter()
            .any(|r| r.name == router && r.backend() == Backend::Kernel);
        if !is_kernel {
            return Ok(held_explicit_mappings(router, &self.events()));
        }
        let ns = self.router_netns(router);
        let chain = ["list", "chain", "inet", portmap::TABLE, portmap::DNAT_CHAIN];
        let output = netns::command_in(&ns, "nft")?
            .args(chain)
            .output()
            .map_err(LabError::Traffic)?;
        if !output.status.success() {
            return Err(NetnsError::Command {
                command: format!("nft {} (in {ns})", chain.join(" ")),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            }
            .into());
        }
        Ok(portmap::parse_mappings(&String::from_utf8_lossy(
            &output.stdout,
        )))
    }

    /// Every router event so far.
    pub fn events(&self) -> Vec<LabEvent> {
        self.events.snapshot()
    }

    /// The event log itself (for timing against its clock).
    pub fn event_log(&self) -> &EventLog {
        &self.events
    }

    pub fn info(&self) -> LabInfo {
        let routers = self
            .scenario
            .routers
            .iter()
            .map(|r| {
                let c = &r.config;
                let (mapping, filtering, allocation) = match c.translation {
                    Translation::None | Translation::Link => ("none".to_string(), None, None),
                    Translation::Nat {
                        mapping,
                        filtering,
                        allocation,
                    } => (
                        mapping.to_string(),
                        Some(filtering.to_string()),
                        Some(allocation.to_string()),
                    ),
                };
                RouterInfo {
                    name: r.name.clone(),
                    backend: r.backend(),
                    kernel_nat: r.kernel.map(|k| k.to_string()),
                    public_ip: c.public_ip,
                    upstream: r.upstream.map(|u| self.scenario.routers[u].name.clone()),
                    mapping,
                    filtering,
                    allocation,
                    unsolicited: c.unsolicited.to_string(),
                    delay_ms: c.uplink.delay.as_secs_f64() * 1e3,
                    portmap: r.portmap.offers_any(),
                    ipv6: r.ipv6.map(|v6| v6.mode),
                }
            })
            .collect();
        let hosts = self
            .scenario
            .hosts
            .iter()
            .map(|h| HostInfo {
                name: h.name.clone(),
                netns: format!("{}-{}", self.name, h.name),
                address: h.ipv4.then_some(h.address),
                public_ip: h.ipv4.then_some(h.public_ip),
                address_v6: h.address_v6,
                public_v6: h.public_v6.filter(|p| Some(*p) != h.address_v6),
                router: self.scenario.routers[h.router].name.clone(),
            })
            .collect();
        LabInfo {
            lab: self.name.clone(),
            internet: InternetInfo {
                netns: self.internet_netns(),
                servers: self.scenario.servers.clone(),
                servers_v6: if self.scenario.has_ipv6() {
                    self.scenario.servers_v6()
                } else {
                    Vec::new()
                },
            },
            routers,
            hosts,
        }
    }

    /// Stops the routers and removes every namespace and device, reporting failures.
    pub fn shutdown(mut self) -> Result<(), LabError> {
        self.teardown()
    }

    fn add_namespace(&mut self, ns: String) -> Result<(), LabError> {
        netns::add(&ns)?;
        self.namespaces.push(ns);
        Ok(())
    }

    /// Namespaces, addresses, routes and devices; returns the routers ready to run.
    fn build(&mut self) -> Result<Vec<RouterIo>, LabError> {
        let internet = self.internet_netns();
        self.add_namespace(internet.clone())?;
        netns::set_sysctls(
            &internet,
            &[
                ("ipv6/conf/all/disable_ipv6", "1"),
                ("ipv6/conf/default/disable_ipv6", "1"),
                ("ipv4/ip_forward", "1"),
                ("ipv4/conf/all/rp_filter", "0"),
                ("ipv4/conf/default/rp_filter", "0"),
                ("ipv4/conf/all/send_redirects", "0"),
                ("ipv4/conf/default/send_redirects", "0"),
            ],
        )?;
        let has_ipv6 = self.scenario.has_ipv6();
        if has_ipv6 {
            netns::set_sysctls(&internet, &ipv6_sysctls(true))?;
        }
        let mut internet_config = vec!["link set lo up".to_string()];
        for server in &self.scenario.servers {
            internet_config.push(format!("addr add {server}/32 dev lo"));
        }
        if has_ipv6 {
            for server in self.scenario.servers_v6() {
                internet_config.push(format!("addr add {server}/128 dev lo"));
            }
        }

        // Every router's hosts get their namespaces first, so that a core can
        // be built whatever its place in a chain.
        let all = self.scenario.routers.clone();
        let mut cores: Vec<Option<RouterCore>> = Vec::new();
        for (index, router) in all.iter().enumerate() {
            let hosts: Vec<HostSpec> = self
                .scenario
                .hosts
                .iter()
                .filter(|h| h.router == index)
                .cloned()
                .collect();
            for host in &hosts {
                let ns = format!("{}-{}", self.name, host.name);
                self.add_namespace(ns.clone())?;
                netns::set_sysctls(
                    &ns,
                    &[
                        ("ipv6/conf/all/disable_ipv6", "1"),
                        ("ipv6/conf/default/disable_ipv6", "1"),
                        ("ipv4/ip_forward", "0"),
                    ],
                )?;
                if router.ipv6.is_some() {
                    netns::set_sysctls(&ns, &ipv6_sysctls(false))?;
                }
            }
            cores.push(Some(match router.kernel {
                None => self.build_emulated_router(router.clone(), &hosts)?,
                Some(kind) => self.build_kernel_router(router.clone(), kind, &hosts)?,
            }));
        }
        // The outermost routers get a WAN device in the internet namespace;
        // those behind an emulator CGN run in its task, reached in memory;
        // those behind a kernel CGN get a WAN device in its namespace.
        let mut routers = Vec::new();
        for (index, router) in all.iter().enumerate() {
            if let Some(upstream) = router.upstream {
                if all[upstream].backend() == Backend::Kernel {
                    let core = cores[index].take().expect("each core once");
                    routers.push(self.link_to_kernel_upstream(index, &all[upstream], core)?);
                }
                continue;
            }
            let wan_device = format!("wan{index}");
            let wan = Tun::create_in(&internet, &wan_device)?;
            let carries_v6 = router.ipv6.is_some() || !router.config.ipv6_transit.is_empty();
            if has_ipv6 && !carries_v6 {
                // The internet namespace's own IPv6 chatter (MLD reports on a
                // new device) must not reach a router that reads IPv4 only.
                let key = format!("ipv6/conf/{wan_device}/disable_ipv6");
                netns::set_sysctls(&internet, &[(key.as_str(), "1")])?;
            }
            internet_config.push(format!("link set {wan_device} up"));
            if router.config.translation == Translation::None {
                for host in self.scenario.hosts.iter().filter(|h| h.router == index) {
                    internet_config
                        .push(format!("route add {}/32 dev {wan_device}", host.public_ip));
                }
            } else {
                internet_config.push(format!(
                    "route add {}/32 dev {wan_device}",
                    router.config.public_ip
                ));
            }
            // Its own prefix, and those of the routers behind it, which it routes.
            let prefixes = router
                .ipv6
                .map(|v6| v6.prefix)
                .into_iter()
                .chain(router.config.ipv6_transit.iter().map(|(prefix, _)| *prefix));
            for prefix in prefixes {
                internet_config.push(format!(
                    "route add {prefix}/{IPV6_ROUTED_PREFIX_LEN} dev {wan_device}"
                ));
            }
            // Only an emulator CGN carries its routers' cores in its own task;
            // a kernel CGN's became router tasks of their own above.
            let carries_cores_behind = router.backend() == Backend::Emulator;
            let behind = all
                .iter()
                .enumerate()
                .filter(|(_, r)| carries_cores_behind && r.upstream == Some(index))
                .map(|(i, _)| cores[i].take().expect("each core once"))
                .collect();
            routers.push(RouterIo {
                outer: cores[index].take().expect("each core once"),
                wan,
                behind,
            });
        }
        netns::ip_batch(&internet, &internet_config)?;
        Ok(routers)
    }

    /// The router at `index` behind the kernel carrier-grade NAT `upstream`:
    /// its WAN is a TUN device in the CGN's namespace (a TUN device cannot
    /// join the CGN's bridge), with a host route to the router's shared
    /// address. Answers from the CGN itself (time exceeded) leave from its
    /// LAN address, as behind an emulator CGN, so a path shows 100.64.M.1.
    fn link_to_kernel_upstream(
        &mut self,
        index: usize,
        upstream: &RouterSpec,
        core: RouterCore,
    ) -> Result<RouterIo, LabError> {
        let cgn = self.router_netns(&upstream.name);
        let device = kernel::downstream_link(index);
        let wan = Tun::create_in(&cgn, &device)?;
        let shared = core.nat.config().public_ip;
        let mut commands = vec![
            format!("link set {device} up"),
            format!(
                "route add {shared}/32 dev {device} src {}",
                upstream.config.gateway_ip
            ),
        ];
        if let Some(v6) = self.scenario.routers[index].ipv6 {
            // The CGN routes the router's IPv6 to it, unfiltered.
            commands.push(format!(
                "route add {}/{IPV6_ROUTED_PREFIX_LEN} dev {device}",
                v6.prefix
            ));
        }
        netns::ip_batch(&cgn, &commands)?;
        Ok(RouterIo {
            outer: core,
            wan,
            behind: Vec::new(),
        })
    }

    /// An emulator router: each host's only device is a TUN device the router drives.
    fn build_emulated_router(
        &mut self,
        router: RouterSpec,
        hosts: &[HostSpec],
    ) -> Result<RouterCore, LabError> {
        let mut lans = Vec::new();
        for host in hosts {
            let ns = format!("{}-{}", self.name, host.name);
            let device = Tun::create_in(&ns, HOST_DEVICE)?;
            let mut commands = vec![
                "link set lo up".to_string(),
                format!("link set {HOST_DEVICE} up"),
            ];
            // An IPv6-only host keeps its IPv4 slot (the emulator names the
            // device by it) but gets no IPv4 address or route.
            if host.ipv4 {
                commands.extend([
                    format!(
                        "addr add {}/{} dev {HOST_DEVICE}",
                        host.address, host.prefix_len
                    ),
                    // Via the router's LAN address, as behind a real router: the
                    // probe finds its gateway (port mapping) in the routing table.
                    // `onlink`: a host with a public address is not in its subnet.
                    format!(
                        "route add default via {} dev {HOST_DEVICE} onlink",
                        router.config.gateway_ip
                    ),
                ]);
            }
            netns::ip_batch(&ns, &commands)?;
            if let (Some(v6), Some(address)) = (router.ipv6, host.address_v6) {
                // Dual stack as behind a kernel router: the same plan, the
                // emulator's IPv6 side (`NatConfig::ipv6`) as the router.
                netns::ip_batch(
                    &ns,
                    &[
                        format!("addr add {address}/{IPV6_LAN_PREFIX_LEN} dev {HOST_DEVICE} nodad"),
                        format!("route add ::/0 via {} dev {HOST_DEVICE} onlink", v6.gateway),
                    ],
                )?;
            }
            lans.push((host.address, device));
        }
        Ok(RouterCore {
            name: router.name,
            nat: Nat::new(router.config).with_port_mapping(router.portmap),
            lans,
        })
    }

    /// A kernel router (see [`kernel`]): its namespace, a bridge with a veth
    /// link per host, the rule set, a conntrack watch, and the emulator as a
    /// bare link between its `wan0` and the internet.
    fn build_kernel_router(
        &mut self,
        router: RouterSpec,
        kind: KernelNat,
        hosts: &[HostSpec],
    ) -> Result<RouterCore, LabError> {
        let config = &router.config;
        let ns = self.router_netns(&router.name);
        self.add_namespace(ns.clone())?;
        let sysctls = KernelNat::sysctls(config);
        let sysctls: Vec<(&str, &str)> = sysctls.iter().map(|(k, v)| (*k, v.as_str())).collect();
        netns::set_sysctls(&ns, &sysctls)?;
        let transit_v6 = !config.ipv6_transit.is_empty();
        if router.ipv6.is_some() || transit_v6 {
            // Before any device exists, so that every device inherits it
            // (the links to the routers behind it included).
            netns::set_sysctls(&ns, &ipv6_sysctls(true))?;
        }
        let router_wan = Tun::create_in(&ns, kernel::WAN_DEVICE)?;
        let (lan, wan_device) = (kernel::LAN_DEVICE, kernel::WAN_DEVICE);
        let mut commands = vec![
            "link set lo up".to_string(),
            format!("link add {lan} type bridge"),
            format!("addr add {}/24 dev {lan}", config.gateway_ip),
            format!("link set {lan} up"),
        ];
        for (k, host) in hosts.iter().enumerate() {
            let host_ns = format!("{}-{}", self.name, host.name);
            commands.push(format!(
                "link add h{k} type veth peer name {HOST_DEVICE} netns {host_ns}"
            ));
            commands.push(format!("link set h{k} master {lan}"));
            commands.push(format!("link set h{k} up"));
        }
        commands.push(format!("addr add {}/32 dev {wan_device}", config.public_ip));
        commands.push(format!("link set {wan_device} up"));
        commands.push(format!("route add default dev {wan_device}"));
        if router.ipv6.is_none() && transit_v6 {
            // Only carrying the IPv6 of the routers behind it: no address of its own.
            commands.push(format!("route add ::/0 dev {wan_device}"));
        }
        if let Some(v6) = router.ipv6 {
            // `nodad`: usable at once, with no duplicate address detection
            // delay; nothing else in the lab holds these addresses.
            commands.push(format!(
                "addr add {}/{IPV6_LAN_PREFIX_LEN} dev {lan} nodad",
                v6.gateway
            ));
            commands.push(format!("addr add {}/128 dev {wan_device} nodad", v6.wan));
            commands.push(format!("route add ::/0 dev {wan_device}"));
        }
        netns::ip_batch(&ns, &commands)?;
        for host in hosts {
            let mut host_commands = vec![
                "link set lo up".to_string(),
                format!("link set {HOST_DEVICE} up"),
            ];
            // An IPv6-only host: no IPv4 address or route.
            if host.ipv4 {
                host_commands.extend([
                    format!(
                        "addr add {}/{} dev {HOST_DEVICE}",
                        host.address, host.prefix_len
                    ),
                    format!("route add default via {}", config.gateway_ip),
                ]);
            }
            if let (Some(v6), Some(address)) = (router.ipv6, host.address_v6) {
                host_commands.push(format!(
                    "addr add {address}/{IPV6_LAN_PREFIX_LEN} dev {HOST_DEVICE} nodad"
                ));
                host_commands.push(format!("route add ::/0 via {}", v6.gateway));
            }
            netns::ip_batch(&format!("{}-{}", self.name, host.name), &host_commands)?;
        }
        netns::run_with_input(&ns, "nft", &["-f", "-"], &kind.ruleset(config))?;
        if let Some(v6) = router.ipv6 {
            let rules = kernel::ipv6_ruleset(v6.mode, config.unsolicited);
            netns::run_with_input(&ns, "nft", &["-f", "-"], &rules)?;
            if v6.mode == Ipv6Mode::Nptv6 {
                let lan = Ipv6Addr::from(u128::from(v6.gateway) & !0xffff_ffff_ffff_ffffu128);
                let rules = kernel::nptv6_ruleset(lan, v6.external_lan());
                netns::run_with_input(&ns, "nft", &["-f", "-"], &rules)?;
            }
        }
        if let Some(rules) = portmap::ruleset(&router.portmap, &self.scenario.servers) {
            netns::run_with_input(&ns, "nft", &["-f", "-"], &rules)?;
        }
        self.conntrack.push(ConntrackWatch::start(
            &ns,
            &router.name,
            self.events.clone(),
        )?);
        let link = NatConfig {
            translation: Translation::Link,
            uplink: config.uplink,
            downlink: config.downlink,
            seed: config.seed,
            ..NatConfig::router(config.public_ip)
        };
        Ok(RouterCore {
            name: router.name,
            nat: Nat::new(link),
            lans: vec![(config.public_ip, router_wan)],
        })
    }

    fn start_routers(&mut self, routers: Vec<RouterIo>) -> Result<(), LabError> {
        let (shutdown, watcher) = watch::channel(false);
        let events = self.events.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LabError::Runtime)?;
        let thread = std::thread::Builder::new()
            .name(format!("lab-{}", self.name))
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks: Vec<_> = routers
                        .into_iter()
                        .map(|io| tokio::spawn(run_router(io, events.clone(), watcher.clone())))
                        .collect();
                    for task in tasks {
                        let _ = task.await;
                    }
                });
                // Dropping the runtime drops the reader tasks and closes every TUN device.
            })
            .map_err(LabError::Runtime)?;
        self.routers = Some(RouterThread { shutdown, thread });
        Ok(())
    }

    /// miniupnpd on every kernel router with port mapping, after the STUN
    /// responder it checks its address with. The routers' links run
    /// already: that check crosses them. (Emulator routers answer inside
    /// their NAT core: [`crate::nat::portmap`].)
    fn start_portmap(&mut self) -> Result<(), LabError> {
        let routers: Vec<RouterSpec> = self
            .scenario
            .routers
            .iter()
            .filter(|r| r.portmap.offers_any() && r.backend() == Backend::Kernel)
            .cloned()
            .collect();
        for router in routers.iter().filter(|r| r.portmap.refuse) {
            self.refusers.push(Refuser::start(
                &self.router_netns(&router.name),
                router.config.gateway_ip,
            )?);
        }
        let routers: Vec<RouterSpec> = routers
            .into_iter()
            .filter(|r| r.portmap.runs_miniupnpd())
            .collect();
        if routers.is_empty() {
            return Ok(());
        }
        self.stun = Some(StunResponder::start(
            &self.internet_netns(),
            &self.scenario.servers,
        )?);
        let stun = SocketAddrV4::new(self.scenario.servers[0], stun::PORTS[0]);
        for router in routers {
            let lan_net = Ipv4Addr::from(u32::from(router.config.gateway_ip) & 0xffff_ff00);
            let config = portmap::miniupnpd_config(&router.portmap, lan_net, stun);
            let daemon = MiniUpnpd::start(
                &self.router_netns(&router.name),
                &router.name,
                &portmap_dir(&self.name, &router.name),
                &config,
                router.portmap.ready_lines(),
                self.events.clone(),
            )?;
            self.miniupnpd.push(daemon);
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), LabError> {
        // The daemons first: they still hold their routers' namespaces.
        self.miniupnpd.clear();
        self.refusers.clear();
        self.stun = None;
        if let Some(routers) = self.routers.take() {
            let _ = routers.shutdown.send(true);
            let _ = routers.thread.join();
        }
        self.conntrack.clear();
        let mut first_error = None;
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = netns::delete(&ns) {
                first_error.get_or_insert(LabError::from(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown incomplete: {e}", self.name);
        }
    }
}

/// The sysctls that turn IPv6 on in a namespace of a scenario with `ipv6`
/// (namespaces start with it off), forwarding it on routers and the
/// internet core. No duplicate address detection: every address is the
/// lab's own and must be usable at once, link-local ones included.
fn ipv6_sysctls(forwarding: bool) -> Vec<(&'static str, &'static str)> {
    let forwarding = if forwarding { "1" } else { "0" };
    vec![
        ("ipv6/conf/all/disable_ipv6", "0"),
        ("ipv6/conf/default/disable_ipv6", "0"),
        ("ipv6/conf/all/accept_dad", "0"),
        ("ipv6/conf/default/accept_dad", "0"),
        ("ipv6/conf/all/forwarding", forwarding),
        ("ipv6/conf/default/forwarding", forwarding),
    ]
}

/// Reads a scenario file and starts a lab from it.
pub fn start_from_file(path: &Path, options: LabOptions) -> Result<Lab, LabError> {
    Lab::start(Scenario::load(path)?, options)
}

/// Replays an emulator router's `port_map` events: what it holds now.
fn held_explicit_mappings(router: &str, events: &[LabEvent]) -> Vec<RouterMapping> {
    let mut held: Vec<RouterMapping> = Vec::new();
    for event in events.iter().filter(|e| e.router == router) {
        let NatEvent::PortMap(change) = &event.event else {
            continue;
        };
        let (Some(external_port), Some(internal)) = (change.external_port, change.internal) else {
            continue;
        };
        let mapping = RouterMapping {
            external_port,
            internal,
        };
        held.retain(|m| *m != mapping);
        if change.change == portmap::PortmapChange::Added {
            held.push(mapping);
        }
    }
    held
}
