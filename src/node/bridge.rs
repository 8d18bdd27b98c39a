//! Bridge mode: a punched, nonce-proven socket handed to the volunteer's own
//! Bitcoin node, and the node asked over RPC how its handshake with the peer
//! went. Outcomes are records ([`NodeBridgeRecord`]); nothing here returns `Err`.
//!
//! The coordinator's roles decide who speaks first, as BIP324 needs:
//! - responder: we connect to the node's P2P port and splice the punched
//!   socket to that connection; the node sees an inbound peer and waits for
//!   the initiator's first bytes;
//! - initiator: we listen on a loopback port, ask the node to `addnode
//!   127.0.0.1:PORT onetry`, accept its connection and splice it to the
//!   punched socket; the node sends the first bytes (its `version`, or its
//!   BIP324 key when it prefers v2).
//!
//! Then we poll the node's `getpeerinfo` (bounded) until it lists that
//! connection with both `verack`s, wait for its ping to be answered and
//! hold the connection a moment (so the other side sees its node complete
//! too), record the node's view of the peer, and ask it to `disconnectnode`
//! when the trial ends. The splice runs under a deadline.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use punchscope_analysis::handshake::{
    BridgeFailure, NodeBridgeRecord, NodePeerView, Role, Transport,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::rpc::{NodePeer, NodeRpc, RpcConfig, RpcError};

/// How often the node's `getpeerinfo` is read while waiting.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// After the handshake, how long to wait for the node's ping to be answered.
const PONG_WAIT: Duration = Duration::from_secs(5);

/// After the pong, how long the connection is held for the other side's
/// bridge to see its node complete too (ten of its polls), unless it hangs up first.
const HOLD_AFTER_PONG: Duration = Duration::from_secs(1);

/// After `disconnectnode`, how long the splice may still drain before it is cut.
const SPLICE_LINGER: Duration = Duration::from_secs(2);

/// What bridge mode needs from the volunteer (`probe --node ... --node-rpc ...`).
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The node's P2P listening address, on loopback.
    pub p2p: SocketAddr,
    pub rpc: RpcConfig,
    /// See [`NodeBridge::force_role`].
    pub force_role: Option<Role>,
}

/// Why bridge mode cannot start: said before anything is measured.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("--node {0} is not on this machine: bridge mode needs the node's P2P port on loopback (e.g. 127.0.0.1:8333, regtest 127.0.0.1:18444), because the node also connects to a loopback port of punchscope")]
    NotLoopback(SocketAddr),
    #[error("{0}")]
    Rpc(#[from] RpcError),
}

/// The volunteer's node: where its P2P port is and how to ask it things.
#[derive(Debug, Clone)]
pub struct NodeBridge {
    /// The node's P2P listening address (loopback, e.g. 127.0.0.1:8333).
    pub p2p: SocketAddr,
    pub rpc: Arc<NodeRpc>,
    /// Play this role instead of the coordinator's: only for the experiment
    /// that shows what two initiators do (docs/bitcoin.md, bridge mode).
    pub force_role: Option<Role>,
}

impl NodeBridge {
    /// Checks the options and asks the node once (`getpeerinfo`), so a node
    /// that is down or refuses the credentials stops the run before it
    /// measures anything.
    pub async fn connect(options: &NodeOptions) -> Result<NodeBridge, NodeError> {
        if !options.p2p.ip().is_loopback() {
            return Err(NodeError::NotLoopback(options.p2p));
        }
        let rpc = NodeRpc::new(&options.rpc)?;
        rpc.peers().await?;
        Ok(NodeBridge {
            p2p: options.p2p,
            rpc: Arc::new(rpc),
            force_role: options.force_role,
        })
    }

    /// The role our node plays in a trial where the coordinator gave us `assigned`.
    pub fn role_for(&self, assigned: Role) -> Role {
        self.force_role.unwrap_or(assigned)
    }
}

/// A node's connection spliced to the punched socket, and where the node sees it.
struct Spliced {
    /// The address the node lists the peer under in `getpeerinfo`.
    node_sees: String,
    splice: JoinHandle<std::io::Result<(u64, u64)>>,
}

