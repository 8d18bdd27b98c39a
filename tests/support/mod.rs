//! Test support shared by the integration tests and the benchmarks, in one
//! place. Each test file includes it with `mod support;` (a benchmark with
//! `#[path = "../tests/support/mod.rs"]`) and uses the parts it needs:
//!
//! - [`results`]: `RunResult`, `TrialRecord`, classification and `Plan`
//!   builders, raw (for the sanitizer to strip) and already sanitized;
//!   [`synthetic`]: a seeded synthetic campaign as collector export lines.
//! - [`collector`]: a collector on loopback, in this process or as a child
//!   process, and readers of its database; [`http`]: HTTP/1 calls to it,
//!   high-level or byte for byte, and a canned-answer server.
//! - [`echo`] and [`rendezvous`]: the echo server and the coordinator on
//!   loopback with short deadlines, and scripted or raw peers of them;
//!   [`server_task`]: how both are spawned and stopped.
//! - [`sockets`]: reuse-port sockets as trials bind them, connections from a
//!   chosen loopback source, free ports; [`process`]: child processes that
//!   are killed and reaped however a test ends.
//! - [`postgres`] (a throwaway PostgreSQL server on a Unix socket),
//!   [`tls`] (a test CA), [`bitcoind`] (a regtest node), [`python`] (an
//!   interpreter with a given module), [`lab`] (lab tests: names, root, a
//!   reflector, sockets; Linux with the `lab` feature only).

// Each test binary uses a different part of the support code.
#![allow(dead_code)]

use std::time::Duration;

pub mod bitcoind;
pub mod collector;
pub mod echo;
pub mod http;
#[cfg(all(feature = "lab", target_os = "linux"))]
pub mod lab;
pub mod postgres;
pub mod process;
pub mod python;
pub mod rendezvous;
pub mod results;
pub mod server_task;
pub mod sockets;
pub mod synthetic;
pub mod tls;

/// Every wait on a loopback server in the tests is bounded by this: long
/// enough for a loaded 2-core machine, short enough that a hang fails fast.
pub const WAIT: Duration = Duration::from_secs(5);
