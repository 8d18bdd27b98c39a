//! `HOST[:PORT]` as people type it: the port is added when left out.

use std::net::{IpAddr, SocketAddr};

/// `spec` as `HOST:PORT`, with `default_port` when it names no port: an IP
/// literal (`198.51.100.10`, `2001:db8::1`), a host name, or either with a
/// port (`[2001:db8::1]:8340`) already.
pub fn with_default_port(spec: &str, default_port: u16) -> String {
    let spec = spec.trim();
    if spec.parse::<SocketAddr>().is_ok() {
        return spec.to_string();
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return SocketAddr::new(ip, default_port).to_string();
    }
    let has_port = spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    if has_port {
        spec.to_string()
    } else {
        format!("{spec}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_port_is_added_only_when_none_is_given() {
        assert_eq!(
            with_default_port("198.51.100.10", 8340),
            "198.51.100.10:8340"
        );
        assert_eq!(
            with_default_port("198.51.100.10:7000", 8340),
            "198.51.100.10:7000"
        );
        assert_eq!(with_default_port("2001:db8::1", 8340), "[2001:db8::1]:8340");
        assert_eq!(
            with_default_port("[2001:db8::1]:9", 8340),
            "[2001:db8::1]:9"
        );
        assert_eq!(
            with_default_port("coord.example", 8340),
            "coord.example:8340"
        );
        assert_eq!(
            with_default_port("coord.example:1", 8340),
            "coord.example:1"
        );
    }
}
