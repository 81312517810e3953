//! A guest's *shape*: what of its configuration a shell of the chaos daemon is built
//! for ahead of time — the device method, the memory, the vCPUs, the vifs (each on its
//! bridge) and the number of disks. Everything else (name, kernel, command line, MACs,
//! addresses, disk targets) comes with the guest. A configuration fits a shell when
//! their shapes are equal ([`Shape::of`]). Pure.
//!
//! A pool is asked for on the command line as [`PoolSpec`]:
//! `method=noxs,memory=16,vcpus=1,vifs=2,bridge=xenbr0,vbds=1,size=2` (every key but
//! `memory` may be left out: xenstore, 1 vCPU, no vifs, vifs on xenbr0, no vbds, 2
//! shells).

use std::fmt;
use std::str::FromStr;

use crate::config::{
    Config, DEFAULT_BRIDGE, DevMethod, MAX_MEMORY_MIB, MAX_VBDS, MAX_VCPUS, MAX_VIFS,
    MIN_MEMORY_MIB,
};

/// What a shell is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub dev_method: DevMethod,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The bridge of each vif, in order.
    pub vif_bridges: Vec<String>,
    pub vbds: usize,
}

impl Shape {
    /// The shape of a configuration.
    pub fn of(config: &Config) -> Self {
        Self {
            dev_method: config.dev_method,
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            vif_bridges: config.vifs.iter().map(|vif| vif.bridge.clone()).collect(),
            vbds: config.vbds.len(),
        }
    }
}

impl fmt::Display for Shape {
    /// The pool specification's form, without the size:
    /// `method=noxs,memory=16,vcpus=1,vifs=2,bridge=xenbr0,vbds=1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "method={},memory={},vcpus={}",
            self.dev_method.as_str(),
            self.memory_mib,
            self.vcpus
        )?;
        if let Some(first) = self.vif_bridges.first() {
            write!(f, ",vifs={}", self.vif_bridges.len())?;
            if self.vif_bridges.iter().all(|bridge| bridge == first) {
                write!(f, ",bridge={first}")?;
            } else {
                write!(f, ",bridges={}", self.vif_bridges.join("+"))?;
            }
        }
        if self.vbds > 0 {
            write!(f, ",vbds={}", self.vbds)?;
        }
        Ok(())
    }
}

/// A pool: shells of one shape, and how many to keep ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub shape: Shape,
    pub size: usize,
}

/// At most this many shells per pool (each holds its memory and devices).
pub const MAX_POOL_SIZE: usize = 1000;
/// Shells per pool when the specification does not say.
pub const DEFAULT_POOL_SIZE: usize = 2;

/// Why a pool specification is wrong: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{key}: {problem} (a pool is KEY=VALUE,…: method=xenstore|noxs, memory=MIB, vcpus=N, vifs=N, bridge=NAME or bridges=A+B, vbds=N, size=N)"
)]
pub struct SpecError {
    pub key: String,
    pub problem: String,
}

fn spec_error(key: &str, problem: impl Into<String>) -> SpecError {
    SpecError {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

fn number(key: &str, value: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, SpecError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            spec_error(
                key,
                format!(
                    "{value:?} is not a number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

impl FromStr for PoolSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let mut dev_method = DevMethod::Xenstore;
        let (mut memory, mut vcpus, mut vifs, mut vbds) = (None, 1, 0, 0);
        let mut size = DEFAULT_POOL_SIZE;
        let (mut bridge, mut bridges): (Option<String>, Option<Vec<String>>) = (None, None);
        let mut seen = Vec::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(spec_error(&format!("{pair:?}"), "not KEY=VALUE"));
            };
            if seen.contains(&key) {
                return Err(spec_error(key, "given twice"));
            }
            seen.push(key);
            match key {
                "method" => {
                    dev_method = match value {
                        "xenstore" => DevMethod::Xenstore,
                        "noxs" => DevMethod::Noxs,
                        other => {
                            return Err(spec_error(
                                key,
                                format!("{other:?} is not a device method (xenstore or noxs)"),
                            ));
                        }
                    }
                }
                "memory" => {
                    memory = Some(number(
                        key,
                        value,
                        u64::from(MIN_MEMORY_MIB)..=u64::from(MAX_MEMORY_MIB),
                    )?);
                }
                "vcpus" => vcpus = number(key, value, 1..=u64::from(MAX_VCPUS))?,
                "vifs" => vifs = number(key, value, 0..=MAX_VIFS as u64)?,
                "vbds" => vbds = number(key, value, 0..=MAX_VBDS as u64)?,
                "size" => size = number(key, value, 1..=MAX_POOL_SIZE as u64)? as usize,
                "bridge" => bridge = Some(bridge_name(key, value)?),
                "bridges" => {
                    bridges = Some(
                        value
                            .split('+')
                            .map(|name| bridge_name(key, name))
                            .collect::<Result<_, _>>()?,
                    );
                }
                other => return Err(spec_error(other, "unknown key")),
            }
        }
        let memory_mib = memory.ok_or_else(|| spec_error("memory", "missing: it is required"))?;
        let vifs = vifs as usize;
        let vif_bridges = match (bridges, bridge) {
            (Some(_), Some(_)) => {
                return Err(spec_error("bridges", "give bridge or bridges, not both"));
            }
            (Some(bridges), None) => {
                if seen.contains(&"vifs") && bridges.len() != vifs {
                    return Err(spec_error(
                        "bridges",
                        format!("{} bridges for {vifs} vifs", bridges.len()),
                    ));
                }
                if bridges.len() > MAX_VIFS {
                    return Err(spec_error("bridges", format!("more than {MAX_VIFS} vifs")));
                }
                bridges
            }
            (None, bridge) => {
                vec![bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_owned()); vifs]
            }
        };
        Ok(Self {
            shape: Shape {
                dev_method,
                memory_mib: u32::try_from(memory_mib).expect("checked against MAX_MEMORY_MIB"),
                vcpus: u32::try_from(vcpus).expect("checked against MAX_VCPUS"),
                vif_bridges,
                vbds: vbds as usize,
            },
            size,
        })
    }
}

