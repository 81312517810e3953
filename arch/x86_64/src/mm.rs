//! PV memory management: the p2m and m2p tables, and page tables changed through Xen.
//!
//! A PV guest sees pseudo-physical frames (pfns); the hardware sees machine frames
//! (mfns). Xen hands us the pfn → mfn list (`start_info.mfn_list`) and maps the global
//! mfn → pfn table read-only at [`abi::MACH2PHYS_VIRT_START`](crate::abi::MACH2PHYS_VIRT_START).
//!
//! Layout of our address space, all in the top 2 GiB:
//! - the **direct map**: pfn N at `VIRT_BASE + N * 4096`. Xen's bootstrap mapping is its
//!   start (the image is linked at `VIRT_BASE`); [`extend_direct_map`] covers the rest
//!   of the guest's memory;
//! - the **window**, 32 MiB below `VIRT_BASE`: foreign frames mapped at run time (grant
//!   table frames, grants other domains give us).
//!
//! Page-table pages are read-only to a PV guest; all changes go through `mmu_update` and
//! `update_va_mapping` (hence none of the `x86_64` crate's mappers, which write entries). A new table page is filled while still an ordinary writable page,
//! then made read-only and hooked into its parent, so Xen validates it once.

use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

/// Size of a page.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Where the image is linked, and where the direct map starts.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// How many frames the direct map can hold: from `VIRT_BASE` to the top of the address
/// space (2 GiB). A guest with more memory leaves the rest unused.
pub const DIRECT_MAP_MAX_PFNS: u64 = VIRT_BASE.wrapping_neg() >> PAGE_SHIFT;
/// Start of the window for foreign mappings.
pub const WINDOW_BASE: VirtAddr =
    VirtAddr::new_truncate(VIRT_BASE - WINDOW_PAGES as u64 * PAGE_SIZE as u64);
/// Pages in the window (32 MiB).
pub const WINDOW_PAGES: usize = 8192;

/// Entries that point to a lower-level table. A 64-bit PV kernel runs in ring 3, so
/// its mappings carry USER_ACCESSIBLE.
pub const TABLE_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::DIRTY);
/// A read-write data page (see [`data_flags`] for no-execute).
pub const DATA_FLAGS: PageTableFlags = TABLE_FLAGS;
/// A read-only page (page-table pages in the direct map).
pub const READ_ONLY_FLAGS: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::ACCESSED);

/// Entries per page table.
pub const ENTRIES: usize = 512;

/// Virtual address of pfn `pfn` in the direct map.
pub const fn va_of_pfn(pfn: u64) -> VirtAddr {
    VirtAddr::new_truncate(VIRT_BASE + (pfn << PAGE_SHIFT))
}

/// The pfn behind a direct-map address.
pub const fn pfn_of_va(va: VirtAddr) -> u64 {
    (va.as_u64() - VIRT_BASE) >> PAGE_SHIFT
}

/// The machine address of frame `mfn`.
const fn machine_address(mfn: u64) -> PhysAddr {
    PhysAddr::new_truncate(mfn << PAGE_SHIFT)
}

/// A page-table entry as read from (or written to) a table: the frame it points to and
/// its flags. (x86_64's `PageTableEntry` has no way in from a raw word, and the words
/// are what `mmu_update` takes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pte(pub u64);

impl Pte {
    /// The entry that maps machine frame `mfn` with `flags`.
    pub const fn new(mfn: u64, flags: PageTableFlags) -> Self {
        Self(machine_address(mfn).as_u64() | flags.bits())
    }

    /// The machine frame the entry points to.
    pub fn mfn(self) -> u64 {
        PhysAddr::new_truncate(self.0)
            .align_down(PAGE_SIZE as u64)
            .as_u64()
            >> PAGE_SHIFT
    }

    /// Its flags, without the frame bits.
    pub const fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0)
    }

    pub const fn is_present(self) -> bool {
        self.flags().contains(PageTableFlags::PRESENT)
    }
}

/// Why a mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// No free frame for a new page-table page.
    OutOfFrames,
    /// A frame given for a page-table page is not in the direct map yet.
    FrameNotMapped(u64),
    /// Xen refused the update.
    Xen(crate::errno::Errno),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfFrames => f.write_str("no free frame for a page table"),
            Self::FrameNotMapped(pfn) => write!(f, "frame {pfn:#x} is not mapped yet"),
            Self::Xen(errno) => write!(f, "Xen refused a page-table update: {errno}"),
        }
    }
}

#[cfg(target_os = "none")]
pub use pv::*;

