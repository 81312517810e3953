//! What can go wrong serving NoXS domains: [`Error`] for a request (its text is the
//! API's answer), [`DeviceError`] for one device (setting it up, connecting it, or a
//! ring its guest broke), [`OpenError`] for the daemon's start.

use std::io;
use std::path::PathBuf;

use xendevd::engine::netback::NetbackError;
use xenproto::noxs::NoxsError;
use xenproto::ring::RingOverrun;

use super::DeviceId;
use super::console::ConsoleError;
use super::control::ControlError;
use super::request::RequestError;
use super::restart::ReofferError;
use super::sysctl::PowerError;
use crate::bridge::NetError;
use crate::disks::DiskError;
use crate::limits::LimitReached;

/// A NoXS request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("domain {0} is not a NoXS domain xendevd serves")]
    NotServed(u32),
    #[error("domain {domid} is served already (as {name}): release it first")]
    Served { domid: u32, name: String },
    #[error("domain {0} does not exist")]
    NoSuchDomain(u32),
    #[error("domain {0} is not a shell xendevd holds (noxs_shell makes one)")]
    NotAShell(u32),
    #[error(
        "domain {domid}'s shell has the devices {made}, the fill asks for {asked}; the \
         shell is released"
    )]
    NotTheShell {
        domid: u32,
        made: String,
        asked: String,
    },
    #[error("domain {0} is dying")]
    Dying(u32),
    /// A re-offer asked before the guest granted its start_info page: it may yet.
    #[error(
        "domain {domid} has not granted its start_info page (grant {gref}) yet: its guest \
         has not resumed that far"
    )]
    NotGrantedYet { domid: u32, gref: u32 },
    #[error("domain {domid}'s devices cannot be offered again: {source}")]
    Reoffer {
        domid: u32,
        #[source]
        source: ReofferError,
    },
    #[error("cannot list domains: {0}")]
    ListDomains(#[source] xenhost::Error),
    #[error("cannot create the console log {}: {source}", path.display())]
    ConsoleLog { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error("{device}: {problem}")]
    Device {
        device: DeviceId,
        #[source]
        problem: DeviceError,
    },
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error(transparent)]
    Limit(#[from] LimitReached),
}

/// One device could not be set up or connected, or its guest broke its ring.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "a network device named {0} exists already (a vif of a domain gone wrong, or \
         someone else's)"
    )]
    TapExists(String),
    #[error("cannot create tap {tap}: {source}")]
    Tap { tap: String, source: io::Error },
    #[error(transparent)]
    Bridge(#[from] NetError),
    /// Its disk cannot be opened, is no disk, or is in use.
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Limit(#[from] LimitReached),
    /// The front end's area of the control page is invalid.
    #[error("{0}")]
    Frontend(NoxsError),
    #[error(
        "the front end does not request receive-by-copy (the only way this back end \
         receives)"
    )]
    NoRxCopy,
    #[error("cannot map its rings (grants {tx} and {rx}): {source}")]
    MapRings {
        tx: u32,
        rx: u32,
        source: xenhost::Error,
    },
    #[error("cannot map its ring (grant {gref}): {source}")]
    MapRing { gref: u32, source: xenhost::Error },
    #[error("cannot bind its data port {port}: {source}")]
    BindPort { port: u32, source: xenhost::Error },
    /// The guest broke the vbd's ring.
    #[error("{0}")]
    Ring(RingOverrun),
    /// Taken back after a restart, the vbd's image is another file than the one its
    /// guest was given.
    #[error(
        "{target} is another file now (device {now_dev:#x} inode {now_ino}, was device \
         {dev:#x} inode {ino}): not given to the guest again"
    )]
    ImageReplaced {
        target: String,
        dev: u64,
        ino: u64,
        now_dev: u64,
        now_ino: u64,
    },
    /// A vbd's worker thread could not start (or reported this).
    #[error("its worker: {0}")]
    Worker(String),
    /// The guest broke the vif's rings.
    #[error(transparent)]
    Netback(#[from] NetbackError),
}

/// The NoXS back ends could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Xen(#[from] xenhost::Error),
    #[error("cannot watch the Xen devices' descriptors (epoll): {0}")]
    Poll(nix::errno::Errno),
    #[error(transparent)]
    Net(#[from] NetError),
}
