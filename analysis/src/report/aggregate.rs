//! Aggregation: runs in, one counted trial per coordinator trial out, deduplicated across both sides by `trial_id`.
//!
//! Counting rule (also in docs/report.md):
//! - A run (by `run_id`) is read once; a second copy is ignored and counted
//!   in `duplicate_runs`.
//! - A reference peer's run (`mode: reference`, one per pairing) adds its
//!   side of each trial like any run, but not its NAT to the per-run
//!   classification tallies, which describe the volunteers.
//! - A trial record with a `trial_id` is joined with the other side's record
//!   of the same `trial_id` (the coordinator's per-trial nonce). The pair
//!   counts as one trial, a success only if both sides say `connected`.
//!   A third record for the same id, or a second one with the same role, is
//!   ignored and counted in `duplicate_trial_records`.
//! - A trial record with a `trial_id` whose other side never arrived counts
//!   on its own: a success if it says `connected` (which already requires
//!   the nonce exchange with the peer over the connection).
//! - A trial record without a `trial_id` (older probes) counts on its own.
//! - The NAT type of a side is its run's classification verdict, mapping and
//!   filtering ("eim/apdf"; a part not known exactly is "unknown"). When
//!   the peer's record is missing, or its run's verdict is unknown, the peer's
//!   type comes from `pairing.peer_verdict` as relayed by the coordinator.
//! - Time to connect of a joined success is the later of the two sides'
//!   `go_to_established_ms` (the moment both had the connection); attempts
//!   is the larger of the two sides' attempt counts.
//! - The Bitcoin handshake of a joined trial succeeded only if every side
//!   that recorded one says `success`.
//! - A `mapped` trial that every side in the input records as `unmapped`
//!   (neither router mapped a port: nothing was sent) is not counted at
//!   all, only tallied in `trials_unmapped`. When one side says `unmapped`
//!   and the other does not, the trial counts like any other.
//! - A trial's IP family is the one its records carry (absent in older
//!   results: IPv4). Both sides' records of one trial should name the same
//!   family; when they do not, the records cannot both be right and neither
//!   can be preferred, so the trial keeps its place in every pooled rate (it
//!   was tried, and its outcome stands) but belongs to no family: it is in
//!   no per-family row and not in the IPv4/IPv6 comparison, only counted in
//!   `family_disagree`.
//!
//! Clusters (for the clustered intervals of [`super::cluster`]): a trial
//! belongs to one *pairing*, the union of the pairing entries whose records
//! were joined (a volunteer's entry and its peer's, or a reference peer's
//! per-pairing run); and to the *networks* of its volunteer sides, the
//! collector's keyed `source_group` of each side's run (a run read without
//! one stands for its own network).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::input::{Document, Skipped};
use super::ipv6::Ipv6Tally;
use super::portmap::PortMapTally;
use crate::classify::{Finding, Verdict};
use crate::handshake::{Role, Transport};
use crate::hardnat::PairClass;
use crate::nat::{Filtering, Mapping};
use crate::result::{RunMode, RunResult};
use crate::trial::{Family, Strategy, TrialOutcome, TrialRecord};

/// A side's NAT type: mapping and filtering, each when known exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NatType {
    pub mapping: Option<Mapping>,
    pub filtering: Option<Filtering>,
}

impl NatType {
    pub const UNKNOWN: NatType = NatType {
        mapping: None,
        filtering: None,
    };

    /// The type a verdict states: only `Known` findings count.
    pub fn of(verdict: &Verdict) -> NatType {
        NatType {
            mapping: verdict.mapping.known(),
            filtering: verdict.filtering.known(),
        }
    }

    pub fn is_unknown(self) -> bool {
        self == NatType::UNKNOWN
    }

    /// Sort key: EIM < ADM < APDM, EIF < ADF < APDF, unknown last.
    fn key(self) -> (u8, u8) {
        let m = self.mapping.map_or(u8::MAX, |m| {
            Mapping::ALL.iter().position(|x| *x == m).unwrap_or(0) as u8
        });
        let f = self.filtering.map_or(u8::MAX, |f| {
            Filtering::ALL.iter().position(|x| *x == f).unwrap_or(0) as u8
        });
        (m, f)
    }
}

