//! The IPv6 breakdown: what dual-stack volunteers' runs found over IPv6 (`classification_v6`).

use serde::{Deserialize, Serialize};

use super::stats::Proportion;
use crate::classify::{Ipv6Translation, Ipv6Verdict};
use crate::result::RunResult;

/// Volunteers' IPv6 classifications as they are read.
#[derive(Debug, Clone, Default)]
pub struct Ipv6Tally {
    runs: u64,
    ipv6_only: u64,
    missing: u64,
    translated: u64,
    translation_known: u64,
    admitted: u64,
    admission_known: u64,
    kinds: TranslationKinds,
}

impl Ipv6Tally {
    /// Counts a volunteer's run (the caller leaves reference peers out, as
    /// for the IPv4 classification).
    pub fn add(&mut self, run: &RunResult) {
        if run.classification_v6_missing.is_some() {
            self.missing += 1;
        }
        if let Some(classification) = &run.classification_v6 {
            self.count(classification.verdict.ipv6.as_ref());
        } else if let Some(reading) = ipv6_only(run) {
            // An IPv6-only run: its one classification is the IPv6 one.
            self.ipv6_only += 1;
            self.count(Some(reading));
        }
    }

    /// Counts one IPv6 classification's reading (`None`: it has none).
    fn count(&mut self, reading: Option<&Ipv6Verdict>) {
        self.runs += 1;
        if let Some(translated) = reading.and_then(|r| r.translated) {
            self.translation_known += 1;
            self.translated += u64::from(translated);
        }
        match reading.and_then(|r| r.translation) {
            Some(Ipv6Translation::Untranslated) => self.kinds.none += 1,
            Some(Ipv6Translation::Nptv6) => self.kinds.nptv6 += 1,
            Some(Ipv6Translation::Nat66) => self.kinds.nat66 += 1,
            // Results from before the kind was named: only `translated` counts them.
            None => {}
        }
        if let Some(admitted) = reading.and_then(|r| r.unsolicited_admitted) {
            self.admission_known += 1;
            self.admitted += u64::from(admitted);
        }
    }

    pub fn summary(&self) -> Ipv6Summary {
        Ipv6Summary {
            runs: self.runs,
            ipv6_only: self.ipv6_only,
            missing: self.missing,
            translated: Proportion::new(self.translated, self.translation_known),
            unsolicited_admitted: Proportion::new(self.admitted, self.admission_known),
            translation_kinds: self.kinds,
        }
    }
}

/// The IPv6 reading of a run whose one classification was made over IPv6
/// (an IPv6-only host: no IPv4 classification beside it).
pub fn ipv6_only(run: &RunResult) -> Option<&Ipv6Verdict> {
    if run.classification_v6.is_some() {
        return None;
    }
    run.classification.verdict.ipv6.as_ref()
}

/// Runs by the translation kind their classification named (`none`,
/// `nptv6`, `nat66`); runs from before the kind was recorded are in none
/// of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslationKinds {
    pub none: u64,
    pub nptv6: u64,
    pub nat66: u64,
}

impl TranslationKinds {
    /// Runs whose kind is known.
    pub fn known(&self) -> u64 {
        self.none + self.nptv6 + self.nat66
    }
}

/// What volunteers' dual-stack runs found over IPv6, one count per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ipv6Summary {
    /// Volunteer runs with an IPv6 classification.
    pub runs: u64,
    /// Of `runs`, those that had IPv6 only (their one classification is an
    /// IPv6 one; absent in older summaries: 0).
    #[serde(default)]
    pub ipv6_only: u64,
    /// Dual-stack runs whose IPv6 classification failed (no route, no
    /// answer: `classification_v6_missing`); not in `runs`.
    pub missing: u64,
    /// Runs whose IPv6 addresses were translated (NPTv6 or NAT66), of the
    /// runs where that was measured; the rest are untranslated.
    pub translated: Proportion,
    /// Runs where a connection nobody inside opened got in, of the runs
    /// where that was measured; the rest turned it away.
    pub unsolicited_admitted: Proportion,
    /// The translated runs split by kind (absent in older summaries: zeros).
    #[serde(default)]
    pub translation_kinds: TranslationKinds,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translated_runs_are_split_by_the_kind_they_named_and_older_ones_by_none() {
        let reading = |translated, translation| Ipv6Verdict {
            translated,
            translation,
            unsolicited_admitted: Some(false),
        };
        let mut tally = Ipv6Tally::default();
        for r in [
            reading(Some(false), Some(Ipv6Translation::Untranslated)),
            reading(Some(true), Some(Ipv6Translation::Nptv6)),
            reading(Some(true), Some(Ipv6Translation::Nptv6)),
            reading(Some(true), Some(Ipv6Translation::Nat66)),
            // From before the kind was recorded.
            reading(Some(true), None),
        ] {
            tally.count(Some(&r));
        }
        let summary = tally.summary();
        assert_eq!(summary.runs, 5);
        assert_eq!((summary.translated.successes, summary.translated.n), (4, 5));
        assert_eq!(
            summary.translation_kinds,
            TranslationKinds {
                none: 1,
                nptv6: 2,
                nat66: 1
            }
        );
        assert_eq!(summary.translation_kinds.known(), 4);
        // An older summary.json without the kinds still reads, as zeros.
        let mut json = serde_json::to_value(&summary).unwrap();
        json.as_object_mut().unwrap().remove("translation_kinds");
        let older: Ipv6Summary = serde_json::from_value(json).unwrap();
        assert_eq!(older.translation_kinds, TranslationKinds::default());
    }
}
