//! NoXS back ends (`shared/design/noxs-v1.md`): xendevd serves every device of a NoXS
//! domain — console, power control (sysctl), vifs through taps, vbds from files or
//! block devices — through control pages it grants and event channels it binds, with
//! no Xenstore involved.
//!
//! One module per kind of device — [`sysctl`], [`vif`], [`vbd`], and the [`console`]
//! that every domain has — each making its back end, connecting its data path once
//! the guest published its half of the control page, serving it and dropping it
//! ([`DeviceBackend`]). This module keeps the table of served domains, routes each
//! event-channel port to what it belongs to, runs the control-page handshake
//! ([`control`]) and releases domains that died.
//!
//! A domain may also start as a *shell* (a chaos daemon's, `noxs_shell`): its control
//! pages and event channels made, its vifs' taps on their bridges, before its guest is
//! known; `noxs_fill` then gives it the guest's name, console, MACs, addresses and
//! disks, and it is served like any other.
//!
//! Everything but disk I/O runs in the daemon's loop: one event-channel fd for every
//! port, one fd per connected vif's tap, each in the daemon's epoll set ([`Poller`])
//! while it has something to say (a tap from its vif's connect to its disconnect). A
//! connected vbd is served by a thread of its own ([`vbd_worker`]), so that a slow or
//! hung disk stalls only its guest. Ring work is bounded per turn ([`BUDGET`]), events
//! per turn too, and a port that fires without work is unmasked later and later
//! ([`eoi`]), so that one busy or hostile guest cannot hold up the others; a guest that
//! breaks a ring loses that device, never the daemon.

pub mod console;
pub mod control;
pub mod copier;
pub mod eoi;
pub mod error;
pub mod request;
pub mod restart;
pub mod sysctl;
pub mod tap;
pub mod vbd;
pub mod vbd_worker;
pub mod vif;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};
use xenhost::evtchn::{Evtchn, Port};
use xenhost::gntshr::Gntshr;
use xenhost::gnttab::{Gnttab, Mapping};
use xenhost::xc::Xc;
use xenhost::xs::{Watch, Xs};
use xenproto::noxs::{self, Kind};
use xenproto::xenstore::XenbusState;

use crate::api::{DomainSummary, NoxsDevice, NoxsDomain, ShellDevice};
use crate::bridge::NetControl;
use crate::disks::{DomainState, SharedBook};
use crate::limits::{self, Making};
use crate::poller::{Interest, Poller, Token};
use crate::ratelimit::{LogLimit, Window};

use console::{Console, ConsoleLog, LOG_LIMIT, LogBook, TOTAL_LOG_LIMIT};
use control::{Control, Step};
use copier::Copier;
use eoi::{Eoi, Outcome};
pub use error::{DeviceError, Error, OpenError};
use request::{DevicePlan, Dom0, ShellPlan};
use restart::{Record, StateDir};
pub use sysctl::PowerWait;
use sysctl::Sysctl;
use tap::Tap;
use vbd::Vbd;
use vbd_worker::Mailbox;
use vif::Vif;

/// Requests or packets one device may have served per loop turn.
pub const BUDGET: usize = 64;
/// Events handled per loop turn; the rest wait for the next, after taps, other
/// descriptors and the API had theirs.
const EVENTS_PER_TURN: usize = 256;
/// A guest's console output taken per period, at most (xenconsoled limits its rate
/// too): past it the guest's ring stays full, and the guest waits, until the next.
const CONSOLE_RATE: (u64, Duration) = (32 * 1024, Duration::from_millis(100));
/// How often served domains (and those with loop devices) are checked for death:
/// xenstored fires `@releaseDomain` only for domains introduced to it, never for NoXS
/// domains, so this is what finds their deaths (a dying domain stays a zombie while we
/// map its pages).
/// `VIRQ_DOM_EXC` would say at once, but Xen lets one process bind it, and that is
/// xenstored's: bound here first, a xenstored started later cannot bind it and exits.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What happened that the daemon's clients may care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New console output of a domain.
    Console { domid: u32, bytes: Vec<u8> },
    /// A domain is no longer served: its console streams end.
    Released { domid: u32 },
}

/// A device of a served domain, for messages: `sysctl`, `vif 0`, `vbd 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceId {
    pub kind: Kind,
    pub devid: u32,
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Sysctl => f.write_str("sysctl"),
            Kind::Console => f.write_str("console"),
            Kind::Vif => write!(f, "vif {}", self.devid),
            Kind::Vbd => write!(f, "vbd {}", self.devid),
        }
    }
}

/// The guest a device connects to, and the Xen devices its data path needs.
#[derive(Debug)]
pub struct Guest<'a> {
    pub domid: u32,
    pub gnttab: &'a Rc<Gnttab>,
    pub evtchn: &'a Rc<Evtchn>,
    /// Where vbd workers report.
    pub workers: &'a Arc<Mailbox>,
}

impl Guest<'_> {
    /// The domain id as grant operations take it (checked below 0x7ff0 at create).
    pub fn id(&self) -> u16 {
        u16::try_from(self.domid).expect("checked at create")
    }
}

