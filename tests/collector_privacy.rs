//! No raw IP address of any host reaches the collector's database or export, whatever the classification observed.

mod support;

use punchscope::analysis::privacy::find_raw_ip;
use punchscope::upload::{self, Spool, UploadPolicy};
use support::collector::*;
use support::http::*;
use support::results::*;

fn assert_clean(what: &str, text: &str) {
    if let Some(found) = find_raw_ip(text) {
        panic!("{what} holds a raw IP address ({}): {text}", found.ip);
    }
    for raw in RAW_ADDRESSES {
        assert!(!text.contains(raw), "{what} holds {raw}: {text}");
    }
}

#[test]
fn no_stored_row_and_no_exported_line_holds_a_raw_address() {
    on_every_store(|db| {
        let dir = tempfile::tempdir().unwrap();
        let collector = TestCollector::start(db, Some(EXPORT_TOKEN));
        // The raw classification really holds the addresses this test looks for.
        let raw = serde_json::to_string(&raw_classification(0)).unwrap();
        for address in [
            "192.168.1.2",
            "203.0.113.2",
            "198.51.100.1",
            "2001:db8:aa:bb::2",
        ] {
            assert!(raw.contains(address), "fixture lacks {address}");
        }

        // Through the probe's path: spool, then upload.
        let spool = Spool::open(&dir.path().join("spool")).unwrap();
        for i in 0..10 {
            spool.store(&sample_result(i, 20)).unwrap();
        }
        for file in spool.pending().unwrap() {
            assert_clean("a spool file", &std::fs::read_to_string(file).unwrap());
        }
        let report =
            upload::upload_pending(&spool, &collector.url(), &UploadPolicy::default()).unwrap();
        assert_eq!(report.delivered.len(), 10, "{report:?}");

        let texts = db_texts(db);
        assert_eq!(texts.len(), 10 * 5, "five text columns per stored row");
        for text in &texts {
            assert_clean("a database row", text);
        }
        let agent = agent();
        let (status, export) = get(
            &agent,
            &collector.url(),
            "/v1/results.jsonl",
            Some(EXPORT_TOKEN),
        );
        assert_eq!(status, 200);
        assert_eq!(export.lines().count(), 10);
        for line in export.lines() {
            assert_clean("an export line", line);
        }
        // Prefix and port are kept: sample i was observed at 203.0.113.2:(40007 + i).
        let mut ports: Vec<u64> = export
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let observed =
                    &v["result"]["classification"]["observations"]["mapping"][0]["observed"];
                assert_eq!(observed["net"], "203.0.113.0/24");
                observed["port"].as_u64().unwrap()
            })
            .collect();
        ports.sort();
        assert_eq!(ports, (40007..40017).collect::<Vec<u64>>());
        drop(collector);

        // The files themselves, WAL included: not even a deleted page holds an
        // address. (PostgreSQL's files belong to its server: rows and export only.)
        let Some(file) = db.sqlite_path() else {
            return;
        };
        for entry in std::fs::read_dir(file.parent().unwrap()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with("results.db") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for raw in RAW_ADDRESSES {
                assert!(
                    !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
                    "{name} holds {raw}"
                );
            }
        }
    });
}
