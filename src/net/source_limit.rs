//! Limits per traffic source, sans-io: token buckets and open-connection
//! counts keyed by [`SourceKey`], with the time always passed in, so the
//! servers share one implementation and tests run it on a virtual clock.
//!
//! Used by the echo server (dial-back requests) and the rendezvous
//! coordinator (trials and connections per source).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// What limits count by: an IPv4 address, or an IPv6 prefix (by default a
/// /64, what one host usually holds; wider prefixes such as a /56 or a /48
/// group a whole home or site, which holds many /64s). An IPv4-mapped IPv6
/// address (`::ffff:a.b.c.d`, what a dual-stack listener reports for IPv4
/// clients) counts as its IPv4 address, not as one prefix shared by every
/// IPv4 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    ip: IpAddr,
    /// Bits of an IPv6 address kept; 0 for IPv4.
    v6_prefix: u8,
}

/// The IPv6 prefix one host usually holds, what [`SourceKey::of`] counts by.
pub const HOST_V6_PREFIX: u8 = 64;

/// The IPv6 prefix one site (a home, an office) may hold: aggregate caps
/// count by it, so a site cannot multiply its share by using many /64s.
pub const SITE_V6_PREFIX: u8 = 48;

impl SourceKey {
    /// The key of `ip`: its IPv4 address, or its IPv6 /64.
    pub fn of(ip: IpAddr) -> SourceKey {
        SourceKey::within(ip, HOST_V6_PREFIX)
    }

    /// The key of `ip`: its IPv4 address, or its IPv6 prefix of
    /// `v6_prefix` bits (at most 128).
    pub fn within(ip: IpAddr, v6_prefix: u8) -> SourceKey {
        let v6_prefix = v6_prefix.min(128);
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(v6_prefix))
                    .unwrap_or(0);
                let kept = u128::from(v6) & mask;
                SourceKey {
                    ip: IpAddr::V6(Ipv6Addr::from(kept)),
                    v6_prefix,
                }
            }
            // One IPv4 key whatever prefix was asked, so keys compare equal.
            v4 => SourceKey {
                ip: v4,
                v6_prefix: 0,
            },
        }
    }

    /// This key's wider IPv6 prefix of `v6_prefix` bits (an IPv4 key stays as it is).
    pub fn widened(self, v6_prefix: u8) -> SourceKey {
        SourceKey::within(self.ip, v6_prefix.min(self.v6_prefix))
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.v6_prefix),
        }
    }
}

/// A token bucket per source: `burst` tokens at most, one more every `refill`.
#[derive(Debug)]
pub struct TokenBuckets {
    burst: f64,
    refill: Duration,
    /// Tokens left at the instant, for sources that spent some.
    buckets: HashMap<SourceKey, (f64, Instant)>,
    /// Above this many tracked sources, full buckets are forgotten.
    max_tracked: usize,
}

impl TokenBuckets {
    pub fn new(burst: u32, refill: Duration, max_tracked: usize) -> TokenBuckets {
        TokenBuckets {
            burst: f64::from(burst),
            refill: refill.max(Duration::from_millis(1)),
            buckets: HashMap::new(),
            max_tracked,
        }
    }

    /// Tokens `key` has at `now` (a source never seen has a full bucket).
    pub fn level(&self, key: SourceKey, now: Instant) -> f64 {
        self.buckets
            .get(&key)
            .map_or(self.burst, |bucket| self.refilled(*bucket, now))
    }

    /// Ok when `key` has `tokens` at `now`; else how long until it will.
    pub fn check(&self, key: SourceKey, now: Instant, tokens: u32) -> Result<(), Duration> {
        let level = self.level(key, now);
        let need = f64::from(tokens);
        if level >= need {
            Ok(())
        } else {
            Err(self.refill.mul_f64(need - level))
        }
    }

