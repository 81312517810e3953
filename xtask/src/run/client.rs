//! The host side of a guest run: a [`Client`] that talks to the guest once its console
//! says it is ready, on a thread of its own ([`ClientThread`]), which then has dom0 stop
//! the guest (with the command [`Stop::argv`] names, in the lab or on this machine).

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use super::Ports;
use crate::lab::LabControl;
use crate::toolstack::{Stop, Toolstack};
use crate::util;

/// The host side of an integration test: once a console line of the guest contains
/// `ready_marker` (within `ready_timeout` of its start), `talk` runs on a thread of its
/// own with the guest's [`Ports`] — real clients on 127.0.0.1 — while the console keeps
/// streaming; when it returns (or panics), xtask has dom0 `stop` the guest. `talk` must
/// not hang: give its sockets timeouts.
pub struct Client<'a> {
    pub ready_marker: String,
    pub ready_timeout: Duration,
    pub talk: Talk<'a>,
    pub stop: Stop,
}

/// A client's code: real sockets against the guest's [`Ports`].
pub type Talk<'a> = Box<dyn FnOnce(&Ports) -> Result<()> + Send + 'a>;

impl fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("ready_marker", &self.ready_marker)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// Where dom0 is, for a client's thread: the lab's (through its control line), or this
/// machine.
#[derive(Debug, Clone)]
pub(super) enum Dom0 {
    Lab(LabControl),
    /// `chaos` is the binary built for this machine.
    Native {
        chaos: PathBuf,
    },
}

/// How a client's thread has dom0 stop its guest.
#[derive(Debug, Clone)]
pub(super) struct Stopper {
    pub dom0: Dom0,
    /// The toolstack that made the guest.
    pub toolstack: Toolstack,
    pub domain: String,
}

impl Stopper {
    /// Have dom0 `stop` the guest. In the lab dom0 acts on it asynchronously; natively
    /// the command runs to its end (`xl shutdown -w` returns once the guest has shut
    /// down). A command that fails where [`Stop::failure_matters`] says it does not (a
    /// destroy of a guest that has ended by itself) is no error.
    fn stop(&self, stop: Stop) -> Result<()> {
        let Self {
            dom0,
            toolstack,
            domain,
        } = self;
        match dom0 {
            Dom0::Lab(control) => control.stop(*toolstack, stop, domain),
            Dom0::Native { chaos } => {
                let (program, args) = stop
                    .argv(*toolstack)
                    .split_first()
                    .expect("a command has a program");
                let mut cmd = match toolstack {
                    Toolstack::Chaos => Command::new(chaos),
                    Toolstack::Xl => Command::new(program),
                };
                cmd.args(args.iter()).arg(domain);
                let out = cmd
                    .stdin(Stdio::null())
                    .output()
                    .with_context(|| format!("cannot start {}", stop.command(*toolstack)))?;
                ensure!(
                    out.status.success() || !stop.failure_matters(),
                    "`{}` failed ({}): {}",
                    util::display(&cmd),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
        }
    }
}

/// What a client's thread reports.
#[derive(Debug)]
pub(super) struct ClientReport {
    pub result: Result<()>,
    /// When it asked dom0 to stop the guest.
    pub stop_sent: Option<Instant>,
}

/// A client on its own thread (see [`Client`]): it waits for the ready line (fed with
/// [`ClientThread::line`]) or the guest's end ([`ClientThread::ended`]), runs, then
/// has dom0 stop the guest.
pub(super) struct ClientThread<'scope> {
    events: Option<mpsc::Sender<()>>,
    marker: String,
    ready: bool,
    handle: thread::ScopedJoinHandle<'scope, ClientReport>,
}

impl<'scope> ClientThread<'scope> {
    pub(super) fn spawn<'env: 'scope>(
        scope: &'scope thread::Scope<'scope, 'env>,
        client: Client<'env>,
        ports: Ports,
        stopper: Stopper,
    ) -> Self {
        let (events, ready) = mpsc::channel::<()>();
        let marker = client.ready_marker.clone();
        let handle = scope.spawn(move || {
            let Client {
                ready_marker,
                ready_timeout,
                talk,
                stop,
            } = client;
            let result = match ready.recv_timeout(ready_timeout) {
                Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| talk(&ports)))
                    .unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|text| (*text).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(anyhow!("the client panicked: {message}"))
                    }),
                Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                    "the guest printed no line with {ready_marker:?} within {} s of its start",
                    ready_timeout.as_secs_f64()
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The guest has ended already: nothing to stop.
                    return ClientReport {
                        result: Err(anyhow!(
                            "the guest ended before it printed a line with {ready_marker:?}"
                        )),
                        stop_sent: None,
                    };
                }
            };
            let sent = Instant::now();
            let stop_sent = match stopper.stop(stop) {
                Ok(()) => Some(sent),
                Err(err) => {
                    eprintln!(
                        "run: {} {}: {err:#}",
                        stop.command(stopper.toolstack),
                        stopper.domain
                    );
                    None
                }
            };
            ClientReport { result, stop_sent }
        });
        Self {
            events: Some(events),
            marker,
            ready: false,
            handle,
        }
    }

    /// A console line of the guest.
    pub(super) fn line(&mut self, text: &str) {
        if !self.ready && text.contains(&self.marker) {
            self.ready = true;
            if let Some(events) = &self.events {
                let _ = events.send(());
            }
        }
    }

    /// The guest has ended.
    pub(super) fn ended(&mut self) {
        self.events = None;
    }

    pub(super) fn join(mut self) -> ClientReport {
        self.ended();
        self.handle.join().unwrap_or_else(|_| ClientReport {
            result: Err(anyhow!("the client's thread panicked")),
            stop_sent: None,
        })
    }
}
