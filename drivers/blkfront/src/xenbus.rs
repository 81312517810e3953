//! Connecting a vbd through Xenstore (the xenbus handshake with a blkback); the steps
//! every front end shares are [`kernel::xenbus`]'s.
//!
//! 1. Wait for the back end to reach `InitWait` (the device's id is the virtual device
//!    number requests carry).
//! 2. Set up the data path; in one transaction publish `ring-ref`, `event-channel`,
//!    `protocol`, `feature-persistent` and `state = Initialised`.
//! 3. Wait for the back end to be `Connected`, read the disk's size, sector size,
//!    mode and features, and switch to `Connected`.
//! 4. After each restore into a new domain (its toolstack made a new back end): start
//!    the ring afresh with every unanswered request queued again, do 1–3 again with the
//!    same ring, refusing a disk of another size, sector size or mode, and notify
//!    ([`xenbus::follow_restores`]).

use alloc::format;
use alloc::string::String;

use kernel::devices::Device;
use kernel::xenbus;
use xenproto::blkif::DiskInfo;
use xenproto::xenstore::XenbusState;

use crate::datapath::{Datapath, Published};
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
    let info = handshake(frontend, backend, published).await?;
    datapath.start(info);
    xenbus::switch_state(frontend, XenbusState::Connected).await?;

    let (port, id) = datapath.channel();
    let own_frontend = String::from(frontend);
    let follower = xenbus::follow_restores(
        frontend.into(),
        format!("blkfront: {}", crate::name_of(device.id, false)),
        async move |backend| {
            xenbus::wait_backend(backend, XenbusState::InitWait).await?;
            let again = crate::datapath::restart(id);
            log::info!("blkfront: {again} request(s) in flight queued again");
            let published = Published {
                ring_ref: published.ring_ref,
                event_channel: port.port(),
            };
            let now = handshake(&own_frontend, backend, published).await?;
            if (now.sectors, now.sector_size, now.readonly)
                != (info.sectors, info.sector_size, info.readonly)
            {
                return Err(xenbus::Error::BadValue {
                    key: format!("{backend}/sectors"),
                    value: format!(
                        "{} of {} bytes{} (was {} of {}{})",
                        now.sectors,
                        now.sector_size,
                        if now.readonly { ", read-only" } else { "" },
                        info.sectors,
                        info.sector_size,
                        if info.readonly { ", read-only" } else { "" },
                    ),
                });
            }
            xenbus::switch_state(&own_frontend, XenbusState::Connected).await?;
            let _ = port.notify();
            Ok(())
        },
    );
    Ok(BlockDevice::new(device.id, datapath).with_control(follower))
}

/// Publish the ring and channel, Initialised; once the back end is Connected, what it
/// says of the disk.
async fn handshake(
    frontend: &str,
    backend: &str,
    published: Published,
) -> xenbus::Result<DiskInfo> {
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
    DiskInfo::from_values(values.each_ref().map(Option::as_deref)).map_err(|key| {
        let index = DiskInfo::KEYS.iter().position(|k| *k == key).unwrap_or(0);
        xenbus::Error::BadValue {
            key: format!("{backend}/{key}"),
            value: values[index].clone().unwrap_or_default(),
        }
    })
}
