//! NoXS: devices without Xenstore (`xenproto::noxs`, `shared/design/noxs-v1.md`).
//!
//! At boot the kernel copies the block the toolstack wrote into the start_info page, once,
//! and validates it. A block means this guest was started with NoXS: its devices come
//! from the block, and Xenstore is left alone (there may be no xenstored at all). No
//! block: Xenstore, as under xl. One image boots both ways.
//!
//! [`ControlPage`] is a driver's handle on a device's control page: it maps the page the
//! backend granted, binds the control event channel, and reads and writes the page by
//! the protocol's rule — write your area, barrier, your state word, notify; copy the
//! other side's area once and validate the copy.
//!
//! **Re-offers (v1.1, `xenproto::noxs::reoffer`).** A back end that restarted lost its
//! control pages; it offers the devices again by rewriting the block in our start_info
//! page, which we grant it at boot ([`listen_for_reoffers`]). A task copies each new
//! block once, validates it and makes it the current one ([`block`], [`generation`]),
//! then wakes every device waiting for a re-offer ([`next_reoffer`]). A device whose
//! entry changed does the handshake again on its new control page with the same
//! frontend area ([`reconnect`]), its rings started afresh in between by the driver (a
//! back end that died may have written responses over requests it never announced),
//! with what was not answered queued again. [`follow`] runs that loop for a driver.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use arch::errno::Errno;
use spin::Mutex;
use xenproto::noxs::{
    Area, BACKEND_AREA, BLOCK_OFFSET, Block, CONTROL_HEADER_LEN, Entry, FRONTEND_AREA, Header,
    Kind, MAX_AREA_LEN, NoxsError, PAGE_SIZE, Reoffer, header, reoffer,
};
use xenproto::shared::SharedBytes;
use xenproto::xenstore::XenbusState;

use crate::events::{EventChannel, Notifier};
use crate::grant::{ForeignMapping, GrantError};

/// The current block: the toolstack's at boot, then the back end's latest re-offer.
/// `None` for good when the guest booted without one.
static BLOCK: Mutex<Option<Arc<Block>>> = Mutex::new(None);
/// The generation of [`BLOCK`] (changed with it, under its lock).
static GENERATION: AtomicU32 = AtomicU32::new(0);
/// Tasks waiting for the generation to change, by waiter.
static WAITERS: Mutex<BTreeMap<u64, Waker>> = Mutex::new(BTreeMap::new());
static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);
/// The block's generation when the guest last resumed in a new domain (`None`: never):
/// a device that last looked at a block before then lost its control page with the
/// old domain ([`reoffer::predates_restore`]).
static RESTORED_AT: Mutex<Option<u32>> = Mutex::new(None);

/// Read the block from the start_info page (once, at boot). A malformed block is a
/// boot error: the toolstack meant NoXS, and Xenstore would not answer.
pub(crate) fn init(start_info_page: &[u8; 4096]) -> Result<(), NoxsError> {
    let mut copy = [0u8; 4096 - BLOCK_OFFSET];
    copy.copy_from_slice(&start_info_page[BLOCK_OFFSET..]);
    if let Some(block) = Block::decode(&copy)? {
        install(block);
    }
    Ok(())
}

/// Make `block` the current one and wake everyone waiting for a re-offer.
fn install(block: Block) {
    {
        let mut current = BLOCK.lock();
        GENERATION.store(block.generation, Ordering::Release);
        *current = Some(Arc::new(block));
    }
    let waiters = core::mem::take(&mut *WAITERS.lock());
    for waker in waiters.into_values() {
        waker.wake();
    }
}

/// The NoXS block, if the toolstack wrote one: the latest the back end offered.
pub fn block() -> Option<Arc<Block>> {
    BLOCK.lock().clone()
}

/// The generation of the current block (0 until the back end offers the devices again).
pub fn generation() -> u32 {
    GENERATION.load(Ordering::Acquire)
}

/// The current block with its generation, read together.
fn snapshot() -> Option<(u32, Arc<Block>)> {
    let current = BLOCK.lock();
    current
        .as_ref()
        .map(|block| (block.generation, block.clone()))
}

/// A future ready (with the new generation) once the block's generation is no longer
/// `seen`.
pub fn reoffered(seen: u32) -> Reoffered {
    Reoffered {
        seen,
        id: NEXT_WAITER.fetch_add(1, Ordering::Relaxed),
    }
}

