//! Hypercalls through the hypercall page.
//!
//! Xen fills [`HYPERCALL_PAGE`] at load time (the `HYPERCALL_PAGE` ELF note names it):
//! entry `nr` is 32 bytes at offset `32 * nr`. Arguments go in rdi, rsi, rdx, r10 and r8,
//! the result comes back in rax, and rcx and r11 are clobbered. Debug builds of Xen also
//! scribble over argument registers a call does not use, so every argument register is
//! declared clobbered.
//!
//! The page is filled with `ret` (0xc3) in the image, as XTF does: until Xen has written
//! it, a hypercall returns at once instead of running zeros, and [`page_is_initialised`]
//! tells the two apart.
//!
//! The typed wrappers return `Err(errno)` (a positive Xen errno) for a negative result.

use core::arch::{asm, global_asm};

use crate::abi;

global_asm!(
    ".pushsection .text.hypercall_page, \"ax\"",
    ".balign 4096",
    ".global HYPERCALL_PAGE",
    "HYPERCALL_PAGE:",
    ".fill 4096, 1, 0xc3",
    ".popsection",
);

unsafe extern "C" {
    /// The hypercall page: written by Xen, executed by us.
    pub static HYPERCALL_PAGE: [u8; 4096];
}

pub use crate::errno::Errno;

/// The result type of hypercall wrappers.
pub type Result<T> = core::result::Result<T, Errno>;

fn check(ret: i64) -> Result<u64> {
    if ret < 0 {
        // Xen errnos are small; anything else is not an errno at all.
        Err(Errno(i32::try_from(-ret).unwrap_or(i32::MAX)))
    } else {
        Ok(ret.cast_unsigned())
    }
}

/// True once Xen has written the hypercall page (its first byte is no longer the
/// `ret` poison).
pub fn page_is_initialised() -> bool {
    // SAFETY: the page is part of our image and always mapped; a volatile read keeps
    // the compiler from assuming the link-time contents.
    let first = unsafe {
        let page = core::ptr::NonNull::new_unchecked((&raw const HYPERCALL_PAGE).cast_mut());
        volatile::VolatilePtr::new_read_only(page.cast::<u8>()).read()
    };
    first != 0xc3
}

/// Issue hypercall `nr` with five arguments (unused ones are ignored by Xen).
///
/// # Safety
/// The arguments must be valid for the hypercall: pointers must reference live memory
/// of the layout Xen expects for `nr`, and the operation must not break the invariants
/// the rest of the kernel relies on (page tables, event masks, ...).
pub unsafe fn hypercall(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    assert!(nr < 128, "hypercall {nr} is outside the hypercall page");
    // SAFETY: with `nr` < 128 the entry lies inside the hypercall page.
    let entry = unsafe {
        core::ptr::addr_of!(HYPERCALL_PAGE)
            .cast::<u8>()
            .add(32 * nr as usize)
    };
    let ret: i64;
    // SAFETY: the caller guarantees the arguments; the asm follows the hypercall ABI
    // documented above and may read and write memory (no `nomem`).
    unsafe {
        asm!(
            "call {entry}",
            entry = in(reg) entry,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// A value that travels in a hypercall argument register.
trait Arg {
    fn into_reg(self) -> u64;
}

macro_rules! widening_arg {
    ($($t:ty),*) => {
        $(impl Arg for $t {
            fn into_reg(self) -> u64 {
                u64::from(self)
            }
        })*
    };
}
widening_arg!(u16, u32, u64);

impl Arg for usize {
    fn into_reg(self) -> u64 {
        self as u64
    }
}

impl<T> Arg for *const T {
    fn into_reg(self) -> u64 {
        self as u64
    }
}

impl<T> Arg for *mut T {
    fn into_reg(self) -> u64 {
        self as u64
    }
}

/// `call!(nr, args…)`: a hypercall with up to five arguments of [`Arg`] types.
macro_rules! call {
    ($nr:expr $(, $arg:expr)* $(,)?) => {{
        let mut regs = [0u64; 5];
        let args: &[u64] = &[$(Arg::into_reg($arg)),*];
        regs[..args.len()].copy_from_slice(args);
        hypercall($nr, regs[0], regs[1], regs[2], regs[3], regs[4])
    }};
}

/// `set_trap_table`: install the exception handlers. The table ends with a zeroed entry.
///
/// # Safety
/// Every entry's address must be a valid exception entry point.
pub unsafe fn set_trap_table(table: &[abi::trap_info]) -> Result<()> {
    assert!(
        table.last().is_some_and(|last| last.address == 0),
        "trap table must end with a zero entry"
    );
    // SAFETY: the table outlives the call; Xen copies it.
    check(unsafe { call!(xen_sys::__HYPERVISOR_set_trap_table, table.as_ptr()) }).map(drop)
}

/// `set_callbacks`: the event upcall and the failsafe callback (no syscall callback:
/// we have no user mode).
///
/// # Safety
/// Both addresses must be valid callback entry points.
pub unsafe fn set_callbacks(event: u64, failsafe: u64) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { call!(xen_sys::__HYPERVISOR_set_callbacks, event, failsafe, 0u64) }).map(drop)
}

/// `mmu_update`: apply page-table updates; returns how many were done.
///
/// # Safety
/// The updates must keep every mapping the kernel relies on intact.
pub unsafe fn mmu_update(updates: &[abi::mmu_update]) -> Result<usize> {
    let mut done: u32 = 0;
    // SAFETY: `updates` and `done` outlive the call; the caller vouches for the content.
    let ret = unsafe {
        call!(
            xen_sys::__HYPERVISOR_mmu_update,
            updates.as_ptr(),
            updates.len(),
            &raw mut done,
            abi::DOMID_SELF
        )
    };
    check(ret).map(|_| done as usize)
}

/// `update_va_mapping`: set the PTE that maps `va` and flush its TLB entry.
///
/// # Safety
/// As for [`mmu_update`].
pub unsafe fn update_va_mapping(va: u64, pte: u64) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe {
        call!(
            xen_sys::__HYPERVISOR_update_va_mapping,
            va,
            pte,
            abi::UVMF_INVLPG
        )
    })
    .map(drop)
}

