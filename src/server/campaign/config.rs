//! The campaign file of `serve campaign` (TOML): every server of a campaign,
//! its limits and what volunteers are told, in one strict file. Unknown keys
//! and impossible values are errors naming the file and line; relative paths
//! are relative to the file's folder. Parsing is pure ([`CampaignFile::parse`]);
//! [`CampaignFile::load`] also reads the files it names (plan, privacy notice).
//! The keys are documented in docs/deploy.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use punchscope_analysis::plan::Plan;
use punchscope_analysis::privacy::PRIVACY_NOTICE;
use punchscope_analysis::toml_lines::at_line;
use serde::Deserialize;
use toml::Spanned;

use crate::collector::StoreLocation;
use crate::net::address::AddressPolicy;
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

impl CampaignFile {
    /// Parses and checks a campaign file's text. `dir` is the folder relative
    /// paths start from. The privacy notice is the built-in one here.
    pub fn parse(text: &str, dir: &Path) -> Result<CampaignFile, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let path = |p: &Path| dir.join(p);

        let echo = &file.echo;
        let addresses = echo.addresses.get_ref();
        if addresses.is_empty()
            || addresses.len() > 2
            || (addresses.len() == 2 && addresses[0] == addresses[1])
        {
            return Err(at_line(text, echo.addresses.span(), "echo addresses must be one or two distinct IPv4 addresses (two give a full NAT verdict)"));
        }
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
        let endpoints = |ips: &[Ipv4Addr]| -> Vec<SocketAddr> {
            ips.iter()
                .flat_map(|ip| {
                    ports
                        .iter()
                        .map(move |port| SocketAddr::new(IpAddr::V4(*ip), *port))
                })
                .collect()
        };
        let listen = endpoints(addresses);
        let advertise = match &echo.advertise {
            Some(adv) if adv.get_ref().len() != addresses.len() => {
                return Err(at_line(text, adv.span(), "echo advertise must give one public address per echo address, in the same order"));
            }
            Some(adv) => Some(endpoints(adv.get_ref())),
            None => None,
        };
        let announced = advertise.clone().unwrap_or_else(|| listen.clone());
        let announced_span = echo
            .advertise
            .as_ref()
            .map_or(echo.addresses.span(), |a| a.span());
        for endpoint in &announced {
            AddressPolicy::Public.check(*endpoint).map_err(|why| {
                at_line(
                    text,
                    announced_span.clone(),
                    format!("volunteers' probes refuse this echo endpoint: {why}"),
                )
            })?;
        }
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

    /// The coordinator's plan: the plan file, or the built-in default.
    pub fn plan(&self) -> Result<Option<Plan>, CampaignConfigError> {
        let Some(path) = &self.coordinator.plan else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|cause| CampaignConfigError::Read {
            path: path.clone(),
            cause,
        })?;
        Plan::from_toml(&text)
            .map(Some)
            .map_err(|e| CampaignConfigError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })
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
