//! The report's numbers ([`Summary`], written as `summary.json`): every figure the page shows, computed from the counted trials.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregated, CountedTrial, InputCounts, NatType};
use super::input::Skipped;
use super::reference::{reference_figures, ReferenceFigure};
use super::stats::{quantile_sorted, Proportion};
use crate::handshake::Transport;
use crate::trial::{Strategy, TrialOutcome};

/// How trials are counted, in one paragraph (shown in the page and in summary.json).
pub const COUNTING_RULE: &str = "One row per coordinator trial. Records of the same trial from both sides \
(same trial_id, the coordinator's per-trial nonce) are joined and counted once; a joined trial is a success \
only if both sides say connected. A record whose other side is missing, or that has no trial_id, counts on \
its own. A run read twice (same run_id) counts once. NAT types are each run's own classification verdict \
(mapping/filtering, 'unknown' where not known exactly); a missing peer's type comes from the pairing's \
peer_verdict. Intervals are Wilson score 95% intervals. Malformed input lines are skipped and listed, never counted.";

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
    /// Connected trials with no handshake record.
    pub without_handshake: u64,
    /// Connected trials whose handshake failed before its transport was known.
    pub transport_unknown: u64,
    /// Handshake success given a punched socket, v1.
    pub v1: Proportion,
    /// Handshake success given a punched socket, BIP324 v2.
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
    pub time_to_connect: TimeSummary,
    pub attempts: AttemptsSummary,
    pub classification: ClassificationSummary,
    pub references: Vec<ReferenceRow>,
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
    /// Computes every figure from the aggregated trials.
    pub fn compute(agg: &Aggregated, inputs: &[String]) -> Summary {
        let trials = &agg.trials;
        let total = trials.len() as u64;
        let successes = trials.iter().filter(|t| t.success).count() as u64;

        let mut outcomes = BTreeMap::new();
        let mut pairs: BTreeMap<(NatType, NatType), (u64, u64)> = BTreeMap::new();
        let mut strategies: HashMap<Strategy, (u64, u64)> = HashMap::new();
        let mut hs: HashMap<Transport, (u64, u64)> = HashMap::new();
        let mut without_handshake = 0;
        let mut transport_unknown = 0;
        let mut attempts_hist: BTreeMap<u32, u64> = BTreeMap::new();
        for t in trials {
            *outcomes.entry(outcome_name(t.outcome)).or_insert(0u64) += 1;
            let cell = pairs.entry(t.nat_pair()).or_default();
            cell.0 += u64::from(t.success);
            cell.1 += 1;
            let s = strategies.entry(t.strategy).or_default();
            s.0 += u64::from(t.success);
            s.1 += 1;
            if t.success {
                *attempts_hist.entry(t.attempts).or_default() += 1;
                match (t.handshake_success, t.handshake_transport) {
                    (None, _) => without_handshake += 1,
                    (Some(_), None) => transport_unknown += 1,
                    (Some(ok), Some(tr)) => {
                        let h = hs.entry(tr).or_default();
                        h.0 += u64::from(ok);
                        h.1 += 1;
                    }
                }
            }
        }

        let mut types: Vec<NatType> = pairs.keys().flat_map(|(a, b)| [*a, *b]).collect();
        types.sort();
        types.dedup();

        let times = sorted_times(trials.iter());
        let mut cdf_by_strategy = BTreeMap::new();
        let mut strategy_rows = Vec::new();
        for strategy in Strategy::ALL {
            let Some(&(ok, n)) = strategies.get(strategy) else {
                continue;
            };
            let st = sorted_times(trials.iter().filter(|t| t.strategy == *strategy));
            cdf_by_strategy.insert(strategy.as_str().to_string(), cdf_points(&st));
            strategy_rows.push(StrategyRow {
                strategy: strategy.as_str().to_string(),
                proportion: Proportion::new(ok, n),
                median_ms: quantile_sorted(&st, 0.5),
            });
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

        let first = attempts_hist.get(&1).copied().unwrap_or(0);
        let attempt_sum: u64 = attempts_hist.iter().map(|(a, n)| u64::from(*a) * n).sum();
        let attempts = AttemptsSummary {
            successes,
            histogram: attempts_hist.into_iter().collect(),
            first_attempt: Proportion::new(first, successes),
            mean: (successes > 0).then(|| attempt_sum as f64 / successes as f64),
        };

        let get = |t: Transport| hs.get(&t).copied().unwrap_or((0, 0));
        let handshake = HandshakeSummary {
            connected_trials: successes,
            without_handshake,
            transport_unknown,
            v1: Proportion::new(get(Transport::V1).0, get(Transport::V1).1),
            v2: Proportion::new(get(Transport::V2).0, get(Transport::V2).1),
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

        Summary {
            generator: format!("punchscope report {}", env!("CARGO_PKG_VERSION")),
            inputs: inputs.to_vec(),
            counting_rule: COUNTING_RULE.to_string(),
            input: agg.counts.clone(),
            skipped_lines: agg.skipped.clone(),
            headline: Proportion::new(successes, total),
            outcomes,
            nat_types: types.iter().map(NatType::to_string).collect(),
            nat_pairs: pairs
                .iter()
                .map(|((a, b), (ok, n))| PairCell {
                    nat_a: a.to_string(),
                    nat_b: b.to_string(),
                    proportion: Proportion::new(*ok, *n),
                })
                .collect(),
            strategies: strategy_rows,
            cgnat: cgnat_rows(trials),
            handshake,
            time_to_connect,
            attempts,
            classification: ClassificationSummary {
                runs: agg.counts.runs - agg.counts.reference_runs,
                mapping: agg.mapping_runs.clone(),
                filtering: agg.filtering_runs.clone(),
                types: agg
                    .type_runs
                    .iter()
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect(),
            },
            references,
        }
    }

    /// The matrix cell for two types (either order), if any trial fell in it.
    pub fn pair(&self, a: &str, b: &str) -> Option<&PairCell> {
        self.nat_pairs
            .iter()
            .find(|c| (c.nat_a == a && c.nat_b == b) || (c.nat_a == b && c.nat_b == a))
    }
}
