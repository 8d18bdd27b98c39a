//! The collector under the attacks of issue 16, on loopback with bounded sizes: slow clients, connection floods, per-source limits, adversarial bodies, long error messages.
//!
//! Each test plays many sources from 127.0.0.0/8. They check behaviour
//! (answered, stored, refused with the right status); how fast is measured
//! by `cargo bench --bench collector_validation` and the load suite
//! (docs/reliability.md), not asserted here.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::collector::*;
use support::http::*;
use support::results::*;
use support::sockets::{connect_from, loopback};

/// Whether the server still holds `stream` open: nothing to read, no EOF.
fn held_open(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let held = matches!(stream.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    held
}

/// Reads what the server sends until it closes, at most `limit`: (answer, closed).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut answer = Vec::new();
    let closed = stream.read_to_end(&mut answer).is_ok();
    (answer, closed)
}

#[test]
fn healthz_answers_and_an_upload_is_stored_while_1000_slow_clients_are_held() {
    punchscope::net::socket::raise_fd_limit().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        // Long enough that every slow client is still held when we look.
        c.header_timeout = Duration::from_secs(60);
        c.body_idle_timeout = Duration::from_secs(60);
        c.request_timeout = Duration::from_secs(60);
    });
    // 500 clients stuck in their headers and 500 that sent headers and one
    // byte of body: 256 of the latter used to fill the request limit that
    // also covered /healthz. 20 per source, from 50 sources.
    let mut slow = Vec::new();
    for i in 0..1000u32 {
        let source = loopback(1, (i / 20 / 250) as u8, (i / 20 % 250 + 1) as u8);
        let mut stream = connect_from(source, collector.addr);
        let bytes: &[u8] = if i % 2 == 0 {
            b"POST /v1/results HTTP/1.1\r\nHost: collector\r\nContent-Le"
        } else {
            b"POST /v1/results HTTP/1.1\r\nHost: collector\r\nContent-Length: 100000\r\n\r\n{"
        };
        stream.write_all(bytes).unwrap();
        slow.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));

    let agent = agent();
    let started = Instant::now();
    assert_eq!(
        get(&agent, &collector.url(), "/healthz", None),
        (200, "ok\n".to_string())
    );
    let healthz = started.elapsed();
    let result = sample_result(7, 20);
    let started = Instant::now();
    let (status, text) = post(&agent, &collector.url(), result.to_json().as_bytes());
    let upload = started.elapsed();
    assert_eq!(status, 201, "{text}");
    assert_eq!(db_run_ids(&collector.db), vec![result.run_id.to_string()]);
    let held = slow.iter_mut().map(held_open).filter(|h| *h).count();
    assert_eq!(held, 1000, "every slow client is still held");
    eprintln!(
        "with 1000 slow clients held: /healthz in {healthz:?}, an upload stored in {upload:?}"
    );
}

#[test]
fn slow_headers_and_idle_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        c.header_timeout = Duration::from_millis(300);
        c.body_idle_timeout = Duration::from_millis(300);
    });
    let mut headers = connect_from(loopback(2, 0, 1), collector.addr);
    headers
        .write_all(b"POST /v1/results HTTP/1.1\r\nHo")
        .unwrap();
    let (_, closed) = read_until_closed(&mut headers, Duration::from_secs(10));
    assert!(closed, "a client that never ends its headers is closed");

    let mut idle = TcpStream::connect(collector.addr).unwrap();
    // A kept-alive connection that sends no request is closed too.
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(10));
    assert!(closed, "an idle connection is closed");

    let mut body = connect_from(loopback(2, 0, 2), collector.addr);
    body.write_all(
        b"POST /v1/results HTTP/1.1\r\nHost: collector\r\nContent-Length: 5000\r\n\r\n{\"sch",
    )
    .unwrap();
    let (answer, _) = read_until_closed(&mut body, Duration::from_secs(10));
    let (status, _, text) = parse_answer(&answer);
    assert_eq!(status, 408, "{text}");
    assert!(error_message(&text).contains("paused"), "{text}");
}

#[test]
fn connections_over_the_caps_get_429_per_source_and_503_overall() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        c.max_connections = 10;
        c.admission.connections_per_source = 4;
    });
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(loopback(3, 0, 1), collector.addr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, head, text) = raw_exchange(
        loopback(3, 0, 1),
        collector.addr,
        b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n",
    );
    assert_eq!(status, 429, "{head}{text}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    assert!(error_message(&text).contains("too many connections from your network"));

    for i in 0..6 {
        held.push(connect_from(loopback(3, 1, i + 1), collector.addr));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, text) = raw_exchange(
        loopback(3, 2, 1),
        collector.addr,
        b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n",
    );
    assert_eq!(status, 503, "{text}");
    assert!(error_message(&text).contains("too many connections"));

    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, text) = raw_exchange(
        loopback(3, 0, 1),
        collector.addr,
        b"GET /healthz HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        (status, text.as_str()),
        (200, "ok\n"),
        "places are given back"
    );
}

