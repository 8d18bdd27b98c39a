//! Loopback tests of misbehaving clients: each is closed with an error line, and a pairing running beside them is not disturbed.

mod support;

use std::time::Duration;

use punchscope::analysis::trial::TrialOutcome;
use punchscope::proto::rendezvous::{ClientMessage, ErrorCode, ServerMessage, MAX_LINE};
use punchscope::rendezvous::{register_port, Client, Hello, RendezvousError, Step, TrialReport};
use support::rendezvous::*;
use support::sockets::trial_socket;
use support::WAIT;

/// Runs a whole pairing of two library clients on 127.0.0.2 and 127.0.0.3.
async fn good_pair(server: std::net::SocketAddr) -> [u32; 2] {
    let run = |last: u8| async move {
        let mut c = Client::connect_from(Some(ip(last)), server, volunteer(Some("good")), WAIT)
            .await
            .unwrap();
        c.wait_for_pairing(|_| {}, WAIT).await.unwrap();
        for _ in 0..100 {
            match c.next().await.unwrap() {
                Step::Trial { token, .. } => {
                    register_port(trial_socket(ip(last)), c.server(), &token, None, WAIT)
                        .await
                        .unwrap();
                }
                Step::Prime { trial, .. } => c.primed(trial).await.unwrap(),
                Step::Go { trial, delay, .. } => {
                    tokio::time::sleep(delay).await;
                    let report = TrialReport {
                        outcome: TrialOutcome::Connected,
                        go_to_established_ms: Some(1.0),
                        attempts: 1,
                    };
                    c.report(trial, &report).await.unwrap();
                }
                Step::PeerResult { .. } => {}
                Step::PeerGone { trial } => panic!("peer gone in {trial:?}"),
                Step::Done { trials } => return trials,
            }
        }
        panic!("too many steps");
    };
    let (a, b) = tokio::join!(run(2), run(3));
    [a, b]
}

#[tokio::test]
async fn misbehaving_clients_are_closed_with_an_error_and_do_not_disturb_a_pairing() {
    let server = start(fast_config(plan(
        4,
        "[\"simultaneous\", \"low_ttl\"]",
        0,
        2,
    )))
    .await;
    let addr = server.addr;
    let pairing = tokio::spawn(good_pair(addr));
    let bad = |last: u8, bytes: Vec<u8>, code: ErrorCode| async move {
        let mut raw = Raw::connect(ip(last), addr).await;
        if !bytes.is_empty() {
            raw.send_raw(&bytes).await;
        }
        raw.expect_error_and_close(code).await;
    };
    let mut oversized = vec![b'{'; MAX_LINE + 100];
    oversized.push(b'\n');
    let consentless = br#"{"v":1,"type":"hello","client_version":"x","os":"linux","mode":"volunteer","consent":false}"#;
    let wrong_time = br#"{"v":1,"type":"result","trial":0,"outcome":"connected","attempts":1}"#;
    tokio::join!(
        bad(10, b"hello coordinator\n".to_vec(), ErrorCode::Malformed),
        bad(11, oversized, ErrorCode::LineTooLong),
        bad(12, Vec::new(), ErrorCode::HelloTimeout),
        bad(13, b"{\"v\":2,\"type\":\"hello\"}\n".to_vec(), ErrorCode::UnsupportedVersion),
        bad(14, [&consentless[..], b"\n"].concat(), ErrorCode::ConsentRequired),
        bad(15, [&wrong_time[..], b"\n"].concat(), ErrorCode::Unexpected),
        bad(16, b"{\"v\":1,\"type\":\"register\",\"token\":\"guess\"}\n".to_vec(), ErrorCode::UnknownToken),
        bad(17, b"{\"v\":1,\"type\":\"hello\",\"client_version\":\"x\",\"os\":\"y\",\"mode\":\"volunteer\",\"consent\":true,\"peer\":\"192.0.2.1:80\"}\n".to_vec(), ErrorCode::BadRequest),
        bad(18, b"{\"v\":1,\"type\":\"pong\"".to_vec(), ErrorCode::HelloTimeout),
    );
    let done = tokio::time::timeout(Duration::from_secs(10), pairing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done, [4, 4]);
    server.stop().await;
}

