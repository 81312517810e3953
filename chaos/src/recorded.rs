//! A running Xenstore guest's configuration, read back from the nodes chaos wrote for
//! it ([`crate::layout`]): chaos keeps no record of a guest once made, and `chaos save`
//! puts the configuration in the save file so that `chaos restore` makes the same
//! devices (the same MACs, random ones included) for the restored guest.
//!
//! Only dom0-owned nodes are read (the back ends, `/vm/UUID/image`, the domain's
//! `name`, `memory/static-max`, `cpu/`), never what the guest may write, and the result
//! goes through [`Config::parse`] like any configuration. Pure, given the reads.

use serde_json::{Map, Value, json};

use crate::config::{Config, DevMethod};
use crate::layout::{self, Kind};

/// Read access to Xenstore (xenstored, or a map in the tests).
pub trait Records {
    fn read(&self, path: &str) -> Result<Option<String>, String>;
    fn directory(&self, path: &str) -> Result<Option<Vec<String>>, String>;
}

/// The configuration of Xenstore domain `domid`, as chaos (or xl) recorded it.
pub fn config_of(records: &dyn Records, domid: u32) -> Result<Config, String> {
    let dom = layout::dom_path(domid);
    let need = |path: String| -> Result<String, String> {
        records.read(&path)?.ok_or_else(|| {
            format!("domain {domid} has no {path} in Xenstore: not a guest chaos or xl made")
        })
    };
    let name = need(format!("{dom}/name"))?;
    let vm = need(format!("{dom}/vm"))?;
    let kernel = need(format!("{vm}/image/kernel"))?;
    let cmdline = records
        .read(&format!("{vm}/image/cmdline"))?
        .unwrap_or_default();
    let ramdisk = records.read(&format!("{vm}/image/ramdisk"))?;
    let memory_kib: u64 = need(format!("{dom}/memory/static-max"))?
        .parse()
        .map_err(|_| format!("{dom}/memory/static-max is not a number of KiB"))?;
    let vcpus = records
        .directory(&format!("{dom}/cpu"))?
        .map_or(0, |cpus| cpus.len())
        .max(1);

    let mut vifs = Vec::new();
    for devid in devids(records, Kind::Vif, domid)? {
        let back = layout::backend_path(Kind::Vif, domid, devid);
        let mut vif = Map::new();
        vif.insert("mac".into(), json!(need(format!("{back}/mac"))?));
        if let Some(ip) = records.read(&format!("{back}/ip"))? {
            vif.insert("ip".into(), json!(ip));
        }
        vif.insert("bridge".into(), json!(need(format!("{back}/bridge"))?));
        vifs.push(Value::Object(vif));
    }
    let mut vbds = Vec::new();
    for devid in devids(records, Kind::Vbd, domid)? {
        let back = layout::backend_path(Kind::Vbd, domid, devid);
        let params = need(format!("{back}/params"))?;
        let device = records.read(&format!("{back}/physical-device-path"))?;
        // chaos writes the loop device xendevd attached as the device of a file-backed
        // disk, the configured target as `params`; for `phy` they are the same.
        let kind = if device.as_deref() == Some(params.as_str()) {
            "phy"
        } else {
            "file"
        };
        vbds.push(json!({
            "target": params,
            "type": kind,
            "vdev": need(format!("{back}/dev"))?,
            "access": need(format!("{back}/mode"))?,
        }));
    }

    let mut config = Map::new();
    config.insert("name".into(), json!(name));
    config.insert("kernel".into(), json!(kernel));
    if let Some(ramdisk) = ramdisk.filter(|r| !r.is_empty()) {
        config.insert("ramdisk".into(), json!(ramdisk));
    }
    config.insert("cmdline".into(), json!(cmdline));
    config.insert("memory".into(), json!(memory_kib / 1024));
    config.insert("vcpus".into(), json!(vcpus));
    config.insert("vifs".into(), Value::Array(vifs));
    config.insert("vbds".into(), Value::Array(vbds));
    config.insert(
        "xen".into(),
        json!({"dev_method": DevMethod::Xenstore.as_str()}),
    );
    Config::parse(&Value::Object(config).to_string()).map_err(|err| {
        format!("domain {domid}'s Xenstore records give no valid configuration: {err}")
    })
}

