//! Sans-io unit tests of the rendezvous codec and coordinator: whole pairings on a fake clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::coordinator::{Action, ConnId, Coordinator, CoordinatorConfig, ReferencePolicy};
use super::*;
use punchscope_analysis::trial::Family;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn plan(trials: u32, strategies: &str, skew: u32, samples: u32) -> Plan {
    Plan::from_toml(&format!(
        "version = 1\nname = \"t\"\ntrials = {trials}\nstrategies = {strategies}\ninjected_skew_ms = {skew}\nrtt_samples = {samples}\n"
    ))
    .unwrap()
}

fn hello(code: Option<&str>) -> ClientMessage {
    ClientMessage::Hello(Hello {
        client_version: "test".into(),
        os: "linux".into(),
        mode: Mode::Volunteer,
        pair_code: code.map(str::to_string),
        max_wait_ms: None,
        consent: true,
        verdict: None,
        families: None,
    })
}

/// A coordinator plus a fake clock and everything it sent, per connection.
struct Harness {
    core: Coordinator,
    now: Instant,
    sent: HashMap<ConnId, Vec<ServerMessage>>,
    closed: Vec<ConnId>,
}

impl Harness {
    fn new(config: CoordinatorConfig) -> Self {
        Harness {
            core: Coordinator::new(config, rand::rngs::StdRng::seed_from_u64(7)).unwrap(),
            now: Instant::now(),
            sent: HashMap::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Send { conn, msg } => self.sent.entry(conn).or_default().push(*msg),
                Action::Close { conn } => self.closed.push(conn),
            }
        }
    }

    fn connect(&mut self, conn: ConnId, addr: &str) {
        self.core.connected(self.now, conn, sa(addr));
        self.drain();
    }

    fn say(&mut self, conn: ConnId, msg: &ClientMessage) {
        let line = encode_client(msg);
        self.core.line(self.now, conn, frame(&line));
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// Volunteers 1 (127.0.0.2) and 2 (127.0.0.3) connect and say their
    /// hellos: with matching ones, 1 is the initiator of a new pair.
    fn pair_two(&mut self, first: &ClientMessage, second: &ClientMessage) {
        self.connect(1, "127.0.0.2:1000");
        self.say(1, first);
        self.connect(2, "127.0.0.3:1000");
        self.say(2, second);
    }

    /// Everything sent to `conn` since the last call.
    fn take(&mut self, conn: ConnId) -> Vec<ServerMessage> {
        self.sent.remove(&conn).unwrap_or_default()
    }
}

fn config(plan: Plan) -> CoordinatorConfig {
    CoordinatorConfig {
        plan,
        max_wait: Duration::from_secs(30),
        heartbeat: Duration::from_secs(5),
        ..CoordinatorConfig::default()
    }
}

