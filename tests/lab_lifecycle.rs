//! Lab lifecycle tests: nothing is left behind after a panic, a signal or a killed
//! process; a running lab's name is taken; two labs run side by side.
// The lab is Linux-only and behind the `lab` feature.
#![cfg(all(feature = "lab", target_os = "linux"))]

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use punchscope::lab::{self, netns, Lab, LabError, LabOptions, Scenario};
use support::lab::*;

const ONE_HOST: &str = "[[nat]]\nname = \"home\"\n[[host]]\nname = \"alice\"\nnat = \"home\"\n";

fn lock_path(name: &str) -> String {
    format!("{}/{name}.lock", lab::lock::LOCK_DIR)
}

fn start_named(name: &str) -> Result<Lab, LabError> {
    Lab::start(
        Scenario::parse(ONE_HOST).unwrap(),
        LabOptions {
            name: name.to_string(),
            event_log: None,
        },
    )
}

#[test]
fn a_panic_inside_a_lab_leaves_no_namespace_behind() {
    require_root();
    let name = unique_name("pan");
    let outcome = std::panic::catch_unwind(|| {
        let lab = start_named(&name).unwrap();
        assert_eq!(
            namespaces_of(&name).len(),
            2,
            "internet + alice exist while running"
        );
        lab.run_in("alice", || panic!("test panics mid-way"))
            .unwrap();
    });
    assert!(outcome.is_err(), "the closure panicked");
    assert!(
        namespaces_of(&name).is_empty(),
        "left: {:?}",
        namespaces_of(&name)
    );
    assert!(!Path::new(&lock_path(&name)).exists());
}

#[test]
fn a_stale_lab_is_removed_on_start_and_by_down() {
    require_root();
    let name = unique_name("stl");
    let ghost = format!("{name}-ghost");
    netns::add(&ghost).unwrap();
    netns::add(&format!("{name}-internet")).unwrap();
    let lab = start_named(&name).unwrap();
    assert!(!netns::exists(&ghost), "start removed the stale namespace");
    lab.shutdown().unwrap();

    netns::add(&ghost).unwrap();
    let removed = lab::remove_stale(&name).unwrap();
    assert_eq!(removed, vec![ghost.clone()]);
    assert!(namespaces_of(&name).is_empty());
}

#[test]
fn a_running_lab_keeps_its_name() {
    require_root();
    let name = unique_name("dup");
    let lab = start_named(&name).unwrap();
    match start_named(&name) {
        Err(LabError::Lock(e)) => assert!(e.to_string().contains("is running"), "{e}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a second lab took the same name"),
    }
    assert!(
        matches!(lab::remove_stale(&name), Err(LabError::Lock(_))),
        "down refuses a live lab"
    );
    assert_eq!(
        namespaces_of(&name).len(),
        2,
        "the running lab is untouched"
    );
    drop(lab);
    assert!(namespaces_of(&name).is_empty());
}

#[test]
fn two_labs_with_the_same_addresses_run_side_by_side() {
    let first = start_lab("sa", ONE_HOST);
    let second = start_lab("sb", ONE_HOST);
    let _e1 = EndpointReflector::start(&first, &["198.51.100.10:3478"]);
    let _e2 = EndpointReflector::start(&second, &["198.51.100.10:3478"]);
    let from = ep("192.168.1.2:45000");
    let seen_first = first
        .run_in("alice", || observe(from, ep("198.51.100.10:3478")))
        .unwrap();
    let seen_second = second
        .run_in("alice", || {
            observe(ep("192.168.1.2:45001"), ep("198.51.100.10:3478"))
        })
        .unwrap();
    assert_eq!(seen_first, ep("203.0.113.2:45000"));
    assert_eq!(seen_second, ep("203.0.113.2:45001"));
    let ports = |lab: &Lab| -> Vec<u16> {
        lab.events()
            .into_iter()
            .filter_map(|e| match e.event {
                punchscope::lab::nat::NatEvent::MappingCreated { internal, .. } => {
                    Some(internal.port())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        ports(&first),
        vec![45000],
        "each lab sees only its own traffic"
    );
    assert_eq!(ports(&second), vec![45001]);
}

fn punchscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_punchscope"))
}

/// Starts `lab up` and waits for its ready line.
fn lab_up(name: &str) -> (Child, serde_json::Value) {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/lab/basic.toml");
    let mut child = punchscope()
        .args(["lab", "up"])
        .arg(&scenario)
        .args(["--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ready line within 20 s");
    let info: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
    (child, info)
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn lab_up_reports_ready_runs_commands_and_cleans_up_on_sigterm() {
    require_root();
    let name = unique_name("cli");
    let (mut child, info) = lab_up(&name);
    assert_eq!(info["lab"], name.as_str());
    assert_eq!(
        info["internet"]["netns"],
        format!("{name}-internet").as_str()
    );
    assert_eq!(info["hosts"].as_array().unwrap().len(), 3);
    assert_eq!(namespaces_of(&name).len(), 4);

    let status = punchscope()
        .args([
            "lab", "exec", &name, "alice", "--", "ip", "-4", "route", "show", "default",
        ])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("dev lan0"));
    let missing = punchscope()
        .args(["lab", "exec", &name, "nobody", "--", "true"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no namespace for `nobody`"));

    // SAFETY: signalling the child we spawned, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.success(), "lab up exits 0 after SIGTERM: {status:?}");
    assert!(
        namespaces_of(&name).is_empty(),
        "left: {:?}",
        namespaces_of(&name)
    );
}

#[test]
fn lab_down_removes_what_a_killed_lab_left() {
    require_root();
    let name = unique_name("kil");
    let (mut child, _) = lab_up(&name);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(
        namespaces_of(&name).len(),
        4,
        "a killed lab leaves its namespaces"
    );
    let down = punchscope()
        .args(["lab", "down", "--name", &name])
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(namespaces_of(&name).is_empty());
}
