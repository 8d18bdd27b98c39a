//! Interop with a real Bitcoin Core node (regtest `bitcoind` built from Core's
//! source by `.ci/bitcoind`): our handshake v1 and v2 as initiator, and as
//! responder when the node connects with `addnode ... onetry`. The node's own
//! debug log confirms the transport it negotiated and that it did not score
//! us as misbehaving.

mod support;

use std::time::Duration;

use punchscope::analysis::handshake::{BitcoinNetwork, HandshakeRecord, Transport};
use punchscope::btc::{self, Accept, HandshakeConfig};
use support::bitcoind::Bitcoind;
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

fn config() -> HandshakeConfig {
    HandshakeConfig {
        network: BitcoinNetwork::Regtest,
        step_timeout: Duration::from_secs(10),
        ..HandshakeConfig::default()
    }
}

fn assert_handshake(record: &HandshakeRecord, transport: Transport) {
    assert!(record.success, "{record:?}");
    assert_eq!(record.transport, Some(transport));
    let peer = record.peer.as_ref().expect("the node's version");
    assert!(
        peer.user_agent.starts_with("/Satoshi:"),
        "{}",
        peer.user_agent
    );
    assert!(peer.protocol_version >= 70016, "{}", peer.protocol_version);
    assert_eq!(record.session_id.is_some(), transport == Transport::V2);
}

/// The node logged the connection as complete with `transport`, and never
/// logged us as misbehaving.
fn assert_node_saw(node: &Bitcoind, kind: &str, transport: Transport) {
    let needle = format!("New {kind} peer connected: transport: {transport}");
    let line = node.wait_for_log(&needle, LIMIT);
    assert!(
        line.is_some(),
        "the node did not log `{needle}`; its log:\n{}",
        node.log()
    );
    assert!(
        !node.log().contains("Misbehaving"),
        "the node scored us as misbehaving:\n{}",
        node.log()
    );
}

async fn initiate(node: &Bitcoind, transport: Transport) -> HandshakeRecord {
    let stream = tokio::time::timeout(LIMIT, TcpStream::connect(node.p2p))
        .await
        .expect("connect in time")
        .expect("the node accepts");
    tokio::time::timeout(LIMIT, btc::initiate(stream, transport, &config()))
        .await
        .expect("handshake in time")
        .expect("no tool error")
}

#[tokio::test(flavor = "multi_thread")]
async fn our_v1_and_v2_initiator_complete_with_bitcoind() {
    let node = tokio::task::spawn_blocking(Bitcoind::start).await.unwrap();
    for transport in [Transport::V1, Transport::V2] {
        let record = initiate(&node, transport).await;
        assert_handshake(&record, transport);
        assert_node_saw(&node, "inbound", transport);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn our_responder_completes_when_bitcoind_connects_with_addnode_onetry() {
    let node = tokio::task::spawn_blocking(Bitcoind::start).await.unwrap();
    for (transport, v2_flag) in [(Transport::V2, "true"), (Transport::V1, "false")] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = listener.local_addr().unwrap().to_string();
        node.cli(&["addnode", &ours, "onetry", v2_flag]);
        let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
            .await
            .expect("the node connects in time")
            .unwrap();
        let record = tokio::time::timeout(LIMIT, btc::respond(stream, Accept::Both, &config()))
            .await
            .expect("handshake in time")
            .expect("no tool error");
        assert_handshake(&record, transport);
        assert_node_saw(&node, "manual", transport);
    }
}
