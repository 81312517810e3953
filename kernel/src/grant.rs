//! Grant tables (v1): let other domains map our frames, and map the frames they grant us.
//!
//! Our grant table is an array of `grant_entry_v1` in frames Xen gives us
//! (`GNTTABOP_setup_table`). Granting writes frame and domain, then publishes the entry
//! by setting its flags; revoking clears the flags with a compare-and-swap that fails
//! while Xen reports the grant mapped (`GTF_reading`/`GTF_writing`), as `grant_table.h`
//! prescribes. References 0–7 are reserved for the toolstack (console, Xenstore).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use arch::abi::{DomId, GrantRef};

/// `grant_table.h`: `struct grant_entry_v1`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GrantEntryV1 {
    flags: AtomicU16,
    domid: AtomicU16,
    frame: AtomicU32,
}

bitflags::bitflags! {
    /// `grant_table.h`: `GTF_*`, the flags word of a v1 entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct GrantFlags: u16 {
        const PERMIT_ACCESS = 1;
        const READONLY = 1 << 2;
        /// Set by Xen while the grantee has the frame mapped (read or write).
        const READING = 1 << 3;
        const WRITING = 1 << 4;
    }
}

impl GrantFlags {
    /// The grantee still maps the frame.
    const IN_USE: Self = Self::READING.union(Self::WRITING);
}

/// `grant_table.h`: GNTTAB_NR_RESERVED_ENTRIES.
pub const RESERVED_REFS: GrantRef = 8;
/// Entries in one grant-table frame.
pub const ENTRIES_PER_FRAME: usize = arch::mm::PAGE_SIZE / size_of::<GrantEntryV1>();

/// A grant operation that could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// Every reference is in use.
    TableFull,
    /// v1 entries hold 32-bit frame numbers.
    FrameTooLarge(u64),
    /// The other domain still has the frame mapped; try again later.
    InUse(GrantRef),
    /// The reference is not one we granted.
    NotGranted(GrantRef),
    /// Xen refused (`GNTST_*` status, or a hypercall errno).
    Xen(i32),
    /// No room in the window to map a foreign frame.
    NoAddressSpace,
    /// No free frame to grant.
    NoMemory,
    /// Not a reserved reference a guest may fill (0 and 1 are the toolstack's).
    NotReservable(GrantRef),
    /// The reserved reference already grants a frame.
    AlreadyGranted(GrantRef),
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TableFull => f.write_str("grant table full"),
            Self::FrameTooLarge(mfn) => write!(f, "frame {mfn:#x} does not fit a v1 grant entry"),
            Self::InUse(gref) => write!(f, "grant {gref} is still mapped by the other domain"),
            Self::NotGranted(gref) => write!(f, "grant {gref} was not granted"),
            Self::Xen(status) => write!(f, "Xen refused the grant operation (status {status})"),
            Self::NoAddressSpace => f.write_str("no address space left to map a grant"),
            Self::NoMemory => f.write_str("no free frame to grant"),
            Self::NotReservable(gref) => write!(
                f,
                "grant {gref} is not a reserved reference a guest may fill (2 to {})",
                RESERVED_REFS - 1
            ),
            Self::AlreadyGranted(gref) => write!(f, "reserved grant {gref} is already in use"),
        }
    }
}

/// Bookkeeping over the entries of our grant table.
#[derive(Debug)]
pub struct GrantTable<'a> {
    entries: &'a [GrantEntryV1],
    free: Vec<GrantRef>,
    /// Every live grant, by reference, the reserved ones included: what
    /// [`Self::reinstate`] writes again into a restored domain's empty table.
    grants: Vec<Option<Grant>>,
}

/// A live grant as we made it: by pseudo-physical frame, which survives a restore
/// (machine frames do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    domid: DomId,
    pfn: u64,
    readonly: bool,
    /// Filled by [`GrantTable::grant_reserved`]: for good, never revoked.
    reserved: bool,
}

