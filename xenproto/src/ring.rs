//! Xen's request/response rings (`xen/include/public/io/ring.h`), front and back.
//!
//! A shared page holds four indices — `req_prod`, `req_event`, `rsp_prod`, `rsp_event`
//! — then 48 bytes of padding, then a power-of-two array of slots, each big enough for
//! a request or a response. The front end produces requests and consumes responses;
//! the back end the reverse. Indices run freely and wrap at 2^32.
//!
//! Event suppression: a producer notifies only if the consumer asked to be woken at
//! an index it just passed (`*_event`); a consumer that finds nothing to do sets its
//! event index one past what it consumed and checks again before sleeping.
//!
//! Everything read from the other side is copied once, then validated: a producer
//! index more than a ring ahead of our consumer index is an error, never a loop over
//! garbage. Slot contents are plain integers ([`RingEntry`]) the caller validates.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering, fence};

use crate::shared;

/// Size of a shared ring page.
pub const PAGE_SIZE: usize = 4096;
/// Offset of the first slot in the page.
pub const HEADER_SIZE: usize = 64;

/// A request or response that travels through a ring.
///
/// # Safety
/// Implementors must be `#[repr(C)]` structs of plain integers without padding, so
/// that any bytes the peer writes form a valid value.
pub unsafe trait RingEntry: Copy {}

/// The peer moved an index to where no correct peer would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOverrun {
    /// The peer's producer index.
    pub prod: u32,
    /// Our consumer index.
    pub cons: u32,
    pub size: u32,
}

impl core::fmt::Display for RingOverrun {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "peer's producer index {} is {} entries ahead of consumer {} in a ring of {}",
            self.prod,
            self.prod.wrapping_sub(self.cons),
            self.cons,
            self.size
        )
    }
}

/// The ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// `struct *_sring` header.
#[repr(C)]
struct Header {
    req_prod: AtomicU32,
    req_event: AtomicU32,
    rsp_prod: AtomicU32,
    rsp_event: AtomicU32,
}

/// How many slots fit a page for a slot of `slot_size` bytes (`__CONST_RING_SIZE`:
/// the largest power of two that fits).
pub const fn ring_size(slot_size: usize) -> u32 {
    let fit = ((PAGE_SIZE - HEADER_SIZE) / slot_size) as u32;
    1 << (31 - fit.leading_zeros())
}

/// The shared page seen as a ring of `Req`/`Rsp` slots.
#[derive(Debug)]
struct Shared<Req, Rsp> {
    page: *mut u8,
    _entries: PhantomData<(Req, Rsp)>,
}

impl<Req: RingEntry, Rsp: RingEntry> Shared<Req, Rsp> {
    const SLOT: usize = {
        let size = if size_of::<Req>() > size_of::<Rsp>() {
            size_of::<Req>()
        } else {
            size_of::<Rsp>()
        };
        let align = if align_of::<Req>() > align_of::<Rsp>() {
            align_of::<Req>()
        } else {
            align_of::<Rsp>()
        };
        size.next_multiple_of(align)
    };
    const SIZE: u32 = ring_size(Self::SLOT);

    fn header(&self) -> &Header {
        // SAFETY: the page starts with the header (see `FrontRing::new`/`BackRing::new`),
        // and it consists of atomics, which may alias the peer's accesses.
        unsafe { &*self.page.cast::<Header>() }
    }

    fn slot<T: RingEntry>(&self, index: u32) -> NonNull<T> {
        let at = HEADER_SIZE + (index & (Self::SIZE - 1)) as usize * Self::SLOT;
        // SAFETY: `at` + SLOT <= PAGE_SIZE by the choice of SIZE, inside the page `new`
        // was given (never null).
        unsafe { NonNull::new_unchecked(self.page.add(at)) }.cast()
    }

    fn write<T: RingEntry>(&self, index: u32, entry: T) {
        // SAFETY: the slot is inside the page and suitably aligned for T (slots are
        // multiples of the entry alignment from a 64-byte offset of a page); the peer
        // does not read the slot before we publish it.
        unsafe { shared::write(self.slot(index), entry) }
    }

    fn read<T: RingEntry>(&self, index: u32) -> T {
        // SAFETY: as for `write`; any bytes the peer wrote are a valid T (plain
        // integers), copied once.
        unsafe { shared::read(self.slot(index)) }
    }
}

