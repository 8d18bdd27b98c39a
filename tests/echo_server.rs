//! Loopback tests of the echo server: observed endpoints, dial-backs, refusals and robustness.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use punchscope::proto::echo::{
    self, DialBackRequest, DialKind, DialOutcome, ErrorCode, ServerMessage,
};
use punchscope::server::echo::{bind_listener, EchoConfig};
use support::echo::*;
use support::sockets::connect_from_async;
use support::WAIT;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

async fn connect(to: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(
        tokio::time::timeout(WAIT, TcpStream::connect(to))
            .await
            .unwrap()
            .unwrap(),
    )
}

fn error_code(msg: Option<ServerMessage>) -> (ErrorCode, String) {
    match msg {
        Some(ServerMessage::Error { code, message, .. }) => (code, message),
        other => panic!("expected an error line, got {other:?}"),
    }
}

#[tokio::test]
async fn reports_the_observed_and_reached_endpoints() {
    let server = start(fast_config()).await;
    for target in &server.endpoints {
        let mut conn = connect(*target).await;
        let local = conn.get_ref().local_addr().unwrap();
        match next_message(&mut conn).await {
            Some(ServerMessage::Observed {
                observed,
                reached,
                endpoints,
                request_timeout_ms,
            }) => {
                assert_eq!(observed, local);
                assert_eq!(reached, *target);
                assert_eq!(endpoints, server.endpoints);
                assert_eq!(request_timeout_ms, 500);
            }
            other => panic!("expected observed, got {other:?}"),
        }
    }
    server.stop().await.unwrap();
}

/// A client port that both listens and connects, like the classifier's
/// filtering port, on the loopback address of `server`'s family.
async fn listening_client(server: SocketAddr) -> (TcpListener, BufReader<TcpStream>) {
    let reusable = || {
        let s = if server.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .unwrap();
        s.set_reuseaddr(true).unwrap();
        s.set_reuseport(true).unwrap();
        s
    };
    let loopback: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let l = reusable();
    l.bind(loopback).unwrap();
    let local = l.local_addr().unwrap();
    let listener = l.listen(16).unwrap();
    let c = reusable();
    c.bind(local).unwrap();
    let stream = tokio::time::timeout(WAIT, c.connect(server))
        .await
        .unwrap()
        .unwrap();
    (listener, BufReader::new(stream))
}

