//! The upload spool against a loopback collector: acknowledged results leave, rejected ones move aside with a reason, nothing is lost while the collector is down.

mod support;

use std::time::Duration;

use punchscope::upload::{self, Spool, UploadPolicy};
use support::collector::*;
use support::http::*;
use support::results::*;
use support::sockets::free_port;

fn quick() -> UploadPolicy {
    UploadPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        request_timeout: Duration::from_secs(10),
        ca_file: None,
    }
}

#[test]
fn results_wait_in_the_spool_until_the_collector_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let results: Vec<_> = (0..5).map(|i| sample_result(i, 20)).collect();
    for r in &results {
        let path = spool.store(r).unwrap();
        assert_eq!(
            path.file_name().unwrap().to_string_lossy(),
            format!("{}.json", r.run_id)
        );
    }
    assert_eq!(spool.pending().unwrap().len(), 5);
    assert!(
        std::fs::read_dir(spool.dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")),
        "no temporary file is left"
    );

    // Collector down: a closed port on loopback.
    let down = format!("http://127.0.0.1:{}", free_port());
    let report = upload::upload_pending(&spool, &down, &quick()).unwrap();
    assert!(report.delivered.is_empty());
    assert_eq!(report.pending.len(), 5, "{report:?}");
    assert!(report
        .stopped_because
        .unwrap()
        .contains("gave up after 3 attempts"));
    assert_eq!(spool.pending().unwrap().len(), 5, "nothing left the spool");

    // One result was already delivered by an earlier run whose answer got lost.
    let db = dir.path().join("results.db");
    let collector = TestCollector::start(&db, None);
    let agent = agent();
    assert_eq!(
        post(&agent, &collector.url(), results[0].to_json().as_bytes()).0,
        201
    );
    let report = upload::upload_pending(&spool, &collector.url(), &quick()).unwrap();
    assert_eq!(report.delivered.len(), 4, "{report:?}");
    assert_eq!(report.already_stored, vec![results[0].run_id.to_string()]);
    assert!(report.pending.is_empty() && report.rejected.is_empty());
    assert!(spool.pending().unwrap().is_empty());
    let mut stored = db_run_ids(&db);
    stored.sort();
    let mut expected: Vec<String> = results.iter().map(|r| r.run_id.to_string()).collect();
    expected.sort();
    assert_eq!(stored, expected);
}

#[test]
fn a_rejected_result_moves_to_rejected_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let good = sample_result(1, 20);
    spool.store(&good).unwrap();
    // A file the probe did not write through `store`: it leaks an address.
    let mut leaky = serde_json::to_value(sample_result(2, 20)).unwrap();
    leaky["client"]["network_label"] = "at 203.0.113.2".into();
    let leaky_id = leaky["run_id"].as_str().unwrap().to_string();
    std::fs::write(
        spool.dir().join(format!("{leaky_id}.json")),
        leaky.to_string(),
    )
    .unwrap();
    let newer_id = "00000000-0000-4000-8000-000000000000";
    std::fs::write(
        spool.dir().join(format!("{newer_id}.json")),
        r#"{"schema_version": 2, "run_id": "00000000-0000-4000-8000-000000000000"}"#,
    )
    .unwrap();

    let collector = TestCollector::start(dir.path().join("results.db"), None);
    let report = upload::upload_pending(&spool, &collector.url(), &quick()).unwrap();
    assert_eq!(report.delivered, vec![good.run_id.to_string()]);
    assert_eq!(report.rejected.len(), 2, "{report:?}");
    assert!(spool.pending().unwrap().is_empty());
    let rejected = spool.rejected().unwrap();
    assert_eq!(rejected.len(), 2);
    let reason = std::fs::read_to_string(
        spool
            .rejected_dir()
            .join(format!("{leaky_id}.json.reason.txt")),
    )
    .unwrap();
    assert!(
        reason.starts_with("HTTP 400: field `client.network_label` contains a full IP address"),
        "{reason}"
    );
    let reason = std::fs::read_to_string(
        spool
            .rejected_dir()
            .join(format!("{newer_id}.json.reason.txt")),
    )
    .unwrap();
    assert!(
        reason.contains("newer than this punchscope understands"),
        "{reason}"
    );
    // The rejected result itself is kept as it was.
    let kept =
        std::fs::read_to_string(spool.rejected_dir().join(format!("{leaky_id}.json"))).unwrap();
    assert_eq!(kept, leaky.to_string());
}

#[test]
fn the_spool_sanitizes_what_it_stores() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let mut result = sample_result(3, 2);
    // Added after construction, bypassing RunResult::new.
    result.pairings[0].trials[0].error = Some("bind 192.168.1.2:50000 failed".into());
    let path = spool.store(&result).unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.contains("192.168.1.2"));
    assert!(text.contains("bind 192.168.1.0/24:50000 failed"));
}

