//! TCP NAT classification: what the probes observed and the pure function that turns it into a verdict.
//!
//! The classifier (`punchscope::classify`) does the I/O and fills
//! [`Observations`]; [`verdict`] decides, without I/O, so the decision rules
//! are tested over tables and can be re-run on stored observations.
//!
//! The rules follow RFC 5780 section 4.3 (mapping) and 4.4 (filtering),
//! adapted to TCP: "sending to" an endpoint means completing a TCP handshake
//! with it, and a filtering test is a TCP connection the echo server opens
//! towards the probe's public endpoint ("dial-back").

use std::fmt;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::nat::{Allocation, Filtering, Mapping};

mod path;
pub use path::{
    path_verdict, HopAnswer, HopClass, HopObservation, PathObservation, PathVerdict, MAX_PATH_TTL,
};

/// Which server endpoint a dial-back comes from, relative to the endpoint the
/// asking connection reached. Also used on the echo wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DialKind {
    /// Same server IP, the other port: admitted by EIF and ADF, not by APDF.
    OtherPort,
    /// The other server IP: admitted by EIF only.
    OtherIp,
    /// From the endpoint reached, to the asker's observed address at the
    /// port the request names (`mapped_port`): the external port a router
    /// mapped for it. Not a filtering test: it checks a port mapping.
    MappedPort,
}

impl DialKind {
    /// The wire and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            DialKind::OtherPort => "other_port",
            DialKind::OtherIp => "other_ip",
            DialKind::MappedPort => "mapped_port",
        }
    }
}

/// What the echo server saw when it dialed back. Also used on the echo wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DialOutcome {
    /// The TCP handshake completed.
    Connected,
    /// A RST came back (the NAT or the host refused the SYN).
    Refused,
    /// No answer within the server's dial timeout (the SYN was dropped).
    Timeout,
    /// An ICMP error came back (host or network unreachable).
    Unreachable,
    /// The server has no endpoint of that kind (single IP or single port).
    Unavailable,
    /// The server could not dial for a reason of its own (a local socket error).
    Error,
}

/// One TCP connection to an echo server and what it reported back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Our socket's local endpoint once connected.
    pub local: SocketAddr,
    /// The echo server endpoint we connected to.
    pub server: SocketAddr,
    /// The source endpoint the server saw (our public endpoint), if the probe worked.
    pub observed: Option<SocketAddr>,
    /// Time for the TCP handshake, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
}

/// One dial-back the server attempted towards our filtering port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialObservation {
    pub kind: DialKind,
    /// The server endpoint it dialed from, if it had one.
    pub from: Option<SocketAddr>,
    /// What the server reported about its connect; `None` when it had not
    /// reported by the time we stopped waiting (a few measured round trips
    /// after it started dialing: an admitted dial-back arrives well before).
    pub server_outcome: Option<DialOutcome>,
    /// Whether our listener received the connection carrying our token.
    pub received: bool,
}

/// The filtering test: one fresh local port that talked only to the primary
/// server endpoint, listened on, and asked for dial-backs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilteringObservation {
    /// The probe that opened the mapping (and carried the request).
    pub probe: Probe,
    pub dials: Vec<DialObservation>,
    /// Why the server made no dials (for example rate limiting), if it refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The hairpin test: a connection from a fresh local port to the public
/// endpoint of our own listening port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HairpinObservation {
    /// Our public endpoint that we dialed.
    pub target: SocketAddr,
    /// Whether our own listener received the connection with our token.
    pub reached_listener: bool,
    /// Why the connect failed, if it did.
    pub error: Option<String>,
}

/// Everything the classifier measured. The first mapping probe's server is
/// the primary endpoint; the others are told apart by comparing addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observations {
    /// From one local port, one probe per distinct server endpoint
    /// (primary, same IP other port, other IP same port).
    pub mapping: Vec<Probe>,
    /// From several fresh local ports, each to the primary endpoint, in order.
    pub allocation: Vec<Probe>,
    pub filtering: Option<FilteringObservation>,
    pub hairpin: Option<HairpinObservation>,
}

