//! A mapping held for one trial's port (the `mapped` strategy): asked of the gateway with the protocol that granted one earlier in the run, held while the trial runs, deleted after it.
//!
//! PCP and NAT-PMP run one [`super::session`] on its own socket, as
//! [`super::measure`] does (it renews while held); UPnP IGD asks and deletes
//! with the same exchanges as the run's measurement. Every wait is bounded:
//! a gateway that no longer answers costs at most [`OPEN_WITHIN`] and the
//! trial goes on unmapped (its session still deletes whatever the gateway
//! grants late); UPnP IGD's search and exchanges get [`UPNP_OPEN_WITHIN`],
//! and what they get late is deleted at the release.

use std::net::IpAddr;
use std::time::Duration;

use punchscope_analysis::portmap::{MappingAttempt, MappingProtocol, PortRole};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::driver::{spawn_session, PortMapConfig, PortMapError};
use super::upnp_driver::{close_upnp, open_upnp, UpnpOpened};
use crate::probe::Stop;

/// Longest a trial's mapping is held: more than a pairing under the probe's
/// hard caps (src/probe/guard.rs) keeps a trial from registration to its
/// end (attempts, handshake, start delay, the coordinator's waits). Past
/// it the session deletes the mapping by itself.
pub const MAX_HOLD: Duration = Duration::from_secs(600);

/// Longest wait for UPnP IGD's search and exchanges before a trial goes on
/// without a mapping: within the coordinator's 15 s for both registrations.
pub const UPNP_OPEN_WITHIN: Duration = Duration::from_secs(8);

/// Longest wait for the gateway's answer before a trial goes on without a
/// mapping (the gateway granted one with this protocol earlier in the run).
/// PCP and NAT-PMP; UPnP IGD gets [`UPNP_OPEN_WITHIN`].
pub const OPEN_WITHIN: Duration = Duration::from_secs(3);

/// Asks one gateway, with one protocol, for mappings of trial ports.
#[derive(Debug, Clone)]
pub struct TrialMapper {
    config: PortMapConfig,
    protocol: MappingProtocol,
}

impl TrialMapper {
    /// A mapper for `gateway` (the default gateway the run's measurement
    /// asked) with `protocol` (the one that granted the probe port there).
    pub fn new(gateway: IpAddr, protocol: MappingProtocol) -> TrialMapper {
        TrialMapper::with_config(PortMapConfig::for_gateway(gateway, Vec::new()), protocol)
    }

    /// A mapper with `config`'s gateway, ports, lifetime, schedules and
    /// limits (its ports, hold and reachability check are not used).
    pub fn with_config(config: PortMapConfig, protocol: MappingProtocol) -> TrialMapper {
        TrialMapper { config, protocol }
    }

    /// Asks a mapping of TCP `port` and waits (at most [`OPEN_WITHIN`]) for
    /// the gateway's verdict. The mapping stays until [`HeldMapping::release`];
    /// `Err` only when no socket towards the gateway could be opened.
    pub async fn open(&self, port: u16) -> Result<HeldMapping, PortMapError> {
        let config = PortMapConfig {
            ports: vec![(PortRole::Trial, port)],
            protocols: vec![self.protocol],
            reach: None,
            hold: MAX_HOLD,
            ..self.config.clone()
        };
        if self.protocol == MappingProtocol::Upnp {
            // The exchanges run on a task of their own and are never cut short
            // (a mapping made late would be lost to the deletion); the trial
            // waits for them at most UPNP_OPEN_WITHIN, then goes on unmapped
            // and the release deletes whatever they got.
            let never = Stop::new().1;
            let mut opening = tokio::spawn(async move { open_upnp(&config, &never).await });
            let opened = match tokio::time::timeout(UPNP_OPEN_WITHIN, &mut opening).await {
                Ok(Ok(opened)) => opened?,
                Ok(Err(_)) | Err(_) => {
                    return Ok(HeldMapping {
                        external_port: None,
                        held: Held::UpnpLate(opening),
                    })
                }
            };
            let external_port = opened
                .records
                .first()
                .and_then(|r| r.granted.as_ref())
                .map(|g| g.external_port);
            return Ok(HeldMapping {
                external_port,
                held: Held::Upnp(Box::new(opened)),
            });
        }
        let (release, release_rx) = watch::channel(false);
        let (settled_tx, mut settled_rx) = mpsc::channel(1);
        let task = spawn_session(
            &config,
            self.protocol,
            (PortRole::Trial, port),
            release_rx,
            settled_tx,
        )
        .await?;
        let external_port = tokio::time::timeout(OPEN_WITHIN, settled_rx.recv())
            .await
            .ok()
            .flatten()
            .and_then(|settled| settled.held);
        Ok(HeldMapping {
            external_port,
            held: Held::Session { release, task },
        })
    }
}

/// One trial port's mapping, held until released.
pub struct HeldMapping {
    external_port: Option<u16>,
    held: Held,
}

enum Held {
    /// PCP or NAT-PMP: the session's task keeps the mapping until told.
    Session {
        release: watch::Sender<bool>,
        task: JoinHandle<MappingAttempt>,
    },
    Upnp(Box<UpnpOpened>),
    /// UPnP IGD still asking when the trial went on without it.
    UpnpLate(JoinHandle<Result<UpnpOpened, PortMapError>>),
}

impl HeldMapping {
    /// The external port the gateway granted, if it did.
    pub fn external_port(&self) -> Option<u16> {
        self.external_port
    }

    /// Deletes the mapping (also one whose answer never came) and returns
    /// the record of the request and its deletion; `None` only if the
    /// session's task failed.
    pub async fn release(self) -> Option<MappingAttempt> {
        match self.held {
            Held::Session { release, task } => {
                let _ = release.send(true);
                task.await.ok()
            }
            Held::Upnp(opened) => close_upnp(*opened).await.into_iter().next(),
            Held::UpnpLate(opening) => match opening.await {
                Ok(Ok(opened)) => close_upnp(opened).await.into_iter().next(),
                _ => None,
            },
        }
    }
}
