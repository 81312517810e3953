//! The daemon: one loop over an epoll set ([`Poller`]) holding the signal fd, the
//! kernel's uevent socket, the API's listening socket, the API connections and the NoXS
//! back ends' descriptors, each registered once and changed only when what it waits
//! for changes, so a turn costs what happened, however many guests are served. Each
//! request goes to the service that answers it, each in its module: [`loops`] (loop
//! devices for file-backed disks), [`hotplug`] (vif hotplug of Xenstore guests, which
//! the uevents feed) and [`noxs`] (the NoXS back ends). Nothing in the loop blocks for
//! long: loop ioctls and bridge ioctls are quick local calls, connections are
//! non-blocking with their own buffers ([`Session`]), disk I/O runs in a thread per
//! NoXS vbd, and Xenstore round trips, which wait as long as xenstored does, in the vif
//! hotplug thread.

mod hotplug;
mod loops;
mod noxs;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use log::{debug, error, info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::api::{Request, Response, State};
use crate::disks::{DiskError, SharedBook};
use crate::limits::{self, Making};
use crate::loopdev::Method;
use crate::netlink::{self, Received, UeventSocket};
use crate::noxs::{Event, PowerWait};
use crate::poller::{Interest, Poller, Ready, Token};
use crate::session::{Limits, ProtocolError, Session};
use crate::vif;
use hotplug::HotplugService;
use loops::{LoopService, ReleaseError};
use noxs::{NoxsDispatch, NoxsRefusal};

/// More connections than this at once are turned away with an error.
const MAX_CONNECTIONS: usize = 256;

/// How much one connection may send per loop turn (the others get their turn first).
const READ_CHUNK: usize = 16 * 1024;

/// How long accepting stops when xendevd has no descriptor left for a new client (the
/// listening socket would otherwise wake the loop at once, again and again).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// Where the loop devices' records are kept across restarts.
    pub state: PathBuf,
    pub limits: Limits,
    pub loop_method: Method,
    /// Where NoXS guests' console logs go.
    pub console_dir: PathBuf,
    /// Where the NoXS domains served are recorded for the next xendevd.
    pub noxs_state: PathBuf,
}

/// The listening socket, removed on drop if the file is still ours.
#[derive(Debug)]
struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file we made.
    identity: (u64, u64),
}

impl Listener {
    /// Bind `path` (mode 0600: loop devices are root's business). A stale socket file
    /// is replaced; a live one (another xendevd) is an error.
    fn bind(path: &Path) -> Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another xendevd is listening on {} (stop it first)",
                    path.display()
                ),
                Err(_) => {
                    warn!("removing the stale socket {}", path.display());
                    fs::remove_file(path)
                        .with_context(|| format!("removing the stale socket {}", path.display()))?;
                }
            },
            Ok(_) => bail!(
                "{} exists and is not a socket: not replacing it",
                path.display()
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("looking at {}", path.display())),
        }
        // No window in which the socket is open to others: umask first.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        let meta = fs::metadata(path)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|meta| (meta.dev(), meta.ino()) == self.identity)
            .unwrap_or(false);
        if ours {
            match fs::remove_file(&self.path) {
                Ok(()) => info!("removed {}", self.path.display()),
                Err(err) => warn!("cannot remove {}: {err}", self.path.display()),
            }
        }
    }
}

/// One API connection: its socket, its protocol state, and what it waits for.
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    session: Session,
    /// Requests read but not yet answered: they wait behind a power request.
    queued: VecDeque<Result<Request, ProtocolError>>,
    /// A power request waiting for its guest.
    waiting: Option<PowerWait>,
    /// The domain whose console this connection follows.
    following: Option<u32>,
    /// What it sends goes to the followed domain's console (`console` with `input`).
    input: bool,
    /// What its socket is in the epoll set for (`None`: not in it yet). A connection
    /// that wants nothing stays in the set: epoll still reports its hang-up, so a
    /// client that vanishes while it waits (on its guest, or for console output) is
    /// noticed and dropped.
    registered: Option<Interest>,
}

impl Connection {
    fn new(stream: UnixStream, session: Session) -> Self {
        Self {
            stream,
            session,
            queued: VecDeque::new(),
            waiting: None,
            following: None,
            input: false,
            registered: None,
        }
    }

