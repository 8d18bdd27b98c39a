//! The coordinator as a sans-io state machine: connections, lines and time in; lines to send and connections to close out.
//!
//! The driver (`server::rendezvous`) feeds it [`Coordinator::connected`],
//! [`Coordinator::line`], [`Coordinator::closed`] and
//! [`Coordinator::handle_timeout`], and after each call drains
//! [`Coordinator::poll_action`]. It sleeps until
//! [`Coordinator::poll_timeout`]. Time is always passed in, so tests drive
//! whole pairings with a fake clock.
//!
//! Security rests on one rule enforced here: the only address ever sent to a
//! client (in `prime` and `go`) is the source endpoint observed on its
//! paired peer's registration connection, registered with a one-time token
//! that only that peer received, from the same IP as the peer's control
//! connection. No client message carries an address.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::RngCore;

use punchscope_analysis::classify::Verdict;
use punchscope_analysis::handshake::Role;
use punchscope_analysis::hardnat::PairClass;
use punchscope_analysis::plan::{Plan, PlanError};
use punchscope_analysis::portmap::MappedSide;
use punchscope_analysis::trial::{Family, Strategy, TrialOutcome};

use super::pairing::{site_of, Pools};
use super::{
    decode_client, error_message, millis, result_deadline, start_delays, CampaignInfo,
    ClientMessage, ErrorCode, Hello, Mode, PeerInfo, ProtoError, ServerMessage, TrialResult,
};
use crate::net::source_limit::{ConnectionCounts, SourceKey, TokenBuckets};

/// A connection, numbered by the driver (unique for the coordinator's life).
pub type ConnId = u64;

/// Which reference peers are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReferencePolicy {
    /// `mode: reference` is refused (a reference is paired with everyone, so
    /// it is only for hosts the operator runs).
    #[default]
    Nobody,
    /// From these IPs only.
    From(Vec<IpAddr>),
    /// From anywhere (labs and tests).
    Anyone,
}

/// Tunables of the coordinator. `Default` suits a public deployment with the default plan.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Handed to every pair; validated by [`Coordinator::new`].
    pub plan: Plan,
    /// Deadline for the first line of any connection.
    pub hello_timeout: Duration,
    /// Longest a volunteer waits for a peer (a client may ask for less).
    pub max_wait: Duration,
    /// Interval of `waiting` heartbeats.
    pub heartbeat: Duration,
    /// Deadline for each `pong`.
    pub ping_timeout: Duration,
    /// From `trial` until both sides registered their port.
    pub register_timeout: Duration,
    /// From `prime` until both sides said `primed`.
    pub primed_timeout: Duration,
    /// Connections (control and registration) at once per source ([`SourceKey`]: IPv4 address or IPv6 /64).
    pub max_connections_per_ip: u32,
    /// Connections at once per site (IPv4 address, IPv6 /48: a home holds
    /// many /64s, so the /64 cap alone would not bound it).
    pub max_connections_per_site: u32,
    /// Volunteers waiting for a peer at once, over all sources. When full, a
    /// newcomer takes the place of the longest waiter of the site holding
    /// the most places (if that is more than the newcomer's site would
    /// hold), else is told `busy`.
    pub max_waiting: usize,
    /// Volunteers waiting at once per site (IPv4 address, IPv6 /48).
    pub max_waiting_per_site: u32,
    /// Trials a volunteer IP may run in a burst (a pairing needs the plan's count).
    pub trials_per_ip_burst: u32,
    /// One more trial is allowed per IP per this interval.
    pub trials_per_ip_refill: Duration,
    pub references: ReferencePolicy,
    /// Refuse a registration whose IP differs from the control connection's.
    pub require_same_ip: bool,
    /// The campaign handed out on `campaign_request` (before consent); `None`
    /// answers `no_campaign`. Checked with [`CampaignInfo::check`] by whoever
    /// builds the configuration.
    pub campaign: Option<CampaignInfo>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            plan: Plan::from_toml(include_str!("../../../probes/default.toml"))
                .expect("the shipped default plan is valid"),
            hello_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(300),
            heartbeat: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(15),
            primed_timeout: Duration::from_secs(5),
            max_connections_per_ip: 16,
            max_connections_per_site: 64,
            max_waiting: 16_000,
            max_waiting_per_site: 8,
            trials_per_ip_burst: 200,
            trials_per_ip_refill: Duration::from_secs(3),
            references: ReferencePolicy::Nobody,
            require_same_ip: true,
            campaign: None,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this message on the connection (boxed: a `paired` carries the
    /// whole plan, and every action should not be that big).
    Send {
        conn: ConnId,
        msg: Box<ServerMessage>,
    },
    /// Write what is queued, then close the connection; the coordinator has forgotten it.
    Close { conn: ConnId },
}

/// Counters for logs, benchmarks and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    /// Clients waiting for a peer (volunteers and reference peers).
    pub waiting: usize,
    /// Volunteers among them.
    pub waiting_volunteers: usize,
    pub pairs: usize,
    pub pairings_started: u64,
    pub pairings_completed: u64,
    pub trials_completed: u64,
    /// Completed trials by IP family.
    pub trials_by_family: HashMap<Family, u64>,
    /// Each side's reported outcome of each completed trial.
    pub trial_outcomes: HashMap<TrialOutcome, u64>,
    /// Every `error` sent, by code (`rate_limited` and `too_many_connections`
    /// are the rate-limit hits).
    pub errors: HashMap<ErrorCode, u64>,
    /// `campaign` answers given (campaign previews).
    pub campaign_previews: u64,
}

