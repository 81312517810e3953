//! Target `netback-tx`: xendevd's vif engine takes packets off a transmit ring page a
//! guest could write — slots with grants issued or not, offsets and sizes inside and
//! outside their page, every combination of flags (fragment chains, extra-info slots,
//! checksum offload), sizes that do and do not add up, producer indices near and far —
//! copying the data from a simulated guest.
//!
//! Property: no panic; every frame sent to the tap is at least an Ethernet header and
//! at most the largest packet; no more packets than the budget; every grant copy lies
//! inside a page and inside its buffer.

use std::time::Duration;

use proptest::prelude::*;
use xendevd::engine::memory::PAGE_SIZE;
use xendevd::engine::netback::{MAX_PACKET, transmit_snapshot};

use crate::sim;

/// Packets taken per snapshot.
const BUDGET: usize = 64;
/// Transmit slots in a ring page (12 bytes each).
const SLOTS: usize = 256;

/// One 12-byte transmit slot: shaped, or random bytes (an extra-info slot's content).
fn slot() -> impl Strategy<Value = [u8; 12]> {
    let shaped = (
        sim::gref(),
        prop_oneof![4 => 0u16..4096, 1 => any::<u16>()],
        prop_oneof![4 => 0u16..16, 1 => any::<u16>()],
        0u16..512,
        prop_oneof![4 => 0u16..1600, 1 => any::<u16>()],
    )
        .prop_map(|(gref, offset, flags, id, size)| {
            let mut slot = [0u8; 12];
            slot[0..4].copy_from_slice(&gref.to_le_bytes());
            slot[4..6].copy_from_slice(&offset.to_le_bytes());
            slot[6..8].copy_from_slice(&flags.to_le_bytes());
            slot[8..10].copy_from_slice(&id.to_le_bytes());
            slot[10..12].copy_from_slice(&size.to_le_bytes());
            slot
        });
    prop_oneof![6 => shaped, 1 => any::<[u8; 12]>()]
}

#[derive(Debug, Clone)]
struct Case {
    req_prod: u32,
    /// The first slots; the rest of the ring is zero.
    slots: Vec<[u8; 12]>,
    pages: Vec<Vec<u8>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![8 => 0u32..48, 1 => any::<u32>()],
        prop::collection::vec(slot(), 48),
        sim::granted_pages(),
    )
        .prop_map(|(req_prod, slots, pages)| Case {
            req_prod,
            slots,
            pages,
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut ring = [0u8; PAGE_SIZE];
    ring[0..4].copy_from_slice(&case.req_prod.to_le_bytes());
    for (i, slot) in case.slots.iter().enumerate().take(SLOTS) {
        ring[64 + i * 12..64 + (i + 1) * 12].copy_from_slice(slot);
    }
    let mut guest = sim::guest(&case.pages);
    if let Ok((frames, packets)) = transmit_snapshot(&ring, &mut guest, BUDGET) {
        prop_assert!(packets <= BUDGET, "{packets} packets");
        prop_assert!(
            frames.len() <= packets,
            "{} frames of {packets} packets",
            frames.len()
        );
        for frame in &frames {
            prop_assert!(
                (14..=MAX_PACKET).contains(&frame.len()),
                "a frame of {} bytes",
                frame.len()
            );
        }
    }
    sim::no_violations(sim::Violations::default(), guest)
}

pub fn run(time: Duration) -> Result<u64, String> {
    crate::run_for(time, &case(), |case| check(&case))
}
