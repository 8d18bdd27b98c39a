//! What a probe accepts from its coordinator: every instruction checked
//! against the plan and the probe's own hard caps before anything is sent.
//! Sans-io: messages in, `Ok` or the violation to record out.
//!
//! A compromised or buggy coordinator must not turn volunteers into a port
//! scanner or a SYN source. So, per pairing: the plan's limits stay under
//! hard caps; trials come in order, each once, within the plan; each trial
//! primes at most once and goes at most once, with the plan's strategy and
//! TTL; every peer endpoint is a public address ([`AddressPolicy`]); start
//! delays are bounded; the attempt timing a `go` carries is one the plan
//! can produce (RTT-driven values within the plan's floors and caps, which
//! stay under this probe's hard caps). Connects per pairing are then bounded by
//! `trials x max_attempts` (plus one priming SYN per low-TTL trial), and
//! every wait by the plan's (capped) timings.

use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::classify::Verdict;
use punchscope_analysis::hardnat::{HardRole, PairClass, SideKind};
use punchscope_analysis::plan::{AttemptTiming, Plan};
use punchscope_analysis::portmap::MappedSide;
use punchscope_analysis::result::{CoordinatorViolation, ViolationRule};
use punchscope_analysis::trial::{Family, Strategy};

use crate::net::address::AddressPolicy;
use crate::proto::rendezvous::{MAX_START_DELAY_MS, MIN_MAPPED_PORT};

/// Most trials a probe runs in one pairing, whatever the plan says.
pub const MAX_TRIALS: u32 = 200;
/// Most connect attempts per trial.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest single connect attempt.
pub const MAX_ATTEMPT_TIMEOUT_MS: u32 = 10_000;
/// Longest wait for one step of the Bitcoin handshake.
pub const MAX_HANDSHAKE_STEP_MS: u32 = 30_000;
/// Longest gap before a retry (fixed or RTT-driven, jitter included).
pub const MAX_RETRY_GAP_MS: u32 = 10_000;

/// The trial being run, as far as the coordinator has taken it.
#[derive(Debug, Clone)]
struct Current {
    trial: u32,
    strategy: Strategy,
    family: Family,
    primed_peer: Option<SocketAddr>,
    went: bool,
}

/// Checks one pairing's instructions, in the order they arrive.
#[derive(Debug, Clone)]
pub struct CoordinatorGuard {
    plan: Plan,
    addresses: AddressPolicy,
    /// The TTL a prime may carry in `prime_ttl_family`: the plan's, or the
    /// one our own path measurement calls for (the coordinator relays it
    /// from our verdict). In the other family the plan's applies.
    prime_ttl: u8,
    prime_ttl_family: Family,
    /// The IP families we told the coordinator we can run trials in.
    families: Vec<Family>,
    next_trial: u32,
    current: Option<Current>,
    /// This side's and the peer's NAT kinds, from our own verdict and the
    /// one relayed in `paired` ([`CoordinatorGuard::with_pair`]).
    kinds: (SideKind, SideKind),
}

/// A peer endpoint in the trial's own family, written plainly, or the violation.
fn same_family(
    trial: u32,
    step: &str,
    family: Family,
    peer: SocketAddr,
) -> Result<(), CoordinatorViolation> {
    // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is neither: a
    // coordinator observes and sends plain addresses.
    if peer.ip() != peer.ip().to_canonical() {
        return Err(violation(
            ViolationRule::PeerAddress,
            Some(trial),
            format!("{step} for trial {trial} names an IPv4-mapped IPv6 address"),
        ));
    }
    if Family::of(peer.ip()) == family {
        return Ok(());
    }
    Err(violation(
        ViolationRule::Family,
        Some(trial),
        format!(
            "{step} for {family} trial {trial} names an {} peer",
            Family::of(peer.ip())
        ),
    ))
}

fn violation(rule: ViolationRule, trial: Option<u32>, detail: String) -> CoordinatorViolation {
    CoordinatorViolation {
        rule,
        trial,
        detail,
    }
}

