//! Sockets bound the way hole punching needs them: SO_REUSEADDR +
//! SO_REUSEPORT, bound before connecting or listening, so connects and a
//! listener share one local port. Trials, port registration, classification
//! and the lab all bind this way, so each sees the NAT as a trial will.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

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
