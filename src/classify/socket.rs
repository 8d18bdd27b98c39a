//! Classification's sockets: the shared reuse-port binding of
//! [`crate::net::socket`] (a trial's, so classification sees what trials
//! will), with errors a volunteer can act on and the local port checked.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use super::error::ClassifyError;
use crate::net::socket as shared;

fn bind_error(local: SocketAddr, what: &'static str, e: io::Error) -> ClassifyError {
    if e.kind() == io::ErrorKind::AddrInUse {
        ClassifyError::LocalPortInUse { port: local.port() }
    } else {
        ClassifyError::Socket { what, cause: e }
    }
}

/// The port the socket really got, checked against a requested nonzero port.
fn kept_port(bound: io::Result<SocketAddr>, requested: u16) -> Result<u16, ClassifyError> {
    let got = bound
        .map_err(|cause| ClassifyError::Socket {
            what: "read local address",
            cause,
        })?
        .port();
    if requested != 0 && got != requested {
        return Err(ClassifyError::LocalPortNotKept { requested, got });
    }
    Ok(got)
}

/// A socket bound to `local` (port 0: any), ready to connect; returns the bound port.
pub fn bound(local: SocketAddr) -> Result<(TcpSocket, u16), ClassifyError> {
    let socket = shared::bound(local).map_err(|e| bind_error(local, "bind", e))?;
    let address = socket.local_addr().and_then(|a| {
        a.as_socket()
            .ok_or_else(|| io::Error::other("socket has no IP address"))
    });
    let port = kept_port(address, local.port())?;
    let socket = shared::into_tokio(socket).map_err(|cause| ClassifyError::Socket {
        what: "register socket",
        cause,
    })?;
    Ok((socket, port))
}

/// A listener bound to `local` that other sockets may share the port with.
pub fn listener(local: SocketAddr) -> Result<(TcpListener, u16), ClassifyError> {
    let listener = shared::listen_on(local).map_err(|e| bind_error(local, "bind listener", e))?;
    let port = kept_port(listener.local_addr(), local.port())?;
    Ok((listener, port))
}