impl PartialOrd for NatType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NatType {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for NatType {
    /// "eim/apdf", "eim/unknown", or "unknown" when neither part is known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unknown() {
            return f.write_str("unknown");
        }
        let m = self.mapping.map_or("unknown", |m| m.as_str());
        let fl = self.filtering.map_or("unknown", |x| x.as_str());
        write!(f, "{m}/{fl}")
    }
}

/// One side's record of a trial, reduced to what the report uses.
#[derive(Debug, Clone, Copy)]
struct Side {
    role: Role,
    outcome: TrialOutcome,
    family: Family,
    own: NatType,
    peer_hint: NatType,
    go_ms: Option<f64>,
    attempts: u32,
    /// The handshake's transport and success, if one was recorded.
    handshake: Option<(Option<Transport>, bool)>,
    /// Bridge mode: the node's handshake with the peer (its transport and
    /// success), if the socket went to the volunteer's node.
    node_handshake: Option<(Option<Transport>, bool)>,
    /// Whether this side's path probe saw carrier-grade NAT, and its peer's (from `peer_verdict`).
    cgnat: Option<bool>,
    peer_cgnat: Option<bool>,
    /// The run this record came from (index into [`Aggregated::runs`]).
    run: u32,
    /// The pairing entry it came from (a node of the pairing union-find).
    slot: u32,
    /// The NAT-pair class: the record's own, else derived from the run's
    /// verdict and the relayed peer verdict (the same function).
    class: PairClass,
    /// Whether the record carried a class (its plan had strategy mixes).
    class_recorded: bool,
    /// The mix the strategy was drawn from, as a bit set over [`Strategy::ALL`].
    mix: Option<u8>,
    hard: Option<HardCounts>,
}

/// What the hard-NAT strategies did in one trial (both sides summed when joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardCounts {
    /// `predict`: the easy side's window of predicted ports.
    pub window: Option<u32>,
    /// `birthday`: the opening side's connections (m) and the sprayed ports (n, as planned).
    pub m: Option<u32>,
    pub n: Option<u32>,
    /// Distinct peer ports SYNs went to, connect() calls and SYNs, over both sides.
    pub ports_tried: u32,
    pub connects: u32,
    pub syns_sent: u32,
}

impl HardCounts {
    fn of(record: &crate::hardnat::HardTrialRecord) -> HardCounts {
        HardCounts {
            window: record.window,
            m: record.m,
            n: record.n,
            ports_tried: record.ports_tried,
            connects: record.connects,
            syns_sent: record.syns_sent,
        }
    }

    fn join(self, other: HardCounts) -> HardCounts {
        HardCounts {
            window: self.window.or(other.window),
            m: self.m.or(other.m),
            n: self.n.or(other.n),
            ports_tried: self.ports_tried + other.ports_tried,
            connects: self.connects + other.connects,
            syns_sent: self.syns_sent + other.syns_sent,
        }
    }
}

/// A mix as a bit set over [`Strategy::ALL`].
fn mix_bits(mix: &[Strategy]) -> u8 {
    mix.iter()
        .filter_map(|s| Strategy::ALL.iter().position(|x| x == s))
        .fold(0, |bits, i| bits | (1 << i))
}

