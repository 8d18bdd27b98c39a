//! Published hole-punching figures shown beside ours, read at build time from `datasets/reference.json`.

use serde::{Deserialize, Serialize};

use super::stats::Proportion;

/// The committed file, compiled in.
pub const REFERENCE_JSON: &str = include_str!("../../../datasets/reference.json");

/// One published figure with its citation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceFigure {
    pub id: String,
    pub label: String,
    /// A few words for chart axes.
    pub short_label: String,
    /// The published success rate, 0..1.
    pub rate: f64,
    /// Counts, when the source gives them (then a Wilson interval is computed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// A published +/- spread, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plus_minus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_share: Option<f64>,
    pub interval_note: String,
    /// What the figure measures, which is never exactly a punchscope trial.
    pub measures: String,
    pub citation: String,
    pub url: String,
    /// How the figure was checked against its source.
    pub checked: String,
}

impl ReferenceFigure {
    /// The Wilson interval from the published counts, if there are counts.
    pub fn proportion(&self) -> Option<Proportion> {
        Some(Proportion::new(self.successes?, self.total?))
    }

    /// The range to draw: Wilson from counts, else rate +/- the published spread.
    pub fn range(&self) -> Option<(f64, f64)> {
        if let Some(p) = self.proportion() {
            return Some((p.low?, p.high?));
        }
        self.plus_minus
            .map(|d| ((self.rate - d).max(0.0), (self.rate + d).min(1.0)))
    }
}

#[derive(Deserialize)]
struct ReferenceFile {
    figures: Vec<ReferenceFigure>,
}

/// The reference figures compiled into this build.
pub fn reference_figures() -> Vec<ReferenceFigure> {
    serde_json::from_str::<ReferenceFile>(REFERENCE_JSON)
        .expect("datasets/reference.json is valid (checked by a unit test)")
        .figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_figures_load_and_agree_with_their_counts() {
        let figures = reference_figures();
        assert_eq!(figures.len(), 3);
        let ford = figures.iter().find(|f| f.id == "ford2005").unwrap();
        assert_eq!((ford.successes, ford.total), (Some(184), Some(286)));
        assert!((ford.rate - 184.0 / 286.0).abs() < 0.001);
        let (l, h) = ford.range().unwrap();
        assert!((l - 0.586).abs() < 0.001 && (h - 0.697).abs() < 0.001);
        let libp2p = figures.iter().find(|f| f.id == "trautwein2025").unwrap();
        let (l, h) = libp2p.range().unwrap();
        assert!((l - 0.629).abs() < 1e-9 && (h - 0.771).abs() < 1e-9);
        for f in &figures {
            assert!(f.rate > 0.0 && f.rate < 1.0, "{}", f.id);
            assert!(f.url.starts_with("https://"), "{}", f.id);
            assert!(!f.citation.is_empty() && !f.measures.is_empty());
        }
    }
}
