//! The netif data path: two rings, their buffers and grants, and the event channel.
//! It does not know how it was negotiated: [`Datapath::new`] gives the values a
//! negotiation publishes (ring references, event channel), and the negotiation calls
//! [`Datapath::start`] once the back end is connected.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::future::poll_fn;
use core::ptr::NonNull;
use core::task::{Poll, Waker};

use arch::abi::{DomId, GrantRef};
use arch::mm::PAGE_SIZE;
use kernel::events::{EventChannel, Notifier};
use kernel::grant::{GrantError, GrantedFrame};
use xenproto::netif::{RSP_OKAY, RxFront, RxRequest, TxFront, TxRequest};
use xenproto::ring::RingOverrun;
use xenproto::shared::SharedBytes;

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Receive responses with an error status or that failed validation.
    pub rx_errors: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Transmit responses with an error status.
    pub tx_errors: u64,
}

/// Why the data path cannot be set up or go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathError {
    Grant(GrantError),
    EventChannel(arch::errno::Errno),
    /// The back end broke a ring: the device is unusable.
    Ring(RingOverrun),
}

impl core::fmt::Display for DatapathError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Grant(err) => write!(f, "granting a buffer: {err}"),
            Self::EventChannel(err) => write!(f, "event channel: {err}"),
            Self::Ring(err) => write!(f, "ring: {err}"),
        }
    }
}

/// What a negotiation publishes for the back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub tx_ring_ref: GrantRef,
    pub rx_ring_ref: GrantRef,
    pub event_channel: u32,
}

/// Receive side: a ring with one granted page per slot, always posted.
#[derive(Debug)]
pub(crate) struct RxPath {
    ring: RxFront,
    slots: Vec<GrantedFrame>,
    port: Notifier,
    pub(crate) counters: Counters,
    /// Where a received frame is copied before anyone reads it: the back end can still
    /// write the slot's page.
    copy: Box<[u8; PAGE_SIZE]>,
    _ring_page: GrantedFrame,
}

/// Transmit side: a ring with one granted page per slot, reused once answered.
#[derive(Debug)]
pub(crate) struct TxPath {
    ring: TxFront,
    slots: Vec<GrantedFrame>,
    free: Vec<u16>,
    port: Notifier,
    pub(crate) counters: Counters,
    _ring_page: GrantedFrame,
}

/// Both rings and the event channel of one vif.
#[derive(Debug)]
pub struct Datapath {
    pub(crate) rx: RxPath,
    pub(crate) tx: TxPath,
    channel: EventChannel,
    /// Set by a NoXS re-offer while no back end is attached ([`Datapath::restart_request`]),
    /// taken at the next use of the rings.
    restart: Rc<RestartRequest>,
}

/// A new back end's request (NoXS re-offer, restore) that the rings start afresh
/// before it connects. The rings are the stack's: the request wakes it and waits for
/// its next use of them ([`Datapath::take_restart`]).
#[derive(Default)]
pub struct RestartRequest {
    asked: Cell<bool>,
    waiter: Cell<Option<Waker>>,
    /// The new back end is connected: peers and switches must learn where we are.
    reconnected: Cell<bool>,
}

impl core::fmt::Debug for RestartRequest {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RestartRequest")
            .field("asked", &self.asked.get())
            .finish_non_exhaustive()
    }
}