/// The strategies of a bit set from [`mix_bits`].
pub fn mix_strategies(bits: u8) -> Vec<Strategy> {
    Strategy::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// A trial being assembled from one or two sides.
#[derive(Debug, Clone)]
struct Pending {
    id: Option<Arc<str>>,
    strategy: Strategy,
    first: Side,
    second: Option<Side>,
}

/// One trial as the report counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct CountedTrial {
    pub trial_id: Option<Arc<str>>,
    pub strategy: Strategy,
    /// How many sides' records were joined (1 or 2).
    pub sides: u8,
    /// The initiator's and responder's NAT types.
    pub initiator_nat: NatType,
    pub responder_nat: NatType,
    /// `connected` when the trial succeeded, else the first side's failure
    /// (the initiator's when both failed).
    pub outcome: TrialOutcome,
    pub success: bool,
    pub go_to_established_ms: Option<f64>,
    pub attempts: u32,
    pub handshake_transport: Option<Transport>,
    /// `None` when no side recorded a handshake.
    pub handshake_success: Option<bool>,
    /// Bridge mode: the transport the nodes spoke, when a node listed the peer.
    pub node_handshake_transport: Option<Transport>,
    /// Bridge mode: every side's node completed the version handshake;
    /// `None` when no side handed the socket to its node.
    pub node_handshake_success: Option<bool>,
    /// Whether either side was behind carrier-grade NAT (its path probe saw
    /// a shared-space hop); `None` when that is not known for both sides.
    pub cgnat: Option<bool>,
    /// The pairing this trial belongs to (index into [`Aggregated::pairing_ids`]).
    pub pairing: u32,
    /// The runs of the initiator's and responder's records, when in the input
    /// (indices into [`Aggregated::runs`]).
    pub initiator_run: Option<u32>,
    pub responder_run: Option<u32>,
    /// The NAT-pair class (a record's own, else derived from the verdicts).
    pub pair_class: PairClass,
    /// Whether a record carried the class (its plan had strategy mixes).
    pub class_recorded: bool,
    /// The mix this trial's strategy was drawn from (bits over
    /// [`Strategy::ALL`], see [`mix_strategies`]); `None`: the plan's rotation.
    pub mix: Option<u8>,
    /// `predict` and `birthday`: parameters, ports tried and SYNs sent.
    pub hard: Option<HardCounts>,
    /// The IP family the trial ran in; `None` when its two sides' records
    /// name different families (counted in [`InputCounts::family_disagree`]).
    pub family: Option<Family>,
}

impl CountedTrial {
    /// The runs of the sides whose records were read.
    pub fn runs(&self) -> impl Iterator<Item = u32> {
        self.initiator_run.into_iter().chain(self.responder_run)
    }

    /// The unordered NAT pair (lower type first), the matrix cell of this trial.
    pub fn nat_pair(&self) -> (NatType, NatType) {
        let (a, b) = (self.initiator_nat, self.responder_nat);
        if a <= b {
            (a, b)
        } else {
            (b, a)
        }
    }
}

/// Counts of what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputCounts {
    /// Distinct runs read.
    pub runs: u64,
    /// Copies of an already read run (same run id), ignored.
    pub duplicate_runs: u64,
    /// Of the distinct runs: reference peers' (their trials count, their NAT
    /// is not in the per-run classification tallies).
    #[serde(default)]
    pub reference_runs: u64,
    pub pairings: u64,
    /// Trial records read (each side's record counts here once).
    pub trial_records: u64,
    /// Records ignored because their trial already had this side (or both sides).
    pub duplicate_trial_records: u64,
    /// Trials counted in every rate of the report.
    pub trials_counted: u64,
    /// Of those: joined from both sides' records.
    pub trials_both_sides: u64,
    /// Of those: with a trial id, but only one side's record was in the input.
    pub trials_one_side: u64,
    /// Of those: records without a trial id (each counts on its own).
    pub trials_without_id: u64,
    /// Joined trials where one side said connected and the other did not.
    pub sides_disagree: u64,
    /// `mapped` trials neither side's router mapped a port for (a side says
    /// `unmapped`): nothing was tried, so they are in no count above and no rate.
    #[serde(default)]
    pub trials_unmapped: u64,
    /// Joined trials whose two sides' records name different IP families:
    /// counted in every pooled rate, in no family's (summaries from before
    /// families have none).
    #[serde(default)]
    pub family_disagree: u64,
}

