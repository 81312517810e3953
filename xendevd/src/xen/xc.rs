//! Domain states through libxenctrl (`xc_domain_getinfolist`): which domains exist, and
//! which are shutting down or dying.

use std::io;
use std::ptr::NonNull;

use xenffi as ffi;

use super::last_error;

/// What Xen says about one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u32,
    /// Being destroyed (its pages go once nobody maps them).
    pub dying: bool,
    /// Shut down (powered off, crashed, …) but not destroyed yet.
    pub shutdown: bool,
}

/// An open libxenctrl handle.
#[derive(Debug)]
pub struct Xc {
    handle: NonNull<ffi::xc_interface>,
}

impl Xc {
    pub fn open() -> io::Result<Self> {
        // SAFETY: NULL loggers select the defaults; no flags.
        let handle =
            unsafe { ffi::xc_interface_open(std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        NonNull::new(handle)
            .map(|handle| Self { handle })
            .ok_or_else(last_error)
    }

    /// Every domain Xen knows (up to 32768 domain ids), by id.
    pub fn domains(&self) -> io::Result<Vec<DomainInfo>> {
        const BATCH: usize = 256;
        let mut found = Vec::new();
        let mut next = 0u32;
        loop {
            let mut infos: Vec<ffi::xc_domaininfo_t> = Vec::with_capacity(BATCH);
            // SAFETY: the handle is open; `infos` has room for BATCH entries, of which
            // the call fills the first `n` it returns.
            let n = unsafe {
                ffi::xc_domain_getinfolist(
                    self.handle.as_ptr(),
                    next,
                    BATCH as u32,
                    infos.as_mut_ptr(),
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return Err(last_error());
            };
            // SAFETY: the call initialised the first `n` ≤ BATCH entries.
            unsafe { infos.set_len(n.min(BATCH)) };
            for info in &infos {
                found.push(DomainInfo {
                    domid: u32::from(info.domain),
                    dying: info.flags & ffi::XEN_DOMINF_dying != 0,
                    shutdown: info.flags & ffi::XEN_DOMINF_shutdown != 0,
                });
            }
            match infos.last() {
                Some(last) if n == BATCH => next = u32::from(last.domain) + 1,
                _ => return Ok(found),
            }
        }
    }
}

impl Drop for Xc {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once, here.
        unsafe { ffi::xc_interface_close(self.handle.as_ptr()) };
    }
}
