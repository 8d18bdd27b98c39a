//! Sockets bound the way hole punching needs them (SO_REUSEADDR + SO_REUSEPORT on
//! one port for connects and a listener), and errno read as attempt results.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use punchscope_analysis::trial::AttemptResult;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A non-blocking TCP socket bound to `local` with address and port reuse.
pub fn bound(local: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// Hands a bound, unconnected socket to tokio.
pub fn into_tokio(socket: Socket) -> io::Result<TcpSocket> {
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// A listener on `local` that shares the port with outgoing connects.
pub fn listen_on(local: SocketAddr) -> io::Result<TcpListener> {
    let socket = bound(local)?;
    socket.listen(16)?;
    TcpListener::from_std(socket.into())
}

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
    let socket = bound(local).map_err(ConnectError::Io)?;
    let socket = into_tokio(socket).map_err(ConnectError::Io)?;
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
pub fn attempt_result(error: &io::Error) -> AttemptResult {
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
