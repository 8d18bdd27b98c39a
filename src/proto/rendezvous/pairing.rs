//! Who waits for a peer, by pair code, in arrival order; and who pairs with whom.
//!
//! Two clients pair when their pair codes are equal (or both absent), their
//! control connections come from different sources (IPv4 addresses or IPv6
//! /64s, as [`SourceKey`] says), and at least one of them is
//! a volunteer. Waiting volunteers are preferred over reference peers, so
//! volunteer-volunteer pairs (the interesting ones) form whenever possible.
//!
//! Because any two compatible clients pair at once, the waiting clients of
//! one code all share an IP or are references; a scan for a partner thus
//! skips at most one IP's worth of connections, not the whole queue.
//!
//! Waiting volunteers are also counted per site (IPv4 address, IPv6 /48),
//! so that a full coordinator can turn away the site that holds the most
//! waiting slots: a flood degrades service for the flooders first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::coordinator::ConnId;
use super::Mode;
use crate::net::source_limit::SourceKey;

#[derive(Debug, Default)]
pub(super) struct Pools {
    volunteers: HashMap<Option<String>, BTreeMap<u64, (ConnId, SourceKey)>>,
    references: HashMap<Option<String>, BTreeMap<u64, (ConnId, SourceKey)>>,
    /// Waiting volunteers per site, by arrival.
    sites: HashMap<SourceKey, BTreeMap<u64, ConnId>>,
    /// (waiting volunteers, site), to find the busiest site at once.
    site_sizes: BTreeSet<(usize, SourceKey)>,
}

/// The site a source belongs to: its IPv4 address or IPv6 /48.
pub(super) fn site_of(source: SourceKey) -> SourceKey {
    source.widened(crate::net::source_limit::SITE_V6_PREFIX)
}

impl Pools {
    fn pool(
        &mut self,
        mode: Mode,
    ) -> &mut HashMap<Option<String>, BTreeMap<u64, (ConnId, SourceKey)>> {
        match mode {
            Mode::Volunteer => &mut self.volunteers,
            Mode::Reference => &mut self.references,
        }
    }

    /// Adds a client that found nobody; `seq` orders arrivals.
    pub(super) fn insert(
        &mut self,
        mode: Mode,
        code: Option<String>,
        seq: u64,
        conn: ConnId,
        source: SourceKey,
    ) {
        self.pool(mode)
            .entry(code)
            .or_default()
            .insert(seq, (conn, source));
        if mode == Mode::Volunteer {
            let site = site_of(source);
            let waiting = self.sites.entry(site).or_default();
            self.site_sizes.remove(&(waiting.len(), site));
            waiting.insert(seq, conn);
            self.site_sizes.insert((waiting.len(), site));
        }
    }

    /// Removes a waiting client (it left or timed out).
    pub(super) fn remove(&mut self, mode: Mode, code: &Option<String>, seq: u64) {
        let pool = self.pool(mode);
        let mut source = None;
        if let Some(queue) = pool.get_mut(code) {
            source = queue.remove(&seq).map(|(_, source)| source);
            if queue.is_empty() {
                pool.remove(code);
            }
        }
        if let (Mode::Volunteer, Some(source)) = (mode, source) {
            self.leave_site(site_of(source), seq);
        }
    }

    fn leave_site(&mut self, site: SourceKey, seq: u64) {
        let Some(waiting) = self.sites.get_mut(&site) else {
            return;
        };
        self.site_sizes.remove(&(waiting.len(), site));
        waiting.remove(&seq);
        if waiting.is_empty() {
            self.sites.remove(&site);
        } else {
            self.site_sizes.insert((waiting.len(), site));
        }
    }

    /// Volunteers waiting from `site`.
    pub(super) fn waiting_from(&self, site: SourceKey) -> usize {
        self.sites.get(&site).map_or(0, BTreeMap::len)
    }

    /// The site with the most waiting volunteers, with how many, and the
    /// connection of its longest-waiting one.
    pub(super) fn busiest_site(&self) -> Option<(SourceKey, usize, ConnId)> {
        let (count, site) = *self.site_sizes.last()?;
        let (_, conn) = self.sites.get(&site)?.first_key_value()?;
        Some((site, count, *conn))
    }

