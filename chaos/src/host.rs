//! What one chaos run works with: the hypervisor (libxenctrl), Xenstore, where xendevd
//! listens, the time limits, and a record of how long each step took.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::layout::Node;
use crate::xc::Xc;
use crate::xs::{Store, Xs};
use crate::xswire::Wire;

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
    pub xs: Xs,
    pub options: Options,
    /// xenstored's socket, for batches (see [`Options::batch_xenstore`]).
    wire: Mutex<Option<Wire>>,
    phases: Mutex<Vec<(String, Duration)>>,
}

impl Host {
    /// Open libxenctrl and Xenstore.
    pub fn open(options: Options) -> Result<Self> {
        let wire = if options.batch_xenstore {
            Wire::connect()
        } else {
            None
        };
        Ok(Self {
            xc: Xc::open()?,
            xs: Xs::open()?,
            options,
            wire: Mutex::new(wire),
            phases: Mutex::new(Vec::new()),
        })
    }

    /// Write `nodes` (values, then permissions where given) in one transaction: as
    /// one batch on xenstored's socket if chaos has it, else through libxenstore.
    pub fn write_nodes(&self, nodes: &[Node]) -> Result<()> {
        let mut wire = self.wire.lock().unwrap_or_else(PoisonError::into_inner);
        match wire.as_mut() {
            Some(wire) => wire.write_nodes(nodes),
            None => self.xs.in_transaction(|tx| {
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

    /// How [`Host::write_nodes`] writes: for messages.
    pub fn xenstore_writer(&self) -> &'static str {
        if self
            .wire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            "batched on xenstored's socket"
        } else {
            "libxenstore"
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
