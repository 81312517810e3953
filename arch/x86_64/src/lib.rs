//! Xen x86_64 PV architecture support: the boot entry and ELF notes, hypercalls, the
//! trap table and event upcall, PV page tables (p2m, m2p, `mmu_update`) and Xen
//! system time.
//!
//! Addresses and page-table entries are the `x86_64` crate's types (`VirtAddr`,
//! `PhysAddr`, `PageTableFlags`, `PageTable`). Its mappers and its instruction and
//! control-register wrappers do not fit a PV guest, which runs in ring 3: page tables
//! are read-only to us and change through `mmu_update`, CR2 arrives in `vcpu_info`,
//! and the L4 table is start_info's `pt_base` (a `mov` from a control register would
//! trap into Xen's emulator).
//!
//! Everything that executes privileged PV operations is built for the guest target
//! only (`target_os = "none"`); the pure parts (page-table index math, time scaling,
//! fault formatting, ABI layouts) also build and are tested on the host.

#![cfg_attr(target_os = "none", no_std)]

pub mod abi;
#[cfg(target_os = "none")]
pub mod boot;
pub mod cpu;
pub mod errno;
#[cfg(target_os = "none")]
pub mod hypercall;
pub mod mm;
pub mod time;
pub mod traps;
