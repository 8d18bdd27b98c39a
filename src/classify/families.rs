//! The echo endpoints of a run split by IP family: a dual-stack run
//! classifies each family with its own endpoints.

use std::net::SocketAddr;

use punchscope_analysis::classify::Classification;

use super::{classify, ClassifyConfig, ClassifyError};

/// Echo endpoints by family (`--echo`/`--server` flags, or a campaign's
/// announced endpoints). A dual-stack run (IPv6 literals,
/// `[2001:db8::10]:3478`, beside IPv4 endpoints) classifies each family
/// with its own endpoints: IPv4 first, as the primary classification, then
/// IPv6. Endpoints of one family only are one classification (IPv6 ones
/// an IPv6 classification). The probe's run, its consent screen and
/// `punchscope classify` all split this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoFamilies {
    /// The primary classification: the IPv4 endpoints and names of a
    /// dual-stack run, else every endpoint.
    pub primary: Vec<String>,
    /// The IPv6 literals of a dual-stack run, classified besides.
    pub ipv6: Option<Vec<String>>,
}

impl EchoFamilies {
    pub fn split(echo: &[String]) -> Self {
        // A name resolves to IPv4 (see `resolve_server`), so only literals
        // count as IPv6.
        let is_ipv6_literal = |spec: &String| {
            crate::net::host_port::with_default_port(spec, crate::proto::echo::DEFAULT_PORT)
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.is_ipv6())
        };
        let (ipv6, ipv4): (Vec<String>, Vec<String>) =
            echo.iter().cloned().partition(is_ipv6_literal);
        if ipv6.is_empty() || ipv4.is_empty() {
            EchoFamilies {
                primary: echo.to_vec(),
                ipv6: None,
            }
        } else {
            EchoFamilies {
                primary: ipv4,
                ipv6: Some(ipv6),
            }
        }
    }
}

/// A step of [`classify_families`], for progress displays.
#[derive(Debug)]
pub enum FamilyStep<'a> {
    /// The primary classification is done (the IPv6 one of an IPv6-only host).
    Classified(&'a Classification),
    /// The IPv6 classification beside the primary one starts.
    ClassifyingIpv6,
    /// It ended: its classification, or why there is none.
    ClassifiedIpv6(Result<&'a Classification, &'a str>),
}

/// What [`classify_families`] measured.
#[derive(Debug, Clone)]
pub struct FamilyClassifications {
    /// The primary classification: IPv4's, or an IPv6-only host's IPv6 one.
    pub primary: Classification,
    /// A dual-stack run's IPv6 classification beside it, or why it failed
    /// (never an error of the run: the primary one stands).
    pub ipv6: Option<Result<Classification, String>>,
}

/// Classifies each family of `families` with `config` (its `servers`
/// replaced by each family's): the primary first, then IPv6 beside it, one
/// after the other, not at once (both would share the host's CPU and the
/// silence waits). A host with no IPv4 route measures over IPv6 alone, its
/// IPv6 classification then the primary one. Any other failure of the primary
/// one (a server down, hostile, of another version) is the error, never a
/// reason to call the host IPv6-only; if IPv6 fails too, the IPv4 error
/// says what to check first.
pub async fn classify_families(
    families: &EchoFamilies,
    config: &ClassifyConfig,
    mut step: impl FnMut(FamilyStep<'_>),
) -> Result<FamilyClassifications, ClassifyError> {
    let with = |servers: &[String]| ClassifyConfig {
        servers: servers.to_vec(),
        ..config.clone()
    };
    match classify(&with(&families.primary)).await {
        Ok(primary) => {
            step(FamilyStep::Classified(&primary));
            let ipv6 = match &families.ipv6 {
                None => None,
                Some(servers) => {
                    step(FamilyStep::ClassifyingIpv6);
                    let outcome = classify(&with(servers))
                        .await
                        .map_err(|e| format!("IPv6 not classified: {e}"));
                    step(FamilyStep::ClassifiedIpv6(
                        outcome.as_ref().map_err(String::as_str),
                    ));
                    Some(outcome)
                }
            };
            Ok(FamilyClassifications { primary, ipv6 })
        }
        // Only "no route": an echo name without an A record says nothing
        // of this host's IPv4.
        Err(no_ipv4 @ ClassifyError::NoIpv4Route { .. }) => {
            let Some(servers) = &families.ipv6 else {
                return Err(no_ipv4);
            };
            step(FamilyStep::ClassifyingIpv6);
            let Ok(primary) = classify(&with(servers)).await else {
                return Err(no_ipv4);
            };
            step(FamilyStep::Classified(&primary));
            Ok(FamilyClassifications {
                primary,
                ipv6: None,
            })
        }
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ipv6_literals_beside_ipv4_endpoints_are_classified_apart() {
        let dual = EchoFamilies::split(&specs(&[
            "[2001:db8:5100::10]:3478",
            "198.51.100.10:3478",
            "2001:db8:5100::11",
            "echo.example.org",
        ]));
        assert_eq!(
            dual,
            EchoFamilies {
                primary: specs(&["198.51.100.10:3478", "echo.example.org"]),
                ipv6: Some(specs(&["[2001:db8:5100::10]:3478", "2001:db8:5100::11"])),
            }
        );
        // One family only: one classification with every endpoint, as before.
        for one_family in [
            specs(&["198.51.100.10:3478", "echo.example.org"]),
            specs(&["[2001:db8:5100::10]:3478", "[2001:db8:5100::11]:3478"]),
        ] {
            assert_eq!(
                EchoFamilies::split(&one_family),
                EchoFamilies {
                    primary: one_family.clone(),
                    ipv6: None,
                }
            );
        }
    }
}
