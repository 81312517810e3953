//! Connecting a vif through Xenstore (the xenbus handshake with a netback); the
//! steps every front end shares are [`kernel::xenbus`]'s.
//!
//! 1. Read our `mac`; wait for the back end to reach `InitWait`, and check it receives
//!    by copy.
//! 2. Set up the data path; in one transaction publish `tx-ring-ref`, `rx-ring-ref`,
//!    `event-channel`, our features and `state = Connected`.
//! 3. Wait for the back end to be `Connected`, then start the data path.
//! 4. After each restore into a new domain (its toolstack made a new back end):
//!    start the rings afresh and do 1–3 again with the same rings and buffers
//!    ([`xenbus::follow_restores`]); the stack then sends a gratuitous ARP.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Display;

use kernel::devices::Device;
use kernel::xenbus;
use kernel::xenstore::Xs;
use xenproto::netif::{BackendFeatures, FRONTEND_FEATURES, Mac};
use xenproto::xenstore::XenbusState;

use crate::datapath::{Datapath, Published};
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
    publish(frontend, datapath.published()).await?;
    xenbus::wait_backend(backend, XenbusState::Connected).await?;
    datapath.start();
    let restart = datapath.restart_request();
    let port = datapath.notifier();
    let tx_ring_ref = datapath.published().tx_ring_ref;
    let rx_ring_ref = datapath.published().rx_ring_ref;
    let own_frontend = String::from(frontend);
    let follower = xenbus::follow_restores(
        frontend.into(),
        format!("netfront: vif{}", device.id),
        async move |backend| {
            xenbus::wait_backend(backend, XenbusState::InitWait).await?;
            restart.ask(&port).await;
            let published = Published {
                tx_ring_ref,
                rx_ring_ref,
                event_channel: port.port(),
            };
            publish(&own_frontend, published).await?;
            xenbus::wait_backend(backend, XenbusState::Connected).await?;
            let _ = port.notify();
            restart.reconnected(&port);
            Ok(())
        },
    );
    Ok(Netfront::new(device.id, mac, datapath, None).with_control(follower))
}

/// Publish the ring references, the event channel and our features, and switch to
/// Connected (the back end was in InitWait).
async fn publish(frontend: &str, published: Published) -> xenbus::Result<()> {
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
    xenbus::publish(frontend, &keys, XenbusState::Connected).await
}