/// A behaviour that was measured, could only be narrowed down, or not measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Finding<T> {
    Known {
        value: T,
    },
    /// The measurements fit several values; `missing` says what would tell them apart.
    Ambiguous {
        candidates: Vec<T>,
        missing: String,
    },
    Unknown {
        reason: String,
    },
}

impl<T: Copy> Finding<T> {
    /// The value when it is known exactly.
    pub fn known(&self) -> Option<T> {
        match self {
            Finding::Known { value } => Some(*value),
            _ => None,
        }
    }
}

/// How the NAT picked external ports across fresh local ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "pattern", rename_all = "snake_case")]
pub enum AllocationPattern {
    /// The external port equals the local port.
    Preserving,
    /// Each new mapping is `step` ports after the previous one; `exact` is
    /// false when some gaps were larger (other hosts took ports in between).
    Sequential {
        step: i32,
        exact: bool,
    },
    Random,
}

impl fmt::Display for AllocationPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocationPattern::Preserving => f.write_str("preserving"),
            AllocationPattern::Sequential { step, exact: true } => {
                write!(f, "sequential (step {step:+})")
            }
            AllocationPattern::Sequential { step, exact: false } => {
                write!(f, "sequential (step {step:+}, with gaps)")
            }
            AllocationPattern::Random => f.write_str("random"),
        }
    }
}

impl AllocationPattern {
    /// The RFC 4787 vocabulary shared with the lab.
    pub fn allocation(self) -> Allocation {
        match self {
            AllocationPattern::Preserving => Allocation::Preserve,
            AllocationPattern::Sequential { .. } => Allocation::Sequential,
            AllocationPattern::Random => Allocation::Random,
        }
    }
}

/// The classification decided from [`Observations`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// Every observed endpoint equals the local one: no address translation.
    pub no_nat: bool,
    pub mapping: Finding<Mapping>,
    pub filtering: Finding<Filtering>,
    /// Whether a fresh local port keeps its number in its first mapping (when
    /// free): the allocation verdict is `preserving`, or, without one, one of
    /// the parallel mapping probes kept its port. Under ADM/APDM the later
    /// mappings of one local port cannot keep it too, so they do not count.
    pub port_preserved: Option<bool>,
    pub allocation: Finding<AllocationPattern>,
    pub hairpin: Option<bool>,
    /// Measurements that could not be made, in words a volunteer can act on.
    pub missing: Vec<String>,
    /// The NAT chain in front of the host (hop classes only, no address),
    /// from the TTL-limited probe sequence; absent when it was not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathVerdict>,
    /// What the run means for IPv6, when it ran over IPv6 (the echo
    /// endpoints were IPv6); absent for IPv4 runs and in older results.
    /// `filtering` above is the firewall's filtering then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Verdict>,
}

/// An IPv6 run's reading. IPv6 is rarely translated: what stands between a
/// node and its peers is usually a stateful firewall (RFC 6092), whose
/// filtering the dial-backs measure as they do a NAT's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ipv6Verdict {
    /// Whether some observed endpoint differs from the local one (NPTv6 or
    /// NAT66); `None` when no probe answered. Kept for older readers:
    /// `translation` says which.
    pub translated: Option<bool>,
    /// Which translation (see [`Ipv6Translation`] for the rule); `None`
    /// when no probe answered, and in results from before the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<Ipv6Translation>,
    /// Whether a connection nobody inside opened gets in: the dial-back from
    /// the server's other IP, towards a port that had talked only to the
    /// primary endpoint, arrived. `None` when that dial-back did not happen.
    pub unsolicited_admitted: Option<bool>,
}

