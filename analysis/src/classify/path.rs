//! The NAT chain in front of a host, from a TTL-limited probe sequence: what the hops answered and what it means.
//!
//! The classifier sends one TCP SYN towards the primary echo server with
//! IP TTL 1, 2, 3, ... and records, per TTL, the source of the ICMP time
//! exceeded that came back (read from the socket's error queue, no
//! privilege needed), or that the SYN reached the server, or silence.
//! [`path_verdict`] turns that into the number of hops with non-public
//! addresses before the first public one (on a home or carrier-grade path,
//! each is a NAT), whether one of them is in the shared address space
//! 100.64.0.0/10 that ISPs number their carrier-grade NAT customers from,
//! and the TTL a `low_ttl` priming SYN needs to pass all of them.
//!
//! Only classes of addresses ever leave the host ([`HopClass`]); the raw
//! observation stays in the local `classify --json` output.

use std::net::{IpAddr, Ipv4Addr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest TTL probed: home NAT, CGN and a few ISP routers fit well within it.
pub const MAX_PATH_TTL: u8 = 6;

/// What came back for one TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum HopAnswer {
    /// ICMP time exceeded from this router.
    TimeExceeded { from: IpAddr },
    /// The SYN reached the destination (it answered SYN-ACK or RST).
    Reached,
    /// Another ICMP error (unreachable) from this router.
    Unreachable { from: IpAddr },
    /// Nothing within the wait.
    Silent,
}

/// One probe of the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopObservation {
    pub ttl: u8,
    pub answer: HopAnswer,
}

/// The whole sequence, TTL 1 upwards, as measured (raw addresses: local only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathObservation {
    pub hops: Vec<HopObservation>,
    /// Why the sequence could not run, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The address class of a hop, what a result may hold of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HopClass {
    /// RFC 1918 (10/8, 172.16/12, 192.168/16): a home or company LAN.
    Private,
    /// RFC 6598 shared address space 100.64.0.0/10: between a carrier-grade NAT and its customers.
    Shared,
    /// A globally routed address: the public internet.
    Public,
    /// Loopback, link-local, documentation-free special ranges and the like.
    Special,
    /// The router did not answer.
    Silent,
    /// The probe reached the destination at this TTL.
    Destination,
}

impl HopClass {
    /// The class of an address. Documentation ranges (RFC 5737) count as
    /// public: the lab's internet is numbered from them.
    pub fn of(ip: IpAddr) -> HopClass {
        match ip {
            IpAddr::V4(v4) => class_of_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => class_of_v4(v4),
                None if v6.is_loopback() || v6.is_unspecified() => HopClass::Special,
                None if v6.segments()[0] & 0xfe00 == 0xfc00 => HopClass::Private,
                None if v6.segments()[0] & 0xffc0 == 0xfe80 => HopClass::Special,
                None => HopClass::Public,
            },
        }
    }
}

fn class_of_v4(ip: Ipv4Addr) -> HopClass {
    let [a, b, ..] = ip.octets();
    if ip.is_private() {
        HopClass::Private
    } else if a == 100 && (64..128).contains(&b) {
        HopClass::Shared
    } else if ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || a >= 224 || a == 0 {
        HopClass::Special
    } else {
        HopClass::Public
    }
}

/// What the probe sequence says about the chain in front of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PathVerdict {
    /// Per TTL from 1, the class of what answered, up to the first public
    /// hop or the destination.
    pub hops: Vec<HopClass>,
    /// Hops with private or shared addresses before the first public one
    /// (each a NAT on a home or carrier-grade path); `None` when a hop was
    /// silent before any public one, so the count is unknown.
    pub nat_hops: Option<u8>,
    /// A hop uses the shared address space 100.64.0.0/10: the host is
    /// behind carrier-grade NAT. `None` when no hop was heard at all. A CGN
    /// numbered from private space shows as `nat_hops` of 2 or more without this.
    pub cgnat: Option<bool>,
    /// The TTL that takes a priming SYN through every NAT of this side and
    /// lets it die at the first public router: `nat_hops + 1`.
    pub prime_ttl: Option<u8>,
}

