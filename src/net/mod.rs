//! Small network helpers shared by the clients and servers: the bounded line
//! connection our newline-delimited protocols run over, the sans-io
//! per-source limits of both servers, sockets bound the way hole punching
//! needs them, which endpoints a server may send a probe to, and
//! `HOST[:PORT]` with a default port.

pub mod address;
pub mod host_port;
pub mod line;
pub mod socket;
pub mod source_limit;
