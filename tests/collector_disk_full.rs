//! A collector whose disk fills up (its database on a 1 MiB tmpfs): uploads are answered 507 with Retry-After, the spool keeps every result not stored, and the collector keeps serving. Needs root (mount), as CI runs it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use punchscope::upload::{self, Spool, UploadPolicy};
use support::collector::*;
use support::http::*;
use support::results::*;
use support::sockets::loopback;

/// A small tmpfs mounted for the test, unmounted however the test ends.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path, size: &str) -> SmallTmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("punchscope-test")
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallTmpfs(dir.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_answered_507_and_the_spool_keeps_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let tmpfs = SmallTmpfs::mount(&small, "1m");
    let db = small.join("results.db");
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    // About 3 MB of results for a 1 MiB disk.
    for i in 0..180 {
        spool.store(&sample_result(i, 20)).unwrap();
    }
    {
        let collector = TestCollector::start(&db, None);
        let policy = UploadPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            request_timeout: Duration::from_secs(10),
            ca_file: None,
        };
        let report = upload::upload_pending(&spool, &collector.url(), &policy).unwrap();
        let stored = db_run_ids(&collector.db);
        assert!(!stored.is_empty(), "some results fit");
        assert_eq!(report.delivered.len(), stored.len(), "{report:?}");
        assert!(!report.pending.is_empty(), "the disk filled before the end");
        assert_eq!(spool.pending().unwrap().len(), 180 - stored.len());
        assert!(spool.rejected().unwrap().is_empty(), "nothing rejected");

        // The answer itself, and the collector still serving.
        let pending = std::fs::read(&spool.pending().unwrap()[0]).unwrap();
        let (status, head, text) = post_from(loopback(0, 0, 1), collector.addr, &pending);
        assert_eq!(status, 507, "{head}{text}");
        assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
        assert!(error_message(&text).contains("storage is full"), "{text}");
        assert_eq!(
            get(&agent(), &collector.url(), "/healthz", None),
            (200, "ok\n".to_string())
        );
        eprintln!(
            "1 MiB disk: {} results stored, {} kept in the spool",
            stored.len(),
            report.pending.len()
        );
    }
    drop(tmpfs);
}
