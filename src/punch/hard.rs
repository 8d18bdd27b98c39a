//! The hard-NAT moves of `predict` and `birthday`: many SYNs from one side, each to the paired peer's observed address only, paced and capped by the plan, the first connection that completes wins.
//!
//! What each side does comes from [`HardRole`] (both verdicts) and is
//! decided before the trial by the pairing, which also shows the targets to
//! the guard ([`crate::probe::guard`]): here, every SYN goes to `spec.peer`'s
//! IP and nowhere else, by construction of [`HardMove`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use punchscope_analysis::hardnat::{HardRole, HardTrialRecord};
use punchscope_analysis::plan::Plan;
use punchscope_analysis::trial::{Attempt, AttemptResult, Completion};
use rand::seq::index::sample;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{accept_from_peer, attempt, connect_with_retries, ms, TrialSpec};
use crate::net::socket;

/// One side's move in a hard-NAT trial. Ports are of the peer's address
/// (`TrialSpec::peer`'s IP): no move can name another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HardMove {
    /// `predict`, the sequential side: connect to the peer and listen, with
    /// the plan's retries (its NAT maps the connection to the predicted port).
    Direct,
    /// `predict`, the easy side: from the trial port, connect to each of
    /// these ports of the peer's address (with retries), and listen.
    Aim { ports: Vec<u16> },
    /// `birthday`, the random side: `m` connections from fresh local ports
    /// to the peer, paced at `pps`, each held for `hold`.
    Open { m: u32, pps: u32, hold: Duration },
    /// `birthday`, the easy side: after `lead` (the opener's pacing), one
    /// SYN from the trial port to each of these ports of the peer's address,
    /// paced at `pps`; `range` is the size of the range they were drawn from.
    Spray {
        ports: Vec<u16>,
        pps: u32,
        range: u32,
        lead: Duration,
    },
}

impl HardMove {
    /// This side's move under `plan` for `role`, against a peer observed at
    /// `peer` (the `go` message's endpoint). `birthday` ports are drawn
    /// here, uniformly without repetition from the plan's range.
    pub fn for_role(role: HardRole, plan: &Plan, peer: SocketAddr) -> HardMove {
        let pace = |count: u32| pace_span(count, plan.birthday_pps);
        let attempt = Duration::from_millis(u64::from(plan.attempt_timeout_ms));
        match role {
            HardRole::PredictHard => HardMove::Direct,
            HardRole::PredictAim { step } => HardMove::Aim {
                ports: punchscope_analysis::hardnat::predicted_ports(
                    peer.port(),
                    step,
                    plan.predict_window,
                ),
            },
            HardRole::BirthdayOpen => HardMove::Open {
                m: plan.birthday_sockets,
                pps: plan.birthday_pps,
                // Alive until the last sprayed SYN had its full attempt time.
                hold: pace(plan.birthday_sockets) + pace(plan.birthday_ports) + attempt * 2,
            },
            HardRole::BirthdaySpray => {
                let [first, _] = plan.birthday_port_range;
                let range = plan.birthday_range();
                let mut rng = rand::thread_rng();
                let ports = sample(&mut rng, range as usize, plan.birthday_ports as usize)
                    .into_iter()
                    .map(|i| first + i as u16)
                    .collect();
                HardMove::Spray {
                    ports,
                    pps: plan.birthday_pps,
                    range,
                    // The opener's mappings exist before our SYNs reach its NAT.
                    lead: pace(plan.birthday_sockets),
                }
            }
        }
    }

    /// Every endpoint this move sends SYNs to, for the guard.
    pub fn targets(&self, peer: SocketAddr) -> Vec<SocketAddr> {
        match self {
            HardMove::Direct | HardMove::Open { .. } => vec![peer],
            HardMove::Aim { ports } | HardMove::Spray { ports, .. } => ports
                .iter()
                .map(|p| SocketAddr::new(peer.ip(), *p))
                .collect(),
        }
    }
}

/// How long `count` SYNs take at `pps` per second.
fn pace_span(count: u32, pps: u32) -> Duration {
    Duration::from_secs_f64(f64::from(count) / f64::from(pps.max(1)))
}

