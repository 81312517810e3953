//! The devices the toolstack gave this domain, for drivers to take.
//!
//! Two methods, decided at boot ([`crate::noxs`]): with **NoXS** the devices are the
//! entries of the block in start_info, each with a control page; with **Xenstore** a
//! device of kind `vif`, `vbd`, … is a directory `device/<kind>/<id>` holding the front
//! end's keys, with `backend` and `backend-id` naming the other end. A driver takes the
//! [`Method`] and runs the matching negotiation over the same data path.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xenproto::noxs::{Entry, Kind};
use xenproto::xenstore::XsError;

use crate::xenstore::{self, Xs};

/// How a device is negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// The front end's directory, relative to the domain's home: `device/vif/0`.
    Xenstore { path: String },
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
/// to learn them.
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
    let mut devices: Vec<Device> = names
        .into_iter()
        .filter_map(|name| {
            let id = name.parse().ok()?;
            Some(Device {
                kind: kind.into(),
                id,
                method: Method::Xenstore {
                    path: format!("{dir}/{name}"),
                },
            })
        })
        .collect();
    devices.sort_by_key(|device| device.id);
    Ok(devices)
}
