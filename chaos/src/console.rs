//! A guest's console, as xenconsoled serves it: xenconsoled maps the console ring the
//! domain's Xenstore nodes name, gives it a pty and writes the pty's path to
//! `/local/domain/N/console/tty`; chaos opens that pty (raw) and relays it to stdout —
//! the way `xenconsole` does, without needing a terminal. Everything xenconsoled has
//! buffered since the guest started comes out first, and a guest created paused and
//! unpaused once the console is open loses nothing.
//!
//! (xenconsoled's log under `/var/log/xen/console` would do too, but only where it was
//! started with `--log=guest`; the pty works with any xenconsoled.)
//!
//! The relay also watches the domain (`@releaseDomain`), so it knows when the guest
//! has shut down or was destroyed, and interrupting signals.
//!
//! A NoXS guest has no xenconsoled: xendevd is its console back end and keeps its
//! output from the first byte; chaos asks it for the stream (`Console`, with `follow`
//! and `input`) and relays that ([`open_noxs`], [`relay_stream`]), looking at the
//! domain every 20 ms.
//!
//! Both consoles take input: stdin goes to the guest ([`Input`]). A terminal on stdin
//! is made raw and Ctrl-] detaches, as with `xl console`; anything else (a pipe, a
//! file) goes to the guest as it comes, and when it ends the console goes on showing
//! output until the guest ends. Input is read only as fast as the console takes it:
//! xendevd takes a NoXS guest's input as the guest reads it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::domain::{self, Ending};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::layout;
use crate::signal;
use crate::uuid::Uuid;
use xenhost::xs::Store;

/// Ctrl-]: detaches an interactive console (xenconsole's escape character too).
pub const ESCAPE: u8 = 0x1d;

/// `/local/domain/N/console/tty`.
pub fn tty_path(domid: u32) -> String {
    format!("{}/console/tty", layout::dom_path(domid))
}

/// Put a terminal in raw mode; returns the old settings, or `None` if `fd` is no
/// terminal.
fn make_raw(fd: RawFd) -> Option<libc::termios> {
    // SAFETY: an all-zero termios is a valid value to be filled in by tcgetattr.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call; `old` is valid for writes.
    if unsafe { libc::tcgetattr(fd, &raw mut old) } != 0 {
        return None;
    }
    let mut raw = old;
    // SAFETY: `raw` is a valid termios.
    unsafe { libc::cfmakeraw(&raw mut raw) };
    // SAFETY: `fd` is open; `raw` is valid for reads.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw const raw) };
    Some(old)
}

/// Puts the terminal on stdin back as it was.
#[derive(Debug)]
struct RestoreStdin(libc::termios);

impl Drop for RestoreStdin {
    fn drop(&mut self) {
        // SAFETY: stdin stays open for the process's life; the settings came from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw const self.0) };
    }
}

/// What stdin sends the guest, on its way: read only while the console has taken
/// what came before.
#[derive(Debug)]
struct Input {
    /// A terminal (raw while the relay runs): Ctrl-] detaches.
    interactive: bool,
    /// Stdin has not ended.
    open: bool,
    /// Read from stdin, not yet taken by the console.
    pending: Vec<u8>,
    _restore: Option<RestoreStdin>,
}

impl Input {
    /// Stdin, made raw if it is a terminal.
    fn stdin() -> Self {
        // SAFETY: isatty only inspects the descriptor.
        let interactive = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        let mut input = Self::new(interactive);
        if interactive {
            input._restore = make_raw(libc::STDIN_FILENO).map(RestoreStdin);
        }
        input
    }

    fn new(interactive: bool) -> Self {
        Self {
            interactive,
            open: true,
            pending: Vec::new(),
            _restore: None,
        }
    }

