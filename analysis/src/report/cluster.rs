//! Clustered uncertainty: cluster bootstrap intervals over pairings and over networks, seeded so that a report is reproducible byte for byte.
//!
//! Trials are not independent: the trials of one pairing share two routers,
//! two paths and one moment, and the pairings of one volunteer share its
//! network. The per-trial Wilson interval treats them as independent and is
//! too narrow. Here every rate also gets:
//!
//! - a **pairing bootstrap**: the pairings are resampled with replacement
//!   (each carries its successes and trials), and the rate of each resample
//!   is Σ successes / Σ trials;
//! - a **network bootstrap**: the volunteers' networks (the collector's
//!   keyed `source_group`; a run read without one is its own network) are
//!   resampled with replacement, and a trial counts as many times as the
//!   product of the times each of its volunteer sides' networks was drawn:
//!   the vertex bootstrap of Snijders & Borgatti (1999) for data on pairs,
//!   which keeps every trial of a pairing, and every pairing of a network,
//!   together. A reference peer is fixed by the design, not sampled.
//!
//! The interval is the 2.5th and 97.5th nearest-rank percentiles of the
//! resampled rates, never narrower than the per-trial Wilson interval (a
//! positive correlation can only lose information). When every cluster has
//! the same rate (0/n, n/n, or a single cluster) the resamples do not vary
//! and say nothing about the correlation; the interval is then the Wilson
//! interval with the clusters as the trials (the worst case: every trial of
//! a cluster alike), and says so in `method`.
//!
//! Only cluster sums are resampled, never trials, so a resample costs one
//! random draw per cluster. The random numbers are ChaCha8 (`rand_chacha`)
//! from a fixed seed mixed with the row's name, so each row's interval
//! depends only on its own data and the seed.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use super::stats::{quantile_sorted, wilson, wilson_effective, Z_95};

/// Resamples per interval unless configured otherwise.
pub const DEFAULT_RESAMPLES: u32 = 1000;
/// The most resamples a report may ask for (its time grows linearly).
pub const MAX_RESAMPLES: u32 = 20_000;
/// The fixed seed ("punchsco" in ASCII): the same input gives the same intervals.
pub const DEFAULT_SEED: u64 = 0x7075_6e63_6873_636f;

/// How many resamples, from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    pub resamples: u32,
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            resamples: DEFAULT_RESAMPLES,
            seed: DEFAULT_SEED,
        }
    }
}

/// How a clustered interval was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalMethod {
    /// Percentiles of the cluster bootstrap, widened to the per-trial Wilson interval if narrower.
    Bootstrap,
    /// Every cluster had the same rate, so the bootstrap cannot see the
    /// correlation: the Wilson interval with the clusters as the trials.
    ClustersAsTrials,
}

/// A 95% interval that respects one level of clustering.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterInterval {
    /// Clusters (pairings or networks) behind the rate.
    pub clusters: u64,
    pub low: f64,
    pub high: f64,
    /// Standard deviation of the resampled rates; `None` without a bootstrap.
    pub std_error: Option<f64>,
    /// Bootstrap variance over the binomial variance p(1-p)/n: how many
    /// times fewer independent trials the data is worth. `None` at 0/n, n/n
    /// and without a bootstrap.
    pub design_effect: Option<f64>,
    pub method: IntervalMethod,
}

/// Both clustered intervals of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Clustered {
    /// Resampling pairings.
    pub pairings: ClusterInterval,
    /// Resampling volunteers' networks; absent where the row is one network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<ClusterInterval>,
}

/// FNV-1a, 64 bits: a stable hash of a row's name for its seed (the
/// standard library's hasher may change between Rust releases).
fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn rng_for(config: &BootstrapConfig, row: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(config.seed ^ fnv1a(row))
}

/// A uniform index below `k` by multiply-shift; its bias, at most k / 2^64,
/// is far below anything a percentile can show.
fn index_below(rng: &mut ChaCha8Rng, k: u64) -> usize {
    ((u128::from(rng.next_u64()) * u128::from(k)) >> 64) as usize
}

fn resamples(config: &BootstrapConfig) -> usize {
    config.resamples.clamp(1, MAX_RESAMPLES) as usize
}

