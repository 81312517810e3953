//! Target `blkback-rewrite`: the guest rewrites what the vbd engine is serving — the
//! last published request's ring slot, or the indirect page of segments that request
//! names — at some point while the engine serves the ring (the double-fetch class of
//! back-end bugs: read a field, check it, read it again and use the second value).
//!
//! The guest's rewrite happens inside the engine's own calls out: before or after any
//! grant copy or disk access, the n-th of them. Xen gives no such hook, but a guest on
//! another vCPU may write at any instant, so these are points a real guest can hit too.
//! Each case is served three times on fresh state: with version A of the rewritten
//! bytes throughout, with version B throughout, and with A rewritten to B at that
//! point. An engine that copies a request (and an indirect page) once and works on the
//! copy serves the rewritten run exactly as one of the other two.
//!
//! Property: the rewritten run's responses, disk and guest pages (but the rewritten
//! page itself) are those of the run with A or of the run with B, never a mix; with no
//! rewrite (the point lies past the last call out), those of A; no grant copy that does
//! not fit, no disk access outside the disk, no write to a read-only disk.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use proptest::prelude::*;
use xendevd::engine::blkback::{Blkback, Disk, Geometry};
use xendevd::engine::memory::fake::FakeGuest;
use xendevd::engine::memory::{Direction, PAGE_SIZE, Span};

use crate::blkback::{BUDGET, DISK_SECTORS, SimDisk, segment, slot};
use crate::sim::{self, Violations};

/// Request slots in a blkif ring page.
const SLOTS: usize = 32;
/// Bytes of a request slot.
const SLOT: usize = 112;
/// Ring slots start after the ring's header.
const HEADER: usize = 64;

/// What the guest rewrites.
#[derive(Debug, Clone)]
enum Rewrite {
    /// The last published request's slot: 112 bytes.
    Slot { a: Vec<u8>, b: Vec<u8> },
    /// The indirect page of the last published request (an indirect request naming
    /// only that page): its segment list.
    Indirect {
        indirect_op: u8,
        nr_segments: u16,
        id: u64,
        sector: u64,
        a: PageBytes,
        b: PageBytes,
    },
}

/// The contents of a page, short to print.
#[derive(Debug, Clone)]
enum PageBytes {
    /// These segments, then zeros.
    Segments(Vec<[u8; 8]>),
    /// Random bytes from this seed ([`sim::noise_bytes`]).
    Noise(u64),
}

impl PageBytes {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Segments(segments) => {
                let mut page = segments.concat();
                page.resize(PAGE_SIZE, 0);
                page
            }
            Self::Noise(seed) => sim::noise_bytes(*seed, PAGE_SIZE),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// The slots before the rewritten one, which is published last (random requests,
    /// some sharing the guest's pages).
    slots: Vec<Vec<u8>>,
    rewrite: Rewrite,
    /// The call out at which the guest rewrites, counted back from the last one (each
    /// grant copy and disk access counts twice: before, after): mostly within the last
    /// request's, whose are the last ones, sometimes earlier.
    rewrite_before_end: u32,
    readonly: bool,
    max_indirect_segments: u32,
    /// Seeds of the contents of the guest's [`sim::GRANTED`] pages.
    pages: Vec<u64>,
}

/// A segment the engine accepts: a granted page, sectors in order within it. (A
/// rewrite only shows when a version gets past the checks, and random segments
/// rarely all do.)
fn good_segment() -> impl Strategy<Value = [u8; 8]> {
    (
        prop::sample::select(sim::GRANTED.to_vec()),
        (0u8..8).prop_flat_map(|first| (Just(first), first..8)),
    )
        .prop_map(|(gref, (first, last))| {
            let mut seg = [0u8; 8];
            seg[0..4].copy_from_slice(&gref.to_le_bytes());
            seg[4] = first;
            seg[5] = last;
            seg
        })
}

/// A read or write of a few good segments, mostly inside the disk.
fn good_request() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..2,
        1u8..=4,
        any::<u64>(),
        prop_oneof![8 => 0..DISK_SECTORS - 32, 1 => any::<u64>()],
        prop::collection::vec(good_segment(), 4),
    )
        .prop_map(|(op, nr, id, sector, segs)| {
            let mut req = vec![0u8; SLOT];
            req[0] = op;
            req[1] = nr;
            req[8..16].copy_from_slice(&id.to_le_bytes());
            req[16..24].copy_from_slice(&sector.to_le_bytes());
            for (i, seg) in segs.iter().enumerate() {
                req[24 + i * 8..32 + i * 8].copy_from_slice(seg);
            }
            req
        })
}

