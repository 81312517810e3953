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

use crate::error::{Error, Result};
use crate::layout::Node;
use crate::xc::Xc;
use crate::xs::{Store, Xs};
use crate::xswire::{self, Wire};

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
}

impl Default for Options {
    fn default() -> Self {
        Self {
            xendevd_socket: PathBuf::from(xendevd::SOCKET_PATH),
            device_timeout: Duration::from_secs(20),
            console_timeout: Duration::from_secs(10),
            trace: false,
            batch_xenstore: std::env::var_os("CHAOS_XENSTORE").is_none_or(|v| v != "libxenstore"),
        }
    }
}

/// The handles of a chaos run.
#[derive(Debug)]
pub struct Host {
    pub xc: Xc,
    pub options: Options,
    /// Xenstore once asked for: the connection, or why there is none.
    xs: OnceCell<std::result::Result<Xs, String>>,
    /// xenstored's socket, for batches (see [`Options::batch_xenstore`]), connected
    /// with [`Host::xs`].
    wire: Mutex<Option<Wire>>,
    phases: Mutex<Vec<(String, Duration)>>,
}

impl Host {
    /// Open libxenctrl; Xenstore waits until something needs it.
    pub fn open(options: Options) -> Result<Self> {
        Ok(Self {
            xc: Xc::open()?,
            options,
            xs: OnceCell::new(),
            wire: Mutex::new(None),
            phases: Mutex::new(Vec::new()),
        })
    }

    fn connect_xenstore(&self) -> &std::result::Result<Xs, String> {
        self.xs.get_or_init(|| {
            self.timed("open Xenstore", || {
                let Some(wire) = Wire::connect() else {
                    return Err(Error::NoXenstore(format!(
                        "xenstored is not running (no socket of it accepts a connection: {})",
                        xswire::socket_paths()
                            .iter()
                            .map(|path| path.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                };
                let xs = Xs::open()?;
                if self.options.batch_xenstore {
                    *self.wire.lock().unwrap_or_else(PoisonError::into_inner) = Some(wire);
                }
                Ok(xs)
            })
            .map_err(|err| match err {
                Error::NoXenstore(why) => why,
                other => other.to_string(),
            })
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
        match wire.as_mut() {
            Some(wire) => wire.write_nodes(nodes),
            None => xs.in_transaction(|tx| {
                for node in nodes {
                    tx.write(&node.path, &node.value)?;
                    if let Some(perms) = &node.perms {
                        tx.set_perms(&node.path, perms)?;
                    }
                }
                Ok(())
            }),
        }
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
        result
    }

    /// The steps timed so far, and forget them.
    pub fn take_phases(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut *self.phases.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
