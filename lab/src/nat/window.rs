//! Linux conntrack's TCP window check, as far as it decides hole-punching
//! results: an opening segment whose sequence number is far from the one
//! the flow was first seen with is invalid once the peer's SYN has arrived.
//!
//! Why it matters (docs/methodology.md, "Emulator vs real Linux NATs"): a
//! `low_ttl` priming SYN comes from a socket that dies, and conntrack keeps
//! *its* initial sequence number for the flow. Linux gives a new socket on
//! the same 4-tuple an ISN that grows by one every 64 ns, so the real
//! connect tens of milliseconds later is about a million ahead. While only
//! our own SYNs have been seen (`SYN_SENT`), a new SYN re-initialises the
//! flow's window and all is well. Once the peer's SYN has passed inbound
//! (`SYN_SENT2`), nothing re-initialises it: our next SYN or SYN-ACK is out
//! of window, conntrack marks it invalid, and masquerade lets it out
//! untranslated, where the peer's NAT cannot match it. The emulator drops
//! it (the same result for both ends) and logs why.
//!
//! Modelled: flows we opened (an outbound bare SYN), their last outbound
//! SYN's sequence number, whether the remote's SYN came in, and the check of
//! our opening segments against a window of [`WINDOW`] around it until the
//! handshake is through. Not modelled: windows of established data (a
//! connection that got through keeps in window), window scaling, the
//! remote's sequence numbers.

use std::collections::HashMap;
use std::net::SocketAddrV4;

use pnet_packet::tcp::TcpFlags;

/// The largest window a SYN can announce (unscaled): how far from the
/// flow's last opening sequence number a segment may be.
pub const WINDOW: u32 = 65_535;

/// What the check says about an outbound segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowVerdict {
    Valid,
    /// Out of window: `expected` is where the flow's sequence space ends.
    Invalid {
        expected: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    /// One past the sequence number of our last accepted SYN (or later segment).
    our_end: u32,
    /// The remote's SYN (or SYN-ACK) came in.
    remote_syn: bool,
    /// An in-window segment of ours passed after the remote's SYN: the
    /// handshake is through, and data is not checked any more.
    established: bool,
}

/// The TCP flows of one router, by (internal, remote) endpoint.
#[derive(Debug, Default)]
pub struct WindowTracker {
    flows: HashMap<(SocketAddrV4, SocketAddrV4), Flow>,
}

fn has(flags: u8, bit: u8) -> bool {
    flags & bit != 0
}

/// Whether `seq` lies within [`WINDOW`] of `end`, either way, modulo 2^32.
fn in_window(seq: u32, end: u32) -> bool {
    let ahead = seq.wrapping_sub(end);
    let behind = end.wrapping_sub(seq);
    ahead <= WINDOW || behind <= WINDOW
}

impl WindowTracker {
    /// An outbound TCP segment of `internal` to `remote` with sequence number `seq`.
    pub fn outbound(
        &mut self,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        flags: u8,
        seq: u32,
    ) -> WindowVerdict {
        let bare_syn = has(flags, TcpFlags::SYN) && !has(flags, TcpFlags::ACK);
        if has(flags, TcpFlags::RST) {
            return WindowVerdict::Valid;
        }
        let key = (internal, remote);
        let Some(flow) = self.flows.get_mut(&key) else {
            if bare_syn {
                self.flows.insert(
                    key,
                    Flow {
                        our_end: seq.wrapping_add(1),
                        remote_syn: false,
                        established: false,
                    },
                );
            }
            // A flow the remote opened: our first segment sets our side's window.
            return WindowVerdict::Valid;
        };
        if flow.established {
            return WindowVerdict::Valid;
        }
        if !flow.remote_syn {
            // SYN_SENT: a new SYN of ours re-initialises the flow's window.
            if bare_syn {
                flow.our_end = seq.wrapping_add(1);
            }
            return WindowVerdict::Valid;
        }
        if !in_window(seq, flow.our_end) {
            return WindowVerdict::Invalid {
                expected: flow.our_end,
            };
        }
        if has(flags, TcpFlags::SYN) {
            flow.our_end = seq.wrapping_add(1);
        } else {
            flow.established = true;
        }
        WindowVerdict::Valid
    }

