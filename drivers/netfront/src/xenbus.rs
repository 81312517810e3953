//! Connecting a vif through Xenstore (the xenbus handshake with a netback); the
//! steps every front end shares are [`kernel::xenbus`]'s.
//!
//! 1. Read our `mac`; wait for the back end to reach `InitWait`, and check it receives
//!    by copy.
//! 2. Set up the data path; in one transaction publish `tx-ring-ref`, `rx-ring-ref`,
//!    `event-channel`, our features and `state = Connected`.
//! 3. Wait for the back end to be `Connected`, then start the data path.

use alloc::format;
use alloc::vec::Vec;
use core::fmt::Display;

use kernel::devices::Device;
use kernel::xenbus;
use kernel::xenstore::Xs;
use xenproto::netif::{BackendFeatures, FRONTEND_FEATURES, Mac};
use xenproto::xenstore::XenbusState;

use crate::datapath::Datapath;
use crate::{ConnectError, Netfront, VifError};

/// Connect the vif `device`, whose directories are `frontend` and `backend`.
pub async fn connect(
    device: &Device,
    frontend: &str,
    backend: &str,
) -> Result<Netfront, ConnectError> {
    let mac = Xs::NONE
        .read(&format!("{frontend}/mac"))
        .await
        .map_err(xenbus::Error::from)?;
    let mac: Mac = xenbus::parse("mac", &mac)?;
    xenbus::wait_backend(backend, XenbusState::InitWait).await?;
    let values = xenbus::read_keys(backend, BackendFeatures::KEYS).await?;
    if !BackendFeatures::from_values(values.each_ref().map(Option::as_deref)).rx_copy {
        return Err(ConnectError::Driver(VifError::NoRxCopy));
    }

    let mut datapath = Datapath::new(device.backend_id)?;
    let published = datapath.published();
    let mut keys: Vec<(&str, &dyn Display)> = alloc::vec![
        ("tx-ring-ref", &published.tx_ring_ref),
        ("rx-ring-ref", &published.rx_ring_ref),
        ("event-channel", &published.event_channel),
    ];
    keys.extend(
        FRONTEND_FEATURES
            .iter()
            .map(|(key, value)| (*key, value as &dyn Display)),
    );
    xenbus::publish(frontend, &keys, XenbusState::Connected).await?;
    xenbus::wait_backend(backend, XenbusState::Connected).await?;
    datapath.start();
    Ok(Netfront::new(device.id, mac, datapath, None))
}
