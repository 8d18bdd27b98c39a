//! The probe's local spool of results and their upload to a collector: nothing is lost when the collector is down.
//!
//! Every result is written to the spool directory before any upload
//! ([`Spool::store`]): one file per run, `<run id>.json`, written atomically
//! (temporary file, fsync, rename, fsync of the directory), sanitized and
//! checked for raw IP addresses first. [`upload_pending`] then sends each
//! pending file; a file leaves the spool only after the collector answered
//! with its documented JSON naming the file's run id (201 stored, 200
//! already stored). A result the collector rejects (400, 409, 413) is moved to `rejected/` next to a `.reason.txt` file saying why, never
//! deleted. Network errors, 408, 429 and 5xx are retried with exponential
//! backoff and jitter, a bounded number of times per invocation; when a file
//! exhausts them, the invocation stops and leaves the rest pending.
//!
//! Several probes may share one spool (the default one). Each file is
//! claimed before it is sent ([`Spool::claim`]: an exclusive lock on the
//! file, released by the kernel if the process dies), so no result is sent
//! twice at once, and an uploader says what really became of a file another
//! one took: still being sent by it, or gone from the spool (stored, or
//! moved to `rejected/`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use punchscope_analysis::privacy;
use punchscope_analysis::result::RunResult;
use rand::Rng;

use crate::collector::{ClientError, ClientOptions, CollectorClient, UploadAnswer};

/// Where results wait for upload.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// What went wrong with the spool itself (not with an upload).
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error("refusing to spool run {run_id}: field `{path}` still holds a raw IP address after sanitizing")]
    RawIp { run_id: String, path: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |cause| SpoolError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The spool directory used when none is given: `$XDG_STATE_HOME/punchscope/spool`,
/// else `~/.local/state/punchscope/spool`, else `./punchscope-spool`.
pub fn default_spool_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(state).join("punchscope/spool");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(home).join(".local/state/punchscope/spool");
    }
    PathBuf::from("punchscope-spool")
}

impl Spool {
    /// Opens the spool at `dir`, creating it (and `rejected/`) if needed.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        let rejected = dir.join("rejected");
        fs::create_dir_all(&rejected).map_err(io_err(&rejected))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where rejected results and their reasons go.
    pub fn rejected_dir(&self) -> PathBuf {
        self.dir.join("rejected")
    }

    /// Sanitizes a copy of `result`, checks it holds no raw IP address, and
    /// writes it durably as `<run id>.json`. Returns the file's path.
    pub fn store(&self, result: &RunResult) -> Result<PathBuf, SpoolError> {
        let mut clean = result.clone();
        clean.sanitize();
        let value = serde_json::to_value(&clean).expect("a RunResult serializes");
        if let Some(path) = privacy::find_raw_ip_in_json(&value) {
            return Err(SpoolError::RawIp {
                run_id: clean.run_id.to_string(),
                path,
            });
        }
        let name = format!("{}.json", clean.run_id);
        let mut text = clean.to_json();
        text.push('\n');
        write_atomically(&self.dir, &name, text.as_bytes())?;
        Ok(self.dir.join(name))
    }

    /// Results waiting for upload, in file name order.
    pub fn pending(&self) -> Result<Vec<PathBuf>, SpoolError> {
        list_json(&self.dir)
    }

    /// Results the collector rejected.
    pub fn rejected(&self) -> Result<Vec<PathBuf>, SpoolError> {
        list_json(&self.rejected_dir())
    }

    fn reject(&self, file: &Path, reason: &str) -> Result<PathBuf, SpoolError> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed.json".into());
        let dir = self.rejected_dir();
        write_atomically(&dir, &format!("{name}.reason.txt"), reason.as_bytes())?;
        let target = dir.join(&name);
        fs::rename(file, &target).map_err(io_err(file))?;
        sync_dir(&dir)?;
        sync_dir(&self.dir)?;
        Ok(target)
    }

    /// Claims `file` for upload: `Ok(None)` when another process holds it or
    /// it left the spool meanwhile. The claim ends when it is dropped.
    pub fn claim(&self, file: &Path) -> Result<Option<Claim>, SpoolError> {
        let handle = match File::open(file) {
            Ok(handle) => handle,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(cause) => return Err(io_err(file)(cause)),
        };
        if !lock::try_exclusive(&handle).map_err(io_err(file))? {
            return Ok(None);
        }
        // Another uploader may have finished with the file between our open
        // and our lock: then the path is gone, or names another file.
        if !lock::still_at(&handle, file) {
            return Ok(None);
        }
        Ok(Some(Claim { file: handle }))
    }

    /// Whether `run_id`'s result is in `rejected/` (moved there by whichever uploader sent it).
    pub fn rejection_of(&self, run_id: &str) -> Option<String> {
        let dir = self.rejected_dir();
        if !dir.join(format!("{run_id}.json")).exists() {
            return None;
        }
        Some(
            fs::read_to_string(dir.join(format!("{run_id}.json.reason.txt")))
                .unwrap_or_else(|_| "no reason recorded".to_string()),
        )
    }

    fn remove(&self, file: &Path) -> Result<(), SpoolError> {
        fs::remove_file(file).map_err(io_err(file))?;
        sync_dir(&self.dir)
    }
}

