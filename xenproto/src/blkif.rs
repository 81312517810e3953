//! The PV block protocol (`xen/include/public/io/blkif.h`): requests, responses,
//! segments, and how an I/O is cut into requests.
//!
//! A request names up to 11 page segments directly, or — with indirect descriptors,
//! when the back end offers `feature-max-indirect-segments` — up to 8 pages that each
//! hold 512 more segments. A segment is a granted page and the range of 512-byte
//! sectors in it (`first_sect..=last_sect`). Sector numbers on the ring are always in
//! 512-byte units.

use core::fmt;

use crate::ring::{FrontRing, RingEntry};

/// Bytes per sector on the ring.
pub const SECTOR_SIZE: usize = 512;
/// Sectors in a page.
pub const SECTORS_PER_PAGE: usize = 8;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES: usize = 8;
/// Segments that fit an indirect page.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = 4096 / size_of::<Segment>();

/// `BLKIF_OP_*`.
pub mod op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const WRITE_BARRIER: u8 = 2;
    pub const FLUSH_DISKCACHE: u8 = 3;
    pub const DISCARD: u8 = 5;
    pub const INDIRECT: u8 = 6;
}

/// `BLKIF_RSP_*`.
pub const RSP_OKAY: i16 = 0;
pub const RSP_ERROR: i16 = -1;
pub const RSP_EOPNOTSUPP: i16 = -2;

bitflags::bitflags! {
    /// `VDISK_*`: the back end's `info` key.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VdiskInfo: u32 {
        const CDROM = 0x1;
        const REMOVABLE = 0x2;
        const READONLY = 0x4;
    }
}

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
    pub pad: u16,
}

/// A ring slot holding any request: `struct blkif_request` is the largest (112 bytes);
/// `blkif_request_indirect` and `blkif_request_discard` reuse its first bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRequest {
    words: [u64; 14],
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    pub id: u64,
    pub operation: u8,
    pub pad: u8,
    pub status: i16,
    pub pad2: u32,
}

// SAFETY: #[repr(C)] integers without padding (explicit pad fields).
unsafe impl RingEntry for RawRequest {}
// SAFETY: as above.
unsafe impl RingEntry for Response {}
// SAFETY: as above; segments also fill indirect pages.
unsafe impl RingEntry for Segment {}

/// The front end's ring.
pub type BlkFront = FrontRing<RawRequest, Response>;

/// A request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Read or write `segments` at `sector` (512-byte units).
    Rw {
        write: bool,
        handle: u16,
        id: u64,
        sector: u64,
        segments: &'a [Segment],
    },
    /// Read or write `nr_segments` segments listed in the indirect pages.
    Indirect {
        write: bool,
        handle: u16,
        id: u64,
        sector: u64,
        nr_segments: u16,
        pages: &'a [u32],
    },
    /// Write back the disk cache.
    Flush { handle: u16, id: u64 },
}

/// A request that cannot be put on the ring, or read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    TooManySegments(usize),
    /// `first_sect..=last_sect` is not inside a page.
    BadSegment {
        index: usize,
        first: u8,
        last: u8,
    },
    UnknownOperation(u8),
    /// An indirect request's segments do not fit its pages.
    BadIndirect {
        nr_segments: u16,
        pages: usize,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManySegments(n) => {
                write!(f, "{n} segments in one request (at most {MAX_SEGMENTS})")
            }
            Self::BadSegment { index, first, last } => {
                write!(
                    f,
                    "segment {index}: sectors {first}..={last} are not inside a page"
                )
            }
            Self::UnknownOperation(op) => write!(f, "unknown block operation {op}"),
            Self::BadIndirect { nr_segments, pages } => {
                write!(
                    f,
                    "{nr_segments} indirect segments do not fit {pages} indirect pages"
                )
            }
        }
    }
}

fn check_segment(index: usize, segment: &Segment) -> Result<(), RequestError> {
    if segment.first_sect > segment.last_sect || usize::from(segment.last_sect) >= SECTORS_PER_PAGE
    {
        return Err(RequestError::BadSegment {
            index,
            first: segment.first_sect,
            last: segment.last_sect,
        });
    }
    Ok(())
}

