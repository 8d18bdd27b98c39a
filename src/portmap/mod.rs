//! Port mapping: asks the default gateway to open the node's port (PCP, NAT-PMP, UPnP IGD), records what it answered, and deletes what it granted.
//!
//! Layout: [`natpmp`] and [`pcp`] are the wire formats (sans-io, strict
//! bounded parsing); [`session`] is one request's state machine
//! (retransmissions, epoch checks, ANNOUNCE, renewal, deletion; sans-io,
//! time passed in); [`gateway`] finds the default gateway; `driver`
//! ([`measure`]) runs sessions over UDP sockets to the gateway's port 5351
//! and nowhere else. [`upnp`] is UPnP IGD's SSDP, URL checks, bounded HTTP
//! reading, description and SOAP (sans-io); `upnp_driver` runs it against
//! the gateway's port 1900 and the HTTP server it names on its own address.
//! [`trial`] holds one trial port's mapping for the `mapped` strategy.
//! docs/portmap.md says why these are written here rather than taken from a crate.

pub mod gateway;
pub mod natpmp;
pub mod pcp;
pub mod session;
pub mod trial;
pub mod upnp;

mod driver;
mod upnp_driver;

use std::time::{Duration, Instant};

pub use driver::{measure, PortMapConfig, PortMapError, ReachCheck};
pub use upnp_driver::UpnpLimits;

/// The gateway's port for both PCP and NAT-PMP (RFC 6887 section 19.1).
pub const SERVER_PORT: u16 = 5351;

/// Lifetime the probe asks for, in seconds: short, so that a mapping whose
/// deletion never arrived expires by itself within two minutes.
pub const DEFAULT_LIFETIME_S: u32 = 120;

/// Why a datagram from the gateway was not a usable answer. Recorded in
/// the result, never a failure of the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("answer of {len} bytes is shorter than the {min} bytes it needs")]
    Short { len: usize, min: usize },
    #[error("answer of {len} bytes is longer than the largest the protocol allows ({max})")]
    Oversized { len: usize, max: usize },
    #[error("answer of {len} bytes should be {expected} bytes long")]
    Length { len: usize, expected: usize },
    #[error("answer of {len} bytes is not a multiple of 4 bytes")]
    Misaligned { len: usize },
    #[error("answer has protocol version {found}, expected {expected}")]
    Version { found: u8, expected: u8 },
    #[error("datagram is a request, not an answer")]
    NotAnAnswer,
    #[error("answer is for opcode {found}, the request was opcode {expected}")]
    Opcode { found: u8, expected: u8 },
    #[error("answer has an opcode this client never sends ({found})")]
    UnknownOpcode { found: u8 },
    #[error("answer's mapping nonce is not the request's")]
    Nonce,
    #[error("answer is for IP protocol {found}, the request was TCP (6)")]
    Protocol { found: u8 },
    #[error("answer is for internal port {found}, the request was for {expected}")]
    InternalPort { found: u16, expected: u16 },
    #[error("malformed option: {why}")]
    BadOption { why: &'static str },
}

/// How a client judges a gateway's epoch (seconds since its mapping state began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochRule {
    /// RFC 6887 section 8.5: invalid if it went back more than a second, or
    /// if server and client time advanced at clearly different speeds.
    Pcp,
    /// RFC 6886 section 3.6: invalid if it advanced less than 7/8 of the
    /// client's time, minus 2 s.
    NatPmp,
}

/// A gateway's epoch as a client tracks it: an invalid epoch means the
/// gateway lost its state (rebooted) and every mapping must be asked for again.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    rule: EpochRule,
    previous: Option<(Instant, u32)>,
}

impl Epoch {
    pub fn new(rule: EpochRule) -> Self {
        Epoch {
            rule,
            previous: None,
        }
    }

    /// Records an epoch from an answer received at `now`; `true` when it is
    /// valid, `false` when the gateway lost its state. The first one is valid.
    pub fn observe(&mut self, now: Instant, epoch_s: u32) -> bool {
        let valid = match self.previous {
            None => true,
            Some((at, previous)) => {
                let client = now.saturating_duration_since(at).as_secs_f64();
                let server = f64::from(epoch_s) - f64::from(previous);
                match self.rule {
                    EpochRule::Pcp if server < -1.0 => false,
                    EpochRule::Pcp => {
                        let server = server.max(0.0);
                        !(client + 2.0 < server - server / 16.0
                            || server + 2.0 < client - client / 16.0)
                    }
                    EpochRule::NatPmp => server >= client * 7.0 / 8.0 - 2.0,
                }
            }
        };
        self.previous = Some((now, epoch_s));
        valid
    }
}