impl RestartRequest {
    /// Ask, wake the stack through its data channel, and wait until it started the
    /// rings afresh.
    pub async fn ask(&self, port: &Notifier) {
        self.asked.set(true);
        port.raise();
        poll_fn(|cx| {
            if self.asked.get() {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Tell the stack (woken through `port`) the new back end is connected.
    pub fn reconnected(&self, port: &Notifier) {
        self.reconnected.set(true);
        port.raise();
    }

    /// Whether a restart was asked; the asker is told it is done when this returns.
    fn take(&self) -> bool {
        let asked = self.asked.replace(false);
        if let Some(waiter) = self.waiter.take() {
            waiter.wake();
        }
        asked
    }
}

/// Buffers per ring. Fewer than the ring's 256 slots: 64 + 64 pages (512 KiB) keep a
/// small guest small, and daytime-sized traffic never fills them.
pub const SLOTS: u16 = 64;

impl Datapath {
    /// Allocate and grant rings and buffers for back end `backend`, and an unbound
    /// event channel it can bind.
    pub fn new(backend: DomId) -> Result<Self, DatapathError> {
        let tx_page = GrantedFrame::new(backend, false).map_err(DatapathError::Grant)?;
        let rx_page = GrantedFrame::new(backend, false).map_err(DatapathError::Grant)?;
        // SAFETY: both pages are ours, page aligned, mapped for as long as the rings
        // (which own them) live, and shared with the back end only.
        let (tx_ring, rx_ring) =
            unsafe { (TxFront::new(tx_page.ptr()), RxFront::new(rx_page.ptr())) };
        let channel = EventChannel::alloc_unbound(backend).map_err(DatapathError::EventChannel)?;
        let rx_slots = (0..SLOTS)
            .map(|_| GrantedFrame::new(backend, false).map_err(DatapathError::Grant))
            .collect::<Result<Vec<_>, _>>()?;
        let tx_slots = (0..SLOTS)
            .map(|_| GrantedFrame::new(backend, true).map_err(DatapathError::Grant))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rx = RxPath {
            ring: rx_ring,
            slots: rx_slots,
            port: channel.notifier(),
            counters: Counters::default(),
            copy: Box::new([0; PAGE_SIZE]),
            _ring_page: rx_page,
        };
        for id in 0..SLOTS {
            rx.post(id);
        }
        let tx = TxPath {
            ring: tx_ring,
            slots: tx_slots,
            free: (0..SLOTS).rev().collect(),
            port: channel.notifier(),
            counters: Counters::default(),
            _ring_page: tx_page,
        };
        Ok(Self {
            rx,
            tx,
            channel,
            restart: Rc::default(),
        })
    }

    /// The values the back end needs.
    pub fn published(&self) -> Published {
        Published {
            tx_ring_ref: self.tx._ring_page.gref(),
            rx_ring_ref: self.rx._ring_page.gref(),
            event_channel: self.channel.port(),
        }
    }

    /// The back end is connected: publish the posted receive buffers.
    pub fn start(&mut self) {
        self.rx.ring.push_requests();
        let _ = self.channel.notify();
    }

    /// Traffic so far.
    pub fn counters(&self) -> Counters {
        let (rx, tx) = (self.rx.counters, self.tx.counters);
        Counters {
            tx_packets: tx.tx_packets,
            tx_bytes: tx.tx_bytes,
            tx_errors: tx.tx_errors,
            ..rx
        }
    }

    /// How a re-offer or a restore asks for the rings to start afresh.
    pub fn restart_request(&self) -> Rc<RestartRequest> {
        Rc::clone(&self.restart)
    }

    /// Signals through the data channel, by its current port.
    pub fn notifier(&self) -> Notifier {
        self.channel.notifier()
    }

    /// Whether a new back end connected since the last call (see
    /// [`RestartRequest::reconnected`]).
    pub fn take_reconnected(&mut self) -> bool {
        self.restart.reconnected.replace(false)
    }

    /// If a re-offer asked (the old back end is gone, the new one not attached yet):
    /// start both rings afresh, post every receive buffer again, and drop the
    /// transmits in flight (counted as errors; the network may lose frames anyway).
    pub(crate) fn take_restart(&mut self) {
        if !self.restart.asked.get() {
            return;
        }
        self.rx.ring.reset();
        for id in 0..SLOTS {
            self.rx.post(id);
        }
        self.rx.ring.push_requests();
        self.tx.ring.reset();
        let dropped = usize::from(SLOTS) - self.tx.free.len();
        self.tx.counters.tx_errors += dropped as u64;
        self.tx.free = (0..SLOTS).rev().collect();
        log::info!("netfront: rings started afresh, {dropped} transmit(s) in flight dropped");
        self.restart.take();
    }

    /// Before sleeping: arm both rings' notifications. Returns whether work arrived
    /// meanwhile (then poll again instead of sleeping).
    pub fn prepare_to_wait(&mut self) -> Result<bool, DatapathError> {
        self.take_restart();
        let rx = self
            .rx
            .ring
            .final_check_for_responses()
            .map_err(DatapathError::Ring)?;
        let tx = self
            .tx
            .ring
            .final_check_for_responses()
            .map_err(DatapathError::Ring)?;
        Ok(rx || tx)
    }

    /// Wait for the back end's next notification.
    pub async fn wait(&self) {
        self.channel.wait().await;
    }

    /// Call `handler` on each notification instead of waking [`Self::wait`].
    pub fn set_event_handler(&self, handler: kernel::events::Handler) {
        self.channel.set_handler(handler);
    }
}

impl RxPath {
    /// Hand slot `id`'s page (back) to the back end.
    fn post(&mut self, id: u16) {
        let request = RxRequest {
            id,
            pad: 0,
            gref: self.slots[usize::from(id)].gref(),
        };
        // A slot is posted at most once at a time, and there are fewer slots than
        // ring entries, so the ring always has room.
        self.ring
            .queue_request(request)
            .expect("rx ring has room for every slot");
    }

    /// Re-post a slot and tell the back end if it waits for buffers.
    pub(crate) fn repost(&mut self, id: u16) {
        self.post(id);
        if self.ring.push_requests() {
            let _ = self.port.notify();
        }
    }

    /// The next received frame: `(slot, offset, len)`. Bad responses are counted,
    /// their slots re-posted, and skipped.
    pub(crate) fn next_frame(&mut self) -> Result<Option<(u16, usize, usize)>, DatapathError> {
        loop {
            let Some(response) = self.ring.take_response().map_err(DatapathError::Ring)? else {
                return Ok(None);
            };
            match response.check(SLOTS) {
                Ok(frame) => return Ok(Some((frame.id, frame.offset.into(), frame.len.into()))),
                Err(err) => {
                    self.counters.rx_errors += 1;
                    log::debug!("netfront: {err}");
                    if let Some(id) = err.slot() {
                        self.repost(id);
                    }
                }
            }
        }
    }

    /// One copy of the frame in slot `id` (`check` bounded offset + len by the page).
    pub(crate) fn frame(&mut self, id: u16, offset: usize, len: usize) -> &[u8] {
        let page = NonNull::new(self.slots[usize::from(id)].ptr()).expect("a mapped frame");
        // SAFETY: the slot's page is ours and mapped while the slot lives; the back end
        // may write it (it should not), so it is only copied, never borrowed.
        let page = unsafe { SharedBytes::new(page, PAGE_SIZE) };
        let copy = &mut self.copy[..len];
        page.copy_out(offset, copy);
        copy
    }
}

impl TxPath {
    /// Collect answered transmit slots.
    pub(crate) fn reclaim(&mut self) -> Result<(), DatapathError> {
        while let Some(response) = self.ring.take_response().map_err(DatapathError::Ring)? {
            let id = response.id;
            // Only ids we have in flight may come back; anything else is ignored.
            if id >= SLOTS || self.free.contains(&id) {
                self.counters.tx_errors += 1;
                continue;
            }
            if response.status != RSP_OKAY {
                self.counters.tx_errors += 1;
            }
            self.free.push(id);
        }
        Ok(())
    }

    /// Whether a frame can be sent now.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Free slots (smoltcp's burst size).
    pub(crate) fn room(&self) -> usize {
        self.free.len()
    }

    /// Fill a free slot through `fill` and send `len` bytes of it.
    pub(crate) fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        assert!(len <= PAGE_SIZE, "frame of {len} bytes exceeds a page");
        let id = self.free.pop().expect("send only after has_room");
        let slot = &self.slots[usize::from(id)];
        // SAFETY: the slot is free (not in flight), so the back end does not read it;
        // the page is ours and mapped.
        let buf = unsafe { core::slice::from_raw_parts_mut(slot.ptr(), len) };
        let result = fill(buf);
        let request = TxRequest {
            gref: slot.gref(),
            offset: 0,
            flags: 0,
            id,
            size: len as u16,
        };
        self.ring
            .queue_request(request)
            .expect("tx ring has room for every slot");
        if self.ring.push_requests() {
            let _ = self.port.notify();
        }
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += len as u64;
        result
    }
}