type PairId = u64;

#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    state: ConnState,
    /// The NAT verdict of the hello, relayed to the peer in `paired`.
    verdict: Option<Box<Verdict>>,
    /// The plan's families this client can run trials in (from its hello).
    families: Vec<Family>,
}

#[derive(Debug)]
enum ConnState {
    /// Nothing received yet.
    New,
    Waiting {
        mode: Mode,
        code: Option<String>,
        since: Instant,
        seq: u64,
    },
    Paired {
        pair: PairId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Both sides register a port while the coordinator samples RTTs.
    Registering,
    /// `low_ttl`: waiting for both `primed`.
    Priming,
    /// `go` sent: waiting for both results.
    Running,
}

#[derive(Debug, Default)]
struct SideTrial {
    token: String,
    observed: Option<SocketAddr>,
    /// `mapped` trials: the external port the side's router mapped to its
    /// trial port, as it registered it.
    mapped_port: Option<u16>,
    rtts: Vec<Duration>,
    ping: Option<(u64, Instant)>,
    primed: bool,
    result: Option<TrialResult>,
}

#[derive(Debug)]
struct Pair {
    /// Index 0 is the initiator.
    conns: [ConnId; 2],
    modes: [Mode; 2],
    trial: u32,
    strategy: Strategy,
    phase: Phase,
    sides: [SideTrial; 2],
    /// The plan's strategy mix for this pair's class (from both verdicts),
    /// if it has one: each trial's strategy is then drawn from it.
    mix: Option<Vec<Strategy>>,
    /// What is left of the current shuffled round of `mix`.
    round: Vec<Strategy>,
    /// The plan's families both sides have, in the plan's order: each
    /// trial's family is drawn from them in shuffled rounds, one per strategy.
    families: Vec<Family>,
    /// Per strategy, what is left of its current shuffled round of `families`.
    family_rounds: HashMap<Strategy, Vec<Family>>,
    /// The current trial's family.
    family: Family,
    /// Per side, the source (IPv4 address, IPv6 /64) its first registration
    /// in the family other than its control connection's came from: later
    /// ones in that family must come from there too (the `require_same_ip`
    /// rule, where the control connection cannot be compared).
    other_family_site: [Option<SourceKey>; 2],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Hello(ConnId),
    Heartbeat(ConnId),
    MaxWait(ConnId, Instant),
    Ping(ConnId, u64),
    Phase(PairId, u32, PhaseTag),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PhaseTag {
    Registering,
    Priming,
    Running,
}

/// The whole coordinator state. See the module documentation.
pub struct Coordinator {
    config: CoordinatorConfig,
    rng: StdRng,
    conns: HashMap<ConnId, Conn>,
    pairs: HashMap<PairId, Pair>,
    /// One-time registration tokens of running trials.
    tokens: HashMap<String, (PairId, usize)>,
    pools: Pools,
    connections_per_source: ConnectionCounts,
    /// Connections per site (IPv4 address, IPv6 /48).
    connections_per_site: ConnectionCounts,
    /// Trials per volunteer source; reference peers run trials unmetered.
    trial_budget: TokenBuckets,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    actions: VecDeque<Action>,
    seq: u64,
    stats: Stats,
}

/// Above this many tracked IPs, full trial budgets are forgotten.
const MAX_TRACKED_BUDGETS: usize = 100_000;

impl Coordinator {
    /// A coordinator with no connections. `rng` makes tokens, nonces and
    /// session ids, so it must be unpredictable in production
    /// (`StdRng::from_entropy()`); tests seed it.
    pub fn new(config: CoordinatorConfig, rng: StdRng) -> Result<Self, PlanError> {
        config.plan.validate()?;
        Ok(Coordinator {
            connections_per_source: ConnectionCounts::new(config.max_connections_per_ip),
            connections_per_site: ConnectionCounts::new(config.max_connections_per_site),
            trial_budget: TokenBuckets::new(
                config.trials_per_ip_burst,
                config.trials_per_ip_refill,
                MAX_TRACKED_BUDGETS,
            ),
            config,
            rng,
            conns: HashMap::new(),
            pairs: HashMap::new(),
            tokens: HashMap::new(),
            pools: Pools::default(),
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            seq: 0,
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        let waiting_volunteers = self
            .conns
            .values()
            .filter(|c| {
                matches!(
                    c.state,
                    ConnState::Waiting {
                        mode: Mode::Volunteer,
                        ..
                    }
                )
            })
            .count();
        Stats {
            connections: self.conns.len(),
            waiting: self.pools.len(),
            waiting_volunteers,
            pairs: self.pairs.len(),
            ..self.stats.clone()
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// A connection was accepted from `addr` (the observed source endpoint).
    pub fn connected(&mut self, now: Instant, conn: ConnId, addr: SocketAddr) {
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: every
        // address kept, compared or sent is the plain one.
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let source = SourceKey::of(addr.ip());
        let refused = if !self.connections_per_source.try_open(source) {
            Some(format!(
                "too many connections from {}: at most {} at once",
                addr.ip(),
                self.config.max_connections_per_ip
            ))
        } else if !self.connections_per_site.try_open(site_of(source)) {
            self.connections_per_source.close(source);
            Some(format!(
                "too many connections from your network {}: at most {} at once",
                site_of(source),
                self.config.max_connections_per_site
            ))
        } else {
            None
        };
        if let Some(message) = refused {
            self.send(conn, error_message(ErrorCode::TooManyConnections, message));
            self.actions.push_back(Action::Close { conn });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                addr,
                state: ConnState::New,
                verdict: None,
                families: Vec::new(),
            },
        );
        self.set_timer(now + self.config.hello_timeout, Timer::Hello(conn));
    }

    /// A line arrived on `conn`, or could not be framed (too long, not UTF-8).
    pub fn line(&mut self, now: Instant, conn: ConnId, line: Result<&str, ProtoError>) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        match line.and_then(decode_client) {
            Err(e) => self.fail(conn, e.to_message()),
            Ok(msg) => self.message(now, conn, msg),
        }
    }

    /// The connection ended (EOF, reset or write failure).
    pub fn closed(&mut self, _now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.leave(conn);
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.fire(now, timer);
        }
    }

    /// Tells every client the coordinator is going away and closes them all.
    pub fn shutdown(&mut self) {
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            let msg = error_message(
                ErrorCode::ShuttingDown,
                "the coordinator is shutting down: try again later",
            );
            self.send(conn, msg);
            self.close(conn);
        }
        self.pairs.clear();
        self.tokens.clear();
        self.pools = Pools::default();
        self.timers.clear();
    }

