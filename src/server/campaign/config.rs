//! The campaign file of `serve campaign` (TOML): every server of a campaign,
//! its limits and what volunteers are told, in one strict file. Unknown keys
//! and impossible values are errors naming the file and line; relative paths
//! are relative to the file's folder. Parsing is pure ([`CampaignFile::parse`]);
//! [`CampaignFile::load`] also reads the files it names (plan, privacy notice).
//! The keys are documented in docs/deploy.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use punchscope_analysis::plan::Plan;
use punchscope_analysis::privacy::PRIVACY_NOTICE;
use punchscope_analysis::toml_lines::at_line;
use punchscope_analysis::trial::Family;
use serde::Deserialize;
use toml::Spanned;

use crate::collector::StoreLocation;
use crate::net::address::AddressPolicy;
use crate::proto::rendezvous::coordinator::CoordinatorConfig;
use crate::proto::rendezvous::{check_collector_url, CampaignInfo};

/// A campaign file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum CampaignConfigError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    campaign: CampaignSection,
    echo: EchoSection,
    coordinator: CoordinatorSection,
    collector: CollectorSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignSection {
    name: Spanned<String>,
    operator: Spanned<String>,
    contact: Spanned<String>,
    privacy_notice_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoSection {
    /// The two public IPv4 addresses the echo servers listen on.
    addresses: Spanned<Vec<Ipv4Addr>>,
    /// The two ports each address listens on.
    #[serde(default = "default_echo_ports")]
    ports: Spanned<Vec<u16>>,
    /// Public addresses to announce instead (a server behind a 1:1 NAT), one per address.
    advertise: Option<Spanned<Vec<Ipv4Addr>>>,
    /// One or two IPv6 addresses the echo servers also listen on (the same
    /// ports): volunteers then classify their IPv6 path too and can offer
    /// IPv6 trials.
    addresses_v6: Option<Spanned<Vec<Ipv6Addr>>>,
    /// As `advertise`, for `addresses_v6` (a server behind NPTv6).
    advertise_v6: Option<Spanned<Vec<Ipv6Addr>>>,
    max_connections: Option<Spanned<usize>>,
    dial_back_burst: Option<Spanned<u32>>,
    dial_back_refill_secs: Option<Spanned<u64>>,
}

fn default_echo_ports() -> Spanned<Vec<u16>> {
    Spanned::new(0..0, vec![8339, 8341])
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordinatorSection {
    listen: Spanned<SocketAddr>,
    plan: Option<Spanned<PathBuf>>,
    /// `/metrics` and `/healthz` of the coordinator and echo servers.
    metrics_listen: Option<Spanned<SocketAddr>>,
    max_wait_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_ip: Option<Spanned<u32>>,
    max_connections_per_site: Option<Spanned<u32>>,
    max_waiting: Option<Spanned<usize>>,
    max_waiting_per_site: Option<Spanned<u32>>,
    trials_per_ip_burst: Option<Spanned<u32>>,
    #[serde(default)]
    reference_ips: Vec<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectorSection {
    listen: Spanned<SocketAddr>,
    /// The URL volunteers upload to (behind a reverse proxy: the proxy's).
    public_url: Spanned<String>,
    /// A SQLite file, or a `postgresql://` connection string.
    database: String,
    key_file: Option<PathBuf>,
    /// Lets the key sit in the database's directory (throwaway set-ups only).
    #[serde(default)]
    allow_key_beside_database: bool,
    export_token_file: Option<PathBuf>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<PathBuf>,
    max_body_bytes: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_source: Option<Spanned<u32>>,
    request_timeout_secs: Option<Spanned<u64>>,
}

/// Echo servers of a campaign: what they listen on and what they announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoSettings {
    pub listen: Vec<SocketAddr>,
    /// One per `listen` when the servers sit behind a 1:1 NAT.
    pub advertise: Option<Vec<SocketAddr>>,
    pub max_connections: Option<usize>,
    pub dial_back_burst: Option<u32>,
    pub dial_back_refill: Option<Duration>,
}

/// The coordinator of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorSettings {
    pub listen: SocketAddr,
    /// The plan file, if not the built-in default.
    pub plan: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub max_wait: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<u32>,
    pub max_connections_per_site: Option<u32>,
    pub max_waiting: Option<usize>,
    pub max_waiting_per_site: Option<u32>,
    pub trials_per_ip_burst: Option<u32>,
    pub reference_ips: Vec<IpAddr>,
}

/// The collector of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorSettings {
    pub listen: SocketAddr,
    pub public_url: String,
    pub database: StoreLocation,
    /// Default: [`crate::collector::default_key_path`], apart from the database.
    pub key_file: PathBuf,
    /// The key may sit in the database's directory (refused otherwise).
    pub allow_key_beside_database: bool,
    pub export_token_file: Option<PathBuf>,
    /// Certificate chain and key (PEM) when the collector serves TLS itself.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<u32>,
    pub request_timeout: Option<Duration>,
}

