//! Real Linux NATs as lab routers: what a scenario NAT with `backend = "kernel"` becomes.
//!
//! A kernel router is a namespace `NAME-nat-ROUTER` holding a bridge `lan`
//! (the hosts' veth links, gateway 192.168.N.1) and a TUN device `wan0` with
//! the public address. A kernel carrier-grade NAT also holds one TUN device
//! per router behind it (`lan1`, `lan2`, ...: see [`downstream_link`]),
//! whose WAN it is; its rules treat them as LAN side, as the bridge. nftables translates and filters, conntrack keeps the
//! state, and the lab's emulator sits in series on `wan0` as a bare link
//! ([`crate::nat::Translation::Link`]) for delay, jitter and loss, since
//! sch_netem is not available here.
//!
//! This file is sans-io: which rule set and sysctls a NAT configuration
//! needs, and the refusal of what Linux cannot express, naming the key.
//! [`conntrack`] reads `conntrack -E` into the lab's event log;
//! [`portmap`] runs miniupnpd (NAT-PMP, PCP) on routers that offer port mapping.
//! A router with `ipv6` also gets [`ipv6_ruleset`]: IPv6 routed untranslated,
//! through a stateful firewall or none.

pub mod conntrack;
pub mod portmap;

use std::fmt;

use punchscope_analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};
use serde::Serialize;

use crate::nat::{NatConfig, Translation};
use crate::scenario::Ipv6Mode;

/// The bridge of a kernel router's LAN side.
pub const LAN_DEVICE: &str = "lan";
/// A kernel router's WAN device (a TUN device the lab's link emulator drives).
pub const WAN_DEVICE: &str = "wan0";
/// Every LAN-side device of a kernel router as nftables matches it: the
/// bridge `lan` and, on a carrier-grade NAT, each [`downstream_link`].
pub const LAN_SIDE: &str = "lan*";

/// The device in a kernel carrier-grade NAT's namespace that is the WAN of
/// the router behind it at `router_index` (its place in the scenario): a TUN
/// device that router's task drives, since a TUN device cannot join the
/// bridge. Its name starts with `lan` so that [`LAN_SIDE`] matches it.
pub fn downstream_link(router_index: usize) -> String {
    format!("{LAN_DEVICE}{router_index}")
}
/// The nftables table every kernel router's rules live in.
pub const TABLE: &str = "punchscope_nat";
/// The nftables table of a kernel router's IPv6 rules (`ipv6` key), apart
/// from the IPv4 ones so that those stay exactly as without IPv6.
pub const TABLE_V6: &str = "punchscope_v6";

/// The nftables table of a kernel router's `ipv6 = "nptv6"` prefix translation.
pub const TABLE_NPT: &str = "punchscope_npt";

/// The IPv6 rule set (for `nft -f -`) of a kernel router with `ipv6`.
/// There is no translation: hosts keep their global addresses.
///
/// - `firewall` (RFC 6092): the LAN may send anything out; conntrack admits
///   what belongs to it back (established, and related ICMPv6 errors);
///   unsolicited inbound gets `unsolicited`: `drop`, a TCP RST, or ICMPv6
///   administratively prohibited (what RFC 6092 has a firewall send, where
///   an IPv4 NAT, the destination itself, says port unreachable).
/// - `open`: forwards everything, both ways.
///
/// Either way ICMPv6 to the router itself passes (neighbour discovery on
/// the LAN, errors and echo), and nothing else reaches it from the WAN.
pub fn ipv6_ruleset(mode: Ipv6Mode, unsolicited: UnsolicitedAnswer) -> String {
    let forward = match mode {
        Ipv6Mode::Open => {
            "\t\ttype filter hook forward priority filter; policy accept;\n".to_string()
        }
        // NPTv6 filters as the firewall does; its translation is a table of
        // its own ([`nptv6_ruleset`]).
        Ipv6Mode::Firewall | Ipv6Mode::Nptv6 => {
            let (syn_answer, udp_answer) = match unsolicited {
                UnsolicitedAnswer::Drop => ("drop", "drop"),
                UnsolicitedAnswer::Rst => ("reject with tcp reset", "drop"),
                UnsolicitedAnswer::Icmp => (
                    "reject with icmpv6 type admin-prohibited",
                    "reject with icmpv6 type admin-prohibited",
                ),
            };
            format!(
                "\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"{LAN_SIDE}\" oifname \"{WAN_DEVICE}\" accept
\t\t# Echo requests pass, as RFC 4890 asks of a firewall; other unsolicited ICMPv6 does not.
\t\tiifname \"{WAN_DEVICE}\" icmpv6 type echo-request accept
\t\tiifname \"{WAN_DEVICE}\" tcp flags & (fin|syn|rst|ack) == syn {syn_answer}
\t\tiifname \"{WAN_DEVICE}\" meta l4proto udp {udp_answer}
"
            )
        }
    };
    format!(
        "table ip6 {TABLE_V6} {{
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\tct state established,related accept
\t\tmeta l4proto ipv6-icmp accept
\t\t# The router runs no IPv6 service for the internet.
\t\tiifname \"{WAN_DEVICE}\" drop
\t}}
\tchain forward {{
{forward}\t}}
}}
"
    )
}

