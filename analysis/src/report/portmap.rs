//! The port mapping breakdown: per protocol, how many volunteers' routers answered, granted the node's port, granted it on a public address, and confirmed its deletion; lifetimes and result codes.
//!
//! Counted per volunteer run (reference peers ask nothing), from the
//! attempt for the node port (the probe's own port is asked too, but a
//! router that maps one maps the other). Proportions carry per-run Wilson
//! 95% intervals; runs are not clustered by network here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stats::{quantile_sorted, Proportion};
use crate::classify::HopClass;
use crate::portmap::{
    GatewayAnswer, MappingAttempt, MappingProtocol, PortMappingReport, PortMappingSkipped, PortRole,
};

/// Runs' port mapping records as they are read.
#[derive(Debug, Clone, Default)]
pub struct PortMapTally {
    runs: u64,
    skipped: BTreeMap<String, u64>,
    protocols: BTreeMap<String, ProtocolTally>,
}

#[derive(Debug, Clone, Default)]
struct ProtocolTally {
    asked: u64,
    answered: u64,
    granted: u64,
    granted_public: u64,
    granted_behind_nat: u64,
    deleted: u64,
    reach_checked: u64,
    reached: u64,
    answers: BTreeMap<String, u64>,
    results: BTreeMap<String, u64>,
    lifetimes: Vec<f64>,
    permanent: u64,
}

fn name_of<T: Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{value:?}"))
}

impl PortMappingSummary {
    /// No run recorded port mapping.
    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }
}

impl PortMapTally {
    /// Adds one volunteer run's record.
    pub fn add(&mut self, report: &PortMappingReport) {
        self.runs += 1;
        if let Some(why) = report.skipped {
            let reason = match why {
                PortMappingSkipped::Other => "other".to_string(),
                known => name_of(&known),
            };
            *self.skipped.entry(reason).or_insert(0) += 1;
            return;
        }
        let mut seen: Vec<MappingProtocol> = Vec::new();
        for attempt in &report.attempts {
            if seen.contains(&attempt.protocol) {
                continue;
            }
            seen.push(attempt.protocol);
            let shown = report
                .attempts
                .iter()
                .find(|a| a.protocol == attempt.protocol && a.port_role == PortRole::Node)
                .unwrap_or(attempt);
            let protocol = match shown.protocol {
                MappingProtocol::Other => "other".to_string(),
                known => name_of(&known),
            };
            let tally = self.protocols.entry(protocol).or_default();
            tally.add(shown);
            // Reachability is checked on the probe's own port.
            let checked = report
                .attempts
                .iter()
                .filter(|a| a.protocol == shown.protocol)
                .find_map(|a| a.reachable.as_ref())
                .filter(|r| r.error.is_none());
            if let Some(reachability) = checked {
                tally.reach_checked += 1;
                tally.reached += u64::from(reachability.reached);
            }
        }
    }

    /// The figures of every run added.
    pub fn summary(&self) -> PortMappingSummary {
        PortMappingSummary {
            runs: self.runs,
            skipped: self.skipped.clone(),
            protocols: self
                .protocols
                .iter()
                .map(|(protocol, t)| t.row(protocol))
                .collect(),
        }
    }
}

impl ProtocolTally {
    fn add(&mut self, attempt: &MappingAttempt) {
        self.asked += 1;
        let answer = match attempt.answer {
            GatewayAnswer::Other => "other".to_string(),
            known => name_of(&known),
        };
        *self.answers.entry(answer).or_insert(0) += 1;
        if attempt.answer == GatewayAnswer::Answered {
            self.answered += 1;
            let result = attempt.result.clone().unwrap_or_else(|| "none".into());
            *self.results.entry(result).or_insert(0) += 1;
        }
        if let Some(granted) = &attempt.granted {
            self.granted += 1;
            match granted.external_class {
                Some(HopClass::Private | HopClass::Shared) => self.granted_behind_nat += 1,
                Some(HopClass::Public) => self.granted_public += 1,
                _ => {}
            }
            // UPnP's lease 0 is a permanent mapping (IGDv1), not a short one.
            if attempt.protocol == MappingProtocol::Upnp && granted.lifetime_s == 0 {
                self.permanent += 1;
            } else {
                self.lifetimes.push(f64::from(granted.lifetime_s));
            }
            if attempt.release.as_ref().is_some_and(|r| r.succeeded) {
                self.deleted += 1;
            }
        }
    }

