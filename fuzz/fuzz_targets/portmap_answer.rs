//! Datagrams from a gateway to the port mapping client: both parsers, then a whole PCP and NAT-PMP session (asking, holding, deleting) fed the bytes; nothing may panic and every session must end by its clock.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use punchscope::portmap::session::{Session, SessionSpec};
use punchscope::portmap::{natpmp, pcp, Schedule};
use punchscope_analysis::portmap::{MappingProtocol, PortRole};

fuzz_target!(|data: &[u8]| {
    let _ = natpmp::parse_answer(data, natpmp::OP_MAP_TCP);
    let _ = natpmp::parse_answer(data, natpmp::OP_EXTERNAL_ADDRESS);
    let _ = pcp::parse_answer(data);
    let t0 = Instant::now();
    for protocol in [MappingProtocol::Pcp, MappingProtocol::Natpmp] {
        let mut session = Session::new(
            SessionSpec {
                protocol,
                port_role: PortRole::Node,
                internal_port: 8333,
                lifetime_s: 120,
                client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
                schedule: match protocol {
                    MappingProtocol::Natpmp => Schedule::natpmp(),
                    _ => Schedule::pcp(),
                },
                seed: 1,
            },
            t0,
        );
        let request = session.poll_transmit().expect("a first request");
        // The datagram as it came, then cut in two at each of a few places.
        session.handle_datagram(data, t0);
        for cut in [0, 8, 24, 60].into_iter().filter(|c| *c < data.len()) {
            session.handle_datagram(&data[cut..], t0 + Duration::from_millis(1));
        }
        // A datagram built on our request with the fuzzer's bytes laid over it.
        let mut laid = request.clone();
        for (i, b) in data.iter().take(laid.len()).enumerate() {
            laid[i] ^= *b;
        }
        session.handle_datagram(&laid, t0 + Duration::from_millis(2));
        session.release(t0 + Duration::from_millis(3));
        session.handle_datagram(data, t0 + Duration::from_millis(4));
        let mut now = t0 + Duration::from_millis(5);
        for _ in 0..1000 {
            while session.poll_transmit().is_some() {}
            match session.poll_timeout() {
                Some(at) => {
                    now = at.max(now);
                    session.handle_timeout(now);
                }
                None => break,
            }
        }
        assert!(session.is_finished(), "a session ends by its own clock");
    }
});
