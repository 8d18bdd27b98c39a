//! Sockets for tests: bound as hole punching binds them (the library's own
//! [`punchscope::net::socket::bound`], SO_REUSEADDR + SO_REUSEPORT), plain
//! connections from a chosen loopback source, and free loopback ports.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use super::WAIT;

/// A blocking TCP socket bound to `local` with address and port reuse, for
/// std-socket tests.
pub fn bound(local: SocketAddr) -> std::io::Result<Socket> {
    let socket = punchscope::net::socket::bound(local)?;
    socket.set_nonblocking(false)?;
    Ok(socket)
}

/// A fresh trial socket as the probe makes one (non-blocking, with address
/// and port reuse), bound to `ip`:0.
pub fn trial_socket(ip: IpAddr) -> Socket {
    punchscope::net::socket::bound(SocketAddr::new(ip, 0)).unwrap()
}

/// The loopback address 127.`a`.`b`.`c`: 127.0.0.0/8 is all ours, so one
/// test can play many sources, one per address.
pub fn loopback(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

/// A loopback port that was free a moment ago (bound and released: a tiny
/// race, fine for tests), for a server started by port number or for an
/// address where nothing listens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A blocking TCP connection to `to` from the loopback address `from`,
/// made within [`WAIT`]. A plain socket on an ephemeral port: no port reuse,
/// so many connections from one source never share a port.
pub fn connect_from(from: IpAddr, to: SocketAddr) -> std::net::TcpStream {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect_timeout(&to.into(), WAIT).unwrap();
    socket.into()
}

/// [`connect_from`] for tokio tests.
pub async fn connect_from_async(from: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = match to {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connects within the wait")
        .unwrap()
}