/// Runs the move from the moment our first SYN may leave; the attempts go
/// in `attempts` (the winner's, or all of them when nothing connected).
pub(super) async fn run(
    spec: &TrialSpec,
    hard: &HardMove,
    go_at: Instant,
    attempts: &mut Vec<Attempt>,
) -> (Option<(TcpStream, Completion)>, HardTrialRecord) {
    let mut record = HardTrialRecord {
        role: String::new(),
        window: None,
        m: None,
        n: None,
        range: None,
        ports_tried: 0,
        connects: 0,
        syns_sent: 0,
    };
    let connected = match hard {
        HardMove::Direct => {
            record.role = "predict_hard".into();
            record.ports_tried = 1;
            let mut scratch = empty_record(spec);
            let listener = socket::listen_on(spec.local).ok();
            let connected = race_listener(
                listener.as_ref(),
                spec,
                connect_with_retries(spec, go_at, &mut scratch),
            )
            .await;
            record.connects = scratch.attempts.len() as u32;
            record.syns_sent = syns_of(&scratch.attempts);
            attempts.extend(scratch.attempts);
            connected
        }
        HardMove::Aim { ports } => {
            record.role = "predict_aim".into();
            record.window = Some(ports.len() as u32);
            record.ports_tried = ports.len() as u32;
            let listener = socket::listen_on(spec.local).ok();
            let many = many_connects(spec, ports, go_at, Duration::ZERO, Pacing::AllAtOnce);
            let (connected, tried) = race_many(listener.as_ref(), spec, many.0).await;
            record.connects = tried.len() as u32;
            record.syns_sent = syns_of(&tried);
            attempts.extend(tried);
            connected
        }
        HardMove::Open { m, pps, hold } => {
            record.role = "birthday_open".into();
            record.m = Some(*m);
            record.ports_tried = 1;
            let (connected, tried) = open_many(spec, *m, *pps, *hold, go_at).await;
            record.connects = tried.len() as u32;
            record.syns_sent = syns_of(&tried);
            attempts.extend(tried);
            connected.map(|s| (s, Completion::Connect))
        }
        HardMove::Spray {
            ports,
            pps,
            range,
            lead,
        } => {
            record.role = "birthday_spray".into();
            record.n = Some(ports.len() as u32);
            record.range = Some(*range);
            record.ports_tried = ports.len() as u32;
            let many = many_connects(spec, ports, go_at, *lead, Pacing::PerSecond(*pps));
            let sent = many.1.clone();
            let (connected, tried) = race_many(None, spec, many.0).await;
            // A hit ends the spray: the ports not yet reached were never tried.
            let sent = sent.load(Ordering::Relaxed);
            record.ports_tried = sent;
            record.connects = sent;
            // Connects cut short by the hit sent their one SYN.
            record.syns_sent = syns_of(&tried) + sent.saturating_sub(tried.len() as u32);
            attempts.extend(tried);
            connected
        }
    };
    trim_attempts(attempts);
    (connected, record)
}

/// Most attempts a hard-NAT trial keeps in its record: a spray's hundreds
/// of SYNs are counted in [`HardTrialRecord`], and the record (and the
/// `result` line, at most 1000 attempts) stays small.
pub const MAX_RECORDED_ATTEMPTS: usize = 16;

/// Keeps the connected attempt (if any) and the latest others, in start order.
fn trim_attempts(attempts: &mut Vec<Attempt>) {
    if attempts.len() <= MAX_RECORDED_ATTEMPTS {
        return;
    }
    let winner = attempts
        .iter()
        .position(|a| a.result == AttemptResult::Connected);
    let mut kept: Vec<Attempt> = attempts
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != winner)
        .map(|(_, a)| a.clone())
        .collect();
    let keep_others = MAX_RECORDED_ATTEMPTS - usize::from(winner.is_some());
    kept.drain(..kept.len() - keep_others);
    if let Some(i) = winner {
        kept.push(attempts[i].clone());
    }
    kept.sort_by(|a, b| a.started_ms.total_cmp(&b.started_ms));
    *attempts = kept;
}