#[tokio::test]
async fn the_versioned_error_names_the_supported_versions() {
    let server = start(fast_config(plan(1, "[\"simultaneous\"]", 0, 1))).await;
    let mut raw = Raw::connect(ip(2), server.addr).await;
    raw.send_raw(b"{\"v\":7,\"type\":\"hello\"}\n").await;
    match raw.recv().await {
        Some(ServerMessage::Error {
            code: ErrorCode::UnsupportedVersion,
            supported_versions,
            ..
        }) => assert_eq!(supported_versions, Some(vec![1])),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let mut config = fast_config(plan(1, "[\"simultaneous\"]", 0, 1));
    config.coordinator.max_connections_per_ip = 3;
    let server = start(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(ip(2), server.addr).await;
        raw.send(&ClientMessage::Hello(volunteer(Some("solo"))))
            .await;
        assert!(matches!(
            raw.recv().await,
            Some(ServerMessage::Welcome { .. })
        ));
        held.push(raw);
    }
    let mut fourth = Raw::connect(ip(2), server.addr).await;
    fourth
        .expect_error_and_close(ErrorCode::TooManyConnections)
        .await;
    // Another IP is not affected.
    let mut other = Raw::connect(ip(3), server.addr).await;
    other
        .send(&ClientMessage::Hello(volunteer(Some("solo2"))))
        .await;
    assert!(matches!(
        other.recv().await,
        Some(ServerMessage::Welcome { .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn the_client_library_reports_refusals_and_a_coordinator_going_away() {
    let mut config = fast_config(plan(1, "[\"simultaneous\"]", 0, 1));
    config.coordinator.references = Default::default();
    let server = start(config).await;
    match Client::connect_from(Some(ip(9)), server.addr, Hello::reference(), WAIT).await {
        Err(RendezvousError::Server { code, .. }) => {
            assert_eq!(code, ErrorCode::ReferenceNotAllowed)
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut waiting = Client::connect_from(Some(ip(2)), server.addr, volunteer(None), WAIT)
        .await
        .unwrap();
    let (result, ()) = tokio::join!(
        waiting.wait_for_pairing(|_| {}, Duration::from_secs(3)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.stop().await;
        }
    );
    match result {
        Err(RendezvousError::Server { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_volunteer_is_still_paired_while_a_waiting_flood_is_held() {
    let mut config = fast_config(plan(4, "[\"simultaneous\", \"low_ttl\"]", 0, 2));
    config.coordinator.max_waiting = 60;
    config.coordinator.max_waiting_per_site = 8;
    config.coordinator.max_wait = Duration::from_secs(60);
    let server = start(config).await;
    // The flood: 20 sources (127.60.0.x) each try to hold 8 waiting places
    // with codes nobody else uses; 60 places in all.
    let mut flood = Vec::new();
    for source in 0..20u8 {
        for n in 0..8u8 {
            let mut raw = Raw::connect(
                std::net::IpAddr::from([127, 60, 0, source + 1]),
                server.addr,
            )
            .await;
            let code = format!("flood-{source}-{n}");
            raw.send(&ClientMessage::Hello(volunteer(Some(&code))))
                .await;
            flood.push(raw);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut welcomed = 0;
    let mut busy = 0;
    for raw in &mut flood {
        match raw.recv().await {
            Some(ServerMessage::Welcome { .. }) => welcomed += 1,
            other => panic!("{other:?}"),
        }
        match tokio::time::timeout(Duration::from_millis(20), raw.recv_skipping_heartbeats()).await
        {
            Ok(Some(ServerMessage::Error {
                code: ErrorCode::Busy,
                ..
            })) => busy += 1,
            Ok(other) => panic!("{other:?}"),
            Err(_) => {}
        }
    }
    assert_eq!(welcomed, 160);
    assert_eq!(busy, 100, "60 of 160 keep a place");

    // While the flood holds every place, a pair of volunteers still pairs
    // and runs its whole plan.
    let done = tokio::time::timeout(Duration::from_secs(20), good_pair(server.addr))
        .await
        .expect("the good pair finished while the flood was held");
    assert_eq!(done, [4, 4]);
    drop(flood);
    server.stop().await;
}
