//! The volunteer's whole run: classify, pair, record, spool, upload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use punchscope_analysis::classify::Verdict;
use punchscope_analysis::portmap::{PortMappingReport, PortMappingSkipped, PortRole};
use punchscope_analysis::result::{ClientInfo, RunResult};
use punchscope_analysis::trial::Family;

use super::delivery::{spool_and_upload, UploadStatus};
use super::pairing::{first_of_family, run_pairing, PairingOptions, PairingRun};
use super::{ProbeError, Progress, Stop};
use crate::classify::{self, ClassifyConfig, EchoFamilies, EchoTrust, FamilyStep};
use crate::net::address::AddressPolicy;
use crate::node::{NodeBridge, NodeOptions};
use crate::portmap::trial::TrialMapper;
use crate::portmap::{self, gateway, PortMapConfig, ReachCheck};
use crate::proto::rendezvous::Mode;
use crate::rendezvous::{Hello, RendezvousError};

/// Bound on each step of the mapped port's dial-back (connect, answers).
const REACH_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on every wait for a coordinator line outside trials.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a volunteer's run needs: validated, ready to go.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The coordinator, `HOST:PORT`, at one or more addresses (a name
    /// gives each of its addresses): trials run in the IP families it has
    /// an address in and this host reaches.
    pub coordinator: Vec<String>,
    /// Echo servers for NAT classification, `HOST[:PORT]`.
    pub echo: Vec<String>,
    /// Where to upload the result; `None` leaves it in the spool.
    pub collector: Option<String>,
    /// CA certificates (PEM) trusted besides the built-in roots for the upload.
    pub ca_file: Option<PathBuf>,
    /// Where results wait until the collector has them.
    pub spool: PathBuf,
    /// The volunteer's label for the network, kept in the result.
    pub label: Option<String>,
    /// Pair only with a volunteer giving the same code.
    pub pair_code: Option<String>,
    /// How long to wait for a peer.
    pub max_wait: Duration,
    /// Which endpoints servers may send us to: [`AddressPolicy::Public`]
    /// except in loopback tests (no flag sets it).
    pub addresses: AddressPolicy,
    /// Bridge mode: hand every punched socket to this node (`--node`).
    pub node: Option<NodeOptions>,
    /// Ask the default gateway to map ports (PCP, NAT-PMP, UPnP IGD), hold them a
    /// moment and delete them; `None` when the volunteer said no (`--no-portmap`).
    pub port_mapping: Option<PortMapOptions>,
}

/// What to ask the gateway for.
#[derive(Debug, Clone)]
pub struct PortMapOptions {
    /// The volunteer's Bitcoin node port (8333 by default).
    pub node_port: u16,
}

/// How a run ended, for the summary and the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnding {
    /// Paired; the result's pairing says how the pairing ended.
    Paired,
    /// No peer came within the wait; the classification is kept all the same.
    NoPeer { waited: Duration },
    /// Stopped before a peer was found (during port mapping, or while waiting).
    StoppedWaiting,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The result as spooled and uploaded (sanitized).
    pub result: RunResult,
    pub ending: RunEnding,
    /// The paired peer's mode, when paired.
    pub peer_mode: Option<Mode>,
    /// Why the coordinator was lost mid-pairing, if it was.
    pub coordinator_error: Option<String>,
    /// The spooled result file.
    pub spooled: PathBuf,
    pub upload: UploadStatus,
}