    /// Spends `tokens` if `key` has them at `now`; else says how long until it will.
    pub fn take(&mut self, key: SourceKey, now: Instant, tokens: u32) -> Result<(), Duration> {
        self.check(key, now, tokens)?;
        self.spend(key, now, tokens);
        Ok(())
    }

    /// Spends `tokens` already checked for, never going below empty (two
    /// spenders that checked separately may share a source).
    pub fn spend(&mut self, key: SourceKey, now: Instant, tokens: u32) {
        let left = (self.level(key, now) - f64::from(tokens)).max(0.0);
        if self.buckets.len() >= self.max_tracked && !self.buckets.contains_key(&key) {
            let burst = self.burst;
            let refill = self.refill;
            self.buckets
                .retain(|_, bucket| refilled(*bucket, now, burst, refill) < burst);
        }
        self.buckets.insert(key, (left, now));
    }

    fn refilled(&self, bucket: (f64, Instant), now: Instant) -> f64 {
        refilled(bucket, now, self.burst, self.refill)
    }
}

fn refilled((tokens, at): (f64, Instant), now: Instant, burst: f64, refill: Duration) -> f64 {
    let earned = now.saturating_duration_since(at).as_secs_f64() / refill.as_secs_f64();
    (tokens + earned).min(burst)
}

/// Open connections per source, at most `max` each.
#[derive(Debug)]
pub struct ConnectionCounts {
    max: u32,
    open: HashMap<SourceKey, u32>,
}

impl ConnectionCounts {
    pub fn new(max: u32) -> ConnectionCounts {
        ConnectionCounts {
            max,
            open: HashMap::new(),
        }
    }

