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

use std::collections::{BTreeMap, HashMap};

use super::coordinator::ConnId;
use super::Mode;
use crate::net::source_limit::SourceKey;

#[derive(Debug, Default)]
pub(super) struct Pools {
    volunteers: HashMap<Option<String>, BTreeMap<u64, (ConnId, SourceKey)>>,
    references: HashMap<Option<String>, BTreeMap<u64, (ConnId, SourceKey)>>,
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
    }

    /// Removes a waiting client (it left or timed out).
    pub(super) fn remove(&mut self, mode: Mode, code: &Option<String>, seq: u64) {
        let pool = self.pool(mode);
        if let Some(queue) = pool.get_mut(code) {
            queue.remove(&seq);
            if queue.is_empty() {
                pool.remove(code);
            }
        }
    }

    /// Takes the longest-waiting compatible partner for a newcomer, if any.
    pub(super) fn take_partner(
        &mut self,
        mode: Mode,
        code: &Option<String>,
        source: SourceKey,
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
            let found = queue
                .iter()
                .find(|(_, (_, theirs))| *theirs != source)
                .map(|(seq, (conn, _))| (*seq, *conn));
            if let Some((seq, conn)) = found {
                queue.remove(&seq);
                if queue.is_empty() {
                    pool.remove(code);
                }
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
        assert_eq!(pools.take_partner(Mode::Volunteer, &None, ip(2)), None);
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3)),
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
            pools.take_partner(Mode::Volunteer, &code, ip(3)),
            Some((2, Mode::Volunteer))
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3)),
            Some((3, Mode::Volunteer))
        );
        assert_eq!(
            pools.take_partner(Mode::Volunteer, &None, ip(3)),
            Some((1, Mode::Reference))
        );
        assert_eq!(pools.take_partner(Mode::Volunteer, &code, ip(3)), None);
        assert_eq!(pools.len(), 0);
    }

    #[test]
    fn references_never_pair_with_references() {
        let mut pools = Pools::default();
        pools.insert(Mode::Reference, None, 1, 1, ip(9));
        assert_eq!(pools.take_partner(Mode::Reference, &None, ip(8)), None);
        pools.remove(Mode::Reference, &None, 1);
        assert_eq!(pools.len(), 0);
    }
}
