//! Helpers shared by the collector and upload tests (and the ingest benchmark): realistic run results, an in-process collector on 127.0.0.1:0, HTTP calls.

#![allow(dead_code)]

pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use punchscope::analysis::classify::{
    Classification, DialKind, DialObservation, DialOutcome, FilteringObservation,
    HairpinObservation, Observations, Probe,
};
use punchscope::analysis::handshake::{
    BitcoinNetwork, HandshakeRecord, PeerVersion, Role, Transport,
};
use punchscope::analysis::plan::Plan;
use punchscope::analysis::result::{ClientInfo, Pairing, RunResult};
use punchscope::analysis::trial::{
    Attempt, AttemptResult, Completion, Strategy, TrialOutcome, TrialRecord,
};
use punchscope::collector::SqliteStore;
use punchscope::server::collector::{self, CollectorConfig};

/// Addresses that appear in the raw observations and must never be stored.
pub const RAW_ADDRESSES: &[&str] = &[
    "192.168.1.2",
    "203.0.113.2",
    "198.51.100.1",
    "198.51.100.2",
    "2001:db8:aa:bb::2",
    "127.0.0.1",
];

pub const GROUPING_KEY: &[u8] = b"test grouping key, not secret at all";
pub const EXPORT_TOKEN: &str = "test-export-token-0123456789";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A classification as the classifier makes it: full LAN and public addresses.
pub fn raw_classification(seed: usize) -> Classification {
    let port = 40000 + u16::try_from(seed % 20000).unwrap();
    let local = format!("192.168.1.2:{port}");
    let public = format!("203.0.113.2:{}", port + 7);
    let probe = |server: &str| Probe {
        local: sa(&local),
        server: sa(server),
        observed: Some(sa(&public)),
        rtt_ms: Some(23.25 + seed as f64 / 8.0),
        error: None,
    };
    let observations = Observations {
        mapping: vec![
            probe("198.51.100.1:3478"),
            probe("198.51.100.1:3479"),
            probe("198.51.100.2:3478"),
        ],
        allocation: (0..4)
            .map(|i| Probe {
                local: sa(&format!("192.168.1.2:{}", 41000 + i)),
                server: sa("198.51.100.1:3478"),
                observed: Some(sa(&format!("203.0.113.2:{}", 41000 + i))),
                rtt_ms: Some(22.0),
                error: None,
            })
            .chain(std::iter::once(Probe {
                local: sa("[2001:db8:aa:bb::2]:41010"),
                server: sa("[2001:db8:ff::1]:3478"),
                observed: None,
                rtt_ms: None,
                error: Some("connect to [2001:db8:ff::1]:3478 from 192.168.1.2 timed out".into()),
            }))
            .collect(),
        filtering: Some(FilteringObservation {
            probe: probe("198.51.100.1:3478"),
            dials: vec![
                DialObservation {
                    kind: DialKind::OtherPort,
                    from: Some(sa("198.51.100.1:3479")),
                    server_outcome: Some(DialOutcome::Connected),
                    received: true,
                },
                DialObservation {
                    kind: DialKind::OtherIp,
                    from: Some(sa("198.51.100.2:3478")),
                    server_outcome: Some(DialOutcome::Timeout),
                    received: false,
                },
            ],
            error: None,
        }),
        hairpin: Some(HairpinObservation {
            target: sa(&public),
            reached_listener: false,
            error: Some(format!("connect to {public} refused")),
        }),
    };
    Classification::new(
        vec![
            sa("198.51.100.1:3478"),
            sa("198.51.100.1:3479"),
            sa("198.51.100.2:3478"),
        ],
        observations,
    )
}

fn trial(n: u32, plan: &Plan, connected: bool) -> TrialRecord {
    let strategy = plan.strategy_of(n);
    let transport = plan.transport_of(n);
    let handshake = connected.then(|| {
        let mut h = HandshakeRecord::new(Some(transport), Role::Initiator, BitcoinNetwork::Mainnet);
        h.success = true;
        h.durations.version_ms = Some(101.5);
        h.durations.verack_ms = Some(50.25);
        h.durations.ping_ms = Some(50.125);
        if transport == Transport::V2 {
            h.durations.v2_key_exchange_ms = Some(151.0);
            h.session_id = Some(format!("{:064x}", u64::from(n) * 7919));
        }
        h.bytes_sent = 310;
        h.bytes_received = 322;
        h.peer = Some(PeerVersion {
            user_agent: "/punchscope:0.1.0/".into(),
            protocol_version: 70016,
            services: 1033,
            start_height: 0,
            relay: false,
        });
        h
    });
    TrialRecord {
        trial: n,
        trial_id: None,
        strategy,
        role: Role::Initiator,
        local_port: 50000 + u16::try_from(n).unwrap(),
        public_port: Some(60000 + u16::try_from(n).unwrap()),
        peer_port: Some(61000 + u16::try_from(n).unwrap()),
        outcome: if connected {
            TrialOutcome::Connected
        } else {
            TrialOutcome::Refused
        },
        attempts: vec![
            Attempt {
                started_ms: 0.0,
                duration_ms: 101.0 + f64::from(n) / 3.0,
                result: AttemptResult::Refused,
            },
            Attempt {
                started_ms: 512.5,
                duration_ms: 203.0,
                result: if connected {
                    AttemptResult::Connected
                } else {
                    AttemptResult::Error {
                        detail: "connect to 203.0.113.2:61000 failed: Connection refused".into(),
                    }
                },
            },
        ],
        go_to_established_ms: connected.then_some(715.5),
        completed_by: connected.then_some(if strategy == Strategy::ConnectListen {
            Completion::Listener
        } else {
            Completion::Connect
        }),
        nonce_verified: connected,
        start_delay_ms: 25.0,
        injected_skew_ms: 0.0,
        peer_outcome: Some(if connected {
            TrialOutcome::Connected
        } else {
            TrialOutcome::Timeout
        }),
        handshake,
        error: None,
    }
}

