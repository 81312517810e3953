//! The devices the toolstack gave this domain, for drivers to take.
//!
//! Two methods, decided at boot ([`crate::noxs`]): with **NoXS** the devices are the
//! entries of the block in start_info, each with a control page; with **Xenstore** a
//! device of kind `vif`, `vbd`, … is a directory `device/<kind>/<id>` holding the front
//! end's keys, with `backend` and `backend-id` naming the other end. A driver takes the
//! [`Method`] and runs the matching negotiation ([`crate::xenbus`] or
//! [`crate::noxs::ControlPage`]) over the same data path.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Display;

use arch::abi::DomId;
use xenproto::noxs::{Entry, Kind};
use xenproto::xenstore::XsError;

use crate::noxs::ControlError;
use crate::xenbus;
use crate::xenstore::{self, Xs};

/// How the toolstack hands this domain its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// A NoXS block in start_info (there may be no Xenstore at all).
    Noxs,
    Xenstore,
    /// Neither (dom0 in our smoke tests): no devices.
    Neither,
}

/// How this domain's devices are found, as decided at boot.
pub fn discovery() -> Discovery {
    if crate::noxs::block().is_some() {
        Discovery::Noxs
    } else if xenstore::is_available() {
        Discovery::Xenstore
    } else {
        Discovery::Neither
    }
}

/// Why a device could not be connected: its negotiation failed, or the driver's own
/// part did (`E`).
#[derive(Debug)]
pub enum ConnectError<E> {
    Xenbus(xenbus::Error),
    Control(ControlError),
    Driver(E),
}

impl<E: Display> Display for ConnectError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Xenbus(err) => write!(f, "{err}"),
            Self::Control(err) => write!(f, "{err}"),
            Self::Driver(err) => write!(f, "{err}"),
        }
    }
}

impl<E> From<xenbus::Error> for ConnectError<E> {
    fn from(err: xenbus::Error) -> Self {
        Self::Xenbus(err)
    }
}

impl<E> From<ControlError> for ConnectError<E> {
    fn from(err: ControlError) -> Self {
        Self::Control(err)
    }
}

/// How a device is negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Xenstore {
        /// The front end's directory, relative to the domain's home: `device/vif/0`.
        frontend: String,
        /// The back end's directory (absolute, in the back end's domain).
        backend: String,
    },
    /// The device's entry in the NoXS block.
    Noxs(Entry),
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub kind: String,
    /// The device's number: the vif index, the virtual device number of a vbd (with
    /// Xenstore), the entry's devid (with NoXS).
    pub id: u32,
    /// The back end's domain.
    pub backend_id: DomId,
    pub method: Method,
}

fn noxs_kind(kind: &str) -> Option<Kind> {
    match kind {
        "vif" => Some(Kind::Vif),
        "vbd" => Some(Kind::Vbd),
        "sysctl" => Some(Kind::Sysctl),
        _ => None,
    }
}

/// The devices of `kind` (e.g. `vif`), in id order; none if there are none or no way
/// to learn them. A Xenstore device whose back end cannot be read is logged and left
/// out.
pub async fn list(kind: &str) -> xenstore::Result<Vec<Device>> {
    if crate::noxs::block().is_some() {
        let Some(noxs) = noxs_kind(kind) else {
            return Ok(Vec::new());
        };
        return Ok(crate::noxs::entries(noxs)
            .into_iter()
            .map(|entry| Device {
                kind: kind.into(),
                id: entry.devid,
                backend_id: entry.backend,
                method: Method::Noxs(entry),
            })
            .collect());
    }
    let dir = format!("device/{kind}");
    let names = match Xs::NONE.directory(&dir).await {
        Ok(names) => names,
        Err(xenstore::Error::Xs(XsError::Enoent) | xenstore::Error::Unavailable) => Vec::new(),
        Err(err) => return Err(err),
    };
    let mut ids: Vec<u32> = names.iter().filter_map(|name| name.parse().ok()).collect();
    ids.sort_unstable();
    let mut devices = Vec::new();
    for id in ids {
        let frontend = format!("{dir}/{id}");
        match backend_of(&frontend).await {
            Ok((backend, backend_id)) => devices.push(Device {
                kind: kind.into(),
                id,
                backend_id,
                method: Method::Xenstore { frontend, backend },
            }),
            Err(err) => log::error!("{kind} {id}: {err}"),
        }
    }
    Ok(devices)
}

/// The back end's directory and domain, from the front end's `backend` and
/// `backend-id` keys.
async fn backend_of(frontend: &str) -> xenbus::Result<(String, DomId)> {
    let backend = Xs::NONE.read(&format!("{frontend}/backend")).await?;
    let backend_id = Xs::NONE.read(&format!("{frontend}/backend-id")).await?;
    Ok((backend, xenbus::parse("backend-id", &backend_id)?))
}

/// Connect every device of `kind` with `connect`, in id order; a device that fails is
/// logged (as `driver: kind id: why`) and skipped.
pub async fn connect_all<T, E: Display>(
    driver: &str,
    kind: &str,
    connect: impl AsyncFn(&Device) -> Result<T, E>,
) -> Vec<T> {
    let devices = match list(kind).await {
        Ok(devices) => devices,
        Err(err) => {
            log::error!("{driver}: listing {kind}s: {err}");
            return Vec::new();
        }
    };
    let mut connected = Vec::new();
    for device in &devices {
        match connect(device).await {
            Ok(value) => connected.push(value),
            Err(err) => log::error!("{driver}: {kind} {}: {err}", device.id),
        }
    }
    connected
}
