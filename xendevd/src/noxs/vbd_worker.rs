//! A vbd's data path in a thread of its own, so that disk I/O never runs in the
//! daemon's loop: a slow or hung disk (a frozen file system, a suspended device-mapper
//! target) stalls only the guests on it, while the loop goes on serving consoles,
//! vifs, power requests, the API and signals.
//!
//! Why a thread per connected vbd rather than io_uring or POSIX AIO: blkback's work
//! per request is a grant copy and a `pread`/`pwrite`/`fdatasync` in order, and a
//! thread keeps that straight-line code (the same pure engine the tests and the fuzzer
//! drive) with no completion bookkeeping; the queue between guest and disk is the
//! guest's ring itself (32 slots, bounded by the protocol); and the kernel schedules
//! the threads fairly. A thread costs a stack (reserved, little of it touched) and
//! three descriptors; guests without disks cost nothing.
//!
//! The worker opens its own event-channel and grant handles, maps the ring, binds the
//! guest's data port and serves until told to stop — nothing of it is shared with the
//! loop but two eventfds: its stop bell, and the [`Mailbox`] through which it says
//! that the guest broke its ring.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;

use log::{debug, error};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use xendevd::engine::blkback::{Blkback, Geometry};
use xenhost::evtchn::Evtchn;
use xenhost::gnttab::Gnttab;

use super::BUDGET;
use super::copier::Copier;
use super::error::DeviceError;

/// A guest broke the ring of one of its vbds (the worker has stopped serving it).
#[derive(Debug)]
pub struct Broken {
    pub domid: u32,
    /// Which worker: a later connection of the same vbd has another.
    pub worker: u64,
    pub why: String,
}

/// What workers tell the loop: a queue, and an eventfd in the loop's epoll set that
/// rings when the queue has something.
#[derive(Debug)]
pub struct Mailbox {
    bell: EventFd,
    queue: Mutex<Vec<Broken>>,
}

impl Mailbox {
    pub fn new() -> nix::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            bell: EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            queue: Mutex::new(Vec::new()),
        }))
    }

    /// The descriptor the loop waits on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.bell.as_fd()
    }

    fn post(&self, broken: Broken) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(broken);
        let _ = self.bell.write(1);
    }

    /// Everything posted since the last call.
    pub fn take(&self) -> Vec<Broken> {
        let _ = self.bell.read();
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Where a worker serves: the guest's ring and data port, the disk.
#[derive(Debug)]
pub struct Assignment {
    pub domid: u32,
    pub devid: u32,
    pub ring_gref: u32,
    pub data_port: u32,
    pub geometry: Geometry,
    pub disk: File,
}

/// A running worker. Dropping it rings its stop bell and lets the thread go: it stops
/// after the request in hand, so a hung disk holds only its own thread (and the
/// guest's ring, mapped until then).
#[derive(Debug)]
pub struct VbdWorker {
    id: u64,
    stop: Arc<EventFd>,
}

static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

impl VbdWorker {
    /// Start a worker on `assignment`; returns once it has mapped the ring and bound
    /// the port (or with why it could not).
    pub fn start(assignment: Assignment, mailbox: &Arc<Mailbox>) -> Result<Self, DeviceError> {
        let spawn_failed = |err: &dyn std::fmt::Display| DeviceError::Worker(err.to_string());
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|err| spawn_failed(&err))?,
        );
        let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let worker = Worker {
            id,
            stop: Arc::clone(&stop),
            mailbox: Arc::clone(mailbox),
        };
        thread::Builder::new()
            .name(format!("vbd-{}-{}", assignment.domid, assignment.devid))
            // Its own frames are small; the request buffer is on the heap.
            .stack_size(256 * 1024)
            .spawn(move || worker.run(assignment, &ready_tx))
            .map_err(|err| spawn_failed(&err))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { id, stop }),
            Ok(Err(err)) => Err(err),
            Err(err) => Err(spawn_failed(&err)),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for VbdWorker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
    }
}

/// The thread's side.
struct Worker {
    id: u64,
    stop: Arc<EventFd>,
    mailbox: Arc<Mailbox>,
}

impl Worker {
    fn run(self, mut assignment: Assignment, ready: &mpsc::SyncSender<Result<(), DeviceError>>) {
        let domid = assignment.domid;
        let gref = assignment.ring_gref;
        let opened = Evtchn::open()
            .and_then(|evtchn| Ok((evtchn, Gnttab::open()?)))
            .map_err(|err| DeviceError::Worker(err.to_string()));
        let (evtchn, gnttab) = match opened {
            Ok(handles) => handles,
            Err(err) => return drop(ready.send(Err(err))),
        };
        let rings = match gnttab.map(domid, &[gref], true) {
            Ok(rings) => rings,
            Err(source) => return drop(ready.send(Err(DeviceError::MapRing { gref, source }))),
        };
        let port = match evtchn.bind_interdomain(domid, assignment.data_port) {
            Ok(port) => port,
            Err(source) => {
                let port = assignment.data_port;
                return drop(ready.send(Err(DeviceError::BindPort { port, source })));
            }
        };
        // SAFETY: the mapping is one page, page aligned, read-write, and outlives the
        // engine (dropped at the end of this function, after it).
        let mut engine = unsafe { Blkback::new(rings.as_ptr(), assignment.geometry) };
        let guest = u16::try_from(domid).expect("checked at create");
        let mut memory = Copier::new(Rc::clone(&gnttab), guest);
        let _ = ready.send(Ok(()));
        // Requests queued before we were ready are served first.
        let mut more = true;
        loop {
            if more {
                match engine.serve(&mut memory, &mut assignment.disk, BUDGET) {
                    Ok(progress) => {
                        if progress.notify {
                            let _ = port.notify();
                        }
                        more = progress.more;
                    }
                    Err(overrun) => {
                        self.mailbox.post(Broken {
                            domid,
                            worker: self.id,
                            why: DeviceError::Ring(overrun).to_string(),
                        });
                        self.wait_for_stop(None);
                        break;
                    }
                }
            }
            // Without work left, sleep until the guest or the loop rings.
            let timeout = if more {
                PollTimeout::ZERO
            } else {
                PollTimeout::NONE
            };
            match self.wait_for_stop(Some((evtchn.fd(), timeout))) {
                Wake::Stop => break,
                Wake::Guest => {
                    while let Ok(Some(fired)) = evtchn.pending() {
                        let _ = evtchn.unmask(fired);
                        more = true;
                    }
                }
                Wake::Nothing => {}
            }
        }
        debug!(
            "domain {domid} vbd {}: worker {} stopped",
            assignment.devid, self.id
        );
        // The engine refers to the ring: it goes first.
        drop(engine);
        drop(rings);
    }

    /// Wait for the stop bell, and for `guest`'s descriptor if given.
    fn wait_for_stop(&self, guest: Option<(BorrowedFd<'_>, PollTimeout)>) -> Wake {
        loop {
            let mut fds = vec![PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            let timeout = guest.map_or(PollTimeout::NONE, |(fd, timeout)| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                timeout
            });
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    error!("vbd worker {}: poll: {errno}: stopping", self.id);
                    return Wake::Stop;
                }
            }
            let fired = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if fired(&fds[0]) {
                return Wake::Stop;
            }
            return if fds.get(1).is_some_and(fired) {
                Wake::Guest
            } else {
                Wake::Nothing
            };
        }
    }
}

enum Wake {
    Stop,
    Guest,
    Nothing,
}
