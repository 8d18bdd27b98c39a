//! The IPv6 breakdown: what dual-stack volunteers' runs found over IPv6 (`classification_v6`).

use serde::{Deserialize, Serialize};

use super::stats::Proportion;
use crate::result::RunResult;

/// Volunteers' IPv6 classifications as they are read.
#[derive(Debug, Clone, Default)]
pub struct Ipv6Tally {
    runs: u64,
    missing: u64,
    translated: u64,
    translation_known: u64,
    admitted: u64,
    admission_known: u64,
}

impl Ipv6Tally {
    /// Counts a volunteer's run (the caller leaves reference peers out, as
    /// for the IPv4 classification).
    pub fn add(&mut self, run: &RunResult) {
        if run.classification_v6_missing.is_some() {
            self.missing += 1;
        }
        let Some(classification) = &run.classification_v6 else {
            return;
        };
        self.runs += 1;
        let reading = classification.verdict.ipv6.as_ref();
        if let Some(translated) = reading.and_then(|r| r.translated) {
            self.translation_known += 1;
            self.translated += u64::from(translated);
        }
        if let Some(admitted) = reading.and_then(|r| r.unsolicited_admitted) {
            self.admission_known += 1;
            self.admitted += u64::from(admitted);
        }
    }

    pub fn summary(&self) -> Ipv6Summary {
        Ipv6Summary {
            runs: self.runs,
            missing: self.missing,
            translated: Proportion::new(self.translated, self.translation_known),
            unsolicited_admitted: Proportion::new(self.admitted, self.admission_known),
        }
    }
}

/// What volunteers' dual-stack runs found over IPv6, one count per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ipv6Summary {
    /// Volunteer runs with an IPv6 classification.
    pub runs: u64,
    /// Dual-stack runs whose IPv6 classification failed (no route, no
    /// answer: `classification_v6_missing`); not in `runs`.
    pub missing: u64,
    /// Runs whose IPv6 addresses were translated (NPTv6 or NAT66), of the
    /// runs where that was measured; the rest are untranslated.
    pub translated: Proportion,
    /// Runs where a connection nobody inside opened got in, of the runs
    /// where that was measured; the rest turned it away.
    pub unsolicited_admitted: Proportion,
}

impl Default for Ipv6Summary {
    fn default() -> Self {
        Ipv6Tally::default().summary()
    }
}

impl Ipv6Summary {
    /// No run asked about IPv6: the report leaves the breakdown out.
    pub fn is_empty(&self) -> bool {
        self.runs == 0 && self.missing == 0
    }
}
