//! Table tests of the verdict rules: each row is what the probes saw and what must be decided.

use super::*;

const P1: &str = "198.51.100.1:3478";
const P2: &str = "198.51.100.1:3479";
const IP2: &str = "198.51.100.2:3478";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn probe(local: &str, server: &str, observed: Option<&str>) -> Probe {
    Probe {
        local: sa(local),
        server: sa(server),
        observed: observed.map(sa),
        rtt_ms: observed.map(|_| 20.0),
        error: observed
            .is_none()
            .then(|| "connection timed out".to_string()),
    }
}

fn obs(mapping: Vec<Probe>) -> Observations {
    Observations {
        mapping,
        allocation: vec![],
        filtering: None,
        hairpin: None,
    }
}

fn known<T>(value: T) -> Finding<T> {
    Finding::Known { value }
}

#[test]
fn mapping_with_two_ips_and_two_ports() {
    use Mapping::*;
    let local = "192.168.1.10:40000";
    // (observed from P1, from P2, from IP2) -> mapping
    let table = [
        (
            "203.0.113.7:40000",
            "203.0.113.7:40000",
            "203.0.113.7:40000",
            Eim,
        ),
        (
            "203.0.113.7:50000",
            "203.0.113.7:50000",
            "203.0.113.7:50000",
            Eim,
        ),
        (
            "203.0.113.7:50000",
            "203.0.113.7:50000",
            "203.0.113.7:50001",
            Adm,
        ),
        (
            "203.0.113.7:50000",
            "203.0.113.7:50001",
            "203.0.113.7:50002",
            Apdm,
        ),
        // Different public IP per server IP (non-paired pooling) is address-dependent too.
        (
            "203.0.113.7:50000",
            "203.0.113.7:50000",
            "203.0.113.8:50000",
            Adm,
        ),
    ];
    for (a, b, c, want) in table {
        let v = verdict(&obs(vec![
            probe(local, P1, Some(a)),
            probe(local, P2, Some(b)),
            probe(local, IP2, Some(c)),
        ]));
        assert_eq!(v.mapping, known(want), "{a} {b} {c}");
        assert!(!v.no_nat);
    }
}

#[test]
fn mapping_order_of_probes_does_not_matter_beyond_the_primary() {
    let local = "192.168.1.10:40000";
    let v = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, IP2, Some("203.0.113.7:50001")),
        probe(local, P2, Some("203.0.113.7:50000")),
    ]));
    assert_eq!(v.mapping, known(Mapping::Adm));
}

#[test]
fn single_server_ip_cannot_separate_eim_from_adm() {
    let local = "192.168.1.10:40000";
    let same = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, P2, Some("203.0.113.7:50000")),
    ]));
    assert_eq!(
        same.mapping,
        Finding::Ambiguous {
            candidates: vec![Mapping::Eim, Mapping::Adm],
            missing: "a second server IP address".into()
        }
    );
    assert!(same.missing.iter().any(|m| m.contains("second server IP")));
    assert!(
        same.summary().contains("cannot tell apart"),
        "{}",
        same.summary()
    );

    let differ = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, P2, Some("203.0.113.7:50001")),
    ]));
    assert_eq!(differ.mapping, known(Mapping::Apdm));
}

#[test]
fn single_server_port_cannot_separate_adm_from_apdm() {
    let local = "192.168.1.10:40000";
    let differ = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, IP2, Some("203.0.113.7:50001")),
    ]));
    assert_eq!(
        differ.mapping,
        Finding::Ambiguous {
            candidates: vec![Mapping::Adm, Mapping::Apdm],
            missing: "a second port on the primary server IP".into()
        }
    );
    let same = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, IP2, Some("203.0.113.7:50000")),
    ]));
    assert_eq!(same.mapping, known(Mapping::Eim));
}

#[test]
fn unreachable_endpoints_narrow_what_can_be_said() {
    let local = "192.168.1.10:40000";
    let only_primary = verdict(&obs(vec![
        probe(local, P1, Some("203.0.113.7:50000")),
        probe(local, P2, None),
        probe(local, IP2, None),
    ]));
    assert!(matches!(
        only_primary.mapping,
        Finding::Ambiguous { ref candidates, .. } if candidates.len() == 3
    ));
    let no_primary = verdict(&obs(vec![
        probe(local, P1, None),
        probe(local, P2, Some("203.0.113.7:50000")),
    ]));
    assert!(matches!(no_primary.mapping, Finding::Unknown { .. }));
    assert_eq!(no_primary.port_preserved, Some(false));
}

