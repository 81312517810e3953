//! Event channels (2-level ABI): binding, notifying, masking, and delivery to handlers
//! and waiting tasks.
//!
//! Delivery has two halves. [`poll_pending`] runs in the upcall (and in the idle loop)
//! with events masked: it moves pending ports from `shared_info` into the `FIRED`
//! bitmap using atomic operations only. [`dispatch`] runs in task context from the
//! executor: for each fired port it calls the registered handler, or wakes the task
//! waiting on it. Handlers therefore run in ordinary task context and may take locks.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};

use arch::abi::{self, DomId};
use arch::hypercall::{self, Errno};
use spin::Mutex;
use volatile::map_field;

use crate::time::Instant;

/// An event-channel port number.
pub type Port = u32;

/// Ports the 2-level ABI can address on a 64-bit guest.
pub const NR_PORTS: usize = 64 * 64;

/// A handler called (in task context) each time its port fires, with the channel's
/// [`EventChannel::id`].
pub type Handler = fn(Port);

static FIRED: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];
static ANY_FIRED: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Slot {
    /// The channel's first port, which its handler is given (see [`EventChannel::id`]).
    id: Port,
    handler: Option<Handler>,
    waker: Option<Waker>,
    /// How to bind the channel again in a restored domain, and where its owner reads
    /// the port from.
    rebind: Option<(Binding, Arc<AtomicU32>)>,
}

/// How a channel was bound, for [`resume`].
#[derive(Debug, Clone, Copy)]
enum Binding {
    /// Unbound for a domain that binds it itself: allocated again; the owner
    /// publishes the new port (a front end's handshake).
    Unbound(DomId),
    Virq(u32),
    /// Bound to another domain's port (gone with the old domain), or taken over from
    /// the toolstack (the new one is in start_info): the owner binds anew.
    Lost,
}

/// The port of a channel whose binding died with the old domain ([`Binding::Lost`]).
pub const DEAD_PORT: Port = Port::MAX;

static SLOTS: Mutex<BTreeMap<Port, Slot>> = Mutex::new(BTreeMap::new());

const UNMAPPED: &str = "event channels used before shared_info is mapped";

fn shared_info() -> *mut abi::shared_info {
    arch::mm::shared_info()
        .expect(UNMAPPED)
        .as_raw_ptr()
        .as_ptr()
}

/// `shared_info` fields Xen updates with atomic operations, seen as atomics.
fn pending_word(word: usize) -> &'static AtomicU64 {
    // SAFETY: shared_info is mapped for the guest's lifetime, the field is an aligned
    // u64 that Xen only changes with atomic instructions.
    unsafe {
        AtomicU64::from_ptr(core::ptr::addr_of_mut!(
            (*shared_info()).evtchn_pending[word]
        ))
    }
}

fn mask_word(word: usize) -> &'static AtomicU64 {
    // SAFETY: as for `pending_word`.
    unsafe { AtomicU64::from_ptr(core::ptr::addr_of_mut!((*shared_info()).evtchn_mask[word])) }
}

fn split(port: Port) -> (usize, u64) {
    assert!(
        (port as usize) < NR_PORTS,
        "event channel port {port} out of range"
    );
    (port as usize / 64, 1 << (port % 64))
}

/// Set up event delivery: stop the periodic timer and bind the one-shot timer VIRQ.
/// Call after `shared_info` is mapped.
pub(crate) fn init() -> Result<(), Errno> {
    mask_upcalls();
    hypercall::stop_periodic_timer(0)?;
    // Kept for good: `resume` binds it again in a restored domain.
    core::mem::forget(EventChannel::bind_virq(abi::VIRQ_TIMER)?);
    Ok(())
}

/// After a suspend. In the same domain every port is still bound. In a new domain
/// none is: bind each channel again (unbound ones for the same domain, VIRQs), give
/// it its new port, and unmask it (a restore masks every port); the others die
/// ([`DEAD_PORT`]). Every waiter is woken to look again, fired events are dropped, and
/// the new vCPU's periodic timer is stopped. Returns how many channels were bound
/// again.
pub(crate) fn resume(new_domain: bool) -> Result<usize, Errno> {
    if !new_domain {
        return Ok(0);
    }
    OWN_DOMID.store(u32::MAX, Ordering::Relaxed);
    hypercall::stop_periodic_timer(0)?;
    for word in &FIRED {
        word.store(0, Ordering::Relaxed);
    }
    let old = core::mem::take(&mut *SLOTS.lock());
    let mut count = 0;
    for (_, mut slot) in old {
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        let Some((binding, port)) = slot.rebind.take() else {
            continue;
        };
        let new = match binding {
            Binding::Unbound(remote) => alloc_unbound_port(remote)?,
            Binding::Virq(virq) => bind_virq_port(virq)?,
            Binding::Lost => {
                port.store(DEAD_PORT, Ordering::Relaxed);
                continue;
            }
        };
        port.store(new, Ordering::Relaxed);
        slot.rebind = Some((binding, port));
        SLOTS.lock().insert(new, slot);
        unmask_port(new)?;
        count += 1;
    }
    Ok(count)
}

