//! Hard-NAT strategies' shared vocabulary: the NAT-pair class both sides and the coordinator derive from the two verdicts, who does what under `predict` and `birthday`, their hard caps, and the birthday formula.
//!
//! One function ([`PairClass::of`]) decides the class from the two
//! classification verdicts, so the coordinator (which draws the strategy
//! mix) and each probe (whose guard checks the draw, and which then knows
//! its own move) can never disagree.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classify::{AllocationPattern, Finding, Verdict};
use crate::nat::Mapping;
use crate::plan::{Plan, PlanError};
use crate::trial::Strategy;

/// Most local ports (sockets, so NAT mappings) the opening side of a
/// `birthday` trial uses, whatever a plan says.
pub const MAX_BIRTHDAY_SOCKETS: u32 = 256;
/// Most peer ports the spraying side of a `birthday` trial sends SYNs to.
pub const MAX_BIRTHDAY_PORTS: u32 = 1024;
/// Fastest a `birthday` side may send SYNs (connect() calls), per second.
pub const MAX_BIRTHDAY_PPS: u32 = 500;
/// Most predicted ports the easy side of a `predict` trial aims at.
pub const MAX_PREDICT_WINDOW: u32 = 64;

/// What one side's NAT is, as far as the hard strategies care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideKind {
    /// No NAT, or endpoint-independent mapping: one public endpoint per local port.
    Easy,
    /// Address(-and-port)-dependent mapping with sequential allocation:
    /// the next mapping is `step` ports after the last.
    Sequential { step: i32 },
    /// Address(-and-port)-dependent mapping with random allocation.
    Random,
    /// Anything else (preserving hard NATs, unknown or ambiguous findings, no verdict).
    Unknown,
}

impl SideKind {
    /// The kind a verdict says; `None` (the side sent no verdict) is `Unknown`.
    pub fn of(verdict: Option<&Verdict>) -> SideKind {
        let Some(v) = verdict else {
            return SideKind::Unknown;
        };
        if v.no_nat {
            return SideKind::Easy;
        }
        match (&v.mapping, &v.allocation) {
            (
                Finding::Known {
                    value: Mapping::Eim,
                },
                _,
            ) => SideKind::Easy,
            (
                Finding::Known {
                    value: Mapping::Adm | Mapping::Apdm,
                },
                Finding::Known {
                    value: AllocationPattern::Sequential { step, .. },
                },
            ) if *step != 0 => SideKind::Sequential { step: *step },
            (
                Finding::Known {
                    value: Mapping::Adm | Mapping::Apdm,
                },
                Finding::Known {
                    value: AllocationPattern::Random,
                },
            ) => SideKind::Random,
            _ => SideKind::Unknown,
        }
    }
}

/// The class of a NAT pair, unordered: what the coordinator draws a
/// strategy mix for and the report groups rates by. `easy` is an
/// endpoint-independent mapping (or no NAT); `sequential` and `random` are
/// address(-and-port)-dependent mappings with that port allocation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PairClass {
    EasyEasy,
    EasySequential,
    EasyRandom,
    /// Both sides address(-and-port)-dependent (any allocation).
    HardHard,
    /// At least one side's kind is unknown.
    Unknown,
}

impl PairClass {
    pub const ALL: &'static [PairClass] = &[
        PairClass::EasyEasy,
        PairClass::EasySequential,
        PairClass::EasyRandom,
        PairClass::HardHard,
        PairClass::Unknown,
    ];

    /// The class of two sides' verdicts (in either order).
    pub fn of(a: Option<&Verdict>, b: Option<&Verdict>) -> PairClass {
        Self::of_kinds(SideKind::of(a), SideKind::of(b))
    }

    pub fn of_kinds(a: SideKind, b: SideKind) -> PairClass {
        use SideKind::*;
        match (a, b) {
            (Unknown, _) | (_, Unknown) => PairClass::Unknown,
            (Easy, Easy) => PairClass::EasyEasy,
            (Easy, Sequential { .. }) | (Sequential { .. }, Easy) => PairClass::EasySequential,
            (Easy, Random) | (Random, Easy) => PairClass::EasyRandom,
            _ => PairClass::HardHard,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PairClass::EasyEasy => "easy_easy",
            PairClass::EasySequential => "easy_sequential",
            PairClass::EasyRandom => "easy_random",
            PairClass::HardHard => "hard_hard",
            PairClass::Unknown => "unknown",
        }
    }

    /// The label a report shows ("APDM" stands for address- or
    /// address-and-port-dependent mapping).
    pub fn label(self) -> &'static str {
        match self {
            PairClass::EasyEasy => "EIM-EIM",
            PairClass::EasySequential => "EIM-APDM(sequential)",
            PairClass::EasyRandom => "EIM-APDM(random)",
            PairClass::HardHard => "APDM-APDM",
            PairClass::Unknown => "unknown",
        }
    }
}

