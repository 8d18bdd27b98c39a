//! TUN devices created directly inside a namespace, read and written by the lab process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

use super::netns::{self, NetnsError};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A TUN device: IPv4 packets in and out, no packet-info header.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Tun {
    /// Creates device `ifname` inside namespace `netns`. It exists while this value lives.
    pub fn create_in(netns_name: &str, ifname: &str) -> Result<Tun, TunError> {
        if ifname.len() >= libc::IFNAMSIZ {
            return Err(TunError::Name(ifname.to_string()));
        }
        let ifname_owned = ifname.to_string();
        netns::run_in(netns_name, move || Self::create_here(&ifname_owned))?
    }

    fn create_here(ifname: &str) -> Result<Tun, TunError> {
        let create_error = |source| TunError::Create {
            name: ifname.to_string(),
            source,
        };
        // SAFETY: plain open(2) of a device node; the result is checked.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(create_error(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh, valid descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        request.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: TUNSETIFF reads an ifreq; ours is correctly sized and lives across the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut request) } < 0 {
            return Err(create_error(io::Error::last_os_error()));
        }
        Ok(Tun {
            fd,
            name: ifname.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet. The kernel takes it at once or refuses it (the packet is then lost).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Registers the device with the tokio reactor of the current runtime.
    pub fn into_async(self) -> io::Result<AsyncFd<Tun>> {
        // SAFETY: `Tun` owns its descriptor, never replaces it, and closes it only when dropped,
        // which for the registered value happens when the AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
    }
}

/// A TUN device that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("interface name `{0}` is too long")]
    Name(String),
    #[error("cannot create TUN device {name}: {source} (needs root and /dev/net/tun)")]
    Create { name: String, source: io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}