    fn message(&mut self, now: Instant, conn: ConnId, msg: ClientMessage) {
        let state = &self.conns[&conn].state;
        match (state, msg) {
            (ConnState::New, ClientMessage::Hello(hello)) => self.hello(now, conn, hello),
            (ConnState::New, ClientMessage::Register { token, mapped_port }) => {
                self.register(now, conn, &token, mapped_port)
            }
            (ConnState::New, ClientMessage::CampaignRequest) => self.campaign_request(conn),
            (_, ClientMessage::Bye) => self.leave(conn),
            (ConnState::Paired { pair }, msg) => {
                let pair = *pair;
                self.paired_message(now, conn, pair, msg);
            }
            (state, msg) => {
                let message = format!("{} is not expected {}", kind(&msg), state_name(state));
                self.fail(conn, error_message(ErrorCode::Unexpected, message));
            }
        }
    }

    /// A preview: the campaign, before any consent, then close. Nothing is
    /// remembered of the connection and no trial budget is spent.
    fn campaign_request(&mut self, conn: ConnId) {
        match self.config.campaign.clone() {
            Some(campaign) => {
                self.stats.campaign_previews += 1;
                self.send(conn, ServerMessage::Campaign { campaign });
                self.close(conn);
            }
            None => self.fail(
                conn,
                error_message(
                    ErrorCode::NoCampaign,
                    "this coordinator's operator described no campaign: ask them for the echo servers and the collector",
                ),
            ),
        }
    }

