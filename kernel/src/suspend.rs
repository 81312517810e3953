//! Suspend and resume: what lets a toolstack save, restore, checkpoint and migrate
//! the domain (`xl save`, `xl migrate`, `chaos save`).
//!
//! libxc saves every page of ours while the domain is suspended, but refuses pages it
//! cannot name by pfn: so before suspending we unmap shared_info and the grant-table
//! frames (Xen's pages), and make start_info's Xenstore and console frames pfns. The
//! suspend hypercall then returns either in the same domain (cancelled, or only
//! checkpointed: everything bound is still bound) or in a new one, restored here or on
//! another host: machine frames, ports, grants and back ends are all new. The kernel
//! makes itself whole again — shared_info and the p2m fields, the grant table with
//! every grant under its old reference ([`crate::grant`]), every port
//! ([`crate::events`]), the monotonic clock ([`crate::time`]), console and Xenstore —
//! and then tells the drivers, which connect to their new back ends with the same
//! rings: Xenstore front ends through [`restored`], NoXS ones through a re-offer of
//! their new back ends ([`crate::noxs::resume`]). NoXS control pages are other domains' pages: unmapped
//! across the suspend, mapped again in the same domain, lost in a new one.

use alloc::vec::Vec;
use core::fmt;
use core::future::poll_fn;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use core::task::{Poll, Waker};

use arch::abi::start_info;
use arch::hypercall;
pub use arch::hypercall::Resumed;
use spin::Mutex;

use crate::grant::GrantError;

/// The start_info page, kept from boot: the suspend hypercall names its frame, and a
/// restore rewrites it.
static START_INFO: AtomicPtr<start_info> = AtomicPtr::new(core::ptr::null_mut());
/// shared_info's frame now (a restore gives another).
static SHARED_INFO_MFN: AtomicU64 = AtomicU64::new(0);
/// How many times the domain was restored into a new one.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static WAITERS: Mutex<Vec<Waker>> = Mutex::new(Vec::new());

/// Called once at boot.
pub(crate) fn init(si: *mut start_info, shared_info_mfn: u64) {
    START_INFO.store(si, Ordering::Relaxed);
    SHARED_INFO_MFN.store(shared_info_mfn, Ordering::Relaxed);
}

/// Why the domain could not suspend (it runs on as before).
#[derive(Debug)]
pub enum SuspendError {
    /// xenstored did not answer everything in time, or the connection broke.
    Xenstore(crate::xenstore::Error),
    Grant(GrantError),
    Map(arch::mm::MapError),
    /// Xen refused the suspend.
    Refused(arch::errno::Errno),
}

impl fmt::Display for SuspendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xenstore(err) => write!(f, "{err}"),
            Self::Grant(err) => write!(f, "grant table: {err}"),
            Self::Map(err) => write!(f, "shared_info: {err}"),
            Self::Refused(errno) => write!(f, "Xen refused the suspend: {errno}"),
        }
    }
}

/// Suspend the domain for the toolstack, and return once it runs again: in the same
/// domain, or restored in a new one (then the drivers are told, see [`restored`]).
/// Call from a task; nothing else runs until it returns.
pub async fn suspend() -> Result<Resumed, SuspendError> {
    crate::xenstore::quiesce()
        .await
        .map_err(SuspendError::Xenstore)?;
    // From here on nothing awaits: no other task runs until the domain is whole again.
    let boot = crate::boot::boot_info();
    let si_ptr = START_INFO.load(Ordering::Relaxed);
    // SAFETY: start_info stays mapped read-write for the domain's life, and only this
    // function writes it (libxc too, while we are suspended).
    let si = unsafe { &mut *si_ptr };
    let si_pfn = arch::mm::pfn_of_va(x86_64::VirtAddr::from_ptr(si_ptr));
    crate::console::flush(core::time::Duration::from_secs(1));
    crate::time::suspend();
    if let Err(err) = crate::grant::suspend() {
        // Whatever was unmapped comes back.
        let _ = crate::grant::resume(false);
        return Err(SuspendError::Grant(err));
    }
    boot.prepare_suspend(si, arch::mm::mfn_to_pfn);
    // SAFETY: no task runs, and nothing below touches shared_info until it is mapped
    // again.
    if let Err(err) = unsafe { arch::mm::unmap_shared_info() } {
        resume_here(si);
        return Err(SuspendError::Map(err));
    }
    // SAFETY: what libxc cannot save is unmapped, start_info names pfns.
    let resumed = match unsafe { hypercall::suspend(arch::mm::pfn_to_mfn(si_pfn)) } {
        Ok(resumed) => resumed,
        Err(errno) => {
            resume_here(si);
            return Err(SuspendError::Refused(errno));
        }
    };
    match resumed {
        Resumed::SameDomain => resume_here(si),
        Resumed::NewDomain => resume_in_new_domain(si),
    }
    Ok(resumed)
}