/// What every kind of device back end does; each kind implements it in its module.
pub trait DeviceBackend {
    /// Validate the copy of the front end's area and connect the data path (map the
    /// rings, bind the data port).
    fn connect(&mut self, guest: &Guest<'_>, frontend: &[u8]) -> Result<(), DeviceError>;
    /// Drop the data path (rings unmapped, port unbound).
    fn disconnect(&mut self);
    /// Our port of the data path's event channel, while connected.
    fn data_port(&self) -> Option<u32> {
        None
    }
    /// Serve the rings, at most [`BUDGET`] requests: whether work is left.
    fn serve(&mut self) -> Result<bool, DeviceError> {
        Ok(false)
    }
    /// The device as the log shows it when the domain is set up.
    fn summary(&self) -> String;
}

/// A connected device's data path: the engine serving the guest's rings, its grant
/// copies, our end of the data event channel, and the guest's rings mapped. The engine
/// goes first: fields drop in order, and it refers to the mapped rings.
#[derive(Debug)]
pub struct DataPath<E> {
    pub engine: E,
    pub memory: Copier,
    port: Port,
    _rings: Mapping,
}

impl<E> DataPath<E> {
    /// Map the guest's ring pages `grefs` (contiguously, read-write), bind its data
    /// port, and start the engine on the mapping: `start` gets its first byte and
    /// answers for how it uses the `grefs.len()` pages there.
    pub fn connect(
        guest: &Guest<'_>,
        grefs: &[u32],
        data_port: u32,
        map_failed: impl FnOnce(xenhost::Error) -> DeviceError,
        start: impl FnOnce(*mut u8) -> E,
    ) -> Result<Self, DeviceError> {
        let rings = guest
            .gnttab
            .map(guest.domid, grefs, true)
            .map_err(map_failed)?;
        let port = guest
            .evtchn
            .bind_interdomain(guest.domid, data_port)
            .map_err(|source| DeviceError::BindPort {
                port: data_port,
                source,
            })?;
        Ok(Self {
            engine: start(rings.as_ptr()),
            memory: Copier::new(Rc::clone(guest.gnttab), guest.id()),
            port,
            _rings: rings,
        })
    }

    /// Our port of the data event channel.
    pub fn port(&self) -> u32 {
        self.port.local()
    }

    /// Tell the guest to look at its rings (when the engine says it should).
    pub fn notify_if(&self, needed: bool) {
        if needed {
            let _ = self.port.notify();
        }
    }
}

/// A device's back end, by kind.
#[derive(Debug)]
enum Backend {
    Sysctl(Sysctl),
    Vif(Box<Vif>),
    Vbd(Box<Vbd>),
}

impl Backend {
    fn kind(&self) -> Kind {
        match self {
            Self::Sysctl(_) => Kind::Sysctl,
            Self::Vif(_) => Kind::Vif,
            Self::Vbd(_) => Kind::Vbd,
        }
    }

    fn get(&self) -> &dyn DeviceBackend {
        match self {
            Self::Sysctl(sysctl) => sysctl,
            Self::Vif(vif) => vif.as_ref(),
            Self::Vbd(vbd) => vbd.as_ref(),
        }
    }

    fn get_mut(&mut self) -> &mut dyn DeviceBackend {
        match self {
            Self::Sysctl(sysctl) => sysctl,
            Self::Vif(vif) => vif.as_mut(),
            Self::Vbd(vbd) => vbd.as_mut(),
        }
    }
}

/// One device of a served domain: its back end and its control page.
#[derive(Debug)]
struct Device {
    devid: u32,
    backend: Backend,
    control: Control,
    /// The guest wrote something invalid to the header (logged once).
    complained: bool,
    /// What the guest makes us log about this device: bounded whatever it does.
    log: LogLimit,
}

impl Device {
    /// A vif's tap while the vif is connected: frames from the host to deliver.
    fn tap(&self) -> Option<BorrowedFd<'_>> {
        match &self.backend {
            Backend::Vif(vif) => vif.tap(),
            Backend::Sysctl(_) | Backend::Vbd(_) => None,
        }
    }

    fn id(&self) -> DeviceId {
        DeviceId {
            kind: self.backend.kind(),
            devid: self.devid,
        }
    }

    /// Log a line about this device, within its [`LogLimit`] (a guest that flaps its
    /// states or breaks its rings on purpose must not fill dom0's log).
    fn log(&mut self, domid: u32, level: log::Level, message: fmt::Arguments<'_>) {
        if !log::log_enabled!(level) {
            return;
        }
        let id = self.id();
        if let Some(suppressed) = self.log.admit(Instant::now()) {
            if suppressed > 0 {
                log::log!(
                    level,
                    "domain {domid} {id}: {suppressed} line(s) about it suppressed (at most {} \
                     a minute)",
                    LogLimit::LINES
                );
            }
            log::log!(level, "domain {domid} {id}: {message}");
        }
    }
}

#[derive(Debug)]
struct Domain {
    name: String,
    console: Console,
    console_rate: Window,
    devices: Vec<Device>,
    /// For `NoxsDomain::created_ms`.
    created: SystemTime,
    /// The guest's re-offer port, bound when its devices were offered again
    /// ([`restart`]).
    reoffer: Option<Port>,
    /// The guest's console port and the devices as the toolstack asked for them: its
    /// [`Record`], and what `chaos save` reads back.
    console_port: u32,
    asked: Vec<NoxsDevice>,
}

impl Domain {
    /// The sysctl device's back end and control page, if the domain has one.
    fn sysctl_mut(&mut self) -> Option<(&mut Sysctl, &Control)> {
        self.devices.iter_mut().find_map(|device| match device {
            Device {
                backend: Backend::Sysctl(sysctl),
                control,
                ..
            } => Some((sysctl, &*control)),
            _ => None,
        })
    }
}

/// A device of a shell: its control page (our area written at fill time), and a vif's
/// tap on its bridge.
#[derive(Debug)]
struct ShellPart {
    plan: ShellPlan,
    control: Control,
    tap: Option<Tap>,
}

/// A domain whose guest is not known yet (`noxs_shell`): no console, no disk, nothing
/// routed to it (the domain is not built, so nobody is on the other side).
#[derive(Debug)]
struct Shell {
    name: String,
    parts: Vec<ShellPart>,
}

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortUse {
    Console(u32),
    Control(u32, usize),
    Data(u32, usize),
}

/// How xendevd learns of domain deaths.
#[derive(Debug)]
enum DeathWatch {
    Xenstore(Watch<Xs>),
    Polling,
}