/// A campaign file, checked. Paths are absolute or relative to the file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignFile {
    /// What volunteers are told before consent; its privacy notice is
    /// filled in by [`CampaignFile::load`] (the built-in one by default).
    pub campaign: CampaignInfo,
    /// The notice file, when the file names one.
    pub privacy_notice_file: Option<PathBuf>,
    pub echo: EchoSettings,
    pub coordinator: CoordinatorSettings,
    pub collector: CollectorSettings,
}

fn positive<T: PartialOrd + Default + Copy + std::fmt::Display>(
    text: &str,
    key: &str,
    value: &Option<Spanned<T>>,
) -> Result<Option<T>, String> {
    match value {
        Some(v) if *v.get_ref() <= T::default() => {
            Err(at_line(text, v.span(), format!("{key} must be at least 1")))
        }
        Some(v) => Ok(Some(*v.get_ref())),
        None => Ok(None),
    }
}

/// One family's echo endpoints: what the servers listen on and what the
/// campaign announces.
struct EchoFamily {
    listen: Vec<SocketAddr>,
    /// `advertise` when given, else `listen`.
    announced: Vec<SocketAddr>,
    advertised: bool,
}

/// Checks one family's echo addresses (`key`) and their advertised public
/// addresses (`advertise_key`): one or two distinct addresses, one public
/// address per address, each endpoint one a volunteer's probe accepts.
fn echo_family<A: Copy + PartialEq + Into<IpAddr>>(
    text: &str,
    ports: &[u16],
    family: Family,
    key: &str,
    advertise_key: &str,
    addresses: &Spanned<Vec<A>>,
    advertise: Option<&Spanned<Vec<A>>>,
) -> Result<EchoFamily, String> {
    let family_name = match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    };
    let ips = addresses.get_ref();
    // An IPv4-mapped IPv6 address (::ffff:198.51.100.10) is reached over IPv4.
    let other_family = ips.iter().any(|ip| Family::of((*ip).into()) != family);
    if ips.is_empty() || ips.len() > 2 || (ips.len() == 2 && ips[0] == ips[1]) || other_family {
        return Err(at_line(
            text,
            addresses.span(),
            format!("echo {key} must be one or two distinct {family_name} addresses (two give a full verdict)"),
        ));
    }
    let endpoints = |ips: &[A]| -> Vec<SocketAddr> {
        ips.iter()
            .flat_map(|ip| {
                ports
                    .iter()
                    .map(move |port| SocketAddr::new((*ip).into(), *port))
            })
            .collect()
    };
    let listen = endpoints(ips);
    let announced = match advertise {
        Some(adv) if adv.get_ref().len() != ips.len() => {
            return Err(at_line(
                text,
                adv.span(),
                format!("echo {advertise_key} must give one public address per address of {key}, in the same order"),
            ));
        }
        Some(adv) => endpoints(adv.get_ref()),
        None => listen.clone(),
    };
    let span = advertise.map_or(addresses.span(), |a| a.span());
    for endpoint in &announced {
        AddressPolicy::Public.check(*endpoint).map_err(|why| {
            at_line(
                text,
                span.clone(),
                format!("volunteers' probes refuse this echo endpoint: {why} (global or documentation addresses only)"),
            )
        })?;
    }
    Ok(EchoFamily {
        listen,
        announced,
        advertised: advertise.is_some(),
    })
}

