//! The kernel's uevent socket: `NETLINK_KOBJECT_UEVENT`, group 1 (kernel events; dom0
//! runs no udevd, and xendevd would not want udevd's re-broadcasts anyway).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recvfrom, setsockopt,
    socket, sockopt,
};

/// The kernel's uevent multicast group.
const KERNEL_GROUP: u32 = 1;

/// The receive buffer asked for: a burst of thousands of vifs coming online (a few
/// hundred bytes each) must not overflow it while xendevd is busy.
const RECEIVE_BUFFER: usize = 8 << 20;

/// A uevent datagram is at most `UEVENT_BUFFER_SIZE` (2048) bytes of fields plus the
/// header; this is ample.
pub const DATAGRAM_MAX: usize = 8192;

/// What a receive gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A datagram of this many bytes from the kernel.
    Kernel(usize),
    /// A datagram from a process (port ID ≠ 0): not to be trusted, dropped.
    FromProcess(u32),
    /// Nothing waiting.
    Nothing,
    /// The socket's buffer overflowed: events were lost (`ENOBUFS`).
    Overflow,
}

/// The open uevent socket (non-blocking).
#[derive(Debug)]
pub struct UeventSocket {
    fd: OwnedFd,
}

impl UeventSocket {
    pub fn open() -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Root may go past rmem_max; anyone else gets what rmem_max allows.
        if setsockopt(&fd, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))?;
        Ok(Self { fd })
    }

    /// Receive one datagram into `buf`.
    pub fn receive(&self, buf: &mut [u8]) -> Result<Received, Errno> {
        match recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), buf) {
            Ok((len, sender)) => match sender.map(|addr| addr.pid()) {
                Some(0) => Ok(Received::Kernel(len)),
                Some(pid) => Ok(Received::FromProcess(pid)),
                None => Ok(Received::FromProcess(u32::MAX)),
            },
            Err(Errno::EAGAIN) => Ok(Received::Nothing),
            Err(Errno::ENOBUFS) => Ok(Received::Overflow),
            Err(Errno::EINTR) => Ok(Received::Nothing),
            Err(errno) => Err(errno),
        }
    }
}

impl AsFd for UeventSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
