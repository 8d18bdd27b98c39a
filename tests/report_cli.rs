//! `punchscope report` end to end: fixtures written as a result file, JSONL (with collector export lines and malformed lines) and a collector on loopback; the real binary; every output file checked against hand-computed numbers.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use punchscope::analysis::handshake::Role;
use punchscope::analysis::nat::{Filtering::*, Mapping::*};
use punchscope::analysis::result::{CollectedResult, RunResult};
use punchscope::analysis::trial::TrialOutcome::*;
use serde_json::Value;
use support::results::*;

/// The campaign of the tests, with the numbers worked out by hand below.
///
/// - alice (eim/apdf, initiator) and bob (eim/eif, responder): 6 trials,
///   both sides reported. Strategies cycle simultaneous, connect_listen,
///   low_ttl; transports v1, v2. Trials 0-3 connect on both sides (bob's v1
///   handshake of trial 2 fails); in trial 4 alice says connected but bob
///   refused (so it fails); trial 5 times out. => 4/6.
/// - carol (apdm/apdf, initiator; the coordinator said her peer is eim/adf),
///   her peer's run is missing: trial 0 connects, 1 and 2 refused, 3 timeout. => 1/4.
/// - erin (an old probe: no trial ids, unknown NAT, no peer verdict): 2
///   trials, both connect; the v2 handshake of trial 1 fails. => 2/2.
struct Campaign {
    alice: RunResult,
    bob: RunResult,
    carol: RunResult,
    erin: RunResult,
}

fn campaign() -> Campaign {
    let ids = trial_ids(6);
    let c = SideTrial::connected;
    let f = SideTrial::failed;
    let alice = run(
        Role::Initiator,
        verdict(Some(Eim), Some(Apdf)),
        Some(verdict(Some(Eim), Some(Eif))),
        &ids,
        &[
            c(200.0, 1, true),
            c(300.0, 1, true),
            c(250.0, 1, true),
            c(400.0, 2, true),
            c(500.0, 1, true),
            f(Timeout, 4),
        ],
    );
    let bob = run(
        Role::Responder,
        verdict(Some(Eim), Some(Eif)),
        Some(verdict(Some(Eim), Some(Apdf))),
        &ids,
        &[
            c(210.0, 1, true),
            c(305.0, 1, true),
            c(260.0, 1, false),
            c(410.0, 1, true),
            f(Refused, 3),
            f(Timeout, 4),
        ],
    );
    let carol = run(
        Role::Initiator,
        verdict(Some(Apdm), Some(Apdf)),
        Some(verdict(Some(Eim), Some(Adf))),
        &trial_ids(4),
        &[
            c(350.0, 1, true),
            f(Refused, 4),
            f(Refused, 4),
            f(Timeout, 4),
        ],
    );
    let erin = run(
        Role::Initiator,
        verdict(None, None),
        None,
        &[None, None],
        &[c(600.0, 3, true), c(700.0, 1, false)],
    );
    Campaign {
        alice,
        bob,
        carol,
        erin,
    }
}

fn punchscope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args(args)
        .output()
        .expect("run punchscope")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn csv_rows(path: &Path) -> Vec<csv::StringRecord> {
    csv::Reader::from_path(path)
        .unwrap()
        .records()
        .map(Result::unwrap)
        .collect()
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 0.0005)
}

/// Writes the campaign as a result file in a directory plus a JSONL file
/// holding a duplicate, a collector export line and three malformed lines.
fn write_inputs(dir: &Path, c: &Campaign) -> (String, String) {
    let runs_dir = dir.join("results");
    std::fs::create_dir_all(&runs_dir).unwrap();
    std::fs::write(
        runs_dir.join("alice.json"),
        serde_json::to_string_pretty(&c.alice).unwrap(),
    )
    .unwrap();
    let collected_bob = CollectedResult {
        received_at: "2026-05-01T10:05:00Z".parse().unwrap(),
        source_net: "203.0.113.0/24".into(),
        source_group: "5f".repeat(32),
        result: c.bob.clone(),
    };
    let mut leaky = serde_json::to_value(&c.carol).unwrap();
    leaky["run_id"] = uuid::Uuid::new_v4().to_string().into();
    leaky["pairings"][0]["trials"][1]["error"] = "bind 192.168.1.20:40001 failed".into();
    let lines = [
        c.alice.to_json(), // the same run as results/alice.json: counted once
        serde_json::to_string(&collected_bob).unwrap(),
        "this is not JSON".to_string(),
        c.carol.to_json(),
        "{\"schema_version\": 1, \"run_id\":".to_string(),
        leaky.to_string(),
        c.erin.to_json(),
    ];
    let jsonl = dir.join("export.jsonl");
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    (runs_dir.display().to_string(), jsonl.display().to_string())
}