#[test]
fn messages_round_trip_and_start_with_the_version() {
    let plan = plan(2, "[\"low_ttl\"]", 0, 1);
    let msgs = [
        ServerMessage::Paired {
            role: Role::Responder,
            plan,
            peer: PeerInfo {
                mode: Mode::Reference,
                verdict: None,
            },
        },
        ServerMessage::Go {
            trial: 3,
            peer: sa("[2001:db8::1]:4000"),
            delay_ms: 20,
            nonce: "ab".into(),
            strategy: Strategy::ConnectListen,
            injected_skew_ms: 0,
            timing: Some(punchscope_analysis::plan::AttemptTiming {
                attempt_timeout_ms: 400,
                retry_gap_ms: 100,
                retry_jitter_ms: 100,
                pair_rtt_ms: Some(200),
            }),
            mapped: Some(MappedSide::Listen),
        },
        ServerMessage::PeerGone { trial: None },
        ProtoError::Line(LineError::UnsupportedVersion {
            got: 9,
            supported: vec![1],
        })
        .to_message(),
    ];
    for msg in msgs {
        let line = encode_server(&msg);
        assert!(line.starts_with(b"{\"v\":1,\"type\":\""), "{line:?}");
        assert_eq!(decode_server(frame(&line).unwrap()).unwrap(), msg);
    }
    let result = ClientMessage::Result(TrialResult {
        trial: 1,
        outcome: TrialOutcome::Refused,
        go_to_established_ms: None,
        attempts: 4,
    });
    let line = encode_client(&result);
    assert_eq!(
        std::str::from_utf8(&line).unwrap(),
        "{\"v\":1,\"type\":\"result\",\"trial\":1,\"outcome\":\"refused\",\"attempts\":4}\n"
    );
    assert_eq!(decode_client(frame(&line).unwrap()).unwrap(), result);
    assert_eq!(
        decode_client(r#"{"v":1,"type":"bye"}"#).unwrap(),
        ClientMessage::Bye
    );
}

#[test]
fn a_paired_message_from_a_newer_coordinator_is_read_with_its_unknown_fields_ignored() {
    let plan = plan(2, "[\"low_ttl\"]", 0, 1);
    let mut value = serde_json::json!({
        "v": 1,
        "type": "paired",
        "role": "initiator",
        "plan": serde_json::to_value(&plan).unwrap(),
        "peer": { "mode": "volunteer", "region": "eu" },
        "relay": "none",
    });
    value["plan"]["pacing_ms"] = 25.into();
    value["plan"]["future_table"] = serde_json::json!({ "x": [1, 2] });
    let line = serde_json::to_string(&value).unwrap();
    match decode_server(&line).unwrap() {
        ServerMessage::Paired {
            role,
            plan: read,
            peer,
        } => {
            assert_eq!(role, Role::Initiator);
            assert_eq!(read, plan);
            assert_eq!(peer.mode, Mode::Volunteer);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_client_lines_get_the_right_code() {
    let cases = [
        (r#"{"v":2,"type":"bye"}"#, ErrorCode::UnsupportedVersion),
        (r#"{"type":"bye"}"#, ErrorCode::Malformed),
        ("bye", ErrorCode::Malformed),
        (r#"{"v":1,"type":"observe"}"#, ErrorCode::UnknownType),
        (r#"{"v":1}"#, ErrorCode::Malformed),
        (
            r#"{"v":1,"type":"register","token":"abc","observed":"192.0.2.1:80"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"type":"register","token":"a b"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"type":"hello","client_version":"x","os":"y","mode":"volunteer","consent":false}"#,
            ErrorCode::ConsentRequired,
        ),
        (
            r#"{"v":1,"type":"hello","client_version":"x","os":"y","mode":"volunteer"}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"type":"hello","client_version":"x","os":"y","mode":"volunteer","consent":true,"pair_code":""}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"v":1,"type":"result","trial":0,"outcome":"connected","attempts":1,"go_to_established_ms":-1}"#,
            ErrorCode::BadRequest,
        ),
    ];
    for (line, code) in cases {
        assert_eq!(decode_client(line).unwrap_err().code(), code, "{line}");
    }
    assert_eq!(
        frame(&[b'x'; MAX_LINE]),
        Err(ProtoError::Line(LineError::LineTooLong { max: MAX_LINE }))
    );
    assert_eq!(frame(b"{}"), Err(ProtoError::Line(LineError::Unterminated)));
    assert_eq!(frame(b"{}\r\n"), Ok("{}"));
}

#[test]
fn start_delays_let_both_syns_leave_together() {
    let ms = Duration::from_millis;
    assert_eq!(start_delays(ms(10), ms(50), ms(0)), (ms(20), ms(0)));
    assert_eq!(start_delays(ms(80), ms(20), ms(100)), (ms(0), ms(130)));
    assert_eq!(start_delays(ms(30), ms(30), ms(0)), (ms(0), ms(0)));
    let capped = start_delays(ms(0), Duration::from_secs(60), ms(0)).0;
    assert_eq!(capped, ms(MAX_START_DELAY_MS));
}

/// Answers the outstanding pings of `conn` after `rtt` each, until none is left.
fn answer_pings(h: &mut Harness, conn: ConnId, rtt: Duration, log: &mut Vec<ServerMessage>) {
    for _ in 0..50 {
        let msgs = h.take(conn);
        let ping = msgs.iter().find_map(|m| match m {
            ServerMessage::Ping { id } => Some(*id),
            _ => None,
        });
        log.extend(msgs);
        let Some(id) = ping else {
            return;
        };
        h.now += rtt;
        h.say(conn, &ClientMessage::Pong { id });
    }
    panic!("endless pings");
}

/// A side's `result` for `trial`: timed out after one attempt.
fn timed_out(trial: u32) -> ClientMessage {
    ClientMessage::Result(TrialResult {
        trial,
        outcome: TrialOutcome::Timeout,
        go_to_established_ms: None,
        attempts: 1,
    })
}

/// The registration token of the `trial` message in `log`.
fn trial_token(log: &[ServerMessage]) -> String {
    log.iter()
        .find_map(|m| match m {
            ServerMessage::Trial { token, .. } => Some(token.clone()),
            _ => None,
        })
        .expect("a trial message")
}

#[test]
fn a_whole_pairing_runs_every_trial_with_observed_endpoints() {
    let mut h = Harness::new(config(plan(
        3,
        "[\"simultaneous\", \"connect_listen\", \"low_ttl\"]",
        50,
        2,
    )));
    h.pair_two(&hello(None), &hello(None));
    let first = h.take(1);
    assert!(matches!(first[0], ServerMessage::Welcome { .. }));
    assert!(matches!(
        first[1],
        ServerMessage::Paired {
            role: Role::Initiator,
            ..
        }
    ));
    let second = h.take(2);
    assert!(matches!(
        second[1],
        ServerMessage::Paired {
            role: Role::Responder,
            ..
        }
    ));
    // The trial messages come with the first ping; put them back for the loop.
    h.sent.insert(1, first[2..].to_vec());
    h.sent.insert(2, second[2..].to_vec());
    let mut nonces = Vec::new();
    for trial in 0..3u32 {
        let (mut log1, mut log2) = (Vec::new(), Vec::new());
        answer_pings(&mut h, 1, Duration::from_millis(10), &mut log1);
        answer_pings(&mut h, 2, Duration::from_millis(50), &mut log2);
        let token = |log: &[ServerMessage]| {
            log.iter()
                .find_map(|m| match m {
                    ServerMessage::Trial {
                        trial: t, token, ..
                    } if *t == trial => Some(token.clone()),
                    _ => None,
                })
                .expect("a trial message")
        };
        let (t1, t2) = (token(&log1), token(&log2));
        assert_ne!(t1, t2, "each side gets its own token");
        let (reg1, reg2) = (100 + u64::from(trial) * 2, 101 + u64::from(trial) * 2);
        let addr1 = format!("127.0.0.2:{}", 2000 + trial);
        let addr2 = format!("127.0.0.3:{}", 3000 + trial);
        h.connect(reg1, &addr1);
        h.say(
            reg1,
            &ClientMessage::Register {
                token: t1.clone(),
                mapped_port: None,
            },
        );
        assert_eq!(
            h.take(reg1),
            vec![ServerMessage::Registered {
                observed: sa(&addr1)
            }]
        );
        assert!(h.closed.contains(&reg1));
        assert!(
            h.take(1).is_empty() && h.take(2).is_empty(),
            "no go before both registered"
        );
        h.connect(reg2, &addr2);
        h.say(
            reg2,
            &ClientMessage::Register {
                token: t2,
                mapped_port: None,
            },
        );
        // A token works once.
        h.connect(999, "127.0.0.2:4444");
        h.say(
            999,
            &ClientMessage::Register {
                token: t1,
                mapped_port: None,
            },
        );
        assert!(matches!(
            h.take(999)[0],
            ServerMessage::Error {
                code: ErrorCode::UnknownToken,
                ..
            }
        ));
        let (mut m1, mut m2) = (h.take(1), h.take(2));
        if trial == 2 {
            assert_eq!(
                m1,
                vec![ServerMessage::Prime {
                    trial,
                    peer: sa(&addr2),
                    ttl: 2
                }]
            );
            assert!(matches!(m2[0], ServerMessage::Prime { peer, .. } if peer == sa(&addr1)));
            h.say(1, &ClientMessage::Primed { trial });
            assert!(
                h.take(1).is_empty() && h.take(2).is_empty(),
                "go waits for both primed"
            );
            h.say(2, &ClientMessage::Primed { trial });
            m1 = h.take(1);
            m2 = h.take(2);
        }
        let go = |m: &[ServerMessage]| match &m[0] {
            ServerMessage::Go {
                peer,
                delay_ms,
                nonce,
                injected_skew_ms,
                ..
            } => (*peer, *delay_ms, nonce.clone(), *injected_skew_ms),
            other => panic!("expected go, got {other:?}"),
        };
        let (g1, g2) = (go(&m1), go(&m2));
        assert_eq!(
            (g1.0, g2.0),
            (sa(&addr2), sa(&addr1)),
            "peer = observed registration"
        );
        assert_eq!(g1.2, g2.2, "same nonce");
        assert_eq!(g1.2.len(), 32);
        nonces.push(g1.2);
        assert_eq!(
            (g1.1, g1.3),
            (20, 0),
            "initiator waits half the RTT difference"
        );
        assert_eq!(
            (g2.1, g2.3),
            (50, 50),
            "responder gets the injected skew only"
        );
        let report = |outcome| {
            ClientMessage::Result(TrialResult {
                trial,
                outcome,
                go_to_established_ms: None,
                attempts: 1,
            })
        };
        h.say(1, &report(TrialOutcome::Connected));
        assert!(h.take(2).is_empty(), "results are relayed once both are in");
        h.say(2, &report(TrialOutcome::Timeout));
        let (m1, m2) = (h.take(1), h.take(2));
        assert_eq!(
            m1[0],
            ServerMessage::PeerResult {
                trial,
                outcome: TrialOutcome::Timeout
            }
        );
        assert_eq!(
            m2[0],
            ServerMessage::PeerResult {
                trial,
                outcome: TrialOutcome::Connected
            }
        );
        if trial < 2 {
            h.sent.insert(1, m1[1..].to_vec());
            h.sent.insert(2, m2[1..].to_vec());
        } else {
            assert_eq!(m1[1..], [ServerMessage::Done { trials: 3 }]);
            assert_eq!(m2[1..], [ServerMessage::Done { trials: 3 }]);
        }
    }
    assert!(h.closed.contains(&1) && h.closed.contains(&2));
    nonces.dedup();
    assert_eq!(nonces.len(), 3, "a fresh nonce per trial");
    let stats = h.core.stats();
    assert_eq!(
        (stats.connections, stats.pairs, stats.trials_completed),
        (0, 0, 3)
    );
}

#[test]
fn same_ip_volunteers_wait_with_heartbeats_then_get_no_peer() {
    let mut h = Harness::new(config(plan(1, "[\"simultaneous\"]", 0, 1)));
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello(None));
    h.connect(2, "127.0.0.2:1001");
    h.say(2, &hello(None));
    assert_eq!(h.core.stats().waiting, 2);
    for _ in 0..6 {
        h.advance(Duration::from_secs(5));
    }
    let msgs = h.take(1);
    let beats: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Waiting { waited_ms } => Some(*waited_ms),
            _ => None,
        })
        .collect();
    assert_eq!(beats, [5000, 10_000, 15_000, 20_000, 25_000]);
    assert!(matches!(
        msgs.last(),
        Some(ServerMessage::NoPeer {
            waited_ms: 30_000,
            ..
        })
    ));
    assert!(h.closed.contains(&1) && h.closed.contains(&2));
    assert_eq!(h.core.stats().waiting, 0);
}

#[test]
fn a_peer_leaving_mid_trial_ends_the_pairing() {
    let mut h = Harness::new(config(plan(5, "[\"simultaneous\"]", 0, 1)));
    h.pair_two(&hello(Some("x")), &hello(Some("x")));
    h.take(1);
    h.core.closed(h.now, 2);
    h.drain();
    assert_eq!(h.take(1), vec![ServerMessage::PeerGone { trial: Some(0) }]);
    assert!(h.closed.contains(&1));
    assert_eq!(h.core.stats().pairs, 0);
}

#[test]
fn a_side_that_never_registers_times_out_the_trial() {
    let mut h = Harness::new(config(plan(5, "[\"simultaneous\"]", 0, 1)));
    h.pair_two(&hello(None), &hello(None));
    let (mut log1, mut log2) = (Vec::new(), Vec::new());
    answer_pings(&mut h, 1, Duration::from_millis(1), &mut log1);
    answer_pings(&mut h, 2, Duration::from_millis(1), &mut log2);
    let token = trial_token(&log1);
    h.connect(3, "127.0.0.2:2000");
    h.say(
        3,
        &ClientMessage::Register {
            token,
            mapped_port: None,
        },
    );
    h.advance(Duration::from_secs(16));
    assert_eq!(h.take(1), vec![ServerMessage::PeerGone { trial: Some(0) }]);
    assert!(matches!(
        h.take(2)[..],
        [ServerMessage::Error {
            code: ErrorCode::RegisterTimeout,
            ..
        }]
    ));
    assert_eq!(h.core.stats().connections, 0);
}

#[test]
fn registrations_from_another_ip_are_refused() {
    let mut h = Harness::new(config(plan(1, "[\"simultaneous\"]", 0, 1)));
    h.pair_two(&hello(None), &hello(None));
    let token = h
        .take(1)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Trial { token, .. } => Some(token),
            _ => None,
        })
        .unwrap();
    h.connect(3, "192.0.2.66:2000");
    h.say(
        3,
        &ClientMessage::Register {
            token,
            mapped_port: None,
        },
    );
    assert!(matches!(
        h.take(3)[..],
        [ServerMessage::Error {
            code: ErrorCode::IpMismatch,
            ..
        }]
    ));
    assert!(h
        .take(2)
        .iter()
        .all(|m| !matches!(m, ServerMessage::Go { .. })));
}

#[test]
fn limits_and_policies_refuse_with_a_reason() {
    let mut h = Harness::new(CoordinatorConfig {
        max_connections_per_ip: 2,
        trials_per_ip_burst: 3,
        ..config(plan(3, "[\"simultaneous\"]", 0, 1))
    });
    h.connect(1, "127.0.0.2:1");
    h.connect(2, "127.0.0.2:2");
    h.connect(3, "127.0.0.2:3");
    let code = |msgs: Vec<ServerMessage>| match &msgs[..] {
        [ServerMessage::Error { code, .. }] => *code,
        other => panic!("expected one error, got {other:?}"),
    };
    assert_eq!(code(h.take(3)), ErrorCode::TooManyConnections);
    let mut reference = hello(None);
    if let ClientMessage::Hello(h) = &mut reference {
        h.mode = Mode::Reference;
    }
    h.say(1, &reference);
    assert_eq!(code(h.take(1)), ErrorCode::ReferenceNotAllowed);
    h.say(2, &ClientMessage::Pong { id: 1 });
    assert_eq!(code(h.take(2)), ErrorCode::Unexpected);
    // Budget: 3 trials and a plan needs 3: once the first pairing started a trial, no second pairing fits.
    h.connect(4, "127.0.0.4:1");
    h.say(4, &hello(None));
    h.connect(5, "127.0.0.5:1");
    h.say(5, &hello(None));
    h.core.closed(h.now, 5);
    h.drain();
    h.connect(6, "127.0.0.4:2");
    h.say(6, &hello(None));
    assert_eq!(code(h.take(6)), ErrorCode::RateLimited);
    // A silent connection is closed after the hello deadline.
    h.connect(7, "127.0.0.7:1");
    h.advance(Duration::from_secs(11));
    assert_eq!(code(h.take(7)), ErrorCode::HelloTimeout);
}

#[test]
fn a_reference_serves_one_volunteer_at_a_time() {
    let mut h = Harness::new(CoordinatorConfig {
        references: ReferencePolicy::From(vec!["127.0.0.9".parse().unwrap()]),
        ..config(plan(1, "[\"simultaneous\"]", 0, 1))
    });
    let mut reference = hello(None);
    if let ClientMessage::Hello(h) = &mut reference {
        h.mode = Mode::Reference;
    }
    h.connect(1, "127.0.0.9:1");
    h.say(1, &reference);
    h.connect(2, "127.0.0.2:1");
    h.say(2, &hello(None));
    h.connect(3, "127.0.0.2:2");
    h.say(3, &hello(None));
    let paired_role = |msgs: &[ServerMessage]| {
        msgs.iter().find_map(|m| match m {
            ServerMessage::Paired { role, peer, .. } => Some((*role, peer.mode)),
            _ => None,
        })
    };
    assert_eq!(
        paired_role(&h.take(1)),
        Some((Role::Responder, Mode::Volunteer))
    );
    assert_eq!(
        paired_role(&h.take(2)),
        Some((Role::Initiator, Mode::Reference))
    );
    assert_eq!(paired_role(&h.take(3)), None, "the reference is busy");
    assert_eq!(h.core.stats().waiting, 1);
}

/// A verdict as a probe behind an EIM/APDF NAT would send it.
fn eim_apdf_verdict() -> punchscope_analysis::classify::Verdict {
    use punchscope_analysis::classify::{AllocationPattern, Finding, Verdict};
    use punchscope_analysis::nat::{Filtering, Mapping};
    Verdict {
        no_nat: false,
        mapping: Finding::Known {
            value: Mapping::Eim,
        },
        filtering: Finding::Known {
            value: Filtering::Apdf,
        },
        port_preserved: Some(true),
        allocation: Finding::Known {
            value: AllocationPattern::Preserving,
        },
        hairpin: None,
        missing: vec!["hairpinning was not tested".into()],
        path: None,
        ipv6: None,
    }
}

fn hello_with_verdict(verdict: punchscope_analysis::classify::Verdict) -> ClientMessage {
    let mut msg = hello(None);
    if let ClientMessage::Hello(h) = &mut msg {
        h.verdict = Some(Box::new(verdict));
    }
    msg
}

fn peer_of(msgs: &[ServerMessage]) -> Option<PeerInfo> {
    msgs.iter().find_map(|m| match m {
        ServerMessage::Paired { peer, .. } => Some(peer.clone()),
        _ => None,
    })
}

#[test]
fn each_side_hears_the_verdict_its_peer_sent_and_nothing_when_it_sent_none() {
    let mut h = Harness::new(config(plan(1, "[\"simultaneous\"]", 0, 1)));
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello_with_verdict(eim_apdf_verdict()));
    h.connect(2, "127.0.0.3:1000");
    // An older client: its hello has no verdict field at all.
    h.say(2, &hello(None));
    let to_second = peer_of(&h.take(2)).expect("paired");
    assert_eq!(to_second.verdict, Some(Box::new(eim_apdf_verdict())));
    let to_first = peer_of(&h.take(1)).expect("paired");
    assert_eq!(to_first.verdict, None);
    let line = encode_server(&ServerMessage::Paired {
        role: Role::Initiator,
        plan: plan(1, "[\"simultaneous\"]", 0, 1),
        peer: to_first,
    });
    assert!(
        !std::str::from_utf8(&line).unwrap().contains("verdict"),
        "an absent verdict is not written, so older clients see the old message"
    );
}

#[test]
fn a_verdict_that_is_too_big_or_holds_an_address_is_refused() {
    let mut leaky = eim_apdf_verdict();
    leaky.missing = vec!["the echo server 198.51.100.11 did not answer".into()];
    let mut huge = eim_apdf_verdict();
    huge.missing = vec!["x".repeat(MAX_VERDICT_BYTES)];
    for verdict in [leaky, huge] {
        let line = encode_client(&hello_with_verdict(verdict));
        let e = decode_client(frame(&line).unwrap()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
        assert!(e.to_string().contains("verdict"), "{e}");
    }
    let line = encode_client(&hello_with_verdict(eim_apdf_verdict()));
    assert!(decode_client(frame(&line).unwrap()).is_ok());
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_are_limited_one_by_one() {
    let mut h = Harness::new(CoordinatorConfig {
        max_connections_per_ip: 1,
        ..config(plan(1, "[\"simultaneous\"]", 0, 1))
    });
    // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d: each is
    // its own source, not all of them one IPv6 /64.
    h.connect(1, "[::ffff:192.0.2.1]:1");
    h.connect(2, "[::ffff:192.0.2.2]:1");
    assert!(h.take(1).is_empty() && h.take(2).is_empty());
    h.connect(3, "192.0.2.1:2");
    assert!(matches!(
        &h.take(3)[..],
        [ServerMessage::Error {
            code: ErrorCode::TooManyConnections,
            ..
        }]
    ));
}

#[test]
fn each_side_primes_with_the_ttl_its_own_path_measured_else_the_plans() {
    use punchscope_analysis::classify::{path_verdict, HopAnswer, HopObservation, PathObservation};
    let mut behind_cgn = eim_apdf_verdict();
    behind_cgn.path = Some(path_verdict(&PathObservation {
        hops: ["192.168.1.1", "100.64.0.1", "198.51.100.1"]
            .iter()
            .zip(1u8..)
            .map(|(from, ttl)| HopObservation {
                ttl,
                answer: HopAnswer::TimeExceeded {
                    from: from.parse().unwrap(),
                },
            })
            .collect(),
        error: None,
    }));
    let mut h = Harness::new(config(plan(1, "[\"low_ttl\"]", 0, 1)));
    h.pair_two(
        &hello_with_verdict(behind_cgn),
        &hello_with_verdict(eim_apdf_verdict()),
    );
    let (mut log1, mut log2) = (Vec::new(), Vec::new());
    answer_pings(&mut h, 1, Duration::from_millis(10), &mut log1);
    answer_pings(&mut h, 2, Duration::from_millis(10), &mut log2);
    let (t1, t2) = (trial_token(&log1), trial_token(&log2));
    h.connect(10, "127.0.0.2:2000");
    h.say(
        10,
        &ClientMessage::Register {
            token: t1,
            mapped_port: None,
        },
    );
    h.connect(11, "127.0.0.3:3000");
    h.say(
        11,
        &ClientMessage::Register {
            token: t2,
            mapped_port: None,
        },
    );
    let ttl = |msgs: Vec<ServerMessage>| {
        msgs.iter()
            .find_map(|m| match m {
                ServerMessage::Prime { ttl, .. } => Some(*ttl),
                _ => None,
            })
            .expect("a prime message")
    };
    assert_eq!(
        ttl(h.take(1)),
        3,
        "home NAT + CGN measured: two NATs to pass"
    );
    assert_eq!(ttl(h.take(2)), 2, "no path measured: the plan's low_ttl");
}

/// Runs one simultaneous trial of `plan` to its `go`, side 1 answering pings
/// after `rtt1`, side 2 after `rtt2`; returns both sides' `go` timing.
fn go_timing(
    plan: Plan,
    rtt1: Duration,
    rtt2: Duration,
) -> [Option<punchscope_analysis::plan::AttemptTiming>; 2] {
    let mut h = Harness::new(config(plan));
    h.pair_two(&hello(None), &hello(None));
    let (mut log1, mut log2) = (Vec::new(), Vec::new());
    answer_pings(&mut h, 1, rtt1, &mut log1);
    answer_pings(&mut h, 2, rtt2, &mut log2);
    let (t1, t2) = (trial_token(&log1), trial_token(&log2));
    h.connect(10, "127.0.0.2:2000");
    h.say(
        10,
        &ClientMessage::Register {
            token: t1,
            mapped_port: None,
        },
    );
    h.connect(11, "127.0.0.3:3000");
    h.say(
        11,
        &ClientMessage::Register {
            token: t2,
            mapped_port: None,
        },
    );
    [1, 2].map(|conn| {
        h.take(conn)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::Go { timing, .. } => Some(timing),
                _ => None,
            })
            .expect("a go message")
    })
}

#[test]
fn go_carries_timing_from_the_pairs_measured_rtt_and_old_plans_keep_theirs() {
    let ms = Duration::from_millis;
    let mut rtt_plan = plan(1, "[\"simultaneous\"]", 0, 2);
    rtt_plan.attempt_timeout_rtt_factor = Some(2.0);
    rtt_plan.retry_gap_rtt_factor = Some(0.5);
    rtt_plan.retry_jitter_rtt_factor = Some(0.5);
    let [a, b] = go_timing(rtt_plan.clone(), ms(100), ms(150));
    assert_eq!(a, b, "both sides run with the same timing");
    let t = a.expect("an RTT plan's go carries its timing");
    // The pair RTT is the sum of the sides' smallest samples: 100 + 150 ms.
    assert_eq!(t.pair_rtt_ms, Some(250));
    assert_eq!(
        (t.attempt_timeout_ms, t.retry_gap_ms, t.retry_jitter_ms),
        (500, 125, 125)
    );
    rtt_plan.check_timing(&t).unwrap();
    // A far pair is held to the caps.
    let far = go_timing(rtt_plan, Duration::from_secs(2), Duration::from_secs(2))[0].unwrap();
    assert_eq!((far.attempt_timeout_ms, far.retry_gap_ms), (3000, 1000));
    // A plan with fixed timeouts sends none: both sides use the plan's values, as before.
    let old = go_timing(plan(1, "[\"simultaneous\"]", 0, 2), ms(100), ms(150));
    assert_eq!(old, [None, None]);
}

fn campaign() -> CampaignInfo {
    CampaignInfo {
        name: "pilot".into(),
        operator: "Example Lab".into(),
        contact: "ops@example.org".into(),
        echo: vec![sa("198.51.100.10:3478"), sa("198.51.100.11:3478")],
        collector: Some("https://198.51.100.10:8443".into()),
        privacy_notice: "What we keep\n\nPorts and timings.".into(),
    }
}

#[test]
fn a_campaign_preview_is_answered_before_consent_and_closed_without_pairing() {
    let mut h = Harness::new(CoordinatorConfig {
        campaign: Some(campaign()),
        ..config(plan(1, "[\"simultaneous\"]", 0, 1))
    });
    h.connect(1, "203.0.113.5:4000");
    h.say(1, &ClientMessage::CampaignRequest);
    assert_eq!(
        h.take(1),
        vec![ServerMessage::Campaign {
            campaign: campaign()
        }]
    );
    assert!(h.closed.contains(&1), "a preview is closed at once");
    let stats = h.core.stats();
    assert_eq!((stats.connections, stats.waiting), (0, 0));
    assert_eq!(stats.campaign_previews, 1);
    // The line round-trips as a client decodes it.
    let line = encode_server(&ServerMessage::Campaign {
        campaign: campaign(),
    });
    let text = frame(&line).unwrap();
    assert!(text.starts_with("{\"v\":1,\"type\":\"campaign\""), "{text}");
    assert_eq!(
        decode_server(text).unwrap(),
        ServerMessage::Campaign {
            campaign: campaign()
        }
    );
}

#[test]
fn a_preview_without_a_campaign_is_refused_with_no_campaign_and_counted() {
    let mut h = Harness::new(config(plan(1, "[\"simultaneous\"]", 0, 1)));
    h.connect(1, "203.0.113.5:4000");
    h.say(1, &ClientMessage::CampaignRequest);
    match h.take(1).as_slice() {
        [ServerMessage::Error { code, .. }] => assert_eq!(*code, ErrorCode::NoCampaign),
        other => panic!("{other:?}"),
    }
    assert!(h.closed.contains(&1));
    assert_eq!(h.core.stats().errors[&ErrorCode::NoCampaign], 1);
    // A preview is a first line only.
    h.connect(2, "203.0.113.6:4000");
    h.say(2, &hello(None));
    h.say(2, &ClientMessage::CampaignRequest);
    assert!(matches!(
        h.take(2).last(),
        Some(ServerMessage::Error {
            code: ErrorCode::Unexpected,
            ..
        })
    ));
}

/// A dual-stack campaign: two IPs x two ports in each family, IPv4 first.
#[test]
fn a_dual_stack_campaign_may_name_four_echo_endpoints_per_family() {
    use crate::net::address::AddressPolicy;
    let echo: Vec<SocketAddr> = [
        "198.51.100.10:3478",
        "198.51.100.10:3479",
        "198.51.100.11:3478",
        "198.51.100.11:3479",
        "[2001:db8:5100::10]:3478",
        "[2001:db8:5100::10]:3479",
        "[2001:db8:5100::11]:3478",
        "[2001:db8:5100::11]:3479",
    ]
    .iter()
    .map(|e| sa(e))
    .collect();
    let dual = CampaignInfo {
        echo: echo.clone(),
        ..campaign()
    };
    assert_eq!(dual.check(AddressPolicy::Public), Ok(()));
    // The wire form a probe decodes holds every endpoint, in order.
    let line = encode_server(&ServerMessage::Campaign { campaign: dual });
    let decoded = decode_server(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
    assert!(
        matches!(&decoded, ServerMessage::Campaign { campaign } if campaign.echo == echo),
        "{decoded:?}"
    );
}

#[test]
fn campaign_info_that_could_misdirect_or_mislead_a_volunteer_is_refused() {
    use crate::net::address::AddressPolicy;
    assert_eq!(campaign().check(AddressPolicy::Public), Ok(()));
    let cases: Vec<(CampaignInfo, &str)> = vec![
        (
            CampaignInfo {
                echo: vec![sa("192.168.1.1:3478")],
                ..campaign()
            },
            "private",
        ),
        (
            CampaignInfo {
                echo: vec![sa("127.0.0.1:3478")],
                ..campaign()
            },
            "loopback",
        ),
        (
            CampaignInfo {
                echo: vec![sa("198.51.100.10:0")],
                ..campaign()
            },
            "port 0",
        ),
        (
            CampaignInfo {
                echo: vec![],
                ..campaign()
            },
            "1 to 8 distinct endpoints, at most 4 per family",
        ),
        (
            CampaignInfo {
                echo: vec![sa("198.51.100.10:1"), sa("198.51.100.10:1")],
                ..campaign()
            },
            "distinct",
        ),
        (
            CampaignInfo {
                echo: (1..=5).map(|p| sa(&format!("198.51.100.10:{p}"))).collect(),
                ..campaign()
            },
            "at most 4 per family",
        ),
        (
            CampaignInfo {
                echo: (1..=5)
                    .map(|p| sa(&format!("[2001:db8:5100::10]:{p}")))
                    .collect(),
                ..campaign()
            },
            "at most 4 per family",
        ),
        (
            CampaignInfo {
                echo: vec![sa("198.51.100.10:3478"), sa("[fd00::10]:3478")],
                ..campaign()
            },
            "unique local",
        ),
        (
            CampaignInfo {
                // An IPv4 address written as IPv6: the probe would classify it as IPv6.
                echo: vec![sa("198.51.100.10:3478"), sa("[::ffff:198.51.100.11]:3478")],
                ..campaign()
            },
            "IPv4-mapped",
        ),
        (
            CampaignInfo {
                collector: Some("file:///etc/passwd".into()),
                ..campaign()
            },
            "not http",
        ),
        (
            CampaignInfo {
                collector: Some("https://user:pw@example.org".into()),
                ..campaign()
            },
            "credentials",
        ),
        (
            CampaignInfo {
                collector: Some("https://example.org/a b".into()),
                ..campaign()
            },
            "spaces",
        ),
        (
            CampaignInfo {
                name: "pilot\u{1b}[2J".into(),
                ..campaign()
            },
            "control character",
        ),
        (
            CampaignInfo {
                operator: "\u{202e}evil".into(),
                ..campaign()
            },
            "control character",
        ),
        (
            CampaignInfo {
                privacy_notice: "ok\r\nfake prompt".into(),
                ..campaign()
            },
            "control character",
        ),
        (
            CampaignInfo {
                privacy_notice: "x".repeat(MAX_PRIVACY_NOTICE + 1),
                ..campaign()
            },
            "bytes",
        ),
    ];
    for (info, expected) in cases {
        let e = info.check(AddressPolicy::Public).unwrap_err();
        assert!(e.contains(expected), "{e} (expected {expected:?})");
    }
}

#[test]
fn an_ipv6_site_is_capped_across_its_64s() {
    let mut h = Harness::new(CoordinatorConfig {
        max_connections_per_ip: 2,
        max_connections_per_site: 3,
        ..config(plan(1, "[\"simultaneous\"]", 0, 1))
    });
    // Three /64s of one /48: the per-/64 cap alone would allow six.
    h.connect(1, "[2001:db8:0:1::1]:1");
    h.connect(2, "[2001:db8:0:1::1]:2");
    h.connect(3, "[2001:db8:0:2::1]:1");
    h.connect(4, "[2001:db8:0:3::1]:1");
    assert!(h.take(3).is_empty());
    match &h.take(4)[..] {
        [ServerMessage::Error { code, message, .. }] => {
            assert_eq!(*code, ErrorCode::TooManyConnections);
            assert!(message.contains("2001:db8::/48"), "{message}");
        }
        other => panic!("expected one error, got {other:?}"),
    }
    h.core.closed(h.now, 1);
    h.drain();
    h.connect(5, "[2001:db8:0:3::1]:1");
    assert!(h.take(5).is_empty(), "a place was given back");
    h.connect(6, "[2001:db8:1::1]:1");
    assert!(h.take(6).is_empty(), "another /48 is another site");
}

#[test]
fn a_waiting_flood_gives_up_its_places_and_a_volunteer_is_still_paired() {
    let mut h = Harness::new(CoordinatorConfig {
        max_connections_per_ip: 16,
        max_connections_per_site: 64,
        max_waiting: 40,
        max_waiting_per_site: 8,
        // IPv6 clients naming no families run IPv6 trials.
        ..config(family_plan(1, Family::ALL))
    });
    // The flood: eight sites (IPv6 /48s, 8 /64s each) fill every waiting
    // place, each with its own pair code so nobody pairs.
    let mut conn = 0;
    let mut flood = Vec::new();
    for site in 0..8 {
        for host in 0..8 {
            conn += 1;
            h.connect(conn, &format!("[2001:db8:{site}:{host}::1]:1000"));
            h.say(conn, &hello(Some(&format!("flood-{conn}"))));
            flood.push(conn);
        }
    }
    let busy = |msgs: &[ServerMessage]| {
        msgs.iter().any(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::Busy,
                    ..
                }
            )
        })
    };
    let refused: Vec<ConnId> = flood
        .iter()
        .copied()
        .filter(|c| busy(&h.take(*c)))
        .collect();
    assert_eq!(h.core.stats().waiting, 40, "every place is taken");
    assert_eq!(refused.len(), 24, "64 tried, 40 places");
    // Latecomer sites took places from the busiest: the places end up shared.
    for site in flood.chunks(8) {
        let waiting = site.iter().filter(|c| !refused.contains(c)).count();
        assert_eq!(waiting, 5, "each of 8 sites holds 40 / 8 places");
    }

    // Two volunteers from fresh sites still wait and pair: each takes the
    // place of a flooding site's longest waiter.
    h.connect(1001, "203.0.113.7:5000");
    h.say(1001, &hello(Some("friends")));
    assert_eq!(h.core.stats().waiting, 40);
    h.connect(1002, "198.51.100.9:5000");
    h.say(1002, &hello(Some("friends")));
    for volunteer in [1001, 1002] {
        let got = h.take(volunteer);
        assert!(
            got.iter()
                .any(|m| matches!(m, ServerMessage::Paired { .. })),
            "{volunteer} paired: {got:?}"
        );
    }
    let evicted = flood.iter().filter(|c| busy(&h.take(**c))).count();
    assert_eq!(
        evicted, 1,
        "one flooder gave up its place to the first volunteer"
    );
}

