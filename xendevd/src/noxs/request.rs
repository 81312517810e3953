//! Checking a `noxs_create` request before anything is made for it: every field's
//! problem named, with its value. Pure, except for looking at files and bridges through
//! the [`Host`] trait.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use xenproto::noxs::MAX_ENTRIES;

use crate::api::{NoxsDevice, station_mac};
use crate::vif::check_ifname;

/// The first domain id Xen reserves (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;
/// Default prefix for an address given without one.
pub const DEFAULT_PREFIX: u8 = 24;

/// What the checks need to know about dom0.
pub trait Host {
    /// Whether `name` is a bridge.
    fn is_bridge(&self, name: &str) -> bool;
    /// A disk target's kind and size in bytes, or why it cannot be one.
    fn disk(&self, path: &str) -> Result<u64, String>;
}

/// A vif, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifPlan {
    pub devid: u32,
    pub mac: [u8; 6],
    pub bridge: String,
    pub tap: String,
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

/// A vbd, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdPlan {
    pub devid: u32,
    pub target: String,
    pub readonly: bool,
    pub sectors: u64,
}

/// A device, checked, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePlan {
    Sysctl,
    Vif(VifPlan),
    Vbd(VbdPlan),
}

/// Check a `noxs_create` request.
pub fn check(
    domid: u32,
    name: &str,
    console_port: u32,
    devices: &[NoxsDevice],
    host: &impl Host,
) -> Result<Vec<DevicePlan>, String> {
    if domid == 0 || domid >= DOMID_FIRST_RESERVED {
        return Err(format!(
            "domid {domid} cannot be a guest (1 to {} are)",
            DOMID_FIRST_RESERVED - 1
        ));
    }
    check_name(name)?;
    if console_port == 0 {
        return Err("console_port 0 is no event channel (the guest's console port, allocated unbound for dom0)".into());
    }
    if devices.len() > MAX_ENTRIES {
        return Err(format!(
            "{} devices: a NoXS block holds {MAX_ENTRIES} at most",
            devices.len()
        ));
    }
    let mut plans = Vec::new();
    let (mut vifs, mut vbds) = (BTreeSet::new(), BTreeSet::new());
    let mut sysctls = 0;
    for (index, device) in devices.iter().enumerate() {
        let at = |field: &str| format!("devices[{index}].{field}");
        plans.push(match device {
            NoxsDevice::Sysctl => {
                sysctls += 1;
                if sysctls > 1 {
                    return Err(format!("devices[{index}]: a second sysctl (one per domain)"));
                }
                DevicePlan::Sysctl
            }
            NoxsDevice::Vif {
                devid,
                mac,
                bridge,
                ip,
                prefix_len,
                gateway,
            } => {
                if !vifs.insert(*devid) {
                    return Err(format!("{}: vif {devid} twice", at("devid")));
                }
                let mac = station_mac(*mac).map_err(|err| format!("{}: {err}", at("mac")))?;
                check_ifname(bridge).map_err(|why| format!("{}: {bridge:?}: {why}", at("bridge")))?;
                if !host.is_bridge(bridge) {
                    return Err(format!("{}: dom0 has no bridge named {bridge}", at("bridge")));
                }
                let tap = format!("vif{domid}.{devid}");
                check_ifname(&tap).map_err(|why| format!("{}: {devid} makes the tap name {tap:?}: {why}", at("devid")))?;
                if let Some(prefix) = prefix_len
                    && *prefix > 32
                {
                    return Err(format!("{}: {prefix} is more than 32", at("prefix_len")));
                }
                let ipv4 = match ip {
                    Some(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() => {
                        return Err(format!("{}: {ip} cannot be a guest's address", at("ip")));
                    }
                    Some(ip) => Some((*ip, prefix_len.unwrap_or(DEFAULT_PREFIX))),
                    None if prefix_len.is_some() || gateway.is_some() => {
                        return Err(format!(
                            "{}: a prefix or gateway without an address (no ip: the guest asks DHCP)",
                            at("ip")
                        ));
                    }
                    None => None,
                };
                DevicePlan::Vif(VifPlan {
                    devid: *devid,
                    mac: mac.0,
                    bridge: bridge.clone(),
                    tap,
                    ipv4,
                    gateway: *gateway,
                })
            }
            NoxsDevice::Vbd {
                devid,
                target,
                readonly,
            } => {
                if !vbds.insert(*devid) {
                    return Err(format!("{}: vbd {devid} twice", at("devid")));
                }
                if !target.starts_with('/') {
                    return Err(format!("{}: {target:?} is not an absolute path", at("target")));
                }
                let bytes = host.disk(target).map_err(|why| format!("{}: {why}", at("target")))?;
                if bytes == 0 || bytes % 512 != 0 {
                    return Err(format!(
                        "{}: {target} has {bytes} bytes, not a whole (non-zero) number of 512-byte sectors",
                        at("target")
                    ));
                }
                DevicePlan::Vbd(VbdPlan {
                    devid: *devid,
                    target: target.clone(),
                    readonly: *readonly,
                    sectors: bytes / 512,
                })
            }
        });
    }
    Ok(plans)
}

/// A guest name: it names the console log, so 1 to 64 bytes of letters, digits, `-`,
/// `_` and `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("name {name:?}: 1 to 64 bytes"));
    }
    if name.starts_with('.') {
        return Err(format!("name {name:?} starts with a dot"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "name {name:?} holds {bad:?} (letters, digits, '-', '_' and '.' only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeHost;

    impl Host for FakeHost {
        fn is_bridge(&self, name: &str) -> bool {
            name == "xenbr0"
        }
        fn disk(&self, path: &str) -> Result<u64, String> {
            match path {
                "/disk.img" => Ok(1 << 20),
                "/odd.img" => Ok(1000),
                _ => Err(format!("{path} does not exist")),
            }
        }
    }

    fn vif(devid: u32, mac: &str) -> NoxsDevice {
        NoxsDevice::Vif {
            devid,
            mac: mac.parse().unwrap(),
            bridge: "xenbr0".into(),
            ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
            prefix_len: None,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        }
    }

    fn vbd(devid: u32, target: &str) -> NoxsDevice {
        NoxsDevice::Vbd {
            devid,
            target: target.into(),
            readonly: false,
        }
    }

    #[test]
    fn a_good_request() {
        let plans = check(
            5,
            "daytime",
            3,
            &[
                NoxsDevice::Sysctl,
                vif(0, "00:16:3e:0a:00:10"),
                vbd(0, "/disk.img"),
            ],
            &FakeHost,
        )
        .unwrap();
        assert_eq!(plans[0], DevicePlan::Sysctl);
        let DevicePlan::Vif(v) = &plans[1] else {
            panic!()
        };
        assert_eq!(v.tap, "vif5.0");
        assert_eq!(v.ipv4, Some((Ipv4Addr::new(10, 0, 2, 16), 24)));
        let DevicePlan::Vbd(d) = &plans[2] else {
            panic!()
        };
        assert_eq!(d.sectors, 2048);
    }

    #[test]
    fn every_problem_is_named() {
        let bad_bridge = NoxsDevice::Vif {
            devid: 0,
            mac: "00:16:3e:0a:00:10".parse().unwrap(),
            bridge: "br9".into(),
            ip: None,
            prefix_len: None,
            gateway: None,
        };
        let gateway_alone = NoxsDevice::Vif {
            devid: 0,
            mac: "00:16:3e:0a:00:10".parse().unwrap(),
            bridge: "xenbr0".into(),
            ip: None,
            prefix_len: None,
            gateway: Some(Ipv4Addr::new(1, 1, 1, 1)),
        };
        for (domid, name, port, devices, error) in [
            (0, "x", 1, vec![], "domid 0 cannot be a guest"),
            (32752, "x", 1, vec![], "domid 32752 cannot be a guest"),
            (1, "", 1, vec![], "name \"\": 1 to 64 bytes"),
            (1, "a/b", 1, vec![], "name \"a/b\" holds '/'"),
            (1, "..", 1, vec![], "starts with a dot"),
            (1, "x", 0, vec![], "console_port 0"),
            (
                1,
                "x",
                1,
                vec![NoxsDevice::Sysctl, NoxsDevice::Sysctl],
                "devices[1]: a second sysctl",
            ),
            (
                1,
                "x",
                1,
                vec![vif(0, "00:16:3e:0a:00:10"), vif(0, "00:16:3e:0a:00:11")],
                "devices[1].devid: vif 0 twice",
            ),
            (
                1,
                "x",
                1,
                vec![vif(0, "01:16:3e:0a:00:10")],
                "is a multicast address",
            ),
            (
                1,
                "x",
                1,
                vec![bad_bridge],
                "devices[0].bridge: dom0 has no bridge named br9",
            ),
            (
                1,
                "x",
                1,
                vec![gateway_alone],
                "devices[0].ip: a prefix or gateway without an address",
            ),
            (
                1,
                "x",
                1,
                vec![vbd(0, "/disk.img"), vbd(0, "/disk.img")],
                "devices[1].devid: vbd 0 twice",
            ),
            (
                1,
                "x",
                1,
                vec![vbd(0, "disk.img")],
                "is not an absolute path",
            ),
            (
                1,
                "x",
                1,
                vec![vbd(0, "/none.img")],
                "devices[0].target: /none.img does not exist",
            ),
            (1, "x", 1, vec![vbd(0, "/odd.img")], "has 1000 bytes"),
            (
                32000,
                "x",
                1,
                vec![vif(1_000_000, "00:16:3e:0a:00:10")],
                "makes the tap name",
            ),
        ] {
            let err = check(domid, name, port, &devices, &FakeHost).unwrap_err();
            assert!(err.contains(error), "{err:?} should say {error:?}");
        }
    }
}
