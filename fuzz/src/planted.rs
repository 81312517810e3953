//! Hidden target `planted-panic`: a bug planted on purpose, so that `cargo xtask fuzz`
//! can check, before each run, that the harness still turns a panic into a shrunk,
//! minimal input. A fuzz binary built with `panic = "abort"` dies at the first panic
//! instead, and a real bug would be reported as a crash with no input at all.
//!
//! The bug: a guest's bytes index a 100-entry table unchecked. Any byte of 100 or more
//! panics; shrinking must end at the one minimal input, `[100]` (what xtask expects).
//! Not listed, not run by default: only when named.

use std::time::Duration;

use proptest::prelude::*;

/// Entries in the table; the smallest index out of bounds.
const TABLE: usize = 100;

fn lookups(bytes: &[u8]) -> u32 {
    let table = std::hint::black_box([1u8; TABLE]);
    bytes
        .iter()
        .map(|&byte| u32::from(table[usize::from(byte)]))
        .sum()
}

pub fn run(time: Duration) -> Result<u64, String> {
    let bytes = prop::collection::vec(any::<u8>(), 0..64);
    crate::run_for(time, &bytes, |bytes| {
        std::hint::black_box(lookups(&bytes));
        Ok(())
    })
}