/// What happens to a host's IPv6 address on its way out.
///
/// The rule (docs/classify.md, "IPv6 translation kinds"): `nptv6` when
/// every answered probe was translated with its port kept, each local
/// address was seen as one and the same external address whatever the
/// server (stateless, endpoint-independent), and the two addresses have
/// the same 16-bit one's complement sum (RFC 6296's checksum neutrality)
/// with the interface identifier (the low 64 bits) equal but for at most
/// one 16-bit word (where RFC 6296 puts its adjustment for prefixes longer
/// than /48). Anything else translated is `nat66`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Translation {
    /// Every observed endpoint is the local one.
    #[serde(rename = "none")]
    Untranslated,
    /// Stateless prefix translation (RFC 6296).
    Nptv6,
    /// Any other translation: a stateful NAT66 that rewrites addresses
    /// (and perhaps ports) per connection, or a mixture.
    Nat66,
}

impl Ipv6Translation {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Ipv6Translation::Untranslated => "none",
            Ipv6Translation::Nptv6 => "nptv6",
            Ipv6Translation::Nat66 => "nat66",
        }
    }
}

/// The one's complement sum of an address's eight 16-bit words, with
/// 0xFFFF read as 0 (the same number in one's complement).
fn ones_complement_sum(words: [u16; 8]) -> u16 {
    let mut sum: u32 = words.iter().map(|w| u32::from(*w)).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if sum == 0xffff {
        0
    } else {
        sum as u16
    }
}

/// Whether `seen` is what RFC 6296 makes of `local`: the same one's
/// complement sum, and the interface identifier kept but for at most one word.
fn is_prefix_translation(local: std::net::Ipv6Addr, seen: std::net::Ipv6Addr) -> bool {
    let (l, s) = (local.segments(), seen.segments());
    let iid_words_changed = (4..8).filter(|&i| l[i] != s[i]).count();
    iid_words_changed <= 1 && ones_complement_sum(l) == ones_complement_sum(s)
}

/// The translation kind of an IPv6 run's answered probes (see [`Ipv6Translation`]).
fn ipv6_translation(answered: &[&Probe]) -> Option<Ipv6Translation> {
    if answered.is_empty() {
        return None;
    }
    if answered.iter().all(|p| p.observed == Some(p.local)) {
        return Some(Ipv6Translation::Untranslated);
    }
    let mut seen_as: std::collections::HashMap<std::net::Ipv6Addr, std::net::Ipv6Addr> =
        std::collections::HashMap::new();
    let npt = answered.iter().all(|p| {
        let (SocketAddr::V6(local), Some(SocketAddr::V6(seen))) = (p.local, p.observed) else {
            return false;
        };
        let consistent = *seen_as.entry(*local.ip()).or_insert(*seen.ip()) == *seen.ip();
        consistent
            && seen.port() == local.port()
            && seen.ip() != local.ip()
            && is_prefix_translation(*local.ip(), *seen.ip())
    });
    Some(if npt {
        Ipv6Translation::Nptv6
    } else {
        Ipv6Translation::Nat66
    })
}

/// A classification run as stored and printed with `--json`: what was
/// measured and what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Every endpoint the primary echo server announced.
    pub server_endpoints: Vec<SocketAddr>,
    pub observations: Observations,
    /// The TTL-limited probe sequence (see [`path_verdict`]), if it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathObservation>,
    pub verdict: Verdict,
}

impl Classification {
    /// Decides the verdict for `observations` (see [`verdict`]).
    pub fn new(server_endpoints: Vec<SocketAddr>, observations: Observations) -> Self {
        let verdict = verdict(&observations);
        Classification {
            server_endpoints,
            observations,
            path: None,
            verdict,
        }
    }

    /// Adds the path probe sequence and its reading to the verdict.
    pub fn with_path(mut self, path: PathObservation) -> Self {
        self.verdict.path = Some(path_verdict(&path));
        self.path = Some(path);
        self
    }
}

/// Largest port gap still read as "sequential with gaps" rather than random.
const MAX_SEQUENTIAL_GAP: i32 = 32;

