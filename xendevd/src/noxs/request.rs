//! Checking a `noxs_create`, `noxs_shell` or `noxs_fill` request before anything is made
//! for it: every field's problem named, with its value ([`RequestError`]). Pure, except
//! for looking at bridges through the [`Host`] trait ([`Dom0`] in the daemon). A vbd's
//! target is only looked at once opened, by the vbd (`vbd.rs`): checked by its path
//! here and opened by it there, it could be another file by then.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use xenproto::noxs::MAX_ENTRIES;

use crate::api::{Mac, NoxsDevice, ShellDevice, StationMacError, station_mac};
use crate::vif::{IfnameError, check_ifname};

/// The first domain id Xen reserves (`DOMID_FIRST_RESERVED`).
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;
/// Default prefix for an address given without one.
pub const DEFAULT_PREFIX: u8 = 24;

/// What the checks need to know about dom0.
pub trait Host {
    /// Whether `name` is a bridge.
    fn is_bridge(&self, name: &str) -> bool;
}

/// dom0 as it is: sysfs for bridges.
#[derive(Debug)]
pub struct Dom0;

impl Host for Dom0 {
    fn is_bridge(&self, name: &str) -> bool {
        Path::new("/sys/class/net")
            .join(name)
            .join("bridge")
            .is_dir()
    }
}

/// Why a guest name cannot be one (it names the console log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name {0:?}: 1 to 64 bytes")]
    Length(String),
    #[error("name {0:?} starts with a dot")]
    Dot(String),
    #[error("name {name:?} holds {bad:?} (letters, digits, '-', '_' and '.' only)")]
    Character { name: String, bad: char },
}

/// What is wrong with a `noxs_create` request: the first problem found.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("domid {0} cannot be a guest (1 to {max} are)", max = DOMID_FIRST_RESERVED - 1)]
    Domid(u32),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "console_port 0 is no event channel (the guest's console port, allocated unbound for \
         dom0)"
    )]
    ConsolePort,
    #[error("{0} devices: a NoXS block holds {MAX_ENTRIES} at most")]
    TooManyDevices(usize),
    #[error("devices[{0}]: a second sysctl (one per domain)")]
    SecondSysctl(usize),
    /// A device's field.
    #[error("devices[{index}].{field}: {problem}")]
    Device {
        index: usize,
        field: &'static str,
        problem: DeviceProblem,
    },
}

/// What is wrong with one field of a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceProblem {
    #[error("{kind} {devid} twice")]
    Twice { kind: &'static str, devid: u32 },
    #[error(transparent)]
    Mac(#[from] StationMacError),
    #[error("{name:?}: {why}")]
    BridgeName { name: String, why: IfnameError },
    #[error("dom0 has no bridge named {0}")]
    NoBridge(String),
    #[error("{devid} makes the tap name {tap:?}: {why}")]
    TapName {
        devid: u32,
        tap: String,
        why: IfnameError,
    },
    #[error("{0} is more than 32")]
    PrefixLength(u8),
    #[error("{0} cannot be a guest's address")]
    Address(Ipv4Addr),
    #[error("a prefix or gateway without an address (no ip: the guest asks DHCP)")]
    NoAddress,
    #[error("{0:?} is not an absolute path")]
    Relative(String),
}

/// A vif, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifPlan {
    pub devid: u32,
    pub mac: Mac,
    pub bridge: String,
    pub tap: String,
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

/// A vbd, checked (its target is opened and checked by the vbd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VbdPlan {
    pub devid: u32,
    pub target: String,
    pub readonly: bool,
}

/// A device, checked, in the request's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePlan {
    Sysctl,
    Vif(VifPlan),
    Vbd(VbdPlan),
}

/// A shell's device, checked (`noxs_shell`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellPlan {
    Sysctl,
    Vif {
        devid: u32,
        bridge: String,
        tap: String,
    },
    Vbd {
        devid: u32,
    },
}

