//! The node RPC client of bridge mode against a real regtest `bitcoind` on
//! loopback (built by `.ci/bitcoind`): cookie and user:password auth,
//! `addnode onetry`, `getpeerinfo`, `disconnectnode`, and what the client
//! says when the credentials are wrong (without repeating them).

mod support;

use std::time::Duration;

use hmac::{Hmac, Mac};
use punchscope::analysis::handshake::{BitcoinNetwork, Transport};
use punchscope::btc::{self, Accept, HandshakeConfig};
use punchscope::node::{NodeRpc, RpcAuth, RpcConfig, RpcError};
use support::bitcoind::{Bitcoind, KeepOpen, NodeSetup};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct-horse-battery";

/// An `rpcauth=` line for `user` with [`PASSWORD`] (what Core's share/rpcauth.py writes).
fn rpcauth_line(user: &str) -> String {
    let salt = "0123456789abcdef0123456789abcdef";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(salt.as_bytes()).unwrap();
    mac.update(PASSWORD.as_bytes());
    let hash: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("rpcauth={user}:{salt}${hash}")
}

fn start_node() -> Bitcoind {
    Bitcoind::start_with(NodeSetup {
        extra_conf: vec![rpcauth_line("bridge")],
        ..NodeSetup::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn addnode_getpeerinfo_and_disconnectnode_work_with_cookie_auth() {
    let node = tokio::task::spawn_blocking(start_node).await.unwrap();
    let rpc = NodeRpc::new(&RpcConfig::new(
        &node.rpc_url(),
        Some(RpcAuth::CookieFile(node.cookie())),
    ))
    .unwrap();
    assert_eq!(rpc.peers().await.unwrap(), Vec::new(), "a fresh node");

    // The node connects to us: our responder answers, so the node sees a
    // complete version handshake with a manual peer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = listener.local_addr().unwrap();
    rpc.addnode_onetry(ours).await.unwrap();
    let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the node connects in time")
        .unwrap();
    let config = HandshakeConfig {
        network: BitcoinNetwork::Regtest,
        ..HandshakeConfig::default()
    };
    // The connection stays open after the handshake (KeepOpen), so the node
    // still lists us, and `disconnectnode` is what ends it.
    let mut held = KeepOpen(stream);
    let record = tokio::time::timeout(LIMIT, btc::respond(&mut held, Accept::Both, &config))
        .await
        .expect("handshake in time")
        .unwrap();
    assert!(record.success, "{record:?}");
    assert_eq!(record.transport, Some(Transport::V2));
    let deadline = tokio::time::Instant::now() + LIMIT;
    let peer = loop {
        let peers = rpc.peers().await.unwrap();
        if let Some(peer) = peers
            .into_iter()
            .find(|p| p.addr == ours.to_string() && p.version_handshake_complete())
        {
            break peer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never listed us"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(peer.connection_type, "manual");
    assert_eq!(peer.transport_protocol_type, "v2");
    assert!(peer.subver.starts_with("/punchscope:"), "{}", peer.subver);
    assert_eq!(peer.services_bits(), 0, "punchscope serves nothing");
    assert_eq!(record.session_id.as_deref(), Some(peer.session_id.as_str()));

    rpc.disconnect(peer.id).await.unwrap();
    // The node closes our connection...
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, held.0.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the node did not close the connection");
    // ...and a second disconnect names the missing peer (RPC error -29).
    let again = rpc.disconnect(peer.id).await.unwrap_err();
    assert!(matches!(again, RpcError::Node { code: -29, .. }), "{again}");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while rpc.peers().await.unwrap().iter().any(|p| p.id == peer.id) {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_password_auth_works_and_wrong_credentials_are_named_but_not_shown() {
    let node = tokio::task::spawn_blocking(start_node).await.unwrap();
    let url = node.rpc_url();
    let with_password = |password: &str| {
        NodeRpc::new(&RpcConfig::new(
            &url,
            Some(RpcAuth::UserPassword {
                user: "bridge".into(),
                password: password.into(),
            }),
        ))
        .unwrap()
    };
    assert!(with_password(PASSWORD).peers().await.unwrap().is_empty());
    // The same credentials in the URL work too.
    let in_url = url.replacen("http://", &format!("http://bridge:{PASSWORD}@"), 1);
    let rpc = NodeRpc::new(&RpcConfig::new(&in_url, None)).unwrap();
    assert!(!rpc.url().contains(PASSWORD));
    assert!(rpc.peers().await.unwrap().is_empty());

    let wrong = with_password("wrong-password-123")
        .peers()
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, RpcError::Unauthorized { code: 401 }),
        "{wrong}"
    );
    assert!(!wrong.to_string().contains("wrong-password-123"));

    // An RPC error is the node's answer, with its code.
    let refused = with_password(PASSWORD)
        .call("no_such_method", serde_json::json!([]))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RpcError::Node { code: -32601, .. }),
        "{refused}"
    );

    // A port with nobody listening: unreachable, quickly, saying where.
    let closed = format!("http://127.0.0.1:{}", support::sockets::free_port());
    let nobody = NodeRpc::new(&RpcConfig {
        timeout: Duration::from_secs(2),
        ..RpcConfig::new(
            &closed,
            Some(RpcAuth::UserPassword {
                user: "bridge".into(),
                password: PASSWORD.into(),
            }),
        )
    })
    .unwrap()
    .peers()
    .await
    .unwrap_err();
    assert!(matches!(nobody, RpcError::Unreachable { .. }), "{nobody}");
    assert!(!nobody.to_string().contains(PASSWORD));
}

#[tokio::test]
async fn an_answer_larger_than_the_bound_is_refused() {
    // A canned HTTP server on loopback answering with a body over the bound.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let body = format!("{{\"result\":\"{}\",\"error\":null}}", "x".repeat(2000));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
        );
        let _ = stream.write_all(answer.as_bytes()).await;
    });
    let rpc = NodeRpc::new(&RpcConfig {
        max_answer_bytes: 1000,
        ..RpcConfig::new(
            &url,
            Some(RpcAuth::UserPassword {
                user: "u".into(),
                password: "p".into(),
            }),
        )
    })
    .unwrap();
    let e = rpc.peers().await.unwrap_err();
    assert!(matches!(e, RpcError::TooLarge { max: 1000, .. }), "{e}");
    server.await.unwrap();
}