/// Decides the verdict from the observations. Pure: no I/O, no clock.
pub fn verdict(obs: &Observations) -> Verdict {
    let mut missing = Vec::new();
    let mapping = mapping_finding(&obs.mapping, &mut missing);
    let filtering = filtering_finding(obs.filtering.as_ref(), &mut missing);
    let allocation = allocation_finding(&obs.allocation, &mut missing);
    let answered = answered_probes(obs).collect::<Vec<_>>();
    let no_nat = !answered.is_empty() && answered.iter().all(|p| p.observed == Some(p.local));
    let mapping_answered: Vec<_> = obs
        .mapping
        .iter()
        .filter(|p| p.observed.is_some())
        .collect();
    let port_preserved = match &allocation {
        Finding::Known { value } => Some(*value == AllocationPattern::Preserving),
        _ if mapping_answered.is_empty() => None,
        _ => Some(
            mapping_answered
                .iter()
                .any(|p| p.observed.map(|o| o.port()) == Some(p.local.port())),
        ),
    };
    let hairpin = obs.hairpin.as_ref().map(|h| h.reached_listener);
    if obs.hairpin.is_none() {
        missing.push("hairpinning was not tested".to_string());
    }
    let ipv6 = ipv6_verdict(obs, &answered);
    if ipv6.is_some() {
        missing.push(
            "the path probe (TTL-limited SYNs read from ICMP errors) is IPv4 only: \
             the routers in front of this host were not probed over IPv6"
                .to_string(),
        );
    }
    Verdict {
        no_nat,
        mapping,
        filtering,
        port_preserved,
        allocation,
        hairpin,
        missing,
        path: None,
        ipv6,
    }
}

/// The IPv6 reading when the run went over IPv6 (its primary endpoint, the
/// first mapping probe's server or else the filtering probe's, is IPv6).
fn ipv6_verdict(obs: &Observations, answered: &[&Probe]) -> Option<Ipv6Verdict> {
    let primary = obs
        .mapping
        .first()
        .or(obs.filtering.as_ref().map(|f| &f.probe))?
        .server;
    if !primary.is_ipv6() {
        return None;
    }
    let translated =
        (!answered.is_empty()).then(|| answered.iter().any(|p| p.observed != Some(p.local)));
    let unsolicited_admitted = obs
        .filtering
        .as_ref()
        .filter(|f| f.error.is_none())
        .and_then(|f| admitted(&f.dials, DialKind::OtherIp));
    Some(Ipv6Verdict {
        translated,
        translation: ipv6_translation(answered),
        unsolicited_admitted,
    })
}

fn answered_probes(obs: &Observations) -> impl Iterator<Item = &Probe> {
    obs.mapping
        .iter()
        .chain(&obs.allocation)
        .chain(obs.filtering.as_ref().map(|f| &f.probe))
        .filter(|p| p.observed.is_some())
}

fn mapping_finding(probes: &[Probe], missing: &mut Vec<String>) -> Finding<Mapping> {
    let Some(primary) = probes.first().filter(|p| p.observed.is_some()) else {
        return Finding::Unknown {
            reason: "the primary server endpoint did not answer".to_string(),
        };
    };
    let p = primary.server;
    let answered = |pick: &dyn Fn(&SocketAddr) -> bool| {
        probes
            .iter()
            .find(|x| pick(&x.server) && x.observed.is_some())
            .and_then(|x| x.observed)
    };
    let a = primary.observed;
    let other_port = answered(&|s| s.ip() == p.ip() && s.port() != p.port());
    let other_ip = answered(&|s| s.ip() != p.ip());
    use Mapping::*;
    match (other_port, other_ip) {
        (Some(b), Some(c)) => Finding::Known {
            value: if a != Some(b) {
                Apdm
            } else if a != Some(c) {
                Adm
            } else {
                Eim
            },
        },
        (Some(b), None) => {
            missing.push("no second server IP answered: EIM and ADM cannot be told apart".into());
            if a != Some(b) {
                Finding::Known { value: Apdm }
            } else {
                Finding::Ambiguous {
                    candidates: vec![Eim, Adm],
                    missing: "a second server IP address".into(),
                }
            }
        }
        (None, Some(c)) => {
            missing.push(
                "no second port on the primary server IP answered: ADM and APDM cannot be told apart"
                    .into(),
            );
            if a == Some(c) {
                // A mapping kept across server IPs cannot depend on the address.
                Finding::Known { value: Eim }
            } else {
                Finding::Ambiguous {
                    candidates: vec![Adm, Apdm],
                    missing: "a second port on the primary server IP".into(),
                }
            }
        }
        (None, None) => {
            missing.push("only one server endpoint answered: mapping needs at least two".into());
            Finding::Ambiguous {
                candidates: vec![Eim, Adm, Apdm],
                missing: "a second server port and a second server IP".into(),
            }
        }
    }
}