/// What the report keeps of one distinct run: who ran it, from which network, when.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub run_id: Uuid,
    pub mode: RunMode,
    /// The collector's keyed network group of the upload (index into
    /// [`Aggregated::networks`]); `None` when the run was read without it.
    pub network: Option<u32>,
    pub network_label: Option<Arc<str>>,
    /// "linux/x86_64".
    pub platform: Arc<str>,
    pub tool_version: Arc<str>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// When the collector stored it, when read from an export.
    pub received_at: Option<DateTime<Utc>>,
}

impl RunInfo {
    /// A volunteer's run (the population), not a reference peer's.
    pub fn is_volunteer(&self) -> bool {
        self.mode == RunMode::Volunteer
    }
}

/// Collects runs and turns them into counted trials and run-level tallies.
#[derive(Debug, Default)]
pub struct Aggregator {
    pub skipped: Skipped,
    counts: InputCounts,
    runs_seen: HashSet<Uuid>,
    runs: Vec<RunInfo>,
    networks: Vec<Arc<str>>,
    network_index: HashMap<Arc<str>, u32>,
    /// Small strings repeated in every run (labels, platforms, versions), held once.
    interned: HashSet<Arc<str>>,
    /// Union-find over pairing entries: each entry's parent.
    slot_parent: Vec<u32>,
    /// Each pairing entry's name: (run index, position in the run's pairings).
    slot_origin: Vec<(u32, u32)>,
    by_id: HashMap<Arc<str>, u32>,
    trials: Vec<Pending>,
    /// Runs per classification: mapping, filtering, and NAT type.
    mapping_runs: BTreeMap<String, u64>,
    filtering_runs: BTreeMap<String, u64>,
    type_runs: BTreeMap<NatType, u64>,
    /// Volunteers' port mapping records.
    port_mapping: PortMapTally,
    /// Volunteers' IPv6 classifications.
    ipv6: Ipv6Tally,
}

fn finding_label<T: Copy + fmt::Display>(finding: &Finding<T>) -> String {
    match finding {
        Finding::Known { value } => value.to_string(),
        Finding::Ambiguous { candidates, .. } => {
            let names: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
            format!("ambiguous ({})", names.join(" or "))
        }
        Finding::Unknown { .. } => "unknown".to_string(),
    }
}

fn cgnat_of(verdict: &Verdict) -> Option<bool> {
    verdict.path.as_ref().and_then(|p| p.cgnat)
}