impl fmt::Display for PairClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hard-NAT keys: where `predict` and `birthday` may be listed, and
/// the hard caps on sockets, ports and packets per second, which no plan
/// may exceed (probes hold a coordinator's plan to the same caps).
pub(crate) fn validate_plan(plan: &Plan) -> Result<(), PlanError> {
    let invalid = |field, problem: String| Err(PlanError::Invalid { field, problem });
    if let Some(s) = plan.strategies.iter().find(|s| s.is_hard_nat()) {
        return invalid(
            "strategies",
            format!(
                "`{}` needs a NAT-pair class: list it in class_strategies (predict under easy_sequential, birthday under easy_random)",
                s.as_str()
            ),
        );
    }
    for (class, list) in &plan.class_strategies {
        if list.is_empty() {
            return invalid(
                "class_strategies",
                format!("{class} must name at least one strategy"),
            );
        }
        for s in list {
            let fits = match s {
                Strategy::Predict => *class == PairClass::EasySequential,
                Strategy::Birthday => *class == PairClass::EasyRandom,
                _ => true,
            };
            if !fits {
                return invalid(
                    "class_strategies",
                    format!(
                        "{class} lists `{}`, which only works for {}",
                        s.as_str(),
                        if *s == Strategy::Predict {
                            "easy_sequential"
                        } else {
                            "easy_random"
                        }
                    ),
                );
            }
        }
    }
    let caps = [
        (
            "predict_window",
            plan.predict_window,
            MAX_PREDICT_WINDOW,
            "predicted ports per trial",
        ),
        (
            "birthday_sockets",
            plan.birthday_sockets,
            MAX_BIRTHDAY_SOCKETS,
            "sockets per trial",
        ),
        (
            "birthday_ports",
            plan.birthday_ports,
            MAX_BIRTHDAY_PORTS,
            "ports sprayed per trial",
        ),
        (
            "birthday_pps",
            plan.birthday_pps,
            MAX_BIRTHDAY_PPS,
            "SYNs per second",
        ),
    ];
    for (field, value, cap, what) in caps {
        if value == 0 || value > cap {
            return invalid(
                field,
                format!("{value} is refused: the hard cap is {cap} {what} (at least 1); lower it"),
            );
        }
    }
    let [first, last] = plan.birthday_port_range;
    if first == 0 || first > last {
        return invalid(
            "birthday_port_range",
            format!("[{first}, {last}] must be [first, last] with 1 <= first <= last"),
        );
    }
    if plan.birthday_ports > plan.birthday_range() {
        return invalid(
            "birthday_ports",
            format!(
                "{} ports cannot be drawn from a range of {}",
                plan.birthday_ports,
                plan.birthday_range()
            ),
        );
    }
    Ok(())
}

/// What this side does in a `predict` or `birthday` trial, from its own
/// kind and its peer's. `None`: the strategy does not apply to this pair
/// (the guard refuses such a trial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardRole {
    /// `predict`, easy side: aim at `window` ports after the peer's observed
    /// one, `step` apart.
    PredictAim { step: i32 },
    /// `predict`, sequential side: connect to the easy peer's one endpoint
    /// (the NAT gives it the predicted port).
    PredictHard,
    /// `birthday`, random side: open the plan's m connections to the easy peer.
    BirthdayOpen,
    /// `birthday`, easy side: SYNs to the plan's n random ports of the peer's address.
    BirthdaySpray,
}

impl HardRole {
    /// This side's move under `strategy` (`predict` or `birthday`).
    pub fn of(strategy: Strategy, own: SideKind, peer: SideKind) -> Option<HardRole> {
        match (strategy, own, peer) {
            (Strategy::Predict, SideKind::Easy, SideKind::Sequential { step }) => {
                Some(HardRole::PredictAim { step })
            }
            (Strategy::Predict, SideKind::Sequential { .. }, SideKind::Easy) => {
                Some(HardRole::PredictHard)
            }
            (Strategy::Birthday, SideKind::Easy, SideKind::Random) => Some(HardRole::BirthdaySpray),
            (Strategy::Birthday, SideKind::Random, SideKind::Easy) => Some(HardRole::BirthdayOpen),
            _ => None,
        }
    }
}

