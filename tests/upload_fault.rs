//! Fault test: the collector is SIGKILLed while a real `punchscope upload` streams results to it; nothing acknowledged is lost, nothing unacknowledged leaves the spool, and each run is stored exactly once in the end.

mod support;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use punchscope::upload::Spool;
use support::collector::{db_run_ids, start_collector};
use support::process::ChildGuard;
use support::results::sample_result;
use support::sockets::free_port;

const RESULTS: usize = 300;

fn start_upload(spool: &Path, port: u16) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .arg("upload")
        .arg("--spool")
        .arg(spool)
        .arg("--collector")
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--max-attempts",
            "3",
            "--initial-backoff-ms",
            "50",
            "--timeout-secs",
            "10",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildGuard(Some(child))
}

fn output(guard: &mut ChildGuard) -> String {
    let mut text = String::new();
    guard
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn pending_ids(spool: &Spool) -> HashSet<String> {
    spool
        .pending()
        .unwrap()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_collector_killed_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("results.db");
    let spool_dir = dir.path().join("spool");
    let spool = Spool::open(&spool_dir).unwrap();
    let all: HashSet<String> = (0..RESULTS)
        .map(|i| {
            let r = sample_result(i, 20);
            spool.store(&r).unwrap();
            r.run_id.to_string()
        })
        .collect();
    assert_eq!(all.len(), RESULTS);

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("collector.key");
    let port = free_port();
    let mut collector = start_collector(port, &db, &key);
    let mut uploader = start_upload(&spool_dir, port);

    // Kill the collector once a good part, not all, has been delivered.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = spool.pending().unwrap().len();
        if left <= RESULTS - 60 {
            break;
        }
        assert!(
            uploader.child().try_wait().unwrap().is_none(),
            "upload ended before the kill"
        );
        assert!(Instant::now() < deadline, "upload too slow: {left} left");
        std::thread::sleep(Duration::from_millis(2));
    }
    collector.sigkill();

    let status = uploader.wait(Duration::from_secs(60));
    let printed = output(&mut uploader);
    assert_eq!(status.code(), Some(2), "results remain pending:\n{printed}");
    assert!(printed.contains("stopped early"), "{printed}");
    let acknowledged: HashSet<String> = printed
        .lines()
        .filter_map(|l| {
            l.strip_prefix("stored ")
                .or_else(|| l.strip_prefix("already stored "))
        })
        .map(|id| id.trim().to_string())
        .collect();

    let stored: Vec<String> = db_run_ids(&db);
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    let pending = pending_ids(&spool);
    assert!(
        !acknowledged.is_empty() && stored.len() < RESULTS,
        "the kill landed mid-stream: {} acknowledged, {} stored",
        acknowledged.len(),
        stored.len()
    );
    assert!(
        acknowledged.is_subset(&stored_set),
        "every acknowledged result is in the database"
    );
    let left_spool: HashSet<String> = all.difference(&pending).cloned().collect();
    assert_eq!(
        left_spool, acknowledged,
        "only acknowledged results left the spool"
    );
    assert!(
        all.difference(&stored_set).all(|id| pending.contains(id)),
        "every result not stored is still in the spool"
    );
    // At most the requests in flight at the kill can be stored but unacknowledged.
    assert!(stored_set.intersection(&pending).count() <= 1);

    // Restart on the same database and deliver the rest.
    let _collector = start_collector(port, &db, &key);
    let mut again = start_upload(&spool_dir, port);
    let status = again.wait(Duration::from_secs(120));
    let printed = output(&mut again);
    assert!(status.success(), "second upload failed:\n{printed}");
    assert!(spool.pending().unwrap().is_empty());
    assert!(spool.rejected().unwrap().is_empty());
    let stored = db_run_ids(&db);
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored.len(), RESULTS, "each run stored exactly once");
    assert_eq!(stored_set, all);
}