#[cfg(target_os = "none")]
mod pv {
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use volatile::VolatilePtr;
    use volatile::access::ReadOnly;
    use x86_64::structures::paging::page_table::PageTableLevel;
    use x86_64::structures::paging::{PageTable, PageTableIndex};

    use super::*;
    use crate::abi;
    use crate::hypercall::{self, Errno};

    /// Virtual address of the pfn → mfn list and its length.
    static P2M: AtomicU64 = AtomicU64::new(0);
    static P2M_LEN: AtomicU64 = AtomicU64::new(0);
    /// Virtual address of the L4 table Xen built (read-only to us).
    static L4: AtomicU64 = AtomicU64::new(0);
    /// Whether the CPU honours the no-execute bit.
    static NX: AtomicBool = AtomicBool::new(false);
    /// End (exclusive pfn) of the direct map.
    static DIRECT_END: AtomicU64 = AtomicU64::new(0);

    /// The level below `level` (there is one: callers never go below L1).
    fn lower(level: PageTableLevel) -> PageTableLevel {
        level.next_lower_level().expect("no level below L1")
    }

    /// Record what Xen told us about memory.
    ///
    /// # Safety
    /// `si` must be the start_info page Xen passed at entry: its `mfn_list` and
    /// `pt_base` point at the live p2m list and L4 table.
    pub unsafe fn init(si: &abi::start_info) {
        P2M.store(si.mfn_list, Ordering::Relaxed);
        P2M_LEN.store(si.nr_pages, Ordering::Relaxed);
        L4.store(si.pt_base, Ordering::Relaxed);
        NX.store(crate::cpu::has_nx(), Ordering::Relaxed);
        DIRECT_END.store(find_direct_map_end(si.nr_pages), Ordering::Relaxed);
    }

    /// The flags for data pages: no-execute where the CPU supports it.
    pub fn data_flags() -> PageTableFlags {
        let mut flags = DATA_FLAGS;
        flags.set(PageTableFlags::NO_EXECUTE, NX.load(Ordering::Relaxed));
        flags
    }

    /// The machine frame of `pfn`.
    pub fn pfn_to_mfn(pfn: u64) -> u64 {
        assert!(
            pfn < P2M_LEN.load(Ordering::Relaxed),
            "pfn {pfn:#x} beyond the p2m list"
        );
        let list = P2M.load(Ordering::Relaxed) as *const u64;
        // SAFETY: the p2m list has P2M_LEN entries, mapped for the guest's lifetime.
        unsafe { list.add(pfn as usize).read() }
    }

    /// The pseudo-physical frame of `mfn`, from Xen's machine-to-phys table.
    pub fn mfn_to_pfn(mfn: u64) -> u64 {
        let addr = abi::MACH2PHYS_VIRT_START + mfn * 8;
        assert!(
            addr < abi::MACH2PHYS_VIRT_END,
            "mfn {mfn:#x} beyond the m2p table"
        );
        // SAFETY: Xen maps the m2p table read-only in every 64-bit PV guest (and changes
        // it while we run: hence volatile).
        unsafe { read_only_word(addr) }.read()
    }

    /// The first pfn past the direct map.
    pub fn direct_map_end() -> u64 {
        DIRECT_END.load(Ordering::Relaxed)
    }

    /// Read entry `index` of the table in machine frame `table_mfn`.
    fn read_entry(table_mfn: u64, index: PageTableIndex) -> Pte {
        let entry = va_of_pfn(mfn_to_pfn(table_mfn)) + u64::from(index) * 8;
        // SAFETY: page-table pages are in the direct map (read-only to us; the CPU may
        // set accessed bits); an index is below 512.
        Pte(unsafe { read_only_word(entry.as_u64()) }.read())
    }