/// Whether a dial of this kind got through: `None` when the test did not happen.
fn admitted(dials: &[DialObservation], kind: DialKind) -> Option<bool> {
    let d = dials.iter().find(|d| d.kind == kind)?;
    if d.received {
        return Some(true);
    }
    match d.server_outcome {
        // The dial reached the network and our listener never saw it: filtered.
        None
        | Some(DialOutcome::Connected)
        | Some(DialOutcome::Refused)
        | Some(DialOutcome::Timeout)
        | Some(DialOutcome::Unreachable) => Some(false),
        Some(DialOutcome::Unavailable) | Some(DialOutcome::Error) => None,
    }
}

fn filtering_finding(
    obs: Option<&FilteringObservation>,
    missing: &mut Vec<String>,
) -> Finding<Filtering> {
    let Some(obs) = obs else {
        missing.push("filtering was not tested".into());
        return Finding::Unknown {
            reason: "filtering was not tested".into(),
        };
    };
    if let Some(error) = &obs.error {
        missing.push(format!("the server refused the dial-back request: {error}"));
        return Finding::Unknown {
            reason: error.clone(),
        };
    }
    let other_port = admitted(&obs.dials, DialKind::OtherPort);
    let other_ip = admitted(&obs.dials, DialKind::OtherIp);
    use Filtering::*;
    match (other_ip, other_port) {
        (Some(true), _) => Finding::Known { value: Eif },
        (Some(false), Some(true)) => Finding::Known { value: Adf },
        (Some(false), Some(false)) => Finding::Known { value: Apdf },
        (Some(false), None) => {
            missing.push(
                "no dial-back from the server's other port: ADF and APDF cannot be told apart"
                    .into(),
            );
            Finding::Ambiguous {
                candidates: vec![Adf, Apdf],
                missing: "a dial-back from a second port on the primary server IP".into(),
            }
        }
        (None, Some(true)) => {
            missing.push(
                "no dial-back from a second server IP: EIF and ADF cannot be told apart".into(),
            );
            Finding::Ambiguous {
                candidates: vec![Eif, Adf],
                missing: "a dial-back from a second server IP address".into(),
            }
        }
        (None, Some(false)) => Finding::Known { value: Apdf },
        (None, None) => {
            missing.push("the server made no usable dial-back: filtering unknown".into());
            Finding::Unknown {
                reason: "the server could not dial back from another endpoint".into(),
            }
        }
    }
}

