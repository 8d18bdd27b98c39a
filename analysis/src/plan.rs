//! Probe plans: what a pairing measures (TOML under probes/), handed out by the coordinator.
//!
//! One type, two readings. A plan *file* is typed by a person, so
//! [`Plan::from_toml`] refuses a key it does not know and names its line (a
//! typo must not silently fall back to a default). A plan that another
//! punchscope wrote (inside the coordinator's `paired` message, inside every
//! result) is read with plain serde, which ignores unknown keys, so a newer
//! coordinator or result can add plan fields without breaking older readers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::handshake::{BitcoinNetwork, Transport};
use std::collections::BTreeMap;

use crate::hardnat::PairClass;
use crate::trial::{Family, Strategy};

/// The plan format version this code reads.
pub const PLAN_VERSION: u32 = 1;

/// What a pairing runs. Researchers change campaigns by changing plans, not probes.
///
/// Deserializing ignores unknown fields (see the module documentation);
/// plan files go through [`Plan::from_toml`], which does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// Must be [`PLAN_VERSION`].
    pub version: u32,
    /// A name for reports, e.g. "default".
    pub name: String,
    /// Trials per pairing.
    #[serde(default = "defaults::trials")]
    pub trials: u32,
    /// Strategies used in turn, trial by trial.
    #[serde(default = "defaults::strategies")]
    pub strategies: Vec<Strategy>,
    /// IP families the trials run in (`ipv4`, `ipv6`): a randomised factor.
    /// The coordinator draws each trial's family in shuffled rounds from the
    /// families both sides of a pairing have (a round holds each family
    /// once), one series of rounds per strategy, so each strategy of a
    /// pairing runs its families equally often and in random order; a pair
    /// sharing none of them is not paired.
    #[serde(default = "defaults::families")]
    pub families: Vec<Family>,
    /// Bitcoin transports used in turn over punched sockets (v1, v2, v1, ...).
    #[serde(default = "defaults::transports")]
    pub transports: Vec<Transport>,
    #[serde(default)]
    pub network: BitcoinNetwork,
    /// How long one connect() attempt may wait.
    #[serde(default = "defaults::attempt_timeout_ms")]
    pub attempt_timeout_ms: u32,
    /// Attempts per trial at most (a refused or timed-out connect is retried).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Fixed gap before a retry.
    #[serde(default = "defaults::retry_gap_ms")]
    pub retry_gap_ms: u32,
    /// A uniform random 0..=this added to each retry gap (fixed gaps repeat losing patterns).
    #[serde(default = "defaults::retry_jitter_ms")]
    pub retry_jitter_ms: u32,
    /// TTL of the `low_ttl` strategy's opening SYN.
    #[serde(default = "defaults::low_ttl")]
    pub low_ttl: u8,
    /// RTT samples the coordinator takes per side before each `go`.
    #[serde(default = "defaults::rtt_samples")]
    pub rtt_samples: u32,
    /// Extra start delay given to the responder (skew experiments); 0 normally.
    #[serde(default)]
    pub injected_skew_ms: u32,
    /// Deadline for each step of the Bitcoin handshake.
    #[serde(default = "defaults::handshake_step_ms")]
    pub handshake_step_ms: u32,
    /// Strategy mixes per NAT-pair class (`easy_easy`, `easy_sequential`,
    /// `easy_random`, `hard_hard`, `unknown`): a pair whose class is listed
    /// gets each trial's strategy drawn at random from its list (shuffled
    /// rounds, so each strategy runs equally often); other pairs take
    /// `strategies` in turn. `predict` may only be listed for
    /// `easy_sequential`, `birthday` only for `easy_random`.
    #[serde(default)]
    pub class_strategies: BTreeMap<PairClass, Vec<Strategy>>,
    /// `predict`: how many predicted ports (after the hard side's observed
    /// one, its allocation step apart) the easy side aims at.
    #[serde(default = "defaults::predict_window")]
    pub predict_window: u32,
    /// `birthday`: connections (so NAT mappings) the random side opens (m).
    #[serde(default = "defaults::birthday_sockets")]
    pub birthday_sockets: u32,
    /// `birthday`: random ports of the hard side's address the easy side sends SYNs to (n).
    #[serde(default = "defaults::birthday_ports")]
    pub birthday_ports: u32,
    /// `birthday`: first and last port the easy side draws from (the
    /// formula's range is their span).
    #[serde(default = "defaults::birthday_port_range")]
    pub birthday_port_range: [u16; 2],
    /// `birthday`: SYNs (connect() calls) per second each side sends at most.
    #[serde(default = "defaults::birthday_pps")]
    pub birthday_pps: u32,
    /// RTT-driven attempts: each attempt of a coordinated trial waits this
    /// many pair RTTs (see [`AttemptTiming`]), within
    /// `attempt_timeout_floor_ms`..=`attempt_timeout_cap_ms`. Absent (older
    /// plans): every attempt waits `attempt_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_rtt_factor: Option<f64>,
    /// Shortest RTT-driven attempt timeout: at LAN-like RTTs scheduling, not the path, sets the pace.
    #[serde(default = "defaults::attempt_timeout_floor_ms")]
    pub attempt_timeout_floor_ms: u32,
    /// Longest RTT-driven attempt timeout, whatever RTT was measured.
    #[serde(default = "defaults::attempt_timeout_cap_ms")]
    pub attempt_timeout_cap_ms: u32,
    /// RTT-driven retries: the fixed gap before a retry is this many pair
    /// RTTs, within `retry_gap_floor_ms`..=`retry_gap_cap_ms`. Absent: `retry_gap_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_gap_rtt_factor: Option<f64>,
    /// Shortest RTT-driven retry gap.
    #[serde(default = "defaults::retry_gap_floor_ms")]
    pub retry_gap_floor_ms: u32,
    /// Longest RTT-driven retry gap.
    #[serde(default = "defaults::retry_gap_cap_ms")]
    pub retry_gap_cap_ms: u32,
    /// RTT-driven jitter: the random part added to each retry gap is
    /// 0..=this many pair RTTs, at most `retry_jitter_ms` (then the cap).
    /// Absent: 0..=`retry_jitter_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_jitter_rtt_factor: Option<f64>,
}

