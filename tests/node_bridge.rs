//! Bridge mode on loopback: two regtest `bitcoind`s, a connected socket pair
//! standing in for a punched connection, each end handed to one node by
//! `node::bridge::run` in the coordinator's roles. Both nodes' `getpeerinfo`
//! must show the other with the transport they prefer; two initiators on v2
//! must fail as BIP324 says (each waits for the other's garbage terminator)
//! while v1 does not care who starts. The lab test (`lab_bridge`) runs the
//! same through real NATs and the coordinator.

mod support;

use std::time::Duration;

use punchscope::analysis::handshake::{BridgeFailure, NodeBridgeRecord, Role, Transport};
use punchscope::node::bridge::{self, NodeBridge, NodeOptions};
use punchscope::node::{RpcAuth, RpcConfig};
use support::bitcoind::{Bitcoind, NodeSetup};
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(8);
const LIMIT: Duration = Duration::from_secs(60);

async fn start_node(v2transport: bool) -> Bitcoind {
    tokio::task::spawn_blocking(move || {
        Bitcoind::start_with(NodeSetup {
            v2transport,
            ..NodeSetup::default()
        })
    })
    .await
    .unwrap()
}

async fn bridge_to(node: &Bitcoind, force_role: Option<Role>) -> NodeBridge {
    NodeBridge::connect(&NodeOptions {
        p2p: node.p2p,
        rpc: RpcConfig::new(&node.rpc_url(), Some(RpcAuth::CookieFile(node.cookie()))),
        force_role,
    })
    .await
    .expect("the node answers its RPC")
}

/// A connected pair of loopback sockets: what a punched connection looks like to each side.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (a, b) = tokio::join!(connect, listener.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Each end of a socket pair handed to one node, the first as `roles.0`.
async fn bridge_pair(
    a: &NodeBridge,
    b: &NodeBridge,
    roles: (Role, Role),
) -> (NodeBridgeRecord, NodeBridgeRecord) {
    let (sa, sb) = socket_pair().await;
    let both = async {
        tokio::join!(
            bridge::run(sa, roles.0, a, WITHIN),
            bridge::run(sb, roles.1, b, WITHIN)
        )
    };
    tokio::time::timeout(LIMIT, both)
        .await
        .expect("both bridges end")
}

