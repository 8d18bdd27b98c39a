//! Who may talk to the collector and how much, per source, sans-io: open
//! connections, uploads per unit of time, and bytes stored per unit of time,
//! with the clock passed in so tests run it on virtual time.
//!
//! A source is an IPv4 address or an IPv6 /56 (one home's delegation: a
//! /64 per host would let one home spread over 256 keys). Every limit is a
//! [`crate::net::source_limit`] structure, so echo, coordinator and
//! collector count sources the same way.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::net::source_limit::{ConnectionCounts, SourceKey, TokenBuckets};

/// Per-source limits of the collector.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Bits of an IPv6 address that make one source.
    pub v6_prefix: u8,
    /// Connections one source may hold open at once.
    pub connections_per_source: u32,
    /// Uploads one source may make in a burst.
    pub uploads_burst: u32,
    /// One more upload is allowed per this interval.
    pub upload_refill: Duration,
    /// Bytes of results one source may have stored in a burst.
    pub storage_burst_bytes: u32,
    /// The whole storage burst is regained over this period.
    pub storage_period: Duration,
    /// Above this many tracked sources, sources with full buckets are forgotten.
    pub max_tracked_sources: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            v6_prefix: 56,
            connections_per_source: 32,
            // A volunteer back online after weeks uploads its whole spool at once.
            uploads_burst: 600,
            upload_refill: Duration::from_secs(2),
            // About 3,800 realistic 17 KB results, or 32 at the 2 MiB limit.
            storage_burst_bytes: 64 * 1024 * 1024,
            storage_period: Duration::from_secs(24 * 3600),
            max_tracked_sources: 100_000,
        }
    }
}

/// Why a source is turned away, and when it may come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The source holds `max` connections already.
    Connections { max: u32 },
    /// The source spent its uploads; one more in `retry_after`.
    Uploads { retry_after: Duration },
    /// The source's storage quota does not cover `bytes` more before `retry_after`.
    Storage { bytes: u64, retry_after: Duration },
}

impl Refusal {
    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Connections { .. } => Duration::from_secs(5),
            Refusal::Uploads { retry_after } | Refusal::Storage { retry_after, .. } => *retry_after,
        }
    }

    /// The message for the client (no address in it: the client knows its own).
    pub fn message(&self) -> String {
        let secs = self.retry_after().as_secs().max(1);
        match self {
            Refusal::Connections { max } => format!(
                "too many connections from your network (at most {max} at once): retry in {secs} s"
            ),
            Refusal::Uploads { .. } => {
                format!("too many uploads from your network: retry in {secs} s")
            }
            Refusal::Storage { bytes, .. } => format!(
                "your network's storage quota does not cover {bytes} more bytes now: retry in {secs} s"
            ),
        }
    }
}

