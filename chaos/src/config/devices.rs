//! A configuration's devices, checked: `vifs` (MAC, address and prefix, gateway,
//! bridge name) and `vbds` (target, type, disk name, access). Pure: nothing outside
//! the text.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use xendevd::api::station_mac;

use super::{
    Access, Checked, ConfigError, DEFAULT_BRIDGE, DEFAULT_PREFIX_LEN, MAX_VBDS, MAX_VIFS, Mac, Vbd,
    VbdKind, Vif, typed,
};
use crate::vdev::Vdev;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVif {
    ip: Option<String>,
    gateway: Option<String>,
    mac: Option<String>,
    bridge: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVbd {
    target: String,
    #[serde(rename = "type")]
    kind: String,
    vdev: String,
    access: Option<String>,
}

/// A vif's `mac` as written: six pairs of hex digits, a unicast address, not all zeros.
pub(super) fn parse_mac(text: &str) -> Result<Mac, String> {
    let bad = || format!("{text:?} is not a MAC address (six hex pairs like 00:16:3e:0a:00:10)");
    // (xenproto's parser alone would take a sign: "+a" is a number to `from_str_radix`.)
    if !text
        .split(':')
        .all(|pair| pair.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(bad());
    }
    let mac: Mac = text.parse().map_err(|_| bad())?;
    station_mac(mac).map_err(|err| err.to_string())
}

pub(super) fn parse_vifs(value: &Value) -> Checked<Vec<Vif>> {
    let Value::Array(items) = value else {
        return Err(ConfigError::new(
            "vifs",
            "must be a list ([{\"mac\": …, \"bridge\": …}])",
        ));
    };
    if items.len() > MAX_VIFS {
        return Err(ConfigError::new(
            "vifs",
            format!("{} vifs: at most {MAX_VIFS}", items.len()),
        ));
    }
    let mut vifs: Vec<Vif> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("vifs[{index}]");
        let raw: RawVif = typed(&at, item)?;
        let mac = raw
            .mac
            .map(|mac| parse_mac(&mac))
            .transpose()
            .map_err(|why| ConfigError::new(format!("{at}.mac"), why))?;
        if let Some(mac) = mac
            && let Some(other) = vifs.iter().position(|vif| vif.mac == Some(mac))
        {
            return Err(ConfigError::new(
                format!("{at}.mac"),
                format!("{mac} is vifs[{other}]'s MAC address too"),
            ));
        }
        let (ip, prefix_len) = match raw.ip {
            Some(text) => {
                let (ip, prefix_len) = parse_address(&text)
                    .map_err(|why| ConfigError::new(format!("{at}.ip"), why))?;
                (Some(ip), prefix_len)
            }
            None => (None, None),
        };
        let gateway = match raw.gateway {
            Some(text) => {
                let field = format!("{at}.gateway");
                let gateway = text.parse::<Ipv4Addr>().map_err(|_| {
                    ConfigError::new(
                        &field,
                        format!("{text:?} is not an IPv4 address (like 10.0.2.2)"),
                    )
                })?;
                let Some(ip) = ip else {
                    return Err(ConfigError::new(
                        field,
                        "a gateway needs the vif's own address (\"ip\"); without one the guest \
                         asks DHCP for both",
                    ));
                };
                let prefix = prefix_len.unwrap_or(DEFAULT_PREFIX_LEN);
                if !same_subnet(ip, gateway, prefix) || gateway == ip {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "{gateway} is not another address of {ip}/{prefix}'s network: the \
                             guest could not reach it"
                        ),
                    ));
                }
                Some(gateway)
            }
            None => None,
        };
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_owned());
        check_bridge_name(&bridge).map_err(|why| ConfigError::new(format!("{at}.bridge"), why))?;
        vifs.push(Vif {
            mac,
            ip,
            prefix_len,
            gateway,
            bridge,
        });
    }
    Ok(vifs)
}

