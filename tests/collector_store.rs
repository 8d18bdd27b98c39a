//! The result stores themselves, SQLite and PostgreSQL alike: one batch's
//! outcomes (new, duplicate, conflict), data kept across a reopen, export
//! pages; PostgreSQL with two collectors writing at once (no loss, export
//! order strictly increasing, migrations applied once), `serve collector
//! --db postgresql://...` end to end, and no password in its errors.

mod support;

use std::time::Duration;

use punchscope::collector::{Inserted, NewResult, PostgresStore, StoreLocation};
use punchscope::upload::{self, Spool, UploadPolicy};
use support::collector::*;
use support::postgres::TestPostgres;
use support::results::sample_result;

fn row(run_id: &str, body: &str) -> NewResult {
    NewResult {
        run_id: run_id.into(),
        schema_version: 1,
        received_at: "2026-05-01T10:00:00.000Z".into(),
        source_net: "203.0.113.0/24".into(),
        source_group: "ab".repeat(32),
        body: body.into(),
    }
}

#[test]
fn both_stores_keep_one_result_per_run_id_across_a_reopen_and_export_in_pages() {
    on_every_store(|db| {
        {
            let mut store = db.open().unwrap();
            let got = store
                .insert_if_absent(&[
                    row("a", "{}"),
                    row("b", "{\"x\":1}"),
                    row("a", "other"),
                    row("a", "{}"),
                ])
                .unwrap();
            assert_eq!(
                got,
                [
                    Inserted::New,
                    Inserted::New,
                    Inserted::Conflict,
                    Inserted::Duplicate
                ]
            );
        }
        // Opened again (a restarted collector): the data is there, the schema is not re-made.
        let mut store = db.open().unwrap();
        assert_eq!(
            store
                .insert_if_absent(&[row("b", "y"), row("b", "{\"x\":1}"), row("c", "[]")])
                .unwrap(),
            [Inserted::Conflict, Inserted::Duplicate, Inserted::New]
        );
        let first = store.export(0, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = store.export(first[1].seq, 10).unwrap();
        let ids: Vec<&str> = first
            .iter()
            .chain(&rest)
            .map(|r| r.result.run_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(
            rest[0].result,
            row("c", "[]"),
            "every column comes back as stored"
        );
        assert!(store.export(rest[0].seq, 10).unwrap().is_empty());
    });
}

#[test]
fn two_collectors_on_one_postgresql_lose_nothing_and_export_in_commit_order() {
    let server = TestPostgres::start();
    let url = server.create_database("campaign");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut store = PostgresStore::open(&url).unwrap();
                for batch in 0..20 {
                    let rows: Vec<NewResult> = (0..10)
                        .map(|i| row(&format!("w{w}-b{batch}-{i}"), "{}"))
                        .collect();
                    let got =
                        punchscope::collector::ResultStore::insert_if_absent(&mut store, &rows)
                            .unwrap();
                    assert!(got.iter().all(|g| *g == Inserted::New));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut reader = PostgresStore::open(&url).unwrap();
    assert_eq!(reader.count().unwrap(), 800);
    let mut after = 0;
    let mut seen = 0;
    loop {
        let page = punchscope::collector::ResultStore::export(&mut reader, after, 64).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.windows(2).all(|p| p[0].seq < p[1].seq));
        assert!(page[0].seq > after);
        after = last.seq;
        seen += page.len();
    }
    assert_eq!(seen, 800);
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: i64 = admin
        .query_one("SELECT COUNT(*) FROM punchscope_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 1, "five opens, one migration");
}

#[test]
fn serve_collector_stores_into_postgresql_and_never_shows_the_password() {
    let server = TestPostgres::start();
    let url = server.create_database("served");
    let dir = tempfile::tempdir().unwrap();
    let port = support::sockets::free_port();
    let _collector = start_collector(port, &url, &dir.path().join("collector.key"));
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    for i in 0..3 {
        spool.store(&sample_result(i, 5)).unwrap();
    }
    let policy = UploadPolicy {
        request_timeout: Duration::from_secs(10),
        ..UploadPolicy::default()
    };
    let report =
        upload::upload_pending(&spool, &format!("http://127.0.0.1:{port}"), &policy).unwrap();
    assert_eq!(report.delivered.len(), 3, "{report:?}");
    let mut stored = db_run_ids(StoreLocation::parse(&url));
    stored.sort();
    let mut sent: Vec<String> = report.delivered.iter().map(|d| d.to_string()).collect();
    sent.sort();
    assert_eq!(stored, sent);

    // A database that is not there: a clear error naming the server, not the password.
    let wrong = format!(
        "postgresql://postgres:s3cret-pw@/missing?host={}",
        dir.path().display()
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args([
            "serve",
            "collector",
            "--listen",
            "127.0.0.1:0",
            "--db",
            &wrong,
        ])
        .arg("--key-file")
        .arg(dir.path().join("collector.key"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(stderr.contains("missing"), "names the database: {stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