#[test]
fn a_result_another_uploader_holds_is_left_to_it_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let (first, second) = (sample_result(11, 2), sample_result(12, 2));
    let first_path = spool.store(&first).unwrap();
    spool.store(&second).unwrap();
    let collector = TestCollector::start(dir.path().join("results.db"), None);

    // Another probe sharing the spool is in the middle of sending `first`.
    let held = spool.claim(&first_path).unwrap().expect("free to claim");
    let report = upload::upload_pending(&spool, &collector.url(), &quick()).unwrap();
    assert_eq!(report.delivered, vec![second.run_id.to_string()]);
    assert_eq!(report.taken_by_another, vec![first.run_id.to_string()]);
    assert!(report.pending.is_empty(), "{report:?}");
    assert!(
        first_path.exists(),
        "the other uploader's file is untouched"
    );

    // Its upload failed and it let go: the next upload sends it.
    drop(held);
    let report = upload::upload_pending(&spool, &collector.url(), &quick()).unwrap();
    assert_eq!(report.delivered, vec![first.run_id.to_string()]);
    assert!(report.taken_by_another.is_empty());
    assert!(spool.pending().unwrap().is_empty());
    assert!(
        spool.claim(&first_path).unwrap().is_none(),
        "a file that left cannot be claimed"
    );
}

#[test]
fn two_uploaders_on_one_spool_send_each_result_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(&spool_dir).unwrap();
    let results: Vec<_> = (0..40).map(|i| sample_result(100 + i, 2)).collect();
    for r in &results {
        spool.store(r).unwrap();
    }
    let db = dir.path().join("results.db");
    let collector = TestCollector::start(&db, None);
    let url = collector.url();
    let uploaders: Vec<_> = (0..2)
        .map(|_| {
            let (spool_dir, url) = (spool_dir.clone(), url.clone());
            std::thread::spawn(move || {
                let spool = Spool::open(&spool_dir).unwrap();
                upload::upload_pending(&spool, &url, &quick()).expect("no spool error")
            })
        })
        .collect();
    let reports: Vec<_> = uploaders.into_iter().map(|u| u.join().unwrap()).collect();
    let mut delivered: Vec<String> = reports.iter().flat_map(|r| r.delivered.clone()).collect();
    delivered.sort();
    let mut expected: Vec<String> = results.iter().map(|r| r.run_id.to_string()).collect();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each result sent by exactly one uploader"
    );
    for report in &reports {
        assert!(
            report.already_stored.is_empty(),
            "nothing sent twice: {report:?}"
        );
        assert!(report.pending.is_empty() && report.rejected.is_empty());
        // Whatever one skipped, the other delivered.
        let other = reports.iter().find(|r| !std::ptr::eq(*r, report)).unwrap();
        for id in &report.taken_by_another {
            assert!(other.delivered.contains(id), "{id} skipped by both");
        }
    }
    assert!(spool.pending().unwrap().is_empty());
    assert_eq!(db_run_ids(&db).len(), 40);
}

#[test]
fn a_result_stays_in_the_spool_unless_the_collector_answers_its_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let result = sample_result(7, 2);
    spool.store(&result).unwrap();
    let other_run = "{\"status\":\"stored\",\"run_id\":\"8e3c0b52-3f7a-4c1e-9b7d-2a6f1e0c9d41\"}";
    let not_a_collector: [&'static str; 4] = [
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 20\r\nConnection: close\r\n\r\n<html>welcome</html>",
        Box::leak(
            format!(
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{other_run}",
                other_run.len()
            )
            .into_boxed_str(),
        ),
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/v1/results\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    ];
    for response in not_a_collector {
        let server = CannedHttp::start(response);
        let report = upload::upload_pending(&spool, &server.url(), &quick()).unwrap();
        assert!(report.delivered.is_empty() && report.already_stored.is_empty());
        assert_eq!(
            report.pending,
            vec![result.run_id.to_string()],
            "{response}"
        );
        assert!(report.stopped_because.is_some(), "{response}");
        assert_eq!(
            spool.pending().unwrap().len(),
            1,
            "still spooled after {response}"
        );
    }

    // A 409 (this run id stored with other content) is a rejection with the collector's reason.
    let server = CannedHttp::start(
        "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{\"error\":\"stored with other content xx\"}",
    );
    let report = upload::upload_pending(&spool, &server.url(), &quick()).unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(report.rejected[0]
        .1
        .contains("HTTP 409: stored with other content"));
    assert!(spool.pending().unwrap().is_empty());
    assert_eq!(spool.rejected().unwrap().len(), 1);
}
