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

use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;

use arch::errno::Errno;
use spin::Once;
use xenproto::noxs::{
    Area, BACKEND_AREA, Block, CONTROL_HEADER_LEN, Entry, FRONTEND_AREA, Header, Kind,
    MAX_AREA_LEN, NoxsError, PAGE_SIZE, header,
};
use xenproto::shared::SharedBytes;
use xenproto::xenstore::XenbusState;

use crate::events::EventChannel;
use crate::grant::{ForeignMapping, GrantError};

static BLOCK: Once<Option<Block>> = Once::new();

/// Read the block from the start_info page (once, at boot). A malformed block is a
/// boot error: the toolstack meant NoXS, and Xenstore would not answer.
pub(crate) fn init(start_info_page: &[u8; 4096]) -> Result<(), NoxsError> {
    let mut copy = [0u8; 4096 - xenproto::noxs::BLOCK_OFFSET];
    copy.copy_from_slice(&start_info_page[xenproto::noxs::BLOCK_OFFSET..]);
    let block = Block::decode(&copy)?;
    BLOCK.call_once(|| block);
    Ok(())
}

/// The NoXS block, if the toolstack wrote one.
pub fn block() -> Option<&'static Block> {
    BLOCK.get().and_then(Option::as_ref)
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
