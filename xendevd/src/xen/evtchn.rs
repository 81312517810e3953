//! Event channels through `libxenevtchn` (`/dev/xen/evtchn`): one handle (one fd in the
//! daemon's poll loop) for every port; a [`Port`] unbinds itself on drop.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use xenffi as ffi;

use super::last_error;

/// An open `/dev/xen/evtchn`.
#[derive(Debug)]
pub struct Evtchn {
    handle: NonNull<ffi::xenevtchn_handle>,
    fd: RawFd,
}

impl Evtchn {
    /// Open the device; its fd is made non-blocking, so [`Evtchn::pending`] never waits.
    pub fn open() -> io::Result<Rc<Self>> {
        // SAFETY: a NULL logger selects libxentoollog's default; no flags.
        let handle = unsafe { ffi::xenevtchn_open(std::ptr::null_mut(), 0) };
        let handle = NonNull::new(handle).ok_or_else(last_error)?;
        // SAFETY: the handle is open.
        let fd = unsafe { ffi::xenevtchn_fd(handle.as_ptr()) };
        let evtchn = Self { handle, fd };
        let borrowed = evtchn.fd();
        let flags = fcntl(borrowed, FcntlArg::F_GETFL)?;
        fcntl(
            borrowed,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )?;
        Ok(Rc::new(evtchn))
    }

    /// The fd to poll for pending ports.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the handle, open until `self` drops.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    fn port(self: &Rc<Self>, result: ffi::xenevtchn_port_or_error_t) -> io::Result<Port> {
        match u32::try_from(result) {
            Ok(local) => Ok(Port {
                evtchn: Rc::clone(self),
                local,
            }),
            Err(_) => Err(last_error()),
        }
    }

    /// A new port of ours that domain `domid` may bind (its end named by our port).
    pub fn bind_unbound(self: &Rc<Self>, domid: u32) -> io::Result<Port> {
        // SAFETY: the handle is open.
        let result = unsafe { ffi::xenevtchn_bind_unbound_port(self.handle.as_ptr(), domid) };
        self.port(result)
    }

    /// Bind to `remote`, a port domain `domid` allocated unbound for us.
    pub fn bind_interdomain(self: &Rc<Self>, domid: u32, remote: u32) -> io::Result<Port> {
        // SAFETY: the handle is open.
        let result =
            unsafe { ffi::xenevtchn_bind_interdomain(self.handle.as_ptr(), domid, remote) };
        self.port(result)
    }

    /// Bind a virtual IRQ (e.g. `VIRQ_DOM_EXC`).
    pub fn bind_virq(self: &Rc<Self>, virq: u32) -> io::Result<Port> {
        // SAFETY: the handle is open.
        let result = unsafe { ffi::xenevtchn_bind_virq(self.handle.as_ptr(), virq) };
        self.port(result)
    }

    /// The next port that fired, if any (the port stays masked until
    /// [`Evtchn::unmask`]).
    pub fn pending(&self) -> io::Result<Option<u32>> {
        // SAFETY: the handle is open; its fd is non-blocking.
        let result = unsafe { ffi::xenevtchn_pending(self.handle.as_ptr()) };
        match u32::try_from(result) {
            Ok(port) => Ok(Some(port)),
            Err(_) => {
                let err = last_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Let `port` fire again.
    pub fn unmask(&self, port: u32) -> io::Result<()> {
        // SAFETY: the handle is open; an unknown port is an error, not UB.
        if unsafe { ffi::xenevtchn_unmask(self.handle.as_ptr(), port) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    fn notify(&self, port: u32) -> io::Result<()> {
        // SAFETY: as for `unmask`.
        if unsafe { ffi::xenevtchn_notify(self.handle.as_ptr(), port) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }
}

impl Drop for Evtchn {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once, here (every Port holds an Rc, so
        // none is left).
        unsafe { ffi::xenevtchn_close(self.handle.as_ptr()) };
    }
}

/// A bound local port; unbound on drop.
#[derive(Debug)]
pub struct Port {
    evtchn: Rc<Evtchn>,
    local: u32,
}

impl Port {
    /// Our end's port number.
    pub fn local(&self) -> u32 {
        self.local
    }

    /// Notify the other end.
    pub fn notify(&self) -> io::Result<()> {
        self.evtchn.notify(self.local)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the handle is open (we hold an Rc) and the port is ours, unbound once.
        unsafe { ffi::xenevtchn_unbind(self.evtchn.handle.as_ptr(), self.local) };
    }
}
