//! punchscope: measures how well TCP hole punching works for Bitcoin nodes
//! behind home NATs.
//!
//! Layout:
//! - [`lab`] (Linux only): NATs of every RFC 4787 kind built from network
//!   namespaces and a user-space NAT emulator, so the whole pipeline runs and
//!   is tested on one machine. Its emulator core ([`lab::nat`]) is sans-io.
//! - [`net`]: small network helpers shared by clients and servers: the
//!   bounded line connection our newline-delimited protocols run over, the
//!   sans-io per-source limits of both servers, and sockets bound the way
//!   hole punching needs them (used by trials, classification and the lab).
//! - [`proto`]: sans-io wire codecs (echo/reflector messages, rendezvous
//!   messages and the coordinator's state machine).
//! - [`server`]: the servers (`punchscope serve ...`), each taking bound listeners and a shutdown signal.
//! - [`classify`]: TCP NAT classification against echo servers.
//! - [`punch`]: one TCP hole-punching trial (strategies, retries, nonce proof),
//!   and the Bitcoin handshake over the punched socket.
//! - [`btc`]: Bitcoin P2P handshakes (v1 and BIP324 v2) over any byte stream.
//! - [`rendezvous`]: the volunteer's client of the coordinator (pairing, trial
//!   steps, port registration).
//! - [`probe`]: the volunteer's run; for now one pairing driven end to end.
//! - [`collector`]: storage of the results collector (the [`collector::ResultStore`]
//!   trait, SQLite in WAL mode) and its privacy-preserving source grouping;
//!   the HTTP side is [`server::collector`].
//! - [`report`] and [`dataset`]: the library calls of `punchscope report`
//!   and `punchscope dataset publish` (inputs from files or a collector).
//! - [`upload`]: the probe's local spool of results and their loss-free
//!   upload to a collector, with retries and backoff.
//!
//! The command line lives in the binary (`src/main.rs`, `src/cli/`), the only
//! place that uses `anyhow`. NAT behaviour types and the results schema live
//! in the `punchscope-analysis` crate, re-exported here as [`analysis`].

pub use punchscope_analysis as analysis;

pub mod bench;
pub mod btc;
pub mod classify;
pub mod collector;
pub mod dataset;
#[cfg(all(feature = "lab", target_os = "linux"))]
pub mod lab;
pub mod net;
pub mod probe;
pub mod proto;
pub mod punch;
pub mod rendezvous;
pub mod report;
pub mod server;
pub mod upload;
