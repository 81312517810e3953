//! The simulated guest of the back-end targets: a few granted pages with random
//! contents (xendevd's `FakeGuest`, reached by grant copy as the daemon reaches a real
//! guest's), and a record of what the engine must never do.

use std::cell::RefCell;

use proptest::prelude::*;
use xendevd::engine::memory::PAGE_SIZE;
use xendevd::engine::memory::fake::FakeGuest;

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

/// `len` random bytes from one generated seed ([`noise_bytes`]): a byte-by-byte
/// strategy costs a value tree per byte, which made page-sized inputs the bulk of each
/// case. The bytes do not shrink; the shaped fields around them do.
pub fn noise(len: usize) -> impl Strategy<Value = Vec<u8>> {
    any::<u64>().prop_map(move |seed| noise_bytes(seed, len))
}

/// `len` random bytes from `seed` (splitmix64): the same for the same seed, so that a
/// case can hold the seed, short to print, instead of the bytes.
pub fn noise_bytes(mut seed: u64, len: usize) -> Vec<u8> {
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
}

/// A guest whose [`GRANTED`] pages hold `contents`.
pub fn guest(contents: &[Vec<u8>]) -> FakeGuest {
    let mut guest = FakeGuest::default();
    for (&gref, bytes) in GRANTED.iter().zip(contents) {
        guest.grant(gref).copy_from_slice(bytes);
    }
    guest
}

/// Fail the case if the engine did what it must never do: `violations` recorded by the
/// target, and grant copies the `guest` was asked for that do not fit.
pub fn no_violations(violations: Violations, guest: FakeGuest) -> Result<(), TestCaseError> {
    let mut all = violations.into_inner();
    all.extend(guest.misfits);
    prop_assert!(all.is_empty(), "{}", all.join("; "));
    Ok(())
}
