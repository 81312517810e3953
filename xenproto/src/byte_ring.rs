//! A byte ring: a power-of-two data array with free-running 32-bit producer and
//! consumer indices, as the PV console (`io/console.h`) and Xenstore (`io/xs_wire.h`)
//! rings use. A producer copies bytes in, then publishes them by advancing its index
//! with release ordering; a consumer reads the index with acquire ordering, copies,
//! then advances its own index.

use core::sync::atomic::{AtomicU32, Ordering};

/// The peer left the indices in a state no correct peer produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCorrupt {
    pub prod: u32,
    pub cons: u32,
    pub size: u32,
}

impl core::fmt::Display for RingCorrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ring corrupt: producer {} is {} bytes ahead of consumer {} in a ring of {}",
            self.prod,
            self.prod.wrapping_sub(self.cons),
            self.cons,
            self.size
        )
    }
}

/// One direction of a shared page.
#[derive(Debug, Clone, Copy)]
pub struct Ring<'a> {
    data: *mut u8,
    size: u32,
    cons: &'a AtomicU32,
    prod: &'a AtomicU32,
}

impl<'a> Ring<'a> {
    /// A ring over `size` bytes at `data` with the given indices.
    ///
    /// # Safety
    /// `data` must point to `size` bytes that stay valid for `'a` (shared memory the
    /// peer may write), and `size` must be a power of two.
    pub unsafe fn new(data: *mut u8, size: u32, cons: &'a AtomicU32, prod: &'a AtomicU32) -> Self {
        debug_assert!(size.is_power_of_two());
        Self {
            data,
            size,
            cons,
            prod,
        }
    }

    /// Bytes published and not yet consumed.
    pub fn pending(&self) -> Result<u32, RingCorrupt> {
        let prod = self.prod.load(Ordering::Acquire);
        let cons = self.cons.load(Ordering::Acquire);
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(RingCorrupt {
                prod,
                cons,
                size: self.size,
            });
        }
        Ok(used)
    }

    /// Producer side: copy as much of `bytes` as fits and publish it. Returns how many
    /// bytes were taken (0 when the ring is full).
    pub fn produce(&self, bytes: &[u8]) -> Result<usize, RingCorrupt> {
        let prod = self.prod.load(Ordering::Relaxed);
        let free = self.size - self.pending()?;
        let count = bytes.len().min(free as usize);
        for (i, &byte) in bytes[..count].iter().enumerate() {
            let at = prod.wrapping_add(i as u32) & (self.size - 1);
            // SAFETY: `at` < size, inside the ring's data array; the consumer does not
            // read unpublished bytes, so the write races with no correct peer.
            unsafe { self.data.add(at as usize).write_volatile(byte) };
        }
        self.prod
            .store(prod.wrapping_add(count as u32), Ordering::Release);
        Ok(count)
    }

    /// Consumer side: copy out up to `out.len()` published bytes and release their
    /// space. Returns how many were copied.
    pub fn consume(&self, out: &mut [u8]) -> Result<usize, RingCorrupt> {
        let cons = self.cons.load(Ordering::Relaxed);
        let count = out.len().min(self.pending()? as usize);
        for (i, slot) in out[..count].iter_mut().enumerate() {
            let at = cons.wrapping_add(i as u32) & (self.size - 1);
            // SAFETY: `at` < size; a volatile read of shared memory the peer may
            // (wrongly) still write yields some byte, never undefined behaviour.
            *slot = unsafe { self.data.add(at as usize).read_volatile() };
        }
        self.cons
            .store(cons.wrapping_add(count as u32), Ordering::Release);
        Ok(count)
    }
}
