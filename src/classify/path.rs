//! The path probe: TCP SYNs towards the primary echo server with IP TTL 1, 2, 3, ..., each answered by the router where it died.
//!
//! No privilege is needed: each probe is an ordinary TCP socket with
//! `IP_TTL` set and `IP_RECVERR` on, so the ICMP time exceeded that ends its
//! connect lands on the socket's error queue with the router's address (the
//! "offender"). The TTLs run in parallel, one blocking thread each, so the
//! whole sequence costs one wait. What the answers mean is
//! [`punchscope_analysis::classify::path_verdict`].

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use punchscope_analysis::classify::{HopAnswer, HopObservation, PathObservation, MAX_PATH_TTL};
use socket2::{Domain, Protocol, Socket, Type};

/// ICMP type numbers as the error queue reports them.
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Probes TTL 1..=[`MAX_PATH_TTL`] towards `target`, each waiting at most `wait`.
pub async fn probe(target: SocketAddr, wait: Duration) -> PathObservation {
    let mut running = Vec::new();
    for ttl in 1..=MAX_PATH_TTL {
        running.push(tokio::task::spawn_blocking(move || {
            (ttl, probe_hop(target, ttl, wait))
        }));
    }
    let mut hops = Vec::new();
    let mut errors = Vec::new();
    for task in running {
        match task.await {
            Ok((ttl, Ok(answer))) => hops.push(HopObservation { ttl, answer }),
            Ok((ttl, Err(e))) => errors.push(format!("TTL {ttl}: {e}")),
            Err(e) => errors.push(format!("probe thread: {e}")),
        }
    }
    PathObservation {
        hops,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// One SYN with `ttl`; what ended its connect.
fn probe_hop(target: SocketAddr, ttl: u8, wait: Duration) -> io::Result<HopAnswer> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_ttl(u32::from(ttl))?;
    let fd = socket.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let set = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.set_nonblocking(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => return Ok(HopAnswer::Reached),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(HopAnswer::Silent);
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            continue;
        }
        if let Some(answer) = icmp_answer(fd)? {
            return Ok(answer);
        }
        return match socket.take_error()? {
            // Connected, or refused by the destination itself: the SYN got there.
            None => Ok(HopAnswer::Reached),
            Some(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(HopAnswer::Reached),
            Some(e) => Err(e),
        };
    }
}

/// The ICMP error on the socket's error queue, with the router that sent it.
fn icmp_answer(fd: libc::c_int) -> io::Result<Option<HopAnswer>> {
    let mut data = [0u8; 64];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one; its buffers are set below.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 64]>() as _;
    // SAFETY: msg points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::IPPROTO_IP && header.cmsg_type == libc::IP_RECVERR {
                let err_ptr = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                let err = std::ptr::read_unaligned(err_ptr);
                if err.ee_origin != libc::SO_EE_ORIGIN_ICMP {
                    return Ok(None);
                }
                // The offender's address follows the extended error.
                let offender = std::ptr::read_unaligned(err_ptr.add(1) as *const libc::sockaddr_in);
                let from = IpAddr::V4(Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr)));
                return Ok(Some(match err.ee_type {
                    ICMP_TIME_EXCEEDED => HopAnswer::TimeExceeded { from },
                    ICMP_DEST_UNREACHABLE => HopAnswer::Unreachable { from },
                    _ => return Ok(None),
                }));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(None)
}
