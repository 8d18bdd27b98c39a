//! `punchscope lab bench probe` end to end at a tiny scale: the real
//! coordinator and echo server, the real `probe` on both sides of a pair,
//! and the report of each side's wall time, trials and attempt timing. The
//! timing figures themselves are the benchmark's (docs/methodology.md), not
//! this test's.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::process::Command;

use support::lab::*;

#[test]
fn bench_probe_runs_both_real_probes_through_the_plan_and_reports_them() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Two trials with RTT-driven attempts: at 10 ms one way the pair RTT is
    // about 40 ms, so 1.5 of it is below the floor and the floor is used.
    let plan = plan_in(
        dir.path(),
        "bench",
        "trials = 2\nstrategies = [\"simultaneous\"]\nattempt_timeout_rtt_factor = 1.5\n\
         attempt_timeout_floor_ms = 250\nretry_gap_rtt_factor = 0.25\n",
    );
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args([
            "lab",
            "bench",
            "probe",
            "--pair",
            "eim-eim",
            "--delay-ms",
            "10",
        ])
        .arg("--plan")
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "lab bench probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let timings: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let timings = timings.as_array().expect("one entry per pair");
    assert_eq!(timings.len(), 1, "{timings:?}");
    let t = &timings[0];
    assert_eq!(t["pair"], "eim-eim");
    assert_eq!(
        t["nats"],
        serde_json::json!(["eim/apdf/preserve", "eim/apdf/preserve"])
    );
    assert_eq!(t["exit_codes"], serde_json::json!([0, 0]), "{t}");
    assert_eq!(t["trials"], serde_json::json!([2, 2]), "{t}");
    // Two EIM NATs punch (docs/lab.md); both sides saw both trials connect.
    assert_eq!(t["connected"], serde_json::json!([2, 2]), "{t}");
    // The timing the coordinator sent reached the trial records.
    assert_eq!(
        t["attempt_timeout_ms"],
        serde_json::json!([250, 250]),
        "{t}"
    );
    let walls: Vec<f64> = t["wall_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert!(walls.iter().all(|w| *w > 0.0), "{t}");
    assert_eq!(t["max_wall_s"].as_f64().unwrap(), walls[0].max(walls[1]));
    // Each side's result document stays in the output folder.
    for host in ["a0", "b0"] {
        let text = std::fs::read_to_string(out.join("logs").join(format!("{host}.out"))).unwrap();
        let result = punchscope::analysis::result::RunResult::from_json(&text).unwrap();
        let trial = &result.pairings[0].trials[0];
        let timing = trial
            .timing
            .expect("the record keeps the timing it ran with");
        assert_eq!(timing.attempt_timeout_ms, 250);
        assert!(
            timing.pair_rtt_ms.is_some_and(|rtt| rtt >= 35),
            "{timing:?}"
        );
    }
}