/// Byte offsets inside the 112-byte slot.
mod at {
    pub const OPERATION: usize = 0;
    pub const NR_SEGMENTS: usize = 1;
    pub const HANDLE: usize = 2;
    pub const ID: usize = 8;
    pub const SECTOR: usize = 16;
    pub const SEGMENTS: usize = 24;
    // blkif_request_indirect
    pub const INDIRECT_OP: usize = 1;
    pub const INDIRECT_NR_SEGMENTS: usize = 2;
    pub const INDIRECT_HANDLE: usize = 24;
    pub const INDIRECT_GREFS: usize = 28;
}

impl RawRequest {
    fn bytes(&self) -> &[u8; 112] {
        // SAFETY: [u64; 14] and [u8; 112] have the same size; u8 has no alignment.
        unsafe { &*(&raw const self.words).cast::<[u8; 112]>() }
    }

    fn bytes_mut(&mut self) -> &mut [u8; 112] {
        // SAFETY: as above.
        unsafe { &mut *(&raw mut self.words).cast::<[u8; 112]>() }
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.bytes_mut()[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes()[at], self.bytes()[at + 1]])
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.bytes()[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.bytes()[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Encode a request for the ring.
    pub fn encode(request: &Request<'_>) -> Result<Self, RequestError> {
        let mut raw = Self { words: [0; 14] };
        match *request {
            Request::Rw {
                write,
                handle,
                id,
                sector,
                segments,
            } => {
                if segments.len() > MAX_SEGMENTS {
                    return Err(RequestError::TooManySegments(segments.len()));
                }
                for (index, segment) in segments.iter().enumerate() {
                    check_segment(index, segment)?;
                    let at = at::SEGMENTS + index * 8;
                    raw.put(at, &segment.gref.to_le_bytes());
                    raw.put(at + 4, &[segment.first_sect, segment.last_sect]);
                }
                raw.put(
                    at::OPERATION,
                    &[
                        if write { op::WRITE } else { op::READ },
                        segments.len() as u8,
                    ],
                );
                raw.put(at::HANDLE, &handle.to_le_bytes());
                raw.put(at::ID, &id.to_le_bytes());
                raw.put(at::SECTOR, &sector.to_le_bytes());
            }
            Request::Indirect {
                write,
                handle,
                id,
                sector,
                nr_segments,
                pages,
            } => {
                let needed = usize::from(nr_segments).div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
                if pages.len() > MAX_INDIRECT_PAGES || needed != pages.len() || nr_segments == 0 {
                    return Err(RequestError::BadIndirect {
                        nr_segments,
                        pages: pages.len(),
                    });
                }
                raw.put(
                    at::OPERATION,
                    &[op::INDIRECT, if write { op::WRITE } else { op::READ }],
                );
                raw.put(at::INDIRECT_NR_SEGMENTS, &nr_segments.to_le_bytes());
                raw.put(at::ID, &id.to_le_bytes());
                raw.put(at::SECTOR, &sector.to_le_bytes());
                raw.put(at::INDIRECT_HANDLE, &handle.to_le_bytes());
                for (i, gref) in pages.iter().enumerate() {
                    raw.put(at::INDIRECT_GREFS + i * 4, &gref.to_le_bytes());
                }
            }
            Request::Flush { handle, id } => {
                raw.put(at::OPERATION, &[op::FLUSH_DISKCACHE]);
                raw.put(at::HANDLE, &handle.to_le_bytes());
                raw.put(at::ID, &id.to_le_bytes());
            }
        }
        Ok(raw)
    }

    /// The request's id (echoed in its response).
    pub fn id(&self) -> u64 {
        self.u64_at(at::ID)
    }

    /// Decode a request copied off the ring (a back end's view). `segments` receives
    /// the direct segments; indirect page references go to `pages`.
    pub fn decode<'a>(
        &self,
        segments: &'a mut [Segment; MAX_SEGMENTS],
        pages: &'a mut [u32; MAX_INDIRECT_PAGES],
    ) -> Result<Request<'a>, RequestError> {
        let operation = self.bytes()[at::OPERATION];
        let id = self.id();
        let sector = self.u64_at(at::SECTOR);
        match operation {
            op::READ | op::WRITE => {
                let count = usize::from(self.bytes()[at::NR_SEGMENTS]);
                if count > MAX_SEGMENTS {
                    return Err(RequestError::TooManySegments(count));
                }
                for (index, segment) in segments.iter_mut().enumerate().take(count) {
                    let at = at::SEGMENTS + index * 8;
                    *segment = Segment {
                        gref: self.u32_at(at),
                        first_sect: self.bytes()[at + 4],
                        last_sect: self.bytes()[at + 5],
                        pad: 0,
                    };
                    check_segment(index, segment)?;
                }
                let handle = self.u16_at(at::HANDLE);
                Ok(Request::Rw {
                    write: operation == op::WRITE,
                    handle,
                    id,
                    sector,
                    segments: &segments[..count],
                })
            }
            op::INDIRECT => {
                let indirect_op = self.bytes()[at::INDIRECT_OP];
                if indirect_op != op::READ && indirect_op != op::WRITE {
                    return Err(RequestError::UnknownOperation(indirect_op));
                }
                let nr_segments = self.u16_at(at::INDIRECT_NR_SEGMENTS);
                let count = usize::from(nr_segments).div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
                if nr_segments == 0 || count > MAX_INDIRECT_PAGES {
                    return Err(RequestError::BadIndirect {
                        nr_segments,
                        pages: count,
                    });
                }
                for (i, page) in pages.iter_mut().enumerate().take(count) {
                    *page = self.u32_at(at::INDIRECT_GREFS + i * 4);
                }
                Ok(Request::Indirect {
                    write: indirect_op == op::WRITE,
                    handle: self.u16_at(at::INDIRECT_HANDLE),
                    id,
                    sector,
                    nr_segments,
                    pages: &pages[..count],
                })
            }
            op::FLUSH_DISKCACHE => Ok(Request::Flush {
                handle: self.u16_at(at::HANDLE),
                id,
            }),
            other => Err(RequestError::UnknownOperation(other)),
        }
    }
}

