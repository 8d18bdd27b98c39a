//! One pairing driven end to end: wait for a peer through the coordinator, then
//! for each trial register a fresh port, prime it if asked, punch, shake hands,
//! and report. Every trial becomes a record, whatever happened to it.

use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::handshake::{HandshakeBy, Role};
use punchscope_analysis::plan::Plan;
use punchscope_analysis::portmap::{MappedSide, TrialMapping};
use punchscope_analysis::result::{CoordinatorViolation, Pairing, PairingEnded};
use punchscope_analysis::trial::{Family, Strategy, TrialOutcome, TrialRecord};

use super::guard::CoordinatorGuard;
use super::Progress;
use crate::net::address::AddressPolicy;
use crate::net::socket::unspecified;
use crate::node::NodeBridge;
use crate::portmap::trial::{HeldMapping, TrialMapper};
use crate::proto::rendezvous::Mode;
use crate::punch::hard::HardMove;
use crate::punch::{self, HandshakeSpec, TrialSpec};
use crate::rendezvous::{register_port, Client, Hello, RendezvousError, Step, TrialReport};

/// How to reach the coordinator and what to tell it.
#[derive(Debug, Clone)]
pub struct PairingOptions {
    /// The coordinator's address the control connection goes to.
    pub server: SocketAddr,
    /// The coordinator's address in each IP family we run trials in, at most
    /// one per family (`server` among them): a trial registers its port at
    /// the one of its family. Chosen by us, never told by the coordinator.
    /// The hello's `families` must name exactly these families.
    pub registrars: Vec<SocketAddr>,
    pub hello: Hello,
    /// Bound on every wait for a coordinator line outside trials.
    pub read_timeout: Duration,
    /// How long to wait for a peer.
    pub max_wait: Duration,
    /// Which peer endpoints the coordinator may send us to. Always
    /// [`AddressPolicy::Public`] outside loopback tests: no flag and no
    /// message can loosen it.
    pub addresses: AddressPolicy,
    /// Bridge mode: every punched socket goes to this node instead of
    /// punchscope's own handshake.
    pub node: Option<NodeBridge>,
    /// `mapped` trials: asks the gateway to map each such trial's port
    /// (with the protocol that granted one earlier in the run); `None`
    /// registers no mapping (port mapping declined, or nothing granted).
    pub mapper: Option<TrialMapper>,
}

impl PairingOptions {
    /// The coordinator's address of `family`, if we run trials in it.
    pub fn registrar(&self, family: Family) -> Option<SocketAddr> {
        first_of_family(&self.registrars, family)
    }

    /// The families we run trials in: those of `registrars`, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        Family::ALL
            .iter()
            .copied()
            .filter(|f| self.registrar(*f).is_some())
            .collect()
    }
}

/// The first of `addresses` in `family`.
pub(super) fn first_of_family(addresses: &[SocketAddr], family: Family) -> Option<SocketAddr> {
    addresses
        .iter()
        .copied()
        .find(|a| Family::of(a.ip()) == family)
}

/// One pairing as recorded, with what the caller needs beyond the record.
#[derive(Debug, Clone)]
pub struct PairingRun {
    /// The record that goes into the result.
    pub pairing: Pairing,
    /// Whether the peer was a volunteer or a reference peer.
    pub peer_mode: Mode,
    /// Why the coordinator was lost, when `pairing.ended` says it was (the
    /// record keeps only the fact: error texts may hold addresses).
    pub coordinator_error: Option<String>,
}

/// A trial registered with the coordinator and not yet run.
struct Pending {
    trial: u32,
    strategy: Strategy,
    family: Family,
    /// The address the trial's sockets bind: unspecified over IPv4, the
    /// registered source address over IPv6.
    local_ip: std::net::IpAddr,
    local_port: u16,
    public_port: u16,
    prime_error: Option<String>,
    /// `mapped`: the mapping held for `local_port`, released after the trial.
    mapping: Option<HeldMapping>,
}

impl Pending {
    /// Where the trial's sockets bind: the registered port, at `local_ip`.
    fn local(&self) -> SocketAddr {
        SocketAddr::new(self.local_ip, self.local_port)
    }

    /// The external port our gateway mapped for this trial, if it did.
    fn mapping_port(&self) -> Option<u16> {
        self.mapping.as_ref().and_then(HeldMapping::external_port)
    }

    /// Deletes the trial's mapping, if it holds one, and says what happened to it.
    async fn release_mapping(&mut self, side: Option<MappedSide>) -> Option<TrialMapping> {
        let held = self.mapping.take()?;
        Some(TrialMapping {
            side,
            asked: held.release().await,
        })
    }
}