impl<'a> GrantTable<'a> {
    /// Take over `entries` (all unused).
    pub fn new(entries: &'a [GrantEntryV1]) -> Self {
        let count = entries.len() as GrantRef;
        // Lowest references first: pop from the end of a descending list.
        let free = (RESERVED_REFS..count).rev().collect();
        Self {
            entries,
            free,
            grants: alloc::vec![None; entries.len()],
        }
    }

    /// Write `grant` into entry `gref`, frame `mfn`, and publish it.
    fn write(&self, gref: GrantRef, grant: Grant, mfn: u64) -> Result<(), GrantError> {
        let frame32 = u32::try_from(mfn).map_err(|_| GrantError::FrameTooLarge(mfn))?;
        let entry = &self.entries[gref as usize];
        entry.frame.store(frame32, Ordering::Relaxed);
        entry.domid.store(grant.domid, Ordering::Relaxed);
        let mut flags = GrantFlags::PERMIT_ACCESS;
        flags.set(GrantFlags::READONLY, grant.readonly);
        // Release: frame and domid are visible before Xen can see the entry valid.
        entry.flags.store(flags.bits(), Ordering::Release);
        Ok(())
    }

    /// After a restore into a new domain, whose grant table Xen starts empty: take
    /// over its `entries` and grant every frame again, under the same reference, at
    /// its new machine frame (`to_mfn`). Front ends keep their references; only the
    /// back ends are new. Returns how many grants were made again.
    pub fn reinstate(
        &mut self,
        entries: &'a [GrantEntryV1],
        to_mfn: impl Fn(u64) -> u64,
    ) -> Result<usize, GrantError> {
        assert!(
            entries.len() >= self.grants.len(),
            "a restored grant table is never smaller"
        );
        self.entries = entries;
        let mut count = 0;
        for (gref, grant) in self.grants.iter().enumerate() {
            if let Some(grant) = *grant {
                self.write(gref as GrantRef, grant, to_mfn(grant.pfn))?;
                count += 1;
            }
        }
        Ok(count)
    }

    /// References that can still be granted.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Allow domain `domid` to map our frame `pfn`, machine frame `mfn`.
    pub fn grant(
        &mut self,
        domid: DomId,
        pfn: u64,
        mfn: u64,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        u32::try_from(mfn).map_err(|_| GrantError::FrameTooLarge(mfn))?;
        let gref = *self.free.last().ok_or(GrantError::TableFull)?;
        let grant = Grant {
            domid,
            pfn,
            readonly,
            reserved: false,
        };
        self.write(gref, grant, mfn)?;
        self.free.pop();
        self.grants[gref as usize] = Some(grant);
        Ok(gref)
    }

    /// Fill reserved entry `gref` (2 to 7: 0 and 1 hold the console and Xenstore the
    /// toolstack seeded) for a protocol that names the reference in advance. The
    /// grant is for good: [`Self::revoke`] refuses reserved references.
    pub fn grant_reserved(
        &mut self,
        gref: GrantRef,
        domid: DomId,
        pfn: u64,
        mfn: u64,
        readonly: bool,
    ) -> Result<(), GrantError> {
        if !(2..RESERVED_REFS).contains(&gref) || gref as usize >= self.entries.len() {
            return Err(GrantError::NotReservable(gref));
        }
        if self.entries[gref as usize].flags.load(Ordering::Acquire) != 0 {
            return Err(GrantError::AlreadyGranted(gref));
        }
        let grant = Grant {
            domid,
            pfn,
            readonly,
            reserved: true,
        };
        self.write(gref, grant, mfn)?;
        self.grants[gref as usize] = Some(grant);
        Ok(())
    }

