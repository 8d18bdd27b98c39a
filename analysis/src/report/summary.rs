//! The report's numbers ([`Summary`], written as `summary.json`): every figure the page shows, computed from the counted trials.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregated, CountedTrial, InputCounts, NatType};
use super::breakdown::{NetworkNodes, RowSums};
use super::cluster::{paired_difference, BootstrapConfig, PairedCluster, PairedDifference};
use super::input::Skipped;
use super::portmap::PortMappingSummary;
use super::reference::{reference_figures, ReferenceFigure};
use super::stats::{quantile_sorted, Proportion};
use crate::handshake::Transport;
use crate::trial::{Family, Strategy, TrialOutcome};

/// Trials a network, label or client version needs to be listed on its own, unless configured otherwise.
pub const DEFAULT_MIN_GROUP_TRIALS: u64 = 10;

/// What a report computes beyond the counts: the bootstrap and the listing threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportConfig {
    pub bootstrap: BootstrapConfig,
    /// Trials a group (network, label, client) needs to be listed.
    pub min_group_trials: u64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            bootstrap: BootstrapConfig::default(),
            min_group_trials: DEFAULT_MIN_GROUP_TRIALS,
        }
    }
}

/// Which interval to quote, and why (shown in the page and in summary.json).
pub const QUOTE_ADVICE: &str = "Quote the interval clustered by pairing. The trials of one pairing share two \
routers, two paths and one moment, so they are not independent: the per-trial Wilson interval assumes they are \
and is too narrow whenever they are alike (by the square root of the design effect). The pairing bootstrap \
resamples whole pairings, so it accounts for that. The interval clustered by network also keeps together the \
pairings of a volunteer network that took part in several; it is conservative (a pairing between two volunteers \
is drawn only when both their networks are, which overstates the variance that is specific to a pairing), so \
use it as a check, and quote it beside the pairing interval where networks recur across many pairings and the \
two differ much. The per-trial Wilson interval is shown for comparison with earlier reports and with published \
per-attempt figures. With fewer than about 20 clusters any bootstrap interval is approximate and tends to be too \
narrow: say so when quoting it.";

/// How trials are counted, in one paragraph (shown in the page and in summary.json).
pub const COUNTING_RULE: &str = "One row per coordinator trial. Records of the same trial from both sides \
(same trial_id, the coordinator's per-trial nonce) are joined and counted once; a joined trial is a success \
only if both sides say connected. A record whose other side is missing, or that has no trial_id, counts on \
its own. A run read twice (same run_id) counts once. NAT types are each run's own classification verdict \
(mapping/filtering, 'unknown' where not known exactly); a missing peer's type comes from the pairing's \
peer_verdict. Intervals: the per-trial Wilson score 95% interval, and 95% cluster bootstrap intervals over pairings \
and over volunteers' networks (the collector's keyed group; a run without one is its own network). Malformed input \
lines are skipped and listed, never counted.";

/// Success for one unordered pair of NAT types (a matrix cell).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairCell {
    /// The lower type in the order eim < adm < apdm, eif < adf < apdf, unknown last.
    pub nat_a: String,
    pub nat_b: String,
    #[serde(flatten)]
    pub proportion: Proportion,
}

/// Success for one strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRow {
    pub strategy: String,
    #[serde(flatten)]
    pub proportion: Proportion,
    /// Median time to connect of its successes, ms.
    pub median_ms: Option<f64>,
}

/// Success with and without carrier-grade NAT on the path (either side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgnatRow {
    /// `behind_cgnat` (at least one side), `no_cgnat` (both sides measured
    /// without), or `not_measured` (a side without the path probe).
    pub group: String,
    #[serde(flatten)]
    pub proportion: Proportion,
}

/// The Bitcoin handshake over punched sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeSummary {
    /// Trials that connected (the denominator's population).
    pub connected_trials: u64,
    /// Connected trials with no handshake record (bridged trials are counted
    /// in [`Summary::node_handshake`] instead).
    pub without_handshake: u64,
    /// Connected trials whose handshake failed before its transport was known.
    pub transport_unknown: u64,
    /// Handshake success given a punched socket, v1.
    pub v1: Proportion,
    /// Handshake success given a punched socket, BIP324 v2.
    pub v2: Proportion,
}

/// Bridge mode: the volunteers' own nodes' handshake over punched sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeHandshakeSummary {
    /// Connected trials whose socket went to the volunteers' nodes.
    pub bridged_trials: u64,
    /// Bridged trials where no node listed the peer, so the transport is unknown.
    pub transport_unknown: u64,
    /// Both nodes completed the version handshake, by the transport they spoke.
    pub v1: Proportion,
    pub v2: Proportion,
}

/// Time from `go` to established, over successful trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSummary {
    /// Successes with a time recorded.
    pub n: u64,
    pub min_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// The plotted CDF: (ms, fraction of successes connected by then), at
    /// most [`CDF_POINTS`] points per curve, nearest-rank quantiles.
    pub cdf: Vec<(f64, f64)>,
    /// The same per strategy.
    pub cdf_by_strategy: BTreeMap<String, Vec<(f64, f64)>>,
}

