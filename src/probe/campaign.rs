//! Joining a campaign with one flag: ask the coordinator which campaign it
//! runs (before consent, before anything is measured), check what it says
//! as untrusted input, and merge it with the volunteer's explicit flags.

use std::time::Duration;

use super::volunteer::resolve;
use super::ProbeError;
use crate::net::address::AddressPolicy;
use crate::net::host_port::with_default_port;
use crate::proto::rendezvous::{CampaignInfo, ErrorCode, DEFAULT_PORT};
use crate::rendezvous::{fetch_campaign, RendezvousError};

/// What the coordinator said about its campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignPreview {
    /// The campaign, checked ([`CampaignInfo::check`]).
    Offered(CampaignInfo),
    /// The coordinator hands out no campaign (it predates the preview, or its
    /// operator described none); the volunteer's flags must name the echo
    /// servers (and the collector).
    NotOffered { why: String },
}

/// The coordinator of `--campaign HOST[:PORT]`, as `HOST:PORT`.
pub fn coordinator_of(campaign: &str) -> String {
    with_default_port(campaign, DEFAULT_PORT)
}

/// Asks the coordinator at `coordinator` (`HOST:PORT`) for its campaign.
/// Campaign info that breaks [`CampaignInfo::check`] under `addresses` is an
/// error, not a fallback: a coordinator that names a private echo server or
/// a non-HTTP collector is not one to measure with.
pub async fn preview(
    coordinator: &str,
    addresses: AddressPolicy,
    timeout: Duration,
) -> Result<CampaignPreview, ProbeError> {
    let server = resolve(coordinator).await?;
    match fetch_campaign(server, timeout).await {
        Ok(campaign) => match campaign.check(addresses) {
            Ok(()) => Ok(CampaignPreview::Offered(campaign)),
            Err(why) => Err(ProbeError::CampaignRefused {
                coordinator: coordinator.to_string(),
                why,
            }),
        },
        Err(RendezvousError::Server {
            code: ErrorCode::UnknownType,
            ..
        }) => Ok(CampaignPreview::NotOffered {
            why: "the coordinator runs an older punchscope that hands out no campaign".into(),
        }),
        Err(RendezvousError::Server {
            code: ErrorCode::NoCampaign,
            message,
            ..
        }) => Ok(CampaignPreview::NotOffered { why: message }),
        Err(e) => Err(ProbeError::Coordinator(e)),
    }
}

/// Where a run classifies and uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub echo: Vec<String>,
    pub collector: Option<String>,
}

/// The campaign's echo servers and collector, each overridden by the
/// volunteer's explicit flags when given.
pub fn endpoints(
    campaign: Option<&CampaignInfo>,
    echo_flags: &[String],
    collector_flag: Option<&str>,
) -> Endpoints {
    let echo = if echo_flags.is_empty() {
        campaign
            .map(|c| c.echo.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    } else {
        echo_flags.to_vec()
    };
    let collector = collector_flag
        .map(str::to_string)
        .or_else(|| campaign.and_then(|c| c.collector.clone()));
    Endpoints { echo, collector }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign() -> CampaignInfo {
        CampaignInfo {
            name: "pilot".into(),
            operator: "Example Lab".into(),
            contact: "ops@example.org".into(),
            echo: vec!["198.51.100.10:3478".parse().unwrap()],
            collector: Some("https://198.51.100.10:8443".into()),
            privacy_notice: "notice".into(),
        }
    }

    #[test]
    fn explicit_flags_override_what_the_campaign_says() {
        let c = campaign();
        assert_eq!(
            endpoints(Some(&c), &[], None),
            Endpoints {
                echo: vec!["198.51.100.10:3478".into()],
                collector: Some("https://198.51.100.10:8443".into()),
            }
        );
        assert_eq!(
            endpoints(Some(&c), &["192.0.2.1:1".into()], Some("http://x:1")),
            Endpoints {
                echo: vec!["192.0.2.1:1".into()],
                collector: Some("http://x:1".into()),
            }
        );
        assert_eq!(
            endpoints(None, &[], None),
            Endpoints {
                echo: vec![],
                collector: None
            }
        );
        assert_eq!(coordinator_of("198.51.100.10"), "198.51.100.10:8340");
    }
}