/// Runs a whole pairing of volunteers 1 and 2 (already paired, their
/// `paired` taken) through `trials` trials, every trial a timeout; returns
/// the strategy each trial was announced with.
fn run_trials(h: &mut Harness, trials: u32) -> Vec<Strategy> {
    run_announced_trials(h, trials)
        .into_iter()
        .map(|(strategy, _)| strategy)
        .collect()
}

#[test]
fn a_pair_class_with_a_mix_draws_shuffled_rounds_and_others_keep_the_rotation() {
    use punchscope_analysis::classify::{AllocationPattern, Finding};
    use punchscope_analysis::nat::Mapping;
    let mut plan = plan(8, "[\"simultaneous\", \"connect_listen\"]", 0, 1);
    let mix = vec![Strategy::Simultaneous, Strategy::Birthday];
    plan.class_strategies.insert(
        punchscope_analysis::hardnat::PairClass::EasyRandom,
        mix.clone(),
    );
    let mut random = eim_apdf_verdict();
    random.mapping = Finding::Known {
        value: Mapping::Apdm,
    };
    random.allocation = Finding::Known {
        value: AllocationPattern::Random,
    };
    // A plan listing `birthday` gives each trial the time of its paced SYNs:
    // (64 + 256) at 200 per second.
    assert_eq!(hard_nat_ms(&plan), 1600);
    let mut without = plan.clone();
    without.class_strategies.clear();
    assert_eq!(hard_nat_ms(&without), 0);
    assert_eq!(
        result_deadline(&plan),
        result_deadline(&without) + Duration::from_millis(1600)
    );
    let mut h = Harness::new(config(plan.clone()));
    h.pair_two(
        &hello_with_verdict(random),
        &hello_with_verdict(eim_apdf_verdict()),
    );
    let drawn = run_trials(&mut h, 8);
    // Every round of two holds both strategies, in an order of the draw's choosing.
    for round in drawn.chunks(2) {
        let mut round = round.to_vec();
        round.sort_by_key(|s| s.as_str());
        assert_eq!(
            round,
            vec![Strategy::Birthday, Strategy::Simultaneous],
            "{drawn:?}"
        );
    }
    assert!(
        drawn.chunks(2).any(|r| r[0] == Strategy::Birthday)
            && drawn.chunks(2).any(|r| r[0] == Strategy::Simultaneous),
        "randomised within rounds: {drawn:?}"
    );
    // Without verdicts the class is unknown, which has no mix: the rotation.
    let mut h = Harness::new(config(plan));
    h.pair_two(&hello(None), &hello(None));
    assert_eq!(
        run_trials(&mut h, 4),
        [
            Strategy::Simultaneous,
            Strategy::ConnectListen,
            Strategy::Simultaneous,
            Strategy::ConnectListen
        ]
    );
}

