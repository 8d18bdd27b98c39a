//! A classic STUN (RFC 3489 / RFC 5780 CHANGE-REQUEST) binding responder in the internet namespace, for kernel routers' miniupnpd.
//!
//! miniupnpd refuses to forward ports when its WAN address is in a reserved
//! range, and every lab public address is (documentation ranges). With
//! `ext_perform_stun` it asks a STUN server instead, from four ports, once
//! plainly and once each asking the answer to come from the other address,
//! the other port, or both; if all four come back and show its own address
//! and ports, it is "not behind a restrictive NAT" and maps ports. This
//! responder answers exactly that, from the lab's two server addresses and
//! [`PORTS`], and nothing else.
//!
//! [`answer`] is sans-io; [`StunResponder`] runs one thread per socket until dropped.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::{self, NetnsError};

/// The responder's two ports (on each server address).
pub const PORTS: [u16; 2] = [3478, 3479];
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_RESPONSE: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
const CHANGE_IP: u32 = 0x04;
const CHANGE_PORT: u32 = 0x02;
const HEADER: usize = 20;
/// Longest request read: far more than a binding request with CHANGE-REQUEST.
const MAX_REQUEST: usize = 548;

/// What to send back to a request, and from which of the four sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub change_ip: bool,
    pub change_port: bool,
    pub bytes: Vec<u8>,
}

/// The answer to a binding request from `from`: a binding response with
/// MAPPED-ADDRESS, to be sent from the socket CHANGE-REQUEST names.
/// `None` for anything else (bounded parsing, never a panic).
pub fn answer(request: &[u8], from: SocketAddrV4) -> Option<Reply> {
    if request.len() < HEADER || request.len() > MAX_REQUEST {
        return None;
    }
    let kind = u16::from_be_bytes([request[0], request[1]]);
    let length = usize::from(u16::from_be_bytes([request[2], request[3]]));
    if kind != BINDING_REQUEST || HEADER + length != request.len() {
        return None;
    }
    let mut flags = 0u32;
    let mut rest = &request[HEADER..];
    while rest.len() >= 4 {
        let attr = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = len.div_ceil(4) * 4;
        if 4 + padded > rest.len() {
            return None;
        }
        if attr == ATTR_CHANGE_REQUEST && len == 4 {
            flags = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
        }
        rest = &rest[4 + padded..];
    }
    let mut bytes = Vec::with_capacity(HEADER + 12);
    bytes.extend(BINDING_RESPONSE.to_be_bytes());
    bytes.extend(12u16.to_be_bytes());
    // Magic cookie and transaction id, echoed.
    bytes.extend(&request[4..HEADER]);
    bytes.extend(ATTR_MAPPED_ADDRESS.to_be_bytes());
    bytes.extend(8u16.to_be_bytes());
    bytes.extend([0, 1]);
    bytes.extend(from.port().to_be_bytes());
    bytes.extend(from.ip().octets());
    Some(Reply {
        change_ip: flags & CHANGE_IP != 0,
        change_port: flags & CHANGE_PORT != 0,
        bytes,
    })
}

/// The responder's sockets and threads; dropping it stops them.
pub struct StunResponder {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The responder could not bind its sockets.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot bind the lab's STUN responder on {addr} in {netns}: {source}")]
    Bind {
        netns: String,
        addr: SocketAddrV4,
        source: io::Error,
    },
}

impl StunResponder {
    /// Binds `servers[0]` and `servers[1]` (only the first when there is one:
    /// "the other address" is then the same) on [`PORTS`] inside
    /// `netns_name`, and answers until dropped.
    pub fn start(netns_name: &str, servers: &[Ipv4Addr]) -> Result<StunResponder, StunError> {
        let mut ips = vec![servers[0]];
        ips.extend(servers.get(1).filter(|ip| **ip != servers[0]));
        let sockets = netns::run_in(netns_name, || -> Result<Vec<Vec<UdpSocket>>, StunError> {
            ips.iter()
                .map(|ip| {
                    PORTS
                        .iter()
                        .map(|port| {
                            let addr = SocketAddrV4::new(*ip, *port);
                            UdpSocket::bind(addr).map_err(|source| StunError::Bind {
                                netns: netns_name.to_string(),
                                addr,
                                source,
                            })
                        })
                        .collect()
                })
                .collect()
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        // Every thread can answer from any socket: clones of all four.
        let mut threads = Vec::new();
        let grid: Vec<Vec<Arc<UdpSocket>>> = sockets
            .into_iter()
            .map(|row| row.into_iter().map(Arc::new).collect())
            .collect();
        for (i, row) in grid.iter().enumerate() {
            for (j, socket) in row.iter().enumerate() {
                let socket = socket.clone();
                let grid = grid.clone();
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    serve(socket, (i, j), &grid, &stop)
                }));
            }
        }
        Ok(StunResponder { stop, threads })
    }
}

fn serve(
    socket: Arc<UdpSocket>,
    (i, j): (usize, usize),
    grid: &[Vec<Arc<UdpSocket>>],
    stop: &AtomicBool,
) {
    // A short timeout so that a drop is noticed soon.
    if socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        return;
    }
    let mut buffer = [0u8; MAX_REQUEST + 1];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, SocketAddr::V4(from))) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let Some(reply) = answer(&buffer[..n], from) else {
            continue;
        };
        let row = if reply.change_ip {
            (i + 1) % grid.len()
        } else {
            i
        };
        let column = if reply.change_port { 1 - j } else { j };
        let _ = grid[row][column].send_to(&reply.bytes, from);
    }
}

impl Drop for StunResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as miniupnpd builds it: binding request, cookie, id, CHANGE-REQUEST.
    fn request(flags: u32) -> Vec<u8> {
        let mut m = vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
        m.extend(*b"transaction!");
        m.extend([0, 3, 0, 4]);
        m.extend(flags.to_be_bytes());
        m
    }

    #[test]
    fn a_binding_request_gets_its_source_back_from_the_socket_it_names() {
        let from: SocketAddrV4 = "203.0.113.2:48725".parse().unwrap();
        let reply = answer(&request(CHANGE_IP | CHANGE_PORT), from).unwrap();
        assert!(reply.change_ip && reply.change_port);
        assert_eq!(&reply.bytes[..4], &[1, 1, 0, 12]);
        assert_eq!(
            &reply.bytes[4..20],
            &request(0)[4..20],
            "cookie and id echoed"
        );
        assert_eq!(
            &reply.bytes[20..],
            &[0, 1, 0, 8, 0, 1, 0xbe, 0x55, 203, 0, 113, 2]
        );
        let plain = answer(&request(0), from).unwrap();
        assert!(!plain.change_ip && !plain.change_port);
        let port_only = answer(&request(CHANGE_PORT), from).unwrap();
        assert!(!port_only.change_ip && port_only.change_port);
    }

    #[test]
    fn anything_but_a_well_formed_binding_request_is_ignored() {
        let from: SocketAddrV4 = "203.0.113.2:1".parse().unwrap();
        let good = request(0);
        for len in 0..good.len() {
            assert_eq!(answer(&good[..len], from), None, "cut at {len}");
        }
        let mut response = good.clone();
        response[1] = 0x01;
        response[0] = 0x01;
        assert_eq!(answer(&response, from), None);
        let mut overlong_attr = good.clone();
        overlong_attr[22..24].copy_from_slice(&[0, 40]);
        assert_eq!(answer(&overlong_attr, from), None);
        assert_eq!(answer(&vec![0u8; 4000], from), None);
    }
}
