//! Memory: the direct map of all guest frames, a frame allocator, the heap, and the
//! window for foreign mappings.
//!
//! At boot every frame past the bootstrap region is mapped (see [`arch::mm`]) and then
//! split in two: half goes to the heap (`alloc`), half stays in the frame allocator
//! for whole pages that must be page aligned or shared with other domains (grants,
//! rings). The frame allocator's bitmap lives in its first frames.

pub mod bitmap;

#[cfg(target_os = "none")]
pub use guest::*;

#[cfg(target_os = "none")]
mod guest {
    use core::sync::atomic::{AtomicU64, Ordering};

    use arch::mm::{self, PAGE_SIZE, va_of_pfn};
    use spin::Mutex;
    use x86_64::VirtAddr;
    use x86_64::structures::paging::PageTableFlags;

    use super::bitmap::BitmapAllocator;
    use crate::start_info::BootInfo;

    #[global_allocator]
    static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

    static FRAMES: Mutex<Option<BitmapAllocator<'static>>> = Mutex::new(None);
    static TOTAL_PAGES: AtomicU64 = AtomicU64::new(0);
    static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

    const WINDOW_WORDS: usize = BitmapAllocator::words_for(mm::WINDOW_PAGES as u64);
    static mut WINDOW_BITS: [u64; WINDOW_WORDS] = [0; WINDOW_WORDS];
    static WINDOW: Mutex<Option<BitmapAllocator<'static>>> = Mutex::new(None);

    /// Memory could not be set up.
    #[derive(Debug)]
    pub enum MemError {
        Map(mm::MapError),
        TooSmall { pages: u64 },
    }

    impl core::fmt::Display for MemError {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Self::Map(err) => write!(f, "extending the direct map: {err}"),
                Self::TooSmall { pages } => {
                    write!(f, "only {pages} free pages after boot: too little memory")
                }
            }
        }
    }

    /// Map all memory and set up the frame allocator, the heap and the window.
    pub(crate) fn init(boot: &BootInfo) -> Result<(), MemError> {
        TOTAL_PAGES.store(boot.nr_pages, Ordering::Relaxed);
        // Page tables for the rest of the direct map come from the first free frames,
        // which Xen's bootstrap mapping already covers.
        let mut next = boot.first_free_pfn;
        let mut bump = || {
            let pfn = next;
            next += 1;
            Some(pfn)
        };
        // SAFETY: the frames past the bootstrap region are ours and unused.
        unsafe { mm::extend_direct_map(boot.nr_pages, &mut bump) }.map_err(MemError::Map)?;
        let end = mm::direct_map_end();
        if end < next + 16 {
            return Err(MemError::TooSmall {
                pages: end.saturating_sub(next),
            });
        }

        // The allocator's bitmap takes the first frames of the free range.
        let count = end - next;
        let words = BitmapAllocator::words_for(count);
        let bitmap_pages = (words * 8).div_ceil(PAGE_SIZE) as u64;
        // SAFETY: these frames are free, mapped read-write, and handed to nothing else.
        let bits = unsafe { core::slice::from_raw_parts_mut(va_of_pfn(next).as_mut_ptr(), words) };
        let mut frames = BitmapAllocator::new(bits, next + bitmap_pages, count - bitmap_pages);

        // Half of the rest is the heap, in one contiguous run.
        let heap_pages = frames.free_count() / 2;
        let heap_pfn = frames
            .alloc_contiguous(heap_pages)
            .ok_or(MemError::TooSmall { pages: count })?;
        let heap_bytes = heap_pages as usize * PAGE_SIZE;
        let heap = va_of_pfn(heap_pfn).as_mut_ptr();
        // SAFETY: the run is mapped, unused and owned by the heap from now on.
        unsafe { HEAP.lock().init(heap, heap_bytes) };
        HEAP_BYTES.store(heap_bytes as u64, Ordering::Relaxed);
        *FRAMES.lock() = Some(frames);

        // SAFETY: WINDOW_BITS is only ever borrowed here, once.
        let window_bits = unsafe { &mut *core::ptr::addr_of_mut!(WINDOW_BITS) };
        *WINDOW.lock() = Some(BitmapAllocator::new(
            window_bits,
            0,
            mm::WINDOW_PAGES as u64,
        ));

        // An overflow of the boot stack now faults instead of corrupting memory.
        // SAFETY: the guard page is part of the stack array and never used.
        let _ = unsafe { mm::unmap_page(arch::boot::stack_guard_page()) };
        Ok(())
    }

    /// Pages of memory the domain has.
    pub fn total_pages() -> u64 {
        TOTAL_PAGES.load(Ordering::Relaxed)
    }

    /// Bytes of memory the domain has.
    pub fn total_bytes() -> u64 {
        total_pages() * PAGE_SIZE as u64
    }

    /// Bytes given to the heap at boot.
    pub fn heap_bytes() -> u64 {
        HEAP_BYTES.load(Ordering::Relaxed)
    }

    /// Frames left in the frame allocator.
    pub fn free_frames() -> u64 {
        FRAMES
            .lock()
            .as_ref()
            .map_or(0, BitmapAllocator::free_count)
    }

    /// Take a free frame (a pfn, mapped at `va_of_pfn(pfn)`), zeroed.
    pub fn alloc_frame() -> Option<u64> {
        let pfn = FRAMES.lock().as_mut()?.alloc()?;
        // SAFETY: the frame is mapped and now exclusively ours.
        unsafe { va_of_pfn(pfn).as_mut_ptr::<u8>().write_bytes(0, PAGE_SIZE) };
        Some(pfn)
    }

    /// Return a frame taken with [`alloc_frame`].
    pub fn free_frame(pfn: u64) {
        if let Some(frames) = FRAMES.lock().as_mut()
            && let Err(err) = frames.free(pfn)
        {
            panic!("free_frame: {err}");
        }
    }

    /// Map machine frame `mfn` in the window; returns its address.
    pub(crate) fn map_foreign(mfn: u64, flags: PageTableFlags) -> Result<VirtAddr, mm::MapError> {
        let va = reserve_window_page()?;
        // SAFETY: the window page is unused; the frame is one Xen lets us map.
        let mapped = unsafe { mm::map_page(va, mfn, flags, &mut alloc_frame) };
        if let Err(err) = mapped {
            release_window_page(va);
            return Err(err);
        }
        Ok(va)
    }

    /// A window page whose L1 table exists, for Xen to map something into.
    pub(crate) fn reserve_window_page() -> Result<VirtAddr, mm::MapError> {
        let slot = WINDOW
            .lock()
            .as_mut()
            .and_then(BitmapAllocator::alloc)
            .ok_or(mm::MapError::OutOfFrames)?;
        let va = mm::WINDOW_BASE + slot * PAGE_SIZE as u64;
        if let Err(err) = mm::prepare_page(va, &mut alloc_frame) {
            release_window_page(va);
            return Err(err);
        }
        Ok(va)
    }

    /// Give back a window page (its mapping must already be gone).
    pub(crate) fn release_window_page(va: VirtAddr) {
        let slot = (va - mm::WINDOW_BASE) / PAGE_SIZE as u64;
        if let Some(window) = WINDOW.lock().as_mut() {
            let _ = window.free(slot);
        }
    }
}