fn side_of(
    record: &TrialRecord,
    (own, peer_hint): (NatType, NatType),
    (cgnat, peer_cgnat): (Option<bool>, Option<bool>),
    (run, slot): (u32, u32),
    class: PairClass,
) -> Side {
    Side {
        run,
        slot,
        class: record.pair_class.unwrap_or(class),
        class_recorded: record.pair_class.is_some(),
        mix: record.drawn_from.as_deref().map(mix_bits),
        hard: record.hard.as_ref().map(HardCounts::of),
        role: record.role,
        outcome: record.outcome,
        family: record.family,
        own,
        peer_hint,
        go_ms: record.go_to_established_ms.filter(|v| v.is_finite()),
        attempts: u32::try_from(record.attempts.len()).unwrap_or(u32::MAX),
        handshake: record.handshake.as_ref().map(|h| (h.transport, h.success)),
        node_handshake: record
            .node_bridge
            .as_ref()
            .map(|b| (b.peer.as_ref().and_then(|p| p.transport), b.success)),
        cgnat,
        peer_cgnat,
    }
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one run read without the collector's envelope (ignored if its run id was already read).
    pub fn add_run(&mut self, run: &RunResult) {
        self.add_run_from(run, None, None);
    }

    /// Adds one input document: a run, with its network group when it came from a collector export.
    pub fn add_document(&mut self, document: &Document) {
        self.add_run_from(
            &document.run,
            document.source_group.as_deref(),
            document.received_at,
        );
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(found) = self.interned.get(text) {
            return found.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.interned.insert(shared.clone());
        shared
    }

    fn network_of(&mut self, group: &str) -> u32 {
        if let Some(&index) = self.network_index.get(group) {
            return index;
        }
        let index = u32::try_from(self.networks.len()).expect("fewer than 4 billion networks");
        let group: Arc<str> = Arc::from(group);
        self.networks.push(group.clone());
        self.network_index.insert(group, index);
        index
    }

    fn add_run_from(
        &mut self,
        run: &RunResult,
        source_group: Option<&str>,
        received_at: Option<DateTime<Utc>>,
    ) {
        if !self.runs_seen.insert(run.run_id) {
            self.counts.duplicate_runs += 1;
            return;
        }
        self.counts.runs += 1;
        let run_index = u32::try_from(self.runs.len()).expect("fewer than 4 billion runs");
        // Hex is case-insensitive: "AA" and "aa" are one group.
        let network = source_group
            .filter(|g| !g.is_empty())
            .map(|g| self.network_of(&g.to_ascii_lowercase()));
        let info = RunInfo {
            run_id: run.run_id,
            mode: run.mode,
            network,
            network_label: run.client.network_label.as_deref().map(|l| self.intern(l)),
            platform: self.intern(&format!("{}/{}", run.client.os, run.client.arch)),
            tool_version: self.intern(&run.tool_version),
            started_at: run.started_at,
            ended_at: run.ended_at,
            received_at,
        };
        self.runs.push(info);
        if run.mode == RunMode::Volunteer {
            if let Some(report) = &run.port_mapping {
                self.port_mapping.add(report);
            }
        }
        let verdict = &run.classification.verdict;
        let own = NatType::of(verdict);
        for (position, pairing) in run.pairings.iter().enumerate() {
            self.counts.pairings += 1;
            let slot =
                u32::try_from(self.slot_parent.len()).expect("fewer than 4 billion pairings");
            self.slot_parent.push(slot);
            self.slot_origin
                .push((run_index, u32::try_from(position).unwrap_or(u32::MAX)));
            let peer_hint = pairing
                .peer_verdict
                .as_ref()
                .map_or(NatType::UNKNOWN, NatType::of);
            let cgnat = (
                cgnat_of(verdict),
                pairing.peer_verdict.as_ref().and_then(cgnat_of),
            );
            let class = PairClass::of(Some(verdict), pairing.peer_verdict.as_ref());
            for record in &pairing.trials {
                self.add_record(record, (own, peer_hint), cgnat, (run_index, slot), class);
            }
        }
        // The NAT population is the volunteers': a reference peer uploads one
        // result per pairing, and would be counted once per volunteer it served.
        if run.mode == RunMode::Reference {
            self.counts.reference_runs += 1;
            return;
        }
        self.ipv6.add(run);
        // The NAT tables are IPv4's: an IPv6-only run is in the IPv6 breakdown only.
        if super::ipv6::ipv6_only(run).is_some() {
            return;
        }
        *self
            .mapping_runs
            .entry(finding_label(&verdict.mapping))
            .or_default() += 1;
        *self
            .filtering_runs
            .entry(finding_label(&verdict.filtering))
            .or_default() += 1;
        *self.type_runs.entry(own).or_default() += 1;
    }

    fn add_record(
        &mut self,
        record: &TrialRecord,
        nat: (NatType, NatType),
        cgnat: (Option<bool>, Option<bool>),
        origin: (u32, u32),
        class: PairClass,
    ) {
        self.counts.trial_records += 1;
        let side = side_of(record, nat, cgnat, origin, class);
        let Some(id) = record.trial_id.as_deref().filter(|s| !s.is_empty()) else {
            self.trials.push(Pending {
                id: None,
                strategy: record.strategy,
                first: side,
                second: None,
            });
            return;
        };
        if let Some(&index) = self.by_id.get(id) {
            let pending = &mut self.trials[index as usize];
            if pending.second.is_none() && pending.first.role != side.role {
                let joined_slot = pending.first.slot;
                pending.second = Some(side);
                union(&mut self.slot_parent, joined_slot, side.slot);
            } else {
                self.counts.duplicate_trial_records += 1;
            }
            return;
        }
        let id: Arc<str> = Arc::from(id);
        let index = u32::try_from(self.trials.len()).expect("fewer than 4 billion trials");
        self.by_id.insert(id.clone(), index);
        self.trials.push(Pending {
            id: Some(id),
            strategy: record.strategy,
            first: side,
            second: None,
        });
    }

    /// Resolves every trial. The aggregator's memory is released as it goes.
    pub fn finish(self) -> Aggregated {
        let Aggregator {
            skipped,
            mut counts,
            by_id,
            trials,
            mapping_runs,
            filtering_runs,
            type_runs,
            runs,
            networks,
            mut slot_parent,
            slot_origin,
            port_mapping,
            ipv6,
            ..
        } = self;
        drop(by_id);
        // Pairings are numbered densely in order of their first trial; each
        // is named by its smallest entry ("run id/position"), which does not
        // depend on the order the inputs were read in.
        let mut pairing_of_root: HashMap<u32, u32> = HashMap::new();
        let mut pairing_ids: Vec<String> = Vec::new();
        let mut counted = Vec::with_capacity(trials.len());
        for pending in trials {
            // A `mapped` trial no router mapped a port for was never tried:
            // every side that reported says so (one side's `unmapped` cannot
            // erase what its peer recorded; the trial then counts, as a
            // disagreement if the peer connected).
            let untried = pending.strategy == Strategy::Mapped
                && [Some(pending.first), pending.second]
                    .iter()
                    .flatten()
                    .all(|side| !side.outcome.was_tried());
            if untried {
                counts.trials_unmapped += 1;
                continue;
            }
            let root = find(&mut slot_parent, pending.first.slot);
            let next = u32::try_from(pairing_ids.len()).expect("fewer than 4 billion pairings");
            let pairing = *pairing_of_root.entry(root).or_insert_with(|| {
                pairing_ids.push(String::new());
                next
            });
            counted.push(resolve(pending, pairing, &mut counts));
        }
        for (slot, origin) in slot_origin.iter().enumerate() {
            let root = find(&mut slot_parent, slot as u32);
            let Some(&pairing) = pairing_of_root.get(&root) else {
                continue;
            };
            let (run, position) = *origin;
            let name = format!("{}/{}", runs[run as usize].run_id, position);
            let id = &mut pairing_ids[pairing as usize];
            if id.is_empty() || name < *id {
                *id = name;
            }
        }
        counts.trials_counted = counted.len() as u64;
        Aggregated {
            counts,
            skipped,
            trials: counted,
            mapping_runs,
            filtering_runs,
            type_runs,
            runs,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            pairing_ids,
            port_mapping,
            ipv6,
        }
    }
}

/// The root of a union-find node, halving paths on the way.
fn find(parent: &mut [u32], mut node: u32) -> u32 {
    while parent[node as usize] != node {
        let grandparent = parent[parent[node as usize] as usize];
        parent[node as usize] = grandparent;
        node = grandparent;
    }
    node
}

/// Joins two nodes' sets; the smaller root becomes the root, so the result
/// does not depend on the order of the calls.
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[high as usize] = low;
    }
}