/// Points per plotted CDF curve.
pub const CDF_POINTS: usize = 200;

/// Attempts (connect() calls, the larger side's count) per successful trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptsSummary {
    pub successes: u64,
    /// (attempts, successful trials that needed exactly that many).
    pub histogram: Vec<(u32, u64)>,
    /// Share of successes on the first attempt.
    pub first_attempt: Proportion,
    pub mean: Option<f64>,
}

/// How volunteers' NATs were classified, counted per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationSummary {
    pub runs: u64,
    pub mapping: BTreeMap<String, u64>,
    pub filtering: BTreeMap<String, u64>,
    /// (type, runs), in type order.
    pub types: Vec<(String, u64)>,
}

/// A reference figure with the range drawn beside ours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRow {
    #[serde(flatten)]
    pub figure: ReferenceFigure,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// How the clustered intervals were made, and which to quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UncertaintySummary {
    pub resamples: u32,
    pub seed: u64,
    /// Pairings with at least one counted trial (the clusters of the pairing bootstrap).
    pub pairings: u64,
    /// Volunteers' networks (the clusters of the network bootstrap).
    pub networks: u64,
    /// Of those: the collector's keyed network groups.
    pub keyed_networks: u64,
    /// Of those: volunteer runs read without a group, each its own network.
    pub runs_without_group: u64,
    /// Which interval to quote and why.
    pub advice: String,
}

/// One strategy's pairings: connected at least once, every time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyPairings {
    pub strategy: String,
    pub at_least_once: Proportion,
    pub every_time: Proportion,
}

/// Two strategies compared within the pairings that ran both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyComparison {
    pub strategy_a: String,
    pub strategy_b: String,
    #[serde(flatten)]
    pub difference: PairedDifference,
}

/// Success counted per pairing rather than per trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairingView {
    pub pairings: u64,
    /// Pairings with at least one successful trial.
    pub connected_at_least_once: Proportion,
    /// Pairings whose every trial succeeded.
    pub connected_every_time: Proportion,
    pub strategies: Vec<StrategyPairings>,
    /// Each two strategies, compared within the same pairings.
    pub comparisons: Vec<StrategyComparison>,
}

/// Success in one group of runs (a network, a label, a client version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub key: String,
    /// Volunteer runs in the group.
    pub runs: u64,
    /// Pairings with a trial in the group.
    pub pairings: u64,
    #[serde(flatten)]
    pub proportion: Proportion,
}

/// Groups with at least `min_trials` trials, listed by trials (most first), then key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupTable {
    pub min_trials: u64,
    /// Groups with any trial.
    pub groups: u64,
    pub rows: Vec<GroupRow>,
    /// Trials of the groups too small to list (a trial between two groups counts in both).
    pub trials_unlisted: u64,
}

/// Per-network results: one row per keyed network group, and how the rates spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSummary {
    #[serde(flatten)]
    pub table: GroupTable,
    /// Listed networks per success-rate decile: ("0-10%", networks), ..., ("90-100%", networks).
    pub rate_histogram: Vec<(String, u64)>,
    /// Median per-network rate over the listed networks (nearest rank).
    pub median_rate: Option<f64>,
    /// Listed networks whose every trial failed, and whose every trial connected.
    pub never_connected: u64,
    pub always_connected: u64,
}

/// The tables a family split repeats: the success rate, by NAT pair, by
/// strategy, the handshakes and the hard-NAT rows of one set of trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialTables {
    pub headline: Proportion,
    /// NAT types on the matrix axes, in order.
    pub nat_types: Vec<String>,
    pub nat_pairs: Vec<PairCell>,
    pub strategies: Vec<StrategyRow>,
    pub handshake: HandshakeSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_handshake: Option<NodeHandshakeSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hard_nat: Vec<super::hardnat::HardNatRow>,
}

impl TrialTables {
    /// The matrix cell for two types (either order), if any trial fell in it.
    pub fn pair(&self, a: &str, b: &str) -> Option<&PairCell> {
        find_pair(&self.nat_pairs, a, b)
    }
}

fn find_pair<'a>(cells: &'a [PairCell], a: &str, b: &str) -> Option<&'a PairCell> {
    cells
        .iter()
        .find(|c| (c.nat_a == a && c.nat_b == b) || (c.nat_a == b && c.nat_b == a))
}

/// One IP family's trials, in the same tables as all trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyTables {
    /// `ipv4` or `ipv6`.
    pub family: String,
    #[serde(flatten)]
    pub tables: TrialTables,
}

/// One strategy over IPv4 and over IPv6 within the pairings that ran it in both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyStrategyComparison {
    pub strategy: String,
    /// Its IPv4 and its IPv6 trials over those pairings, each with its
    /// per-trial Wilson 95% interval.
    pub ipv4: Proportion,
    pub ipv6: Proportion,
    /// IPv6 minus IPv4 (A is IPv6, B is IPv4): pooled rates over those
    /// pairings, the paired bootstrap interval (a pairing's trials of both
    /// families drawn together) and the sign test over pairings.
    pub difference: PairedDifference,
}

