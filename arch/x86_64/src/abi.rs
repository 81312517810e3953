//! Xen ABI items the `xen-sys` crate does not carry (Xen 4.17 public headers).
//!
//! Each struct is plain `#[repr(C)]` data laid out as the C struct it names; the tests
//! at the bottom pin sizes and offsets to the values of the C headers.

pub use xen_sys::{
    EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain, EVTCHNOP_bind_virq, EVTCHNOP_close,
    EVTCHNOP_send, EVTCHNOP_status, EVTCHNOP_unmask, EVTCHNSTAT_unbound, MMU_NORMAL_PT_UPDATE,
    SCHEDOP_block, SCHEDOP_poll, SCHEDOP_shutdown, SCHEDOP_yield, SIF_INITDOMAIN, SIF_PRIVILEGED,
    VIRQ_TIMER, evtchn_alloc_unbound, evtchn_bind_interdomain, evtchn_bind_virq, evtchn_close,
    evtchn_send, evtchn_status, evtchn_unmask, mmu_update, sched_poll, sched_shutdown, shared_info,
    start_info, trap_info, vcpu_info, vcpu_time_info,
};

/// A domain id (`domid_t`).
pub type DomId = u16;

/// `xen.h`: DOMID_SELF refers to the calling domain.
pub const DOMID_SELF: DomId = 0x7ff0;

/// `arch-x86/xen-x86_64.h`: the flat 64-bit code selector of a PV guest kernel.
pub const FLAT_KERNEL_CS: u16 = 0xe033;

/// `arch-x86/xen-x86_64.h`: start of the read-only machine-to-phys table Xen maps
/// into every 64-bit PV guest.
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// `arch-x86/xen-x86_64.h`: end of that table.
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;

/// `xen.h`: flags of `update_va_mapping`: flush only the one TLB entry.
pub const UVMF_INVLPG: u64 = 2;

/// `xen.h`: `console_io` command.
pub const CONSOLEIO_WRITE: u32 = 0;

/// `version.h`: `xen_version` commands.
pub const XENVER_VERSION: u32 = 0;
/// `version.h`: the extra version string, `xen_extraversion_t` (16 bytes).
pub const XENVER_EXTRAVERSION: u32 = 1;
pub type XenExtraVersion = [u8; 16];

/// `sched.h`: shutdown reasons (`SHUTDOWN_*`).
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;

/// `grant_table.h`: a grant reference.
pub type GrantRef = u32;

/// `grant_table.h`: `GNTTABOP_*` commands.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
pub const GNTTABOP_QUERY_SIZE: u32 = 6;

bitflags::bitflags! {
    /// `grant_table.h`: `GNTMAP_*`, the `flags` of `gnttab_map_grant_ref`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GrantMapFlags: u32 {
        const HOST_MAP = 1 << 1;
        const READONLY = 1 << 2;
    }
}

/// `grant_table.h`: `struct gnttab_setup_table`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GnttabSetupTable {
    pub dom: DomId,
    pub pad0: u16,
    pub nr_frames: u32,
    pub status: i16,
    pub pad1: [u16; 3],
    /// Guest handle: where Xen writes `nr_frames` frame numbers (`xen_pfn_t`).
    pub frame_list: *mut u64,
}

/// `grant_table.h`: `struct gnttab_query_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabQuerySize {
    pub dom: DomId,
    pub pad0: u16,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
    pub pad1: u16,
}

/// `grant_table.h`: `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub ref_: GrantRef,
    pub dom: DomId,
    pub status: i16,
    pub handle: u32,
    pub dev_bus_addr: u64,
}

/// `grant_table.h`: `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    pub status: i16,
    pub pad0: u16,
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_match_the_c_headers() {
        assert_eq!(size_of::<GnttabSetupTable>(), 24);
        assert_eq!(offset_of!(GnttabSetupTable, status), 8);
        assert_eq!(offset_of!(GnttabSetupTable, frame_list), 16);
        assert_eq!(size_of::<GnttabQuerySize>(), 16);
        assert_eq!(offset_of!(GnttabQuerySize, status), 12);
        assert_eq!(size_of::<GnttabMapGrantRef>(), 32);
        assert_eq!(offset_of!(GnttabMapGrantRef, dom), 16);
        assert_eq!(offset_of!(GnttabMapGrantRef, status), 18);
        assert_eq!(offset_of!(GnttabMapGrantRef, handle), 20);
        assert_eq!(offset_of!(GnttabMapGrantRef, dev_bus_addr), 24);
        assert_eq!(size_of::<GnttabUnmapGrantRef>(), 24);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, status), 20);
        // The structs xen-sys provides and we rely on.
        assert_eq!(size_of::<start_info>(), 1168);
        assert_eq!(size_of::<shared_info>(), 3136);
        assert_eq!(size_of::<vcpu_info>(), 64);
        assert_eq!(offset_of!(shared_info, evtchn_pending), 2048);
        assert_eq!(offset_of!(shared_info, wc_version), 3072);
        assert_eq!(size_of::<trap_info>(), 16);
        assert_eq!(size_of::<sched_poll>(), 24);
        assert_eq!(size_of::<evtchn_status>(), 24);
    }
}
