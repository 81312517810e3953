//! Exceptions and the event upcall.
//!
//! Xen delivers both through a "bounce frame" on the current stack: it pushes the
//! interrupted `rcx` and `r11` on top of a normal `iretq` frame (with an error code in
//! between for the exceptions that have one). The saved CS has its RPL cleared to say
//! "guest kernel mode"; a 64-bit PV kernel really runs in ring 3.
//!
//! Every exception is fatal: the stub builds a [`TrapFrame`] and calls the handler the
//! kernel registered with [`init`], which prints it and ends the domain as crashed.
//!
//! The event upcall saves the caller-saved registers, calls the kernel's upcall handler
//! and returns with `iretq`. Xen masks event delivery (`evtchn_upcall_mask = 1`) when it
//! enters the upcall, and a direct `iretq` leaves it masked. The kernel relies on that:
//! events are masked all the time except inside `SCHEDOP_block`, so the upcall can only
//! interrupt the idle loop, right where it blocked, and needs no locks.

use core::fmt;

/// Registers at the time of an exception, as the entry stubs push them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Pseudo vector for a failsafe callback in a [`TrapFrame`].
pub const FAILSAFE_VECTOR: u64 = 256;

/// Vectors for which the CPU pushes an error code (the stubs push 0 for the others).
const fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// The architectural name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point",
        20 => "#VE virtualization",
        21 => "#CP control protection",
        FAILSAFE_VECTOR => "failsafe callback: Xen could not load a segment register",
        _ => "unknown exception",
    }
}

/// A fatal exception: the frame plus the faulting address Xen reported (CR2 of the
/// vCPU, meaningful for page faults).
#[derive(Debug, Clone, Copy)]
pub struct Fault<'a> {
    pub frame: &'a TrapFrame,
    pub cr2: u64,
}

