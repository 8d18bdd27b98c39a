//! Sums behind one row of the report (per pairing and per network cell), gathered trial by trial, and turned into a rate with its clustered intervals.
//!
//! A row (the headline, a strategy, a NAT pair, a network...) keeps one
//! entry per run of consecutive trials with the same pairing and networks,
//! not one per trial: the trials of a pairing arrive together, so a row of
//! a million trials holds about one entry per pairing, and no hashing is
//! done per trial.

use super::aggregate::{Aggregated, CountedTrial};
use super::cluster::{
    cluster_bootstrap, network_bootstrap, BootstrapConfig, Clustered, NetworkCell,
};
use super::stats::Proportion;

/// The volunteers' networks of the runs, numbered densely: a run uploaded
/// with a keyed network group shares its node with the other runs of that
/// group; a volunteer run without a group is its own node; a reference
/// peer's run has none (it is not sampled).
#[derive(Debug, Clone)]
pub struct NetworkNodes {
    node_of_run: Vec<Option<u32>>,
    /// Distinct nodes.
    pub nodes: u64,
    /// Of those: keyed network groups.
    pub keyed: u64,
    /// Of those: volunteer runs read without a group.
    pub runs_without_group: u64,
}

impl NetworkNodes {
    pub fn new(agg: &Aggregated) -> Self {
        let mut node_of_network: Vec<Option<u32>> = vec![None; agg.networks.len()];
        let mut next = 0u32;
        let mut keyed = 0;
        let mut runs_without_group = 0;
        let node_of_run = agg
            .runs
            .iter()
            .map(|run| {
                if !run.is_volunteer() {
                    return None;
                }
                let fresh = |next: &mut u32| {
                    let node = *next;
                    *next += 1;
                    node
                };
                Some(match run.network {
                    Some(network) => *node_of_network[network as usize].get_or_insert_with(|| {
                        keyed += 1;
                        fresh(&mut next)
                    }),
                    None => {
                        runs_without_group += 1;
                        fresh(&mut next)
                    }
                })
            })
            .collect();
        NetworkNodes {
            node_of_run,
            nodes: u64::from(next),
            keyed,
            runs_without_group,
        }
    }

    /// The sampled networks of a trial's sides, lower first.
    pub fn of(&self, trial: &CountedTrial) -> (Option<u32>, Option<u32>) {
        let node = |run: Option<u32>| run.and_then(|r| self.node_of_run[r as usize]);
        match (node(trial.initiator_run), node(trial.responder_run)) {
            (Some(a), Some(b)) if b < a => (Some(b), Some(a)),
            (None, Some(b)) => (Some(b), None),
            nodes => nodes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    pairing: u32,
    a: Option<u32>,
    b: Option<u32>,
    successes: u64,
    n: u64,
}

/// The sums of one row.
#[derive(Debug, Clone, Default)]
pub struct RowSums {
    entries: Vec<Entry>,
    successes: u64,
    n: u64,
}

impl RowSums {
    /// Counts one trial (or, in the pairing view, one pairing) in this row.
    pub fn add(&mut self, pairing: u32, nodes: (Option<u32>, Option<u32>), success: bool) {
        self.successes += u64::from(success);
        self.n += 1;
        if let Some(last) = self.entries.last_mut() {
            if (last.pairing, last.a, last.b) == (pairing, nodes.0, nodes.1) {
                last.successes += u64::from(success);
                last.n += 1;
                return;
            }
        }
        self.entries.push(Entry {
            pairing,
            a: nodes.0,
            b: nodes.1,
            successes: u64::from(success),
            n: 1,
        });
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    /// Merges the entries of the same pairing and networks, in key order.
    fn merged(&self) -> Vec<Entry> {
        let mut entries = self.entries.clone();
        entries.sort_unstable();
        let mut merged: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            match merged.last_mut() {
                Some(last) if (last.pairing, last.a, last.b) == (e.pairing, e.a, e.b) => {
                    last.successes += e.successes;
                    last.n += e.n;
                }
                _ => merged.push(e),
            }
        }
        merged
    }

    /// Distinct pairings in the row.
    pub fn pairings(&self) -> u64 {
        let mut pairings: Vec<u32> = self.entries.iter().map(|e| e.pairing).collect();
        pairings.sort_unstable();
        pairings.dedup();
        pairings.len() as u64
    }

    /// The row's rate with its per-trial Wilson interval and its clustered
    /// intervals: over pairings, and over networks when `with_networks`.
    /// The network bootstrap costs about as much as the rest of a large
    /// report, so it is computed for the rows a result is quoted from
    /// (headline, strategies, handshakes, pairings' shares), not for every
    /// breakdown. `row` names the row for its seed.
    pub fn proportion(
        &self,
        row: &str,
        config: &BootstrapConfig,
        with_networks: bool,
    ) -> Proportion {
        let base = Proportion::new(self.successes, self.n);
        if self.n == 0 {
            return base;
        }
        let merged = self.merged();
        let mut pairings: Vec<(u64, u64)> = Vec::new();
        let mut last = None;
        for e in &merged {
            if last == Some(e.pairing) {
                let p = pairings.last_mut().expect("a pairing was pushed");
                p.0 += e.successes;
                p.1 += e.n;
            } else {
                pairings.push((e.successes, e.n));
                last = Some(e.pairing);
            }
        }
        let Some(by_pairing) = cluster_bootstrap(&pairings, config, &format!("{row}/pairings"))
        else {
            return base;
        };
        let by_network = if with_networks {
            network_interval(&merged, config, &format!("{row}/networks"))
        } else {
            None
        };
        base.with_clustered(Some(Clustered {
            pairings: by_pairing,
            networks: by_network,
        }))
    }
}

/// The network bootstrap of a row: its cells by networks, the networks renumbered densely.
fn network_interval(
    merged: &[Entry],
    config: &BootstrapConfig,
    row: &str,
) -> Option<super::cluster::ClusterInterval> {
    let mut nodes: Vec<u32> = merged.iter().flat_map(|e| [e.a, e.b]).flatten().collect();
    nodes.sort_unstable();
    nodes.dedup();
    let local = |node: Option<u32>| {
        node.map(|n| nodes.binary_search(&n).expect("a node of the row") as u32)
    };
    let mut cells: Vec<NetworkCell> = merged
        .iter()
        .map(|e| NetworkCell {
            a: local(e.a),
            b: local(e.b),
            successes: e.successes,
            n: e.n,
        })
        .collect();
    cells.sort_unstable_by_key(|c| (c.a, c.b));
    let mut compact: Vec<NetworkCell> = Vec::with_capacity(cells.len());
    for c in cells {
        match compact.last_mut() {
            Some(last) if (last.a, last.b) == (c.a, c.b) => {
                last.successes += c.successes;
                last.n += c.n;
            }
            _ => compact.push(c),
        }
    }
    network_bootstrap(nodes.len(), &compact, config, row)
}
