//! The chaos daemon (`chaos daemon run`): split instantiation. It keeps pools of
//! *shells* — domains built ahead of their guests as far as a guest's [`Shape`]
//! allows — and turns one into the guest `chaos create` asks for, so a create pays
//! only for what depends on the guest itself. A configuration no shell fits is built
//! in full, as without the daemon; the guest is the same either way.
//!
//! What a shell holds, made ahead ([`shell::make`]):
//! - the domain (`xc_domain_create`, paused), its vCPUs, memory limit, memory map
//!   limit, TSC mode and CPUID policy;
//! - its console's (and with Xenstore, its Xenstore ring's) event channel;
//! - libxenguest's image with the memory populated: `xc_dom_allocate`, the PV
//!   container and ports, `boot_xen_init`, `mem_init` and `boot_mem_init`. Populating
//!   needs no kernel, only its guest type, which for a 64-bit PV kernel is always
//!   `xen-3.0-x86_64` ([`xenhost::xcdom::DomImage::populate_ahead`]); `parse_image`
//!   of the guest's kernel later must agree (else the shell is destroyed and the guest
//!   built in full);
//! - its devices: with NoXS, xendevd's control pages and event channels, one per
//!   device, and each vif's tap on its bridge (`noxs_shell`); with Xenstore, the
//!   domain's nodes under the shell's name and each vif's front and back end, which
//!   netback probes and xendevd puts on its bridge (the shell is *warming* until then).
//!
//! What a create does with it ([`shell::Shell::fill`]), after checking that no domain
//! has the guest's name:
//! - loads the command line and the kernel (and ramdisk) and parses it;
//! - applies the rest of the configuration: with Xenstore the name, each vif's MAC and
//!   address, and the disks (loop devices, front and back ends: a vbd's directory is
//!   named by its disk name and blkback opens its device once, so disks are never made
//!   ahead); with NoXS the name, console, MACs, addresses and disk targets go to
//!   xendevd (`noxs_fill`) and its answer becomes start_info's NoXS block;
//! - `build_image`, `boot_image` and `gnttab_init` (the kernel in memory, start_info,
//!   page tables, the vCPU's context, the console's grant), the device method's finish
//!   as for any guest (Xenstore: the rings' nodes, `xs_introduce_domain`, the disks'
//!   back ends ready), then unpauses it, answers, and refills the pool in the
//!   background: between requests, one shell at a time ([`pool::Pools::step`]).
//!
//! Shells are named `chaos-shell-DOMID` and recorded in `RUN_DIR/shells/`
//! ([`records`]): `chaos list` leaves them out, `chaos daemon status` shows them,
//! stopping the daemon destroys them, and a daemon that was killed has them destroyed
//! at its next start, or by `chaos destroy --orphans` ([`sweep`]).
//!
//! One worker thread owns the handles to Xen and the pools and does all the Xen work,
//! a request at a time, refilling when no request waits; the main thread accepts
//! connections, one thread each reading its request ([`wire`]).

pub mod pool;
pub mod records;
pub mod shell;
pub mod wire;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::domain::{self, Created, Ending};
use crate::error::Error;
use crate::host::{Host, Options as HostOptions};
use crate::shape::{PoolSpec, Shape};
use crate::signal;
use crate::uuid::Uuid;

use pool::Pools;
use records::Records;
use shell::FillError;
use wire::{Failure, Made, Request, Response, RunDir, Status, Step};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the worker sleeps when it has nothing to do.
const IDLE: Duration = Duration::from_secs(1);

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub run_dir: RunDir,
    pub pools: Vec<PoolSpec>,
    pub xendevd_socket: PathBuf,
    /// How long a device's back end may take to come up (a shell's, or a guest's).
    pub device_timeout: Duration,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {}: {source}", dir.display())]
    RunDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("a chaos daemon runs already ({} is locked)", lock.display())]
    Running { lock: PathBuf },
    #[error("cannot lock {}: {source}", lock.display())]
    Lock {
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {}: {source}", socket.display())]
    Listen {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Chaos(#[from] Error),
    #[error("the worker thread ended before it was ready")]
    WorkerGone,
    #[error("cannot start the worker thread: {0}")]
    Thread(std::io::Error),
}

/// A request for the worker, and where its answer goes.
struct Job {
    request: Request,
    answer: Sender<Response>,
    /// When its connection had read it: the time to the worker is a step of a create.
    received: Instant,
}

/// Hold the run directory's lock: the daemon runs, or `chaos destroy --orphans` sweeps.
/// The lock goes with the file (at exit).
pub fn lock(run_dir: &RunDir) -> Result<std::fs::File, StartError> {
    std::fs::create_dir_all(&run_dir.0).map_err(|source| StartError::RunDir {
        dir: run_dir.0.clone(),
        source,
    })?;
    let lock = run_dir.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| StartError::Lock {
            lock: lock.clone(),
            source,
        })?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = std::io::Error::last_os_error();
        return Err(if source.kind() == std::io::ErrorKind::WouldBlock {
            StartError::Running { lock }
        } else {
            StartError::Lock { lock, source }
        });
    }
    Ok(file)
}

