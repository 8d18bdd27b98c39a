//! Which endpoints a probe may be told to connect to by a server it does not
//! control (the coordinator, an echo server): a pure check, no I/O.
//!
//! A compromised or buggy server must not turn volunteers into a port
//! scanner of their own network or a SYN source against anyone's. The rule:
//! a global unicast address, or one of the documentation ranges the lab
//! uses (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, which
//! the internet does not route); never loopback, private, shared CGNAT
//! space, link-local, multicast, broadcast, reserved or unspecified; never
//! port 0. An IPv4-mapped IPv6 address is judged as the IPv4 address it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How strict the check is. Only [`AddressPolicy::Public`] is reachable
/// from the command line or the wire; loopback tests opt into the other in
/// code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Global unicast and the documentation ranges only.
    #[default]
    Public,
    /// Also loopback: for tests that run every party on 127.0.0.0/8.
    PublicOrLoopback,
}

impl AddressPolicy {
    /// `Ok` when a probe may connect to `endpoint`; else why not, in words.
    pub fn check(self, endpoint: SocketAddr) -> Result<(), String> {
        if endpoint.port() == 0 {
            return Err(format!("{endpoint} has port 0"));
        }
        let ip = endpoint.ip().to_canonical();
        if ip.is_loopback() && self == AddressPolicy::PublicOrLoopback {
            return Ok(());
        }
        let refused = match ip {
            IpAddr::V4(v4) => refused_v4(v4),
            IpAddr::V6(v6) => refused_v6(v6),
        };
        match refused {
            None => Ok(()),
            Some(kind) => Err(format!("{endpoint} is {kind}, not a public address")),
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

/// The kind of a special-purpose IPv4 address, `None` for a usable one.
fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const DOCUMENTATION: [[u8; 4]; 3] = [[192, 0, 2, 0], [198, 51, 100, 0], [203, 0, 113, 0]];
    if DOCUMENTATION.iter().any(|net| in_v4(ip, *net, 24)) {
        return None;
    }
    const SPECIAL: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared CGNAT space"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking space"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved or broadcast"),
    ];
    SPECIAL
        .iter()
        .find(|(net, len, _)| in_v4(ip, *net, *len))
        .map(|(_, _, kind)| *kind)
}

/// The kind of a non-global IPv6 address, `None` for a usable one.
fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        return None; // documentation, 2001:db8::/32
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if first & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    if first & 0xffc0 == 0xfe80 {
        return Some("link-local");
    }
    if first & 0xfe00 == 0xfc00 {
        return Some("unique local (private)");
    }
    // Global unicast is 2000::/3; everything else is reserved.
    if first & 0xe000 != 0x2000 {
        return Some("reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: AddressPolicy, endpoint: &str) -> Result<(), String> {
        policy.check(endpoint.parse().unwrap())
    }

    #[test]
    fn public_and_documentation_addresses_pass() {
        for ok in [
            "1.1.1.1:8333",
            "192.0.2.7:1",
            "198.51.100.10:3478",
            "203.0.113.200:65535",
            "[2001:db8::1]:8333",
            "[2a01:4f8::1]:8333",
            "[::ffff:203.0.113.9]:40000",
        ] {
            assert_eq!(check(AddressPolicy::Public, ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn local_private_and_special_addresses_are_refused_with_their_kind() {
        for (bad, kind) in [
            ("127.0.0.1:22", "loopback"),
            ("10.1.2.3:80", "private"),
            ("172.31.255.255:80", "private"),
            ("192.168.1.1:80", "private"),
            ("100.64.0.1:80", "shared CGNAT space"),
            ("100.127.255.254:80", "shared CGNAT space"),
            ("169.254.169.254:80", "link-local"),
            ("224.0.0.1:80", "multicast"),
            ("255.255.255.255:80", "reserved or broadcast"),
            ("0.0.0.0:80", "unspecified"),
            ("0.1.2.3:80", "unspecified"),
            ("[::1]:22", "loopback"),
            ("[::]:22", "unspecified"),
            ("[fe80::1]:22", "link-local"),
            ("[fd00::1]:22", "unique local"),
            ("[ff02::1]:22", "multicast"),
            ("[::ffff:192.168.1.1]:80", "private"),
            ("[::ffff:127.0.0.1]:80", "loopback"),
        ] {
            let why = check(AddressPolicy::Public, bad).unwrap_err();
            assert!(why.contains(kind), "{bad}: {why}");
        }
        assert!(check(AddressPolicy::Public, "203.0.113.1:0")
            .unwrap_err()
            .contains("port 0"));
        // Just outside the ranges.
        assert_eq!(check(AddressPolicy::Public, "100.128.0.1:80"), Ok(()));
        assert_eq!(check(AddressPolicy::Public, "172.32.0.1:80"), Ok(()));
    }

    #[test]
    fn the_test_policy_adds_loopback_and_nothing_else() {
        let loose = AddressPolicy::PublicOrLoopback;
        assert_eq!(check(loose, "127.0.0.2:9000"), Ok(()));
        assert_eq!(check(loose, "[::1]:9000"), Ok(()));
        assert!(check(loose, "127.0.0.2:0").is_err());
        assert!(check(loose, "10.0.0.1:80").is_err());
        assert!(check(loose, "0.0.0.0:80").is_err());
        assert_eq!(AddressPolicy::default(), AddressPolicy::Public);
    }
}