#[test]
fn no_nat_when_every_observed_endpoint_is_the_local_one() {
    let v = verdict(&obs(vec![
        probe("192.0.2.5:40000", P1, Some("192.0.2.5:40000")),
        probe("192.0.2.5:40000", P2, Some("192.0.2.5:40000")),
        probe("192.0.2.5:40000", IP2, Some("192.0.2.5:40000")),
    ]));
    assert!(v.no_nat);
    assert_eq!(v.mapping, known(Mapping::Eim));
    assert_eq!(v.port_preserved, Some(true));
    assert!(v.summary().starts_with("No NAT"), "{}", v.summary());

    let translated_ip = verdict(&obs(vec![probe(
        "192.168.1.10:40000",
        P1,
        Some("203.0.113.7:40000"),
    )]));
    assert!(!translated_ip.no_nat);
    assert_eq!(translated_ip.port_preserved, Some(true));
}

#[test]
fn a_preserving_adm_or_apdm_nat_counts_as_port_preserving() {
    // The first mapping of the local port keeps it; the mapping towards the
    // other IP cannot, as that port is taken.
    let local = "192.168.1.10:42331";
    let mut o = obs(vec![
        probe(local, P1, Some("203.0.113.7:42331")),
        probe(local, P2, Some("203.0.113.7:42331")),
        probe(local, IP2, Some("203.0.113.7:42332")),
    ]);
    o.allocation = vec![
        probe("192.168.1.10:42231", P1, Some("203.0.113.7:42231")),
        probe("192.168.1.10:34085", P1, Some("203.0.113.7:34085")),
    ];
    let v = verdict(&o);
    assert_eq!(v.mapping, known(Mapping::Adm));
    assert_eq!(v.port_preserved, Some(true));
    o.allocation
        .push(probe("192.168.1.10:34967", P1, Some("203.0.113.7:34967")));
    assert_eq!(verdict(&o).allocation, known(AllocationPattern::Preserving));
    // A port taken by an older mapping makes a preserving NAT take the next free one.
    o.allocation[1] = probe("192.168.1.10:34085", P1, Some("203.0.113.7:34087"));
    assert_eq!(verdict(&o).allocation, known(AllocationPattern::Preserving));
    assert_eq!(verdict(&o).port_preserved, Some(true));
    // A port far from the local one is not preservation.
    o.allocation[1] = probe("192.168.1.10:34085", P1, Some("203.0.113.7:20001"));
    assert_ne!(verdict(&o).allocation, known(AllocationPattern::Preserving));
    assert_eq!(verdict(&o).port_preserved, Some(false));
}

fn dial(kind: DialKind, outcome: DialOutcome, received: bool) -> DialObservation {
    DialObservation {
        kind,
        from: None,
        server_outcome: Some(outcome),
        received,
    }
}

fn filtering(dials: Vec<DialObservation>) -> Finding<Filtering> {
    let mut o = obs(vec![]);
    o.filtering = Some(FilteringObservation {
        probe: probe("192.168.1.10:41000", P1, Some("203.0.113.7:41000")),
        dials,
        error: None,
    });
    verdict(&o).filtering
}

#[test]
fn filtering_from_dial_backs() {
    use DialKind::*;
    use DialOutcome::*;
    use Filtering::*;
    let table = [
        (
            dial(OtherPort, Connected, true),
            dial(OtherIp, Connected, true),
            known(Eif),
        ),
        (
            dial(OtherPort, Connected, true),
            dial(OtherIp, Timeout, false),
            known(Adf),
        ),
        (
            dial(OtherPort, Refused, false),
            dial(OtherIp, Refused, false),
            known(Apdf),
        ),
        (
            dial(OtherPort, Timeout, false),
            dial(OtherIp, Unreachable, false),
            known(Apdf),
        ),
        // Connected at the server but never reached our listener: something else answered.
        (
            dial(OtherPort, Connected, false),
            dial(OtherIp, Connected, false),
            known(Apdf),
        ),
        // RFC 5780: admitted from another IP means endpoint-independent, whatever the port test says.
        (
            dial(OtherPort, Timeout, false),
            dial(OtherIp, Connected, true),
            known(Eif),
        ),
    ];
    for (port, ip, want) in table {
        assert_eq!(
            filtering(vec![port.clone(), ip.clone()]),
            want,
            "{port:?} {ip:?}"
        );
    }
}

