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
    /// Another punchscope sharing the spool is sending it right now (if that
    /// upload fails, the result stays in the spool).
    BeingSentByAnother,
    /// Another punchscope sharing the spool sent it: it left the spool, which
    /// a result does only once the collector has it.
    SentByAnother,
}

/// The spooled file and what became of its upload.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub spooled: PathBuf,
    pub upload: UploadStatus,
}

/// Writes `result` to the spool at `spool_dir`, then uploads what is pending
/// to `collector` (if any, trusting `ca_file`'s CAs besides the built-in
/// roots) and says what became of this result.
pub async fn spool_and_upload(
    result: &RunResult,
    spool_dir: &Path,
    collector: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Delivery, ProbeError> {
    let spool_error = |cause| ProbeError::Spool {
        dir: spool_dir.to_path_buf(),
        cause,
    };
    let spool = Spool::open(spool_dir).map_err(spool_error)?;
    let spooled = spool.store(result).map_err(spool_error)?;
    let ours = spool.clone();
    let Some(collector) = collector else {
        return Ok(Delivery {
            spooled,
            upload: UploadStatus::NoCollector,
        });
    };
    let collector = collector.to_string();
    let policy = UploadPolicy {
        ca_file: ca_file.map(Path::to_path_buf),
        ..UploadPolicy::default()
    };
    let report =
        tokio::task::spawn_blocking(move || upload::upload_pending(&spool, &collector, &policy))
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
            } else if report.taken_by_another.contains(&run_id) {
                taken_by_another(&ours, &spooled, &run_id)
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

/// What became of a result another uploader took from the spool.
fn taken_by_another(spool: &Spool, spooled: &Path, run_id: &str) -> UploadStatus {
    if spooled.exists() {
        UploadStatus::BeingSentByAnother
    } else if let Some(reason) = spool.rejection_of(run_id) {
        UploadStatus::Rejected { reason }
    } else {
        UploadStatus::SentByAnother
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_another_uploader_took_is_described_as_what_became_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = "8e3c0b52-3f7a-4c1e-9b7d-2a6f1e0c9d41";
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(
            taken_by_another(&spool, &file, id),
            UploadStatus::BeingSentByAnother
        );
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            taken_by_another(&spool, &file, id),
            UploadStatus::SentByAnother
        );
        std::fs::write(spool.rejected_dir().join(format!("{id}.json")), "{}").unwrap();
        std::fs::write(
            spool.rejected_dir().join(format!("{id}.json.reason.txt")),
            "HTTP 400: bad",
        )
        .unwrap();
        assert_eq!(
            taken_by_another(&spool, &file, id),
            UploadStatus::Rejected {
                reason: "HTTP 400: bad".into()
            }
        );
    }
}
