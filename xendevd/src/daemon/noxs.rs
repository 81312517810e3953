//! The NoXS dispatch: the daemon's side of the NoXS back ends (`crate::noxs`). It
//! opens them, hands them their requests (`noxs_create`, `noxs_shell`, `noxs_fill`,
//! `power`, `console`, and their part of `release_domain` and the queries), hands them
//! what the daemon's epoll set reports for their descriptors, and brings back what the
//! API's connections wait for: console output, released domains, and the end of power
//! requests.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use log::{info, warn};
use xenproto::noxs;

use crate::api::{DomainSummary, NoxsDevice, NoxsDomain, ShellDevice};
use crate::disks::{DomainState, SharedBook};
use crate::limits;
use crate::noxs::{Backends, Error, Event, OpenError, PowerWait};
use crate::poller::Poller;

/// Why this xendevd serves no NoXS domains.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    #[error("this xendevd has no NoXS back ends (not started)")]
    NotStarted,
    #[error(
        "this xendevd has no NoXS back ends: opening the Xen devices (/dev/xen/evtchn, \
         gntdev, gntalloc, privcmd) failed: {0}"
    )]
    Open(Rc<OpenError>),
}

/// A NoXS request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum NoxsRefusal {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error(transparent)]
    Noxs(#[from] Error),
}

/// The NoXS back ends, when they could be opened.
#[derive(Debug)]
pub struct NoxsDispatch {
    backends: Result<Backends, Unavailable>,
    /// For the back ends' vbds, once they are opened.
    book: SharedBook,
}

impl NoxsDispatch {
    /// Not started; the vbds will book their images in `book`.
    pub fn new(book: SharedBook) -> Self {
        Self {
            backends: Err(Unavailable::NotStarted),
            book,
        }
    }

    /// Open the back ends' Xen devices, their descriptors in the daemon's `poller`;
    /// without them xendevd serves no NoXS domains (and says so to whoever asks).
    pub fn start(&mut self, console_dir: &Path, noxs_state: &Path, poller: Rc<Poller>) {
        let book = Rc::clone(&self.book);
        let opened = Backends::open(console_dir.to_owned(), poller, book, noxs_state);
        self.backends = opened.map_err(|err| {
            let missing = Unavailable::Open(Rc::new(err));
            warn!("{missing}");
            missing
        });
        if self.backends.is_ok() {
            info!(
                "NoXS back ends ready; console logs in {}; {}",
                console_dir.display(),
                limits::describe_gntalloc()
            );
        }
    }

    fn backends(&mut self) -> Result<&mut Backends, Unavailable> {
        self.backends.as_mut().map_err(|missing| missing.clone())
    }

