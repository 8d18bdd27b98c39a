//! The default IPv4 gateway, the only address port mapping requests go to.
//!
//! [`parse_route_table`] reads Linux's `/proc/net/route` (sans-io, tested in
//! memory); [`default_gateway`] reads the file. Elsewhere there is no
//! gateway to ask, and the probe records that instead of guessing.

use std::net::Ipv4Addr;

/// The default route's gateway in the text of `/proc/net/route`: the first
/// line with destination 0, mask 0, the gateway flag (RTF_GATEWAY) and a
/// non-zero gateway. `None` when there is none (an on-link default route
/// has no gateway).
pub fn parse_route_table(text: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return None;
        }
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (destination, gateway, flags, mask) = (
            hex(fields[1])?,
            hex(fields[2])?,
            hex(fields[3])?,
            hex(fields[7])?,
        );
        let is_default = destination == 0 && mask == 0;
        let via_gateway = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
        // The kernel prints the address in host byte order (little endian here).
        (is_default && via_gateway && gateway != 0).then(|| Ipv4Addr::from(gateway.to_le_bytes()))
    })
}

/// This host's default IPv4 gateway, if it has one (Linux only).
pub fn default_gateway() -> Option<Ipv4Addr> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    parse_route_table(&std::fs::read_to_string("/proc/net/route").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn the_default_route_via_a_gateway_is_found() {
        let table = format!(
            "{HEADER}eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        );
        assert_eq!(
            parse_route_table(&table),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
    }

    #[test]
    fn an_on_link_default_route_or_garbage_has_no_gateway() {
        let on_link =
            format!("{HEADER}lan0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(parse_route_table(&on_link), None);
        assert_eq!(parse_route_table(""), None);
        assert_eq!(
            parse_route_table(&format!("{HEADER}eth0 zz 00 03 0 0 0 00\nshort line\n")),
            None
        );
        let down = format!("{HEADER}eth0\t00000000\t0101A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert_eq!(parse_route_table(&down), None, "a route that is not up");
    }
}
