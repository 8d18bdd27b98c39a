//! The results collector's storage and its client: the [`ResultStore`] trait,
//! its SQLite ([`sqlite`], the embedded default) and PostgreSQL
//! ([`postgresql`], for large campaigns) implementations, source grouping
//! keys, and [`client`] (the HTTP client every uploader and reader of a
//! collector uses).
//!
//! The HTTP side is [`crate::server::collector`]. Storage sits behind a small
//! synchronous trait; the server runs every store call on one dedicated
//! thread and answers an upload only after the store reported it durably
//! committed.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub mod client;
pub mod postgresql;
pub mod sqlite;

pub use client::{ClientError, ClientOptions, CollectorClient, UploadAnswer};

pub use postgresql::{is_postgres_url, PostgresStore};
pub use sqlite::SqliteStore;

/// Where results are stored: a SQLite file (the default) or a PostgreSQL
/// database (`postgres://` or `postgresql://` connection strings).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// The connection string; it may hold a password, so it is never shown.
    Postgres(String),
}

impl StoreLocation {
    /// Reads a `--db` value or a campaign file's `database`.
    pub fn parse(location: &str) -> StoreLocation {
        if is_postgres_url(location) {
            StoreLocation::Postgres(location.to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(location))
        }
    }

    /// Opens (creating if needed) the store.
    pub fn open(&self) -> Result<Box<dyn ResultStore>, StoreError> {
        Ok(match self {
            StoreLocation::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            StoreLocation::Postgres(url) => Box::new(PostgresStore::open(url)?),
        })
    }

    /// The SQLite file, if that is where results go.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Postgres(_) => None,
        }
    }
}

impl From<&Path> for StoreLocation {
    fn from(path: &Path) -> StoreLocation {
        StoreLocation::Sqlite(path.to_path_buf())
    }
}

impl From<&StoreLocation> for StoreLocation {
    fn from(location: &StoreLocation) -> StoreLocation {
        location.clone()
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(path: &PathBuf) -> StoreLocation {
        StoreLocation::Sqlite(path.clone())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(path: PathBuf) -> StoreLocation {
        StoreLocation::Sqlite(path)
    }
}

/// Shows a path, or `PostgreSQL` without the connection string.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(_) => f.write_str("PostgreSQL (connection string not shown)"),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreLocation({self})")
    }
}

/// One accepted result, ready to store. Holds no raw IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewResult {
    pub run_id: String,
    pub schema_version: u32,
    /// When the collector received it (RFC 3339, UTC).
    pub received_at: String,
    /// The uploader's network prefix (IPv4 /24, IPv6 /32).
    pub source_net: String,
    /// HMAC-SHA256 of the uploader's address under the collector's key, hex.
    pub source_group: String,
    /// The result as one line of JSON.
    pub body: String,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now.
    New,
    /// The same result (byte for byte, as re-serialized) was already
    /// stored; nothing changed.
    Duplicate,
    /// Another result with this run id is stored; nothing changed.
    Conflict,
}

/// One stored result, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Storage order, increasing; export pages continue after the last one seen.
    pub seq: i64,
    pub result: NewResult,
}

/// What the store could not do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the results database {path}: {cause}")]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("cannot create the results database {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("results database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server (named by host and database: the connection
    /// string may hold a password) could not be reached or set up.
    #[error("cannot use the PostgreSQL results database on {server}: {cause}")]
    Postgres { server: String, cause: String },
    #[error("PostgreSQL results database error: {0}")]
    PostgresQuery(String),
    /// The disk (or the database's quota) is full: nothing was stored.
    #[error("the results database is full: {0}")]
    DiskFull(String),
    /// A batch commit failed; each upload of the batch gets this copy.
    #[error("{0}")]
    Batch(String),
    #[error("the storage thread has stopped")]
    Stopped,
}

impl StoreError {
    /// Whether storing failed for lack of space (answered 507, not 503).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Sqlite(e) | StoreError::Open { cause: e, .. } => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            StoreError::Create { cause, .. } => cause.raw_os_error() == Some(libc::ENOSPC),
            StoreError::Postgres { .. }
            | StoreError::PostgresQuery(_)
            | StoreError::Batch(_)
            | StoreError::Stopped => false,
        }
    }

    /// A PostgreSQL error: `disk_full` (SQLSTATE 53100) as [`StoreError::DiskFull`].
    pub fn from_postgres(cause: ::postgres::Error) -> StoreError {
        if cause.code() == Some(&::postgres::error::SqlState::DISK_FULL) {
            StoreError::DiskFull(cause.to_string())
        } else {
            StoreError::PostgresQuery(cause.to_string())
        }
    }

    /// A copy for each upload of a failed batch, keeping whether the disk was full.
    pub fn for_each_upload(&self) -> StoreError {
        if self.is_disk_full() {
            StoreError::DiskFull(self.to_string())
        } else {
            StoreError::Batch(self.to_string())
        }
    }
}

/// Where results are kept. Calls are synchronous and may block: the server
/// makes them from one dedicated thread, never from the async executor.
pub trait ResultStore: Send + 'static {
    /// Stores each result whose run id is not stored yet, all in one durable
    /// commit: when this returns `Ok`, every `New` result survives a crash or
    /// power loss. A run id already stored is `Duplicate` when its body is
    /// the same and `Conflict` when it differs (earlier entries of the same
    /// batch count as stored). One entry per input, in order.
    fn insert_if_absent(&mut self, batch: &[NewResult]) -> Result<Vec<Inserted>, StoreError>;

    /// Up to `limit` stored results with `seq > after`, in storage order.
    fn export(&mut self, after: i64, limit: usize) -> Result<Vec<StoredRow>, StoreError>;
}