/// The front end of a ring: produces requests, consumes responses.
#[derive(Debug)]
pub struct FrontRing<Req, Rsp> {
    shared: Shared<Req, Rsp>,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl<Req: RingEntry, Rsp: RingEntry> FrontRing<Req, Rsp> {
    /// Slots in the ring.
    pub const SIZE: u32 = Shared::<Req, Rsp>::SIZE;

    /// Initialise a fresh shared ring in `page` (`SHARED_RING_INIT` + `FRONT_RING_INIT`).
    ///
    /// # Safety
    /// `page` must be a page-aligned, writable page that stays mapped as long as the
    /// ring is used, shared with the back end only.
    pub unsafe fn new(page: *mut u8) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe { page.write_bytes(0, PAGE_SIZE) };
        let shared = Shared {
            page,
            _entries: PhantomData,
        };
        shared.header().req_event.store(1, Ordering::Relaxed);
        shared.header().rsp_event.store(1, Ordering::Relaxed);
        Self {
            shared,
            req_prod_pvt: 0,
            rsp_cons: 0,
        }
    }

    /// Start the ring afresh (`SHARED_RING_INIT` and `FRONT_RING_INIT` again), for a
    /// new back end: one that died may have written responses over requests it never
    /// announced, so no slot of the old ring can be trusted to hold a request. Call it
    /// only while no back end is attached; the caller queues again what it still wants.
    pub fn reset(&mut self) {
        // SAFETY: the page is this ring's, mapped and writable as `new` required.
        *self = unsafe { Self::new(self.shared.page) };
    }

    /// Requests that can be queued now.
    pub fn free_requests(&self) -> u32 {
        Self::SIZE - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Queue a request (not visible to the back end until [`Self::push_requests`]).
    pub fn queue_request(&mut self, request: Req) -> Result<(), RingFull> {
        if self.free_requests() == 0 {
            return Err(RingFull);
        }
        self.shared.write(self.req_prod_pvt, request);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish queued requests. Returns whether the back end must be notified.
    pub fn push_requests(&mut self) -> bool {
        let header = self.shared.header();
        let old = header.req_prod.load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        header.req_prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = header.req_event.load(Ordering::Acquire);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Responses published and not yet consumed.
    pub fn unconsumed_responses(&self) -> Result<u32, RingOverrun> {
        let prod = self.shared.header().rsp_prod.load(Ordering::Acquire);
        let pending = prod.wrapping_sub(self.rsp_cons);
        // More responses than requests outstanding is as broken as a lapped ring.
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        if pending > outstanding {
            return Err(RingOverrun {
                prod,
                cons: self.rsp_cons,
                size: Self::SIZE,
            });
        }
        Ok(pending)
    }

    /// Take the next response, if one is published.
    pub fn take_response(&mut self) -> Result<Option<Rsp>, RingOverrun> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let response = self.shared.read(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(response))
    }

    /// Before sleeping: ask to be notified of the next response and check once more
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). Returns whether responses are waiting.
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingOverrun> {
        if self.unconsumed_responses()? > 0 {
            return Ok(true);
        }
        self.shared
            .header()
            .rsp_event
            .store(self.rsp_cons.wrapping_add(1), Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses()? > 0)
    }
}

/// The back end of a ring: consumes requests, produces responses.
#[derive(Debug)]
pub struct BackRing<Req, Rsp> {
    shared: Shared<Req, Rsp>,
    rsp_prod_pvt: u32,
    req_cons: u32,
}

impl<Req: RingEntry, Rsp: RingEntry> BackRing<Req, Rsp> {
    /// Slots in the ring.
    pub const SIZE: u32 = Shared::<Req, Rsp>::SIZE;

    /// Attach to a ring the front end initialised (fresh: a front end whose back end
    /// went away starts its ring afresh, [`FrontRing::reset`], before it connects
    /// again).
    ///
    /// # Safety
    /// `page` must be the page-aligned shared ring page, mapped as long as the ring
    /// is used.
    pub unsafe fn new(page: *mut u8) -> Self {
        Self {
            shared: Shared {
                page,
                _entries: PhantomData,
            },
            rsp_prod_pvt: 0,
            req_cons: 0,
        }
    }