/// Future of [`reoffered`]; forgets its waker when dropped, so waiters do not pile up.
#[derive(Debug)]
pub struct Reoffered {
    seen: u32,
    id: u64,
}

impl Future for Reoffered {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let now = generation();
        if now != self.seen {
            return Poll::Ready(now);
        }
        WAITERS.lock().insert(self.id, cx.waker().clone());
        // A re-offer may have been installed between the check and the registration.
        let now = generation();
        if now != self.seen {
            WAITERS.lock().remove(&self.id);
            return Poll::Ready(now);
        }
        Poll::Pending
    }
}

impl Drop for Reoffered {
    fn drop(&mut self) {
        WAITERS.lock().remove(&self.id);
    }
}

/// Wait for the re-offer that moves device `connected` to a new control page, and
/// return its generation and entry. `handled` is the last generation looked at for
/// this device (`None`: look at the current block first); a generation is looked at
/// once, so a failed handshake waits for the next re-offer. Cancel-safe (for
/// `select`): `handled` is updated before each wait. `name` labels errors.
pub async fn next_reoffer(
    connected: &Entry,
    handled: &mut Option<u32>,
    name: &str,
) -> (u32, Entry) {
    loop {
        let Some((generation, block)) = snapshot() else {
            // No block: no NoXS device, and never a re-offer.
            return core::future::pending().await;
        };
        if *handled != Some(generation) {
            let gone = reoffer::predates_restore(*handled, *RESTORED_AT.lock(), generation);
            *handled = Some(generation);
            match block.reoffer_after(connected, gone) {
                Reoffer::Changed(entry) => return (generation, entry),
                Reoffer::Unchanged => {}
                Reoffer::Withdrawn => log::error!(
                    "{name}: the back end's offer (generation {generation}) leaves the device out"
                ),
                Reoffer::OtherBackend(domid) => log::error!(
                    "{name}: the back end's offer (generation {generation}) moves the device \
                     to domain {domid}, which cannot map its rings: left disconnected"
                ),
            }
        }
        reoffered(generation).await;
    }
}

/// Do the handshake again on the control page of `entry` (a re-offer): wait for the
/// offer, check its area with `same_device` (the device must be the one connected),
/// then let `restart` start the data path afresh (no back end is attached to it now),
/// then connect with `frontend`, the area written at the first connect (same ring
/// pages, same data port). A device that fails `same_device` is not connected.
pub async fn reconnect<B: Area, F: Area>(
    entry: &Entry,
    frontend: &F,
    same_device: impl FnOnce(&B) -> Result<(), NoxsError>,
    restart: impl AsyncFnOnce(),
) -> Result<(ControlPage, B), ControlError> {
    let (control, backend) = ControlPage::offered::<B>(entry).await?;
    same_device(&backend)?;
    restart().await;
    control.connect(frontend).await?;
    Ok((control, backend))
}

/// Let the back end offer our devices again after a restart: allocate the re-offer
/// port, write it into the block, grant the start_info page at
/// [`reoffer::BLOCK_GREF`], all for the back end of the first entry (the one domain
/// that can bind the port; chaos gives every device to xendevd in dom0), and start
/// the task that takes the new blocks in. Without
/// it the guest still runs, but its devices die with their back end: errors are
/// logged, not fatal.
pub(crate) fn listen_for_reoffers(start_info_pfn: u64) {
    let Some(block) = block() else {
        return;
    };
    let Some(backend) = block.entries.first().map(|e| e.backend) else {
        return;
    };
    if let Err(err) = start_listening(start_info_pfn, backend) {
        log::error!("noxs: devices cannot be offered again after a back end restart: {err}");
    }
}

/// Why the re-offer path could not be set up.
enum ListenError {
    Channel(Errno),
    Grant(GrantError),
}

impl core::fmt::Display for ListenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Channel(err) => write!(f, "allocating the re-offer event channel: {err}"),
            Self::Grant(err) => write!(f, "granting the start_info page: {err}"),
        }
    }
}

