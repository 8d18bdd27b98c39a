//! The volunteer's run as one library call, and the researcher's reference peer.
//!
//! [`run`] is everything `punchscope probe` does between the consent prompt
//! and the summary: classify the NAT, pair through the coordinator, run the
//! plan's trials, put the result in the spool and upload it. [`serve_peer`]
//! is the reference peer's loop: pair, record, upload, again until stopped.
//! The command line only parses, asks, renders [`Progress`] and prints the
//! [`RunOutcome`]. Between classification and pairing, unless the volunteer
//! said no, [`run`] asks the default gateway to map the node's port
//! ([`crate::portmap`]) and deletes what it got.
//!
//! Layout: [`campaign`] (the campaign preview before consent, checked as
//! untrusted input, and its merge with explicit flags), [`pairing`] (one pairing driven end to end: register ports, prime,
//! punch, shake hands, report; every trial becomes a record), [`guard`]
//! (what the probe accepts from its coordinator: sans-io), `volunteer`
//! ([`run`]), `reference` ([`serve_peer`]), `delivery` (spool, then upload),
//! `stop` (the stop signal every step listens to), `error` ([`ProbeError`]).

pub mod campaign;
mod delivery;
mod error;
pub mod guard;
pub mod pairing;
mod reference;
mod stop;
mod volunteer;

use std::time::Duration;

use punchscope_analysis::classify::Verdict;
use punchscope_analysis::handshake::Role;
use punchscope_analysis::portmap::PortMappingReport;
use punchscope_analysis::trial::TrialOutcome;

use crate::proto::rendezvous::Mode;

pub use campaign::{CampaignPreview, Endpoints};
pub use delivery::UploadStatus;
pub use error::ProbeError;
pub use pairing::{run_pairing, trials_estimate, PairingOptions, PairingRun};
pub use reference::{serve_peer, ReferenceOptions, ReferenceProgress};
pub use stop::{Stop, StopHandle};
pub use volunteer::{run, PortMapOptions, RunEnding, RunOptions, RunOutcome};

/// What a run tells its caller as it goes (for progress display).
#[derive(Debug, Clone)]
pub enum Progress {
    /// NAT classification started.
    Classifying,
    /// NAT classification ended with this verdict.
    Classified { verdict: Box<Verdict> },
    /// A dual-stack run's IPv6 classification started (after the IPv4 one).
    ClassifyingIpv6,
    /// The IPv6 classification's verdict, or why there is none (the run goes on).
    ClassifiedIpv6 {
        outcome: Result<Box<Verdict>, String>,
    },
    /// Asking the default gateway for port mappings (PCP, NAT-PMP, UPnP IGD).
    PortMapping,
    /// Port mapping done: every mapping granted is deleted again.
    PortMapped { report: Box<PortMappingReport> },
    /// Connecting to the coordinator.
    Connecting,
    /// Still waiting for a peer.
    Waiting { waited: Duration },
    /// Paired: the plan's trials follow, taking at most about `estimate`.
    Paired {
        role: Role,
        trials: u32,
        peer_mode: Mode,
        estimate: Duration,
    },
    /// One trial ended.
    TrialDone { trial: u32, outcome: TrialOutcome },
    /// The result is in the spool and being uploaded.
    Uploading,
}