fn allocation_finding(probes: &[Probe], missing: &mut Vec<String>) -> Finding<AllocationPattern> {
    let pairs: Vec<(u16, u16)> = probes
        .iter()
        .filter_map(|p| p.observed.map(|o| (p.local.port(), o.port())))
        .collect();
    if pairs.len() < 3 {
        missing.push(format!(
            "only {} of the fresh-port probes answered: the allocation pattern needs at least 3",
            pairs.len()
        ));
        return Finding::Unknown {
            reason: "fewer than 3 fresh-port probes answered".into(),
        };
    }
    // A preserving NAT whose port is taken (by an older mapping) takes the next
    // free one: a port just above the local one is preservation, not chance.
    let kept_or_next_free = |(local, observed): &(u16, u16)| {
        let above = i32::from(*observed) - i32::from(*local);
        (0..=MAX_SEQUENTIAL_GAP).contains(&above)
    };
    if pairs.iter().any(|(l, o)| l == o) && pairs.iter().all(kept_or_next_free) {
        return Finding::Known {
            value: AllocationPattern::Preserving,
        };
    }
    let observed: Vec<u16> = pairs.iter().map(|(_, o)| *o).collect();
    // One probe may land on an old mapping (the OS reused a local port that
    // still has one) or be interleaved with other traffic: a sequential
    // pattern may drop one outlier, as long as three probes remain.
    let value = sequential_step(&observed)
        .or_else(|| {
            (observed.len() > 3)
                .then(|| {
                    (0..observed.len()).find_map(|skip| {
                        let rest: Vec<u16> = observed
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| *i != skip)
                            .map(|(_, p)| *p)
                            .collect();
                        sequential_step(&rest).map(|(step, _)| (step, false))
                    })
                })
                .flatten()
        })
        .map_or(AllocationPattern::Random, |(step, exact)| {
            AllocationPattern::Sequential { step, exact }
        });
    Finding::Known { value }
}

/// The step of ports that move in one direction by small gaps, and whether every gap equals it.
fn sequential_step(ports: &[u16]) -> Option<(i32, bool)> {
    let deltas: Vec<i32> = ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    let same_sign = deltas.iter().all(|d| *d > 0) || deltas.iter().all(|d| *d < 0);
    let small = deltas.iter().all(|d| d.abs() <= MAX_SEQUENTIAL_GAP);
    if deltas.is_empty() || !same_sign || !small {
        return None;
    }
    let step = *deltas.iter().min_by_key(|d| d.abs())?;
    Some((step, deltas.iter().all(|d| *d == step)))
}

fn mapping_words(m: Mapping) -> &'static str {
    match m {
        Mapping::Eim => "endpoint-independent mapping",
        Mapping::Adm => "address-dependent mapping",
        Mapping::Apdm => "address-and-port-dependent (symmetric) mapping",
    }
}

fn filtering_words(f: Filtering) -> &'static str {
    match f {
        Filtering::Eif => "endpoint-independent filtering",
        Filtering::Adf => "address-dependent filtering",
        Filtering::Apdf => "address-and-port-dependent filtering",
    }
}

fn finding_words<T: Copy>(f: &Finding<T>, words: fn(T) -> &'static str, what: &str) -> String {
    match f {
        Finding::Known { value } => words(*value).to_string(),
        Finding::Ambiguous { candidates, .. } => {
            let names: Vec<_> = candidates.iter().map(|c| words(*c)).collect();
            format!("{} (cannot tell apart: {})", what, names.join(" or "))
        }
        Finding::Unknown { .. } => format!("{what} unknown"),
    }
}

impl Verdict {
    /// One sentence a volunteer understands: what the NAT does and what it
    /// means for TCP hole punching.
    pub fn summary(&self) -> String {
        if let Some(ipv6) = &self.ipv6 {
            return self.ipv6_summary(ipv6);
        }
        if self.no_nat {
            let reach = match self.filtering.known() {
                Some(Filtering::Eif) => "peers can connect to you directly",
                Some(_) => {
                    "but a firewall filters incoming connections: hole punching is still needed"
                }
                None => "incoming filtering was not measured",
            };
            return format!("No NAT: your public endpoint is your local one; {reach}");
        }
        let mut parts = vec![capitalize(&finding_words(
            &self.mapping,
            mapping_words,
            "mapping",
        ))];
        match self.port_preserved {
            Some(true) => parts.push("port-preserving".into()),
            Some(false) => parts.push("port-translating".into()),
            None => {}
        }
        if let Finding::Known { value } = self.allocation {
            match value {
                AllocationPattern::Preserving => {}
                AllocationPattern::Sequential { step, .. } => {
                    parts.push(format!("sequential allocation (step {step:+})"))
                }
                AllocationPattern::Random => parts.push("random allocation".into()),
            }
        }
        parts.push(finding_words(&self.filtering, filtering_words, "filtering"));
        format!(
            "{}: {}{}",
            parts.join(", "),
            self.outlook(),
            self.chain_words()
        )
    }