    /// The word at `address`, for volatile reads.
    ///
    /// # Safety
    /// `address` must be a mapped, aligned, readable word for the guest's lifetime.
    unsafe fn read_only_word(address: u64) -> VolatilePtr<'static, u64, ReadOnly> {
        // SAFETY: guaranteed by the caller (mapped, hence not null).
        unsafe { VolatilePtr::new_read_only(NonNull::new_unchecked(address as *mut u64)) }
    }

    fn l4_mfn() -> u64 {
        pfn_to_mfn(pfn_of_va(VirtAddr::new_truncate(
            L4.load(Ordering::Relaxed),
        )))
    }

    /// Walk down to the table of `level` that covers `va`: its mfn, or `None` if an
    /// upper level is missing.
    fn table_for(va: VirtAddr, level: PageTableLevel) -> Option<u64> {
        let mut mfn = l4_mfn();
        let mut upper = PageTableLevel::Four;
        while upper > level {
            let entry = read_entry(mfn, va.page_table_index(upper));
            if !entry.is_present() {
                return None;
            }
            mfn = entry.mfn();
            upper = lower(upper);
        }
        Some(mfn)
    }

    /// The L1 entry that maps `va`, if its tables exist.
    pub fn lookup(va: VirtAddr) -> Option<Pte> {
        let l1 = table_for(va, PageTableLevel::One)?;
        Some(read_entry(l1, va.p1_index()))
    }

    /// Xen maps the bootstrap region in whole L1 tables: find where it ends.
    fn find_direct_map_end(nr_pages: u64) -> u64 {
        let limit = nr_pages.min(DIRECT_MAP_MAX_PFNS);
        let mut pfn = 0;
        while pfn < limit && lookup(va_of_pfn(pfn)).is_some_and(Pte::is_present) {
            pfn += 1;
        }
        pfn
    }

    fn update(entries: &[abi::mmu_update]) -> Result<(), MapError> {
        // SAFETY: callers only install tables we built and mappings of frames we own,
        // never touching the mappings of the image or the stack.
        let done = unsafe { hypercall::mmu_update(entries) }.map_err(MapError::Xen)?;
        if done != entries.len() {
            return Err(MapError::Xen(Errno::EINVAL));
        }
        Ok(())
    }

    fn entry_update(table_mfn: u64, index: PageTableIndex, value: Pte) -> abi::mmu_update {
        let entry = machine_address(table_mfn) + u64::from(index) * 8;
        abi::mmu_update {
            ptr: entry.as_u64() | u64::from(abi::MMU_NORMAL_PT_UPDATE),
            val: value.0,
        }
    }

    /// Take a frame for a new page table, let `fill` write its entries while it is
    /// still writable, then make it read-only. Returns its mfn.
    fn new_table(
        frames: &mut dyn FnMut() -> Option<u64>,
        fill: impl FnOnce(&mut PageTable),
    ) -> Result<u64, MapError> {
        let pfn = frames().ok_or(MapError::OutOfFrames)?;
        if pfn >= direct_map_end() {
            return Err(MapError::FrameNotMapped(pfn));
        }
        let va = va_of_pfn(pfn);
        // SAFETY: the frame is ours (the caller's allocator handed it out) and mapped
        // read-write in the direct map; nothing else refers to it yet.
        let table = unsafe { &mut *va.as_mut_ptr::<PageTable>() };
        table.zero();
        fill(table);
        let mfn = pfn_to_mfn(pfn);
        // SAFETY: drops write access to our own, unused page: Xen requires page tables
        // to have no writable mapping.
        unsafe { hypercall::update_va_mapping(va.as_u64(), Pte::new(mfn, READ_ONLY_FLAGS).0) }
            .map_err(MapError::Xen)?;
        Ok(mfn)
    }

    /// Make sure the table of `level` covering `va` exists, creating missing levels
    /// with frames from `frames`. Returns its mfn.
    fn ensure_table(
        va: VirtAddr,
        level: PageTableLevel,
        frames: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<u64, MapError> {
        let mut mfn = l4_mfn();
        let mut upper = PageTableLevel::Four;
        while upper > level {
            let index = va.page_table_index(upper);
            let entry = read_entry(mfn, index);
            mfn = if entry.is_present() {
                entry.mfn()
            } else {
                let table = new_table(frames, |_| {})?;
                update(&[entry_update(mfn, index, Pte::new(table, TABLE_FLAGS))])?;
                table
            };
            upper = lower(upper);
        }
        Ok(mfn)
    }

    /// Map the frames `[direct_map_end(), end_pfn)` into the direct map. Page tables
    /// come from `frames`, which must hand out frames that are already mapped.
    ///
    /// # Safety
    /// The frames being mapped must belong to the guest and must not be page tables.
    pub unsafe fn extend_direct_map(
        end_pfn: u64,
        frames: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<(), MapError> {
        let end_pfn = end_pfn.min(DIRECT_MAP_MAX_PFNS);
        let flags = data_flags();
        let mut pfn = direct_map_end();
        while pfn < end_pfn {
            let va = va_of_pfn(pfn);
            let l2 = ensure_table(va, PageTableLevel::Two, frames)?;
            let chunk_end = ((pfn / ENTRIES as u64) + 1) * ENTRIES as u64;
            let chunk_end = chunk_end.min(end_pfn);
            let l2_entry = read_entry(l2, va.p2_index());
            if l2_entry.is_present() {
                // A partly filled L1: add the missing entries one update each.
                for p in pfn..chunk_end {
                    let index = va_of_pfn(p).p1_index();
                    let entry = Pte::new(pfn_to_mfn(p), flags);
                    update(&[entry_update(l2_entry.mfn(), index, entry)])?;
                }
            } else {
                let l1 = new_table(frames, |table| {
                    for p in pfn..chunk_end {
                        let frame = machine_address(pfn_to_mfn(p));
                        table[va_of_pfn(p).p1_index()].set_addr(frame, flags);
                    }
                })?;
                update(&[entry_update(l2, va.p2_index(), Pte::new(l1, TABLE_FLAGS))])?;
            }
            pfn = chunk_end;
            DIRECT_END.store(pfn, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Map machine frame `mfn` at `va` (outside the direct map) with `flags`.
    ///
    /// # Safety
    /// `va` must not be in use, and the frame must be one we may map this way.
    pub unsafe fn map_page(
        va: VirtAddr,
        mfn: u64,
        flags: PageTableFlags,
        frames: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<(), MapError> {
        ensure_table(va, PageTableLevel::One, frames)?;
        // SAFETY: guaranteed by the caller.
        unsafe { hypercall::update_va_mapping(va.as_u64(), Pte::new(mfn, flags).0) }
            .map_err(MapError::Xen)
    }

    /// Make sure an L1 table covers `va`, so Xen can write its entry itself (grant
    /// mappings do).
    pub fn prepare_page(
        va: VirtAddr,
        frames: &mut dyn FnMut() -> Option<u64>,
    ) -> Result<(), MapError> {
        ensure_table(va, PageTableLevel::One, frames).map(drop)
    }

    /// Remove the mapping at `va`.
    ///
    /// # Safety
    /// Nothing may use `va` afterwards.
    pub unsafe fn unmap_page(va: VirtAddr) -> Result<(), MapError> {
        // SAFETY: guaranteed by the caller.
        unsafe { hypercall::update_va_mapping(va.as_u64(), 0) }.map_err(MapError::Xen)
    }

    /// The page `shared_info` is mapped over: a page of our image whose own frame is
    /// given up for it.
    #[repr(C, align(4096))]
    struct SharedInfoPage([u8; PAGE_SIZE]);
    static mut SHARED_INFO_PAGE: SharedInfoPage = SharedInfoPage([0; PAGE_SIZE]);
    static SHARED_INFO_MAPPED: AtomicBool = AtomicBool::new(false);

    /// Map the shared info page (machine frame `mfn`, from start_info) and describe our
    /// p2m in it ([`publish_p2m`]). Again after a suspend: a restored domain has
    /// another frame, and the p2m in a new place.
    ///
    /// # Safety
    /// `mfn` must be the domain's shared_info frame, and the page not mapped.
    pub unsafe fn map_shared_info(mfn: u64) -> Result<(), MapError> {
        let va = VirtAddr::from_ptr(core::ptr::addr_of!(SHARED_INFO_PAGE));
        // SAFETY: the page is ours and unused; shared_info is meant to be mapped RW.
        unsafe { hypercall::update_va_mapping(va.as_u64(), Pte::new(mfn, data_flags()).0) }
            .map_err(MapError::Xen)?;
        SHARED_INFO_MAPPED.store(true, Ordering::Release);
        publish_p2m();
        Ok(())
    }

    /// Unmap the shared info page before a suspend: libxc refuses to save a guest that
    /// maps a page of Xen's (`Bad mfn for L1`). The image page under it comes back.
    ///
    /// # Safety
    /// Nothing may touch shared_info until [`map_shared_info`] maps it again.
    pub unsafe fn unmap_shared_info() -> Result<(), MapError> {
        let va = VirtAddr::from_ptr(core::ptr::addr_of!(SHARED_INFO_PAGE));
        SHARED_INFO_MAPPED.store(false, Ordering::Release);
        // SAFETY: the page's own frame never left the guest: mapping it back is safe.
        let own = Pte::new(pfn_to_mfn(pfn_of_va(va)), data_flags());
        // SAFETY: the caller keeps everyone off shared_info meanwhile.
        unsafe { hypercall::update_va_mapping(va.as_u64(), own.0) }.map_err(MapError::Xen)
    }

    /// Tell the toolstack where our p2m is, in `shared_info.arch`, as a linear list
    /// (what Linux publishes): libxc's save reads it before it asks the guest to
    /// suspend, and fails on the zeroes the builder left (`Bad mfn 0 for p2m frame
    /// list list`). The list is the one the builder mapped at `start_info.mfn_list`,
    /// in 4 KiB pages, and its mapping never changes, so `p2m_generation` stays 0;
    /// `pfn_to_mfn_frame_list_list` is ~0: there is no tree.
    fn publish_p2m() {
        let Some(shared) = shared_info() else {
            return;
        };
        // SAFETY: `arch` lies inside the mapped shared_info page.
        let arch = unsafe {
            shared.map(|si| NonNull::new_unchecked(core::ptr::addr_of_mut!((*si.as_ptr()).arch)))
        };
        volatile::map_field!(arch.pfn_to_mfn_frame_list_list).write(!0);
        volatile::map_field!(arch.p2m_vaddr).write(P2M.load(Ordering::Relaxed));
        volatile::map_field!(arch.p2m_cr3).write(l4_mfn() << 12);
        volatile::map_field!(arch.p2m_generation).write(0);
        // Last: libxc takes a max_pfn of 0 for "nothing published".
        volatile::map_field!(arch.max_pfn).write(P2M_LEN.load(Ordering::Relaxed));
    }

    /// The shared info page, once [`map_shared_info`] has run. Xen writes it at any
    /// time: every access is volatile.
    pub fn shared_info() -> Option<VolatilePtr<'static, abi::shared_info>> {
        let page = NonNull::new(core::ptr::addr_of_mut!(SHARED_INFO_PAGE))?.cast();
        // SAFETY: once mapped, the page is shared_info for good, and nothing takes a
        // reference to it.
        SHARED_INFO_MAPPED
            .load(Ordering::Acquire)
            .then(|| unsafe { VolatilePtr::new(page) })
    }

    /// vCPU 0's record in shared_info (the only vCPU we run on).
    pub fn vcpu_info() -> Option<VolatilePtr<'static, abi::vcpu_info>> {
        // SAFETY: `vcpu_info[0]` lies inside the mapped shared_info.
        shared_info().map(|si| unsafe {
            si.map(|si| {
                NonNull::new_unchecked(core::ptr::addr_of_mut!((*si.as_ptr()).vcpu_info[0]))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use x86_64::structures::paging::PageTable;
    use x86_64::structures::paging::page_table::PageTableLevel;

    use super::*;

    #[test]
    fn indices_split_an_address_into_nine_bit_fields() {
        let va = va_of_pfn(0) + ((3 << 30) / 4 + (5 << 21) + (7 << 12) + 0x123u64);
        let index = |va: VirtAddr, level| u16::from(va.page_table_index(level));
        assert_eq!(index(va_of_pfn(0), PageTableLevel::Four), 511);
        assert_eq!(index(va_of_pfn(0), PageTableLevel::Three), 510);
        assert_eq!(index(va, PageTableLevel::Two), 5 + 384);
        assert_eq!(index(va, PageTableLevel::One), 7);
        assert_eq!(index(WINDOW_BASE, PageTableLevel::Three), 509);
        assert_eq!(
            usize::from(index(WINDOW_BASE, PageTableLevel::Two)),
            512 - WINDOW_PAGES / ENTRIES
        );
    }

    #[test]
    fn direct_map_round_trips_and_fills_the_top_two_gib() {
        assert_eq!(pfn_of_va(va_of_pfn(12345)), 12345);
        assert_eq!(DIRECT_MAP_MAX_PFNS, 512 * 1024);
        assert_eq!(
            va_of_pfn(DIRECT_MAP_MAX_PFNS - 1).as_u64(),
            0xffff_ffff_ffff_f000
        );
        assert!(WINDOW_BASE + (WINDOW_PAGES * PAGE_SIZE) as u64 == va_of_pfn(0));
    }

    #[test]
    fn entries_keep_frame_and_flags_apart() {
        let flags = DATA_FLAGS | PageTableFlags::NO_EXECUTE;
        let entry = Pte::new(0xabcde, flags);
        assert_eq!(entry.mfn(), 0xabcde);
        assert_eq!(entry.flags(), flags);
        // Bits above the physical address width never leak into the frame or flags.
        let wide = Pte::new(u64::MAX, PageTableFlags::empty());
        assert_eq!(wide.mfn(), 0x000f_ffff_ffff_f000 >> PAGE_SHIFT);
        assert_eq!(wide.flags(), PageTableFlags::empty());
        // x86_64's own entry agrees on where the frame goes.
        let mut table = PageTable::new();
        table[0].set_addr(PhysAddr::new(0xabcde << PAGE_SHIFT), flags);
        assert_eq!(table[0].addr().as_u64() >> PAGE_SHIFT, entry.mfn());
    }
}