    /// `noxs_create`.
    pub fn create(
        &mut self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, NoxsRefusal> {
        let served = self
            .backends()?
            .create(domid, name, console_port, devices)
            .inspect_err(|err| warn!("noxs_create of domain {domid} ({name}): {err}"))?;
        Ok(served)
    }

    /// `noxs_shell`.
    pub fn shell(
        &mut self,
        domid: u32,
        name: &str,
        devices: &[ShellDevice],
    ) -> Result<NoxsDomain, NoxsRefusal> {
        let made = self
            .backends()?
            .shell(domid, name, devices)
            .inspect_err(|err| warn!("noxs_shell of domain {domid} ({name}): {err}"))?;
        Ok(made)
    }

    /// `noxs_fill`.
    pub fn fill(
        &mut self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, NoxsRefusal> {
        let served = self
            .backends()?
            .fill(domid, name, console_port, devices)
            .inspect_err(|err| warn!("noxs_fill of domain {domid} ({name}): {err}"))?;
        Ok(served)
    }

    /// `noxs_reoffer`: the new generation.
    pub fn reoffer(&mut self, domid: u32) -> Result<u32, NoxsRefusal> {
        Ok(self.backends()?.reoffer_restored(domid)?)
    }

    /// `noxs_rename`.
    pub fn rename(&mut self, domid: u32, name: &str) -> Result<(), NoxsRefusal> {
        Ok(self.backends()?.rename(domid, name)?)
    }

    /// `power`: the request as it waits for the guest.
    pub fn power(
        &mut self,
        domid: u32,
        action: noxs::Request,
        timeout_ms: u32,
    ) -> Result<PowerWait, NoxsRefusal> {
        Ok(self.backends()?.power(domid, action, timeout_ms)?)
    }

    /// `console`: where the domain's log is.
    pub fn console_log(&mut self, domid: u32) -> Result<PathBuf, NoxsRefusal> {
        Ok(self.backends()?.console_log(domid)?)
    }

    /// How much more input domain `domid`'s console takes now; `None` if it is not
    /// served.
    pub fn console_input_room(&self, domid: u32) -> Option<usize> {
        self.backends.as_ref().ok()?.console_input_room(domid)
    }

    /// Input for domain `domid`'s console, no more than
    /// [`NoxsDispatch::console_input_room`] said.
    pub fn console_input(&mut self, domid: u32, bytes: &[u8]) {
        if let Ok(backends) = &mut self.backends {
            backends.console_input(domid, bytes);
        }
    }

    /// `release_domain`'s part: stop serving `domid`, if it is served.
    pub fn release(&mut self, domid: u32) {
        if let Ok(backends) = &mut self.backends {
            backends.release(domid, "release_domain");
        }
    }

    /// The daemon stops: its domains are left to the next xendevd, which takes them
    /// back (`noxs::restart`).
    pub fn leave_all(&mut self) {
        if let Ok(backends) = &mut self.backends {
            backends.leave_all();
        }
    }

    /// Take back the domains an xendevd before this one served.
    pub fn take_back_all(&mut self) {
        if let Ok(backends) = &mut self.backends {
            backends.take_back_all();
        }
    }

    /// `query`'s part: the domains served.
    pub fn domains(&self) -> Vec<NoxsDomain> {
        self.backends
            .as_ref()
            .map(Backends::domains)
            .unwrap_or_default()
    }

    /// `domain`: served domain `domid`, if it is.
    pub fn domain(&self, domid: u32) -> Option<NoxsDomain> {
        self.backends.as_ref().ok()?.domain(domid)
    }

    /// `domains_named`: the served domains called `name`.
    pub fn named(&self, name: &str) -> Vec<NoxsDomain> {
        self.backends
            .as_ref()
            .map(|backends| backends.named(name))
            .unwrap_or_default()
    }

    /// `list_domains`: every served domain in brief.
    pub fn summaries(&self) -> Vec<DomainSummary> {
        self.backends
            .as_ref()
            .map(Backends::summaries)
            .unwrap_or_default()
    }

    /// Move a waiting power request on: `Some` once it is answered.
    pub fn power_poll(
        &mut self,
        wait: &mut PowerWait,
        now: Instant,
    ) -> Option<Result<(), NoxsRefusal>> {
        match &mut self.backends {
            Ok(backends) => backends
                .power_poll(wait, now)
                .map(|answer| answer.map_err(NoxsRefusal::from)),
            Err(missing) => Some(Err(missing.clone().into())),
        }
    }

    /// When the loop must run again for the back ends, without an event.
    pub fn deadline(&self) -> Option<Instant> {
        self.backends.as_ref().ok().and_then(Backends::deadline)
    }

    /// Ports fired (the event-channel fd is readable).
    pub fn on_evtchn(&mut self) {
        if let Ok(backends) = &mut self.backends {
            backends.on_evtchn();
        }
    }

    /// A vbd worker reported.
    pub fn on_workers(&mut self) {
        if let Ok(backends) = &mut self.backends {
            backends.on_workers();
        }
    }

    /// Xenstore's watch fired.
    pub fn on_watch(&mut self) {
        if let Ok(backends) = &mut self.backends {
            backends.on_watch();
        }
    }

    /// Frames wait on the tap of device `index` of `domid`.
    pub fn on_tap(&mut self, domid: u32, index: u32) {
        if let Ok(backends) = &mut self.backends
            && let Ok(index) = usize::try_from(index)
        {
            backends.on_tap(domid, index);
        }
    }

    /// The back ends' periodic work, once a turn: left-over ring work, the check for
    /// dead domains when due.
    pub fn tick(&mut self, now: Instant) {
        if let Ok(backends) = &mut self.backends {
            backends.tick(now);
        }
    }

    /// Check now for ended domains (the periodic check's, at start): `false` if it
    /// cannot be made (no back ends, so no way to list domains).
    pub fn check_domains(&mut self, why: &str) -> bool {
        match &mut self.backends {
            Ok(backends) => {
                backends.check_domains(why);
                true
            }
            Err(_) => false,
        }
    }

    /// The domains with loop devices the domain check found ended, each with why.
    pub fn take_ended(&mut self) -> Vec<(u32, String)> {
        match &mut self.backends {
            Ok(backends) => backends.take_ended(),
            Err(_) => Vec::new(),
        }
    }

    /// What Xen says of domain `domid` (`Unknown` without the back ends' Xen handle).
    pub fn domain_state(&self, domid: u32) -> DomainState {
        match &self.backends {
            Ok(backends) => backends.domain_state(domid),
            Err(_) => DomainState::Unknown,
        }
    }

    /// What happened since the last call: console output, released domains.
    pub fn take_events(&mut self) -> Vec<Event> {
        match &mut self.backends {
            Ok(backends) => backends.take_events(),
            Err(_) => Vec::new(),
        }
    }
}
