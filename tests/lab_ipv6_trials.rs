//! Coordinated trials over IPv6: dual-stack volunteers behind kernel
//! routers' IPv6 firewalls run the plan's `families`, every strategy and
//! both Bitcoin handshakes over IPv6, with the real probe and coordinator.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::time::Duration;

use punchscope::analysis::handshake::Transport;
use punchscope::analysis::result::RunResult;
use punchscope::analysis::trial::{Family, Strategy, TrialOutcome, TrialRecord};
use punchscope::lab::Lab;
use support::lab::*;

/// Echo endpoints of both families: each probe classifies both and so
/// offers both families to the coordinator.
const DUAL_STACK_ECHO: [&str; 4] = [
    "198.51.100.10:3478",
    "198.51.100.11:3478",
    "[2001:db8:5100::10]:3478",
    "[2001:db8:5100::11]:3478",
];

/// Two kernel routers with IPv6 firewalls (RFC 6092 style: unsolicited
/// inbound dropped), 5 ms each way, alice behind one and bob behind the
/// other; both hosts dual-stack.
fn firewalled_pair(tag: &str) -> Lab {
    start_lab(
        tag,
        &two_nats(
            "backend = \"kernel\"\nipv6 = \"firewall\"\ndelay_ms = 5",
            "backend = \"kernel\"\nipv6 = \"firewall\"\ndelay_ms = 5",
        ),
    )
}

/// alice's and bob's results of one pairing under `plan_body`, each probe
/// given the coordinator at both its addresses.
fn dual_stack_pairing(lab: &Lab, tag: &str, plan_body: &str) -> Vec<RunResult> {
    let _echo = start_echo_dual_stack(lab);
    let plan = plan(tag, plan_body);
    let _coordinator = start_coordinator_dual_stack(lab, &plan);
    probe_alice_and_bob_with(Duration::from_secs(150), |host, spool| {
        let mut command = probe_command_with_echo(lab, host, spool, &DUAL_STACK_ECHO, 20);
        command.args(["--server", COORDINATOR_V6]);
        command
    })
}

fn trials(result: &RunResult) -> &[TrialRecord] {
    &result.pairings[0].trials
}

/// Over IPv6 every punching strategy connects through two stateful
/// firewalls that drop unsolicited connections (both SYNs open pinholes),
/// and both Bitcoin handshakes run over the punched IPv6 socket. `mapped`,
/// which needs a side reachable unsolicited, cannot: with no mapping on
/// either side (trial mappings are IPv4 ones) it is `unmapped`, nothing sent.
#[test]
fn every_strategy_and_both_handshakes_work_over_ipv6_between_two_firewalls() {
    let lab = firewalled_pair("v6t");
    // Hop limit 2: the prime passes the own router and dies in the internet.
    let results = dual_stack_pairing(
        &lab,
        "v6t",
        "trials = 8\nfamilies = [\"ipv6\"]\nstrategies = [\"simultaneous\", \"connect_listen\", \"low_ttl\", \"mapped\"]\ntransports = [\"v1\", \"v2\"]\nnetwork = \"regtest\"\nlow_ttl = 2\n",
    );
    for result in &results {
        assert!(
            result.classification_v6.is_some(),
            "both sides classified IPv6"
        );
        let trials = trials(result);
        assert_eq!(trials.len(), 8);
        for t in trials {
            assert_eq!(t.family, Family::Ipv6, "trial {}", t.trial);
            if t.strategy == Strategy::Mapped {
                assert_eq!(t.outcome, TrialOutcome::Unmapped, "trial {}", t.trial);
                assert!(t.attempts.is_empty(), "nothing sent: {t:#?}");
                continue;
            }
            assert_eq!(
                t.outcome,
                TrialOutcome::Connected,
                "trial {} ({:?}): {t:#?}",
                t.trial,
                t.strategy
            );
            assert!(t.nonce_verified, "trial {}", t.trial);
            let handshake = t.handshake.as_ref().expect("a handshake over IPv6");
            assert!(handshake.success, "trial {}: {handshake:#?}", t.trial);
            let transport = if t.trial % 2 == 0 {
                Transport::V1
            } else {
                Transport::V2
            };
            assert_eq!(handshake.transport, Some(transport));
            // No translation over IPv6: the coordinator saw our own port.
            assert_eq!(t.public_port, Some(t.local_port), "trial {}", t.trial);
        }
        let strategies: Vec<Strategy> = trials.iter().map(|t| t.strategy).collect();
        assert_eq!(
            strategies,
            [
                Strategy::Simultaneous,
                Strategy::ConnectListen,
                Strategy::LowTtl,
                Strategy::Mapped
            ]
            .repeat(2)
        );
    }
}

/// A plan over both families: the trials split evenly between them in
/// shuffled rounds, both sides agree on each trial's family, and each
/// trial connects in its own family (IPv4 through the masquerading NAT,
/// the observed port translated or not; IPv6 untranslated).
#[test]
fn a_plan_over_both_families_splits_a_dual_stack_pairing_between_them() {
    let lab = firewalled_pair("v6f");
    let results = dual_stack_pairing(
        &lab,
        "v6f",
        "trials = 8\nfamilies = [\"ipv4\", \"ipv6\"]\nstrategies = [\"simultaneous\"]\ntransports = [\"v1\"]\nnetwork = \"regtest\"\n",
    );
    let families =
        |result: &RunResult| -> Vec<Family> { trials(result).iter().map(|t| t.family).collect() };
    assert_eq!(
        families(&results[0]),
        families(&results[1]),
        "both sides ran each trial in the same family"
    );
    for round in families(&results[0]).chunks(2) {
        assert!(
            round.contains(&Family::Ipv4) && round.contains(&Family::Ipv6),
            "each round of two holds both families: {:?}",
            families(&results[0])
        );
    }
    for result in &results {
        for t in trials(result) {
            assert_eq!(
                t.outcome,
                TrialOutcome::Connected,
                "trial {} over {}: {t:#?}",
                t.trial,
                t.family
            );
        }
    }
}