impl ShellPlan {
    /// The shell device this plan was checked from, to match a `noxs_fill` against.
    pub fn device(&self) -> ShellDevice {
        match self {
            Self::Sysctl => ShellDevice::Sysctl,
            Self::Vif { devid, bridge, .. } => ShellDevice::Vif {
                devid: *devid,
                bridge: bridge.clone(),
            },
            Self::Vbd { devid } => ShellDevice::Vbd { devid: *devid },
        }
    }
}

/// The checks every request that makes a domain's devices shares: its id, its name,
/// how many devices; then, device by device, one sysctl at most and each vif and vbd
/// id once.
#[derive(Debug, Default)]
struct Devices {
    vifs: BTreeSet<u32>,
    vbds: BTreeSet<u32>,
    sysctls: usize,
}

impl Devices {
    fn start(domid: u32, name: &str, count: usize) -> Result<Self, RequestError> {
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(RequestError::Domid(domid));
        }
        check_name(name)?;
        if count > MAX_ENTRIES {
            return Err(RequestError::TooManyDevices(count));
        }
        Ok(Self::default())
    }

    fn sysctl(&mut self, index: usize) -> Result<(), RequestError> {
        self.sysctls += 1;
        if self.sysctls > 1 {
            return Err(RequestError::SecondSysctl(index));
        }
        Ok(())
    }

    /// A vif `devid` on `bridge`: its tap's name.
    fn vif(
        &mut self,
        index: usize,
        domid: u32,
        devid: u32,
        bridge: &str,
        host: &impl Host,
    ) -> Result<String, RequestError> {
        let at = |field: &'static str, problem: DeviceProblem| RequestError::Device {
            index,
            field,
            problem,
        };
        if !self.vifs.insert(devid) {
            return Err(at("devid", DeviceProblem::Twice { kind: "vif", devid }));
        }
        check_ifname(bridge).map_err(|why| {
            let name = bridge.to_owned();
            at("bridge", DeviceProblem::BridgeName { name, why })
        })?;
        if !host.is_bridge(bridge) {
            return Err(at("bridge", DeviceProblem::NoBridge(bridge.to_owned())));
        }
        let tap = format!("vif{domid}.{devid}");
        if let Err(why) = check_ifname(&tap) {
            return Err(at("devid", DeviceProblem::TapName { devid, tap, why }));
        }
        Ok(tap)
    }

    fn vbd(&mut self, index: usize, devid: u32) -> Result<(), RequestError> {
        if !self.vbds.insert(devid) {
            return Err(RequestError::Device {
                index,
                field: "devid",
                problem: DeviceProblem::Twice { kind: "vbd", devid },
            });
        }
        Ok(())
    }
}

/// Check a `noxs_create` (or `noxs_fill`) request.
pub fn check(
    domid: u32,
    name: &str,
    console_port: u32,
    devices: &[NoxsDevice],
    host: &impl Host,
) -> Result<Vec<DevicePlan>, RequestError> {
    let mut seen = Devices::start(domid, name, devices.len())?;
    if console_port == 0 {
        return Err(RequestError::ConsolePort);
    }
    let mut plans = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let at = |field: &'static str, problem: DeviceProblem| RequestError::Device {
            index,
            field,
            problem,
        };
        plans.push(match device {
            NoxsDevice::Sysctl => {
                seen.sysctl(index)?;
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
                let devid = *devid;
                let tap = seen.vif(index, domid, devid, bridge, host)?;
                let mac = station_mac(*mac).map_err(|err| at("mac", err.into()))?;
                if let Some(prefix) = prefix_len
                    && *prefix > 32
                {
                    return Err(at("prefix_len", DeviceProblem::PrefixLength(*prefix)));
                }
                let ipv4 = match ip {
                    Some(ip) if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() => {
                        return Err(at("ip", DeviceProblem::Address(*ip)));
                    }
                    Some(ip) => Some((*ip, prefix_len.unwrap_or(DEFAULT_PREFIX))),
                    None if prefix_len.is_some() || gateway.is_some() => {
                        return Err(at("ip", DeviceProblem::NoAddress));
                    }
                    None => None,
                };
                DevicePlan::Vif(VifPlan {
                    devid,
                    mac,
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
                let devid = *devid;
                seen.vbd(index, devid)?;
                if !target.starts_with('/') {
                    return Err(at("target", DeviceProblem::Relative(target.clone())));
                }
                DevicePlan::Vbd(VbdPlan {
                    devid,
                    target: target.clone(),
                    readonly: *readonly,
                })
            }
        });
    }
    Ok(plans)
}