/// The attempt timing one coordinated trial runs with: what the coordinator
/// derived from the plan and the pair's measured RTT, sent to both sides in
/// `go` and kept in each side's trial record. The pair RTT is the sum of the
/// two sides' smallest RTT samples to the coordinator, an estimate of the
/// round trip a punched SYN and its answer take between the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttemptTiming {
    /// How long each connect() attempt waited.
    pub attempt_timeout_ms: u32,
    /// The fixed gap before each retry.
    pub retry_gap_ms: u32,
    /// The upper end of the uniform random jitter added to each gap.
    pub retry_jitter_ms: u32,
    /// The pair RTT the values were derived from; absent when the plan's fixed values were used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_rtt_ms: Option<u32>,
}

mod defaults {
    use super::*;
    pub fn trials() -> u32 {
        20
    }
    pub fn strategies() -> Vec<Strategy> {
        vec![
            Strategy::Simultaneous,
            Strategy::ConnectListen,
            Strategy::LowTtl,
        ]
    }
    pub fn families() -> Vec<Family> {
        vec![Family::Ipv4]
    }
    pub fn transports() -> Vec<Transport> {
        vec![Transport::V1, Transport::V2]
    }
    pub fn attempt_timeout_ms() -> u32 {
        3000
    }
    pub fn max_attempts() -> u32 {
        4
    }
    pub fn retry_gap_ms() -> u32 {
        200
    }
    pub fn retry_jitter_ms() -> u32 {
        1000
    }
    pub fn low_ttl() -> u8 {
        2
    }
    pub fn rtt_samples() -> u32 {
        3
    }
    pub fn handshake_step_ms() -> u32 {
        10_000
    }
    pub fn predict_window() -> u32 {
        8
    }
    pub fn birthday_sockets() -> u32 {
        64
    }
    pub fn birthday_ports() -> u32 {
        256
    }
    pub fn birthday_port_range() -> [u16; 2] {
        [1024, 65535]
    }
    pub fn birthday_pps() -> u32 {
        200
    }
    pub fn attempt_timeout_floor_ms() -> u32 {
        250
    }
    pub fn attempt_timeout_cap_ms() -> u32 {
        3000
    }
    pub fn retry_gap_floor_ms() -> u32 {
        50
    }
    pub fn retry_gap_cap_ms() -> u32 {
        1000
    }
}

