//! Event channels through libxenevtchn (`/dev/xen/evtchn`): one handle (one descriptor
//! in a back end's poll loop) for every port; a [`Port`] unbinds itself on drop.
//!
//! The handle is shared by its ports through `Rc`: a back end is one thread, and a port
//! must outlive nothing but its handle.

use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;

use xenffi as ffi;

use crate::error::{Error, Result};

/// An open `/dev/xen/evtchn`.
#[derive(Debug)]
pub struct Evtchn {
    handle: NonNull<ffi::xenevtchn_handle>,
    fd: RawFd,
}

impl Evtchn {
    /// Open the device; its descriptor is made non-blocking, so [`Evtchn::pending`]
    /// never waits.
    pub fn open() -> Result<Rc<Self>> {
        ffi::load()?;
        // SAFETY: a NULL logger selects libxentoollog's default; no flags.
        let handle = unsafe { ffi::xenevtchn_open(std::ptr::null_mut(), 0) };
        let handle = NonNull::new(handle).ok_or_else(|| Error::last("xenevtchn_open"))?;
        // SAFETY: the handle is open.
        let fd = unsafe { ffi::xenevtchn_fd(handle.as_ptr()) };
        // From here on the handle closes on drop, should the rest fail.
        let evtchn = Self { handle, fd };
        // SAFETY: `fd` is the handle's open descriptor; F_GETFL takes no argument.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above; F_SETFL takes the flags as an int.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::last("fcntl(O_NONBLOCK) on /dev/xen/evtchn"));
        }
        Ok(Rc::new(evtchn))
    }

    /// The descriptor to poll for pending ports.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to the handle, open until `self` drops.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    fn port(self: &Rc<Self>, call: &'static str, result: i32) -> Result<Port> {
        match u32::try_from(result) {
            Ok(local) => Ok(Port {
                evtchn: Rc::clone(self),
                local,
            }),
            Err(_) => Err(Error::last(call)),
        }
    }

    /// A new port of ours that domain `domid` may bind (its end named by our port).
    pub fn bind_unbound(self: &Rc<Self>, domid: u32) -> Result<Port> {
        // SAFETY: the handle is open.
        let result = unsafe { ffi::xenevtchn_bind_unbound_port(self.handle.as_ptr(), domid) };
        self.port("xenevtchn_bind_unbound_port", result)
    }

    /// Bind to `remote`, a port domain `domid` allocated unbound for us.
    pub fn bind_interdomain(self: &Rc<Self>, domid: u32, remote: u32) -> Result<Port> {
        // SAFETY: the handle is open.
        let result =
            unsafe { ffi::xenevtchn_bind_interdomain(self.handle.as_ptr(), domid, remote) };
        self.port("xenevtchn_bind_interdomain", result)
    }

    /// The next port that fired, if any (the port stays masked until
    /// [`Evtchn::unmask`]).
    pub fn pending(&self) -> Result<Option<u32>> {
        // SAFETY: the handle is open; its descriptor is non-blocking.
        let result = unsafe { ffi::xenevtchn_pending(self.handle.as_ptr()) };
        match u32::try_from(result) {
            Ok(port) => Ok(Some(port)),
            Err(_) => {
                let err = Error::last("xenevtchn_pending");
                if err.errno() == Some(libc::EAGAIN) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Let `port` fire again.
    pub fn unmask(&self, port: u32) -> Result<()> {
        // SAFETY: the handle is open; an unknown port is an error, not UB.
        if unsafe { ffi::xenevtchn_unmask(self.handle.as_ptr(), port) } < 0 {
            return Err(Error::last("xenevtchn_unmask"));
        }
        Ok(())
    }

    fn notify(&self, port: u32) -> Result<()> {
        // SAFETY: as for `unmask`.
        if unsafe { ffi::xenevtchn_notify(self.handle.as_ptr(), port) } < 0 {
            return Err(Error::last("xenevtchn_notify"));
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
    pub fn notify(&self) -> Result<()> {
        self.evtchn.notify(self.local)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the handle is open (we hold an Rc) and the port is ours, unbound once.
        unsafe { ffi::xenevtchn_unbind(self.evtchn.handle.as_ptr(), self.local) };
    }
}