/// Percentile interval, standard error and design effect from resampled rates.
fn summarize(
    mut rates: Vec<f64>,
    successes: u64,
    n: u64,
    clusters: u64,
) -> Option<ClusterInterval> {
    if n == 0 || clusters == 0 {
        return None;
    }
    let p = successes as f64 / n as f64;
    let (w_low, w_high) = wilson(successes, n, Z_95)?;
    let count = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / count;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (count - 1.0).max(1.0);
    // A spread below rounding noise means every resample had the same rate.
    if rates.len() < 2 || variance <= 1e-24 {
        let (low, high) = wilson_effective(p, clusters as f64, Z_95);
        return Some(ClusterInterval {
            clusters,
            low: low.min(w_low),
            high: high.max(w_high),
            std_error: None,
            design_effect: None,
            method: IntervalMethod::ClustersAsTrials,
        });
    }
    rates.sort_by(f64::total_cmp);
    let low = quantile_sorted(&rates, 0.025).unwrap_or(p);
    let high = quantile_sorted(&rates, 0.975).unwrap_or(p);
    let binomial = p * (1.0 - p) / n as f64;
    Some(ClusterInterval {
        clusters,
        low: low.min(w_low),
        high: high.max(w_high),
        std_error: Some(variance.sqrt()),
        design_effect: (binomial > 0.0).then(|| variance / binomial),
        method: IntervalMethod::Bootstrap,
    })
}

/// The pairing bootstrap of Σ successes / Σ trials over clusters given as
/// (successes, trials), each with at least one trial. `row` names the row
/// for its seed.
pub fn cluster_bootstrap(
    clusters: &[(u64, u64)],
    config: &BootstrapConfig,
    row: &str,
) -> Option<ClusterInterval> {
    let successes: u64 = clusters.iter().map(|c| c.0).sum();
    let n: u64 = clusters.iter().map(|c| c.1).sum();
    let k = clusters.len() as u64;
    if n == 0 {
        return None;
    }
    let mut rng = rng_for(config, row);
    let rates: Vec<f64> = if k < 2 {
        Vec::new()
    } else {
        (0..resamples(config))
            .map(|_| {
                let (mut s, mut t) = (0u64, 0u64);
                for _ in 0..k {
                    let (cs, ct) = clusters[index_below(&mut rng, k)];
                    s += cs;
                    t += ct;
                }
                s as f64 / t as f64
            })
            .collect()
    };
    summarize(rates, successes, n, k)
}

/// Trials that share the same volunteer networks: nodes `a` and `b` (indices
/// below the number of networks), `None` for a side that is not sampled (a
/// reference peer, or a side not in the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkCell {
    pub a: Option<u32>,
    pub b: Option<u32>,
    pub successes: u64,
    pub n: u64,
}

/// The network (vertex) bootstrap over `networks` nodes: each resample draws
/// `networks` nodes with replacement, and a cell counts m(a) * m(b) times
/// (m = times drawn; an unsampled side counts 1). A resample with no trial
/// at all has no rate and is drawn again, at most as many times as there are resamples.
pub fn network_bootstrap(
    networks: usize,
    cells: &[NetworkCell],
    config: &BootstrapConfig,
    row: &str,
) -> Option<ClusterInterval> {
    let successes: u64 = cells.iter().map(|c| c.successes).sum();
    let n: u64 = cells.iter().map(|c| c.n).sum();
    if n == 0 || networks == 0 {
        return None;
    }
    let mut rng = rng_for(config, row);
    let wanted = if networks < 2 { 0 } else { resamples(config) };
    let mut rates = Vec::with_capacity(wanted);
    let mut drawn = vec![0u64; networks];
    let mut empty_draws = 0;
    while rates.len() < wanted && empty_draws <= wanted {
        drawn.fill(0);
        for _ in 0..networks {
            drawn[index_below(&mut rng, networks as u64)] += 1;
        }
        let weight = |node: Option<u32>| node.map_or(1, |i| drawn[i as usize]);
        let (mut s, mut t) = (0u64, 0u64);
        for c in cells {
            let w = weight(c.a) * weight(c.b);
            s += w * c.successes;
            t += w * c.n;
        }
        if t == 0 {
            empty_draws += 1;
            continue;
        }
        rates.push(s as f64 / t as f64);
    }
    summarize(rates, successes, n, networks as u64)
}

/// One pairing's trials of two strategies: (successes, trials) of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairedCluster {
    pub a: (u64, u64),
    pub b: (u64, u64),
}

/// A difference of two rates measured within the same pairings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedDifference {
    /// Pairings that ran both.
    pub pairings: u64,
    /// Pooled rate of A and of B over those pairings.
    pub rate_a: f64,
    pub rate_b: f64,
    /// rate_a - rate_b.
    pub difference: f64,
    /// 95% percentile interval of the difference, resampling pairings (both
    /// strategies of a pairing stay together); `None` with one pairing.
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub std_error: Option<f64>,
    /// Pairings where A's rate was higher, lower, equal.
    pub a_better: u64,
    pub b_better: u64,
    pub ties: u64,
    /// Exact two-sided sign test over the pairings that were not ties.
    pub sign_test_p: Option<f64>,
    /// The trials behind the pooled rates: A's and B's successes and
    /// trials over those pairings (summaries from before them have none).
    #[serde(default)]
    pub successes_a: u64,
    #[serde(default)]
    pub trials_a: u64,
    #[serde(default)]
    pub successes_b: u64,
    #[serde(default)]
    pub trials_b: u64,
}