    /// Requests published and not yet consumed.
    pub fn unconsumed_requests(&self) -> Result<u32, RingOverrun> {
        let prod = self.shared.header().req_prod.load(Ordering::Acquire);
        let pending = prod.wrapping_sub(self.req_cons);
        // Requests whose responses are not yet produced occupy slots too.
        let in_flight = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if pending > Self::SIZE - in_flight.min(Self::SIZE) {
            return Err(RingOverrun {
                prod,
                cons: self.req_cons,
                size: Self::SIZE,
            });
        }
        Ok(pending)
    }

    /// Take the next request, if one is published.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingOverrun> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let request = self.shared.read(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(request))
    }

    /// Queue a response (not visible until [`Self::push_responses`]).
    pub fn queue_response(&mut self, response: Rsp) -> Result<(), RingFull> {
        if self.rsp_prod_pvt == self.req_cons {
            // A response without a request to answer would overwrite an unread one.
            return Err(RingFull);
        }
        self.shared.write(self.rsp_prod_pvt, response);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publish queued responses. Returns whether the front end must be notified.
    pub fn push_responses(&mut self) -> bool {
        let header = self.shared.header();
        let old = header.rsp_prod.load(Ordering::Relaxed);
        let new = self.rsp_prod_pvt;
        header.rsp_prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = header.rsp_event.load(Ordering::Acquire);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Before sleeping: ask to be notified of the next request and check once more.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingOverrun> {
        if self.unconsumed_requests()? > 0 {
            return Ok(true);
        }
        self.shared
            .header()
            .req_event
            .store(self.req_cons.wrapping_add(1), Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Req {
        id: u32,
        value: u32,
        extra: u32,
    }
    // SAFETY: plain integers, no padding.
    unsafe impl RingEntry for Req {}

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Rsp {
        id: u32,
    }
    // SAFETY: plain integers, no padding.
    unsafe impl RingEntry for Rsp {}

    #[repr(C, align(4096))]
    struct Page([u8; PAGE_SIZE]);

    fn page() -> Box<Page> {
        Box::new(Page([0xaa; PAGE_SIZE]))
    }

    fn pair(page: &mut Page) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>) {
        let ptr = page.0.as_mut_ptr();
        // SAFETY: the page outlives both rings in each test.
        unsafe { (FrontRing::new(ptr), BackRing::new(ptr)) }
    }

    #[test]
    fn sizes_match_the_c_macros() {
        // netif tx: 12-byte requests → 336 fit → 256; blkif: 112-byte slots → 32.
        assert_eq!(ring_size(12), 256);
        assert_eq!(ring_size(8), 256);
        assert_eq!(ring_size(112), 32);
        assert_eq!(FrontRing::<Req, Rsp>::SIZE, 256);
    }

    #[test]
    fn requests_and_responses_cross_over_wrap_around() {
        let mut page = page();
        let (mut front, mut back) = pair(&mut page);
        let mut next_id = 0u32;
        let mut answered = 0u32;
        // Batch sizes around the ring size hit every wrap position many times.
        for batch in [255u32, 256, 1, 255, 17, 256, 100] {
            for _ in 0..batch {
                front
                    .queue_request(Req {
                        id: next_id,
                        value: next_id * 3,
                        extra: 7,
                    })
                    .unwrap();
                next_id += 1;
            }
            if batch == 256 {
                assert_eq!(
                    front.queue_request(Req {
                        id: 0,
                        value: 0,
                        extra: 0
                    }),
                    Err(RingFull)
                );
            }
            front.push_requests();
            while let Some(req) = back.take_request().unwrap() {
                assert_eq!(req.value, req.id * 3);
                back.queue_response(Rsp { id: req.id }).unwrap();
            }
            back.push_responses();
            while let Some(rsp) = front.take_response().unwrap() {
                assert_eq!(rsp.id, answered);
                answered += 1;
            }
        }
        assert_eq!(answered, next_id);
        assert_eq!(front.free_requests(), 256);
    }

    #[test]
    fn a_reset_ring_starts_afresh_for_a_new_back_end() {
        let mut page = page();
        let (mut front, mut back) = pair(&mut page);
        let queue_five = |front: &mut FrontRing<Req, Rsp>| {
            for id in 0..5 {
                let request = Req {
                    id,
                    value: 0,
                    extra: 0,
                };
                front.queue_request(request).unwrap();
            }
            front.push_requests();
        };
        queue_five(&mut front);
        // The first back end takes all five, writes two responses over their slots and
        // dies before it announces them.
        for _ in 0..5 {
            back.take_request().unwrap().unwrap();
        }
        back.queue_response(Rsp { id: 0 }).unwrap();
        back.queue_response(Rsp { id: 1 }).unwrap();
        // The front end starts afresh and queues the five again.
        front.reset();
        queue_five(&mut front);
        // SAFETY: the page outlives the ring in this test.
        let mut again: BackRing<Req, Rsp> = unsafe { BackRing::new(page.0.as_mut_ptr()) };
        let ids: Vec<u32> = core::iter::from_fn(|| again.take_request().unwrap())
            .map(|req| req.id)
            .collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert_eq!(front.free_requests(), 256 - 5);
    }

    #[test]
    fn notifications_only_when_the_peer_waits() {
        let mut page = page();
        let (mut front, mut back) = pair(&mut page);
        // A fresh ring: the back end waits for request 1.
        front
            .queue_request(Req {
                id: 1,
                value: 0,
                extra: 0,
            })
            .unwrap();
        assert!(front.push_requests());
        // It has not asked again: more requests need no notification.
        front
            .queue_request(Req {
                id: 2,
                value: 0,
                extra: 0,
            })
            .unwrap();
        assert!(!front.push_requests());
        // The back end drains, finds nothing more and re-arms.
        while back.take_request().unwrap().is_some() {}
        assert!(!back.final_check_for_requests().unwrap());
        front
            .queue_request(Req {
                id: 3,
                value: 0,
                extra: 0,
            })
            .unwrap();
        assert!(front.push_requests());
        // Same for responses.
        back.take_request().unwrap();
        for id in 1..=3 {
            back.queue_response(Rsp { id }).unwrap();
        }
        assert!(back.push_responses());
        assert!(front.final_check_for_responses().unwrap());
    }

    #[test]
    fn a_back_end_cannot_answer_what_was_not_asked() {
        let mut page = page();
        let (_front, mut back) = pair(&mut page);
        assert_eq!(back.queue_response(Rsp { id: 0 }), Err(RingFull));
    }

    #[test]
    fn hostile_indices_are_rejected() {
        let mut page = page();
        let header = page.0.as_mut_ptr().cast::<Header>();
        let (mut front, mut back) = pair(&mut page);
        // SAFETY: the page is alive; the header is atomics.
        let header = unsafe { &*header };
        // The back end claims 5 responses while none were requested.
        header.rsp_prod.store(5, Ordering::Relaxed);
        assert_eq!(
            front.take_response(),
            Err(RingOverrun {
                prod: 5,
                cons: 0,
                size: 256
            })
        );
        // The front end claims a request index far ahead of the consumer.
        header.req_prod.store(1000, Ordering::Relaxed);
        assert_eq!(
            back.take_request(),
            Err(RingOverrun {
                prod: 1000,
                cons: 0,
                size: 256
            })
        );
        // Exactly a full ring is fine.
        header.req_prod.store(256, Ordering::Relaxed);
        assert_eq!(back.unconsumed_requests(), Ok(256));
    }

    #[test]
    fn indices_wrap_at_u32() {
        let mut page = page();
        let (mut front, mut back) = pair(&mut page);
        let start = u32::MAX - 2;
        front.req_prod_pvt = start;
        front.rsp_cons = start;
        back.req_cons = start;
        back.rsp_prod_pvt = start;
        let header = front.shared.header();
        for index in [&header.req_prod, &header.rsp_prod] {
            index.store(start, Ordering::Relaxed);
        }
        for id in 0..6 {
            front
                .queue_request(Req {
                    id,
                    value: 0,
                    extra: 0,
                })
                .unwrap();
        }
        front.push_requests();
        let mut seen = Vec::new();
        while let Some(req) = back.take_request().unwrap() {
            seen.push(req.id);
            back.queue_response(Rsp { id: req.id }).unwrap();
        }
        back.push_responses();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
        let mut answered = 0;
        while front.take_response().unwrap().is_some() {
            answered += 1;
        }
        assert_eq!(answered, 6);
    }
}