/// A version of the rewritten slot: mostly a request the engine serves, else any.
fn slot_version() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => good_request(), 1 => slot()]
}

/// An indirect page: good segments, shaped ones, or random bytes.
fn indirect_page() -> impl Strategy<Value = PageBytes> {
    prop_oneof![
        6 => prop::collection::vec(good_segment(), 8).prop_map(PageBytes::Segments),
        2 => prop::collection::vec(segment(), 1..48).prop_map(PageBytes::Segments),
        1 => any::<u64>().prop_map(PageBytes::Noise),
    ]
}

fn rewrite() -> impl Strategy<Value = Rewrite> {
    let slot_rewrite = (slot_version(), slot_version()).prop_map(|(a, b)| Rewrite::Slot { a, b });
    let indirect = (
        prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        prop_oneof![8 => 1u16..=4, 1 => any::<u16>()],
        any::<u64>(),
        prop_oneof![8 => 0..DISK_SECTORS - 32, 1 => any::<u64>()],
        indirect_page(),
        indirect_page(),
    )
        .prop_map(
            |(indirect_op, nr_segments, id, sector, a, b)| Rewrite::Indirect {
                indirect_op,
                nr_segments,
                id,
                sector,
                a,
                b,
            },
        );
    prop_oneof![slot_rewrite, indirect]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(slot(), 0..SLOTS),
        rewrite(),
        prop_oneof![4 => 0u32..12, 1 => 0u32..200],
        any::<bool>(),
        prop_oneof![Just(256u32), 0u32..1024],
        prop::collection::vec(any::<u64>(), sim::GRANTED.len()),
    )
        .prop_map(
            |(slots, rewrite, rewrite_before_end, readonly, max_indirect_segments, pages)| Case {
                slots,
                rewrite,
                rewrite_before_end,
                readonly,
                max_indirect_segments,
                pages,
            },
        )
}

/// Which version the rewritten bytes start as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    A,
    B,
}

/// What a run left behind.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Call outs the engine made.
    calls: u32,
    /// `(id, operation, status)` of each response, or the protocol error.
    responses: Result<Vec<(u64, u8, i16)>, String>,
    disk: Vec<u8>,
    /// The guest's pages, but the rewritten one.
    pages: BTreeMap<u32, Vec<u8>>,
}

/// A ring page, aligned as the ring code wants it.
#[repr(C, align(4096))]
struct RingPage([u8; PAGE_SIZE]);

/// The guest during a run: its pages, and the rewrite it makes at the chosen call out.
struct Guest<'a> {
    memory: RefCell<FakeGuest>,
    calls: Cell<u32>,
    /// The call out to rewrite at; `None`: never.
    rewrite_at: Option<u32>,
    rewritten: Cell<bool>,
    /// The ring page (the engine's too) and the rewritten slot's offset in it.
    ring: *mut u8,
    slot_at: usize,
    /// The grant of the rewritten indirect page.
    indirect: u32,
    case: &'a Case,
}

impl Guest<'_> {
    /// One more call out: rewrite if it is the chosen one.
    fn call(&self) {
        let call = self.calls.get();
        self.calls.set(call + 1);
        if self.rewrite_at != Some(call) {
            return;
        }
        self.rewritten.set(true);
        match &self.case.rewrite {
            Rewrite::Slot { b, .. } => {
                // SAFETY: the ring page is ours, alive for the run, and the slot lies
                // inside it; nothing reads it while this runs (one thread: the engine
                // is inside a call out), and the engine itself only reads it through
                // raw pointers.
                unsafe {
                    std::ptr::copy_nonoverlapping(b.as_ptr(), self.ring.add(self.slot_at), SLOT);
                }
            }
            Rewrite::Indirect { b, .. } => {
                self.memory
                    .borrow_mut()
                    .grant(self.indirect)
                    .copy_from_slice(&b.bytes());
            }
        }
    }
}

/// The disk, with each access a call out of the guest's.
struct CallOutDisk<'a, 'b> {
    disk: SimDisk<'a>,
    guest: &'a Guest<'b>,
}

