//! Xen PV block front end.
//!
//! [`BlockDevice`] is one vbd: a [`datapath::Datapath`] (ring, granted bounce pages,
//! event channel) connected by a negotiation method — [`xenbus::connect`] for Xenstore,
//! [`noxs::connect`] for NoXS.
//! Its API is async: [`BlockDevice::read`], [`BlockDevice::write`] and
//! [`BlockDevice::flush`] take 512-byte sector numbers and buffers of whole sectors;
//! several calls (from several tasks) may be in flight at once. Errors the back end
//! reports come back as [`BlkError`], never as a panic.

#![no_std]

extern crate alloc;

pub mod datapath;
pub mod noxs;
pub mod xenbus;

use alloc::vec::Vec;

pub use datapath::BlkError;
use datapath::{Datapath, SetupError};
use kernel::devices::Method;
pub use xenproto::blkif::{DiskInfo, SECTOR_SIZE};

/// Why a vbd could not be connected.
pub type ConnectError = kernel::devices::ConnectError<SetupError>;

impl From<SetupError> for ConnectError {
    fn from(err: SetupError) -> Self {
        Self::Driver(err)
    }
}

/// The Linux-style name of disk `id`; with NoXS (`noxs`) `id` is the disk's index.
pub(crate) fn name_of(id: u32, noxs: bool) -> alloc::string::String {
    let (major, minor) = (id >> 8, id & 0xff);
    if noxs && id < 26 {
        // NoXS numbers disks 0, 1, …: name them as xl would.
        return alloc::format!("xvd{}", char::from(b'a' + id as u8));
    }
    if major == 202 && minor % 16 == 0 && minor / 16 < 26 {
        alloc::format!("xvd{}", char::from(b'a' + (minor / 16) as u8))
    } else {
        alloc::format!("vbd{id}")
    }
}

/// One connected virtual block device.
#[derive(Debug)]
pub struct BlockDevice {
    id: u32,
    datapath: Datapath,
    /// The task that follows re-offers (NoXS, it owns the control page) or restores
    /// (Xenstore), for as long as the disk lives.
    control: Option<kernel::noxs::Follower>,
}

impl BlockDevice {
    pub(crate) fn new(id: u32, datapath: Datapath) -> Self {
        Self {
            id,
            datapath,
            control: None,
        }
    }

    pub(crate) fn with_control(mut self, control: kernel::noxs::Follower) -> Self {
        self.control = Some(control);
        self
    }

    /// Connect every vbd the toolstack gave us, in device-number order. A vbd that
    /// fails is logged and skipped.
    pub async fn probe_all() -> Vec<BlockDevice> {
        kernel::devices::connect_all("blkfront", "vbd", async |device| match &device.method {
            Method::Xenstore { frontend, backend } => {
                xenbus::connect(device, frontend, backend).await
            }
            Method::Noxs(entry) => noxs::connect(entry).await,
        })
        .await
    }

    /// The virtual device number (`device/vbd/N`; 51712 is xvda); with NoXS the
    /// disk's index, 0 for the first.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The Linux-style name of the device number, e.g. `xvda` (`xvd?` if unknown).
    pub fn name(&self) -> alloc::string::String {
        name_of(self.id, self.control.is_some())
    }

    /// Size, sector size, mode and features, as the back end described them.
    pub fn info(&self) -> DiskInfo {
        self.datapath.info()
    }

    /// Read `buf.len()` bytes (whole sectors) from 512-byte sector `sector`.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.datapath.read(sector, buf).await
    }

    /// Write `buf` (whole sectors) at 512-byte sector `sector`.
    pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.datapath.write(sector, buf).await
    }

    /// Make earlier writes durable.
    pub async fn flush(&self) -> Result<(), BlkError> {
        self.datapath.flush().await
    }
}
