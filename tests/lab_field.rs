//! A whole field rehearsal in the lab: `serve campaign` from a campaign file
//! in the internet namespace (collector over HTTPS with a test CA made here),
//! volunteers behind several emulated NATs running `punchscope probe
//! --campaign 198.51.100.10 --yes` with only the CA file added, their results
//! stored, `/metrics` counting them, and `punchscope report https://...`
//! building the report from the collector. And the same campaign made
//! dual-stack: echo servers on IPv6 too, the coordinator on `[::]`, a plan
//! over both families, volunteers behind kernel routers with IPv6
//! firewalls joining with `--campaign` at both of its addresses.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use punchscope::analysis::classify::Ipv6Verdict;
use punchscope::analysis::trial::{Family, TrialOutcome};
use support::lab::*;
use support::process::ChildGuard;
use support::tls::make_test_ca;

const SCENARIO: &str = r#"
[[nat]]
name = "eim_apdf"
filtering = "apdf"
delay_ms = 10
[[nat]]
name = "eim_eif"
filtering = "eif"
delay_ms = 5
[[nat]]
name = "eim_adf"
filtering = "adf"
delay_ms = 5
[[nat]]
name = "eim_rst"
filtering = "apdf"
unsolicited = "rst"
delay_ms = 15
[[host]]
name = "v1"
nat = "eim_apdf"
[[host]]
name = "v2"
nat = "eim_eif"
[[host]]
name = "v3"
nat = "eim_adf"
[[host]]
name = "v4"
nat = "eim_rst"
"#;

const PLAN: &str = "version = 1\nname = \"field-rehearsal\"\ntrials = 2\nstrategies = [\"simultaneous\", \"connect_listen\"]\n\
network = \"regtest\"\nattempt_timeout_ms = 800\nmax_attempts = 2\nretry_gap_ms = 50\nretry_jitter_ms = 100\n";

const CAMPAIGN: &str = r#"
[campaign]
name = "lab field rehearsal"
operator = "punchscope tests"
contact = "tests@example.org"

[echo]
addresses = ["198.51.100.10", "198.51.100.11"]
ports = [3478, 3479]

[coordinator]
listen = "198.51.100.10:8340"
plan = "plan.toml"
metrics_listen = "198.51.100.10:9340"

[collector]
listen = "198.51.100.10:8443"
public_url = "https://198.51.100.10:8443"
database = "results.db"
# A throwaway lab campaign: the key may sit beside the database.
key_file = "collector.key"
allow_key_beside_database = true
export_token_file = "export.token"
tls_cert = "cert.pem"
tls_key = "key.pem"
"#;

const COLLECTOR: &str = "https://198.51.100.10:8443";
const VOLUNTEERS: [&str; 4] = ["v1", "v2", "v3", "v4"];

/// GET `url` inside the lab's internet namespace, trusting the test CA.
fn get_in_internet(lab: &punchscope::lab::Lab, url: &str, ca: &std::path::Path) -> String {
    let ca = std::fs::read(ca).unwrap();
    let url = url.to_string();
    lab.run_in("internet", move || {
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client.get(&url).send().unwrap().text().unwrap()
    })
    .unwrap()
}