impl Disk for CallOutDisk<'_, '_> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.guest.call();
        let result = self.disk.read_at(buf, offset);
        self.guest.call();
        result
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.guest.call();
        let result = self.disk.write_at(buf, offset);
        self.guest.call();
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.guest.call();
        let result = self.disk.flush();
        self.guest.call();
        result
    }
}

/// A grant reference nothing in the case names (in any slot, page or version), for the
/// rewritten indirect page: only the last request may reach it, so that the engine
/// fetching it once is all there is to see.
fn unnamed_gref(case: &Case, granted: &[Vec<u8>]) -> u32 {
    let mut named: BTreeSet<u32> = sim::GRANTED.iter().copied().collect();
    let mut name_all = |bytes: &[u8]| {
        for word in bytes.chunks_exact(4) {
            named.insert(u32::from_le_bytes(word.try_into().expect("4 bytes")));
        }
    };
    case.slots.iter().for_each(|slot| name_all(slot));
    granted.iter().for_each(|page| name_all(page));
    match &case.rewrite {
        Rewrite::Slot { a, b } => {
            name_all(a);
            name_all(b);
        }
        Rewrite::Indirect { a, b, .. } => {
            name_all(&a.bytes());
            name_all(&b.bytes());
        }
    }
    (16..)
        .find(|gref| !named.contains(gref))
        .expect("a free u32")
}

/// The contents of the guest's [`sim::GRANTED`] pages.
fn granted_pages(case: &Case) -> Vec<Vec<u8>> {
    case.pages
        .iter()
        .map(|&seed| sim::noise_bytes(seed, PAGE_SIZE))
        .collect()
}

/// The slot of an indirect request for `nr_segments` segments listed in page `gref`.
fn indirect_request(indirect_op: u8, nr_segments: u16, id: u64, sector: u64, gref: u32) -> Vec<u8> {
    let mut req = vec![0u8; SLOT];
    req[0] = 6;
    req[1] = indirect_op;
    req[2..4].copy_from_slice(&nr_segments.to_le_bytes());
    req[8..16].copy_from_slice(&id.to_le_bytes());
    req[16..24].copy_from_slice(&sector.to_le_bytes());
    // Every page reference names the one page (a list of more than a page's segments
    // reads it twice in one copy, which the guest cannot split).
    for i in 0..8 {
        req[28 + i * 4..32 + i * 4].copy_from_slice(&gref.to_le_bytes());
    }
    req
}