fn resolve(pending: Pending, pairing: u32, counts: &mut InputCounts) -> CountedTrial {
    let Pending {
        id,
        strategy,
        first,
        second,
    } = pending;
    match (&id, second) {
        (None, _) => counts.trials_without_id += 1,
        (Some(_), None) => counts.trials_one_side += 1,
        (Some(_), Some(_)) => counts.trials_both_sides += 1,
    }
    let (init, resp) = match second {
        Some(s) if first.role == Role::Responder => (Some(s), Some(first)),
        Some(s) => (Some(first), Some(s)),
        None if first.role == Role::Responder => (None, Some(first)),
        None => (Some(first), None),
    };
    let sides: Vec<Side> = [init, resp].into_iter().flatten().collect();
    let nat_of = |me: Option<Side>, other: Option<Side>| -> NatType {
        match me {
            Some(s) if !s.own.is_unknown() => s.own,
            _ => other.map_or(NatType::UNKNOWN, |o| o.peer_hint),
        }
    };
    let initiator_nat = nat_of(init, resp);
    let responder_nat = nat_of(resp, init);
    let success = sides.iter().all(|s| s.outcome.is_success());
    if sides.len() == 2 && sides[0].outcome.is_success() != sides[1].outcome.is_success() {
        counts.sides_disagree += 1;
    }
    let family = match sides.as_slice() {
        [one] => Some(one.family),
        [a, b] if a.family == b.family => Some(a.family),
        _ => {
            counts.family_disagree += 1;
            None
        }
    };
    let outcome = sides
        .iter()
        .map(|s| s.outcome)
        .find(|o| !o.is_success())
        .unwrap_or(TrialOutcome::Connected);
    let go_to_established_ms = if success {
        sides
            .iter()
            .filter_map(|s| s.go_ms)
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            })
    } else {
        None
    };
    let attempts = sides.iter().map(|s| s.attempts).max().unwrap_or(0);
    let handshakes: Vec<(Option<Transport>, bool)> =
        sides.iter().filter_map(|s| s.handshake).collect();
    let handshake_transport = handshakes.iter().find_map(|h| h.0);
    let handshake_success = (!handshakes.is_empty()).then(|| handshakes.iter().all(|h| h.1));
    let node_handshakes: Vec<(Option<Transport>, bool)> =
        sides.iter().filter_map(|s| s.node_handshake).collect();
    let node_handshake_transport = node_handshakes.iter().find_map(|h| h.0);
    let node_handshake_success =
        (!node_handshakes.is_empty()).then(|| node_handshakes.iter().all(|h| h.1));
    // Each side's own measurement, else what its peer was told of it.
    let cgnat_of_side = |me: Option<Side>, other: Option<Side>| {
        me.and_then(|s| s.cgnat)
            .or_else(|| other.and_then(|o| o.peer_cgnat))
    };
    let cgnat = match (cgnat_of_side(init, resp), cgnat_of_side(resp, init)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (Some(false), Some(false)) => Some(false),
        _ => None,
    };
    let hard = sides.iter().filter_map(|s| s.hard).reduce(HardCounts::join);
    CountedTrial {
        pair_class: sides.first().map_or(PairClass::Unknown, |s| s.class),
        class_recorded: sides.iter().any(|s| s.class_recorded),
        mix: sides.iter().find_map(|s| s.mix),
        hard,
        family,
        trial_id: id,
        strategy,
        sides: sides.len() as u8,
        initiator_nat,
        responder_nat,
        outcome,
        success,
        go_to_established_ms,
        attempts,
        handshake_transport,
        handshake_success,
        node_handshake_transport,
        node_handshake_success,
        cgnat,
        pairing,
        initiator_run: init.map(|s| s.run),
        responder_run: resp.map(|s| s.run),
    }
}

/// Everything the aggregator found: counted trials and run-level tallies.
#[derive(Debug, Clone, Default)]
pub struct Aggregated {
    pub counts: InputCounts,
    pub skipped: Skipped,
    pub trials: Vec<CountedTrial>,
    /// Runs per mapping finding ("eim", "ambiguous (adm or apdm)", "unknown").
    pub mapping_runs: BTreeMap<String, u64>,
    /// Runs per filtering finding.
    pub filtering_runs: BTreeMap<String, u64>,
    /// Runs per NAT type.
    pub type_runs: BTreeMap<NatType, u64>,
    /// Every distinct run, in the order read.
    pub runs: Vec<RunInfo>,
    /// The collector's keyed network groups (HMAC-SHA256 hex), in the order first seen.
    pub networks: Vec<String>,
    /// Each pairing's stable name: its smallest "run id/position" entry.
    pub pairing_ids: Vec<String>,
    /// Volunteers' port mapping records, tallied.
    pub port_mapping: PortMapTally,
    /// Volunteers' IPv6 classifications, tallied.
    pub ipv6: Ipv6Tally,
}
