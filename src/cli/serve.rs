//! `punchscope serve ...`: run one of the servers until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use punchscope::analysis::plan::Plan;
use punchscope::analysis::privacy::PRIVACY_NOTICE;
use punchscope::net::address::AddressPolicy;
use punchscope::proto::rendezvous::coordinator::{CoordinatorConfig, ReferencePolicy};
use punchscope::proto::rendezvous::CampaignInfo;
use punchscope::server::campaign;
use punchscope::server::echo::{self, EchoConfig};
use punchscope::server::metrics;
use punchscope::server::rendezvous::{self, CoordinatorMetrics, RendezvousConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub server: ServeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Echo/reflector server for `punchscope classify`: reports observed endpoints, dials back on request.
    Echo(EchoArgs),
    /// Results collector: stores uploaded run results (HTTP, SQLite).
    Collector(super::collector::CollectorArgs),
    /// Rendezvous coordinator: pairs volunteers and coordinates punching trials (docs/rendezvous.md).
    Rendezvous(RendezvousArgs),
    /// A whole campaign from one file: echo servers, coordinator, collector, /metrics (docs/deploy.md).
    Campaign(CampaignServeArgs),
}

#[derive(Debug, Args)]
pub struct CampaignServeArgs {
    /// The campaign file (TOML; see docs/deploy.md).
    #[arg(long, value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Check the file (and the files it names) and exit without serving.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct RendezvousArgs {
    /// Endpoint to listen on (control and registration connections share it).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// Probe plan (TOML) handed to every pair; default: probes/default.toml as built in.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<std::path::PathBuf>,
    /// Longest a volunteer waits for a peer, in seconds.
    #[arg(long, default_value_t = 300)]
    pub max_wait_secs: u64,
    /// Accept reference peers (`mode: reference`) from this IP (repeat).
    #[arg(long = "reference-ip", value_name = "IP")]
    pub reference_ips: Vec<std::net::IpAddr>,
    /// Accept reference peers from anywhere (labs only: a reference is paired with everyone).
    #[arg(long, conflicts_with = "reference_ips")]
    pub any_reference: bool,
    /// Connections served at once; more are told `busy` and closed.
    #[arg(long, default_value_t = RendezvousConfig::default().max_connections)]
    pub max_connections: usize,
    /// Connections at once per source IP (IPv6: per /64).
    #[arg(long, default_value_t = 16)]
    pub max_connections_per_ip: u32,
    /// Connections at once per site (IPv4 address, IPv6 /48).
    #[arg(long, default_value_t = CoordinatorConfig::default().max_connections_per_site)]
    pub max_connections_per_site: u32,
    /// Volunteers waiting for a peer at once; when full, the site holding the most gives way.
    #[arg(long, default_value_t = CoordinatorConfig::default().max_waiting)]
    pub max_waiting: usize,
    /// Volunteers waiting at once per site (IPv4 address, IPv6 /48).
    #[arg(long, default_value_t = CoordinatorConfig::default().max_waiting_per_site)]
    pub max_waiting_per_site: u32,
    /// Trials one volunteer IP may run in a burst (one more every 3 s after that).
    #[arg(long, default_value_t = 200)]
    pub trials_per_ip_burst: u32,
    /// Serve /metrics (Prometheus text) and /healthz here, e.g. 127.0.0.1:9340.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub campaign: CampaignArgs,
}

/// The campaign a coordinator hands out before consent (`probe --campaign`).
#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// The campaign's name; with it, volunteers need only `probe --campaign HOST`.
    #[arg(long, value_name = "TEXT", requires_all = ["campaign_operator", "campaign_contact", "campaign_echo"])]
    pub campaign_name: Option<String>,
    /// Who runs the campaign.
    #[arg(long, value_name = "TEXT", requires = "campaign_name")]
    pub campaign_operator: Option<String>,
    /// How volunteers reach the operator (e-mail, web page).
    #[arg(long, value_name = "TEXT", requires = "campaign_name")]
    pub campaign_contact: Option<String>,
    /// An echo endpoint volunteers classify against, public IP:PORT (repeat:
    /// two IPs x two ports; IPv6 ones, `[2001:db8::10]:8339`, after the
    /// IPv4 ones for a dual-stack campaign, which older probes refuse).
    #[arg(long, value_name = "IP:PORT", requires = "campaign_name")]
    pub campaign_echo: Vec<SocketAddr>,
    /// The collector volunteers upload to, http(s)://...
    #[arg(long, value_name = "URL", requires = "campaign_name")]
    pub campaign_collector: Option<String>,
    /// The privacy notice volunteers agree to (plain text); default: punchscope's own.
    #[arg(long, value_name = "FILE", requires = "campaign_name")]
    pub privacy_notice_file: Option<std::path::PathBuf>,
}