impl fmt::Display for Fault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.frame;
        write!(f, "exception {} ({})", r.vector, vector_name(r.vector))?;
        if has_error_code(r.vector) {
            write!(f, ", error code {:#x}", r.error_code)?;
        }
        if r.vector == 14 {
            let access = if r.error_code & 2 != 0 {
                "write"
            } else {
                "read"
            };
            let kind = if r.error_code & 1 != 0 {
                "protection violation"
            } else {
                "not present"
            };
            let fetch = if r.error_code & 16 != 0 {
                ", instruction fetch"
            } else {
                ""
            };
            write!(f, " ({access}, {kind}{fetch})")?;
        }
        writeln!(f)?;
        writeln!(f, "  fault address (cr2) {:#018x}", self.cr2)?;
        // Xen keeps the saved event mask above bit 32 of the CS slot: show the selectors.
        writeln!(
            f,
            "  rip {:#018x}  cs {:#06x}  rflags {:#010x}",
            r.rip,
            r.cs & 0xffff,
            r.rflags
        )?;
        writeln!(f, "  rsp {:#018x}  ss {:#06x}", r.rsp, r.ss & 0xffff)?;
        let regs = [
            ("rax", r.rax),
            ("rbx", r.rbx),
            ("rcx", r.rcx),
            ("rdx", r.rdx),
            ("rsi", r.rsi),
            ("rdi", r.rdi),
            ("rbp", r.rbp),
            ("r8 ", r.r8),
            ("r9 ", r.r9),
            ("r10", r.r10),
            ("r11", r.r11),
            ("r12", r.r12),
            ("r13", r.r13),
            ("r14", r.r14),
            ("r15", r.r15),
        ];
        for row in regs.chunks(3) {
            write!(f, " ")?;
            for (name, value) in row {
                write!(f, " {name} {value:#018x}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// What the kernel does with a fatal exception; must not return.
pub type FaultHandler = fn(&Fault<'_>) -> !;
/// What the kernel does on an event upcall.
pub type UpcallHandler = fn();

#[cfg(target_os = "none")]
pub use pv::*;

#[cfg(target_os = "none")]
mod pv {
    use core::arch::global_asm;
    use core::sync::atomic::{AtomicPtr, Ordering};

    use super::*;
    use crate::abi;
    use crate::hypercall;

    static FAULT_HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
    static UPCALL_HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

    /// One entry stub per vector: restore the rcx and r11 Xen saved, push a zero
    /// error code where the CPU pushes none, push the vector and join `trap_common`.
    macro_rules! stub {
        ($vector:literal, error_code) => {
            global_asm!(
                ".pushsection .text.traps, \"ax\"",
                concat!("trap_", $vector, ":"),
                "    pop rcx",
                "    pop r11",
                concat!("    push ", $vector),
                "    jmp trap_common",
                ".popsection",
            );
        };
        ($vector:literal) => {
            global_asm!(
                ".pushsection .text.traps, \"ax\"",
                concat!("trap_", $vector, ":"),
                "    pop rcx",
                "    pop r11",
                "    push 0",
                concat!("    push ", $vector),
                "    jmp trap_common",
                ".popsection",
            );
        };
    }

    stub!(0);
    stub!(1);
    stub!(3);
    stub!(4);
    stub!(5);
    stub!(6);
    stub!(7);
    stub!(10, error_code);
    stub!(11, error_code);
    stub!(12, error_code);
    stub!(13, error_code);
    stub!(14, error_code);
    stub!(16);
    stub!(17, error_code);
    stub!(18);
    stub!(19);
    stub!(20);
    stub!(21, error_code);

    global_asm!(
        ".pushsection .text.traps, \"ax\"",
        // Complete the TrapFrame (rax pushed first, r15 last) and hand it over.
        "trap_common:",
        "    push rax",
        "    push rbx",
        "    push rcx",
        "    push rdx",
        "    push rsi",
        "    push rdi",
        "    push rbp",
        "    push r8",
        "    push r9",
        "    push r10",
        "    push r11",
        "    push r12",
        "    push r13",
        "    push r14",
        "    push r15",
        "    cld",
        "    mov rdi, rsp",
        "    and rsp, -16",
        "    call {trap}",
        "    ud2",
        //
        // Event upcall: save what a Rust call may clobber, dispatch, return.
        "hypervisor_callback:",
        "    pop rcx",
        "    pop r11",
        "    push rax",
        "    push rcx",
        "    push rdx",
        "    push rsi",
        "    push rdi",
        "    push r8",
        "    push r9",
        "    push r10",
        "    push r11",
        "    push rbp",
        "    mov rbp, rsp",
        "    and rsp, -16",
        "    cld",
        "    call {upcall}",
        "    mov rsp, rbp",
        "    pop rbp",
        "    pop r11",
        "    pop r10",
        "    pop r9",
        "    pop r8",
        "    pop rdi",
        "    pop rsi",
        "    pop rdx",
        "    pop rcx",
        "    pop rax",
        // Xen cleared the RPL of the saved CS and SS; iretq needs ring 3 back.
        "    or byte ptr [rsp + 8], 3",
        "    or byte ptr [rsp + 32], 3",
        "    iretq",
        //
        // Failsafe callback: Xen could not load a segment register on return to us.
        "failsafe_callback:",
        "    mov rdi, rsp",
        "    and rsp, -16",
        "    call {failsafe}",
        "    ud2",
        ".popsection",
        trap = sym trap_handler,
        upcall = sym upcall_handler,
        failsafe = sym failsafe_handler,
    );

    unsafe extern "C" {
        fn trap_0();
        fn trap_1();
        fn trap_3();
        fn trap_4();
        fn trap_5();
        fn trap_6();
        fn trap_7();
        fn trap_10();
        fn trap_11();
        fn trap_12();
        fn trap_13();
        fn trap_14();
        fn trap_16();
        fn trap_17();
        fn trap_18();
        fn trap_19();
        fn trap_20();
        fn trap_21();
        fn hypervisor_callback();
        fn failsafe_callback();
    }

    /// Install the trap table and the event and failsafe callbacks.
    pub fn init(fault: FaultHandler, upcall: UpcallHandler) -> hypercall::Result<()> {
        FAULT_HANDLER.store(fault as *mut (), Ordering::Release);
        UPCALL_HANDLER.store(upcall as *mut (), Ordering::Release);
        let entry = |vector: u8, dpl: u8, stub: unsafe extern "C" fn()| abi::trap_info {
            vector,
            flags: dpl,
            cs: abi::FLAT_KERNEL_CS,
            address: stub as *const () as u64,
        };
        // int3 and into may be raised on purpose from our own code, which runs in
        // ring 3: their gates need DPL 3.
        let table = [
            entry(0, 0, trap_0),
            entry(1, 0, trap_1),
            entry(3, 3, trap_3),
            entry(4, 3, trap_4),
            entry(5, 0, trap_5),
            entry(6, 0, trap_6),
            entry(7, 0, trap_7),
            entry(10, 0, trap_10),
            entry(11, 0, trap_11),
            entry(12, 0, trap_12),
            entry(13, 0, trap_13),
            entry(14, 0, trap_14),
            entry(16, 0, trap_16),
            entry(17, 0, trap_17),
            entry(18, 0, trap_18),
            entry(19, 0, trap_19),
            entry(20, 0, trap_20),
            entry(21, 0, trap_21),
            abi::trap_info {
                vector: 0,
                flags: 0,
                cs: 0,
                address: 0,
            },
        ];
        // SAFETY: every address is one of the entry stubs above.
        unsafe { hypercall::set_trap_table(&table)? };
        // SAFETY: both are the callback entry points above.
        unsafe {
            hypercall::set_callbacks(
                hypervisor_callback as *const () as u64,
                failsafe_callback as *const () as u64,
            )
        }
    }

    fn fatal(frame: &TrapFrame) -> ! {
        // Xen writes the fault address there before delivering #PF.
        let cr2 =
            crate::mm::vcpu_info().map_or(0, |vcpu| volatile::map_field!(vcpu.arch.cr2).read());
        let handler = FAULT_HANDLER.load(Ordering::Acquire);
        if !handler.is_null() {
            // SAFETY: only `init` stores into FAULT_HANDLER, and it stores a FaultHandler.
            let handler: FaultHandler = unsafe { core::mem::transmute(handler) };
            handler(&Fault { frame, cr2 });
        }
        hypercall::shutdown(abi::SHUTDOWN_CRASH)
    }

    extern "C" fn trap_handler(frame: &TrapFrame) -> ! {
        fatal(frame)
    }

    /// Xen's failsafe frame: rcx, r11, ds, es, fs, gs, then an iretq frame.
    extern "C" fn failsafe_handler(stack: &[u64; 11]) -> ! {
        let frame = TrapFrame {
            rcx: stack[0],
            r11: stack[1],
            vector: FAILSAFE_VECTOR,
            rip: stack[6],
            cs: stack[7],
            rflags: stack[8],
            rsp: stack[9],
            ss: stack[10],
            ..TrapFrame::default()
        };
        fatal(&frame)
    }

    extern "C" fn upcall_handler() {
        let handler = UPCALL_HANDLER.load(Ordering::Acquire);
        if !handler.is_null() {
            // SAFETY: only `init` stores into UPCALL_HANDLER, and it stores an UpcallHandler.
            let handler: UpcallHandler = unsafe { core::mem::transmute(handler) };
            handler();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_fault_dump_names_vector_access_and_address() {
        let frame = TrapFrame {
            vector: 14,
            error_code: 0x6,
            rip: 0xffff_ffff_8000_1234,
            rax: 0xdead,
            ..TrapFrame::default()
        };
        let text = format!(
            "{}",
            Fault {
                frame: &frame,
                cr2: 0
            }
        );
        assert!(
            text.starts_with("exception 14 (#PF page fault), error code 0x6 (write, not present)"),
            "{text}"
        );
        assert!(
            text.contains("fault address (cr2) 0x0000000000000000"),
            "{text}"
        );
        assert!(text.contains("rip 0xffffffff80001234"), "{text}");
        assert!(text.contains("rax 0x000000000000dead"), "{text}");
        assert!(text.contains("r15 0x0000000000000000"), "{text}");
    }

    #[test]
    fn error_code_vectors_are_the_architectural_ones() {
        let with: Vec<u64> = (0..32).filter(|&v| has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21]);
        assert_eq!(vector_name(13), "#GP general protection");
    }
}