/// Runs a volunteer's probe: classification, one pairing, the result in the
/// spool and uploaded. `Err` only when the tool could not do its job (no
/// echo server answered, no coordinator, no spool); no peer and a stop are
/// outcomes, and whatever was measured is kept.
pub async fn run(
    options: RunOptions,
    mut progress: impl FnMut(Progress),
    stop: Stop,
) -> Result<RunOutcome, ProbeError> {
    let started_at = chrono::Utc::now();
    // A node that is down or refuses the credentials stops the run before it measures anything.
    let node = match &options.node {
        Some(node) => Some(NodeBridge::connect(node).await?),
        None => None,
    };
    progress(Progress::Classifying);
    let config = ClassifyConfig {
        trust: EchoTrust::GivenIps(options.addresses),
        ..ClassifyConfig::default()
    };
    let measured = classify::classify_families(
        &EchoFamilies::split(&options.echo),
        &config,
        |step| match step {
            FamilyStep::Classified(c) => progress(Progress::Classified {
                verdict: Box::new(c.verdict.clone()),
            }),
            FamilyStep::ClassifyingIpv6 => progress(Progress::ClassifyingIpv6),
            FamilyStep::ClassifiedIpv6(outcome) => progress(Progress::ClassifiedIpv6 {
                outcome: outcome
                    .map(|c| Box::new(c.verdict.clone()))
                    .map_err(str::to_string),
            }),
        },
    )
    .await?;
    let (classification, classification_v6) = (measured.primary, measured.ipv6);

    let (port_mapping, mapper) = match &options.port_mapping {
        None => (
            PortMappingReport::skipped(PortMappingSkipped::Declined),
            None,
        ),
        Some(asked) => {
            progress(Progress::PortMapping);
            // The primary echo server: the one the volunteer agreed to and
            // classification just used, if the address policy allows it.
            // IPv4 only: the mappings asked for are IPv4 ones.
            let echo = classification
                .server_endpoints
                .first()
                .copied()
                .filter(|e| e.is_ipv4() && options.addresses.check(*e).is_ok());
            let (report, mapper) = port_map(asked, echo, &stop).await?;
            progress(Progress::PortMapped {
                report: Box::new(report.clone()),
            });
            (report, mapper)
        }
    };

    // A stop during port mapping (its mappings are deleted by then) ends the
    // run here, with what was measured.
    let (run, ending) = if stop.is_stopped() {
        (None, RunEnding::StoppedWaiting)
    } else {
        // The families this host reached its echo servers in are the ones
        // it can run trials in.
        let mut reached = vec![Family::of_verdict(&classification.verdict)];
        if matches!(&classification_v6, Some(Ok(_))) {
            reached.push(Family::Ipv6);
        }
        pair(
            &options,
            (&classification.verdict, &reached),
            (node, mapper),
            &mut progress,
            &stop,
        )
        .await?
    };

    let pairings = run.iter().map(|r| r.pairing.clone()).collect();
    let mut result = RunResult::new(
        env!("CARGO_PKG_VERSION"),
        started_at,
        chrono::Utc::now(),
        ClientInfo::this_machine(options.label.clone()),
        &classification,
        pairings,
    );
    result.port_mapping = Some(port_mapping);
    if let Some(outcome) = &classification_v6 {
        result.set_ipv6_classification(outcome.as_ref().map_err(Clone::clone));
    }
    result.sanitize();
    progress(Progress::Uploading);
    let delivery = spool_and_upload(
        &result,
        &options.spool,
        options.collector.as_deref(),
        options.ca_file.as_deref(),
    )
    .await?;
    Ok(RunOutcome {
        result,
        ending,
        peer_mode: run.as_ref().map(|r| r.peer_mode),
        coordinator_error: run.and_then(|r| r.coordinator_error),
        spooled: delivery.spooled,
        upload: delivery.upload,
    })
}

/// Connects to the coordinator and runs one pairing; no peer and a stop are endings.
async fn pair(
    options: &RunOptions,
    (verdict, reached): (&Verdict, &[Family]),
    (node, mapper): (Option<NodeBridge>, Option<TrialMapper>),
    progress: &mut impl FnMut(Progress),
    stop: &Stop,
) -> Result<(Option<PairingRun>, RunEnding), ProbeError> {
    progress(Progress::Connecting);
    let addresses = resolve_all(&options.coordinator).await?;
    let registrars = reachable(first_per_family(&addresses, reached), stop).await;
    let Some(&server) = registrars.first() else {
        return Err(ProbeError::NoAddressInFamily {
            target: options.coordinator.join(", "),
            reached: reached
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
        });
    };
    let mut hello = Hello::volunteer(options.max_wait).with_verdict(verdict);
    if let Some(code) = &options.pair_code {
        hello = hello.with_pair_code(code.clone());
    }
    let pairing_options = PairingOptions {
        server,
        hello: with_families(hello, server, &registrars),
        registrars,
        read_timeout: READ_TIMEOUT,
        max_wait: options.max_wait,
        addresses: options.addresses,
        node,
        mapper,
    };
    match run_pairing(&pairing_options, progress, stop.stopped()).await {
        Ok(run) => Ok((Some(run), RunEnding::Paired)),
        Err(RendezvousError::NoPeer { waited }) => Ok((None, RunEnding::NoPeer { waited })),
        Err(RendezvousError::Interrupted) => Ok((None, RunEnding::StoppedWaiting)),
        Err(e) => Err(ProbeError::Coordinator(e)),
    }
}