/// A bridge's name as a configuration's `bridge` takes it (the config's own check).
fn bridge_name(key: &str, name: &str) -> Result<String, SpecError> {
    crate::config::check_bridge_name(name)
        .map(|()| name.to_owned())
        .map_err(|why| spec_error(key, why))
}

impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},size={}", self.shape, self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn a_configuration_fits_the_pool_of_its_shape() {
        let daytime = config(
            r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 1,
                "xen": {"dev_method": "noxs"}, "cmdline": "anything",
                "vifs": [{"ip": "10.0.2.16/24", "mac": "00:16:3e:0a:00:10"}, {}],
                "vbds": [{"target": "/d.img", "type": "file", "vdev": "xvdb"}]}"#,
        );
        let pool: PoolSpec = "method=noxs,memory=16,vifs=2,vbds=1".parse().unwrap();
        assert_eq!(Shape::of(&daytime), pool.shape);
        assert_eq!(pool.size, DEFAULT_POOL_SIZE);
        // What a shell is not built for does not matter: name, kernel, MACs, addresses,
        // disk names and targets.
        let other = config(
            r#"{"name": "e", "kernel": "/k2", "memory": 16, "vcpus": 1,
                "xen": {"dev_method": "noxs"}, "vifs": [{}, {"mac": "00:16:3e:00:00:01"}],
                "vbds": [{"target": "/dev/vdb", "type": "phy", "vdev": "xvda", "access": "r"}]}"#,
        );
        assert_eq!(Shape::of(&other), pool.shape);
        // What it is built for does.
        for (text, why) in [
            (
                r#"{"name": "d", "kernel": "/k", "memory": 32, "vcpus": 1,
                    "xen": {"dev_method": "noxs"}, "vifs": [{}, {}], "vbds": [{"target": "/d", "type": "file", "vdev": "xvda"}]}"#,
                "memory",
            ),
            (
                r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 2,
                    "xen": {"dev_method": "noxs"}, "vifs": [{}, {}], "vbds": [{"target": "/d", "type": "file", "vdev": "xvda"}]}"#,
                "vcpus",
            ),
            (
                r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 1,
                    "vifs": [{}, {}], "vbds": [{"target": "/d", "type": "file", "vdev": "xvda"}]}"#,
                "method",
            ),
            (
                r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 1,
                    "xen": {"dev_method": "noxs"}, "vifs": [{}], "vbds": [{"target": "/d", "type": "file", "vdev": "xvda"}]}"#,
                "vifs",
            ),
            (
                r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 1,
                    "xen": {"dev_method": "noxs"}, "vifs": [{}, {"bridge": "br1"}], "vbds": [{"target": "/d", "type": "file", "vdev": "xvda"}]}"#,
                "bridge",
            ),
            (
                r#"{"name": "d", "kernel": "/k", "memory": 16, "vcpus": 1,
                    "xen": {"dev_method": "noxs"}, "vifs": [{}, {}]}"#,
                "vbds",
            ),
        ] {
            assert_ne!(Shape::of(&config(text)), pool.shape, "{why}");
        }
    }

    #[test]
    fn specs_round_trip_through_their_text() {
        for (text, shown) in [
            ("memory=4", "method=xenstore,memory=4,vcpus=1,size=2"),
            (
                "size=3,vbds=1,memory=16,method=noxs,vifs=2",
                "method=noxs,memory=16,vcpus=1,vifs=2,bridge=xenbr0,vbds=1,size=3",
            ),
            (
                "memory=8,vcpus=2,bridges=xenbr0+br1",
                "method=xenstore,memory=8,vcpus=2,vifs=2,bridges=xenbr0+br1,size=2",
            ),
            (
                "memory=8,vifs=1,bridge=br1",
                "method=xenstore,memory=8,vcpus=1,vifs=1,bridge=br1,size=2",
            ),
        ] {
            let spec: PoolSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), shown, "{text}");
            assert_eq!(shown.parse::<PoolSpec>().unwrap(), spec, "{shown}");
        }
    }

    #[test]
    fn bad_specs_name_the_key() {
        for (text, error) in [
            ("", "\"\": not KEY=VALUE"),
            ("memory=16,vifs", "\"vifs\": not KEY=VALUE"),
            ("vifs=1", "memory: missing"),
            ("memory=3", "memory: \"3\" is not a number from 4"),
            (
                "memory=16,method=carrier",
                "method: \"carrier\" is not a device method",
            ),
            (
                "memory=16,vcpus=0",
                "vcpus: \"0\" is not a number from 1 to 128",
            ),
            (
                "memory=16,vifs=16",
                "vifs: \"16\" is not a number from 0 to 15",
            ),
            (
                "memory=16,size=0",
                "size: \"0\" is not a number from 1 to 1000",
            ),
            ("memory=16,memory=8", "memory: given twice"),
            ("memory=16,colour=red", "colour: unknown key"),
            (
                "memory=16,bridge=a/b",
                "bridge: \"a/b\" is not a network interface name",
            ),
            (
                "memory=16,vifs=3,bridges=a+b",
                "bridges: 2 bridges for 3 vifs",
            ),
            (
                "memory=16,bridge=a,bridges=a",
                "bridges: give bridge or bridges",
            ),
        ] {
            let err = text.parse::<PoolSpec>().unwrap_err().to_string();
            assert!(err.starts_with(error), "{text:?}: {err}");
        }
    }
}