/// The start_info page (pfn `start_info_pfn`) as bytes another domain writes.
fn start_info_bytes(start_info_pfn: u64) -> SharedBytes<'static> {
    let va = arch::mm::va_of_pfn(start_info_pfn);
    // SAFETY: start_info is a page of the bootstrap region, mapped read-write for the
    // guest's lifetime; from here on it is read and written only through such views
    // (boot's reference to it is no longer used; a suspend writes other words), and
    // the back end writes the block.
    unsafe {
        SharedBytes::new(
            NonNull::new(va.as_mut_ptr::<u8>()).expect("the direct map is not at 0"),
            PAGE_SIZE,
        )
    }
}

fn start_listening(start_info_pfn: u64, backend: u16) -> Result<(), ListenError> {
    let page = start_info_bytes(start_info_pfn);
    let channel = EventChannel::alloc_unbound(backend).map_err(ListenError::Channel)?;
    // Only our word of the block: the back end owns the rest.
    page.write_u32(BLOCK_OFFSET + reoffer::PORT, channel.port());
    fence(Ordering::SeqCst);
    crate::grant::grant_reserved(reoffer::BLOCK_GREF, backend, start_info_pfn, false)
        .map_err(ListenError::Grant)?;
    log::debug!(
        "noxs: re-offers from domain {backend} on port {}",
        channel.port()
    );
    *REOFFERS.lock() = Some((channel.notifier(), start_info_pfn));
    crate::executor::spawn(take_reoffers(channel, page));
    Ok(())
}

/// The re-offer port and the start_info page, once [`listen_for_reoffers`] set them up.
static REOFFERS: Mutex<Option<(Notifier, u64)>> = Mutex::new(None);

/// After a restore into a new domain, before the grants are made again: the re-offer
/// port is new; publish it. The back ends are new too, and none is connected: the
/// toolstack has the new back end offer the devices as a restarted one does (NoXS
/// v1.1), through the start_info page granted again at [`reoffer::BLOCK_GREF`], and
/// each device connects to it ([`follow`]).
pub(crate) fn resume(new_domain: bool) {
    if !new_domain {
        return;
    }
    // Every control page went with the old domain, even one the new back end offers
    // under the same grant reference and port.
    *RESTORED_AT.lock() = Some(generation());
    if let Some((port, start_info_pfn)) = REOFFERS.lock().clone() {
        start_info_bytes(start_info_pfn).write_u32(BLOCK_OFFSET + reoffer::PORT, port.port());
        fence(Ordering::SeqCst);
    }
}

/// The block as the back end left it, copied once; `None` if its generation changed
/// while we copied (the next notification brings the finished one). The back end
/// writes the entries before the generation, so a copy with a new generation has its
/// entries.
fn copy_block(page: SharedBytes<'static>) -> Option<Box<[u8; PAGE_SIZE - BLOCK_OFFSET]>> {
    let mut copy = Box::new([0u8; PAGE_SIZE - BLOCK_OFFSET]);
    for _ in 0..4 {
        let before = page.read_u32(BLOCK_OFFSET + reoffer::GENERATION);
        fence(Ordering::Acquire);
        page.copy_out(BLOCK_OFFSET, &mut copy[..]);
        fence(Ordering::Acquire);
        if page.read_u32(BLOCK_OFFSET + reoffer::GENERATION) == before {
            return Some(copy);
        }
    }
    None
}

/// The task behind the re-offer port: on each notification, take in the block if its
/// generation is new.
async fn take_reoffers(channel: EventChannel, page: SharedBytes<'static>) {
    // A bad block is reported once, until a good one arrives.
    let mut reported = false;
    loop {
        channel.wait().await;
        let Some(copy) = copy_block(page) else {
            continue;
        };
        let block = match Block::decode(&copy[..]) {
            Ok(Some(block)) => block,
            Ok(None) => {
                report_bad_block(&mut reported, NoxsError::BadField("block magic"));
                continue;
            }
            Err(err) => {
                report_bad_block(&mut reported, err);
                continue;
            }
        };
        reported = false;
        if block.generation != generation() {
            let generation = block.generation;
            install(block);
            log::info!("noxs: the back end offered the devices again (generation {generation})");
        }
    }
}

fn report_bad_block(reported: &mut bool, err: NoxsError) {
    if !core::mem::replace(reported, true) {
        log::error!("noxs: the back end's new device block is bad, keeping the old one: {err}");
    }
}

/// A driver's hold on a device [`follow`] keeps connected through re-offers (or
/// [`crate::xenbus::follow_restores`] through restores); dropping it stops that task,
/// which unmaps the control page and closes its port.
#[derive(Debug)]
pub struct Follower {
    stop: Arc<Stop>,
}

