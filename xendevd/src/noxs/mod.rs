//! NoXS back ends (`shared/design/noxs-v1.md`): xendevd serves every device of a NoXS
//! domain — console, power control (sysctl), vifs through taps, vbds from files or
//! block devices — through control pages it grants and event channels it binds, with
//! no Xenstore involved.
//!
//! Everything runs in the daemon's poll loop: one event-channel fd for every port, one
//! fd per connected vif's tap. Ring work is bounded per turn ([`BUDGET`]) so that one
//! busy or hostile guest cannot hold up the others; a guest that breaks a ring loses
//! that device, never the daemon.

pub mod console;
pub mod control;
pub mod copier;
pub mod request;
pub mod tap;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use xenproto::noxs::{
    self, Kind, SysctlBackend, SysctlFrontend, VbdBackend, VbdFeatures, VbdFrontend, VbdInfo,
    VifBackend, VifBackendFeatures, VifFrontend, VifFrontendFeatures,
};
use xenproto::xenstore::XenbusState;

use crate::api::{NoxsDevice, NoxsDomain, NoxsEntry, NoxsKind, PowerAction};
use crate::bridge::NetControl;
use crate::xen::evtchn::{Evtchn, Port};
use crate::xen::gntshr::Gntshr;
use crate::xen::gnttab::{Gnttab, Mapping};
use crate::xen::xc::Xc;
use crate::xs::XsWatch;

use console::{Console, ConsoleLog, LOG_LIMIT};
use control::{Control, Step};
use copier::GrantCopier;
use request::{DevicePlan, Host, VbdPlan, VifPlan};
use tap::Tap;
use xendevd::engine::blkback::{Blkback, Geometry, MAX_INDIRECT_SEGMENTS};
use xendevd::engine::netback::{Delivered, Netback};

/// Requests or packets one device may have served per loop turn.
pub const BUDGET: usize = 64;
/// How often served domains are checked for death when `VIRQ_DOM_EXC` is ours (a
/// backstop only).
const CHECK_INTERVAL_VIRQ: Duration = Duration::from_secs(5);
/// How often otherwise: xenstored fires `@releaseDomain` only for domains introduced to
/// it, never for NoXS domains, so this is what finds their deaths (a dying domain stays
/// a zombie while we map its pages).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// `VIRQ_DOM_EXC`: a domain shut down or died.
const VIRQ_DOM_EXC: u32 = xenffi::VIRQ_DOM_EXC;
/// The Ethernet MTU offered to vifs.
const MTU: u16 = 1500;

/// What happened that the daemon's clients may care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New console output of a domain.
    Console { domid: u32, bytes: Vec<u8> },
    /// A domain is no longer served: its console streams end.
    Released { domid: u32 },
}

/// What a port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortUse {
    Console(u32),
    Control(u32, usize),
    Data(u32, usize),
    DomainDeath,
}

/// A connected vif's data path. The engine goes first: fields drop in order, and it
/// refers to the mapped rings.
#[derive(Debug)]
struct VifConnection {
    engine: Netback,
    memory: GrantCopier,
    port: Port,
    _rings: Mapping,
}

#[derive(Debug)]
struct VifDevice {
    plan: VifPlan,
    tap: Tap,
    connection: Option<VifConnection>,
}

/// A connected vbd's data path (the engine first, as for vifs).
#[derive(Debug)]
struct VbdConnection {
    engine: Blkback,
    memory: GrantCopier,
    port: Port,
    _ring: Mapping,
}

#[derive(Debug)]
struct VbdDevice {
    plan: VbdPlan,
    disk: File,
    connection: Option<VbdConnection>,
}

#[derive(Debug, Default)]
struct SysctlDevice {
    /// What the front end handles (bit N: request N), once it connected.
    supported: Option<u32>,
    request_seq: u32,
}

#[derive(Debug)]
enum Backend {
    Sysctl(SysctlDevice),
    Vif(Box<VifDevice>),
    Vbd(Box<VbdDevice>),
}

#[derive(Debug)]
struct Device {
    devid: u32,
    backend: Backend,
    control: Control,
    /// The guest wrote something invalid to the header (logged once).
    complained: bool,
}

impl Device {
    fn kind(&self) -> NoxsKind {
        match self.backend {
            Backend::Sysctl(_) => NoxsKind::Sysctl,
            Backend::Vif(_) => NoxsKind::Vif,
            Backend::Vbd(_) => NoxsKind::Vbd,
        }
    }

