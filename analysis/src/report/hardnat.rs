//! Success by strategy within each NAT-pair class, with Wilson intervals, and what `predict` and `birthday` cost per success.
//!
//! Rows are grouped by (pair class, allocation, arm): the allocation says
//! whether the strategy was drawn at random from a class's mix (and which)
//! or came from the plan's rotation, so rates from different designs are
//! never pooled; the arm names a hard-NAT strategy with its parameters
//! ("birthday(m=64, n=256)"), since success depends on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::aggregate::{mix_strategies, CountedTrial};
use super::stats::{percent, percent_bare, Proportion};
use crate::hardnat::PairClass;
use crate::trial::Strategy;

/// One arm within one NAT-pair class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardNatRow {
    /// `easy_random`, ...
    pub class: String,
    /// "EIM-APDM(random)", ...
    pub class_label: String,
    /// "mix of simultaneous, birthday" (drawn at random per trial) or "rotation".
    pub allocation: String,
    pub strategy: String,
    /// The strategy with its parameters: "birthday(m=64, n=256)", "predict(window=8)", "simultaneous".
    pub arm: String,
    pub proportion: Proportion,
    /// `predict` and `birthday`: totals over both sides of every trial of the arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<HardCost>,
}

/// What a hard-NAT arm spent: totals, and per success (`None` without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HardCost {
    /// connect() calls (attempts), over both sides.
    pub attempts: u64,
    pub ports_tried: u64,
    pub syns_sent: u64,
    pub attempts_per_success: Option<f64>,
    pub ports_per_success: Option<f64>,
    pub syns_per_success: Option<f64>,
}

