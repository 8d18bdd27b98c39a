//! Interop with Bitcoin Core's Python P2P test framework (from the PyPI package `warnet`), v1 and v2, both roles.
//!
//! Needs `python3` with pip. On first use the tests install the pinned
//! framework (`.ci/python-requirements.txt`, without its dependencies: only
//! its data files are used) into a cache under `target/`, so
//! `cargo test` needs no set-up step; later runs reuse the cache. When it
//! cannot be installed, these tests fail (they never skip), saying why.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use punchscope::analysis::handshake::{BitcoinNetwork, HandshakeRecord, Transport};
use punchscope::btc::{self, message, Accept, HandshakeConfig};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};

/// The Python side's own deadline (seconds) and ours for the whole exchange.
const PYTHON_TIMEOUT_SECS: u64 = 20;
const OVERALL: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "Bitcoin Core's Python test framework is needed: the \
    tests install it into target/tmp on first use with `python3 -m pip install \
    --no-deps --target DIR -r .ci/python-requirements.txt`; if that cannot run \
    here, set PUNCHSCOPE_TEST_FRAMEWORK to a directory holding `test_framework`";

/// The directory holding the pinned framework package, installed on first
/// use. One test binary runs these tests, so a process-wide lock is enough
/// to keep two tests from installing at once; the final rename makes a
/// half-finished install invisible.
fn framework_dir() -> PathBuf {
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let requirements = root.join(".ci/python-requirements.txt");
            let pins = std::fs::read_to_string(&requirements).expect("the requirements file");
            let pin: String = pins
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("-")
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
            let dir =
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("interop-python-{pin}"));
            if dir
                .join("resources/scenarios/test_framework/p2p.py")
                .is_file()
            {
                return dir;
            }
            let staging = dir.with_extension(format!("partial{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            let output = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--no-deps"])
                .args(["--disable-pip-version-check", "--no-input", "--target"])
                .arg(&staging)
                .arg("-r")
                .arg(&requirements)
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|err| panic!("cannot run python3 -m pip ({err}). {INSTALL_HINT}"));
            assert!(
                output.status.success(),
                "installing the framework failed ({}): {}. {INSTALL_HINT}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&staging, &dir).expect("moving the installed framework into place");
            dir
        })
        .clone()
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn config(network: BitcoinNetwork) -> HandshakeConfig {
    HandshakeConfig {
        network,
        // The framework's pure-Python ECDH takes tens of milliseconds.
        step_timeout: Duration::from_secs(10),
        ..HandshakeConfig::default()
    }
}

/// A Python helper whose process is killed when this is dropped, even when
/// an assertion fails first (kill_on_drop).
struct Python {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    seen: HashMap<String, String>,
}

impl Python {
    fn spawn(script_name: &str, args: &[&str]) -> Python {
        let timeout = PYTHON_TIMEOUT_SECS.to_string();
        let mut child = Command::new("python3")
            .arg(script(script_name))
            .args(args)
            .args(["--timeout", &timeout])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONPATH", framework_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run python3 ({err}). {INSTALL_HINT}"));
        let stdout = child.stdout.take().expect("piped stdout");
        Python {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: HashMap::new(),
        }
    }

    /// Reads "KEY value" lines until `key` appears (or the script ends).
    async fn wait_for(&mut self, key: &str) -> String {
        loop {
            if let Some(value) = self.seen.get(key) {
                return value.clone();
            }
            let line = self
                .lines
                .next_line()
                .await
                .expect("reading the Python helper's output");
            let Some(line) = line else {
                let status = self.child.wait().await.expect("waiting for python3");
                if status.code() == Some(3) {
                    panic!(
                        "{INSTALL_HINT}; the helper said: {:?}",
                        self.seen.get("ERROR")
                    );
                }
                panic!(
                    "Python helper exited ({status}) before printing {key}; it printed {:?}",
                    self.seen
                );
            };
            if let Some((k, v)) = line.split_once(' ') {
                self.seen.insert(k.to_string(), v.to_string());
            }
        }
    }

    async fn finish(mut self) -> HashMap<String, String> {
        self.wait_for("DONE").await;
        let status = self.child.wait().await.expect("waiting for python3");
        assert!(status.success(), "Python helper failed: {status}");
        self.seen
    }
}