/// IPv4 beside IPv6 between the same two volunteers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyComparison {
    /// Pairings with counted trials in both families (any strategy).
    pub pairings_both: u64,
    /// Pairings whose counted trials were all of one family, per family.
    pub pairings_one_family: BTreeMap<String, u64>,
    /// One row per strategy some pairing ran in both families; empty when
    /// none did (then `note` says so).
    pub strategies: Vec<FamilyStrategyComparison>,
    /// What the rows are, or plainly why there are none.
    pub note: String,
}

/// Every number in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub generator: String,
    pub inputs: Vec<String>,
    pub counting_rule: String,
    pub input: InputCounts,
    pub skipped_lines: Skipped,
    /// Trials that connected / all counted trials.
    pub headline: Proportion,
    /// Counted trials per outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// NAT types on the matrix axes, in order.
    pub nat_types: Vec<String>,
    pub nat_pairs: Vec<PairCell>,
    pub strategies: Vec<StrategyRow>,
    /// Success by carrier-grade NAT; summaries from before it have none.
    #[serde(default)]
    pub cgnat: Vec<CgnatRow>,
    pub handshake: HandshakeSummary,
    /// Bridge mode's node-to-node handshakes; absent when no trial was bridged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_handshake: Option<NodeHandshakeSummary>,
    pub time_to_connect: TimeSummary,
    pub attempts: AttemptsSummary,
    pub classification: ClassificationSummary,
    pub references: Vec<ReferenceRow>,
    pub uncertainty: UncertaintySummary,
    pub pairing_view: PairingView,
    /// Per keyed network group (only runs read from a collector export have one).
    pub networks: NetworkSummary,
    /// Per volunteer's network label ("(none)" without one).
    pub network_labels: GroupTable,
    /// Per client: "os/arch, punchscope VERSION".
    pub clients: GroupTable,
    /// What volunteers' routers answered to port mapping requests (PCP,
    /// NAT-PMP); summaries from before it have none, and it is left out
    /// when no run recorded any (so such reports stay as they were).
    #[serde(default, skip_serializing_if = "PortMappingSummary::is_empty")]
    pub port_mapping: PortMappingSummary,
    /// What volunteers' dual-stack runs found over IPv6; summaries from
    /// before it have none, and it is left out when no run asked about IPv6.
    #[serde(default, skip_serializing_if = "super::ipv6::Ipv6Summary::is_empty")]
    pub ipv6: super::ipv6::Ipv6Summary,
    /// Success by strategy within each NAT-pair class and allocation, with
    /// what `predict` and `birthday` cost per success; left out when no
    /// trial's plan had strategy mixes or hard-NAT strategies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hard_nat: Vec<super::hardnat::HardNatRow>,
    /// Counted trials per IP family (`ipv4`, `ipv6`); a trial whose sides
    /// disagree on it is in none (`input.family_disagree`). Summaries from
    /// before families have none.
    #[serde(default)]
    pub family_trials: BTreeMap<String, u64>,
    /// The tables above for each family on its own; left out unless the
    /// trials ran in more than one family (an IPv4-only campaign's tables
    /// above are its IPv4 tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<FamilyTables>,
    /// IPv4 beside IPv6 within the same pairings; left out when every trial
    /// ran over IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_comparison: Option<FamilyComparison>,
}

/// The sums behind [`TrialTables`], one set for all trials and one per
/// family, filled trial by trial by the same code so that a family's row
/// means exactly what the pooled row means.
#[derive(Debug, Default)]
struct TableSums {
    successes: u64,
    headline: RowSums,
    pairs: BTreeMap<(NatType, NatType), RowSums>,
    strategies: HashMap<Strategy, RowSums>,
    handshakes: HashMap<Transport, RowSums>,
    node_handshakes: HashMap<Transport, RowSums>,
    bridged: u64,
    node_transport_unknown: u64,
    without_handshake: u64,
    transport_unknown: u64,
}

impl TableSums {
    fn add(&mut self, t: &CountedTrial, at: (Option<u32>, Option<u32>)) {
        self.successes += u64::from(t.success);
        self.headline.add(t.pairing, at, t.success);
        self.pairs
            .entry(t.nat_pair())
            .or_default()
            .add(t.pairing, at, t.success);
        self.strategies
            .entry(t.strategy)
            .or_default()
            .add(t.pairing, at, t.success);
        if !t.success {
            return;
        }
        if let Some(ok) = t.node_handshake_success {
            self.bridged += 1;
            match t.node_handshake_transport {
                Some(tr) => self
                    .node_handshakes
                    .entry(tr)
                    .or_default()
                    .add(t.pairing, at, ok),
                None => self.node_transport_unknown += 1,
            }
        }
        match (t.handshake_success, t.handshake_transport) {
            (None, _) if t.node_handshake_success.is_some() => {}
            (None, _) => self.without_handshake += 1,
            (Some(_), None) => self.transport_unknown += 1,
            (Some(ok), Some(tr)) => self
                .handshakes
                .entry(tr)
                .or_default()
                .add(t.pairing, at, ok),
        }
    }

