//! The PostgreSQL result store (`--db postgresql://...`), for campaigns that
//! outgrow one SQLite file: several collectors behind a load balancer, and
//! analysts querying live. Same guarantees as [`super::SqliteStore`].
//!
//! - Durability: `synchronous_commit = on` is set on the session, so a
//!   commit returns only after the WAL is flushed (on the primary); an upload
//!   is acknowledged only after its batch's commit returned.
//! - Idempotence: `run_id` is unique; a re-upload is `Duplicate` when its body
//!   is the same, `Conflict` when it differs, as with SQLite.
//! - Export order: a `BIGSERIAL` is handed out at insert but becomes visible
//!   at commit, so with two collectors a reader paging by `seq > after` could
//!   pass a smaller `seq` that commits later and never see it. Every insert
//!   batch therefore holds one transaction-scoped advisory lock: batches
//!   commit one at a time, in `seq` order, across all collectors. The cost
//!   is one lock per batch (group commit keeps batches large under load).
//! - Schema: versioned migrations in `punchscope_schema`, applied at open
//!   under the same kind of lock, so collectors starting together migrate once.
//!
//! The connection string never appears in errors or logs (it may hold a
//! password): errors name the server by host and database only.

use postgres::{Client, Config, NoTls};

use super::{Inserted, NewResult, ResultStore, StoreError, StoredRow};

/// Serializes insert batches (and migrations) across collectors: any fixed
/// number of our own, chosen once ("punchsc" in ASCII).
const ORDER_LOCK: i64 = 0x0070_756e_6368_7363;

/// Schema versions, applied in order; an applied version is never edited,
/// a change is a new entry.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE results (
        seq            BIGSERIAL PRIMARY KEY,
        run_id         TEXT NOT NULL UNIQUE,
        schema_version INTEGER NOT NULL,
        received_at    TEXT NOT NULL,
        source_net     TEXT NOT NULL,
        source_group   TEXT NOT NULL,
        body           TEXT NOT NULL
    );
    CREATE INDEX results_source_group ON results(source_group);",
)];

/// Results in a PostgreSQL database.
pub struct PostgresStore {
    client: Client,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStore")
    }
}

/// Whether `location` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

impl PostgresStore {
    /// Connects (without TLS: a Unix socket or a trusted local network; put
    /// a TLS tunnel in between otherwise), sets full durability and applies
    /// the migrations this version knows. The connection is made on a
    /// thread of its own, so this may be called from async code too (the
    /// client runs its own small runtime).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let config: Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Postgres {
                server: "(unparsable connection string)".into(),
                cause: e.to_string(),
            })?;
        let server = describe(&config);
        let fail = |cause: postgres::Error| StoreError::Postgres {
            server: server.clone(),
            cause: cause.to_string(),
        };
        let client = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Client, postgres::Error> {
                    let mut client = config.connect(NoTls)?;
                    client.batch_execute("SET synchronous_commit = on")?;
                    migrate(&mut client)?;
                    Ok(client)
                })
                .join()
                .expect("the connecting thread does not panic")
        })
        .map_err(fail)?;
        Ok(PostgresStore { client })
    }

    /// How many results are stored.
    pub fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one("SELECT COUNT(*) FROM results", &[])
            .map_err(StoreError::from_postgres)?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Host(s) and database of `config`: what an error may say about the server.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "{} database {}",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        config.get_dbname().unwrap_or("(default)")
    )
}

fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ORDER_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS punchscope_schema (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM punchscope_schema",
            &[],
        )?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO punchscope_schema (version) VALUES ($1)",
            &[version],
        )?;
    }
    tx.commit()
}

impl ResultStore for PostgresStore {
    fn insert_if_absent(&mut self, batch: &[NewResult]) -> Result<Vec<Inserted>, StoreError> {
        let run = |client: &mut Client| -> Result<Vec<Inserted>, postgres::Error> {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ORDER_LOCK])?;
            let insert = tx.prepare(
                "INSERT INTO results (run_id, schema_version, received_at, source_net, source_group, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING",
            )?;
            let stored_body = tx.prepare("SELECT body FROM results WHERE run_id = $1")?;
            let mut outcomes = Vec::with_capacity(batch.len());
            for r in batch {
                let version = i32::try_from(r.schema_version).unwrap_or(i32::MAX);
                let changed = tx.execute(
                    &insert,
                    &[
                        &r.run_id,
                        &version,
                        &r.received_at,
                        &r.source_net,
                        &r.source_group,
                        &r.body,
                    ],
                )?;
                outcomes.push(if changed == 1 {
                    Inserted::New
                } else {
                    let body: String = tx.query_one(&stored_body, &[&r.run_id])?.get(0);
                    if body == r.body {
                        Inserted::Duplicate
                    } else {
                        Inserted::Conflict
                    }
                });
            }
            tx.commit()?;
            Ok(outcomes)
        };
        run(&mut self.client).map_err(StoreError::from_postgres)
    }

    fn export(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                "SELECT seq, run_id, schema_version, received_at, source_net, source_group, body
                 FROM results WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .map_err(StoreError::from_postgres)?;
        Ok(rows
            .iter()
            .map(|r| StoredRow {
                seq: r.get(0),
                result: NewResult {
                    run_id: r.get(1),
                    schema_version: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                    received_at: r.get(3),
                    source_net: r.get(4),
                    source_group: r.get(5),
                    body: r.get(6),
                },
            })
            .collect())
    }
}