/// `sched_op` with a pointer argument.
///
/// # Safety
/// `arg` must point to the struct `cmd` expects.
pub unsafe fn sched_op<T>(cmd: u32, arg: *const T) -> Result<u64> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { call!(xen_sys::__HYPERVISOR_sched_op, cmd, arg) })
}

/// `event_channel_op`: `arg` is read and written by Xen.
///
/// # Safety
/// `T` must be the struct `cmd` expects.
pub unsafe fn event_channel_op<T>(cmd: u32, arg: &mut T) -> Result<()> {
    // SAFETY: `arg` is a live, exclusive reference of the type the caller vouches for.
    check(unsafe { call!(xen_sys::__HYPERVISOR_event_channel_op, cmd, arg as *mut T) }).map(drop)
}

/// `grant_table_op` on `count` consecutive structs at `args`.
///
/// # Safety
/// `args` must point to `count` structs of the type `cmd` expects.
pub unsafe fn grant_table_op<T>(cmd: u32, args: *mut T, count: u32) -> Result<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { call!(xen_sys::__HYPERVISOR_grant_table_op, cmd, args, count) }).map(drop)
}

/// `set_timer_op`: one-shot timer at absolute system time `deadline_ns` (0 cancels).
pub fn set_timer_op(deadline_ns: u64) -> Result<()> {
    // SAFETY: takes no pointer; a timer event is harmless.
    check(unsafe { call!(xen_sys::__HYPERVISOR_set_timer_op, deadline_ns) }).map(drop)
}

/// `console_io(CONSOLEIO_write)`: only honoured for dom0 by a non-debug Xen.
pub fn console_write(bytes: &[u8]) -> Result<()> {
    // SAFETY: Xen only reads `bytes.len()` bytes at the pointer.
    let ret = unsafe {
        call!(
            xen_sys::__HYPERVISOR_console_io,
            abi::CONSOLEIO_WRITE,
            bytes.len(),
            bytes.as_ptr()
        )
    };
    check(ret).map(drop)
}

/// `xen_version(XENVER_version)`: `(major, minor)`.
pub fn xen_version() -> (u16, u16) {
    // SAFETY: XENVER_version takes no buffer.
    let ret = unsafe { call!(xen_sys::__HYPERVISOR_xen_version, abi::XENVER_VERSION, 0u64) };
    let version = ret as u32;
    ((version >> 16) as u16, version as u16)
}

