//! The main job end to end: `punchscope lab run` on a small campaign, with its
//! report checked against what the lab recorded and against the emulator's truth.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use punchscope::analysis::classify::{Finding, Ipv6Translation, Ipv6Verdict};
use punchscope::analysis::portmap::{GatewayAnswer, MappingProtocol, PortRole};
use punchscope::analysis::result::{CollectedResult, RunMode};
use punchscope::lab::Scenario;
use support::lab::*;

const SCENARIO: &str = r#"
[[nat]]
name = "eim_apdf"
backend = "kernel"
delay_ms = 10
ipv6 = "firewall"
[[nat]]
name = "carrier"
delay_ms = 10
[[nat]]
name = "eim_rst"
upstream = "carrier"
filtering = "apdf"
unsolicited = "rst"
delay_ms = 5
[[nat]]
name = "eim_eif"
filtering = "eif"
delay_ms = 5
portmap = ["natpmp", "pcp"]
[[nat]]
name = "apdm"
mapping = "apdm"
filtering = "apdf"
delay_ms = 10
portmap = ["natpmp", "pcp"]
portmap_refuse = true
[[nat]]
name = "eim_adf"
filtering = "adf"
delay_ms = 5
[[host]]
name = "v1"
nat = "eim_apdf"
[[host]]
name = "v2"
nat = "eim_rst"
[[host]]
name = "v3"
nat = "eim_eif"
[[host]]
name = "v4"
nat = "apdm"
[[host]]
name = "v5"
nat = "eim_adf"
[[host]]
name = "ref1"
nat = "none"
role = "reference"
"#;

const PLAN: &str = "version = 1\nname = \"test-campaign\"\ntrials = 4\nstrategies = [\"simultaneous\", \"connect_listen\"]\n\
network = \"regtest\"\nattempt_timeout_ms = 800\nmax_attempts = 2\nretry_gap_ms = 50\nretry_jitter_ms = 100\n";

fn nat_type(
    finding_m: &Finding<punchscope::analysis::nat::Mapping>,
    finding_f: &Finding<punchscope::analysis::nat::Filtering>,
) -> String {
    match (finding_m, finding_f) {
        (Finding::Known { value: m }, Finding::Known { value: f }) => format!("{m}/{f}"),
        _ => "unknown".into(),
    }
}

