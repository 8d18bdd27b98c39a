//! `serve campaign`: a whole campaign in one process from one file. The echo
//! servers (two IPs x two ports, over IPv6 too in a dual-stack campaign),
//! the rendezvous coordinator (handing out the campaign before consent),
//! the collector (plain HTTP behind a reverse proxy, or HTTPS itself) and
//! the coordinator's `/metrics` listener, all started together and stopped
//! together. The file is [`config`].

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{CampaignConfigError, CampaignFile};

use crate::collector::{self, SecretError, StoreError};
use crate::proto::rendezvous::coordinator::{Coordinator, ReferencePolicy};
use crate::server::collector::{CollectorConfig, CollectorError};
use crate::server::echo::{self, EchoConfig, EchoServerError};
use crate::server::metrics;
use crate::server::rendezvous::{
    self, CoordinatorMetrics, RendezvousConfig, RendezvousServerError,
};
use crate::server::tls::{self, TlsError};

/// Why a campaign could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum CampaignServeError {
    #[error(transparent)]
    Config(#[from] CampaignConfigError),
    #[error("echo servers: {0}")]
    Echo(#[from] EchoServerError),
    #[error("coordinator: {0}")]
    Rendezvous(#[from] RendezvousServerError),
    #[error("collector: {0}")]
    Collector(#[from] CollectorError),
    #[error("collector storage: {0}")]
    Store(#[from] StoreError),
    #[error("collector secrets: {0}")]
    Secret(#[from] SecretError),
    #[error("collector TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr} ({what}): {cause}; check that the address is assigned to this host and the port is free")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("the {0} stopped on its own; the campaign was stopped with it")]
    Stopped(&'static str),
}

/// What a running campaign listens on, for its log line.
#[derive(Debug, Clone)]
pub struct Listening {
    pub echo: Vec<SocketAddr>,
    pub coordinator: SocketAddr,
    /// `https://` when the collector serves TLS itself.
    pub collector: String,
    pub metrics: Option<SocketAddr>,
    pub campaign: String,
}

/// Runs every server of `file` until `shutdown` (or until one of them fails),
/// calling `started` once everything listens. Nothing is bound, and no
/// database opened, before every file the campaign names has been read.
pub async fn run(
    file: CampaignFile,
    started: impl FnOnce(&Listening),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CampaignServeError> {
    // Read and check everything first: a typo must not leave half a campaign running.
    let mut rendezvous_config = RendezvousConfig::default();
    let core = &mut rendezvous_config.coordinator;
    if let Some(plan) = file.plan()? {
        core.plan = plan;
    }
    let c = &file.coordinator;
    core.max_wait = c.max_wait.unwrap_or(core.max_wait);
    core.max_connections_per_ip = c
        .max_connections_per_ip
        .unwrap_or(core.max_connections_per_ip);
    core.max_connections_per_site = c
        .max_connections_per_site
        .unwrap_or(core.max_connections_per_site);
    core.max_waiting = c.max_waiting.unwrap_or(core.max_waiting);
    core.max_waiting_per_site = c.max_waiting_per_site.unwrap_or(core.max_waiting_per_site);
    core.trials_per_ip_burst = c.trials_per_ip_burst.unwrap_or(core.trials_per_ip_burst);
    core.references = if c.reference_ips.is_empty() {
        ReferencePolicy::Nobody
    } else {
        ReferencePolicy::From(c.reference_ips.clone())
    };
    core.campaign = Some(file.campaign.clone());
    rendezvous_config.max_connections = c
        .max_connections
        .unwrap_or(rendezvous_config.max_connections);
    let coordinator_metrics = CoordinatorMetrics::new();
    rendezvous_config.metrics = Some(coordinator_metrics.clone());
    // The plan and limits as the coordinator will take them.
    Coordinator::new(
        rendezvous_config.coordinator.clone(),
        StdRng::seed_from_u64(0),
    )
    .map_err(RendezvousServerError::Plan)?;

    let e = &file.echo;
    let defaults = EchoConfig::default();
    let echo_config = EchoConfig {
        max_connections: e.max_connections.unwrap_or(defaults.max_connections),
        dial_back_burst: e.dial_back_burst.unwrap_or(defaults.dial_back_burst),
        dial_back_refill: e.dial_back_refill.unwrap_or(defaults.dial_back_refill),
        advertise: e.advertise.clone(),
        ..defaults
    };

    let k = &file.collector;
    if let (Some(db), false) = (k.database.sqlite_path(), k.allow_key_beside_database) {
        collector::check_key_apart(db, &k.key_file)?;
    }
    let key = collector::load_or_create_key(&k.key_file)?;
    let token = k
        .export_token_file
        .as_deref()
        .map(collector::read_secret)
        .transpose()?;
    let mut collector_config = CollectorConfig::new(key.as_bytes(), token);
    collector_config.max_body_bytes = k.max_body_bytes.unwrap_or(collector_config.max_body_bytes);
    collector_config.max_connections = k
        .max_connections
        .unwrap_or(collector_config.max_connections);
    if let Some(per_source) = k.max_connections_per_source {
        collector_config.admission.connections_per_source = per_source;
    }
    collector_config.request_timeout = k
        .request_timeout
        .unwrap_or(collector_config.request_timeout);
    let tls = match &k.tls {
        Some((cert, key)) => Some(tls::load_server_config(cert, key)?),
        None => None,
    };
    let store = k.database.open()?;

    let echo_listeners = echo::bind_listeners(&e.listen)?;
    let coordinator_listener = rendezvous::bind_listener(c.listen)?;
    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|cause| CampaignServeError::Bind { what, addr, cause })
    };
    let collector_listener = bind("collector", k.listen).await?;
    let metrics_listener = match c.metrics_listen {
        Some(addr) => Some(bind("metrics", addr).await?),
        None => None,
    };
    let _ = crate::net::socket::raise_fd_limit();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut servers: JoinSet<(&'static str, Result<(), CampaignServeError>)> = JoinSet::new();
    servers.spawn({
        let stop = stopped();
        async move {
            (
                "echo servers",
                echo::run(echo_listeners, echo_config, stop)
                    .await
                    .map_err(Into::into),
            )
        }
    });
    servers.spawn({
        let stop = stopped();
        async move {
            let served = rendezvous::run(coordinator_listener, rendezvous_config, stop).await;
            ("coordinator", served.map_err(Into::into))
        }
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    servers.spawn({
        let stop = stopped();
        async move {
            let served = match tls {
                Some(tls) => {
                    crate::server::collector::run_tls(
                        collector_listener,
                        tls,
                        collector_config,
                        store,
                        stop,
                    )
                    .await
                }
                None => {
                    crate::server::collector::run(collector_listener, collector_config, store, stop)
                        .await
                }
            };
            ("collector", served.map_err(Into::into))
        }
    });
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = metrics_listener {
        let stop = stopped();
        let render: Arc<dyn Fn() -> String + Send + Sync> =
            Arc::new(move || coordinator_metrics.render());
        servers.spawn(async move {
            let served = metrics::serve(listener, render, stop).await;
            (
                "metrics listener",
                served.map_err(|cause| CampaignServeError::Bind {
                    what: "metrics",
                    addr: metrics_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    cause,
                }),
            )
        });
    }
    started(&Listening {
        echo: e.listen.clone(),
        coordinator: c.listen,
        collector: format!("{scheme}://{}", k.listen),
        metrics: metrics_addr,
        campaign: file.campaign.name.clone(),
    });

    tokio::pin!(shutdown);
    let mut outcome = Ok(());
    tokio::select! {
        _ = &mut shutdown => {}
        Some(ended) = servers.join_next() => {
            outcome = match ended {
                Ok((_, Err(e))) => Err(e),
                Ok((name, Ok(()))) => Err(CampaignServeError::Stopped(name)),
                Err(_) => Err(CampaignServeError::Stopped("a server task")),
            };
        }
    }
    let _ = stop_tx.send(true);
    // Each server has its own grace period; this bounds the whole stop.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ended) = servers.join_next().await {
            if let Ok((_, Err(e))) = ended {
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
    })
    .await;
    servers.shutdown().await;
    outcome
}
