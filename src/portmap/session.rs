//! One port mapping asked of one gateway with one protocol, from request to deletion: a sans-io state machine, time passed in.
//!
//! The driver feeds it datagrams, ICMP errors and the clock, and sends what
//! [`Session::poll_transmit`] gives, until [`Session::is_finished`]. What
//! happened becomes a [`MappingAttempt`] record: outcomes (silence, ICMP,
//! refusals, malformed answers) are data, never errors.
//!
//! What the RFCs ask of a client and where it is done here:
//! - Retransmission on the protocol's schedule, bounded ([`Schedule`]).
//! - Answers accepted only when they match the request: opcode, and for
//!   PCP nonce, protocol and internal port (RFC 6887 section 11.4); NAT-PMP
//!   internal port. Anything else is recorded and waited past.
//! - The epoch of every answer checked ([`Epoch`]); a gateway that lost its
//!   state gets the mapping asked for again at once. An unsolicited PCP
//!   ANNOUNCE (RFC 6887 section 14.1.3) is checked the same way, and the
//!   renewal waits a random 0 to 5 s so that a rebooted gateway is not
//!   flooded.
//! - A held mapping is renewed between 1/2 and 5/8 of its lifetime
//!   (RFC 6887 section 11.2.1); an unsolicited MAP answer for our nonce
//!   updates it (section 14.2).
//! - Deletion: lifetime 0, same nonce (PCP, section 15); lifetime 0 and
//!   external port 0 (NAT-PMP, RFC 6886 section 3.4). A request stopped
//!   before its answer is deleted too, in case the gateway granted it.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use punchscope_analysis::classify::HopClass;
use punchscope_analysis::portmap::{
    GatewayAnswer, GrantedMapping, MappingAttempt, MappingProtocol, MappingRelease, PortRole,
    MAX_ERRORS_KEPT,
};
use punchscope_analysis::result::MaskedEndpoint;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{natpmp, pcp, Epoch, EpochRule, Schedule, WireError};

/// Longest random wait before renewing after an unsolicited ANNOUNCE said the gateway lost its state.
const ANNOUNCE_RENEW_SPREAD: Duration = Duration::from_secs(5);

/// What to ask.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub protocol: MappingProtocol,
    pub port_role: PortRole,
    pub internal_port: u16,
    pub lifetime_s: u32,
    /// The client's own address as the gateway sees it (PCP puts it in every request).
    pub client: IpAddr,
    pub schedule: Schedule,
    /// Seeds the nonce, jitter and random waits (tests fix it).
    pub seed: u64,
}

/// An ICMP error the socket reported instead of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Port unreachable ("connection refused"): nothing listens on 5351.
    PortUnreachable,
    /// Host or network unreachable.
    Unreachable,
}

/// What an exchange (a request and its retransmissions) is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Create,
    /// NAT-PMP's second question, once a mapping is granted: the external address.
    ExternalAddress,
    Renew,
    Release,
}

#[derive(Debug, Clone)]
struct Exchange {
    purpose: Purpose,
    message: Vec<u8>,
    sent: u32,
    first_sent: Instant,
    interval: Duration,
    next_send: Instant,
    give_up: Instant,
}

/// The mapping as last granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    lifetime_s: u32,
    external_port: u16,
    external_ip: Option<IpAddr>,
    renew_at: Instant,
}

/// One mapping's life. See the module documentation.
#[derive(Debug)]
pub struct Session {
    spec: SessionSpec,
    rng: SmallRng,
    nonce: [u8; 12],
    epoch: Epoch,
    exchange: Option<Exchange>,
    held: Option<Held>,
    /// A renewal waiting for its random delay after an ANNOUNCE.
    renew_after_announce: Option<Instant>,
    released: bool,
    finished: bool,
    outbox: VecDeque<Vec<u8>>,
    record: MappingAttempt,
    /// Whether the create exchange got any verdict (answer, ICMP, timeout, stop).
    create_settled: bool,
}

impl Session {
    /// A session whose first request is ready to send at `now`.
    pub fn new(spec: SessionSpec, now: Instant) -> Session {
        let mut rng = SmallRng::seed_from_u64(spec.seed);
        let nonce: [u8; 12] = rng.gen();
        let rule = match spec.protocol {
            MappingProtocol::Natpmp => EpochRule::NatPmp,
            _ => EpochRule::Pcp,
        };
        let record = MappingAttempt::unanswered(
            spec.protocol,
            spec.port_role,
            spec.internal_port,
            spec.lifetime_s,
        );
        let mut session = Session {
            spec,
            rng,
            nonce,
            epoch: Epoch::new(rule),
            exchange: None,
            held: None,
            renew_after_announce: None,
            released: false,
            finished: false,
            outbox: VecDeque::new(),
            record,
            create_settled: false,
        };
        let message = session.map_message(session.spec.lifetime_s);
        session.start(Purpose::Create, message, now);
        session
    }

