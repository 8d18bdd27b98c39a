//! Test support shared by the integration tests. Each test file includes it
//! with `mod support;` and uses the parts it needs.

#![allow(dead_code)]

pub mod bitcoind;
pub mod tls;