/// `mapped` trials: the side whose router mapped its port listens (the
/// responder when both did), the other is sent to the listener's observed
/// address at the mapped port; with no mapping neither does anything; and
/// a mapped port registered for another strategy changes nothing.
#[test]
fn a_mapped_trial_sends_the_connecting_side_to_the_listeners_mapped_port() {
    let mut h = Harness::new(config(plan(8, "[\"mapped\", \"simultaneous\"]", 0, 1)));
    h.pair_two(&hello(None), &hello(None));
    let (first, second) = (h.take(1), h.take(2));
    h.sent.insert(1, first[2..].to_vec());
    h.sent.insert(2, second[2..].to_vec());
    let (i_addr, r_addr) = ("127.0.0.2:2000", "127.0.0.3:3000");
    // (initiator's mapped port, responder's) per trial, and what each side is told.
    use MappedSide::{Connect, Listen, Neither};
    type Registered = (Option<u16>, Option<u16>);
    let cases: [(Registered, Option<(MappedSide, MappedSide)>); 8] = [
        ((None, Some(4444)), Some((Connect, Listen))),
        ((Some(5555), Some(5556)), None),
        ((Some(5555), None), Some((Listen, Connect))),
        ((None, None), None),
        ((Some(6666), Some(7777)), Some((Connect, Listen))),
        ((None, None), None),
        ((None, None), Some((Neither, Neither))),
        ((None, None), None),
    ];
    for (trial, ((p1, p2), expected)) in cases.into_iter().enumerate() {
        let trial = trial as u32;
        let (mut log1, mut log2) = (Vec::new(), Vec::new());
        answer_pings(&mut h, 1, Duration::from_millis(10), &mut log1);
        answer_pings(&mut h, 2, Duration::from_millis(10), &mut log2);
        let (t1, t2) = (trial_token(&log1), trial_token(&log2));
        let base = 100 + u64::from(trial) * 2;
        for (conn, token, addr, mapped_port) in [(base, t1, i_addr, p1), (base + 1, t2, r_addr, p2)]
        {
            h.connect(conn, addr);
            h.say(conn, &ClientMessage::Register { token, mapped_port });
        }
        let go = |m: Vec<ServerMessage>| match m.into_iter().next() {
            Some(ServerMessage::Go { peer, mapped, .. }) => (peer, mapped),
            other => panic!("expected go, got {other:?}"),
        };
        let (g1, g2) = (go(h.take(1)), go(h.take(2)));
        let port_of = |p: Option<u16>| p.expect("the listener mapped a port");
        match expected {
            Some((Connect, Listen)) => {
                assert_eq!(
                    g1,
                    (SocketAddr::new(sa(r_addr).ip(), port_of(p2)), Some(Connect))
                );
                assert_eq!(g2, (sa(i_addr), Some(Listen)), "trial {trial}");
            }
            Some((Listen, Connect)) => {
                assert_eq!(g1, (sa(r_addr), Some(Listen)));
                assert_eq!(
                    g2,
                    (SocketAddr::new(sa(i_addr).ip(), port_of(p1)), Some(Connect))
                );
            }
            Some((Neither, Neither)) => {
                assert_eq!(
                    (g1, g2),
                    ((sa(r_addr), Some(Neither)), (sa(i_addr), Some(Neither)))
                );
            }
            // A trial of another strategy: observed endpoints, no mapped move.
            _ => assert_eq!(
                (g1, g2),
                ((sa(r_addr), None), (sa(i_addr), None)),
                "trial {trial}"
            ),
        }
        for conn in [1, 2] {
            h.say(conn, &timed_out(trial));
        }
    }
}

