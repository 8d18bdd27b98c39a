//! The servers behind `punchscope serve`: each takes bound listeners and a
//! shutdown signal. [`campaign`] runs them all from one campaign file;
//! [`metrics`] is their `/metrics` text; [`tls`] serves the collector over
//! HTTPS itself.

pub mod campaign;
pub mod collector;
pub mod echo;
pub mod metrics;
pub mod rendezvous;
pub mod tls;