    /// Withdraw a grant. Fails with [`GrantError::InUse`] while the other domain has
    /// it mapped; the grant then stays valid.
    pub fn revoke(&mut self, gref: GrantRef) -> Result<(), GrantError> {
        let revocable = self
            .grants
            .get(gref as usize)
            .is_some_and(|grant| grant.is_some_and(|grant| !grant.reserved));
        if !revocable {
            return Err(GrantError::NotGranted(gref));
        }
        let flags = &self.entries[gref as usize].flags;
        let mut current = flags.load(Ordering::Acquire);
        loop {
            if GrantFlags::from_bits_retain(current).intersects(GrantFlags::IN_USE) {
                return Err(GrantError::InUse(gref));
            }
            match flags.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.grants[gref as usize] = None;
        self.free.push(gref);
        Ok(())
    }

    /// Whether the other domain currently has `gref` mapped.
    pub fn in_use(&self, gref: GrantRef) -> bool {
        self.entries.get(gref as usize).is_some_and(|e| {
            GrantFlags::from_bits_retain(e.flags.load(Ordering::Acquire))
                .intersects(GrantFlags::IN_USE)
        })
    }
}

#[cfg(target_os = "none")]
pub use guest::*;

#[cfg(target_os = "none")]
mod guest {
    use alloc::collections::BTreeMap;

    use arch::abi;
    use arch::hypercall;
    use arch::mm::{PAGE_SIZE, Pte, data_flags, pfn_to_mfn};
    use spin::Mutex;
    use x86_64::VirtAddr;

    use super::*;

    /// Grant-table frames we ask for at boot: 4 frames, 2040 usable references.
    const BOOT_FRAMES: u32 = 4;

    static TABLE: Mutex<Option<GrantTable<'static>>> = Mutex::new(None);
    /// Where the table's frames are mapped (consecutive window pages), and how many.
    static FRAMES: Mutex<(VirtAddr, u32)> = Mutex::new((VirtAddr::zero(), 0));

    /// Ask Xen for `nr_frames` table frames (again after a suspend: their machine
    /// frames may be new). Returns their machine frames.
    fn setup_table(nr_frames: u32) -> Result<[u64; BOOT_FRAMES as usize], GrantError> {
        let mut frames = [0u64; BOOT_FRAMES as usize];
        let mut setup = abi::GnttabSetupTable {
            dom: abi::DOMID_SELF,
            pad0: 0,
            nr_frames,
            status: 0,
            pad1: [0; 3],
            frame_list: frames.as_mut_ptr(),
        };
        // SAFETY: `setup` is the struct GNTTABOP_setup_table expects; `frames` has
        // room for `nr_frames` (at most BOOT_FRAMES) entries.
        unsafe { hypercall::grant_table_op(abi::GNTTABOP_SETUP_TABLE, &raw mut setup, 1) }
            .map_err(|e| GrantError::Xen(-e.0))?;
        if setup.status != 0 {
            return Err(GrantError::Xen(setup.status.into()));
        }
        Ok(frames)
    }

    /// The table's entries, mapped at `base`.
    ///
    /// # Safety
    /// `nr_frames` table frames must be mapped read-write at `base` from now on.
    unsafe fn entries(base: VirtAddr, nr_frames: u32) -> &'static [GrantEntryV1] {
        let count = nr_frames as usize * ENTRIES_PER_FRAME;
        // SAFETY: guaranteed by the caller; GrantEntryV1 (atomics) may alias memory Xen
        // writes concurrently.
        unsafe { core::slice::from_raw_parts(base.as_ptr::<GrantEntryV1>(), count) }
    }

    /// Before a suspend, unmap what libxc refuses to save: other domains' pages we map
    /// ([`ForeignMapping`]) and our table's frames (Xen's pages). Nothing may grant,
    /// revoke or map until [`resume`]. Returns how many foreign pages were unmapped.
    pub(crate) fn suspend() -> Result<usize, GrantError> {
        let foreign = suspend_foreign()?;
        let (base, nr_frames) = *FRAMES.lock();
        for i in 0..nr_frames as usize {
            // SAFETY: the window page holds a table frame, unused until resume.
            unsafe { arch::mm::unmap_page(base + (i * PAGE_SIZE) as u64) }
                .map_err(|_| GrantError::NoAddressSpace)?;
        }
        Ok(foreign)
    }