/// Largest RTT factor a plan may use: beyond it the caps decide everything.
pub const MAX_RTT_FACTOR: f64 = 100.0;

/// A plan that cannot be used, with what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan is not valid TOML for this version: {0}")]
    Parse(String),
    #[error("plan line {line}: unknown key `{key}`; check its spelling (known keys: {known})")]
    UnknownKey {
        key: String,
        line: usize,
        known: String,
    },
    #[error("plan version {found} is not supported (this punchscope reads version {PLAN_VERSION}); upgrade punchscope or rewrite the plan")]
    Version { found: u32 },
    #[error("plan field `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// Limits that keep a plan from being abusive or meaningless.
pub const MAX_TRIALS: u32 = 1000;

impl Plan {
    /// Parses and validates a plan file's text. Strict: a key [`Plan`] does
    /// not have is refused with its line.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        refuse_unknown_keys(text)?;
        let plan: Plan = toml::from_str(text).map_err(|e| PlanError::Parse(e.to_string()))?;
        plan.validate()?;
        Ok(plan)
    }

    /// The keys a plan has, as serialized: the JSON Schema of [`Plan`] is the one list.
    pub fn keys() -> Vec<String> {
        let schema = schemars::schema_for!(Plan);
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Checks the values: every plan, however it arrived, goes through here.
    pub fn validate(&self) -> Result<(), PlanError> {
        let invalid = |field, problem: &str| {
            Err(PlanError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: self.version,
            });
        }
        if self.trials == 0 || self.trials > MAX_TRIALS {
            return invalid("trials", "must be between 1 and 1000");
        }
        if self.strategies.is_empty() {
            return invalid("strategies", "must name at least one strategy");
        }
        if self.families.is_empty() {
            return invalid("families", "must name at least one family (ipv4, ipv6)");
        }
        if self
            .families
            .iter()
            .enumerate()
            .any(|(i, f)| self.families[..i].contains(f))
        {
            return invalid("families", "names a family twice");
        }
        // The pair classes (and so `predict` and `birthday` moves) come from
        // the IPv4 classification: they say nothing of an IPv6 path.
        if self.families.contains(&Family::Ipv6)
            && self
                .class_strategies
                .values()
                .flatten()
                .any(|s| s.is_hard_nat())
        {
            return invalid(
                "families",
                "ipv6 cannot be combined with predict or birthday in class_strategies (their moves follow the IPv4 classification): run the hard-NAT plan over ipv4",
            );
        }
        if self.transports.is_empty() {
            return invalid("transports", "must name at least one transport");
        }
        if !(100..=60_000).contains(&self.attempt_timeout_ms) {
            return invalid("attempt_timeout_ms", "must be between 100 and 60000");
        }
        if !(1..=20).contains(&self.max_attempts) {
            return invalid("max_attempts", "must be between 1 and 20");
        }
        if self.retry_gap_ms > 10_000 || self.retry_jitter_ms > 10_000 {
            return invalid("retry_gap_ms", "gap and jitter must be at most 10000 ms");
        }
        if !(1..=64).contains(&self.low_ttl) {
            return invalid("low_ttl", "must be between 1 and 64");
        }
        if !(1..=20).contains(&self.rtt_samples) {
            return invalid("rtt_samples", "must be between 1 and 20");
        }
        if self.injected_skew_ms > 10_000 {
            return invalid("injected_skew_ms", "must be at most 10000");
        }
        if !(100..=120_000).contains(&self.handshake_step_ms) {
            return invalid("handshake_step_ms", "must be between 100 and 120000");
        }
        for (field, factor) in [
            (
                "attempt_timeout_rtt_factor",
                self.attempt_timeout_rtt_factor,
            ),
            ("retry_gap_rtt_factor", self.retry_gap_rtt_factor),
            ("retry_jitter_rtt_factor", self.retry_jitter_rtt_factor),
        ] {
            if factor.is_some_and(|f| !(f.is_finite() && f > 0.0 && f <= MAX_RTT_FACTOR)) {
                return invalid(field, "must be a number above 0 and at most 100");
            }
        }
        if !(100..=60_000).contains(&self.attempt_timeout_floor_ms)
            || !(100..=60_000).contains(&self.attempt_timeout_cap_ms)
            || self.attempt_timeout_floor_ms > self.attempt_timeout_cap_ms
        {
            return invalid(
                "attempt_timeout_floor_ms",
                "floor and cap must be between 100 and 60000, the floor at most the cap",
            );
        }
        if self.retry_gap_cap_ms > 10_000 || self.retry_gap_floor_ms > self.retry_gap_cap_ms {
            return invalid(
                "retry_gap_floor_ms",
                "floor and cap must be at most 10000, the floor at most the cap",
            );
        }
        crate::hardnat::validate_plan(self)
    }

    /// The size of `birthday_port_range` (the formula's range).
    pub fn birthday_range(&self) -> u32 {
        let [first, last] = self.birthday_port_range;
        u32::from(last).saturating_sub(u32::from(first)) + 1
    }

    /// The strategies a pair of `class` draws from at random, if the plan has a mix for it.
    pub fn mix_for(&self, class: PairClass) -> Option<&[Strategy]> {
        self.class_strategies.get(&class).map(Vec::as_slice)
    }

    /// The attempt timing of a coordinated trial whose pair RTT was
    /// measured as `pair_rtt`: each RTT-driven value is factor x RTT within
    /// its floor and cap, the others are the plan's fixed values. `None`
    /// when the plan has no RTT factor (older plans): every side then uses
    /// the fixed values, as before.
    pub fn attempt_timing(&self, pair_rtt: std::time::Duration) -> Option<AttemptTiming> {
        if self.attempt_timeout_rtt_factor.is_none()
            && self.retry_gap_rtt_factor.is_none()
            && self.retry_jitter_rtt_factor.is_none()
        {
            return None;
        }
        let rtt_ms = pair_rtt.as_secs_f64() * 1e3;
        let scaled = |factor: f64, floor: u32, cap: u32| -> u32 {
            // Clamped in f64 first: the product fits u32 after it.
            (factor * rtt_ms)
                .round()
                .clamp(f64::from(floor), f64::from(cap)) as u32
        };
        Some(AttemptTiming {
            attempt_timeout_ms: self.attempt_timeout_rtt_factor.map_or(
                self.attempt_timeout_ms,
                |f| {
                    scaled(
                        f,
                        self.attempt_timeout_floor_ms,
                        self.attempt_timeout_cap_ms,
                    )
                },
            ),
            retry_gap_ms: self.retry_gap_rtt_factor.map_or(self.retry_gap_ms, |f| {
                scaled(f, self.retry_gap_floor_ms, self.retry_gap_cap_ms)
            }),
            retry_jitter_ms: self
                .retry_jitter_rtt_factor
                .map_or(self.retry_jitter_ms, |f| scaled(f, 0, self.retry_jitter_ms)),
            pair_rtt_ms: Some(rtt_ms.round().min(f64::from(u32::MAX)) as u32),
        })
    }

    /// The timing trials use when the plan's fixed values apply (no RTT, or none sent).
    pub fn fixed_timing(&self) -> AttemptTiming {
        AttemptTiming {
            attempt_timeout_ms: self.attempt_timeout_ms,
            retry_gap_ms: self.retry_gap_ms,
            retry_jitter_ms: self.retry_jitter_ms,
            pair_rtt_ms: None,
        }
    }

    /// The longest attempt timeout, gap and jitter any trial of this plan
    /// may use, whatever RTT was measured: deadlines are built from these.
    pub fn timing_bound(&self) -> AttemptTiming {
        let bound = |factor: Option<f64>, fixed: u32, cap: u32| {
            if factor.is_some() {
                fixed.max(cap)
            } else {
                fixed
            }
        };
        AttemptTiming {
            attempt_timeout_ms: bound(
                self.attempt_timeout_rtt_factor,
                self.attempt_timeout_ms,
                self.attempt_timeout_cap_ms,
            ),
            retry_gap_ms: bound(
                self.retry_gap_rtt_factor,
                self.retry_gap_ms,
                self.retry_gap_cap_ms,
            ),
            retry_jitter_ms: self.retry_jitter_ms,
            pair_rtt_ms: None,
        }
    }

    /// Whether `timing` is one this plan can produce for some RTT: each
    /// RTT-driven value within its floor and cap, each other value the
    /// plan's fixed one. A probe holds its coordinator's `go` to this.
    pub fn check_timing(&self, timing: &AttemptTiming) -> Result<(), String> {
        let within =
            |name: &str, value: u32, factor: Option<f64>, fixed: u32, floor: u32, cap: u32| {
                let ok = match factor {
                    Some(_) => (floor..=cap).contains(&value),
                    None => value == fixed,
                };
                if ok {
                    Ok(())
                } else if factor.is_some() {
                    Err(format!(
                        "{name} {value} ms is outside the plan's {floor}..={cap} ms"
                    ))
                } else {
                    Err(format!(
                        "{name} {value} ms is not the plan's fixed {fixed} ms"
                    ))
                }
            };
        within(
            "attempt timeout",
            timing.attempt_timeout_ms,
            self.attempt_timeout_rtt_factor,
            self.attempt_timeout_ms,
            self.attempt_timeout_floor_ms,
            self.attempt_timeout_cap_ms,
        )?;
        within(
            "retry gap",
            timing.retry_gap_ms,
            self.retry_gap_rtt_factor,
            self.retry_gap_ms,
            self.retry_gap_floor_ms,
            self.retry_gap_cap_ms,
        )?;
        within(
            "retry jitter",
            timing.retry_jitter_ms,
            self.retry_jitter_rtt_factor,
            self.retry_jitter_ms,
            0,
            self.retry_jitter_ms,
        )
    }

    /// The strategy of trial `n`.
    pub fn strategy_of(&self, trial: u32) -> Strategy {
        self.strategies[trial as usize % self.strategies.len()]
    }

    /// The Bitcoin transport of trial `n`.
    pub fn transport_of(&self, trial: u32) -> Transport {
        self.transports[trial as usize % self.transports.len()]
    }
}