#[test]
fn filtering_with_a_single_server_ip_or_port_is_ambiguous_where_it_must_be() {
    use DialKind::*;
    use DialOutcome::*;
    use Filtering::*;
    let single_ip_admitted = filtering(vec![
        dial(OtherPort, Connected, true),
        dial(OtherIp, Unavailable, false),
    ]);
    assert!(matches!(
        single_ip_admitted,
        Finding::Ambiguous { ref candidates, .. } if candidates == &[Eif, Adf]
    ));
    let single_ip_blocked = filtering(vec![dial(OtherPort, Timeout, false)]);
    assert_eq!(single_ip_blocked, known(Apdf));
    let single_port_blocked = filtering(vec![
        dial(OtherPort, Unavailable, false),
        dial(OtherIp, Timeout, false),
    ]);
    assert!(matches!(
        single_port_blocked,
        Finding::Ambiguous { ref candidates, .. } if candidates == &[Adf, Apdf]
    ));
    let server_failed = filtering(vec![
        dial(OtherPort, Error, false),
        dial(OtherIp, Error, false),
    ]);
    assert!(matches!(server_failed, Finding::Unknown { .. }));
    assert!(matches!(
        verdict(&obs(vec![])).filtering,
        Finding::Unknown { .. }
    ));
    let mut refused = obs(vec![]);
    refused.filtering = Some(FilteringObservation {
        probe: probe("192.168.1.10:41000", P1, Some("203.0.113.7:41000")),
        dials: vec![],
        error: Some("rate limited: retry in 6000 ms".into()),
    });
    let v = verdict(&refused);
    assert!(
        matches!(v.filtering, Finding::Unknown { ref reason } if reason.contains("rate limited"))
    );
    assert!(v
        .missing
        .iter()
        .any(|m| m.contains("refused the dial-back")));
}

/// (local port, observed port if the probe answered), in probe order.
type PortPairs = [(u16, Option<u16>)];

fn allocation(pairs: &PortPairs) -> Finding<AllocationPattern> {
    let mut o = obs(vec![]);
    o.allocation = pairs
        .iter()
        .map(|(local, observed)| Probe {
            local: SocketAddr::from(([192, 168, 1, 10], *local)),
            server: sa(P1),
            observed: observed.map(|p| SocketAddr::from(([203, 0, 113, 7], p))),
            rtt_ms: None,
            error: None,
        })
        .collect();
    verdict(&o).allocation
}

#[test]
fn allocation_patterns() {
    use AllocationPattern::*;
    let table: [(&PortPairs, Finding<AllocationPattern>); 6] = [
        (
            &[
                (40001, Some(40001)),
                (40517, Some(40517)),
                (39000, Some(39000)),
                (45000, Some(45000)),
            ],
            known(Preserving),
        ),
        (
            &[
                (40001, Some(1024)),
                (40517, Some(1025)),
                (39000, Some(1026)),
                (45000, Some(1027)),
            ],
            known(Sequential {
                step: 1,
                exact: true,
            }),
        ),
        (
            &[
                (40001, Some(2000)),
                (40517, Some(1998)),
                (39000, Some(1996)),
                (45000, Some(1994)),
            ],
            known(Sequential {
                step: -2,
                exact: true,
            }),
        ),
        (
            &[
                (40001, Some(1024)),
                (40517, Some(1025)),
                (39000, Some(1029)),
                (45000, Some(1030)),
            ],
            known(Sequential {
                step: 1,
                exact: false,
            }),
        ),
        (
            &[
                (40001, Some(61234)),
                (40517, Some(2210)),
                (39000, Some(33007)),
                (45000, Some(50123)),
            ],
            known(Random),
        ),
        (
            &[
                (40001, Some(1024)),
                (40517, None),
                (39000, None),
                (45000, Some(1027)),
            ],
            Finding::Unknown {
                reason: "fewer than 3 fresh-port probes answered".into(),
            },
        ),
    ];
    for (pairs, want) in table {
        assert_eq!(allocation(pairs), want, "{pairs:?}");
    }
    assert_eq!(
        Sequential {
            step: 3,
            exact: true
        }
        .allocation(),
        Allocation::Sequential
    );
}

