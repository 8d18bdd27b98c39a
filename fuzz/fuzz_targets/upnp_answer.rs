//! What a hostile router sends the UPnP IGD client: SSDP answers, HTTP answers (whole and cut), device descriptions, SOAP answers and URLs; nothing may panic, and any URL the client accepts is on the gateway's address.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use punchscope::portmap::upnp::{self, Action, HttpAnswer, HttpReader, SsdpSearch};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

fuzz_target!(|data: &[u8]| {
    // SSDP: one datagram, and a search fed it.
    let _ = upnp::parse_ssdp_answer(data);
    let t0 = Instant::now();
    let mut search = SsdpSearch::new(
        SocketAddrV4::new(GATEWAY, upnp::SSDP_PORT),
        2,
        Duration::from_secs(1),
        Duration::from_secs(2),
        t0,
    );
    let _ = search.poll_transmit(t0);
    search.handle_datagram(data, t0);
    if let Some(found) = &search.found {
        assert_eq!(*found.addr.ip(), GATEWAY, "a location off the gateway was accepted");
    }

    // URLs: alone and relative to a location on the gateway.
    if let Ok(text) = std::str::from_utf8(data) {
        let base = upnp::gateway_url("LOCATION", "http://192.168.1.1:5000/rootDesc.xml", None, GATEWAY)
            .expect("a good base");
        for parsed in [
            upnp::gateway_url("LOCATION", text, None, GATEWAY),
            upnp::gateway_url("controlURL", text, Some(&base), GATEWAY),
        ] {
            if let Ok(target) = parsed {
                assert_eq!(*target.addr.ip(), GATEWAY, "a URL off the gateway was accepted");
                assert!(!target.path.contains(['\r', '\n', ' ']), "the request line stays one line");
            }
        }
    }

    // HTTP: the whole answer at once, and in pieces at a few cuts.
    let mut whole = HttpReader::new(upnp::MAX_DESCRIPTION);
    if whole.push(data).is_ok() {
        let _ = whole.finish(true);
        let _ = whole.finish(false);
    }
    let mut pieces = HttpReader::new(upnp::MAX_SOAP_ANSWER);
    let mut at = 0;
    for cut in [1usize, 7, 64, 300] {
        let end = (at + cut).min(data.len());
        if pieces.push(&data[at..end]).is_err() {
            break;
        }
        at = end;
    }
    let _ = pieces.finish(true);

    // XML: as a description, and as SOAP answers to each action.
    let _ = upnp::parse_description(data);
    for status in [200, 500] {
        let answer = HttpAnswer {
            status,
            body: data.to_vec(),
        };
        for action in [
            Action::GetExternalIpAddress,
            Action::AddAnyPortMapping {
                external_port: 8333,
                internal_port: 8333,
                internal_client: Ipv4Addr::new(192, 168, 1, 2),
                lease_s: 120,
            },
            Action::DeletePortMapping { external_port: 8333 },
        ] {
            let _ = upnp::parse_soap_answer(&answer, &action);
        }
    }
});