    fn data_port(&self) -> Option<u32> {
        match &self.backend {
            Backend::Sysctl(_) => None,
            Backend::Vif(vif) => vif.connection.as_ref().map(|c| c.port.local()),
            Backend::Vbd(vbd) => vbd.connection.as_ref().map(|c| c.port.local()),
        }
    }

    /// Drop the data path (rings unmapped, port unbound).
    fn disconnect(&mut self) {
        match &mut self.backend {
            Backend::Sysctl(sysctl) => sysctl.supported = None,
            Backend::Vif(vif) => vif.connection = None,
            Backend::Vbd(vbd) => vbd.connection = None,
        }
    }

    fn name(&self, domid: u32) -> String {
        format!("domain {domid} {:?} {}", self.kind(), self.devid).to_lowercase()
    }
}

#[derive(Debug)]
struct Domain {
    name: String,
    console: Console,
    devices: Vec<Device>,
    /// For `NoxsDomain::created_ms`.
    created: std::time::SystemTime,
}

/// A `power` request waiting for the guest.
#[derive(Debug, Clone)]
pub struct PowerWait {
    pub domid: u32,
    action: PowerAction,
    timeout_ms: u32,
    deadline: Instant,
    /// The sequence number sent, once sent.
    sent: Option<u32>,
}

impl PowerWait {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// How xendevd learns of domain deaths.
#[derive(Debug)]
enum DeathWatch {
    /// Held for its binding; its events come as [`PortUse::DomainDeath`].
    Virq {
        _port: Port,
    },
    Xenstore(XsWatch),
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
    console_dir: PathBuf,
    domains: BTreeMap<u32, Domain>,
    ports: HashMap<u32, PortUse>,
    /// Devices whose budget ran out with work left.
    pending: BTreeSet<(u32, usize)>,
    death: DeathWatch,
    next_check: Instant,
    events: Vec<Event>,
    frame: Vec<u8>,
}

/// dom0 as the request checks see it.
struct Dom0;

impl Host for Dom0 {
    fn is_bridge(&self, name: &str) -> bool {
        Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
    }

    fn disk(&self, path: &str) -> Result<u64, String> {
        let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => format!("{path} does not exist"),
            _ => format!("{path}: {err}"),
        })?;
        let kind = meta.file_type();
        if kind.is_file() {
            Ok(meta.len())
        } else if kind.is_block_device() {
            let mut device = File::open(path).map_err(|err| format!("{path}: {err}"))?;
            device
                .seek(SeekFrom::End(0))
                .map_err(|err| format!("{path}: cannot learn its size: {err}"))
        } else {
            Err(format!(
                "{path} is neither a regular file nor a block device"
            ))
        }
    }
}

fn action_request(action: PowerAction) -> noxs::Request {
    match action {
        PowerAction::Poweroff => noxs::Request::Poweroff,
        PowerAction::Reboot => noxs::Request::Reboot,
        PowerAction::Suspend => noxs::Request::Suspend,
        PowerAction::Crash => noxs::Request::Crash,
    }
}

fn action_name(action: PowerAction) -> &'static str {
    match action {
        PowerAction::Poweroff => "poweroff",
        PowerAction::Reboot => "reboot",
        PowerAction::Suspend => "suspend",
        PowerAction::Crash => "crash",
    }
}