#[test]
fn summary_reads_like_advice() {
    let mut o = obs(vec![
        probe("192.168.1.10:40000", P1, Some("203.0.113.7:40000")),
        probe("192.168.1.10:40000", P2, Some("203.0.113.7:40000")),
        probe("192.168.1.10:40000", IP2, Some("203.0.113.7:40000")),
    ]);
    o.filtering = Some(FilteringObservation {
        probe: probe("192.168.1.10:41000", P1, Some("203.0.113.7:41000")),
        dials: vec![
            dial(DialKind::OtherPort, DialOutcome::Timeout, false),
            dial(DialKind::OtherIp, DialOutcome::Timeout, false),
        ],
        error: None,
    });
    let v = verdict(&o);
    assert_eq!(
        v.summary(),
        "Endpoint-independent mapping, port-preserving, address-and-port-dependent filtering: \
         TCP hole punching should work with peers whose NAT also keeps mappings"
    );
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["mapping"]["status"], "known");
    assert_eq!(json["mapping"]["value"], "eim");
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, v);
}

#[test]
fn one_outlier_does_not_hide_a_sequential_allocator() {
    let mut o = obs(vec![]);
    o.allocation = [
        (41000, 20000),
        (41001, 20002),
        (41002, 31337),
        (41003, 20004),
        (41004, 20006),
    ]
    .iter()
    .map(|(l, e)| {
        probe(
            &format!("192.168.1.10:{l}"),
            P1,
            Some(&format!("203.0.113.7:{e}")),
        )
    })
    .collect();
    assert_eq!(
        verdict(&o).allocation,
        known(AllocationPattern::Sequential {
            step: 2,
            exact: false
        })
    );
    // Two outliers are too many: random.
    o.allocation[1] = probe("192.168.1.10:41001", P1, Some("203.0.113.7:5000"));
    assert_eq!(verdict(&o).allocation, known(AllocationPattern::Random));
}

const V6_P1: &str = "[2001:db8:5100::10]:3478";
const V6_P2: &str = "[2001:db8:5100::10]:3479";
const V6_IP2: &str = "[2001:db8:5100::11]:3478";
const V6_HOST: &str = "2001:db8:1:1::2";

/// An IPv6 run from `host` whose every probe the servers saw as `seen`
/// (the same address and port, unless translated), with these dial-backs.
fn v6_run(seen_host: &str, other_port: bool, other_ip: bool) -> Verdict {
    let at = |host: &str, port: u16| format!("[{host}]:{port}");
    let mut o = obs(vec![
        probe(&at(V6_HOST, 40000), V6_P1, Some(&at(seen_host, 40000))),
        probe(&at(V6_HOST, 40000), V6_P2, Some(&at(seen_host, 40000))),
        probe(&at(V6_HOST, 40000), V6_IP2, Some(&at(seen_host, 40000))),
    ]);
    let outcome = |received| {
        if received {
            DialOutcome::Connected
        } else {
            DialOutcome::Timeout
        }
    };
    o.filtering = Some(FilteringObservation {
        probe: probe(&at(V6_HOST, 41000), V6_P1, Some(&at(seen_host, 41000))),
        dials: vec![
            dial(DialKind::OtherPort, outcome(other_port), other_port),
            dial(DialKind::OtherIp, outcome(other_ip), other_ip),
        ],
        error: None,
    });
    verdict(&o)
}

#[test]
fn ipv6_behind_a_stateful_firewall_is_untranslated_and_needs_punching() {
    let v = v6_run(V6_HOST, false, false);
    assert_eq!(
        v.ipv6,
        Some(Ipv6Verdict {
            translated: Some(false),
            translation: Some(Ipv6Translation::Untranslated),
            unsolicited_admitted: Some(false),
        })
    );
    assert!(v.no_nat);
    assert_eq!(v.filtering, known(Filtering::Apdf));
    assert_eq!(
        v.summary(),
        "IPv6: no NAT, firewall admits only connections you opened: punching needed"
    );
    assert!(
        v.missing.iter().any(|m| m.contains("IPv4 only")),
        "the path probe is listed as not done: {:?}",
        v.missing
    );
}