    /// What the socket should wake the loop for: input while requests are taken (not
    /// while one waits on its guest, nor while the guest has no room for the input it
    /// sends), room for output while some is owed.
    fn interest(&self, noxs: &NoxsDispatch) -> Interest {
        Interest {
            read: self.session.reading() && self.waiting.is_none() && !self.input_blocked(noxs),
            write: !self.session.pending_output().is_empty(),
        }
    }

    /// How much of its input may be read now: as much as its guest's console takes.
    fn input_room(&self, noxs: &NoxsDispatch) -> Option<usize> {
        if !self.input {
            return None;
        }
        self.following
            .and_then(|domid| noxs.console_input_room(domid))
    }

    /// It sends input that its guest has no room for: its socket is not read (what it
    /// sends waits in the socket, and then in the client) until the guest takes some.
    fn input_blocked(&self, noxs: &NoxsDispatch) -> bool {
        self.input_room(noxs) == Some(0)
    }
}

/// Why a request is answered with an error (its text is the answer).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Noxs(#[from] NoxsRefusal),
    #[error("cannot read the console log {}: {source}", path.display())]
    ConsoleLog { path: PathBuf, source: io::Error },
    #[error(
        "console input needs \"follow\": true (a console that is not followed ends once \
         its log is sent)"
    )]
    InputUnfollowed,
    #[error("xendevd serves {MAX_CONNECTIONS} clients at once: try again later")]
    Busy,
}

/// What one epoll wait found, sorted by who handles it.
#[derive(Debug, Default)]
struct Turn {
    signal: bool,
    uevents: bool,
    listen: bool,
    evtchn: bool,
    watch: bool,
    workers: bool,
    /// `(domid, device index)` of each tap with frames.
    taps: Vec<(u32, u32)>,
    /// Connections with input (or an end to read), and whether they hung up.
    connections: Vec<(u64, bool)>,
}

impl Turn {
    fn sort(ready: &[Ready]) -> Self {
        let mut turn = Self::default();
        for ready in ready {
            match ready.token {
                Token::Signal => turn.signal |= ready.readable,
                Token::Uevent => turn.uevents |= ready.input(),
                Token::Listen => turn.listen |= ready.readable,
                Token::Evtchn => turn.evtchn |= ready.readable,
                Token::Watch => turn.watch |= ready.readable,
                Token::Workers => turn.workers |= ready.readable,
                Token::Tap { domid, index } if ready.input() => turn.taps.push((domid, index)),
                Token::Connection(id) if ready.input() => {
                    turn.connections.push((id, ready.hangup));
                }
                Token::Tap { .. } | Token::Connection(_) => {}
            }
        }
        turn
    }
}

/// How a request is answered.
#[derive(Debug)]
enum Answer {
    Now(Result<Response, Refusal>),
    /// When the guest acknowledges (or not).
    Power(PowerWait),
    /// `streaming`, the log so far, then (with `follow`) the domain's new output; with
    /// `input`, what the client sends goes to the domain's console.
    Console {
        domid: u32,
        log: PathBuf,
        follow: bool,
        input: bool,
    },
}

/// The services that answer requests. The loop devices and the NoXS vbds book their
/// images in one book, so that an image has one writer or only readers whichever way
/// each came (`disks.rs`).
#[derive(Debug)]
struct Services {
    loops: LoopService,
    hotplug: HotplugService,
    noxs: NoxsDispatch,
}

impl Services {
    fn new(loop_method: Method, state_path: Option<PathBuf>) -> Self {
        let book = SharedBook::default();
        Self {
            loops: LoopService::new(Rc::clone(&book), loop_method, state_path),
            hotplug: HotplugService::default(),
            noxs: NoxsDispatch::new(book),
        }
    }

    /// At start (after [`Services::start`]): take back the loop devices a previous
    /// xendevd recorded, then detach those of domains that ended meanwhile.
    fn restore(&mut self) {
        self.loops.restore_state();
        self.noxs.take_back_all();
        if self.noxs.check_domains("at start") {
            self.release_ended();
        } else if !self.loops.list().is_empty() {
            warn!(
                "cannot list Xen's domains (no NoXS back ends): loop devices of domains \
                 destroyed behind chaos's back stay until release_domain"
            );
        }
    }

    /// The services' periodic work, once a turn: the NoXS back ends' (left-over ring
    /// work, the check for ended domains when due), then the loop devices of domains
    /// that check found ended.
    fn tick(&mut self, now: Instant) {
        self.noxs.tick(now);
        self.release_ended();
    }