/// The ports a `predict` easy side aims at: `observed + k*step` for k in
/// 1..=window, within 1..=65535 (ports that would fall outside are skipped).
pub fn predicted_ports(observed: u16, step: i32, window: u32) -> Vec<u16> {
    (1..=i64::from(window))
        .map(|k| i64::from(observed) + k * i64::from(step))
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .collect()
}

/// The chance that a `birthday` trial has a hit: m distinct ports taken at
/// random by the NAT and n distinct ports sprayed, both uniformly from a
/// range of `range` ports: 1 - C(range-m, n) / C(range, n), which is about
/// 1 - exp(-m*n/range).
pub fn birthday_hit_probability(m: u32, n: u32, range: u32) -> f64 {
    if range == 0 || m == 0 || n == 0 {
        return 0.0;
    }
    if m + n > range {
        return 1.0;
    }
    // The product of (range-m-i)/(range-i) for i in 0..n, in logs for large n.
    let log_miss: f64 = (0..n)
        .map(|i| (f64::from(range - m - i) / f64::from(range - i)).ln())
        .sum();
    1.0 - log_miss.exp()
}

/// The approximation the issue states: 1 - exp(-m*n/range).
pub fn birthday_approximation(m: u32, n: u32, range: u32) -> f64 {
    if range == 0 {
        return 0.0;
    }
    1.0 - (-(f64::from(m) * f64::from(n)) / f64::from(range)).exp()
}

/// The central interval `[low, high]` of successes in `trials` Bernoulli
/// trials with probability `p` holding at least `1 - alpha` of the mass
/// (each tail at most `alpha / 2`): what a measured count is held to.
pub fn binomial_interval(p: f64, trials: u32, alpha: f64) -> (u32, u32) {
    let pmf: Vec<f64> = (0..=trials).map(|k| binomial_pmf(p, trials, k)).collect();
    let mut low = 0;
    let mut tail = 0.0;
    while low < trials && tail + pmf[low as usize] <= alpha / 2.0 {
        tail += pmf[low as usize];
        low += 1;
    }
    let mut high = trials;
    let mut tail = 0.0;
    while high > 0 && tail + pmf[high as usize] <= alpha / 2.0 {
        tail += pmf[high as usize];
        high -= 1;
    }
    (low, high)
}

fn binomial_pmf(p: f64, n: u32, k: u32) -> f64 {
    let ln_choose: f64 = (1..=k)
        .map(|i| (f64::from(n - k + i) / f64::from(i)).ln())
        .sum();
    let (p, q) = (p.clamp(0.0, 1.0), 1.0 - p.clamp(0.0, 1.0));
    let term = |x: f64, e: u32| if e == 0 { 0.0 } else { f64::from(e) * x.ln() };
    (ln_choose + term(p, k) + term(q, n - k)).exp()
}