    /// An inbound TCP segment the router admitted, from `remote` to `internal`.
    pub fn inbound(&mut self, internal: SocketAddrV4, remote: SocketAddrV4, flags: u8) {
        if !has(flags, TcpFlags::SYN) {
            return;
        }
        if let Some(flow) = self.flows.get_mut(&(internal, remote)) {
            flow.remote_syn = true;
        }
    }

    /// The router forgot the session: so does the check.
    pub fn forget(&mut self, internal: SocketAddrV4, remote: SocketAddrV4) {
        self.flows.remove(&(internal, remote));
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::new(192, 168, 1, 2), 40000);
    const PEER: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::new(203, 0, 113, 9), 40001);
    const SYN: u8 = TcpFlags::SYN;
    const SYN_ACK: u8 = TcpFlags::SYN | TcpFlags::ACK;
    const ACK: u8 = TcpFlags::ACK;
    /// How far a new socket's ISN on the same 4-tuple is 70 ms later (one per 64 ns).
    const LATER: u32 = 70_000_000 / 64;

    #[test]
    fn a_new_syn_before_the_peers_re_initialises_the_flow() {
        let mut w = WindowTracker::default();
        let prime = 1_000_000;
        assert_eq!(w.outbound(US, PEER, SYN, prime), WindowVerdict::Valid);
        assert_eq!(
            w.outbound(US, PEER, SYN, prime + LATER),
            WindowVerdict::Valid
        );
        w.inbound(US, PEER, SYN_ACK);
        assert_eq!(
            w.outbound(US, PEER, ACK, prime + LATER + 1),
            WindowVerdict::Valid
        );
        // Established: data is not checked.
        assert_eq!(
            w.outbound(US, PEER, ACK, prime + 50 * LATER),
            WindowVerdict::Valid
        );
    }

    #[test]
    fn after_the_peers_syn_a_far_syn_or_syn_ack_is_invalid_until_forgotten() {
        let mut w = WindowTracker::default();
        let prime = u32::MAX - 10; // across the wrap
        w.outbound(US, PEER, SYN, prime);
        w.inbound(US, PEER, SYN);
        let expected = prime.wrapping_add(1);
        for flags in [SYN_ACK, SYN, ACK] {
            assert_eq!(
                w.outbound(US, PEER, flags, prime.wrapping_add(LATER)),
                WindowVerdict::Invalid { expected },
                "flags {flags:#x}"
            );
        }
        // The priming socket's own sequence space is still fine (a retransmission).
        assert_eq!(w.outbound(US, PEER, SYN, prime), WindowVerdict::Valid);
        w.forget(US, PEER);
        assert!(w.is_empty());
        assert_eq!(
            w.outbound(US, PEER, SYN, prime.wrapping_add(LATER)),
            WindowVerdict::Valid
        );
    }

    #[test]
    fn a_flow_the_remote_opened_is_never_refused() {
        let mut w = WindowTracker::default();
        w.inbound(US, PEER, SYN);
        assert_eq!(w.outbound(US, PEER, SYN_ACK, 12345), WindowVerdict::Valid);
        assert!(w.is_empty(), "only our SYNs open tracked flows");
    }

    #[test]
    fn the_window_is_checked_both_ways_around_the_wrap() {
        assert!(in_window(5, u32::MAX - 5));
        assert!(in_window(u32::MAX - 5, 5));
        assert!(in_window(1000 + WINDOW, 1000));
        assert!(!in_window(1000 + WINDOW + 1, 1000));
        assert!(!in_window(1000, 1000 + WINDOW + 1));
    }
}
