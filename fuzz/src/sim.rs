//! A simulated guest for the back-end targets: a few granted pages with random
//! contents, reached by grant copy as the daemon reaches a real guest's, and a record
//! of what the engine must never do.

use std::cell::RefCell;
use std::collections::HashMap;

use proptest::prelude::*;
use xendevd::engine::memory::{
    Direction, GNTST_BAD_COPY_ARG, GNTST_OKAY, GuestMemory, PAGE_SIZE, Span,
};

/// `GNTST_bad_gntref`: what Xen answers for a grant the guest has not issued.
const GNTST_BAD_GNTREF: i16 = -3;

/// Grants the simulated guest has issued.
pub const GRANTED: [u32; 4] = [8, 9, 10, 11];

/// What the engine must never do; recorded, then turned into a failure.
pub type Violations = RefCell<Vec<String>>;

/// A grant reference: mostly one the guest issued, sometimes anything.
pub fn gref() -> impl Strategy<Value = u32> {
    prop_oneof![4 => prop::sample::select(GRANTED.to_vec()), 1 => any::<u32>()]
}

/// The contents of the [`GRANTED`] pages.
pub fn granted_pages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(noise(PAGE_SIZE), GRANTED.len())
}

/// `len` random bytes from one generated seed (splitmix64): a byte-by-byte strategy
/// costs a value tree per byte, which made page-sized inputs the bulk of each case.
/// The bytes do not shrink; the shaped fields around them do.
pub fn noise(len: usize) -> impl Strategy<Value = Vec<u8>> {
    any::<u64>().prop_map(move |mut seed| {
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    })
}

pub struct SimGuest<'a> {
    pages: HashMap<u32, Box<[u8; PAGE_SIZE]>>,
    violations: &'a Violations,
}

impl<'a> SimGuest<'a> {
    /// A guest whose [`GRANTED`] pages hold `contents`.
    pub fn new(contents: &[Vec<u8>], violations: &'a Violations) -> Self {
        let pages = GRANTED
            .iter()
            .zip(contents)
            .map(|(&gref, bytes)| {
                let mut page = Box::new([0u8; PAGE_SIZE]);
                page.copy_from_slice(bytes);
                (gref, page)
            })
            .collect();
        Self { pages, violations }
    }
}

impl GuestMemory for SimGuest<'_> {
    fn copy(
        &mut self,
        direction: Direction,
        spans: &[Span],
        buf: &mut [u8],
        status: &mut Vec<i16>,
    ) {
        status.clear();
        for span in spans {
            // The engines check every span against its page and buffer before asking:
            // one that does not fit is their bug, even though Xen would refuse it too.
            if !span.fits(buf.len()) {
                self.violations.borrow_mut().push(format!(
                    "grant copy of a span outside its page or buffer: {span:?} (buffer of {})",
                    buf.len()
                ));
                status.push(GNTST_BAD_COPY_ARG);
                continue;
            }
            let Some(page) = self.pages.get_mut(&span.gref) else {
                status.push(GNTST_BAD_GNTREF);
                continue;
            };
            let (offset, len) = (usize::from(span.offset), usize::from(span.len));
            let local = span.local..span.local + len;
            match direction {
                Direction::FromGuest => buf[local].copy_from_slice(&page[offset..offset + len]),
                Direction::ToGuest => page[offset..offset + len].copy_from_slice(&buf[local]),
            }
            status.push(GNTST_OKAY);
        }
    }
}
