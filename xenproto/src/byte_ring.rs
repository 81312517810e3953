//! A byte ring: a power-of-two data array with free-running 32-bit producer and
//! consumer indices, as the PV console (`io/console.h`) and Xenstore (`io/xs_wire.h`)
//! rings use. A producer copies bytes in, then publishes them by advancing its index
//! with release ordering; a consumer reads the index with acquire ordering, copies,
//! then advances its own index.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::shared::SharedBytes;

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
    data: SharedBytes<'a>,
    size: u32,
    cons: &'a AtomicU32,
    prod: &'a AtomicU32,
}

impl<'a> Ring<'a> {
    /// A ring over the bytes of `data` (a power of two of them) with the given indices.
    pub fn new(data: SharedBytes<'a>, cons: &'a AtomicU32, prod: &'a AtomicU32) -> Self {
        assert!(data.len().is_power_of_two() && u32::try_from(data.len()).is_ok());
        Self {
            data,
            size: data.len() as u32,
            cons,
            prod,
        }
    }

    /// Where index `index` falls in the data, and how many bytes lie from there to
    /// the end (where the ring wraps).
    fn position(&self, index: u32) -> (usize, usize) {
        let at = (index & (self.size - 1)) as usize;
        (at, self.size as usize - at)
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
        // The consumer does not read unpublished bytes: no correct peer races with us.
        let (at, to_end) = self.position(prod);
        let (first, wrapped) = bytes[..count].split_at(count.min(to_end));
        self.data.copy_in(at, first);
        self.data.copy_in(0, wrapped);
        self.prod
            .store(prod.wrapping_add(count as u32), Ordering::Release);
        Ok(count)
    }

    /// Consumer side: copy out up to `out.len()` published bytes and release their
    /// space. Returns how many were copied.
    pub fn consume(&self, out: &mut [u8]) -> Result<usize, RingCorrupt> {
        let cons = self.cons.load(Ordering::Relaxed);
        let count = out.len().min(self.pending()? as usize);
        let (at, to_end) = self.position(cons);
        let (first, wrapped) = out[..count].split_at_mut(count.min(to_end));
        self.data.copy_out(at, first);
        self.data.copy_out(0, wrapped);
        self.cons
            .store(cons.wrapping_add(count as u32), Ordering::Release);
        Ok(count)
    }

    /// Consumer side: drop everything published and not consumed (a Xenstore client
    /// resuming in a new domain: what the old connection sent is of no use). Returns how
    /// many bytes were dropped.
    pub fn discard(&self) -> Result<u32, RingCorrupt> {
        let count = self.pending()?;
        self.cons
            .store(self.prod.load(Ordering::Acquire), Ordering::Release);
        Ok(count)
    }

    /// Producer side: whether the consumer has taken everything published.
    pub fn is_drained(&self) -> Result<bool, RingCorrupt> {
        self.pending().map(|used| used == 0)
    }
}

#[cfg(test)]
mod tests {
    use core::cell::UnsafeCell;

    use super::*;

    #[test]
    fn discard_drops_what_is_pending_and_drained_follows_the_consumer() {
        let data = UnsafeCell::new([0u8; 8]);
        let (cons, prod) = (AtomicU32::new(u32::MAX - 2), AtomicU32::new(u32::MAX - 2));
        let ring = Ring::new(SharedBytes::of_cell(&data), &cons, &prod);
        assert_eq!(ring.is_drained(), Ok(true));
        assert_eq!(ring.produce(b"hello"), Ok(5));
        assert_eq!(ring.is_drained(), Ok(false));
        let mut out = [0u8; 2];
        assert_eq!(ring.consume(&mut out), Ok(2));
        assert_eq!(ring.discard(), Ok(3), "the rest, across the index wrap");
        assert_eq!(ring.is_drained(), Ok(true));
        assert_eq!(ring.consume(&mut out), Ok(0));
        prod.store(
            cons.load(Ordering::Relaxed).wrapping_add(9),
            Ordering::Relaxed,
        );
        assert!(
            ring.discard().is_err(),
            "a corrupt ring is reported, not skipped"
        );
    }
}
