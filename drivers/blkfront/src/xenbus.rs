//! Connecting a vbd through Xenstore (the xenbus handshake with a blkback); the steps
//! every front end shares are [`kernel::xenbus`]'s.
//!
//! 1. Wait for the back end to reach `InitWait` (the device's id is the virtual device
//!    number requests carry).
//! 2. Set up the data path; in one transaction publish `ring-ref`, `event-channel`,
//!    `protocol`, `feature-persistent` and `state = Initialised`.
//! 3. Wait for the back end to be `Connected`, read the disk's size, sector size,
//!    mode and features, and switch to `Connected`.

use alloc::format;

use kernel::devices::Device;
use kernel::xenbus;
use xenproto::blkif::DiskInfo;
use xenproto::xenstore::XenbusState;

use crate::datapath::Datapath;
use crate::{BlockDevice, ConnectError};

/// Connect the vbd `device`, whose directories are `frontend` and `backend`.
pub async fn connect(
    device: &Device,
    frontend: &str,
    backend: &str,
) -> Result<BlockDevice, ConnectError> {
    let handle = u16::try_from(device.id).map_err(|_| xenbus::Error::BadValue {
        key: "virtual device".into(),
        value: format!("{}", device.id),
    })?;
    xenbus::wait_backend(backend, XenbusState::InitWait).await?;
    let (mut datapath, published) = Datapath::new(device.backend_id, handle)?;
    let keys: [(&str, &dyn core::fmt::Display); 4] = [
        ("ring-ref", &published.ring_ref),
        ("event-channel", &published.event_channel),
        ("protocol", &"x86_64-abi"),
        // Our bounce pages are granted once and reused: the back end may keep them
        // mapped.
        ("feature-persistent", &1),
    ];
    xenbus::publish(frontend, &keys, XenbusState::Initialised).await?;
    xenbus::wait_backend(backend, XenbusState::Connected).await?;

    let values = xenbus::read_keys(backend, DiskInfo::KEYS).await?;
    let info = DiskInfo::from_values(values.each_ref().map(Option::as_deref)).map_err(|key| {
        let index = DiskInfo::KEYS.iter().position(|k| *k == key).unwrap_or(0);
        xenbus::Error::BadValue {
            key: format!("{backend}/{key}"),
            value: values[index].clone().unwrap_or_default(),
        }
    })?;
    datapath.start(info);
    xenbus::switch_state(frontend, XenbusState::Connected).await?;
    Ok(BlockDevice::new(device.id, datapath))
}
