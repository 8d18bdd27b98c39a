//! Sans-io wire codecs: plain functions and types over bytes, no sockets, no tokio.

pub mod echo;
pub mod ndjson;
pub mod rendezvous;