/// Hands `punched` to the node in the `assigned` role and records what the
/// node says. `within` bounds the node's connection and handshake, counted
/// from the hand-over (Bitcoin Core itself drops a peer without a handshake
/// after 60 s, `-peertimeout`) and the wait for the node's ping; the whole
/// call ends within `within`, three RPC timeouts (a call under way when the
/// deadline passes, the pong's, `disconnectnode`) and three seconds.
pub async fn run(
    punched: TcpStream,
    assigned: Role,
    bridge: &NodeBridge,
    within: Duration,
) -> NodeBridgeRecord {
    let role = bridge.role_for(assigned);
    let mut record = NodeBridgeRecord {
        role,
        success: false,
        failure: None,
        peer: None,
        handshake_ms: None,
        bytes_to_peer: 0,
        bytes_from_peer: 0,
        disconnected: false,
    };
    let handed_over = Instant::now();
    let spliced = match role {
        Role::Responder => to_node_port(punched, bridge, within).await,
        Role::Initiator => from_node(punched, bridge, within).await,
    };
    let spliced = match spliced {
        Ok(spliced) => spliced,
        Err(failure) => {
            record.failure = Some(failure);
            return record;
        }
    };
    let deadline = handed_over + within;
    let watched = watch_peer(&bridge.rpc, &spliced.node_sees, deadline).await;
    record.failure = watched.failure;
    let mut splice = spliced.splice;
    let mut splice_ended = None;
    let mut last_seen = watched.last_seen;
    let mut gone = watched.dropped;
    if let Some(peer) = &last_seen {
        record.success = peer.version_handshake_complete();
    }
    if record.success {
        record.handshake_ms = Some(watched.at.duration_since(handed_over).as_secs_f64() * 1e3);
        // Ending the connection now could cut the other side short: its
        // bridge may not have seen its own node complete yet, and would
        // record a drop. The node pings right after `verack` and the peer
        // answers only once it has our `verack` too, so wait for the pong
        // (the record gets the ping time), then hold the connection a
        // moment for the other side's next look, unless it hangs up first.
        let pong_by = deadline.min(Instant::now() + PONG_WAIT);
        match await_pong(&bridge.rpc, &spliced.node_sees, pong_by).await {
            Some(peer) => last_seen = Some(peer),
            None => gone = true,
        }
        splice_ended = tokio::time::timeout(HOLD_AFTER_PONG, &mut splice)
            .await
            .ok();
    }
    if let Some(peer) = &last_seen {
        record.peer = Some(view(peer));
        // Still there: the trial ends here, so the node lets the peer go.
        if !gone && splice_ended.is_none() {
            record.disconnected = bridge.rpc.disconnect(peer.id).await.is_ok();
        }
    }
    // The node closes its side once disconnected; the peer's node closes
    // the other when its own bridge disconnects it. Cut what is left.
    let splice_ended = match splice_ended {
        Some(ended) => Some(ended),
        None => tokio::time::timeout(SPLICE_LINGER, &mut splice).await.ok(),
    };
    match splice_ended {
        Some(Ok(Ok((to_peer, from_peer)))) => {
            record.bytes_to_peer = to_peer;
            record.bytes_from_peer = from_peer;
        }
        Some(_) => {}
        None => splice.abort(),
    }
    record
}

