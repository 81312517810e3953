//! A checked configuration back as LightVM's JSON: what `chaos create` hands the chaos
//! daemon, which parses it again ([`Config::parse`] of [`Config::to_json`] is the same
//! configuration, the tests below say so). Pure.

use serde_json::{Map, Value, json};

use super::{Access, Config, ConfigError};

impl Config {
    /// The configuration as JSON that parses back to it. A path that is not UTF-8
    /// (JSON strings are) is an error naming the field.
    pub fn to_json(&self) -> Result<Value, ConfigError> {
        let path = |field: &str, path: &std::path::Path| {
            path.to_str()
                .map(str::to_owned)
                .ok_or_else(|| ConfigError::new(field, format!("{} is not UTF-8", path.display())))
        };
        let mut object = Map::new();
        object.insert("name".into(), json!(self.name));
        // A saved NoXS guest's has none ([`Config::parse_saved`]).
        if !self.kernel.as_os_str().is_empty() {
            object.insert("kernel".into(), json!(path("kernel", &self.kernel)?));
        }
        if let Some(ramdisk) = &self.ramdisk {
            object.insert("ramdisk".into(), json!(path("ramdisk", ramdisk)?));
        }
        object.insert("cmdline".into(), json!(self.cmdline));
        object.insert("memory".into(), json!(self.memory_mib));
        object.insert("vcpus".into(), json!(self.vcpus));
        let vifs = self
            .vifs
            .iter()
            .map(|vif| {
                let mut entry = Map::new();
                if let Some(mac) = vif.mac {
                    entry.insert("mac".into(), json!(mac.to_string()));
                }
                if let Some(ip) = vif.ip {
                    let text = match vif.prefix_len {
                        Some(prefix) => format!("{ip}/{prefix}"),
                        None => ip.to_string(),
                    };
                    entry.insert("ip".into(), json!(text));
                }
                if let Some(gateway) = vif.gateway {
                    entry.insert("gateway".into(), json!(gateway.to_string()));
                }
                entry.insert("bridge".into(), json!(vif.bridge));
                Value::Object(entry)
            })
            .collect::<Vec<_>>();
        object.insert("vifs".into(), Value::Array(vifs));
        let vbds = self
            .vbds
            .iter()
            .enumerate()
            .map(|(index, vbd)| {
                Ok(json!({
                    "target": path(&format!("vbds[{index}].target"), &vbd.target)?,
                    "type": vbd.kind.as_str(),
                    "vdev": vbd.vdev.name(),
                    "access": match vbd.access {
                        Access::Read => "r",
                        Access::Write => "w",
                    },
                }))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        object.insert("vbds".into(), Value::Array(vbds));
        object.insert("paused".into(), json!(self.paused));
        object.insert(
            "xen".into(),
            json!({"dev_method": self.dev_method.as_str()}),
        );
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_configuration_survives_its_json() {
        for text in [
            r#"{"name": "daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24 \"q\"",
                "memory": 16, "vcpus": 2, "ramdisk": "/boot/initrd",
                "vifs": [{"ip": "10.0.2.16", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"},
                         {"ip": "10.1.0.5/8", "gateway": "10.0.0.1", "bridge": "br1"}, {}],
                "vbds": [{"target": "/disk.img", "type": "file", "vdev": "xvda", "access": "r"},
                         {"target": "/dev/vda", "type": "phy", "vdev": "d0p1"}],
                "paused": true, "xen": {"dev_method": "noxs"}}"#,
            r#"{"name": "noop", "kernel": "/apps/noop", "memory": 4, "vcpus": 1}"#,
        ] {
            let config = Config::parse(text).unwrap();
            let json = config.to_json().unwrap();
            assert_eq!(Config::parse(&json.to_string()).unwrap(), config, "{json}");
        }
    }

    #[test]
    fn a_path_that_is_not_utf8_is_named() {
        let mut config =
            Config::parse(r#"{"name": "n", "kernel": "/k", "memory": 4, "vcpus": 1}"#).unwrap();
        config.kernel = PathBuf::from(OsStr::from_bytes(b"/apps/\xff"));
        let err = config.to_json().unwrap_err();
        assert_eq!(err.field, "kernel");
        assert!(err.message.ends_with("is not UTF-8"), "{err}");
    }
}