/// Every NoXS domain served, and the handles it takes.
#[derive(Debug)]
pub struct Backends {
    evtchn: Rc<Evtchn>,
    gnttab: Rc<Gnttab>,
    gntshr: Rc<Gntshr>,
    xc: Xc,
    net: NetControl,
    console_logs: Rc<RefCell<LogBook>>,
    domains: BTreeMap<u32, Domain>,
    shells: BTreeMap<u32, Shell>,
    /// The served domains by name, for the by-name query.
    by_name: HashMap<String, BTreeSet<u32>>,
    ports: HashMap<u32, PortUse>,
    /// Devices whose budget ran out with work left.
    pending: BTreeSet<(u32, usize)>,
    /// Ports whose unmask is put off.
    eoi: Eoi,
    /// What vbd workers report (in the epoll set).
    workers: Arc<Mailbox>,
    death: DeathWatch,
    /// The daemon's epoll set: the event-channel fd, the watch, connected taps.
    poller: Rc<Poller>,
    next_check: Instant,
    /// The images of the vbds, booked with the loop devices' (`disks.rs`).
    book: SharedBook,
    /// Domains with loop devices found ended by the domain check: the daemon's loop
    /// service detaches them ([`Backends::take_ended`]).
    ended: Vec<(u32, String)>,
    events: Vec<Event>,
    frame: Vec<u8>,
    /// Where each served domain's [`Record`] lies for the next xendevd; `None`: the
    /// directory could not be made, and a restart loses the guests (said at start).
    state: Option<StateDir>,
}

impl Backends {
    /// Open the Xen devices; learn domain deaths by Xenstore's `@releaseDomain` if
    /// xenstored runs, and by polling always (`VIRQ_DOM_EXC` is left to xenstored:
    /// [`CHECK_INTERVAL`]).
    pub fn open(
        console_dir: PathBuf,
        poller: Rc<Poller>,
        book: SharedBook,
        state_dir: &std::path::Path,
    ) -> Result<Self, OpenError> {
        let evtchn = Evtchn::open()?;
        let gnttab = Gnttab::open()?;
        let gntshr = Gntshr::open()?;
        let xc = Xc::open()?;
        let net = NetControl::open()?;
        if let Err(err) = std::fs::create_dir_all(&console_dir) {
            warn!(
                "cannot create {}: {err} (NoXS consoles will fail)",
                console_dir.display()
            );
        }
        let death = match Xs::open().and_then(|xs| xs.into_watch("@releaseDomain", "xendevd")) {
            Ok(watch) => {
                info!(
                    "NoXS: domain deaths come as Xenstore's @releaseDomain and a check every \
                     {} s (xenstored fires @releaseDomain only for domains introduced to it)",
                    CHECK_INTERVAL.as_secs()
                );
                DeathWatch::Xenstore(watch)
            }
            Err(xs_err) => {
                info!(
                    "NoXS: no Xenstore ({xs_err}): domain deaths are found by a check every {} s",
                    CHECK_INTERVAL.as_secs()
                );
                DeathWatch::Polling
            }
        };
        poller
            .add(evtchn.fd(), Token::Evtchn, Interest::READ)
            .map_err(OpenError::Poll)?;
        if let DeathWatch::Xenstore(watch) = &death {
            let fd = watch.xs().fd()?;
            poller
                .add(fd, Token::Watch, Interest::READ)
                .map_err(OpenError::Poll)?;
        }
        let workers = Mailbox::new().map_err(OpenError::Poll)?;
        poller
            .add(workers.fd(), Token::Workers, Interest::READ)
            .map_err(OpenError::Poll)?;
        Ok(Self {
            evtchn,
            gnttab,
            gntshr,
            xc,
            net,
            console_logs: LogBook::open(&console_dir, TOTAL_LOG_LIMIT),
            state: StateDir::open(state_dir)
                .inspect_err(|err| {
                    warn!(
                        "cannot make {}: {err}: an xendevd after this one will not take \
                         back its NoXS guests",
                        state_dir.display()
                    );
                })
                .ok(),
            domains: BTreeMap::new(),
            shells: BTreeMap::new(),
            by_name: HashMap::new(),
            ports: HashMap::new(),
            pending: BTreeSet::new(),
            eoi: Eoi::default(),
            workers,
            death,
            poller,
            next_check: Instant::now() + CHECK_INTERVAL,
            book,
            ended: Vec::new(),
            events: Vec::new(),
            frame: vec![0; 65536 + 64],
        })
    }

