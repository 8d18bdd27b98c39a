//! The volunteer's side of the rendezvous protocol: a control-connection client and port registration.
//!
//! The probe drives it like this (all waits are bounded):
//!
//! ```text
//! let mut client = Client::connect(server, Hello::volunteer(max_wait), read_timeout).await?;
//! let pairing = client.wait_for_pairing(|waited| { /* progress */ }, max_wait).await?;
//! loop {
//!     match client.next().await? {
//!         Step::Trial { trial, token, strategy } => {
//!             // bind a fresh socket (SO_REUSEADDR + SO_REUSEPORT) on port P, then:
//!             let observed = register_port(socket, client.server(), &token, None, timeout).await?;
//!         }
//!         Step::Prime { trial, peer, ttl } => { /* low-TTL SYN */ client.primed(trial).await?; }
//!         Step::Go { trial, peer, delay, nonce, .. } => { /* the trial */ client.report(trial, &report).await?; }
//!         Step::PeerResult { .. } => {}
//!         Step::PeerGone { .. } | Step::Done { .. } => break,
//!     }
//! }
//! ```
//!
//! Before consent, [`fetch_campaign`] asks which campaign the coordinator
//! runs (its operator, echo servers, collector, privacy notice).
//!
//! Pings from the coordinator are answered by a background task at once,
//! even while the caller is busy registering a port, so the RTTs the
//! coordinator measures (and the start delays it derives) are not inflated
//! by the caller's own work. The protocol is specified in
//! `docs/protocol.md` ("Rendezvous protocol").

mod campaign;
mod client;
mod error;
mod lines;
mod register;

pub use crate::proto::rendezvous::{ErrorCode, Hello, Mode};
pub use campaign::fetch_campaign;
pub use client::{Client, Pairing, Step, TrialReport};
pub use error::RendezvousError;
pub use register::register_port;
