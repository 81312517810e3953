//! The daemon: one `poll` loop over the signal fd, the kernel's uevent socket, the API's
//! listening socket and every client connection. Nothing blocks for long: loop ioctls,
//! bridge ioctls and Xenstore round trips are quick local calls, and clients are
//! non-blocking with their own buffers (`conn.rs`).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::api::{Disk, Request, Response, State, Vif};
use crate::bridge::{self, Added, NetControl, Removed};
use crate::conn::{Limits, Session};
use crate::disks::{self, DiskBook, DiskError, Entry, FileKind, ImageFacts};
use crate::loopdev::{self, Detached, LoopError, Method};
use crate::netlink::{self, Received, UeventSocket};
use crate::noxs::{Backends, Event, PowerWait};
use crate::uevent::{self, Relevant, Uevent, VifAction, VifEvent};
use crate::vif::{self, BackendFacts, OnlinePlan, VifBook, node};
use xenhost::xs::{Store, Xs};

/// More clients than this at once are turned away with an error.
const MAX_CLIENTS: usize = 256;

/// How much one client may send per loop turn (the others get their turn first).
const READ_CHUNK: usize = 16 * 1024;

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

/// One client.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    session: Session,
    /// Requests read but not yet answered: they wait behind a power request.
    queued: VecDeque<Result<Request, String>>,
    /// A power request waiting for its guest.
    waiting: Option<PowerWait>,
    /// The domain whose console this client follows.
    following: Option<u32>,
}

impl Client {
    fn new(stream: UnixStream, session: Session) -> Self {
        Self {
            stream,
            session,
            queued: VecDeque::new(),
            waiting: None,
            following: None,
        }
    }
}

/// What `poll` said about each fd.
#[derive(Debug)]
struct Revents {
    signal: PollFlags,
    uevent: PollFlags,
    listen: PollFlags,
    evtchn: PollFlags,
    watch: PollFlags,
    taps: Vec<((u32, usize), PollFlags)>,
    clients: Vec<PollFlags>,
}

/// How a request is answered.
#[derive(Debug)]
enum Answer {
    Now(Result<Response, String>),
    /// When the guest acknowledges (or not).
    Power(PowerWait),
    /// `streaming`, the log so far, then (with `follow`) the domain's new output.
    Console {
        domid: u32,
        log: PathBuf,
        follow: bool,
    },
}

/// Everything set up before the loop runs: made first so a daemonizing xendevd can
/// report a failure on its terminal and exit non-zero.
#[derive(Debug)]
pub struct Daemon {
    listener: Listener,
    uevents: UeventSocket,
    signals: SignalFd,
    clients: Vec<Client>,
    devices: Devices,
    limits: Limits,
    console_dir: PathBuf,
}