    /// When the loop must run again without an event: work left over, a domain check.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.pending.is_empty() {
            return Some(Instant::now());
        }
        let check = (!self.domains.is_empty()
            || !self.shells.is_empty()
            || self.book.borrow().holds_loops())
        .then_some(self.next_check);
        check.into_iter().chain(self.eoi.next_due()).min()
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Where a served domain's console log is.
    pub fn console_log(&self, domid: u32) -> Result<PathBuf, Error> {
        self.domains
            .get(&domid)
            .map(|domain| domain.console.log.path().to_owned())
            .ok_or(Error::NotServed(domid))
    }

    /// How much more input served domain `domid`'s console takes now (`None`: not
    /// served): zero while its ring and queue are full.
    pub fn console_input_room(&self, domid: u32) -> Option<usize> {
        self.domains
            .get(&domid)
            .map(|domain| domain.console.input_room())
    }

    /// Input for domain `domid`'s console (no more than
    /// [`Backends::console_input_room`] said): queued, and into its ring as far as
    /// it has room.
    pub fn console_input(&mut self, domid: u32, bytes: &[u8]) {
        if let Some(domain) = self.domains.get_mut(&domid)
            && let Err(err) = domain.console.send_input(bytes)
        {
            debug!("domain {domid} console input: {err}");
        }
    }

    /// The ports that fired (at most [`EVENTS_PER_TURN`]; the rest wait for the next
    /// turn): handle each, then unmask it — at once if it brought work, later if the
    /// guest fires it without work again and again, or is over its rate ([`Eoi`]).
    pub fn on_evtchn(&mut self) {
        for _ in 0..EVENTS_PER_TURN {
            let port = match self.evtchn.pending() {
                Ok(Some(port)) => port,
                Ok(None) => return,
                Err(err) => {
                    error!("reading /dev/xen/evtchn: {err}");
                    return;
                }
            };
            let outcome = match self.ports.get(&port).copied() {
                Some(PortUse::Console(domid)) => self.drain_console(domid),
                Some(PortUse::Control(domid, index)) => self.on_control(domid, index),
                Some(PortUse::Data(domid, index)) => self.serve(domid, index),
                None => {
                    debug!("event on port {port}, which is no longer in use");
                    Outcome::Idle
                }
            };
            if self.eoi.after(port, outcome, Instant::now()).is_none() {
                // A port unbound meanwhile is no error of anyone's.
                let _ = self.evtchn.unmask(port);
            }
        }
    }

    /// A vbd worker reported: its guest broke the ring. That vbd is closed (unless it
    /// was reconnected meanwhile, to another worker).
    pub fn on_workers(&mut self) {
        for broken in self.workers.take() {
            let Some(domain) = self.domains.get(&broken.domid) else {
                continue;
            };
            let index = domain.devices.iter().position(|device| {
                matches!(&device.backend, Backend::Vbd(vbd) if vbd.worker() == Some(broken.worker))
            });
            if let Some(index) = index {
                self.break_device(broken.domid, index, &DeviceError::Worker(broken.why));
            }
        }
    }

    /// Xenstore's watch fired.
    pub fn on_watch(&mut self) {
        if let DeathWatch::Xenstore(watch) = &self.death {
            match watch.xs().drain_events() {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) => {
                    warn!("Xenstore watch: {err}: polling for domain deaths from now on");
                    if let Ok(fd) = watch.xs().fd() {
                        let _ = self.poller.delete(fd);
                    }
                    self.death = DeathWatch::Polling;
                }
            }
        }
        self.check_domains("@releaseDomain");
    }

    /// Periodic work: left-over ring work, ports whose unmask was put off, and the
    /// domain check when due.
    pub fn tick(&mut self, now: Instant) {
        for (domid, index) in std::mem::take(&mut self.pending) {
            self.serve(domid, index);
        }
        for port in self.eoi.due(now) {
            let _ = self.evtchn.unmask(port);
        }
        if now >= self.next_check {
            self.check_domains("periodic check");
        }
    }

    /// Release every served domain that is dying or gone; queue those with loop
    /// devices for the loop service ([`Backends::take_ended`]): a domain destroyed
    /// behind chaos's back (`xl destroy`) holds neither for ever.
    pub fn check_domains(&mut self, why: &str) {
        self.next_check = Instant::now() + CHECK_INTERVAL;
        let with_loops = self.book.borrow().loop_domains();
        if self.domains.is_empty() && self.shells.is_empty() && with_loops.is_empty() {
            return;
        }
        let infos = match self.xc.domains() {
            Ok(infos) => infos,
            Err(err) => {
                error!("listing domains ({why}): {err}");
                return;
            }
        };
        // Xen's domains by id: one pass over each list, however many are served.
        let dying: HashMap<u32, bool> = infos.iter().map(|i| (i.domid, i.dying)).collect();
        let ended: BTreeMap<u32, &str> = self
            .domains
            .keys()
            .chain(self.shells.keys())
            .chain(&with_loops)
            .filter_map(|&domid| match dying.get(&domid) {
                None => Some((domid, "gone")),
                Some(true) => Some((domid, "dying")),
                Some(false) => None,
            })
            .collect();
        for (domid, state) in ended {
            let why = format!("it is {state} ({why})");
            self.release(domid, &why);
            if with_loops.contains(&domid) {
                self.ended.push((domid, why));
            }
        }
    }

    /// The domains with loop devices the domain check found ended since the last call,
    /// each with why.
    pub fn take_ended(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.ended)
    }

    /// What Xen says of domain `domid`.
    pub fn domain_state(&self, domid: u32) -> DomainState {
        match self.xc.domain_info(domid) {
            Ok(None) => DomainState::Gone,
            Ok(Some(info)) if info.dying => DomainState::Dying,
            Ok(Some(_)) => DomainState::Alive,
            Err(err) => {
                warn!("cannot ask Xen about domain {domid}: {err}");
                DomainState::Unknown
            }
        }
    }

    /// Serve a new domain (built, not yet unpaused). Nothing is left on failure.
    pub fn create(
        &mut self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, Error> {
        let plans = request::check(domid, name, console_port, devices, &Dom0)?;
        self.check_new(domid)?;
        let answer = self.serve_new(
            domid,
            name,
            (console_port, devices),
            ConsoleLog::create,
            |backends| {
                plans
                    .iter()
                    .map(|plan| backends.make_device(domid, plan, None))
                    .collect()
            },
        )?;
        self.remember(domid);
        Ok(answer)
    }

    /// Serve domain `domid` again from its record ([`restart`]): as
    /// [`Backends::create`], its log appended to and its taps taken over.
    fn serve_again(&mut self, record: &Record) -> Result<(), Error> {
        let (domid, name) = (record.domid, record.name.as_str());
        let plans = request::check(domid, name, record.console_port, &record.devices, &Dom0)?;
        self.serve_new(
            domid,
            name,
            (record.console_port, &record.devices),
            ConsoleLog::reopen,
            |backends| {
                plans
                    .iter()
                    .map(|plan| backends.make_device(domid, plan, Some(record)))
                    .collect()
            },
        )?;
        Ok(())
    }

    /// Write served domain `domid`'s record for the next xendevd.
    fn remember(&self, domid: u32) {
        let (Some(state), Some(domain)) = (&self.state, self.domains.get(&domid)) else {
            return;
        };
        let handle = match self.xc.domain_info(domid) {
            Ok(Some(info)) => Record::handle_of(&info.handle),
            other => {
                warn!("domain {domid}: no handle ({other:?}): not recorded for a restart");
                return;
            }
        };
        let images = domain
            .devices
            .iter()
            .filter_map(|device| match &device.backend {
                Backend::Vbd(vbd) => Some((device.devid, vbd.identity().0, vbd.identity().1)),
                Backend::Sysctl(_) | Backend::Vif(_) => None,
            })
            .collect();
        let record = Record {
            domid,
            handle,
            name: domain.name.clone(),
            console_port: domain.console_port,
            created_ms: millis_since_epoch(domain.created),
            devices: domain.asked.clone(),
            images,
        };
        if let Err(err) = state.save(&record) {
            warn!(
                "domain {domid}: cannot write its record in {}: {err}: an xendevd after this \
                 one will not take it back",
                state.dir().display()
            );
        }
    }

    /// Make the devices of shell `domid` (created, not built): control pages, event
    /// channels, taps on their bridges; nothing routed to it yet. Nothing is left on
    /// failure.
    pub fn shell(
        &mut self,
        domid: u32,
        name: &str,
        devices: &[ShellDevice],
    ) -> Result<NoxsDomain, Error> {
        let plans = request::check_shell(domid, name, devices, &Dom0)?;
        self.check_new(domid)?;
        let started = Instant::now();
        let parts = plans
            .into_iter()
            .map(|plan| self.make_shell_part(domid, plan))
            .collect::<Result<Vec<_>, _>>()?;
        let shell = Shell {
            name: name.to_owned(),
            parts,
        };
        info!(
            "NoXS shell {domid} ({name}): {} device(s) in {:.1} ms",
            shell.parts.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        let answer = describe_shell(domid, &shell);
        self.shells.insert(domid, shell);
        Ok(answer)
    }

    /// Serve shell `domid` (now built, not yet unpaused) as its guest asks: `devices`
    /// must be the shell's, one for one. The shell is used up whatever happens: on an
    /// error nothing of it is left.
    pub fn fill(
        &mut self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, Error> {
        let plans = request::check(domid, name, console_port, devices, &Dom0)?;
        let shell = self.shells.remove(&domid).ok_or(Error::NotAShell(domid))?;
        let asked: Vec<ShellDevice> = devices.iter().map(NoxsDevice::shell).collect();
        let made: Vec<ShellDevice> = shell.parts.iter().map(|part| part.plan.device()).collect();
        if asked != made {
            return Err(Error::NotTheShell {
                domid,
                made: format!("{made:?}"),
                asked: format!("{asked:?}"),
            });
        }
        self.check_new(domid)?;
        let answer = self.serve_new(
            domid,
            name,
            (console_port, devices),
            ConsoleLog::create,
            |backends| {
                shell
                    .parts
                    .into_iter()
                    .zip(&plans)
                    .map(|(part, plan)| fill_part(part, plan, domid, &backends.book))
                    .collect()
            },
        )?;
        self.remember(domid);
        Ok(answer)
    }

    /// Whether a new domain or shell may be `domid`: none is served as it, and Xen has
    /// it, alive.
    fn check_new(&self, domid: u32) -> Result<(), Error> {
        if let Some(name) = self
            .domains
            .get(&domid)
            .map(|domain| &domain.name)
            .or_else(|| self.shells.get(&domid).map(|shell| &shell.name))
        {
            return Err(Error::Served {
                domid,
                name: name.clone(),
            });
        }
        match self.xc.domain_info(domid).map_err(Error::ListDomains)? {
            None => Err(Error::NoSuchDomain(domid)),
            Some(info) if info.dying => Err(Error::Dying(domid)),
            Some(_) => Ok(()),
        }
    }

    /// Serve domain `domid` (checked by [`Backends::check_new`]) from now on: its
    /// console (a fresh log) and the devices `devices` makes of those `asked` for; only
    /// then do its ports route to it. Nothing is left on failure.
    fn serve_new(
        &mut self,
        domid: u32,
        name: &str,
        (console_port, asked): (u32, &[NoxsDevice]),
        open_log: fn(&Rc<RefCell<LogBook>>, &str, u64) -> std::io::Result<ConsoleLog>,
        devices: impl FnOnce(&Self) -> Result<Vec<Device>, Error>,
    ) -> Result<NoxsDomain, Error> {
        let started = Instant::now();
        let log_name = format!("{name}-{domid}.log");
        let log_path = self.console_logs.borrow().dir().join(&log_name);
        let log = open_log(&self.console_logs, &log_name, LOG_LIMIT).map_err(|source| {
            limits::reached(source.raw_os_error(), Making::File).map_or_else(
                || Error::ConsoleLog {
                    path: log_path.clone(),
                    source,
                },
                Error::Limit,
            )
        })?;
        let made = Console::connect(&self.gnttab, &self.evtchn, domid, console_port, log)
            .map_err(Error::from)
            .and_then(|console| {
                Ok(Domain {
                    name: name.to_owned(),
                    console,
                    console_rate: Window::new(CONSOLE_RATE.0, CONSOLE_RATE.1),
                    devices: devices(self)?,
                    created: SystemTime::now(),
                    reoffer: None,
                    console_port,
                    asked: asked.to_vec(),
                })
            });
        // What was made is dropped (unmapped, unbound, unshared, taps gone); the empty
        // log goes too.
        let domain = made.inspect_err(|_| {
            let _ = std::fs::remove_file(&log_path);
        })?;
        // Everything is made: only now do its ports route to it.
        self.ports
            .insert(domain.console.port(), PortUse::Console(domid));
        for (index, device) in domain.devices.iter().enumerate() {
            self.ports
                .insert(device.control.port(), PortUse::Control(domid, index));
        }
        let answer = describe(domid, &domain);
        info!(
            "NoXS domain {domid} ({name}): {} in {:.1} ms; console log {}",
            domain
                .devices
                .iter()
                .map(|device| device.backend.get().summary())
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64() * 1e3,
            log_path.display()
        );
        self.by_name
            .entry(domain.name.clone())
            .or_default()
            .insert(domid);
        self.domains.insert(domid, domain);
        Ok(answer)
    }

    /// A shell's device: its control page (our area zero until the fill: no guest
    /// runs to read it) and a vif's tap on its bridge.
    fn make_shell_part(&self, domid: u32, plan: ShellPlan) -> Result<ShellPart, Error> {
        let device = shell_device_id(&plan);
        let failed = |problem| Error::Device { device, problem };
        let tap = match &plan {
            ShellPlan::Vif { tap, bridge, .. } => {
                Some(Vif::make_tap(&self.net, tap, bridge).map_err(failed)?)
            }
            ShellPlan::Sysctl | ShellPlan::Vbd { .. } => None,
        };
        let control = Control::create(&self.gntshr, &self.evtchn, domid, device.kind, &[])
            .map_err(|err| failed(DeviceError::Control(err)))?;
        Ok(ShellPart { plan, control, tap })
    }

    /// A device's back end (a vif's tap is on its bridge by then), then its control
    /// page carrying the back end's area.
    fn make_device(
        &self,
        domid: u32,
        plan: &DevicePlan,
        taking_back: Option<&Record>,
    ) -> Result<Device, Error> {
        let id = match plan {
            DevicePlan::Sysctl => DeviceId {
                kind: Kind::Sysctl,
                devid: 0,
            },
            DevicePlan::Vif(plan) => DeviceId {
                kind: Kind::Vif,
                devid: plan.devid,
            },
            DevicePlan::Vbd(plan) => DeviceId {
                kind: Kind::Vbd,
                devid: plan.devid,
            },
        };
        let failed = |problem| Error::Device {
            device: id,
            problem,
        };
        let (backend, area) = match plan {
            DevicePlan::Sysctl => {
                let (sysctl, area) = Sysctl::create();
                (Backend::Sysctl(sysctl), area)
            }
            DevicePlan::Vif(plan) => {
                let (vif, area) = if taking_back.is_some() {
                    Vif::take_over(&self.net, plan)
                } else {
                    Vif::create(&self.net, plan)
                }
                .map_err(failed)?;
                (Backend::Vif(Box::new(vif)), area)
            }
            DevicePlan::Vbd(plan) => {
                let (vbd, area) = Vbd::create(plan, domid, &self.book).map_err(failed)?;
                if let Some(recorded) = taking_back.and_then(|record| record.image(plan.devid)) {
                    vbd.check_identity(recorded).map_err(failed)?;
                }
                (Backend::Vbd(Box::new(vbd)), area)
            }
        };
        let control = Control::create(&self.gntshr, &self.evtchn, domid, id.kind, &area)
            .map_err(|err| failed(DeviceError::Control(err)))?;
        Ok(Device {
            devid: id.devid,
            backend,
            control,
            complained: false,
            log: LogLimit::default(),
        })
    }

    /// Stop serving `domid`: close its back ends, unmap all its grants, unbind its ports,
    /// unshare its control pages, remove its taps. Returns whether it was served.
    pub fn release(&mut self, domid: u32, why: &str) -> bool {
        if let Some(shell) = self.shells.remove(&domid) {
            let devices = shell.parts.len();
            // Dropping the parts removes the taps, unbinds the ports, unshares the pages.
            drop(shell.parts);
            info!(
                "NoXS shell {domid} ({}) released: {why}; {devices} device(s) dropped",
                shell.name
            );
            return true;
        }
        if !self.domains.contains_key(&domid) {
            return false;
        }
        // The console's last words first.
        self.drain_console(domid);
        let Some(mut domain) = self.domains.remove(&domid) else {
            return false;
        };
        if let Some(state) = &self.state {
            state.remove(domid);
        }
        if let Some(ids) = self.by_name.get_mut(&domain.name) {
            ids.remove(&domid);
            if ids.is_empty() {
                self.by_name.remove(&domain.name);
            }
        }
        self.ports.remove(&domain.console.port());
        self.eoi.forget(domain.console.port());
        for device in &mut domain.devices {
            self.ports.remove(&device.control.port());
            self.eoi.forget(device.control.port());
            if let Some(port) = device.backend.get().data_port() {
                self.ports.remove(&port);
                self.eoi.forget(port);
            }
            if let Some(tap) = device.tap() {
                let _ = self.poller.delete(tap);
            }
            device.backend.get_mut().disconnect();
            device.control.set_state(XenbusState::Closing);
            let suppressed = device.log.suppressed();
            if suppressed > 0 {
                info!(
                    "domain {domid} {}: {suppressed} line(s) about it suppressed",
                    device.id()
                );
            }
        }
        self.pending.retain(|(d, _)| *d != domid);
        let name = domain.name.clone();
        let devices = domain.devices.len();
        drop(domain);
        info!("NoXS domain {domid} ({name}) released: {why}; {devices} device(s) closed");
        self.events.push(Event::Released { domid });
        if self.domains.is_empty() {
            self.return_memory();
        }
        true
    }

    /// Serving no domain any more: give back what a crowd of them took (the maps keep
    /// their capacity, and glibc's allocator the freed heap, otherwise: 1000 guests
    /// left xendevd 2.8 MiB larger than before them).
    fn return_memory(&mut self) {
        self.ports.shrink_to_fit();
        self.by_name.shrink_to_fit();
        // SAFETY: malloc_trim takes no pointers and only hands free memory of the
        // allocator's arenas back to the system; xendevd's one thread may call it at
        // any time.
        unsafe { nix::libc::malloc_trim(0) };
    }

    /// The daemon stops: leave every served domain to the next xendevd ([`restart`]):
    /// no device is closed and its taps stay; the process's end unmaps and unbinds the
    /// rest. Shells, which have no guest yet, are released.
    pub fn leave_all(&mut self) {
        for domid in self.shells.keys().copied().collect::<Vec<_>>() {
            self.release(domid, "xendevd stops");
        }
        for (domid, domain) in std::mem::take(&mut self.domains) {
            // The console's last words are in its log already, up to the last turn.
            info!(
                "NoXS domain {domid} ({}) left to the next xendevd{}",
                domain.name,
                if self.state.is_some() {
                    ""
                } else {
                    " (no record: it will not take it back)"
                }
            );
            std::mem::forget(domain);
        }
    }

    /// Every served domain and shell, with its entries and state words.
    pub fn domains(&self) -> Vec<NoxsDomain> {
        let mut all: Vec<NoxsDomain> = self
            .domains
            .iter()
            .map(|(&domid, domain)| describe(domid, domain))
            .chain(
                self.shells
                    .iter()
                    .map(|(&domid, shell)| describe_shell(domid, shell)),
            )
            .collect();
        all.sort_by_key(|domain| domain.domid);
        all
    }

    /// Served domain `domid`, with its entries and state words.
    pub fn domain(&self, domid: u32) -> Option<NoxsDomain> {
        self.domains
            .get(&domid)
            .map(|domain| describe(domid, domain))
    }

    /// The served domains called `name`.
    pub fn named(&self, name: &str) -> Vec<NoxsDomain> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&domid| self.domain(domid))
            .collect()
    }

    /// Give served domain `domid` the name `name` (its record too); its console log
    /// keeps its file.
    pub fn rename(&mut self, domid: u32, name: &str) -> Result<(), Error> {
        request::check_name(name).map_err(|err| Error::Request(err.into()))?;
        let domain = self
            .domains
            .get_mut(&domid)
            .ok_or(Error::NotServed(domid))?;
        let old = std::mem::replace(&mut domain.name, name.to_owned());
        if let Some(ids) = self.by_name.get_mut(&old) {
            ids.remove(&domid);
            if ids.is_empty() {
                self.by_name.remove(&old);
            }
        }
        self.by_name
            .entry(name.to_owned())
            .or_default()
            .insert(domid);
        self.remember(domid);
        info!("NoXS domain {domid} ({old}) is called {name} now");
        Ok(())
    }

    /// Offer served domain `domid`'s devices again through its start_info page (a
    /// guest restored into this new domain: its page names the control pages of the
    /// domain it was saved from). Returns the new generation.
    pub fn reoffer_restored(&mut self, domid: u32) -> Result<u32, Error> {
        if !self.domains.contains_key(&domid) {
            return Err(Error::NotServed(domid));
        }
        let started = Instant::now();
        let generation = self.reoffer(domid).map_err(|source| match source {
            restart::ReofferError::NoGrant { gref, .. } => Error::NotGrantedYet { domid, gref },
            source => Error::Reoffer { domid, source },
        })?;
        info!(
            "NoXS domain {domid}: devices offered again (generation {generation}) in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(generation)
    }

    /// Every served domain in brief.
    pub fn summaries(&self) -> Vec<DomainSummary> {
        self.domains
            .iter()
            .map(|(&domid, domain)| DomainSummary {
                domid,
                name: domain.name.clone(),
                created_ms: millis_since_epoch(domain.created),
            })
            .collect()
    }

    /// A console event: take the domain's output, within its rate (past it, the ring
    /// stays full and the guest waits until the next period), and put queued input
    /// into the room the guest made (input it took counts as work).
    fn drain_console(&mut self, domid: u32) -> Outcome {
        let Some(domain) = self.domains.get_mut(&domid) else {
            return Outcome::Idle;
        };
        let fed = domain.console.feed_input().unwrap_or_else(|err| {
            debug!("domain {domid} console input: {err}");
            0
        });
        let room = domain.console_rate.available(Instant::now());
        let drained = domain
            .console
            .drain(usize::try_from(room).unwrap_or(usize::MAX));
        let taken = drained.as_ref().map_or(0, Vec::len) as u64;
        domain.console_rate.spend(taken);
        let outcome = match domain.console_rate.spent_until() {
            Some(until) => Outcome::Throttled(until),
            None if taken > 0 || fed > 0 => Outcome::Work,
            None => Outcome::Idle,
        };
        match drained {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => self.events.push(Event::Console { domid, bytes }),
            Err(err) => debug!("domain {domid} console: {err}"),
        }
        outcome
    }

    /// The control page of a device changed (or the guest acknowledged something):
    /// work, unless the states call for no step.
    fn on_control(&mut self, domid: u32, index: usize) -> Outcome {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return Outcome::Idle;
        };
        let frontend = match device.control.frontend_state() {
            Ok(state) => state,
            Err(err) => {
                if !device.complained {
                    let message = format_args!("{err} (ignored until it makes sense)");
                    device.log(domid, log::Level::Warn, message);
                    device.complained = true;
                }
                return Outcome::Idle;
            }
        };
        match control::step(device.control.state(), frontend) {
            Step::Nothing => return Outcome::Idle,
            Step::Connect => self.connect(domid, index),
            Step::Disconnect => {
                self.disconnect(domid, index, XenbusState::Closed);
                if let Some(device) = device_mut(&mut self.domains, domid, index) {
                    let message = format_args!("disconnected (front end {frontend:?})");
                    device.log(domid, log::Level::Debug, message);
                }
            }
            Step::Reopen => {
                device.control.set_state(XenbusState::InitWait);
                device.log(domid, log::Level::Debug, format_args!("offered again"));
            }
        }
        Outcome::Work
    }

    /// The front end published its area: connect the device's data path (its port
    /// routed here, its tap watched), or close the device if it cannot be.
    fn connect(&mut self, domid: u32, index: usize) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        let guest = Guest {
            domid,
            gnttab: &self.gnttab,
            evtchn: &self.evtchn,
            workers: &self.workers,
        };
        let area = device.control.frontend_area();
        if let Err(why) = device.backend.get_mut().connect(&guest, &area) {
            device.log(domid, log::Level::Warn, format_args!("{why}: closing it"));
            device.backend.get_mut().disconnect();
            device.control.set_state(XenbusState::Closing);
            return;
        }
        if let Some(port) = device.backend.get().data_port() {
            self.ports.insert(port, PortUse::Data(domid, index));
        }
        if let Some(tap) = device.tap() {
            let token = Token::Tap {
                domid,
                index: u32::try_from(index).expect("at most 64 devices"),
            };
            if let Err(errno) = self.poller.add(tap, token, Interest::READ) {
                error!(
                    "domain {domid} {}: cannot watch its tap: {errno}: closing it",
                    device.id()
                );
                self.disconnect(domid, index, XenbusState::Closing);
                return;
            }
        }
        device.control.set_state(XenbusState::Connected);
        device.log(domid, log::Level::Debug, format_args!("connected"));
        // Requests queued before we were ready.
        self.serve(domid, index);
    }

    /// Drop a device's data path — its port routes nowhere, its left-over work goes,
    /// its tap is no longer watched, its rings are unmapped — and tell the guest
    /// `state`.
    fn disconnect(&mut self, domid: u32, index: usize, state: XenbusState) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        if let Some(port) = device.backend.get().data_port() {
            self.ports.remove(&port);
            self.eoi.forget(port);
        }
        self.pending.remove(&(domid, index));
        if let Some(tap) = device.tap() {
            let _ = self.poller.delete(tap);
        }
        device.backend.get_mut().disconnect();
        device.control.set_state(state);
    }

    /// Serve a device's rings (a data event, or work left from the last turn). A data
    /// event counts as work: a vif's guest also notifies for receive buffers, which
    /// are used when frames come.
    fn serve(&mut self, domid: u32, index: usize) -> Outcome {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return Outcome::Idle;
        };
        match device.backend.get_mut().serve() {
            Ok(true) => {
                self.pending.insert((domid, index));
            }
            Ok(false) => {}
            Err(why) => self.break_device(domid, index, &why),
        }
        Outcome::Work
    }

    /// A guest broke a device's protocol: disconnect that device only.
    fn break_device(&mut self, domid: u32, index: usize, why: &DeviceError) {
        self.disconnect(domid, index, XenbusState::Closing);
        if let Some(device) = device_mut(&mut self.domains, domid, index) {
            let message = format_args!("protocol error: {why}: disconnected");
            device.log(domid, log::Level::Error, message);
        }
    }

    /// Frames from a vif's tap for the guest.
    pub fn on_tap(&mut self, domid: u32, index: usize) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        let Backend::Vif(vif) = &mut device.backend else {
            return;
        };
        if let Err(why) = vif.receive(&mut self.frame) {
            self.break_device(domid, index, &why);
        }
    }

    /// Start a power request: checked now, sent once the guest's sysctl is connected.
    pub fn power(
        &mut self,
        domid: u32,
        action: noxs::Request,
        timeout_ms: u32,
    ) -> Result<PowerWait, Error> {
        let domain = self
            .domains
            .get_mut(&domid)
            .ok_or(Error::NotServed(domid))?;
        let has_sysctl = domain.sysctl_mut().is_some();
        // Whether it shut down already, if Xen can say.
        let shut_down = self
            .xc
            .domain_info(domid)
            .ok()
            .flatten()
            .is_some_and(|info| info.shutdown.is_some() || info.dying);
        Ok(PowerWait::start(
            domid,
            &domain.name,
            has_sysctl,
            shut_down,
            action,
            timeout_ms,
        )?)
    }

    /// Move a power request on: `Some` once it is answered (acknowledged or failed).
    pub fn power_poll(&mut self, wait: &mut PowerWait, now: Instant) -> Option<Result<(), Error>> {
        let Some(domain) = self.domains.get_mut(&wait.domid) else {
            return Some(Err(wait.released().into()));
        };
        let name = domain.name.clone();
        let (sysctl, control) = domain.sysctl_mut().expect("checked in power()");
        wait.poll(sysctl, control, &name, now)
            .map(|answer| answer.map_err(Error::from))
    }
}