impl CampaignArgs {
    /// The campaign, checked as a probe will check it; `None` without `--campaign-name`.
    fn campaign(&self) -> anyhow::Result<Option<CampaignInfo>> {
        let Some(name) = &self.campaign_name else {
            return Ok(None);
        };
        let privacy_notice = match &self.privacy_notice_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the privacy notice {}", path.display()))?,
            None => PRIVACY_NOTICE.to_string(),
        };
        let campaign = CampaignInfo {
            name: name.clone(),
            operator: self.campaign_operator.clone().unwrap_or_default(),
            contact: self.campaign_contact.clone().unwrap_or_default(),
            echo: self.campaign_echo.clone(),
            collector: self.campaign_collector.clone(),
            privacy_notice,
        };
        campaign
            .check(AddressPolicy::Public)
            .map_err(|why| anyhow::anyhow!("{why} (volunteers' probes would refuse it)"))?;
        Ok(Some(campaign))
    }
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Endpoint to listen on (repeat: two IPs x two ports is the full setup).
    #[arg(long = "listen", value_name = "IP:PORT", required = true)]
    pub listen: Vec<SocketAddr>,
    /// Public endpoint to announce for each --listen, in the same order (servers behind a 1:1 NAT).
    #[arg(long = "advertise", value_name = "IP:PORT")]
    pub advertise: Vec<SocketAddr>,
    /// Connections served at once; more are told `busy` and closed.
    #[arg(long, default_value_t = EchoConfig::default().max_connections)]
    pub max_connections: usize,
    /// Milliseconds to wait for an optional request after the observed line.
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,
    /// Dial-back requests one source IP may make in a burst.
    #[arg(long, default_value_t = EchoConfig::default().dial_back_burst)]
    pub dial_back_burst: u32,
    /// Seconds per dial-back request regained by a source IP.
    #[arg(long, default_value_t = 6)]
    pub dial_back_refill_secs: u64,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    match args.server {
        ServeCommand::Echo(args) => run_echo(args),
        ServeCommand::Rendezvous(args) => run_rendezvous(args),
        ServeCommand::Collector(args) => super::collector::run(args),
        ServeCommand::Campaign(args) => run_campaign(args),
    }
}

fn run_campaign(args: CampaignServeArgs) -> anyhow::Result<ExitCode> {
    let file = campaign::CampaignFile::load(&args.config)?;
    if args.check {
        file.plan()?;
        println!(
            "{}: campaign {:?} by {}: echo {}, coordinator {}, collector {} (public {})",
            args.config.display(),
            file.campaign.name,
            file.campaign.operator,
            file.echo.listen.len(),
            file.coordinator.listen,
            file.collector.listen,
            file.collector.public_url
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("campaign: shutting down");
        };
        let started = |l: &campaign::Listening| {
            let echo: Vec<String> = l.echo.iter().map(ToString::to_string).collect();
            // Tests and operators read this line: everything below listens.
            eprintln!(
                "campaign {:?}: echo {}; coordinator {}; collector {}; metrics {}",
                l.campaign,
                echo.join(" "),
                l.coordinator,
                l.collector,
                l.metrics
                    .map_or_else(|| "off".to_string(), |m| format!("http://{m}/metrics"))
            );
        };
        campaign::run(file, started, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_rendezvous(args: RendezvousArgs) -> anyhow::Result<ExitCode> {
    let mut config = RendezvousConfig {
        max_connections: args.max_connections,
        ..RendezvousConfig::default()
    };
    let core = &mut config.coordinator;
    if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the plan {}", path.display()))?;
        core.plan = Plan::from_toml(&text).with_context(|| format!("plan {}", path.display()))?;
    }
    core.campaign = args.campaign.campaign()?;
    core.max_wait = Duration::from_secs(args.max_wait_secs);
    core.max_connections_per_ip = args.max_connections_per_ip;
    core.max_connections_per_site = args.max_connections_per_site;
    core.max_waiting = args.max_waiting;
    core.max_waiting_per_site = args.max_waiting_per_site;
    core.trials_per_ip_burst = args.trials_per_ip_burst;
    core.references = if args.any_reference {
        ReferencePolicy::Anyone
    } else if args.reference_ips.is_empty() {
        ReferencePolicy::Nobody
    } else {
        ReferencePolicy::From(args.reference_ips.clone())
    };
    let fds =
        punchscope::net::socket::raise_fd_limit().context("cannot raise the open-file limit")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = rendezvous::bind_listener(args.listen)?;
        let local = listener.local_addr().context("listener address")?;
        // Tools (the bench) read this line to find an ephemeral port.
        eprintln!("rendezvous: listening on {local} (open-file limit {fds})");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(addr) = args.metrics_listen {
            let counters = CoordinatorMetrics::new();
            config.metrics = Some(counters.clone());
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for /metrics"))?;
            eprintln!("rendezvous: metrics on http://{addr}/metrics");
            let mut stopped = stopped.clone();
            tokio::spawn(metrics::serve(
                listener,
                std::sync::Arc::new(move || counters.render()),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ));
        }
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("rendezvous: shutting down");
        };
        rendezvous::run(listener, config, shutdown).await?;
        let _ = stop.send(true);
        Ok(ExitCode::SUCCESS)
    })
}

fn run_echo(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let config = EchoConfig {
        max_connections: args.max_connections,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        dial_back_burst: args.dial_back_burst,
        dial_back_refill: Duration::from_secs(args.dial_back_refill_secs),
        advertise: (!args.advertise.is_empty()).then_some(args.advertise),
        ..EchoConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = echo::bind_listeners(&args.listen)?;
        for addr in &args.listen {
            eprintln!("echo: listening on {addr}");
        }
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("echo: shutting down");
        };
        echo::run(listeners, config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}
