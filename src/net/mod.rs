//! Small network helpers shared by the clients and servers: the bounded line
//! connection our newline-delimited protocols run over, and the sans-io
//! per-source limits of both servers.

pub mod line;
pub mod source_limit;
