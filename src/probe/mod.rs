//! The volunteer's run: pairing through the coordinator and the trials that follow.
//!
//! Layout: [`pairing`] (one pairing driven end to end: register ports, prime,
//! punch, shake hands, report; every trial becomes a record).

pub mod pairing;

pub use pairing::{run_pairing, PairingEnd, PairingOptions, PairingRecord, Progress};
