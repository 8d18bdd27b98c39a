//! A researcher's reference peer: pairs with any waiting volunteer, again
//! and again, and uploads its side of every pairing like a volunteer does.

use std::path::PathBuf;
use std::time::Duration;

use punchscope_analysis::classify::{Classification, Observations, Verdict};
use punchscope_analysis::result::{ClientInfo, PairingEnded, RunMode, RunResult};
use punchscope_analysis::trial::{Family, TrialOutcome};

use super::delivery::{spool_and_upload, UploadStatus};
use super::pairing::{run_pairing, PairingOptions};
use super::volunteer::{first_per_family, reachable, resolve_all, with_families};
use super::{ProbeError, Stop};
use crate::classify::EchoFamilies;
use crate::classify::{self, ClassifyConfig, EchoTrust};
use crate::net::address::AddressPolicy;
use crate::node::{NodeBridge, NodeOptions};
use crate::rendezvous::{Hello, RendezvousError};

/// Wait before pairing again after the coordinator failed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What a reference peer needs.
#[derive(Debug, Clone)]
pub struct ReferenceOptions {
    /// The coordinator, `HOST:PORT`, at one or more addresses (a name
    /// gives each of its addresses): trials run in the IP families it has
    /// an address in and this host reaches.
    pub coordinator: Vec<String>,
    /// Echo servers to classify against; none leaves the reference's NAT unknown.
    pub echo: Vec<String>,
    pub collector: Option<String>,
    /// CA certificates (PEM) trusted besides the built-in roots for uploads.
    pub ca_file: Option<PathBuf>,
    pub spool: PathBuf,
    /// Bound on each wait for the coordinator between pairings.
    pub max_wait: Duration,
    /// Which endpoints servers may send us to: [`AddressPolicy::Public`]
    /// except in loopback tests (no flag sets it).
    pub addresses: AddressPolicy,
    /// Bridge mode: hand every punched socket to this node (`--node`).
    pub node: Option<NodeOptions>,
}

/// What a reference peer tells its caller as it goes.
#[derive(Debug, Clone)]
pub enum ReferenceProgress {
    Classified {
        verdict: Box<Verdict>,
    },
    /// One pairing ended; its result is spooled and, when possible, uploaded.
    PairingDone {
        result: Box<RunResult>,
        connected: usize,
        upload: UploadStatus,
    },
    /// The coordinator failed; pairing again after `after`.
    Retrying {
        error: String,
        after: Duration,
    },
}

/// Serves volunteers until `stop`; every pairing becomes a result of its own
/// (marked `mode: reference`), so the reference's side of each trial is in
/// the data as the volunteer's is.
pub async fn serve_peer(
    options: ReferenceOptions,
    mut progress: impl FnMut(ReferenceProgress),
    stop: Stop,
) -> Result<(), ProbeError> {
    let node = match &options.node {
        Some(node) => Some(NodeBridge::connect(node).await?),
        None => None,
    };
    let mut hello = Hello::reference();
    // Without echo servers the reference's results say its NAT is unknown.
    let mut classification = Classification::new(
        Vec::new(),
        Observations {
            mapping: Vec::new(),
            allocation: Vec::new(),
            filtering: None,
            hairpin: None,
        },
    );
    if !options.echo.is_empty() {
        // A dual-stack campaign's IPv6 endpoints are not mixed into the
        // verdict sent in hello: it is the primary family's, as a volunteer's.
        classification = classify::classify(&ClassifyConfig {
            servers: EchoFamilies::split(&options.echo).primary,
            trust: EchoTrust::GivenIps(options.addresses),
            ..ClassifyConfig::default()
        })
        .await?;
        progress(ReferenceProgress::Classified {
            verdict: Box::new(classification.verdict.clone()),
        });
        hello = hello.with_verdict(&classification.verdict);
    }
    // A reference peer is the operator's host: it runs trials in every
    // family the coordinator is given in and answers in from here, checked
    // again before each pairing (a family missing at boot comes back).
    let addresses = resolve_all(&options.coordinator).await?;
    let mut pairing_options = PairingOptions {
        server: addresses[0],
        hello: hello.clone(),
        registrars: Vec::new(),
        read_timeout: Duration::from_secs(30),
        max_wait: options.max_wait,
        addresses: options.addresses,
        node,
        // A reference peer asks its gateway for nothing: it listens or
        // connects as the coordinator says, never behind a mapping.
        mapper: None,
    };
    let mut started_at = chrono::Utc::now();
    loop {
        let registrars = reachable(first_per_family(&addresses, Family::ALL), &stop).await;
        pairing_options.server = registrars[0];
        pairing_options.hello = with_families(hello.clone(), registrars[0], &registrars);
        pairing_options.registrars = registrars;
        match run_pairing(&pairing_options, |_| {}, stop.stopped()).await {
            Ok(run) => {
                let interrupted = run.pairing.ended == PairingEnded::Interrupted;
                let connected = run
                    .pairing
                    .trials
                    .iter()
                    .filter(|t| t.outcome == TrialOutcome::Connected)
                    .count();
                let mut result = RunResult::new(
                    env!("CARGO_PKG_VERSION"),
                    started_at,
                    chrono::Utc::now(),
                    ClientInfo::this_machine(None),
                    &classification,
                    vec![run.pairing],
                );
                result.mode = RunMode::Reference;
                let delivery = spool_and_upload(
                    &result,
                    &options.spool,
                    options.collector.as_deref(),
                    options.ca_file.as_deref(),
                )
                .await?;
                progress(ReferenceProgress::PairingDone {
                    result: Box::new(result),
                    connected,
                    upload: delivery.upload,
                });
                if interrupted {
                    return Ok(());
                }
                started_at = chrono::Utc::now();
            }
            Err(RendezvousError::NoPeer { .. }) => {}
            Err(RendezvousError::Interrupted) => return Ok(()),
            Err(e) => {
                progress(ReferenceProgress::Retrying {
                    error: e.to_string(),
                    after: RETRY_AFTER,
                });
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = stop.stopped() => return Ok(()),
                }
            }
        }
    }
}