    fn hello(&mut self, now: Instant, conn: ConnId, hello: Hello) {
        let ip = self.conns[&conn].addr.ip();
        let source = SourceKey::of(ip);
        if hello.mode == Mode::Reference {
            let allowed = match &self.config.references {
                ReferencePolicy::Nobody => false,
                ReferencePolicy::Anyone => true,
                // A dual-stack listener reports IPv4 hosts as ::ffff:a.b.c.d.
                ReferencePolicy::From(ips) => ips
                    .iter()
                    .any(|allowed| allowed.to_canonical() == ip.to_canonical()),
            };
            if !allowed {
                let msg = error_message(
                    ErrorCode::ReferenceNotAllowed,
                    "reference mode is reserved for the coordinator operator's hosts: connect as a volunteer",
                );
                return self.fail(conn, msg);
            }
        } else if let Err(wait) = self
            .trial_budget
            .check(source, now, self.config.plan.trials)
        {
            let msg = ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: format!(
                    "too many trials from {ip} recently: retry in {} s",
                    wait.as_secs() + 1
                ),
                supported_versions: None,
                retry_after_ms: Some(millis(wait)),
            };
            return self.fail(conn, msg);
        }
        // Older clients name no families: they register where they control.
        let asked = hello
            .families
            .clone()
            .unwrap_or_else(|| vec![Family::of(ip)]);
        let families: Vec<Family> = self
            .config
            .plan
            .families
            .iter()
            .copied()
            .filter(|f| asked.contains(f))
            .collect();
        // The control connection's family, when the plan runs it, must be
        // offered: its registrations are then held to the control IP. Only
        // the other family's rest on a side's first registration there.
        let control = Family::of(ip);
        if self.config.plan.families.contains(&control) && !asked.contains(&control) {
            let msg = error_message(
                ErrorCode::BadRequest,
                format!(
                    "families must include {control}, the family this control connection came in"
                ),
            );
            return self.fail(conn, msg);
        }
        if families.is_empty() {
            let msg = error_message(
                ErrorCode::BadRequest,
                format!(
                    "this campaign runs trials over {} only, and this client can reach the coordinator over {} only",
                    family_list(&self.config.plan.families),
                    family_list(&asked)
                ),
            );
            return self.fail(conn, msg);
        }
        let session = self.random_hex(8);
        self.send(conn, ServerMessage::Welcome { session });
        let known = self.conns.get_mut(&conn).expect("known");
        known.verdict = hello.verdict;
        known.families = families.clone();
        // The more families a pair shares, the more it measures: a
        // dual-stack newcomer takes a dual-stack waiter first (IPv6 pairs
        // are the rarer ones), else the longest waiter it shares one with.
        let conns = &self.conns;
        let shared_families = |other: ConnId| {
            conns.get(&other).map_or(0, |c| {
                c.families.iter().filter(|f| families.contains(f)).count()
            })
        };
        match self.pools.take_partner(
            hello.mode,
            &hello.pair_code,
            source,
            (shared_families, families.len()),
        ) {
            Some((partner, partner_mode)) => {
                // The volunteer that came first is the initiator.
                let (first, second) = if partner_mode == Mode::Volunteer {
                    ((partner, Mode::Volunteer), (conn, hello.mode))
                } else {
                    ((conn, hello.mode), (partner, partner_mode))
                };
                self.start_pair(now, first, second);
            }
            None => {
                if hello.mode == Mode::Volunteer && !self.make_room_to_wait(conn, source) {
                    return;
                }
                self.seq += 1;
                let seq = self.seq;
                self.pools
                    .insert(hello.mode, hello.pair_code.clone(), seq, conn, source);
                self.conns.get_mut(&conn).expect("known").state = ConnState::Waiting {
                    mode: hello.mode,
                    code: hello.pair_code,
                    since: now,
                    seq,
                };
                self.set_timer(now + self.config.heartbeat, Timer::Heartbeat(conn));
                if hello.mode == Mode::Volunteer {
                    let asked = hello.max_wait_ms.map(Duration::from_millis);
                    let wait = asked.map_or(self.config.max_wait, |a| a.min(self.config.max_wait));
                    self.set_timer(now + wait, Timer::MaxWait(conn, now));
                }
            }
        }
    }

    /// Whether volunteer `conn` from `source` may wait for a peer. Its site
    /// may hold `max_waiting_per_site` places; when every place is taken,
    /// the site holding the most gives up its longest waiter, so a flood
    /// from many sources costs the flooders their places first. Tells the
    /// one turned away (`busy`) and closes it.
    fn make_room_to_wait(&mut self, conn: ConnId, source: SourceKey) -> bool {
        let site = site_of(source);
        let ours = self.pools.waiting_from(site);
        let per_site = usize::try_from(self.config.max_waiting_per_site).unwrap_or(usize::MAX);
        let busy = |message: String| ServerMessage::Error {
            code: ErrorCode::Busy,
            message,
            supported_versions: None,
            retry_after_ms: Some(60_000),
        };
        if ours >= per_site {
            let message = format!(
                "{ours} volunteers from your network {site} are already waiting for a peer (at most {per_site}): retry in a minute"
            );
            self.fail(conn, busy(message));
            return false;
        }
        if self.pools.len() < self.config.max_waiting {
            return true;
        }
        match self.pools.busiest_site() {
            Some((_, count, victim)) if count > ours + 1 => {
                let message = "the coordinator is full and your network holds the most waiting places: retry in a minute".to_string();
                self.fail(victim, busy(message));
                true
            }
            _ => {
                let message = "the coordinator is full: retry in a minute".to_string();
                self.fail(conn, busy(message));
                false
            }
        }
    }

    fn start_pair(&mut self, now: Instant, first: (ConnId, Mode), second: (ConnId, Mode)) {
        self.stats.pairings_started += 1;
        self.seq += 1;
        let id = self.seq;
        for (conn, role, (peer, peer_mode)) in [
            (first.0, Role::Initiator, second),
            (second.0, Role::Responder, first),
        ] {
            self.conns.get_mut(&conn).expect("known").state = ConnState::Paired { pair: id };
            let verdict = self.conns[&peer].verdict.clone();
            let msg = ServerMessage::Paired {
                role,
                plan: self.config.plan.clone(),
                peer: PeerInfo {
                    mode: peer_mode,
                    verdict,
                },
            };
            self.send(conn, msg);
        }
        // Both sides derive the same class from the same two verdicts, so
        // each probe's guard can hold the draw to the plan's mix.
        let class = PairClass::of(
            self.conns[&first.0].verdict.as_deref(),
            self.conns[&second.0].verdict.as_deref(),
        );
        let mix = self.config.plan.mix_for(class).map(<[Strategy]>::to_vec);
        let families: Vec<Family> = self.conns[&first.0]
            .families
            .iter()
            .copied()
            .filter(|f| self.conns[&second.0].families.contains(f))
            .collect();
        debug_assert!(!families.is_empty(), "paired only when sharing a family");
        self.pairs.insert(
            id,
            Pair {
                conns: [first.0, second.0],
                modes: [first.1, second.1],
                trial: 0,
                strategy: self.config.plan.strategy_of(0),
                phase: Phase::Registering,
                sides: Default::default(),
                mix,
                round: Vec::new(),
                family: families.first().copied().unwrap_or_default(),
                families,
                family_rounds: HashMap::new(),
                other_family_site: [None, None],
            },
        );
        self.start_trial(now, id);
    }