    fn row(&self, protocol: &str) -> ProtocolRow {
        let mut sorted = self.lifetimes.clone();
        sorted.sort_by(f64::total_cmp);
        let lifetime_s = (!sorted.is_empty()).then(|| LifetimeSummary {
            min: sorted[0],
            median: quantile_sorted(&sorted, 0.5).unwrap_or(sorted[0]),
            max: sorted[sorted.len() - 1],
        });
        ProtocolRow {
            protocol: protocol.to_string(),
            asked: self.asked,
            answered: Proportion::new(self.answered, self.asked),
            granted: Proportion::new(self.granted, self.asked),
            granted_public: Proportion::new(self.granted_public, self.asked),
            granted_behind_nat: self.granted_behind_nat,
            deleted: Proportion::new(self.deleted, self.granted),
            reachable: Proportion::new(self.reached, self.reach_checked),
            answers: self.answers.clone(),
            results: self.results.clone(),
            lifetime_s,
            permanent: self.permanent,
        }
    }
}

/// The port mapping figures of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortMappingSummary {
    /// Volunteers' runs with a port mapping record (older results have none).
    pub runs: u64,
    /// Runs that asked nothing, per reason (`declined`, `no_gateway`, `stopped`).
    pub skipped: BTreeMap<String, u64>,
    /// One row per protocol asked.
    pub protocols: Vec<ProtocolRow>,
}

/// One protocol: of the runs that asked with it, for the node's port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolRow {
    /// `pcp`, `natpmp` or `upnp`.
    pub protocol: String,
    /// Runs that asked with this protocol.
    pub asked: u64,
    /// The router answered at all (a refusal included) / asked.
    pub answered: Proportion,
    /// The router granted a mapping / asked.
    pub granted: Proportion,
    /// Granted, on a public external address / asked: a mapping that opens the port on the internet.
    pub granted_public: Proportion,
    /// Granted on a private or shared (100.64/10) external address: another NAT in front, so useless.
    pub granted_behind_nat: u64,
    /// Deletion confirmed / granted.
    pub deleted: Proportion,
    /// The echo server's dial-back reached the probe through its mapping /
    /// runs where it was tried (the probe's own port was granted and the
    /// echo server offers the dial-back). Summaries from before it have none.
    #[serde(default = "no_proportion")]
    pub reachable: Proportion,
    /// Runs per answer: `answered`, `timeout`, `refused` (ICMP), `unreachable`, `malformed`, `stopped`.
    pub answers: BTreeMap<String, u64>,
    /// Answered runs per result (`success`, `not_authorized`, ...).
    pub results: BTreeMap<String, u64>,
    /// Granted lifetimes, in seconds (permanent UPnP mappings left out).
    pub lifetime_s: Option<LifetimeSummary>,
    /// UPnP: mappings the router reported as permanent (lease 0), though a
    /// bounded lease was asked. Summaries from before it have none.
    #[serde(default)]
    pub permanent: u64,
}

fn no_proportion() -> Proportion {
    Proportion::new(0, 0)
}