/// Go on in the same domain: undo what the suspend prepared.
fn resume_here(si: &mut start_info) {
    crate::boot::boot_info().unsuspend(si, arch::mm::pfn_to_mfn);
    let mfn = SHARED_INFO_MFN.load(Ordering::Relaxed);
    // SAFETY: the domain's own shared_info frame, unmapped by `suspend`.
    if let Err(err) = unsafe { arch::mm::map_shared_info(mfn) } {
        resume_failed("mapping shared_info again", err);
    }
    if let Err(err) = crate::grant::resume(false) {
        resume_failed("grant table", err);
    }
}

/// Go on in a new domain: everything bound is new.
fn resume_in_new_domain(si: &mut start_info) {
    let mfn = si.shared_info >> arch::mm::PAGE_SHIFT;
    // SAFETY: libxc wrote the new domain's shared_info address into start_info.
    if let Err(err) = unsafe { arch::mm::map_shared_info(mfn) } {
        resume_failed("mapping shared_info", err);
    }
    SHARED_INFO_MFN.store(mfn, Ordering::Relaxed);
    let rebound = match crate::events::resume(true) {
        Ok(count) => count,
        Err(err) => resume_failed("event channels", err),
    };
    crate::time::resume(true);
    // The console first: what fails next must be told.
    // SAFETY: only domUs suspend; theirs is the `domU` member.
    let console_port = unsafe { si.console.domU.evtchn };
    if let Err(err) = crate::console::resume(console_port) {
        resume_failed("console", err);
    }
    let (_, store_port, _) = match crate::boot::boot_info().after_restore(si, arch::mm::mfn_to_pfn)
    {
        Ok(fields) => fields,
        Err(err) => resume_failed("start_info", err),
    };
    // The re-offer port first: the back end reads it once our grants are back.
    crate::noxs::resume(true);
    if let Err(err) = crate::grant::resume(true) {
        resume_failed("grant table", err);
    }
    if let Err(err) = crate::xenstore::resume(true, store_port) {
        resume_failed("xenstore", err);
    }
    let generation = GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    log::info!(
        "suspend: restored into a new domain (restore {generation}), {rebound} event channel(s) bound again"
    );
    for waker in WAITERS.lock().drain(..) {
        waker.wake();
    }
}

fn resume_failed(stage: &str, err: impl fmt::Display) -> ! {
    crate::println!("resume failed: {stage}: {err}");
    crate::shutdown::exit(crate::shutdown::ShutdownReason::Crash)
}

/// How many times the domain was restored into a new one: 0 until the first.
pub fn restores() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Wait until the domain is restored into a new one after `seen` restores (see
/// [`restores`]); returns the new count. A driver then connects to its new back end.
pub async fn restored(seen: u64) -> u64 {
    poll_fn(|cx| {
        let now = restores();
        if now != seen {
            return Poll::Ready(now);
        }
        let mut waiters = WAITERS.lock();
        if !waiters.iter().any(|waiter| waiter.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    })
    .await
}