/// One request's share of an I/O: `pages` whole or partial pages starting at disk
/// sector `sector`, the first beginning `first_offset` bytes into its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Disk sector (512-byte units) where this chunk starts.
    pub sector: u64,
    /// Byte offset of this chunk within the whole I/O.
    pub offset: usize,
    /// Bytes in this chunk.
    pub len: usize,
}

/// Cut an I/O of `len` bytes at disk sector `sector` into chunks of at most
/// `max_segments` page segments each, every segment a whole page (the buffers are
/// page-aligned bounce pages). `len` must be a multiple of [`SECTOR_SIZE`].
pub fn chunks(sector: u64, len: usize, max_segments: usize) -> impl Iterator<Item = Chunk> {
    let per_chunk = max_segments.max(1) * SECTORS_PER_PAGE * SECTOR_SIZE;
    (0..len).step_by(per_chunk).map(move |offset| Chunk {
        sector: sector + (offset / SECTOR_SIZE) as u64,
        offset,
        len: per_chunk.min(len - offset),
    })
}

/// The segments of a chunk of `len` bytes over consecutive pages whose grant
/// references are `grefs`: full pages, the last one holding the remaining sectors.
pub fn page_segments(len: usize, grefs: &[u32]) -> impl Iterator<Item = Segment> + '_ {
    let sectors = len / SECTOR_SIZE;
    grefs
        .iter()
        .enumerate()
        .take(sectors.div_ceil(SECTORS_PER_PAGE))
        .map(move |(i, &gref)| {
            let in_page = (sectors - i * SECTORS_PER_PAGE).min(SECTORS_PER_PAGE);
            Segment {
                gref,
                first_sect: 0,
                last_sect: (in_page - 1) as u8,
                pad: 0,
            }
        })
}

/// What the back end says about the disk, from its Xenstore keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskInfo {
    /// Capacity in `sector_size` units.
    pub sectors: u64,
    /// Logical sector size in bytes.
    pub sector_size: u32,
    pub readonly: bool,
    /// Flushes are supported (`feature-flush-cache`).
    pub flush: bool,
    /// Segments per indirect request; 0: no indirect descriptors.
    pub max_indirect_segments: u32,
}

impl DiskInfo {
    /// The back-end keys this is read from.
    pub const KEYS: [&'static str; 6] = [
        "sectors",
        "sector-size",
        "info",
        "mode",
        "feature-flush-cache",
        "feature-max-indirect-segments",
    ];