    fn pcp_request(&self, lifetime_s: u32) -> pcp::MapRequest {
        pcp::MapRequest {
            nonce: self.nonce,
            client: self.spec.client,
            internal_port: self.spec.internal_port,
            suggested_external_port: self.spec.internal_port,
            lifetime_s,
        }
    }

    /// A MAP request (creation and renewal) or, with lifetime 0, a deletion.
    fn map_message(&self, lifetime_s: u32) -> Vec<u8> {
        match self.spec.protocol {
            MappingProtocol::Natpmp if lifetime_s == 0 => {
                natpmp::delete_request(self.spec.internal_port).to_vec()
            }
            MappingProtocol::Natpmp => natpmp::map_request(
                self.spec.internal_port,
                self.held
                    .map_or(self.spec.internal_port, |h| h.external_port),
                lifetime_s,
            )
            .to_vec(),
            _ => pcp::map_request(&self.pcp_request(lifetime_s)),
        }
    }

    fn rand_unit(&mut self) -> f64 {
        self.rng.gen_range(-1.0..=1.0)
    }

    fn start(&mut self, purpose: Purpose, message: Vec<u8>, now: Instant) {
        let rand = self.rand_unit();
        let interval = self.spec.schedule.next_interval(None, rand);
        self.outbox.push_back(message.clone());
        self.count_sent(purpose);
        self.exchange = Some(Exchange {
            purpose,
            message,
            sent: 1,
            first_sent: now,
            interval,
            next_send: now + interval,
            give_up: now + self.spec.schedule.max_wait,
        });
    }

    fn count_sent(&mut self, purpose: Purpose) {
        match purpose {
            Purpose::Create => self.record.requests_sent += 1,
            Purpose::Release => {
                if let Some(release) = &mut self.record.release {
                    release.requests_sent += 1;
                }
            }
            Purpose::ExternalAddress | Purpose::Renew => {}
        }
    }

    /// The next datagram to send to the gateway.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let exchange = self.exchange.as_ref().map(|e| e.next_send.min(e.give_up));
        let renew = match (&self.exchange, self.held) {
            (None, Some(held)) if !self.released => Some(held.renew_at),
            _ => None,
        };
        [exchange, renew, self.renew_after_announce]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the session is over: nothing held, nothing more to send.
    pub fn is_finished(&self) -> bool {
        self.finished && self.outbox.is_empty()
    }

    /// Whether the gateway has given its verdict on the request (granted,
    /// refused, silent, ICMP): the moment the driver may start the hold.
    pub fn is_settled(&self) -> bool {
        self.create_settled
    }

    /// Whether a mapping is held now.
    pub fn is_held(&self) -> bool {
        self.held.is_some() && !self.finished
    }

    /// The granted external port, while held (for a dial-back to it).
    pub fn external_port(&self) -> Option<u16> {
        self.held.map(|h| h.external_port)
    }