/// A retransmission schedule, bounded: the first wait, how it grows, and
/// when to give up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Wait after the first request.
    pub initial: Duration,
    /// Each wait is the previous one doubled, at most this.
    pub max_interval: Duration,
    /// Each wait is varied by up to this fraction either way (RFC 6887's RAND).
    pub jitter: f64,
    /// Give up this long after the first request.
    pub max_wait: Duration,
}

impl Schedule {
    /// RFC 6886 section 3.1: 250 ms, doubling. The RFC allows nine
    /// transmissions (about 64 s); the probe stops after four (3.75 s).
    pub fn natpmp() -> Self {
        Schedule {
            initial: Duration::from_millis(250),
            max_interval: Duration::from_secs(64),
            jitter: 0.0,
            max_wait: Duration::from_millis(3750),
        }
    }

    /// RFC 6887 section 8.1.1: IRT 3 s, RT doubling with RAND in
    /// [-0.1, +0.1], MRT 1024 s. The RFC retries forever (MRC 0); the probe
    /// stops after 9 s, two or three transmissions.
    pub fn pcp() -> Self {
        Schedule {
            initial: Duration::from_secs(3),
            max_interval: Duration::from_secs(1024),
            jitter: 0.1,
            max_wait: Duration::from_secs(9),
        }
    }

    /// The wait after one of `previous` (none for the first), with `rand` in [-1, 1].
    pub fn next_interval(&self, previous: Option<Duration>, rand: f64) -> Duration {
        let base = match previous {
            None => self.initial,
            Some(p) => (p * 2).min(self.max_interval),
        };
        let factor = 1.0 + self.jitter * rand.clamp(-1.0, 1.0);
        base.mul_f64(factor).min(self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pcp_epoch_check_of_rfc_6887_section_8_5() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut epoch = Epoch::new(EpochRule::Pcp);
        assert!(epoch.observe(t0, 1000), "the first epoch is valid");
        assert!(epoch.observe(t0 + s(10), 1010));
        // One second backwards is tolerated, more is a reboot.
        assert!(epoch.observe(t0 + s(10), 1009));
        assert!(!epoch.observe(t0 + s(11), 5));
        // The server's clock ran far slower than ours: it restarted in between.
        assert!(epoch.observe(t0 + s(12), 6));
        assert!(!epoch.observe(t0 + s(112), 8));
        // ... or far faster.
        assert!(!epoch.observe(t0 + s(113), 500));
        // Small differences are fine.
        assert!(epoch.observe(t0 + s(213), 603));
    }

    #[test]
    fn the_natpmp_epoch_check_of_rfc_6886_section_3_6() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut epoch = Epoch::new(EpochRule::NatPmp);
        assert!(epoch.observe(t0, 50));
        assert!(epoch.observe(t0 + s(80), 120), "70 >= 80 * 7/8 - 2");
        assert!(!epoch.observe(t0 + s(160), 125), "it went slow: rebooted");
        assert!(!epoch.observe(t0 + s(161), 3), "it went backwards");
    }

    #[test]
    fn schedules_double_within_their_bounds() {
        let natpmp = Schedule::natpmp();
        let mut waits = vec![natpmp.next_interval(None, 0.7)];
        for _ in 0..3 {
            waits.push(natpmp.next_interval(waits.last().copied(), -0.4));
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [250, 500, 1000, 2000], "no jitter in NAT-PMP");
        assert_eq!(waits.iter().sum::<Duration>(), natpmp.max_wait);

        let pcp = Schedule::pcp();
        assert_eq!(pcp.next_interval(None, 1.0), Duration::from_millis(3300));
        assert_eq!(pcp.next_interval(None, -1.0), Duration::from_millis(2700));
        assert_eq!(
            pcp.next_interval(Some(Duration::from_secs(3)), 0.0),
            Duration::from_secs(6)
        );
        assert_eq!(
            pcp.next_interval(Some(Duration::from_secs(1000)), 1.0),
            Duration::from_secs(1024),
            "never beyond MRT"
        );
    }
}