    /// Stdin's pollfd while more of it is wanted: it has not ended and the console
    /// took everything before.
    fn poll_stdin(&self) -> Option<libc::pollfd> {
        (self.open && self.pending.is_empty()).then_some(libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        })
    }

    /// The console's poll events: its output, and room for input while some waits.
    fn console_events(&self) -> libc::c_short {
        if self.pending.is_empty() {
            libc::POLLIN
        } else {
            libc::POLLIN | libc::POLLOUT
        }
    }

    /// Stdin is ready: read what it has. `Some(Stopped::Detached)` when the user typed
    /// the escape character or the terminal went away.
    fn read_stdin(&mut self) -> Option<Stopped> {
        let mut chunk = [0u8; 4096];
        // SAFETY: `chunk` is valid for writes of its length.
        let n = unsafe { libc::read(libc::STDIN_FILENO, chunk.as_mut_ptr().cast(), chunk.len()) };
        match usize::try_from(n) {
            Ok(n) => self.take(&chunk[..n]),
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => None,
            // Stdin unreadable (closed, or an error): it has nothing more to say.
            Err(_) => self.take(&[]),
        }
    }

    /// What a read of stdin gave (nothing: its end).
    fn take(&mut self, bytes: &[u8]) -> Option<Stopped> {
        if self.interactive {
            if bytes.is_empty() || bytes.contains(&ESCAPE) {
                return Some(Stopped::Detached);
            }
        } else if bytes.is_empty() {
            self.open = false;
        }
        self.pending.extend_from_slice(bytes);
        None
    }

    /// Hand the console what it takes of the pending input, without waiting. A
    /// console that takes no input any more (it is closing) ends the input; its end is
    /// the relay's business.
    fn pass_to(&mut self, console: &mut impl Write) {
        while !self.pending.is_empty() {
            match console.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pending.clear();
                    self.open = false;
                }
            }
        }
    }

    /// Stdin ended and the console took all of it.
    fn finished(&self) -> bool {
        !self.open && self.pending.is_empty()
    }
}

/// Wait (at most `timeout`) for xenconsoled to give domain `domid` a pty, and open it
/// raw and non-blocking.
pub fn open(host: &Host, domid: u32, timeout: Duration) -> Result<File> {
    let xs = host.xs()?;
    let path = tty_path(domid);
    let _watch = xs.watch(&path, "chaos-tty")?;
    let deadline = Instant::now() + timeout;
    let tty = xs.wait_until(
        deadline,
        Duration::from_millis(100),
        signal::or_interrupted(|| Ok(xs.read(&path)?.filter(|tty| !tty.is_empty()))),
    )?;
    let Some(tty) = tty else {
        return Err(Error::Timeout {
            what: format!(
                "xenconsoled did not write {path} (is xenconsoled running, and does the \
                 domain have console nodes?)"
            ),
            after: timeout,
        });
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&tty)
        .map_err(|err| Error::Device {
            device: "console".into(),
            message: format!("cannot open {tty} (from {path}): {err}"),
        })?;
    make_raw(file.as_raw_fd());
    Ok(file)
}

/// Why a relay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The domain shut down or was destroyed.
    Ended(Ending),
    /// xenconsoled closed the console (the domain is going or gone).
    Closed,
    /// The user typed the escape character.
    Detached,
    /// SIGINT, SIGTERM or SIGHUP.
    Interrupted(&'static str),
}