/// The per-source state of the collector.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    connections: ConnectionCounts,
    uploads: TokenBuckets,
    storage: TokenBuckets,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        let storage_refill = config
            .storage_period
            .div_f64(f64::from(config.storage_burst_bytes.max(1)));
        Admission {
            connections: ConnectionCounts::new(config.connections_per_source),
            uploads: TokenBuckets::new(
                config.uploads_burst.max(1),
                config.upload_refill,
                config.max_tracked_sources,
            ),
            storage: TokenBuckets::new(
                config.storage_burst_bytes.max(1),
                storage_refill,
                config.max_tracked_sources,
            ),
            config,
        }
    }

    /// The source `ip` counts as.
    pub fn source(&self, ip: IpAddr) -> SourceKey {
        SourceKey::within(ip, self.config.v6_prefix)
    }

    /// Counts a new connection from `ip`, unless its source holds the most it may.
    pub fn open_connection(&mut self, ip: IpAddr) -> Result<SourceKey, Refusal> {
        let source = self.source(ip);
        if self.connections.try_open(source) {
            Ok(source)
        } else {
            Err(Refusal::Connections {
                max: self.config.connections_per_source,
            })
        }
    }

    /// A connection counted by [`Admission::open_connection`] ended.
    pub fn close_connection(&mut self, source: SourceKey) {
        self.connections.close(source);
    }

    /// Spends one upload of `ip`'s source at `now`, if it has one left.
    pub fn admit_upload(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let source = self.source(ip);
        self.uploads
            .take(source, now, 1)
            .map_err(|retry_after| Refusal::Uploads { retry_after })
    }

    /// Whether `ip`'s source may store `bytes` more at `now` (spends nothing:
    /// only results actually stored are charged, with [`Admission::charge_storage`]).
    pub fn check_storage(&self, ip: IpAddr, now: Instant, bytes: usize) -> Result<(), Refusal> {
        let tokens = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.storage
            .check(self.source(ip), now, tokens)
            .map_err(|retry_after| Refusal::Storage {
                bytes: bytes as u64,
                retry_after,
            })
    }

    /// Charges `bytes` stored to `ip`'s source.
    pub fn charge_storage(&mut self, ip: IpAddr, now: Instant, bytes: usize) {
        let tokens = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.storage.spend(self.source(ip), now, tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn small() -> AdmissionConfig {
        AdmissionConfig {
            v6_prefix: 56,
            connections_per_source: 2,
            uploads_burst: 3,
            upload_refill: Duration::from_secs(10),
            storage_burst_bytes: 1000,
            storage_period: Duration::from_secs(100),
            max_tracked_sources: 100,
        }
    }

    #[test]
    fn connections_are_capped_per_ipv4_address_and_per_ipv6_56() {
        let mut admission = Admission::new(small());
        let a = admission.open_connection(ip("192.0.2.1")).unwrap();
        admission.open_connection(ip("192.0.2.1")).unwrap();
        assert_eq!(
            admission.open_connection(ip("::ffff:192.0.2.1")),
            Err(Refusal::Connections { max: 2 })
        );
        assert!(admission.open_connection(ip("192.0.2.2")).is_ok());
        admission.close_connection(a);
        assert!(admission.open_connection(ip("192.0.2.1")).is_ok());

        // Two /64s of one /56 are one source; the next /56 is another.
        admission.open_connection(ip("2001:db8:0:1::1")).unwrap();
        admission.open_connection(ip("2001:db8:0:2::1")).unwrap();
        assert!(admission.open_connection(ip("2001:db8:0:ff::1")).is_err());
        assert!(admission.open_connection(ip("2001:db8:0:100::1")).is_ok());
    }

    #[test]
    fn uploads_are_rate_limited_with_the_time_to_wait() {
        let mut admission = Admission::new(small());
        let t0 = Instant::now();
        for _ in 0..3 {
            admission.admit_upload(ip("198.51.100.7"), t0).unwrap();
        }
        let refused = admission.admit_upload(ip("198.51.100.7"), t0).unwrap_err();
        assert_eq!(refused.retry_after(), Duration::from_secs(10));
        assert!(
            refused.message().contains("retry in 10 s"),
            "{}",
            refused.message()
        );
        assert!(!refused.message().contains("198.51"), "no address echoed");
        assert!(admission.admit_upload(ip("198.51.100.8"), t0).is_ok());
        let later = t0 + Duration::from_secs(10);
        assert!(admission.admit_upload(ip("198.51.100.7"), later).is_ok());
    }

    #[test]
    fn storage_is_charged_for_stored_bytes_and_regained_over_the_period() {
        let mut admission = Admission::new(small());
        let t0 = Instant::now();
        let home = ip("2001:db8:aa:1::9");
        assert!(admission.check_storage(home, t0, 1000).is_ok());
        assert!(
            admission.check_storage(home, t0, 1001).is_err(),
            "over the burst"
        );
        admission.charge_storage(home, t0, 800);
        let refused = admission
            .check_storage(ip("2001:db8:aa:2::9"), t0, 300)
            .unwrap_err();
        assert_eq!(
            refused,
            Refusal::Storage {
                bytes: 300,
                retry_after: Duration::from_secs(10)
            },
            "100 bytes short at 10 bytes/s"
        );
        assert!(admission
            .check_storage(ip("2001:db8:ab::9"), t0, 300)
            .is_ok());
        let later = t0 + Duration::from_secs(10);
        assert!(admission.check_storage(home, later, 300).is_ok());
    }
}
