//! Target `netback-tx`: xendevd's vif engine takes packets off a transmit ring page a
//! guest could write — slots with grants issued or not, offsets and sizes inside and
//! outside their page, every combination of flags (fragment chains, extra-info slots,
//! checksum offload), sizes that do and do not add up, producer indices near and far —
//! copying the data from a simulated guest.
//!
//! The vif's address is mostly the one the first packet's bytes carry (so that frames
//! get through the filter), sometimes another; GSO is negotiated or not.
//!
//! Property: no panic; every frame sent to the tap is at least an Ethernet header and
//! at most what the filter allows (the MTU's frame without GSO, the largest packet
//! with), and comes from the vif's address; no more packets than the budget; every
//! grant copy lies inside a page and inside its buffer.

use std::time::Duration;

use proptest::prelude::*;
use xendevd::engine::memory::PAGE_SIZE;
use xendevd::engine::netback::{ETH_HLEN, TxFilter, transmit_snapshot};

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
    /// Take the vif's address from the first packet's bytes (else: `other_mac`).
    mac_of_first: bool,
    other_mac: [u8; 6],
    gso: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![8 => 0u32..48, 1 => any::<u32>()],
        prop::collection::vec(slot(), 48),
        sim::granted_pages(),
        prop_oneof![4 => Just(true), 1 => Just(false)],
        any::<[u8; 6]>(),
        any::<bool>(),
    )
        .prop_map(
            |(req_prod, slots, pages, mac_of_first, other_mac, gso)| Case {
                req_prod,
                slots,
                pages,
                mac_of_first,
                other_mac,
                gso,
            },
        )
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut ring = [0u8; PAGE_SIZE];
    ring[0..4].copy_from_slice(&case.req_prod.to_le_bytes());
    for (i, slot) in case.slots.iter().enumerate().take(SLOTS) {
        ring[64 + i * 12..64 + (i + 1) * 12].copy_from_slice(slot);
    }
    let mac = case
        .mac_of_first
        .then(|| first_source(case))
        .flatten()
        .unwrap_or(case.other_mac);
    let filter = TxFilter::new(mac, 1500, case.gso);
    let mut guest = sim::guest(&case.pages);
    if let Ok((frames, packets)) = transmit_snapshot(&ring, filter, &mut guest, BUDGET) {
        prop_assert!(packets <= BUDGET, "{packets} packets");
        prop_assert!(
            frames.len() <= packets,
            "{} frames of {packets} packets",
            frames.len()
        );
        for frame in &frames {
            prop_assert!(
                (ETH_HLEN..=filter.max_frame).contains(&frame.len()),
                "a frame of {} bytes through {filter:?}",
                frame.len()
            );
            prop_assert_eq!(&frame[6..12], &mac[..], "a frame from another address");
        }
    }
    sim::no_violations(sim::Violations::default(), guest)
}

/// The source address the first slot's bytes hold, if it points into a granted page.
fn first_source(case: &Case) -> Option<[u8; 6]> {
    let slot = case.slots.first()?;
    let gref = u32::from_le_bytes(slot[0..4].try_into().ok()?);
    let offset = usize::from(u16::from_le_bytes([slot[4], slot[5]]));
    let page = sim::GRANTED.iter().position(|&g| g == gref)?;
    case.pages[page]
        .get(offset + 6..offset + 12)?
        .try_into()
        .ok()
}

pub fn run(time: Duration) -> Result<u64, String> {
    crate::run_for(time, &case(), |case| check(&case))
}
