//! A results collector on loopback for the collector, upload and report
//! tests and the collector benchmarks: served from a thread of the test
//! process ([`TestCollector`]) or run as a child process
//! ([`start_collector`]), the grouping key and export token they use, and
//! readers of the database it stored (SQLite or PostgreSQL: [`every_store`]
//! gives a test both).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use punchscope::collector::StoreLocation;
use punchscope::server::collector::{self, CollectorConfig};

use super::postgres::TestPostgres;
use super::process::ChildGuard;

/// The grouping key of [`TestCollector`]s (a child collector reads its key from a file).
pub const GROUPING_KEY: &[u8] = b"test grouping key, not secret at all";
/// A bearer token for `/v1/export`, when a test starts the collector with it.
pub const EXPORT_TOKEN: &str = "test-export-token-0123456789";

/// A collector served from a thread of this test process, on 127.0.0.1:0.
pub struct TestCollector {
    pub addr: SocketAddr,
    /// Where it stores (a SQLite file unless a test chose PostgreSQL).
    pub db: StoreLocation,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestCollector {
    /// A collector storing into `db`, answering `/v1/export` to `export_token` if given.
    pub fn start(db: impl Into<StoreLocation>, export_token: Option<&str>) -> Self {
        Self::start_with(db, export_token, |_| {})
    }

    /// As [`TestCollector::start`], with the configuration changed by `tweak` first.
    pub fn start_with(
        db: impl Into<StoreLocation>,
        export_token: Option<&str>,
        tweak: impl FnOnce(&mut CollectorConfig),
    ) -> Self {
        let mut config = CollectorConfig::new(GROUPING_KEY, export_token.map(str::to_string));
        tweak(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let db: StoreLocation = db.into();
        let location = db.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let store = location.open().unwrap();
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                collector::run(listener, config, store, shutdown)
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("collector started");
        TestCollector {
            addr,
            db,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The base URL a client is given.
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

/// A store for a test: a SQLite file in a temporary directory, or a fresh
/// PostgreSQL server; the files and the server go when it is dropped.
pub struct StoreUnderTest {
    pub location: StoreLocation,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
    _server: Option<TestPostgres>,
}

/// One store of each kind, for tests that must hold on both.
pub fn every_store() -> Vec<StoreUnderTest> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = StoreUnderTest {
        location: StoreLocation::Sqlite(dir.path().join("results.db")),
        name: "sqlite",
        _dir: Some(dir),
        _server: None,
    };
    let server = TestPostgres::start();
    let postgres = StoreUnderTest {
        location: StoreLocation::parse(&server.create_database("punchscope")),
        name: "postgresql",
        _dir: None,
        _server: Some(server),
    };
    vec![sqlite, postgres]
}

/// Runs `test` on a store of each kind (SQLite, then PostgreSQL), saying
/// on stderr which one runs so that a failure names its store.
pub fn on_every_store(test: impl Fn(&StoreLocation)) {
    for store in every_store() {
        eprintln!("--- on {}", store.name);
        test(&store.location);
    }
}

/// The text columns `columns` (comma-separated) of every stored result, in storage order.
pub fn db_rows(db: impl Into<StoreLocation>, columns: &str) -> Vec<Vec<String>> {
    let db: StoreLocation = db.into();
    let sql = format!("SELECT {columns} FROM results ORDER BY seq");
    let width = columns.split(',').count();
    match &db {
        StoreLocation::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut select = conn.prepare(&sql).unwrap();
            let rows = select
                .query_map([], |r| {
                    (0..width)
                        .map(|i| r.get::<_, String>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            rows.map(|r| r.unwrap()).collect()
        }
        StoreLocation::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client
                .query(&sql, &[])
                .unwrap()
                .iter()
                .map(|r| (0..width).map(|i| r.get::<_, String>(i)).collect())
                .collect()
        }
    }
}

/// Every text value of every row of the results table.
pub fn db_texts(db: impl Into<StoreLocation>) -> Vec<String> {
    db_rows(db, "run_id, received_at, source_net, source_group, body")
        .into_iter()
        .flatten()
        .collect()
}

/// Run ids stored in the database, with how many rows each has.
pub fn db_run_ids(db: impl Into<StoreLocation>) -> Vec<String> {
    db_rows(db, "run_id").into_iter().flatten().collect()
}

/// `punchscope serve collector` on 127.0.0.1:`port` as a child process,
/// its grouping key at `key` (apart from the database), once `/healthz` answers.
pub fn start_collector(port: u16, db: impl AsRef<std::ffi::OsStr>, key: &Path) -> ChildGuard {
    start_collector_with(port, db, key, &[])
}

/// As [`start_collector`], with more command-line arguments.
pub fn start_collector_with(
    port: u16,
    db: impl AsRef<std::ffi::OsStr>,
    key: &Path,
    extra: &[&str],
) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args(["serve", "collector", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db")
        .arg(db)
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(Some(child));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = agent
            .get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
        {
            if r.status() == 200 {
                return guard;
            }
        }
        assert!(
            guard.child().try_wait().unwrap().is_none(),
            "collector exited at start"
        );
        assert!(Instant::now() < deadline, "collector did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}