#[tokio::test]
async fn dials_back_from_the_other_port_and_the_other_ip_with_the_token() {
    let server = start(fast_config()).await;
    let (listener, mut control) = listening_client(server.primary()).await;
    let me = listener.local_addr().unwrap();
    assert!(matches!(
        next_message(&mut control).await,
        Some(ServerMessage::Observed { .. })
    ));
    let req = DialBackRequest {
        token: "tok-42".into(),
        kinds: vec![DialKind::OtherPort, DialKind::OtherIp],
        mapped_port: None,
    };
    control
        .get_mut()
        .write_all(&echo::encode_request(&req))
        .await
        .unwrap();

    let mut arrived = HashSet::new();
    for _ in 0..2 {
        let (conn, peer) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut conn = BufReader::new(conn);
        match next_message(&mut conn).await {
            Some(ServerMessage::DialBack {
                token,
                kind,
                from,
                to,
            }) => {
                assert_eq!(token, "tok-42");
                assert_eq!(
                    from, peer,
                    "the line names the endpoint it really came from"
                );
                assert_eq!(to, me);
                let want = match kind {
                    DialKind::OtherPort => server.endpoints[1],
                    DialKind::OtherIp => server.endpoints[2],
                    DialKind::MappedPort => panic!("not asked"),
                };
                assert_eq!(peer, want, "{kind:?}");
                arrived.insert(kind);
            }
            other => panic!("expected dial_back, got {other:?}"),
        }
    }
    assert_eq!(arrived.len(), 2);

    match next_message(&mut control).await {
        Some(ServerMessage::DialBackAccepted {
            token,
            dials,
            timeout_ms,
        }) => {
            assert_eq!(token, "tok-42");
            assert_eq!(dials.len(), 2);
            assert!((500..=1000).contains(&timeout_ms));
        }
        other => panic!("expected dial_back_accepted, got {other:?}"),
    }
    let mut reported = HashSet::new();
    for _ in 0..2 {
        match next_message(&mut control).await {
            Some(ServerMessage::DialResult {
                kind, outcome, to, ..
            }) => {
                assert_eq!(outcome, DialOutcome::Connected, "{kind:?}");
                assert_eq!(to, me);
                reported.insert(kind);
            }
            other => panic!("expected dial_result, got {other:?}"),
        }
    }
    assert_eq!(reported.len(), 2);
    drop(control);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn over_ipv6_dials_back_to_the_askers_own_address_from_ipv6_endpoints_only() {
    // Two ports on ::1 (IPv6 loopback has one address) and the IPv4
    // endpoints beside them: the other-IP dial has no IPv6 source, and an
    // IPv4 one must not stand in for it.
    let mut listeners = vec![
        bind_listener("[::1]:0".parse().unwrap()).unwrap(),
        bind_listener("[::1]:0".parse().unwrap()).unwrap(),
    ];
    listeners.extend(four_listeners().await);
    let server = start_on(listeners, fast_config());
    let (listener, mut control) = listening_client(server.primary()).await;
    let me = listener.local_addr().unwrap();
    match next_message(&mut control).await {
        Some(ServerMessage::Observed { observed, .. }) => assert_eq!(observed, me),
        other => panic!("expected observed, got {other:?}"),
    }
    let req = DialBackRequest {
        token: "tok-v6".into(),
        kinds: vec![DialKind::OtherPort, DialKind::OtherIp],
        mapped_port: None,
    };
    control
        .get_mut()
        .write_all(&echo::encode_request(&req))
        .await
        .unwrap();
    let (conn, peer) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer, server.endpoints[1], "from [::1]'s other port");
    match next_message(&mut BufReader::new(conn)).await {
        Some(ServerMessage::DialBack { kind, to, .. }) => {
            assert_eq!((kind, to), (DialKind::OtherPort, me));
        }
        other => panic!("expected dial_back, got {other:?}"),
    }
    match next_message(&mut control).await {
        Some(ServerMessage::DialBackAccepted { dials, .. }) => {
            let other_ip = dials.iter().find(|d| d.kind == DialKind::OtherIp);
            assert_eq!(other_ip.map(|d| d.from), Some(None), "{dials:?}");
        }
        other => panic!("expected dial_back_accepted, got {other:?}"),
    }
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        match next_message(&mut control).await {
            Some(ServerMessage::DialResult {
                kind, outcome, to, ..
            }) => {
                assert_eq!(to, me, "{kind:?}: only to the asker's own address");
                outcomes.push((kind, outcome));
            }
            other => panic!("expected dial_result, got {other:?}"),
        }
    }
    outcomes.sort_by_key(|(k, _)| *k == DialKind::OtherIp);
    assert_eq!(
        outcomes,
        vec![
            (DialKind::OtherPort, DialOutcome::Connected),
            (DialKind::OtherIp, DialOutcome::Unavailable)
        ]
    );
    drop(control);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn reports_refused_dials_and_unavailable_kinds() {
    // One IP, two ports: the other-IP dial is unavailable, and nobody
    // listens on the client's port, so the other-port dial is refused.
    let listeners = four_listeners().await.into_iter().take(2).collect();
    let server = start_on(listeners, fast_config());
    let mut control = connect(server.primary()).await;
    assert!(next_message(&mut control).await.is_some());
    let req = DialBackRequest {
        token: "t".into(),
        kinds: vec![DialKind::OtherIp, DialKind::OtherPort],
        mapped_port: None,
    };
    control
        .get_mut()
        .write_all(&echo::encode_request(&req))
        .await
        .unwrap();
    match next_message(&mut control).await {
        Some(ServerMessage::DialBackAccepted { dials, .. }) => {
            assert_eq!(dials[0].from, None);
            assert_eq!(dials[1].from, Some(server.endpoints[1]));
        }
        other => panic!("expected dial_back_accepted, got {other:?}"),
    }
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        if let Some(ServerMessage::DialResult { kind, outcome, .. }) =
            next_message(&mut control).await
        {
            outcomes.push((kind, outcome));
        }
    }
    outcomes.sort_by_key(|(k, _)| *k == DialKind::OtherPort);
    assert_eq!(
        outcomes,
        vec![
            (DialKind::OtherIp, DialOutcome::Unavailable),
            (DialKind::OtherPort, DialOutcome::Refused)
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn dials_a_mapped_port_of_the_askers_own_address_and_refuses_misuse() {
    let server = start(fast_config()).await;
    // A listener where a router's port mapping would deliver: reached.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dial = punchscope::classify::mapped_dial_back(server.primary(), listener, port, WAIT)
        .await
        .unwrap();
    assert_eq!(dial.kind, DialKind::MappedPort);
    assert_eq!(
        dial.from,
        Some(server.primary()),
        "from the endpoint reached"
    );
    assert_eq!(dial.server_outcome, Some(DialOutcome::Connected));
    assert!(dial.received, "our listener got the dial-back line");

    // A port nobody listens on (a mapping that leads nowhere): refused, nothing received.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dial = punchscope::classify::mapped_dial_back(server.primary(), elsewhere, closed, WAIT)
        .await
        .unwrap();
    assert_eq!(dial.server_outcome, Some(DialOutcome::Refused));
    assert!(!dial.received);

    for (body, why) in [
        (
            r#""kinds":["other_ip"],"mapped_port":8333"#,
            "only for kind",
        ),
        (r#""kinds":["mapped_port"]"#, "needs mapped_port"),
        (
            r#""kinds":["mapped_port"],"mapped_port":0"#,
            "needs mapped_port",
        ),
    ] {
        let mut control = connect(server.primary()).await;
        assert!(next_message(&mut control).await.is_some());
        let line = format!("{{\"v\":1,\"type\":\"dial_back_request\",\"token\":\"t\",{body}}}\n");
        control.get_mut().write_all(line.as_bytes()).await.unwrap();
        let (code, message) = error_code(next_message(&mut control).await);
        assert_eq!(code, ErrorCode::BadRequest, "{body}");
        assert!(message.contains(why), "{body}: {message}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn refuses_a_request_naming_a_target_and_dials_nothing() {
    let server = start(fast_config()).await;
    let (listener, mut control) = listening_client(server.primary()).await;
    assert!(next_message(&mut control).await.is_some());
    let line = format!(
        "{{\"v\":1,\"type\":\"dial_back_request\",\"token\":\"t\",\"kinds\":[\"other_ip\"],\"target\":\"{}\"}}\n",
        listener.local_addr().unwrap()
    );
    control.get_mut().write_all(line.as_bytes()).await.unwrap();
    let (code, message) = error_code(next_message(&mut control).await);
    assert_eq!(code, ErrorCode::TargetNotAllowed);
    assert!(message.contains("`target`"), "{message}");
    assert!(closes(&mut control).await);
    let nothing = tokio::time::timeout(Duration::from_millis(1500), listener.accept()).await;
    assert!(
        nothing.is_err(),
        "no dial-back may follow a refused request"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn refuses_an_unknown_protocol_version_with_a_clear_message() {
    let server = start(fast_config()).await;
    let mut conn = connect(server.primary()).await;
    assert!(next_message(&mut conn).await.is_some());
    conn.get_mut()
        .write_all(
            b"{\"v\":2,\"type\":\"dial_back_request\",\"token\":\"t\",\"kinds\":[\"other_ip\"]}\n",
        )
        .await
        .unwrap();
    match next_message(&mut conn).await {
        Some(ServerMessage::Error {
            code,
            message,
            supported_versions,
            ..
        }) => {
            assert_eq!(code, ErrorCode::UnsupportedVersion);
            assert_eq!(supported_versions, Some(vec![1]));
            assert!(message.contains("version 2 is not spoken"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(closes(&mut conn).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn survives_malformed_oversized_and_silent_clients_while_serving_others() {
    let server = start(fast_config()).await;
    let mut silent = connect(server.primary()).await;
    assert!(next_message(&mut silent).await.is_some());
    let silent_since = Instant::now();

    let mut garbage = connect(server.primary()).await;
    assert!(next_message(&mut garbage).await.is_some());
    garbage
        .get_mut()
        .write_all(b"\x00\x01 not json at all\n")
        .await
        .unwrap();
    assert_eq!(
        error_code(next_message(&mut garbage).await).0,
        ErrorCode::Malformed
    );
    assert!(closes(&mut garbage).await);

    let mut huge = connect(server.primary()).await;
    assert!(next_message(&mut huge).await.is_some());
    huge.get_mut()
        .write_all(&vec![b'{'; 8 * 1024])
        .await
        .unwrap();
    assert_eq!(
        error_code(next_message(&mut huge).await).0,
        ErrorCode::LineTooLong
    );
    huge.get_mut().shutdown().await.unwrap();
    assert!(closes(&mut huge).await);

    // Served meanwhile, promptly.
    let started = Instant::now();
    let mut normal = connect(server.endpoints[3]).await;
    assert!(matches!(
        next_message(&mut normal).await,
        Some(ServerMessage::Observed { .. })
    ));
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    let (code, _) = error_code(next_message(&mut silent).await);
    assert_eq!(code, ErrorCode::RequestTimeout);
    assert!(silent_since.elapsed() >= Duration::from_millis(450));
    silent.get_mut().shutdown().await.unwrap();
    assert!(closes(&mut silent).await);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn rate_limits_dial_back_requests_per_source_ip() {
    let config = EchoConfig {
        dial_back_burst: 2,
        dial_back_refill: Duration::from_secs(60),
        ..fast_config()
    };
    let server = start(config).await;
    let req = DialBackRequest {
        token: "t".into(),
        kinds: vec![DialKind::OtherPort],
        mapped_port: None,
    };
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(server.primary()).await;
        assert!(next_message(&mut conn).await.is_some());
        conn.get_mut()
            .write_all(&echo::encode_request(&req))
            .await
            .unwrap();
        answers.push(next_message(&mut conn).await);
    }
    assert!(matches!(
        answers[0],
        Some(ServerMessage::DialBackAccepted { .. })
    ));
    assert!(matches!(
        answers[1],
        Some(ServerMessage::DialBackAccepted { .. })
    ));
    match &answers[2] {
        Some(ServerMessage::Error {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            message,
            ..
        }) => {
            assert!(*ms > 50_000 && *ms <= 60_000, "{ms}");
            assert!(message.contains("127.0.0.1"), "{message}");
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Plain mapping probes are not limited.
    let mut plain = connect(server.primary()).await;
    assert!(matches!(
        next_message(&mut plain).await,
        Some(ServerMessage::Observed { .. })
    ));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn excess_connections_are_told_busy_and_capacity_returns() {
    let config = EchoConfig {
        max_connections: 4,
        // Every client here is 127.0.0.1: the per-source caps stay out of the way.
        max_connections_per_source: u32::MAX,
        max_connections_per_site: u32::MAX,
        request_timeout: Duration::from_secs(3),
        ..fast_config()
    };
    let server = start(config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = connect(server.primary()).await;
        assert!(matches!(
            next_message(&mut conn).await,
            Some(ServerMessage::Observed { .. })
        ));
        held.push(conn);
    }
    let mut extra = connect(server.primary()).await;
    let (code, _) = error_code(next_message(&mut extra).await);
    assert_eq!(code, ErrorCode::Busy);
    assert!(closes(&mut extra).await);

    drop(held);
    // The server closes after the clients do; capacity comes back within the wait.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut conn = connect(server.primary()).await;
        match next_message(&mut conn).await {
            Some(ServerMessage::Observed { .. }) => break,
            Some(ServerMessage::Error {
                code: ErrorCode::Busy,
                ..
            }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected capacity to return, got {other:?}"),
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_clients_are_answered_or_turned_away() {
    let config = EchoConfig {
        max_connections: 64,
        // Every client here is 127.0.0.1: the per-source caps stay out of the way.
        max_connections_per_source: u32::MAX,
        max_connections_per_site: u32::MAX,
        ..fast_config()
    };
    let server = start(config).await;
    let target = server.primary();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        clients.spawn(async move {
            let stream = TcpStream::connect(target).await.ok()?;
            let mut conn = BufReader::new(stream);
            let mut line = String::new();
            tokio::time::timeout(WAIT, conn.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            let msg = echo::decode_server(line.trim_end()).ok()?;
            // Hold the connection open briefly, like a slow client.
            tokio::time::sleep(Duration::from_millis(200)).await;
            Some(matches!(msg, ServerMessage::Observed { .. }))
        });
    }
    let (mut served, mut busy, mut failed) = (0, 0, 0);
    while let Some(result) = clients.join_next().await {
        match result.unwrap() {
            Some(true) => served += 1,
            Some(false) => busy += 1,
            None => failed += 1,
        }
    }
    assert!(
        served >= 64,
        "served {served}, busy {busy}, failed {failed}"
    );
    assert!(
        served + busy >= 990,
        "served {served}, busy {busy}, failed {failed}"
    );
    let mut after = connect(server.primary()).await;
    let deadline = Instant::now() + WAIT;
    while !matches!(
        next_message(&mut after).await,
        Some(ServerMessage::Observed { .. })
    ) {
        assert!(Instant::now() < deadline, "server never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = connect(server.primary()).await;
    }
    server.stop().await.unwrap();
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(connect_from_async(from.into(), to).await)
}

#[tokio::test]
async fn one_source_cannot_take_every_place() {
    let config = EchoConfig {
        max_connections: 64,
        max_connections_per_source: 3,
        request_timeout: Duration::from_secs(3),
        ..fast_config()
    };
    let server = start(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = connect_from([127, 9, 0, 1], server.primary()).await;
        assert!(matches!(
            next_message(&mut conn).await,
            Some(ServerMessage::Observed { .. })
        ));
        held.push(conn);
    }
    let mut flood = connect_from([127, 9, 0, 1], server.primary()).await;
    let (code, message) = error_code(next_message(&mut flood).await);
    assert_eq!(code, ErrorCode::TooManyConnections);
    assert!(message.contains("127.9.0.1"), "{message}");
    assert!(closes(&mut flood).await);
    let mut other = connect_from([127, 9, 0, 2], server.primary()).await;
    assert!(
        matches!(
            next_message(&mut other).await,
            Some(ServerMessage::Observed { .. })
        ),
        "another source is still served"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn error_lines_stay_within_the_line_limit_whatever_the_client_sent() {
    let server = start(fast_config()).await;
    let mut conn = connect(server.primary()).await;
    assert!(matches!(
        next_message(&mut conn).await,
        Some(ServerMessage::Observed { .. })
    ));
    // An unknown type as long as a line allows: the error quotes it.
    let long = "x".repeat(echo::MAX_LINE - 40);
    let request = format!("{{\"v\":1,\"type\":\"{long}\"}}\n");
    assert!(request.len() <= echo::MAX_LINE);
    conn.get_mut().write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(WAIT, conn.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.len() <= echo::MAX_LINE, "{} bytes", line.len());
    let (code, _) = error_code(echo::decode_server(line.trim_end()).ok());
    assert_ne!(code, ErrorCode::Other);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shuts_down_promptly_with_connections_open() {
    let config = EchoConfig {
        request_timeout: Duration::from_secs(30),
        ..fast_config()
    };
    let server = start(config).await;
    let mut open = connect(server.primary()).await;
    assert!(next_message(&mut open).await.is_some());
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        closes(&mut open).await,
        "open connections are closed on shutdown"
    );
}
