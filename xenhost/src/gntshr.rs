//! Granting our own pages to a domain through libxengnttab's `xengntshr_*`
//! (`/dev/xen/gntalloc`). A [`SharedPage`] is unshared on drop; the kernel ends the
//! grant once the other domain has unmapped it.
//!
//! The handle is shared by its pages through `Rc`: a back end is one thread, and a page
//! must outlive nothing but its handle.

use std::cell::Cell;
use std::ptr::NonNull;
use std::rc::Rc;

use xenffi as ffi;

use crate::error::{Error, Result};

/// An open `/dev/xen/gntalloc`.
#[derive(Debug)]
pub struct Gntshr {
    handle: NonNull<ffi::xengntshr_handle>,
    /// Pages shared through this handle and not yet unshared: what it holds of
    /// gntalloc's limit, which counts every user of the device together.
    shared: Cell<usize>,
}

impl Gntshr {
    pub fn open() -> Result<Rc<Self>> {
        ffi::load()?;
        // SAFETY: a NULL logger selects the default; no flags.
        let handle = unsafe { ffi::xengntshr_open(std::ptr::null_mut(), 0) };
        NonNull::new(handle)
            .map(|handle| {
                Rc::new(Self {
                    handle,
                    shared: Cell::new(0),
                })
            })
            .ok_or_else(|| Error::last("xengntshr_open"))
    }

    /// How many pages this handle shares now.
    pub fn shared(&self) -> usize {
        self.shared.get()
    }

    /// A fresh zeroed page of ours, granted to `domid` (read-write if `writable`).
    pub fn share(self: &Rc<Self>, domid: u32, writable: bool) -> Result<SharedPage> {
        let mut gref = 0u32;
        // SAFETY: the handle is open; `gref` receives one reference.
        let addr = unsafe {
            ffi::xengntshr_share_pages(
                self.handle.as_ptr(),
                domid,
                1,
                &raw mut gref,
                i32::from(writable),
            )
        };
        let addr =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| Error::last("xengntshr_share_pages"))?;
        self.shared.set(self.shared.get() + 1);
        Ok(SharedPage {
            gntshr: Rc::clone(self),
            addr,
            gref,
        })
    }
}

impl Drop for Gntshr {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once (every SharedPage holds an Rc).
        unsafe { ffi::xengntshr_close(self.handle.as_ptr()) };
    }
}

/// One page of ours granted to another domain.
#[derive(Debug)]
pub struct SharedPage {
    gntshr: Rc<Gntshr>,
    addr: NonNull<u8>,
    gref: u32,
}

impl SharedPage {
    /// The grant reference the other domain maps.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// The page (4096 bytes, page aligned). The other domain may write it at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: the page came from this handle and is unshared once, here.
        let result = unsafe {
            ffi::xengntshr_unshare(self.gntshr.handle.as_ptr(), self.addr.as_ptr().cast(), 1)
        };
        if result < 0 {
            log::error!(
                "unsharing grant {}: {}",
                self.gref,
                Error::last("xengntshr_unshare")
            );
        } else {
            let shared = &self.gntshr.shared;
            shared.set(shared.get().saturating_sub(1));
        }
    }
}