    /// Xenstore's `@releaseDomain` watch fired: a domain ended.
    fn on_watch(&mut self) {
        self.noxs.on_watch();
        self.release_ended();
    }

    /// Detach the loop devices of the domains the NoXS back ends' check found ended (a
    /// domain destroyed by `xl destroy`, or by chaos killed half-way, never asks for
    /// `release_domain`).
    fn release_ended(&mut self) {
        for (domid, why) in self.noxs.take_ended() {
            info!("domain {domid} has loop devices and {why}: detaching them");
            // A partial failure said so itself, device by device.
            let _ = self.loops.release(domid);
        }
    }

    /// Open what the services need beyond the daemon's socket: Xenstore (when
    /// xenstored runs) and the Xen devices of the NoXS back ends. Either may be
    /// missing; the log says which mode xendevd runs in.
    fn start(&mut self, console_dir: &Path, noxs_state: &Path, poller: Rc<Poller>) {
        self.hotplug.start();
        self.noxs.start(console_dir, noxs_state, poller);
    }

    fn handle(&mut self, request: Request) -> Answer {
        let answer = match request {
            Request::AttachDisk {
                path,
                readonly,
                domid,
            } => self
                .loops
                .attach(&path, readonly, domid, self.noxs.domain_state(domid))
                .map(Response::Disk)
                .map_err(Refusal::from),
            Request::DetachDisk { device } => self
                .loops
                .detach(&device)
                .map(|()| Response::Done)
                .map_err(Refusal::from),
            Request::ReleaseDomain { domid } => {
                self.noxs.release(domid);
                self.loops
                    .release(domid)
                    .map(|()| Response::Done)
                    .map_err(Refusal::from)
            }
            Request::Query => Ok(Response::State(State {
                disks: self.loops.list(),
                vifs: self.hotplug.list(),
                domains: self.noxs.domains(),
            })),
            Request::Domain { domid } => Ok(Response::Domains(
                self.noxs.domain(domid).into_iter().collect(),
            )),
            Request::DomainsNamed { name } => Ok(Response::Domains(self.noxs.named(&name))),
            Request::ListDomains => Ok(Response::Listed(self.noxs.summaries())),
            Request::NoxsCreate {
                domid,
                name,
                console_port,
                devices,
            } => self
                .noxs
                .create(domid, &name, console_port, &devices)
                .map(Response::Noxs)
                .map_err(Refusal::from),
            Request::NoxsShell {
                domid,
                name,
                devices,
            } => self
                .noxs
                .shell(domid, &name, &devices)
                .map(Response::Noxs)
                .map_err(Refusal::from),
            Request::NoxsFill {
                domid,
                name,
                console_port,
                devices,
            } => self
                .noxs
                .fill(domid, &name, console_port, &devices)
                .map(Response::Noxs)
                .map_err(Refusal::from),
            Request::NoxsReoffer { domid } => match self.noxs.reoffer(domid) {
                Ok(_) => Ok(Response::Done),
                Err(NoxsRefusal::Noxs(err @ crate::noxs::Error::NotGrantedYet { .. })) => {
                    Ok(Response::NotYet(err.to_string()))
                }
                Err(err) => Err(Refusal::from(err)),
            },
            Request::NoxsRename { domid, name } => self
                .noxs
                .rename(domid, &name)
                .map(|()| Response::Done)
                .map_err(Refusal::from),
            Request::Power {
                domid,
                action,
                timeout_ms,
            } => {
                return match self.noxs.power(domid, action, timeout_ms) {
                    Ok(wait) => Answer::Power(wait),
                    Err(err) => Answer::Now(Err(err.into())),
                };
            }
            Request::Console {
                domid,
                follow,
                input,
            } => {
                if input && !follow {
                    return Answer::Now(Err(Refusal::InputUnfollowed));
                }
                return match self.noxs.console_log(domid) {
                    Ok(log) => Answer::Console {
                        domid,
                        log,
                        follow,
                        input,
                    },
                    Err(err) => Answer::Now(Err(err.into())),
                };
            }
        };
        // (A failed release said so itself, device by device.)
        if let Err(err @ Refusal::Disk(_)) = &answer {
            warn!("request failed: {err}");
        }
        Answer::Now(answer)
    }
}

