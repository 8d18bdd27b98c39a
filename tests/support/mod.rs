//! Test support shared by the integration tests, in one place. Each test
//! file includes it with `mod support;` and uses the parts it needs:
//! [`lab`] (lab tests: names, root, a reflector, sockets), [`sockets`]
//! (reuse-port sockets as trials bind them), [`bitcoind`] (a regtest node),
//! [`tls`] (a test CA), [`python`] (an interpreter with a given module).

#![allow(dead_code)]

pub mod bitcoind;
#[cfg(all(feature = "lab", target_os = "linux"))]
pub mod lab;
pub mod python;
pub mod sockets;
pub mod tls;
