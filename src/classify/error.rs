//! What can stop a classification, each saying what the volunteer can do about it.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("no echo server given: pass --server HOST[:PORT]")]
    NoServer,
    #[error("cannot resolve echo server `{spec}`: {cause}; check the name and your DNS")]
    Resolve { spec: String, cause: io::Error },
    #[error("echo server `{spec}` has no IPv4 address; NAT classification needs an IPv4 server (to classify over IPv6, give its IPv6 address as [ADDR]:PORT)")]
    NoIpv4Address { spec: String },
    #[error("no echo server answered ({tried}): {reason}; check the address and that outgoing TCP to that port is allowed")]
    ServerUnreachable { tried: String, reason: String },
    #[error("this host has no IPv4 route to {server}: on an IPv6-only network there is usually no NAT to classify; connect to an IPv4 network to measure")]
    NoIpv4Route { server: SocketAddr },
    #[error("local port {port} is already in use: choose another --local-port or stop the program holding it")]
    LocalPortInUse { port: u16 },
    #[error(
        "asked for local port {requested} but the kernel gave {got}: choose another --local-port"
    )]
    LocalPortNotKept { requested: u16, got: u16 },
    #[error("the echo server at {server} speaks another protocol version ({message}); upgrade punchscope or use a matching server")]
    ServerVersion { server: SocketAddr, message: String },
    #[error("the echo server at {server} sent something unexpected: {message}; is it really a punchscope echo server?")]
    Protocol { server: SocketAddr, message: String },
    #[error("the echo servers are of both IP families ({servers}): one classification measures one family; classify each apart (`punchscope classify` and `probe` split IPv6 literals from the rest for you)")]
    MixedFamilies { servers: String },
    #[error("cannot set up a local socket ({what}): {cause}")]
    Socket {
        what: &'static str,
        cause: io::Error,
    },
}