/// Waits for a peer and runs the plan. `Err` only when no pairing happened
/// (no coordinator, no peer, stopped while waiting): once paired, whatever
/// happens is in the record.
pub async fn run_pairing(
    options: &PairingOptions,
    mut progress: impl FnMut(Progress),
    stop: impl std::future::Future<Output = ()>,
) -> Result<PairingRun, RendezvousError> {
    tokio::pin!(stop);
    let find_peer = async {
        let mut client =
            Client::connect(options.server, options.hello.clone(), options.read_timeout).await?;
        let pairing = client
            .wait_for_pairing(
                |waited| progress(Progress::Waiting { waited }),
                options.max_wait,
            )
            .await?;
        Ok::<_, RendezvousError>((client, pairing))
    };
    // A stop while waiting for a peer ends the wait (dropping the connection
    // tells the coordinator); once paired, it ends the pairing with a record.
    let (mut client, pairing) = tokio::select! {
        found = find_peer => found?,
        () = &mut stop => return Err(RendezvousError::Interrupted),
    };
    progress(Progress::Paired {
        role: pairing.role,
        trials: pairing.plan.trials,
        peer_mode: pairing.peer_mode,
        estimate: trials_estimate(&pairing.plan),
    });
    let mut run = PairingRun {
        pairing: Pairing {
            peer_verdict: pairing.peer_verdict.clone(),
            role: pairing.role,
            plan: pairing.plan.clone(),
            trials: Vec::new(),
            ended: PairingEnded::Done,
            coordinator_violation: None,
        },
        peer_mode: pairing.peer_mode,
        coordinator_error: None,
    };
    let record = &mut run.pairing;
    let plan = pairing.plan;
    let mut guard = match CoordinatorGuard::new(&plan, options.addresses) {
        Ok(guard) => guard
            .with_families(&options.families())
            .with_own_verdict(options.hello.verdict.as_deref())
            .with_pair(
                options.hello.verdict.as_deref(),
                pairing.peer_verdict.as_ref(),
            ),
        Err(violation) => {
            leave_for_violation(&mut client, record, violation).await;
            return Ok(run);
        }
    };
    let mut pending: Option<Pending> = None;
    loop {
        let next = tokio::select! {
            next = client.next() => next,
            () = &mut stop => {
                record.ended = PairingEnded::Interrupted;
                let _ = client.bye().await;
                break;
            }
        };
        let step = match next {
            Ok(step) => step,
            Err(e) => {
                record.ended = PairingEnded::CoordinatorLost;
                run.coordinator_error = Some(e.to_string());
                break;
            }
        };
        // Nothing is sent for an instruction the guard refuses: the pairing ends here.
        if let Err(violation) = check(&mut guard, &step) {
            leave_for_violation(&mut client, record, violation).await;
            break;
        }
        match step {
            Step::Trial {
                trial,
                token,
                strategy,
                family,
            } => {
                // A trial registered but never started leaves no mapping behind.
                if let Some(mut stale) = pending.take() {
                    stale.release_mapping(None).await;
                }
                // The guard let only our own families through.
                let registrar = options.registrar(family).unwrap_or(options.server);
                // Over IPv6 the trial leaves from one address, the one the
                // coordinator observes: no NAT in front hides a host's several
                // addresses (temporary ones, two prefixes), and the peer's
                // firewall opens its pinhole to the observed one only.
                let local_ip = match family {
                    Family::Ipv6 => crate::net::socket::source_ip_towards(registrar)
                        .unwrap_or_else(|_| unspecified(registrar, 0).ip()),
                    Family::Ipv4 => unspecified(registrar, 0).ip(),
                };
                let socket = match crate::net::socket::bound(SocketAddr::new(local_ip, 0)) {
                    Ok(socket) => socket,
                    Err(e) => {
                        // We could not even bind: the trial is our local error. The
                        // coordinator times the trial out for both sides.
                        let error = RendezvousError::from(e).to_string();
                        record.trials.push(TrialRecord {
                            family,
                            ..unrun(
                                trial,
                                strategy,
                                pairing.role,
                                TrialOutcome::LocalError,
                                Some(error),
                            )
                        });
                        continue;
                    }
                };
                let local_port = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map_or(0, |a| a.port());
                // `mapped`: the gateway maps the port before the coordinator sees
                // it, so `go` can send the peer straight to it. Bounded
                // (portmap::trial), and not cut short: what it gets is deleted.
                // Trial mappings are IPv4 ones: an IPv6 trial registers none.
                let mapping = match (&options.mapper, strategy, family) {
                    (Some(mapper), Strategy::Mapped, Family::Ipv4) => {
                        mapper.open(local_port).await.ok()
                    }
                    _ => None,
                };
                let mut registered = Pending {
                    trial,
                    strategy,
                    family,
                    local_ip,
                    local_port,
                    public_port: 0,
                    prime_error: None,
                    mapping,
                };
                let mapped_port = registered.mapping_port();
                let registration = tokio::select! {
                    result = register_port(
                        socket,
                        registrar,
                        &token,
                        mapped_port,
                        options.read_timeout,
                    ) => Some(result),
                    () = &mut stop => None,
                };
                match registration {
                    Some(Ok(observed)) => {
                        registered.public_port = observed.port();
                        pending = Some(registered);
                    }
                    Some(Err(e)) => {
                        // We could not register: the trial is our local error. The
                        // coordinator times the trial out for both sides.
                        let mapping = registered.release_mapping(None).await;
                        record.trials.push(TrialRecord {
                            mapping,
                            family,
                            ..unrun(
                                trial,
                                strategy,
                                pairing.role,
                                TrialOutcome::LocalError,
                                Some(e.to_string()),
                            )
                        });
                    }
                    None => {
                        registered.release_mapping(None).await;
                        record.ended = PairingEnded::Interrupted;
                        let _ = client.bye().await;
                        break;
                    }
                }
            }
            Step::Prime { trial, peer, ttl } => {
                // The coordinator needs `primed` from both sides whatever happened; a
                // failed priming SYN is noted and the trial then runs unprimed.
                if let Some(p) = pending.as_mut().filter(|p| p.trial == trial) {
                    if let Err(e) = punch::prime_low_ttl(p.local(), peer, ttl).await {
                        p.prime_error = Some(format!("low-TTL priming SYN failed: {e}"));
                    }
                }
                if let Err(e) = client.primed(trial).await {
                    record.ended = PairingEnded::CoordinatorLost;
                    run.coordinator_error = Some(e.to_string());
                    break;
                }
            }
            Step::Go {
                trial,
                peer,
                delay,
                nonce,
                strategy,
                injected_skew,
                timing,
                mapped,
            } => {
                let go_at = tokio::time::Instant::now();
                let mut p = match pending.take() {
                    Some(p) if p.trial == trial => p,
                    other => {
                        // Another trial's registration goes with its mapping.
                        if let Some(mut stale) = other {
                            stale.release_mapping(None).await;
                        }
                        let trial_record = TrialRecord {
                            family: Family::of(peer.ip()),
                            ..unrun(
                                trial,
                                strategy,
                                pairing.role,
                                TrialOutcome::LocalError,
                                Some("go for a trial we did not register".into()),
                            )
                        };
                        let _ = client
                            .report(trial, &TrialReport::from(&trial_record))
                            .await;
                        record.trials.push(trial_record);
                        continue;
                    }
                };
                let local = p.local();
                if let Err(violation) =
                    guard.mapped(trial, mapped, p.mapping_port().is_some(), peer)
                {
                    p.release_mapping(None).await;
                    leave_for_violation(&mut client, record, violation).await;
                    break;
                }
                // `predict` and `birthday`: our move from both verdicts, its
                // targets shown to the guard before any SYN leaves.
                let hard = guard
                    .hard_role(strategy)
                    .filter(|_| strategy.is_hard_nat())
                    .map(|role| HardMove::for_role(role, &plan, peer));
                if let Some(hard) = &hard {
                    if let Err(violation) = guard.targets(trial, peer, &hard.targets(peer)) {
                        p.release_mapping(None).await;
                        leave_for_violation(&mut client, record, violation).await;
                        break;
                    }
                }
                // What `go` says wins over what the plan implies.
                let spec = TrialSpec {
                    strategy,
                    public_port: Some(p.public_port),
                    start_delay: delay.saturating_sub(injected_skew),
                    injected_skew,
                    hard,
                    mapped,
                    ..TrialSpec::from_plan(&plan, trial, pairing.role, local, peer, nonce)
                };
                // The guard held `timing` to the plan's floors and caps.
                let spec = match &timing {
                    Some(timing) => spec.with_timing(timing),
                    None => spec,
                };
                let handshake = HandshakeSpec::from_plan(&plan, trial);
                let trial_run = async {
                    match &options.node {
                        Some(node) => {
                            punch::run_trial_with_node(&spec, &handshake, node, go_at).await
                        }
                        None => punch::run_trial_with_handshake(&spec, &handshake, go_at).await,
                    }
                };
                let finished = tokio::select! {
                    record = trial_run => Some(record),
                    () = &mut stop => None,
                };
                let Some(mut trial_record) = finished else {
                    // Interrupted mid-trial: that trial has no outcome to report;
                    // its mapping goes at once.
                    p.release_mapping(mapped).await;
                    record.ended = PairingEnded::Interrupted;
                    let _ = client.bye().await;
                    break;
                };
                if let Some(e) = p.prime_error.take() {
                    trial_record.error.get_or_insert(e);
                }
                trial_record.family = p.family;
                progress(Progress::TrialDone {
                    trial,
                    outcome: trial_record.outcome,
                });
                // The result first (the coordinator's deadline counts), then the
                // mapping's deletion, before anything else is read.
                let report = client
                    .report(trial, &TrialReport::from(&trial_record))
                    .await;
                let mapping = p.release_mapping(mapped).await;
                if mapped.is_some() || mapping.is_some() {
                    trial_record.mapping = mapping.or(Some(TrialMapping {
                        side: mapped,
                        asked: None,
                    }));
                }
                record.trials.push(trial_record);
                if let Err(e) = report {
                    record.ended = PairingEnded::CoordinatorLost;
                    run.coordinator_error = Some(e.to_string());
                    break;
                }
            }
            Step::PeerResult { trial, outcome } => {
                if let Some(t) = record.trials.iter_mut().find(|t| t.trial == trial) {
                    t.peer_outcome = Some(outcome);
                }
            }
            Step::PeerGone { .. } => {
                if let Some(mut p) = pending.take() {
                    let mapping = p.release_mapping(None).await;
                    record.trials.push(TrialRecord {
                        mapping,
                        family: p.family,
                        ..unrun(
                            p.trial,
                            p.strategy,
                            pairing.role,
                            TrialOutcome::PeerVanished,
                            None,
                        )
                    });
                }
                record.ended = PairingEnded::PeerGone;
                break;
            }
            Step::Done { .. } => {
                let _ = client.bye().await;
                break;
            }
        }
    }
    // However the pairing ended (stop, violation, coordinator lost), a trial
    // registered and never run gives its mapping back.
    if let Some(mut p) = pending.take() {
        p.release_mapping(None).await;
    }
    // A plan with strategy mixes: every trial says which class this side
    // saw and, when its strategy was drawn, from which mix, so the report
    // never pools rates across allocations.
    if !plan.class_strategies.is_empty() {
        let class = guard.pair_class();
        for trial in &mut run.pairing.trials {
            trial.pair_class = Some(class);
            trial.drawn_from = plan.mix_for(class).map(<[Strategy]>::to_vec);
        }
    }
    // In bridge mode every trial is the nodes' to measure, also those that
    // never reached punching: the record says so plainly.
    if options.node.is_some() {
        for trial in &mut run.pairing.trials {
            trial.handshake_by = HandshakeBy::Nodes;
        }
    }
    Ok(run)
}

