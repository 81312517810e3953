//! The boot flow: arch → start_info → console → memory → events → grants → app.

use core::fmt::Write;

use arch::abi::start_info;
use arch::hypercall;
use spin::Once;

use crate::cmdline::Args;
use crate::shutdown::{self, ShutdownReason};
use crate::start_info::BootInfo;

unsafe extern "C" {
    /// End of the image (`linker.ld`).
    static __image_end: u8;
}

unsafe extern "Rust" {
    /// The app's `main`, wrapped by [`crate::main!`].
    fn __kernel_app_main(args: Args) -> ShutdownReason;
}

static BOOT_INFO: Once<BootInfo> = Once::new();

/// What Xen told us at boot.
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("boot info read before boot")
}

/// Called by `_start` (arch) on the boot stack with the start_info pointer and the
/// TSC read by the guest's first instruction.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(si: *const start_info, boot_tsc: u64) -> ! {
    if !hypercall::page_is_initialised() {
        // No hypercall works, not even shutdown; with no trap table installed yet,
        // this fault makes Xen crash the domain.
        // SAFETY: ud2 only raises #UD.
        unsafe { core::arch::asm!("ud2", options(noreturn)) };
    }
    if arch::traps::init(shutdown::fatal_exception, crate::events::upcall).is_err() {
        hypercall::shutdown(arch::abi::SHUTDOWN_CRASH);
    }
    crate::time::set_boot_tsc(boot_tsc);
    // Kept for suspend, which writes the page (read-write, like all the bootstrap region).
    let si_page = si.cast_mut();
    // SAFETY: Xen passes a valid start_info page in the bootstrap region.
    let si = unsafe { &*si };
    // SAFETY: as above: mfn_list and pt_base are Xen's live p2m list and L4.
    unsafe { arch::mm::init(si) };
    let image_end = core::ptr::addr_of!(__image_end) as u64;
    let boot = match BootInfo::parse(si, image_end, arch::mm::mfn_to_pfn) {
        Ok(boot) => BOOT_INFO.call_once(|| boot),
        Err(err) => {
            // Without a valid start_info there is no console ring, and no heap to
            // format into. Xen's own console still works for dom0 (a domU's writes
            // there are dropped by a non-debug Xen, but the crash is still reported).
            let mut line = StackLine::new();
            let _ = writeln!(line, "boot failed: {err}");
            let _ = hypercall::console_write(line.as_bytes());
            hypercall::shutdown(arch::abi::SHUTDOWN_CRASH);
        }
    };
    crate::console::init(boot);
    // SAFETY: the frame comes from start_info; not mapped yet.
    if let Err(err) = unsafe { arch::mm::map_shared_info(boot.shared_info_mfn) } {
        boot_failed("mapping shared_info", err);
    }
    crate::suspend::init(si_page, boot.shared_info_mfn);
    if let Err(err) = crate::mem::init(boot) {
        boot_failed("memory", err);
    }
    if let Err(err) = crate::events::init() {
        boot_failed("event channels", err);
    }
    if let Err(err) = crate::grant::init() {
        boot_failed("grant table", err);
    }
    // SAFETY: start_info is a whole page of the bootstrap region, mapped for good.
    let start_info_page = unsafe { &*core::ptr::from_ref(si).cast::<[u8; 4096]>() };
    if let Err(err) = crate::noxs::init(start_info_page) {
        boot_failed("NoXS device block", err);
    }
    // A restarted back end offers the devices again through this page (NoXS v1.1).
    crate::noxs::listen_for_reoffers(arch::mm::pfn_of_va(x86_64::VirtAddr::from_ptr(si)));
    // With NoXS there may be no xenstored at all: leave Xenstore alone.
    if crate::noxs::block().is_none()
        && let Some((mfn, evtchn)) = boot.xenstore
        && let Err(err) = crate::xenstore::init(mfn, evtchn)
    {
        boot_failed("xenstore", err);
    }
    report(boot);
    let args = match Args::parse(boot.cmdline()) {
        Ok(args) => args,
        Err(err) => boot_failed("command line", err),
    };
    // SAFETY: the app crate defines `__kernel_app_main` through `kernel::main!`.
    let reason = unsafe { __kernel_app_main(args) };
    shutdown::exit(reason)
}

/// One line: what the toolstack gave this domain — its memory and, with NoXS, its
/// device table — as the guest sees it (tests compare it with what was asked), and
/// when `main` is called.
fn report(boot: &BootInfo) {
    let devices = crate::noxs::block().map(|block| {
        block
            .entries
            .iter()
            .map(|entry| {
                let kind = match entry.kind {
                    xenproto::noxs::Kind::Sysctl => "sysctl",
                    xenproto::noxs::Kind::Console => "console",
                    xenproto::noxs::Kind::Vif => "vif",
                    xenproto::noxs::Kind::Vbd => "vbd",
                };
                alloc::format!("{kind} {}", entry.devid)
            })
            .collect::<alloc::vec::Vec<_>>()
            .join(", ")
    });
    // The time to `main` is the guest's share of a boot (the boot bench reads it).
    let boot_time = crate::time::since_boot();
    crate::println!(
        "kernel: {} KiB of memory; devices: {}; main {}.{:03} ms after boot",
        boot.nr_pages * 4,
        devices.as_deref().unwrap_or("through Xenstore, if any"),
        boot_time.as_millis(),
        boot_time.subsec_micros() % 1000
    );
}

/// A line formatted on the stack (truncated at its capacity).
struct StackLine {
    buf: [u8; 128],
    len: usize,
}

impl StackLine {
    fn new() -> Self {
        Self {
            buf: [0; 128],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for StackLine {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn boot_failed(stage: &str, err: impl core::fmt::Display) -> ! {
    crate::println!("boot failed: {stage}: {err}");
    shutdown::exit(ShutdownReason::Crash)
}
