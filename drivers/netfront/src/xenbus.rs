//! Connecting a vif through Xenstore (the xenbus handshake with a netback).
//!
//! 1. Read `backend`, `backend-id` and `mac` from our `device/vif/N` directory.
//! 2. Wait for the back end to reach `InitWait`, and check it receives by copy.
//! 3. Set up the data path; in one transaction publish `tx-ring-ref`, `rx-ring-ref`,
//!    `event-channel`, our features and `state = Connected`.
//! 4. Wait for the back end to be `Connected`, then start the data path.

use alloc::format;
use alloc::string::String;

use kernel::xenstore::{self, Xs};
use xenproto::netif::{BackendFeatures, FRONTEND_FEATURES, Mac};
use xenproto::xenstore::XenbusState;

use crate::Netfront;
use crate::datapath::{Datapath, DatapathError};

/// Why a vif could not be connected.
#[derive(Debug)]
pub enum ConnectError {
    Xenstore(xenstore::Error),
    /// A key holds a value we cannot use.
    BadValue {
        key: String,
        value: String,
    },
    /// The back end does not offer receive-by-copy.
    NoRxCopy,
    /// The back end went away (`Closing`/`Closed`) during the handshake.
    BackendClosed(String),
    Datapath(DatapathError),
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xenstore(err) => write!(f, "{err}"),
            Self::BadValue { key, value } => write!(f, "{key} = {value:?} is not usable"),
            Self::NoRxCopy => f.write_str("back end does not offer feature-rx-copy"),
            Self::BackendClosed(path) => write!(f, "back end {path} closed during the handshake"),
            Self::Datapath(err) => write!(f, "{err}"),
        }
    }
}

impl From<xenstore::Error> for ConnectError {
    fn from(err: xenstore::Error) -> Self {
        Self::Xenstore(err)
    }
}

fn bad(key: &str, value: &str) -> ConnectError {
    ConnectError::BadValue {
        key: key.into(),
        value: value.into(),
    }
}

async fn backend_state(path: &str, wanted: XenbusState) -> Result<(), ConnectError> {
    if xenstore::wait_for_state(path, wanted).await? {
        Ok(())
    } else {
        Err(ConnectError::BackendClosed(path.into()))
    }
}

/// Connect vif `id`, whose front-end directory is `dir` (`device/vif/N`).
pub async fn connect(id: u32, dir: &str) -> Result<Netfront, ConnectError> {
    let xs = Xs::NONE;
    let backend = xs.read(&format!("{dir}/backend")).await?;
    let backend_id_text = xs.read(&format!("{dir}/backend-id")).await?;
    let backend_id = backend_id_text
        .trim()
        .parse()
        .map_err(|_| bad("backend-id", &backend_id_text))?;
    let mac_text = xs.read(&format!("{dir}/mac")).await?;
    let mac: Mac = mac_text.trim().parse().map_err(|_| bad("mac", &mac_text))?;

    backend_state(&backend, XenbusState::InitWait).await?;
    let mut values = [None, None];
    for (value, key) in values.iter_mut().zip(BackendFeatures::KEYS) {
        *value = xs.try_read(&format!("{backend}/{key}")).await?;
    }
    let features = BackendFeatures::from_values(values.each_ref().map(Option::as_deref));
    if !features.rx_copy {
        return Err(ConnectError::NoRxCopy);
    }

    let mut datapath = Datapath::new(backend_id).map_err(ConnectError::Datapath)?;
    let published = datapath.published();
    xenstore::transaction(async |tx| {
        tx.write(
            &format!("{dir}/tx-ring-ref"),
            &format!("{}", published.tx_ring_ref),
        )
        .await?;
        tx.write(
            &format!("{dir}/rx-ring-ref"),
            &format!("{}", published.rx_ring_ref),
        )
        .await?;
        tx.write(
            &format!("{dir}/event-channel"),
            &format!("{}", published.event_channel),
        )
        .await?;
        for (key, value) in FRONTEND_FEATURES {
            tx.write(&format!("{dir}/{key}"), value).await?;
        }
        tx.write(&format!("{dir}/state"), XenbusState::Connected.as_str())
            .await
    })
    .await?;
    backend_state(&backend, XenbusState::Connected).await?;
    datapath.start();
    Ok(Netfront::new(id, mac, datapath, None))
}
