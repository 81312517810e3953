//! The vbd engine: blkif requests off the shared ring, served from a [`Disk`], data moved
//! by grant copy ([`GuestMemory`]), responses back. Pure: no Xen, no files of its own, so
//! it is tested against the guest's own ring code (`xenproto`) and can be fuzzed with
//! any ring contents ([`serve_snapshot`]).
//!
//! Everything on the ring is the guest's and hostile: each request is copied out of its
//! slot once, then decoded and checked — segment ranges inside a page, segment counts
//! within what was offered, the sectors inside the disk. A bad request gets an error
//! response; a producer index that laps the ring is a protocol error for the device
//! (the caller disconnects it). Grant copies fail per span, never for the daemon.

use std::io;

use xenproto::blkif::{
    self, MAX_INDIRECT_PAGES, MAX_SEGMENTS, RSP_EOPNOTSUPP, RSP_ERROR, RSP_OKAY, RawRequest,
    Request, RequestError, Response, SECTOR_SIZE, SECTORS_PER_PAGE, SEGMENTS_PER_INDIRECT_PAGE,
    Segment,
};
use xenproto::ring::{BackRing, RingOverrun};

use super::memory::{Direction, GNTST_OKAY, GuestMemory, PAGE_SIZE, Span};

/// Segments per indirect request the back end offers (one indirect page's worth is
/// 512; 256 is what Linux's blkback offers, 1 MiB per request).
pub const MAX_INDIRECT_SEGMENTS: u32 = 256;

/// The image behind a vbd.
pub trait Disk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make written data durable (`fdatasync`).
    fn flush(&mut self) -> io::Result<()>;
}

impl Disk for std::fs::File {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// What the back end offers for a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    pub readonly: bool,
    /// Segments per indirect request offered; 0: no indirect requests.
    pub max_indirect_segments: u32,
}

/// Counters of one vbd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// How a call of [`Blkback::serve`] went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests answered.
    pub served: usize,
    /// The guest must be notified of the responses.
    pub notify: bool,
    /// The budget ran out with requests left: call again soon.
    pub more: bool,
}

/// One vbd's ring, served.
#[derive(Debug)]
pub struct Blkback {
    ring: BackRing<RawRequest, Response>,
    geometry: Geometry,
    /// Data of the request being served.
    data: Vec<u8>,
    spans: Vec<Span>,
    status: Vec<i16>,
    pub stats: Stats,
}

/// Why one request failed: the response status, and what to log.
#[derive(Debug)]
struct Failed {
    status: i16,
    why: String,
}

fn failed(why: impl Into<String>) -> Failed {
    Failed {
        status: RSP_ERROR,
        why: why.into(),
    }
}