impl Daemon {
    /// Block SIGTERM and SIGINT (they arrive on a signal fd), bind the socket, open the
    /// uevent socket.
    pub fn setup(options: &Options) -> Result<Self> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().context("blocking SIGTERM and SIGINT")?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("opening a signalfd")?;
        let uevents = UeventSocket::open().context(
            "opening the kernel's uevent socket (NETLINK_KOBJECT_UEVENT): xendevd needs root",
        )?;
        let listener = Listener::bind(&options.socket)?;
        Ok(Self {
            listener,
            uevents,
            signals,
            clients: Vec::new(),
            devices: Devices::new(options.loop_method, Some(options.state.clone())),
            limits: options.limits,
            console_dir: options.console_dir.clone(),
        })
    }

    /// Run until SIGTERM or SIGINT.
    pub fn run(mut self) -> Result<()> {
        info!(
            "xendevd {}: API on {}, kernel uevents for vif hotplug (toolstack = {:?})",
            env!("CARGO_PKG_VERSION"),
            self.listener.path.display(),
            vif::TOOLSTACK_MARKER
        );
        // Opened here, after daemonizing: libxenstore may start a thread.
        self.devices.start(&self.console_dir);
        self.devices.restore_state();
        if self.devices.xenstore_mode {
            self.devices.rescan("start");
        }
        let mut datagram = vec![0u8; netlink::DATAGRAM_MAX];
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            for client in &mut self.clients {
                if client.waiting.is_none() {
                    client.session.check_time(now);
                }
            }
            self.poll_power(now);
            self.flush_and_reap(now);
            let timeout = self
                .clients
                .iter()
                .filter_map(|client| {
                    let session = client.session.deadline();
                    let power = client.waiting.as_ref().map(PowerWait::deadline);
                    session.into_iter().chain(power).min()
                })
                .chain(self.devices.noxs.as_ref().and_then(Backends::deadline))
                .min()
                .map(|deadline| deadline.saturating_duration_since(now) + Duration::from_millis(1));
            let revents = self.wait(timeout)?;
            if revents.signal.intersects(PollFlags::POLLIN)
                && let Ok(Some(info)) = self.signals.read_signal()
            {
                let name = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0))
                    .map_or("a signal", Signal::as_str);
                info!("{name}: shutting down");
                break;
            }
            if revents
                .uevent
                .intersects(PollFlags::POLLIN | PollFlags::POLLERR)
            {
                self.drain_uevents(&mut datagram);
            }
            if let Some(noxs) = &mut self.devices.noxs {
                if revents.evtchn.intersects(PollFlags::POLLIN) {
                    noxs.on_evtchn();
                }
                if revents.watch.intersects(PollFlags::POLLIN) {
                    noxs.on_watch();
                }
                for ((domid, index), flags) in &revents.taps {
                    if flags.intersects(PollFlags::POLLIN) {
                        noxs.on_tap(*domid, *index);
                    }
                }
                noxs.tick(Instant::now());
            }
            // Output that came before any request of this turn was answered.
            self.dispatch_events();
            if revents.listen.intersects(PollFlags::POLLIN) {
                self.accept();
            }
            let now = Instant::now();
            for (index, flags) in revents.clients.iter().enumerate() {
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_client(index, &mut chunk, now);
                }
            }
            self.dispatch_events();
        }
        self.shutdown();
        Ok(())
    }

    /// Console output to followers; released domains end their streams.
    fn dispatch_events(&mut self) {
        let Some(noxs) = &mut self.devices.noxs else {
            return;
        };
        let now = Instant::now();
        for event in noxs.take_events() {
            match event {
                Event::Console { domid, bytes } => {
                    for client in &mut self.clients {
                        if client.following == Some(domid) {
                            client.session.send_raw(&bytes, now);
                        }
                    }
                }
                Event::Released { domid } => {
                    for client in &mut self.clients {
                        if client.following == Some(domid) {
                            client.following = None;
                            client.session.end_stream();
                        }
                    }
                }
            }
        }
    }

    /// Answer power requests whose guests acknowledged (or ran out of time); go on with
    /// what their clients asked next.
    fn poll_power(&mut self, now: Instant) {
        let Some(noxs) = &mut self.devices.noxs else {
            return;
        };
        let mut resumed = Vec::new();
        for (index, client) in self.clients.iter_mut().enumerate() {
            let Some(wait) = &mut client.waiting else {
                continue;
            };
            if let Some(result) = noxs.power_poll(wait, now) {
                if let Err(err) = &result {
                    warn!("power request failed: {err}");
                }
                client.waiting = None;
                client.session.respond(result.map(|()| Response::Done), now);
                resumed.push(index);
            }
        }
        for index in resumed {
            self.run_queued(index);
        }
    }

    /// Poll every fd.
    fn wait(&self, timeout: Option<Duration>) -> Result<Revents> {
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.uevents.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.listener.as_fd(), PollFlags::POLLIN),
        ];
        let noxs = self.devices.noxs.as_ref();
        let mut evtchn = None;
        let mut watch = None;
        if let Some(noxs) = noxs {
            fds.push(PollFd::new(noxs.evtchn_fd(), PollFlags::POLLIN));
            evtchn = Some(fds.len() - 1);
            if let Some(fd) = noxs.watch_fd() {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                watch = Some(fds.len() - 1);
            }
        }
        let taps = noxs.map(Backends::taps).unwrap_or_default();
        let taps_start = fds.len();
        for (_, fd) in &taps {
            fds.push(PollFd::new(*fd, PollFlags::POLLIN));
        }
        let clients_start = fds.len();
        for client in &self.clients {
            let mut events = PollFlags::empty();
            if client.session.reading() && client.waiting.is_none() {
                events |= PollFlags::POLLIN;
            }
            if !client.session.pending_output().is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(client.stream.as_fd(), events));
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(wait) => PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => bail!("poll: {errno}"),
        }
        let flags: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        let at = |index: Option<usize>| index.map_or(PollFlags::empty(), |i| flags[i]);
        Ok(Revents {
            signal: flags[0],
            uevent: flags[1],
            listen: flags[2],
            evtchn: at(evtchn),
            watch: at(watch),
            taps: taps
                .iter()
                .enumerate()
                .map(|(i, (device, _))| (*device, flags[taps_start + i]))
                .collect(),
            clients: flags[clients_start..].to_vec(),
        })
    }

    fn drain_uevents(&mut self, buf: &mut [u8]) {
        loop {
            match self.uevents.receive(buf) {
                Ok(Received::Kernel(len)) => {
                    let received = Instant::now();
                    self.devices.on_uevent(&buf[..len], received);
                }
                Ok(Received::FromProcess(pid)) => {
                    warn!("dropped a uevent datagram sent by process {pid}, not the kernel");
                }
                Ok(Received::Nothing) => return,
                Ok(Received::Overflow) => {
                    error!("the uevent socket overflowed: events were lost; rescanning Xenstore");
                    self.devices.rescan("overflow");
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
                    if self.clients.len() >= MAX_CLIENTS {
                        warn!("turned a client away: {MAX_CLIENTS} clients connected already");
                        session.respond(
                            Err(format!(
                                "xendevd serves {MAX_CLIENTS} clients at once: try again later"
                            )),
                            now,
                        );
                        let _ = (&stream).write(session.pending_output());
                        continue;
                    }
                    self.clients.push(Client::new(stream, session));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    error!("accepting a client: {err}");
                    return;
                }
            }
        }
    }

    fn read_client(&mut self, index: usize, chunk: &mut [u8], now: Instant) {
        let client = &mut self.clients[index];
        if !client.session.reading() || client.waiting.is_some() {
            return;
        }
        match (&client.stream).read(chunk) {
            Ok(0) => {
                if let Some(error) = client.session.end_of_input() {
                    debug!("client: {error}");
                    client.session.respond(Err(error), now);
                }
            }
            Ok(n) => {
                let requests = client.session.receive(&chunk[..n], now);
                client.queued.extend(requests);
                self.run_queued(index);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                debug!("client read: {err}: dropping it");
                self.clients[index].session.abort();
            }
        }
    }

    /// Answer a client's queued requests in order, until one must wait.
    fn run_queued(&mut self, index: usize) {
        while self.clients[index].waiting.is_none() {
            let Some(request) = self.clients[index].queued.pop_front() else {
                return;
            };
            let answer = match request {
                Ok(request) => self.devices.handle(request),
                Err(error) => {
                    info!("client: {error}");
                    Answer::Now(Err(error))
                }
            };
            let now = Instant::now();
            let client = &mut self.clients[index];
            match answer {
                Answer::Now(response) => client.session.respond(response, now),
                Answer::Power(wait) => client.waiting = Some(wait),
                Answer::Console { domid, log, follow } => {
                    let so_far = match fs::read(&log) {
                        Ok(bytes) => bytes,
                        Err(err) => {
                            client.session.respond(
                                Err(format!(
                                    "cannot read the console log {}: {err}",
                                    log.display()
                                )),
                                now,
                            );
                            continue;
                        }
                    };
                    client.session.respond(Ok(Response::Streaming), now);
                    client.session.start_stream();
                    client.session.send_raw(&so_far, now);
                    client.queued.clear();
                    if follow {
                        client.following = Some(domid);
                    } else {
                        client.session.end_stream();
                    }
                    return;
                }
            }
        }
    }

    /// Write what each client is owed (as much as its socket takes); close the finished.
    fn flush_and_reap(&mut self, now: Instant) {
        self.clients.retain_mut(|client| {
            while !client.session.pending_output().is_empty() {
                match (&client.stream).write(client.session.pending_output()) {
                    Ok(n) => client.session.wrote(n, now),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        debug!("client write: {err}: dropping it");
                        return false;
                    }
                }
            }
            !client.session.finished()
        });
    }

    fn shutdown(&mut self) {
        if let Some(noxs) = &mut self.devices.noxs {
            // Nothing of a guest may stay mapped or bound once we are gone.
            noxs.release_all("xendevd stops");
        }
        self.dispatch_events();
        self.flush_and_reap(Instant::now());
        let disks = self.devices.disks.list();
        if disks.is_empty() {
            info!("no loop devices attached");
        } else {
            let list: Vec<String> = disks
                .iter()
                .map(|d| {
                    format!(
                        "{} ← {} (domain {}, {})",
                        d.device,
                        d.path,
                        d.domid,
                        if d.readonly {
                            "read-only"
                        } else {
                            "read-write"
                        }
                    )
                })
                .collect();
            warn!(
                "leaving {} loop device(s) attached for their domains: {} (recorded in {} \
                 for the next xendevd)",
                disks.len(),
                list.join("; "),
                self.devices
                    .state_path
                    .as_deref()
                    .map_or("nowhere".into(), |p| p.display().to_string())
            );
        }
        let vifs = self.devices.vifs.list();
        if !vifs.is_empty() {
            let list: Vec<String> = vifs
                .iter()
                .map(|v| format!("{} on {} (domain {})", v.name, v.bridge, v.domid))
                .collect();
            info!(
                "leaving {} vif(s) on their bridges: {}",
                vifs.len(),
                list.join("; ")
            );
        }
    }
}

