//! Connecting a vbd through Xenstore (the xenbus handshake with a blkback).
//!
//! 1. Read `backend` and `backend-id` from our `device/vbd/N` directory (N is the
//!    virtual device number requests carry).
//! 2. Wait for the back end to reach `InitWait`.
//! 3. Set up the data path; in one transaction publish `ring-ref`, `event-channel`,
//!    `protocol`, `feature-persistent` and `state = Initialised`.
//! 4. Wait for the back end to be `Connected`, read the disk's size, sector size,
//!    mode and features, and switch to `Connected`.

use alloc::format;
use alloc::string::String;

use kernel::xenstore::{self, Xs};
use xenproto::blkif::DiskInfo;
use xenproto::xenstore::XenbusState;

use crate::BlockDevice;
use crate::datapath::{Datapath, SetupError};

/// Why a vbd could not be connected.
#[derive(Debug)]
pub enum ConnectError {
    Xenstore(xenstore::Error),
    /// A key holds a value we cannot use.
    BadValue {
        key: String,
        value: String,
    },
    /// The back end went away (`Closing`/`Closed`) during the handshake.
    BackendClosed(String),
    Setup(SetupError),
}

impl core::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xenstore(err) => write!(f, "{err}"),
            Self::BadValue { key, value } => write!(f, "{key} = {value:?} is not usable"),
            Self::BackendClosed(path) => write!(f, "back end {path} closed during the handshake"),
            Self::Setup(err) => write!(f, "{err}"),
        }
    }
}

impl From<xenstore::Error> for ConnectError {
    fn from(err: xenstore::Error) -> Self {
        Self::Xenstore(err)
    }
}

async fn backend_state(path: &str, wanted: XenbusState) -> Result<(), ConnectError> {
    if xenstore::wait_for_state(path, wanted).await? {
        Ok(())
    } else {
        Err(ConnectError::BackendClosed(path.into()))
    }
}

/// Connect vbd `id` (its virtual device number), whose front-end directory is `dir`
/// (`device/vbd/N`).
pub async fn connect(id: u32, dir: &str) -> Result<BlockDevice, ConnectError> {
    let xs = Xs::NONE;
    let backend = xs.read(&format!("{dir}/backend")).await?;
    let backend_id_text = xs.read(&format!("{dir}/backend-id")).await?;
    let backend_id = backend_id_text
        .trim()
        .parse()
        .map_err(|_| ConnectError::BadValue {
            key: "backend-id".into(),
            value: backend_id_text.clone(),
        })?;
    let handle = u16::try_from(id).map_err(|_| ConnectError::BadValue {
        key: "virtual device".into(),
        value: format!("{id}"),
    })?;

    backend_state(&backend, XenbusState::InitWait).await?;
    let (mut datapath, published) =
        Datapath::new(backend_id, handle).map_err(ConnectError::Setup)?;
    xenstore::transaction(async |tx| {
        tx.write(
            &format!("{dir}/ring-ref"),
            &format!("{}", published.ring_ref),
        )
        .await?;
        tx.write(
            &format!("{dir}/event-channel"),
            &format!("{}", published.event_channel),
        )
        .await?;
        tx.write(&format!("{dir}/protocol"), "x86_64-abi").await?;
        // Our bounce pages are granted once and reused: the back end may keep them mapped.
        tx.write(&format!("{dir}/feature-persistent"), "1").await?;
        tx.write(&format!("{dir}/state"), XenbusState::Initialised.as_str())
            .await
    })
    .await?;
    backend_state(&backend, XenbusState::Connected).await?;

    let mut values: [Option<String>; 6] = Default::default();
    for (value, key) in values.iter_mut().zip(DiskInfo::KEYS) {
        *value = xs.try_read(&format!("{backend}/{key}")).await?;
    }
    let info = DiskInfo::from_values(values.each_ref().map(Option::as_deref)).map_err(|key| {
        let index = DiskInfo::KEYS.iter().position(|k| *k == key).unwrap_or(0);
        ConnectError::BadValue {
            key: format!("{backend}/{key}"),
            value: values[index].clone().unwrap_or_default(),
        }
    })?;
    datapath.start(info);
    xs.write(&format!("{dir}/state"), XenbusState::Connected.as_str())
        .await?;
    Ok(BlockDevice::new(id, datapath))
}