/// The v4-vs-v6 comparison of a dual-stack pairing matches the routers:
/// two symmetric IPv4 NATs (random ports, address-and-port-dependent
/// filtering) defeat every IPv4 trial, while their IPv6 firewalls let every
/// simultaneous open through. The report, built from both results, says
/// so within the one pairing that ran both families.
#[test]
fn the_reports_ipv4_beside_ipv6_comparison_matches_the_routers() {
    let symmetric = "mapping = \"apdm\"\nallocation = \"random\"\nfiltering = \"apdf\"\ndelay_ms = 10\nipv6 = \"firewall\"";
    let lab = start_lab("v6cmp", &two_nats(symmetric, symmetric));
    let results = dual_stack_pairing(
        &lab,
        "v6cmp",
        "trials = 8\nfamilies = [\"ipv4\", \"ipv6\"]\nstrategies = [\"simultaneous\", \"connect_listen\"]\ntransports = [\"v1\"]\nnetwork = \"regtest\"\nattempt_timeout_ms = 800\nmax_attempts = 2\nretry_gap_ms = 50\nretry_jitter_ms = 50\n",
    );
    for result in &results {
        for t in trials(result) {
            let expected = match t.family {
                Family::Ipv4 => TrialOutcome::Connected != t.outcome,
                Family::Ipv6 => TrialOutcome::Connected == t.outcome,
            };
            assert!(
                expected,
                "trial {} over {}: {:?}",
                t.trial, t.family, t.outcome
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("results.jsonl");
    let lines: Vec<String> = results
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    punchscope::report::build(&punchscope::report::ReportOptions {
        inputs: vec![input.display().to_string()],
        out: dir.path().join("report"),
        token_file: None,
        timeout: Duration::from_secs(10),
        ca_file: None,
    })
    .unwrap();
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report/summary.json")).unwrap(),
    )
    .unwrap();
    let comparison = &summary["family_comparison"];
    assert_eq!(comparison["pairings_both"], 1, "{comparison}");
    let rows = comparison["strategies"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "both strategies ran in both families: {comparison}"
    );
    for row in rows {
        let (v4, v6) = (&row["ipv4"], &row["ipv6"]);
        assert_eq!(v4["successes"], 0, "IPv4 through two symmetric NATs: {row}");
        assert_eq!(
            v6["successes"], v6["n"],
            "IPv6 through two firewalls: {row}"
        );
        assert_eq!(row["difference"]["difference"], 1.0, "{row}");
    }
    let page = std::fs::read_to_string(dir.path().join("report/index.html")).unwrap();
    assert!(
        page.contains("id=families"),
        "the page's comparison section"
    );
}

/// An IPv6-only volunteer (`ipv4 = false`: no IPv4 address or route),
/// given the same flags as everyone, finds no IPv4 echo server, measures
/// over IPv6 alone and pairs with a dual-stack volunteer over IPv6 only,
/// although the plan has both families.
#[test]
fn an_ipv6_only_volunteer_measures_and_punches_over_ipv6_alone() {
    let lab = start_lab(
        "v6only",
        "[[nat]]\nname = \"a\"\nfiltering = \"adf\"\ndelay_ms = 5\nipv6 = \"firewall\"\n\
         [[nat]]\nname = \"b\"\nbackend = \"kernel\"\ndelay_ms = 5\nipv6 = \"firewall\"\n\
         [[host]]\nname = \"alice\"\nnat = \"a\"\nipv4 = false\n\
         [[host]]\nname = \"bob\"\nnat = \"b\"\n",
    );
    // No IPv4 in alice's namespace: a connect to an IPv4 server finds no route.
    let v4 = lab
        .run_in("alice", || {
            std::net::TcpStream::connect_timeout(
                &"198.51.100.10:3478".parse().unwrap(),
                Duration::from_secs(2),
            )
            .map(|_| ())
            .map_err(|e| e.raw_os_error())
        })
        .unwrap();
    assert_eq!(v4, Err(Some(libc::ENETUNREACH)), "alice has no IPv4 route");
    let results = dual_stack_pairing(
        &lab,
        "v6only",
        "trials = 4\nfamilies = [\"ipv4\", \"ipv6\"]\nstrategies = [\"simultaneous\", \"connect_listen\"]\ntransports = [\"v1\", \"v2\"]\nnetwork = \"regtest\"\n",
    );
    let (alice, bob) = (&results[0], &results[1]);
    let reading = alice
        .classification
        .verdict
        .ipv6
        .expect("alice's one classification is an IPv6 one");
    assert_eq!(reading.translated, Some(false));
    assert_eq!(alice.classification_v6, None);
    assert_eq!(alice.classification_v6_missing, None);
    assert!(
        alice
            .classification
            .observations
            .mapping
            .iter()
            .all(|p| p.server.net == "2001:db8::/32"),
        "alice measured over IPv6 only"
    );
    assert!(bob.classification_v6.is_some(), "bob is dual-stack");
    for result in &results {
        for t in trials(result) {
            assert_eq!(t.family, Family::Ipv6, "trial {}", t.trial);
            assert_eq!(
                t.outcome,
                TrialOutcome::Connected,
                "trial {}: {t:#?}",
                t.trial
            );
        }
    }
}
