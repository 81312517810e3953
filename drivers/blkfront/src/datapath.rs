//! The blkif data path: the ring, a pool of granted bounce pages, requests in flight.
//! It does not know how it was negotiated.
//!
//! I/O goes through bounce pages granted to the back end once and reused (so the back
//! end may keep them mapped: `feature-persistent`): a write copies the caller's bytes
//! in before the request is queued, a read copies them out after the response. An I/O
//! is cut into requests of whole pages ([`blkif::chunks`]), all queued before the first
//! is awaited, so a large I/O keeps several requests in flight.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::future::poll_fn;
use core::task::{Poll, Waker};

use arch::abi::{DomId, GrantRef};
use arch::mm::PAGE_SIZE;
use kernel::events::{EventChannel, Notifier, Port};
use kernel::grant::{GrantError, GrantedFrame};
use kernel::sync::VcpuMutex;
use xenproto::blkif::{
    self, BlkFront, DiskInfo, MAX_SEGMENTS, RSP_EOPNOTSUPP, RSP_OKAY, RawRequest, Request,
    SECTOR_SIZE, SEGMENTS_PER_INDIRECT_PAGE, Segment,
};
use xenproto::ring::RingOverrun;

/// Bounce pages per device (256 KiB): bounds the memory a disk takes and the data in
/// flight.
const POOL_PAGES: usize = 64;
/// Pages per request: the most one request may hold of the pool, so that several
/// requests fit in flight.
const MAX_PAGES_PER_REQUEST: usize = 32;

/// An I/O that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    /// The buffer is not a whole number of sectors.
    Unaligned { len: usize },
    /// The I/O runs past the end of the disk.
    OutOfRange { sector: u64, len: usize },
    /// The back end refused a write to a read-only disk.
    ReadOnly,
    /// The back end reported an I/O error (`BLKIF_RSP_ERROR`).
    Io { sector: u64 },
    /// The back end does not support the operation (`BLKIF_RSP_EOPNOTSUPP`).
    NotSupported,
    /// The back end broke the ring; the disk is unusable.
    Broken(RingOverrun),
}

impl core::fmt::Display for BlkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unaligned { len } => write!(
                f,
                "{len} bytes is not a whole number of {SECTOR_SIZE}-byte sectors"
            ),
            Self::OutOfRange { sector, len } => write!(
                f,
                "{len} bytes at sector {sector} run past the end of the disk"
            ),
            Self::ReadOnly => f.write_str("the disk is read-only: the back end refused the write"),
            Self::Io { sector } => {
                write!(f, "I/O error reported by the back end at sector {sector}")
            }
            Self::NotSupported => f.write_str("the back end does not support this operation"),
            Self::Broken(err) => write!(f, "ring broken: {err}"),
        }
    }
}

/// Why the data path cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupError {
    Grant(GrantError),
    EventChannel(arch::errno::Errno),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Grant(err) => write!(f, "granting a page: {err}"),
            Self::EventChannel(err) => write!(f, "event channel: {err}"),
        }
    }
}

struct InFlight {
    /// What was queued, to queue it again for a new back end ([`restart`]).
    request: RawRequest,
    status: Option<i16>,
    waker: Option<Waker>,
}

struct Device {
    ring: BlkFront,
    pages: Vec<GrantedFrame>,
    indirect: Vec<GrantedFrame>,
    in_flight: BTreeMap<u64, InFlight>,
    waiting: Vec<Waker>,
    next_id: u64,
    broken: Option<RingOverrun>,
    _ring_page: GrantedFrame,
}

/// Every connected device by event-channel port: the event handler has no context
/// other than the port.
static DEVICES: VcpuMutex<BTreeMap<Port, Device>> = VcpuMutex::new(BTreeMap::new());

/// The data path of one disk.
#[derive(Debug)]
pub struct Datapath {
    channel: EventChannel,
    handle: u16,
    info: DiskInfo,
}

/// What a negotiation publishes for the back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub ring_ref: GrantRef,
    pub event_channel: u32,
}

