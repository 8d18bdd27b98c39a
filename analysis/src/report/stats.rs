//! Proportions with Wilson score 95% intervals, and the small order statistics the report needs.
//!
//! The Wilson score interval (Wilson 1927) is used instead of the normal
//! approximation because it stays inside [0, 1] and behaves at 0/n and n/n,
//! which is common in small NAT-pair cells.

use serde::{Deserialize, Serialize};

use super::cluster::Clustered;

/// The 0.975 quantile of the standard normal distribution (two-sided 95%).
pub const Z_95: f64 = 1.959_963_984_540_054;

/// A Wilson score interval for `successes` out of `n`, at confidence `z`.
/// `None` when `n` is 0 (no data: there is no rate to bound).
pub fn wilson(successes: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || successes > n {
        return None;
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let center = (p + z2 / (2.0 * n_f)) / denom;
    let half = z / denom * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    // At 0/n and n/n the bounds are exactly 0 and 1; the formula can miss by
    // one rounding step.
    let low = if successes == 0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let high = if successes == n {
        1.0
    } else {
        (center + half).min(1.0)
    };
    Some((low, high))
}

/// The Wilson score interval of a rate observed over an effective number
/// of independent trials (which need not be whole): used with the number of
/// clusters when only the clusters can be taken as independent.
pub fn wilson_effective(rate: f64, n_effective: f64, z: f64) -> (f64, f64) {
    let p = rate.clamp(0.0, 1.0);
    let n = n_effective.max(f64::MIN_POSITIVE);
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let low = if p == 0.0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let high = if p == 1.0 {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (low, high)
}

/// Successes out of a count, with the rate and its Wilson 95% interval.
/// `rate`, `low` and `high` are absent when `n` is 0, never NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub successes: u64,
    pub n: u64,
    pub rate: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// The intervals that respect clustering (pairings, networks); absent
    /// where none was computed (n = 0, or a count that is not a rate of trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clustered: Option<Clustered>,
}

impl Proportion {
    pub fn new(successes: u64, n: u64) -> Self {
        let interval = wilson(successes, n, Z_95);
        Proportion {
            successes,
            n,
            rate: (n > 0).then(|| successes as f64 / n as f64),
            low: interval.map(|i| i.0),
            high: interval.map(|i| i.1),
            clustered: None,
        }
    }

    /// The same proportion with its clustered intervals.
    pub fn with_clustered(mut self, clustered: Option<Clustered>) -> Self {
        self.clustered = clustered;
        self
    }

    /// The interval to quote: clustered by pairing when computed, else the
    /// per-trial Wilson interval; with its name.
    pub fn quoted(&self) -> Option<(f64, f64, &'static str)> {
        match self.clustered {
            Some(Clustered { pairings: c, .. }) => Some((c.low, c.high, "pairings")),
            None => Some((self.low?, self.high?, "per trial")),
        }
    }

    /// "64.3% [58.6, 69.7] (184/286)", or "no data (0 trials)".
    pub fn describe(&self) -> String {
        match (self.rate, self.low, self.high) {
            (Some(r), Some(l), Some(h)) => format!(
                "{} [{}, {}] ({}/{})",
                percent(r),
                percent_bare(l),
                percent_bare(h),
                self.successes,
                self.n
            ),
            _ => "no data (n = 0)".to_string(),
        }
    }
}

/// 0.6434 -> "64.3%".
pub fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// 0.6434 -> "64.3".
pub fn percent_bare(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

/// The `q` quantile (0..=1) of sorted values by the nearest-rank method:
/// the smallest value with at least `q` of the values at or below it.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wilson_matches_published_values() {
        // Ford et al. 184/286: Wilson 95% is [0.5863, 0.6967] (worked by hand
        // from the formula; the issue quotes [0.586, 0.696] approximately).
        let (l, h) = wilson(184, 286, Z_95).unwrap();
        assert!(close(l, 0.5863, 0.0005), "{l}");
        assert!(close(h, 0.6967, 0.0005), "{h}");
        // 0/10: lower bound 0, upper z^2/(n+z^2) = 3.8415/13.8415 = 0.2775.
        let (l, h) = wilson(0, 10, Z_95).unwrap();
        assert_eq!(l, 0.0);
        assert!(close(h, 0.2775, 0.0005), "{h}");
        // 10/10: the mirror image.
        let (l, h) = wilson(10, 10, Z_95).unwrap();
        assert!(close(l, 0.7225, 0.0005), "{l}");
        assert_eq!(h, 1.0);
        // 1/2: symmetric around 0.5: [0.0945, 0.9055].
        let (l, h) = wilson(1, 2, Z_95).unwrap();
        assert!(close(l, 0.0945, 0.0005) && close(h, 0.9055, 0.0005));
        assert!(close(l + h, 1.0, 1e-12));
    }

    #[test]
    fn wilson_has_no_interval_without_data() {
        assert_eq!(wilson(0, 0, Z_95), None);
        assert_eq!(wilson(3, 2, Z_95), None);
        let p = Proportion::new(0, 0);
        assert_eq!((p.rate, p.low, p.high), (None, None, None));
        assert_eq!(p.describe(), "no data (n = 0)");
    }

    #[test]
    fn proportions_describe_themselves() {
        let p = Proportion::new(184, 286);
        assert_eq!(p.describe(), "64.3% [58.6, 69.7] (184/286)");
        assert!(close(p.rate.unwrap(), 184.0 / 286.0, 1e-15));
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile_sorted(&v, 0.5), Some(20.0));
        assert_eq!(quantile_sorted(&v, 0.51), Some(30.0));
        assert_eq!(quantile_sorted(&v, 0.0), Some(10.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(40.0));
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }
}
