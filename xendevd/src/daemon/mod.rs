//! The daemon: one `poll` loop over the signal fd, the kernel's uevent socket, the API's
//! listening socket, every API connection and the NoXS back ends' descriptors. Each
//! request goes to the service that answers it, each in its module: [`loops`] (loop
//! devices for file-backed disks), [`hotplug`] (vif hotplug of Xenstore guests, which
//! the uevents feed) and [`noxs`] (the NoXS back ends). Nothing blocks for long: loop
//! ioctls, bridge ioctls and Xenstore round trips are quick local calls, and
//! connections are non-blocking with their own buffers ([`Session`]).

mod hotplug;
mod loops;
mod noxs;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::api::{Request, Response, State};
use crate::disks::DiskError;
use crate::loopdev::Method;
use crate::netlink::{self, Received, UeventSocket};
use crate::noxs::{Event, PowerWait};
use crate::session::{Limits, ProtocolError, Session};
use crate::vif;
use hotplug::VifHotplug;
use loops::{LoopService, ReleaseError};
use noxs::{NoxsDispatch, NoxsRefusal, PollSlots};

/// More connections than this at once are turned away with an error.
const MAX_CONNECTIONS: usize = 256;

/// How much one connection may send per loop turn (the others get their turn first).
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
}

impl Connection {
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
    #[error("xendevd serves {MAX_CONNECTIONS} clients at once: try again later")]
    Busy,
}

/// What `poll` said about each fd: the daemon's own, then the NoXS back ends' (at
/// `noxs`), then the connections' (from `connections`).
#[derive(Debug)]
struct Revents {
    flags: Vec<PollFlags>,
    noxs: PollSlots,
    connections: usize,
}

impl Revents {
    const SIGNAL: usize = 0;
    const UEVENT: usize = 1;
    const LISTEN: usize = 2;

    fn readable(&self, slot: usize) -> bool {
        self.flags[slot].intersects(PollFlags::POLLIN)
    }
}

/// How a request is answered.
#[derive(Debug)]
enum Answer {
    Now(Result<Response, Refusal>),
    /// When the guest acknowledges (or not).
    Power(PowerWait),
    /// `streaming`, the log so far, then (with `follow`) the domain's new output.
    Console {
        domid: u32,
        log: PathBuf,
        follow: bool,
    },
}

/// The services that answer requests.
#[derive(Debug)]
struct Services {
    loops: LoopService,
    hotplug: VifHotplug,
    noxs: NoxsDispatch,
}

impl Services {
    fn new(loop_method: Method, state_path: Option<PathBuf>) -> Self {
        Self {
            loops: LoopService::new(loop_method, state_path),
            hotplug: VifHotplug::default(),
            noxs: NoxsDispatch::default(),
        }
    }

    /// Open what the services need beyond the daemon's socket: Xenstore (when
    /// xenstored runs) and the Xen devices of the NoXS back ends. Either may be
    /// missing; the log says which mode xendevd runs in.
    fn start(&mut self, console_dir: &Path) {
        self.hotplug.start();
        self.noxs.start(console_dir);
    }