fn check_python_view(seen: &HashMap<String, String>, transport: Transport) {
    assert_eq!(seen["PEER_USER_AGENT"], message::user_agent());
    assert_eq!(seen["PEER_VERSION"], "70016");
    assert_eq!(seen["PEER_SERVICES"], "0");
    assert_eq!(seen["PEER_RELAY"], "0");
    assert_eq!(seen["TRANSPORT"], transport.to_string());
    // The framework answers our ping; it pings us only when asked to.
    assert!(seen.contains_key("PINGS_ANSWERED"));
}

fn check_our_record(
    record: &HandshakeRecord,
    transport: Transport,
    seen: &HashMap<String, String>,
) {
    assert!(record.success, "{record:?}");
    assert_eq!(record.transport, Some(transport));
    let peer = record.peer.as_ref().expect("peer version");
    assert_eq!(peer.user_agent, "/python-p2p-tester:0.0.3/");
    assert_eq!(peer.protocol_version, 70016);
    match transport {
        Transport::V1 => assert_eq!(record.session_id, None),
        Transport::V2 => {
            let theirs = &seen["SESSION_ID"];
            assert_eq!(record.session_id.as_ref(), Some(theirs));
        }
    }
}

async fn our_initiator_to_python_responder(transport: Transport, network: BitcoinNetwork) {
    let mut python = Python::spawn(
        "responder.py",
        &[
            "--transport",
            &transport.to_string(),
            "--network",
            network.as_str(),
        ],
    );
    let port: u16 = python.wait_for("PORT").await.parse().expect("port number");
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connecting to the Python responder");
    stream.set_nodelay(true).unwrap();
    let peer = stream.peer_addr().ok();
    let config = HandshakeConfig {
        peer_addr: peer,
        ..config(network)
    };
    let record = btc::initiate(stream, transport, &config).await.unwrap();
    let seen = python.finish().await;
    check_python_view(&seen, transport);
    check_our_record(&record, transport, &seen);
}

async fn python_initiator_to_our_responder(transport: Transport, network: BitcoinNetwork) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let python = Python::spawn(
        "initiator.py",
        &[
            "--transport",
            &transport.to_string(),
            "--network",
            network.as_str(),
            "--port",
            &port,
        ],
    );
    let (stream, peer) = tokio::time::timeout(OVERALL, listener.accept())
        .await
        .expect("the Python initiator did not connect")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let config = HandshakeConfig {
        peer_addr: Some(peer),
        ..config(network)
    };
    // Accept both, so the test also covers telling the transports apart.
    let record = btc::respond(stream, Accept::Both, &config).await.unwrap();
    let seen = python.finish().await;
    check_python_view(&seen, transport);
    check_our_record(&record, transport, &seen);
}

async fn bounded(case: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(OVERALL, case)
        .await
        .expect("interop case did not finish in time");
}

#[tokio::test]
async fn v1_our_initiator_to_framework_responder() {
    bounded(our_initiator_to_python_responder(
        Transport::V1,
        BitcoinNetwork::Regtest,
    ))
    .await;
}

#[tokio::test]
async fn v2_our_initiator_to_framework_responder() {
    bounded(our_initiator_to_python_responder(
        Transport::V2,
        BitcoinNetwork::Mainnet,
    ))
    .await;
}

#[tokio::test]
async fn v1_framework_initiator_to_our_responder() {
    bounded(python_initiator_to_our_responder(
        Transport::V1,
        BitcoinNetwork::Signet,
    ))
    .await;
}

#[tokio::test]
async fn v2_framework_initiator_to_our_responder() {
    bounded(python_initiator_to_our_responder(
        Transport::V2,
        BitcoinNetwork::Testnet4,
    ))
    .await;
}
