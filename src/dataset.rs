//! `punchscope dataset publish`'s one library call: read results (files, directories, releases or a collector, through [`crate::report`]) and write a dataset release with the analysis crate's [`release`](punchscope_analysis::release) module.

use std::path::{Path, PathBuf};

use punchscope_analysis::release::{self, Collection, Release, ReleaseError, ReleaseOptions};
use punchscope_analysis::report::input::{RELEASE_CHECKSUMS, RELEASE_RESULTS};
use punchscope_analysis::report::ReportConfig;

use crate::report::{input_label, read_inputs, ReportOptions, ReportRunError};

/// What to publish and where.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Where the results come from (paths, releases, collector URLs), and
    /// the collector's token and timeout; its `out` is the release directory.
    pub source: ReportOptions,
    pub campaign: String,
    pub config: ReportConfig,
    /// Replace an earlier release in `out` (only its own files are removed).
    pub replace: bool,
}

/// Why no release was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Read(#[from] ReportRunError),
    #[error("{0} is not empty and holds no release: choose an empty or new directory")]
    NotEmpty(PathBuf),
    #[error("{0} already holds a release: pass --replace to write over it")]
    ReleaseExists(PathBuf),
    #[error("removing the earlier release's {path}: {cause}")]
    Remove {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the campaign name {0:?} must be 1 to 100 letters, digits, '.', '-' or '_'")]
    CampaignName(String),
    #[error("writing the release: {0}")]
    Write(#[from] ReleaseError),
}

/// A campaign name goes into the README as is: keep it a plain word.
fn check_campaign(name: &str) -> Result<(), PublishError> {
    let plain = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if plain {
        Ok(())
    } else {
        Err(PublishError::CampaignName(name.to_string()))
    }
}

/// Makes `dir` ready: absent or empty; an earlier release only with `replace`
/// (then its files, as its SHA256SUMS lists them, are removed first).
fn prepare(dir: &Path, replace: bool) -> Result<(), PublishError> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if entries.next().is_none() {
        return Ok(());
    }
    if !punchscope_analysis::report::input::is_release(dir) {
        return Err(PublishError::NotEmpty(dir.to_path_buf()));
    }
    if !replace {
        return Err(PublishError::ReleaseExists(dir.to_path_buf()));
    }
    let sums = std::fs::read_to_string(dir.join(RELEASE_CHECKSUMS)).unwrap_or_default();
    let listed = sums
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(_, name)| name.to_string()));
    for name in listed.chain([RELEASE_CHECKSUMS.to_string(), RELEASE_RESULTS.to_string()]) {
        // Only plain relative names a release writes; never anything outside it.
        if name.contains("..") || name.starts_with('/') {
            continue;
        }
        let path = dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(cause) => return Err(PublishError::Remove { path, cause }),
        }
    }
    Ok(())
}

/// Reads every input and writes the release into `options.source.out`.
pub fn publish(options: &PublishOptions) -> Result<Release, PublishError> {
    check_campaign(&options.campaign)?;
    let dir = &options.source.out;
    prepare(dir, options.replace)?;
    let mut collection = Collection::default();
    read_inputs(&options.source, &mut collection)?;
    let release_options = ReleaseOptions {
        campaign: options.campaign.clone(),
        inputs: options
            .source
            .inputs
            .iter()
            .map(|i| input_label(i))
            .collect(),
        config: options.config,
    };
    Ok(release::write_release(collection, &release_options, dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_names_are_plain_words() {
        assert!(check_campaign("lab-campaign-2026-11-21").is_ok());
        assert!(check_campaign("").is_err());
        assert!(check_campaign("a b").is_err());
        assert!(
            check_campaign("lab.2026-11_a").is_ok(),
            "dots, dashes and underscores are fine"
        );
        assert!(check_campaign("../x").is_err(), "no slash");
        assert!(check_campaign("x`y").is_err());
    }
}