/// Device `index` of served domain `domid`. (A function of the map, not of
/// [`Backends`], so the caller may still use the other fields.)
fn device_mut(
    domains: &mut BTreeMap<u32, Domain>,
    domid: u32,
    index: usize,
) -> Option<&mut Device> {
    domains.get_mut(&domid)?.devices.get_mut(index)
}

/// Which device of its domain a shell's device is.
fn shell_device_id(plan: &ShellPlan) -> DeviceId {
    match *plan {
        ShellPlan::Sysctl => DeviceId {
            kind: Kind::Sysctl,
            devid: 0,
        },
        ShellPlan::Vif { devid, .. } => DeviceId {
            kind: Kind::Vif,
            devid,
        },
        ShellPlan::Vbd { devid } => DeviceId {
            kind: Kind::Vbd,
            devid,
        },
    }
}

/// A shell's device as its guest asks for it (`plan`, checked to be the shell's
/// device): the back end, our area written into the control page made for it.
fn fill_part(
    part: ShellPart,
    plan: &DevicePlan,
    domid: u32,
    book: &SharedBook,
) -> Result<Device, Error> {
    let id = shell_device_id(&part.plan);
    let (backend, area) = match (plan, part.tap) {
        (DevicePlan::Sysctl, _) => {
            let (sysctl, area) = Sysctl::create();
            (Backend::Sysctl(sysctl), area)
        }
        (DevicePlan::Vif(plan), Some(tap)) => {
            let (vif, area) = Vif::with_tap(tap, plan);
            (Backend::Vif(Box::new(vif)), area)
        }
        (DevicePlan::Vbd(plan), _) => {
            let (vbd, area) = Vbd::create(plan, domid, book).map_err(|problem| Error::Device {
                device: id,
                problem,
            })?;
            (Backend::Vbd(Box::new(vbd)), area)
        }
        (DevicePlan::Vif(_), None) => unreachable!("a shell's vif has its tap"),
    };
    part.control.write_area(&area);
    Ok(Device {
        devid: id.devid,
        backend,
        control: part.control,
        complained: false,
        log: LogLimit::default(),
    })
}

