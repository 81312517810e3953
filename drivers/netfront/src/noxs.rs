//! Connecting a vif through its NoXS control page (`xenproto::noxs`); the handshake's
//! two halves are [`ControlPage`]'s.
//!
//! 1. The back end's offer: MAC, features (receive-by-copy is required), and the
//!    address the toolstack assigned.
//! 2. Set up the data path (the same as with Xenstore); our area — ring references,
//!    the data event channel, our features; once connected, start.
//! 3. When a restarted back end offers the vif again, [`kernel::noxs::follow`] does the
//!    handshake again with the same area (the data path is untouched), refusing a back
//!    end that gives another MAC.

use alloc::format;

use kernel::noxs::ControlPage;
use xenproto::netif::Mac;
use xenproto::noxs::{Entry, VifBackend, VifBackendFeatures, VifFrontend, VifFrontendFeatures};

use crate::datapath::Datapath;
use crate::{AssignedAddress, ConnectError, Netfront, VifError};

/// Connect the vif of `entry`.
pub async fn connect(entry: &Entry) -> Result<Netfront, ConnectError> {
    let (control, backend) = ControlPage::offered::<VifBackend>(entry).await?;
    if !backend.features.contains(VifBackendFeatures::RX_COPY) {
        return Err(ConnectError::Driver(VifError::NoRxCopy));
    }
    let mut datapath = Datapath::new(entry.backend)?;
    let published = datapath.published();
    let frontend = VifFrontend {
        tx_ring_ref: published.tx_ring_ref,
        rx_ring_ref: published.rx_ring_ref,
        data_port: published.event_channel,
        features: VifFrontendFeatures::REQUEST_RX_COPY | VifFrontendFeatures::RX_NOTIFY,
    };
    control.connect(&frontend).await?;
    datapath.start();
    let assigned = (backend.ipv4 != [0; 4]).then_some(AssignedAddress {
        address: backend.ipv4,
        prefix_len: backend.prefix_len,
        gateway: (backend.gateway != [0; 4]).then_some(backend.gateway),
    });
    let restart = datapath.restart_request();
    let reconnected = restart.clone();
    let port = datapath.notifier();
    let data_port = port.clone();
    let stack_port = port.clone();
    let follower = kernel::noxs::follow(
        control,
        move || VifFrontend {
            data_port: data_port.port(),
            ..frontend
        },
        port.clone(),
        format!("netfront: vif{}", entry.devid),
        move |again: &VifBackend| backend.same_device(again),
        async move || restart.ask(&port).await,
        // Peers and switches learn where we are now (a restore may have moved us).
        move || reconnected.reconnected(&stack_port),
    );
    Ok(Netfront::new(entry.devid, Mac(backend.mac), datapath, assigned).with_control(follower))
}
