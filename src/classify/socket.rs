//! Client sockets that share one local port: SO_REUSEADDR + SO_REUSEPORT, bound before connecting or listening.

use std::io;
use std::net::SocketAddr;

use socket2::Socket;
use tokio::net::{TcpListener, TcpSocket};

use super::error::ClassifyError;

/// The same binding as a punching trial's, so classification sees what trials will.
fn reusable(local: SocketAddr) -> io::Result<Socket> {
    crate::punch::socket::bound(local)
}

fn bind_error(local: SocketAddr, what: &'static str, e: io::Error) -> ClassifyError {
    if e.kind() == io::ErrorKind::AddrInUse {
        ClassifyError::LocalPortInUse { port: local.port() }
    } else {
        ClassifyError::Socket { what, cause: e }
    }
}

/// The port the socket really got, checked against a requested nonzero port.
fn kept_port(socket: &Socket, requested: u16) -> Result<u16, ClassifyError> {
    let got = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .ok_or_else(|| ClassifyError::Socket {
            what: "read local address",
            cause: io::Error::other("socket has no IP address"),
        })?;
    if requested != 0 && got != requested {
        return Err(ClassifyError::LocalPortNotKept { requested, got });
    }
    Ok(got)
}

/// A socket bound to `local` (port 0: any), ready to connect; returns the bound port.
pub fn bound(local: SocketAddr) -> Result<(TcpSocket, u16), ClassifyError> {
    let socket = reusable(local).map_err(|e| bind_error(local, "bind", e))?;
    let port = kept_port(&socket, local.port())?;
    let std_stream: std::net::TcpStream = socket.into();
    Ok((TcpSocket::from_std_stream(std_stream), port))
}

/// A listener bound to `local` that other sockets may share the port with.
pub fn listener(local: SocketAddr) -> Result<(TcpListener, u16), ClassifyError> {
    let socket = reusable(local).map_err(|e| bind_error(local, "bind listener", e))?;
    let port = kept_port(&socket, local.port())?;
    socket.listen(16).map_err(|e| ClassifyError::Socket {
        what: "listen",
        cause: e,
    })?;
    let std_listener: std::net::TcpListener = socket.into();
    let listener = TcpListener::from_std(std_listener).map_err(|e| ClassifyError::Socket {
        what: "register listener",
        cause: e,
    })?;
    Ok((listener, port))
}
