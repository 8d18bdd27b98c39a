//! punchscope: measures how well TCP hole punching works for Bitcoin nodes
//! behind home NATs.
//!
//! Layout (docs/architecture.md has one line per module):
//! - [`proto`]: sans-io wire codecs (line framing, echo messages) and the
//!   coordinator's state machine ([`proto::rendezvous`]).
//! - [`net`]: network helpers shared by clients and servers: the bounded
//!   line connection, per-source limits, reuse-port sockets, and the address
//!   policy of what a probe may contact.
//! - [`server`]: the servers (`punchscope serve ...`), each taking bound
//!   listeners, a config and a shutdown signal.
//! - [`classify`]: TCP NAT classification against echo servers.
//! - [`punch`]: one TCP hole-punching trial (strategies, retries, nonce
//!   proof) and the Bitcoin handshake over the punched socket.
//! - [`btc`]: Bitcoin P2P handshakes (v1 and BIP324 v2) over any byte stream.
//! - [`node`]: the volunteer's own Bitcoin node in bridge mode: its RPC
//!   client and the splice of a punched socket to it.
//! - [`rendezvous`]: the volunteer's client of the coordinator.
//! - [`portmap`]: asks the default gateway to open the node's port (PCP,
//!   NAT-PMP; sans-io cores and a thin driver), records the answers and
//!   deletes what was granted.
//! - [`probe`]: the volunteer's whole run as one call ([`probe::run`]) and
//!   the reference peer's loop ([`probe::serve_peer`]); [`probe::guard`]
//!   checks every coordinator instruction.
//! - [`collector`]: result storage ([`collector::ResultStore`], SQLite),
//!   source grouping, and [`collector::client`], the one HTTP client of a
//!   collector; the server is [`server::collector`].
//! - [`upload`]: the probe's spool and its loss-free upload.
//! - [`report`] and [`dataset`]: the library calls of `punchscope report`
//!   and `punchscope dataset publish` (inputs from files or a collector).
//! - [`mod@bench`]: `bench rendezvous`.
//! - `lab` (feature `lab`, Linux): what punchscope runs inside the NAT lab
//!   (crate `punchscope-lab`, re-exported there).
//!
//! The command line lives in the binary (`src/main.rs`, `src/cli/`), the only
//! place that uses `anyhow`. The data contract is the `punchscope-analysis`
//! crate: this library names it `punchscope_analysis`, and re-exports it as
//! [`analysis`] for everyone else.

pub use punchscope_analysis as analysis;

pub mod bench;
pub mod btc;
pub mod classify;
pub mod collector;
pub mod dataset;
#[cfg(all(feature = "lab", target_os = "linux"))]
pub mod lab;
pub mod net;
pub mod node;
pub mod portmap;
pub mod probe;
pub mod proto;
pub mod punch;
pub mod rendezvous;
pub mod report;
pub mod server;
pub mod upload;