/// Which network groups the input carried: from files, only bob's export
/// line has one (6 trials, below the listing minimum of 10); through a
/// collector on loopback every run was uploaded from 127.0.0.1, one group.
#[derive(Clone, Copy, PartialEq)]
enum Groups {
    OnlyBobs,
    AllFromLoopback,
}

fn check_report(out: &Path, stdout: &str, skipped: u64, groups: Groups) {
    for file in ["index.html", "summary.json", "trials.csv", "pairs.csv"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let s = read_json(&out.join("summary.json"));
    let input = &s["input"];
    assert_eq!(input["runs"], 4);
    assert_eq!(input["trial_records"], 6 + 6 + 4 + 2);
    assert_eq!(input["trials_counted"], 12);
    assert_eq!(input["trials_both_sides"], 6);
    assert_eq!(input["trials_one_side"], 4);
    assert_eq!(input["trials_without_id"], 2);
    assert_eq!(input["sides_disagree"], 1);
    assert_eq!(s["skipped_lines"]["total"], skipped);

    // Headline: 4 + 1 + 2 = 7 of 12; Wilson 95% [0.3195, 0.8067].
    let h = &s["headline"];
    assert_eq!(
        (h["successes"].as_u64(), h["n"].as_u64()),
        (Some(7), Some(12))
    );
    assert!(close(&h["rate"], 7.0 / 12.0));
    assert!(close(&h["low"], 0.3195) && close(&h["high"], 0.8067), "{h}");
    // alice/bob trial 4: refused (bob); 5 timeout; carol 1, 2 refused, 3 timeout.
    assert_eq!(s["outcomes"]["connected"], 7);
    assert_eq!(s["outcomes"]["refused"], 3);
    assert_eq!(s["outcomes"]["timeout"], 2);

    // Strategies: simultaneous alice/bob 0, 3, carol 0, 3, erin 0 -> 4/5;
    // connect_listen a/b 1, 4, carol 1, erin 1 -> 2/4; low_ttl a/b 2, 5, carol 2 -> 1/3.
    let strategies: Vec<(String, u64, u64)> = s["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["strategy"].as_str().unwrap().to_string(),
                r["successes"].as_u64().unwrap(),
                r["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        strategies,
        [
            ("simultaneous".to_string(), 4, 5),
            ("connect_listen".to_string(), 2, 4),
            ("low_ttl".to_string(), 1, 3)
        ]
    );
    // Handshakes given a punched socket: v1 a/b 0 ok, 2 failed (bob), carol 0
    // ok, erin 0 ok -> 3/4; v2 a/b 1, 3 ok, erin 1 failed -> 2/3.
    let hs = &s["handshake"];
    assert_eq!(
        (hs["v1"]["successes"].as_u64(), hs["v1"]["n"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(
        (hs["v2"]["successes"].as_u64(), hs["v2"]["n"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(close(&hs["v2"]["low"], 0.2077) && close(&hs["v2"]["high"], 0.9385));
    // Times of the 7 successes (a/b: later side): 210 305 260 410, 350, 600 700.
    let t = &s["time_to_connect"];
    assert_eq!(t["n"], 7);
    assert!(close(&t["min_ms"], 210.0) && close(&t["max_ms"], 700.0));
    assert!(close(&t["p50_ms"], 350.0), "{t}");
    assert!(close(
        &t["mean_ms"],
        (210.0 + 305.0 + 260.0 + 410.0 + 350.0 + 600.0 + 700.0) / 7.0
    ));
    // Attempts per success (larger side): 1 1 1 2, 1, 3 1.
    let a = &s["attempts"];
    assert_eq!(a["histogram"], serde_json::json!([[1, 5], [2, 1], [3, 1]]));
    assert_eq!(a["first_attempt"]["successes"], 5);
    // Runs per NAT type.
    let types: Vec<(String, u64)> =
        serde_json::from_value(s["classification"]["types"].clone()).unwrap();
    assert_eq!(
        types,
        [
            ("eim/eif".to_string(), 1),
            ("eim/apdf".to_string(), 1),
            ("apdm/apdf".to_string(), 1),
            ("unknown".to_string(), 1)
        ]
    );
    assert_eq!(s["references"].as_array().unwrap().len(), 3);

    // pairs.csv: one row per pair, lower type first.
    let pairs = csv_rows(&out.join("pairs.csv"));
    let cells: Vec<(String, String, String, String)> = pairs
        .iter()
        .map(|r| (r[0].into(), r[1].into(), r[2].into(), r[3].into()))
        .collect();
    assert_eq!(
        cells,
        [
            ("eim/eif".into(), "eim/apdf".into(), "6".into(), "4".into()),
            ("eim/adf".into(), "apdm/apdf".into(), "4".into(), "1".into()),
            ("unknown".into(), "unknown".into(), "2".into(), "2".into()),
        ]
    );
    let low: f64 = pairs[1][5].parse().unwrap();
    assert!((low - 0.0456).abs() < 0.0005, "{low}");
    // trials.csv: one row per counted trial.
    let trials = csv_rows(&out.join("trials.csv"));
    assert_eq!(trials.len(), 12);
    assert_eq!(trials.iter().filter(|r| &r[6] == "true").count(), 7);
    assert_eq!(trials.iter().filter(|r| r[0].is_empty()).count(), 2);
    let joined = trials
        .iter()
        .find(|r| &r[1] == "2" && &r[7] == "210")
        .unwrap();
    assert_eq!((&joined[3], &joined[4]), ("eim/apdf", "eim/eif"));

    // The page: every section, the matrix, SVG charts from plotters.
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for id in [
        "headline",
        "references",
        "nat-matrix",
        "strategies",
        "handshake",
        "time-to-connect",
        "attempts",
        "classification",
        "method",
    ] {
        assert!(page.contains(&format!("<section id={id}>")), "section {id}");
    }
    assert!(page.contains("<table class=matrix>"));
    assert!(page.contains("66.7%"), "the eim/eif x eim/apdf cell (4/6)");
    assert!(page.contains("58.3%"), "the headline (7/12)");
    // Six charts, and the per-network histogram when a network is listed.
    let charts = if groups == Groups::AllFromLoopback {
        7
    } else {
        6
    };
    assert_eq!(page.matches("<svg").count(), charts);
    for id in ["pairings", "networks", "groups", "uncertainty"] {
        assert!(page.contains(&format!("<section id={id}>")), "section {id}");
    }
    assert!(page.contains("Quote the interval clustered by pairing"));
    check_clusters(&s, out, groups);
    assert!(!page.contains("NaN"));
    // Self-contained: nothing loads from anywhere (the SVG namespace URI is a name, not a fetch).
    for loader in ["<script", "<link", "src=", "href=", "@import", "url("] {
        assert!(!page.contains(loader), "the page holds {loader}");
    }
    assert!(stdout.contains("58.3%"), "{stdout}");
    assert!(stdout.contains(&out.join("index.html").display().to_string()));
}

/// The clustered parts of the report, worked by hand: three pairings
/// (alice-bob 4/6, carol 1/4, erin 2/2), their strategies, groups and networks.
fn check_clusters(s: &Value, out: &Path, groups: Groups) {
    let u = &s["uncertainty"];
    assert_eq!(u["pairings"], 3);
    assert_eq!(u["resamples"], 1000);
    let h = &s["headline"];
    let by_pairing = &h["clustered"]["pairings"];
    assert_eq!(by_pairing["clusters"], 3);
    assert_eq!(by_pairing["method"], "bootstrap");
    // Never narrower than the per-trial interval.
    assert!(by_pairing["low"].as_f64() <= h["low"].as_f64());
    assert!(by_pairing["high"].as_f64() >= h["high"].as_f64());
    match groups {
        // alice, carol and erin have no group (each its own network), bob has one.
        Groups::OnlyBobs => {
            assert_eq!(
                (u["networks"].as_u64(), u["keyed_networks"].as_u64()),
                (Some(4), Some(1))
            );
            assert_eq!(u["runs_without_group"], 3);
            let n = &s["networks"];
            assert_eq!(
                (n["groups"].as_u64(), n["trials_unlisted"].as_u64()),
                (Some(1), Some(6))
            );
            assert!(n["rows"].as_array().unwrap().is_empty());
        }
        Groups::AllFromLoopback => {
            assert_eq!(
                (u["networks"].as_u64(), u["keyed_networks"].as_u64()),
                (Some(1), Some(1))
            );
            let n = &s["networks"];
            let rows = n["rows"].as_array().unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(
                (rows[0]["successes"].as_u64(), rows[0]["n"].as_u64()),
                (Some(7), Some(12))
            );
            assert_eq!(
                (rows[0]["runs"].as_u64(), rows[0]["pairings"].as_u64()),
                (Some(4), Some(3))
            );
            assert_eq!(
                rows[0]["key"].as_str().unwrap().len(),
                64,
                "the keyed hash, never an address"
            );
            // 58.3% is in the 50-60% decile.
            assert_eq!(n["rate_histogram"][5], serde_json::json!(["50-60%", 1]));
            // A row that is one network has no network interval.
            assert!(rows[0]["clustered"]["networks"].is_null());
        }
    }
    // Pairings: all three connected at least once, only erin's every time.
    let v = &s["pairing_view"];
    assert_eq!(v["pairings"], 3);
    let once = &v["connected_at_least_once"];
    assert_eq!(
        (once["successes"].as_u64(), once["n"].as_u64()),
        (Some(3), Some(3))
    );
    let every = &v["connected_every_time"];
    assert_eq!(
        (every["successes"].as_u64(), every["n"].as_u64()),
        (Some(1), Some(3))
    );
    // simultaneous vs connect_listen within the same pairings: a/b 2/2 vs 1/2,
    // carol 1/2 vs 0/1, erin 1/1 vs 1/1 -> 4/5 - 2/4 = +0.3; A better in 2, tie 1;
    // sign test 2 of 2: p = 0.5.
    let c = &v["comparisons"][0];
    assert_eq!(
        (c["strategy_a"].as_str(), c["strategy_b"].as_str()),
        (Some("simultaneous"), Some("connect_listen"))
    );
    assert_eq!(c["pairings"], 3);
    assert!(close(&c["difference"], 0.3), "{c}");
    assert_eq!(
        (
            c["a_better"].as_u64(),
            c["b_better"].as_u64(),
            c["ties"].as_u64()
        ),
        (Some(2), Some(0), Some(1))
    );
    assert!(close(&c["sign_test_p"], 0.5));
    // Every volunteer is labelled home-fibre and runs linux/x86_64, punchscope 0.1.0: one row each, every trial.
    for (table, key) in [
        ("network_labels", "home-fibre"),
        ("clients", "linux/x86_64, punchscope 0.1.0"),
    ] {
        let rows = s[table]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{table}");
        assert_eq!(rows[0]["key"], key);
        assert_eq!(
            (rows[0]["successes"].as_u64(), rows[0]["n"].as_u64()),
            (Some(7), Some(12))
        );
        assert_eq!(rows[0]["pairings"], 3);
    }
    // trials.csv names each trial's pairing: alice's 6 with bob's, carol's 4, erin's 2.
    let trials = csv_rows(&out.join("trials.csv"));
    let mut per_pairing = std::collections::BTreeMap::<String, usize>::new();
    for r in &trials {
        *per_pairing.entry(r[11].to_string()).or_default() += 1;
    }
    let mut sizes: Vec<usize> = per_pairing.values().copied().collect();
    sizes.sort();
    assert_eq!(sizes, [2, 4, 6]);
}

#[test]
fn report_from_files_and_jsonl_matches_hand_computed_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let c = campaign();
    let (runs_dir, jsonl) = write_inputs(dir.path(), &c);
    let out = dir.path().join("report");
    let output = punchscope(&["report", &runs_dir, &jsonl, "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    check_report(&out, &stdout, 3, Groups::OnlyBobs);
    assert!(
        stderr.contains("skipped 3 malformed input line(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("export.jsonl:3: not valid JSON"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("192.168.1.20"),
        "a raw address echoed: {stderr}"
    );
    let s = read_json(&out.join("summary.json"));
    assert_eq!(s["input"]["duplicate_runs"], 1);
    let lines: Vec<u64> = s["skipped_lines"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 5, 6]);
}

#[test]
fn report_reads_a_collector_export_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let c = campaign();
    let collector = support::collector::TestCollector::start(
        dir.path().join("collector.db"),
        Some(support::collector::EXPORT_TOKEN),
    );
    let agent = support::http::agent();
    for run in [&c.alice, &c.bob, &c.carol, &c.erin] {
        let (status, body) =
            support::http::post(&agent, &collector.url(), run.to_json().as_bytes());
        assert_eq!(status, 201, "{body}");
    }
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{}\n", support::collector::EXPORT_TOKEN)).unwrap();
    let out = dir.path().join("report");
    let output = punchscope(&[
        "report",
        &collector.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    check_report(&out, &stdout, 0, Groups::AllFromLoopback);

    // A wrong token is an error that says what the collector answered.
    std::fs::write(&token, "wrong-token").unwrap();
    let output = punchscope(&[
        "report",
        &collector.url(),
        "--token-file",
        token.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("403"));
}

#[test]
fn an_empty_input_gives_a_report_that_says_there_is_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("nothing.jsonl"), "\n\n").unwrap();
    let out = dir.path().join("report");
    let output = punchscope(&[
        "report",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let s = read_json(&out.join("summary.json"));
    assert_eq!(s["headline"]["n"], 0);
    assert!(s["headline"]["rate"].is_null());
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(page.contains("No data"));
    assert!(!page.contains("NaN"));
    // Only the published figures are drawn; none of our charts.
    assert_eq!(page.matches("<svg").count(), 1);
    assert!(page.contains("No successful trials: no times to plot."));
    assert_eq!(csv_rows(&out.join("trials.csv")).len(), 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("no trials in the input"));
}
