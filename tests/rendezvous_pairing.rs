//! Loopback tests of pairing: volunteers across IPs, same-IP refusal, pair codes, reference peers, no_peer.

mod support;

use std::time::{Duration, Instant};

use punchscope::analysis::handshake::Role;
use punchscope::proto::rendezvous::{ClientMessage, Mode, ServerMessage};
use punchscope::rendezvous::{Client, Hello, Pairing, RendezvousError};
use support::rendezvous::*;
use support::WAIT;

async fn pair(client: &mut Client) -> Result<Pairing, RendezvousError> {
    client
        .wait_for_pairing(|_| {}, Duration::from_secs(3))
        .await
}

#[tokio::test]
async fn two_volunteers_from_different_ips_pair_with_one_initiator() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    let mut a = Client::connect_from(Some(ip(2)), server.addr, volunteer(None), WAIT)
        .await
        .unwrap();
    assert_eq!(a.session().len(), 16);
    let mut b = Client::connect_from(Some(ip(3)), server.addr, volunteer(None), WAIT)
        .await
        .unwrap();
    let (pa, pb) = tokio::join!(pair(&mut a), pair(&mut b));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pa.role, Role::Initiator, "the first to arrive initiates");
    assert_eq!(pb.role, Role::Responder);
    assert_eq!(pa.plan, pb.plan);
    assert_eq!(pa.plan.trials, 1);
    assert_eq!(
        (pa.peer_mode, pb.peer_mode),
        (Mode::Volunteer, Mode::Volunteer)
    );
    server.stop().await;
}

#[tokio::test]
async fn volunteers_from_one_ip_are_never_paired_and_hear_no_peer_with_the_time_waited() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    let max_wait = Duration::from_millis(800);
    let hello = || Hello::volunteer(max_wait);
    let mut a = Client::connect_from(Some(ip(2)), server.addr, hello(), WAIT)
        .await
        .unwrap();
    let mut b = Client::connect_from(Some(ip(2)), server.addr, hello(), WAIT)
        .await
        .unwrap();
    let started = Instant::now();
    let mut beats = Vec::new();
    let (ra, rb) = tokio::join!(
        a.wait_for_pairing(|w| beats.push(w), max_wait),
        b.wait_for_pairing(|_| {}, max_wait)
    );
    for result in [ra, rb] {
        match result {
            Err(RendezvousError::NoPeer { waited }) => {
                assert!(
                    waited >= max_wait && waited < max_wait + Duration::from_millis(500),
                    "{waited:?}"
                );
            }
            other => panic!("expected no_peer, got {other:?}"),
        }
    }
    assert!(started.elapsed() < max_wait + Duration::from_secs(1));
    assert!(beats.len() >= 4, "heartbeats every 100 ms: {beats:?}");
    assert!(beats.windows(2).all(|w| w[0] < w[1]), "{beats:?}");
    server.stop().await;
}