#[derive(Debug, Default)]
struct Stop {
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.stopped.store(true, Ordering::Release);
        if let Some(waker) = self.stop.waker.lock().take() {
            waker.wake();
        }
    }
}

/// Ready once the [`Follower`] is dropped.
struct Stopped(Arc<Stop>);

impl Future for Stopped {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.0.waker.lock() = Some(cx.waker().clone());
        if self.0.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Keep a connected device connected through re-offers (a back end's restart, a
/// restore): a task owns its control page and, each time a re-offer moves the device,
/// [`reconnect`]s with the area `frontend` makes (that of the first connect, with the
/// data channel's port now: a restore changes it), checking the new back end's area
/// with `same_device` and starting the data path afresh with `restart`; then it
/// notifies `data_port` (the device's data channel, open as long as the returned
/// [`Follower`] is kept) so the new back end looks at the requests queued again, calls
/// `connected`, and drops the old page. `name` (`netfront: vif0`) labels the log lines.
pub fn follow<B: Area + 'static, F: Area + 'static>(
    control: ControlPage,
    frontend: impl Fn() -> F + 'static,
    data_port: Notifier,
    name: String,
    same_device: impl Fn(&B) -> Result<(), NoxsError> + 'static,
    restart: impl AsyncFn() + 'static,
    connected: impl Fn() + 'static,
) -> Follower {
    let follow = async move {
        let mut control = control;
        let mut handled = None;
        loop {
            let (generation, entry) = next_reoffer(control.entry(), &mut handled, &name).await;
            match reconnect::<B, F>(&entry, &frontend(), &same_device, &restart).await {
                Ok((new, _)) => {
                    // The old page goes: unmapped, its port closed.
                    control = new;
                    fence(Ordering::SeqCst);
                    let _ = data_port.notify();
                    connected();
                    log::info!("{name} reconnected (generation {generation})");
                }
                Err(err) => log::error!(
                    "{name}: connecting again (generation {generation}): {err}; \
                     left disconnected until the next offer"
                ),
            }
        }
    };
    spawn_follower(follow)
}

/// Run `follow` in a task until the returned [`Follower`] is dropped.
pub(crate) fn spawn_follower(follow: impl Future<Output = ()> + 'static) -> Follower {
    let stop = Arc::new(Stop::default());
    let stopped = Stopped(stop.clone());
    crate::executor::spawn(async move {
        // The stop signal first: once the device is gone, its data port is not kicked.
        crate::executor::select(stopped, follow).await;
    });
    Follower { stop }
}

/// A control page could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    Map(GrantError),
    Bind(Errno),
    Protocol(NoxsError),
    /// The backend went to Closing/Closed during the handshake.
    BackendClosed,
    /// The backend did not reach the state in time.
    Timeout(XenbusState),
}

impl core::fmt::Display for ControlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(err) => write!(f, "mapping the control page: {err}"),
            Self::Bind(err) => write!(f, "binding the control event channel: {err}"),
            Self::Protocol(err) => write!(f, "control page: {err}"),
            Self::BackendClosed => f.write_str("the backend closed the device"),
            Self::Timeout(state) => write!(f, "the backend did not reach {state:?} in time"),
        }
    }
}

impl From<NoxsError> for ControlError {
    fn from(err: NoxsError) -> Self {
        Self::Protocol(err)
    }
}

/// How long a backend may take to answer a handshake step.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A device's control page, mapped, with its event channel bound.
///
/// A front end connects in two halves, with its data path set up in between:
/// [`ControlPage::offered`] (the back end's offer and its area) and
/// [`ControlPage::connect`] (our area, then both ends `Connected`).
#[derive(Debug)]
pub struct ControlPage {
    entry: Entry,
    mapping: ForeignMapping,
    channel: EventChannel,
}

impl ControlPage {
    /// Map the control page of `entry` and bind its event channel.
    pub fn open(entry: &Entry) -> Result<Self, ControlError> {
        let mapping = ForeignMapping::map(entry.backend, entry.ctrl_gref, false)
            .map_err(ControlError::Map)?;
        let channel = EventChannel::bind_interdomain(entry.backend, entry.ctrl_port)
            .map_err(ControlError::Bind)?;
        let page = Self {
            entry: *entry,
            mapping,
            channel,
        };
        page.header()?;
        Ok(page)
    }