    fn handle(&mut self, request: Request) -> Answer {
        let answer = match request {
            Request::AttachDisk {
                path,
                readonly,
                domid,
            } => self
                .loops
                .attach(&path, readonly, domid)
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
            Request::Console { domid, follow } => {
                return match self.noxs.console_log(domid) {
                    Ok(log) => Answer::Console { domid, log, follow },
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
    connections: Vec<Connection>,
    services: Services,
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
            connections: Vec::new(),
            services: Services::new(options.loop_method, Some(options.state.clone())),
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
        self.services.start(&self.console_dir);
        self.services.loops.restore_state();
        if self.services.hotplug.xenstored() {
            self.services.hotplug.rescan("start");
        }
        let mut datagram = vec![0u8; netlink::DATAGRAM_MAX];
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let now = Instant::now();
            for connection in &mut self.connections {
                if connection.waiting.is_none() {
                    connection.session.check_time(now);
                }
            }
            self.poll_power(now);
            self.flush_and_reap(now);
            let timeout = self
                .connections
                .iter()
                .filter_map(|connection| {
                    let session = connection.session.deadline();
                    let power = connection.waiting.as_ref().map(PowerWait::deadline);
                    session.into_iter().chain(power).min()
                })
                .chain(self.services.noxs.deadline())
                .min()
                .map(|deadline| deadline.saturating_duration_since(now) + Duration::from_millis(1));
            let revents = self.wait(timeout)?;
            if revents.readable(Revents::SIGNAL)
                && let Ok(Some(info)) = self.signals.read_signal()
            {
                let name = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0))
                    .map_or("a signal", Signal::as_str);
                info!("{name}: shutting down");
                break;
            }
            if revents.flags[Revents::UEVENT].intersects(PollFlags::POLLIN | PollFlags::POLLERR) {
                self.drain_uevents(&mut datagram);
            }
            self.services.noxs.on_poll(&revents.noxs, &revents.flags);
            // Output that came before any request of this turn was answered.
            self.dispatch_events();
            if revents.readable(Revents::LISTEN) {
                self.accept();
            }
            let now = Instant::now();
            for (index, flags) in revents.flags[revents.connections..].iter().enumerate() {
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_connection(index, &mut chunk, now);
                }
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
                    for connection in &mut self.connections {
                        if connection.following == Some(domid) {
                            connection.session.send_raw(&bytes, now);
                        }
                    }
                }
                Event::Released { domid } => {
                    for connection in &mut self.connections {
                        if connection.following == Some(domid) {
                            connection.following = None;
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
        for (index, connection) in self.connections.iter_mut().enumerate() {
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
        let noxs = self.services.noxs.poll_fds(|fd| {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            fds.len() - 1
        });
        let connections = fds.len();
        for connection in &self.connections {
            let mut events = PollFlags::empty();
            if connection.session.reading() && connection.waiting.is_none() {
                events |= PollFlags::POLLIN;
            }
            if !connection.session.pending_output().is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(connection.stream.as_fd(), events));
        }
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(wait) => PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => bail!("poll: {errno}"),
        }
        Ok(Revents {
            flags: fds
                .iter()
                .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                .collect(),
            noxs,
            connections,
        })
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
                    self.connections.push(Connection::new(stream, session));
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

    fn read_connection(&mut self, index: usize, chunk: &mut [u8], now: Instant) {
        let connection = &mut self.connections[index];
        if !connection.session.reading() || connection.waiting.is_some() {
            return;
        }
        match (&connection.stream).read(chunk) {
            Ok(0) => {
                if let Some(error) = connection.session.end_of_input() {
                    debug!("client: {error}");
                    connection.session.refuse(&error, now);
                }
            }
            Ok(n) => {
                let requests = connection.session.receive(&chunk[..n], now);
                connection.queued.extend(requests);
                self.run_queued(index);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                debug!("client read: {err}: dropping it");
                self.connections[index].session.abort();
            }
        }
    }

    /// Answer a connection's queued requests in order, until one must wait.
    fn run_queued(&mut self, index: usize) {
        while self.connections[index].waiting.is_none() {
            let Some(request) = self.connections[index].queued.pop_front() else {
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
            let connection = &mut self.connections[index];
            match answer {
                Answer::Now(Ok(response)) => connection.session.respond(response, now),
                Answer::Now(Err(refusal)) => connection.session.refuse(&refusal, now),
                Answer::Power(wait) => connection.waiting = Some(wait),
                Answer::Console { domid, log, follow } => {
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
                    } else {
                        connection.session.end_stream();
                    }
                    return;
                }
            }
        }
    }

    /// Write what each connection is owed (as much as its socket takes); close the
    /// finished.
    fn flush_and_reap(&mut self, now: Instant) {
        self.connections.retain_mut(|connection| {
            while !connection.session.pending_output().is_empty() {
                match (&connection.stream).write(connection.session.pending_output()) {
                    Ok(n) => connection.session.wrote(n, now),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        debug!("client write: {err}: dropping it");
                        return false;
                    }
                }
            }
            !connection.session.finished()
        });
    }

    fn shutdown(&mut self) {
        self.services.noxs.release_all();
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
            },
        ] {
            assert!(matches!(
                services.handle(request),
                Answer::Now(Err(err)) if err.to_string()
                    == "this xendevd has no NoXS back ends (not started)"
            ));
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
