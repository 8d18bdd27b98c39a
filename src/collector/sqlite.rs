//! The embedded SQLite result store: WAL mode, `synchronous=FULL`, one row per run id.
//!
//! Durability: in WAL mode with `synchronous=FULL` every commit fsyncs the
//! write-ahead log before it returns, so a result acknowledged after
//! [`ResultStore::insert_if_absent`] survives a crash of the process and a
//! power loss. (`synchronous=NORMAL` would only fsync at checkpoints: safe
//! against a crashed process, not against a crashed machine, which is why it
//! is not used.) The cost of one fsync per commit is shared by every result
//! of a batch: the server hands over everything queued at once.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Inserted, NewResult, ResultStore, StoreError, StoredRow};

/// Results in one SQLite file.
pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS results (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         TEXT NOT NULL UNIQUE,
    schema_version INTEGER NOT NULL,
    received_at    TEXT NOT NULL,
    source_net     TEXT NOT NULL,
    source_group   TEXT NOT NULL,
    body           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_source_group ON results(source_group);
";

impl SqliteStore {
    /// Opens (or creates, mode 0600) the database at `path` in WAL mode with
    /// full sync. SQLite gives its WAL and shared-memory files the database
    /// file's mode, so they are private too.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path).map_err(|cause| StoreError::Create {
            path: path.to_path_buf(),
            cause,
        })?;
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "journal_mode is {mode}, WAL is needed (is the file on a network filesystem?)"
                )));
            }
            conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open().map_err(|cause| StoreError::Open {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(SqliteStore { conn })
    }

    /// How many results are stored.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM results", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The stored body of one run, if any.
    pub fn get(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT body FROM results WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// Creates an empty file readable by its owner only, unless it exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

impl ResultStore for SqliteStore {
    fn insert_if_absent(&mut self, batch: &[NewResult]) -> Result<Vec<Inserted>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO results (run_id, schema_version, received_at, source_net, source_group, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(run_id) DO NOTHING",
            )?;
            let mut stored_body =
                tx.prepare_cached("SELECT body FROM results WHERE run_id = ?1")?;
            for r in batch {
                let changed = insert.execute(params![
                    r.run_id,
                    r.schema_version,
                    r.received_at,
                    r.source_net,
                    r.source_group,
                    r.body
                ])?;
                let outcome = if changed == 1 {
                    Inserted::New
                } else {
                    let body: String = stored_body.query_row([&r.run_id], |row| row.get(0))?;
                    if body == r.body {
                        Inserted::Duplicate
                    } else {
                        Inserted::Conflict
                    }
                };
                outcomes.push(outcome);
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn export(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRow>, StoreError> {
        let mut select = self.conn.prepare_cached(
            "SELECT seq, run_id, schema_version, received_at, source_net, source_group, body
             FROM results WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = select.query_map(params![after, limit], |r| {
            Ok(StoredRow {
                seq: r.get(0)?,
                result: NewResult {
                    run_id: r.get(1)?,
                    schema_version: r.get(2)?,
                    received_at: r.get(3)?,
                    source_net: r.get(4)?,
                    source_group: r.get(5)?,
                    body: r.get(6)?,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run_id: &str, body: &str) -> NewResult {
        NewResult {
            run_id: run_id.into(),
            schema_version: 1,
            received_at: "2026-05-01T10:00:00Z".into(),
            source_net: "203.0.113.0/24".into(),
            source_group: "ab".repeat(32),
            body: body.into(),
        }
    }

    /// What only SQLite has: its file modes and pragmas. Run-id semantics and
    /// export pages are checked on both stores in tests/collector_store.rs.
    #[test]
    fn the_database_is_private_in_wal_mode_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let got = store.insert_if_absent(&[row("a", "{}")]).unwrap();
        assert_eq!(got, [Inserted::New]);
        assert_eq!(store.count().unwrap(), 1);
        assert_eq!(store.get("a").unwrap().as_deref(), Some("{}"));
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        #[cfg(unix)]
        for file in ["results.db", "results.db-wal"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is private");
        }
    }
}
