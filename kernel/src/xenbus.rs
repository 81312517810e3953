//! The xenbus handshake over Xenstore, the part every front end shares: wait for the
//! back end's state, read its keys, publish ours with a state in one transaction.
//!
//! A device's two directories come from [`crate::devices`]: the front end's
//! (`device/vif/0`, relative to our home) and the back end's (absolute, in its domain).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use xenproto::xenstore::XenbusState;

use crate::xenstore::{self, Xs};

/// The handshake could not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Xenstore(xenstore::Error),
    /// A key holds a value we cannot use.
    BadValue {
        key: String,
        value: String,
    },
    /// The back end went away (`Closing`/`Closed`) during the handshake.
    BackendClosed(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xenstore(err) => write!(f, "{err}"),
            Self::BadValue { key, value } => write!(f, "{key} = {value:?} is not usable"),
            Self::BackendClosed(path) => write!(f, "back end {path} closed during the handshake"),
        }
    }
}

impl From<xenstore::Error> for Error {
    fn from(err: xenstore::Error) -> Self {
        Self::Xenstore(err)
    }
}

pub type Result<T> = core::result::Result<T, Error>;

/// Wait until the back end in `backend` reaches `wanted`; its closing first is
/// [`Error::BackendClosed`].
pub async fn wait_backend(backend: &str, wanted: XenbusState) -> Result<()> {
    let value = xenstore::wait_for(&format!("{backend}/state"), |value| {
        let state = value.and_then(XenbusState::parse);
        state == Some(wanted) || matches!(state, Some(XenbusState::Closing | XenbusState::Closed))
    })
    .await?;
    if value.as_deref().and_then(XenbusState::parse) == Some(wanted) {
        Ok(())
    } else {
        Err(Error::BackendClosed(backend.into()))
    }
}

/// Set our state in `frontend` (outside a transaction).
pub async fn switch_state(frontend: &str, state: XenbusState) -> Result<()> {
    Ok(Xs::NONE
        .write(&format!("{frontend}/state"), state.as_str())
        .await?)
}

/// Write `keys` into `frontend` and switch to `state`, in one transaction: the back
/// end sees all of them or none.
pub async fn publish(
    frontend: &str,
    keys: &[(&str, &dyn fmt::Display)],
    state: XenbusState,
) -> Result<()> {
    xenstore::transaction(async |tx| {
        for (key, value) in keys {
            tx.write(&format!("{frontend}/{key}"), &format!("{value}"))
                .await?;
        }
        tx.write(&format!("{frontend}/state"), state.as_str()).await
    })
    .await?;
    Ok(())
}

/// The values of `keys` in `dir` (`None` for a missing key), in the order asked.
pub async fn read_keys<const N: usize>(dir: &str, keys: [&str; N]) -> Result<[Option<String>; N]> {
    let mut values: Vec<Option<String>> = Vec::with_capacity(N);
    for key in keys {
        values.push(Xs::NONE.try_read(&format!("{dir}/{key}")).await?);
    }
    Ok(values.try_into().expect("one value per key"))
}

/// Keep a device connected across restores: each time the domain is restored into a
/// new one, whose toolstack made the device a new back end, a task reads the back
/// end's directory from `frontend` again and calls `reconnect` with it (which does the
/// handshake again, its data path started afresh). A failure is logged as `name`'s;
/// the device then stays disconnected. The task lives as long as the returned
/// [`crate::noxs::Follower`].
pub fn follow_restores(
    frontend: String,
    name: String,
    reconnect: impl AsyncFn(&str) -> Result<()> + 'static,
) -> crate::noxs::Follower {
    crate::noxs::spawn_follower(async move {
        let mut seen = crate::suspend::restores();
        loop {
            seen = crate::suspend::restored(seen).await;
            let outcome = async {
                let backend = Xs::NONE.read(&format!("{frontend}/backend")).await?;
                reconnect(&backend).await
            };
            match outcome.await {
                Ok(()) => log::info!("{name}: connected again after a restore"),
                Err(err) => log::error!("{name}: connecting after a restore: {err}"),
            }
        }
    })
}

/// Parse the value `value` of `key`, or say which key held what.
pub fn parse<T: core::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value.trim().parse().map_err(|_| Error::BadValue {
        key: key.into(),
        value: value.into(),
    })
}