/// Asks the default gateway to map the node's port and a port this probe
/// listens on while it asks, checks a granted mapping of that port from the
/// internet with a dial-back from `echo` (to our own public address only),
/// then deletes both (see [`portmap::measure`]). With the report comes the
/// mapper for `mapped` trials: the gateway with the first protocol that
/// granted the probe's port, if one did.
async fn port_map(
    asked: &PortMapOptions,
    echo: Option<SocketAddr>,
    stop: &Stop,
) -> Result<(PortMappingReport, Option<TrialMapper>), ProbeError> {
    if stop.is_stopped() {
        let skipped = PortMappingReport::skipped(PortMappingSkipped::Stopped);
        return Ok((skipped, None));
    }
    let Some(gateway) = gateway::default_gateway() else {
        let skipped = PortMappingReport::skipped(PortMappingSkipped::NoGateway);
        return Ok((skipped, None));
    };
    // A real port of ours, held while the gateway maps it.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").ok().map(Arc::new);
    let mut ports = vec![(PortRole::Node, asked.node_port)];
    let probe_port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    if let Some(port) = probe_port {
        ports.push((PortRole::Probe, port));
    }
    let mut config = PortMapConfig::for_gateway(gateway.into(), ports);
    config.reach = match (echo, listener.clone()) {
        (Some(echo), Some(listener)) => Some(ReachCheck {
            echo,
            listener,
            step_timeout: REACH_STEP_TIMEOUT,
        }),
        _ => None,
    };
    let report = portmap::measure(&config, stop).await?;
    drop(config);
    drop(listener);
    let mapper = report
        .attempts
        .iter()
        .find(|a| a.port_role == PortRole::Probe && a.granted.is_some())
        .map(|a| TrialMapper::new(gateway.into(), a.protocol));
    Ok((report, mapper))
}

/// Every address of the coordinator, in the order given (a name gives each
/// of its addresses), each once.
pub(super) async fn resolve_all(targets: &[String]) -> Result<Vec<SocketAddr>, ProbeError> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for target in targets {
        let found = tokio::net::lookup_host(target.as_str())
            .await
            .map_err(|cause| ProbeError::Resolve {
                target: target.clone(),
                cause,
            })?;
        for address in found {
            let address = SocketAddr::new(address.ip().to_canonical(), address.port());
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
    if addresses.is_empty() {
        return Err(ProbeError::NoAddress {
            target: targets.join(", "),
        });
    }
    Ok(addresses)
}

/// The first of `addresses` in each of `families`, in the order of `families`.
pub(super) fn first_per_family(addresses: &[SocketAddr], families: &[Family]) -> Vec<SocketAddr> {
    families
        .iter()
        .filter_map(|f| first_of_family(addresses, *f))
        .collect()
}

/// Bound on checking that the coordinator answers in another family.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(5);

/// `registrars` without those of another family than the first (the
/// control connection's) that do not accept a TCP connection within
/// [`REACHABLE_TIMEOUT`]: a family offered but unreachable would cost the
/// pairing at its first trial in it, the peer's measurements with it. The
/// check connects and closes, nothing more. A stop ends it at once,
/// keeping the control address only (the pairing then sees the stop).
pub(super) async fn reachable(registrars: Vec<SocketAddr>, stop: &Stop) -> Vec<SocketAddr> {
    let control = registrars.first().copied();
    let check = async {
        let mut kept = Vec::with_capacity(registrars.len());
        for (i, registrar) in registrars.iter().copied().enumerate() {
            let answers = i == 0
                || tokio::time::timeout(
                    REACHABLE_TIMEOUT,
                    tokio::net::TcpStream::connect(registrar),
                )
                .await
                .is_ok_and(|connected| connected.is_ok());
            if answers {
                kept.push(registrar);
            }
        }
        kept
    };
    tokio::select! {
        kept = check => kept,
        () = stop.stopped() => control.into_iter().collect(),
    }
}

/// `hello` naming the families of `registrars`, unless that is only the
/// control connection's own family: then the hello stays as older
/// coordinators (which refuse unknown hello fields) read it.
pub(super) fn with_families(hello: Hello, server: SocketAddr, registrars: &[SocketAddr]) -> Hello {
    let families: Vec<Family> = registrars.iter().map(|a| Family::of(a.ip())).collect();
    if families == [Family::of(server.ip())] {
        hello
    } else {
        hello.with_families(families)
    }
}

/// The coordinator's first address.
pub(super) async fn resolve(target: &str) -> Result<SocketAddr, ProbeError> {
    tokio::net::lookup_host(target)
        .await
        .map_err(|cause| ProbeError::Resolve {
            target: target.to_string(),
            cause,
        })?
        .next()
        .ok_or_else(|| ProbeError::NoAddress {
            target: target.to_string(),
        })
}