fn assert_peered(record: &NodeBridgeRecord, role: Role, transport: Transport) {
    assert!(record.success, "{record:#?}");
    assert_eq!(record.role, role);
    assert_eq!(record.failure, None);
    let peer = record.peer.as_ref().expect("the node listed the peer");
    assert!(peer.version_handshake);
    assert_eq!(peer.transport, Some(transport), "{record:#?}");
    assert!(
        peer.user_agent.starts_with("/Satoshi:"),
        "{}",
        peer.user_agent
    );
    assert!(peer.protocol_version >= 70016);
    let expected_type = match role {
        Role::Initiator => "manual",
        Role::Responder => "inbound",
    };
    assert_eq!(peer.connection_type, expected_type);
    assert_eq!(peer.session_id.is_some(), transport == Transport::V2);
    assert!(record.bytes_to_peer > 0 && record.bytes_from_peer > 0);
    assert!(peer.ping_ms.is_some(), "the nodes pinged each other");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_peer_through_the_bridge_on_v2_and_v1() {
    for v2 in [true, false] {
        let (node_a, node_b) = tokio::join!(start_node(v2), start_node(v2));
        let (a, b) = tokio::join!(bridge_to(&node_a, None), bridge_to(&node_b, None));
        let (initiator, responder) = bridge_pair(&a, &b, (Role::Initiator, Role::Responder)).await;
        let transport = if v2 { Transport::V2 } else { Transport::V1 };
        assert_peered(&initiator, Role::Initiator, transport);
        assert_peered(&responder, Role::Responder, transport);
        // Both ends of one BIP324 session.
        assert_eq!(
            initiator.peer.as_ref().unwrap().session_id,
            responder.peer.as_ref().unwrap().session_id
        );
        assert_eq!(initiator.bytes_to_peer, responder.bytes_from_peer);
        assert!(initiator.disconnected || responder.disconnected);
        for node in [&node_a, &node_b] {
            assert!(!node.log().contains("Misbehaving"), "{}", node.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_initiators_fail_on_v2_as_bip324_predicts_and_pass_on_v1() {
    // v2: both nodes send their key and garbage and look for a responder's
    // garbage terminator that never comes: they wait (incomplete), or give
    // up once more than 4095 bytes of garbage passed (dropped), depending
    // on how much random garbage the other sent.
    let (node_a, node_b) = tokio::join!(start_node(true), start_node(true));
    let (a, b) = tokio::join!(bridge_to(&node_a, None), bridge_to(&node_b, None));
    let (one, other) = bridge_pair(&a, &b, (Role::Initiator, Role::Initiator)).await;
    for record in [&one, &other] {
        assert!(!record.success, "{record:#?}");
        assert_eq!(record.role, Role::Initiator);
        assert!(
            matches!(
                record.failure,
                Some(BridgeFailure::HandshakeIncomplete | BridgeFailure::PeerDropped)
            ),
            "{record:#?}"
        );
        let peer = record.peer.as_ref().expect("the node listed its attempt");
        assert!(!peer.version_handshake);
        assert_eq!(peer.connection_type, "manual");
    }
    drop((node_a, node_b));

    // v1: `version` messages cross, and Core's outbound side takes the
    // other's `version` as the answer to its own; both complete.
    let (node_a, node_b) = tokio::join!(start_node(false), start_node(false));
    let (a, b) = tokio::join!(bridge_to(&node_a, None), bridge_to(&node_b, None));
    let (one, other) = bridge_pair(&a, &b, (Role::Initiator, Role::Initiator)).await;
    for record in [&one, &other] {
        assert_eq!(record.role, Role::Initiator);
        assert!(record.success, "{record:#?}");
        let peer = record.peer.as_ref().expect("the node listed the peer");
        assert_eq!(peer.transport, Some(Transport::V1));
        assert_eq!(peer.connection_type, "manual");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_is_not_there_is_an_outcome_and_a_wrong_cookie_stops_before_measuring() {
    let node = start_node(true).await;
    let good = bridge_to(&node, None).await;
    // The responder's node P2P port closed: an outcome in the record.
    let gone = NodeBridge {
        p2p: std::net::SocketAddr::from(([127, 0, 0, 1], support::sockets::free_port())),
        ..good.clone()
    };
    let (punched, _other_end) = socket_pair().await;
    let record = bridge::run(punched, Role::Responder, &gone, WITHIN).await;
    assert!(!record.success);
    assert!(
        matches!(record.failure, Some(BridgeFailure::NodeUnreachable { .. })),
        "{record:#?}"
    );
    // The initiator's node never connects (the other end is not a node and
    // says nothing, but the node's own connection is what is missing here:
    // addnode to our port works, and the node then waits for a version).
    let (punched, _silent) = socket_pair().await;
    let record = bridge::run(punched, Role::Initiator, &good, Duration::from_secs(2)).await;
    assert!(!record.success);
    assert!(
        matches!(
            record.failure,
            Some(BridgeFailure::HandshakeIncomplete | BridgeFailure::PeerDropped)
        ),
        "{record:#?}"
    );

    // Wrong credentials and a node P2P address off this machine stop the run early.
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:not-the-node-s\n").unwrap();
    let options = NodeOptions {
        p2p: node.p2p,
        rpc: RpcConfig::new(&node.rpc_url(), Some(RpcAuth::CookieFile(cookie))),
        force_role: None,
    };
    let e = NodeBridge::connect(&options).await.unwrap_err();
    assert!(e.to_string().contains("credentials"), "{e}");
    assert!(!e.to_string().contains("not-the-node-s"), "{e}");
    let off_machine = NodeOptions {
        p2p: "192.0.2.1:8333".parse().unwrap(),
        ..options
    };
    let e = NodeBridge::connect(&off_machine).await.unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}

/// `punchscope probe` in bridge mode (consent given, its screen on stderr),
/// to a coordinator and echo server that do not exist: only the checks that
/// come before any measurement run.
fn probe_with_node(node_args: &[&str]) -> std::process::Output {
    let spool = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", support::sockets::free_port());
    std::process::Command::new(env!("CARGO_BIN_EXE_punchscope"))
        .args(["probe", "--server", &closed, "--echo", &closed])
        .args(["--yes", "--spool"])
        .arg(spool.path())
        .args(node_args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_command_stops_before_measuring_when_the_node_cannot_be_used() {
    // --node needs --node-rpc (a usage error).
    let output = probe_with_node(&["--node", "127.0.0.1:18444"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--node-rpc"));

    // A node off this machine: refused before anything is sent anywhere.
    let output = probe_with_node(&[
        "--node",
        "192.0.2.1:8333",
        "--node-rpc",
        "http://127.0.0.1:18443",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bridge mode") && stderr.contains("loopback"),
        "{stderr}"
    );

    // A real node with a wrong password in the URL: named, never shown.
    let node = start_node(true).await;
    let url = node
        .rpc_url()
        .replacen("http://", "http://someone:sesame-wrong@", 1);
    let p2p = node.p2p.to_string();
    let output =
        tokio::task::spawn_blocking(move || probe_with_node(&["--node", &p2p, "--node-rpc", &url]))
            .await
            .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refused the RPC credentials"), "{stderr}");
    assert!(
        !stderr.contains("sesame-wrong") && !stderr.contains("someone"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v2_initiator_meeting_a_v1_only_responder_is_recorded_as_dropped() {
    // The v1-only node reads the BIP324 key as a v1 header with a wrong
    // magic and hangs up; Core's retry with v1 opens a new connection,
    // which no longer goes through the punched socket. Whether a node is
    // seen with the peer before it drops it depends on the RPC's timing:
    // dropped or never listed, the handshake did not happen.
    let (node_a, node_b) = tokio::join!(start_node(true), start_node(false));
    let (a, b) = tokio::join!(bridge_to(&node_a, None), bridge_to(&node_b, None));
    let (initiator, responder) = bridge_pair(&a, &b, (Role::Initiator, Role::Responder)).await;
    for record in [&initiator, &responder] {
        assert!(!record.success, "{record:#?}");
        assert!(
            matches!(
                record.failure,
                Some(BridgeFailure::PeerDropped | BridgeFailure::PeerNotListed)
            ),
            "{record:#?}"
        );
    }
}