/// Smallest, median (nearest rank) and largest of granted lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LifetimeSummary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portmap::{GrantedMapping, MappingRelease};

    fn attempt(
        protocol: MappingProtocol,
        answer: GatewayAnswer,
        result: Option<&str>,
        granted: Option<(u32, HopClass, bool)>,
    ) -> MappingAttempt {
        MappingAttempt {
            protocol,
            port_role: PortRole::Node,
            internal_port: 8333,
            requested_lifetime_s: 120,
            answer,
            requests_sent: 1,
            rtt_ms: None,
            result_code: None,
            result: result.map(str::to_string),
            server_version: None,
            service: None,
            granted: granted.map(|(lifetime_s, class, _)| GrantedMapping {
                lifetime_s,
                external: None,
                external_port: 8333,
                external_class: Some(class),
            }),
            renewals: 0,
            lost_state: 0,
            errors: vec![],
            error_count: 0,
            reachable: None,
            release: granted.map(|(_, _, deleted)| MappingRelease {
                answer: GatewayAnswer::Answered,
                result_code: Some(0),
                succeeded: deleted,
                requests_sent: 1,
            }),
        }
    }

    fn run(attempts: Vec<MappingAttempt>) -> PortMappingReport {
        PortMappingReport {
            skipped: None,
            attempts,
        }
    }

    #[test]
    fn each_protocol_counts_answers_grants_public_grants_and_deletions_per_run() {
        use GatewayAnswer::*;
        use MappingProtocol::*;
        let mut tally = PortMapTally::default();
        tally.add(&run(vec![
            attempt(
                Pcp,
                Answered,
                Some("success"),
                Some((120, HopClass::Public, true)),
            ),
            attempt(
                Natpmp,
                Answered,
                Some("success"),
                Some((7200, HopClass::Public, true)),
            ),
        ]));
        tally.add(&run(vec![
            attempt(Pcp, Answered, Some("not_authorized"), None),
            attempt(Natpmp, Refused, None, None),
        ]));
        tally.add(&run(vec![
            attempt(
                Pcp,
                Answered,
                Some("success"),
                Some((13, HopClass::Shared, false)),
            ),
            attempt(Natpmp, Timeout, None, None),
        ]));
        tally.add(&PortMappingReport::skipped(PortMappingSkipped::Declined));
        // UPnP beside them: one permanent grant, one fault, one silent search.
        let mut permanent = attempt(
            Upnp,
            Answered,
            Some("success"),
            Some((0, HopClass::Public, true)),
        );
        permanent.service = Some("WANIPConnection:1".into());
        tally.add(&run(vec![permanent]));
        tally.add(&run(vec![attempt(
            Upnp,
            Answered,
            Some("conflict_in_mapping_entry"),
            None,
        )]));
        tally.add(&run(vec![attempt(
            Upnp,
            Answered,
            Some("success"),
            Some((3600, HopClass::Public, true)),
        )]));
        tally.add(&run(vec![attempt(Upnp, Timeout, None, None)]));
        let summary = tally.summary();
        let upnp = summary
            .protocols
            .iter()
            .find(|p| p.protocol == "upnp")
            .expect("UPnP is a protocol row like the others");
        assert_eq!(upnp.asked, 4);
        assert_eq!((upnp.answered.successes, upnp.granted.successes), (3, 2));
        assert_eq!(upnp.granted_public.successes, 2);
        assert_eq!((upnp.deleted.successes, upnp.deleted.n), (2, 2));
        assert_eq!(upnp.results.get("conflict_in_mapping_entry"), Some(&1));
        assert_eq!(upnp.answers.get("timeout"), Some(&1));
        assert_eq!(upnp.permanent, 1, "lease 0 counted apart");
        assert_eq!(
            upnp.lifetime_s,
            Some(LifetimeSummary {
                min: 3600.0,
                median: 3600.0,
                max: 3600.0
            })
        );
        assert_eq!(summary.runs, 8);
        assert_eq!(summary.skipped.get("declined"), Some(&1));
        let pcp = summary
            .protocols
            .iter()
            .find(|p| p.protocol == "pcp")
            .unwrap();
        assert_eq!(pcp.asked, 3);
        assert_eq!((pcp.answered.successes, pcp.answered.n), (3, 3));
        assert_eq!((pcp.granted.successes, pcp.granted.n), (2, 3));
        assert_eq!(pcp.granted_public.successes, 1);
        assert_eq!(pcp.granted_behind_nat, 1);
        assert_eq!((pcp.deleted.successes, pcp.deleted.n), (1, 2));
        assert_eq!(pcp.results.get("not_authorized"), Some(&1));
        assert_eq!(
            pcp.lifetime_s,
            Some(LifetimeSummary {
                min: 13.0,
                median: 13.0,
                max: 120.0
            })
        );
        let natpmp = summary
            .protocols
            .iter()
            .find(|p| p.protocol == "natpmp")
            .unwrap();
        assert_eq!((natpmp.answered.successes, natpmp.answered.n), (1, 3));
        assert_eq!(natpmp.answers.get("refused"), Some(&1));
        assert_eq!(natpmp.answers.get("timeout"), Some(&1));
        let low = natpmp.granted.low.unwrap();
        assert!(low > 0.0 && low < 1.0 / 3.0, "a Wilson interval: {low}");
    }

    #[test]
    fn reachability_counts_the_runs_where_the_dial_back_was_tried() {
        use crate::portmap::Reachability;
        let probe_port = |reached: bool, error: Option<&str>| {
            let mut a = attempt(
                MappingProtocol::Pcp,
                GatewayAnswer::Answered,
                Some("success"),
                Some((120, HopClass::Public, true)),
            );
            a.port_role = PortRole::Probe;
            a.reachable = Some(Reachability {
                reached,
                server_outcome: None,
                error: error.map(str::to_string),
            });
            a
        };
        let node = || {
            attempt(
                MappingProtocol::Pcp,
                GatewayAnswer::Answered,
                Some("success"),
                Some((120, HopClass::Public, true)),
            )
        };
        let mut tally = PortMapTally::default();
        tally.add(&run(vec![node(), probe_port(true, None)]));
        tally.add(&run(vec![node(), probe_port(false, None)]));
        tally.add(&run(vec![
            node(),
            probe_port(false, Some("an older echo server")),
        ]));
        let pcp = &tally.summary().protocols[0];
        assert_eq!((pcp.granted.successes, pcp.granted.n), (3, 3));
        assert_eq!(
            (pcp.reachable.successes, pcp.reachable.n),
            (1, 2),
            "a check that could not run is not counted"
        );
    }
}
