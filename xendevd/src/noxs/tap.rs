//! A vif's host end: a tap device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`) named `vifD.N`,
//! a port of a bridge and up. A served guest's tap is persistent ([`Tap::keep`],
//! `TUNSETPERSIST`) so that it outlives an xendevd that dies or stops, bridge port and
//! all, for the next one to take back (`Tap::create` again by name); a shell's is not,
//! as nothing would take it back. Dropping a [`Tap`] removes the device.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;

use crate::bridge::ifreq;

/// `linux/if_tun.h`, `linux/if_arp.h` and `linux/sockios.h`; `struct ifreq` is the
/// bridge code's.
mod sys {
    use std::ffi::c_short;

    pub use crate::bridge::sys::{IfReq, SockAddr};

    pub const IFF_TAP: c_short = 0x0002;
    pub const IFF_NO_PI: c_short = 0x1000;
    /// `ARPHRD_ETHER`.
    pub const ARPHRD_ETHER: u16 = 1;

    // TUNSETIFF = _IOW('T', 202, int).
    nix::ioctl_write_ptr_bad!(
        tun_set_iff,
        nix::request_code_write!(b'T', 202, size_of::<std::ffi::c_int>()),
        IfReq
    );
    // TUNSETPERSIST = _IOW('T', 203, int), its argument the value itself.
    nix::ioctl_write_int_bad!(
        tun_set_persist,
        nix::request_code_write!(b'T', 203, size_of::<std::ffi::c_int>())
    );
    // SIOCSIFHWADDR (linux/sockios.h).
    nix::ioctl_write_ptr_bad!(set_hwaddr, 0x8924, IfReq);
}

/// The tap's own MAC: `fe:ff:ff:ff:ff:ff`, as Xen's vif scripts give netback's vifs, so
/// the bridge never takes it as its address.
const HOST_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// A tap device, removed when dropped (not when the process ends: see the module doc).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    kept: bool,
}

impl Tap {
    /// Create tap `name` (non-blocking), or attach to it if it exists, left by an
    /// xendevd before this one.
    pub fn create(name: &str) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = ifreq(name);
        req.data.flags = sys::IFF_TAP | sys::IFF_NO_PI;
        // SAFETY: `file` is an open tun fd; `req` is a valid ifreq alive across the call.
        unsafe { sys::tun_set_iff(file.as_raw_fd(), &raw const req) }.map_err(io::Error::from)?;
        let tap = Self {
            file,
            name: name.to_owned(),
            kept: false,
        };
        tap.set_host_mac()?;
        Ok(tap)
    }

    /// Keep the device when the process ends (not when the `Tap` is dropped).
    pub fn keep(&mut self) -> io::Result<()> {
        // SAFETY: `self.file` is an open tun fd attached to a device.
        unsafe { sys::tun_set_persist(self.file.as_raw_fd(), 1) }.map_err(io::Error::from)?;
        self.kept = true;
        Ok(())
    }

    /// Remove tap `name`, left persistent by an xendevd before this one, if it exists.
    pub fn remove_left(name: &str) -> io::Result<bool> {
        if !crate::bridge::exists(name) {
            return Ok(false);
        }
        let mut tap = Self::create(name)?;
        tap.kept = true;
        drop(tap);
        Ok(true)
    }

    fn set_host_mac(&self) -> io::Result<()> {
        let socket = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let mut req = ifreq(&self.name);
        let mut data = [0u8; 14];
        data[..6].copy_from_slice(&HOST_MAC);
        req.data.hwaddr = sys::SockAddr {
            family: sys::ARPHRD_ETHER,
            data,
        };
        // SAFETY: `socket` is open; `req` is a valid ifreq alive across the call.
        unsafe { sys::set_hwaddr(socket.as_raw_fd(), &raw const req) }.map_err(io::Error::from)?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next frame into `buf`, if one is waiting.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(err) if err.raw_os_error() == Some(Errno::EIO as i32) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Send a frame out of the tap (to the bridge); a full queue drops it.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.file.write(frame) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if !self.kept {
            return;
        }
        // SAFETY: `self.file` is an open tun fd attached to a device. Not persistent any
        // more, the device goes with the fd.
        if let Err(err) = unsafe { sys::tun_set_persist(self.file.as_raw_fd(), 0) } {
            log::warn!("tap {}: TUNSETPERSIST 0: {err}: it stays", self.name);
        }
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi() {
        assert_eq!(size_of::<sys::IfReq>(), 40);
        assert_eq!(
            nix::request_code_write!(b'T', 202, size_of::<std::ffi::c_int>()),
            0x4004_54ca
        );
        assert_eq!(
            nix::request_code_write!(b'T', 203, size_of::<std::ffi::c_int>()),
            0x4004_54cb
        );
        assert_eq!(size_of::<sys::SockAddr>(), 16);
    }
}