/// A realistic result: one pairing of `trials` trials (about 2 in 3
/// connect), raw addresses in the classification and in error texts, made
/// with `RunResult::new` (so sanitized, as a probe makes it).
pub fn sample_result(seed: usize, trials: u32) -> RunResult {
    let plan = Plan::from_toml(include_str!("../../probes/default.toml")).unwrap();
    let classification = raw_classification(seed);
    let started: chrono::DateTime<chrono::Utc> = "2026-05-01T10:00:00.250Z".parse().unwrap();
    let ended = started + chrono::Duration::milliseconds(90_000 + seed as i64);
    RunResult::new(
        "0.1.0",
        started,
        ended,
        ClientInfo::this_machine(Some("home-fibre".into())),
        &classification,
        vec![Pairing {
            peer_verdict: Some(raw_classification(seed + 1).verdict),
            role: Role::Initiator,
            plan: plan.clone(),
            trials: (0..trials).map(|n| trial(n, &plan, n % 3 != 2)).collect(),
            ended: punchscope::analysis::result::PairingEnded::Done,
            coordinator_violation: None,
        }],
    )
}

/// A collector served from a thread of this test process, on 127.0.0.1:0.
pub struct TestCollector {
    pub addr: SocketAddr,
    pub db: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestCollector {
    pub fn start(db: &Path, export_token: Option<&str>) -> Self {
        Self::start_with(db, export_token, |_| {})
    }

    pub fn start_with(
        db: &Path,
        export_token: Option<&str>,
        tweak: impl FnOnce(&mut CollectorConfig),
    ) -> Self {
        let mut config = CollectorConfig::new(GROUPING_KEY, export_token.map(str::to_string));
        tweak(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let db_path = db.to_path_buf();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let store = SqliteStore::open(&db_path).unwrap();
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                collector::run(listener, config, Box::new(store), shutdown)
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("collector started");
        TestCollector {
            addr,
            db: db.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// POSTs `body` to /v1/results: (status, body text).
pub fn post(agent: &ureq::Agent, base: &str, body: &[u8]) -> (u16, String) {
    answer(
        agent
            .post(&format!("{base}/v1/results"))
            .set("Content-Type", "application/json")
            .send_bytes(body),
    )
}

/// GETs `path` with an optional bearer token: (status, body text).
pub fn get(agent: &ureq::Agent, base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = agent.get(&format!("{base}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    answer(request.call())
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}

/// The `error` field of a JSON error answer.
pub fn error_message(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("error answers are JSON ({e}): {body}"));
    value["error"].as_str().expect("an error field").to_string()
}

/// Every text value of every row of the results table.
pub fn db_texts(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut select = conn
        .prepare("SELECT run_id, received_at, source_net, source_group, body FROM results")
        .unwrap();
    let rows = select
        .query_map([], |r| {
            (0..5)
                .map(|i| r.get::<_, String>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    rows.flat_map(|r| r.unwrap()).collect()
}

/// Run ids stored in the database, with how many rows each has.
pub fn db_run_ids(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut select = conn.prepare("SELECT run_id FROM results").unwrap();
    let rows = select.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// An HTTP server on 127.0.0.1:0 that answers every request with one canned
/// response (status line, headers and body as given): what a misconfigured
/// proxy or a wrong URL answers instead of a collector.
pub struct CannedHttp {
    pub addr: SocketAddr,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CannedHttp {
    pub fn start(response: &'static str) -> CannedHttp {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        CannedHttp { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A blocking TCP connection to `to` from the loopback address `from`, so
/// one test plays many sources (127.0.0.0/8 is all ours).
pub fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket
        .connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    socket.into()
}

/// One HTTP/1.1 exchange over a fresh connection from `from`: (status,
/// headers, body). `request` is sent as given; the answer is read to EOF.
pub fn raw_exchange(
    from: std::net::IpAddr,
    to: SocketAddr,
    request: &[u8],
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = connect_from(from, to);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse_answer(&answer)
}

/// (status, headers, body) of an HTTP answer; status 0 when there is none.
pub fn parse_answer(answer: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// POSTs `body` to /v1/results from `from` over a fresh connection: (status, headers, body).
pub fn post_from(from: std::net::IpAddr, to: SocketAddr, body: &[u8]) -> (u16, String, String) {
    let mut request = format!(
        "POST /v1/results HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_exchange(from, to, &request)
}

/// The loopback address 127.`a`.`b`.`c`: one source per address.
pub fn loopback(a: u8, b: u8, c: u8) -> std::net::IpAddr {
    std::net::IpAddr::from([127, a, b, c])
}
