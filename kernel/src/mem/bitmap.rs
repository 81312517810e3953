//! A bitmap allocator over a range of numbered slots: guest frames (pfns), or pages
//! of the foreign-mapping window. One bit per slot, set = in use.

/// Allocates slots `base .. base + count`.
#[derive(Debug)]
pub struct BitmapAllocator<'a> {
    bits: &'a mut [u64],
    base: u64,
    count: u64,
    free: u64,
    /// Word to start the next search at: everything below it is known to be full.
    hint: usize,
}

/// A slot handed back that was not handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    OutOfRange(u64),
    NotAllocated(u64),
}

impl core::fmt::Display for FreeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfRange(slot) => write!(f, "slot {slot:#x} is outside the allocator"),
            Self::NotAllocated(slot) => {
                write!(f, "slot {slot:#x} was not allocated (double free?)")
            }
        }
    }
}

impl<'a> BitmapAllocator<'a> {
    /// Words of storage needed for `count` slots.
    pub const fn words_for(count: u64) -> usize {
        count.div_ceil(64) as usize
    }

    /// All slots free. `bits` must hold at least [`Self::words_for`]`(count)` words.
    pub fn new(bits: &'a mut [u64], base: u64, count: u64) -> Self {
        let words = Self::words_for(count);
        assert!(
            bits.len() >= words,
            "bitmap of {} words is too small for {count} slots",
            bits.len()
        );
        let bits = &mut bits[..words];
        bits.fill(0);
        // Slots past `count` in the last word are permanently taken.
        if !count.is_multiple_of(64) {
            bits[words - 1] = !0 << (count % 64);
        }
        Self {
            bits,
            base,
            count,
            free: count,
            hint: 0,
        }
    }

    /// Number of free slots.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    /// Take one slot.
    pub fn alloc(&mut self) -> Option<u64> {
        let word = (self.hint..self.bits.len()).find(|&w| self.bits[w] != !0)?;
        let bit = u64::from(self.bits[word].trailing_ones());
        self.bits[word] |= 1 << bit;
        self.free -= 1;
        self.hint = word;
        Some(self.base + word as u64 * 64 + bit)
    }

    /// Take `n` consecutive slots; returns the first.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<u64> {
        if n == 0 || n > self.free {
            return None;
        }
        let mut run_start = 0;
        let mut run = 0;
        for slot in 0..self.count {
            if self.is_set(slot) {
                run = 0;
                continue;
            }
            if run == 0 {
                run_start = slot;
            }
            run += 1;
            if run == n {
                for s in run_start..run_start + n {
                    self.bits[(s / 64) as usize] |= 1 << (s % 64);
                }
                self.free -= n;
                return Some(self.base + run_start);
            }
        }
        None
    }

    /// Give a slot back.
    pub fn free(&mut self, slot: u64) -> Result<(), FreeError> {
        let index = slot
            .checked_sub(self.base)
            .filter(|&i| i < self.count)
            .ok_or(FreeError::OutOfRange(slot))?;
        if !self.is_set(index) {
            return Err(FreeError::NotAllocated(slot));
        }
        let word = (index / 64) as usize;
        self.bits[word] &= !(1 << (index % 64));
        self.free += 1;
        self.hint = self.hint.min(word);
        Ok(())
    }

    fn is_set(&self, index: u64) -> bool {
        self.bits[(index / 64) as usize] & (1 << (index % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_slot_once_then_none() {
        let mut bits = [0u64; 3];
        let mut frames = BitmapAllocator::new(&mut bits, 100, 130);
        let mut seen: Vec<u64> = core::iter::from_fn(|| frames.alloc()).collect();
        assert_eq!(seen.len(), 130);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, (100..230).collect::<Vec<_>>());
        assert_eq!(frames.free_count(), 0);
        assert_eq!(frames.alloc(), None);
    }

    #[test]
    fn freed_slots_come_back_and_double_free_is_caught() {
        let mut bits = [0u64; 1];
        let mut frames = BitmapAllocator::new(&mut bits, 10, 8);
        let a = frames.alloc().unwrap();
        let b = frames.alloc().unwrap();
        assert_eq!((a, b), (10, 11));
        frames.free(a).unwrap();
        assert_eq!(frames.free(a), Err(FreeError::NotAllocated(10)));
        assert_eq!(frames.free(9), Err(FreeError::OutOfRange(9)));
        assert_eq!(frames.free(18), Err(FreeError::OutOfRange(18)));
        assert_eq!(frames.alloc(), Some(10));
        assert_eq!(frames.free_count(), 6);
    }

    #[test]
    fn contiguous_runs_skip_used_slots() {
        let mut bits = [0u64; 2];
        let mut frames = BitmapAllocator::new(&mut bits, 0, 100);
        let first = frames.alloc_contiguous(60).unwrap();
        assert_eq!(first, 0);
        let single = frames.alloc().unwrap();
        assert_eq!(single, 60);
        // A run across the word boundary.
        assert_eq!(frames.alloc_contiguous(30), Some(61));
        assert_eq!(frames.alloc_contiguous(10), None);
        assert_eq!(frames.alloc_contiguous(9), Some(91));
        assert_eq!(frames.free_count(), 0);
        frames.free(5).unwrap();
        frames.free(7).unwrap();
        assert_eq!(frames.alloc_contiguous(2), None);
        assert_eq!(frames.alloc_contiguous(1), Some(5));
    }
}