impl Datapath {
    /// Set up the ring and the bounce pages for back end `backend`; `handle` is the
    /// virtual device number requests carry.
    pub fn new(backend: DomId, handle: u16) -> Result<(Self, Published), SetupError> {
        let ring_page = GrantedFrame::new(backend, false).map_err(SetupError::Grant)?;
        // SAFETY: the page is ours, page aligned, mapped as long as the ring (which owns
        // it) lives, and shared with the back end only.
        let ring = unsafe { BlkFront::new(ring_page.ptr()) };
        let pages = (0..POOL_PAGES)
            .map(|_| GrantedFrame::new(backend, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SetupError::Grant)?;
        // Writable although the back end only reads them: with persistent grants, Linux's
        // blkback maps every grant read-write, and a read-only grant fails the request.
        let indirect = (0..2)
            .map(|_| GrantedFrame::new(backend, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(SetupError::Grant)?;
        let channel = EventChannel::alloc_unbound(backend).map_err(SetupError::EventChannel)?;
        let published = Published {
            ring_ref: ring_page.gref(),
            event_channel: channel.port(),
        };
        let device = Device {
            ring,
            pages,
            indirect,
            in_flight: BTreeMap::new(),
            waiting: Vec::new(),
            next_id: 0,
            broken: None,
            _ring_page: ring_page,
        };
        DEVICES.lock().insert(channel.id(), device);
        channel.set_handler(on_event);
        Ok((
            Self {
                channel,
                handle,
                info: DiskInfo::default(),
            },
            published,
        ))
    }

    /// Signals through the data channel, by its current port; and the channel's id.
    pub fn channel(&self) -> (Notifier, Port) {
        (self.channel.notifier(), self.channel.id())
    }

    /// The back end is connected and described the disk.
    pub fn start(&mut self, info: DiskInfo) {
        self.info = info;
    }

    pub fn info(&self) -> DiskInfo {
        self.info
    }

    /// Pages one request may carry: direct segments, or indirect ones when offered.
    fn pages_per_request(&self) -> usize {
        let indirect = (self.info.max_indirect_segments as usize).min(SEGMENTS_PER_INDIRECT_PAGE);
        indirect.clamp(MAX_SEGMENTS, MAX_PAGES_PER_REQUEST)
    }

    fn check_range(&self, sector: u64, len: usize) -> Result<(), BlkError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::Unaligned { len });
        }
        let disk_sectors = self.info.bytes() / SECTOR_SIZE as u64;
        let end = sector.checked_add((len / SECTOR_SIZE) as u64);
        if end.is_none_or(|end| end > disk_sectors) {
            return Err(BlkError::OutOfRange { sector, len });
        }
        Ok(())
    }