    /// The tables of `trials` (the ones added here). `prefix` ("" for all
    /// trials, "ipv6 " for a family) names the rows for their seeds, so the
    /// pooled rows keep the intervals they had before families.
    fn tables<'a, I>(&self, trials: I, prefix: &str, boot: &BootstrapConfig) -> TrialTables
    where
        I: IntoIterator<Item = &'a CountedTrial>,
        I::IntoIter: Clone,
    {
        let trials = trials.into_iter();
        let mut types: Vec<NatType> = self.pairs.keys().flat_map(|(a, b)| [*a, *b]).collect();
        types.sort();
        types.dedup();
        let mut strategies = Vec::new();
        for strategy in Strategy::ALL {
            let Some(sums) = self.strategies.get(strategy) else {
                continue;
            };
            let times = sorted_times(trials.clone().filter(|t| t.strategy == *strategy));
            let name = strategy.as_str();
            strategies.push(StrategyRow {
                strategy: name.to_string(),
                proportion: sums.proportion(&format!("{prefix}strategy {name}"), boot, true),
                median_ms: quantile_sorted(&times, 0.5),
            });
        }
        let rate_of = |sums: &HashMap<Transport, RowSums>, row: &str, t: Transport| {
            sums.get(&t).map_or_else(
                || Proportion::new(0, 0),
                |sums| sums.proportion(&format!("{prefix}{row} {t}"), boot, true),
            )
        };
        TrialTables {
            headline: self
                .headline
                .proportion(&format!("{prefix}headline"), boot, true),
            nat_types: types.iter().map(NatType::to_string).collect(),
            nat_pairs: self
                .pairs
                .iter()
                .map(|((a, b), sums)| PairCell {
                    nat_a: a.to_string(),
                    nat_b: b.to_string(),
                    proportion: sums.proportion(&format!("{prefix}nat pair {a} {b}"), boot, false),
                })
                .collect(),
            strategies,
            handshake: HandshakeSummary {
                connected_trials: self.successes,
                without_handshake: self.without_handshake,
                transport_unknown: self.transport_unknown,
                v1: rate_of(&self.handshakes, "handshake", Transport::V1),
                v2: rate_of(&self.handshakes, "handshake", Transport::V2),
            },
            node_handshake: (self.bridged > 0).then(|| NodeHandshakeSummary {
                bridged_trials: self.bridged,
                transport_unknown: self.node_transport_unknown,
                v1: rate_of(&self.node_handshakes, "node handshake", Transport::V1),
                v2: rate_of(&self.node_handshakes, "node handshake", Transport::V2),
            }),
            hard_nat: super::hardnat::rows(trials),
        }
    }
}

/// The index of a family in [`Family::ALL`].
fn family_index(family: Family) -> usize {
    Family::ALL
        .iter()
        .position(|f| *f == family)
        .expect("every family is in Family::ALL")
}

fn outcome_name(o: TrialOutcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{o:?}"))
}

/// Success behind carrier-grade NAT, without it, and not measured; groups with no trial are left out.
fn cgnat_rows(trials: &[CountedTrial]) -> Vec<CgnatRow> {
    [
        ("behind_cgnat", Some(true)),
        ("no_cgnat", Some(false)),
        ("not_measured", None),
    ]
    .into_iter()
    .filter_map(|(group, cgnat)| {
        let of_group = trials.iter().filter(|t| t.cgnat == cgnat);
        let (ok, n) = of_group.fold((0, 0), |(ok, n), t| (ok + u64::from(t.success), n + 1));
        (n > 0).then(|| CgnatRow {
            group: group.to_string(),
            proportion: Proportion::new(ok, n),
        })
    })
    .collect()
}

fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let points = CDF_POINTS.min(sorted.len());
    (1..=points)
        .map(|i| {
            let q = i as f64 / points as f64;
            (quantile_sorted(sorted, q).unwrap_or(0.0), q)
        })
        .collect()
}