/// Refuses the first top-level key of a plan file that [`Plan`] does not
/// have, naming its line. Every plan field is a top-level value (no nested
/// tables), so the top level is the whole of the check.
fn refuse_unknown_keys(text: &str) -> Result<(), PlanError> {
    let table: std::collections::BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny> =
        toml::from_str(text).map_err(|e| PlanError::Parse(e.to_string()))?;
    let known = Plan::keys();
    let unknown = table
        .keys()
        .filter(|key| !known.iter().any(|k| k == key.get_ref()))
        .min_by_key(|key| key.span().start);
    match unknown {
        None => Ok(()),
        Some(key) => Err(PlanError::UnknownKey {
            key: key.get_ref().clone(),
            line: crate::toml_lines::line_of(text, key.span().start),
            known: known.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_plan_takes_the_defaults() {
        let plan = Plan::from_toml("version = 1\nname = \"t\"\n").unwrap();
        assert_eq!(plan.trials, 20);
        assert_eq!(plan.strategy_of(0), Strategy::Simultaneous);
        assert_eq!(plan.strategy_of(4), Strategy::ConnectListen);
        assert_eq!(plan.transport_of(1), Transport::V2);
        assert_eq!(plan.network, BitcoinNetwork::Mainnet);
    }

    #[test]
    fn the_shipped_default_plan_is_valid() {
        let plan = Plan::from_toml(include_str!("../../probes/default.toml")).unwrap();
        assert_eq!(plan.name, "default");
        assert_eq!(plan.strategies.len(), 3);
    }

    #[test]
    fn the_shipped_hard_nat_plan_is_valid() {
        let plan = Plan::from_toml(include_str!("../../probes/hard-nat.toml")).unwrap();
        assert_eq!(
            plan.mix_for(PairClass::EasyRandom),
            Some(&[Strategy::Simultaneous, Strategy::Birthday][..])
        );
        assert_eq!(
            plan.mix_for(PairClass::EasySequential),
            Some(&[Strategy::Simultaneous, Strategy::Predict][..])
        );
    }

    #[test]
    fn bad_plans_say_what_to_fix() {
        let e = Plan::from_toml("version = 2\nname = \"t\"\n").unwrap_err();
        assert!(matches!(e, PlanError::Version { found: 2 }));
        let e = Plan::from_toml("version = 1\nname = \"t\"\ntrials = 0\n").unwrap_err();
        assert!(e.to_string().contains("trials"), "{e}");
        let e = Plan::from_toml("version = 1\nname = \"t\"\nstrategies = [\"teleport\"]\n")
            .unwrap_err();
        assert!(matches!(e, PlanError::Parse(_)), "{e}");
        let e = Plan::from_toml("version = 1\nname = \"t\"\nsurprise = 1\n").unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
    }

    #[test]
    fn a_plan_file_with_an_unknown_key_is_refused_with_its_line() {
        let text = "# a typo on line 4\nversion = 1\nname = \"t\"\nmax_atempts = 3\ntrials = 2\n";
        let e = Plan::from_toml(text).unwrap_err();
        match &e {
            PlanError::UnknownKey { key, line, known } => {
                assert_eq!((key.as_str(), *line), ("max_atempts", 4));
                assert!(known.contains("max_attempts"), "{known}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(
            e.to_string()
                .starts_with("plan line 4: unknown key `max_atempts`"),
            "{e}"
        );
        let e = Plan::from_toml("version = 1\nname = \"t\"\n\n[extra]\nx = 1\n").unwrap_err();
        assert!(matches!(e, PlanError::UnknownKey { line: 4, .. }), "{e}");
    }

    #[test]
    fn a_plan_another_punchscope_wrote_may_carry_fields_this_one_does_not_know() {
        let mut value =
            serde_json::to_value(Plan::from_toml("version = 1\nname = \"t\"\n").unwrap()).unwrap();
        value["pacing"] = serde_json::json!({ "mode": "burst" });
        let plan: Plan = serde_json::from_value(value).unwrap();
        plan.validate().unwrap();
        assert_eq!(plan.name, "t");
    }

    #[test]
    fn rtt_driven_timing_follows_the_rtt_within_floor_and_cap() {
        use std::time::Duration;
        let text = "version = 1\nname = \"t\"\nattempt_timeout_rtt_factor = 2.0\n\
                    retry_gap_rtt_factor = 0.5\nretry_jitter_rtt_factor = 0.5\nretry_jitter_ms = 400\n";
        let plan = Plan::from_toml(text).unwrap();
        let at = |ms| plan.attempt_timing(Duration::from_millis(ms)).unwrap();
        let t = at(200);
        assert_eq!(
            (
                t.attempt_timeout_ms,
                t.retry_gap_ms,
                t.retry_jitter_ms,
                t.pair_rtt_ms
            ),
            (400, 100, 100, Some(200))
        );
        // Near peers get the floors, far ones the caps (jitter capped by retry_jitter_ms).
        let near = at(1);
        assert_eq!(
            (
                near.attempt_timeout_ms,
                near.retry_gap_ms,
                near.retry_jitter_ms
            ),
            (250, 50, 1)
        );
        let far = at(60_000);
        assert_eq!(
            (
                far.attempt_timeout_ms,
                far.retry_gap_ms,
                far.retry_jitter_ms
            ),
            (3000, 1000, 400)
        );
        for t in [t, near, far] {
            plan.check_timing(&t).unwrap();
        }
        let bound = plan.timing_bound();
        assert_eq!(
            (
                bound.attempt_timeout_ms,
                bound.retry_gap_ms,
                bound.retry_jitter_ms
            ),
            (3000, 1000, 400)
        );
        let mut hostile = far;
        hostile.attempt_timeout_ms = 3001;
        assert!(plan
            .check_timing(&hostile)
            .unwrap_err()
            .contains("attempt timeout"));
        let mut hostile = far;
        hostile.retry_gap_ms = 49;
        assert!(plan
            .check_timing(&hostile)
            .unwrap_err()
            .contains("retry gap"));
    }

    #[test]
    fn a_plan_with_fixed_timeouts_keeps_them() {
        let plan =
            Plan::from_toml("version = 1\nname = \"t\"\nattempt_timeout_ms = 1234\n").unwrap();
        assert_eq!(
            plan.attempt_timing(std::time::Duration::from_millis(200)),
            None
        );
        let fixed = plan.fixed_timing();
        assert_eq!(fixed.attempt_timeout_ms, 1234);
        plan.check_timing(&fixed).unwrap();
        assert_eq!(plan.timing_bound(), fixed);
        let mut other = fixed;
        other.attempt_timeout_ms = 1000;
        assert!(plan.check_timing(&other).is_err());
        // Only the RTT-driven part follows the RTT.
        let plan =
            Plan::from_toml("version = 1\nname = \"t\"\nretry_gap_rtt_factor = 1.0\n").unwrap();
        let t = plan
            .attempt_timing(std::time::Duration::from_millis(300))
            .unwrap();
        assert_eq!(
            (t.attempt_timeout_ms, t.retry_gap_ms, t.retry_jitter_ms),
            (3000, 300, 1000)
        );
    }

    #[test]
    fn families_are_a_set_of_ipv4_and_ipv6_and_keep_hard_nat_mixes_on_ipv4() {
        let plan = |extra: &str| Plan::from_toml(&format!("version = 1\nname = \"t\"\n{extra}\n"));
        assert_eq!(plan("").unwrap().families, [Family::Ipv4]);
        assert_eq!(
            plan("families = [\"ipv6\", \"ipv4\"]").unwrap().families,
            [Family::Ipv6, Family::Ipv4]
        );
        for (bad, says) in [
            ("families = []", "at least one"),
            ("families = [\"ipv4\", \"ipv4\"]", "twice"),
            (
                "families = [\"ipv4\", \"ipv6\"]\nclass_strategies = { easy_random = [\"simultaneous\", \"birthday\"] }",
                "predict or birthday",
            ),
        ] {
            let e = plan(bad).unwrap_err().to_string();
            assert!(e.contains("families") && e.contains(says), "{bad}: {e}");
        }
        assert!(plan("families = [\"ipv5\"]").is_err());
    }

    #[test]
    fn bad_rtt_keys_say_what_to_fix() {
        for (text, field) in [
            (
                "attempt_timeout_rtt_factor = 0.0",
                "attempt_timeout_rtt_factor",
            ),
            ("retry_gap_rtt_factor = 1000.0", "retry_gap_rtt_factor"),
            (
                "attempt_timeout_floor_ms = 5000\nattempt_timeout_cap_ms = 4000",
                "attempt_timeout_floor_ms",
            ),
            ("attempt_timeout_cap_ms = 90000", "attempt_timeout_floor_ms"),
            ("retry_gap_cap_ms = 20000", "retry_gap_floor_ms"),
        ] {
            let e = Plan::from_toml(&format!("version = 1\nname = \"t\"\n{text}\n")).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn every_field_is_a_known_key() {
        let keys = Plan::keys();
        assert_eq!(keys.len(), 28, "{keys:?}");
        let default = include_str!("../../probes/default.toml");
        for key in &keys {
            assert!(
                default.contains(&format!("\n{key} = ")),
                "default.toml sets {key}"
            );
        }
    }
}