/// Destroy the shells `records` lists (a daemon that died left them) and their
/// records: how many were destroyed, and the failures.
pub fn sweep(host: &Host, records: &Records) -> Result<(usize, Vec<String>), Error> {
    let mut destroyed = 0;
    let mut failures = Vec::new();
    for record in records.list()? {
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                failures.push(err.to_string());
                continue;
            }
        };
        let uuid = Uuid::parse(&record.uuid);
        match domain::destroy_known(host, record.domid, uuid.as_ref(), record.dev_method) {
            Ok(()) => {
                records.remove(record.domid)?;
                destroyed += 1;
            }
            Err(err) => failures.push(format!("shell {}: {err}", record.domid)),
        }
    }
    Ok((destroyed, failures))
}

/// Run the daemon until `chaos daemon stop`, SIGTERM, SIGINT or SIGHUP: sweep what a
/// killed daemon left, listen, keep the pools full, serve.
pub fn run(options: Options) -> Result<(), StartError> {
    let _lock = lock(&options.run_dir)?;
    signal::install();
    let (jobs, jobs_in) = mpsc::channel::<Job>();
    let (ready, ready_in) = mpsc::channel::<Result<(), Error>>();
    let worker_options = options.clone();
    let worker = std::thread::Builder::new()
        .name("chaos-worker".into())
        .spawn(move || work(&worker_options, &jobs_in, &ready))
        .map_err(StartError::Thread)?;
    ready_in.recv().map_err(|_| StartError::WorkerGone)??;
    let socket = options.run_dir.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| StartError::Listen {
        socket: socket.clone(),
        source,
    })?;
    // Only root (who may create domains anyway) may ask.
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600));
    eprintln!(
        "chaos daemon: listening on {} (pid {}); pools: {}",
        socket.display(),
        std::process::id(),
        if options.pools.is_empty() {
            "none".to_owned()
        } else {
            options
                .pools
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen {
            socket: socket.clone(),
            source,
        })?;
    let mut stop_sent = false;
    while !worker.is_finished() {
        if let Some(signal) = signal::caught()
            && !stop_sent
        {
            eprintln!("chaos daemon: {signal}: destroying the shells, stopping");
            let (answer, _) = mpsc::channel();
            let _ = jobs.send(Job {
                request: Request::Stop,
                answer,
                received: Instant::now(),
            });
            stop_sent = true;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let jobs = jobs.clone();
                let _ = std::thread::Builder::new()
                    .name("chaos-client".into())
                    .spawn(move || serve_connection(stream, &jobs));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => eprintln!("chaos daemon: accept: {err}"),
        }
    }
    let _ = std::fs::remove_file(&socket);
    let _ = worker.join();
    eprintln!("chaos daemon: stopped");
    Ok(())
}

/// Wait at most 200 ms for a connection (a signal ends the wait early).
fn wait_readable(listener: &UnixListener) {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    unsafe { libc::poll(&raw mut poll, 1, 200) };
}