impl CampaignFile {
    /// Parses and checks a campaign file's text. `dir` is the folder relative
    /// paths start from. The privacy notice is the built-in one here.
    pub fn parse(text: &str, dir: &Path) -> Result<CampaignFile, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let path = |p: &Path| dir.join(p);

        let echo = &file.echo;
        let ports = echo.ports.get_ref();
        if ports.is_empty()
            || ports.len() > 2
            || ports.contains(&0)
            || (ports.len() == 2 && ports[0] == ports[1])
        {
            return Err(at_line(
                text,
                echo.ports.span(),
                "echo ports must be one or two distinct ports, not 0",
            ));
        }
        let v4 = echo_family(
            text,
            ports,
            Family::Ipv4,
            "addresses",
            "advertise",
            &echo.addresses,
            echo.advertise.as_ref(),
        )?;
        let v6 = match &echo.addresses_v6 {
            Some(addresses) => Some(echo_family(
                text,
                ports,
                Family::Ipv6,
                "addresses_v6",
                "advertise_v6",
                addresses,
                echo.advertise_v6.as_ref(),
            )?),
            None => {
                if let Some(adv) = &echo.advertise_v6 {
                    return Err(at_line(text, adv.span(), "echo advertise_v6 needs addresses_v6 (the IPv6 addresses the echo servers listen on)"));
                }
                None
            }
        };
        // IPv4 first: the order the campaign announces and the servers listen in.
        let families = std::iter::once(&v4).chain(&v6);
        let listen: Vec<SocketAddr> = families.clone().flat_map(|f| f.listen.clone()).collect();
        let advertise = families
            .clone()
            .any(|f| f.advertised)
            .then(|| families.clone().flat_map(|f| f.announced.clone()).collect());
        let announced: Vec<SocketAddr> = families.flat_map(|f| f.announced.clone()).collect();
        let echo_settings = EchoSettings {
            listen,
            advertise,
            max_connections: positive(text, "echo max_connections", &echo.max_connections)?,
            dial_back_burst: positive(text, "echo dial_back_burst", &echo.dial_back_burst)?,
            dial_back_refill: positive(
                text,
                "echo dial_back_refill_secs",
                &echo.dial_back_refill_secs,
            )?
            .map(Duration::from_secs),
        };

        let co = &file.coordinator;
        if co.listen.get_ref().port() == 0 {
            return Err(at_line(
                text,
                co.listen.span(),
                "coordinator listen needs a port (volunteers assume 8340)",
            ));
        }
        if let Some(metrics) = &co.metrics_listen {
            if metrics.get_ref().port() == 0 {
                return Err(at_line(
                    text,
                    metrics.span(),
                    "coordinator metrics_listen needs a port",
                ));
            }
        }
        let coordinator = CoordinatorSettings {
            listen: *co.listen.get_ref(),
            plan: co.plan.as_ref().map(|p| path(p.get_ref())),
            metrics_listen: co.metrics_listen.as_ref().map(|m| *m.get_ref()),
            max_wait: positive(text, "coordinator max_wait_secs", &co.max_wait_secs)?
                .map(Duration::from_secs),
            max_connections: positive(text, "coordinator max_connections", &co.max_connections)?,
            max_connections_per_ip: positive(
                text,
                "coordinator max_connections_per_ip",
                &co.max_connections_per_ip,
            )?,
            max_connections_per_site: positive(
                text,
                "coordinator max_connections_per_site",
                &co.max_connections_per_site,
            )?,
            max_waiting: positive(text, "coordinator max_waiting", &co.max_waiting)?,
            max_waiting_per_site: positive(
                text,
                "coordinator max_waiting_per_site",
                &co.max_waiting_per_site,
            )?,
            trials_per_ip_burst: positive(
                text,
                "coordinator trials_per_ip_burst",
                &co.trials_per_ip_burst,
            )?,
            reference_ips: co.reference_ips.clone(),
        };

