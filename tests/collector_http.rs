//! The collector over loopback HTTP: idempotent uploads, every kind of bad input, the authenticated export round trip.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use punchscope::analysis::result::{CollectedResult, RunResult};
use support::collector::*;
use support::http::*;
use support::results::*;

#[test]
fn duplicate_uploads_are_stored_once() {
    on_every_store(|db| {
        let collector = TestCollector::start(db, Some(EXPORT_TOKEN));
        let agent = agent();
        let result = sample_result(1, 20);
        let body = result.to_json();
        let (status, text) = post(&agent, &collector.url(), body.as_bytes());
        assert_eq!(status, 201, "{text}");
        assert!(text.contains(&result.run_id.to_string()), "{text}");
        for _ in 0..3 {
            let (status, text) = post(&agent, &collector.url(), body.as_bytes());
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("already_stored"), "{text}");
        }
        // The same run id with other content is a conflict: the first copy stays.
        let mut changed = result.clone();
        changed.tool_version = "9.9.9".into();
        let (status, text) = post(&agent, &collector.url(), changed.to_json().as_bytes());
        assert_eq!(status, 409, "{text}");
        assert!(
            error_message(&text).contains("already stored with other content"),
            "{text}"
        );
        let ids = db_run_ids(&collector.db);
        assert_eq!(ids, vec![result.run_id.to_string()]);
        let (status, export) = get(
            &agent,
            &collector.url(),
            "/v1/results.jsonl",
            Some(EXPORT_TOKEN),
        );
        assert_eq!(status, 200);
        assert_eq!(export.lines().count(), 1);
        let line: CollectedResult = serde_json::from_str(export.lines().next().unwrap()).unwrap();
        assert_eq!(line.result, result);
    });
}

#[test]
fn bad_uploads_get_400_or_413_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start_with(dir.path().join("r.db"), None, |c| {
        c.max_body_bytes = 256 * 1024;
    });
    let agent = agent();
    let url = collector.url();
    let good = serde_json::to_value(sample_result(2, 20)).unwrap();

    let (status, text) = post(&agent, &url, b"{\"schema_version\": 1, \"run_id\": ");
    assert_eq!(status, 400);
    assert!(error_message(&text).starts_with("not valid JSON"), "{text}");

    let (status, text) = post(&agent, &url, b"[1, 2, 3]");
    assert_eq!(status, 400);
    assert!(error_message(&text).contains("JSON object"), "{text}");

    let (status, text) = post(&agent, &url, &[0xff, 0xfe, 0x00, 0x01]);
    assert_eq!(status, 400);
    assert!(error_message(&text).contains("UTF-8"), "{text}");

    let mut wrong = good.clone();
    wrong["pairings"][0]["trials"][3]["outcome"] = serde_json::json!(17);
    let (status, text) = post(&agent, &url, wrong.to_string().as_bytes());
    assert_eq!(status, 400);
    assert!(
        error_message(&text).starts_with("field `pairings[0].trials[3].outcome`"),
        "{text}"
    );

    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("client");
    let (status, text) = post(&agent, &url, missing.to_string().as_bytes());
    assert_eq!(status, 400);
    assert!(error_message(&text).contains("client"), "{text}");

    let mut newer = good.clone();
    newer["schema_version"] = 7.into();
    let (status, text) = post(&agent, &url, newer.to_string().as_bytes());
    assert_eq!(status, 400);
    assert_eq!(
        error_message(&text),
        "result schema version 7 is newer than this punchscope understands (1); upgrade punchscope"
    );

    let mut leaky = good.clone();
    leaky["classification"]["observations"]["mapping"][0]["observed"]["net"] = "203.0.113.2".into();
    let (status, text) = post(&agent, &url, leaky.to_string().as_bytes());
    assert_eq!(status, 400);
    let message = error_message(&text);
    assert!(message.contains("full IP address"), "{text}");
    assert!(
        !message.contains("203.0.113.2"),
        "the error must not echo the address: {message}"
    );
    let mut leaky_v6 = good.clone();
    leaky_v6["client"]["network_label"] = "my box 2001:db8:aa:bb::2".into();
    assert_eq!(post(&agent, &url, leaky_v6.to_string().as_bytes()).0, 400);

    let mut huge = good.clone();
    huge["tool_version"] = "x".repeat(300 * 1024).into();
    let (status, text) = post(&agent, &url, huge.to_string().as_bytes());
    assert_eq!(status, 413);
    assert!(error_message(&text).contains("larger than"), "{text}");

    assert!(
        db_run_ids(&collector.db).is_empty(),
        "nothing invalid was stored"
    );
    let (status, _) = post(&agent, &url, good.to_string().as_bytes());
    assert_eq!(status, 201, "a valid result is still accepted");
}