    fn start_trial(&mut self, now: Instant, id: PairId) {
        let (conns, modes, trial) = {
            let pair = &self.pairs[&id];
            (pair.conns, pair.modes, pair.trial)
        };
        for side in 0..2 {
            if modes[side] == Mode::Volunteer {
                let ip = self.conns[&conns[side]].addr.ip();
                if let Err(wait) = self.trial_budget.check(SourceKey::of(ip), now, 1) {
                    let msg = ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        message: format!("too many trials from {ip} recently"),
                        supported_versions: None,
                        retry_after_ms: Some(millis(wait)),
                    };
                    return self.end_pair(id, Some((side, msg)));
                }
            }
        }
        for side in 0..2 {
            if modes[side] == Mode::Volunteer {
                let ip = self.conns[&conns[side]].addr.ip();
                self.trial_budget.spend(SourceKey::of(ip), now, 1);
            }
        }
        let strategy = self.next_strategy(id, trial);
        let family = self.next_family(id, strategy);
        let tokens = [self.random_hex(16), self.random_hex(16)];
        let pair = self.pairs.get_mut(&id).expect("known pair");
        pair.strategy = strategy;
        pair.family = family;
        pair.phase = Phase::Registering;
        pair.sides = tokens.clone().map(|token| SideTrial {
            token,
            ..SideTrial::default()
        });
        for side in 0..2 {
            self.tokens.insert(tokens[side].clone(), (id, side));
            let msg = ServerMessage::Trial {
                trial,
                token: tokens[side].clone(),
                strategy,
                family: Some(family),
            };
            self.send(conns[side], msg);
            self.ping(now, id, side);
        }
        let at = now + self.config.register_timeout;
        self.set_timer(at, Timer::Phase(id, trial, PhaseTag::Registering));
    }

    /// Trial `trial`'s strategy: drawn from the pair's class mix in shuffled
    /// rounds (random order, every strategy equally often, so arms stay
    /// comparable), else the plan's rotation.
    fn next_strategy(&mut self, id: PairId, trial: u32) -> Strategy {
        let pair = self.pairs.get_mut(&id).expect("known pair");
        let Some(mix) = &pair.mix else {
            return self.config.plan.strategy_of(trial);
        };
        if pair.round.is_empty() {
            pair.round = mix.clone();
            pair.round.shuffle(&mut self.rng);
        }
        pair.round.pop().expect("a mix is never empty")
    }

    /// The family of the next trial, a `strategy` one: drawn from the
    /// pair's families in shuffled rounds kept per strategy, so each
    /// strategy runs each family equally often (give or take one) and in
    /// random order. A factor randomised within the pairing and stratified
    /// by strategy: never confounded with trial order, nor with the plan's
    /// strategy rotation (one shared round of two families beside a
    /// rotation of two strategies could give one strategy only IPv4).
    fn next_family(&mut self, id: PairId, strategy: Strategy) -> Family {
        let pair = self.pairs.get_mut(&id).expect("known pair");
        let round = pair.family_rounds.entry(strategy).or_default();
        if round.is_empty() {
            *round = pair.families.clone();
            round.shuffle(&mut self.rng);
        }
        round.pop().unwrap_or_default()
    }

    fn ping(&mut self, now: Instant, id: PairId, side: usize) {
        self.seq += 1;
        let ping_id = self.seq;
        let pair = self.pairs.get_mut(&id).expect("known pair");
        pair.sides[side].ping = Some((ping_id, now));
        let conn = pair.conns[side];
        self.send(conn, ServerMessage::Ping { id: ping_id });
        self.set_timer(now + self.config.ping_timeout, Timer::Ping(conn, ping_id));
    }

    fn paired_message(&mut self, now: Instant, conn: ConnId, id: PairId, msg: ClientMessage) {
        let pair = self
            .pairs
            .get_mut(&id)
            .expect("paired connections have a pair");
        let side = usize::from(pair.conns[1] == conn);
        let current = pair.trial;
        let unexpected = |what: &str| error_message(ErrorCode::Unexpected, what.to_string());
        match msg {
            ClientMessage::Pong { id: pong } => match pair.sides[side].ping.take() {
                Some((expected, sent)) if expected == pong => {
                    pair.sides[side]
                        .rtts
                        .push(now.saturating_duration_since(sent));
                    if pair.sides[side].rtts.len() < self.config.plan.rtt_samples as usize {
                        self.ping(now, id, side);
                    } else {
                        self.maybe_advance(now, id);
                    }
                }
                _ => self.fail(
                    conn,
                    unexpected("pong does not answer the outstanding ping"),
                ),
            },
            ClientMessage::Primed { trial }
                if trial == current && pair.phase == Phase::Priming && !pair.sides[side].primed =>
            {
                pair.sides[side].primed = true;
                self.maybe_advance(now, id);
            }
            ClientMessage::Result(result)
                if result.trial == current
                    && pair.phase == Phase::Running
                    && pair.sides[side].result.is_none() =>
            {
                pair.sides[side].result = Some(result);
                self.maybe_advance(now, id);
            }
            other => {
                let message = format!(
                    "{} is not expected now (trial {current}, {:?} phase)",
                    kind(&other),
                    pair.phase
                );
                self.fail(conn, unexpected(&message));
            }
        }
    }

