//! The engines' access to a guest's memory: grant copies between its granted pages and
//! a local buffer. The daemon copies with `/dev/xen/gntdev`; tests and fuzzing pass a
//! simulated guest ([`fake::FakeGuest`], or any closure of the same shape).

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`: the copy was not attempted.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_copy_arg`: a span outside its page or buffer.
pub const GNTST_BAD_COPY_ARG: i16 = -10;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The guest's page → our buffer (a write to disk, a frame to send).
    FromGuest,
    /// Our buffer → the guest's page (a read from disk, a received frame).
    ToGuest,
}

/// One span: `len` bytes at `offset` in the guest's granted page `gref`, and at `local`
/// in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub gref: u32,
    pub offset: u16,
    pub len: u16,
    pub local: usize,
}

impl Span {
    /// Whether the span lies inside a page and inside a buffer of `buf_len` bytes.
    pub fn fits(&self, buf_len: usize) -> bool {
        usize::from(self.offset) + usize::from(self.len) <= PAGE_SIZE
            && self
                .local
                .checked_add(usize::from(self.len))
                .is_some_and(|end| end <= buf_len)
    }
}

/// Copies between a guest's granted pages and our buffers.
pub trait GuestMemory {
    /// Copy every span between the guest's pages and `buf`; `status` gets one `GNTST_*`
    /// per span, in order (0: copied).
    fn copy(&mut self, direction: Direction, spans: &[Span], buf: &mut [u8], status: &mut Vec<i16>);
}

impl<F> GuestMemory for F
where
    F: FnMut(Direction, &[Span], &mut [u8], &mut Vec<i16>),
{
    fn copy(
        &mut self,
        direction: Direction,
        spans: &[Span],
        buf: &mut [u8],
        status: &mut Vec<i16>,
    ) {
        self(direction, spans, buf, status);
    }
}

/// A simulated guest for tests and fuzzing: its granted pages by reference.
pub mod fake {
    use std::collections::HashMap;

    use super::*;

    /// `GNTST_bad_gntref`.
    pub const GNTST_BAD_GNTREF: i16 = -3;

    #[derive(Debug, Default)]
    pub struct FakeGuest {
        pub pages: HashMap<u32, Box<[u8; PAGE_SIZE]>>,
        /// Copies attempted, for assertions.
        pub copies: usize,
        /// Spans the engine asked for that do not fit their page or buffer. The
        /// engines check every span before they ask, so each is an engine bug (even
        /// though Xen would refuse it too).
        pub misfits: Vec<String>,
    }

    /// Pseudo-random words and pages (xorshift64): the same for the same seed.
    #[derive(Debug)]
    pub struct Noise(pub u64);

    impl Noise {
        pub fn word(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub fn page(&mut self) -> [u8; PAGE_SIZE] {
            let mut page = [0u8; PAGE_SIZE];
            for chunk in page.chunks_mut(8) {
                chunk.copy_from_slice(&self.word().to_le_bytes());
            }
            page
        }
    }

    impl FakeGuest {
        pub fn grant(&mut self, gref: u32) -> &mut [u8; PAGE_SIZE] {
            self.pages
                .entry(gref)
                .or_insert_with(|| Box::new([0; PAGE_SIZE]))
        }
    }

    impl GuestMemory for FakeGuest {
        fn copy(
            &mut self,
            direction: Direction,
            spans: &[Span],
            buf: &mut [u8],
            status: &mut Vec<i16>,
        ) {
            status.clear();
            for span in spans {
                self.copies += 1;
                if !span.fits(buf.len()) {
                    self.misfits.push(format!(
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
                let guest = &mut page[offset..offset + len];
                let local = &mut buf[span.local..span.local + len];
                match direction {
                    Direction::FromGuest => local.copy_from_slice(guest),
                    Direction::ToGuest => guest.copy_from_slice(local),
                }
                status.push(GNTST_OKAY);
            }
        }
    }
}