/// A spool file claimed for upload by this process; dropping it releases the claim.
#[derive(Debug)]
pub struct Claim {
    file: File,
}

impl Claim {
    /// The claimed result's text.
    pub fn read(&mut self) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        self.file.read_to_string(&mut text)?;
        Ok(text)
    }
}

/// Exclusive advisory locks on spool files (flock: per open file, released
/// when the file is closed or the process dies, so a crash leaves no claim).
#[cfg(unix)]
mod lock {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    pub fn try_exclusive(file: &File) -> io::Result<bool> {
        // SAFETY: flock on a file descriptor we own, for the call's duration.
        let done = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if done == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(error)
        }
    }

    pub fn still_at(file: &File, path: &Path) -> bool {
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(ours), Ok(there)) => ours.ino() == there.ino() && ours.dev() == there.dev(),
            _ => false,
        }
    }
}

/// Without flock, a claim only checks the file is still there.
#[cfg(not(unix))]
mod lock {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    pub fn try_exclusive(_file: &File) -> io::Result<bool> {
        Ok(true)
    }

    pub fn still_at(_file: &File, path: &Path) -> bool {
        path.exists()
    }
}

fn list_json(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".json") && !name.starts_with('.') && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Temporary file, fsync, rename over `name`, fsync of the directory: after
/// this returns, the file is complete on disk, and a crash at any point
/// leaves either the whole file or none (plus maybe a `.tmp` file).
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let target = dir.join(name);
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    };
    if let Err(cause) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Io {
            path: target,
            cause,
        });
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// How hard one invocation tries.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    /// Attempts per result (the first included) before the invocation gives up.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time, plus up to 50% jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Deadline of one HTTP request (connect, send, answer).
    pub request_timeout: Duration,
    /// A PEM file of CA certificates trusted besides the built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// What one invocation did, by run id (the spool file's name without `.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// Stored by the collector now (201).
    pub delivered: Vec<String>,
    /// The collector already had them (200): an earlier upload's answer was lost.
    pub already_stored: Vec<String>,
    /// Rejected (400, 409, 413) and moved to `rejected/`, with the collector's reason.
    pub rejected: Vec<(String, String)>,
    /// Still in the spool, for a later invocation.
    pub pending: Vec<String>,
    /// Taken by another uploader on this spool while this one ran: being
    /// sent by it, or already gone from the spool (stored, or in `rejected/`).
    pub taken_by_another: Vec<String>,
    /// Why the invocation stopped early, if it did.
    pub stopped_because: Option<String>,
}

/// Uploads every pending result of `spool` to the collector at `collector`
/// (`http://host:port`, the `/v1/results` path is added). See the module docs.
pub fn upload_pending(
    spool: &Spool,
    collector: &str,
    policy: &UploadPolicy,
) -> Result<UploadReport, SpoolError> {
    let client = CollectorClient::with_options(
        collector,
        &ClientOptions {
            timeout: policy.request_timeout,
            ca_file: policy.ca_file.clone(),
        },
    )?;
    let mut report = UploadReport::default();
    let files = spool.pending()?;
    let mut rng = rand::thread_rng();
    for (index, file) in files.iter().enumerate() {
        let run_id = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(mut claim) = spool.claim(file)? else {
            report.taken_by_another.push(run_id);
            continue;
        };
        let body = claim.read().map_err(|cause| SpoolError::Io {
            path: file.clone(),
            cause,
        })?;
        // The collector's answer must name the run the body holds.
        let body_run_id = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("run_id")
                    .and_then(|id| id.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| run_id.clone());
        let mut backoff = policy.initial_backoff;
        let mut attempt = 1;
        let outcome = loop {
            match client.upload(&body, &body_run_id, policy.request_timeout) {
                UploadAnswer::Retry(_) if attempt < policy.max_attempts.max(1) => {
                    let jitter = backoff.mul_f64(rng.gen_range(0.0..0.5));
                    std::thread::sleep(backoff + jitter);
                    backoff = (backoff * 2).min(policy.max_backoff);
                    attempt += 1;
                }
                UploadAnswer::Retry(why) => {
                    break UploadAnswer::Fatal(format!("gave up after {attempt} attempts: {why}"))
                }
                other => break other,
            }
        };
        match outcome {
            UploadAnswer::Stored => {
                spool.remove(file)?;
                report.delivered.push(run_id);
            }
            UploadAnswer::AlreadyStored => {
                spool.remove(file)?;
                report.already_stored.push(run_id);
            }
            UploadAnswer::Rejected(reason) => {
                spool.reject(file, &reason)?;
                report.rejected.push((run_id, reason));
            }
            UploadAnswer::Retry(why) | UploadAnswer::Fatal(why) => {
                report.stopped_because = Some(why);
                drop(claim);
                report.pending.extend(
                    files[index..]
                        .iter()
                        .filter(|f| f.exists())
                        .filter_map(|f| f.file_stem())
                        .map(|s| s.to_string_lossy().into_owned()),
                );
                break;
            }
        }
    }
    Ok(report)
}