#[test]
fn ipv6_without_a_firewall_is_reachable() {
    let v = v6_run(V6_HOST, true, true);
    assert_eq!(
        v.ipv6,
        Some(Ipv6Verdict {
            translated: Some(false),
            translation: Some(Ipv6Translation::Untranslated),
            unsolicited_admitted: Some(true),
        })
    );
    assert_eq!(v.filtering, known(Filtering::Eif));
    assert_eq!(
        v.summary(),
        "IPv6: no NAT, no firewall in the way: reachable, peers can connect to you directly"
    );
}

#[test]
fn ipv6_firewall_admitting_contacted_hosts_is_address_dependent() {
    let v = v6_run(V6_HOST, true, false);
    assert_eq!(v.filtering, known(Filtering::Adf));
    assert_eq!(v.ipv6.unwrap().unsolicited_admitted, Some(false));
    assert_eq!(
        v.summary(),
        "IPv6: no NAT, firewall admits only hosts you contacted: punching needed"
    );
}

/// What the lab's NPTv6 router makes of fd00:db8:1:1::2 (fd00:db8:1::/48
/// to 2001:db8:1::/48, RFC 6296: the adjustment in the subnet word).
const V6_NPT_INSIDE: &str = "fd00:db8:1:1::2";
const V6_NPT_SEEN: &str = "2001:db8:1:dd00::2";

/// As [`v6_run`], from `local` (every probe from the same address), with
/// the seen port shifted by `port_shift`.
fn v6_run_from(local: &str, seen_host: &str, port_shift: u16) -> Verdict {
    let at = |host: &str, port: u16| format!("[{host}]:{port}");
    let o = obs(vec![
        probe(
            &at(local, 40000),
            V6_P1,
            Some(&at(seen_host, 40000 + port_shift)),
        ),
        probe(
            &at(local, 40000),
            V6_P2,
            Some(&at(seen_host, 40000 + port_shift)),
        ),
        probe(
            &at(local, 40001),
            V6_IP2,
            Some(&at(seen_host, 40001 + port_shift)),
        ),
    ]);
    verdict(&o)
}

#[test]
fn the_one_s_complement_sum_of_the_lab_s_nptv6_pair_is_equal() {
    // The fixture must be a real RFC 6296 translation: check it independently.
    let sum = |a: &str| {
        let a: std::net::Ipv6Addr = a.parse().unwrap();
        let total: u32 = a.segments().iter().map(|w| u32::from(*w)).sum();
        (total & 0xffff) + (total >> 16)
    };
    assert_eq!(sum(V6_NPT_INSIDE), sum(V6_NPT_SEEN));
}