#[test]
fn a_registration_with_a_mapped_port_below_1024_is_refused() {
    for port in [0, 80, 1023] {
        let line =
            format!("{{\"v\":1,\"type\":\"register\",\"token\":\"abc\",\"mapped_port\":{port}}}\n");
        let msg = decode_client(frame(line.as_bytes()).unwrap());
        assert!(
            matches!(msg, Err(ProtoError::BadRequest(ref why)) if why.contains("mapped_port")),
            "{port}: {msg:?}"
        );
    }
    let line = b"{\"v\":1,\"type\":\"register\",\"token\":\"abc\",\"mapped_port\":1024}\n";
    assert!(decode_client(frame(line).unwrap()).is_ok());
}

/// A hello naming the families this client can run trials in.
fn hello_in(families: &[Family]) -> ClientMessage {
    let ClientMessage::Hello(hello) = hello(None) else {
        unreachable!("hello() is a hello")
    };
    ClientMessage::Hello(Hello {
        families: Some(families.to_vec()),
        ..hello
    })
}

/// A plan of `trials` simultaneous trials over `families`, one RTT sample.
fn family_plan(trials: u32, families: &[Family]) -> Plan {
    Plan {
        families: families.to_vec(),
        ..plan(trials, "[\"simultaneous\"]", 0, 1)
    }
}

