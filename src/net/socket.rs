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
    // An IPv6 port is IPv6 only: a trial runs in one family, and its
    // reuse-port siblings must not pick up the other's connections.
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
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

/// Raises this process's open-file soft limit to its hard limit (a
/// server holds one descriptor per client) and returns the new limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// The unspecified address of `like`'s family, with `port`.
pub fn unspecified(like: SocketAddr, port: u16) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
    }
}

/// The source address the kernel would pick to reach `remote` (its routing
/// and RFC 6724 rules), learnt without sending anything: a UDP socket's
/// connect only chooses a route.
pub fn source_ip_towards(remote: SocketAddr) -> io::Result<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind(unspecified(remote, 0))?;
    probe.connect(remote)?;
    Ok(probe.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_towards_loopback_is_loopback_in_either_family() {
        let v4 = source_ip_towards("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(v4.is_loopback() && v4.is_ipv4(), "{v4}");
        let v6 = source_ip_towards("[::1]:9".parse().unwrap()).unwrap();
        assert_eq!(v6, std::net::Ipv6Addr::LOCALHOST);
    }
}