    /// Retransmits, gives up, renews, as the clock says.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Some(at) = self.renew_after_announce {
            if now >= at && self.exchange.is_none() {
                self.renew_after_announce = None;
                self.renew(now);
                return;
            }
        }
        let Some(exchange) = self.exchange.as_mut() else {
            if let Some(held) = self.held {
                if now >= held.renew_at && !self.released {
                    self.renew(now);
                }
            }
            return;
        };
        if now >= exchange.give_up {
            let purpose = exchange.purpose;
            self.exchange = None;
            self.exchange_failed(purpose, GatewayAnswer::Timeout, now);
            return;
        }
        if now >= exchange.next_send {
            let rand = self.rng.gen_range(-1.0..=1.0);
            let exchange = self.exchange.as_mut().expect("checked above");
            exchange.interval = self
                .spec
                .schedule
                .next_interval(Some(exchange.interval), rand);
            exchange.next_send = now + exchange.interval;
            exchange.sent += 1;
            let (purpose, message) = (exchange.purpose, exchange.message.clone());
            self.outbox.push_back(message);
            self.count_sent(purpose);
        }
    }

    fn renew(&mut self, now: Instant) {
        self.record.renewals += 1;
        let message = self.map_message(self.spec.lifetime_s);
        self.start(Purpose::Renew, message, now);
    }

    /// An exchange ended without a usable answer.
    fn exchange_failed(&mut self, purpose: Purpose, how: GatewayAnswer, now: Instant) {
        match purpose {
            Purpose::Create => {
                if self.record.error_count > 0 && how == GatewayAnswer::Timeout {
                    self.record.answer = GatewayAnswer::Malformed;
                } else {
                    self.record.answer = how;
                }
                self.create_settled = true;
                self.finished = true;
            }
            Purpose::Release => {
                if let Some(release) = &mut self.record.release {
                    release.answer = how;
                }
                self.held = None;
                self.finished = true;
            }
            Purpose::ExternalAddress | Purpose::Renew => {
                self.note(format!(
                    "{} got no answer ({how:?})",
                    purpose_words(purpose)
                ));
                if let Some(held) = &mut self.held {
                    // Try again at the next renewal point rather than at once.
                    held.renew_at =
                        now + Duration::from_secs(u64::from(held.lifetime_s / 4).max(1));
                }
            }
        }
    }

    fn note(&mut self, error: String) {
        self.record.error_count += 1;
        if self.record.errors.len() < MAX_ERRORS_KEPT {
            self.record.errors.push(error);
        }
    }

    /// An ICMP error instead of an answer.
    pub fn handle_icmp(&mut self, error: IcmpError, now: Instant) {
        if self.finished {
            return;
        }
        let how = match error {
            IcmpError::PortUnreachable => GatewayAnswer::Refused,
            IcmpError::Unreachable => GatewayAnswer::Unreachable,
        };
        if let Some(exchange) = self.exchange.take() {
            self.exchange_failed(exchange.purpose, how, now);
        }
    }

    /// A datagram from the gateway (the driver's socket is connected to it,
    /// so nothing else arrives).
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) {
        if self.finished {
            return;
        }
        let outcome = match self.spec.protocol {
            MappingProtocol::Natpmp => self.natpmp_datagram(bytes, now),
            _ => self.pcp_datagram(bytes, now),
        };
        if let Err(e) = outcome {
            self.note(e.to_string());
        }
    }

    fn natpmp_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), WireError> {
        let purpose = self.exchange.as_ref().map(|e| e.purpose);
        let opcode = match purpose {
            Some(Purpose::ExternalAddress) => natpmp::OP_EXTERNAL_ADDRESS,
            _ => natpmp::OP_MAP_TCP,
        };
        let answer = match natpmp::parse_answer(bytes, opcode) {
            Ok(answer) => answer,
            // Each retransmission may be answered: a late copy of the other
            // question's answer is no error.
            Err(WireError::Opcode { .. })
                if natpmp::parse_answer(bytes, natpmp::OP_MAP_TCP).is_ok()
                    || natpmp::parse_answer(bytes, natpmp::OP_EXTERNAL_ADDRESS).is_ok() =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        if let natpmp::Answer::Map {
            mapping: Some(body),
            ..
        } = answer
        {
            if body.internal_port != self.spec.internal_port {
                return Err(WireError::InternalPort {
                    found: body.internal_port,
                    expected: self.spec.internal_port,
                });
            }
        }
        let Some(purpose) = purpose else {
            // Nothing asked: a late copy of an earlier answer.
            return Ok(());
        };
        if is_late_grant(purpose, &answer) {
            return Ok(());
        }
        let header = answer.header();
        let state_valid = self.epoch.observe(now, header.epoch_s);
        let exchange = self.exchange.take().expect("asked, so an exchange runs");
        match (purpose, answer) {
            (Purpose::Create | Purpose::Renew, natpmp::Answer::Map { mapping, .. }) => {
                let granted = mapping
                    .filter(|_| header.result_code == 0)
                    .map(|m| (m.lifetime_s, m.external_port));
                self.mapping_answer(
                    purpose,
                    &exchange,
                    header.result_code,
                    natpmp::result_name(header.result_code),
                    granted,
                    None,
                    now,
                );
                if purpose == Purpose::Create && self.held.is_some() {
                    self.start(
                        Purpose::ExternalAddress,
                        natpmp::external_address_request().to_vec(),
                        now,
                    );
                }
            }
            (Purpose::ExternalAddress, natpmp::Answer::ExternalAddress { external, .. }) => {
                if header.result_code != 0 {
                    self.note(format!(
                        "external address request answered {}",
                        natpmp::result_name(header.result_code)
                    ));
                }
                if let (Some(held), Some(ip)) = (&mut self.held, external) {
                    held.external_ip = Some(IpAddr::V4(ip));
                }
                self.update_granted();
            }
            (Purpose::Release, natpmp::Answer::Map { mapping, .. }) => {
                let gone = header.result_code == 0
                    && mapping.is_some_and(|m| m.lifetime_s == 0 && m.external_port == 0);
                self.release_answer(header.result_code, gone);
            }
            _ => {
                self.exchange = Some(exchange);
                return Err(WireError::Opcode {
                    found: header.opcode,
                    expected: opcode,
                });
            }
        }
        if !state_valid {
            self.lost_state(now, Duration::ZERO);
        }
        Ok(())
    }

    fn pcp_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), WireError> {
        let answer = match pcp::parse_answer(bytes)? {
            pcp::Answer::NatPmpOnly { result_code } => {
                let Some(exchange) = self.exchange.take() else {
                    return Err(WireError::Version {
                        found: natpmp::VERSION,
                        expected: pcp::VERSION,
                    });
                };
                self.record.server_version = Some(natpmp::VERSION);
                self.mapping_answer(
                    exchange.purpose,
                    &exchange,
                    result_code,
                    natpmp::result_name(result_code),
                    None,
                    None,
                    now,
                );
                if exchange.purpose == Purpose::Release {
                    self.release_answer(result_code, false);
                }
                return Ok(());
            }
            pcp::Answer::Pcp(answer) => answer,
        };
        let Some(map) = answer.map else {
            // An ANNOUNCE: nothing to match, only the epoch to check (section 14.1.3).
            if !self.epoch.observe(now, answer.epoch_s) {
                let wait = ANNOUNCE_RENEW_SPREAD.mul_f64(self.rng.gen_range(0.0..=1.0));
                self.lost_state(now, wait);
            }
            return Ok(());
        };
        map.check(&self.pcp_request(self.spec.lifetime_s))?;
        let state_valid = self.epoch.observe(now, answer.epoch_s);
        let code = u16::from(answer.result_code);
        let name = pcp::result_name(answer.result_code);
        let releasing = self
            .exchange
            .as_ref()
            .is_some_and(|e| e.purpose == Purpose::Release);
        if releasing && answer.result_code == 0 && answer.lifetime_s > 0 {
            // A late copy of the creation's or a renewal's answer, not the deletion's.
            return Ok(());
        }
        match self.exchange.take() {
            Some(exchange) if exchange.purpose == Purpose::Release => {
                self.release_answer(code, answer.result_code == 0 && answer.lifetime_s == 0);
            }
            Some(exchange) => {
                let granted =
                    (answer.result_code == 0).then_some((answer.lifetime_s, map.external_port));
                self.mapping_answer(
                    exchange.purpose,
                    &exchange,
                    code,
                    name,
                    granted,
                    Some(map.external_ip),
                    now,
                );
            }
            None if self.held.is_some() && answer.result_code == 0 => {
                // Section 14.2: the gateway changed our mapping by itself.
                let lifetime = answer.lifetime_s;
                let renew_at = self.renew_point(now, lifetime);
                if let Some(held) = &mut self.held {
                    held.lifetime_s = lifetime;
                    held.external_port = map.external_port;
                    held.external_ip = Some(map.external_ip);
                    held.renew_at = renew_at;
                }
                self.update_granted();
            }
            None => return Err(WireError::NotAnAnswer),
        }
        if !state_valid {
            self.lost_state(now, Duration::ZERO);
        }
        Ok(())
    }

    /// Between 1/2 and 5/8 of the lifetime from now (RFC 6887 section 11.2.1).
    fn renew_point(&mut self, now: Instant, lifetime_s: u32) -> Instant {
        let fraction = self.rng.gen_range(0.5..=0.625);
        now + Duration::from_secs(u64::from(lifetime_s)).mul_f64(fraction)
    }

    /// The answer to a creation or renewal.
    #[allow(clippy::too_many_arguments)]
    fn mapping_answer(
        &mut self,
        purpose: Purpose,
        exchange: &Exchange,
        code: u16,
        name: String,
        granted: Option<(u32, u16)>,
        external_ip: Option<IpAddr>,
        now: Instant,
    ) {
        if purpose == Purpose::Create {
            self.create_settled = true;
            self.record.answer = GatewayAnswer::Answered;
            self.record.rtt_ms = Some(
                now.saturating_duration_since(exchange.first_sent)
                    .as_secs_f64()
                    * 1000.0,
            );
            self.record.result_code = Some(code);
            self.record.result = Some(name.clone());
        }
        // A success with lifetime 0 grants nothing (the mapping is gone).
        match granted.filter(|(lifetime_s, _)| *lifetime_s > 0) {
            Some((lifetime_s, external_port)) => {
                let renew_at = self.renew_point(now, lifetime_s);
                let external_ip = external_ip.or(self.held.and_then(|h| h.external_ip));
                self.held = Some(Held {
                    lifetime_s,
                    external_port,
                    external_ip,
                    renew_at,
                });
                self.update_granted();
            }
            None if purpose == Purpose::Create => self.finished = true,
            None => self.note(format!("renewal answered {name}")),
        }
    }

    fn release_answer(&mut self, code: u16, gone: bool) {
        if let Some(release) = &mut self.record.release {
            release.answer = GatewayAnswer::Answered;
            release.result_code = Some(code);
            release.succeeded = gone;
        }
        self.held = None;
        self.finished = true;
    }

    /// The gateway lost its state: ask for the mapping again, after `wait`.
    fn lost_state(&mut self, now: Instant, wait: Duration) {
        self.record.lost_state += 1;
        if self.held.is_none() || self.released {
            return;
        }
        if wait.is_zero() && self.exchange.is_none() {
            self.renew(now);
        } else {
            self.renew_after_announce = Some(now + wait);
        }
    }

    fn update_granted(&mut self) {
        let Some(held) = self.held else { return };
        self.record.granted = Some(GrantedMapping {
            lifetime_s: held.lifetime_s,
            external: held
                .external_ip
                .map(|ip| MaskedEndpoint::new(SocketAddr::new(ip, held.external_port))),
            external_port: held.external_port,
            external_class: held.external_ip.map(HopClass::of),
        });
    }

    /// Ends the session: a held mapping (or a request still unanswered,
    /// which the gateway may have granted) is deleted; anything else just ends.
    pub fn release(&mut self, now: Instant) {
        if self.released || self.finished {
            return;
        }
        self.released = true;
        self.renew_after_announce = None;
        let unanswered = self
            .exchange
            .as_ref()
            .is_some_and(|e| e.purpose == Purpose::Create);
        if unanswered {
            self.record.answer = GatewayAnswer::Stopped;
            self.create_settled = true;
        }
        if self.held.is_none() && !unanswered {
            self.exchange = None;
            self.finished = true;
            return;
        }
        self.record.release = Some(MappingRelease {
            answer: GatewayAnswer::Timeout,
            result_code: None,
            succeeded: false,
            requests_sent: 0,
        });
        let message = self.map_message(0);
        self.start(Purpose::Release, message, now);
    }

    /// What happened, for the result.
    pub fn record(&self) -> &MappingAttempt {
        &self.record
    }

    /// The record, once the session is over.
    pub fn into_record(self) -> MappingAttempt {
        self.record
    }
}