    fn register(&mut self, now: Instant, conn: ConnId, token: &str, mapped_port: Option<u16>) {
        let Some(&(id, side)) = self.tokens.get(token) else {
            let msg = error_message(
                ErrorCode::UnknownToken,
                "unknown or already used token: register once per trial with the token of the current `trial`",
            );
            return self.fail(conn, msg);
        };
        let observed = self.conns[&conn].addr;
        let pair = &self.pairs[&id];
        if Family::of(observed.ip()) != pair.family {
            let msg = error_message(
                ErrorCode::IpMismatch,
                format!(
                    "registration over {} for an {} trial: register at the coordinator's {} address",
                    Family::of(observed.ip()),
                    pair.family,
                    pair.family
                ),
            );
            return self.fail(conn, msg);
        }
        let control_ip = self.conns[&pair.conns[side]].addr.ip();
        let source = SourceKey::of(observed.ip());
        // The control connection is the reference in its own family; in the
        // other, the side's first registration there is (the same source:
        // an IPv4 address, or an IPv6 source block).
        let reference = if Family::of(control_ip) == pair.family {
            Some(SourceKey::of(control_ip))
        } else {
            pair.other_family_site[side]
        };
        if self.config.require_same_ip && reference.is_some_and(|r| r != source) {
            let msg = error_message(
                ErrorCode::IpMismatch,
                format!(
                    "registration from {} but this side's {} connections come from another network ({control_ip} controls): both must leave from the same public IP",
                    observed.ip(),
                    pair.family
                ),
            );
            return self.fail(conn, msg);
        }
        self.tokens.remove(token);
        let pair = self.pairs.get_mut(&id).expect("known pair");
        if Family::of(control_ip) != pair.family {
            pair.other_family_site[side].get_or_insert(source);
        }
        pair.sides[side].observed = Some(observed);
        // Only a `mapped` trial uses a mapped port; elsewhere it is ignored.
        pair.sides[side].mapped_port = mapped_port.filter(|_| pair.strategy == Strategy::Mapped);
        self.send(conn, ServerMessage::Registered { observed });
        self.close(conn);
        self.maybe_advance(now, id);
    }

    fn maybe_advance(&mut self, now: Instant, id: PairId) {
        let samples = self.config.plan.rtt_samples as usize;
        let Some(pair) = self.pairs.get_mut(&id) else {
            return;
        };
        match pair.phase {
            Phase::Registering => {
                let ready = pair
                    .sides
                    .iter()
                    .all(|s| s.observed.is_some() && s.rtts.len() >= samples);
                if !ready {
                    return;
                }
                if pair.strategy == Strategy::LowTtl {
                    pair.phase = Phase::Priming;
                    let trial = pair.trial;
                    let family = pair.family;
                    let fixed = self.config.plan.low_ttl;
                    let conns = pair.conns;
                    let peers = [pair.sides[1].observed, pair.sides[0].observed];
                    for side in 0..2 {
                        let peer = peers[side].expect("both registered");
                        // Each side's own chain decides: the prime must pass every
                        // NAT of its side (measured by its classification's path
                        // probe) and die before the peer's; the plan's fixed TTL
                        // is for clients that sent no path.
                        // A verdict speaks for its own family's path only.
                        let ttl = self
                            .conns
                            .get(&conns[side])
                            .and_then(|c| c.verdict.as_ref())
                            .filter(|v| Family::of_verdict(v) == family)
                            .map_or(fixed, |v| v.prime_ttl_or(fixed));
                        self.send(conns[side], ServerMessage::Prime { trial, peer, ttl });
                    }
                    let at = now + self.config.primed_timeout;
                    self.set_timer(at, Timer::Phase(id, trial, PhaseTag::Priming));
                } else {
                    self.go(now, id);
                }
            }
            Phase::Priming => {
                if pair.sides.iter().all(|s| s.primed) {
                    self.go(now, id);
                }
            }
            Phase::Running => {
                if pair.sides.iter().all(|s| s.result.is_some()) {
                    self.finish_trial(now, id);
                }
            }
        }
    }