/// The devices xendevd looks after, and the handles it needs for them.
#[derive(Debug)]
struct Devices {
    disks: DiskBook,
    vifs: VifBook,
    loop_method: Method,
    /// Opened on first use, dropped (and reopened later) when the connection breaks.
    xenstore: Option<Xs>,
    net: Option<NetControl>,
    /// The state file (`None` in tests).
    state_path: Option<PathBuf>,
    /// NoXS back ends, when the Xen devices could be opened.
    noxs: Option<Backends>,
    /// Why there are none.
    noxs_missing: String,
    /// Whether xenstored runs: vif hotplug through Xenstore is on.
    xenstore_mode: bool,
}

impl Devices {
    fn new(loop_method: Method, state_path: Option<PathBuf>) -> Self {
        Self {
            disks: DiskBook::default(),
            vifs: VifBook::default(),
            loop_method,
            xenstore: None,
            net: None,
            state_path,
            noxs: None,
            noxs_missing: "this xendevd has no NoXS back ends (not started)".into(),
            xenstore_mode: false,
        }
    }

    /// Open what the daemon needs beyond its socket: Xenstore (when xenstored runs) and
    /// the Xen devices of the NoXS back ends. Either may be missing; the log says which
    /// mode xendevd runs in.
    fn start(&mut self, console_dir: &Path) {
        self.xenstore_mode = match Xs::open() {
            Ok(xs) => {
                self.xenstore = Some(xs);
                info!("xenstored runs: vif hotplug for chaos's Xenstore guests is on");
                true
            }
            Err(err) => {
                info!("{err}: no vif hotplug through Xenstore (NoXS guests need none)");
                false
            }
        };
        match Backends::open(console_dir.to_owned()) {
            Ok(noxs) => {
                info!(
                    "NoXS back ends ready; console logs in {}",
                    console_dir.display()
                );
                self.noxs = Some(noxs);
            }
            Err(err) => {
                self.noxs_missing = format!(
                    "this xendevd has no NoXS back ends: opening the Xen devices \
                     (/dev/xen/evtchn, gntdev, gntalloc, privcmd) failed: {err}"
                );
                warn!("{}", self.noxs_missing);
            }
        }
    }

