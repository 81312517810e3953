//! libxenguest's save, restore and resume of a PV domain (`xc_domain_save`,
//! `xc_domain_restore`, `xc_domain_resume`, `tools/include/xenguest.h`), as safe calls
//! on an [`Xc`] handle.
//!
//! libxc writes (and reads) its migration stream (v3) on a file descriptor it is given
//! and reads exactly its own stream, so a toolstack can frame it with records of its
//! own. Facts and pitfalls: `shared/reference/save-restore.md` §1 and §4.
//!
//! The callbacks: saving calls `suspend` unconditionally, and it must return non-zero
//! for success (0 is failure, the reverse of errno style) once Xen shows the domain
//! shut down for suspend, else libxc gives up ("Domain has not been suspended").
//! Restoring dereferences its callback struct without a NULL check, so a zeroed one is
//! passed for a plain stream.

use std::ffi::{c_int, c_ulong, c_void};
use std::os::fd::{AsRawFd, BorrowedFd};

use xenffi as ffi;

use crate::error::{Error, Result};
use crate::xc::Xc;

/// Why a save failed: the caller's suspend step, or libxc.
#[derive(Debug)]
pub enum SaveError<E> {
    /// The suspend callback failed with this (libxc then gave up).
    Suspend(E),
    /// `xc_domain_save` failed for another reason.
    Xen(Error),
}

/// What a restore gives back: the frames of the guest's Xenstore and console rings in
/// the new domain, for `xs_introduce_domain` and the console's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub store_mfn: u64,
    pub console_mfn: u64,
}

/// The state the suspend trampoline works on: the caller's step and its error, if any.
struct Suspending<'a, E> {
    suspend: &'a mut dyn FnMut() -> std::result::Result<(), E>,
    failed: Option<E>,
}

