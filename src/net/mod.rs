//! Small network helpers shared by the clients and servers: the bounded line
//! connection our newline-delimited protocols run over.

pub mod line;