#[test]
fn a_small_campaign_runs_end_to_end_and_its_report_matches_what_the_lab_recorded() {
    require_root();
    // Removed however the test ends.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let scenario_path = dir.join("scenario.toml");
    let plan_path = dir.join("plan.toml");
    std::fs::write(&scenario_path, SCENARIO).unwrap();
    std::fs::write(&plan_path, PLAN).unwrap();
    let out = dir.join("out");
    let name = unique_name("cmp");
    let status = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args(["lab", "run"])
        .arg(&scenario_path)
        .arg("--plan")
        .arg(&plan_path)
        .arg("--out")
        .arg(&out)
        .args(["--name", &name, "--deadline-secs", "120"])
        .status()
        .unwrap();
    assert!(status.success(), "lab run: {status}");
    assert!(
        namespaces_of(&name).is_empty(),
        "the campaign removed its lab"
    );

    // What the lab recorded: every volunteer's result, through the collector.
    let results: Vec<CollectedResult> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (volunteer_runs, reference_runs): (Vec<_>, Vec<_>) = results
        .iter()
        .partition(|r| r.result.mode == RunMode::Volunteer);
    assert_eq!(
        volunteer_runs.len(),
        5,
        "every volunteer's result was stored once"
    );
    assert!(
        !reference_runs.is_empty(),
        "five volunteers: at least one paired with the reference peer, which uploaded its side"
    );

    // The emulator's truth: each run's classification is its router's configuration.
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let truth: HashMap<&str, &str> = [
        ("eim_apdf", "eim/apdf"),
        ("eim_rst", "eim/apdf"),
        ("eim_eif", "eim/eif"),
        ("apdm", "apdm/apdf"),
        ("eim_adf", "eim/adf"),
    ]
    .into();
    let mut type_of_run = HashMap::new();
    for r in &reference_runs {
        let v = &r.result.classification.verdict;
        let measured = nat_type(&v.mapping, &v.filtering);
        assert_ne!(measured, "unknown", "the reference peer classified its NAT");
        assert_eq!(r.result.pairings.len(), 1, "one result per pairing");
        type_of_run.insert(r.result.run_id, measured);
    }
    for r in &volunteer_runs {
        let label = r.result.client.network_label.as_deref().unwrap();
        assert!(scenario.routers.iter().any(|router| router.name == label));
        let v = &r.result.classification.verdict;
        let behind_carrier = label == "eim_rst";
        assert_eq!(
            v.path.as_ref().and_then(|p| p.cgnat),
            Some(behind_carrier),
            "{label}: {:?}",
            v.path
        );
        let measured = nat_type(&v.mapping, &v.filtering);
        assert_eq!(
            measured, truth[label],
            "classification of the host behind {label}"
        );
        type_of_run.insert(r.result.run_id, measured);
    }

    // IPv6: the one dual-stack volunteer (behind the kernel router's
    // firewall) classified it, untranslated and closed to strangers; the
    // IPv4-only ones say why they have no IPv6 classification.
    for r in &volunteer_runs {
        let label = r.result.client.network_label.as_deref().unwrap();
        if label == "eim_apdf" {
            let v6 = r
                .result
                .classification_v6
                .as_ref()
                .unwrap_or_else(|| panic!("{label}: {:?}", r.result.classification_v6_missing));
            assert_eq!(
                v6.verdict.ipv6,
                Some(Ipv6Verdict {
                    translated: Some(false),
                    translation: Some(Ipv6Translation::Untranslated),
                    unsolicited_admitted: Some(false),
                }),
                "{label}: {v6:?}"
            );
        } else {
            assert_eq!(r.result.classification_v6, None, "{label}");
            assert!(
                r.result.classification_v6_missing.is_some(),
                "{label}: IPv4 only, and a reason"
            );
        }
    }

    // Port mapping, against each router's configuration: eim_eif grants
    // (and the echo server's dial-back reaches the probe through it), apdm
    // refuses, the others have nothing on port 5351 (ICMP port unreachable).
    for r in &volunteer_runs {
        let label = r.result.client.network_label.as_deref().unwrap();
        let port_mapping = r.result.port_mapping.as_ref().expect("asked");
        assert_eq!(port_mapping.skipped, None, "{label}");
        for protocol in [MappingProtocol::Pcp, MappingProtocol::Natpmp] {
            let node = port_mapping
                .attempts
                .iter()
                .find(|a| a.protocol == protocol && a.port_role == PortRole::Node)
                .unwrap_or_else(|| panic!("{label} {protocol:?}: {port_mapping:?}"));
            match label {
                "eim_eif" => {
                    assert_eq!(node.result.as_deref(), Some("success"), "{node:?}");
                    assert!(node.release.as_ref().is_some_and(|d| d.succeeded));
                    let probe = port_mapping
                        .attempts
                        .iter()
                        .find(|a| a.protocol == protocol && a.port_role == PortRole::Probe)
                        .unwrap();
                    assert!(
                        probe.reachable.as_ref().is_some_and(|c| c.reached),
                        "{probe:?}"
                    );
                }
                "apdm" => assert_eq!(node.result.as_deref(), Some("not_authorized")),
                _ => assert_eq!(node.answer, GatewayAnswer::Refused, "{label}: {node:?}"),
            }
        }
    }

    // Our own count, independent of the report's code: join both sides by trial_id.
    let mut by_trial: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    let mut records = 0;
    for r in &results {
        for pairing in &r.result.pairings {
            for t in &pairing.trials {
                let id = t.trial_id.clone().expect("every trial reached go");
                records += 1;
                by_trial.entry(id).or_default().push((
                    type_of_run[&r.result.run_id].clone(),
                    t.outcome.is_success(),
                ));
            }
        }
    }
    let mut expected: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
    for sides in by_trial.values() {
        assert_eq!(
            sides.len(),
            2,
            "both sides of every trial reported, the reference peer's included"
        );
        let mut pair = [sides[0].0.clone(), sides[1].0.clone()];
        pair.sort();
        let cell = expected
            .entry((pair[0].clone(), pair[1].clone()))
            .or_default();
        cell.0 += 1;
        cell.1 += u32::from(sides.iter().all(|(_, ok)| *ok));
    }
    let total: u32 = expected.values().map(|c| c.0).sum();
    assert_eq!(records, 2 * total, "each trial counted once");
    assert_eq!(
        records,
        5 * 4 + 4 * reference_runs.len() as u32,
        "5 volunteers' and the reference's pairings of 4 trials each"
    );
    assert!(
        expected
            .keys()
            .all(|(a, b)| a != "unknown" && b != "unknown"),
        "{expected:?}"
    );

    // The report's numbers.
    let report = out.join("report");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["headline"]["n"], total, "nothing double counted");
    assert_eq!(summary["input"]["trials_both_sides"], total);
    assert_eq!(
        summary["input"]["reference_runs"],
        reference_runs.len() as u64
    );
    let types = summary["classification"]["types"].as_array().unwrap();
    assert!(
        types.iter().all(|t| t[0] != "unknown"),
        "every host was classified: {types:?}"
    );
    let ipv6 = &summary["ipv6"];
    assert_eq!(
        (&ipv6["runs"], &ipv6["missing"]),
        (&serde_json::json!(1), &serde_json::json!(4)),
        "one dual-stack volunteer, four IPv4-only ones: {ipv6}"
    );
    assert_eq!(ipv6["translated"]["successes"], 0, "{ipv6}");
    assert_eq!(ipv6["unsolicited_admitted"]["successes"], 0, "{ipv6}");
    let rows = summary["port_mapping"]["protocols"].as_array().unwrap();
    let protocols: Vec<_> = rows
        .iter()
        .map(|r| r["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(
        protocols.len(),
        3,
        "PCP, NAT-PMP and UPnP IGD: {protocols:?}"
    );
    for row in rows {
        assert_eq!(row["asked"], 5, "{row}");
        if row["protocol"] == "upnp" {
            // No router of this campaign runs UPnP: nothing listens on 1900.
            assert_eq!(row["granted"]["successes"], 0, "{row}");
            assert_eq!(row["answers"]["refused"], 5, "{row}");
            continue;
        }
        assert_eq!(row["granted"]["successes"], 1, "{row}");
        assert_eq!(row["reachable"]["successes"], 1, "{row}");
        assert_eq!(row["results"]["not_authorized"], 1, "{row}");
        assert_eq!(row["answers"]["refused"], 3, "{row}");
    }
    let successes: u32 = expected.values().map(|c| c.1).sum();
    assert_eq!(summary["headline"]["successes"], successes);
    let mut reported: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
    let mut csv = csv::Reader::from_path(report.join("pairs.csv")).unwrap();
    for row in csv.records() {
        let row = row.unwrap();
        let mut pair = [row[0].to_string(), row[1].to_string()];
        pair.sort();
        reported.insert(
            (pair[0].clone(), pair[1].clone()),
            (row[2].parse().unwrap(), row[3].parse().unwrap()),
        );
    }
    assert_eq!(reported, expected, "per NAT-pair counts and successes");
    let trials_csv_rows = csv::Reader::from_path(report.join("trials.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(trials_csv_rows as u32, total);

    // The page holds the matrix and the charts.
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "charts");
    assert!(html.contains("NAT-type pair"), "matrix");
    assert!(html.contains("carrier-grade NAT"), "the CGNAT breakdown");
    assert!(html.contains("Port mapping"), "the port mapping section");
    assert!(html.contains("<h3 id=ipv6>"), "the IPv6 breakdown");
    // Lab campaigns record which backend played each router, and the chain.
    let campaign: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("campaign.json")).unwrap()).unwrap();
    let router = |name: &str| {
        campaign["routers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in campaign.json"))
    };
    assert_eq!(router("eim_apdf")["backend"], "kernel");
    assert_eq!(router("eim_eif")["backend"], "emulator");
    assert_eq!(router("eim_rst")["upstream"], "carrier");
    assert!(Path::new(&report.join("index.html")).exists());
}