/// The device ids of `kind`'s back ends of `domid`, in order.
fn devids(records: &dyn Records, kind: Kind, domid: u32) -> Result<Vec<u32>, String> {
    let dir = layout::backend_dir(kind, domid);
    let mut ids = records
        .directory(&dir)?
        .unwrap_or_default()
        .iter()
        .map(|id| {
            id.parse::<u32>()
                .map_err(|_| format!("{dir}/{id}: not a device id"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Access, Vbd, VbdKind, Vif};
    use crate::layout::{Built, Node, VbdSpec, VifSpec};
    use crate::uuid::Uuid;
    use crate::vdev::Vdev;

    /// Xenstore as a map of every node, parents made as xenstored makes them.
    struct Store(BTreeMap<String, String>);

    impl Store {
        fn of(nodes: &[Node]) -> Self {
            let mut map = BTreeMap::new();
            for node in nodes {
                let mut at = 0;
                while let Some(slash) = node.path[at + 1..].find('/') {
                    at += 1 + slash;
                    map.entry(node.path[..at].to_owned()).or_default();
                }
                map.insert(node.path.clone(), node.value.clone());
            }
            Self(map)
        }
    }

    impl Records for Store {
        fn read(&self, path: &str) -> Result<Option<String>, String> {
            Ok(self.0.get(path).cloned())
        }
        fn directory(&self, path: &str) -> Result<Option<Vec<String>>, String> {
            if !self.0.contains_key(path) {
                return Ok(None);
            }
            let prefix = format!("{path}/");
            Ok(Some(
                self.0
                    .keys()
                    .filter_map(|key| key.strip_prefix(&prefix))
                    .filter(|rest| !rest.contains('/'))
                    .map(str::to_owned)
                    .collect(),
            ))
        }
    }

    /// The nodes chaos writes for a guest with two vifs (one without an address) and
    /// two disks (an image file and a block device).
    fn written(domid: u32) -> Vec<Node> {
        let uuid = Uuid::parse("714899b9-7e92-45a5-b024-4aa65bace637").unwrap();
        let mut nodes = layout::domain(domid, &uuid, "linux");
        for (devid, mac, ip) in [
            (0, "00:16:3e:0a:00:20", Some("10.0.2.20".parse().unwrap())),
            (1, "00:16:3e:7f:01:02", None),
        ] {
            nodes.extend(layout::vif(
                domid,
                &VifSpec {
                    devid,
                    mac: mac.parse().unwrap(),
                    ip,
                    bridge: "xenbr0".into(),
                    script: "xendevd".into(),
                },
            ));
        }
        for (devid, vdev, params, device, access) in [
            (51712, "xvda", "/tmp/linux.img", "/dev/loop3", Access::Write),
            (51728, "xvdb", "/dev/vdb", "/dev/vdb", Access::Read),
        ] {
            nodes.extend(layout::vbd(
                domid,
                &VbdSpec {
                    devid,
                    vdev: vdev.into(),
                    params: params.into(),
                    device: device.into(),
                    major: 7,
                    minor: 3,
                    access,
                },
            ));
        }
        nodes.extend(layout::built(
            domid,
            &uuid,
            &Built {
                memory_kib: 96 * 1024,
                vcpus: 2,
                store_port: 1,
                store_mfn: 1234,
                console_port: 2,
                console_mfn: 1235,
                kernel: "/apps/linux/vmlinuz".into(),
                ramdisk: Some("/apps/linux/initrd".into()),
                cmdline: "console=hvc0 ip=10.0.2.20".into(),
                start_time: "1.00".into(),
            },
        ));
        nodes
    }

    #[test]
    fn the_configuration_comes_back_from_the_nodes_chaos_wrote() {
        let config = config_of(&Store::of(&written(7)), 7).unwrap();
        assert_eq!(config.name, "linux");
        assert_eq!(config.kernel.to_str(), Some("/apps/linux/vmlinuz"));
        assert_eq!(
            config.ramdisk.as_deref().and_then(|r| r.to_str()),
            Some("/apps/linux/initrd")
        );
        assert_eq!(config.cmdline, "console=hvc0 ip=10.0.2.20");
        assert_eq!((config.memory_mib, config.vcpus), (96, 2));
        assert_eq!(config.dev_method, DevMethod::Xenstore);
        assert_eq!(
            config.vifs,
            vec![
                Vif {
                    mac: Some("00:16:3e:0a:00:20".parse().unwrap()),
                    ip: Some("10.0.2.20".parse().unwrap()),
                    prefix_len: None,
                    gateway: None,
                    bridge: "xenbr0".into(),
                },
                Vif {
                    mac: Some("00:16:3e:7f:01:02".parse().unwrap()),
                    ip: None,
                    prefix_len: None,
                    gateway: None,
                    bridge: "xenbr0".into(),
                },
            ]
        );
        assert_eq!(
            config.vbds,
            vec![
                Vbd {
                    target: "/tmp/linux.img".into(),
                    kind: VbdKind::File,
                    vdev: Vdev::parse("xvda").unwrap(),
                    access: Access::Write,
                },
                Vbd {
                    target: "/dev/vdb".into(),
                    kind: VbdKind::Phy,
                    vdev: Vdev::parse("xvdb").unwrap(),
                    access: Access::Read,
                },
            ]
        );
    }

    #[test]
    fn a_domain_without_records_is_named() {
        let err = config_of(&Store::of(&written(7)), 8).unwrap_err();
        assert_eq!(
            err,
            "domain 8 has no /local/domain/8/name in Xenstore: not a guest chaos or xl made"
        );
        let mut nodes = written(7);
        nodes.retain(|node| !node.path.ends_with("/bridge"));
        let err = config_of(&Store::of(&nodes), 7).unwrap_err();
        assert!(
            err.ends_with("/backend/vif/7/0/bridge in Xenstore: not a guest chaos or xl made"),
            "{err}"
        );
    }
}
