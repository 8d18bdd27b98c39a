//! One lab per name: a lock file held for the lab's lifetime tells a running lab from a stale one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where lab lock files live.
pub const LOCK_DIR: &str = "/run/punchscope/labs";

/// Held while a lab of this name runs; the kernel releases it if the process dies.
#[derive(Debug)]
pub struct LabLock {
    file: File,
    path: PathBuf,
}

/// Why a lab's lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("a lab named `{name}` is running (process {pid}); stop it (Ctrl-C) or choose another --name")]
    Busy { name: String, pid: String },
    #[error("cannot use lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LabLock {
    /// Takes the lock of lab `name` without waiting.
    pub fn acquire(name: &str) -> Result<Self, LockError> {
        let path = PathBuf::from(LOCK_DIR).join(format!("{name}.lock"));
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(LOCK_DIR).map_err(io_error)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Busy {
                name: name.to_string(),
                pid: if pid.trim().is_empty() {
                    "unknown".into()
                } else {
                    pid.trim().to_string()
                },
            });
        }
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        write!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(Self { file, path })
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock, so no one locks a file about to vanish.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}
