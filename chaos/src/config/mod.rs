//! A guest's configuration: LightVM's JSON (`shared/reference/lightvm.md` §3.3), parsed
//! with serde and checked before anything touches the hypervisor.
//!
//! ```json
//! { "name": "daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24",
//!   "memory": 8, "vcpus": 1,
//!   "vifs": [{"ip": "10.0.2.16", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}],
//!   "vbds": [{"target": "/disk.img", "type": "file", "vdev": "xvda", "access": "w"}],
//!   "paused": false, "xen": {"dev_method": "xenstore"} }
//! ```
//!
//! Three stages, each reporting the first problem as a [`ConfigError`] that names the
//! field (`vifs[1].mac: …`):
//! 1. [`Config::parse`]: pure: JSON syntax, unknown keys, types, formats and ranges,
//!    clashes between devices;
//! 2. [`Config::check_files`]: the files it names: the kernel is a Xen PV kernel, the
//!    ramdisk and disk targets exist and are what their type says;
//! 3. the checks that need the running system (a free name, enough free memory) are
//!    made by [`crate::domain::create`] before it creates anything.
//!
//! The top-level keys are checked here, the devices in `devices.rs` (vifs: MAC,
//! addresses, bridge names; vbds: types, disk names, access), stage 2 in `files.rs`;
//! the tables of good and bad configurations are `tests.rs`; `write.rs` writes a
//! checked configuration back as JSON (for the chaos daemon).

mod devices;
mod files;
#[cfg(test)]
mod tests;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
pub use xendevd::api::Mac;

use crate::vdev::Vdev;
pub use devices::check_bridge_name;
use devices::{parse_vbds, parse_vifs};

/// The smallest guest libxc's PV builder can make: with 3 MiB it fails counting page
/// tables (`shared/notes/xen-lab.md`).
pub const MIN_MEMORY_MIB: u32 = 4;
/// A sanity bound (1 TiB); the real bound is Xen's free memory, checked at create time.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// At most this many vCPUs (LightVM's limit, far above what a unikernel uses).
pub const MAX_VCPUS: u32 = 128;
/// At most this many vifs and vbds (LightVM's vif limit; NoXS has 32 device slots).
pub const MAX_VIFS: usize = 15;
pub const MAX_VBDS: usize = 16;
/// Xen's `MAX_GUEST_CMDLINE` is 1024 bytes, the terminating NUL included.
pub const MAX_CMDLINE: usize = 1023;
/// Domain names: what Xenstore paths, log file names and the lab's tools all take.
pub const MAX_NAME: usize = 64;
/// The bridge a vif joins when its config names none (xl's default too).
pub const DEFAULT_BRIDGE: &str = "xenbr0";
/// The chaos daemon names its shells (domains built ahead of their guests) with this
/// prefix and their id; no guest may be named so.
pub const SHELL_NAME_PREFIX: &str = "chaos-shell-";
/// The prefix length of a vif's `ip` written without one (`"10.0.2.16"`).
pub const DEFAULT_PREFIX_LEN: u8 = 24;

/// The first problem found in a configuration: the field (`vifs[0].mac`; empty for a
/// JSON syntax error) and what is wrong with it, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

type Checked<T> = Result<T, ConfigError>;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub vifs: Vec<Vif>,
    pub vbds: Vec<Vbd>,
    pub paused: bool,
    pub dev_method: DevMethod,
}

/// A network interface: the back end joins `bridge`; `mac` chosen at random (Xen's
/// 00:16:3e prefix) if not given. `ip` (`"10.0.2.16"` or `"10.0.2.16/24"`) is
/// information for the back end's records under Xenstore; a NoXS guest gets it, with
/// its prefix length and `gateway`, in the vif's control page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vif {
    pub mac: Option<Mac>,
    pub ip: Option<Ipv4Addr>,
    /// The prefix length of `ip`: as written after a `/`, else [`DEFAULT_PREFIX_LEN`].
    pub prefix_len: Option<u8>,
    pub gateway: Option<Ipv4Addr>,
    pub bridge: String,
}

/// A disk: a block device of dom0 (`phy`) or an image file that xendevd puts a loop
/// device in front of (`file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vbd {
    pub target: PathBuf,
    pub kind: VbdKind,
    pub vdev: Vdev,
    pub access: Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VbdKind {
    File,
    Phy,
}

impl VbdKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VbdKind::File => "file",
            VbdKind::Phy => "phy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// The back end's `mode` node.
    pub fn mode(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
        }
    }
}

/// How the guest finds its devices (in JSON as the configuration spells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevMethod {
    /// The standard xenbus handshake through Xenstore.
    Xenstore,
    /// NoXS (`shared/design/noxs-v1.md`): a device block in the guest's start_info page
    /// and a control page per device, xendevd being every back end; no Xenstore.
    Noxs,
}