/// Everything set up before the loop runs: made first so a daemonizing xendevd can
/// report a failure on its terminal and exit non-zero.
#[derive(Debug)]
pub struct Daemon {
    listener: Listener,
    uevents: UeventSocket,
    signals: SignalFd,
    /// Every descriptor the loop waits on; shared with the NoXS back ends (taps).
    poller: Rc<Poller>,
    /// By number, the order they came in.
    connections: BTreeMap<u64, Connection>,
    next_connection: u64,
    /// Accepting stopped until then: no descriptor was left for a client.
    accept_paused_until: Option<Instant>,
    /// Clients wait for a descriptor (said once, until one is accepted again).
    short_of_files: bool,
    services: Services,
    limits: Limits,
    console_dir: PathBuf,
    noxs_state: PathBuf,
}

impl Daemon {
    /// Block SIGTERM, SIGINT and SIGHUP (they arrive on a signal fd), bind the socket,
    /// open the uevent socket, put the three in a new epoll set.
    pub fn setup(options: &Options) -> Result<Self> {
        let mask = Self::signals_mask();
        mask.thread_block()
            .context("blocking SIGTERM, SIGINT and SIGHUP")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("opening a signalfd")?;
        let uevents = UeventSocket::open().context(
            "opening the kernel's uevent socket (NETLINK_KOBJECT_UEVENT): xendevd needs root",
        )?;
        let listener = Listener::bind(&options.socket)?;
        let poller = Poller::new().context("creating an epoll set")?;
        for (fd, token) in [
            (signals.as_fd(), Token::Signal),
            (uevents.as_fd(), Token::Uevent),
            (listener.listener.as_fd(), Token::Listen),
        ] {
            poller
                .add(fd, token, Interest::READ)
                .with_context(|| format!("adding {token:?} to the epoll set"))?;
        }
        Ok(Self {
            listener,
            uevents,
            signals,
            poller: Rc::new(poller),
            connections: BTreeMap::new(),
            next_connection: 0,
            accept_paused_until: None,
            short_of_files: false,
            services: Services::new(options.loop_method, Some(options.state.clone())),
            limits: options.limits,
            console_dir: options.console_dir.clone(),
            noxs_state: options.noxs_state.clone(),
        })
    }

