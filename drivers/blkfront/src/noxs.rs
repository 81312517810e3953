//! Connecting a vbd through its NoXS control page (`xenproto::noxs`); the handshake's
//! two halves are [`ControlPage`]'s.
//!
//! 1. The back end's offer: size, sector size, read-only, features.
//! 2. Set up the data path (the same as with Xenstore); our area — ring reference,
//!    data event channel, protocol; once connected, start.
//! 3. When a restarted back end offers the vbd again, [`kernel::noxs::follow`] does the
//!    handshake again with the same area (requests in flight stay on the ring and are
//!    served by the new back end), refusing a disk of another size, sector size or mode.

use kernel::noxs::ControlPage;
use xenproto::blkif::{DiskInfo, SECTOR_SIZE};
use xenproto::noxs::{Entry, VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};

use crate::datapath::Datapath;
use crate::{BlockDevice, ConnectError};

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
    let (control, backend) = ControlPage::offered::<VbdBackend>(entry).await?;
    // The handle only matters to Xenstore back ends; a userspace one takes the index.
    let handle = u16::try_from(entry.devid).unwrap_or(u16::MAX);
    let (mut datapath, published) = Datapath::new(entry.backend, handle)?;
    let frontend = VbdFrontend {
        ring_ref: published.ring_ref,
        data_port: published.event_channel,
        protocol: VbdFrontend::PROTOCOL_X86_64,
        features: 0,
    };
    control.connect(&frontend).await?;
    datapath.start(disk_info(&backend));
    let (port, id) = datapath.channel();
    let data_port = port.clone();
    let follower = kernel::noxs::follow(
        control,
        move || VbdFrontend {
            data_port: data_port.port(),
            ..frontend
        },
        port,
        alloc::format!("blkfront: {}", crate::name_of(entry.devid, true)),
        move |again: &VbdBackend| backend.same_device(again),
        async move || {
            let again = crate::datapath::restart(id);
            log::info!("blkfront: {again} request(s) in flight queued again");
        },
        || {},
    );
    Ok(BlockDevice::new(entry.devid, datapath).with_control(follower))
}