/// Decides the chain from the probe sequence. Pure: no I/O, no clock.
pub fn path_verdict(observation: &PathObservation) -> PathVerdict {
    let mut hops = observation.hops.clone();
    hops.sort_by_key(|h| h.ttl);
    let mut classes = Vec::new();
    let mut inside = 0u8;
    let mut count_known = true;
    let mut edge_found = false;
    for (expected, hop) in (1u8..).zip(&hops) {
        if hop.ttl != expected {
            // A TTL was not probed: nothing after it can be placed.
            count_known = false;
            break;
        }
        let class = match hop.answer {
            HopAnswer::TimeExceeded { from } | HopAnswer::Unreachable { from } => {
                HopClass::of(from)
            }
            HopAnswer::Reached => HopClass::Destination,
            HopAnswer::Silent => HopClass::Silent,
        };
        classes.push(class);
        match class {
            HopClass::Private | HopClass::Shared => inside += 1,
            HopClass::Silent | HopClass::Special => count_known = false,
            HopClass::Public | HopClass::Destination => {
                edge_found = true;
                break;
            }
        }
    }
    let heard = classes
        .iter()
        .any(|c| !matches!(c, HopClass::Silent | HopClass::Destination));
    let nat_hops = (count_known && edge_found).then_some(inside);
    let shared = classes.contains(&HopClass::Shared);
    PathVerdict {
        nat_hops,
        cgnat: if shared {
            Some(true)
        } else {
            nat_hops.map(|_| false).filter(|_| heard)
        },
        prime_ttl: nat_hops.map(|n| n + 1),
        hops: classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exceeded(ttl: u8, from: &str) -> HopObservation {
        HopObservation {
            ttl,
            answer: HopAnswer::TimeExceeded {
                from: from.parse().unwrap(),
            },
        }
    }

    fn path(hops: Vec<HopObservation>) -> PathVerdict {
        path_verdict(&PathObservation { hops, error: None })
    }

    #[test]
    fn a_home_nat_is_one_private_hop_and_primes_with_ttl_2() {
        let v = path(vec![
            exceeded(1, "192.168.1.1"),
            exceeded(2, "198.51.100.10"),
        ]);
        assert_eq!(v.hops, [HopClass::Private, HopClass::Public]);
        assert_eq!(v.nat_hops, Some(1));
        assert_eq!(v.cgnat, Some(false));
        assert_eq!(v.prime_ttl, Some(2));
    }

    #[test]
    fn a_home_nat_behind_a_cgn_is_two_hops_one_shared() {
        let v = path(vec![
            exceeded(1, "192.168.2.1"),
            exceeded(2, "100.64.1.1"),
            exceeded(3, "203.0.113.7"),
            // Beyond the first public hop nothing counts.
            exceeded(4, "10.0.0.1"),
        ]);
        assert_eq!(
            v.hops,
            [HopClass::Private, HopClass::Shared, HopClass::Public]
        );
        assert_eq!(v.nat_hops, Some(2));
        assert_eq!(v.cgnat, Some(true));
        assert_eq!(v.prime_ttl, Some(3));
    }

    #[test]
    fn a_cgn_numbered_from_private_space_counts_two_hops_without_the_cgnat_mark() {
        let v = path(vec![
            exceeded(1, "192.168.0.1"),
            exceeded(2, "10.20.0.1"),
            exceeded(3, "8.8.4.4"),
        ]);
        assert_eq!(
            (v.nat_hops, v.cgnat, v.prime_ttl),
            (Some(2), Some(false), Some(3))
        );
    }

    #[test]
    fn a_public_host_reaches_a_public_router_first() {
        let v = path(vec![exceeded(1, "203.0.113.1")]);
        assert_eq!(
            (v.nat_hops, v.cgnat, v.prime_ttl),
            (Some(0), Some(false), Some(1))
        );
        let v = path(vec![HopObservation {
            ttl: 1,
            answer: HopAnswer::Reached,
        }]);
        assert_eq!(v.hops, [HopClass::Destination]);
        assert_eq!(v.nat_hops, Some(0), "the server itself is next");
        assert_eq!(v.cgnat, None, "no router was heard");
    }

    #[test]
    fn a_silent_hop_before_the_public_edge_leaves_the_count_unknown_but_keeps_what_was_heard() {
        let v = path(vec![
            exceeded(1, "192.168.1.1"),
            HopObservation {
                ttl: 2,
                answer: HopAnswer::Silent,
            },
            exceeded(3, "100.100.0.1"),
            exceeded(4, "198.51.100.1"),
        ]);
        assert_eq!(v.nat_hops, None);
        assert_eq!(v.prime_ttl, None);
        assert_eq!(v.cgnat, Some(true), "a shared hop was heard anyway");
        let v = path(vec![
            exceeded(1, "192.168.1.1"),
            exceeded(3, "198.51.100.1"),
        ]);
        assert_eq!(v.nat_hops, None, "TTL 2 missing");
        let v = path(vec![exceeded(1, "192.168.1.1")]);
        assert_eq!((v.nat_hops, v.cgnat), (None, None), "never left the LAN");
    }

    #[test]
    fn address_classes_follow_the_rfcs() {
        for (ip, class) in [
            ("10.1.2.3", HopClass::Private),
            ("172.31.0.1", HopClass::Private),
            ("192.168.0.1", HopClass::Private),
            ("100.64.0.1", HopClass::Shared),
            ("100.127.255.254", HopClass::Shared),
            ("100.128.0.1", HopClass::Public),
            ("100.63.255.255", HopClass::Public),
            ("169.254.1.1", HopClass::Special),
            ("127.0.0.1", HopClass::Special),
            ("198.51.100.10", HopClass::Public),
            ("fd00::1", HopClass::Private),
            ("2001:db8::1", HopClass::Public),
        ] {
            assert_eq!(HopClass::of(ip.parse().unwrap()), class, "{ip}");
        }
    }
}