    /// Write the disk book to the state file (a new file renamed over the old one).
    fn save_state(&self) {
        let Some(path) = &self.state_path else { return };
        let mut temporary = path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(self.disks.save().as_bytes()))
            .and_then(|()| fs::rename(&temporary, path));
        if let Err(err) = written {
            warn!(
                "cannot record the loop devices in {}: {err} (a restarted xendevd will not \
                 know them)",
                path.display()
            );
        }
    }

    /// Take back the loop devices a previous xendevd recorded, each still bound to the
    /// same file (device and inode) in the same mode; forget the others.
    fn restore_state(&mut self) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) => {
                warn!("cannot read {}: {err}", path.display());
                return;
            }
        };
        let entries = match DiskBook::load(&text) {
            Ok(entries) => entries,
            Err(err) => {
                warn!("ignoring {}: {err}", path.display());
                return;
            }
        };
        let total = entries.len();
        for entry in entries {
            let disk = &entry.disk;
            match loopdev::binding(&disk.device) {
                Ok(Some(binding))
                    if (binding.dev, binding.ino, binding.readonly)
                        == (entry.dev, entry.ino, disk.readonly) =>
                {
                    info!(
                        "took back {} ← {} (domain {})",
                        disk.device, disk.path, disk.domid
                    );
                    self.disks.insert(entry);
                }
                Ok(Some(_)) => warn!(
                    "not taking back {}: it is bound to another file than {} now",
                    disk.device, disk.path
                ),
                Ok(None) => info!(
                    "not taking back {} ({}): it was detached meanwhile",
                    disk.device, disk.path
                ),
                Err(err) => warn!("not taking back {}: {err}", disk.device),
            }
        }
        info!(
            "{}: took back {} of {total} loop device(s)",
            path.display(),
            self.disks.list().len()
        );
        self.save_state();
    }

    fn handle(&mut self, request: Request) -> Answer {
        match request {
            Request::NoxsCreate {
                domid,
                name,
                console_port,
                devices,
            } => Answer::Now(self.noxs().and_then(|noxs| {
                noxs.create(domid, &name, console_port, &devices)
                    .map(Response::Noxs)
                    .inspect_err(|err| warn!("noxs_create of domain {domid} ({name}): {err}"))
            })),
            Request::Power {
                domid,
                action,
                timeout_ms,
            } => match self
                .noxs()
                .and_then(|noxs| noxs.power(domid, action, timeout_ms))
            {
                Ok(wait) => Answer::Power(wait),
                Err(err) => Answer::Now(Err(err)),
            },
            Request::Console { domid, follow } => {
                match self.noxs().and_then(|noxs| noxs.console_log(domid)) {
                    Ok(log) => Answer::Console { domid, log, follow },
                    Err(err) => Answer::Now(Err(err)),
                }
            }
            request => {
                let changes_disks = !matches!(request, Request::Query);
                let result = self.answer(request);
                if changes_disks {
                    self.save_state();
                }
                Answer::Now(result)
            }
        }
    }

    fn noxs(&mut self) -> Result<&mut Backends, String> {
        match &mut self.noxs {
            Some(noxs) => Ok(noxs),
            None => Err(self.noxs_missing.clone()),
        }
    }

    fn answer(&mut self, request: Request) -> Result<Response, String> {
        let result = match request {
            Request::AttachDisk {
                path,
                readonly,
                domid,
            } => self.attach(&path, readonly, domid).map(Response::Disk),
            Request::DetachDisk { device } => self.detach(&device).map(|()| Response::Done),
            Request::ReleaseDomain { domid } => {
                if let Some(noxs) = &mut self.noxs {
                    noxs.release(domid, "release_domain");
                }
                return self.release(domid).map(|()| Response::Done);
            }
            Request::Query => Ok(Response::State(State {
                disks: self.disks.list(),
                vifs: self.vifs.list(),
                domains: self
                    .noxs
                    .as_ref()
                    .map(Backends::domains)
                    .unwrap_or_default(),
            })),
            Request::NoxsCreate { .. } | Request::Power { .. } | Request::Console { .. } => {
                unreachable!("answered in handle()")
            }
        };
        result.map_err(|err| {
            warn!("request failed: {err}");
            err.to_string()
        })
    }

    fn attach(&mut self, path: &str, readonly: bool, domid: u32) -> Result<Disk, DiskError> {
        disks::check_path(path)?;
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DiskError::NotFound {
                path: path.to_owned(),
            },
            _ => DiskError::Stat {
                path: path.to_owned(),
                source,
            },
        })?;
        let facts = image_facts(&meta);
        disks::check_image(path, &facts)?;
        self.disks.check_attach(path, readonly, domid, &facts)?;
        let image = open_image(path, readonly)?;
        let opened = image_facts(&image.metadata().map_err(|source| DiskError::Stat {
            path: path.to_owned(),
            source,
        })?);
        if opened != facts {
            return Err(DiskError::Changed {
                path: path.to_owned(),
                kind: opened.kind,
                size: opened.size,
            });
        }
        let attached = loopdev::attach(&image, path, readonly, self.loop_method)?;
        let disk = Disk {
            device: attached.device,
            major: attached.major,
            minor: attached.minor,
            path: path.to_owned(),
            readonly,
            domid,
        };
        info!(
            "attached {} ({}:{}) ← {path} for domain {domid} ({}, {} sectors)",
            disk.device,
            disk.major,
            disk.minor,
            if readonly { "read-only" } else { "read-write" },
            facts.size / disks::SECTOR
        );
        self.disks.insert(Entry {
            disk: disk.clone(),
            dev: facts.dev,
            ino: facts.ino,
        });
        Ok(disk)
    }

    fn detach(&mut self, device: &str) -> Result<(), DiskError> {
        let entry = self.disks.get(device)?.clone();
        match loopdev::binding(device) {
            Ok(Some(binding)) if (binding.dev, binding.ino) == (entry.dev, entry.ino) => {}
            Ok(Some(_)) => {
                self.disks.remove(device);
                return Err(DiskError::Rebound {
                    device: device.to_owned(),
                    path: entry.disk.path,
                });
            }
            Ok(None) => {
                warn!(
                    "{device} ({}) was detached already, by someone else",
                    entry.disk.path
                );
                self.disks.remove(device);
                return Ok(());
            }
            Err(LoopError::OpenDevice { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                warn!("{device} ({}) is gone already", entry.disk.path);
                self.disks.remove(device);
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        match loopdev::detach(device)? {
            Detached::Now => info!(
                "detached {device} ← {} (domain {})",
                entry.disk.path, entry.disk.domid
            ),
            Detached::Deferred => info!(
                "detaching {device} ← {} (domain {}): still open (blkback?), the kernel \
                 detaches it when the last user closes it",
                entry.disk.path, entry.disk.domid
            ),
        }
        self.disks.remove(device);
        Ok(())
    }

    fn release(&mut self, domid: u32) -> Result<(), String> {
        let devices = self.disks.of_domain(domid);
        let total = devices.len();
        let failures: Vec<String> = devices
            .into_iter()
            .filter_map(|device| self.detach(&device).err().map(|err| err.to_string()))
            .collect();
        if failures.is_empty() {
            if total > 0 {
                info!("released domain {domid}: {total} loop device(s)");
            }
            Ok(())
        } else {
            let error = format!(
                "released {} of {total} loop devices of domain {domid}; {}",
                total - failures.len(),
                failures.join("; ")
            );
            warn!("{error}");
            Err(error)
        }
    }

    fn xenstore(&mut self) -> Result<&Xs, xenhost::Error> {
        if self.xenstore.is_none() {
            self.xenstore = Some(Xs::open()?);
        }
        Ok(self.xenstore.as_ref().expect("just opened"))
    }

    /// Forget a broken Xenstore connection, so the next access reconnects.
    fn xenstore_failed(&mut self, err: &xenhost::Error) {
        if err.is_connection_lost() {
            self.xenstore = None;
        }
    }

    fn net(&mut self) -> Result<&NetControl, bridge::NetError> {
        if self.net.is_none() {
            self.net = Some(NetControl::open()?);
        }
        Ok(self.net.as_ref().expect("just opened"))
    }

    fn on_uevent(&mut self, bytes: &[u8], received: Instant) {
        let event = match Uevent::parse(bytes) {
            Ok(event) => event,
            Err(err) => {
                debug!(
                    "unreadable uevent ({err}): {:?}",
                    String::from_utf8_lossy(bytes)
                );
                return;
            }
        };
        debug!("uevent {event}");
        match uevent::classify(&event) {
            Ok(Relevant::Vif(vif)) => match vif.action {
                VifAction::Online => self.vif_online(&vif, Some(received)),
                VifAction::Offline => self.vif_offline(&vif),
            },
            Ok(Relevant::NetRemoved(name)) => {
                if let Some(vif) = self.vifs.remove(&name) {
                    info!("{name} (domain {}) is gone", vif.domid);
                }
            }
            Ok(Relevant::Other) => {}
            Err(err) => warn!("{err}"),
        }
    }

    fn backend_facts(&mut self, backend: &str) -> Result<BackendFacts, xenhost::Error> {
        let xs = self.xenstore()?;
        let toolstack = xs.read(&format!("{backend}/{}", node::TOOLSTACK))?;
        // Another toolstack's vif: one round trip is enough.
        let bridge = if toolstack.as_deref() == Some(vif::TOOLSTACK_MARKER) {
            xs.read(&format!("{backend}/{}", node::BRIDGE))?
        } else {
            None
        };
        Ok(BackendFacts { toolstack, bridge })
    }

    /// A vif came online (or a rescan found it unconnected); `received` is when its
    /// uevent arrived.
    fn vif_online(&mut self, event: &VifEvent, received: Option<Instant>) {
        let started = Instant::now();
        let facts = match self.backend_facts(&event.backend) {
            Ok(facts) => facts,
            Err(err) => {
                error!(
                    "{} (domain {}): cannot read its backend: {err}",
                    event.vif, event.domid
                );
                self.xenstore_failed(&err);
                return;
            }
        };
        let read = started.elapsed();
        let bridge = match vif::plan_online(event, &facts) {
            OnlinePlan::Ignore { why } => {
                debug!("{} (domain {}) is not ours: {why}", event.vif, event.domid);
                return;
            }
            OnlinePlan::Fail { error } => return self.hotplug_failed(event, &error),
            OnlinePlan::Attach { bridge } => bridge,
        };
        let (mut bridged, mut upped) = (read, read);
        let added = self.net().and_then(|net| {
            let added = net.add_port(&bridge, &event.vif)?;
            bridged = started.elapsed();
            net.set_up(&event.vif)?;
            upped = started.elapsed();
            Ok(added)
        });
        let added = match added {
            Ok(added) => added,
            Err(err) => return self.hotplug_failed(event, &err.to_string()),
        };
        let status = format!("{}/{}", event.backend, node::HOTPLUG_STATUS);
        let written = self
            .xenstore()
            .and_then(|xs| xs.write(&status, node::CONNECTED));
        if let Err(err) = written {
            error!(
                "{} (domain {}): on {bridge}, but {err}",
                event.vif, event.domid
            );
            self.xenstore_failed(&err);
            return;
        }
        let done = started.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let steps = format!(
            "Xenstore reads {:.1} ms, bridge {:.1} ms, up {:.1} ms, hotplug-status {:.1} ms",
            ms(read),
            ms(bridged - read),
            ms(upped - bridged),
            ms(done - upped)
        );
        let timing = match received {
            Some(at) => format!(
                "{:.1} ms after its online uevent{} ({steps})",
                ms(at.elapsed()),
                event.seqnum.map(|s| format!(" #{s}")).unwrap_or_default()
            ),
            None => format!("found by a rescan ({steps})"),
        };
        info!(
            "{} (domain {}) on {bridge}{} and up, {status} = connected: {timing}",
            event.vif,
            event.domid,
            if added == Added::Already {
                " already"
            } else {
                ""
            },
        );
        self.vifs.insert(Vif {
            name: event.vif.clone(),
            bridge,
            domid: event.domid,
        });
    }

    fn hotplug_failed(&mut self, event: &VifEvent, message: &str) {
        error!("{} (domain {}): {message}", event.vif, event.domid);
        let error_node = format!("{}/{}", event.backend, node::HOTPLUG_ERROR);
        let status_node = format!("{}/{}", event.backend, node::HOTPLUG_STATUS);
        let written = self.xenstore().and_then(|xs| {
            xs.in_transaction(|tx| {
                tx.write(&error_node, message)?;
                tx.write(&status_node, node::ERROR)
            })
        });
        if let Err(err) = written {
            error!(
                "{} (domain {}): cannot report the error: {err}",
                event.vif, event.domid
            );
            self.xenstore_failed(&err);
        }
    }

    fn vif_offline(&mut self, event: &VifEvent) {
        let Some(vif) = self.vifs.remove(&event.vif) else {
            debug!("{} (domain {}) offline: not ours", event.vif, event.domid);
            return;
        };
        match self
            .net()
            .and_then(|net| net.remove_port(&vif.bridge, &vif.name))
        {
            Ok(Removed::Now) => info!(
                "{} (domain {}) offline: off {}",
                vif.name, vif.domid, vif.bridge
            ),
            Ok(Removed::NothingToDo) => {
                info!(
                    "{} (domain {}) offline (gone from {} already)",
                    vif.name, vif.domid, vif.bridge
                );
            }
            Err(err) => warn!("{} (domain {}) offline: {err}", vif.name, vif.domid),
        }
    }

    /// Look through Xenstore for chaos's vifs: adopt those connected already (xendevd
    /// restarted), set up those whose `online` was missed (xendevd was not running, or
    /// the uevent socket overflowed).
    fn rescan(&mut self, why: &str) {
        let found = match self.scan_backends() {
            Ok(found) => found,
            Err(err) => {
                warn!("rescan ({why}): {err}");
                self.xenstore_failed(&err);
                return;
            }
        };
        // Vifs whose offline was missed: gone from dom0, so from the book.
        for vif in self.vifs.list() {
            if !bridge::exists(&vif.name) {
                info!("{} (domain {}) is gone", vif.name, vif.domid);
                self.vifs.remove(&vif.name);
            }
        }
        let mut adopted = 0;
        for (event, status) in found {
            if !bridge::exists(&event.vif) {
                continue; // Not created yet (its online will come) or gone.
            }
            match (status.as_deref(), bridge::bridge_of(&event.vif)) {
                (Some(node::CONNECTED), Some(bridge)) => {
                    adopted += 1;
                    self.vifs.insert(Vif {
                        name: event.vif.clone(),
                        bridge,
                        domid: event.domid,
                    });
                }
                _ => self.vif_online(&event, None),
            }
        }
        info!(
            "rescan ({why}): {} chaos vif(s) held, {adopted} adopted as they were",
            self.vifs.len()
        );
    }

    /// Every vif backend with `toolstack = chaos`, as an online event, with its
    /// `hotplug-status`.
    fn scan_backends(&mut self) -> Result<Vec<(VifEvent, Option<String>)>, xenhost::Error> {
        let xs = self.xenstore()?;
        let mut found = Vec::new();
        for domain in xs.directory("backend/vif")?.unwrap_or_default() {
            let Some(domid) = uevent::number(&domain) else {
                continue;
            };
            for dev in xs
                .directory(&format!("backend/vif/{domid}"))?
                .unwrap_or_default()
            {
                let Some(devid) = uevent::number(&dev) else {
                    continue;
                };
                let backend = format!("backend/vif/{domid}/{devid}");
                let toolstack = xs.read(&format!("{backend}/{}", node::TOOLSTACK))?;
                if toolstack.as_deref() != Some(vif::TOOLSTACK_MARKER) {
                    continue;
                }
                let status = xs.read(&format!("{backend}/{}", node::HOTPLUG_STATUS))?;
                found.push((
                    VifEvent {
                        action: VifAction::Online,
                        domid,
                        devid,
                        backend,
                        vif: format!("vif{domid}.{devid}"),
                        seqnum: None,
                    },
                    status,
                ));
            }
        }
        Ok(found)
    }
}

fn image_facts(meta: &fs::Metadata) -> ImageFacts {
    let kind = meta.file_type();
    ImageFacts {
        kind: if kind.is_file() {
            FileKind::Regular
        } else if kind.is_dir() {
            FileKind::Directory
        } else if kind.is_block_device() {
            FileKind::BlockDevice
        } else if kind.is_char_device() {
            FileKind::CharDevice
        } else if kind.is_fifo() {
            FileKind::Fifo
        } else if kind.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        },
        size: meta.len(),
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Open an image without blocking (should it have become a FIFO since the check), then
/// make its fd blocking again for the loop driver.
fn open_image(path: &str, readonly: bool) -> Result<File, DiskError> {
    let mode = if readonly { "read-only" } else { "read-write" };
    let failed = |source| DiskError::Open {
        path: path.to_owned(),
        mode,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|errno| failed(errno.into()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|errno| failed(errno.into()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_facts_of_real_files() {
        let dir = std::env::temp_dir().join(format!("xendevd-facts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.img");
        File::create(&path).unwrap().set_len(4096).unwrap();
        let facts = image_facts(&fs::metadata(&path).unwrap());
        assert_eq!((facts.kind, facts.size), (FileKind::Regular, 4096));
        assert_eq!(
            image_facts(&fs::metadata(&dir).unwrap()).kind,
            FileKind::Directory
        );
        assert_eq!(
            image_facts(&fs::metadata("/dev/null").unwrap()).kind,
            FileKind::CharDevice
        );
        let file = open_image(path.to_str().unwrap(), true).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
        let err = open_image(dir.join("none").to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot open /"), "{err}");
        assert!(
            err.contains("read-write: No such file or directory"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Requests through `Devices::handle` that fail before any ioctl.
    #[test]
    fn refused_requests() {
        let mut devices = Devices::new(Method::Auto, None);
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
            let Answer::Now(Err(err)) = devices.handle(request.clone()) else {
                panic!("{request:?} must fail at once");
            };
            assert!(err.starts_with(&error), "{request:?}: {err}");
        }
        assert!(matches!(
            devices.handle(Request::ReleaseDomain { domid: 9 }),
            Answer::Now(Ok(Response::Done))
        ));
        assert!(matches!(
            devices.handle(Request::Query),
            Answer::Now(Ok(Response::State(state))) if state == State::default()
        ));
        assert!(matches!(
            devices.handle(Request::Power { domid: 3, action: xenproto::noxs::Request::Poweroff, timeout_ms: 10 }),
            Answer::Now(Err(err)) if err.contains("no NoXS back ends")
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