/// One connection: its request line to the worker, the worker's answers back (one,
/// or two for a create that waits), each a line.
fn serve_connection(stream: UnixStream, jobs: &Sender<Job>) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut line = String::new();
    let refused = |why: String| vec![Response::Refused(why)];
    let answers = match BufReader::new(&stream).read_line(&mut line) {
        Ok(0) => return,
        Err(err) => refused(format!("reading the request: {err}")),
        Ok(_) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(err) => refused(format!("not a request of chaos's daemon: {err}")),
            Ok(request) => {
                let (answer, answers) = mpsc::channel();
                let received = Instant::now();
                if jobs
                    .send(Job {
                        request,
                        answer,
                        received,
                    })
                    .is_err()
                {
                    refused("the daemon is stopping".into())
                } else {
                    // Written as they come: the worker drops its end after the last.
                    for response in answers {
                        if write_answer(&stream, &response).is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        },
    };
    for response in answers {
        let _ = write_answer(&stream, &response);
    }
}

fn write_answer(mut stream: &UnixStream, response: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_string(response).expect("an answer serializes");
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// The worker: open Xen's handles, sweep, then serve requests and refill the pools.
fn work(options: &Options, jobs: &Receiver<Job>, ready: &Sender<Result<(), Error>>) {
    let host = match Host::open(HostOptions {
        xendevd_socket: options.xendevd_socket.clone(),
        device_timeout: options.device_timeout,
        run_dir: options.run_dir.0.clone(),
        ..HostOptions::default()
    }) {
        Ok(host) => host,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let records = Records::new(options.run_dir.shells());
    match sweep(&host, &records) {
        Ok((destroyed, failures)) => {
            if destroyed > 0 {
                eprintln!("chaos daemon: destroyed {destroyed} shell(s) a daemon before left");
            }
            for failure in failures {
                eprintln!("chaos daemon: sweeping: {failure}");
            }
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    }
    let mut pools = Pools::new(&options.pools, options.device_timeout);
    let mut counts = (0u64, 0u64);
    let mut waiting: Vec<Waiting> = Vec::new();
    let _ = ready.send(Ok(()));
    loop {
        let now = Instant::now();
        // While a client waits for a guest's end, only an empty pool is refilled: a
        // shell made meanwhile would hold up the look at that end by its making.
        let urgent_only = !waiting.is_empty();
        let mut wait = pools
            .next_work(now, urgent_only)
            .map_or(IDLE, |at| at.saturating_duration_since(now).min(IDLE));
        if !waiting.is_empty() {
            wait = wait.min(domain::POLL_END);
        }
        match jobs.recv_timeout(wait) {
            Ok(Job {
                request,
                answer,
                received,
            }) => {
                let stop = request == Request::Stop;
                let response = match request {
                    Request::Create {
                        guests,
                        paused,
                        wait,
                    } => {
                        let response = create(
                            &host,
                            &mut pools,
                            &records,
                            (guests, received),
                            paused,
                            &mut counts,
                        );
                        if let Response::Created {
                            guests,
                            failure: None,
                        } = &response
                            && let [made] = guests.as_slice()
                            && wait
                        {
                            waiting.push(Waiting {
                                domid: made.domid,
                                uuid: Uuid::parse(&made.uuid),
                                dev_method: made.dev_method,
                                answer: answer.clone(),
                                made: Instant::now(),
                            });
                        }
                        response
                    }
                    Request::Destroy { domid } => {
                        waiting.retain(|waiting| waiting.domid != domid);
                        match domain::destroy_domain(&host, domid, None) {
                            Ok(()) => Response::Destroyed,
                            Err(err) => Response::Refused(err.to_string()),
                        }
                    }
                    Request::Status => Response::Status(Status {
                        pid: std::process::id(),
                        pools: pools.status(),
                        from_shells: counts.0,
                        in_full: counts.1,
                    }),
                    Request::Stop => Response::Stopped {
                        shells_destroyed: pools.destroy_all(&host, &records),
                    },
                };
                let _ = answer.send(response);
                if stop {
                    return;
                }
                if !waiting.is_empty() {
                    look_at_waiting(&host, &mut waiting);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if !waiting.is_empty() {
                    look_at_waiting(&host, &mut waiting);
                }
                pools.step(&host, &records, !waiting.is_empty());
            }
            Err(RecvTimeoutError::Disconnected) => {
                pools.destroy_all(&host, &records);
                return;
            }
        }
    }
}

/// The time from a guest's creation to the daemon's noticing its end: the guest's own
/// run, and up to one poll interval ([`domain::POLL_END`]).
const WAIT_STEP: &str = "the guest's run, until the daemon notices its end";

/// A guest made with `wait`, and where the news of its end goes.
struct Waiting {
    domid: u32,
    uuid: Option<Uuid>,
    dev_method: crate::config::DevMethod,
    answer: Sender<Response>,
    /// When the guest was made: its end is timed from here.
    made: Instant,
}

/// Answer for each waited-for guest that has ended, once it is destroyed (as `chaos
/// create --wait` does itself).
fn look_at_waiting(host: &Host, waiting: &mut Vec<Waiting>) {
    waiting.retain(|guest| {
        let response = match domain::check_ending(host, guest.domid, guest.uuid.as_ref()) {
            Ok(None) => return true,
            Ok(Some(ending)) => {
                let noticed = guest.made.elapsed();
                let destroying = Instant::now();
                match domain::destroy_known(
                    host,
                    guest.domid,
                    guest.uuid.as_ref(),
                    guest.dev_method,
                ) {
                    Ok(()) => Response::Ended {
                        shutdown_code: match ending {
                            Ending::Shutdown(reason) => Some(reason.code()),
                            Ending::Destroyed => None,
                        },
                        steps: [
                            (WAIT_STEP, noticed),
                            ("destroy the guest", destroying.elapsed()),
                        ]
                        .into_iter()
                        .map(|(name, took)| Step {
                            name: name.to_owned(),
                            ms: took.as_secs_f64() * 1e3,
                        })
                        .collect(),
                    },
                    Err(err) => Response::Refused(format!(
                        "domain {} ended; destroying it: {err}",
                        guest.domid
                    )),
                }
            }
            Err(err) => Response::Refused(format!("watching domain {}: {err}", guest.domid)),
        };
        let _ = guest.answer.send(response);
        false
    });
}

/// `Create`: each guest in order, stopping at the first that fails.
fn create<'h>(
    host: &'h Host,
    pools: &mut Pools<'h>,
    records: &Records,
    (guests, received): (Vec<serde_json::Value>, Instant),
    paused: bool,
    (from_shells, in_full): &mut (u64, u64),
) -> Response {
    let mut made = Vec::new();
    let mut failure = None;
    // The first guest's steps start where its request was read off the socket.
    let mut queued = Some(received.elapsed());
    for guest in guests {
        let parsing = Instant::now();
        let config = match Config::parse(&guest.to_string()) {
            Ok(config) => config,
            Err(err) => {
                failure = Some(Failure::Config {
                    field: err.field,
                    message: err.message,
                });
                break;
            }
        };
        host.take_phases();
        let started = Instant::now();
        match create_one(host, pools, records, &config, paused) {
            Ok((created, from_shell)) => {
                *if from_shell {
                    &mut *from_shells
                } else {
                    &mut *in_full
                } += 1;
                let took = started.elapsed();
                let early = [
                    queued
                        .take()
                        .map(|took| ("from the socket to the worker".to_owned(), took)),
                    Some(("parse and check the config".to_owned(), started - parsing)),
                ];
                let early_steps = early.iter().flatten().count();
                let mut steps: Vec<Step> = early
                    .into_iter()
                    .flatten()
                    .chain(host.take_phases())
                    .map(|(name, took)| Step {
                        name,
                        ms: took.as_secs_f64() * 1e3,
                    })
                    .collect();
                // What the steps leave out, so that they add up to the daemon's time.
                let timed: f64 = steps.iter().skip(early_steps).map(|step| step.ms).sum();
                steps.push(Step {
                    name: "between the steps".into(),
                    ms: (took.as_secs_f64() * 1e3 - timed).max(0.0),
                });
                made.push(Made {
                    domid: created.domid,
                    name: created.name,
                    uuid: created.uuid.to_string(),
                    paused: created.paused,
                    macs: created.macs,
                    dev_method: created.dev_method,
                    from_shell,
                    steps,
                });
            }
            Err(err) => {
                failure = Some(match err {
                    Error::Config(err) => Failure::Config {
                        field: err.field,
                        message: err.message,
                    },
                    other => Failure::Failed(other.to_string()),
                });
                break;
            }
        }
    }
    Response::Created {
        guests: made,
        failure,
    }
}

/// One guest: from a shell of its shape if one is ready, else built in full. Whether
/// a shell became it.
fn create_one<'h>(
    host: &'h Host,
    pools: &mut Pools<'h>,
    records: &Records,
    config: &Config,
    paused: bool,
) -> Result<(Created, bool), Error> {
    let shape = Shape::of(config);
    if let Some(shell) = pools.take(&shape) {
        // The name is claimed for the shell's domain (its handle), as a create claims
        // it for its own: one create per name, and the daemon's death while it fills
        // the shell leaves an orphan. A taken name costs no shell.
        let claim = match domain::claim_name(host, &config.name, &shell.uuid, shape.dev_method) {
            Ok(claim) => claim,
            Err(err) => {
                pools.give_back(shell);
                return Err(err);
            }
        };
        match shell.fill(host, config, paused, records) {
            Ok(created) => {
                drop(claim);
                return Ok((created, true));
            }
            Err(FillError::Failed(err)) => {
                if matches!(err, Error::CreateFailedLeaked { .. }) {
                    claim.abandon();
                }
                return Err(err);
            }
            Err(FillError::NotForShells { guest_type }) => {
                drop(claim);
                eprintln!(
                    "chaos daemon: {}'s kernel is {guest_type}, not what shells are built \
                     for: building it in full",
                    config.name
                );
            }
        }
    }
    Ok((domain::create(host, config, paused)?, false))
}