/// Each side's registration endpoint per family: IPv4 from its control IP,
/// IPv6 from its own 2001:db8 prefix.
fn registration_from(conn: ConnId, family: Family) -> &'static str {
    match (conn, family) {
        (1, Family::Ipv4) => "127.0.0.2:2000",
        (2, Family::Ipv4) => "127.0.0.3:3000",
        (1, Family::Ipv6) => "[2001:db8:1:1::2]:2000",
        (2, Family::Ipv6) => "[2001:db8:2:1::3]:3000",
        _ => unreachable!("two sides"),
    }
}

/// Runs `trials` trials of paired volunteers 1 and 2 (already paired),
/// each a timeout, each side registering in the family its `trial` names;
/// checks that both sides hear the same strategy and family and that each
/// `go` names the peer's endpoint in that family. Returns each trial's
/// strategy and family, in trial order.
fn run_announced_trials(h: &mut Harness, trials: u32) -> Vec<(Strategy, Family)> {
    let mut announced_trials = Vec::new();
    for trial in 0..trials {
        let (mut log1, mut log2) = (Vec::new(), Vec::new());
        answer_pings(h, 1, Duration::from_millis(10), &mut log1);
        answer_pings(h, 2, Duration::from_millis(10), &mut log2);
        let announced = |log: &[ServerMessage]| {
            log.iter()
                .find_map(|m| match m {
                    ServerMessage::Trial {
                        trial: t,
                        token,
                        strategy,
                        family,
                    } if *t == trial => {
                        Some((token.clone(), *strategy, family.expect("family is sent")))
                    }
                    _ => None,
                })
                .expect("a trial message")
        };
        let ((t1, s1, f1), (t2, s2, f2)) = (announced(&log1), announced(&log2));
        assert_eq!(
            s1, s2,
            "both sides run trial {trial} with the same strategy"
        );
        assert_eq!(f1, f2, "both sides run trial {trial} in the same family");
        announced_trials.push((s1, f1));
        for (side, token) in [(1, t1), (2, t2)] {
            let conn = 1000 + u64::from(trial) * 2 + side;
            h.connect(conn, registration_from(side, f1));
            h.say(
                conn,
                &ClientMessage::Register {
                    token,
                    mapped_port: None,
                },
            );
        }
        for (side, peer) in [(1, 2), (2, 1)] {
            let go = h.take(side).into_iter().find_map(|m| match m {
                ServerMessage::Go { peer, strategy, .. } => Some((peer, strategy)),
                _ => None,
            });
            let (go_peer, go_strategy) = go.expect("a go");
            assert_eq!(go_peer, sa(registration_from(peer, f1)), "trial {trial}");
            assert_eq!(go_strategy, s1, "trial {trial}");
            h.say(side, &timed_out(trial));
        }
    }
    announced_trials
}