/// The prefix translation of a kernel router with `ipv6 = "nptv6"`,
/// between its LAN's internal /64 and the external one. nftables has no
/// RFC 6296 statement: `snat prefix` / `dnat prefix` map the prefix bits
/// and keep the rest (a stateful netmap through conntrack, which fixes
/// checksums). With prefixes of equal one's complement sum (the lab plans
/// them so: `RouterIpv6::plan`) that is exactly RFC 6296 with a zero
/// adjustment: the interface identifier and every checksum stay as they
/// were. Only the LAN /64 is translated, so the router's own WAN address
/// (in the same /48) is left alone.
pub fn nptv6_ruleset(internal_lan: std::net::Ipv6Addr, external_lan: std::net::Ipv6Addr) -> String {
    format!(
        "table ip6 {TABLE_NPT} {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		iifname \"{WAN_DEVICE}\" ip6 daddr {external_lan}/64 dnat ip6 prefix to {internal_lan}/64
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname \"{WAN_DEVICE}\" ip6 saddr {internal_lan}/64 snat ip6 prefix to {external_lan}/64
	}}
}}
"
    )
}

/// How a kernel router translates: the three NAT kinds Linux really offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelNat {
    /// `masquerade`: keeps the source port when free, one external port per
    /// internal endpoint whatever the destination (EIM, port-preserving).
    Masquerade,
    /// `masquerade fully-random`: a random external port per connection (APDM, random).
    MasqueradeFullyRandom,
    /// `snat` to the one port a hash of (source address, source port,
    /// destination address) picks: the same port for one destination
    /// address whatever its port (ADM, hash-random).
    SnatHashed,
}

impl fmt::Display for KernelNat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Masquerade => "masquerade",
            Self::MasqueradeFullyRandom => "masquerade fully-random",
            Self::SnatHashed => "snat hashed",
        })
    }
}

impl KernelNat {
    /// The kernel NAT that does what `config` says, or why Linux cannot, naming the key.
    pub fn for_config(config: &NatConfig) -> Result<KernelNat, String> {
        let refuse = |key: &str, why: &str| Err(format!("backend = \"kernel\": {key} {why}"));
        let Translation::Nat {
            mapping,
            filtering,
            allocation,
        } = config.translation
        else {
            return refuse(
                "mapping = \"none\"",
                "is a plain router; the kernel backend is for NATs (use the emulator)",
            );
        };
        if filtering != Filtering::Apdf {
            return refuse(
                &format!("filtering = \"{filtering}\""),
                "cannot be expressed: conntrack admits inbound packets only on a connection's own 5-tuple (filtering = \"apdf\")",
            );
        }
        if config.hairpin {
            return refuse(
                "hairpin = true",
                "is not offered: a Linux NAT hairpins only with DNAT rules per port",
            );
        }
        if !config.rst_closes {
            return refuse(
                "rst_closes = false",
                "cannot be expressed: conntrack always closes a flow on a RST",
            );
        }
        match (mapping, allocation) {
            (Mapping::Eim, Allocation::Preserve) => Ok(KernelNat::Masquerade),
            (Mapping::Apdm, Allocation::Random) => Ok(KernelNat::MasqueradeFullyRandom),
            (Mapping::Adm, Allocation::Random) => Ok(KernelNat::SnatHashed),
            (Mapping::Eim, other) => refuse(
                &format!("allocation = \"{other}\""),
                "with mapping = \"eim\" cannot be expressed: masquerade preserves ports (allocation = \"preserve\")",
            ),
            (Mapping::Apdm, other) => refuse(
                &format!("allocation = \"{other}\""),
                "with mapping = \"apdm\" cannot be expressed: only masquerade fully-random maps per destination endpoint (allocation = \"random\")",
            ),
            (Mapping::Adm, other) => refuse(
                &format!("allocation = \"{other}\""),
                "with mapping = \"adm\" cannot be expressed: the hashed snat picks its port at random (allocation = \"random\")",
            ),
        }
    }

