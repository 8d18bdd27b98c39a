//! The volunteer's own Bitcoin node in bridge mode: [`rpc`], a small client
//! of Bitcoin Core's JSON-RPC (`addnode onetry`, `getpeerinfo`,
//! `disconnectnode`), and [`bridge`], which hands a punched socket to the
//! node and asks the node how the handshake with the peer went.

pub mod bridge;
pub mod rpc;

pub use bridge::{NodeBridge, NodeError, NodeOptions};
pub use rpc::{NodePeer, NodeRpc, RpcAuth, RpcConfig, RpcError};