/// `xen_version(XENVER_extraversion)`: e.g. `.5` (NUL padded).
pub fn xen_extraversion() -> abi::XenExtraVersion {
    let mut extra = abi::XenExtraVersion::default();
    // SAFETY: Xen writes at most 16 bytes into `extra`.
    let _ = unsafe {
        call!(
            xen_sys::__HYPERVISOR_xen_version,
            abi::XENVER_EXTRAVERSION,
            &raw mut extra
        )
    };
    extra
}

/// `EVTCHNOP_send`: notify the other end of `port`.
pub fn evtchn_send(port: u32) -> Result<()> {
    let mut send = abi::evtchn_send { port };
    // SAFETY: `send` is the struct EVTCHNOP_send expects.
    unsafe { event_channel_op(abi::EVTCHNOP_send, &mut send) }
}

/// `SCHEDOP_shutdown`: end this domain with `reason` (`SHUTDOWN_*`).
pub fn shutdown(reason: u32) -> ! {
    let arg = abi::sched_shutdown { reason };
    loop {
        // SAFETY: `arg` is the struct SCHEDOP_shutdown expects.
        let _ = unsafe { sched_op(abi::SCHEDOP_shutdown, &raw const arg) };
        // Shutdown does not return for a domU. As dom0 with `noreboot` Xen may halt
        // only later: yield until it does.
        // SAFETY: SCHEDOP_yield takes no argument.
        let _ = unsafe { sched_op::<()>(abi::SCHEDOP_yield, core::ptr::null()) };
    }
}

/// How a suspend ended (`sched.h`: `SCHEDOP_shutdown` with `SHUTDOWN_suspend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// In the same domain: the suspend was cancelled, or the domain was only
    /// checkpointed (`xl save -c`, `chaos save --keep-running`). Ports, grants and back
    /// ends are as they were.
    SameDomain,
    /// In a new domain (restore, migration): nothing bound survived.
    NewDomain,
}

/// `SCHEDOP_shutdown(SHUTDOWN_suspend)`: let the toolstack save this domain. Xen wants
/// the machine frame of start_info in the third argument (the "suspend record": libxc
/// saves it as a pfn and hands the restored domain's start_info back in the same
/// register). Returns when the domain runs again.
///
/// # Safety
/// Nothing libxc cannot save may be mapped (shared_info, grant-table frames, other
/// domains' grants), and start_info's store and console frames must be pfns.
pub unsafe fn suspend(start_info_mfn: u64) -> Result<Resumed> {
    let arg = abi::sched_shutdown {
        reason: abi::SHUTDOWN_SUSPEND,
    };
    // SAFETY: `arg` is the struct SCHEDOP_shutdown expects; the caller made the
    // domain's memory saveable.
    let ret = check(unsafe {
        call!(
            xen_sys::__HYPERVISOR_sched_op,
            abi::SCHEDOP_shutdown,
            &raw const arg,
            start_info_mfn
        )
    })?;
    Ok(if ret == 0 {
        Resumed::NewDomain
    } else {
        Resumed::SameDomain
    })
}

/// `SCHEDOP_block`: sleep until an event is pending. Xen unmasks event delivery
/// atomically with the check, so an event that arrives just before cannot be lost.
pub fn block() {
    // SAFETY: SCHEDOP_block takes no argument.
    let _ = unsafe { sched_op::<()>(abi::SCHEDOP_block, core::ptr::null()) };
}

/// `SCHEDOP_poll`: wait until one of `ports` is pending or system time passes
/// `timeout_ns` (0: no timeout). Works with event delivery masked.
pub fn poll(ports: &[u32], timeout_ns: u64) -> Result<()> {
    let arg = abi::sched_poll {
        ports: ports.as_ptr().cast_mut(),
        nr_ports: ports.len() as u32,
        timeout: timeout_ns,
    };
    // SAFETY: `arg` and the ports it points to outlive the call; Xen only reads them.
    unsafe { sched_op(abi::SCHEDOP_poll, &raw const arg) }.map(drop)
}

/// `vcpu_op(VCPUOP_stop_periodic_timer)`: a PV vCPU starts with a 100 Hz periodic
/// timer; without it an idle guest wakes only for its own deadlines.
pub fn stop_periodic_timer(vcpu: u32) -> Result<()> {
    const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
    // SAFETY: this command takes no argument.
    check(unsafe {
        call!(
            xen_sys::__HYPERVISOR_vcpu_op,
            VCPUOP_STOP_PERIODIC_TIMER,
            vcpu,
            0u64
        )
    })
    .map(drop)
}