    /// The nftables rule set (for `nft -f -`) of a kernel router with this
    /// translation, public address and answer to unsolicited SYNs.
    pub fn ruleset(&self, config: &NatConfig) -> String {
        let public = config.public_ip;
        let translate = match self {
            KernelNat::Masquerade => "masquerade".to_string(),
            KernelNat::MasqueradeFullyRandom => "masquerade fully-random".to_string(),
            // Ports 1024-65535, as the emulator's allocations.
            KernelNat::SnatHashed => [
                format!("meta l4proto tcp snat ip to {public} : jhash ip saddr . tcp sport . ip daddr mod 64512 offset 1024"),
                format!("oifname \"{WAN_DEVICE}\" meta l4proto udp snat ip to {public} : jhash ip saddr . udp sport . ip daddr mod 64512 offset 1024"),
                format!("oifname \"{WAN_DEVICE}\" masquerade"),
            ]
            .join("\n\t\t"),
        };
        let (syn_answer, udp_answer) = match config.unsolicited {
            UnsolicitedAnswer::Drop => ("drop", "drop"),
            UnsolicitedAnswer::Rst => ("reject with tcp reset", "drop"),
            UnsolicitedAnswer::Icmp => (
                "reject with icmp type port-unreachable",
                "reject with icmp type port-unreachable",
            ),
        };
        format!(
            "table ip {TABLE} {{
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname \"{WAN_DEVICE}\" {translate}
\t}}
\tchain input {{
\t\ttype filter hook input priority filter; policy accept;
\t\t# The router runs no service: what reaches it from the WAN was refused by conntrack.
\t\tiifname \"{WAN_DEVICE}\" tcp flags & (fin|syn|rst|ack) == syn {syn_answer}
\t\tiifname \"{WAN_DEVICE}\" meta l4proto udp {udp_answer}
\t\t# Anything else (a stray ACK, a FIN) would get a RST from the router's own stack: drop it, as the emulator does.
\t\tiifname \"{WAN_DEVICE}\" meta l4proto != icmp drop
\t\t# No hairpinning.
\t\tiifname \"{LAN_SIDE}\" ip daddr {public} drop
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname \"{LAN_SIDE}\" oifname \"{WAN_DEVICE}\" accept
\t}}
}}
"
        )
    }

    /// The sysctls (under /proc/sys/net) of the router namespace: forwarding,
    /// conntrack's TCP loose pick-up and window check, and the scenario's timeouts.
    pub fn sysctls(config: &NatConfig) -> Vec<(&'static str, String)> {
        let t = &config.timeouts;
        let mut settings: Vec<(&'static str, String)> = vec![
            ("ipv6/conf/all/disable_ipv6", "1".into()),
            ("ipv6/conf/default/disable_ipv6", "1".into()),
            ("ipv4/ip_forward", "1".into()),
            ("ipv4/conf/all/rp_filter", "0".into()),
            ("ipv4/conf/default/rp_filter", "0".into()),
            ("ipv4/conf/all/send_redirects", "0".into()),
            ("ipv4/conf/default/send_redirects", "0".into()),
            (
                "netfilter/nf_conntrack_tcp_loose",
                u8::from(config.tcp_loose).to_string(),
            ),
            // Without the window check, only out-of-window RSTs are invalid.
            (
                "netfilter/nf_conntrack_tcp_be_liberal",
                u8::from(!config.tcp_window_check).to_string(),
            ),
        ];
        let established = t.tcp_established.as_secs().to_string();
        let transitory = t.tcp_transitory.as_secs().to_string();
        let udp = t.udp.as_secs().to_string();
        settings.push((
            "netfilter/nf_conntrack_tcp_timeout_established",
            established,
        ));
        settings.push((
            "netfilter/nf_conntrack_tcp_timeout_syn_sent",
            transitory.clone(),
        ));
        settings.push(("netfilter/nf_conntrack_tcp_timeout_syn_recv", transitory));
        settings.push(("netfilter/nf_conntrack_udp_timeout", udp.clone()));
        settings.push(("netfilter/nf_conntrack_udp_timeout_stream", udp));
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

    fn config(mapping: Mapping, filtering: Filtering, allocation: Allocation) -> NatConfig {
        NatConfig::nat(mapping, filtering, allocation, PUBLIC)
    }

    #[test]
    fn each_expressible_kind_has_its_nat_statement() {
        let cases = [
            (
                Mapping::Eim,
                Allocation::Preserve,
                KernelNat::Masquerade,
                "oifname \"wan0\" masquerade\n",
            ),
            (
                Mapping::Apdm,
                Allocation::Random,
                KernelNat::MasqueradeFullyRandom,
                "masquerade fully-random",
            ),
            (
                Mapping::Adm,
                Allocation::Random,
                KernelNat::SnatHashed,
                "snat ip to 203.0.113.2 : jhash ip saddr . tcp sport . ip daddr",
            ),
        ];
        for (mapping, allocation, kind, statement) in cases {
            let c = config(mapping, Filtering::Apdf, allocation);
            assert_eq!(KernelNat::for_config(&c), Ok(kind));
            let rules = kind.ruleset(&c);
            assert!(rules.contains(statement), "{kind}: {rules}");
        }
    }

    #[test]
    fn the_links_of_routers_behind_a_kernel_cgn_are_lan_side_as_its_bridge() {
        let c = config(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
        let rules = KernelNat::Masquerade.ruleset(&c);
        assert!(
            rules.contains("iifname \"lan*\" oifname \"wan0\" accept"),
            "{rules}"
        );
        assert!(rules.contains("iifname \"lan*\" ip daddr 203.0.113.2 drop"));
        let link = downstream_link(3);
        assert_eq!(link, "lan3");
        assert!(link.starts_with(LAN_SIDE.trim_end_matches('*')));
        assert!(link.len() < 16, "IFNAMSIZ");
    }

    #[test]
    fn the_unsolicited_answer_becomes_the_input_rule() {
        let mut c = config(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
        for (answer, rule) in [
            (UnsolicitedAnswer::Drop, "== syn drop"),
            (UnsolicitedAnswer::Rst, "== syn reject with tcp reset"),
            (
                UnsolicitedAnswer::Icmp,
                "== syn reject with icmp type port-unreachable",
            ),
        ] {
            c.unsolicited = answer;
            let rules = KernelNat::Masquerade.ruleset(&c);
            assert!(rules.contains(rule), "{answer}: {rules}");
        }
    }

    #[test]
    fn what_linux_cannot_express_is_refused_naming_the_key() {
        let refused = |c: NatConfig, key: &str| {
            let e = KernelNat::for_config(&c).unwrap_err();
            assert!(e.contains(key), "{e}");
        };
        refused(
            config(Mapping::Eim, Filtering::Eif, Allocation::Preserve),
            "filtering = \"eif\"",
        );
        refused(
            config(Mapping::Eim, Filtering::Adf, Allocation::Preserve),
            "filtering = \"adf\"",
        );
        refused(
            config(Mapping::Eim, Filtering::Apdf, Allocation::Sequential),
            "allocation = \"sequential\"",
        );
        refused(
            config(Mapping::Eim, Filtering::Apdf, Allocation::Random),
            "allocation = \"random\"",
        );
        refused(
            config(Mapping::Apdm, Filtering::Apdf, Allocation::Preserve),
            "allocation = \"preserve\"",
        );
        refused(NatConfig::router(PUBLIC), "mapping = \"none\"");
        let mut c = config(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
        c.hairpin = true;
        refused(c.clone(), "hairpin");
        c.hairpin = false;
        c.rst_closes = false;
        refused(c, "rst_closes");
    }

    #[test]
    fn the_ipv6_firewall_admits_replies_and_answers_strangers_as_unsolicited_says() {
        for (answer, syn_rule) in [
            (UnsolicitedAnswer::Drop, "== syn drop"),
            (UnsolicitedAnswer::Rst, "== syn reject with tcp reset"),
            (
                UnsolicitedAnswer::Icmp,
                "== syn reject with icmpv6 type admin-prohibited",
            ),
        ] {
            let rules = ipv6_ruleset(Ipv6Mode::Firewall, answer);
            assert!(rules.starts_with("table ip6 punchscope_v6 {"), "{rules}");
            assert!(rules.contains("policy drop;"), "{rules}");
            assert!(rules.contains("ct state established,related accept"));
            assert!(rules.contains("iifname \"lan*\" oifname \"wan0\" accept"));
            assert!(rules.contains(syn_rule), "{answer}: {rules}");
            assert!(rules.contains("meta l4proto ipv6-icmp accept"), "ND");
            assert!(!rules.contains("masquerade") && !rules.contains("nat hook"));
        }
        let open = ipv6_ruleset(Ipv6Mode::Open, UnsolicitedAnswer::Rst);
        assert!(open.contains("hook forward priority filter; policy accept;"));
        assert!(
            !open.contains("reject") && !open.contains("policy drop"),
            "{open}"
        );
    }

    #[test]
    fn nptv6_translates_only_the_lan_prefix_both_ways() {
        let internal: std::net::Ipv6Addr = "fd00:30b8:1:1::".parse().unwrap();
        let external: std::net::Ipv6Addr = "2001:db8:1:1::".parse().unwrap();
        let rules = nptv6_ruleset(internal, external);
        assert!(rules.starts_with("table ip6 punchscope_npt {"), "{rules}");
        assert!(
            rules.contains("oifname \"wan0\" ip6 saddr fd00:30b8:1:1::/64 snat ip6 prefix to 2001:db8:1:1::/64"),
            "{rules}"
        );
        assert!(
            rules.contains("iifname \"wan0\" ip6 daddr 2001:db8:1:1::/64 dnat ip6 prefix to fd00:30b8:1:1::/64"),
            "{rules}"
        );
        let docs = include_str!("../../../docs/lab.md");
        assert!(
            docs.contains(&rules),
            "update docs/lab.md (\"IPv6 (dual stack)\") to:\n{rules}"
        );
    }

    #[test]
    fn docs_lab_md_shows_the_ipv6_firewall_rule_set_as_generated() {
        let docs = include_str!("../../../docs/lab.md");
        let rules = ipv6_ruleset(Ipv6Mode::Firewall, UnsolicitedAnswer::Drop);
        assert!(
            docs.contains(&rules),
            "update docs/lab.md (\"IPv6 (dual stack)\") to:\n{rules}"
        );
    }

    #[test]
    fn sysctls_carry_tcp_loose_and_the_timeouts() {
        let mut c = config(Mapping::Eim, Filtering::Apdf, Allocation::Preserve);
        c.tcp_loose = true;
        c.tcp_window_check = true;
        let settings = KernelNat::sysctls(&c);
        let get = |key: &str| {
            settings
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("netfilter/nf_conntrack_tcp_loose"), Some("1"));
        assert_eq!(get("netfilter/nf_conntrack_tcp_be_liberal"), Some("0"));
        assert_eq!(
            get("netfilter/nf_conntrack_tcp_timeout_established"),
            Some("7440")
        );
        assert_eq!(
            get("netfilter/nf_conntrack_tcp_timeout_syn_sent"),
            Some("240")
        );
        assert_eq!(get("ipv4/ip_forward"), Some("1"));
    }
}