/// Serve the case's ring once, the guest's pages holding `granted` and the rewritten
/// indirect page (if any) granted as `indirect`; the rewrite at `rewrite_at` (if any).
fn serve(
    case: &Case,
    granted: &[Vec<u8>],
    indirect: u32,
    start: Start,
    rewrite_at: Option<u32>,
) -> (Outcome, bool, Vec<String>) {
    let mut page = Box::new(RingPage([0; PAGE_SIZE]));
    let last = case.slots.len();
    page.0[0..4].copy_from_slice(&(last as u32 + 1).to_le_bytes());
    for (i, slot) in case.slots.iter().enumerate() {
        page.0[HEADER + i * SLOT..HEADER + (i + 1) * SLOT].copy_from_slice(slot);
    }
    let mut memory = sim::guest(granted);
    let last_slot = match &case.rewrite {
        Rewrite::Slot { a, b } => match start {
            Start::A => a.clone(),
            Start::B => b.clone(),
        },
        Rewrite::Indirect {
            indirect_op,
            nr_segments,
            id,
            sector,
            a,
            b,
        } => {
            let version = match start {
                Start::A => a,
                Start::B => b,
            };
            memory.grant(indirect).copy_from_slice(&version.bytes());
            indirect_request(*indirect_op, *nr_segments, *id, *sector, indirect)
        }
    };
    let slot_at = HEADER + last * SLOT;
    page.0[slot_at..slot_at + SLOT].copy_from_slice(&last_slot);
    let ring = page.0.as_mut_ptr();

    let violations = Violations::default();
    let guest = Guest {
        memory: RefCell::new(memory),
        calls: Cell::new(0),
        rewrite_at,
        rewritten: Cell::new(false),
        ring,
        slot_at,
        indirect,
        case,
    };
    let mut disk = CallOutDisk {
        disk: SimDisk {
            bytes: vec![0x5a; DISK_SECTORS as usize * 512],
            readonly: case.readonly,
            violations: &violations,
        },
        guest: &guest,
    };
    let mut copier =
        |direction: Direction, spans: &[Span], buf: &mut [u8], status: &mut Vec<i16>| {
            guest.call();
            xendevd::engine::memory::GuestMemory::copy(
                &mut *guest.memory.borrow_mut(),
                direction,
                spans,
                buf,
                status,
            );
            guest.call();
        };
    let geometry = Geometry {
        sectors: DISK_SECTORS,
        readonly: case.readonly,
        max_indirect_segments: case.max_indirect_segments,
    };
    // SAFETY: the page is ours, aligned, and outlives the engine (dropped below).
    let mut engine = unsafe { Blkback::new(ring, geometry) };
    let served = engine.serve(&mut copier, &mut disk, BUDGET);
    drop(engine);
    let disk = std::mem::take(&mut disk.disk.bytes);
    let responses = served
        .map(|progress| {
            (0..progress.served)
                .map(|slot| {
                    let at = HEADER + (slot % SLOTS) * SLOT;
                    let bytes = &page.0[at..at + 16];
                    (
                        u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
                        bytes[8],
                        i16::from_le_bytes([bytes[10], bytes[11]]),
                    )
                })
                .collect()
        })
        .map_err(|err| err.to_string());
    let memory = guest.memory.into_inner();
    let mut all_violations = violations.into_inner();
    all_violations.extend(memory.misfits.iter().cloned());
    let pages = memory
        .pages
        .iter()
        .filter(|(gref, _)| **gref != indirect)
        .map(|(gref, page)| (*gref, page.to_vec()))
        .collect();
    let outcome = Outcome {
        calls: guest.calls.get(),
        responses,
        disk,
        pages,
    };
    (outcome, guest.rewritten.get(), all_violations)
}

/// How two outcomes differ, briefly.
fn differences(run: &Outcome, other: &Outcome) -> String {
    let mut diffs = Vec::new();
    if run.calls != other.calls {
        diffs.push(format!("{} call outs", other.calls));
    }
    if run.responses != other.responses {
        diffs.push(format!("responses {:?}", other.responses));
    }
    let sectors: Vec<usize> = (0..DISK_SECTORS as usize)
        .filter(|s| run.disk[s * 512..(s + 1) * 512] != other.disk[s * 512..(s + 1) * 512])
        .collect();
    if !sectors.is_empty() {
        diffs.push(format!("disk sectors {sectors:?} differ"));
    }
    let pages: Vec<u32> = run
        .pages
        .keys()
        .chain(other.pages.keys())
        .filter(|gref| run.pages.get(gref) != other.pages.get(gref))
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !pages.is_empty() {
        diffs.push(format!("guest pages {pages:?} differ"));
    }
    diffs.join(", ")
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let granted = granted_pages(case);
    let indirect = unnamed_gref(case, &granted);
    let serve = |start, rewrite_at| serve(case, &granted, indirect, start, rewrite_at);
    let (with_a, _, violations_a) = serve(Start::A, None);
    let (with_b, _, violations_b) = serve(Start::B, None);
    // Until the rewrite, the run is the run with A: its call outs are A's.
    let rewrite_at = with_a
        .calls
        .checked_sub(1)
        .map(|last| last.saturating_sub(case.rewrite_before_end));
    let (run, rewritten, violations) = serve(Start::A, rewrite_at);
    for found in [violations_a, violations_b, violations] {
        prop_assert!(found.is_empty(), "{}", found.join("; "));
    }
    if rewritten {
        prop_assert!(
            run == with_a || run == with_b,
            "rewritten at call out {rewrite_at:?} of {}: responses {:?}; a mix of both \
             versions: against A, {}; against B, {}",
            with_a.calls,
            run.responses,
            differences(&run, &with_a),
            differences(&run, &with_b)
        );
    } else {
        prop_assert!(
            run == with_a,
            "not rewritten, yet unlike A: {}",
            differences(&run, &with_a)
        );
    }
    Ok(())
}

pub fn run(time: Duration) -> Result<u64, String> {
    crate::run_for(time, &case(), |case| check(&case))
}