impl CoordinatorGuard {
    /// A guard for a pairing under `plan`, or the limit the plan breaks.
    pub fn new(plan: &Plan, addresses: AddressPolicy) -> Result<Self, CoordinatorViolation> {
        let limits = [
            ("trials", plan.trials, MAX_TRIALS),
            ("max_attempts", plan.max_attempts, MAX_ATTEMPTS),
            (
                "attempt_timeout_ms",
                plan.attempt_timeout_ms,
                MAX_ATTEMPT_TIMEOUT_MS,
            ),
            (
                "handshake_step_ms",
                plan.handshake_step_ms,
                MAX_HANDSHAKE_STEP_MS,
            ),
            // The longest RTT-driven values any `go` may carry.
            (
                "attempt_timeout_cap_ms",
                plan.timing_bound().attempt_timeout_ms,
                MAX_ATTEMPT_TIMEOUT_MS,
            ),
            (
                "retry_gap_cap_ms",
                plan.timing_bound().retry_gap_ms + plan.retry_jitter_ms,
                MAX_RETRY_GAP_MS,
            ),
        ];
        for (name, value, cap) in limits {
            if value > cap {
                return Err(violation(
                    ViolationRule::PlanLimit,
                    None,
                    format!("paired: plan {name} = {value} is above this probe's cap of {cap}"),
                ));
            }
        }
        // The hard-NAT caps (sockets, ports, SYNs per second) are the plan's
        // own validation, held here too: a coordinator's plan is read leniently.
        plan.validate().map_err(|e| {
            violation(
                ViolationRule::PlanLimit,
                None,
                format!("paired: plan refused: {e}"),
            )
        })?;
        Ok(CoordinatorGuard {
            plan: plan.clone(),
            addresses,
            prime_ttl: plan.low_ttl,
            prime_ttl_family: Family::Ipv4,
            families: vec![Family::Ipv4],
            next_trial: 0,
            current: None,
            kinds: (SideKind::Unknown, SideKind::Unknown),
        })
    }