/// Connect tasks, each ending in its stream (if it connected) and its attempts.
type Connects = JoinSet<(Option<TcpStream>, Vec<Attempt>)>;

#[derive(Debug, Clone, Copy)]
enum Pacing {
    AllAtOnce,
    PerSecond(u32),
}

/// Our connect to the peer, raced against our listener (if any) taking the peer's SYN.
async fn race_listener(
    listener: Option<&tokio::net::TcpListener>,
    spec: &TrialSpec,
    connect: impl std::future::Future<Output = Option<TcpStream>>,
) -> Option<(TcpStream, Completion)> {
    match listener {
        None => connect.await.map(|s| (s, Completion::Connect)),
        Some(listener) => tokio::select! {
            stream = connect => stream.map(|s| (s, Completion::Connect)),
            accepted = accept_from_peer(listener, spec.peer.ip()) => Some((accepted, Completion::Listener)),
        },
    }
}

/// One task per target port of the peer's address, each connecting from
/// our trial port with the plan's retries (`AllAtOnce`) or once (paced).
fn many_connects(
    spec: &TrialSpec,
    ports: &[u16],
    go_at: Instant,
    lead: Duration,
    pacing: Pacing,
) -> (Connects, Arc<AtomicU32>) {
    let mut set = JoinSet::new();
    let started = Arc::new(AtomicU32::new(0));
    for (i, port) in ports.iter().enumerate() {
        let started = started.clone();
        let mut target = spec.clone();
        target.peer = SocketAddr::new(spec.peer.ip(), *port);
        let start = match pacing {
            Pacing::AllAtOnce => Instant::now(),
            Pacing::PerSecond(pps) => {
                target.max_attempts = 1;
                Instant::now() + lead + pace_span(i as u32, pps)
            }
        };
        set.spawn(async move {
            tokio::time::sleep_until(start).await;
            started.fetch_add(1, Ordering::Relaxed);
            let mut scratch = empty_record(&target);
            let stream = connect_with_retries(&target, go_at, &mut scratch).await;
            (stream, scratch.attempts)
        });
    }
    (set, started)
}

/// The first connection among `set` (or our listener's), with the attempts
/// of every task that finished; the rest are aborted.
async fn race_many(
    listener: Option<&tokio::net::TcpListener>,
    spec: &TrialSpec,
    mut set: Connects,
) -> (Option<(TcpStream, Completion)>, Vec<Attempt>) {
    let mut tried = Vec::new();
    let first = async {
        while let Some(joined) = set.join_next().await {
            if let Ok((stream, attempts)) = joined {
                tried.extend(attempts);
                if let Some(stream) = stream {
                    return Some(stream);
                }
            }
        }
        None
    };
    let connected = match listener {
        None => first.await.map(|s| (s, Completion::Connect)),
        Some(listener) => tokio::select! {
            stream = first => stream.map(|s| (s, Completion::Connect)),
            accepted = accept_from_peer(listener, spec.peer.ip()) => Some((accepted, Completion::Listener)),
        },
    };
    set.abort_all();
    tried.sort_by(|a, b| a.started_ms.total_cmp(&b.started_ms));
    (connected, tried)
}

/// `m` connections from fresh local ports to the peer, paced, each held
/// up to `hold`; the first that connects wins.
async fn open_many(
    spec: &TrialSpec,
    m: u32,
    pps: u32,
    hold: Duration,
    go_at: Instant,
) -> (Option<TcpStream>, Vec<Attempt>) {
    let connects = Arc::new(AtomicU32::new(0));
    let mut set = JoinSet::new();
    let any = SocketAddr::new(spec.local.ip(), 0);
    for i in 0..m {
        let (peer, connects) = (spec.peer, connects.clone());
        let start = Instant::now() + pace_span(i, pps);
        set.spawn(async move {
            tokio::time::sleep_until(start).await;
            connects.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let result = attempt::connect_from(any, peer, hold).await;
            let result = match result {
                Ok(stream) if stream.peer_addr().ok() == Some(peer) => Ok(stream),
                Ok(_) => Err(AttemptResult::Error {
                    detail: "connected, but not to the peer".into(),
                }),
                Err(attempt::ConnectError::Timeout) => Err(AttemptResult::Timeout),
                Err(attempt::ConnectError::Io(e)) => Err(attempt::result_of(&e)),
            };
            let attempt = Attempt {
                started_ms: ms(started.duration_since(go_at)),
                duration_ms: ms(started.elapsed()),
                result: match &result {
                    Ok(_) => AttemptResult::Connected,
                    Err(r) => r.clone(),
                },
            };
            (result.ok(), vec![attempt])
        });
    }
    let (connected, tried) = race_many(None, spec, set).await;
    (connected.map(|(s, _)| s), tried)
}

