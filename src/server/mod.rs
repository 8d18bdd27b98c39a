//! The servers behind `punchscope serve`: each takes bound listeners and a shutdown signal.

pub mod collector;
pub mod echo;
pub mod rendezvous;
