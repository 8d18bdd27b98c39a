//! Sockets for tests, bound as hole punching binds them: the library's own
//! [`punchscope::net::socket::bound`] (SO_REUSEADDR + SO_REUSEPORT), in
//! blocking mode for std-socket tests.

use std::net::SocketAddr;

use socket2::Socket;

/// A blocking TCP socket bound to `local` with address and port reuse.
pub fn bound(local: SocketAddr) -> std::io::Result<Socket> {
    let socket = punchscope::net::socket::bound(local)?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}