/// Whether `bridge` can name a network interface (a vif's bridge): 1 to 15
/// characters, no '/', ':' or white space, not `.` or `..`.
pub fn check_bridge_name(bridge: &str) -> Result<(), String> {
    if bridge.is_empty()
        || bridge.len() > 15
        || bridge
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        || bridge == "."
        || bridge == ".."
    {
        return Err(format!(
            "{bridge:?} is not a network interface name (1-15 characters, no '/', ':' or \
             spaces)"
        ));
    }
    Ok(())
}

/// `"10.0.2.16"` or `"10.0.2.16/24"`: the address and the prefix length if given.
fn parse_address(text: &str) -> Result<(Ipv4Addr, Option<u8>), String> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let ip = address.parse::<Ipv4Addr>().map_err(|_| {
        format!("{text:?} is not an IPv4 address (like 10.0.2.16, or 10.0.2.16/24)")
    })?;
    let prefix_len = match prefix {
        Some(prefix) => {
            let len = prefix
                .parse::<u8>()
                .ok()
                .filter(|len| (1..=32).contains(len))
                .ok_or_else(|| {
                    format!("{text:?}: the prefix length {prefix:?} is not a number from 1 to 32")
                })?;
            Some(len)
        }
        None => None,
    };
    let prefix = prefix_len.unwrap_or(DEFAULT_PREFIX_LEN);
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!("{ip} cannot be a guest's address"));
    }
    if prefix <= 30 {
        let host_bits = u32::from(ip) & !mask(prefix);
        if host_bits == 0 || host_bits == !mask(prefix) {
            return Err(format!(
                "{ip} is the {} address of {ip}/{prefix}'s network, not a host's",
                if host_bits == 0 {
                    "network"
                } else {
                    "broadcast"
                }
            ));
        }
    }
    Ok((ip, prefix_len))
}

/// The netmask of a prefix length (1 to 32).
pub(super) fn mask(prefix_len: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix_len.clamp(1, 32)))
}

pub(super) fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    (u32::from(a) ^ u32::from(b)) & mask(prefix_len) == 0
}

pub(super) fn parse_vbds(value: &Value) -> Checked<Vec<Vbd>> {
    let Value::Array(items) = value else {
        return Err(ConfigError::new(
            "vbds",
            "must be a list ([{\"target\": …, \"type\": …, \"vdev\": …}])",
        ));
    };
    if items.len() > MAX_VBDS {
        return Err(ConfigError::new(
            "vbds",
            format!("{} vbds: at most {MAX_VBDS}", items.len()),
        ));
    }
    let mut vbds: Vec<Vbd> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = format!("vbds[{index}]");
        let raw: RawVbd = typed(&at, item)?;
        if raw.target.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.target"),
                "empty: give an image file or a block device",
            ));
        }
        let kind = match raw.kind.as_str() {
            "file" => VbdKind::File,
            "phy" => VbdKind::Phy,
            other => {
                return Err(ConfigError::new(
                    format!("{at}.type"),
                    format!("{other:?} is not a disk type (\"file\" or \"phy\")"),
                ));
            }
        };
        let vdev =
            Vdev::parse(&raw.vdev).map_err(|why| ConfigError::new(format!("{at}.vdev"), why))?;
        if let Some(other) = vbds
            .iter()
            .position(|vbd| vbd.vdev.number() == vdev.number())
        {
            return Err(ConfigError::new(
                format!("{at}.vdev"),
                format!(
                    "{vdev} is the same disk as vbds[{other}]'s {} (device {})",
                    vbds[other].vdev,
                    vdev.number()
                ),
            ));
        }
        let access = match raw.access.as_deref() {
            None | Some("w") => Access::Write,
            Some("r") => Access::Read,
            Some(other) => {
                return Err(ConfigError::new(
                    format!("{at}.access"),
                    format!("{other:?} is not an access mode (\"r\" or \"w\")"),
                ));
            }
        };
        vbds.push(Vbd {
            target: PathBuf::from(raw.target),
            kind,
            vdev,
            access,
        });
    }
    Ok(vbds)
}
