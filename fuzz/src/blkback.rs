//! Target `blkback-ring`: xendevd's vbd engine serves a ring page full of requests a
//! guest could write — read, write, flush, discard, indirect and unknown operations,
//! any segment counts and ranges, sectors inside and outside the disk, grants the guest
//! has and has not issued, producer indices near and far — against a simulated guest
//! and an in-memory disk.
//!
//! Property: no panic; at most `budget` responses, each with a status of the protocol
//! (okay, error, not supported); every grant copy the engine asks for lies inside a page
//! and inside its buffer; the disk is never touched outside its size, and never written
//! when read-only.

use std::io;
use std::time::Duration;

use proptest::prelude::*;
use xendevd::engine::blkback::{Disk, Geometry, serve_snapshot};
use xendevd::engine::memory::PAGE_SIZE;

use crate::sim::{self, Violations};

/// The simulated disk's size.
pub const DISK_SECTORS: u64 = 64;
/// Requests served per snapshot, as the daemon bounds one pass.
pub const BUDGET: usize = 64;

/// An in-memory disk that records accesses it must never see.
pub struct SimDisk<'a> {
    pub bytes: Vec<u8>,
    pub readonly: bool,
    pub violations: &'a Violations,
}

impl SimDisk<'_> {
    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= self.bytes.len() => Ok(start..end),
            _ => {
                self.violations.borrow_mut().push(format!(
                    "disk access outside the disk: {len} bytes at {offset}"
                ));
                Err(io::ErrorKind::UnexpectedEof.into())
            }
        }
    }
}

impl Disk for SimDisk<'_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.readonly {
            self.violations
                .borrow_mut()
                .push("a write reached a read-only disk".to_owned());
        }
        let range = self.range(offset, buf.len())?;
        self.bytes[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A segment: mostly plausible sector ranges, sometimes anything.
pub fn segment() -> impl Strategy<Value = [u8; 8]> {
    (
        sim::gref(),
        prop_oneof![4 => 0u8..9, 1 => any::<u8>()],
        prop_oneof![4 => 0u8..9, 1 => any::<u8>()],
    )
        .prop_map(|(gref, first, last)| {
            let mut seg = [0u8; 8];
            seg[0..4].copy_from_slice(&gref.to_le_bytes());
            seg[4] = first;
            seg[5] = last;
            seg
        })
}

/// One 112-byte ring slot: a shaped request of some operation, or random bytes.
pub fn slot() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        Just(0u8), // read
        Just(1u8), // write
        Just(3u8), // flush
        Just(5u8), // discard
        Just(6u8), // indirect
        any::<u8>()
    ];
    let sector = prop_oneof![4 => 0..DISK_SECTORS + 16, 1 => any::<u64>()];
    let shaped = (
        op,
        prop_oneof![4 => 0u8..13, 1 => any::<u8>()],
        any::<u64>(),
        sector,
        prop::collection::vec(segment(), 11),
        prop_oneof![0u8..2, any::<u8>()],
        prop_oneof![4 => 0u16..600, 1 => any::<u16>()],
    )
        .prop_map(|(op, nr, id, sector, segs, indirect_op, indirect_nr)| {
            let mut req = vec![0u8; 112];
            req[0] = op;
            req[8..16].copy_from_slice(&id.to_le_bytes());
            req[16..24].copy_from_slice(&sector.to_le_bytes());
            if op == 6 {
                // blkif_request_indirect: indirect_op, nr_segments (u16), id, sector,
                // handle, then up to 8 grants of pages of segments.
                req[1] = indirect_op;
                req[2..4].copy_from_slice(&indirect_nr.to_le_bytes());
                for (i, seg) in segs.iter().take(8).enumerate() {
                    req[28 + i * 4..32 + i * 4].copy_from_slice(&seg[0..4]);
                }
            } else {
                req[1] = nr;
                for (i, seg) in segs.iter().enumerate() {
                    req[24 + i * 8..32 + i * 8].copy_from_slice(seg);
                }
            }
            req
        });
    prop_oneof![8 => shaped, 1 => sim::noise(112)]
}

#[derive(Debug, Clone)]
struct Case {
    req_prod: u32,
    slots: Vec<Vec<u8>>,
    readonly: bool,
    max_indirect_segments: u32,
    /// The guest's granted pages (indirect pages among them): random contents.
    pages: Vec<Vec<u8>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![8 => 0u32..40, 1 => any::<u32>()],
        prop::collection::vec(slot(), 32),
        any::<bool>(),
        prop_oneof![Just(0u32), Just(256u32), 0u32..1024],
        sim::granted_pages(),
    )
        .prop_map(
            |(req_prod, slots, readonly, max_indirect_segments, pages)| Case {
                req_prod,
                slots,
                readonly,
                max_indirect_segments,
                pages,
            },
        )
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let mut ring = [0u8; PAGE_SIZE];
    ring[0..4].copy_from_slice(&case.req_prod.to_le_bytes());
    for (i, slot) in case.slots.iter().enumerate() {
        ring[64 + i * 112..64 + (i + 1) * 112].copy_from_slice(slot);
    }
    let violations = Violations::default();
    let mut guest = sim::guest(&case.pages);
    let mut disk = SimDisk {
        bytes: vec![0x5a; DISK_SECTORS as usize * 512],
        readonly: case.readonly,
        violations: &violations,
    };
    let geometry = Geometry {
        sectors: DISK_SECTORS,
        readonly: case.readonly,
        max_indirect_segments: case.max_indirect_segments,
    };
    if let Ok(responses) = serve_snapshot(&ring, geometry, &mut guest, &mut disk, BUDGET) {
        prop_assert!(responses.len() <= BUDGET, "{} responses", responses.len());
        for response in &responses {
            prop_assert!(
                (-2..=0).contains(&response.status),
                "status {} in {response:?}",
                response.status
            );
        }
    }
    drop(disk);
    sim::no_violations(violations, guest)
}

pub fn run(time: Duration) -> Result<u64, String> {
    crate::run_for(time, &case(), |case| check(&case))
}
