//! The devices the toolstack gave this domain, for drivers to take.
//!
//! With the Xenstore method a device of kind `vif`, `vbd`, … is a directory
//! `device/<kind>/<id>` holding the front end's keys, with `backend` and `backend-id`
//! naming the other end.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use xenproto::xenstore::XsError;

use crate::xenstore::{self, Xs};

/// One device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub kind: String,
    pub id: u32,
    /// The front end's directory, relative to the domain's home: `device/vif/0`.
    pub path: String,
}

/// The devices of `kind` (e.g. `vif`), in id order; none if the domain has no such
/// directory or no Xenstore at all.
pub async fn list(kind: &str) -> xenstore::Result<Vec<Device>> {
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
                path: format!("{dir}/{name}"),
            })
        })
        .collect();
    devices.sort_by_key(|device| device.id);
    Ok(devices)
}