/// As [`run_announced_trials`], the families only.
fn run_family_trials(h: &mut Harness, trials: u32) -> Vec<Family> {
    run_announced_trials(h, trials)
        .into_iter()
        .map(|(_, family)| family)
        .collect()
}

#[test]
fn dual_stack_pairs_draw_each_trials_family_in_shuffled_rounds() {
    let mut h = Harness::new(config(family_plan(8, Family::ALL)));
    h.pair_two(&hello_in(Family::ALL), &hello_in(Family::ALL));
    let families = run_family_trials(&mut h, 8);
    // Every round of two holds each family once: equally often, random order.
    for round in families.chunks(2) {
        assert!(
            round.contains(&Family::Ipv4) && round.contains(&Family::Ipv6),
            "{families:?}"
        );
    }
    // The operator's metrics count them by family.
    let by_family = h.core.stats().trials_by_family;
    assert_eq!((by_family[&Family::Ipv4], by_family[&Family::Ipv6]), (4, 4));
    // The seeded draw is not a fixed alternation.
    assert_ne!(
        families,
        [Family::Ipv4, Family::Ipv6].repeat(4),
        "the order is shuffled"
    );
}

#[test]
fn a_pair_runs_only_the_families_both_sides_and_the_plan_have() {
    // An IPv4-only client (an older one, naming no families) and an
    // IPv6-only one share nothing: neither is paired with the other.
    let mut h = Harness::new(config(family_plan(4, Family::ALL)));
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello(None));
    h.connect(2, "[2001:db8:1:1::2]:1000");
    h.say(2, &hello(None));
    for conn in [1, 2] {
        assert!(
            h.take(conn)
                .iter()
                .all(|m| !matches!(m, ServerMessage::Paired { .. })),
            "conn {conn} is not paired"
        );
    }
    // A dual-stack newcomer pairs with the longest waiter it shares a family
    // with, and their trials all run in the one they share.
    h.connect(3, "127.0.0.4:1000");
    h.say(3, &hello_in(Family::ALL));
    assert!(h
        .take(3)
        .iter()
        .any(|m| matches!(m, ServerMessage::Paired { .. })));

    let mut h = Harness::new(config(family_plan(4, Family::ALL)));
    h.connect(1, "[2001:db8:1:1::2]:1000");
    h.say(1, &hello_in(&[Family::Ipv6]));
    h.connect(2, "127.0.0.3:1000");
    h.say(2, &hello_in(Family::ALL));
    assert_eq!(run_family_trials(&mut h, 4), [Family::Ipv6; 4]);

    // A plan over IPv4 only never runs an IPv6 trial, whatever the clients have.
    let mut h = Harness::new(config(family_plan(2, &[Family::Ipv4])));
    h.pair_two(&hello_in(Family::ALL), &hello_in(Family::ALL));
    assert_eq!(run_family_trials(&mut h, 2), [Family::Ipv4; 2]);
}