/// A shell as the API shows it: its entries, no creation time yet.
fn describe_shell(domid: u32, shell: &Shell) -> NoxsDomain {
    NoxsDomain {
        domid,
        name: shell.name.clone(),
        entries: shell
            .parts
            .iter()
            .map(|part| {
                let id = shell_device_id(&part.plan);
                noxs::Entry {
                    kind: id.kind,
                    backend: 0,
                    devid: id.devid,
                    ctrl_gref: part.control.gref(),
                    ctrl_port: part.control.port(),
                }
            })
            .collect(),
        states: shell
            .parts
            .iter()
            .map(|part| (part.control.state() as u32, part.control.frontend_word()))
            .collect(),
        created_ms: 0,
        devices: Vec::new(),
    }
}

/// A served domain as the API shows it.
fn describe(domid: u32, domain: &Domain) -> NoxsDomain {
    NoxsDomain {
        domid,
        name: domain.name.clone(),
        entries: domain
            .devices
            .iter()
            .map(|device| noxs::Entry {
                kind: device.backend.kind(),
                backend: 0,
                devid: device.devid,
                ctrl_gref: device.control.gref(),
                ctrl_port: device.control.port(),
            })
            .collect(),
        states: domain
            .devices
            .iter()
            .map(|device| {
                (
                    device.control.state() as u32,
                    device.control.frontend_word(),
                )
            })
            .collect(),
        created_ms: millis_since_epoch(domain.created),
        devices: domain.asked.clone(),
    }
}

/// `time` in milliseconds since the Unix epoch (0 before it).
fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