#[test]
fn garbage_on_the_socket_does_not_hurt_the_collector() {
    let dir = tempfile::tempdir().unwrap();
    let collector = TestCollector::start(dir.path().join("r.db"), None);
    let garbage: [&[u8]; 4] = [
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"POST /v1/results HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /v1/results HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"sch",
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for bytes in garbage {
        let mut stream = std::net::TcpStream::connect(collector.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
    }
    let agent = agent();
    assert_eq!(
        get(&agent, &collector.url(), "/healthz", None),
        (200, "ok\n".to_string())
    );
    let (status, text) = get(&agent, &collector.url(), "/nowhere", None);
    assert_eq!(status, 404);
    assert!(error_message(&text).contains("POST /v1/results"));
}

#[test]
fn export_needs_the_token_and_returns_every_result_unchanged() {
    on_every_store(|db| {
        let collector = TestCollector::start_with(db, Some(EXPORT_TOKEN), |c| {
            // Small pages, so the export crosses several of them.
            c.export_page = 7;
        });
        let agent = agent();
        let url = collector.url();
        let results: Vec<RunResult> = (0..30).map(|i| sample_result(i, 20)).collect();
        for r in &results {
            assert_eq!(post(&agent, &url, r.to_json().as_bytes()).0, 201);
        }

        let (status, text) = get(&agent, &url, "/v1/results.jsonl", None);
        assert_eq!(status, 401, "{text}");
        let (status, text) = get(
            &agent,
            &url,
            "/v1/results.jsonl",
            Some("wrong-token-wrong-token"),
        );
        assert_eq!(status, 403, "{text}");

        let (status, export) = get(&agent, &url, "/v1/results.jsonl", Some(EXPORT_TOKEN));
        assert_eq!(status, 200);
        let lines: Vec<&str> = export.lines().collect();
        assert_eq!(lines.len(), results.len());
        let stored_bodies: Vec<String> = db_rows(&collector.db, "body").concat();
        for ((line, original), body) in lines.iter().zip(&results).zip(&stored_bodies) {
            let collected: CollectedResult = serde_json::from_str(line).unwrap();
            assert_eq!(
                &collected.result, original,
                "the export returns what was uploaded"
            );
            assert!(
                line.ends_with(&format!("\"result\":{body}}}")),
                "the stored body is exported byte for byte"
            );
            assert_eq!(collected.source_net, "127.0.0.0/24");
            assert_eq!(collected.source_group.len(), 64);
        }
        let groups: std::collections::HashSet<_> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<CollectedResult>(l)
                    .unwrap()
                    .source_group
            })
            .collect();
        assert_eq!(groups.len(), 1, "one uploader, one group");

        let disabled_dir = tempfile::tempdir().unwrap();
        let disabled = TestCollector::start(disabled_dir.path().join("r.db"), None);
        let (status, text) = get(
            &agent,
            &disabled.url(),
            "/v1/results.jsonl",
            Some(EXPORT_TOKEN),
        );
        assert_eq!(status, 403);
        assert!(error_message(&text).contains("disabled"), "{text}");
    });
}
