//! The PV entry: Xen ELF notes, `_start`, and the boot stack.
//!
//! Xen's domain builder reads the notes, loads the image at `VIRT_BASE`, writes the
//! hypercall page, maps the bootstrap region (image, p2m list, start_info, Xenstore and
//! console pages, page tables, a small stack) and jumps to `_start` with `rsi` pointing
//! at `start_info`. `_start` reads the TSC first, so the kernel can report how long its
//! own boot took, switches to the boot stack below and calls `kernel_entry`, which the
//! kernel crate defines.

use core::arch::global_asm;

/// Usable size of the boot stack (the kernel runs on it for good).
pub const STACK_SIZE: usize = 64 * 1024;

/// The boot stack with one guard page below it, which the kernel unmaps at boot so an
/// overflow faults instead of overwriting memory.
#[repr(C, align(4096))]
#[allow(missing_debug_implementations, reason = "64 KiB of stack bytes")]
pub struct BootStack(pub [u8; crate::mm::PAGE_SIZE + STACK_SIZE]);

/// The boot stack. Only `_start` names it (and the kernel, to unmap its guard page).
#[unsafe(no_mangle)]
pub static mut BOOT_STACK: BootStack = BootStack([0; crate::mm::PAGE_SIZE + STACK_SIZE]);

global_asm!(
    // XEN_ELFNOTE_* (elfnote.h). Each note: namesz, descsz, type, "Xen\0", desc,
    // both padded to 4 bytes. Written out one by one: an assembler macro with string
    // arguments does not assemble in global_asm.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    // GUEST_OS (6)
    ".long 4, 3f - 2f, 6",
    ".asciz \"Xen\"",
    "2: .asciz \"lightvm-rs\"",
    "3: .balign 4",
    // GUEST_VERSION (7)
    ".long 4, 5f - 4f, 7",
    ".asciz \"Xen\"",
    concat!("4: .asciz \"", env!("CARGO_PKG_VERSION"), "\""),
    "5: .balign 4",
    // XEN_VERSION (5): the PV ABI we speak.
    ".long 4, 7f - 6f, 5",
    ".asciz \"Xen\"",
    "6: .asciz \"xen-3.0\"",
    "7: .balign 4",
    // LOADER (8)
    ".long 4, 9f - 8f, 8",
    ".asciz \"Xen\"",
    "8: .asciz \"generic\"",
    "9: .balign 4",
    // VIRT_BASE (3) and PADDR_OFFSET (4): equal, so frame N sits at VIRT_BASE + N pages.
    ".long 4, 8, 3",
    ".asciz \"Xen\"",
    ".quad {virt_base}",
    ".long 4, 8, 4",
    ".asciz \"Xen\"",
    ".quad {virt_base}",
    // ENTRY (1)
    ".long 4, 8, 1",
    ".asciz \"Xen\"",
    ".quad _start",
    // HYPERCALL_PAGE (2)
    ".long 4, 8, 2",
    ".asciz \"Xen\"",
    ".quad HYPERCALL_PAGE",
    // FEATURES (10): we write page tables through hypercalls, and the top-level page
    // directory may live above 4 GiB.
    ".long 4, 22f - 21f, 10",
    ".asciz \"Xen\"",
    "21: .asciz \"!writable_page_tables|pae_pgdir_above_4gb\"",
    "22: .balign 4",
    // PAE_MODE (9)
    ".long 4, 24f - 23f, 9",
    ".asciz \"Xen\"",
    "23: .asciz \"yes\"",
    "24: .balign 4",
    ".popsection",
    //
    ".pushsection .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    // First instruction: the TSC at guest entry.
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov rdi, rsi",
    "    mov rsi, rax",
    "    lea rsp, [rip + {stack} + {stack_bytes}]",
    "    xor ebp, ebp",
    "    call kernel_entry",
    "    ud2",
    ".popsection",
    virt_base = const crate::mm::VIRT_BASE,
    stack = sym BOOT_STACK,
    stack_bytes = const size_of::<BootStack>(),
);

unsafe extern "C" {
    /// Defined by the kernel: `kernel_entry(start_info, tsc_at_entry) -> !`.
    fn kernel_entry(start_info: *const crate::abi::start_info, boot_tsc: u64) -> !;
}

/// Keep the reference to `kernel_entry` visible to the compiler (the asm names it).
#[used]
static KERNEL_ENTRY: unsafe extern "C" fn(*const crate::abi::start_info, u64) -> ! = kernel_entry;

/// Virtual address range of the boot stack's guard page.
pub fn stack_guard_page() -> x86_64::VirtAddr {
    x86_64::VirtAddr::from_ptr(core::ptr::addr_of!(BOOT_STACK))
}