fn sorted_times<'a>(trials: impl Iterator<Item = &'a CountedTrial>) -> Vec<f64> {
    let mut v: Vec<f64> = trials
        .filter(|t| t.success)
        .filter_map(|t| t.go_to_established_ms)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

impl Summary {
    /// Computes every figure from the aggregated trials, with the default configuration.
    pub fn compute(agg: &Aggregated, inputs: &[String]) -> Summary {
        Summary::compute_with(agg, inputs, &ReportConfig::default())
    }

    /// Computes every figure from the aggregated trials.
    pub fn compute_with(agg: &Aggregated, inputs: &[String], config: &ReportConfig) -> Summary {
        let boot = &config.bootstrap;
        let trials = &agg.trials;
        let successes = trials.iter().filter(|t| t.success).count() as u64;
        let nodes = NetworkNodes::new(agg);
        let groups = RunGroups::new(agg);

        let mut outcomes = BTreeMap::new();
        let mut pooled = TableSums::default();
        let mut by_family: Vec<TableSums> =
            Family::ALL.iter().map(|_| TableSums::default()).collect();
        let mut first_attempt = RowSums::default();
        let mut attempts_hist: BTreeMap<u32, u64> = BTreeMap::new();
        let mut by_network: Vec<RowSums> = vec![RowSums::default(); agg.networks.len()];
        let mut by_label: Vec<RowSums> = vec![RowSums::default(); groups.labels.len()];
        let mut by_client: Vec<RowSums> = vec![RowSums::default(); groups.clients.len()];
        let mut pairings = PairingTally::new(agg.pairing_ids.len());
        for t in trials {
            let at = nodes.of(t);
            *outcomes.entry(outcome_name(t.outcome)).or_insert(0u64) += 1;
            pooled.add(t, at);
            if let Some(family) = t.family {
                by_family[family_index(family)].add(t, at);
            }
            pairings.add(t, at);
            groups.each_network(t, |g| by_network[g].add(t.pairing, at, t.success));
            groups.each_label(t, |g| by_label[g].add(t.pairing, at, t.success));
            groups.each_client(t, |g| by_client[g].add(t.pairing, at, t.success));
            if t.success {
                *attempts_hist.entry(t.attempts).or_default() += 1;
                first_attempt.add(t.pairing, at, t.attempts == 1);
            }
        }

        let TrialTables {
            headline,
            nat_types,
            nat_pairs,
            strategies,
            handshake,
            node_handshake,
            hard_nat,
        } = pooled.tables(trials, "", boot);
        let family_trials: BTreeMap<String, u64> = Family::ALL
            .iter()
            .zip(&by_family)
            .filter(|(_, sums)| sums.headline.n() > 0)
            .map(|(family, sums)| (family.as_str().to_string(), sums.headline.n()))
            .collect();
        // One family's tables would repeat the pooled ones: split only when there are two.
        let families = if family_trials.len() > 1 {
            Family::ALL
                .iter()
                .zip(&by_family)
                .filter(|(_, sums)| sums.headline.n() > 0)
                .map(|(family, sums)| FamilyTables {
                    family: family.as_str().to_string(),
                    tables: sums.tables(
                        trials.iter().filter(|t| t.family == Some(*family)),
                        &format!("{family} "),
                        boot,
                    ),
                })
                .collect()
        } else {
            Vec::new()
        };
        let all_ipv4 = family_trials.keys().all(|f| f == Family::Ipv4.as_str())
            && agg.counts.family_disagree == 0;
        let family_comparison = (!all_ipv4).then(|| pairings.family_comparison(boot));

        let times = sorted_times(trials.iter());
        let mut cdf_by_strategy = BTreeMap::new();
        for row in &strategies {
            let st = sorted_times(
                trials
                    .iter()
                    .filter(|t| t.strategy.as_str() == row.strategy),
            );
            cdf_by_strategy.insert(row.strategy.clone(), cdf_points(&st));
        }
        let time_to_connect = TimeSummary {
            n: times.len() as u64,
            min_ms: times.first().copied(),
            p50_ms: quantile_sorted(&times, 0.5),
            p90_ms: quantile_sorted(&times, 0.9),
            p99_ms: quantile_sorted(&times, 0.99),
            max_ms: times.last().copied(),
            mean_ms: (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64),
            cdf: cdf_points(&times),
            cdf_by_strategy,
        };

        let attempt_sum: u64 = attempts_hist.iter().map(|(a, n)| u64::from(*a) * n).sum();
        let attempts = AttemptsSummary {
            successes,
            histogram: attempts_hist.into_iter().collect(),
            first_attempt: first_attempt.proportion("first attempt", boot, false),
            mean: (successes > 0).then(|| attempt_sum as f64 / successes as f64),
        };

        let references = reference_figures()
            .into_iter()
            .map(|figure| {
                let range = figure.range();
                ReferenceRow {
                    figure,
                    low: range.map(|r| r.0),
                    high: range.map(|r| r.1),
                }
            })
            .collect();

        let min = config.min_group_trials;
        let network_table = group_table(
            &agg.networks,
            &by_network,
            &groups.network_runs,
            min,
            "network",
            boot,
            false,
        );
        let networks = network_summary(network_table);
        let network_labels = group_table(
            &groups.labels,
            &by_label,
            &groups.label_runs,
            min,
            "label",
            boot,
            false,
        );
        let clients = group_table(
            &groups.clients,
            &by_client,
            &groups.client_runs,
            min,
            "client",
            boot,
            false,
        );

        let uncertainty = UncertaintySummary {
            resamples: boot.resamples,
            seed: boot.seed,
            pairings: pooled.headline.pairings(),
            networks: nodes.nodes,
            keyed_networks: nodes.keyed,
            runs_without_group: nodes.runs_without_group,
            advice: QUOTE_ADVICE.to_string(),
        };

        Summary {
            generator: format!("punchscope report {}", env!("CARGO_PKG_VERSION")),
            inputs: inputs.to_vec(),
            counting_rule: COUNTING_RULE.to_string(),
            input: agg.counts.clone(),
            skipped_lines: agg.skipped.clone(),
            headline,
            outcomes,
            nat_types,
            nat_pairs,
            strategies,
            hard_nat,
            family_trials,
            families,
            family_comparison,
            cgnat: cgnat_rows(trials),
            handshake,
            node_handshake,
            time_to_connect,
            attempts,
            classification: ClassificationSummary {
                // The runs these tables count: volunteers' runs classified
                // over IPv4 (an IPv6-only run is in the IPv6 breakdown).
                runs: agg.type_runs.values().sum(),
                mapping: agg.mapping_runs.clone(),
                filtering: agg.filtering_runs.clone(),
                types: agg
                    .type_runs
                    .iter()
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect(),
            },
            references,
            uncertainty,
            pairing_view: pairings.view(boot),
            networks,
            network_labels,
            clients,
            port_mapping: agg.port_mapping.summary(),
            ipv6: agg.ipv6.summary(),
        }
    }

    /// The matrix cell for two types (either order), if any trial fell in it.
    pub fn pair(&self, a: &str, b: &str) -> Option<&PairCell> {
        find_pair(&self.nat_pairs, a, b)
    }

    /// The tables of all trials, pooled over families (a copy of those fields).
    pub fn pooled_tables(&self) -> TrialTables {
        TrialTables {
            headline: self.headline,
            nat_types: self.nat_types.clone(),
            nat_pairs: self.nat_pairs.clone(),
            strategies: self.strategies.clone(),
            handshake: self.handshake.clone(),
            node_handshake: self.node_handshake.clone(),
            hard_nat: self.hard_nat.clone(),
        }
    }
}

/// The groups each volunteer run belongs to: its network, label and client, numbered.
struct RunGroups {
    network_of_run: Vec<Option<u32>>,
    label_of_run: Vec<Option<u32>>,
    client_of_run: Vec<Option<u32>>,
    labels: Vec<String>,
    clients: Vec<String>,
    network_runs: Vec<u64>,
    label_runs: Vec<u64>,
    client_runs: Vec<u64>,
}

/// The label row of runs without a label.
const NO_LABEL: &str = "(none)";

impl RunGroups {
    fn new(agg: &Aggregated) -> Self {
        // Labels and clients are numbered in sorted order, so rows come out sorted.
        let mut labels = std::collections::BTreeSet::new();
        let mut clients = std::collections::BTreeSet::new();
        let label = |r: &super::aggregate::RunInfo| {
            r.network_label.as_deref().unwrap_or(NO_LABEL).to_string()
        };
        let client = |r: &super::aggregate::RunInfo| {
            format!("{}, punchscope {}", r.platform, r.tool_version)
        };
        for r in agg.runs.iter().filter(|r| r.is_volunteer()) {
            labels.insert(label(r));
            clients.insert(client(r));
        }
        let labels: Vec<String> = labels.into_iter().collect();
        let clients: Vec<String> = clients.into_iter().collect();
        let mut network_runs = vec![0u64; agg.networks.len()];
        let mut label_runs = vec![0u64; labels.len()];
        let mut client_runs = vec![0u64; clients.len()];
        let mut network_of_run = Vec::with_capacity(agg.runs.len());
        let mut label_of_run = Vec::with_capacity(agg.runs.len());
        let mut client_of_run = Vec::with_capacity(agg.runs.len());
        for r in &agg.runs {
            if !r.is_volunteer() {
                network_of_run.push(None);
                label_of_run.push(None);
                client_of_run.push(None);
                continue;
            }
            let l = labels.binary_search(&label(r)).expect("a known label");
            let c = clients.binary_search(&client(r)).expect("a known client");
            label_runs[l] += 1;
            client_runs[c] += 1;
            if let Some(n) = r.network {
                network_runs[n as usize] += 1;
            }
            network_of_run.push(r.network);
            label_of_run.push(Some(l as u32));
            client_of_run.push(Some(c as u32));
        }
        RunGroups {
            network_of_run,
            label_of_run,
            client_of_run,
            labels,
            clients,
            network_runs,
            label_runs,
            client_runs,
        }
    }

    /// Calls `f` once for each distinct group of the trial's volunteer sides.
    fn each(of_run: &[Option<u32>], t: &CountedTrial, mut f: impl FnMut(usize)) {
        let group = |run: Option<u32>| run.and_then(|r| of_run[r as usize]);
        let (a, b) = (group(t.initiator_run), group(t.responder_run));
        if let Some(a) = a {
            f(a as usize);
        }
        if let Some(b) = b.filter(|b| Some(*b) != a) {
            f(b as usize);
        }
    }

    fn each_network(&self, t: &CountedTrial, f: impl FnMut(usize)) {
        Self::each(&self.network_of_run, t, f);
    }

    fn each_label(&self, t: &CountedTrial, f: impl FnMut(usize)) {
        Self::each(&self.label_of_run, t, f);
    }

    fn each_client(&self, t: &CountedTrial, f: impl FnMut(usize)) {
        Self::each(&self.client_of_run, t, f);
    }
}

/// The rows of the groups with at least `min` trials, most trials first.
fn group_table(
    keys: &[String],
    sums: &[RowSums],
    runs: &[u64],
    min: u64,
    kind: &str,
    boot: &BootstrapConfig,
    with_networks: bool,
) -> GroupTable {
    let mut rows = Vec::new();
    let mut groups = 0;
    let mut trials_unlisted = 0;
    for (i, row) in sums.iter().enumerate() {
        if row.n() == 0 {
            continue;
        }
        groups += 1;
        if row.n() < min.max(1) {
            trials_unlisted += row.n();
            continue;
        }
        rows.push(GroupRow {
            key: keys[i].clone(),
            runs: runs[i],
            pairings: row.pairings(),
            proportion: row.proportion(&format!("{kind} {}", keys[i]), boot, with_networks),
        });
    }
    rows.sort_by(|a, b| {
        b.proportion
            .n
            .cmp(&a.proportion.n)
            .then_with(|| a.key.cmp(&b.key))
    });
    GroupTable {
        min_trials: min,
        groups,
        rows,
        trials_unlisted,
    }
}

/// The per-network table with the spread of its rates.
fn network_summary(table: GroupTable) -> NetworkSummary {
    let mut rates: Vec<f64> = table
        .rows
        .iter()
        .filter_map(|r| r.proportion.rate)
        .collect();
    rates.sort_by(f64::total_cmp);
    let mut histogram: Vec<(String, u64)> = (0..10)
        .map(|d| (format!("{}-{}%", d * 10, d * 10 + 10), 0))
        .collect();
    for r in &rates {
        // 100% goes into the last decile, with 90-99.9%.
        let decile = ((r * 10.0).floor() as usize).min(9);
        histogram[decile].1 += 1;
    }
    NetworkSummary {
        never_connected: table
            .rows
            .iter()
            .filter(|r| r.proportion.successes == 0)
            .count() as u64,
        always_connected: table
            .rows
            .iter()
            .filter(|r| r.proportion.successes == r.proportion.n)
            .count() as u64,
        median_rate: quantile_sorted(&rates, 0.5),
        rate_histogram: if rates.is_empty() {
            Vec::new()
        } else {
            histogram
        },
        table,
    }
}

/// (successes, trials) per strategy, indexed like [`Strategy::ALL`].
type StrategyCounts = [(u64, u64); Strategy::ALL.len()];

/// Per pairing: its trials and successes, overall, per strategy and per
/// family and strategy, and its networks.
struct PairingTally {
    overall: Vec<(u64, u64)>,
    by_strategy: Vec<StrategyCounts>,
    /// Indexed like [`Family::ALL`]; trials whose sides disagree on the family are in none.
    by_family: Vec<[StrategyCounts; Family::ALL.len()]>,
    nodes: Vec<(Option<u32>, Option<u32>)>,
}

/// Said instead of a table when no pairing ran both families.
pub const NO_PAIRING_IN_BOTH_FAMILIES: &str = "No pairing ran trials over both IPv4 and IPv6, \
so there is no paired IPv4/IPv6 comparison: rates of different pairings would compare different routers and paths.";

/// What the rows of the IPv4/IPv6 comparison are.
pub const FAMILY_COMPARISON_NOTE: &str = "Per strategy, over the pairings that ran it over both \
IPv4 and IPv6 (the same two volunteers, their routers and paths): each family's trials with Wilson 95% \
intervals, and IPv6 minus IPv4 with a 95% bootstrap interval over pairings (a pairing's trials of both \
families drawn together) and a sign test over the pairings.";

impl PairingTally {
    fn new(pairings: usize) -> Self {
        PairingTally {
            overall: vec![(0, 0); pairings],
            by_strategy: vec![[(0, 0); Strategy::ALL.len()]; pairings],
            by_family: vec![[[(0, 0); Strategy::ALL.len()]; Family::ALL.len()]; pairings],
            nodes: vec![(None, None); pairings],
        }
    }

    fn add(&mut self, t: &CountedTrial, nodes: (Option<u32>, Option<u32>)) {
        let p = t.pairing as usize;
        self.overall[p].0 += u64::from(t.success);
        self.overall[p].1 += 1;
        if let Some(i) = Strategy::ALL.iter().position(|s| *s == t.strategy) {
            self.by_strategy[p][i].0 += u64::from(t.success);
            self.by_strategy[p][i].1 += 1;
            if let Some(family) = t.family {
                let counts = &mut self.by_family[p][family_index(family)][i];
                counts.0 += u64::from(t.success);
                counts.1 += 1;
            }
        }
        // A pairing's networks: those of its trial seen from the most sides.
        let known = |n: (Option<u32>, Option<u32>)| n.0.is_some() as u8 + n.1.is_some() as u8;
        if known(nodes) > known(self.nodes[p]) {
            self.nodes[p] = nodes;
        }
    }

    /// IPv4 beside IPv6 per strategy, within the pairings that ran the
    /// strategy in both families (no other pairing enters a row).
    fn family_comparison(&self, boot: &BootstrapConfig) -> FamilyComparison {
        let (v4, v6) = (family_index(Family::Ipv4), family_index(Family::Ipv6));
        let trials_in = |counts: &StrategyCounts| counts.iter().map(|c| c.1).sum::<u64>();
        let mut pairings_both = 0;
        let mut pairings_one_family: BTreeMap<String, u64> = BTreeMap::new();
        for families in &self.by_family {
            let ran: Vec<Family> = Family::ALL
                .iter()
                .zip(families)
                .filter(|(_, counts)| trials_in(counts) > 0)
                .map(|(family, _)| *family)
                .collect();
            match ran.as_slice() {
                [] => {}
                [one] => *pairings_one_family.entry(one.to_string()).or_default() += 1,
                _ => pairings_both += 1,
            }
        }
        let mut strategies = Vec::new();
        for (i, strategy) in Strategy::ALL.iter().enumerate() {
            let clusters: Vec<PairedCluster> = self
                .by_family
                .iter()
                .filter(|f| f[v4][i].1 > 0 && f[v6][i].1 > 0)
                .map(|f| PairedCluster {
                    a: f[v6][i],
                    b: f[v4][i],
                })
                .collect();
            let row = format!("family ipv6 ipv4 {}", strategy.as_str());
            if let Some(difference) = paired_difference(&clusters, boot, &row) {
                strategies.push(FamilyStrategyComparison {
                    strategy: strategy.as_str().to_string(),
                    ipv4: Proportion::new(difference.successes_b, difference.trials_b),
                    ipv6: Proportion::new(difference.successes_a, difference.trials_a),
                    difference,
                });
            }
        }
        let note = match (strategies.is_empty(), pairings_both) {
            (false, _) => FAMILY_COMPARISON_NOTE.to_string(),
            (true, 0) => NO_PAIRING_IN_BOTH_FAMILIES.to_string(),
            (true, both) => format!(
                "{both} pairings ran trials over both IPv4 and IPv6, but none ran the same strategy \
                 over both, so there is no paired IPv4/IPv6 comparison."
            ),
        };
        FamilyComparison {
            pairings_both,
            pairings_one_family,
            strategies,
            note,
        }
    }

    fn view(&self, boot: &BootstrapConfig) -> PairingView {
        let mut at_least_once = RowSums::default();
        let mut every_time = RowSums::default();
        for (p, &(s, n)) in self.overall.iter().enumerate() {
            if n > 0 {
                at_least_once.add(p as u32, self.nodes[p], s > 0);
                every_time.add(p as u32, self.nodes[p], s == n);
            }
        }
        let mut strategies = Vec::new();
        for (i, strategy) in Strategy::ALL.iter().enumerate() {
            let mut once = RowSums::default();
            let mut every = RowSums::default();
            for (p, counts) in self.by_strategy.iter().enumerate() {
                let (s, n) = counts[i];
                if n > 0 {
                    once.add(p as u32, self.nodes[p], s > 0);
                    every.add(p as u32, self.nodes[p], s == n);
                }
            }
            if once.n() == 0 {
                continue;
            }
            let name = strategy.as_str();
            strategies.push(StrategyPairings {
                strategy: name.to_string(),
                at_least_once: once.proportion(&format!("pairings {name} once"), boot, false),
                every_time: every.proportion(&format!("pairings {name} every"), boot, false),
            });
        }
        let mut comparisons = Vec::new();
        for (i, a) in Strategy::ALL.iter().enumerate() {
            for (j, b) in Strategy::ALL.iter().enumerate().skip(i + 1) {
                let clusters: Vec<PairedCluster> = self
                    .by_strategy
                    .iter()
                    .filter(|c| c[i].1 > 0 && c[j].1 > 0)
                    .map(|c| PairedCluster { a: c[i], b: c[j] })
                    .collect();
                let row = format!("paired {} {}", a.as_str(), b.as_str());
                if let Some(difference) = paired_difference(&clusters, boot, &row) {
                    comparisons.push(StrategyComparison {
                        strategy_a: a.as_str().to_string(),
                        strategy_b: b.as_str().to_string(),
                        difference,
                    });
                }
            }
        }
        PairingView {
            pairings: at_least_once.n(),
            connected_at_least_once: at_least_once.proportion("pairings once", boot, true),
            connected_every_time: every_time.proportion("pairings every", boot, true),
            strategies,
            comparisons,
        }
    }
}
