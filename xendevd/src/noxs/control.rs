//! A device's control page (`noxs-v1.md` §2–3): a page of ours granted read-write to
//! the guest. We write the header, our area and `be_state`; the guest writes its area
//! and `fe_state`. Every read of the guest's half is one copy, validated afterwards.
//!
//! [`step`] is the handshake as a pure function of the two state words.

use std::rc::Rc;
use std::sync::atomic::{Ordering, fence};

use xenproto::noxs::{BACKEND_AREA, FRONTEND_AREA, Header, Kind, NoxsError, PAGE_SIZE, header};
use xenproto::xenstore::XenbusState;

use xenhost::evtchn::{Evtchn, Port};
use xenhost::gntshr::{Gntshr, SharedPage};

use crate::limits::{self, LimitReached, Making};

/// A control page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot grant its control page: {0}")]
    Grant(#[source] xenhost::Error),
    #[error("cannot reserve its control event channel: {0}")]
    Port(#[source] xenhost::Error),
    #[error(transparent)]
    Limit(LimitReached),
}

/// What the back end does about the state words it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The front end published its area: validate it, connect, `be_state = Connected`.
    Connect,
    /// The front end closes (or restarted): release the data path, `be_state = Closed`.
    Disconnect,
    /// Both ends closed: offer the device again, `be_state = InitWait`.
    Reopen,
}

/// The handshake, from our state and the front end's.
pub fn step(backend: XenbusState, frontend: XenbusState) -> Step {
    use XenbusState::*;
    match (backend, frontend) {
        (InitWait, Initialised | Connected) => Step::Connect,
        (Connected, Initialised | Connected) => Step::Nothing,
        (Connected, _) => Step::Disconnect,
        // After either end closed, a front end that closed (or starts over) may have
        // the device again.
        (Closed | Closing, Closed | Initialising | Unknown) => Step::Reopen,
        _ => Step::Nothing,
    }
}

/// One control page and its event channel.
#[derive(Debug)]
pub struct Control {
    kind: Kind,
    page: SharedPage,
    port: Port,
    /// What we last wrote to `be_state`.
    state: XenbusState,
}

impl Control {
    /// Grant a fresh control page of `kind` to `domid`, write the header and `area` (our
    /// area's contents) and `be_state = InitWait`; reserve an event channel for it.
    pub fn create(
        gntshr: &Rc<Gntshr>,
        evtchn: &Rc<Evtchn>,
        domid: u32,
        kind: Kind,
        area: &[u8],
    ) -> Result<Self, ControlError> {
        assert!(area.len() <= BACKEND_AREA.len(), "backend area overflow");
        let held = gntshr.shared();
        let page = gntshr.share(domid, true).map_err(|err| {
            limits::reached(err.errno(), Making::Grant { held })
                .map_or(ControlError::Grant(err), ControlError::Limit)
        })?;
        let port = evtchn.bind_unbound(domid).map_err(|err| {
            limits::reached(err.errno(), Making::EventChannel)
                .map_or(ControlError::Port(err), ControlError::Limit)
        })?;
        let mut control = Self {
            kind,
            page,
            port,
            state: XenbusState::InitWait,
        };
        let mut head = [0u8; 16];
        Header::init(&mut head, kind).expect("16 bytes");
        control.write(0, &head[..8]);
        control.write(BACKEND_AREA.start, area);
        control.set_state(XenbusState::InitWait);
        Ok(control)
    }

    pub fn gref(&self) -> u32 {
        self.page.gref()
    }

    /// Our port of the control event channel (the guest binds to it).
    pub fn port(&self) -> u32 {
        self.port.local()
    }

    /// What we last set `be_state` to.
    pub fn state(&self) -> XenbusState {
        self.state
    }

    /// The page, which the guest maps too: volatile accesses, bounds-checked.
    fn shared(&self) -> xenproto::shared::SharedBytes<'_> {
        let base = std::ptr::NonNull::new(self.page.as_ptr()).expect("a mapped page");
        // SAFETY: our granted page stays mapped while `self` lives; no references to it.
        unsafe { xenproto::shared::SharedBytes::new(base, PAGE_SIZE) }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        self.shared().copy_in(at, bytes);
    }

    /// One copy of `range`, validated by the caller.
    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        let mut copy = vec![0; range.len()];
        self.shared().copy_out(range.start, &mut copy);
        copy
    }

    /// Replace our area's first bytes (e.g. a new power request), before a state change
    /// or a [`Control::notify`].
    pub fn write_area(&self, bytes: &[u8]) {
        assert!(bytes.len() <= BACKEND_AREA.len(), "backend area overflow");
        self.write(BACKEND_AREA.start, bytes);
        fence(Ordering::Release);
    }

    /// Copy and check the header (the front end's state word included).
    pub fn header(&self) -> Result<Header, NoxsError> {
        let head = self.read(0..16);
        fence(Ordering::Acquire);
        let mut header = Header::decode(&head, self.kind)?;
        // Our own word is what we wrote, whatever the guest scribbled there.
        header.be_state = self.state;
        Ok(header)
    }

    /// The front end's state word, checked.
    pub fn frontend_state(&self) -> Result<XenbusState, NoxsError> {
        self.header().map(|h| h.fe_state)
    }

    /// The front end's state word as it is, valid or not (for reports).
    pub fn frontend_word(&self) -> u32 {
        let bytes = self.read(header::FE_STATE..header::FE_STATE + 4);
        u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }

    /// One copy of the front end's area.
    pub fn frontend_area(&self) -> Vec<u8> {
        fence(Ordering::Acquire);
        self.read(FRONTEND_AREA)
    }

    /// Publish `be_state` (after our area) and notify the guest.
    pub fn set_state(&mut self, state: XenbusState) {
        self.state = state;
        fence(Ordering::Release);
        self.write(header::BE_STATE, &(state as u32).to_le_bytes());
        self.notify();
    }

    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if let Err(err) = self.port.notify() {
            log::debug!("notifying control port {}: {err}", self.port.local());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use XenbusState::*;

    #[test]
    fn the_handshake() {
        for (backend, frontend, expected) in [
            (InitWait, Unknown, Step::Nothing),
            (InitWait, Initialising, Step::Nothing),
            (InitWait, Initialised, Step::Connect),
            (InitWait, Connected, Step::Connect),
            (InitWait, Closing, Step::Nothing),
            (Connected, Connected, Step::Nothing),
            (Connected, Initialised, Step::Nothing),
            (Connected, Closing, Step::Disconnect),
            (Connected, Closed, Step::Disconnect),
            (Connected, Initialising, Step::Disconnect),
            (Connected, Unknown, Step::Disconnect),
            (Closed, Closing, Step::Nothing),
            (Closed, Closed, Step::Reopen),
            (Closed, Initialising, Step::Reopen),
            (Closing, Connected, Step::Nothing),
            (Closing, Closed, Step::Reopen),
            (Closing, Initialised, Step::Nothing),
        ] {
            assert_eq!(
                step(backend, frontend),
                expected,
                "{backend:?} {frontend:?}"
            );
        }
    }
}
