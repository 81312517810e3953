//! Vif hotplug for chaos's Xenstore guests (what a vif hotplug script does for xl's):
//! when netback's vif comes online (a kernel uevent) and its back-end directory says
//! `toolstack = "chaos"`, put it on the bridge that directory names, bring it up and
//! write `hotplug-status = connected` (or the error, for chaos to report); forget it
//! when it goes. A rescan of Xenstore adopts what was set up before a restart and
//! catches up with uevents that were lost. The decisions are `vif.rs`'s (pure); this
//! module reads and writes Xenstore and runs the bridge ioctls.
//!
//! It runs in a thread of its own ([`HotplugService`]): a Xenstore call blocks until
//! xenstored answers, and a hung or slow xenstored must stall vif hotplug only, never
//! the NoXS guests, the loop devices or the API in the daemon's loop.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use xenhost::xs::{Store, Xs};

use crate::api::Vif;
use crate::bridge::{self, Added, NetControl, Removed};
use crate::uevent::{self, Relevant, Uevent, VifAction, VifEvent};
use crate::vif::{self, BackendFacts, HotplugError, OnlinePlan, VifBook, node};

/// Events the loop may queue for the hotplug thread; past them it drops events and
/// asks for a rescan once the thread takes events again.
const QUEUE: usize = 1024;

/// How long the daemon's start waits for the hotplug thread's first rescan.
const START_WAIT: Duration = Duration::from_secs(2);

/// What the loop hands the hotplug thread.
#[derive(Debug)]
enum Job {
    Event(Relevant, Instant),
    Rescan(&'static str),
}

/// The loop's side of vif hotplug: uevents classified (pure, cheap) here, the relevant
/// ones handed to the thread, which publishes the vifs it holds after each job.
#[derive(Debug, Default)]
pub struct HotplugService {
    jobs: Option<SyncSender<Job>>,
    /// The vifs the thread holds, as of its last job.
    held: Arc<Mutex<Vec<Vif>>>,
    /// Events were dropped while the thread was behind: a rescan is owed.
    dropped: bool,
}

impl HotplugService {
    /// Start the thread: it connects to Xenstore if xenstored runs (the log says which
    /// mode xendevd runs in) and then rescans it, to adopt what was set up before. That
    /// is waited for, [`START_WAIT`] at most, so that the first `query` lists them.
    pub fn start(&mut self) {
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let (started, ready) = mpsc::sync_channel(1);
        let held = Arc::clone(&self.held);
        let spawned = thread::Builder::new()
            .name("vif-hotplug".into())
            .spawn(move || {
                let mut hotplug = VifHotplug::default();
                hotplug.start();
                if hotplug.xenstored {
                    hotplug.rescan("start");
                }
                hotplug.publish(&held);
                let _ = started.send(());
                for job in queue {
                    match job {
                        Job::Event(event, received) => hotplug.handle(event, received),
                        Job::Rescan(why) => hotplug.rescan(why),
                    }
                    hotplug.publish(&held);
                }
            });
        match spawned {
            Ok(_) => self.jobs = Some(jobs),
            Err(err) => {
                return error!("cannot start the vif hotplug thread: {err}: no vif hotplug");
            }
        }
        if ready.recv_timeout(START_WAIT).is_err() {
            warn!(
                "vif hotplug: Xenstore did not answer within {} s; it goes on without \
                 holding up the rest",
                START_WAIT.as_secs()
            );
        }
    }

    /// The vifs held, by domain.
    pub fn list(&self) -> Vec<Vif> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Log the vifs left on their bridges as the daemon stops.
    pub fn report_left(&self) {
        let vifs = self.list();
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

    /// A kernel uevent: a vif of netback came online or went offline, or a network
    /// device went away; anything else is no hotplug's business.
    pub fn on_uevent(&mut self, bytes: &[u8], received: Instant) {
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
            Ok(Relevant::Other) => {}
            Ok(relevant) => self.send(Job::Event(relevant, received)),
            Err(err) => warn!("{err}"),
        }
    }

    /// Look through Xenstore again (uevents were lost).
    pub fn rescan(&mut self, why: &'static str) {
        self.send(Job::Rescan(why));
    }

    fn send(&mut self, job: Job) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        match jobs.try_send(job) {
            Ok(()) => {
                if self.dropped
                    && jobs
                        .try_send(Job::Rescan("after events were dropped"))
                        .is_ok()
                {
                    self.dropped = false;
                }
            }
            Err(TrySendError::Full(_)) => {
                if !self.dropped {
                    warn!(
                        "vif hotplug is {QUEUE} events behind (is xenstored hung?): events \
                         dropped until it catches up, then a rescan"
                    );
                    self.dropped = true;
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                error!("the vif hotplug thread is gone: no vif hotplug");
                self.jobs = None;
            }
        }
    }
}

/// The vifs xendevd put on bridges, and the connections it does that with (the
/// hotplug thread's).
#[derive(Debug, Default)]
struct VifHotplug {
    vifs: VifBook,
    /// Opened on first use, dropped (and reopened later) when the connection breaks.
    xenstore: Option<Xs>,
    net: Option<NetControl>,
    /// Whether xenstored ran when xendevd started.
    xenstored: bool,
}

impl VifHotplug {
    /// Connect to Xenstore, if xenstored runs: then vif hotplug is on (the log says
    /// which mode xendevd runs in).
    fn start(&mut self) {
        self.xenstored = match Xs::open() {
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
    }

    /// Tell the loop which vifs are held now.
    fn publish(&self, held: &Mutex<Vec<Vif>>) {
        *held.lock().unwrap_or_else(PoisonError::into_inner) = self.vifs.list();
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

    /// A relevant uevent (classified by the loop).
    fn handle(&mut self, event: Relevant, received: Instant) {
        match event {
            Relevant::Vif(vif) => match vif.action {
                VifAction::Online => self.vif_online(&vif, Some(received)),
                VifAction::Offline => self.vif_offline(&vif),
            },
            Relevant::NetRemoved(name) => {
                if let Some(vif) = self.vifs.remove(&name) {
                    info!("{name} (domain {}) is gone", vif.domid);
                }
            }
            Relevant::Other => {}
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
            OnlinePlan::Fail(error) => return self.hotplug_failed(event, &error),
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
            Err(err) => return self.hotplug_failed(event, &err.into()),
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

    fn hotplug_failed(&mut self, event: &VifEvent, error: &HotplugError) {
        error!("{} (domain {}): {error}", event.vif, event.domid);
        let message = error.to_string();
        let error_node = format!("{}/{}", event.backend, node::HOTPLUG_ERROR);
        let status_node = format!("{}/{}", event.backend, node::HOTPLUG_STATUS);
        let written = self.xenstore().and_then(|xs| {
            xs.in_transaction(|tx| {
                tx.write(&error_node, &message)?;
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