#[test]
fn nptv6_is_told_from_nat66_by_port_consistency_and_checksum_neutrality() {
    use Ipv6Translation::*;
    let kind = |v: &Verdict| v.ipv6.unwrap().translation;
    let npt = v6_run_from(V6_NPT_INSIDE, V6_NPT_SEEN, 0);
    assert_eq!(kind(&npt), Some(Nptv6));
    assert_eq!(
        npt.ipv6.unwrap().translated,
        Some(true),
        "older readers still see it"
    );
    assert!(!npt.no_nat);
    assert!(
        npt.summary().starts_with("IPv6: prefix translation (NPTv6"),
        "{}",
        npt.summary()
    );
    // The same address, ports rewritten: stateful, NAT66.
    assert_eq!(
        kind(&v6_run_from(V6_NPT_INSIDE, V6_NPT_SEEN, 1)),
        Some(Nat66)
    );
    // A router address for every host: the sum differs, NAT66 even with ports kept.
    let nat66 = v6_run_from(V6_NPT_INSIDE, "2001:db8:1::1", 0);
    assert_eq!(kind(&nat66), Some(Nat66));
    assert!(
        nat66
            .summary()
            .starts_with("IPv6: NAT66 (addresses translated), "),
        "{}",
        nat66.summary()
    );
    // Checksum-neutral but with two interface identifier words changed: not RFC 6296.
    assert_eq!(
        kind(&v6_run_from("2001:db8:1:1::1:2", "2001:db8:1:1:0:0:2:1", 0)),
        Some(Nat66)
    );
    // One IID word adjusted (RFC 6296 for a /64): NPTv6. 2001:db8:1:1::2 to
    // 2001:db8:2:1::2 adds 1 to word 2; taking 1 from the last word compensates.
    assert_eq!(
        kind(&v6_run_from("2001:db8:1:1::2", "2001:db8:2:1::1", 0)),
        Some(Nptv6)
    );
    // One local address seen as two different ones: not stateless.
    let at = |host: &str, port: u16| format!("[{host}]:{port}");
    let o = obs(vec![
        probe(
            &at(V6_NPT_INSIDE, 40000),
            V6_P1,
            Some(&at(V6_NPT_SEEN, 40000)),
        ),
        probe(
            &at(V6_NPT_INSIDE, 40000),
            V6_IP2,
            Some(&at("2001:db8:1:dd01::1", 40000)),
        ),
    ]);
    assert_eq!(kind(&verdict(&o)), Some(Nat66));
    // A mixture of translated and untranslated answers is no prefix translation.
    let o = obs(vec![
        probe(
            &at(V6_NPT_INSIDE, 40000),
            V6_P1,
            Some(&at(V6_NPT_SEEN, 40000)),
        ),
        probe(
            &at(V6_NPT_INSIDE, 40001),
            V6_IP2,
            Some(&at(V6_NPT_INSIDE, 40001)),
        ),
    ]);
    assert_eq!(kind(&verdict(&o)), Some(Nat66));
}

#[test]
fn a_result_without_the_translation_kind_reads_and_says_it_cannot_tell() {
    let v = v6_run("2001:db8:ffff::7", false, false);
    assert_eq!(v.ipv6.unwrap().translated, Some(true));
    assert_eq!(v.ipv6.unwrap().translation, Some(Ipv6Translation::Nat66));
    let mut json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["ipv6"]["translation"], "nat66");
    json["ipv6"].as_object_mut().unwrap().remove("translation");
    let older: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(older.ipv6.unwrap().translation, None);
    let summary = older.summary();
    assert!(
        summary.starts_with("IPv6: addresses are translated (NPTv6 or NAT66, not told apart)"),
        "{summary}"
    );
}

#[test]
fn ipv6_with_no_answer_or_no_dial_back_says_what_is_unknown() {
    let mut o = obs(vec![probe("[2001:db8:1:1::2]:40000", V6_P1, None)]);
    o.filtering = Some(FilteringObservation {
        probe: probe("[2001:db8:1:1::2]:41000", V6_P1, None),
        dials: vec![],
        error: Some("rate limited".into()),
    });
    let v = verdict(&o);
    assert_eq!(
        v.ipv6,
        Some(Ipv6Verdict {
            translated: None,
            translation: None,
            unsolicited_admitted: None,
        })
    );
    assert_eq!(
        v.summary(),
        "IPv6: no probe answered, translation unknown; \
         whether a firewall admits incoming connections was not measured"
    );
}

#[test]
fn ipv4_verdicts_carry_no_ipv6_reading_and_older_results_still_read() {
    let v = verdict(&obs(vec![probe(
        "192.168.1.10:40000",
        P1,
        Some("203.0.113.7:40000"),
    )]));
    assert_eq!(v.ipv6, None);
    assert!(!v.missing.iter().any(|m| m.contains("IPv4 only")));
    let mut json = serde_json::to_value(&v).unwrap();
    assert!(json.get("ipv6").is_none(), "{json}");
    // A result from before the field: no key at all.
    json.as_object_mut().unwrap().remove("ipv6");
    assert_eq!(serde_json::from_value::<Verdict>(json).unwrap(), v);
    // An IPv6 verdict round-trips with its reading.
    let v6 = v6_run(V6_HOST, false, false);
    let json = serde_json::to_value(&v6).unwrap();
    assert_eq!(json["ipv6"]["translated"], false);
    assert_eq!(json["ipv6"]["unsolicited_admitted"], false);
    assert_eq!(json["ipv6"]["translation"], "none");
    assert_eq!(serde_json::from_value::<Verdict>(json).unwrap(), v6);
}
