//! Connecting a vif through its NoXS control page (`xenproto::noxs`).
//!
//! 1. Map the control page and wait for the backend to be in `InitWait`; copy its area
//!    once: MAC, features (receive-by-copy is required), and the address the toolstack
//!    assigned.
//! 2. Set up the data path (the same as with Xenstore); write our area — ring
//!    references, the data event channel, our features — and `fe_state = Initialised`.
//! 3. Wait for the backend to be `Connected`; `fe_state = Connected`; start.

use kernel::noxs::{ControlError, ControlPage};
use xenproto::netif::Mac;
use xenproto::noxs::{Entry, VifBackend, VifBackendFeatures, VifFrontend, VifFrontendFeatures};
use xenproto::xenstore::XenbusState;

use crate::datapath::{Datapath, DatapathError};
use crate::{AssignedAddress, Netfront};

/// Why a vif could not be connected.
#[derive(Debug)]
pub enum ConnectError {
    Control(ControlError),
    /// The backend does not offer receive-by-copy.
    NoRxCopy,
    Datapath(DatapathError),
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Control(err) => write!(f, "{err}"),
            Self::NoRxCopy => f.write_str("the backend does not offer receive-by-copy"),
            Self::Datapath(err) => write!(f, "{err}"),
        }
    }
}

impl From<ControlError> for ConnectError {
    fn from(err: ControlError) -> Self {
        Self::Control(err)
    }
}

/// Connect the vif of `entry`.
pub async fn connect(entry: &Entry) -> Result<Netfront, ConnectError> {
    let control = ControlPage::open(entry)?;
    control.wait_backend(XenbusState::InitWait).await?;
    let backend: VifBackend = control.backend()?;
    if !backend.features.contains(VifBackendFeatures::RX_COPY) {
        return Err(ConnectError::NoRxCopy);
    }
    let mut datapath = Datapath::new(entry.backend).map_err(ConnectError::Datapath)?;
    let published = datapath.published();
    let frontend = VifFrontend {
        tx_ring_ref: published.tx_ring_ref,
        rx_ring_ref: published.rx_ring_ref,
        data_port: published.event_channel,
        features: VifFrontendFeatures::REQUEST_RX_COPY | VifFrontendFeatures::RX_NOTIFY,
    };
    control.write_frontend(&frontend)?;
    control.set_state(XenbusState::Initialised);
    control.wait_backend(XenbusState::Connected).await?;
    control.set_state(XenbusState::Connected);
    datapath.start();
    let assigned = (backend.ipv4 != [0; 4]).then_some(AssignedAddress {
        address: backend.ipv4,
        prefix_len: backend.prefix_len,
        gateway: (backend.gateway != [0; 4]).then_some(backend.gateway),
    });
    Ok(Netfront::new(entry.devid, Mac(backend.mac), datapath, assigned).with_control(control))
}