impl DevMethod {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DevMethod::Xenstore => "xenstore",
            DevMethod::Noxs => "noxs",
        }
    }
}

/// A random address with Xen's prefix 00:16:3e, as xl makes them (the fourth byte's top
/// bit clear).
pub fn random_mac(bytes: [u8; 3]) -> Mac {
    Mac([0x00, 0x16, 0x3e, bytes[0] & 0x7f, bytes[1], bytes[2]])
}

/// The top-level keys, in the order the README lists them.
const KEYS: [&str; 10] = [
    "name", "kernel", "ramdisk", "cmdline", "memory", "vcpus", "vifs", "vbds", "paused", "xen",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXen {
    dev_method: Option<String>,
}

/// serde's message, with a hint for the common type mistakes.
fn typed<T: DeserializeOwned>(field: &str, value: &Value) -> Checked<T> {
    serde_json::from_value(value.clone()).map_err(|err| {
        let message = err.to_string();
        // serde says "unknown field `x`, expected one of …": say "key", like the rest.
        let message = message.replacen("unknown field", "unknown key", 1);
        ConfigError::new(field, message)
    })
}

impl Config {
    /// Parse and check a JSON configuration (stage 1: nothing outside the text).
    pub fn parse(text: &str) -> Checked<Self> {
        Self::parse_as(text, false)
    }

    /// [`Config::parse`] of the configuration in a save file or a migration's stream:
    /// a NoXS guest's may have no `kernel` (an empty path then). Chaos keeps no record
    /// of a NoXS guest's kernel once it runs, and a restore needs none: the kernel comes
    /// back with the guest's memory. A Xenstore guest's names its kernel (chaos writes
    /// it in `/vm/UUID/image`, as xl does), so it still must.
    pub fn parse_saved(text: &str) -> Checked<Self> {
        Self::parse_as(text, true)
    }

    fn parse_as(text: &str, saved: bool) -> Checked<Self> {
        let value: Value = serde_json::from_str(text).map_err(|err| {
            ConfigError::new(
                "",
                format!(
                    "not valid JSON: {} (line {}, column {})",
                    strip_position(&err.to_string()),
                    err.line(),
                    err.column()
                ),
            )
        })?;
        let Value::Object(object) = value else {
            return Err(ConfigError::new(
                "",
                "the configuration must be a JSON object ({\"name\": …, \"kernel\": …})",
            ));
        };
        let fields: BTreeMap<&str, &Value> = object.iter().map(|(k, v)| (k.as_str(), v)).collect();
        if let Some(unknown) = fields.keys().find(|key| !KEYS.contains(key)) {
            return Err(ConfigError::new(
                *unknown,
                format!("unknown key (known keys: {})", KEYS.join(", ")),
            ));
        }
        let required = |key: &str| {
            fields
                .get(key)
                .copied()
                .filter(|v| !v.is_null())
                .ok_or_else(|| ConfigError::new(key, "missing: it is required"))
        };
        let optional = |key: &str| fields.get(key).copied().filter(|v| !v.is_null());

        let name: String = typed("name", required("name")?)?;
        check_name(&name)?;

        let kernel: String = match (saved, optional("kernel")) {
            (true, None) => String::new(),
            _ => typed("kernel", required("kernel")?)?,
        };
        if kernel.is_empty() && !saved {
            return Err(ConfigError::new(
                "kernel",
                "empty: give the path of a PV kernel image",
            ));
        }
        let ramdisk = match optional("ramdisk") {
            Some(value) => Some(typed::<String>("ramdisk", value)?).filter(|r| !r.is_empty()),
            None => None,
        };
        let cmdline: String = match optional("cmdline") {
            Some(value) => typed("cmdline", value)?,
            None => String::new(),
        };
        if cmdline.len() > MAX_CMDLINE {
            return Err(ConfigError::new(
                "cmdline",
                format!(
                    "{} bytes long: Xen passes at most {MAX_CMDLINE}",
                    cmdline.len()
                ),
            ));
        }
        if cmdline.contains('\0') {
            return Err(ConfigError::new("cmdline", "contains a NUL character"));
        }

        let memory: u64 = typed("memory", required("memory")?).map_err(|err| {
            ConfigError::new("memory", format!("{} (a whole number of MiB)", err.message))
        })?;
        if memory < u64::from(MIN_MEMORY_MIB) {
            return Err(ConfigError::new(
                "memory",
                format!(
                    "{memory} MiB is too little: Xen's PV domain builder needs at least \
                     {MIN_MEMORY_MIB} MiB"
                ),
            ));
        }
        if memory > u64::from(MAX_MEMORY_MIB) {
            return Err(ConfigError::new(
                "memory",
                format!("{memory} MiB is more than {MAX_MEMORY_MIB} MiB (1 TiB)"),
            ));
        }

        let vcpus: u64 = typed("vcpus", required("vcpus")?).map_err(|err| {
            ConfigError::new(
                "vcpus",
                format!("{} (a number of vCPUs, 1 to {MAX_VCPUS})", err.message),
            )
        })?;
        if vcpus == 0 {
            return Err(ConfigError::new(
                "vcpus",
                "0: a domain needs at least one vCPU",
            ));
        }
        if vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::new(
                "vcpus",
                format!("{vcpus} is more than {MAX_VCPUS}"),
            ));
        }

        let vifs = match optional("vifs") {
            Some(value) => parse_vifs(value)?,
            None => Vec::new(),
        };
        let vbds = match optional("vbds") {
            Some(value) => parse_vbds(value)?,
            None => Vec::new(),
        };
        let paused = match optional("paused") {
            Some(value) => typed("paused", value)?,
            None => false,
        };
        let dev_method = match optional("xen") {
            Some(value) => {
                let xen: RawXen = typed("xen", value)?;
                match xen.dev_method.as_deref() {
                    None | Some("xenstore") => DevMethod::Xenstore,
                    Some("noxs") => DevMethod::Noxs,
                    Some(other) => {
                        return Err(ConfigError::new(
                            "xen.dev_method",
                            format!("{other:?} is not a device method (\"xenstore\" or \"noxs\")"),
                        ));
                    }
                }
            }
            None => DevMethod::Xenstore,
        };
        if kernel.is_empty() && dev_method != DevMethod::Noxs {
            return Err(ConfigError::new(
                "kernel",
                "missing: a saved Xenstore guest's configuration names its kernel",
            ));
        }
        if dev_method != DevMethod::Noxs
            && let Some(at) = vifs.iter().position(|vif| vif.gateway.is_some())
        {
            return Err(ConfigError::new(
                format!("vifs[{at}].gateway"),
                "only a NoXS guest (\"xen\": {\"dev_method\": \"noxs\"}) gets its gateway from \
                 chaos; a Xenstore guest takes it from its command line (gw=)",
            ));
        }
        Ok(Self {
            name,
            kernel: PathBuf::from(kernel),
            ramdisk: ramdisk.map(PathBuf::from),
            cmdline,
            memory_mib: u32::try_from(memory).expect("checked against MAX_MEMORY_MIB"),
            vcpus: u32::try_from(vcpus).expect("checked against MAX_VCPUS"),
            vifs,
            vbds,
            paused,
            dev_method,
        })
    }

    /// This configuration for the `index`th of several domains (`create -n`): the name
    /// gets `-INDEX`. A fixed MAC would be shared by all of them, so it is refused.
    pub fn numbered(&self, index: u32, count: u32) -> Checked<Self> {
        if count <= 1 {
            return Ok(self.clone());
        }
        if let Some(at) = self.vifs.iter().position(|vif| vif.mac.is_some()) {
            return Err(ConfigError::new(
                format!("vifs[{at}].mac"),
                format!(
                    "-n {count} would give {count} domains the same MAC address; leave \"mac\" \
                     out (each gets a random one)"
                ),
            ));
        }
        let mut numbered = self.clone();
        numbered.name = format!("{}-{index}", self.name);
        check_name(&numbered.name)?;
        Ok(numbered)
    }
}

/// serde_json's message without its trailing " at line L column C".
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

fn check_name(name: &str) -> Checked<()> {
    if name.is_empty() {
        return Err(ConfigError::new("name", "empty: a domain needs a name"));
    }
    if name.len() > MAX_NAME {
        return Err(ConfigError::new(
            "name",
            format!("{} characters: at most {MAX_NAME}", name.len()),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+@:".contains(*c)))
    {
        return Err(ConfigError::new(
            "name",
            format!("{name:?} has the character {bad:?}; use A-Z a-z 0-9 - _ . + @ :"),
        ));
    }
    if name.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ConfigError::new(
            "name",
            format!("{name:?} is all digits, which commands would read as a domain id"),
        ));
    }
    if name == "Domain-0" {
        return Err(ConfigError::new("name", "\"Domain-0\" is dom0's name"));
    }
    if name.starts_with(SHELL_NAME_PREFIX) {
        return Err(ConfigError::new(
            "name",
            format!("{name:?}: names starting {SHELL_NAME_PREFIX} are the chaos daemon's shells'"),
        ));
    }
    Ok(())
}