/// Polls `url` until its text has every one of `wanted`, or gives up after 10 s.
fn metrics_with(
    lab: &punchscope::lab::Lab,
    url: &str,
    ca: &std::path::Path,
    wanted: &[&str],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = get_in_internet(lab, url, ca);
        if wanted.iter().all(|w| text.contains(w)) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `serve campaign --config DIR/campaign.toml` in the internet namespace,
/// once every one of `endpoints` accepts connections (its stderr in
/// DIR/campaign.err, shown if it does not start).
fn serve_campaign(
    lab: &punchscope::lab::Lab,
    dir: &std::path::Path,
    endpoints: &[&str],
) -> ChildGuard {
    let log = std::fs::File::create(dir.join("campaign.err")).unwrap();
    let campaign = ChildGuard(Some(
        punchscope_in(&lab.internet_netns())
            .args(["serve", "campaign", "--config"])
            .arg(dir.join("campaign.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    for endpoint in endpoints {
        while !lab
            .run_in("internet", || {
                std::net::TcpStream::connect(endpoint).is_ok()
            })
            .unwrap()
        {
            assert!(
                Instant::now() < deadline,
                "serve campaign did not listen on {endpoint}: {}",
                std::fs::read_to_string(dir.join("campaign.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    campaign
}

#[test]
fn a_field_rehearsal_runs_from_one_campaign_file_and_one_volunteer_flag() {
    let lab = start_lab("fld", SCENARIO);
    let dir = tempfile::tempdir().unwrap();
    let ca = make_test_ca(dir.path(), &["198.51.100.10"]);
    std::fs::write(dir.path().join("campaign.toml"), CAMPAIGN).unwrap();
    std::fs::write(dir.path().join("plan.toml"), PLAN).unwrap();
    std::fs::write(
        dir.path().join("export.token"),
        "field-rehearsal-export-token\n",
    )
    .unwrap();

    let _campaign = serve_campaign(
        &lab,
        dir.path(),
        &[
            "198.51.100.10:8340",
            "198.51.100.10:8443",
            "198.51.100.11:3479",
        ],
    );

    // Each volunteer: one flag and consent, plus the test CA (its own state
    // folder, as a separate machine has).
    let mut probes = Vec::new();
    for host in VOLUNTEERS {
        let state = dir.path().join(format!("state-{host}"));
        let child = punchscope_in(&lab.host_netns(host).unwrap())
            .args(["probe", "--campaign", "198.51.100.10", "--yes", "--ca-file"])
            .arg(&ca.ca_pem)
            .env("XDG_STATE_HOME", &state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        probes.push((host, ChildGuard(Some(child))));
        std::thread::sleep(Duration::from_millis(150));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (host, mut guard) in probes {
        while guard.0.as_mut().unwrap().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "probe in {host} did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = guard.0.take().unwrap().wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(output.status.success(), "{host}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("Campaign: lab field rehearsal")
                && stderr.contains("Run by: punchscope tests (tests@example.org)")
                && stderr.contains(&format!("Results go to: {COLLECTOR}")),
            "{host}'s consent screen names the campaign: {stderr}"
        );
        let consent = stderr.find("Results go to").unwrap();
        let classifying = stderr.find("classifying").unwrap_or(usize::MAX);
        assert!(
            consent < classifying,
            "consent comes before any measurement"
        );
        assert!(
            stdout.contains("uploaded: the collector has it"),
            "{host}: {stdout}"
        );
        let spool = dir.path().join(format!("state-{host}/punchscope/spool"));
        let left = std::fs::read_dir(&spool)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count();
        assert_eq!(left, 0, "{host}'s result left its spool");
    }

    // The operator's view.
    let collector = metrics_with(
        &lab,
        &format!("{COLLECTOR}/metrics"),
        &ca.ca_pem,
        &["punchscope_collector_results_stored_total 4\n"],
    );
    assert!(
        collector.contains("punchscope_collector_results_stored_total 4\n"),
        "{collector}"
    );
    let coordinator = metrics_with(
        &lab,
        "http://198.51.100.10:9340/metrics",
        &ca.ca_pem,
        &["punchscope_coordinator_pairings_completed_total 2\n"],
    );
    for line in [
        "punchscope_coordinator_pairings_completed_total 2\n",
        "punchscope_coordinator_trials_completed_total 4\n",
        "punchscope_coordinator_campaign_previews_total 4\n",
        "punchscope_coordinator_waiting_volunteers 0\n",
    ] {
        assert!(coordinator.contains(line), "{line}in {coordinator}");
    }
    let outcomes: u64 = coordinator
        .lines()
        .filter(|l| l.starts_with("punchscope_coordinator_trial_outcomes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(outcomes, 8, "both sides of 4 trials: {coordinator}");
    assert_eq!(
        get_in_internet(&lab, &format!("{COLLECTOR}/healthz"), &ca.ca_pem),
        "ok\n"
    );

    // The researcher's view: the report straight from the collector, over HTTPS.
    let out = dir.path().join("report");
    let report = punchscope_in(&lab.internet_netns())
        .args(["report", COLLECTOR, "--token-file"])
        .arg(dir.path().join("export.token"))
        .arg("--ca-file")
        .arg(&ca.ca_pem)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["headline"]["n"], 4,
        "2 pairings x 2 trials, each once"
    );
    assert_eq!(summary["input"]["trials_both_sides"], 4);
    assert!(out.join("index.html").exists());
    drop(lab);
}

/// [`CAMPAIGN`] made dual-stack: the echo servers also on both servers'
/// IPv6 addresses, the coordinator on both families.
fn dual_stack_campaign() -> String {
    let campaign = CAMPAIGN
        .replace(
            "ports = [3478, 3479]",
            "ports = [3478, 3479]\naddresses_v6 = [\"2001:db8:5100::10\", \"2001:db8:5100::11\"]",
        )
        .replace("listen = \"198.51.100.10:8340\"", "listen = \"[::]:8340\"");
    assert!(campaign.contains("[::]:8340") && campaign.contains("addresses_v6"));
    campaign
}

/// A dual-stack campaign from one file: volunteers behind two kernel
/// routers (IPv4 masqueraded, IPv6 behind a stateful firewall) join with
/// `--campaign` at the coordinator's IPv4 and IPv6 addresses (what a name
/// with A and AAAA records gives; the lab has no DNS), classify IPv6
/// against the IPv6 echo endpoints the campaign announced, offer both
/// families and run the plan's trials in both.
#[test]
fn a_dual_stack_campaign_classifies_and_punches_over_ipv6_too() {
    let lab = start_lab(
        "fl6",
        &two_nats(
            "backend = \"kernel\"\nipv6 = \"firewall\"\ndelay_ms = 5",
            "backend = \"kernel\"\nipv6 = \"firewall\"\ndelay_ms = 5",
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = make_test_ca(dir.path(), &["198.51.100.10"]);
    std::fs::write(dir.path().join("campaign.toml"), dual_stack_campaign()).unwrap();
    std::fs::write(
        dir.path().join("plan.toml"),
        PLAN.replace("trials = 2", "trials = 4\nfamilies = [\"ipv4\", \"ipv6\"]"),
    )
    .unwrap();
    std::fs::write(dir.path().join("export.token"), "dual-stack-export-token\n").unwrap();
    let _campaign = serve_campaign(
        &lab,
        dir.path(),
        &[
            "198.51.100.10:8340",
            "[2001:db8:5100::10]:8340",
            "198.51.100.10:8443",
            "[2001:db8:5100::11]:3479",
        ],
    );

    let results = probe_alice_and_bob_with(Duration::from_secs(150), |host, spool| {
        let mut command = punchscope_in(&lab.host_netns(host).unwrap());
        command
            .args(["probe", "--campaign", "198.51.100.10"])
            .args(["--campaign", "[2001:db8:5100::10]"])
            .args(["--yes", "--json", "--max-wait-secs", "30", "--ca-file"])
            .arg(&ca.ca_pem)
            .arg("--spool")
            .arg(spool)
            .env("XDG_STATE_HOME", spool);
        command
    });
    let families = |i: usize| -> Vec<Family> {
        results[i].pairings[0]
            .trials
            .iter()
            .map(|t| t.family)
            .collect()
    };
    assert_eq!(
        families(0),
        families(1),
        "both sides ran each trial in the same family"
    );
    let ipv6_trials = families(0).iter().filter(|f| **f == Family::Ipv6).count();
    assert_eq!(
        ipv6_trials,
        2,
        "half the trials over IPv6: {:?}",
        families(0)
    );
    for result in &results {
        // Classified over IPv6 against the campaign's announced IPv6 echo endpoints.
        let v6 = result.classification_v6.as_ref().unwrap_or_else(|| {
            panic!(
                "an IPv6 classification: {:?}",
                result.classification_v6_missing
            )
        });
        assert_eq!(
            v6.verdict.ipv6,
            Some(Ipv6Verdict {
                translated: Some(false),
                translation: Some(punchscope::analysis::classify::Ipv6Translation::Untranslated),
                unsolicited_admitted: Some(false),
            }),
            "the firewall turns unsolicited connections away: {v6:?}"
        );
        for t in &result.pairings[0].trials {
            assert_eq!(
                t.outcome,
                TrialOutcome::Connected,
                "trial {} over {}: {t:#?}",
                t.trial,
                t.family
            );
            if t.family == Family::Ipv6 {
                assert_eq!(
                    t.public_port,
                    Some(t.local_port),
                    "IPv6 untranslated: {t:#?}"
                );
            }
        }
    }

    // Both results reached the collector; each probe asked the first address only.
    let collector = metrics_with(
        &lab,
        &format!("{COLLECTOR}/metrics"),
        &ca.ca_pem,
        &["punchscope_collector_results_stored_total 2\n"],
    );
    assert!(
        collector.contains("punchscope_collector_results_stored_total 2\n"),
        "{collector}"
    );
    let coordinator = metrics_with(
        &lab,
        "http://198.51.100.10:9340/metrics",
        &ca.ca_pem,
        &["punchscope_coordinator_pairings_completed_total 1\n"],
    );
    for line in [
        "punchscope_coordinator_pairings_completed_total 1\n",
        "punchscope_coordinator_trials_completed_total 4\n",
        "punchscope_coordinator_campaign_previews_total 2\n",
    ] {
        assert!(coordinator.contains(line), "{line}in {coordinator}");
    }
    drop(lab);
}