    /// Handshake, first half: open the page of `entry`, wait for the back end to offer
    /// the device (`InitWait`) and copy its area once.
    pub async fn offered<B: Area>(entry: &Entry) -> Result<(Self, B), ControlError> {
        let control = Self::open(entry)?;
        control.wait_backend(XenbusState::InitWait).await?;
        let area = control.backend()?;
        Ok((control, area))
    }

    /// Handshake, second half: write our area, `Initialised`, wait for the back end to
    /// be `Connected`, then `Connected` ourselves.
    pub async fn connect<F: Area>(&self, area: &F) -> Result<(), ControlError> {
        self.write_frontend(area)?;
        self.set_state(XenbusState::Initialised);
        self.wait_backend(XenbusState::Connected).await?;
        self.set_state(XenbusState::Connected);
        Ok(())
    }

    /// The entry this page belongs to.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The page, shared with the backend: volatile accesses only.
    fn page(&self) -> SharedBytes<'_> {
        // SAFETY: the mapping is a live page while `self` is; we never make references
        // into it.
        unsafe { SharedBytes::new(self.mapping.as_non_null(), PAGE_SIZE) }
    }

    /// Copy and check the header.
    pub fn header(&self) -> Result<Header, ControlError> {
        fence(Ordering::Acquire);
        Ok(Header::decode(
            &self.page().read::<CONTROL_HEADER_LEN>(0),
            self.entry.kind,
        )?)
    }

    /// One copy of the backend's area, validated.
    pub fn backend<B: Area>(&self) -> Result<B, ControlError> {
        let mut copy = [0u8; MAX_AREA_LEN];
        // The protocol's read barrier: after the state word we acted on, before the area.
        fence(Ordering::Acquire);
        self.page()
            .copy_out(BACKEND_AREA.start, &mut copy[..B::LEN]);
        Ok(B::decode(&copy[..B::LEN])?)
    }

    /// Write our area.
    pub fn write_frontend<F: Area>(&self, area: &F) -> Result<(), ControlError> {
        let mut bytes = [0u8; MAX_AREA_LEN];
        area.encode(&mut bytes[..F::LEN])?;
        self.write_frontend_area(&bytes[..F::LEN]);
        Ok(())
    }

    /// Write raw bytes at the start of our area (a front end that breaks the protocol
    /// on purpose writes what it likes).
    pub fn write_frontend_area(&self, bytes: &[u8]) {
        assert!(bytes.len() <= FRONTEND_AREA.len(), "frontend area overflow");
        self.page().copy_in(FRONTEND_AREA.start, bytes);
    }

    /// Publish our state (after our area) and notify the backend.
    pub fn set_state(&self, state: XenbusState) {
        fence(Ordering::Release);
        self.page().write_u32(header::FE_STATE, state as u32);
        fence(Ordering::SeqCst);
        let _ = self.channel.notify();
    }

    /// Tell the backend to look again (e.g. after an acknowledgement in our area).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        let _ = self.channel.notify();
    }

    /// Wait for the next notification from the backend.
    pub async fn wait(&self) {
        self.channel.wait().await;
    }

    /// Wait until the backend's state is `wanted`; Closing or Closed is an error.
    pub async fn wait_backend(&self, wanted: XenbusState) -> Result<(), ControlError> {
        let deadline = crate::time::Instant::now().saturating_add(HANDSHAKE_TIMEOUT);
        loop {
            let state = self.header()?.be_state;
            if state == wanted {
                return Ok(());
            }
            if matches!(state, XenbusState::Closing | XenbusState::Closed) {
                return Err(ControlError::BackendClosed);
            }
            let left = deadline.saturating_duration_since(crate::time::Instant::now());
            if left.is_zero() || crate::executor::timeout(left, self.wait()).await.is_err() {
                // A notification may have been lost in a race: look once more.
                if self.header()?.be_state == wanted {
                    return Ok(());
                }
                return Err(ControlError::Timeout(wanted));
            }
        }
    }
}

/// The devices of `kind` in the block, in devid order.
pub fn entries(kind: Kind) -> Vec<Entry> {
    let mut entries: Vec<Entry> = block()
        .map(|b| b.of_kind(kind).copied().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.devid);
    entries
}