    /// Read `buf.len()` bytes from 512-byte sector `sector`.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.check_range(sector, buf.len())?;
        self.transfer(sector, Buffer::Read(buf)).await
    }

    /// Write `buf` at 512-byte sector `sector`.
    pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.check_range(sector, buf.len())?;
        self.transfer(sector, Buffer::Write(buf)).await
    }

    /// Issue the requests of an I/O, several in flight. A task waits for bounce pages
    /// only while it holds none: otherwise it first completes its oldest request, so
    /// two tasks can never each hold pages the other waits for.
    async fn transfer(&self, sector: u64, mut buf: Buffer<'_>) -> Result<(), BlkError> {
        let mut in_flight = VecDeque::new();
        let mut result = Ok(());
        for chunk in blkif::chunks(sector, buf.len(), self.pages_per_request()) {
            let pages = loop {
                match self
                    .reserve(chunk.len.div_ceil(PAGE_SIZE), in_flight.is_empty())
                    .await?
                {
                    Some(pages) => break pages,
                    None => {
                        let (done, issued) = in_flight
                            .pop_front()
                            .expect("waits only with requests in flight");
                        result =
                            result.and(self.complete(issued, |pages| buf.drain(done, pages)).await);
                    }
                }
            };
            if let Buffer::Write(data) = &buf {
                copy_in(&pages.0, &data[chunk.offset..chunk.offset + chunk.len]);
            }
            in_flight.push_back((
                chunk,
                self.issue(buf.is_write(), chunk.sector, chunk.len, pages),
            ));
        }
        for (done, issued) in in_flight {
            result = result.and(self.complete(issued, |pages| buf.drain(done, pages)).await);
        }
        result
    }

    /// Write back the back end's cache (a no-op if it has no `feature-flush-cache`).
    pub async fn flush(&self) -> Result<(), BlkError> {
        if !self.info.flush {
            return Ok(());
        }
        let request = self.submit_flush().await?;
        self.complete(request, |_| {}).await
    }

    /// Take a ring slot and `pages` bounce pages (plus an indirect page when a request
    /// needs one). When they are not free: wait if `may_wait`, else `Ok(None)`.
    async fn reserve(&self, pages: usize, may_wait: bool) -> Result<Option<Reserved>, BlkError> {
        let indirect = pages > MAX_SEGMENTS;
        let port = self.channel.id();
        poll_fn(|cx| {
            let mut devices = DEVICES.lock();
            let device = devices.get_mut(&port).expect("device registered");
            if let Some(err) = device.broken {
                return Poll::Ready(Err(BlkError::Broken(err)));
            }
            let fits = device.ring.free_requests() > 0
                && device.pages.len() >= pages
                && (!indirect || !device.indirect.is_empty());
            if !fits {
                if !may_wait {
                    return Poll::Ready(Ok(None));
                }
                device.waiting.push(cx.waker().clone());
                return Poll::Pending;
            }
            let taken = device.pages.len() - pages;
            let reserved = Reserved(
                device.pages.drain(taken..).collect(),
                if indirect {
                    device.indirect.pop()
                } else {
                    None
                },
            );
            Poll::Ready(Ok(Some(reserved)))
        })
        .await
    }

    /// Queue a read or write of `len` bytes at `sector` over the reserved pages.
    fn issue(
        &self,
        write: bool,
        sector: u64,
        len: usize,
        Reserved(pages, indirect_page): Reserved,
    ) -> Issued {
        let id = self.next_id();
        let grefs: Vec<GrantRef> = pages.iter().map(GrantedFrame::gref).collect();
        let segments: Vec<Segment> = blkif::page_segments(len, &grefs).collect();
        let request = match &indirect_page {
            None => Request::Rw {
                write,
                handle: self.handle,
                id,
                sector,
                segments: &segments,
            },
            Some(page) => {
                // SAFETY: the indirect page is ours and not in use by the back end (it is
                // out of the pool); 512 segments fill it exactly.
                let list = unsafe {
                    core::slice::from_raw_parts_mut(
                        page.ptr().cast::<Segment>(),
                        SEGMENTS_PER_INDIRECT_PAGE,
                    )
                };
                list[..segments.len()].copy_from_slice(&segments);
                Request::Indirect {
                    write,
                    handle: self.handle,
                    id,
                    sector,
                    nr_segments: segments.len() as u16,
                    pages: &[page.gref()],
                }
            }
        };
        let raw =
            RawRequest::encode(&request).expect("requests are built within the protocol's limits");
        self.queue(id, raw);
        Issued {
            id,
            sector,
            write,
            pages,
            indirect_page,
        }
    }

    fn next_id(&self) -> u64 {
        let mut devices = DEVICES.lock();
        let device = devices
            .get_mut(&self.channel.id())
            .expect("device registered");
        device.next_id += 1;
        device.next_id
    }

    async fn submit_flush(&self) -> Result<Issued, BlkError> {
        let reserved = self.reserve(0, true).await?.expect("waits until reserved");
        let id = self.next_id();
        let raw = RawRequest::encode(&Request::Flush {
            handle: self.handle,
            id,
        })
        .expect("a flush always encodes");
        self.queue(id, raw);
        Ok(Issued {
            id,
            sector: 0,
            write: false,
            pages: reserved.0,
            indirect_page: reserved.1,
        })
    }

    fn queue(&self, id: u64, raw: RawRequest) {
        let mut devices = DEVICES.lock();
        let device = devices
            .get_mut(&self.channel.id())
            .expect("device registered");
        device.in_flight.insert(
            id,
            InFlight {
                request: raw,
                status: None,
                waker: None,
            },
        );
        device.ring.queue_request(raw).expect("a slot was reserved");
        if device.ring.push_requests() {
            let _ = self.channel.notify();
        }
    }

    /// Wait for `issued`'s response, let `drain` read its pages, give the pages back.
    async fn complete(
        &self,
        issued: Issued,
        drain: impl FnOnce(&[GrantedFrame]),
    ) -> Result<(), BlkError> {
        let port = self.channel.id();
        let status = poll_fn(|cx| {
            let mut devices = DEVICES.lock();
            let device = devices.get_mut(&port).expect("device registered");
            if let Some(err) = device.broken {
                // Given up: not queued again for a back end that comes later.
                device.in_flight.remove(&issued.id);
                return Poll::Ready(Err(BlkError::Broken(err)));
            }
            let slot = device
                .in_flight
                .get_mut(&issued.id)
                .expect("request in flight");
            match slot.status {
                Some(status) => {
                    device.in_flight.remove(&issued.id);
                    Poll::Ready(Ok(status))
                }
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let status = match status {
            Ok(status) => status,
            // A broken ring: the back end may still write the pages; never reuse them.
            Err(err) => {
                core::mem::forget(issued.pages);
                core::mem::forget(issued.indirect_page);
                return Err(err);
            }
        };
        if status == RSP_OKAY {
            drain(&issued.pages);
        }
        let mut devices = DEVICES.lock();
        let device = devices.get_mut(&port).expect("device registered");
        device.pages.extend(issued.pages);
        device.indirect.extend(issued.indirect_page);
        for waker in device.waiting.drain(..) {
            waker.wake();
        }
        match status {
            RSP_OKAY => Ok(()),
            RSP_EOPNOTSUPP => Err(BlkError::NotSupported),
            _ if issued.write && self.info.readonly => Err(BlkError::ReadOnly),
            _ => Err(BlkError::Io {
                sector: issued.sector,
            }),
        }
    }
}

/// Bounce pages (and maybe an indirect page) taken from the pool for one request.
struct Reserved(Vec<GrantedFrame>, Option<GrantedFrame>);

/// The caller's side of an I/O.
enum Buffer<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buffer<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Read(buf) => buf.len(),
            Self::Write(buf) => buf.len(),
        }
    }

    fn is_write(&self) -> bool {
        matches!(self, Self::Write(_))
    }

    /// After a successful request: a read copies its pages into place.
    fn drain(&mut self, chunk: blkif::Chunk, pages: &[GrantedFrame]) {
        if let Self::Read(buf) = self {
            copy_out(pages, &mut buf[chunk.offset..chunk.offset + chunk.len]);
        }
    }
}