#[test]
fn a_client_whose_families_the_plan_lacks_is_refused_with_a_reason() {
    let mut h = Harness::new(config(family_plan(2, &[Family::Ipv4])));
    h.connect(1, "[2001:db8:1:1::2]:1000");
    // No families named: the control connection's, IPv6.
    h.say(1, &hello(None));
    match &h.take(1)[..] {
        [ServerMessage::Error {
            code: ErrorCode::BadRequest,
            message,
            ..
        }] => assert!(message.contains("ipv4 only"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Naming a family twice is a malformed hello.
    h.connect(2, "127.0.0.3:1000");
    h.say(2, &hello_in(&[Family::Ipv4, Family::Ipv4]));
    assert!(matches!(
        h.take(2)[..],
        [ServerMessage::Error {
            code: ErrorCode::BadRequest,
            ..
        }]
    ));
}

#[test]
fn an_ipv6_trial_takes_registrations_only_over_ipv6_and_from_one_network() {
    let mut h = Harness::new(config(family_plan(4, &[Family::Ipv6])));
    h.pair_two(&hello_in(Family::ALL), &hello_in(Family::ALL));
    let (mut log1, mut log2) = (Vec::new(), Vec::new());
    answer_pings(&mut h, 1, Duration::from_millis(10), &mut log1);
    answer_pings(&mut h, 2, Duration::from_millis(10), &mut log2);
    // Over IPv4 for an IPv6 trial: refused, the token stays usable.
    h.connect(10, "127.0.0.2:2000");
    let token = trial_token(&log1);
    let register = |token: &str| ClientMessage::Register {
        token: token.to_string(),
        mapped_port: None,
    };
    h.say(10, &register(&token));
    match &h.take(10)[..] {
        [ServerMessage::Error {
            code: ErrorCode::IpMismatch,
            message,
            ..
        }] => assert!(message.contains("ipv6 trial"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    h.connect(11, registration_from(1, Family::Ipv6));
    h.say(11, &register(&token));
    h.connect(12, registration_from(2, Family::Ipv6));
    h.say(12, &register(&trial_token(&log2)));
    for side in [1, 2] {
        assert!(h
            .take(side)
            .iter()
            .any(|m| matches!(m, ServerMessage::Go { .. })));
        h.say(side, &timed_out(0));
    }
    // The next IPv6 trial: side 1 registering from another IPv6 network
    // than its first IPv6 registration is refused.
    let (mut log1, mut log2) = (Vec::new(), Vec::new());
    answer_pings(&mut h, 1, Duration::from_millis(10), &mut log1);
    answer_pings(&mut h, 2, Duration::from_millis(10), &mut log2);
    h.connect(13, "[2001:db8:99:1::2]:2000");
    h.say(13, &register(&trial_token(&log1)));
    assert!(matches!(
        h.take(13)[..],
        [ServerMessage::Error {
            code: ErrorCode::IpMismatch,
            ..
        }]
    ));
}

#[test]
fn a_dual_stack_newcomer_takes_a_dual_stack_waiter_before_a_longer_waiting_ipv4_one() {
    let mut h = Harness::new(config(family_plan(2, Family::ALL)));
    // Two waiters from one source (never paired with each other): IPv4
    // only first, then dual-stack.
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello(None));
    h.connect(2, "127.0.0.2:1001");
    h.say(2, &hello_in(Family::ALL));
    h.connect(3, "127.0.0.3:1000");
    h.say(3, &hello_in(Family::ALL));
    let paired = |msgs: &[ServerMessage]| {
        msgs.iter()
            .any(|m| matches!(m, ServerMessage::Paired { .. }))
    };
    assert!(paired(&h.take(2)), "the dual-stack waiter is taken");
    assert!(paired(&h.take(3)));
    assert!(!paired(&h.take(1)), "the IPv4-only waiter keeps waiting");
    // An IPv4-only newcomer then pairs with the IPv4-only waiter.
    h.connect(4, "127.0.0.4:1000");
    h.say(4, &hello(None));
    assert!(paired(&h.take(1)));
}

#[test]
fn a_hello_must_offer_its_control_connections_family_when_the_plan_runs_it() {
    // Controlling over IPv4 and offering IPv6 only would put every
    // registration beyond the control connection's IP check.
    let mut h = Harness::new(config(family_plan(2, Family::ALL)));
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello_in(&[Family::Ipv6]));
    match &h.take(1)[..] {
        [ServerMessage::Error {
            code: ErrorCode::BadRequest,
            message,
            ..
        }] => assert!(message.contains("must include ipv4"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Where the plan does not run the control family, the others are enough.
    let mut h = Harness::new(config(family_plan(2, &[Family::Ipv6])));
    h.connect(1, "127.0.0.2:1000");
    h.say(1, &hello_in(&[Family::Ipv6]));
    assert!(matches!(h.take(1)[..], [ServerMessage::Welcome { .. }]));
}

#[test]
fn each_strategy_runs_each_family_equally_often_whatever_the_rotation() {
    // Two strategies in turn and two families: one shared series of rounds
    // could give a strategy one family only; rounds per strategy cannot.
    let plan = Plan {
        families: Family::ALL.to_vec(),
        ..plan(8, "[\"simultaneous\", \"connect_listen\"]", 0, 1)
    };
    for seed in 0..16 {
        let mut h = Harness {
            core: Coordinator::new(
                config(plan.clone()),
                rand::rngs::StdRng::seed_from_u64(seed),
            )
            .unwrap(),
            ..Harness::new(config(plan.clone()))
        };
        h.pair_two(&hello_in(Family::ALL), &hello_in(Family::ALL));
        let families = run_family_trials(&mut h, 8);
        for strategy in [0, 1] {
            let of_strategy: Vec<Family> =
                families.iter().skip(strategy).step_by(2).copied().collect();
            let ipv6 = of_strategy.iter().filter(|f| **f == Family::Ipv6).count();
            assert_eq!(ipv6, 2, "seed {seed}, strategy {strategy}: {families:?}");
        }
    }
}
