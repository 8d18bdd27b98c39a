//! The collector serving HTTPS itself (rustls) on loopback: the upload
//! client trusts a test CA given as a file, uploads through the spool,
//! reads the export, and `/metrics` counts what was stored and refused;
//! without the CA the client refuses the certificate and nothing leaves the spool.

mod support;

use std::time::Duration;

use punchscope::collector::{ClientOptions, CollectorClient, SqliteStore};
use punchscope::server::collector::{self, CollectorConfig};
use punchscope::server::tls::load_server_config;
use punchscope::upload::{self, Spool, UploadPolicy};
use support::results::sample_result;
use support::sockets::{connect_from, loopback};
use support::tls::make_test_ca;

/// The collector's `/metrics` at `url`, trusting the test CA.
fn metrics_text(ca: &support::tls::TestCa, url: &str) -> String {
    reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&ca.ca_pem).unwrap()).unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn uploads_and_the_export_go_over_https_with_a_test_ca_and_metrics_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_test_ca(dir.path(), &["127.0.0.1"]);
    let tls = load_server_config(&ca.cert_pem, &ca.key_pem).unwrap();
    let config = CollectorConfig::new(b"grouping key for the test, 32by", Some("tok-en".into()));
    let metrics = config.metrics.clone();
    let db = dir.path().join("results.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store = SqliteStore::open(&db).unwrap();
    let server = runtime.spawn(collector::run_tls(
        listener,
        tls,
        config,
        Box::new(store),
        async {
            let _ = stopped.await;
        },
    ));

    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let results: Vec<_> = (0..3).map(|i| sample_result(i, 2)).collect();
    for r in &results {
        spool.store(r).unwrap();
    }
    let quick = UploadPolicy {
        max_attempts: 1,
        request_timeout: Duration::from_secs(10),
        ..UploadPolicy::default()
    };
    // Without the test CA the certificate is not trusted: nothing leaves the spool.
    let report = upload::upload_pending(&spool, &url, &quick).unwrap();
    assert!(report.delivered.is_empty(), "{report:?}");
    let why = report.stopped_because.unwrap();
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    assert_eq!(spool.pending().unwrap().len(), 3);

    let trusted = UploadPolicy {
        ca_file: Some(ca.ca_pem.clone()),
        ..quick
    };
    let report = upload::upload_pending(&spool, &url, &trusted).unwrap();
    assert_eq!(report.delivered.len(), 3, "{report:?}");
    assert!(spool.pending().unwrap().is_empty());
    assert_eq!(metrics.stored(), 3);

    let client = CollectorClient::with_options(
        &url,
        &ClientOptions {
            timeout: Duration::from_secs(10),
            ca_file: Some(ca.ca_pem.clone()),
        },
    )
    .unwrap();
    let mut export = String::new();
    std::io::Read::read_to_string(&mut client.export("tok-en").unwrap(), &mut export).unwrap();
    assert_eq!(export.lines().count(), 3);
    let refused = client.upload("{\"not\":\"a result\"}", "x", Duration::from_secs(5));
    assert!(
        matches!(refused, punchscope::collector::UploadAnswer::Rejected(_)),
        "{refused:?}"
    );

    let text = metrics_text(&ca, &url);
    assert!(
        text.contains("punchscope_collector_results_stored_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("punchscope_collector_uploads_refused_total{reason=\"invalid\"} 1\n"),
        "{text}"
    );
    let _ = stop.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await })
        .expect("the collector stops")
        .unwrap()
        .unwrap();
}

/// The TLS listener goes through the same caps as plain HTTP: a source that
/// opens connections and never finishes a handshake is held to its
/// per-source cap (further connections are closed at once and counted),
/// while another source's HTTPS requests are served.
#[test]
fn over_tls_a_source_that_never_handshakes_is_held_to_its_connection_cap() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let ca = make_test_ca(dir.path(), &["127.0.0.1"]);
    let tls = load_server_config(&ca.cert_pem, &ca.key_pem).unwrap();
    let mut config = CollectorConfig::new(b"grouping key for the test, 32by", None);
    config.admission.connections_per_source = 2;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store = SqliteStore::open(&dir.path().join("results.db")).unwrap();
    let server = runtime.spawn(collector::run_tls(
        listener,
        tls,
        config,
        Box::new(store),
        async {
            let _ = stopped.await;
        },
    ));

    let silent = loopback(0, 0, 7);
    let held: Vec<_> = (0..2).map(|_| connect_from(silent, addr)).collect();
    let mut third = connect_from(silent, addr);
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = third.read(&mut byte);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the third connection is closed at once, not held: {read:?}"
    );

    let text = metrics_text(&ca, &format!("https://{addr}"));
    assert!(
        text.contains("punchscope_collector_connections_refused_total{reason=\"per_source\"} 1\n"),
        "{text}"
    );
    drop(held);
    let _ = stop.send(());
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), server).await })
        .expect("the collector stops")
        .unwrap()
        .unwrap();
}