/// Check a `noxs_shell` request: as [`check`], for what a shell has of its devices.
pub fn check_shell(
    domid: u32,
    name: &str,
    devices: &[ShellDevice],
    host: &impl Host,
) -> Result<Vec<ShellPlan>, RequestError> {
    let mut seen = Devices::start(domid, name, devices.len())?;
    devices
        .iter()
        .enumerate()
        .map(|(index, device)| {
            Ok(match device {
                ShellDevice::Sysctl => {
                    seen.sysctl(index)?;
                    ShellPlan::Sysctl
                }
                ShellDevice::Vif { devid, bridge } => ShellPlan::Vif {
                    devid: *devid,
                    bridge: bridge.clone(),
                    tap: seen.vif(index, domid, *devid, bridge, host)?,
                },
                ShellDevice::Vbd { devid } => {
                    seen.vbd(index, *devid)?;
                    ShellPlan::Vbd { devid: *devid }
                }
            })
        })
        .collect()
}

/// A guest name: it names the console log, so 1 to 64 bytes of letters, digits, `-`,
/// `_` and `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length(name.to_owned()));
    }
    if name.starts_with('.') {
        return Err(NameError::Dot(name.to_owned()));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::Character {
            name: name.to_owned(),
            bad,
        });
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
        assert_eq!(
            plans[2],
            DevicePlan::Vbd(VbdPlan {
                devid: 0,
                target: "/disk.img".into(),
                readonly: false
            })
        );
    }

    #[test]
    fn shells_are_checked_like_domains() {
        let vif = |devid, bridge: &str| ShellDevice::Vif {
            devid,
            bridge: bridge.into(),
        };
        let plans = check_shell(
            5,
            "chaos-shell-5",
            &[
                ShellDevice::Sysctl,
                vif(0, "xenbr0"),
                ShellDevice::Vbd { devid: 0 },
            ],
            &FakeHost,
        )
        .unwrap();
        assert_eq!(
            plans,
            [
                ShellPlan::Sysctl,
                ShellPlan::Vif {
                    devid: 0,
                    bridge: "xenbr0".into(),
                    tap: "vif5.0".into()
                },
                ShellPlan::Vbd { devid: 0 }
            ]
        );
        assert_eq!(plans[1].device(), vif(0, "xenbr0"));
        for (domid, devices, error) in [
            (0, vec![], "domid 0 cannot be a guest"),
            (
                1,
                vec![ShellDevice::Sysctl, ShellDevice::Sysctl],
                "devices[1]: a second sysctl",
            ),
            (
                1,
                vec![vif(0, "xenbr0"), vif(0, "xenbr0")],
                "devices[1].devid: vif 0 twice",
            ),
            (
                1,
                vec![vif(0, "br9")],
                "devices[0].bridge: dom0 has no bridge named br9",
            ),
            (
                1,
                vec![ShellDevice::Vbd { devid: 3 }, ShellDevice::Vbd { devid: 3 }],
                "devices[1].devid: vbd 3 twice",
            ),
        ] {
            let err = check_shell(domid, "s", &devices, &FakeHost)
                .unwrap_err()
                .to_string();
            assert!(err.contains(error), "{err:?} should say {error:?}");
        }
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
                32000,
                "x",
                1,
                vec![vif(1_000_000, "00:16:3e:0a:00:10")],
                "makes the tap name",
            ),
        ] {
            let err = check(domid, name, port, &devices, &FakeHost)
                .unwrap_err()
                .to_string();
            assert!(err.contains(error), "{err:?} should say {error:?}");
        }
    }
}