    /// `trial`: the next trial in order, within the plan, with the plan's
    /// strategy, in a family both the plan and we have.
    pub fn trial(
        &mut self,
        trial: u32,
        strategy: Strategy,
        family: Family,
    ) -> Result<(), CoordinatorViolation> {
        if trial != self.next_trial {
            return Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!(
                    "trial {trial} announced when trial {} was next",
                    self.next_trial
                ),
            ));
        }
        if trial >= self.plan.trials {
            return Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!(
                    "trial {trial} is beyond the plan's {} trials",
                    self.plan.trials
                ),
            ));
        }
        match self.plan.mix_for(self.pair_class()) {
            Some(mix) if !mix.contains(&strategy) => {
                return Err(violation(
                    ViolationRule::Strategy,
                    Some(trial),
                    format!(
                        "trial {trial} announced as {strategy:?}, not in the plan's mix {mix:?} for our pair class {}",
                        self.pair_class()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                let planned = self.plan.strategy_of(trial);
                if strategy != planned {
                    return Err(violation(
                        ViolationRule::Strategy,
                        Some(trial),
                        format!(
                            "trial {trial} announced as {strategy:?}, the plan says {planned:?}"
                        ),
                    ));
                }
            }
        }
        if !self.plan.families.contains(&family) || !self.families.contains(&family) {
            return Err(violation(
                ViolationRule::Family,
                Some(trial),
                format!(
                    "trial {trial} announced over {family}; the plan has {:?} and this probe {:?}",
                    self.plan.families, self.families
                ),
            ));
        }
        if strategy.is_hard_nat() && self.hard_role(strategy).is_none() {
            return Err(violation(
                ViolationRule::Strategy,
                Some(trial),
                format!(
                    "trial {trial} announced as {strategy:?}, which does not apply to our pair class {}",
                    self.pair_class()
                ),
            ));
        }
        self.next_trial += 1;
        self.current = Some(Current {
            trial,
            strategy,
            family,
            primed_peer: None,
            went: false,
        });
        Ok(())
    }

    /// Expects primes with the TTL our own classification measured (its
    /// path's `prime_ttl`, which the coordinator sends back to us) instead
    /// of the plan's fixed one. Our measurement, not the coordinator's word.
    pub fn with_own_verdict(
        mut self,
        verdict: Option<&punchscope_analysis::classify::Verdict>,
    ) -> Self {
        if let Some(v) = verdict {
            self.prime_ttl = v.prime_ttl_or(self.plan.low_ttl);
            self.prime_ttl_family = Family::of_verdict(v);
        }
        self
    }

    /// The IP families we told the coordinator we have (our hello's
    /// `families`; absent there, the control connection's family).
    pub fn with_families(mut self, families: &[Family]) -> Self {
        self.families = families.to_vec();
        self
    }

    /// Knows the pair: our own verdict and the peer's as `paired` relayed it.
    /// The pair class (whose mix a trial's strategy must come from) and our
    /// move under `predict` and `birthday` follow from the two.
    pub fn with_pair(mut self, own: Option<&Verdict>, peer: Option<&Verdict>) -> Self {
        self.kinds = (SideKind::of(own), SideKind::of(peer));
        self
    }

    /// The NAT-pair class of this pairing, as this probe derives it.
    pub fn pair_class(&self) -> PairClass {
        PairClass::of_kinds(self.kinds.0, self.kinds.1)
    }

    /// A `go`'s `mapped` move, once the `go` was accepted: present exactly
    /// for `mapped` trials; `listen` only if we registered a mapping, and
    /// `neither` only if we did not (the coordinator has us listen or
    /// connect when either side holds one).
    pub fn mapped(
        &self,
        trial: u32,
        mapped: Option<MappedSide>,
        registered_mapping: bool,
        peer: SocketAddr,
    ) -> Result<(), CoordinatorViolation> {
        let Some(current) = self.current.as_ref().filter(|c| c.trial == trial && c.went) else {
            return Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!("a mapped move for trial {trial}, which has no accepted go"),
            ));
        };
        let refused = |why: String| Err(violation(ViolationRule::Unexpected, Some(trial), why));
        match (current.strategy, mapped) {
            (Strategy::Mapped, Some(MappedSide::Connect)) if peer.port() < MIN_MAPPED_PORT => {
                Err(violation(
                    ViolationRule::PeerAddress,
                    Some(trial),
                    format!(
                        "go for mapped trial {trial} to port {}: a mapped port is at least {MIN_MAPPED_PORT}",
                        peer.port()
                    ),
                ))
            }
            (Strategy::Mapped, Some(MappedSide::Connect)) => Ok(()),
            (Strategy::Mapped, Some(MappedSide::Listen)) if registered_mapping => Ok(()),
            (Strategy::Mapped, Some(MappedSide::Neither)) if !registered_mapping => Ok(()),
            (Strategy::Mapped, Some(side)) => refused(format!(
                "go for mapped trial {trial} says `{}`, but we registered {} mapping",
                side.as_str(),
                if registered_mapping { "a" } else { "no" }
            )),
            (Strategy::Mapped, None) => refused(format!(
                "go for mapped trial {trial} without its `mapped` move"
            )),
            (_, Some(side)) => refused(format!(
                "go for trial {trial} ({:?}) carries a mapped move `{}`",
                current.strategy,
                side.as_str()
            )),
            (_, None) => Ok(()),
        }
    }

    /// Our move under a hard-NAT strategy, if it applies to this pair.
    pub fn hard_role(&self, strategy: Strategy) -> Option<HardRole> {
        HardRole::of(strategy, self.kinds.0, self.kinds.1)
    }

    /// What a hard-NAT trial is about to aim at, checked before the first
    /// SYN: only the paired peer's own observed address (the IP of the `go`
    /// that was accepted), and no more ports than the plan's capped count
    /// for our move (`predict_window`, `birthday_ports`; the opening side
    /// aims only at `peer` itself).
    pub fn targets(
        &self,
        trial: u32,
        peer: SocketAddr,
        targets: &[SocketAddr],
    ) -> Result<(), CoordinatorViolation> {
        let Some(current) = self.current.as_ref().filter(|c| c.trial == trial && c.went) else {
            return Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!("targets for trial {trial}, which has no accepted go"),
            ));
        };
        let cap = match self.hard_role(current.strategy) {
            Some(HardRole::PredictAim { .. }) => self.plan.predict_window,
            Some(HardRole::BirthdaySpray) => self.plan.birthday_ports,
            _ => 1,
        };
        if targets.len() > cap as usize {
            return Err(violation(
                ViolationRule::PlanLimit,
                Some(trial),
                format!(
                    "trial {trial} would aim at {} ports, the cap for this move is {cap}",
                    targets.len()
                ),
            ));
        }
        if let Some(stranger) = targets.iter().find(|t| t.ip() != peer.ip()) {
            return Err(violation(
                ViolationRule::PeerAddress,
                Some(trial),
                format!(
                    "trial {trial} would aim at {stranger}, not at the paired peer's observed address"
                ),
            ));
        }
        Ok(())
    }

    /// `prime`: once, for the current low-TTL trial, with the expected TTL and a public peer.
    pub fn prime(
        &mut self,
        trial: u32,
        peer: SocketAddr,
        ttl: u8,
    ) -> Result<(), CoordinatorViolation> {
        let (measured_ttl, measured_in, fixed_ttl) =
            (self.prime_ttl, self.prime_ttl_family, self.plan.low_ttl);
        let addresses = self.addresses;
        let current = self.current_mut(trial, "prime")?;
        same_family(trial, "prime", current.family, peer)?;
        // Our path measurement speaks for its own family only.
        let expected_ttl = if current.family == measured_in {
            measured_ttl
        } else {
            fixed_ttl
        };
        if current.strategy != Strategy::LowTtl {
            return Err(violation(
                ViolationRule::Ttl,
                Some(trial),
                format!("prime for trial {trial}, a {:?} trial", current.strategy),
            ));
        }
        if current.primed_peer.is_some() || current.went {
            return Err(violation(
                ViolationRule::Unexpected,
                Some(trial),
                format!("a second prime for trial {trial}"),
            ));
        }
        if ttl != expected_ttl {
            return Err(violation(
                ViolationRule::Ttl,
                Some(trial),
                format!("prime with TTL {ttl}, expected {expected_ttl} (the plan's, or our measured path's)"),
            ));
        }
        addresses.check(peer).map_err(|why| {
            violation(
                ViolationRule::PeerAddress,
                Some(trial),
                format!("prime: peer {why}"),
            )
        })?;
        current.primed_peer = Some(peer);
        Ok(())
    }

    /// `go`: once, for the current trial, to a public peer (the primed one
    /// when primed), with the trial's strategy, a start delay of at most
    /// the protocol's cap plus the plan's injected skew.
    pub fn go(
        &mut self,
        trial: u32,
        peer: SocketAddr,
        delay: Duration,
        injected_skew: Duration,
        strategy: Strategy,
    ) -> Result<(), CoordinatorViolation> {
        let addresses = self.addresses;
        let skew_cap = Duration::from_millis(u64::from(self.plan.injected_skew_ms));
        let delay_cap = Duration::from_millis(MAX_START_DELAY_MS) + skew_cap;
        let current = self.current_mut(trial, "go")?;
        same_family(trial, "go", current.family, peer)?;
        if current.went {
            return Err(violation(
                ViolationRule::Unexpected,
                Some(trial),
                format!("a second go for trial {trial}"),
            ));
        }
        if strategy != current.strategy {
            return Err(violation(
                ViolationRule::Strategy,
                Some(trial),
                format!(
                    "go for trial {trial} as {strategy:?}, announced as {:?}",
                    current.strategy
                ),
            ));
        }
        if current.strategy == Strategy::LowTtl && current.primed_peer.is_none() {
            return Err(violation(
                ViolationRule::Unexpected,
                Some(trial),
                format!("go for low-TTL trial {trial} before its prime"),
            ));
        }
        if current.primed_peer.is_some_and(|primed| primed != peer) {
            return Err(violation(
                ViolationRule::PeerAddress,
                Some(trial),
                format!("go for trial {trial} to {peer}, not to the primed peer"),
            ));
        }
        addresses.check(peer).map_err(|why| {
            violation(
                ViolationRule::PeerAddress,
                Some(trial),
                format!("go: peer {why}"),
            )
        })?;
        if injected_skew > skew_cap || delay > delay_cap || injected_skew > delay {
            return Err(violation(
                ViolationRule::StartDelay,
                Some(trial),
                format!(
                    "go for trial {trial} with a start delay of {} ms (injected skew {} ms); at most {} ms (skew {} ms) are accepted",
                    delay.as_millis(),
                    injected_skew.as_millis(),
                    delay_cap.as_millis(),
                    skew_cap.as_millis()
                ),
            ));
        }
        current.went = true;
        Ok(())
    }

    /// The attempt timing of the current trial's `go`: one the plan can
    /// produce for some RTT (RTT-driven values within its floors and caps,
    /// the others its fixed values); absent, the plan's fixed values are used.
    pub fn timing(
        &self,
        trial: u32,
        timing: Option<&AttemptTiming>,
    ) -> Result<(), CoordinatorViolation> {
        let Some(timing) = timing else {
            return Ok(());
        };
        self.plan.check_timing(timing).map_err(|why| {
            violation(
                ViolationRule::Timing,
                Some(trial),
                format!("go for trial {trial}: {why}"),
            )
        })
    }

    /// `peer_result`: only for a trial already announced.
    pub fn peer_result(&self, trial: u32) -> Result<(), CoordinatorViolation> {
        if trial >= self.next_trial {
            return Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!("peer result for trial {trial}, which has not started"),
            ));
        }
        Ok(())
    }

    fn current_mut(
        &mut self,
        trial: u32,
        step: &str,
    ) -> Result<&mut Current, CoordinatorViolation> {
        match self.current.as_mut() {
            Some(current) if current.trial == trial => Ok(current),
            _ => Err(violation(
                ViolationRule::TrialOrder,
                Some(trial),
                format!("{step} for trial {trial}, which is not the running trial"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::default_plan;

    const PEER: &str = "203.0.113.7:40000";

    fn plan() -> Plan {
        let mut plan = default_plan("guard");
        plan.trials = 3;
        plan.strategies = vec![Strategy::Simultaneous, Strategy::LowTtl];
        plan.low_ttl = 3;
        plan.injected_skew_ms = 200;
        plan
    }

    fn guard() -> CoordinatorGuard {
        CoordinatorGuard::new(&plan(), AddressPolicy::Public).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn peer() -> SocketAddr {
        PEER.parse().unwrap()
    }

    fn rule(result: Result<(), CoordinatorViolation>) -> ViolationRule {
        result.expect_err("refused").rule
    }

    #[test]
    fn a_pairing_that_follows_the_plan_passes() {
        let mut g = guard();
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(0, peer(), ms(40), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.peer_result(0).unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        g.prime(1, peer(), 3).unwrap();
        g.go(1, peer(), ms(5_200), ms(200), Strategy::LowTtl)
            .unwrap();
        g.trial(2, Strategy::Simultaneous, Family::Ipv4).unwrap();
    }

    /// A `go`'s mapped move must fit the strategy and what we registered:
    /// a coordinator cannot have us listen without a mapping, skip a trial
    /// we could run, or attach a mapped move to another strategy.
    #[test]
    fn a_mapped_move_must_match_the_strategy_and_our_registration() {
        let mapped_guard = || {
            let mut p = plan();
            p.strategies = vec![Strategy::Mapped, Strategy::Simultaneous];
            let mut g = CoordinatorGuard::new(&p, AddressPolicy::Public).unwrap();
            g.trial(0, Strategy::Mapped, Family::Ipv4).unwrap();
            g.go(0, peer(), ms(0), ms(0), Strategy::Mapped).unwrap();
            g
        };
        use MappedSide::{Connect, Listen, Neither};
        for (mapped, registered, ok) in [
            (Some(Connect), false, true),
            (Some(Connect), true, true),
            (Some(Listen), true, true),
            (Some(Listen), false, false),
            (Some(Neither), false, true),
            (Some(Neither), true, false),
            (None, true, false),
            (Some(MappedSide::Other), false, false),
        ] {
            let result = mapped_guard().mapped(0, mapped, registered, peer());
            assert_eq!(
                result.is_ok(),
                ok,
                "{mapped:?} registered={registered}: {result:?}"
            );
        }
        let low: SocketAddr = "203.0.113.7:80".parse().unwrap();
        assert_eq!(
            rule(mapped_guard().mapped(0, Some(Connect), false, low)),
            ViolationRule::PeerAddress,
            "a well-known port is never a mapped one"
        );
        let mut g = mapped_guard();
        g.peer_result(0).unwrap();
        g.trial(1, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(1, peer(), ms(0), ms(0), Strategy::Simultaneous)
            .unwrap();
        assert_eq!(
            rule(g.mapped(1, Some(Connect), false, peer())),
            ViolationRule::Unexpected
        );
        g.mapped(1, None, false, peer()).unwrap();
        assert_eq!(
            rule(g.mapped(2, None, false, peer())),
            ViolationRule::TrialOrder
        );
    }

    #[test]
    fn plans_above_the_hard_caps_are_refused() {
        for (field, set) in [
            ("trials", (|p: &mut Plan| p.trials = 1000) as fn(&mut Plan)),
            ("max_attempts", |p| p.max_attempts = 20),
            ("attempt_timeout_ms", |p| p.attempt_timeout_ms = 60_000),
            ("handshake_step_ms", |p| p.handshake_step_ms = 120_000),
        ] {
            let mut p = plan();
            set(&mut p);
            let v = CoordinatorGuard::new(&p, AddressPolicy::Public).unwrap_err();
            assert_eq!(v.rule, ViolationRule::PlanLimit);
            assert!(v.detail.contains(field), "{}", v.detail);
        }
    }

    #[test]
    fn go_timing_must_be_one_the_plan_can_produce() {
        let mut p = plan();
        p.attempt_timeout_rtt_factor = Some(2.0);
        p.retry_gap_rtt_factor = Some(0.5);
        let g = CoordinatorGuard::new(&p, AddressPolicy::Public).unwrap();
        let fair = p.attempt_timing(ms(200)).unwrap();
        g.timing(0, Some(&fair)).unwrap();
        g.timing(0, None).unwrap();
        // A hostile coordinator cannot make us wait or retry without bound.
        for hostile in [
            AttemptTiming {
                attempt_timeout_ms: p.attempt_timeout_cap_ms + 1,
                ..fair
            },
            AttemptTiming {
                attempt_timeout_ms: u32::MAX,
                ..fair
            },
            AttemptTiming {
                retry_gap_ms: p.retry_gap_cap_ms + 1,
                ..fair
            },
            AttemptTiming {
                retry_gap_ms: 0,
                ..fair
            },
            // Jitter is not RTT-driven in this plan: only the fixed value passes.
            AttemptTiming {
                retry_jitter_ms: p.retry_jitter_ms + 1,
                ..fair
            },
        ] {
            let v = g.timing(0, Some(&hostile)).unwrap_err();
            assert_eq!(v.rule, ViolationRule::Timing, "{hostile:?}");
        }
        // A fixed-timeout plan accepts only its own values.
        let g = guard();
        g.timing(0, Some(&plan().fixed_timing())).unwrap();
        let longer = AttemptTiming {
            attempt_timeout_ms: plan().attempt_timeout_ms + 1,
            ..plan().fixed_timing()
        };
        assert_eq!(rule(g.timing(0, Some(&longer))), ViolationRule::Timing);
        // Caps above the probe's hard caps refuse the plan itself.
        let mut p = plan();
        p.attempt_timeout_rtt_factor = Some(2.0);
        p.attempt_timeout_cap_ms = MAX_ATTEMPT_TIMEOUT_MS + 1;
        let v = CoordinatorGuard::new(&p, AddressPolicy::Public).unwrap_err();
        assert_eq!(v.rule, ViolationRule::PlanLimit);
        assert!(v.detail.contains("attempt_timeout_cap_ms"), "{}", v.detail);
    }

    #[test]
    fn trials_come_in_order_once_and_within_the_plan() {
        let mut g = guard();
        assert_eq!(
            rule(g.trial(1, Strategy::LowTtl, Family::Ipv4)),
            ViolationRule::TrialOrder
        );
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        assert_eq!(
            rule(g.trial(0, Strategy::Simultaneous, Family::Ipv4)),
            ViolationRule::TrialOrder
        );
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        g.trial(2, Strategy::Simultaneous, Family::Ipv4).unwrap();
        let beyond = g.trial(3, Strategy::LowTtl, Family::Ipv4).unwrap_err();
        assert_eq!(beyond.rule, ViolationRule::TrialOrder);
        assert!(beyond.detail.contains("beyond the plan's 3 trials"));
        assert_eq!(rule(g.peer_result(7)), ViolationRule::TrialOrder);
        let mut g = guard();
        assert_eq!(
            rule(g.trial(0, Strategy::LowTtl, Family::Ipv4)),
            ViolationRule::Strategy
        );
    }

    #[test]
    fn each_trial_goes_once_and_only_when_running() {
        let mut g = guard();
        let go = |g: &mut CoordinatorGuard, trial| {
            g.go(trial, peer(), ms(10), ms(0), Strategy::Simultaneous)
        };
        assert_eq!(rule(go(&mut g, 0)), ViolationRule::TrialOrder);
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        go(&mut g, 0).unwrap();
        assert_eq!(rule(go(&mut g, 0)), ViolationRule::Unexpected);
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        assert_eq!(rule(go(&mut g, 0)), ViolationRule::TrialOrder);
    }

    #[test]
    fn peers_must_be_public_addresses() {
        for bad in [
            "127.0.0.1:22",
            "10.0.0.1:445",
            "100.64.1.1:80",
            "0.0.0.0:1",
            "203.0.113.7:0",
        ] {
            let mut g = guard();
            g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
            let v = g
                .go(
                    0,
                    bad.parse().unwrap(),
                    ms(0),
                    ms(0),
                    Strategy::Simultaneous,
                )
                .unwrap_err();
            assert_eq!(v.rule, ViolationRule::PeerAddress, "{bad}");
        }
        let mut g = CoordinatorGuard::new(&plan(), AddressPolicy::PublicOrLoopback).unwrap();
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(
            0,
            "127.0.0.1:9".parse().unwrap(),
            ms(0),
            ms(0),
            Strategy::Simultaneous,
        )
        .unwrap();
    }

    #[test]
    fn a_prime_may_carry_the_ttl_of_our_own_measured_path_and_no_other() {
        use punchscope_analysis::classify::{Finding, PathVerdict, Verdict};
        fn unknown<T>() -> Finding<T> {
            Finding::Unknown {
                reason: "not measured in this test".into(),
            }
        }
        let verdict = Verdict {
            no_nat: false,
            mapping: unknown(),
            filtering: unknown(),
            port_preserved: None,
            allocation: unknown(),
            hairpin: None,
            missing: Vec::new(),
            path: Some(PathVerdict {
                hops: Vec::new(),
                nat_hops: Some(3),
                cgnat: Some(true),
                prime_ttl: Some(4),
            }),
            ipv6: None,
        };
        let mut g = guard().with_own_verdict(Some(&verdict));
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(0, peer(), ms(40), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        assert_eq!(
            rule(g.clone().prime(1, peer(), 3)),
            ViolationRule::Ttl,
            "the plan's TTL is not ours now"
        );
        assert_eq!(rule(g.clone().prime(1, peer(), 64)), ViolationRule::Ttl);
        g.prime(1, peer(), 4).unwrap();
        // Without a measured path, the plan's TTL stands.
        let mut g = guard().with_own_verdict(None);
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(0, peer(), ms(40), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        g.prime(1, peer(), 3).unwrap();
        // An IPv6 trial: our IPv4 path says nothing of it, the plan's TTL stands.
        let mut dual = plan();
        dual.families = Family::ALL.to_vec();
        let mut g = CoordinatorGuard::new(&dual, AddressPolicy::Public)
            .unwrap()
            .with_families(Family::ALL)
            .with_own_verdict(Some(&verdict));
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        g.go(0, peer(), ms(40), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv6).unwrap();
        let peer_v6: SocketAddr = "[2001:db8:2:1::7]:40000".parse().unwrap();
        assert_eq!(rule(g.clone().prime(1, peer_v6, 4)), ViolationRule::Ttl);
        g.prime(1, peer_v6, 3).unwrap();
    }

    #[test]
    fn a_trial_runs_only_in_our_and_the_plans_families_and_aims_within_its_own() {
        let mut dual = plan();
        dual.families = Family::ALL.to_vec();
        let peer_v6: SocketAddr = "[2001:db8:2:1::7]:40000".parse().unwrap();
        // We told the coordinator IPv4 only: an IPv6 trial is refused.
        let mut g = CoordinatorGuard::new(&dual, AddressPolicy::Public).unwrap();
        assert_eq!(
            rule(g.trial(0, Strategy::Simultaneous, Family::Ipv6)),
            ViolationRule::Family
        );
        // The plan has IPv4 only: the same, whatever we have.
        let mut g = guard().with_families(Family::ALL);
        assert_eq!(
            rule(g.trial(0, Strategy::Simultaneous, Family::Ipv6)),
            ViolationRule::Family
        );
        // Within an IPv6 trial, go and prime must name an IPv6 peer.
        let mut g = CoordinatorGuard::new(&dual, AddressPolicy::Public)
            .unwrap()
            .with_families(Family::ALL);
        g.trial(0, Strategy::Simultaneous, Family::Ipv6).unwrap();
        assert_eq!(
            rule(
                g.clone()
                    .go(0, peer(), ms(40), ms(0), Strategy::Simultaneous)
            ),
            ViolationRule::Family
        );
        // An IPv4 peer written as IPv6 is refused as such, in either family.
        let mapped: SocketAddr = "[::ffff:203.0.113.7]:40000".parse().unwrap();
        assert_eq!(
            rule(
                g.clone()
                    .go(0, mapped, ms(40), ms(0), Strategy::Simultaneous)
            ),
            ViolationRule::PeerAddress
        );
        g.go(0, peer_v6, ms(40), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv6).unwrap();
        assert_eq!(rule(g.clone().prime(1, peer(), 3)), ViolationRule::Family);
        g.prime(1, peer_v6, 3).unwrap();
    }

    #[test]
    fn primes_use_the_plans_ttl_once_and_go_follows_to_the_same_peer() {
        let mut g = guard();
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        assert_eq!(rule(g.prime(0, peer(), 3)), ViolationRule::Ttl);
        g.go(0, peer(), ms(0), ms(0), Strategy::Simultaneous)
            .unwrap();
        g.trial(1, Strategy::LowTtl, Family::Ipv4).unwrap();
        assert_eq!(
            rule(g.go(1, peer(), ms(0), ms(0), Strategy::LowTtl)),
            ViolationRule::Unexpected
        );
        assert_eq!(rule(g.prime(1, peer(), 64)), ViolationRule::Ttl);
        assert_eq!(
            rule(g.prime(1, "192.168.0.1:80".parse().unwrap(), 3)),
            ViolationRule::PeerAddress
        );
        g.prime(1, peer(), 3).unwrap();
        assert_eq!(rule(g.prime(1, peer(), 3)), ViolationRule::Unexpected);
        let elsewhere = "198.51.100.99:80".parse().unwrap();
        assert_eq!(
            rule(g.go(1, elsewhere, ms(0), ms(0), Strategy::LowTtl)),
            ViolationRule::PeerAddress
        );
    }

    #[test]
    fn start_delays_are_bounded_by_the_cap_plus_the_plans_skew() {
        let attempt = |delay: u64, skew: u64| {
            let mut g = guard();
            g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
            g.go(0, peer(), ms(delay), ms(skew), Strategy::Simultaneous)
        };
        attempt(5_200, 200).unwrap();
        attempt(5_000, 0).unwrap();
        assert_eq!(rule(attempt(5_201, 200)), ViolationRule::StartDelay);
        assert_eq!(rule(attempt(100, 201)), ViolationRule::StartDelay);
        assert_eq!(rule(attempt(u64::MAX / 2, 0)), ViolationRule::StartDelay);
        assert_eq!(rule(attempt(10, 50)), ViolationRule::StartDelay);
    }

    /// A verdict with only what the pair class reads: mapping and allocation.
    fn verdict(
        mapping: punchscope_analysis::nat::Mapping,
        allocation: punchscope_analysis::classify::AllocationPattern,
    ) -> Verdict {
        use punchscope_analysis::classify::Finding;
        Verdict {
            no_nat: false,
            mapping: Finding::Known { value: mapping },
            filtering: Finding::Known {
                value: punchscope_analysis::nat::Filtering::Apdf,
            },
            port_preserved: None,
            allocation: Finding::Known { value: allocation },
            hairpin: None,
            missing: Vec::new(),
            path: None,
            ipv6: None,
        }
    }

    #[test]
    fn hard_nat_trials_come_from_the_classs_mix_and_aim_only_at_the_peer() {
        use punchscope_analysis::classify::AllocationPattern;
        use punchscope_analysis::nat::Mapping;
        let mut plan = plan();
        plan.class_strategies.insert(
            PairClass::EasyRandom,
            vec![Strategy::Simultaneous, Strategy::Birthday],
        );
        plan.birthday_ports = 4;
        let easy = verdict(Mapping::Eim, AllocationPattern::Preserving);
        let random = verdict(Mapping::Apdm, AllocationPattern::Random);
        let seq = verdict(
            Mapping::Apdm,
            AllocationPattern::Sequential {
                step: 1,
                exact: true,
            },
        );
        let mut g = CoordinatorGuard::new(&plan, AddressPolicy::Public)
            .unwrap()
            .with_pair(Some(&easy), Some(&random));
        assert_eq!(g.pair_class(), PairClass::EasyRandom);
        assert_eq!(
            g.hard_role(Strategy::Birthday),
            Some(HardRole::BirthdaySpray)
        );
        // The mix, in any order: trial 0 may be birthday though the rotation says simultaneous.
        g.trial(0, Strategy::Birthday, Family::Ipv4).unwrap();
        g.go(0, peer(), ms(0), ms(0), Strategy::Birthday).unwrap();
        let at = |port: u16| SocketAddr::new(peer().ip(), port);
        g.targets(0, peer(), &[at(1), at(2), at(3), at(4)]).unwrap();
        assert_eq!(
            rule(g.targets(0, peer(), &[at(1), at(2), at(3), at(4), at(5)])),
            ViolationRule::PlanLimit
        );
        let stranger: SocketAddr = "198.51.100.99:5".parse().unwrap();
        assert_eq!(
            rule(g.targets(0, peer(), &[at(1), stranger])),
            ViolationRule::PeerAddress
        );
        // Not in the mix.
        assert_eq!(
            rule(g.trial(1, Strategy::LowTtl, Family::Ipv4)),
            ViolationRule::Strategy
        );
        // A pair without a mix keeps the rotation, and a hard strategy that does not apply is refused.
        let mut g = CoordinatorGuard::new(&plan, AddressPolicy::Public)
            .unwrap()
            .with_pair(Some(&seq), Some(&random));
        assert_eq!(g.pair_class(), PairClass::HardHard);
        assert_eq!(
            rule(g.trial(0, Strategy::Birthday, Family::Ipv4)),
            ViolationRule::Strategy
        );
        g.trial(0, Strategy::Simultaneous, Family::Ipv4).unwrap();
        // Plans over the hard caps never get this far.
        let mut greedy = plan.clone();
        greedy.birthday_sockets = 100_000;
        let refused = CoordinatorGuard::new(&greedy, AddressPolicy::Public).unwrap_err();
        assert_eq!(refused.rule, ViolationRule::PlanLimit);
        assert!(
            refused.detail.contains("birthday_sockets"),
            "{}",
            refused.detail
        );
    }
}