/// Copy what `tty` (a pty or xendevd's stream) says to `out` until `stop_after`
/// passes, or there was nothing for `quiet` (a final drain), or it closes. Returns
/// whether it closed.
pub fn drain(
    tty: &mut (impl Read + AsRawFd),
    out: &mut dyn Write,
    quiet: Duration,
    stop_after: Duration,
) -> bool {
    let deadline = Instant::now() + stop_after;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pollfd = libc::pollfd {
            fd: tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(quiet.min(left).as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
        if rc == 0 {
            return false;
        }
        if rc < 0 {
            if signal::caught().is_some() {
                return false;
            }
            continue;
        }
        match tty.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if pollfd.revents & libc::POLLHUP != 0 {
                    return true;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The events of a poll that mean a read will say something (data, its end, an error).
const READABLE: libc::c_short = libc::POLLIN | libc::POLLHUP | libc::POLLERR;

/// Relay `tty` to `out`, and stdin to the guest ([`Input`]: Ctrl-] detaches a terminal),
/// while watching domain `domid` (with handle `uuid`): stop when it ends, when
/// xenconsoled closes the console, or on a signal.
pub fn relay(
    host: &Host,
    domid: u32,
    uuid: Option<&Uuid>,
    tty: &mut File,
    out: &mut dyn Write,
) -> Result<Stopped> {
    let xs = host.xs()?;
    let _watch = xs.watch("@releaseDomain", "chaos-console")?;
    let xs_fd = xs.fileno()?;
    let mut input = Input::stdin();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(signal) = signal::caught() {
            return Ok(Stopped::Interrupted(signal));
        }
        let mut fds = vec![
            libc::pollfd {
                fd: tty.as_raw_fd(),
                events: input.console_events(),
                revents: 0,
            },
            libc::pollfd {
                fd: xs_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        fds.extend(input.poll_stdin());
        // SAFETY: `fds` holds `fds.len()` valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if rc < 0 {
            continue; // EINTR: the signal check above decides.
        }
        let output = fds[0].revents & READABLE != 0;
        if output && let Some(stopped) = pass_on(tty, &mut buf, out)? {
            return Ok(stopped);
        }
        if fds.get(2).is_some_and(|stdin| stdin.revents != 0)
            && let Some(stopped) = input.read_stdin()
        {
            return Ok(stopped);
        }
        input.pass_to(tty);
        // A busy console: the domain is looked at when the watch fires.
        if !output && (fds[1].revents != 0 || rc == 0) {
            xs.drain_events()?;
            if let Some(ending) = domain::check_ending(host, domid, uuid)? {
                return Ok(Stopped::Ended(ending));
            }
        }
    }
}

/// How often the NoXS relay looks at the domain.
const NOXS_POLL: Duration = Duration::from_millis(20);

/// A NoXS domain's console from xendevd: its output from the first byte, then what
/// follows; the returned stream is non-blocking, and `pending` holds what came with
/// xendevd's answer.
pub fn open_noxs(host: &Host, domid: u32) -> Result<(UnixStream, Vec<u8>)> {
    let streaming = host.timed("xendevd console", || {
        host.xendevd.console(domid, true, true).map_err(|err| {
            Error::Xendevd(format!(
                "domain {domid}'s console (a NoXS console comes from xendevd): {err}"
            ))
        })
    })?;
    let (stream, pending) = streaming.into_parts();
    stream
        .set_nonblocking(true)
        .map_err(|err| Error::Xendevd(format!("domain {domid}'s console stream: {err}")))?;
    Ok((stream, pending))
}

/// Relay xendevd's console stream of NoXS domain `domid` (handle `uuid`) to `out`,
/// `pending` first, and stdin to the guest ([`Input`]: Ctrl-] detaches a terminal),
/// until the domain ends, xendevd closes the stream, or a signal. Once stdin has ended
/// and xendevd took all of it, our sending side of the stream is closed: xendevd
/// stops reading it, and the output goes on.
pub fn relay_stream(
    host: &Host,
    domid: u32,
    uuid: Option<&Uuid>,
    stream: &mut UnixStream,
    pending: &[u8],
    out: &mut dyn Write,
) -> Result<Stopped> {
    write_out(out, pending)?;
    let mut input = Input::stdin();
    let mut input_closed = false;
    let mut buf = [0u8; 4096];
    let mut next_check = Instant::now();
    loop {
        if let Some(signal) = signal::caught() {
            return Ok(Stopped::Interrupted(signal));
        }
        let now = Instant::now();
        if now >= next_check {
            if let Some(ending) = domain::check_ending(host, domid, uuid)? {
                return Ok(Stopped::Ended(ending));
            }
            next_check = now + NOXS_POLL;
        }
        if input.finished() && !input_closed {
            // Nothing more to send: xendevd reads no more, and it may tell a client
            // that went away from one that is done typing.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            input_closed = true;
        }
        let mut fds = vec![libc::pollfd {
            fd: stream.as_raw_fd(),
            events: input.console_events(),
            revents: 0,
        }];
        fds.extend(input.poll_stdin());
        let millis = i32::try_from(
            next_check
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1),
        )
        .unwrap_or(i32::MAX);
        // SAFETY: `fds` holds `fds.len()` valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if rc <= 0 {
            continue; // a timeout, or EINTR: the checks above decide.
        }
        if fds[0].revents & READABLE != 0
            && let Some(stopped) = pass_on(stream, &mut buf, out)?
        {
            return Ok(stopped);
        }
        if fds.get(1).is_some_and(|stdin| stdin.revents != 0)
            && let Some(stopped) = input.read_stdin()
        {
            return Ok(stopped);
        }
        input.pass_to(stream);
    }
}

/// Copy what `console` has ready to `out`; `Some(Stopped::Closed)` once it has ended
/// (EOF, or EIO when xenconsoled closes its end).
fn pass_on(
    console: &mut impl Read,
    buf: &mut [u8],
    out: &mut dyn Write,
) -> Result<Option<Stopped>> {
    match console.read(buf) {
        Ok(0) => Ok(Some(Stopped::Closed)),
        Ok(n) => write_out(out, &buf[..n]).map(|()| None),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(_) => Ok(Some(Stopped::Closed)),
    }
}

/// Write the guest's output to `out` at once.
fn write_out(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).map_err(|err| Error::Device {
        device: "console".into(),
        message: format!("writing to stdout: {err}"),
    })?;
    out.flush().ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console that takes `room` bytes, then would block; or fails (`room` None).
    struct Console {
        taken: Vec<u8>,
        room: Option<usize>,
    }

    impl Write for Console {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let Some(room) = &mut self.room else {
                return Err(io::ErrorKind::BrokenPipe.into());
            };
            if *room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = bytes.len().min(*room);
            *room -= n;
            self.taken.extend_from_slice(&bytes[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_terminal_detaches_on_the_escape_or_its_end() {
        let mut input = Input::new(true);
        assert_eq!(input.take(b"ls\r"), None);
        assert_eq!(input.take(b"x\x1dy"), Some(Stopped::Detached));
        assert_eq!(input.take(b""), Some(Stopped::Detached));
        assert_eq!(input.pending, b"ls\r");
    }

    /// Piped input is passed on as it is, the escape character too; its end ends the
    /// input only; stdin is not read while the console has not taken what came.
    #[test]
    fn piped_input_goes_as_it_comes_and_its_end_is_no_detach() {
        let mut input = Input::new(false);
        assert!(input.poll_stdin().is_some());
        assert_eq!(input.take(b"alpha\n\x1d"), None);
        assert!(input.poll_stdin().is_none());
        assert_eq!(input.console_events(), libc::POLLIN | libc::POLLOUT);
        let mut console = Console {
            taken: Vec::new(),
            room: Some(3),
        };
        input.pass_to(&mut console);
        assert_eq!(console.taken, b"alp");
        assert!(input.poll_stdin().is_none());
        console.room = Some(100);
        input.pass_to(&mut console);
        assert_eq!(console.taken, b"alpha\n\x1d");
        assert_eq!(input.console_events(), libc::POLLIN);
        assert!(!input.finished());
        assert_eq!(input.take(b""), None);
        assert!(input.finished());
        assert!(input.poll_stdin().is_none());
    }

    /// A console that takes no more input (xendevd closed the stream) ends the input,
    /// with no spin on what is left.
    #[test]
    fn a_closed_console_ends_the_input() {
        let mut input = Input::new(false);
        input.take(b"lost");
        input.pass_to(&mut Console {
            taken: Vec::new(),
            room: None,
        });
        assert!(input.finished());
    }
}

/// A guest's console as chaos reads it: xenconsoled's pty (Xenstore guests) or
/// xendevd's stream (NoXS guests), opened before the guest runs so that its first line
/// is not lost.
#[derive(Debug)]
pub enum GuestConsole {
    Pty(File),
    Noxs(UnixStream, Vec<u8>),
}

impl GuestConsole {
    /// Open domain `domid`'s console the way its device method has it.
    pub fn open(host: &Host, domid: u32, dev_method: crate::config::DevMethod) -> Result<Self> {
        Ok(match dev_method {
            crate::config::DevMethod::Noxs => {
                let (stream, pending) = open_noxs(host, domid)?;
                Self::Noxs(stream, pending)
            }
            crate::config::DevMethod::Xenstore => {
                Self::Pty(open(host, domid, host.options.console_timeout)?)
            }
        })
    }

    /// Relay it to `out` ([`relay`], [`relay_stream`]) until the domain (handle
    /// `uuid`) ends, then its last lines once it ended or closed: xenconsoled or
    /// xendevd may still be copying the ring when the end is seen.
    pub fn relay(
        self,
        host: &Host,
        domid: u32,
        uuid: Option<&Uuid>,
        out: &mut dyn Write,
    ) -> Result<Stopped> {
        let (quiet, at_most) = (Duration::from_millis(200), Duration::from_secs(2));
        let ended = |stopped: &Stopped| matches!(stopped, Stopped::Ended(_) | Stopped::Closed);
        match self {
            Self::Pty(mut tty) => {
                let stopped = relay(host, domid, uuid, &mut tty, out)?;
                if ended(&stopped) {
                    drain(&mut tty, out, quiet, at_most);
                }
                Ok(stopped)
            }
            Self::Noxs(mut stream, pending) => {
                let stopped = relay_stream(host, domid, uuid, &mut stream, &pending, out)?;
                if ended(&stopped) {
                    drain(&mut stream, out, quiet, at_most);
                }
                Ok(stopped)
            }
        }
    }
}