/// About how long a pairing's trials take at most: each trial's
/// registration and RTT samples (about a second), then every attempt failing
/// with its average retry gap. Trials that connect take far less.
pub fn trials_estimate(plan: &Plan) -> Duration {
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let attempt =
        ms(plan.attempt_timeout_ms) + ms(plan.retry_gap_ms) + ms(plan.retry_jitter_ms) / 2;
    (Duration::from_secs(1) + attempt * plan.max_attempts) * plan.trials
}

/// Holds one coordinator instruction to the plan and the probe's rules.
fn check(guard: &mut CoordinatorGuard, step: &Step) -> Result<(), CoordinatorViolation> {
    match step {
        Step::Trial {
            trial,
            strategy,
            family,
            ..
        } => guard.trial(*trial, *strategy, *family),
        Step::Prime { trial, peer, ttl } => guard.prime(*trial, *peer, *ttl),
        Step::Go {
            trial,
            peer,
            delay,
            injected_skew,
            strategy,
            timing,
            ..
        } => guard
            .go(*trial, *peer, *delay, *injected_skew, *strategy)
            .and_then(|()| guard.timing(*trial, timing.as_ref())),
        Step::PeerResult { trial, .. } => guard.peer_result(*trial),
        Step::PeerGone { .. } | Step::Done { .. } => Ok(()),
    }
}

/// Ends the pairing on a refused instruction: the record says what was
/// refused, and the coordinator hears `bye` (it tells the peer `peer_gone`).
async fn leave_for_violation(
    client: &mut Client,
    record: &mut Pairing,
    violation: CoordinatorViolation,
) {
    record.ended = PairingEnded::CoordinatorLost;
    record.coordinator_violation = Some(violation);
    let _ = client.bye().await;
}

/// The record of a trial that never got to punching.
fn unrun(
    trial: u32,
    strategy: Strategy,
    role: Role,
    outcome: TrialOutcome,
    error: Option<String>,
) -> TrialRecord {
    TrialRecord {
        error,
        ..TrialRecord::unrun(trial, strategy, role, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_plan_takes_at_most_about_five_minutes() {
        let plan = crate::proto::rendezvous::coordinator::CoordinatorConfig::default().plan;
        // 20 x (1 s + 4 x (3 s + 0.2 s + 0.5 s)) = 316 s.
        assert_eq!(trials_estimate(&plan), Duration::from_secs(316));
    }
}