/// The paired comparison of strategies A and B over the pairings that ran both.
pub fn paired_difference(
    clusters: &[PairedCluster],
    config: &BootstrapConfig,
    row: &str,
) -> Option<PairedDifference> {
    let k = clusters.len() as u64;
    let sum = |cs: &mut dyn Iterator<Item = &PairedCluster>| {
        cs.fold((0u64, 0u64, 0u64, 0u64), |acc, c| {
            (acc.0 + c.a.0, acc.1 + c.a.1, acc.2 + c.b.0, acc.3 + c.b.1)
        })
    };
    let (sa, na, sb, nb) = sum(&mut clusters.iter());
    if na == 0 || nb == 0 {
        return None;
    }
    let rate_a = sa as f64 / na as f64;
    let rate_b = sb as f64 / nb as f64;
    let (mut a_better, mut b_better, mut ties) = (0, 0, 0);
    for c in clusters {
        // Compare sa/na with sb/nb without division.
        let left = u128::from(c.a.0) * u128::from(c.b.1);
        let right = u128::from(c.b.0) * u128::from(c.a.1);
        match left.cmp(&right) {
            std::cmp::Ordering::Greater => a_better += 1,
            std::cmp::Ordering::Less => b_better += 1,
            std::cmp::Ordering::Equal => ties += 1,
        }
    }
    let mut interval = (None, None, None);
    if k >= 2 {
        let mut rng = rng_for(config, row);
        let mut diffs: Vec<f64> = (0..resamples(config))
            .map(|_| {
                let (mut s1, mut t1, mut s2, mut t2) = (0u64, 0u64, 0u64, 0u64);
                for _ in 0..k {
                    let c = clusters[index_below(&mut rng, k)];
                    s1 += c.a.0;
                    t1 += c.a.1;
                    s2 += c.b.0;
                    t2 += c.b.1;
                }
                s1 as f64 / t1 as f64 - s2 as f64 / t2 as f64
            })
            .collect();
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let variance = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>()
            / (diffs.len() as f64 - 1.0).max(1.0);
        diffs.sort_by(f64::total_cmp);
        interval = (
            quantile_sorted(&diffs, 0.025),
            quantile_sorted(&diffs, 0.975),
            Some(variance.sqrt()),
        );
    }
    Some(PairedDifference {
        pairings: k,
        rate_a,
        rate_b,
        difference: rate_a - rate_b,
        low: interval.0,
        high: interval.1,
        std_error: interval.2,
        a_better,
        b_better,
        ties,
        sign_test_p: sign_test(a_better, b_better),
        successes_a: sa,
        trials_a: na,
        successes_b: sb,
        trials_b: nb,
    })
}