    /// An IPv6 run in the words of a Bitcoin node's operator: is there
    /// translation, and can peers connect in or must connections be punched.
    fn ipv6_summary(&self, ipv6: &Ipv6Verdict) -> String {
        let reach = match (ipv6.unsolicited_admitted, self.filtering.known()) {
            (Some(true), _) | (None, Some(Filtering::Eif)) => {
                "no firewall in the way: reachable, peers can connect to you directly"
            }
            (_, Some(Filtering::Adf)) => {
                "firewall admits only hosts you contacted: punching needed"
            }
            (_, Some(Filtering::Apdf)) => {
                "firewall admits only connections you opened: punching needed"
            }
            (Some(false), _) => "firewall turns away connections you did not open: punching needed",
            (None, None) => "whether a firewall admits incoming connections was not measured",
        };
        let mapping = finding_words(&self.mapping, mapping_words, "mapping");
        match (ipv6.translation, ipv6.translated) {
            (Some(Ipv6Translation::Untranslated), _) | (None, Some(false)) => {
                format!("IPv6: no NAT, {reach}")
            }
            (Some(Ipv6Translation::Nptv6), _) => format!(
                "IPv6: prefix translation (NPTv6: your address is rewritten, ports kept, \
                 the same for every peer), {reach}"
            ),
            (Some(Ipv6Translation::Nat66), _) => {
                format!("IPv6: NAT66 (addresses translated), {mapping}; {reach}")
            }
            // A result from before `translation`.
            (None, Some(true)) => format!(
                "IPv6: addresses are translated (NPTv6 or NAT66, not told apart), {mapping}; {reach}"
            ),
            (None, None) => format!("IPv6: no probe answered, translation unknown; {reach}"),
        }
    }

    /// The TTL of a `low_ttl` priming SYN from this side: the measured
    /// [`PathVerdict::prime_ttl`], or `fallback` (the plan's fixed `low_ttl`)
    /// when the path was not measured or not completely.
    pub fn prime_ttl_or(&self, fallback: u8) -> u8 {
        self.path
            .as_ref()
            .and_then(|p| p.prime_ttl)
            .unwrap_or(fallback)
    }

    /// The NAT chain, when the path probe saw more than the home router.
    fn chain_words(&self) -> String {
        let Some(path) = &self.path else {
            return String::new();
        };
        match (path.cgnat, path.nat_hops) {
            (Some(true), Some(n)) => {
                format!(" (behind carrier-grade NAT: {n} NATs before the internet)")
            }
            (Some(true), None) => " (behind carrier-grade NAT)".to_string(),
            (_, Some(n)) if n >= 2 => format!(" ({n} NATs before the internet)"),
            _ => String::new(),
        }
    }

    fn outlook(&self) -> &'static str {
        let sequential = matches!(
            self.allocation.known(),
            Some(AllocationPattern::Sequential { .. })
        );
        match (self.mapping.known(), self.filtering.known()) {
            (Some(Mapping::Eim), Some(Filtering::Eif)) => {
                "TCP hole punching should work with almost any peer"
            }
            (Some(Mapping::Eim), _) => {
                "TCP hole punching should work with peers whose NAT also keeps mappings"
            }
            (Some(_), _) if sequential => {
                "TCP hole punching is unlikely except with port prediction or an easy peer"
            }
            (Some(_), _) => {
                "TCP hole punching will rarely work: the NAT changes ports per destination"
            }
            (None, _) => "the chances of TCP hole punching could not be judged",
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

#[cfg(test)]
mod tests;