/// `save_callbacks.suspend`: run the caller's step; 1 for success, 0 for failure
/// (libxc's convention).
///
/// # Safety
/// `data` is the `Suspending<E>` that [`Xc::domain_save`] put in the callback struct,
/// alive and not otherwise borrowed for the whole of `xc_domain_save`.
unsafe extern "C" fn suspend_trampoline<E>(data: *mut c_void) -> c_int {
    // SAFETY: the caller's contract: `data` is our exclusive `Suspending<E>`.
    let state = unsafe { &mut *data.cast::<Suspending<'_, E>>() };
    match (state.suspend)() {
        Ok(()) => 1,
        Err(err) => {
            state.failed = Some(err);
            0
        }
    }
}

impl Xc {
    /// Save domain `domid` onto `fd` (`xc_domain_save`, a plain stream). `suspend` is
    /// called once, when libxc wants the guest stopped (at once without `live`; after
    /// the pre-copy rounds with it): it must ask the guest to suspend and return only
    /// once Xen shows the domain shut down for suspend. The domain is left so (to be
    /// destroyed, or resumed with [`Xc::domain_resume`]).
    pub fn domain_save<E>(
        &self,
        fd: BorrowedFd<'_>,
        domid: u32,
        live: bool,
        suspend: &mut dyn FnMut() -> std::result::Result<(), E>,
    ) -> std::result::Result<(), SaveError<E>> {
        let mut state = Suspending {
            suspend,
            failed: None,
        };
        let mut callbacks = ffi::save_callbacks {
            suspend: Some(suspend_trampoline::<E>),
            // NULL: libxc's own policy (stop and copy under 50 dirty pages or after five
            // rounds).
            precopy_policy: None,
            postcopy: None,
            checkpoint: None,
            wait_checkpoint: None,
            switch_qemu_logdirty: None,
            data: (&raw mut state).cast(),
        };
        let flags = if live { ffi::XCFLAGS_LIVE } else { 0 };
        // SAFETY: the handle is open; `fd` is open for the call; `callbacks` and the
        // `state` its `data` points to outlive the call, which is the only user of both
        // (the trampoline's contract); a plain stream uses no `recv_fd` (-1).
        let rc = unsafe {
            ffi::xc_domain_save(
                self.raw(),
                fd.as_raw_fd(),
                domid,
                flags,
                &raw mut callbacks,
                ffi::xc_stream_type_t_XC_STREAM_PLAIN,
                -1,
            )
        };
        if rc == 0 {
            self.take_log();
            return Ok(());
        }
        let err = self.error("xc_domain_save");
        match state.failed {
            Some(failed) => Err(SaveError::Suspend(failed)),
            None => Err(SaveError::Xen(err)),
        }
    }

    /// Restore into `domid` — created, empty and paused, its vCPUs and memory limit
    /// set — the stream libxc reads from `fd` (`xc_domain_restore`, a plain stream).
    /// `store` and `console` are the guest's event channels in the new domain (bound by
    /// the Xenstore and console domains given with them); the domain stays paused.
    pub fn domain_restore(
        &self,
        fd: BorrowedFd<'_>,
        domid: u32,
        (store_port, store_domid): (u32, u32),
        (console_port, console_domid): (u32, u32),
    ) -> Result<Restored> {
        // Non-NULL and empty: libxc reads `static_data_done` from it unconditionally.
        let mut callbacks = ffi::restore_callbacks {
            static_data_done: None,
            suspend: None,
            postcopy: None,
            checkpoint: None,
            wait_checkpoint: None,
            restore_results: None,
            data: std::ptr::null_mut(),
        };
        let mut store_mfn: c_ulong = 0;
        let mut console_mfn: c_ulong = 0;
        // SAFETY: the handle is open; `fd` is open for the call; the out-parameters and
        // the callback struct outlive it; a plain stream uses no `send_back_fd` (-1).
        let rc = unsafe {
            ffi::xc_domain_restore(
                self.raw(),
                fd.as_raw_fd(),
                domid,
                store_port,
                &raw mut store_mfn,
                store_domid,
                console_port,
                &raw mut console_mfn,
                console_domid,
                ffi::xc_stream_type_t_XC_STREAM_PLAIN,
                &raw mut callbacks,
                -1,
            )
        };
        if rc != 0 {
            return Err(self.error("xc_domain_restore"));
        }
        self.take_log();
        Ok(Restored {
            store_mfn,
            console_mfn,
        })
    }

    /// Let a domain that shut down for suspend run on (`xc_domain_resume`). `fast`
    /// (cooperative): the guest's suspend hypercall returns 1 and it carries on in the
    /// same domain with its event channels, grants and back ends; this is what `xl save
    /// -c` and a failed save use.
    pub fn domain_resume(&self, domid: u32, fast: bool) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_resume(self.raw(), domid, c_int::from(fast)) };
        if rc < 0 {
            return Err(self.error("xc_domain_resume"));
        }
        self.take_log();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trampoline runs the step once and turns its outcome into libxc's 1/0,
    /// keeping the error.
    #[test]
    fn suspend_trampoline_returns_one_on_success_and_keeps_the_error() {
        let mut calls = 0;
        let mut ok = || -> std::result::Result<(), String> {
            calls += 1;
            Ok(())
        };
        let mut state = Suspending {
            suspend: &mut ok,
            failed: None,
        };
        // SAFETY: `state` is ours and alive.
        let rc = unsafe { suspend_trampoline::<String>((&raw mut state).cast()) };
        assert_eq!(rc, 1);
        assert!(state.failed.is_none());
        drop(state);
        assert_eq!(calls, 1);

        let mut failing = || -> std::result::Result<(), String> { Err("no ack".into()) };
        let mut state = Suspending {
            suspend: &mut failing,
            failed: None,
        };
        // SAFETY: as above.
        let rc = unsafe { suspend_trampoline::<String>((&raw mut state).cast()) };
        assert_eq!(rc, 0);
        assert_eq!(state.failed.as_deref(), Some("no ack"));
    }
}