#[test]
fn uploads_over_the_rate_or_the_storage_quota_get_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let body_len = sample_result(0, 20).to_json().len();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        c.admission.uploads_burst = 3;
        c.admission.upload_refill = Duration::from_secs(60);
        c.admission.storage_burst_bytes = u32::try_from(body_len * 5 / 2).unwrap();
    });
    let addr = collector.addr;

    // Rate: the fourth upload of one source within the minute waits.
    let rated = loopback(4, 0, 1);
    let first = sample_result(1, 20).to_json();
    assert_eq!(post_from(rated, addr, first.as_bytes()).0, 201);
    assert_eq!(post_from(rated, addr, first.as_bytes()).0, 200);
    assert_eq!(post_from(rated, addr, first.as_bytes()).0, 200);
    let (status, head, text) = post_from(rated, addr, first.as_bytes());
    assert_eq!(status, 429, "{text}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 60"),
        "{head}"
    );
    assert!(error_message(&text).contains("too many uploads"), "{text}");
    assert!(!text.contains("127.4"), "no address in the answer: {text}");

    // Storage: two results fit the quota, the third does not; duplicates cost nothing.
    let quota = loopback(4, 0, 2);
    for seed in [2, 3] {
        let body = sample_result(seed, 20).to_json();
        assert_eq!(post_from(quota, addr, body.as_bytes()).0, 201);
    }
    let (status, head, text) = post_from(quota, addr, sample_result(4, 20).to_json().as_bytes());
    assert_eq!(status, 429, "{text}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    assert!(error_message(&text).contains("storage quota"), "{text}");
    let other = loopback(4, 0, 3);
    assert_eq!(
        post_from(other, addr, sample_result(4, 20).to_json().as_bytes()).0,
        201,
        "another source has its own quota"
    );
    assert_eq!(db_run_ids(&collector.db).len(), 4);
}

#[test]
fn adversarial_2_mib_bodies_are_refused_while_healthz_answers() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(dir.path().join("r.db"), None);
    let addr = collector.addr;
    // The worst case for the old quadratic scan: address-like
    // tokens filling a string up to the size limit.
    let mut value = serde_json::to_value(sample_result(1, 1)).unwrap();
    let room = punchscope::analysis::result::MAX_RESULT_BYTES - value.to_string().len() - 64;
    value["tool_version"] = "1::1 ".repeat(room / 5).into();
    let body = value.to_string();
    assert!(body.len() > 2_000_000);
    let uploads: Vec<_> = (0..4u8)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || post_from(loopback(5, 0, i + 1), addr, body.as_bytes()))
        })
        .collect();
    let agent = agent();
    let mut answered = 0;
    while uploads.iter().any(|u| !u.is_finished()) {
        assert_eq!(get(&agent, &collector.url(), "/healthz", None).0, 200);
        answered += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    for upload in uploads {
        let (status, _, text) = upload.join().unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(error_message(&text).contains("full IP address"), "{text}");
    }
    assert!(answered > 0);
    assert!(db_run_ids(&collector.db).is_empty());
}

#[test]
fn error_answers_stay_short_and_the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(dir.path().join("r.db"), Some(EXPORT_TOKEN));
    let agent = agent();
    // A raw address under a key of 100 KB: the error names the field's path.
    let mut value = serde_json::to_value(sample_result(1, 2)).unwrap();
    value["client"]
        .as_object_mut()
        .unwrap()
        .insert("k".repeat(100_000), "203.0.113.9".into());
    let (status, text) = post(&agent, &collector.url(), value.to_string().as_bytes());
    assert_eq!(status, 400, "{}", &text[..text.len().min(300)]);
    let message = error_message(&text);
    assert!(
        message.len() <= punchscope::server::collector::MAX_ERROR_MESSAGE_BYTES,
        "{} bytes",
        message.len()
    );
    assert!(message.ends_with("..."), "{message}");

    assert_eq!(
        post(
            &agent,
            &collector.url(),
            sample_result(2, 2).to_json().as_bytes()
        )
        .0,
        201
    );
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let answer = agent
            .get(&format!("{}/v1/results.jsonl", collector.url()))
            .set("Authorization", &format!("{scheme} {EXPORT_TOKEN}"))
            .call()
            .unwrap();
        assert_eq!(answer.status(), 200, "{scheme}");
        assert_eq!(answer.into_string().unwrap().lines().count(), 1);
    }
}
