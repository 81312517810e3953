//! What one chaos run works with: the hypervisor (libxenctrl), Xenstore, where xendevd
//! listens, the time limits, and a record of how long each step took.
//!
//! Xenstore is opened on first use, and only if xenstored's socket accepts a
//! connection: NoXS domains need no xenstored, so chaos works without one
//! ([`Host::xenstore`] is then `None`) and only what needs Xenstore fails, saying so
//! ([`Host::xs`]). (libxenstore's other way in, the kernel's xenbus device, would hang
//! on the first request when dom0's xenstored is not running; a xenstored in a stub
//! domain, which has no socket in dom0, is not supported.)

use std::cell::OnceCell;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use xendevd::client::Client;
use xenhost::xc::Xc;
use xenhost::xs::wire::Wire;
use xenhost::xs::{Node, Xs};

use crate::error::{Error, Result};

/// Settings of a chaos run.
#[derive(Debug, Clone)]
pub struct Options {
    /// xendevd's socket (file-backed disks).
    pub xendevd_socket: PathBuf,
    /// How long a device's back end may take to come up (vif hotplug by xendevd,
    /// blkback's probe), and xendevd to answer.
    pub device_timeout: Duration,
    /// How long xenconsoled may take to give a new guest's console a pty.
    pub console_timeout: Duration,
    /// Print each step's time on stderr as it ends.
    pub trace: bool,
    /// Write a transaction's nodes as one batch on xenstored's socket ([`Wire`]),
    /// when there is one; otherwise one libxenstore round trip per request
    /// (`CHAOS_XENSTORE=libxenstore` chooses that, to compare).
    pub batch_xenstore: bool,
    /// chaos's run directory (`chaos --run-dir`): the claims of creates under way
    /// ([`crate::claim`]), the chaos daemon's files.
    pub run_dir: PathBuf,
    /// A test hook: stop this process with a signal right after a step
    /// (`CHAOS_STOP_AFTER` / `CHAOS_PAUSE_AFTER`, see [`StopAfter`]).
    pub stop_after: Option<StopAfter>,
}

/// For tests of what a chaos killed (or stopped) at a given step leaves: right after
/// the [`Host::timed`] step `step` succeeded, this process sends itself `signal`.
/// `CHAOS_STOP_AFTER=STEP` sends SIGKILL, `CHAOS_PAUSE_AFTER=STEP` SIGSTOP (SIGCONT
/// resumes). STEP is a step's name as `chaos -v` prints it. Harmless: it only ever
/// ends or stops the process that was given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopAfter {
    pub step: String,
    pub signal: libc::c_int,
}

impl StopAfter {
    /// The hook the environment asks for, if any.
    pub fn from_env() -> Option<Self> {
        [
            ("CHAOS_STOP_AFTER", libc::SIGKILL),
            ("CHAOS_PAUSE_AFTER", libc::SIGSTOP),
        ]
        .into_iter()
        .find_map(|(var, signal)| {
            let step = std::env::var(var).ok().filter(|step| !step.is_empty())?;
            Some(Self { step, signal })
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            xendevd_socket: PathBuf::from(xendevd::SOCKET_PATH),
            device_timeout: Duration::from_secs(20),
            console_timeout: Duration::from_secs(10),
            trace: false,
            batch_xenstore: std::env::var_os("CHAOS_XENSTORE").is_none_or(|v| v != "libxenstore"),
            run_dir: PathBuf::from(crate::daemon::wire::RUN_DIR),
            stop_after: StopAfter::from_env(),
        }
    }
}

/// The handles of a chaos run.
#[derive(Debug)]
pub struct Host {
    pub xc: Xc,
    /// xendevd at [`Options::xendevd_socket`], answering within
    /// [`Options::device_timeout`].
    pub xendevd: Client,
    pub options: Options,
    /// Xenstore once asked for: the connection, or why there is none.
    xs: OnceCell<std::result::Result<Xs, String>>,
    /// xenstored's socket, for batches (see [`Options::batch_xenstore`]), connected
    /// with [`Host::xs`].
    wire: Mutex<Option<Wire>>,
    phases: Mutex<Vec<(String, Duration)>>,
}

impl Host {
    /// Open libxenctrl; Xenstore waits until something needs it. `CHAOS_XC_LOG=1`
    /// prints libxc's and libxenguest's own messages.
    pub fn open(options: Options) -> Result<Self> {
        let xc = if std::env::var_os("CHAOS_XC_LOG").is_some_and(|v| v == "1") {
            Xc::open_echoing("chaos")?
        } else {
            Xc::open()?
        };
        Ok(Self {
            xc,
            xendevd: Client::new(&options.xendevd_socket, options.device_timeout),
            options,
            xs: OnceCell::new(),
            wire: Mutex::new(None),
            phases: Mutex::new(Vec::new()),
        })
    }

    fn connect_xenstore(&self) -> &std::result::Result<Xs, String> {
        self.xs.get_or_init(|| {
            self.timed("open Xenstore", || {
                let xs = Xs::open()?;
                if self.options.batch_xenstore {
                    // Without it (xenstored just went), writes go through libxenstore
                    // and fail there if they must.
                    *self.wire.lock().unwrap_or_else(PoisonError::into_inner) =
                        Wire::connect().ok();
                }
                Ok(xs)
            })
            .map_err(|err| err.to_string())
        })
    }

    /// Xenstore, for what cannot do without it (the Xenstore device method, xenconsoled's
    /// consoles): an error naming the reason when xenstored is not running.
    pub fn xs(&self) -> Result<&Xs> {
        self.connect_xenstore()
            .as_ref()
            .map_err(|why| Error::NoXenstore(why.clone()))
    }

    /// Xenstore if xenstored is running, for what merely uses it when it is there
    /// (names of Xenstore domains, their records).
    pub fn xenstore(&self) -> Option<&Xs> {
        self.connect_xenstore().as_ref().ok()
    }

    /// Write `nodes` (values, then permissions where given) in one transaction: as
    /// one batch on xenstored's socket if chaos has it, else through libxenstore.
    pub fn write_nodes(&self, nodes: &[Node]) -> Result<()> {
        let xs = self.xs()?;
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(match wire.as_mut() {
            Some(wire) => wire.write_nodes(nodes),
            None => xs.write_nodes_at_once(nodes),
        }?)
    }

    /// Run `step`, recording (and with `trace`, printing) how long it took.
    pub fn timed<T>(&self, name: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = step();
        let took = started.elapsed();
        if self.options.trace {
            eprintln!(
                "chaos: {:>8.3} ms  {name}{}",
                took.as_secs_f64() * 1000.0,
                if result.is_err() { " (failed)" } else { "" }
            );
        }
        self.phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), took));
        if result.is_ok()
            && let Some(stop) = &self.options.stop_after
            && stop.step == name
        {
            eprintln!(
                "chaos: test hook: signal {} to myself after {name:?}",
                stop.signal
            );
            // SAFETY: raise only sends a signal to this process.
            unsafe { libc::raise(stop.signal) };
        }
        result
    }

    /// The steps timed so far, and forget them.
    pub fn take_phases(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut *self.phases.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
