//! One connect attempt of a trial from its bound port, and what the kernel's
//! error says about the network.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::trial::AttemptResult;
use tokio::net::TcpStream;

use crate::net::socket;

/// Why one connect attempt did not produce a stream.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(io::Error),
}

/// One connect attempt from `local` to `peer`.
pub async fn connect_from(
    local: SocketAddr,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = socket::bound(local).map_err(ConnectError::Io)?;
    let socket = socket::into_tokio(socket).map_err(ConnectError::Io)?;
    match tokio::time::timeout(timeout, socket.connect(peer)).await {
        Err(_) => Err(ConnectError::Timeout),
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Ok(Ok(stream)) => {
            stream.set_nodelay(true).map_err(ConnectError::Io)?;
            Ok(stream)
        }
    }
}

/// What the kernel's error says about the network.
pub fn result_of(error: &io::Error) -> AttemptResult {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => AttemptResult::Refused,
        Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH) => AttemptResult::Unreachable,
        Some(libc::ETIMEDOUT) => AttemptResult::Timeout,
        Some(libc::EADDRNOTAVAIL) => AttemptResult::Error {
            detail: format!("EADDRNOTAVAIL: {error}"),
        },
        _ => AttemptResult::Error {
            detail: error.to_string(),
        },
    }
}