    /// Build from the values read for [`Self::KEYS`] (`None`: key missing). Returns the
    /// name of a required key that is missing or malformed.
    pub fn from_values(values: [Option<&str>; 6]) -> Result<Self, &'static str> {
        let number = |i: usize| {
            values[i]
                .map(|v| v.trim().parse::<u64>().map_err(|_| Self::KEYS[i]))
                .transpose()
        };
        let sectors = number(0)?.ok_or("sectors")?;
        let sector_size = number(1)?.unwrap_or(SECTOR_SIZE as u64);
        if sector_size == 0 || sector_size % SECTOR_SIZE as u64 != 0 || sector_size > 4096 {
            return Err("sector-size");
        }
        // Bits above the 32 `VDISK_*` ones mean nothing to us.
        let info = VdiskInfo::from_bits_retain(number(2)?.unwrap_or(0) as u32);
        let readonly =
            info.contains(VdiskInfo::READONLY) || values[3].is_some_and(|m| m.trim() == "r");
        Ok(Self {
            sectors,
            sector_size: sector_size as u32,
            readonly,
            flush: number(4)?.unwrap_or(0) == 1,
            max_indirect_segments: number(5)?
                .unwrap_or(0)
                .min((MAX_INDIRECT_PAGES * SEGMENTS_PER_INDIRECT_PAGE) as u64)
                as u32,
        })
    }

    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors * u64::from(self.sector_size)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_match_blkif_h() {
        assert_eq!(size_of::<RawRequest>(), 112);
        assert_eq!(size_of::<Response>(), 16);
        assert_eq!(size_of::<Segment>(), 8);
        assert_eq!(SEGMENTS_PER_INDIRECT_PAGE, 512);
        assert_eq!(BlkFront::SIZE, 32);
    }

    #[test]
    fn read_write_golden_bytes() {
        let segments = [
            Segment {
                gref: 0x0102_0304,
                first_sect: 0,
                last_sect: 7,
                pad: 0,
            },
            Segment {
                gref: 9,
                first_sect: 2,
                last_sect: 3,
                pad: 0,
            },
        ];
        let raw = RawRequest::encode(&Request::Rw {
            write: true,
            handle: 0x51,
            id: 0xdead_beef,
            sector: 2048,
            segments: &segments,
        })
        .unwrap();
        let bytes = raw.bytes();
        assert_eq!(&bytes[0..4], &[op::WRITE, 2, 0x51, 0]);
        assert_eq!(&bytes[8..16], &0xdead_beefu64.to_le_bytes());
        assert_eq!(&bytes[16..24], &2048u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &[4, 3, 2, 1, 0, 7, 0, 0]);
        assert_eq!(&bytes[32..40], &[9, 0, 0, 0, 2, 3, 0, 0]);
        assert!(bytes[40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn requests_round_trip_through_the_back_end_view() {
        let segments: Vec<Segment> = (0..11)
            .map(|i| Segment {
                gref: 100 + i,
                first_sect: 0,
                last_sect: 7,
                pad: 0,
            })
            .collect();
        let cases = [
            Request::Rw {
                write: false,
                handle: 768,
                id: 1,
                sector: 0,
                segments: &segments,
            },
            Request::Indirect {
                write: true,
                handle: 768,
                id: 2,
                sector: 77,
                nr_segments: 600,
                pages: &[5, 6],
            },
            Request::Flush { handle: 768, id: 3 },
        ];
        for request in cases {
            let raw = RawRequest::encode(&request).unwrap();
            let (mut s, mut p) = ([Segment::default(); MAX_SEGMENTS], [0; MAX_INDIRECT_PAGES]);
            assert_eq!(raw.decode(&mut s, &mut p), Ok(request));
            assert_eq!(
                raw.id(),
                match request {
                    Request::Rw { id, .. }
                    | Request::Indirect { id, .. }
                    | Request::Flush { id, .. } => id,
                }
            );
        }
    }

    #[test]
    fn bad_requests_are_refused_both_ways() {
        let twelve = [Segment {
            gref: 1,
            first_sect: 0,
            last_sect: 7,
            pad: 0,
        }; 12];
        let rw = |segments| Request::Rw {
            write: false,
            handle: 0,
            id: 0,
            sector: 0,
            segments,
        };
        assert_eq!(
            RawRequest::encode(&rw(&twelve)),
            Err(RequestError::TooManySegments(12))
        );
        let bad = [Segment {
            gref: 1,
            first_sect: 5,
            last_sect: 2,
            pad: 0,
        }];
        assert_eq!(
            RawRequest::encode(&rw(&bad)),
            Err(RequestError::BadSegment {
                index: 0,
                first: 5,
                last: 2
            })
        );
        let past = [Segment {
            gref: 1,
            first_sect: 0,
            last_sect: 8,
            pad: 0,
        }];
        assert!(RawRequest::encode(&rw(&past)).is_err());
        let indirect = Request::Indirect {
            write: false,
            handle: 0,
            id: 0,
            sector: 0,
            nr_segments: 513,
            pages: &[1],
        };
        assert_eq!(
            RawRequest::encode(&indirect),
            Err(RequestError::BadIndirect {
                nr_segments: 513,
                pages: 1
            })
        );

        // A hostile front end: 200 segments claimed, an unknown operation.
        let (mut s, mut p) = ([Segment::default(); MAX_SEGMENTS], [0; MAX_INDIRECT_PAGES]);
        let mut raw = RawRequest::encode(&rw(&twelve[..1])).unwrap();
        raw.put(at::NR_SEGMENTS, &[200]);
        assert_eq!(
            raw.decode(&mut s, &mut p),
            Err(RequestError::TooManySegments(200))
        );
        raw.put(at::OPERATION, &[9]);
        assert_eq!(
            raw.decode(&mut s, &mut p),
            Err(RequestError::UnknownOperation(9))
        );
        raw.put(at::OPERATION, &[op::INDIRECT, op::READ]);
        raw.put(at::INDIRECT_NR_SEGMENTS, &5000u16.to_le_bytes());
        assert!(matches!(
            raw.decode(&mut s, &mut p),
            Err(RequestError::BadIndirect { .. })
        ));
    }

    #[test]
    fn ios_split_into_requests_of_whole_pages() {
        // 100 KiB at sector 10 with 11 segments (44 KiB) per request.
        let split: Vec<Chunk> = chunks(10, 100 * 1024, MAX_SEGMENTS).collect();
        assert_eq!(
            split,
            [
                Chunk {
                    sector: 10,
                    offset: 0,
                    len: 45056
                },
                Chunk {
                    sector: 98,
                    offset: 45056,
                    len: 45056
                },
                Chunk {
                    sector: 186,
                    offset: 90112,
                    len: 12288
                },
            ]
        );
        assert_eq!(chunks(0, 512, MAX_SEGMENTS).count(), 1);
        assert_eq!(chunks(0, 0, MAX_SEGMENTS).count(), 0);
        // With indirect descriptors one request carries 1 MiB.
        assert_eq!(chunks(0, 1 << 20, 256).count(), 1);
    }

    #[test]
    fn segments_cover_the_sectors_of_a_chunk() {
        let grefs = [10, 11, 12];
        let segments: Vec<Segment> = page_segments(2 * 4096 + 3 * 512, &grefs).collect();
        assert_eq!(segments.len(), 3);
        assert_eq!((segments[0].first_sect, segments[0].last_sect), (0, 7));
        assert_eq!((segments[2].gref, segments[2].last_sect), (12, 2));
        assert_eq!(page_segments(512, &grefs).count(), 1);
    }

    #[test]
    fn disk_info_from_backend_keys() {
        let info = DiskInfo::from_values([
            Some("131072"),
            Some("512"),
            Some("0"),
            Some("w"),
            Some("1"),
            Some("256"),
        ])
        .unwrap();
        assert_eq!(
            info,
            DiskInfo {
                sectors: 131072,
                sector_size: 512,
                readonly: false,
                flush: true,
                max_indirect_segments: 256
            }
        );
        assert_eq!(info.bytes(), 64 << 20);
        let ro = DiskInfo::from_values([Some("8"), None, Some("4"), None, None, None]).unwrap();
        assert!(ro.readonly && !ro.flush && ro.max_indirect_segments == 0 && ro.sector_size == 512);
        assert!(
            DiskInfo::from_values([Some("8"), None, None, Some("r"), None, None])
                .unwrap()
                .readonly
        );
        assert_eq!(
            DiskInfo::from_values([None, None, None, None, None, None]),
            Err("sectors")
        );
        assert_eq!(
            DiskInfo::from_values([Some("x"), None, None, None, None, None]),
            Err("sectors")
        );
        assert_eq!(
            DiskInfo::from_values([Some("8"), Some("100"), None, None, None, None]),
            Err("sector-size")
        );
        // More indirect segments than 8 pages hold is capped.
        let big =
            DiskInfo::from_values([Some("8"), None, None, None, None, Some("99999")]).unwrap();
        assert_eq!(big.max_indirect_segments, 4096);
    }
}