        let c = &file.collector;
        check_collector_url(c.public_url.get_ref())
            .map_err(|why| at_line(text, c.public_url.span(), why))?;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => {
                if c.public_url.get_ref().starts_with("http://") {
                    return Err(at_line(text, c.public_url.span(), "collector public_url is http:// but the collector serves TLS (tls_cert): use https://"));
                }
                Some((path(cert.get_ref()), path(key)))
            }
            (None, None) => None,
            (Some(cert), None) => {
                return Err(at_line(
                    text,
                    cert.span(),
                    "collector tls_cert needs tls_key (both, or neither behind a reverse proxy)",
                ))
            }
            (None, Some(_)) => {
                return Err(at_line(
                    text,
                    c.public_url.span(),
                    "collector tls_key needs tls_cert (both, or neither behind a reverse proxy)",
                ))
            }
        };
        let database = match StoreLocation::parse(&c.database) {
            StoreLocation::Sqlite(file) => StoreLocation::Sqlite(path(&file)),
            postgres => postgres,
        };
        let key_file = c
            .key_file
            .as_deref()
            .map(path)
            .unwrap_or_else(crate::collector::default_key_path);
        let collector = CollectorSettings {
            listen: *c.listen.get_ref(),
            public_url: c.public_url.get_ref().clone(),
            database,
            key_file,
            allow_key_beside_database: c.allow_key_beside_database,
            export_token_file: c.export_token_file.as_deref().map(path),
            tls,
            max_body_bytes: positive(text, "collector max_body_bytes", &c.max_body_bytes)?,
            max_connections: positive(text, "collector max_connections", &c.max_connections)?,
            max_connections_per_source: positive(
                text,
                "collector max_connections_per_source",
                &c.max_connections_per_source,
            )?,
            request_timeout: positive(
                text,
                "collector request_timeout_secs",
                &c.request_timeout_secs,
            )?
            .map(Duration::from_secs),
        };

        let section = &file.campaign;
        let campaign = CampaignInfo {
            name: section.name.get_ref().clone(),
            operator: section.operator.get_ref().clone(),
            contact: section.contact.get_ref().clone(),
            echo: announced,
            collector: Some(collector.public_url.clone()),
            privacy_notice: PRIVACY_NOTICE.to_string(),
        };
        // Name the line of the text a probe would refuse.
        for (key, span) in [
            ("name", section.name.span()),
            ("operator", section.operator.span()),
            ("contact", section.contact.span()),
        ] {
            if let Err(why) = campaign.check(AddressPolicy::Public) {
                if why.starts_with(&format!("campaign {key} ")) {
                    return Err(at_line(text, span, why));
                }
            }
        }
        campaign.check(AddressPolicy::Public)?;
        Ok(CampaignFile {
            campaign,
            privacy_notice_file: section
                .privacy_notice_file
                .as_ref()
                .map(|p| path(p.get_ref())),
            echo: echo_settings,
            coordinator,
            collector,
        })
    }

    /// Reads, parses and checks the campaign file at `path`, then reads the
    /// privacy notice it names and checks the campaign as volunteers' probes will.
    pub fn load(path: &Path) -> Result<CampaignFile, CampaignConfigError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|cause| CampaignConfigError::Read {
                path: p.to_path_buf(),
                cause,
            })
        };
        let invalid = |message: String| CampaignConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let text = read(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut file = CampaignFile::parse(&text, dir).map_err(invalid)?;
        if let Some(notice) = &file.privacy_notice_file {
            file.campaign.privacy_notice = read(notice)?;
            file.campaign
                .check(AddressPolicy::Public)
                .map_err(|why| invalid(format!("privacy notice {}: {why}", notice.display())))?;
        }
        Ok(file)
    }

    /// The coordinator's plan: the plan file, or the built-in default
    /// (`None`). Either must list only families the campaign serves
    /// ([`CampaignFile::check_families`]).
    pub fn plan(&self) -> Result<Option<Plan>, CampaignConfigError> {
        let Some(path) = &self.coordinator.plan else {
            let default = CoordinatorConfig::default().plan;
            self.check_families(&default)
                .map_err(|why| CampaignConfigError::Invalid {
                    path: "the built-in plan (probes/default.toml)".into(),
                    message: why,
                })?;
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|cause| CampaignConfigError::Read {
            path: path.clone(),
            cause,
        })?;
        let invalid = |message: String| CampaignConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let plan = Plan::from_toml(&text).map_err(|e| invalid(e.to_string()))?;
        self.check_families(&plan).map_err(|why| {
            // The plan's `families` line, when it has one (absent: ipv4 only).
            let at = text
                .lines()
                .scan(0, |offset, line| {
                    let start = *offset;
                    *offset += line.len() + 1;
                    Some((start, line))
                })
                .find(|(_, line)| line.trim_start().starts_with("families"))
                .map(|(start, _)| start);
            invalid(match at {
                Some(start) => at_line(&text, start..start + 1, why),
                None => why,
            })
        })?;
        Ok(Some(plan))
    }

    /// Whether every family `plan` lists can run: a volunteer offers a
    /// family only when it classified its path in that family against the
    /// campaign's echo servers and reaches the coordinator in it, so a
    /// family without either would silently run no trial at all.
    pub fn check_families(&self, plan: &Plan) -> Result<(), String> {
        let listen = self.coordinator.listen;
        for family in &plan.families {
            let has_echo = self
                .campaign
                .echo
                .iter()
                .any(|e| Family::of(e.ip()) == *family);
            if !has_echo {
                return Err(format!(
                    "families lists {family}, but the campaign file's [echo] has no {family} addresses (addresses_v6): no volunteer could classify {family} or offer it; add them, or drop {family} from families"
                ));
            }
            // `[::]` serves both families (see `server::rendezvous::bind_listener`).
            let both = listen.ip().is_unspecified() && listen.is_ipv6();
            if !both && Family::of(listen.ip()) != *family {
                return Err(format!(
                    "families lists {family}, but the campaign file's [coordinator] listen = \"{listen}\" serves {} only: listen on \"[::]:{}\" (both families), or drop {family} from families",
                    Family::of(listen.ip()),
                    listen.port()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"# a campaign on two public IPv4 addresses
[campaign]
name = "punchscope pilot"
operator = "Example Lab"
contact = "punchscope@example.org"

[echo]
addresses = ["198.51.100.10", "198.51.100.11"]
ports = [8339, 8341]

[coordinator]
listen = "198.51.100.10:8340"
plan = "plan.toml"
metrics_listen = "127.0.0.1:9340"

[collector]
listen = "198.51.100.10:443"
public_url = "https://198.51.100.10"
database = "results.db"
export_token_file = "export.token"
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"
"#;

    fn error_of(text: &str) -> String {
        CampaignFile::parse(text, Path::new("/etc/ps")).unwrap_err()
    }

    #[test]
    fn the_documented_example_parses_with_every_endpoint_and_path() {
        let file = CampaignFile::parse(EXAMPLE, Path::new("/etc/ps")).unwrap();
        assert_eq!(file.echo.listen.len(), 4);
        assert_eq!(file.campaign.echo, file.echo.listen);
        assert_eq!(
            file.campaign.collector.as_deref(),
            Some("https://198.51.100.10")
        );
        assert_eq!(
            file.collector.database,
            StoreLocation::Sqlite("/etc/ps/results.db".into())
        );
        assert_eq!(
            file.collector.key_file,
            crate::collector::default_key_path()
        );
        assert_eq!(
            file.collector.tls,
            Some(("/etc/ps/tls/cert.pem".into(), "/etc/ps/tls/key.pem".into()))
        );
        assert_eq!(
            file.coordinator.plan.as_deref(),
            Some(Path::new("/etc/ps/plan.toml"))
        );
        assert_eq!(file.campaign.privacy_notice, PRIVACY_NOTICE);
    }

    #[test]
    fn unknown_keys_and_impossible_values_name_the_line() {
        let cases = [
            (
                EXAMPLE.replace("operator =", "operatr ="),
                "line 4",
                "unknown field `operatr`",
            ),
            (
                EXAMPLE.replace("\"198.51.100.11\"]", "\"192.168.1.2\"]"),
                "line 8",
                "private",
            ),
            (
                EXAMPLE.replace("[8339, 8341]", "[8339, 8339]"),
                "line 9",
                "distinct",
            ),
            (EXAMPLE.replace("8340\"", "0\""), "line 12", "needs a port"),
            (
                EXAMPLE.replace("https://198.51.100.10\"", "ftp://x\""),
                "line 18",
                "not http",
            ),
            (
                EXAMPLE.replace("https://198", "http://198"),
                "line 18",
                "serves TLS",
            ),
            (
                EXAMPLE.replace("tls_key = \"tls/key.pem\"\n", ""),
                "line 21",
                "needs tls_key",
            ),
            (
                EXAMPLE.replace("name = \"punchscope pilot\"", "name = \"pilot\\u001b[2J\""),
                "line 3",
                "control character",
            ),
            (
                EXAMPLE.replace("metrics_listen", "max_connections = 0\nmetrics_listen"),
                "line 14",
                "at least 1",
            ),
            (
                EXAMPLE.replace("[collector]", "[collectr]"),
                "line 16",
                "unknown field `collectr`",
            ),
        ];
        for (text, line, words) in cases {
            let e = error_of(&text);
            assert!(
                e.contains(line) && e.contains(words),
                "{e} (expected {line}: {words})"
            );
        }
    }

    /// [`EXAMPLE`] made dual-stack: IPv6 echo addresses, the coordinator on both families.
    fn dual_stack() -> String {
        EXAMPLE
            .replace(
                "ports = [8339, 8341]",
                "ports = [8339, 8341]\naddresses_v6 = [\"2001:db8:5100::10\", \"2001:db8:5100::11\"]",
            )
            .replace("198.51.100.10:8340", "[::]:8340")
    }

    #[test]
    fn ipv6_echo_addresses_listen_and_are_announced_after_the_ipv4_ones() {
        let file = CampaignFile::parse(&dual_stack(), Path::new("/etc/ps")).unwrap();
        let announced: Vec<String> = file.campaign.echo.iter().map(ToString::to_string).collect();
        assert_eq!(
            announced,
            [
                "198.51.100.10:8339",
                "198.51.100.10:8341",
                "198.51.100.11:8339",
                "198.51.100.11:8341",
                "[2001:db8:5100::10]:8339",
                "[2001:db8:5100::10]:8341",
                "[2001:db8:5100::11]:8339",
                "[2001:db8:5100::11]:8341",
            ]
        );
        assert_eq!(file.echo.listen, file.campaign.echo);
        assert_eq!(file.echo.advertise, None);
        assert_eq!(file.coordinator.listen, "[::]:8340".parse().unwrap());

        // Behind a 1:1 NAT for IPv4 only: the IPv6 endpoints announce themselves.
        let nat = dual_stack().replace(
            "ports = [8339, 8341]",
            "ports = [8339, 8341]\nadvertise = [\"203.0.113.10\", \"203.0.113.11\"]",
        );
        let file = CampaignFile::parse(&nat, Path::new("/etc/ps")).unwrap();
        let advertise = file.echo.advertise.clone().unwrap();
        assert_eq!(advertise.len(), file.echo.listen.len());
        assert_eq!(advertise[0], "203.0.113.10:8339".parse().unwrap());
        assert_eq!(advertise[4..], file.echo.listen[4..]);
        assert_eq!(file.campaign.echo, advertise);
    }

    #[test]
    fn impossible_ipv6_echo_addresses_name_the_key_and_line() {
        let v6 = "addresses_v6 = [\"2001:db8:5100::10\", \"2001:db8:5100::11\"]";
        let cases = [
            (
                dual_stack().replace(v6, "addresses_v6 = [\"2001:db8:5100::10\", \"2001:db8:5100::10\"]"),
                "line 10",
                "echo addresses_v6 must be one or two distinct IPv6 addresses",
            ),
            (
                dual_stack().replace(v6, "addresses_v6 = [\"198.51.100.12\"]"),
                "line 10",
                "invalid IPv6 address",
            ),
            (
                dual_stack().replace(v6, "addresses_v6 = [\"fd00::10\"]"),
                "line 10",
                "unique local (private), not a public address (global or documentation addresses only)",
            ),
            (
                dual_stack().replace(v6, "addresses_v6 = [\"::ffff:198.51.100.12\"]"),
                "line 10",
                "one or two distinct IPv6 addresses",
            ),
            (
                dual_stack().replace(v6, &format!("{v6}\nadvertise_v6 = [\"2001:db8:6100::10\"]")),
                "line 11",
                "echo advertise_v6 must give one public address per address of addresses_v6",
            ),
            (
                EXAMPLE.replace(
                    "ports = [8339, 8341]",
                    "ports = [8339, 8341]\nadvertise_v6 = [\"2001:db8:6100::10\"]",
                ),
                "line 10",
                "echo advertise_v6 needs addresses_v6",
            ),
        ];
        for (text, line, words) in cases {
            let e = error_of(&text);
            assert!(
                e.contains(line) && e.contains(words),
                "{e} (expected {line}: {words})"
            );
        }
    }

    /// The campaign file and `plan_body` written to a temporary folder, loaded.
    fn with_plan(campaign: &str, plan_body: &str) -> (tempfile::TempDir, CampaignFile) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("campaign.toml"), campaign).unwrap();
        std::fs::write(
            dir.path().join("plan.toml"),
            format!("version = 1\nname = \"dual\"\n{plan_body}"),
        )
        .unwrap();
        let file = CampaignFile::load(&dir.path().join("campaign.toml")).unwrap();
        (dir, file)
    }

    #[test]
    fn a_plan_over_ipv6_needs_ipv6_echo_servers_and_a_coordinator_on_both_families() {
        let both = "families = [\"ipv4\", \"ipv6\"]\n";
        let (_dir, file) = with_plan(&dual_stack(), both);
        let plan = file.plan().unwrap().unwrap();
        assert_eq!(plan.families, [Family::Ipv4, Family::Ipv6]);

        let refusals = [
            (EXAMPLE.to_string(), "has no ipv6 addresses (addresses_v6)"),
            (
                dual_stack().replace("[::]:8340", "198.51.100.10:8340"),
                "listen = \"198.51.100.10:8340\" serves ipv4 only: listen on \"[::]:8340\"",
            ),
            (
                dual_stack().replace("[::]:8340", "[2001:db8:5100::10]:8340"),
                "families lists ipv4, but the campaign file's [coordinator] listen = \"[2001:db8:5100::10]:8340\" serves ipv6 only",
            ),
        ];
        for (campaign, words) in refusals {
            let (dir, file) = with_plan(&campaign, both);
            let e = file.plan().unwrap_err().to_string();
            let plan_path = dir.path().join("plan.toml").display().to_string();
            assert!(
                e.starts_with(&plan_path) && e.contains("line 3") && e.contains(words),
                "{e} (expected {words})"
            );
        }
        // IPv6 echo servers without IPv6 trials: IPv6 is classified, trials stay IPv4.
        let (_dir, file) = with_plan(&dual_stack(), "");
        assert_eq!(file.plan().unwrap().unwrap().families, [Family::Ipv4]);
        // The built-in plan is IPv4 only: a coordinator on IPv6 alone cannot run it.
        let mut file = CampaignFile::parse(&dual_stack(), Path::new("/etc/ps")).unwrap();
        file.coordinator.plan = None;
        assert!(file.plan().unwrap().is_none());
        file.coordinator.listen = "[2001:db8:5100::10]:8340".parse().unwrap();
        let e = file.plan().unwrap_err().to_string();
        assert!(
            e.contains("built-in plan") && e.contains("serves ipv6 only"),
            "{e}"
        );
    }

    #[test]
    fn load_names_the_file_and_reads_the_notice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("campaign.toml");
        let text = EXAMPLE.replace(
            "contact = \"punchscope@example.org\"",
            "contact = \"punchscope@example.org\"\nprivacy_notice_file = \"notice.txt\"",
        );
        std::fs::write(&path, &text).unwrap();
        std::fs::write(dir.path().join("notice.txt"), "We keep ports.\n").unwrap();
        let file = CampaignFile::load(&path).unwrap();
        assert_eq!(file.campaign.privacy_notice, "We keep ports.\n");
        std::fs::write(&path, text.replace("[echo]", "[echo]\nsurprise = 1")).unwrap();
        let e = CampaignFile::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("line 9"),
            "{e}"
        );
    }
}
