//! Memory another domain maps too: the one way this workspace reads and writes it.
//!
//! Every access goes through the `volatile` crate, so the compiler neither drops,
//! merges nor repeats it; the peer may change the bytes at any time, so what is read is
//! a copy, taken once and validated afterwards, never a reference into the page. The
//! crate's slice operations need nightly: [`SharedBytes`] offers the byte-range copies
//! the protocols need on stable, each bounds-checked.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ptr::NonNull;

use volatile::VolatilePtr;

/// A byte range of shared memory (a ring's data array, a control page), valid for `'a`.
#[derive(Debug, Clone, Copy)]
pub struct SharedBytes<'a> {
    base: NonNull<u8>,
    len: usize,
    _memory: PhantomData<&'a [u8]>,
}

impl<'a> SharedBytes<'a> {
    /// The `len` bytes at `base`.
    ///
    /// # Safety
    /// `base` must point to `len` bytes that stay mapped and writable for `'a`; the
    /// only other party that writes them is the peer (no reference to them exists).
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base,
            len,
            _memory: PhantomData,
        }
    }

    /// The bytes of a ring array inside a shared page's struct (`UnsafeCell`: the peer
    /// writes them), for as long as the struct is borrowed.
    pub fn of_cell<const N: usize>(cell: &'a UnsafeCell<[u8; N]>) -> Self {
        // SAFETY: the cell's N bytes live for 'a, and an UnsafeCell's contents may be
        // written through a shared borrow; nothing hands out references to them.
        unsafe { Self::new(NonNull::from(cell).cast(), N) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A volatile pointer to the `T` at `at`, after checking it lies inside and is
    /// aligned.
    fn at<T>(&self, at: usize) -> VolatilePtr<'a, T> {
        let end = at.checked_add(size_of::<T>());
        assert!(
            end.is_some_and(|end| end <= self.len),
            "shared access of {} bytes at {at} past {} bytes",
            size_of::<T>(),
            self.len
        );
        // SAFETY: inside the range (checked above), which `new`'s caller vouched for.
        let pointer = unsafe { self.base.add(at) }.cast::<T>();
        assert!(pointer.is_aligned(), "misaligned shared access at {at}");
        // SAFETY: valid, aligned memory for 'a that no reference covers (see `new`).
        unsafe { VolatilePtr::new(pointer) }
    }

    /// One copy of the `N` bytes at `at`.
    pub fn read<const N: usize>(&self, at: usize) -> [u8; N] {
        self.at::<[u8; N]>(at).read()
    }

    /// Write `bytes` at `at`.
    pub fn write<const N: usize>(&self, at: usize, bytes: [u8; N]) {
        self.at::<[u8; N]>(at).write(bytes);
    }

    /// The little-endian, 4-byte aligned word at `at`, read in one access.
    pub fn read_u32(&self, at: usize) -> u32 {
        u32::from_le(self.at::<u32>(at).read())
    }

    /// Write the little-endian, 4-byte aligned word at `at` in one access.
    pub fn write_u32(&self, at: usize, value: u32) {
        self.at::<u32>(at).write(value.to_le());
    }

    /// Copy `out.len()` bytes from `at` into private memory.
    pub fn copy_out(&self, at: usize, out: &mut [u8]) {
        let bytes = self.bytes(at, out.len());
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: i < the length `bytes` checked.
            *byte = unsafe { VolatilePtr::new(bytes.add(i)) }.read();
        }
    }

    /// Copy `bytes` in from `at`.
    pub fn copy_in(&self, at: usize, bytes: &[u8]) {
        let shared = self.bytes(at, bytes.len());
        for (i, &byte) in bytes.iter().enumerate() {
            // SAFETY: i < the length `bytes` checked.
            unsafe { VolatilePtr::new(shared.add(i)) }.write(byte);
        }
    }

    /// The first of the `len` bytes at `at`, after checking they lie inside.
    fn bytes(&self, at: usize, len: usize) -> NonNull<u8> {
        assert!(
            at.checked_add(len).is_some_and(|end| end <= self.len),
            "shared copy of {len} bytes at {at} past {} bytes",
            self.len
        );
        // SAFETY: inside the range (checked above; `at` may equal its end when empty).
        unsafe { self.base.add(at) }
    }
}

/// One copy of the `T` at `pointer`, which another domain may be writing.
///
/// # Safety
/// `pointer` must be valid and aligned for reads of `T`, and every bit pattern must be a
/// valid `T` (plain integers).
pub unsafe fn read<T: Copy>(pointer: NonNull<T>) -> T {
    // SAFETY: guaranteed by the caller; the VolatilePtr lives for this one read.
    unsafe { VolatilePtr::new_read_only(pointer) }.read()
}

/// Write `value` at `pointer`, which another domain may be reading.
///
/// # Safety
/// `pointer` must be valid and aligned for writes of `T`, with no reference to it alive.
pub unsafe fn write<T: Copy>(pointer: NonNull<T>, value: T) {
    // SAFETY: guaranteed by the caller; the VolatilePtr lives for this one write.
    unsafe { VolatilePtr::new(pointer) }.write(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_stay_inside_and_words_are_little_endian() {
        let mut page = [0u32; 16];
        // SAFETY: `page` outlives `shared` and is only touched through it below.
        let shared = unsafe { SharedBytes::new(NonNull::from(&mut page).cast(), 64) };
        shared.write_u32(4, 0x0403_0201);
        assert_eq!(shared.read::<4>(4), [1, 2, 3, 4]);
        shared.copy_in(62, &[9, 8]);
        let mut out = [0; 3];
        shared.copy_out(61, &mut out);
        assert_eq!(out, [0, 9, 8]);
        shared.write(8, [0xff; 2]);
        assert_eq!(shared.read_u32(8), 0xffff);
        assert_eq!(shared.len(), 64);
    }
}