    fn go(&mut self, now: Instant, id: PairId) {
        let nonce = self.random_hex(16);
        let skew = Duration::from_millis(u64::from(self.config.plan.injected_skew_ms));
        let pair = self.pairs.get_mut(&id).expect("known pair");
        pair.phase = Phase::Running;
        let rtt = |s: &SideTrial| s.rtts.iter().min().copied().unwrap_or_default();
        let (d0, d1) = start_delays(rtt(&pair.sides[0]), rtt(&pair.sides[1]), skew);
        // A punched SYN and its answer travel side to side: about the sum of
        // both sides' round trips to us.
        let timing = self
            .config
            .plan
            .attempt_timing(rtt(&pair.sides[0]) + rtt(&pair.sides[1]));
        let delays = [d0, d1];
        let skews = [Duration::ZERO, skew];
        let observed =
            [pair.sides[0].observed, pair.sides[1].observed].map(|o| o.expect("both registered"));
        let mut peers = [observed[1], observed[0]];
        let mut mapped = [None, None];
        if pair.strategy == Strategy::Mapped {
            let ports = [pair.sides[0].mapped_port, pair.sides[1].mapped_port];
            mapped = mapped_roles(ports);
            // The connecting side goes to the listener's own observed address,
            // at the port its router mapped: never another address.
            for listener in 0..2 {
                if let (Some(MappedSide::Listen), Some(port)) = (mapped[listener], ports[listener])
                {
                    peers[1 - listener] = SocketAddr::new(observed[listener].ip(), port);
                }
            }
        }
        let (conns, trial, strategy) = (pair.conns, pair.trial, pair.strategy);
        for side in 0..2 {
            let msg = ServerMessage::Go {
                trial,
                peer: peers[side],
                delay_ms: millis(delays[side]),
                nonce: nonce.clone(),
                strategy,
                injected_skew_ms: millis(skews[side]),
                timing,
                mapped: mapped[side],
            };
            self.send(conns[side], msg);
        }
        let at = now + result_deadline(&self.config.plan);
        self.set_timer(at, Timer::Phase(id, trial, PhaseTag::Running));
    }