/// A queued request and the pages it holds.
struct Issued {
    id: u64,
    sector: u64,
    write: bool,
    pages: Vec<GrantedFrame>,
    indirect_page: Option<GrantedFrame>,
}

fn copy_in(pages: &[GrantedFrame], data: &[u8]) {
    for (page, part) in pages.iter().zip(data.chunks(PAGE_SIZE)) {
        // SAFETY: the page is ours, out of the pool and not yet queued: the back end
        // does not touch it.
        unsafe {
            page.ptr()
                .copy_from_nonoverlapping(part.as_ptr(), part.len());
        };
    }
}

fn copy_out(pages: &[GrantedFrame], out: &mut [u8]) {
    for (page, part) in pages.iter().zip(out.chunks_mut(PAGE_SIZE)) {
        // SAFETY: the back end has answered the request: it no longer writes the page.
        unsafe {
            part.as_mut_ptr()
                .copy_from_nonoverlapping(page.ptr(), part.len());
        };
    }
}

/// The back end of the disk whose channel is `id` ([`EventChannel::id`]) went away and
/// a new one is about to connect (a NoXS re-offer, a restore): take the responses the
/// old one announced, start the ring afresh and queue again every request it did not
/// answer, in the order they were issued, for the new back end to serve. Returns how
/// many were queued again.
pub fn restart(id: Port) -> usize {
    let mut devices = DEVICES.lock();
    let Some(device) = devices.get_mut(&id) else {
        return 0;
    };
    if let Err(err) = take_responses(device) {
        log::warn!("blkfront: the old ring: {err}");
    }
    device.ring.reset();
    device.broken = None;
    let mut again = 0;
    for slot in device
        .in_flight
        .values()
        .filter(|slot| slot.status.is_none())
    {
        // As many as were in flight on a ring of the same size: they fit.
        device
            .ring
            .queue_request(slot.request)
            .expect("what was in flight fits the ring");
        again += 1;
    }
    device.ring.push_requests();
    again
}

/// Record the responses on `device`'s ring and wake their waiters.
fn take_responses(device: &mut Device) -> Result<(), RingOverrun> {
    while let Some(response) = device.ring.take_response()? {
        // Only ids we have in flight, once each; anything else is ignored.
        match device.in_flight.get_mut(&response.id) {
            Some(slot) if slot.status.is_none() => {
                slot.status = Some(response.status);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            _ => log::warn!("blkfront: response for unknown request {}", response.id),
        }
    }
    Ok(())
}

/// Responses arrived on `port`: record them and wake their waiters.
fn on_event(port: Port) {
    let mut devices = DEVICES.lock();
    let Some(device) = devices.get_mut(&port) else {
        return;
    };
    loop {
        if let Err(err) = take_responses(device) {
            log::error!("blkfront: {err}");
            device.broken = Some(err);
            wake_all(device);
            return;
        }
        match device.ring.final_check_for_responses() {
            Ok(true) => continue,
            Ok(false) => return,
            Err(err) => {
                device.broken = Some(err);
                wake_all(device);
                return;
            }
        }
    }
}

fn wake_all(device: &mut Device) {
    for slot in device.in_flight.values_mut() {
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
    for waker in device.waiting.drain(..) {
        waker.wake();
    }
}
