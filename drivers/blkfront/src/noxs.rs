//! Connecting a vbd through its NoXS control page (`xenproto::noxs`).
//!
//! 1. Map the control page and wait for the backend to be in `InitWait`; copy its area
//!    once: size, sector size, read-only, features.
//! 2. Set up the data path (the same as with Xenstore); write our area — ring
//!    reference, data event channel, protocol — and `fe_state = Initialised`.
//! 3. Wait for the backend to be `Connected`; `fe_state = Connected`.

use kernel::noxs::{ControlError, ControlPage};
use xenproto::blkif::{DiskInfo, SECTOR_SIZE};
use xenproto::noxs::{Entry, VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};
use xenproto::xenstore::XenbusState;

use crate::BlockDevice;
use crate::datapath::{Datapath, SetupError};

/// Why a vbd could not be connected.
#[derive(Debug)]
pub enum ConnectError {
    Control(ControlError),
    Setup(SetupError),
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Control(err) => write!(f, "{err}"),
            Self::Setup(err) => write!(f, "{err}"),
        }
    }
}

impl From<ControlError> for ConnectError {
    fn from(err: ControlError) -> Self {
        Self::Control(err)
    }
}

/// What the backend's area says, as the data path wants it.
fn disk_info(area: &VbdBackend) -> DiskInfo {
    DiskInfo {
        sectors: area.sectors * SECTOR_SIZE as u64 / u64::from(area.sector_size),
        sector_size: area.sector_size,
        readonly: area.info.contains(VbdInfo::READ_ONLY),
        flush: area.features.contains(VbdFeatures::FLUSH_CACHE),
        max_indirect_segments: if area.features.contains(VbdFeatures::INDIRECT) {
            area.max_indirect_segments
        } else {
            0
        },
    }
}

/// Connect the vbd of `entry`.
pub async fn connect(entry: &Entry) -> Result<BlockDevice, ConnectError> {
    let control = ControlPage::open(entry)?;
    control.wait_backend(XenbusState::InitWait).await?;
    let backend: VbdBackend = control.backend()?;
    // The handle only matters to Xenstore back ends; a userspace one takes the index.
    let handle = u16::try_from(entry.devid).unwrap_or(u16::MAX);
    let (mut datapath, published) =
        Datapath::new(entry.backend, handle).map_err(ConnectError::Setup)?;
    let frontend = VbdFrontend {
        ring_ref: published.ring_ref,
        data_port: published.event_channel,
        protocol: VbdFrontend::PROTOCOL_X86_64,
        features: 0,
    };
    control.write_frontend(&frontend)?;
    control.set_state(XenbusState::Initialised);
    control.wait_backend(XenbusState::Connected).await?;
    control.set_state(XenbusState::Connected);
    datapath.start(disk_info(&backend));
    Ok(BlockDevice::new(entry.devid, datapath).with_control(control))
}