/// Mask event delivery for vCPU 0 (the normal state; see the executor docs).
fn mask_upcalls() {
    // We are the only writer of our mask byte.
    let vcpu = arch::mm::vcpu_info().expect(UNMAPPED);
    map_field!(vcpu.evtchn_upcall_mask).write(1);
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// The event upcall: Xen entered it with events masked.
pub(crate) fn upcall() {
    poll_pending();
}

/// Move pending, unmasked ports into `FIRED`. Events must be masked.
pub(crate) fn poll_pending() {
    // These vCPU 0 fields are ours to clear; Xen sets them with atomic operations.
    let vcpu = arch::mm::vcpu_info().expect(UNMAPPED);
    map_field!(vcpu.evtchn_upcall_pending).write(0);
    let selector = map_field!(vcpu.evtchn_pending_sel).as_raw_ptr().as_ptr();
    // SAFETY: an aligned u64 of the mapped shared_info, changed only atomically.
    let selector = unsafe { AtomicU64::from_ptr(selector) };
    let mut words = selector.swap(0, Ordering::AcqRel);
    while words != 0 {
        let word = words.trailing_zeros() as usize;
        words &= words - 1;
        let ready =
            pending_word(word).load(Ordering::Acquire) & !mask_word(word).load(Ordering::Acquire);
        if ready != 0 {
            pending_word(word).fetch_and(!ready, Ordering::AcqRel);
            FIRED[word].fetch_or(ready, Ordering::AcqRel);
            ANY_FIRED.store(true, Ordering::Release);
        }
    }
}

/// Forget a pending event on `port` without delivering it (for ports polled with
/// `SCHEDOP_poll`, such as the console's). No-op before `shared_info` is mapped.
pub(crate) fn clear_pending(port: Port) {
    if arch::mm::shared_info().is_some() {
        let (word, bit) = split(port);
        pending_word(word).fetch_and(!bit, Ordering::AcqRel);
    }
}

/// Deliver an event on `port` as if it had fired (for an event [`clear_pending`] may
/// have taken from a waiter: the console's output path polls the port that also
/// announces input). Atomic operations only: safe from any path.
pub fn raise(port: Port) {
    let (word, bit) = split(port);
    FIRED[word].fetch_or(bit, Ordering::AcqRel);
    ANY_FIRED.store(true, Ordering::Release);
}

fn take_fired(port: Port) -> bool {
    let (word, bit) = split(port);
    FIRED[word].fetch_and(!bit, Ordering::AcqRel) & bit != 0
}

/// Run handlers and wake waiters of fired ports. Returns whether any port fired.
pub(crate) fn dispatch() -> bool {
    if !ANY_FIRED.swap(false, Ordering::AcqRel) {
        return false;
    }
    for (word, fired) in FIRED.iter().enumerate() {
        let mut bits = fired.load(Ordering::Acquire);
        while bits != 0 {
            let port = (word * 64) as Port + bits.trailing_zeros();
            bits &= bits - 1;
            enum Action {
                Call(Handler, Port),
                Wake(Waker),
                Keep,
                Drop,
            }
            let action = match SLOTS.lock().get_mut(&port) {
                Some(Slot {
                    handler: Some(handler),
                    id,
                    ..
                }) => Action::Call(*handler, *id),
                Some(Slot {
                    waker: waker @ Some(_),
                    ..
                }) => Action::Wake(waker.take().unwrap()),
                // A channel whose task is between two waits (woken, not polled yet):
                // the event stays fired for its next wait, which takes it.
                Some(_) => Action::Keep,
                // Nobody listens (console acknowledgements before input): just clear.
                None => Action::Drop,
            };
            match action {
                Action::Call(handler, id) => {
                    take_fired(port);
                    handler(id);
                }
                // The waiter consumes the fired bit when it runs.
                Action::Wake(waker) => waker.wake(),
                Action::Keep => {}
                Action::Drop => {
                    take_fired(port);
                }
            }
        }
    }
    true
}

/// Sleep until an event arrives or the monotonic clock reaches `deadline`.
pub(crate) fn block_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        if deadline <= Instant::now() {
            return;
        }
        if hypercall::set_timer_op(deadline.system_time()).is_err() {
            // A deadline Xen refuses (too far away): wake on events only.
            let _ = hypercall::set_timer_op(0);
        }
    }
    hypercall::block();
    // SCHEDOP_block unmasked delivery; if no upcall ran on the way out, mask again.
    mask_upcalls();
}