    /// Takes a partner for a newcomer, if any: same code, another source,
    /// and the best `fit` (0: cannot pair; more: better, e.g. IP families
    /// shared with the newcomer; at most `best`), the longest-waiting among
    /// equals. The scan stops at the first waiter that fits `best`.
    pub(super) fn take_partner(
        &mut self,
        mode: Mode,
        code: &Option<String>,
        source: SourceKey,
        (fit, best): (impl Fn(ConnId) -> usize, usize),
    ) -> Option<(ConnId, Mode)> {
        let order: &[Mode] = match mode {
            Mode::Volunteer => &[Mode::Volunteer, Mode::Reference],
            Mode::Reference => &[Mode::Volunteer],
        };
        for &candidate in order {
            let pool = self.pool(candidate);
            let Some(queue) = pool.get_mut(code) else {
                continue;
            };
            // Bounded: the pool holds at most the coordinator's `max_waiting`.
            let mut found: Option<(usize, u64, ConnId)> = None;
            for (seq, (conn, theirs)) in queue.iter() {
                if *theirs == source {
                    continue;
                }
                let score = fit(*conn);
                if score > found.map_or(0, |f| f.0) {
                    found = Some((score, *seq, *conn));
                    if score >= best {
                        break;
                    }
                }
            }
            if let Some((_, seq, conn)) = found {
                self.remove(candidate, code, seq);
                return Some((conn, candidate));
            }
        }
        None
    }

    /// Clients waiting, of both modes.
    pub(super) fn len(&self) -> usize {
        let count = |p: &HashMap<_, BTreeMap<_, _>>| p.values().map(BTreeMap::len).sum::<usize>();
        count(&self.volunteers) + count(&self.references)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> SourceKey {
        SourceKey::of(std::net::IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn volunteers_pair_first_come_first_served_across_ips_only() {
        let mut pools = Pools::default();
        pools.insert(Mode::Volunteer, None, 1, 10, ip(2));
        pools.insert(Mode::Volunteer, None, 2, 11, ip(2));
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(2), (|_| 1, 1)),
            None
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3), (|_| 1, 1)),
            Some((10, Mode::Volunteer))
        );
        assert_eq!(pools.len(), 1);
    }

    #[test]
    fn codes_separate_queues_and_references_come_after_volunteers() {
        let mut pools = Pools::default();
        let code = Some("lab".to_string());
        pools.insert(Mode::Reference, None, 1, 1, ip(9));
        pools.insert(Mode::Volunteer, code.clone(), 2, 2, ip(2));
        pools.insert(Mode::Volunteer, None, 3, 3, ip(4));
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &code, ip(3), (|_| 1, 1)),
            Some((2, Mode::Volunteer))
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3), (|_| 1, 1)),
            Some((3, Mode::Volunteer))
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3), (|_| 1, 1)),
            Some((1, Mode::Reference))
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &code, ip(3), (|_| 1, 1)),
            None
        );
        assert_eq!(pools.len(), 0);
    }

    #[test]
    fn waiting_volunteers_are_counted_per_site() {
        let v6 = |s: &str| SourceKey::of(s.parse().unwrap());
        let mut pools = Pools::default();
        pools.insert(
            Mode::Volunteer,
            Some("a".into()),
            1,
            10,
            v6("2001:db8:0:1::1"),
        );
        pools.insert(
            Mode::Volunteer,
            Some("b".into()),
            2,
            11,
            v6("2001:db8:0:2::1"),
        );
        pools.insert(
            Mode::Volunteer,
            Some("c".into()),
            3,
            12,
            v6("2001:db8:0:3::1"),
        );
        pools.insert(Mode::Volunteer, None, 4, 20, ip(2));
        pools.insert(Mode::Reference, None, 5, 30, ip(9));
        let site = site_of(v6("2001:db8::"));
        assert_eq!(pools.waiting_from(site), 3, "three /64s of one /48");
        assert_eq!(pools.waiting_from(ip(2)), 1);
        assert_eq!(pools.waiting_from(ip(9)), 0, "references are not counted");
        assert_eq!(pools.busiest_site(), Some((site, 3, 10)));
        pools.remove(Mode::Volunteer, &Some("a".into()), 1);
        assert_eq!(pools.busiest_site(), Some((site, 2, 11)));
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &Some("b".into()), ip(3), (|_| 1, 1)),
            Some((11, Mode::Volunteer))
        );
        pools.remove(Mode::Volunteer, &Some("c".into()), 3);
        assert_eq!(pools.busiest_site(), Some((ip(2), 1, 20)));
        pools.remove(Mode::Volunteer, &None, 4);
        assert_eq!(pools.busiest_site(), None);
        assert!(pools.sites.is_empty() && pools.site_sizes.is_empty());
    }

    #[test]
    fn references_never_pair_with_references() {
        let mut pools = Pools::default();
        pools.insert(Mode::Reference, None, 1, 1, ip(9));
        assert_eq!(
            pools.take_partner(Mode::Reference, &None, ip(8), (|_| 1, 1)),
            None
        );
        pools.remove(Mode::Reference, &None, 1);
        assert_eq!(pools.len(), 0);
    }
}