/// The rows, when any trial carries a recorded class (its plan had mixes)
/// or ran a hard-NAT strategy; empty otherwise, so older reports stay as they were.
/// Takes any iterator of trials (it walks it twice), so that one family's
/// trials can be passed without copying them.
pub fn rows<'a, I>(trials: I) -> Vec<HardNatRow>
where
    I: IntoIterator<Item = &'a CountedTrial>,
    I::IntoIter: Clone,
{
    let trials = trials.into_iter();
    if !trials
        .clone()
        .any(|t| t.class_recorded || t.strategy.is_hard_nat())
    {
        return Vec::new();
    }
    #[derive(Default)]
    struct Sums {
        ok: u64,
        n: u64,
        hard: Option<(u64, u64, u64)>,
    }
    let mut groups: BTreeMap<(PairClass, Option<u8>, usize, String), Sums> = BTreeMap::new();
    for t in trials {
        let index = Strategy::ALL
            .iter()
            .position(|s| *s == t.strategy)
            .unwrap_or(0);
        let sums = groups
            .entry((t.pair_class, t.mix, index, arm(t)))
            .or_default();
        sums.n += 1;
        sums.ok += u64::from(t.success);
        if let Some(h) = t.hard {
            let (a, p, s) = sums.hard.unwrap_or_default();
            sums.hard = Some((
                a + u64::from(h.connects),
                p + u64::from(h.ports_tried),
                s + u64::from(h.syns_sent),
            ));
        }
    }
    groups
        .into_iter()
        .map(|((class, mix, index, arm), sums)| {
            let per = |total: u64| (sums.ok > 0).then(|| total as f64 / sums.ok as f64);
            HardNatRow {
                class: class.as_str().to_string(),
                class_label: class.label().to_string(),
                allocation: match mix {
                    Some(bits) => format!(
                        "mix of {}",
                        mix_strategies(bits)
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => "rotation".to_string(),
                },
                strategy: Strategy::ALL[index].as_str().to_string(),
                arm,
                proportion: Proportion::new(sums.ok, sums.n),
                cost: sums.hard.map(|(attempts, ports, syns)| HardCost {
                    attempts,
                    ports_tried: ports,
                    syns_sent: syns,
                    attempts_per_success: per(attempts),
                    ports_per_success: per(ports),
                    syns_per_success: per(syns),
                }),
            }
        })
        .collect()
}

/// The strategy with the parameters its success depends on.
fn arm(t: &CountedTrial) -> String {
    let unknown = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
    match (t.strategy, t.hard) {
        (Strategy::Predict, Some(h)) => format!("predict(window={})", unknown(h.window)),
        (Strategy::Birthday, Some(h)) => {
            format!("birthday(m={}, n={})", unknown(h.m), unknown(h.n))
        }
        (s, _) => s.as_str().to_string(),
    }
}

/// One line per class, its arms side by side:
/// "EIM-APDM(random) [mix of simultaneous, birthday]: simultaneous 0.0% (0.0-16.1%, n=20), birthday(m=64, n=256) 24.0% (...)".
pub fn lines(rows: &[HardNatRow]) -> Vec<String> {
    let mut by_class: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for row in rows {
        let p = &row.proportion;
        let rate = match (p.rate, p.low, p.high) {
            (Some(r), Some(l), Some(h)) => {
                format!(
                    "{} ({}-{}%, n={})",
                    percent(r),
                    percent_bare(l),
                    percent_bare(h),
                    p.n
                )
            }
            _ => format!("no trials (n={})", p.n),
        };
        by_class
            .entry((&row.class_label, &row.allocation))
            .or_default()
            .push(format!("{} {rate}", row.arm));
    }
    by_class
        .into_iter()
        .map(|((class, allocation), arms)| format!("{class} [{allocation}]: {}", arms.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::aggregate::HardCounts;
    use crate::trial::TrialOutcome;

    fn trial(strategy: Strategy, success: bool, hard: Option<HardCounts>) -> CountedTrial {
        CountedTrial {
            trial_id: None,
            strategy,
            sides: 2,
            initiator_nat: Default::default(),
            responder_nat: Default::default(),
            outcome: if success {
                TrialOutcome::Connected
            } else {
                TrialOutcome::Timeout
            },
            success,
            go_to_established_ms: None,
            attempts: 1,
            handshake_transport: None,
            handshake_success: None,
            node_handshake_transport: None,
            node_handshake_success: None,
            cgnat: None,
            pairing: 0,
            initiator_run: None,
            responder_run: None,
            pair_class: PairClass::EasyRandom,
            class_recorded: true,
            mix: Some(0b1_0001),
            hard,
            family: Some(crate::trial::Family::Ipv4),
        }
    }

    #[test]
    fn arms_are_counted_within_their_class_with_costs_per_success() {
        let birthday = HardCounts {
            window: None,
            m: Some(64),
            n: Some(256),
            ports_tried: 257,
            connects: 320,
            syns_sent: 400,
        };
        let mut trials: Vec<CountedTrial> = (0..20)
            .map(|_| trial(Strategy::Simultaneous, false, None))
            .collect();
        trials.extend((0..25).map(|i| trial(Strategy::Birthday, i < 6, Some(birthday))));
        let rows = rows(&trials);
        assert_eq!(rows.len(), 2);
        let b = rows.iter().find(|r| r.strategy == "birthday").unwrap();
        assert_eq!(b.arm, "birthday(m=64, n=256)");
        assert_eq!(b.allocation, "mix of simultaneous, birthday");
        assert_eq!((b.proportion.successes, b.proportion.n), (6, 25));
        let cost = b.cost.as_ref().unwrap();
        assert_eq!(cost.syns_sent, 25 * 400);
        assert_eq!(cost.syns_per_success, Some(25.0 * 400.0 / 6.0));
        let s = rows.iter().find(|r| r.strategy == "simultaneous").unwrap();
        assert_eq!((s.proportion.successes, s.cost.is_none()), (0, true));
        let lines = lines(&rows);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("EIM-APDM(random) [mix of simultaneous, birthday]: ")
                && lines[0].contains("simultaneous 0.0% (0.0-")
                && lines[0].contains("birthday(m=64, n=256) 24.0% ("),
            "{}",
            lines[0]
        );
        // Reports of plans without mixes or hard strategies have no such rows.
        let plain: Vec<CountedTrial> = (0..3)
            .map(|_| CountedTrial {
                class_recorded: false,
                mix: None,
                ..trial(Strategy::Simultaneous, true, None)
            })
            .collect();
        assert!(super::rows(&plain).is_empty());
    }
}