/// Exact two-sided sign test: the chance, if A and B were equally good, of
/// a split at least as lopsided as `wins` against `losses`.
pub fn sign_test(wins: u64, losses: u64) -> Option<f64> {
    let n = wins + losses;
    if n == 0 {
        return None;
    }
    let k = wins.min(losses);
    // ln C(n, i) from running sums of logarithms, so large n does not overflow.
    let mut ln_fact = Vec::with_capacity(n as usize + 1);
    ln_fact.push(0.0f64);
    for i in 1..=n {
        let previous = ln_fact[i as usize - 1];
        ln_fact.push(previous + (i as f64).ln());
    }
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let tail: f64 = (0..=k)
        .map(|i| {
            (ln_fact[n as usize] - ln_fact[i as usize] - ln_fact[(n - i) as usize] - ln_half_n)
                .exp()
        })
        .sum();
    Some((2.0 * tail).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(resamples: u32) -> BootstrapConfig {
        BootstrapConfig {
            resamples,
            seed: DEFAULT_SEED,
        }
    }

    /// The exact bootstrap variance of a ratio over clusters of equal size m:
    /// resampling k cluster means with replacement, Var = (1/k) * mean((ȳ_c - ȳ)^2).
    fn exact_bootstrap_se(clusters: &[(u64, u64)]) -> f64 {
        let k = clusters.len() as f64;
        let means: Vec<f64> = clusters.iter().map(|c| c.0 as f64 / c.1 as f64).collect();
        let grand = means.iter().sum::<f64>() / k;
        let between = means.iter().map(|m| (m - grand).powi(2)).sum::<f64>() / k;
        (between / k).sqrt()
    }

    #[test]
    fn the_bootstrap_matches_the_known_answer_for_equal_clusters() {
        // 100 pairings of 20 trials: 50 all connected, 50 never. The bootstrap
        // rate is then Binomial(100, 0.5) / 100 exactly: SE 0.05, and its 2.5%
        // and 97.5% quantiles are 40/100 and 60/100.
        let clusters: Vec<(u64, u64)> = (0..100)
            .map(|i| (if i % 2 == 0 { 20 } else { 0 }, 20))
            .collect();
        let known_se = exact_bootstrap_se(&clusters);
        assert!((known_se - 0.05).abs() < 1e-12);
        let ci = cluster_bootstrap(&clusters, &config(4000), "known").unwrap();
        assert_eq!(ci.method, IntervalMethod::Bootstrap);
        assert_eq!(ci.clusters, 100);
        let se = ci.std_error.unwrap();
        // 4000 resamples estimate an SE to about 1/sqrt(2 * 4000) = 1.1% of itself.
        assert!((se / known_se - 1.0).abs() < 0.05, "se {se}");
        assert!((ci.low - 0.40).abs() <= 0.011, "low {}", ci.low);
        assert!((ci.high - 0.60).abs() <= 0.011, "high {}", ci.high);
        // The design effect of perfectly correlated clusters of 20 is 20.
        let deff = ci.design_effect.unwrap();
        assert!((deff / 20.0 - 1.0).abs() < 0.1, "design effect {deff}");

        // Unequal rates: the same formula with between-cluster spread.
        let mixed: Vec<(u64, u64)> = (0..60).map(|i| ((i % 5) * 2, 10)).collect();
        let known = exact_bootstrap_se(&mixed);
        let se = cluster_bootstrap(&mixed, &config(4000), "mixed")
            .unwrap()
            .std_error
            .unwrap();
        assert!((se / known - 1.0).abs() < 0.05, "se {se} vs {known}");
    }

    #[test]
    fn correlated_trials_give_a_wider_interval_than_per_trial_wilson() {
        // 12 pairings of 20 trials, each pairing all or nothing: 9 connect.
        let clusters: Vec<(u64, u64)> = (0..12).map(|i| (if i < 9 { 20 } else { 0 }, 20)).collect();
        let ci = cluster_bootstrap(&clusters, &config(1000), "correlated").unwrap();
        let (w_low, w_high) = wilson(180, 240, Z_95).unwrap();
        assert!(
            ci.high - ci.low > 2.0 * (w_high - w_low),
            "{ci:?} vs [{w_low}, {w_high}]"
        );
        assert!(ci.low < w_low && ci.high >= w_high);
    }

    #[test]
    fn independent_trials_give_about_the_per_trial_wilson_interval() {
        // 200 pairings of 10 independent trials at p = 0.7, from a fixed stream.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let clusters: Vec<(u64, u64)> = (0..200)
            .map(|_| {
                let s = (0..10).filter(|_| rng.next_u32() % 10 < 7).count() as u64;
                (s, 10)
            })
            .collect();
        let successes: u64 = clusters.iter().map(|c| c.0).sum();
        let (w_low, w_high) = wilson(successes, 2000, Z_95).unwrap();
        let ci = cluster_bootstrap(&clusters, &config(2000), "independent").unwrap();
        let ratio = (ci.high - ci.low) / (w_high - w_low);
        assert!((0.95..1.2).contains(&ratio), "width ratio {ratio}");
        let deff = ci.design_effect.unwrap();
        assert!((0.75..1.3).contains(&deff), "design effect {deff}");
    }

    #[test]
    fn the_same_input_gives_the_same_interval_and_rows_their_own_stream() {
        let clusters: Vec<(u64, u64)> = (0..30).map(|i| (i % 7, 6 + i % 3)).collect();
        let a = cluster_bootstrap(&clusters, &config(500), "row").unwrap();
        let b = cluster_bootstrap(&clusters, &config(500), "row").unwrap();
        assert_eq!(a, b);
        let other = cluster_bootstrap(&clusters, &config(500), "another row").unwrap();
        assert_ne!(a.std_error, other.std_error);
    }

    #[test]
    fn clusters_that_all_agree_fall_back_to_clusters_as_trials() {
        // 0/60 in 3 pairings: no spread to resample; Wilson 0/3 says [0, 0.5615].
        let ci = cluster_bootstrap(&[(0, 20), (0, 20), (0, 20)], &config(200), "zero").unwrap();
        assert_eq!(ci.method, IntervalMethod::ClustersAsTrials);
        assert_eq!(ci.low, 0.0);
        assert!((ci.high - 0.5615).abs() < 0.0005, "{}", ci.high);
        // One pairing: the same.
        let one = cluster_bootstrap(&[(3, 6)], &config(200), "one").unwrap();
        assert_eq!(
            (one.clusters, one.method),
            (1, IntervalMethod::ClustersAsTrials)
        );
        assert!(one.low < 0.1 && one.high > 0.9);
        assert_eq!(cluster_bootstrap(&[], &config(200), "none"), None);
    }

    #[test]
    fn the_network_bootstrap_keeps_a_networks_pairings_together() {
        // 10 networks, each in two pairings with a reference peer (one sampled
        // side), every trial of a network alike: the network bootstrap is the
        // cluster bootstrap over networks, and wider than over pairings.
        let mut cells = Vec::new();
        let mut pairings = Vec::new();
        for net in 0..10u32 {
            let s = if net < 6 { 10 } else { 0 };
            cells.push(NetworkCell {
                a: Some(net),
                b: None,
                successes: 2 * s,
                n: 20,
            });
            pairings.push((s, 10));
            pairings.push((s, 10));
        }
        let by_network = network_bootstrap(10, &cells, &config(2000), "net").unwrap();
        let by_pairing = cluster_bootstrap(&pairings, &config(2000), "net").unwrap();
        let known = exact_bootstrap_se(&[
            (20, 20),
            (20, 20),
            (20, 20),
            (20, 20),
            (20, 20),
            (20, 20),
            (0, 20),
            (0, 20),
            (0, 20),
            (0, 20),
        ]);
        assert!((by_network.std_error.unwrap() / known - 1.0).abs() < 0.06);
        assert!(by_network.std_error.unwrap() > by_pairing.std_error.unwrap() * 1.3);
        assert_eq!(by_network.clusters, 10);

        // Pairings between two sampled networks weigh m(a) * m(b).
        let cells = [
            NetworkCell {
                a: Some(0),
                b: Some(1),
                successes: 5,
                n: 5,
            },
            NetworkCell {
                a: Some(2),
                b: Some(3),
                successes: 0,
                n: 5,
            },
        ];
        let ci = network_bootstrap(4, &cells, &config(500), "dyads").unwrap();
        assert!(ci.low < 0.2 && ci.high > 0.8, "{ci:?}");
    }

    #[test]
    fn paired_comparisons_see_a_difference_that_pooled_rates_hide() {
        // 20 pairings of very different quality; in each, A connects one more
        // time out of 10 than B. Across pairings the rates overlap widely;
        // within pairings A is better every time.
        let clusters: Vec<PairedCluster> = (0..20)
            .map(|i| {
                let base = (i % 9) as u64;
                PairedCluster {
                    a: (base + 1, 10),
                    b: (base, 10),
                }
            })
            .collect();
        let d = paired_difference(&clusters, &config(1000), "a vs b").unwrap();
        assert!((d.difference - 0.1).abs() < 1e-12);
        assert_eq!((d.a_better, d.b_better, d.ties), (20, 0, 0));
        // Every resample has the same difference: no spread at all.
        assert!((d.low.unwrap() - 0.1).abs() < 1e-9 && (d.high.unwrap() - 0.1).abs() < 1e-9);
        // Sign test: 20 of 20 -> p = 2 / 2^20.
        assert!((d.sign_test_p.unwrap() - 2.0f64.powi(-19)).abs() < 1e-15);
        // The per-trial Wilson intervals of the pooled rates overlap.
        let (sa, sb): (u64, u64) = (
            clusters.iter().map(|c| c.a.0).sum(),
            clusters.iter().map(|c| c.b.0).sum(),
        );
        let wa = wilson(sa, 200, Z_95).unwrap();
        let wb = wilson(sb, 200, Z_95).unwrap();
        assert!(wa.0 < wb.1, "pooled intervals overlap: {wa:?} {wb:?}");
    }

    #[test]
    fn the_sign_test_matches_the_binomial() {
        // 8 wins, 2 losses: 2 * (1 + 10 + 45) / 1024 = 0.109375.
        assert!((sign_test(8, 2).unwrap() - 0.109_375).abs() < 1e-12);
        assert_eq!(sign_test(5, 5), Some(1.0));
        assert_eq!(sign_test(0, 0), None);
        // Large n stays finite.
        let p = sign_test(30_000, 29_000).unwrap();
        assert!(p > 0.0 && p < 0.01, "{p}");
    }
}
