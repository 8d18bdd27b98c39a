//! The NAT lab: network namespaces joined by user-space NAT emulators (Linux only).
//!
//! Layout: [`nat`] is the emulator core (sans-io).

pub mod nat;