    fn finish_trial(&mut self, now: Instant, id: PairId) {
        let pair = self.pairs.get_mut(&id).expect("known pair");
        let outcomes = [
            pair.sides[0].result.as_ref().expect("reported").outcome,
            pair.sides[1].result.as_ref().expect("reported").outcome,
        ];
        for outcome in outcomes {
            *self.stats.trial_outcomes.entry(outcome).or_default() += 1;
        }
        let (conns, trial) = (pair.conns, pair.trial);
        pair.trial += 1;
        let next = pair.trial;
        self.stats.trials_completed += 1;
        *self.stats.trials_by_family.entry(pair.family).or_default() += 1;
        for side in 0..2 {
            let msg = ServerMessage::PeerResult {
                trial,
                outcome: outcomes[1 - side],
            };
            self.send(conns[side], msg);
        }
        if next >= self.config.plan.trials {
            self.pairs.remove(&id);
            self.stats.pairings_completed += 1;
            for conn in conns {
                self.send(conn, ServerMessage::Done { trials: next });
                self.close(conn);
            }
        } else {
            self.start_trial(now, id);
        }
    }

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Hello(conn) => {
                if matches!(
                    self.conns.get(&conn),
                    Some(Conn {
                        state: ConnState::New,
                        ..
                    })
                ) {
                    let msg = error_message(
                        ErrorCode::HelloTimeout,
                        format!(
                            "no hello or register within {} ms",
                            millis(self.config.hello_timeout)
                        ),
                    );
                    self.fail(conn, msg);
                }
            }
            Timer::Heartbeat(conn) => {
                if let Some(Conn {
                    state: ConnState::Waiting { since, .. },
                    ..
                }) = self.conns.get(&conn)
                {
                    let waited_ms = millis(now.saturating_duration_since(*since));
                    self.send(conn, ServerMessage::Waiting { waited_ms });
                    self.set_timer(now + self.config.heartbeat, Timer::Heartbeat(conn));
                }
            }
            Timer::MaxWait(conn, since) => {
                if let Some(Conn {
                    state: ConnState::Waiting { since: s, .. },
                    ..
                }) = self.conns.get(&conn)
                {
                    if *s == since {
                        let waited_ms = millis(now.saturating_duration_since(since));
                        let msg = ServerMessage::NoPeer {
                            waited_ms,
                            reason: "no compatible peer (another volunteer from a different IP with the same pair code, or a free reference peer) arrived in time".into(),
                        };
                        self.send(conn, msg);
                        self.close(conn);
                    }
                }
            }
            Timer::Ping(conn, ping_id) => {
                let Some(Conn {
                    state: ConnState::Paired { pair },
                    ..
                }) = self.conns.get(&conn)
                else {
                    return;
                };
                let pair = &self.pairs[pair];
                let side = usize::from(pair.conns[1] == conn);
                if matches!(pair.sides[side].ping, Some((id, _)) if id == ping_id) {
                    let msg = error_message(
                        ErrorCode::PingTimeout,
                        format!("no pong within {} ms", millis(self.config.ping_timeout)),
                    );
                    self.fail(conn, msg);
                }
            }
            Timer::Phase(id, trial, tag) => self.phase_timeout(id, trial, tag),
        }
    }

    fn phase_timeout(&mut self, id: PairId, trial: u32, tag: PhaseTag) {
        let Some(pair) = self.pairs.get(&id) else {
            return;
        };
        let phase = match tag {
            PhaseTag::Registering => Phase::Registering,
            PhaseTag::Priming => Phase::Priming,
            PhaseTag::Running => Phase::Running,
        };
        if pair.trial != trial || pair.phase != phase {
            return;
        }
        let samples = self.config.plan.rtt_samples as usize;
        // Blame the side(s) that did not do their part; the other hears `peer_gone`.
        let (code, what, late): (ErrorCode, &str, [bool; 2]) = match phase {
            Phase::Registering => (
                ErrorCode::RegisterTimeout,
                "port registration",
                [0, 1].map(|s| {
                    pair.sides[s].observed.is_none() || pair.sides[s].rtts.len() < samples
                }),
            ),
            Phase::Priming => (
                ErrorCode::PrimedTimeout,
                "primed",
                [0, 1].map(|s| !pair.sides[s].primed),
            ),
            Phase::Running => (
                ErrorCode::ResultTimeout,
                "result",
                [0, 1].map(|s| pair.sides[s].result.is_none()),
            ),
        };
        let message = format!("trial {trial}: no {what} in time");
        let conns = pair.conns;
        let pair = self.pairs.remove(&id).expect("known pair");
        self.forget_tokens(&pair);
        for side in 0..2 {
            if late[side] {
                self.send(conns[side], error_message(code, message.clone()));
            } else {
                self.send(conns[side], ServerMessage::PeerGone { trial: Some(trial) });
            }
            self.close(conns[side]);
        }
    }

    /// A connection leaves (EOF, `bye`): its peer, if any, hears `peer_gone`.
    fn leave(&mut self, conn: ConnId) {
        let pair = match &self.conns.get(&conn).map(|c| &c.state) {
            Some(ConnState::Paired { pair }) => Some(*pair),
            _ => None,
        };
        self.close(conn);
        if let Some(id) = pair {
            self.end_pair(id, None);
        }
    }

    /// Ends a pairing: `culprit` (side, error) is told why; everyone else left
    /// hears `peer_gone`.
    fn end_pair(&mut self, id: PairId, culprit: Option<(usize, ServerMessage)>) {
        let Some(pair) = self.pairs.remove(&id) else {
            return;
        };
        self.forget_tokens(&pair);
        let blamed = culprit.as_ref().map(|(side, _)| *side);
        if let Some((side, msg)) = culprit {
            self.send(pair.conns[side], msg);
        }
        for side in 0..2 {
            let conn = pair.conns[side];
            if blamed != Some(side) && self.conns.contains_key(&conn) {
                self.send(
                    conn,
                    ServerMessage::PeerGone {
                        trial: Some(pair.trial),
                    },
                );
            }
            self.close(conn);
        }
    }

    /// Sends an error and closes; a paired connection's peer hears `peer_gone`.
    fn fail(&mut self, conn: ConnId, msg: ServerMessage) {
        if let Some(Conn {
            state: ConnState::Paired { pair },
            ..
        }) = self.conns.get(&conn)
        {
            let id = *pair;
            let side = usize::from(self.pairs[&id].conns[1] == conn);
            return self.end_pair(id, Some((side, msg)));
        }
        self.send(conn, msg);
        self.close(conn);
    }

    fn forget_tokens(&mut self, pair: &Pair) {
        for side in &pair.sides {
            self.tokens.remove(&side.token);
        }
    }

    fn send(&mut self, conn: ConnId, msg: ServerMessage) {
        if let ServerMessage::Error { code, .. } = &msg {
            *self.stats.errors.entry(*code).or_default() += 1;
        }
        self.actions.push_back(Action::Send {
            conn,
            msg: Box::new(msg),
        });
    }

    /// Forgets a connection and asks the driver to close it.
    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Waiting {
            mode, code, seq, ..
        } = &c.state
        {
            self.pools.remove(*mode, code, *seq);
        }
        let source = SourceKey::of(c.addr.ip());
        self.connections_per_source.close(source);
        self.connections_per_site.close(site_of(source));
        self.actions.push_back(Action::Close { conn });
    }

    fn set_timer(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, timer)));
    }

    fn random_hex(&mut self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.rng.fill_bytes(&mut buf);
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Who does what in a `mapped` trial, from each side's mapped port (index 0
/// is the initiator): the responder listens if its router mapped its port,
/// else the initiator if its did; the other side connects. With no mapping
/// on either side, neither does anything.
/// "ipv4 and ipv6", for messages.
fn family_list(families: &[Family]) -> String {
    families
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

fn mapped_roles(ports: [Option<u16>; 2]) -> [Option<MappedSide>; 2] {
    use MappedSide::{Connect, Listen, Neither};
    match ports {
        [_, Some(_)] => [Some(Connect), Some(Listen)],
        [Some(_), None] => [Some(Listen), Some(Connect)],
        [None, None] => [Some(Neither), Some(Neither)],
    }
}

fn kind(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Hello(_) => "hello",
        ClientMessage::Pong { .. } => "pong",
        ClientMessage::Primed { .. } => "primed",
        ClientMessage::Result(_) => "result",
        ClientMessage::Bye => "bye",
        ClientMessage::Register { .. } => "register",
        ClientMessage::CampaignRequest => "campaign_request",
    }
}

fn state_name(state: &ConnState) -> &'static str {
    match state {
        ConnState::New => "as the first line (send hello or register)",
        ConnState::Waiting { .. } => "while waiting for a peer",
        ConnState::Paired { .. } => "now",
    }
}