/// Polls `getpeerinfo` until the node has a ping time for the peer at
/// `node_sees` (returned), the peer is gone (`None`) or `deadline` passes
/// (the last view). An RPC failure here changes nothing measured: the last view stands.
async fn await_pong(rpc: &NodeRpc, node_sees: &str, deadline: Instant) -> Option<NodePeer> {
    let mut last = None;
    loop {
        match rpc.peers().await {
            Ok(peers) => match peers.into_iter().find(|p| p.addr == node_sees) {
                Some(peer) if peer.pingtime.is_some() => return Some(peer),
                Some(peer) => last = Some(peer),
                None => return None,
            },
            Err(_) => return last,
        }
        if Instant::now() + POLL_EVERY > deadline {
            return last;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Responder: the punched socket spliced to the node's P2P port (an inbound peer).
async fn to_node_port(
    punched: TcpStream,
    bridge: &NodeBridge,
    within: Duration,
) -> Result<Spliced, BridgeFailure> {
    let connect = TcpStream::connect(bridge.p2p);
    let node = match tokio::time::timeout(within, connect).await {
        Ok(Ok(node)) => node,
        Ok(Err(e)) => {
            return Err(BridgeFailure::NodeUnreachable {
                detail: format!("{}: {e}", bridge.p2p),
            })
        }
        Err(_) => {
            return Err(BridgeFailure::NodeUnreachable {
                detail: format!("{}: no answer within {:?}", bridge.p2p, within),
            })
        }
    };
    let node_sees = node
        .local_addr()
        .map_err(|e| BridgeFailure::NodeUnreachable {
            detail: e.to_string(),
        })?
        .to_string();
    Ok(Spliced {
        node_sees,
        splice: splice(node, punched, within * 2),
    })
}

/// Initiator: the node connects out to our loopback port (`addnode onetry`),
/// and that connection is spliced to the punched socket.
async fn from_node(
    punched: TcpStream,
    bridge: &NodeBridge,
    within: Duration,
) -> Result<Spliced, BridgeFailure> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .and_then(|l| l.local_addr().map(|a| (l, a)));
    let (listener, ours) = match listener {
        Ok(bound) => bound,
        Err(e) => {
            return Err(BridgeFailure::LocalError {
                detail: format!("cannot listen on loopback for the node: {e}"),
            })
        }
    };
    if let Err(e) = bridge.rpc.addnode_onetry(ours).await {
        return Err(BridgeFailure::Rpc {
            call: "addnode".into(),
            detail: e.to_string(),
        });
    }
    // Only a connection from this machine is the node's; anything else is closed.
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((node, from)) if from.ip().is_loopback() => return node,
                Ok(_) => continue,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    };
    let Ok(node) = tokio::time::timeout(within, accept).await else {
        return Err(BridgeFailure::NodeDidNotConnect);
    };
    Ok(Spliced {
        node_sees: ours.to_string(),
        splice: splice(node, punched, within * 2),
    })
}

/// Copies both ways between the node's connection and the punched socket
/// until both sides close or `limit` passes; counts (to peer, from peer).
fn splice(
    mut node: TcpStream,
    mut punched: TcpStream,
    limit: Duration,
) -> JoinHandle<std::io::Result<(u64, u64)>> {
    let _ = node.set_nodelay(true);
    let _ = punched.set_nodelay(true);
    tokio::spawn(async move {
        let copied = tokio::time::timeout(
            limit,
            tokio::io::copy_bidirectional(&mut node, &mut punched),
        )
        .await;
        let _ = punched.shutdown().await;
        match copied {
            Ok(result) => result,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    })
}

/// What the node's `getpeerinfo` showed about one connection.
struct Watched {
    last_seen: Option<NodePeer>,
    /// When it was last read (the handshake time when complete).
    at: Instant,
    /// Listed once, then gone.
    dropped: bool,
    failure: Option<BridgeFailure>,
}

/// Polls `getpeerinfo` until the peer at `node_sees` has completed its
/// handshake, is gone, or `deadline` passes.
async fn watch_peer(rpc: &NodeRpc, node_sees: &str, deadline: Instant) -> Watched {
    let mut watched = Watched {
        last_seen: None,
        at: Instant::now(),
        dropped: false,
        failure: None,
    };
    loop {
        let listed = match rpc.peers().await {
            Ok(peers) => peers.into_iter().find(|p| p.addr == node_sees),
            Err(e) => {
                watched.failure = Some(BridgeFailure::Rpc {
                    call: "getpeerinfo".into(),
                    detail: e.to_string(),
                });
                return watched;
            }
        };
        watched.at = Instant::now();
        match listed {
            Some(peer) if peer.version_handshake_complete() => {
                watched.last_seen = Some(peer);
                return watched;
            }
            Some(peer) => watched.last_seen = Some(peer),
            None if watched.last_seen.is_some() => {
                watched.dropped = true;
                watched.failure = Some(BridgeFailure::PeerDropped);
                return watched;
            }
            None => {}
        }
        if Instant::now() + POLL_EVERY > deadline {
            watched.failure = Some(if watched.last_seen.is_some() {
                BridgeFailure::HandshakeIncomplete
            } else {
                BridgeFailure::PeerNotListed
            });
            return watched;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The record's view of a `getpeerinfo` entry.
fn view(peer: &NodePeer) -> NodePeerView {
    NodePeerView {
        connection_type: peer.connection_type.clone(),
        transport: match peer.transport_protocol_type.as_str() {
            "v1" => Some(Transport::V1),
            "v2" => Some(Transport::V2),
            _ => None,
        },
        version_handshake: peer.version_handshake_complete(),
        user_agent: peer.subver.clone(),
        protocol_version: peer.version,
        services: peer.services_bits(),
        session_id: Some(peer.session_id.clone()).filter(|s| !s.is_empty()),
        ping_ms: peer.pingtime.map(|s| s * 1e3),
    }
}