/// What a `predict` or `birthday` trial did, for "attempts, ports tried and
/// packets sent per success". Counts only: no address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HardTrialRecord {
    /// This side's move: `predict_aim`, `predict_hard`, `birthday_open`, `birthday_spray`.
    pub role: String,
    /// `predict`: the window of predicted ports the easy side aims at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// `birthday`: the opening side's connections (m) and the sprayed ports (n).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `birthday`: the size of the port range sprayed (the formula's `range`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<u32>,
    /// Distinct peer ports this side sent SYNs to.
    pub ports_tried: u32,
    /// connect() calls this side made (each sends one SYN).
    pub connects: u32,
    /// SYNs sent: connect() calls plus the kernel's retransmissions (TCP_INFO), where readable.
    pub syns_sent: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_birthday_probability_is_close_to_the_approximation() {
        let exact = birthday_hit_probability(64, 256, 64512);
        let approx = birthday_approximation(64, 256, 64512);
        assert!((exact - approx).abs() < 0.01, "{exact} {approx}");
        assert!((0.2..0.25).contains(&exact), "{exact}");
        // One port each out of two: a hit half the time.
        assert!((birthday_hit_probability(1, 1, 2) - 0.5).abs() < 1e-12);
        assert_eq!(birthday_hit_probability(200, 100, 256), 1.0);
        assert_eq!(birthday_hit_probability(0, 100, 256), 0.0);
    }

    #[test]
    fn binomial_intervals_hold_the_mass_they_promise() {
        let (low, high) = binomial_interval(0.5, 20, 0.01);
        assert!(
            low <= 10 && high >= 10 && low >= 2 && high <= 18,
            "{low} {high}"
        );
        let (low, high) = binomial_interval(0.0, 10, 0.01);
        assert_eq!((low, high), (0, 0));
        let (low, high) = binomial_interval(1.0, 10, 0.01);
        assert_eq!((low, high), (10, 10));
        let total: f64 = (0..=30).map(|k| binomial_pmf(0.3, 30, k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn predicted_ports_follow_the_step_and_stay_in_range() {
        assert_eq!(predicted_ports(20000, 1, 3), vec![20001, 20002, 20003]);
        assert_eq!(predicted_ports(20000, -2, 2), vec![19998, 19996]);
        assert_eq!(predicted_ports(65534, 1, 3), vec![65535]);
    }

    #[test]
    fn roles_need_exactly_one_easy_side_of_the_right_kind() {
        let seq = SideKind::Sequential { step: 1 };
        assert_eq!(
            HardRole::of(Strategy::Predict, SideKind::Easy, seq),
            Some(HardRole::PredictAim { step: 1 })
        );
        assert_eq!(
            HardRole::of(Strategy::Predict, seq, SideKind::Easy),
            Some(HardRole::PredictHard)
        );
        assert_eq!(HardRole::of(Strategy::Predict, seq, seq), None);
        assert_eq!(
            HardRole::of(Strategy::Birthday, SideKind::Random, SideKind::Easy),
            Some(HardRole::BirthdayOpen)
        );
        assert_eq!(
            HardRole::of(Strategy::Birthday, SideKind::Easy, SideKind::Random),
            Some(HardRole::BirthdaySpray)
        );
        assert_eq!(
            HardRole::of(Strategy::Birthday, SideKind::Easy, SideKind::Easy),
            None
        );
        assert_eq!(
            PairClass::of_kinds(SideKind::Random, SideKind::Easy),
            PairClass::EasyRandom
        );
        assert_eq!(
            PairClass::of_kinds(seq, SideKind::Random),
            PairClass::HardHard
        );
        assert_eq!(PairClass::of(None, None), PairClass::Unknown);
    }

    #[test]
    fn hard_nat_plans_are_held_to_the_caps_and_to_their_classes() {
        let ok = "version = 1\nname = \"t\"\nclass_strategies = { easy_random = [\"simultaneous\", \"birthday\"], easy_sequential = [\"predict\"] }\nbirthday_sockets = 64\nbirthday_ports = 256\n";
        let plan = Plan::from_toml(ok).unwrap();
        assert_eq!(
            plan.mix_for(PairClass::EasyRandom),
            Some(&[Strategy::Simultaneous, Strategy::Birthday][..])
        );
        assert_eq!(plan.mix_for(PairClass::EasyEasy), None);
        assert_eq!(plan.birthday_range(), 64512);
        let e =
            Plan::from_toml("version = 1\nname = \"t\"\nbirthday_sockets = 10000\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "plan field `birthday_sockets`: 10000 is refused: the hard cap is 256 sockets per trial (at least 1); lower it"
        );
        let e = Plan::from_toml("version = 1\nname = \"t\"\nbirthday_pps = 5000\n").unwrap_err();
        assert!(e.to_string().contains("SYNs per second"), "{e}");
        let e = Plan::from_toml("version = 1\nname = \"t\"\nbirthday_ports = 2000\n").unwrap_err();
        assert!(e.to_string().contains("birthday_ports"), "{e}");
        let e = Plan::from_toml("version = 1\nname = \"t\"\nstrategies = [\"birthday\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("class_strategies"), "{e}");
        let e = Plan::from_toml(
            "version = 1\nname = \"t\"\nclass_strategies = { easy_easy = [\"predict\"] }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("easy_sequential"), "{e}");
        let e = Plan::from_toml(
            "version = 1\nname = \"t\"\nbirthday_ports = 100\nbirthday_port_range = [20000, 20049]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("range of 50"), "{e}");
    }
}