    /// Map the table's frames again after a suspend. In a new domain the table is
    /// empty: grant every live frame again under its old reference
    /// ([`GrantTable::reinstate`]), at its new machine frame.
    pub(crate) fn resume(new_domain: bool) -> Result<(), GrantError> {
        let (base, nr_frames) = *FRAMES.lock();
        let frames = setup_table(nr_frames)?;
        for (i, &mfn) in frames[..nr_frames as usize].iter().enumerate() {
            let va = base + (i * PAGE_SIZE) as u64;
            // SAFETY: the window page is the table's (unmapped by `suspend`); table
            // frames are meant to be mapped read-write.
            unsafe { hypercall::update_va_mapping(va.as_u64(), Pte::new(mfn, data_flags()).0) }
                .map_err(|e| GrantError::Xen(-e.0))?;
        }
        if new_domain {
            // SAFETY: the frames were just mapped at `base`, for good.
            let entries = unsafe { entries(base, nr_frames) };
            let count = with_table(|table| table.reinstate(entries, pfn_to_mfn))?;
            log::debug!("grant: {count} grant(s) made again");
        }
        resume_foreign(new_domain);
        Ok(())
    }

    /// Set up the grant table and map its frames.
    pub(crate) fn init() -> Result<(), GrantError> {
        let mut query = abi::GnttabQuerySize {
            dom: abi::DOMID_SELF,
            ..Default::default()
        };
        // SAFETY: `query` is the struct GNTTABOP_query_size expects.
        unsafe { hypercall::grant_table_op(abi::GNTTABOP_QUERY_SIZE, &raw mut query, 1) }
            .map_err(|e| GrantError::Xen(-e.0))?;
        if query.status != 0 {
            return Err(GrantError::Xen(query.status.into()));
        }
        let nr_frames = BOOT_FRAMES.min(query.max_nr_frames);
        let frames = setup_table(nr_frames)?;
        // The frames must be virtually contiguous: map them in consecutive window pages.
        let mut base = VirtAddr::zero();
        for (i, &mfn) in frames[..nr_frames as usize].iter().enumerate() {
            let va = crate::mem::map_foreign(mfn, data_flags())
                .map_err(|_| GrantError::NoAddressSpace)?;
            if i == 0 {
                base = va;
            } else if va != base + (i * PAGE_SIZE) as u64 {
                return Err(GrantError::NoAddressSpace);
            }
        }
        *FRAMES.lock() = (base, nr_frames);
        // SAFETY: the frames are mapped read-write at `base`, but across a suspend
        // (when nothing uses the table).
        let entries = unsafe { entries(base, nr_frames) };
        *TABLE.lock() = Some(GrantTable::new(entries));
        Ok(())
    }

