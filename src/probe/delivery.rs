//! A result's way out: written to the spool first (so nothing is lost), then
//! uploaded with everything else pending when a collector is known.

use std::path::{Path, PathBuf};

use punchscope_analysis::result::RunResult;

use super::ProbeError;
use crate::upload::{self, Spool, UploadPolicy};

/// What became of one result's upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStatus {
    /// No collector was given: the result waits in the spool.
    NoCollector,
    /// The collector has it (stored now, or already had it).
    Stored,
    /// The collector refused it; it was moved to the spool's `rejected/` with the reason.
    Rejected { reason: String },
    /// Still in the spool, for `punchscope upload` later.
    Pending { reason: String },
}

/// The spooled file and what became of its upload.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub spooled: PathBuf,
    pub upload: UploadStatus,
}

/// Writes `result` to the spool at `spool_dir`, then uploads what is pending
/// to `collector` (if any) and says what became of this result.
pub async fn spool_and_upload(
    result: &RunResult,
    spool_dir: &Path,
    collector: Option<&str>,
) -> Result<Delivery, ProbeError> {
    let spool_error = |cause| ProbeError::Spool {
        dir: spool_dir.to_path_buf(),
        cause,
    };
    let spool = Spool::open(spool_dir).map_err(spool_error)?;
    let spooled = spool.store(result).map_err(spool_error)?;
    let Some(collector) = collector else {
        return Ok(Delivery {
            spooled,
            upload: UploadStatus::NoCollector,
        });
    };
    let collector = collector.to_string();
    let report = tokio::task::spawn_blocking(move || {
        upload::upload_pending(&spool, &collector, &UploadPolicy::default())
    })
    .await
    .map_err(|e| ProbeError::UploadTask(e.to_string()))?;
    let run_id = result.run_id.to_string();
    let upload = match report {
        Err(e) => UploadStatus::Pending {
            reason: e.to_string(),
        },
        Ok(report) => {
            if report.delivered.contains(&run_id) || report.already_stored.contains(&run_id) {
                UploadStatus::Stored
            } else if let Some((_, reason)) = report.rejected.iter().find(|(id, _)| *id == run_id) {
                UploadStatus::Rejected {
                    reason: reason.clone(),
                }
            } else {
                UploadStatus::Pending {
                    reason: report
                        .stopped_because
                        .unwrap_or_else(|| "not sent in this run".to_string()),
                }
            }
        }
    };
    Ok(Delivery { spooled, upload })
}