impl Blkback {
    /// Serve the ring in `page`.
    ///
    /// # Safety
    /// `page` must be a page-aligned, readable and writable page (the guest's ring page,
    /// mapped) that stays mapped as long as the `Blkback` lives.
    pub unsafe fn new(page: *mut u8, geometry: Geometry) -> Self {
        Self {
            // SAFETY: guaranteed by the caller.
            ring: unsafe { BackRing::new(page) },
            geometry,
            data: Vec::new(),
            spans: Vec::new(),
            status: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Answer up to `budget` requests.
    pub fn serve(
        &mut self,
        memory: &mut impl GuestMemory,
        disk: &mut impl Disk,
        budget: usize,
    ) -> Result<Progress, RingOverrun> {
        let mut progress = Progress::default();
        loop {
            while progress.served < budget {
                let Some(raw) = self.ring.take_request()? else {
                    break;
                };
                let status = match self.serve_one(&raw, memory, disk) {
                    Ok(()) => RSP_OKAY,
                    Err(failed) => {
                        self.stats.errors += 1;
                        log::debug!("vbd request {}: {}", raw.id(), failed.why);
                        failed.status
                    }
                };
                self.stats.requests += 1;
                let response = Response {
                    id: raw.id(),
                    operation: operation_of(&raw),
                    pad: 0,
                    status,
                    pad2: 0,
                };
                // Each taken request frees the slot its response goes to.
                let _ = self.ring.queue_response(response);
                progress.served += 1;
            }
            progress.notify |= self.ring.push_responses();
            if progress.served >= budget {
                progress.more = self.ring.unconsumed_requests()? > 0;
                return Ok(progress);
            }
            if !self.ring.final_check_for_requests()? {
                return Ok(progress);
            }
        }
    }

    fn serve_one(
        &mut self,
        raw: &RawRequest,
        memory: &mut impl GuestMemory,
        disk: &mut impl Disk,
    ) -> Result<(), Failed> {
        let mut direct = [Segment::default(); MAX_SEGMENTS];
        let mut pages = [0u32; MAX_INDIRECT_PAGES];
        let request = raw
            .decode(&mut direct, &mut pages)
            .map_err(|err| match err {
                RequestError::UnknownOperation(_) => Failed {
                    status: RSP_EOPNOTSUPP,
                    why: err.to_string(),
                },
                other => failed(other.to_string()),
            })?;
        match request {
            Request::Flush { .. } => disk.flush().map_err(|err| failed(format!("flush: {err}"))),
            Request::Rw {
                write,
                sector,
                segments,
                ..
            } => {
                let segments = segments.to_vec();
                self.transfer(write, sector, &segments, memory, disk)
            }
            Request::Indirect {
                write,
                sector,
                nr_segments,
                pages,
                ..
            } => {
                let segments = self.indirect_segments(nr_segments, pages, memory)?;
                self.transfer(write, sector, &segments, memory, disk)
            }
        }
    }

    /// Copy the segment lists of an indirect request out of its pages, once, and check
    /// them.
    fn indirect_segments(
        &mut self,
        nr_segments: u16,
        pages: &[u32],
        memory: &mut impl GuestMemory,
    ) -> Result<Vec<Segment>, Failed> {
        if u32::from(nr_segments) > self.geometry.max_indirect_segments {
            return Err(failed(format!(
                "{nr_segments} indirect segments, {} offered",
                self.geometry.max_indirect_segments
            )));
        }
        let count = usize::from(nr_segments);
        let entry = size_of::<Segment>();
        self.spans.clear();
        for (i, &gref) in pages.iter().enumerate() {
            let in_page = (count - i * SEGMENTS_PER_INDIRECT_PAGE).min(SEGMENTS_PER_INDIRECT_PAGE);
            self.spans.push(Span {
                gref,
                offset: 0,
                len: (in_page * entry) as u16,
                local: i * PAGE_SIZE,
            });
        }
        let mut list = vec![0u8; pages.len() * PAGE_SIZE];
        memory.copy(
            Direction::FromGuest,
            &self.spans,
            &mut list,
            &mut self.status,
        );
        if let Some(bad) = self.bad_copy() {
            return Err(failed(format!(
                "indirect page gref {bad}: grant copy failed"
            )));
        }
        (0..count)
            .map(|index| {
                let at = (index / SEGMENTS_PER_INDIRECT_PAGE) * PAGE_SIZE
                    + (index % SEGMENTS_PER_INDIRECT_PAGE) * entry;
                let bytes = &list[at..at + entry];
                let segment = Segment {
                    gref: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
                    first_sect: bytes[4],
                    last_sect: bytes[5],
                    pad: 0,
                };
                check_segment(index, &segment)?;
                Ok(segment)
            })
            .collect()
    }

    /// The grant reference of the first span whose copy failed.
    fn bad_copy(&self) -> Option<u32> {
        self.spans
            .iter()
            .zip(&self.status)
            .find(|(_, status)| **status != GNTST_OKAY)
            .map(|(span, _)| span.gref)
            .or_else(|| {
                // Fewer statuses than spans: the copier did not do them all.
                (self.status.len() < self.spans.len()).then(|| self.spans[self.status.len()].gref)
            })
    }

    /// Read or write the sectors of `segments`, consecutive on disk from `sector`.
    fn transfer(
        &mut self,
        write: bool,
        sector: u64,
        segments: &[Segment],
        memory: &mut impl GuestMemory,
        disk: &mut impl Disk,
    ) -> Result<(), Failed> {
        if segments.is_empty() {
            return Err(failed("a read or write without segments"));
        }
        if write && self.geometry.readonly {
            return Err(failed("write to a read-only disk"));
        }
        self.spans.clear();
        let mut len = 0usize;
        for segment in segments {
            let bytes = (usize::from(segment.last_sect - segment.first_sect) + 1) * SECTOR_SIZE;
            self.spans.push(Span {
                gref: segment.gref,
                offset: (usize::from(segment.first_sect) * SECTOR_SIZE) as u16,
                len: bytes as u16,
                local: len,
            });
            len += bytes;
        }
        let sectors = (len / SECTOR_SIZE) as u64;
        if sector
            .checked_add(sectors)
            .is_none_or(|end| end > self.geometry.sectors)
        {
            return Err(failed(format!(
                "sectors {sector}..+{sectors} run past the disk's {}",
                self.geometry.sectors
            )));
        }
        let offset = sector * SECTOR_SIZE as u64;
        self.data.resize(len, 0);
        if write {
            memory.copy(
                Direction::FromGuest,
                &self.spans,
                &mut self.data,
                &mut self.status,
            );
            if let Some(bad) = self.bad_copy() {
                return Err(failed(format!("write: grant {bad}: grant copy failed")));
            }
            disk.write_at(&self.data, offset)
                .map_err(|err| failed(format!("write at sector {sector}: {err}")))?;
            self.stats.bytes_written += len as u64;
        } else {
            disk.read_at(&mut self.data, offset)
                .map_err(|err| failed(format!("read at sector {sector}: {err}")))?;
            memory.copy(
                Direction::ToGuest,
                &self.spans,
                &mut self.data,
                &mut self.status,
            );
            if let Some(bad) = self.bad_copy() {
                return Err(failed(format!("read: grant {bad}: grant copy failed")));
            }
            self.stats.bytes_read += len as u64;
        }
        Ok(())
    }
}

fn check_segment(index: usize, segment: &Segment) -> Result<(), Failed> {
    if segment.first_sect > segment.last_sect || usize::from(segment.last_sect) >= SECTORS_PER_PAGE
    {
        return Err(failed(
            RequestError::BadSegment {
                index,
                first: segment.first_sect,
                last: segment.last_sect,
            }
            .to_string(),
        ));
    }
    Ok(())
}

/// The operation byte a response echoes.
fn operation_of(raw: &RawRequest) -> u8 {
    // The first byte of every request layout is its operation.
    let mut direct = [Segment::default(); MAX_SEGMENTS];
    let mut pages = [0u32; MAX_INDIRECT_PAGES];
    match raw.decode(&mut direct, &mut pages) {
        Ok(Request::Rw { write: true, .. }) => blkif::op::WRITE,
        Ok(Request::Rw { write: false, .. }) => blkif::op::READ,
        Ok(Request::Indirect { .. }) => blkif::op::INDIRECT,
        Ok(Request::Flush { .. }) => blkif::op::FLUSH_DISKCACHE,
        Err(RequestError::UnknownOperation(op)) if op != blkif::op::INDIRECT => op,
        Err(_) => raw_operation(raw),
    }
}

fn raw_operation(raw: &RawRequest) -> u8 {
    // SAFETY: RawRequest is 112 bytes of plain integers; its first byte is the operation.
    unsafe { (&raw const *raw).cast::<u8>().read() }
}

/// A ring page, aligned as the ring code wants it.
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// Fuzzing entry point: serve a copy of a ring page with `budget` requests at most, as
/// the daemon would. Returns the responses produced, or the protocol error.
pub fn serve_snapshot(
    ring_page: &[u8; PAGE_SIZE],
    geometry: Geometry,
    memory: &mut impl GuestMemory,
    disk: &mut impl Disk,
    budget: usize,
) -> Result<Vec<Response>, RingOverrun> {
    let mut page = Box::new(Page(*ring_page));
    // SAFETY: the page is ours, aligned, and outlives the engine.
    let mut engine = unsafe { Blkback::new(page.0.as_mut_ptr(), geometry) };
    let progress = engine.serve(memory, disk, budget)?;
    drop(engine);
    Ok((0..progress.served)
        .map(|slot| {
            // A fresh back end starts at index 0; `served` ≤ budget may wrap the ring.
            let slot = slot % BackRing::<RawRequest, Response>::SIZE as usize;
            let at = 64 + slot * size_of::<RawRequest>();
            let bytes = &page.0[at..at + 16];
            Response {
                id: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
                operation: bytes[8],
                pad: 0,
                status: i16::from_le_bytes([bytes[10], bytes[11]]),
                pad2: 0,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use xenproto::blkif::BlkFront;

    use super::super::memory::fake::{FakeGuest, Noise};
    use super::*;

    /// A disk in memory.
    #[derive(Debug, Default)]
    struct MemDisk {
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl Disk for MemDisk {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let at = offset as usize;
            let src = self
                .bytes
                .get(at..at + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        }

        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let at = offset as usize;
            self.bytes
                .get_mut(at..at + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?
                .copy_from_slice(buf);
            Ok(())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    struct Rig {
        _page: Box<Page>,
        front: BlkFront,
        back: Blkback,
        guest: FakeGuest,
        disk: MemDisk,
    }

    fn rig(sectors: u64, readonly: bool) -> Rig {
        let mut page = Box::new(Page([0xaa; PAGE_SIZE]));
        let ptr = page.0.as_mut_ptr();
        // SAFETY: the page outlives both ends (kept in the rig).
        let (front, back) = unsafe {
            (
                BlkFront::new(ptr),
                Blkback::new(
                    ptr,
                    Geometry {
                        sectors,
                        readonly,
                        max_indirect_segments: MAX_INDIRECT_SEGMENTS,
                    },
                ),
            )
        };
        Rig {
            _page: page,
            front,
            back,
            guest: FakeGuest::default(),
            disk: MemDisk {
                bytes: (0..sectors as usize * SECTOR_SIZE)
                    .map(|i| (i / SECTOR_SIZE) as u8 ^ (i as u8))
                    .collect(),
                flushes: 0,
            },
        }
    }

    impl Rig {
        fn submit(&mut self, request: &Request<'_>) {
            let raw = RawRequest::encode(request).unwrap();
            self.submit_raw(raw);
        }

        fn submit_raw(&mut self, raw: RawRequest) {
            self.front.queue_request(raw).unwrap();
            self.front.push_requests();
        }

        fn run(&mut self) -> Progress {
            self.back
                .serve(&mut self.guest, &mut self.disk, 64)
                .unwrap()
        }

        fn responses(&mut self) -> HashMap<u64, i16> {
            let mut out = HashMap::new();
            while let Some(rsp) = self.front.take_response().unwrap() {
                out.insert(rsp.id, rsp.status);
            }
            out
        }
    }

    fn seg(gref: u32, first: u8, last: u8) -> Segment {
        Segment {
            gref,
            first_sect: first,
            last_sect: last,
            pad: 0,
        }
    }

    #[test]
    fn reads_writes_and_flushes_through_the_guests_ring() {
        let mut rig = rig(128, false);
        for gref in [1, 2, 3] {
            rig.guest.grant(gref);
        }
        rig.guest.grant(1).fill(0x5a);
        // Write page 1 (8 sectors) and half of page 2 at sector 16; read back into 3.
        rig.guest.grant(2)[..2048].fill(0x77);
        rig.submit(&Request::Rw {
            write: true,
            handle: 0,
            id: 10,
            sector: 16,
            segments: &[seg(1, 0, 7), seg(2, 0, 3)],
        });
        rig.submit(&Request::Flush { handle: 0, id: 11 });
        rig.submit(&Request::Rw {
            write: false,
            handle: 0,
            id: 12,
            sector: 20,
            segments: &[seg(3, 2, 7)],
        });
        let progress = rig.run();
        assert_eq!(progress.served, 3);
        assert!(progress.notify && !progress.more);
        assert_eq!(
            rig.responses(),
            HashMap::from([(10, RSP_OKAY), (11, RSP_OKAY), (12, RSP_OKAY)])
        );
        assert!(
            rig.disk.bytes[16 * 512..24 * 512]
                .iter()
                .all(|&b| b == 0x5a)
        );
        assert!(
            rig.disk.bytes[24 * 512..28 * 512]
                .iter()
                .all(|&b| b == 0x77)
        );
        assert_eq!(rig.disk.flushes, 1);
        // Sectors 20..26 landed at sectors 2..7 of page 3: 0x5a ×4 sectors, then 0x77 ×2.
        let page = rig.guest.grant(3);
        assert!(page[..1024].iter().all(|&b| b == 0));
        assert!(page[1024..3072].iter().all(|&b| b == 0x5a));
        assert!(page[3072..].iter().all(|&b| b == 0x77));
        assert_eq!(rig.back.stats.bytes_written, 6144);
    }

    #[test]
    fn indirect_requests_carry_many_segments() {
        let mut rig = rig(2048, false);
        // 40 pages written through one indirect page, then read back with 40 more.
        let list: Vec<Segment> = (0..40).map(|i| seg(100 + i, 0, 7)).collect();
        for (i, s) in list.iter().enumerate() {
            rig.guest.grant(s.gref).fill(i as u8);
        }
        let indirect = rig.guest.grant(9);
        for (i, s) in list.iter().enumerate() {
            indirect[i * 8..i * 8 + 4].copy_from_slice(&s.gref.to_le_bytes());
            indirect[i * 8 + 4] = s.first_sect;
            indirect[i * 8 + 5] = s.last_sect;
        }
        rig.submit(&Request::Indirect {
            write: true,
            handle: 0,
            id: 1,
            sector: 8,
            nr_segments: 40,
            pages: &[9],
        });
        rig.run();
        assert_eq!(rig.responses(), HashMap::from([(1, RSP_OKAY)]));
        for i in 0..40 {
            let at = (8 + i * 8) * 512;
            assert!(rig.disk.bytes[at..at + 4096].iter().all(|&b| b == i as u8));
        }
        // More segments than offered: refused.
        rig.submit(&Request::Indirect {
            write: false,
            handle: 0,
            id: 2,
            sector: 0,
            nr_segments: 300,
            pages: &[9],
        });
        rig.run();
        assert_eq!(rig.responses(), HashMap::from([(2, RSP_ERROR)]));
    }

    #[test]
    fn hostile_requests_get_errors_not_data() {
        let mut rig = rig(64, true);
        rig.guest.grant(1);
        // A write to a read-only disk, a read past the end, an unknown grant, a segment
        // past its page, no segments, an unknown operation.
        rig.submit(&Request::Rw {
            write: true,
            handle: 0,
            id: 1,
            sector: 0,
            segments: &[seg(1, 0, 7)],
        });
        rig.submit(&Request::Rw {
            write: false,
            handle: 0,
            id: 2,
            sector: 60,
            segments: &[seg(1, 0, 7)],
        });
        rig.submit(&Request::Rw {
            write: false,
            handle: 0,
            id: 3,
            sector: 0,
            segments: &[seg(77, 0, 7)],
        });
        let mut bad_segment = RawRequest::encode(&Request::Rw {
            write: false,
            handle: 0,
            id: 4,
            sector: 0,
            segments: &[seg(1, 0, 7)],
        })
        .unwrap();
        // SAFETY: a plain-integer struct; byte 29 is segment 0's last_sect.
        unsafe { (&raw mut bad_segment).cast::<u8>().add(29).write(9) };
        rig.submit_raw(bad_segment);
        rig.submit(&Request::Rw {
            write: false,
            handle: 0,
            id: 5,
            sector: 0,
            segments: &[],
        });
        let mut unknown = RawRequest::encode(&Request::Flush { handle: 0, id: 6 }).unwrap();
        // SAFETY: as above; byte 0 is the operation (4: never defined).
        unsafe { (&raw mut unknown).cast::<u8>().write(4) };
        rig.submit_raw(unknown);
        rig.run();
        assert_eq!(
            rig.responses(),
            HashMap::from([
                (1, RSP_ERROR),
                (2, RSP_ERROR),
                (3, RSP_ERROR),
                (4, RSP_ERROR),
                (5, RSP_ERROR),
                (6, RSP_EOPNOTSUPP)
            ])
        );
        assert_eq!(rig.back.stats.errors, 6);
        assert_eq!(rig.back.stats.bytes_read, 0);
    }

    #[test]
    fn the_budget_bounds_a_turn() {
        let mut rig = rig(64, false);
        rig.guest.grant(1);
        for id in 0..32 {
            rig.submit(&Request::Rw {
                write: false,
                handle: 0,
                id,
                sector: 0,
                segments: &[seg(1, 0, 0)],
            });
        }
        let first = rig.back.serve(&mut rig.guest, &mut rig.disk, 20).unwrap();
        assert_eq!((first.served, first.more), (20, true));
        let second = rig.back.serve(&mut rig.guest, &mut rig.disk, 20).unwrap();
        assert_eq!((second.served, second.more), (12, false));
        assert_eq!(rig.responses().len(), 32);
    }

    #[test]
    fn a_lapping_producer_is_a_protocol_error() {
        let mut page = Box::new(Page([0; PAGE_SIZE]));
        page.0[0..4].copy_from_slice(&1000u32.to_le_bytes());
        let geometry = Geometry {
            sectors: 8,
            readonly: false,
            max_indirect_segments: 0,
        };
        let result = serve_snapshot(
            &page.0,
            geometry,
            &mut FakeGuest::default(),
            &mut MemDisk::default(),
            32,
        );
        assert!(result.is_err());
    }

    /// Arbitrary ring contents never panic and never copy outside spans that fit.
    #[test]
    fn random_rings_are_survived() {
        let mut noise = Noise(0x1234_5678_9abc_def0);
        for round in 0..2000 {
            let mut page = noise.page();
            // Mostly plausible indices, sometimes garbage.
            if round % 4 != 0 {
                let prod = (noise.word() % 40) as u32;
                page[0..4].copy_from_slice(&prod.to_le_bytes());
                page[8..12].copy_from_slice(&0u32.to_le_bytes());
            }
            let mut guest = FakeGuest::default();
            for gref in 0..16 {
                guest.grant(gref);
            }
            let mut disk = MemDisk {
                bytes: vec![0; 64 * 512],
                flushes: 0,
            };
            let geometry = Geometry {
                sectors: 64,
                readonly: round % 3 == 0,
                max_indirect_segments: MAX_INDIRECT_SEGMENTS,
            };
            if let Ok(responses) = serve_snapshot(&page, geometry, &mut guest, &mut disk, 32) {
                assert!(responses.len() <= 32);
            }
            assert!(guest.misfits.is_empty(), "{:?}", guest.misfits);
        }
    }
}