/// During a deletion, a granting NAT-PMP answer (lifetime above 0) is a
/// late copy of the creation's or a renewal's, not the deletion's answer.
fn is_late_grant(purpose: Purpose, answer: &natpmp::Answer) -> bool {
    matches!(
        (purpose, answer),
        (Purpose::Release, natpmp::Answer::Map { header, mapping: Some(m) })
            if header.result_code == 0 && m.lifetime_s > 0
    )
}

fn purpose_words(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Create => "the mapping request",
        Purpose::ExternalAddress => "the external address request",
        Purpose::Renew => "a renewal",
        Purpose::Release => "the deletion",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const GATEWAY_EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    fn spec(protocol: MappingProtocol) -> SessionSpec {
        SessionSpec {
            protocol,
            port_role: PortRole::Node,
            internal_port: 8333,
            lifetime_s: 120,
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
            schedule: match protocol {
                MappingProtocol::Natpmp => Schedule::natpmp(),
                _ => Schedule::pcp(),
            },
            seed: 7,
        }
    }

    /// A PCP gateway's answer to `request`, as section 11.4 builds it.
    fn pcp_answer(
        request: &[u8],
        result: u8,
        lifetime: u32,
        epoch: u32,
        ext: (Ipv4Addr, u16),
    ) -> Vec<u8> {
        let mut m = request.to_vec();
        m[1] |= 0x80;
        m[3] = result;
        m[4..8].copy_from_slice(&lifetime.to_be_bytes());
        m[8..12].copy_from_slice(&epoch.to_be_bytes());
        m[12..24].fill(0);
        if m.len() >= 60 {
            m[42..44].copy_from_slice(&ext.1.to_be_bytes());
            m[44..60].copy_from_slice(&ext.0.to_ipv6_mapped().octets());
        }
        m
    }

    fn natpmp_map_answer(
        result: u16,
        epoch: u32,
        internal: u16,
        external: u16,
        life: u32,
    ) -> Vec<u8> {
        let mut m = vec![0, 130];
        m.extend(result.to_be_bytes());
        m.extend(epoch.to_be_bytes());
        m.extend(internal.to_be_bytes());
        m.extend(external.to_be_bytes());
        m.extend(life.to_be_bytes());
        m
    }

    fn sent(session: &mut Session) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| session.poll_transmit()).collect()
    }

    /// Drives the clock to `until` through every timeout the session asks for.
    fn run_clock(session: &mut Session, until: Instant) -> Vec<Vec<u8>> {
        let mut out = sent(session);
        for _ in 0..1000 {
            match session.poll_timeout() {
                Some(at) if at <= until => {
                    session.handle_timeout(at);
                    out.extend(sent(session));
                }
                _ => break,
            }
        }
        out
    }

    #[test]
    fn pcp_grant_hold_and_delete() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        assert_eq!(request.len(), 60);
        assert!(!s.is_settled());
        let t1 = t0 + Duration::from_millis(12);
        s.handle_datagram(
            &pcp_answer(&request, 0, 120, 500, (GATEWAY_EXTERNAL, 40000)),
            t1,
        );
        assert!(s.is_settled() && s.is_held());
        assert_eq!(s.external_port(), Some(40000));
        let r = s.record().clone();
        assert_eq!(r.answer, GatewayAnswer::Answered);
        assert_eq!(
            (r.result_code, r.result.as_deref()),
            (Some(0), Some("success"))
        );
        assert_eq!(r.rtt_ms, Some(12.0));
        let granted = r.granted.unwrap();
        assert_eq!(granted.lifetime_s, 120);
        assert_eq!(granted.external.as_ref().unwrap().net, "203.0.113.0/24");
        assert_eq!(granted.external.unwrap().port, 40000);
        assert_eq!(granted.external_class, Some(HopClass::Public));

        s.release(t1);
        let delete = sent(&mut s).pop().unwrap();
        assert_eq!(&delete[4..8], &[0, 0, 0, 0], "lifetime 0");
        assert_eq!(&delete[24..36], &request[24..36], "same nonce");
        assert!(!s.is_finished());
        s.handle_datagram(
            &pcp_answer(&delete, 0, 0, 501, (GATEWAY_EXTERNAL, 40000)),
            t1 + Duration::from_secs(1),
        );
        assert!(s.is_finished());
        let release = s.into_record().release.unwrap();
        assert_eq!(release.answer, GatewayAnswer::Answered);
        assert!(release.succeeded);
        assert_eq!(release.requests_sent, 1);
    }

    #[test]
    fn a_silent_gateway_gets_the_bounded_schedule_then_a_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let out = run_clock(&mut s, t0 + Duration::from_secs(60));
        assert!(s.is_finished());
        assert!((2..=3).contains(&out.len()), "{} transmissions", out.len());
        assert!(
            out.windows(2).all(|w| w[0] == w[1]),
            "retransmissions repeat the request"
        );
        let r = s.into_record();
        assert_eq!(
            (r.answer, r.requests_sent),
            (GatewayAnswer::Timeout, out.len() as u32)
        );
        assert!(
            r.release.is_none(),
            "nothing was granted, nothing to delete"
        );

        let mut n = Session::new(spec(MappingProtocol::Natpmp), t0);
        let out = run_clock(&mut n, t0 + Duration::from_secs(60));
        assert_eq!(out.len(), 4, "250, 500, 1000, 2000 ms");
        assert_eq!(n.poll_timeout(), None);
        assert_eq!(n.into_record().answer, GatewayAnswer::Timeout);
    }

    #[test]
    fn refusals_and_icmp_are_answers_not_errors() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(
            &pcp_answer(&request, 2, 30, 10, (Ipv4Addr::UNSPECIFIED, 0)),
            t0,
        );
        assert!(s.is_finished());
        let r = s.into_record();
        assert_eq!(r.answer, GatewayAnswer::Answered);
        assert_eq!(r.result.as_deref(), Some("not_authorized"));
        assert!(r.granted.is_none() && r.release.is_none());

        for (icmp, answer) in [
            (IcmpError::PortUnreachable, GatewayAnswer::Refused),
            (IcmpError::Unreachable, GatewayAnswer::Unreachable),
        ] {
            let mut s = Session::new(spec(MappingProtocol::Natpmp), t0);
            sent(&mut s);
            s.handle_icmp(icmp, t0 + Duration::from_millis(1));
            assert!(s.is_finished());
            assert_eq!(s.into_record().answer, answer);
        }
    }

    #[test]
    fn answers_that_are_not_ours_are_recorded_and_waited_past() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        let mut foreign = pcp_answer(&request, 0, 120, 1, (GATEWAY_EXTERNAL, 1));
        foreign[24] ^= 0xff;
        s.handle_datagram(&foreign, t0);
        s.handle_datagram(&[2, 0x81, 0, 0], t0);
        s.handle_datagram(&vec![2u8; 4000], t0);
        s.handle_datagram(&request, t0);
        assert!(!s.is_settled(), "still waiting for our answer");
        assert_eq!(s.record().error_count, 4);
        assert!(
            s.record().errors[0].contains("nonce"),
            "{:?}",
            s.record().errors
        );
        run_clock(&mut s, t0 + Duration::from_secs(60));
        let r = s.into_record();
        assert_eq!(r.answer, GatewayAnswer::Malformed, "only garbage came");

        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(&[0xff; 7], t0);
        s.handle_datagram(
            &pcp_answer(&request, 0, 120, 1, (GATEWAY_EXTERNAL, 8333)),
            t0,
        );
        let r = s.record();
        assert_eq!((r.answer, r.error_count), (GatewayAnswer::Answered, 1));

        let mut errors = Session::new(spec(MappingProtocol::Natpmp), t0);
        sent(&mut errors);
        for i in 0..20u8 {
            errors.handle_datagram(&[i; 3], t0);
        }
        assert_eq!(errors.record().errors.len(), MAX_ERRORS_KEPT);
        assert_eq!(errors.record().error_count, 20);
        errors.handle_datagram(&natpmp_map_answer(0, 1, 9999, 9999, 60), t0);
        assert!(!errors.is_settled(), "another port's answer is not ours");
    }

    #[test]
    fn natpmp_grant_external_address_and_delete() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Natpmp), t0);
        assert_eq!(
            sent(&mut s),
            vec![natpmp::map_request(8333, 8333, 120).to_vec()]
        );
        s.handle_datagram(&natpmp_map_answer(0, 100, 8333, 8333, 90), t0);
        assert_eq!(
            sent(&mut s),
            vec![vec![0u8, 0]],
            "then the external address"
        );
        assert!(s.is_settled() && s.is_held());
        s.handle_datagram(&[0, 128, 0, 0, 0, 0, 0, 100, 100, 64, 3, 2], t0);
        let granted = s.record().granted.clone().unwrap();
        assert_eq!(granted.external.unwrap().net, "100.64.3.0/24");
        assert_eq!(
            granted.external_class,
            Some(HopClass::Shared),
            "behind a CGN"
        );
        assert_eq!((granted.lifetime_s, granted.external_port), (90, 8333));

        s.release(t0);
        assert_eq!(sent(&mut s), vec![natpmp::delete_request(8333).to_vec()]);
        s.handle_datagram(&natpmp_map_answer(0, 101, 8333, 0, 0), t0);
        assert!(s.is_finished());
        assert!(s.into_record().release.unwrap().succeeded);
    }

    #[test]
    fn a_natpmp_only_gateway_answers_pcp_with_its_version() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        sent(&mut s);
        s.handle_datagram(&[0, 129, 0, 1, 0, 0, 0, 3], t0);
        assert!(s.is_finished());
        let r = s.into_record();
        assert_eq!(r.server_version, Some(0));
        assert_eq!(r.result.as_deref(), Some("unsupported_version"));
    }

    #[test]
    fn a_held_mapping_is_renewed_between_half_and_five_eighths_of_its_lifetime() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(
            &pcp_answer(&request, 0, 16, 50, (GATEWAY_EXTERNAL, 8333)),
            t0,
        );
        let at = s.poll_timeout().unwrap();
        assert!(
            at >= t0 + Duration::from_secs(8) && at <= t0 + Duration::from_secs(10),
            "{:?}",
            at - t0
        );
        s.handle_timeout(at);
        let renewal = sent(&mut s).pop().unwrap();
        assert_eq!(&renewal[24..36], &request[24..36]);
        assert_eq!(s.record().renewals, 1);
        let later = at + Duration::from_millis(5);
        let epoch = 50 + (later - t0).as_secs() as u32;
        s.handle_datagram(
            &pcp_answer(&renewal, 0, 16, epoch, (GATEWAY_EXTERNAL, 8333)),
            later,
        );
        assert_eq!(s.record().lost_state, 0);
        assert!(s.is_held());
    }

    #[test]
    fn an_announce_from_a_rebooted_gateway_brings_a_renewal_within_five_seconds() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(
            &pcp_answer(&request, 0, 120, 5000, (GATEWAY_EXTERNAL, 8333)),
            t0,
        );
        let t1 = t0 + Duration::from_secs(2);
        // A valid ANNOUNCE changes nothing.
        let announce = pcp_answer(
            &pcp::announce_request(spec(MappingProtocol::Pcp).client),
            0,
            0,
            5002,
            (GATEWAY_EXTERNAL, 0),
        );
        s.handle_datagram(&announce, t1);
        assert_eq!(s.record().lost_state, 0);
        // After a reboot its epoch starts again.
        let reboot = pcp_answer(
            &pcp::announce_request(spec(MappingProtocol::Pcp).client),
            0,
            0,
            3,
            (GATEWAY_EXTERNAL, 0),
        );
        s.handle_datagram(&reboot, t1);
        assert_eq!(s.record().lost_state, 1);
        let at = s.poll_timeout().unwrap();
        assert!(at <= t1 + ANNOUNCE_RENEW_SPREAD, "{:?}", at - t1);
        s.handle_timeout(at);
        let renewal = sent(&mut s);
        assert_eq!(renewal.len(), 1);
        assert_eq!(&renewal[0][24..36], &request[24..36]);
        assert_eq!(s.record().renewals, 1);
    }

    #[test]
    fn a_map_answer_with_a_reset_epoch_renews_at_once() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(
            &pcp_answer(&request, 0, 120, 5000, (GATEWAY_EXTERNAL, 8333)),
            t0,
        );
        // An unsolicited MAP answer (section 14.2) from a gateway that restarted.
        s.handle_datagram(
            &pcp_answer(&request, 0, 120, 1, (GATEWAY_EXTERNAL, 9000)),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(s.external_port(), Some(9000));
        assert_eq!(s.record().lost_state, 1);
        assert_eq!(sent(&mut s).len(), 1, "renewed at once");
    }

    #[test]
    fn a_stop_before_the_answer_still_deletes_what_may_have_been_granted() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Natpmp), t0);
        sent(&mut s);
        s.release(t0 + Duration::from_millis(100));
        assert!(s.is_settled());
        assert_eq!(sent(&mut s), vec![natpmp::delete_request(8333).to_vec()]);
        run_clock(&mut s, t0 + Duration::from_secs(30));
        assert!(s.is_finished());
        let r = s.into_record();
        assert_eq!(r.answer, GatewayAnswer::Stopped);
        let release = r.release.unwrap();
        assert_eq!(
            (release.answer, release.succeeded),
            (GatewayAnswer::Timeout, false)
        );
        assert_eq!(release.requests_sent, 4);

        // Nothing asked, nothing held: a release just ends it.
        let mut done = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut done).pop().unwrap();
        done.handle_datagram(&pcp_answer(&request, 8, 30, 1, (GATEWAY_EXTERNAL, 0)), t0);
        done.release(t0);
        assert!(done.is_finished());
        assert!(sent(&mut done).is_empty());
    }

    #[test]
    fn late_copies_of_earlier_answers_are_neither_errors_nor_the_deletions_answer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // NAT-PMP: the map answer came twice (a retransmission was answered too).
        let mut n = Session::new(spec(MappingProtocol::Natpmp), t0);
        sent(&mut n);
        let granted = natpmp_map_answer(0, 100, 8333, 8333, 90);
        n.handle_datagram(&granted, t0 + ms(300));
        n.handle_datagram(&granted, t0 + ms(301));
        let external = [0, 128, 0, 0, 0, 0, 0, 100, 203, 0, 113, 2];
        n.handle_datagram(&external, t0 + ms(302));
        n.handle_datagram(&external, t0 + ms(303));
        n.release(t0 + ms(400));
        n.handle_datagram(&granted, t0 + ms(401));
        assert!(
            !n.is_finished(),
            "a late grant is not the deletion's answer"
        );
        n.handle_datagram(&natpmp_map_answer(0, 100, 8333, 0, 0), t0 + ms(402));
        let r = n.into_record();
        assert_eq!(r.error_count, 0, "{:?}", r.errors);
        assert!(r.release.unwrap().succeeded);

        // PCP: the same.
        let mut p = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut p).pop().unwrap();
        let answer = pcp_answer(&request, 0, 120, 50, (GATEWAY_EXTERNAL, 8333));
        p.handle_datagram(&answer, t0 + ms(10));
        p.release(t0 + ms(20));
        let delete = sent(&mut p).pop().unwrap();
        p.handle_datagram(&answer, t0 + ms(21));
        assert!(!p.is_finished());
        p.handle_datagram(
            &pcp_answer(&delete, 0, 0, 50, (GATEWAY_EXTERNAL, 8333)),
            t0 + ms(22),
        );
        let r = p.into_record();
        assert_eq!(r.error_count, 0, "{:?}", r.errors);
        assert!(r.release.unwrap().succeeded);
    }

    #[test]
    fn a_success_with_lifetime_zero_grants_nothing() {
        let t0 = Instant::now();
        let mut s = Session::new(spec(MappingProtocol::Pcp), t0);
        let request = sent(&mut s).pop().unwrap();
        s.handle_datagram(&pcp_answer(&request, 0, 0, 1, (GATEWAY_EXTERNAL, 8333)), t0);
        assert!(s.is_finished() && !s.is_held());
        let r = s.into_record();
        assert_eq!(r.result.as_deref(), Some("success"));
        assert!(r.granted.is_none() && r.release.is_none());
    }

    #[test]
    fn random_bytes_never_panic_in_any_state() {
        let t0 = Instant::now();
        let mut rng = SmallRng::seed_from_u64(1);
        for protocol in [MappingProtocol::Pcp, MappingProtocol::Natpmp] {
            for round in 0..200 {
                let mut s = Session::new(spec(protocol), t0);
                let request = sent(&mut s).pop().unwrap();
                if round % 2 == 0 {
                    let answer = match protocol {
                        MappingProtocol::Natpmp => natpmp_map_answer(0, 1, 8333, 8333, 60),
                        _ => pcp_answer(&request, 0, 60, 1, (GATEWAY_EXTERNAL, 8333)),
                    };
                    s.handle_datagram(&answer, t0);
                }
                for _ in 0..20 {
                    let len = rng.gen_range(0..80);
                    let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    if let Some(first) = bytes.first_mut() {
                        *first = [0, 2][rng.gen_range(0..2)];
                    }
                    s.handle_datagram(&bytes, t0);
                }
                s.release(t0);
                run_clock(&mut s, t0 + Duration::from_secs(60));
                assert!(s.is_finished());
            }
        }
    }
}