#[tokio::test]
async fn pair_codes_pair_only_equal_codes() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    let mut coded = Raw::connect(ip(2), server.addr).await;
    coded
        .send(&ClientMessage::Hello(volunteer(Some("lab-7"))))
        .await;
    let mut plain = Raw::connect(ip(3), server.addr).await;
    plain.send(&ClientMessage::Hello(volunteer(None))).await;
    let mut other_code = Raw::connect(ip(5), server.addr).await;
    other_code
        .send(&ClientMessage::Hello(volunteer(Some("lab-8"))))
        .await;
    let mut same_code = Raw::connect(ip(4), server.addr).await;
    same_code
        .send(&ClientMessage::Hello(volunteer(Some("lab-7"))))
        .await;
    for raw in [&mut coded, &mut plain, &mut other_code, &mut same_code] {
        assert!(matches!(
            raw.recv().await,
            Some(ServerMessage::Welcome { .. })
        ));
    }
    assert!(matches!(
        coded.recv_skipping_heartbeats().await,
        Some(ServerMessage::Paired {
            role: Role::Initiator,
            ..
        })
    ));
    assert!(matches!(
        same_code.recv_skipping_heartbeats().await,
        Some(ServerMessage::Paired {
            role: Role::Responder,
            ..
        })
    ));
    // Different codes (and no code) did not pair with anyone; they only hear heartbeats.
    for raw in [&mut plain, &mut other_code] {
        for _ in 0..3 {
            assert!(matches!(
                raw.recv().await,
                Some(ServerMessage::Waiting { .. })
            ));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_reference_peer_serves_waiting_volunteers_one_pairing_at_a_time() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    // Two volunteers from one IP cannot pair with each other: they wait for the reference.
    let mut v1 = Raw::connect(ip(2), server.addr).await;
    v1.send(&ClientMessage::Hello(volunteer(None))).await;
    assert!(matches!(
        v1.recv().await,
        Some(ServerMessage::Welcome { .. })
    ));
    let mut v2 = Raw::connect(ip(2), server.addr).await;
    v2.send(&ClientMessage::Hello(volunteer(None))).await;
    assert!(matches!(
        v2.recv().await,
        Some(ServerMessage::Welcome { .. })
    ));
    let mut r = Raw::connect(ip(9), server.addr).await;
    r.send(&ClientMessage::Hello(reference())).await;
    assert!(matches!(
        r.recv().await,
        Some(ServerMessage::Welcome { .. })
    ));
    match v1.recv_skipping_heartbeats().await {
        Some(ServerMessage::Paired { role, peer, .. }) => {
            assert_eq!((role, peer.mode), (Role::Initiator, Mode::Reference));
        }
        other => panic!("v1 pairs with the reference first: {other:?}"),
    }
    assert!(matches!(
        r.recv().await,
        Some(ServerMessage::Paired {
            role: Role::Responder,
            ..
        })
    ));
    // While the reference is busy, v2 keeps waiting.
    for _ in 0..3 {
        assert!(matches!(
            v2.recv().await,
            Some(ServerMessage::Waiting { .. })
        ));
    }
    // The reference leaves that pairing (v1 hears peer_gone) and comes back: v2 is served.
    drop(r);
    let gone = loop {
        match v1.recv().await {
            Some(ServerMessage::PeerGone { trial }) => break trial,
            Some(_) => continue,
            None => panic!("closed without peer_gone"),
        }
    };
    assert_eq!(gone, Some(0));
    let mut r = Raw::connect(ip(9), server.addr).await;
    r.send(&ClientMessage::Hello(reference())).await;
    assert!(matches!(
        r.recv().await,
        Some(ServerMessage::Welcome { .. })
    ));
    assert!(matches!(
        v2.recv_skipping_heartbeats().await,
        Some(ServerMessage::Paired {
            role: Role::Initiator,
            ..
        })
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_volunteers_verdict_reaches_its_peer_and_a_verdictless_client_still_pairs() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    let verdict = unmeasured_verdict();
    let mut a = Client::connect_from(
        Some(ip(2)),
        server.addr,
        volunteer(None).with_verdict(&verdict),
        WAIT,
    )
    .await
    .unwrap();
    let mut b = Client::connect_from(Some(ip(3)), server.addr, volunteer(None), WAIT)
        .await
        .unwrap();
    let (pa, pb) = tokio::join!(pair(&mut a), pair(&mut b));
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pb.peer_verdict, Some(verdict));
    assert_eq!(pa.peer_verdict, None, "b sent no verdict");
    server.stop().await;
}

/// A coordinator from before `hello.verdict` (and so before
/// `hello.families`): it refuses the first unknown field it meets, as it
/// refuses every unknown client field, and welcomes a hello without them.
#[tokio::test]
async fn against_an_older_coordinator_the_client_says_hello_again_without_its_added_fields() {
    use punchscope::analysis::trial::Family;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refusal = |field: &str| {
        format!(
            r#"{{"v":1,"type":"error","code":"bad_request","message":"bad message: unknown field `{field}`, expected one of `client_version`, `os`, `mode`, `pair_code`, `max_wait_ms`, `consent`"}}"#
        )
    };
    let old_coordinator = tokio::spawn(async move {
        let mut hellos = Vec::new();
        for _ in 0..3 {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.unwrap();
            // serde meets the fields in the order the client writes them.
            let answer = if line.contains("\"verdict\"") {
                refusal("verdict")
            } else if line.contains("\"families\"") {
                refusal("families")
            } else {
                r#"{"v":1,"type":"welcome","session":"0123456789abcdef"}"#.to_string()
            };
            write
                .write_all(format!("{answer}\n").as_bytes())
                .await
                .unwrap();
            hellos.push(line);
            if !answer.contains("error") {
                return (hellos, write);
            }
        }
        panic!("the client did not retry without its added fields")
    });
    let verdict = unmeasured_verdict();
    let hello = volunteer(None)
        .with_verdict(&verdict)
        .with_families(vec![Family::Ipv4, Family::Ipv6]);
    let client = Client::connect(addr, hello, WAIT).await.unwrap();
    assert_eq!(client.session(), "0123456789abcdef");
    let (hellos, _keep_open) = old_coordinator.await.unwrap();
    assert!(hellos[0].contains("\"verdict\"") && hellos[0].contains("\"families\""));
    assert!(!hellos[1].contains("\"verdict\"") && hellos[1].contains("\"families\""));
    assert!(!hellos[2].contains("\"verdict\"") && !hellos[2].contains("\"families\""));
}

/// The verdict of a classification that measured nothing: every finding unknown, with reasons.
fn unmeasured_verdict() -> punchscope::analysis::classify::Verdict {
    punchscope::analysis::classify::verdict(&punchscope::analysis::classify::Observations {
        mapping: Vec::new(),
        allocation: Vec::new(),
        filtering: None,
        hairpin: None,
    })
}