/// The names of the requests in a `supported` word.
fn supported_names(supported: u32) -> String {
    let names: Vec<&str> = [
        PowerAction::Poweroff,
        PowerAction::Reboot,
        PowerAction::Suspend,
        PowerAction::Crash,
    ]
    .into_iter()
    .filter(|a| supported & (1 << action_request(*a) as u32) != 0)
    .map(action_name)
    .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl Backends {
    /// Open the Xen devices; learn domain deaths by `VIRQ_DOM_EXC` if we can bind it,
    /// else by Xenstore's `@releaseDomain` if xenstored runs, and by polling always.
    pub fn open(console_dir: PathBuf) -> io::Result<Self> {
        let evtchn = Evtchn::open()?;
        let gnttab = Gnttab::open()?;
        let gntshr = Gntshr::open()?;
        let xc = Xc::open()?;
        let net = NetControl::open().map_err(|err| io::Error::other(err.to_string()))?;
        if let Err(err) = std::fs::create_dir_all(&console_dir) {
            warn!(
                "cannot create {}: {err} (NoXS consoles will fail)",
                console_dir.display()
            );
        }
        let mut ports = HashMap::new();
        let death = match evtchn.bind_virq(VIRQ_DOM_EXC) {
            Ok(port) => {
                info!(
                    "NoXS: domain deaths come as VIRQ_DOM_EXC (port {})",
                    port.local()
                );
                ports.insert(port.local(), PortUse::DomainDeath);
                DeathWatch::Virq { _port: port }
            }
            Err(virq_err) => match XsWatch::open("@releaseDomain") {
                Ok(watch) => {
                    info!(
                        "NoXS: domain deaths come as Xenstore's @releaseDomain and a check \
                         every {} s (VIRQ_DOM_EXC: {virq_err}: xenstored holds it, and fires \
                         @releaseDomain only for domains introduced to it)",
                        CHECK_INTERVAL.as_secs()
                    );
                    DeathWatch::Xenstore(watch)
                }
                Err(xs_err) => {
                    warn!(
                        "NoXS: no VIRQ_DOM_EXC ({virq_err}) and no Xenstore ({xs_err}): \
                         domain deaths are found by polling every {} s",
                        CHECK_INTERVAL.as_secs()
                    );
                    DeathWatch::Polling
                }
            },
        };
        Ok(Self {
            evtchn,
            gnttab,
            gntshr,
            xc,
            net,
            console_dir,
            domains: BTreeMap::new(),
            ports,
            pending: BTreeSet::new(),
            death,
            next_check: Instant::now() + CHECK_INTERVAL,
            events: Vec::new(),
            frame: vec![0; 65536 + 64],
        })
    }

    /// The event-channel fd (poll it for input).
    pub fn evtchn_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.fd()
    }

    /// Xenstore's watch fd, when deaths come that way.
    pub fn watch_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.death {
            DeathWatch::Xenstore(watch) => Some(watch.fd()),
            DeathWatch::Virq { .. } | DeathWatch::Polling => None,
        }
    }

    /// The taps of connected vifs, to poll for frames from the host.
    pub fn taps(&self) -> Vec<((u32, usize), BorrowedFd<'_>)> {
        let mut taps = Vec::new();
        for (&domid, domain) in &self.domains {
            for (index, device) in domain.devices.iter().enumerate() {
                if let Backend::Vif(vif) = &device.backend
                    && vif.connection.is_some()
                {
                    taps.push(((domid, index), vif.tap.as_fd()));
                }
            }
        }
        taps
    }

    /// When the loop must run again without an event: work left over, a domain check.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.pending.is_empty() {
            return Some(Instant::now());
        }
        (!self.domains.is_empty()).then_some(self.next_check)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Where a served domain's console log is.
    pub fn console_log(&self, domid: u32) -> Result<PathBuf, String> {
        self.domains
            .get(&domid)
            .map(|domain| domain.console.log.path().to_owned())
            .ok_or_else(|| format!("domain {domid} is not a NoXS domain xendevd serves"))
    }

    /// Every port that fired: handle it, then unmask it.
    pub fn on_evtchn(&mut self) {
        for _ in 0..4096 {
            let port = match self.evtchn.pending() {
                Ok(Some(port)) => port,
                Ok(None) => return,
                Err(err) => {
                    error!("reading /dev/xen/evtchn: {err}");
                    return;
                }
            };
            match self.ports.get(&port).copied() {
                Some(PortUse::Console(domid)) => self.drain_console(domid),
                Some(PortUse::Control(domid, index)) => self.on_control(domid, index),
                Some(PortUse::Data(domid, index)) => self.serve(domid, index),
                Some(PortUse::DomainDeath) => self.check_domains("VIRQ_DOM_EXC"),
                None => debug!("event on port {port}, which is no longer in use"),
            }
            // A port unbound meanwhile is no error of anyone's.
            let _ = self.evtchn.unmask(port);
        }
    }

    /// Xenstore's watch fired.
    pub fn on_watch(&mut self) {
        if let DeathWatch::Xenstore(watch) = &self.death {
            match watch.drain() {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) => {
                    warn!("Xenstore watch: {err}: polling for domain deaths from now on");
                    self.death = DeathWatch::Polling;
                }
            }
        }
        self.check_domains("@releaseDomain");
    }

    /// Periodic work: left-over ring work, and the domain check when due.
    pub fn tick(&mut self, now: Instant) {
        for (domid, index) in std::mem::take(&mut self.pending) {
            self.serve(domid, index);
        }
        if now >= self.next_check {
            self.check_domains("periodic check");
        }
    }

    fn check_interval(&self) -> Duration {
        match self.death {
            DeathWatch::Virq { .. } => CHECK_INTERVAL_VIRQ,
            DeathWatch::Xenstore(_) | DeathWatch::Polling => CHECK_INTERVAL,
        }
    }

    /// Release every served domain that is dying or gone.
    pub fn check_domains(&mut self, why: &str) {
        self.next_check = Instant::now() + self.check_interval();
        if self.domains.is_empty() {
            return;
        }
        let infos = match self.xc.domains() {
            Ok(infos) => infos,
            Err(err) => {
                error!("listing domains ({why}): {err}");
                return;
            }
        };
        let ended: Vec<(u32, &str)> = self
            .domains
            .keys()
            .filter_map(|&domid| match infos.iter().find(|i| i.domid == domid) {
                None => Some((domid, "gone")),
                Some(info) if info.dying => Some((domid, "dying")),
                Some(_) => None,
            })
            .collect();
        for (domid, state) in ended {
            self.release(domid, &format!("it is {state} ({why})"));
        }
    }

    /// Serve a new domain (built, not yet unpaused). Nothing is left on failure.
    pub fn create(
        &mut self,
        domid: u32,
        name: &str,
        console_port: u32,
        devices: &[NoxsDevice],
    ) -> Result<NoxsDomain, String> {
        let plans = request::check(domid, name, console_port, devices, &Dom0)?;
        if let Some(domain) = self.domains.get(&domid) {
            return Err(format!(
                "domain {domid} is served already (as {}): release it first",
                domain.name
            ));
        }
        match self.xc.domains() {
            Ok(infos) => match infos.iter().find(|i| i.domid == domid) {
                None => return Err(format!("domain {domid} does not exist")),
                Some(info) if info.dying => return Err(format!("domain {domid} is dying")),
                Some(_) => {}
            },
            Err(err) => return Err(format!("cannot list domains: {err}")),
        }
        let started = Instant::now();
        let log_path = self.console_dir.join(format!("{name}-{domid}.log"));
        let log = ConsoleLog::create(&log_path, LOG_LIMIT).map_err(|err| {
            format!(
                "cannot create the console log {}: {err}",
                log_path.display()
            )
        })?;
        let made = Console::connect(&self.gnttab, &self.evtchn, domid, console_port, log).and_then(
            |console| {
                let mut domain = Domain {
                    name: name.to_owned(),
                    console,
                    devices: Vec::new(),
                    created: std::time::SystemTime::now(),
                };
                for plan in &plans {
                    domain.devices.push(self.make_device(domid, plan)?);
                }
                Ok(domain)
            },
        );
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
                .map(|d| match &d.backend {
                    Backend::Sysctl(_) => "sysctl".to_owned(),
                    Backend::Vif(vif) =>
                        format!("vif {} ({} on {})", d.devid, vif.plan.tap, vif.plan.bridge),
                    Backend::Vbd(vbd) => format!(
                        "vbd {} ({}{})",
                        d.devid,
                        vbd.plan.target,
                        if vbd.plan.readonly { ", read-only" } else { "" }
                    ),
                })
                .collect::<Vec<_>>()
                .join(", "),
            started.elapsed().as_secs_f64() * 1e3,
            log_path.display()
        );
        self.domains.insert(domid, domain);
        Ok(answer)
    }

    fn make_device(&mut self, domid: u32, plan: &DevicePlan) -> Result<Device, String> {
        // What each kind needs before its control page: the back-end area the page
        // carries, and the back end itself (a vif's tap is on its bridge by then).
        // Room for the largest area (24 bytes); the rest is zero, as the page was.
        let mut area = [0u8; 32];
        let (kind, devid, what, backend) = match plan {
            DevicePlan::Sysctl => {
                SysctlBackend::default().encode(&mut area).expect("fits");
                let backend = Backend::Sysctl(SysctlDevice::default());
                (Kind::Sysctl, 0, "sysctl".to_owned(), backend)
            }
            DevicePlan::Vif(plan) => {
                let what = format!("vif {}", plan.devid);
                if crate::bridge::exists(&plan.tap) {
                    return Err(format!(
                        "{what}: a network device named {} exists already (a vif of a domain gone \
                         wrong, or someone else's)",
                        plan.tap
                    ));
                }
                let tap = Tap::create(&plan.tap)
                    .map_err(|err| format!("{what}: cannot create tap {}: {err}", plan.tap))?;
                self.net
                    .add_port(&plan.bridge, &plan.tap)
                    .and_then(|_| self.net.set_up(&plan.tap))
                    .map_err(|err| format!("{what}: {err}"))?;
                let (ipv4, prefix_len) = plan
                    .ipv4
                    .map_or(([0; 4], 0), |(ip, prefix)| (ip.octets(), prefix));
                VifBackend {
                    mac: plan.mac,
                    mtu: MTU,
                    features: VifBackendFeatures::RX_COPY,
                    ipv4,
                    prefix_len,
                    gateway: plan.gateway.map_or([0; 4], |g| g.octets()),
                }
                .encode(&mut area)
                .expect("fits");
                let backend = Backend::Vif(Box::new(VifDevice {
                    plan: plan.clone(),
                    tap,
                    connection: None,
                }));
                (Kind::Vif, plan.devid, what, backend)
            }
            DevicePlan::Vbd(plan) => {
                let what = format!("vbd {}", plan.devid);
                let disk = OpenOptions::new()
                    .read(true)
                    .write(!plan.readonly)
                    .custom_flags(nix::libc::O_CLOEXEC)
                    .open(&plan.target)
                    .map_err(|err| {
                        let mode = if plan.readonly {
                            "read-only"
                        } else {
                            "read-write"
                        };
                        format!("{what}: cannot open {} {mode}: {err}", plan.target)
                    })?;
                VbdBackend {
                    sectors: plan.sectors,
                    sector_size: 512,
                    info: if plan.readonly {
                        VbdInfo::READ_ONLY
                    } else {
                        VbdInfo::empty()
                    },
                    features: VbdFeatures::FLUSH_CACHE | VbdFeatures::INDIRECT,
                    max_indirect_segments: MAX_INDIRECT_SEGMENTS,
                }
                .encode(&mut area)
                .expect("fits");
                let backend = Backend::Vbd(Box::new(VbdDevice {
                    plan: plan.clone(),
                    disk,
                    connection: None,
                }));
                (Kind::Vbd, plan.devid, what, backend)
            }
        };
        let control =
            Control::create(&self.gntshr, &self.evtchn, domid, kind, &area).map_err(|err| {
                format!("{what}: cannot grant its control page or reserve its event channel: {err}")
            })?;
        Ok(Device {
            devid,
            control,
            backend,
            complained: false,
        })
    }

    /// Stop serving `domid`: close its back ends, unmap all its grants, unbind its ports,
    /// unshare its control pages, remove its taps. Returns whether it was served.
    pub fn release(&mut self, domid: u32, why: &str) -> bool {
        if !self.domains.contains_key(&domid) {
            return false;
        }
        // The console's last words first.
        self.drain_console(domid);
        let Some(mut domain) = self.domains.remove(&domid) else {
            return false;
        };
        for device in &mut domain.devices {
            device.disconnect();
            device.control.set_state(XenbusState::Closing);
        }
        self.ports.retain(|_, used| match *used {
            PortUse::Console(d) | PortUse::Control(d, _) | PortUse::Data(d, _) => d != domid,
            PortUse::DomainDeath => true,
        });
        self.pending.retain(|(d, _)| *d != domid);
        let name = domain.name.clone();
        let devices = domain.devices.len();
        drop(domain);
        info!("NoXS domain {domid} ({name}) released: {why}; {devices} device(s) closed");
        self.events.push(Event::Released { domid });
        true
    }

    /// Release everything (the daemon stops).
    pub fn release_all(&mut self, why: &str) {
        for domid in self.domains.keys().copied().collect::<Vec<_>>() {
            self.release(domid, why);
        }
    }

    /// Every served domain, with its entries and state words.
    pub fn domains(&self) -> Vec<NoxsDomain> {
        self.domains
            .iter()
            .map(|(&domid, domain)| describe(domid, domain))
            .collect()
    }

    fn drain_console(&mut self, domid: u32) {
        let Some(domain) = self.domains.get_mut(&domid) else {
            return;
        };
        match domain.console.drain() {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => self.events.push(Event::Console { domid, bytes }),
            Err(err) => debug!("domain {domid} console: {err}"),
        }
    }

    /// The control page of a device changed (or the guest acknowledged something).
    fn on_control(&mut self, domid: u32, index: usize) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        let frontend = match device.control.frontend_state() {
            Ok(state) => state,
            Err(err) => {
                if !device.complained {
                    warn!(
                        "{}: {err} (ignored until it makes sense)",
                        device.name(domid)
                    );
                    device.complained = true;
                }
                return;
            }
        };
        let backend = device.control.state();
        match control::step(backend, frontend) {
            Step::Nothing => {}
            Step::Connect => match self.connect(domid, index) {
                Ok(()) => {
                    let device = &mut self.domains.get_mut(&domid).expect("served").devices[index];
                    device.control.set_state(XenbusState::Connected);
                    info!("{} connected", device.name(domid));
                    // Requests queued before we were ready.
                    self.serve(domid, index);
                }
                Err(why) => {
                    let device = &mut self.domains.get_mut(&domid).expect("served").devices[index];
                    warn!("{}: {why}: closing it", device.name(domid));
                    device.disconnect();
                    device.control.set_state(XenbusState::Closing);
                }
            },
            Step::Disconnect => {
                if let Some(port) = device.data_port() {
                    self.ports.remove(&port);
                }
                self.pending.remove(&(domid, index));
                device.disconnect();
                device.control.set_state(XenbusState::Closed);
                info!(
                    "{} disconnected (front end {frontend:?})",
                    device.name(domid)
                );
            }
            Step::Reopen => {
                device.control.set_state(XenbusState::InitWait);
                debug!("{} offered again", device.name(domid));
            }
        }
    }

    /// Copy the front end's area, validate it, map its rings, bind its data port.
    fn connect(&mut self, domid: u32, index: usize) -> Result<(), String> {
        let domain = self.domains.get_mut(&domid).expect("served");
        let device = &mut domain.devices[index];
        let area = device.control.frontend_area();
        let guest = u16::try_from(domid).expect("checked at create");
        match &mut device.backend {
            Backend::Sysctl(sysctl) => {
                let frontend = SysctlFrontend::decode(&area).map_err(|err| err.to_string())?;
                sysctl.supported = Some(frontend.supported);
            }
            Backend::Vif(vif) => {
                let frontend = VifFrontend::decode(&area).map_err(|err| err.to_string())?;
                if !frontend
                    .features
                    .contains(VifFrontendFeatures::REQUEST_RX_COPY)
                {
                    return Err("the front end does not request receive-by-copy (the only way this back end receives)".into());
                }
                let rings = self
                    .gnttab
                    .map(domid, &[frontend.tx_ring_ref, frontend.rx_ring_ref], true)
                    .map_err(|err| {
                        format!(
                            "cannot map its rings (grants {} and {}): {err}",
                            frontend.tx_ring_ref, frontend.rx_ring_ref
                        )
                    })?;
                let port = self
                    .evtchn
                    .bind_interdomain(domid, frontend.data_port)
                    .map_err(|err| {
                        format!("cannot bind its data port {}: {err}", frontend.data_port)
                    })?;
                // SAFETY: the mapping holds two pages (tx, rx), page aligned, and lives in
                // the same connection as the engine, which drops first.
                let engine =
                    unsafe { Netback::new(rings.as_ptr(), rings.as_ptr().add(noxs::PAGE_SIZE)) };
                self.ports.insert(port.local(), PortUse::Data(domid, index));
                vif.connection = Some(VifConnection {
                    engine,
                    memory: GrantCopier::new(Rc::clone(&self.gnttab), guest),
                    port,
                    _rings: rings,
                });
            }
            Backend::Vbd(vbd) => {
                let frontend = VbdFrontend::decode(&area).map_err(|err| err.to_string())?;
                let ring = self
                    .gnttab
                    .map(domid, &[frontend.ring_ref], true)
                    .map_err(|err| {
                        format!("cannot map its ring (grant {}): {err}", frontend.ring_ref)
                    })?;
                let port = self
                    .evtchn
                    .bind_interdomain(domid, frontend.data_port)
                    .map_err(|err| {
                        format!("cannot bind its data port {}: {err}", frontend.data_port)
                    })?;
                let geometry = Geometry {
                    sectors: vbd.plan.sectors,
                    readonly: vbd.plan.readonly,
                    max_indirect_segments: MAX_INDIRECT_SEGMENTS,
                };
                // SAFETY: the mapping is one page, page aligned, living in the same
                // connection as the engine, which drops first.
                let engine = unsafe { Blkback::new(ring.as_ptr(), geometry) };
                self.ports.insert(port.local(), PortUse::Data(domid, index));
                vbd.connection = Some(VbdConnection {
                    engine,
                    memory: GrantCopier::new(Rc::clone(&self.gnttab), guest),
                    port,
                    _ring: ring,
                });
            }
        }
        Ok(())
    }

    /// Serve a device's rings (a data event, or work left from the last turn).
    fn serve(&mut self, domid: u32, index: usize) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        // (whether to notify the guest, whether work is left), or why the ring broke.
        let (served, port) = match &mut device.backend {
            Backend::Sysctl(_) => return,
            Backend::Vbd(vbd) => {
                let Some(connection) = &mut vbd.connection else {
                    return;
                };
                let served = connection
                    .engine
                    .serve(&mut connection.memory, &mut vbd.disk, BUDGET)
                    .map(|progress| (progress.notify, progress.more))
                    .map_err(|err| err.to_string());
                (served, &connection.port)
            }
            Backend::Vif(vif) => {
                let Some(connection) = &mut vif.connection else {
                    return;
                };
                let tap = &mut vif.tap;
                let mut send = |frame: &[u8]| {
                    if let Err(err) = tap.write_frame(frame) {
                        debug!("{}: {err}", tap.name());
                    }
                };
                let served = connection
                    .engine
                    .transmit(&mut connection.memory, &mut send, BUDGET)
                    .map(|progress| (progress.notify, progress.more))
                    .map_err(|err| err.to_string());
                (served, &connection.port)
            }
        };
        let broken = match served {
            Ok((notify, more)) => {
                if notify {
                    let _ = port.notify();
                }
                if more {
                    self.pending.insert((domid, index));
                }
                None
            }
            Err(why) => Some(why),
        };
        if let Some(why) = broken {
            self.break_device(domid, index, &why);
        }
    }

    /// A guest broke a device's protocol: disconnect that device only.
    fn break_device(&mut self, domid: u32, index: usize, why: &str) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        if let Some(port) = device.data_port() {
            self.ports.remove(&port);
        }
        self.pending.remove(&(domid, index));
        device.disconnect();
        device.control.set_state(XenbusState::Closing);
        error!(
            "{}: protocol error: {why}: disconnected",
            device.name(domid)
        );
    }

    /// Frames from a vif's tap for the guest.
    pub fn on_tap(&mut self, domid: u32, index: usize) {
        let Some(device) = device_mut(&mut self.domains, domid, index) else {
            return;
        };
        let Backend::Vif(vif) = &mut device.backend else {
            return;
        };
        let Some(connection) = &mut vif.connection else {
            return;
        };
        let mut broken = None;
        for _ in 0..BUDGET {
            let len = match vif.tap.read_frame(&mut self.frame) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(err) => {
                    warn!("{}: reading: {err}", vif.tap.name());
                    break;
                }
            };
            match connection
                .engine
                .receive(&mut connection.memory, &self.frame[..len])
            {
                Ok(Delivered::Yes | Delivered::Dropped | Delivered::NoBuffer) => {}
                Err(err) => {
                    broken = Some(err.to_string());
                    break;
                }
            }
        }
        if broken.is_none() && connection.engine.push_rx() {
            let _ = connection.port.notify();
        }
        if let Some(why) = broken {
            self.break_device(domid, index, &why);
        }
    }

    /// Start a power request: checked now, sent once the guest's sysctl is connected.
    pub fn power(
        &mut self,
        domid: u32,
        action: PowerAction,
        timeout_ms: u32,
    ) -> Result<PowerWait, String> {
        let domain = self
            .domains
            .get(&domid)
            .ok_or_else(|| format!("domain {domid} is not a NoXS domain xendevd serves"))?;
        if !domain
            .devices
            .iter()
            .any(|d| matches!(d.backend, Backend::Sysctl(_)))
        {
            return Err(format!(
                "domain {domid} ({}) has no sysctl device: it cannot be asked to {}",
                domain.name,
                action_name(action)
            ));
        }
        // A guest that has shut down acknowledges nothing: say so now, not at the timeout.
        if let Ok(infos) = self.xc.domains()
            && let Some(info) = infos.iter().find(|i| i.domid == domid)
            && (info.shutdown || info.dying)
        {
            return Err(format!(
                "domain {domid} ({}) has shut down already: it cannot be asked to {}",
                domain.name,
                action_name(action)
            ));
        }
        Ok(PowerWait {
            domid,
            action,
            timeout_ms,
            deadline: Instant::now() + Duration::from_millis(timeout_ms.into()),
            sent: None,
        })
    }

    /// Move a power request on: `Some` once it is answered (acknowledged or failed).
    pub fn power_poll(&mut self, wait: &mut PowerWait, now: Instant) -> Option<Result<(), String>> {
        let action = action_name(wait.action);
        let Some(domain) = self.domains.get_mut(&wait.domid) else {
            return Some(Err(format!(
                "domain {} is gone (released) before it acknowledged the {action} request",
                wait.domid
            )));
        };
        let name = domain.name.clone();
        let device = domain
            .devices
            .iter_mut()
            .find(|d| matches!(d.backend, Backend::Sysctl(_)))
            .expect("checked in power()");
        let Backend::Sysctl(sysctl) = &mut device.backend else {
            unreachable!("found as sysctl")
        };
        match wait.sent {
            None => match sysctl.supported {
                Some(supported) => {
                    let bit = 1 << action_request(wait.action) as u32;
                    if supported & bit == 0 {
                        return Some(Err(format!(
                            "domain {} ({name}) does not handle {action} requests (its power \
                             control handles: {})",
                            wait.domid,
                            supported_names(supported)
                        )));
                    }
                    sysctl.request_seq = sysctl.request_seq.wrapping_add(1);
                    let mut area = [0u8; SysctlBackend::LEN];
                    SysctlBackend {
                        request: Some(action_request(wait.action)),
                        request_seq: sysctl.request_seq,
                    }
                    .encode(&mut area)
                    .expect("fits");
                    device.control.write_area(&area);
                    device.control.notify();
                    wait.sent = Some(sysctl.request_seq);
                    info!(
                        "domain {} ({name}): {action} requested (#{})",
                        wait.domid, sysctl.request_seq
                    );
                    None
                }
                None if now >= wait.deadline => Some(Err(format!(
                    "domain {} ({name}): its power control (sysctl) did not connect within {} ms \
                     (front end state {})",
                    wait.domid,
                    wait.timeout_ms,
                    match device.control.frontend_state() {
                        Ok(state) => format!("{state:?}"),
                        Err(err) => err.to_string(),
                    }
                ))),
                None => None,
            },
            Some(seq) => {
                let acked = SysctlFrontend::decode(&device.control.frontend_area())
                    .is_ok_and(|frontend| (frontend.ack_seq.wrapping_sub(seq) as i32) >= 0);
                if acked {
                    info!(
                        "domain {} ({name}) acknowledged {action} (#{seq})",
                        wait.domid
                    );
                    Some(Ok(()))
                } else if now >= wait.deadline {
                    Some(Err(format!(
                        "domain {} ({name}) did not acknowledge the {action} request within {} ms",
                        wait.domid, wait.timeout_ms
                    )))
                } else {
                    None
                }
            }
        }
    }
}

/// A served domain as the API shows it.
/// Device `index` of served domain `domid`. (A function of the map, not of
/// [`Backends`], so the caller may still use the other fields.)
fn device_mut(
    domains: &mut BTreeMap<u32, Domain>,
    domid: u32,
    index: usize,
) -> Option<&mut Device> {
    domains.get_mut(&domid)?.devices.get_mut(index)
}

fn describe(domid: u32, domain: &Domain) -> NoxsDomain {
    NoxsDomain {
        domid,
        name: domain.name.clone(),
        entries: domain
            .devices
            .iter()
            .map(|device| NoxsEntry {
                kind: device.kind(),
                devid: device.devid,
                backend: 0,
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
        created_ms: domain
            .created
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
    }
}