    fn with_table<T>(f: impl FnOnce(&mut GrantTable<'static>) -> T) -> T {
        f(TABLE
            .lock()
            .as_mut()
            .expect("grant table used before boot set it up"))
    }

    /// Let domain `domid` map our frame `pfn`.
    pub fn grant_access(domid: DomId, pfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        with_table(|table| table.grant(domid, pfn, pfn_to_mfn(pfn), readonly))
    }

    /// Let domain `domid` map our frame `pfn` at reserved reference `gref`, for good
    /// (see [`GrantTable::grant_reserved`]).
    pub fn grant_reserved(
        gref: GrantRef,
        domid: DomId,
        pfn: u64,
        readonly: bool,
    ) -> Result<(), GrantError> {
        with_table(|table| table.grant_reserved(gref, domid, pfn, pfn_to_mfn(pfn), readonly))
    }

    /// Withdraw a grant (fails while it is mapped).
    pub fn end_access(gref: GrantRef) -> Result<(), GrantError> {
        with_table(|table| table.revoke(gref))
    }

    /// Whether the other domain has `gref` mapped right now.
    pub fn is_mapped_by_peer(gref: GrantRef) -> bool {
        with_table(|table| table.in_use(gref))
    }

    /// References still free.
    pub fn free_refs() -> usize {
        with_table(|table| table.free_count())
    }

    /// A zeroed frame of ours, granted to another domain; the grant is revoked and the
    /// frame freed when dropped — or the frame is kept, if the other domain still maps
    /// it, so that it never sees memory we reuse.
    #[derive(Debug)]
    pub struct GrantedFrame {
        pfn: u64,
        gref: GrantRef,
    }

    impl GrantedFrame {
        /// Allocate a frame and grant it to `domid`.
        pub fn new(domid: DomId, readonly: bool) -> Result<Self, GrantError> {
            let pfn = crate::mem::alloc_frame().ok_or(GrantError::NoMemory)?;
            match grant_access(domid, pfn, readonly) {
                Ok(gref) => Ok(Self { pfn, gref }),
                Err(err) => {
                    crate::mem::free_frame(pfn);
                    Err(err)
                }
            }
        }

        /// The grant reference to hand the other domain.
        pub fn gref(&self) -> GrantRef {
            self.gref
        }

        /// The frame's address in our direct map.
        pub fn ptr(&self) -> *mut u8 {
            arch::mm::va_of_pfn(self.pfn).as_mut_ptr()
        }
    }

    impl Drop for GrantedFrame {
        fn drop(&mut self) {
            match end_access(self.gref) {
                Ok(()) => crate::mem::free_frame(self.pfn),
                Err(err) => log::warn!("keeping frame {:#x}: {err}", self.pfn),
            }
        }
    }

    /// A frame another domain granted us, mapped into our address space; unmapped when
    /// dropped. Across a suspend it is unmapped (libxc cannot save another domain's
    /// page) and mapped again if the domain goes on where it was; in a restored domain
    /// the grant is gone, and a scratch page of ours stands in until the owner drops it.
    #[derive(Debug)]
    pub struct ForeignMapping {
        va: VirtAddr,
    }

    /// A live foreign mapping, by its address: what a suspend unmaps and a resume
    /// maps again.
    #[derive(Debug, Clone, Copy)]
    struct Foreign {
        domid: DomId,
        gref: GrantRef,
        readonly: bool,
        /// Xen's handle of the mapping; `None` while unmapped for a suspend, or for
        /// good after a restore.
        handle: Option<u32>,
    }

    static FOREIGN: Mutex<BTreeMap<u64, Foreign>> = Mutex::new(BTreeMap::new());
    /// The page mapped where a foreign page was lost in a restore: reads see zeros,
    /// writes go nowhere that matters.
    static SCRATCH_PFN: Mutex<Option<u64>> = Mutex::new(None);

    /// Map grant `gref` of `domid` at window page `va`; returns Xen's handle.
    fn map_grant(
        va: VirtAddr,
        domid: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<u32, GrantError> {
        let mut op = abi::GnttabMapGrantRef {
            host_addr: va.as_u64(),
            flags: if readonly {
                abi::GrantMapFlags::HOST_MAP | abi::GrantMapFlags::READONLY
            } else {
                abi::GrantMapFlags::HOST_MAP
            }
            .bits(),
            ref_: gref,
            dom: domid,
            ..Default::default()
        };
        // SAFETY: `op` is the struct GNTTABOP_map_grant_ref expects; `va` is a window
        // page of ours with no mapping, whose L1 table exists, so Xen can write its entry.
        let result =
            unsafe { hypercall::grant_table_op(abi::GNTTABOP_MAP_GRANT_REF, &raw mut op, 1) };
        let status = match result {
            Err(errno) => -errno.0,
            Ok(()) => op.status.into(),
        };
        if status != 0 {
            return Err(GrantError::Xen(status));
        }
        Ok(op.handle)
    }

    /// Undo [`map_grant`].
    fn unmap_grant(va: VirtAddr, handle: u32) -> Result<(), GrantError> {
        let mut op = abi::GnttabUnmapGrantRef {
            host_addr: va.as_u64(),
            handle,
            ..Default::default()
        };
        // SAFETY: `op` is the struct GNTTABOP_unmap_grant_ref expects, for a mapping we
        // made and nobody uses now.
        let result =
            unsafe { hypercall::grant_table_op(abi::GNTTABOP_UNMAP_GRANT_REF, &raw mut op, 1) };
        match (result, op.status) {
            (Ok(()), 0) => Ok(()),
            (Err(errno), _) => Err(GrantError::Xen(-errno.0)),
            (Ok(()), status) => Err(GrantError::Xen(status.into())),
        }
    }

    /// Before a suspend: unmap every foreign page (they stay reserved). On failure the
    /// ones unmapped so far are mapped again.
    fn suspend_foreign() -> Result<usize, GrantError> {
        let mut foreign = FOREIGN.lock();
        let mut count = 0;
        for (&va, mapping) in foreign.iter_mut() {
            if let Some(handle) = mapping.handle {
                if let Err(err) = unmap_grant(VirtAddr::new_truncate(va), handle) {
                    drop(foreign);
                    resume_foreign(false);
                    return Err(err);
                }
                mapping.handle = None;
                count += 1;
            }
        }
        Ok(count)
    }

    /// After a suspend: in the same domain, map every foreign page again; in a new
    /// one (or where the grant went meanwhile), put the scratch page there.
    fn resume_foreign(new_domain: bool) {
        let mut foreign = FOREIGN.lock();
        for (&va, mapping) in foreign.iter_mut() {
            if mapping.handle.is_some() {
                continue;
            }
            let va = VirtAddr::new_truncate(va);
            if !new_domain {
                match map_grant(va, mapping.domid, mapping.gref, mapping.readonly) {
                    Ok(handle) => {
                        mapping.handle = Some(handle);
                        continue;
                    }
                    Err(err) => log::error!(
                        "grant {} of domain {} is gone after a suspend: {err}",
                        mapping.gref,
                        mapping.domid
                    ),
                }
            }
            map_scratch(va);
        }
    }

    /// Map the scratch page at `va` (see [`SCRATCH_PFN`]).
    fn map_scratch(va: VirtAddr) {
        let mut scratch = SCRATCH_PFN.lock();
        let pfn = match *scratch {
            Some(pfn) => pfn,
            None => match crate::mem::alloc_frame() {
                Some(pfn) => *scratch.insert(pfn),
                None => {
                    log::error!("no frame for a lost foreign page at {va:?}: left unmapped");
                    return;
                }
            },
        };
        // SAFETY: a window page with no mapping; the frame is ours, for this use only.
        let mapped = unsafe {
            hypercall::update_va_mapping(va.as_u64(), Pte::new(pfn_to_mfn(pfn), data_flags()).0)
        };
        if let Err(err) = mapped {
            log::error!("mapping the scratch page at {va:?}: {err}");
        }
    }

    impl ForeignMapping {
        /// Map grant `gref` of domain `domid`.
        pub fn map(domid: DomId, gref: GrantRef, readonly: bool) -> Result<Self, GrantError> {
            let va = crate::mem::reserve_window_page().map_err(|_| GrantError::NoAddressSpace)?;
            match map_grant(va, domid, gref, readonly) {
                Ok(handle) => {
                    let mapping = Foreign {
                        domid,
                        gref,
                        readonly,
                        handle: Some(handle),
                    };
                    FOREIGN.lock().insert(va.as_u64(), mapping);
                    Ok(Self { va })
                }
                Err(err) => {
                    crate::mem::release_window_page(va);
                    Err(err)
                }
            }
        }

        /// The mapped page.
        pub fn as_ptr(&self) -> *mut u8 {
            self.va.as_mut_ptr()
        }

        /// The mapped page, never null.
        pub fn as_non_null(&self) -> core::ptr::NonNull<u8> {
            // SAFETY: window addresses are far from zero.
            unsafe { core::ptr::NonNull::new_unchecked(self.as_ptr()) }
        }
    }

    impl Drop for ForeignMapping {
        fn drop(&mut self) {
            let mapping = FOREIGN.lock().remove(&self.va.as_u64());
            let unmapped = match mapping.and_then(|mapping| mapping.handle) {
                Some(handle) => unmap_grant(self.va, handle),
                None => {
                    // SAFETY: the scratch page (or nothing) is mapped there, and nobody
                    // uses the address any more.
                    unsafe { arch::mm::unmap_page(self.va) }.map_err(|_| GrantError::NoAddressSpace)
                }
            };
            match unmapped {
                Ok(()) => crate::mem::release_window_page(self.va),
                // Keep the window page: its entry may still map the frame.
                Err(err) => log::error!("unmapping the foreign page at {:?}: {err}", self.va),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<GrantEntryV1> {
        (0..n).map(|_| GrantEntryV1::default()).collect()
    }

    #[test]
    fn layout_matches_grant_entry_v1() {
        assert_eq!(size_of::<GrantEntryV1>(), 8);
        assert_eq!(ENTRIES_PER_FRAME, 512);
    }

    #[test]
    fn grants_skip_reserved_refs_and_fill_the_entry() {
        let entries = table(16);
        let mut t = GrantTable::new(&entries);
        assert_eq!(t.free_count(), 8);
        let gref = t.grant(7, 0x1234, 0x1234, true).unwrap();
        assert_eq!(gref, RESERVED_REFS);
        let e = &entries[gref as usize];
        assert_eq!(
            e.flags.load(Ordering::Relaxed),
            (GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY).bits()
        );
        assert_eq!(e.domid.load(Ordering::Relaxed), 7);
        assert_eq!(e.frame.load(Ordering::Relaxed), 0x1234);
        let writable = t.grant(7, 0x99, 0x99, false).unwrap();
        assert_eq!(
            entries[writable as usize].flags.load(Ordering::Relaxed),
            GrantFlags::PERMIT_ACCESS.bits()
        );
    }

    #[test]
    fn table_full_and_oversized_frames_are_errors() {
        let entries = table(10);
        let mut t = GrantTable::new(&entries);
        t.grant(1, 1, 1, false).unwrap();
        t.grant(1, 2, 2, false).unwrap();
        assert_eq!(t.grant(1, 3, 3, false), Err(GrantError::TableFull));
        let entries = table(10);
        let mut t = GrantTable::new(&entries);
        assert_eq!(
            t.grant(1, 1 << 32, 1 << 32, false),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
        assert_eq!(
            t.free_count(),
            2,
            "a failed grant must not consume a reference"
        );
    }

    #[test]
    fn reserved_refs_are_filled_once_and_only_from_2_to_7() {
        let entries = table(16);
        let mut t = GrantTable::new(&entries);
        for gref in [0, 1, RESERVED_REFS, 15, 99] {
            assert_eq!(
                t.grant_reserved(gref, 0, 0x55, 0x55, false),
                Err(GrantError::NotReservable(gref))
            );
        }
        assert!(entries.iter().all(|e| e.flags.load(Ordering::Relaxed) == 0));
        assert_eq!(
            t.grant_reserved(2, 0, 1 << 32, 1 << 32, false),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
        t.grant_reserved(2, 4, 0x55, 0x55, false).unwrap();
        let e = &entries[2];
        assert_eq!(
            e.flags.load(Ordering::Relaxed),
            GrantFlags::PERMIT_ACCESS.bits()
        );
        assert_eq!(e.domid.load(Ordering::Relaxed), 4);
        assert_eq!(e.frame.load(Ordering::Relaxed), 0x55);
        assert_eq!(
            t.grant_reserved(2, 0, 0x66, 0x66, true),
            Err(GrantError::AlreadyGranted(2))
        );
        assert_eq!(e.frame.load(Ordering::Relaxed), 0x55);
        // Not from the pool, and not revocable: the peer may map it at any time.
        assert_eq!(t.free_count(), 8);
        assert_eq!(t.revoke(2), Err(GrantError::NotGranted(2)));
        t.grant_reserved(7, 0, 0x77, 0x77, true).unwrap();
        assert_eq!(
            entries[7].flags.load(Ordering::Relaxed),
            (GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY).bits()
        );
    }

    #[test]
    fn reinstate_grants_every_live_frame_again_at_its_new_machine_frame() {
        let old = table(16);
        let mut t = GrantTable::new(&old);
        let kept = t.grant(0, 0x10, 0x9010, false).unwrap();
        let gone = t.grant(0, 0x11, 0x9011, false).unwrap();
        let readonly = t.grant(5, 0x12, 0x9012, true).unwrap();
        t.grant_reserved(2, 0, 0x13, 0x9013, false).unwrap();
        t.revoke(gone).unwrap();
        // The backend's marks on the old table mean nothing to the new one.
        old[kept as usize]
            .flags
            .fetch_or(GrantFlags::WRITING.bits(), Ordering::Relaxed);
        let new = table(16);
        assert_eq!(t.reinstate(&new, |pfn| pfn + 0x100), Ok(3));
        let entry = |gref: GrantRef| {
            let e = &new[gref as usize];
            (
                e.flags.load(Ordering::Relaxed),
                e.domid.load(Ordering::Relaxed),
                e.frame.load(Ordering::Relaxed),
            )
        };
        let rw = GrantFlags::PERMIT_ACCESS.bits();
        let ro = (GrantFlags::PERMIT_ACCESS | GrantFlags::READONLY).bits();
        assert_eq!(entry(kept), (rw, 0, 0x110));
        assert_eq!(entry(readonly), (ro, 5, 0x112));
        assert_eq!(entry(2), (rw, 0, 0x113));
        assert_eq!(entry(gone), (0, 0, 0), "a revoked grant stays revoked");
        assert_eq!(entry(0), (0, 0, 0), "0 and 1 are the toolstack's to seed");
        // Bookkeeping goes on in the new table: revoke there, reuse the reference.
        t.revoke(kept).unwrap();
        assert_eq!(entry(kept).0, 0);
        assert_eq!(t.grant(1, 0x20, 0x120, false), Ok(kept));
        assert_eq!(
            t.reinstate(&table(16), |_| 1 << 32),
            Err(GrantError::FrameTooLarge(1 << 32))
        );
    }

    #[test]
    fn revoke_waits_for_the_peer_to_unmap() {
        let entries = table(16);
        let mut t = GrantTable::new(&entries);
        let gref = t.grant(3, 42, 42, false).unwrap();
        // Xen marks the entry while the peer has it mapped.
        entries[gref as usize]
            .flags
            .fetch_or(GrantFlags::IN_USE.bits(), Ordering::Relaxed);
        assert!(t.in_use(gref));
        assert_eq!(t.revoke(gref), Err(GrantError::InUse(gref)));
        assert_eq!(t.free_count(), 7);
        entries[gref as usize]
            .flags
            .fetch_and(!GrantFlags::IN_USE.bits(), Ordering::Relaxed);
        t.revoke(gref).unwrap();
        assert_eq!(entries[gref as usize].flags.load(Ordering::Relaxed), 0);
        assert_eq!(t.free_count(), 8);
        assert_eq!(t.revoke(gref), Err(GrantError::NotGranted(gref)));
        assert_eq!(t.revoke(2), Err(GrantError::NotGranted(2)));
        assert_eq!(t.revoke(999), Err(GrantError::NotGranted(999)));
        // The reference is reused.
        assert_eq!(t.grant(3, 43, 43, false), Ok(gref));
    }
}