/// Computes the grouping of an uploader's address: its prefix and a keyed
/// hash, so runs from one network can be grouped and no address is stored.
#[derive(Clone)]
pub struct SourceTagger {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SourceTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceTagger(<secret key>)")
    }
}

impl SourceTagger {
    pub fn new(key: &[u8]) -> Self {
        SourceTagger {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    /// (network prefix, hex HMAC-SHA256 of the address's canonical text).
    pub fn tag(&self, ip: IpAddr) -> (String, String) {
        let ip = ip.to_canonical();
        let mut mac = self.mac.clone();
        mac.update(ip.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        (punchscope_analysis::privacy::prefix_of(ip), hex)
    }
}

/// Problems with the collector's secret files.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot create {path}: {cause}")]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} holds {len} characters; a secret needs at least 16 (e.g. `openssl rand -hex 32 > {path}`)")]
    TooShort { path: PathBuf, len: usize },
    #[error("the grouping key {key} is inside the database's directory {db_dir}: one copy of that directory (a backup) would hold both the key and the prefixes, enough to recover addresses; keep the key elsewhere (--key-file) or pass --allow-key-beside-db")]
    KeyBesideDatabase { key: PathBuf, db_dir: PathBuf },
    #[error(
        "no place for the grouping key: neither XDG_CONFIG_HOME nor HOME is set; pass --key-file"
    )]
    NoKeyHome,
}

/// Where the grouping key lives unless told otherwise: the user's
/// configuration directory (`$XDG_CONFIG_HOME/punchscope/collector.key`,
/// else `~/.config/punchscope/collector.key`), apart from any database.
/// A service without a home directory uses `/var/lib/punchscope/collector.key`.
pub fn default_key_path() -> PathBuf {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let config = non_empty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".config")));
    match config {
        Some(config) => config.join("punchscope").join("collector.key"),
        None => PathBuf::from("/var/lib/punchscope/collector.key"),
    }
}

/// Refuses a key file inside the database's directory (or below it): a
/// copy of that directory would carry the key with the data it protects.
pub fn check_key_apart(db: &Path, key: &Path) -> Result<(), SecretError> {
    let dir_of = |path: &Path| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        resolved(&parent)
    };
    let db_dir = dir_of(db);
    if dir_of(key).starts_with(&db_dir) {
        return Err(SecretError::KeyBesideDatabase {
            key: key.to_path_buf(),
            db_dir,
        });
    }
    Ok(())
}

/// `path` made absolute, with symbolic links resolved as far as it exists.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Whether a file can be read by anyone but its owner (mode bits 077).
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Reads a secret (a key or a token) from a file: its text without the
/// surrounding whitespace, at least 16 characters.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|cause| SecretError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        return Err(SecretError::TooShort {
            path: path.to_path_buf(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// Reads the grouping key, creating a random one (64 hex characters, mode
/// 0600, in a directory created 0700 if missing) when the file does not
/// exist yet. The same key must be kept for a whole campaign, or groups split.
pub fn load_or_create_key(path: &Path) -> Result<String, SecretError> {
    if path.exists() {
        return read_secret(path);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|cause| SecretError::Create {
            path: dir.to_path_buf(),
            cause,
        })?;
    }
    let key: [u8; 32] = rand::random();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let create = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(hex.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    };
    create().map_err(|cause| SecretError::Create {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_tags_group_by_address_and_depend_on_the_key() {
        let a = SourceTagger::new(b"key one key one key one");
        let b = SourceTagger::new(b"key two key two key two");
        let ip: IpAddr = "203.0.113.2".parse().unwrap();
        let (net, group) = a.tag(ip);
        assert_eq!(net, "203.0.113.0/24");
        assert_eq!(group.len(), 64);
        assert!(!group.contains("203"), "{group}");
        assert_eq!(a.tag(ip).1, group, "same address, same group");
        assert_ne!(a.tag("203.0.113.3".parse().unwrap()).1, group);
        assert_ne!(b.tag(ip).1, group, "another key, another group");
        let mapped: IpAddr = "::ffff:203.0.113.2".parse().unwrap();
        assert_eq!(a.tag(mapped), (net, group));
    }

    #[test]
    fn a_key_inside_the_database_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        let db = data.join("results.db");
        assert!(matches!(
            check_key_apart(&db, &data.join("results.db.key")),
            Err(SecretError::KeyBesideDatabase { .. })
        ));
        assert!(
            check_key_apart(&db, &data.join("sub/new-dir/k")).is_err(),
            "below it too, even where nothing exists yet"
        );
        assert!(check_key_apart(&db, &secrets.join("collector.key")).is_ok());
        assert!(check_key_apart(&data.join("sub/r.db"), &data.join("k")).is_ok());
    }

    #[test]
    fn a_missing_key_file_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/collector.key");
        let first = load_or_create_key(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert!(!readable_by_others(&path));
        assert!(!readable_by_others(path.parent().unwrap()));
        assert_eq!(load_or_create_key(&path).unwrap(), first);
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        assert!(matches!(
            read_secret(&dir.path().join("short")),
            Err(SecretError::TooShort { len: 3, .. })
        ));
    }
}
