//! `xendevd`: the device daemon in dom0.
//!
//! - vif hotplug: on netback's `online` uevent for a vif whose backend directory says
//!   `toolstack = "chaos"`, put it on the bridge named in `<backend>/bridge`, bring it
//!   up and write `hotplug-status = connected` (or `hotplug-error` and `error`);
//! - loop devices for file-backed disks, over the API of `xendevd::api` on a Unix socket;
//! - every back end of chaos's NoXS guests (`noxs/`): console, power control, vifs
//!   through taps, vbds from files or block devices — no Xenstore involved.
//!
//! The same binary is also a small client of that API (`query`, `attach`, …, `send`)
//! and a uevent monitor (`monitor`), for operators and the lab's tests.

mod bridge;
mod daemon;
mod disks;
mod image;
mod limits;
mod logging;
mod loopdev;
mod netlink;
mod noxs;
mod poller;
mod ratelimit;
mod session;
mod uevent;
mod vif;

use xendevd::api;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use log::LevelFilter;

use crate::api::{Request, Response};

/// The device daemon in dom0: vif hotplug for chaos's guests and loop devices for their
/// file-backed disks.
///
/// Without a command, runs the daemon: it listens on SOCKET for newline-delimited JSON
/// requests (attach_disk, detach_disk, release_domain, query, and for NoXS guests
/// noxs_create, noxs_shell, noxs_fill, power, console, domain, domains_named,
/// list_domains) and, when xenstored runs, watches the kernel's uevents for vifs whose
/// Xenstore backend says toolstack = "chaos". Without xenstored it serves NoXS guests
/// only (the log says which mode it runs in). It daemonizes and logs to syslog unless
/// --foreground. SIGTERM or SIGINT stop it cleanly (SIGHUP is logged and ignored): the
/// socket file goes, loop devices of running domains stay (and are logged), NoXS
/// domains are left to the next xendevd, which takes them back (their records in
/// --noxs-state, their taps kept) and offers their devices again.
///
/// Exit status: 0 success, 1 the daemon could not start or the request failed (its
/// answer is printed), 2 the daemon could not be reached or answered nonsense.
#[derive(Debug, Parser)]
#[command(name = "xendevd", version)]
struct Cli {
    /// Stay in the foreground and log to stderr.
    #[arg(long)]
    foreground: bool,
    /// The API's Unix socket.
    #[arg(long, value_name = "PATH", default_value = xendevd::SOCKET_PATH, global = true)]
    socket: PathBuf,
    /// Where the daemon records its loop devices, so that it knows them after a restart.
    #[arg(long, value_name = "PATH", default_value = "/run/xendevd.disks.json")]
    state: PathBuf,
    /// Where the daemon records the NoXS domains it serves (DOMID.json), so that the
    /// next xendevd takes them back: their devices reconnect (NoXS v1.1).
    #[arg(long, value_name = "DIR", default_value = "/run/xendevd/noxs")]
    noxs_state: PathBuf,
    /// Where NoXS guests' console logs go (NAME-DOMID.log, 1 MiB at most each).
    #[arg(long, value_name = "DIR", default_value = "/var/log/xendevd/console")]
    console_dir: PathBuf,
    /// Log every uevent and every vif left alone, too.
    #[arg(long, short)]
    verbose: bool,
    /// Seconds a client may take to finish a request line (or to read its answer).
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    request_timeout: u64,
    /// Bind loop devices with LOOP_SET_FD + LOOP_SET_STATUS64 only, not LOOP_CONFIGURE.
    #[arg(long, hide = true)]
    classic_loop: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what the daemon holds: its loop devices and vifs (JSON).
    Query,
    /// Attach an image file to a loop device for a domain; prints the device (JSON).
    Attach {
        /// The image: an absolute path to a regular file of whole 512-byte sectors.
        path: String,
        /// The domain the disk is for.
        #[arg(long)]
        domid: u32,
        /// Attach read-only.
        #[arg(long)]
        readonly: bool,
    },
    /// Detach a loop device the daemon attached.
    Detach {
        /// `/dev/loopN`.
        device: String,
    },
    /// Detach every loop device of a domain.
    Release { domid: u32 },
    /// Send standard input to the daemon as it is and print every line it answers (a
    /// tool for tests: malformed, partial or stalled requests).
    Send {
        /// Keep the connection open this many seconds after sending, before closing our
        /// side (a stalled client).
        #[arg(long, value_name = "SECS", default_value_t = 0.0)]
        hold: f64,
        /// Stop waiting for answers after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Print the kernel's uevents as they come, one per line (Ctrl-C stops).
    Monitor {
        /// Print each datagram as a Rust byte string, NULs and all.
        #[arg(long)]
        raw: bool,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None => run_daemon(&cli).map(|()| ExitCode::SUCCESS),
        Some(Command::Send { hold, timeout }) => send(&cli.socket, *hold, *timeout),
        Some(Command::Monitor { raw, count }) => monitor(*raw, *count).map(|()| ExitCode::SUCCESS),
        Some(command) => request(&cli.socket, command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xendevd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(cli: &Cli) -> Result<()> {
    logging::init(if cli.verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    });
    let options = daemon::Options {
        socket: cli.socket.clone(),
        state: cli.state.clone(),
        limits: session::Limits {
            request_timeout: Duration::from_secs(cli.request_timeout.max(1)),
            ..session::Limits::default()
        },
        loop_method: if cli.classic_loop {
            loopdev::Method::Classic
        } else {
            loopdev::Method::Auto
        },
        console_dir: cli.console_dir.clone(),
        noxs_state: cli.noxs_state.clone(),
    };
    // Each NoXS guest keeps files open: the soft default would stop xendevd early.
    match limits::raise_open_files() {
        Ok(open_files) => log::info!("{open_files}"),
        Err(errno) => log::warn!("cannot raise RLIMIT_NOFILE to the hard limit: {errno}"),
    }
    // Everything that can fail at start fails here, on the caller's terminal.
    let daemon = daemon::Daemon::setup(&options)?;
    if !cli.foreground {
        daemonize()?;
        logging::switch_to_syslog();
    }
    daemon.run()
}

/// Detach from the terminal: fork (the parent exits 0: the socket is bound already, so
/// a client may connect as soon as `xendevd` returns), `setsid`, fork again (no
/// controlling terminal can come back), `/` as working directory, stdio to /dev/null.
fn daemonize() -> Result<()> {
    use nix::unistd::{ForkResult, fork, setsid};
    // SAFETY: xendevd has one thread here (nothing has started another: libxenstore,
    // which may, is opened later), so the child may run anything.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().context("setsid")?;
    // SAFETY: as above; still one thread.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    std::env::set_current_dir("/").context("chdir /")?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("dup2")?;
    nix::unistd::dup2_stdout(&null).context("dup2")?;
    nix::unistd::dup2_stderr(&null).context("dup2")?;
    Ok(())
}

/// One request from the command line; print the answer.
fn request(socket: &Path, command: &Command) -> Result<ExitCode> {
    let request = match command {
        Command::Query => Request::Query,
        Command::Attach {
            path,
            domid,
            readonly,
        } => Request::AttachDisk {
            path: path.clone(),
            readonly: *readonly,
            domid: *domid,
        },
        Command::Detach { device } => Request::DetachDisk {
            device: device.clone(),
        },
        Command::Release { domid } => Request::ReleaseDomain { domid: *domid },
        Command::Send { .. } | Command::Monitor { .. } => unreachable!("handled in main"),
    };
    let client = xendevd::client::Client::new(socket, Duration::from_secs(30));
    let response = match client.call(&request) {
        Ok(response) => response,
        Err(err) => {
            eprintln!("xendevd: {err}");
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}", serde_json::to_string(&response)?);
    Ok(match response {
        Response::Error(message) => {
            eprintln!("xendevd: {message}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    })
}

/// Standard input to the daemon verbatim; every answer line to stdout.
fn send(socket: &Path, hold: f64, timeout: u64) -> Result<ExitCode> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input)?;
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(err) => {
            eprintln!(
                "xendevd: cannot reach xendevd at {}: {err}",
                socket.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    (&stream).write_all(&input)?;
    if hold > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(hold));
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut reader = BufReader::new(&stream);
    let mut stdout = std::io::stdout().lock();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!("xendevd: no more answers within {timeout} s");
            return Ok(ExitCode::from(2));
        }
        stream.set_read_timeout(Some(left))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(ExitCode::SUCCESS),
            Ok(_) => {
                stdout.write_all(line.as_bytes())?;
                stdout.flush()?;
            }
            Err(err) => {
                eprintln!("xendevd: reading answers: {err}");
                return Ok(ExitCode::from(2));
            }
        }
    }
}

/// Print uevents as they arrive.
fn monitor(raw: bool, count: Option<u64>) -> Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let socket = netlink::UeventSocket::open().context("opening the uevent socket")?;
    let mut buf = vec![0u8; netlink::DATAGRAM_MAX];
    let mut seen = 0;
    let mut stdout = std::io::stdout().lock();
    loop {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::NONE)?;
        loop {
            match socket.receive(&mut buf)? {
                netlink::Received::Kernel(len) => {
                    let bytes = &buf[..len];
                    if raw {
                        writeln!(stdout, "b\"{}\"", bytes.escape_ascii())?;
                    } else {
                        match uevent::Uevent::parse(bytes) {
                            Ok(event) => writeln!(stdout, "{event}")?,
                            Err(err) => {
                                writeln!(stdout, "unreadable ({err}): {}", bytes.escape_ascii())?;
                            }
                        }
                    }
                    stdout.flush()?;
                    seen += 1;
                    if count.is_some_and(|count| seen >= count) {
                        return Ok(());
                    }
                }
                netlink::Received::FromProcess(pid) => {
                    writeln!(stdout, "(a datagram from process {pid})")?;
                }
                netlink::Received::Overflow => writeln!(stdout, "(overflow: events lost)")?,
                netlink::Received::Nothing => break,
            }
        }
    }
}
