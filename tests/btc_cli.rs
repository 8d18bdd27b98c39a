//! `punchscope handshake` end to end on 127.0.0.1: records printed, exit codes 0 (success), 2 (measured failure), 1 (tool failure).

mod support;

use std::process::Stdio;
use std::time::Duration;

use punchscope::analysis::handshake::{FailureReason, HandshakeRecord, Role, Transport};
use support::sockets::free_port;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_punchscope");
const LIMIT: Duration = Duration::from_secs(30);

async fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(LIMIT, output)
        .await
        .expect("punchscope did not finish")
        .expect("running punchscope");
    let code = output.status.code().expect("exit code");
    (code, String::from_utf8(output.stdout).unwrap())
}

fn records(stdout: &str) -> Vec<HandshakeRecord> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON record per line"))
        .collect()
}

#[tokio::test]
async fn listener_and_initiator_report_records_and_exit_codes() {
    let mut listener = Command::new(BIN)
        .args([
            "handshake",
            "--listen",
            "127.0.0.1:0",
            "--count",
            "3",
            "--json",
            "--timeout",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = listener.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("listener did not start")
        .unwrap()
        .expect("a line on stderr");
    let addr = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();

    // Default: v2 first; the listener accepts both.
    let (code, out) = run(&["handshake", &addr, "--json", "--timeout", "5"]).await;
    assert_eq!(code, 0, "{out}");
    let got = records(&out);
    assert_eq!(got.len(), 1);
    assert!(got[0].success);
    assert_eq!(got[0].transport, Some(Transport::V2));
    assert!(got[0].session_id.is_some());

    let (code, out) = run(&["handshake", &addr, "--v1"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("v1 handshake with"), "{out}");
    assert!(out.contains(": ok"), "{out}");
    assert!(out.contains("/punchscope:"), "{out}");

    // Another network's magic makes the listener answer v2: a measured failure.
    let (code, out) = run(&[
        "handshake",
        &addr,
        "--v1",
        "--network",
        "regtest",
        "--json",
        "--timeout",
        "1",
    ])
    .await;
    assert_eq!(code, 2, "{out}");
    let got = records(&out);
    assert!(matches!(
        got[0].failure,
        Some(FailureReason::WrongMagic { .. })
    ));

    let status = tokio::time::timeout(LIMIT, listener.wait())
        .await
        .expect("listener did not exit after --count connections")
        .unwrap();
    let mut out = String::new();
    listener
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let got = records(&out);
    assert_eq!(got.len(), 3, "{out}");
    assert!(got.iter().all(|r| r.role == Role::Responder));
    assert!(got[0].success && got[1].success && !got[2].success);
    // One of its three handshakes failed.
    assert_eq!(status.code(), Some(2));
}

#[tokio::test]
async fn connection_refused_is_a_tool_failure() {
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let (code, out) = run(&["handshake", &target, "--timeout", "2"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty());
}

#[tokio::test]
async fn bad_arguments_are_rejected() {
    let (code, _) = run(&["handshake", "127.0.0.1:1", "--network", "testnet3"]).await;
    assert_ne!(code, 0);
    let (code, _) = run(&["handshake", "127.0.0.1:1", "--v1", "--v2"]).await;
    assert_ne!(code, 0);
}