    /// The signals that stop the daemon, and SIGHUP, which does not: a daemon's
    /// conventional "reload", for which xendevd has nothing (its log is stderr or
    /// syslog), so that a hangup or a reload by habit costs no guest its back ends.
    fn signals_mask() -> SigSet {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGHUP);
        mask
    }

    /// Read the pending signals: whether one of them stops the daemon.
    fn take_signals(&self) -> bool {
        let mut stop = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                Ok(Signal::SIGHUP) => info!("SIGHUP: nothing to reload, going on"),
                other => {
                    info!(
                        "{}: shutting down",
                        other.map_or("a signal", Signal::as_str)
                    );
                    stop = true;
                }
            }
        }
        stop
    }

    /// Run until SIGTERM or SIGINT.
    pub fn run(mut self) -> Result<()> {
        // A signalfd in an epoll set wakes it for the process that added it (its
        // signal queue's wait list): after daemonize's forks, that one has exited.
        // This process adds its own.
        self.poller
            .delete(self.signals.as_fd())
            .context("taking the signal fd out of the epoll set")?;
        self.signals = SignalFd::with_flags(
            &Self::signals_mask(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .context("opening a signalfd")?;
        self.poller
            .add(self.signals.as_fd(), Token::Signal, Interest::READ)
            .context("adding the signal fd to the epoll set")?;
        info!(
            "xendevd {}: API on {}, kernel uevents for vif hotplug (toolstack = {:?})",
            env!("CARGO_PKG_VERSION"),
            self.listener.path.display(),
            vif::TOOLSTACK_MARKER
        );
        // Opened here, after daemonizing: libxenstore may start a thread.
        self.services
            .start(&self.console_dir, &self.noxs_state, Rc::clone(&self.poller));
        self.services.restore();
        let mut datagram = vec![0u8; netlink::DATAGRAM_MAX];
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            for connection in self.connections.values_mut() {
                if connection.waiting.is_none() {
                    connection.session.check_time(now);
                }
            }
            self.poll_power(now);
            self.flush_and_reap(now);
            self.resume_accepting(now);
            self.update_interests();
            let timeout = self
                .connections
                .values()
                .filter_map(|connection| {
                    let session = connection.session.deadline();
                    let power = connection.waiting.as_ref().map(PowerWait::deadline);
                    session.into_iter().chain(power).min()
                })
                .chain(self.services.noxs.deadline())
                .chain(self.accept_paused_until)
                .min()
                .map(|deadline| deadline.saturating_duration_since(now) + Duration::from_millis(1));
            let ready = self.poller.wait(timeout).context("epoll_wait")?;
            let turn = Turn::sort(&ready);
            if turn.signal && self.take_signals() {
                break;
            }
            if turn.uevents {
                self.drain_uevents(&mut datagram);
            }
            if turn.evtchn {
                self.services.noxs.on_evtchn();
            }
            if turn.watch {
                self.services.on_watch();
            }
            if turn.workers {
                self.services.noxs.on_workers();
            }
            for &(domid, index) in &turn.taps {
                self.services.noxs.on_tap(domid, index);
            }
            self.services.tick(Instant::now());
            // Output that came before any request of this turn was answered.
            self.dispatch_events();
            if turn.listen {
                self.accept();
            }
            let now = Instant::now();
            for &(id, hangup) in &turn.connections {
                self.read_connection(id, hangup, &mut chunk, now);
            }
            self.dispatch_events();
        }
        self.shutdown();
        Ok(())
    }

    /// Console output to followers; released domains end their streams.
    fn dispatch_events(&mut self) {
        let now = Instant::now();
        for event in self.services.noxs.take_events() {
            match event {
                Event::Console { domid, bytes } => {
                    for connection in self.connections.values_mut() {
                        if connection.following == Some(domid) {
                            connection.session.send_raw(&bytes, now);
                        }
                    }
                }
                Event::Released { domid } => {
                    for connection in self.connections.values_mut() {
                        if connection.following == Some(domid) {
                            connection.following = None;
                            connection.input = false;
                            connection.session.end_stream();
                        }
                    }
                }
            }
        }
    }

    /// Answer power requests whose guests acknowledged (or ran out of time); go on with
    /// what their connections asked next.
    fn poll_power(&mut self, now: Instant) {
        let mut resumed = Vec::new();
        for (&id, connection) in &mut self.connections {
            let Some(wait) = &mut connection.waiting else {
                continue;
            };
            if let Some(result) = self.services.noxs.power_poll(wait, now) {
                connection.waiting = None;
                match result {
                    Ok(()) => connection.session.respond(Response::Done, now),
                    Err(err) => {
                        warn!("power request failed: {err}");
                        connection.session.refuse(&err, now);
                    }
                }
                resumed.push(id);
            }
        }
        for id in resumed {
            self.run_queued(id);
        }
    }

    /// Bring each connection's events in the epoll set in line with what it waits for.
    fn update_interests(&mut self) {
        for (&id, connection) in &mut self.connections {
            let wanted = connection.interest(&self.services.noxs);
            if connection.registered == Some(wanted) {
                continue;
            }
            let fd = connection.stream.as_fd();
            let token = Token::Connection(id);
            let changed = if connection.registered.is_none() {
                self.poller.add(fd, token, wanted)
            } else {
                self.poller.modify(fd, token, wanted)
            };
            match changed {
                Ok(()) => connection.registered = Some(wanted),
                Err(errno) => {
                    error!("client {id}: epoll: {errno}: dropping it");
                    connection.session.abort();
                }
            }
        }
    }

    fn drain_uevents(&mut self, buf: &mut [u8]) {
        loop {
            match self.uevents.receive(buf) {
                Ok(Received::Kernel(len)) => {
                    let received = Instant::now();
                    self.services.hotplug.on_uevent(&buf[..len], received);
                }
                Ok(Received::FromProcess(pid)) => {
                    warn!("dropped a uevent datagram sent by process {pid}, not the kernel");
                }
                Ok(Received::Nothing) => return,
                Ok(Received::Overflow) => {
                    error!("the uevent socket overflowed: events were lost; rescanning Xenstore");
                    self.services.hotplug.rescan("overflow");
                }
                Err(errno) => {
                    error!("receiving uevents: {errno}");
                    return;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let now = Instant::now();
                    let mut session = Session::new(self.limits, now);
                    if self.connections.len() >= MAX_CONNECTIONS {
                        warn!("turned a client away: {MAX_CONNECTIONS} clients connected already");
                        session.refuse(&Refusal::Busy, now);
                        let _ = (&stream).write(session.pending_output());
                        continue;
                    }
                    if std::mem::take(&mut self.short_of_files) {
                        info!("accepting clients again");
                    }
                    let id = self.next_connection;
                    self.next_connection += 1;
                    // In the epoll set from the next turn on (update_interests).
                    self.connections
                        .insert(id, Connection::new(stream, session));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    match limits::reached(err.raw_os_error(), Making::File) {
                        Some(limit) => {
                            if !std::mem::replace(&mut self.short_of_files, true) {
                                error!(
                                    "cannot accept a client: {limit}; clients wait until a \
                                     descriptor is free (tried again every {} ms)",
                                    ACCEPT_PAUSE.as_millis()
                                );
                            }
                            self.pause_accepting();
                        }
                        None => error!("accepting a client: {err}"),
                    }
                    return;
                }
            }
        }
    }

    /// Stop accepting for [`ACCEPT_PAUSE`]: the listening socket leaves the epoll set.
    fn pause_accepting(&mut self) {
        if self.accept_paused_until.is_none()
            && let Err(errno) = self.poller.delete(self.listener.listener.as_fd())
        {
            error!("taking the listening socket out of the epoll set: {errno}");
        }
        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    /// Accept again once the pause is over.
    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            let fd = self.listener.listener.as_fd();
            if let Err(errno) = self.poller.add(fd, Token::Listen, Interest::READ) {
                error!("putting the listening socket back in the epoll set: {errno}");
            }
        }
    }

    /// Read what a client sent: requests, or a follower's input for its guest (no
    /// more than the guest's console takes). `hangup`: its socket reported a hang-up;
    /// a client that is not read (it waits, its input ended, or its guest has no room
    /// for its input) is then gone, and so is what it waits for.
    fn read_connection(&mut self, id: u64, hangup: bool, chunk: &mut [u8], now: Instant) {
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        let noxs = &mut self.services.noxs;
        if !connection.session.reading()
            || connection.waiting.is_some()
            || connection.input_blocked(noxs)
        {
            if hangup {
                if let Some(wait) = connection.waiting.take() {
                    info!(
                        "client {id} is gone: nobody waits for domain {}'s answer any more",
                        wait.domid
                    );
                }
                connection.following = None;
                connection.input = false;
                connection.session.abort();
            }
            return;
        }
        let room = connection.input_room(noxs);
        let wanted = room.unwrap_or(usize::MAX).min(chunk.len());
        let chunk = &mut chunk[..wanted];
        match (&connection.stream).read(chunk) {
            Ok(0) => {
                if let Some(error) = connection.session.end_of_input() {
                    debug!("client: {error}");
                    connection.session.refuse(&error, now);
                }
            }
            Ok(n) => match connection.following.filter(|_| room.is_some()) {
                Some(domid) => {
                    connection.session.receive(&chunk[..n], now);
                    noxs.console_input(domid, &chunk[..n]);
                }
                None => {
                    let requests = connection.session.receive(&chunk[..n], now);
                    connection.queued.extend(requests);
                    self.run_queued(id);
                }
            },
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                debug!("client read: {err}: dropping it");
                connection.session.abort();
            }
        }
    }

    /// Answer a connection's queued requests in order, until one must wait.
    fn run_queued(&mut self, id: u64) {
        loop {
            let Some(connection) = self.connections.get_mut(&id) else {
                return;
            };
            if connection.waiting.is_some() {
                return;
            }
            let Some(request) = connection.queued.pop_front() else {
                return;
            };
            let answer = match request {
                Ok(request) => self.services.handle(request),
                Err(error) => {
                    info!("client: {error}");
                    Answer::Now(Err(error.into()))
                }
            };
            let now = Instant::now();
            let Some(connection) = self.connections.get_mut(&id) else {
                return;
            };
            match answer {
                Answer::Now(Ok(response)) => connection.session.respond(response, now),
                Answer::Now(Err(refusal)) => connection.session.refuse(&refusal, now),
                Answer::Power(wait) => connection.waiting = Some(wait),
                Answer::Console {
                    domid,
                    log,
                    follow,
                    input,
                } => {
                    let so_far = match fs::read(&log) {
                        Ok(bytes) => bytes,
                        Err(source) => {
                            let refusal = Refusal::ConsoleLog { path: log, source };
                            connection.session.refuse(&refusal, now);
                            continue;
                        }
                    };
                    connection.session.respond(Response::Streaming, now);
                    connection.session.start_stream();
                    connection.session.send_raw(&so_far, now);
                    connection.queued.clear();
                    if follow {
                        connection.following = Some(domid);
                        connection.input = input;
                    } else {
                        connection.session.end_stream();
                    }
                    return;
                }
            }
        }
    }

    /// Write what each connection is owed (as much as its socket takes); close the
    /// finished, out of the epoll set first.
    fn flush_and_reap(&mut self, now: Instant) {
        let poller = &self.poller;
        self.connections.retain(|_, connection| {
            let mut keep = true;
            while !connection.session.pending_output().is_empty() {
                match (&connection.stream).write(connection.session.pending_output()) {
                    Ok(n) => connection.session.wrote(n, now),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        debug!("client write: {err}: dropping it");
                        keep = false;
                        break;
                    }
                }
            }
            keep &= !connection.session.finished();
            if !keep && connection.registered.is_some() {
                let _ = poller.delete(connection.stream.as_fd());
            }
            keep
        });
    }

    fn shutdown(&mut self) {
        self.services.noxs.leave_all();
        self.dispatch_events();
        self.flush_and_reap(Instant::now());
        self.services.loops.report_left();
        self.services.hotplug.report_left();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    /// Requests through `Services::handle` that fail before any ioctl.
    #[test]
    fn refused_requests() {
        let mut services = Services::new(Method::Auto, None);
        let dir = std::env::temp_dir().join(format!("xendevd-refuse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("odd.img");
        File::create(&odd).unwrap().set_len(1000).unwrap();
        let attach = |path: &Path| Request::AttachDisk {
            path: path.to_str().unwrap().to_owned(),
            readonly: false,
            domid: 1,
        };
        let missing = dir.join("missing.img");
        for (request, error) in [
            (
                attach(&missing),
                format!("{} does not exist", missing.display()),
            ),
            (
                attach(&dir),
                format!("{} is a directory, not a regular file", dir.display()),
            ),
            (
                attach(&odd),
                format!("{} has 1000 bytes, not a whole number", odd.display()),
            ),
            (
                attach(Path::new("rel.img")),
                "path \"rel.img\" is not absolute".to_owned(),
            ),
            (
                Request::DetachDisk {
                    device: "/dev/loop0".into(),
                },
                "/dev/loop0 was not attached by xendevd (it holds no loop devices)".to_owned(),
            ),
        ] {
            let Answer::Now(Err(err)) = services.handle(request.clone()) else {
                panic!("{request:?} must fail at once");
            };
            let err = err.to_string();
            assert!(err.starts_with(&error), "{request:?}: {err}");
        }
        assert!(matches!(
            services.handle(Request::ReleaseDomain { domid: 9 }),
            Answer::Now(Ok(Response::Done))
        ));
        assert!(matches!(
            services.handle(Request::Query),
            Answer::Now(Ok(Response::State(state))) if state == State::default()
        ));
        // Without NoXS back ends nothing is served: empty answers, not errors (chaos
        // asks about Xenstore domains too).
        for request in [
            Request::Domain { domid: 3 },
            Request::DomainsNamed { name: "a".into() },
        ] {
            assert!(matches!(
                services.handle(request),
                Answer::Now(Ok(Response::Domains(domains))) if domains.is_empty()
            ));
        }
        assert!(matches!(
            services.handle(Request::ListDomains),
            Answer::Now(Ok(Response::Listed(listed))) if listed.is_empty()
        ));
        for request in [
            Request::Power {
                domid: 3,
                action: xenproto::noxs::Request::Poweroff,
                timeout_ms: 10,
            },
            Request::Console {
                domid: 3,
                follow: false,
                input: false,
            },
            // A re-offer is refused outright, not put off (chaos would ask again and
            // again): without back ends it can never be served.
            Request::NoxsReoffer { domid: 3 },
            Request::NoxsRename {
                domid: 3,
                name: "a".into(),
            },
        ] {
            assert!(matches!(
                services.handle(request),
                Answer::Now(Err(err)) if err.to_string()
                    == "this xendevd has no NoXS back ends (not started)"
            ));
        }
        // Input without follow is refused whatever the domain: that stream would end
        // with the log.
        assert!(matches!(
            services.handle(Request::Console {
                domid: 3,
                follow: false,
                input: true,
            }),
            Answer::Now(Err(err)) if err.to_string()
                == "console input needs \"follow\": true (a console that is not followed \
                    ends once its log is sent)"
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