    /// Counts one more connection from `key`, unless it already has `max`.
    pub fn try_open(&mut self, key: SourceKey) -> bool {
        let count = self.open.entry(key).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                self.open.remove(&key);
            }
            return false;
        }
        *count += 1;
        true
    }

    /// One connection from `key` (counted by [`ConnectionCounts::try_open`]) ended.
    pub fn close(&mut self, key: SourceKey) {
        if let Some(count) = self.open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Connections from `key` open now.
    pub fn open(&self, key: SourceKey) -> u32 {
        self.open.get(&key).copied().unwrap_or(0)
    }

    /// Sources with at least one connection open.
    pub fn sources(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> SourceKey {
        SourceKey::of(ip.parse().unwrap())
    }

    #[test]
    fn ipv4_mapped_ipv6_is_keyed_as_its_ipv4_address() {
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1").to_string(), "192.0.2.1");
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("2001:db8::7").to_string(), "2001:db8::/64");
    }

    #[test]
    fn wider_ipv6_prefixes_group_more_and_leave_ipv4_alone() {
        let within = |ip: &str, bits| SourceKey::within(ip.parse().unwrap(), bits);
        assert_eq!(within("2001:db8:0:ff::1", 56), within("2001:db8::2", 56));
        assert_ne!(within("2001:db8:0:100::1", 56), within("2001:db8::2", 56));
        assert_eq!(within("2001:db8:0:ff::1", 56).to_string(), "2001:db8::/56");
        assert_eq!(within("2001:db8:0:ffff::1", 48), within("2001:db8::1", 48));
        assert_eq!(within("2001:db8::1", 0).to_string(), "::/0");
        assert_eq!(within("2001:db8::1", 200).to_string(), "2001:db8::1/128");
        assert_eq!(within("192.0.2.1", 48), within("::ffff:192.0.2.1", 48));
        assert_eq!(within("192.0.2.1", 48).to_string(), "192.0.2.1");
        assert_ne!(within("192.0.2.1", 48), within("192.0.2.2", 48));
        assert_eq!(key("2001:db8::1"), within("2001:db8::9", HOST_V6_PREFIX));
        assert_eq!(
            key("2001:db8:0:7::1").widened(SITE_V6_PREFIX),
            within("2001:db8::1", 48)
        );
        assert_eq!(key("192.0.2.1").widened(SITE_V6_PREFIX), key("192.0.2.1"));
    }

    #[test]
    fn buckets_allow_a_burst_then_refill_with_time() {
        let mut buckets = TokenBuckets::new(2, Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let a = key("192.0.2.1");
        assert_eq!(buckets.take(a, t0, 1), Ok(()));
        assert_eq!(buckets.take(a, t0, 1), Ok(()));
        assert_eq!(buckets.take(a, t0, 1), Err(Duration::from_secs(10)));
        assert_eq!(
            buckets.take(key("192.0.2.2"), t0, 1),
            Ok(()),
            "other sources have their own bucket"
        );
        let later = t0 + Duration::from_secs(5);
        assert_eq!(buckets.check(a, later, 1), Err(Duration::from_secs(5)));
        let refilled = t0 + Duration::from_secs(10);
        assert_eq!(buckets.take(a, refilled, 1), Ok(()));
        assert!(buckets.take(a, refilled, 1).is_err());
        let long_after = t0 + Duration::from_secs(3600);
        assert_eq!(buckets.level(a, long_after), 2.0, "never above the burst");
    }

    #[test]
    fn buckets_share_a_64_and_a_mapped_address() {
        let mut buckets = TokenBuckets::new(1, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        assert!(buckets.take(key("2001:db8::1"), t0, 1).is_ok());
        assert!(buckets.take(key("2001:db8::ffff"), t0, 1).is_err());
        assert!(buckets.take(key("2001:db8:0:1::1"), t0, 1).is_ok());
        assert!(buckets.take(key("192.0.2.9"), t0, 1).is_ok());
        assert!(buckets.take(key("::ffff:192.0.2.9"), t0, 1).is_err());
        assert!(buckets.take(key("::ffff:192.0.2.10"), t0, 1).is_ok());
    }

    #[test]
    fn checking_costs_nothing_and_spending_stops_at_empty() {
        let mut buckets = TokenBuckets::new(3, Duration::from_secs(1), 100);
        let t0 = Instant::now();
        let a = key("192.0.2.1");
        assert_eq!(buckets.check(a, t0, 3), Ok(()));
        assert_eq!(buckets.check(a, t0, 4), Err(Duration::from_secs(1)));
        assert_eq!(buckets.level(a, t0), 3.0);
        buckets.spend(a, t0, 5);
        assert_eq!(buckets.level(a, t0), 0.0);
    }

    #[test]
    fn full_buckets_are_forgotten_when_too_many_sources_are_tracked() {
        let mut buckets = TokenBuckets::new(1, Duration::from_secs(1), 2);
        let t0 = Instant::now();
        buckets.spend(key("192.0.2.1"), t0, 1);
        buckets.spend(key("192.0.2.2"), t0, 1);
        let later = t0 + Duration::from_secs(2);
        buckets.spend(key("192.0.2.3"), later, 1);
        assert_eq!(buckets.buckets.len(), 1, "the two refilled buckets went");
        assert_eq!(buckets.level(key("192.0.2.1"), later), 1.0);
        assert_eq!(buckets.level(key("192.0.2.3"), later), 0.0);
    }

    #[test]
    fn connection_counts_go_up_to_the_limit_and_down_again() {
        let mut counts = ConnectionCounts::new(2);
        let a = key("192.0.2.1");
        assert!(counts.try_open(a));
        assert!(counts.try_open(key("::ffff:192.0.2.1")), "the same source");
        assert_eq!(counts.open(a), 2);
        assert!(!counts.try_open(a));
        assert!(counts.try_open(key("192.0.2.2")));
        counts.close(a);
        assert_eq!(counts.open(a), 1);
        assert!(counts.try_open(a));
        counts.close(a);
        counts.close(a);
        assert_eq!(counts.open(a), 0);
        assert_eq!(
            counts.sources(),
            1,
            "a source with nothing open is forgotten"
        );
        let mut none = ConnectionCounts::new(0);
        assert!(!none.try_open(a));
        assert_eq!(none.sources(), 0);
    }
}