/// SYNs an attempt list stands for: one per connect(), plus the SYNs Linux
/// retransmits while a connect waits unanswered (initial RTO 1 s, doubling:
/// at 1, 3, 7, 15, 31 s).
fn syns_of(attempts: &[Attempt]) -> u32 {
    attempts
        .iter()
        .map(|a| {
            1 + [1_000.0, 3_000.0, 7_000.0, 15_000.0, 31_000.0]
                .iter()
                .filter(|at| a.duration_ms > **at)
                .count() as u32
        })
        .sum()
}

/// A scratch record for [`connect_with_retries`], which writes attempts into one.
fn empty_record(spec: &TrialSpec) -> punchscope_analysis::trial::TrialRecord {
    use punchscope_analysis::trial::{TrialOutcome, TrialRecord};
    TrialRecord {
        local_port: spec.local.port(),
        ..TrialRecord::unrun(spec.trial, spec.strategy, spec.role, TrialOutcome::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punchscope_analysis::hardnat::HardRole;

    #[test]
    fn moves_aim_only_at_the_peers_address_and_within_the_plan() {
        let mut plan = super::super::default_plan("t");
        plan.predict_window = 4;
        plan.birthday_ports = 50;
        plan.birthday_port_range = [20000, 20099];
        plan.birthday_sockets = 10;
        plan.birthday_pps = 100;
        let peer: SocketAddr = "203.0.113.9:30000".parse().unwrap();
        let aim = HardMove::for_role(HardRole::PredictAim { step: 2 }, &plan, peer);
        assert_eq!(
            aim,
            HardMove::Aim {
                ports: vec![30002, 30004, 30006, 30008]
            }
        );
        let spray = HardMove::for_role(HardRole::BirthdaySpray, &plan, peer);
        let HardMove::Spray {
            ports, lead, range, ..
        } = &spray
        else {
            panic!("{spray:?}")
        };
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!((ports.len(), distinct.len(), *range), (50, 50, 100));
        assert!(ports.iter().all(|p| (20000..=20099).contains(p)));
        assert_eq!(*lead, Duration::from_millis(100), "10 sockets at 100/s");
        assert!(spray.targets(peer).iter().all(|t| t.ip() == peer.ip()));
        assert_eq!(
            HardMove::for_role(HardRole::BirthdayOpen, &plan, peer).targets(peer),
            vec![peer]
        );
    }

    #[test]
    fn records_keep_the_winner_and_the_latest_attempts() {
        let a = |started_ms: f64, result: AttemptResult| Attempt {
            started_ms,
            duration_ms: 1.0,
            result,
        };
        let mut attempts: Vec<Attempt> = (0..40)
            .map(|i| a(f64::from(i), AttemptResult::Timeout))
            .collect();
        attempts[3].result = AttemptResult::Connected;
        trim_attempts(&mut attempts);
        assert_eq!(attempts.len(), MAX_RECORDED_ATTEMPTS);
        assert_eq!(attempts[0].result, AttemptResult::Connected);
        assert_eq!(attempts.last().unwrap().started_ms, 39.0);
    }

    #[test]
    fn syns_count_the_kernels_retransmissions() {
        let a = |duration_ms: f64, result: AttemptResult| Attempt {
            started_ms: 0.0,
            duration_ms,
            result,
        };
        assert_eq!(syns_of(&[a(500.0, AttemptResult::Timeout)]), 1);
        assert_eq!(syns_of(&[a(3_500.0, AttemptResult::Timeout)]), 3);
        assert_eq!(syns_of(&[a(300.0, AttemptResult::Connected)]), 1);
    }
}
