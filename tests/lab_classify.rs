//! `punchscope classify` against the lab's truth: the real `serve echo` in the
//! internet namespace, the real `classify --json` in one host per mapping x
//! filtering x allocation combination plus a public host, five rounds each.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use punchscope::analysis::classify::{AllocationPattern, Classification, Finding};
use punchscope::analysis::nat::{Allocation, Filtering, Mapping, UnsolicitedAnswer};
use support::lab::*;
use support::process::ChildGuard;

const ROUNDS: usize = 5;
const SERVERS: [&str; 4] = [
    "198.51.100.10:3478",
    "198.51.100.10:3479",
    "198.51.100.11:3478",
    "198.51.100.11:3479",
];

/// What one host's NAT really is.
struct Truth {
    host: String,
    mapping: Mapping,
    filtering: Filtering,
    allocation: Allocation,
    step: u16,
    hairpin: bool,
}

fn scenario() -> (String, Vec<Truth>) {
    let mut toml = String::new();
    let mut truths = Vec::new();
    let mut index = 0usize;
    for &mapping in Mapping::ALL {
        for &filtering in Filtering::ALL {
            for &allocation in Allocation::ALL {
                // Vary what classification must not be confused by.
                let unsolicited = UnsolicitedAnswer::ALL[index % 3];
                let hairpin = index % 2 == 0;
                let step = 1 + (index % 3) as u16;
                let host = format!("h{index}");
                writeln!(
                    toml,
                    "[[nat]]\nname = \"n{index}\"\nmapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n\
                     allocation = \"{allocation}\"\nunsolicited = \"{unsolicited}\"\nhairpin = {hairpin}\n\
                     sequential_step = {step}\nsequential_base = {}\n[[host]]\nname = \"{host}\"\nnat = \"n{index}\"\n",
                    20000 + index * 1000
                )
                .unwrap();
                truths.push(Truth {
                    host,
                    mapping,
                    filtering,
                    allocation,
                    step,
                    hairpin,
                });
                index += 1;
            }
        }
    }
    toml.push_str("[[host]]\nname = \"public\"\nnat = \"none\"\n");
    (toml, truths)
}

fn wait_until_listening(lab: &punchscope::lab::Lab) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = lab
            .run_in("internet", || {
                std::net::TcpStream::connect_timeout(
                    &SERVERS[3].parse().unwrap(),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
            .unwrap();
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "echo server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expect_known<T: PartialEq + std::fmt::Debug>(finding: &Finding<T>, expected: T, what: &str) {
    match finding {
        Finding::Known { value } => assert_eq!(*value, expected, "{what}"),
        other => panic!("{what}: expected {expected:?}, got {other:?}"),
    }
}

#[test]
fn classify_finds_the_true_configuration_of_every_nat_every_time() {
    let (toml, truths) = scenario();
    let lab = start_lab("cls", &toml);
    let mut server = punchscope_in(&lab.internet_netns());
    server.args(["serve", "echo"]);
    for s in SERVERS {
        server.args(["--listen", s]);
    }
    let _server = ChildGuard(Some(
        server
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    wait_until_listening(&lab);

    let mut checked = 0;
    for round in 0..ROUNDS {
        let mut runs = Vec::new();
        for host in truths.iter().map(|t| t.host.as_str()).chain(["public"]) {
            let child = punchscope_in(&lab.host_netns(host).unwrap())
                .args([
                    "classify", "--json", "--server", SERVERS[0], "--server", SERVERS[2],
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            runs.push((host.to_string(), child));
        }
        for (host, child) in runs {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round} {host}: classify failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let result: Classification =
                serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                    panic!(
                        "{host}: bad JSON ({e}): {}",
                        String::from_utf8_lossy(&output.stdout)
                    )
                });
            let v = &result.verdict;
            let Some(truth) = truths.iter().find(|t| t.host == host) else {
                assert!(v.no_nat, "round {round}: the public host has no NAT: {v:?}");
                checked += 1;
                continue;
            };
            let what = |field: &str| {
                format!(
                    "round {round} {host} ({}/{}/{} step {}): {field}",
                    truth.mapping, truth.filtering, truth.allocation, truth.step
                )
            };
            assert!(!v.no_nat, "{}", what("no_nat"));
            expect_known(&v.mapping, truth.mapping, &what("mapping"));
            expect_known(&v.filtering, truth.filtering, &what("filtering"));
            let pattern = match &v.allocation {
                Finding::Known { value } => *value,
                other => panic!("{}: {other:?}", what("allocation")),
            };
            match (truth.allocation, pattern) {
                (Allocation::Preserve, AllocationPattern::Preserving) => {}
                (Allocation::Random, AllocationPattern::Random) => {}
                (Allocation::Sequential, AllocationPattern::Sequential { step, .. }) => {
                    assert_eq!(step, i32::from(truth.step), "{}", what("sequential step"));
                }
                (_, got) => panic!("{}: got {got:?}", what("allocation")),
            }
            assert_eq!(
                v.port_preserved,
                Some(truth.allocation == Allocation::Preserve),
                "{}",
                what("port preserved")
            );
            assert_eq!(v.hairpin, Some(truth.hairpin), "{}", what("hairpin"));
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        ROUNDS * (truths.len() + 1),
        "every run of every host was checked"
    );
}