fn alloc_unbound_port(remote: DomId) -> Result<Port, Errno> {
    let mut op = abi::evtchn_alloc_unbound {
        dom: abi::DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    // SAFETY: `op` is the struct EVTCHNOP_alloc_unbound expects.
    unsafe { hypercall::event_channel_op(abi::EVTCHNOP_alloc_unbound, &mut op)? };
    Ok(op.port)
}

fn bind_virq_port(virq: u32) -> Result<Port, Errno> {
    let mut op = abi::evtchn_bind_virq {
        virq,
        vcpu: 0,
        port: 0,
    };
    // SAFETY: `op` is the struct EVTCHNOP_bind_virq expects.
    unsafe { hypercall::event_channel_op(abi::EVTCHNOP_bind_virq, &mut op)? };
    Ok(op.port)
}

fn unmask_port(port: Port) -> Result<(), Errno> {
    let mut op = abi::evtchn_unmask { port };
    // SAFETY: `op` is the struct EVTCHNOP_unmask expects.
    unsafe { hypercall::event_channel_op(abi::EVTCHNOP_unmask, &mut op) }
}

/// A bound event channel; closed when dropped. Its port may change: a restored
/// domain binds it again ([`resume`]).
#[derive(Debug)]
pub struct EventChannel {
    port: Arc<AtomicU32>,
    id: Port,
}

impl EventChannel {
    fn bound(port: Port, binding: Binding) -> Result<Self, Errno> {
        let cell = Arc::new(AtomicU32::new(port));
        SLOTS.lock().insert(
            port,
            Slot {
                id: port,
                rebind: Some((binding, Arc::clone(&cell))),
                ..Slot::default()
            },
        );
        let channel = Self {
            port: cell,
            id: port,
        };
        channel.unmask()?;
        Ok(channel)
    }

    /// Allocate a port that domain `remote` may bind to.
    pub fn alloc_unbound(remote: DomId) -> Result<Self, Errno> {
        Self::bound(alloc_unbound_port(remote)?, Binding::Unbound(remote))
    }

    /// Connect to port `remote_port` that domain `remote` allocated for us.
    pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Self, Errno> {
        let mut op = abi::evtchn_bind_interdomain {
            remote_dom: remote,
            remote_port,
            local_port: 0,
        };
        // SAFETY: `op` is the struct EVTCHNOP_bind_interdomain expects.
        unsafe { hypercall::event_channel_op(abi::EVTCHNOP_bind_interdomain, &mut op)? };
        Self::bound(op.local_port, Binding::Lost)
    }

    /// Bind a virtual IRQ (`VIRQ_*`) of vCPU 0.
    pub fn bind_virq(virq: u32) -> Result<Self, Errno> {
        Self::bound(bind_virq_port(virq)?, Binding::Virq(virq))
    }

    /// Take over a port the toolstack bound for us before we started (console,
    /// Xenstore).
    pub fn adopt(port: Port) -> Result<Self, Errno> {
        Self::bound(port, Binding::Lost)
    }

    /// The channel's identity for the domain's life: its first port. A restore binds
    /// the channel to another port, but its handler is still given this.
    pub fn id(&self) -> Port {
        self.id
    }

    /// The local port number: [`DEAD_PORT`] once a restore lost the binding.
    pub fn port(&self) -> Port {
        self.port.load(Ordering::Relaxed)
    }

    /// The port, unless a restore lost it.
    fn live_port(&self) -> Result<Port, Errno> {
        match self.port() {
            DEAD_PORT => Err(Errno::EINVAL),
            port => Ok(port),
        }
    }

    /// The domain at the other end of a still unbound port, as Xen resolved it.
    pub fn unbound_remote(&self) -> Result<DomId, Errno> {
        // SAFETY: an all-zero evtchn_status is a valid value (integers and a union of them).
        let mut status: abi::evtchn_status = unsafe { core::mem::zeroed() };
        status.dom = abi::DOMID_SELF;
        status.port = self.live_port()?;
        // SAFETY: `status` is the struct EVTCHNOP_status expects.
        unsafe { hypercall::event_channel_op(abi::EVTCHNOP_status, &mut status)? };
        if status.status != abi::EVTCHNSTAT_unbound {
            return Err(Errno::EINVAL);
        }
        // SAFETY: for EVTCHNSTAT_unbound Xen filled the `unbound` member.
        Ok(unsafe { status.u.unbound.dom })
    }

    /// Signal the other end.
    pub fn notify(&self) -> Result<(), Errno> {
        hypercall::evtchn_send(self.live_port()?)
    }

    /// Stop delivery of this port (events stay pending).
    pub fn mask(&self) {
        if let Ok(port) = self.live_port() {
            let (word, bit) = split(port);
            mask_word(word).fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Resume delivery; Xen re-raises an event that arrived while masked.
    pub fn unmask(&self) -> Result<(), Errno> {
        unmask_port(self.live_port()?)
    }

    /// Call `handler` each time the port fires (instead of waking waiters).
    pub fn set_handler(&self, handler: Handler) {
        if let Ok(port) = self.live_port() {
            let mut slots = SLOTS.lock();
            let slot = slots.entry(port).or_default();
            slot.id = self.id;
            slot.handler = Some(handler);
        }
    }

    /// Consume a pending notification without waiting.
    pub fn take_fired(&self) -> bool {
        self.live_port().is_ok_and(take_fired)
    }

    /// Wait for the next notification (never comes once a restore lost the port).
    pub fn wait(&self) -> Wait<'_> {
        Wait { channel: self }
    }

    /// A handle that signals through this channel by its current port, for parts of
    /// a driver that do not own it.
    pub fn notifier(&self) -> Notifier {
        Notifier(Arc::clone(&self.port))
    }

    /// Give up ownership: the port stays bound, and is not bound again after a
    /// restore (the owner does it).
    pub fn into_port(self) -> Port {
        let port = self.port();
        if let Some(slot) = SLOTS.lock().get_mut(&port) {
            slot.rebind = None;
        }
        core::mem::forget(self);
        port
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        let Ok(port) = self.live_port() else { return };
        SLOTS.lock().remove(&port);
        let mut op = abi::evtchn_close { port };
        // SAFETY: `op` is the struct EVTCHNOP_close expects; the port is ours.
        let _ = unsafe { hypercall::event_channel_op(abi::EVTCHNOP_close, &mut op) };
        take_fired(port);
    }
}

/// Signals through an [`EventChannel`] by its current port (which a restore changes).
#[derive(Debug, Clone)]
pub struct Notifier(Arc<AtomicU32>);

impl Notifier {
    /// The channel's port now ([`DEAD_PORT`] once a restore lost it).
    pub fn port(&self) -> Port {
        self.0.load(Ordering::Relaxed)
    }

    /// Signal the other end.
    pub fn notify(&self) -> Result<(), Errno> {
        match self.0.load(Ordering::Relaxed) {
            DEAD_PORT => Err(Errno::EINVAL),
            port => hypercall::evtchn_send(port),
        }
    }

    /// Deliver an event to our own end, as if the other end had notified ([`raise`]).
    pub fn raise(&self) {
        let port = self.0.load(Ordering::Relaxed);
        if port != DEAD_PORT {
            raise(port);
        }
    }
}

/// Future of [`EventChannel::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    channel: &'a EventChannel,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Ok(port) = self.channel.live_port() else {
            return Poll::Pending;
        };
        if take_fired(port) {
            return Poll::Ready(());
        }
        SLOTS.lock().entry(port).or_default().waker = Some(cx.waker().clone());
        // An event may have been dispatched between the check and the registration.
        if take_fired(port) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = SLOTS.lock().get_mut(&self.channel.port()) {
            slot.waker = None;
        }
    }
}

/// This domain's id. Xen has no call for it; an unbound port allocated for
/// `DOMID_SELF` records the resolved id, which `EVTCHNOP_status` reports.
/// A restore or migration gives the domain a new id.
pub fn own_domid() -> Result<DomId, Errno> {
    if let Ok(id) = DomId::try_from(OWN_DOMID.load(Ordering::Relaxed)) {
        return Ok(id);
    }
    let probe = EventChannel::alloc_unbound(abi::DOMID_SELF)?;
    let id = probe.unbound_remote()?;
    OWN_DOMID.store(u32::from(id), Ordering::Relaxed);
    Ok(id)
}

/// [`own_domid`]'s answer, until a restore (`u32::MAX`: not asked yet).
static OWN_DOMID: AtomicU32 = AtomicU32::new(u32::MAX);
