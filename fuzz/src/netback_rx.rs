//! Target `netback-rx`: xendevd's vif engine delivers frames from the tap into receive
//! buffers a guest posted on a ring page it could write anything into — ids and grants
//! issued or not, producer indices near and far — against a simulated guest, with frames
//! from empty to larger than a page.
//!
//! Property: no panic; one outcome per frame; every response's status is the delivered
//! frame's length (a whole Ethernet frame that fits a page) or `RSP_DROPPED`, never
//! more responses than frames; every grant copy lies inside a page and its buffer.

use std::time::Duration;

use proptest::prelude::*;
use xendevd::engine::memory::PAGE_SIZE;
use xendevd::engine::netback::{Delivered, receive_snapshot};

use crate::sim;

/// Receive slots in a ring page (8 bytes each).
const SLOTS: usize = 256;
/// `NETIF_RSP_DROPPED`.
const RSP_DROPPED: i16 = -2;

#[derive(Debug, Clone)]
struct Case {
    req_prod: u32,
    /// `(id, gref)` of the first posted buffers; the rest of the ring is zero.
    posted: Vec<(u16, u32)>,
    frame_lens: Vec<usize>,
    pages: Vec<Vec<u8>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![8 => 0u32..40, 1 => any::<u32>()],
        prop::collection::vec((any::<u16>(), sim::gref()), 32),
        prop::collection::vec(prop_oneof![4 => 14usize..1600, 1 => 0usize..5000], 0..40),
        sim::granted_pages(),
    )
        .prop_map(|(req_prod, posted, frame_lens, pages)| Case {
            req_prod,
            posted,
            frame_lens,
            pages,
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut ring = [0u8; PAGE_SIZE];
    ring[0..4].copy_from_slice(&case.req_prod.to_le_bytes());
    for (i, (id, gref)) in case.posted.iter().enumerate().take(SLOTS) {
        let at = 64 + i * 8;
        ring[at..at + 2].copy_from_slice(&id.to_le_bytes());
        ring[at + 4..at + 8].copy_from_slice(&gref.to_le_bytes());
    }
    let frames: Vec<Vec<u8>> = case
        .frame_lens
        .iter()
        .enumerate()
        .map(|(n, &len)| vec![n as u8; len])
        .collect();
    let mut guest = sim::guest(&case.pages);
    if let Ok((delivered, responses)) = receive_snapshot(&ring, &mut guest, &frames) {
        prop_assert_eq!(delivered.len(), frames.len());
        prop_assert!(
            responses.len() <= frames.len(),
            "{} responses",
            responses.len()
        );
        for response in &responses {
            let delivered_len = usize::try_from(response.status).ok();
            prop_assert!(
                response.status == RSP_DROPPED
                    || delivered_len.is_some_and(|len| (14..=PAGE_SIZE).contains(&len)),
                "status {} in {response:?}",
                response.status
            );
        }
        let yes = delivered.iter().filter(|d| **d == Delivered::Yes).count();
        let okay = responses.iter().filter(|r| r.status > 0).count();
        prop_assert_eq!(yes, okay, "delivered frames and okay responses differ");
    }
    sim::no_violations(sim::Violations::default(), guest)
}

pub fn run(time: Duration) -> Result<u64, String> {
    crate::run_for(time, &case(), |case| check(&case))
}
