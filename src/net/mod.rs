//! Small network helpers shared by the clients and servers: the bounded line
//! connection our newline-delimited protocols run over, the sans-io
//! per-source limits of both servers, sockets bound the way hole punching
//! needs them, and which endpoints a server may send a probe to.

pub mod address;
pub mod line;
pub mod socket;
pub mod source_limit;
