//! The PV console ring (`xen/include/public/io/console.h`, `struct xencons_interface`).
//!
//! One page holds two byte rings: `in` (back end → guest, 1024 bytes) and `out`
//! (guest → back end, 2048 bytes).

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicU32;

pub use crate::byte_ring::{Ring, RingCorrupt};
use crate::shared::SharedBytes;

/// Size of the guest-bound ring.
pub const IN_SIZE: usize = 1024;
/// Size of the back-end-bound ring.
pub const OUT_SIZE: usize = 2048;

/// `struct xencons_interface`, as it lies at the start of the console page.
#[repr(C)]
pub struct ConsoleInterface {
    input: UnsafeCell<[u8; IN_SIZE]>,
    output: UnsafeCell<[u8; OUT_SIZE]>,
    in_cons: AtomicU32,
    in_prod: AtomicU32,
    out_cons: AtomicU32,
    out_prod: AtomicU32,
}

// SAFETY: the indices are atomics, and the data bytes are only touched through
// `Ring`, which copies them with volatile accesses within the bounds the protocol
// gives each side; the struct is designed to be shared between domains.
unsafe impl Sync for ConsoleInterface {}

impl core::fmt::Debug for ConsoleInterface {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConsoleInterface")
            .field("in_cons", &self.in_cons)
            .field("in_prod", &self.in_prod)
            .field("out_cons", &self.out_cons)
            .field("out_prod", &self.out_prod)
            .finish_non_exhaustive()
    }
}

impl Default for ConsoleInterface {
    fn default() -> Self {
        Self {
            input: UnsafeCell::new([0; IN_SIZE]),
            output: UnsafeCell::new([0; OUT_SIZE]),
            in_cons: AtomicU32::new(0),
            in_prod: AtomicU32::new(0),
            out_cons: AtomicU32::new(0),
            out_prod: AtomicU32::new(0),
        }
    }
}

impl ConsoleInterface {
    /// The console interface at the start of a shared page.
    ///
    /// # Safety
    /// `page` must point to a mapped, writable page that stays mapped for `'a`.
    pub unsafe fn from_page<'a>(page: *mut u8) -> &'a Self {
        // SAFETY: guaranteed by the caller; the struct is smaller than a page and any
        // bit pattern is a valid value for it.
        unsafe { &*page.cast::<Self>() }
    }

    /// The guest → back end ring (the guest produces, the back end consumes).
    pub fn output(&self) -> Ring<'_> {
        Ring::new(
            SharedBytes::of_cell(&self.output),
            &self.out_cons,
            &self.out_prod,
        )
    }

    /// The back end → guest ring.
    pub fn input(&self) -> Ring<'_> {
        Ring::new(
            SharedBytes::of_cell(&self.input),
            &self.in_cons,
            &self.in_prod,
        )
    }
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;
    use core::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn layout_matches_xencons_interface() {
        assert_eq!(size_of::<ConsoleInterface>(), 1024 + 2048 + 16);
        assert_eq!(offset_of!(ConsoleInterface, output), 1024);
        assert_eq!(offset_of!(ConsoleInterface, in_cons), 3072);
        assert_eq!(offset_of!(ConsoleInterface, out_prod), 3084);
    }

    #[test]
    fn front_and_back_agree_across_wrap_around() {
        let page = Box::new(ConsoleInterface::default());
        let (front, back) = (page.output(), page.output());
        let mut expected = Vec::new();
        let mut received = Vec::new();
        let mut next = 0u8;
        // Chunk sizes around the ring size exercise every wrap position.
        for chunk in [1023, 1024, 2047, 2048, 1, 3000, 17] {
            let data: Vec<u8> = (0..chunk)
                .map(|_| {
                    next = next.wrapping_add(7);
                    next
                })
                .collect();
            let mut offered = &data[..];
            while !offered.is_empty() {
                let taken = front.produce(offered).unwrap();
                expected.extend_from_slice(&offered[..taken]);
                offered = &offered[taken..];
                let mut buf = [0u8; 700];
                loop {
                    let n = back.consume(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    received.extend_from_slice(&buf[..n]);
                }
            }
        }
        assert_eq!(received, expected);
        assert_eq!(back.pending(), Ok(0));
    }

    #[test]
    fn full_ring_takes_nothing_more() {
        let page = Box::new(ConsoleInterface::default());
        let out = page.output();
        assert_eq!(out.produce(&[1; 5000]), Ok(OUT_SIZE));
        assert_eq!(out.produce(b"x"), Ok(0));
        assert_eq!(out.pending(), Ok(OUT_SIZE as u32));
    }

    #[test]
    fn indices_from_a_hostile_peer_are_rejected() {
        let page = Box::new(ConsoleInterface::default());
        // The peer claims 5000 bytes are waiting in a 1024-byte ring.
        page.in_prod.store(5000, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        let err = page.input().consume(&mut buf).unwrap_err();
        assert_eq!(
            err,
            RingCorrupt {
                prod: 5000,
                cons: 0,
                size: 1024
            }
        );
        // A consumer index ahead of the producer is just as broken.
        page.out_cons.store(10, Ordering::Relaxed);
        assert!(page.output().produce(b"hi").is_err());
        // Indices that wrapped around u32 are fine.
        page.out_cons.store(u32::MAX - 1, Ordering::Relaxed);
        page.out_prod.store(u32::MAX - 1, Ordering::Relaxed);
        assert_eq!(page.output().produce(b"abcd"), Ok(4));
        assert_eq!(page.output().pending(), Ok(4));
    }
}
