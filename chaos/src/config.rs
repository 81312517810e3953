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

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
pub use xendevd::api::Mac;
use xendevd::api::station_mac;

use crate::elf;
use crate::vdev::Vdev;

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

/// How the guest finds its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A vif's `mac` as written: six pairs of hex digits, a unicast address, not all zeros.
fn parse_mac(text: &str) -> Result<Mac, String> {
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

/// The top-level keys, in the order the README lists them.
const KEYS: [&str; 10] = [
    "name", "kernel", "ramdisk", "cmdline", "memory", "vcpus", "vifs", "vbds", "paused", "xen",
];

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

        let kernel: String = typed("kernel", required("kernel")?)?;
        if kernel.is_empty() {
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

    /// Stage 2: the files the configuration names. Relative paths are made absolute
    /// (from the current directory), as the domain's records keep them.
    pub fn check_files(&mut self) -> Checked<()> {
        self.kernel = absolute("kernel", &self.kernel)?;
        let kernel = &self.kernel;
        let meta = std::fs::metadata(kernel).map_err(|err| {
            ConfigError::new(
                "kernel",
                format!("{}: {}", kernel.display(), io_reason(&err)),
            )
        })?;
        if !meta.is_file() {
            return Err(ConfigError::new(
                "kernel",
                format!("{} is not a regular file", kernel.display()),
            ));
        }
        elf::check_kernel(kernel)
            .map_err(|why| ConfigError::new("kernel", format!("{} {why}", kernel.display())))?;
        if let Some(ramdisk) = &mut self.ramdisk {
            *ramdisk = absolute("ramdisk", ramdisk)?;
            let meta = std::fs::metadata(&*ramdisk).map_err(|err| {
                ConfigError::new(
                    "ramdisk",
                    format!("{}: {}", ramdisk.display(), io_reason(&err)),
                )
            })?;
            if !meta.is_file() {
                return Err(ConfigError::new(
                    "ramdisk",
                    format!("{} is not a regular file", ramdisk.display()),
                ));
            }
        }
        for (index, vbd) in self.vbds.iter_mut().enumerate() {
            let field = format!("vbds[{index}].target");
            vbd.target = absolute(&field, &vbd.target)?;
            check_target(&field, vbd)?;
        }
        Ok(())
    }

    /// Each vif's bridge exists in dom0 (`/sys/class/net/NAME/bridge`).
    pub fn check_bridges(&self) -> Checked<()> {
        self.check_bridges_in(Path::new("/sys/class/net"))
    }

    fn check_bridges_in(&self, sys_class_net: &Path) -> Checked<()> {
        for (index, vif) in self.vifs.iter().enumerate() {
            if !sys_class_net.join(&vif.bridge).join("bridge").is_dir() {
                return Err(ConfigError::new(
                    format!("vifs[{index}].bridge"),
                    format!(
                        "dom0 has no bridge named {} (no {}); make one (ip link add {} type \
                         bridge) or name another",
                        vif.bridge,
                        sys_class_net.join(&vif.bridge).join("bridge").display(),
                        vif.bridge
                    ),
                ));
            }
        }
        Ok(())
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

fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => err.to_string(),
    }
}

fn absolute(field: &str, path: &Path) -> Checked<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|err| {
        ConfigError::new(
            field,
            format!(
                "{} is relative and the current directory is unknown: {err}",
                path.display()
            ),
        )
    })?;
    Ok(cwd.join(path))
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
    Ok(())
}

fn parse_vifs(value: &Value) -> Checked<Vec<Vif>> {
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
        if bridge.is_empty()
            || bridge.len() > 15
            || bridge
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
            || bridge == "."
            || bridge == ".."
        {
            return Err(ConfigError::new(
                format!("{at}.bridge"),
                format!(
                    "{bridge:?} is not a network interface name (1-15 characters, no '/', ':' \
                     or spaces)"
                ),
            ));
        }
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
fn mask(prefix_len: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix_len.clamp(1, 32)))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    (u32::from(a) ^ u32::from(b)) & mask(prefix_len) == 0
}

fn parse_vbds(value: &Value) -> Checked<Vec<Vbd>> {
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

fn check_target(field: &str, vbd: &Vbd) -> Checked<()> {
    let path = &vbd.target;
    let meta = std::fs::metadata(path).map_err(|err| {
        ConfigError::new(field, format!("{}: {}", path.display(), io_reason(&err)))
    })?;
    match vbd.kind {
        VbdKind::Phy if !meta.file_type().is_block_device() => {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} is not a block device (\"type\": \"phy\"); for an image file say \
                     \"type\": \"file\"",
                    path.display()
                ),
            ));
        }
        VbdKind::File if !meta.is_file() => {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} is not a regular file (\"type\": \"file\"); for a block device say \
                     \"type\": \"phy\"",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    if vbd.kind == VbdKind::File && meta.size() % 512 != 0 {
        return Err(ConfigError::new(
            field,
            format!(
                "{} is {} bytes, not a whole number of 512-byte sectors",
                path.display(),
                meta.size()
            ),
        ));
    }
    let wanted = match vbd.access {
        Access::Read => libc::R_OK,
        Access::Write => libc::R_OK | libc::W_OK,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| ConfigError::new(field, "the path contains a NUL byte"))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call; access(2) only
    // reads it.
    if unsafe { libc::access(c_path.as_ptr(), wanted) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(ConfigError::new(
            field,
            format!(
                "{} cannot be opened for {} ({err})",
                path.display(),
                match vbd.access {
                    Access::Read => "reading",
                    Access::Write => "writing, as \"access\": \"w\" asks",
                }
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "name": "daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24",
        "memory": 8, "vcpus": 1,
        "vifs": [{"ip": "10.0.2.16", "mac": "00:16:3e:0a:00:10", "bridge": "xenbr0"}, {}],
        "vbds": [{"target": "/disk.img", "type": "file", "vdev": "xvda", "access": "r"},
                 {"target": "/dev/vda", "type": "phy", "vdev": "xvdb"}],
        "paused": true, "xen": {"dev_method": "xenstore"}
    }"#;

    #[test]
    fn a_full_config_parses() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.name, "daytime");
        assert_eq!(config.kernel, Path::new("/apps/daytime"));
        assert_eq!(config.ramdisk, None);
        assert_eq!(config.cmdline, "ip=10.0.2.16/24");
        assert_eq!((config.memory_mib, config.vcpus), (8, 1));
        assert_eq!(
            config.vifs,
            [
                Vif {
                    mac: Some(Mac([0x00, 0x16, 0x3e, 0x0a, 0x00, 0x10])),
                    ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                    prefix_len: None,
                    gateway: None,
                    bridge: "xenbr0".into(),
                },
                Vif {
                    mac: None,
                    ip: None,
                    prefix_len: None,
                    gateway: None,
                    bridge: DEFAULT_BRIDGE.into(),
                },
            ]
        );
        assert_eq!(config.vbds.len(), 2);
        assert_eq!(config.vbds[0].kind, VbdKind::File);
        assert_eq!(config.vbds[0].access, Access::Read);
        assert_eq!(config.vbds[0].vdev.number(), 51712);
        assert_eq!(config.vbds[1].kind, VbdKind::Phy);
        assert_eq!(config.vbds[1].access, Access::Write, "w by default");
        assert!(config.paused);
        assert_eq!(config.dev_method, DevMethod::Xenstore);
    }

    #[test]
    fn the_smallest_config() {
        let config =
            Config::parse(r#"{"name": "n", "kernel": "k", "memory": 4, "vcpus": 1}"#).unwrap();
        assert_eq!(config.cmdline, "");
        assert!(config.vifs.is_empty() && config.vbds.is_empty() && !config.paused);
    }

    /// Each bad configuration fails on the field it names, with a one-line reason.
    #[test]
    fn bad_configs_name_the_field() {
        let base = r#""name": "g", "kernel": "/k", "memory": 8, "vcpus": 1"#;
        let cases: &[(String, &str, &str)] = &[
            (
                "{".into(),
                "",
                "not valid JSON: EOF while parsing an object (line 1, column 1)",
            ),
            ("[1]".into(), "", "must be a JSON object"),
            (
                format!("{{{base}, \"memroy\": 8}}"),
                "memroy",
                "unknown key (known keys: name, kernel",
            ),
            (
                r#"{"kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
                "name",
                "missing: it is required",
            ),
            (
                r#"{"name": "g", "memory": 8, "vcpus": 1}"#.into(),
                "kernel",
                "missing",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "vcpus": 1}"#.into(),
                "memory",
                "missing",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": 8}"#.into(),
                "vcpus",
                "missing",
            ),
            (
                r#"{"name": 5, "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
                "name",
                "invalid type: integer `5`, expected a string",
            ),
            (
                r#"{"name": "a b", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
                "name",
                "has the character ' '",
            ),
            (
                r#"{"name": "42", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
                "name",
                "all digits",
            ),
            (
                r#"{"name": "", "kernel": "/k", "memory": 8, "vcpus": 1}"#.into(),
                "name",
                "empty",
            ),
            (
                r#"{"name": "g", "kernel": "", "memory": 8, "vcpus": 1}"#.into(),
                "kernel",
                "empty",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": 3, "vcpus": 1}"#.into(),
                "memory",
                "3 MiB is too little",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": -1, "vcpus": 1}"#.into(),
                "memory",
                "a whole number of MiB",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": "8", "vcpus": 1}"#.into(),
                "memory",
                "invalid type: string \"8\"",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": 2000000, "vcpus": 1}"#.into(),
                "memory",
                "more than",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": 8, "vcpus": 0}"#.into(),
                "vcpus",
                "at least one vCPU",
            ),
            (
                r#"{"name": "g", "kernel": "/k", "memory": 8, "vcpus": 500}"#.into(),
                "vcpus",
                "more than 128",
            ),
            (
                format!("{{{base}, \"cmdline\": \"{}\"}}", "x".repeat(1024)),
                "cmdline",
                "1024 bytes long",
            ),
            (
                format!("{{{base}, \"vifs\": {{}}}}"),
                "vifs",
                "must be a list",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"mac\": \"00:16:3e:0a:00\"}}]}}"),
                "vifs[0].mac",
                "is not a MAC address",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"mac\": \"zz:16:3e:0a:00:10\"}}]}}"),
                "vifs[0].mac",
                "is not a MAC address",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"mac\": \"01:16:3e:0a:00:10\"}}]}}"),
                "vifs[0].mac",
                "multicast",
            ),
            (
                format!(
                    "{{{base}, \"vifs\": [{{\"mac\": \"00:16:3e:0a:00:10\"}}, {{\"mac\": \"00:16:3E:0A:00:10\"}}]}}"
                ),
                "vifs[1].mac",
                "is vifs[0]'s MAC address too",
            ),
            (
                format!("{{{base}, \"vifs\": [{{}}, {{\"ip\": \"10.0.2\"}}]}}"),
                "vifs[1].ip",
                "\"10.0.2\" is not an IPv4 address",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"bridge\": \"a/b\"}}]}}"),
                "vifs[0].bridge",
                "not a network interface name",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ipaddr\": \"10.0.2.16\"}}]}}"),
                "vifs[0]",
                "unknown key `ipaddr`, expected one of `ip`, `gateway`, `mac`, `bridge`",
            ),
            (
                format!("{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\"}}]}}"),
                "vbds[0]",
                "missing field `vdev`",
            ),
            (
                format!(
                    "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"qcow\", \"vdev\": \"xvda\"}}]}}"
                ),
                "vbds[0].type",
                "\"qcow\" is not a disk type",
            ),
            (
                format!(
                    "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvd1\"}}]}}"
                ),
                "vbds[0].vdev",
                "\"xvd1\" is not a virtual disk name",
            ),
            (
                format!(
                    "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvda\"}}, {{\"target\": \"/j\", \"type\": \"phy\", \"vdev\": \"d0p0\"}}]}}"
                ),
                "vbds[1].vdev",
                "d0p0 is the same disk as vbds[0]'s xvda (device 51712)",
            ),
            (
                format!(
                    "{{{base}, \"vbds\": [{{\"target\": \"/i\", \"type\": \"file\", \"vdev\": \"xvda\", \"access\": \"rw\"}}]}}"
                ),
                "vbds[0].access",
                "\"rw\" is not an access mode",
            ),
            (
                format!(
                    "{{{base}, \"vbds\": [{{\"target\": \"\", \"type\": \"file\", \"vdev\": \"xvda\"}}]}}"
                ),
                "vbds[0].target",
                "empty",
            ),
            (
                format!("{{{base}, \"paused\": \"yes\"}}"),
                "paused",
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16/33\"}}]}}"),
                "vifs[0].ip",
                "the prefix length \"33\" is not a number from 1 to 32",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16/\"}}]}}"),
                "vifs[0].ip",
                "the prefix length \"\" is not a number",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.0/24\"}}]}}"),
                "vifs[0].ip",
                "10.0.2.0 is the network address of 10.0.2.0/24's network",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.255\"}}]}}"),
                "vifs[0].ip",
                "10.0.2.255 is the broadcast address",
            ),
            (
                format!("{{{base}, \"vifs\": [{{\"ip\": \"127.0.0.2\"}}]}}"),
                "vifs[0].ip",
                "127.0.0.2 cannot be a guest's address",
            ),
            (
                format!(
                    "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"gateway\": \"10.0.2.2\"}}]}}"
                ),
                "vifs[0].gateway",
                "a gateway needs the vif's own address",
            ),
            (
                format!(
                    "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16/24\", \"gateway\": \"10.0.3.1\"}}]}}"
                ),
                "vifs[0].gateway",
                "10.0.3.1 is not another address of 10.0.2.16/24's network",
            ),
            (
                format!(
                    "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"10.0.2.16\"}}]}}"
                ),
                "vifs[0].gateway",
                "is not another address",
            ),
            (
                format!(
                    "{{{base}, \"xen\": {{\"dev_method\": \"noxs\"}}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"gw\"}}]}}"
                ),
                "vifs[0].gateway",
                "\"gw\" is not an IPv4 address",
            ),
            (
                format!(
                    "{{{base}, \"vifs\": [{{\"ip\": \"10.0.2.16\", \"gateway\": \"10.0.2.2\"}}]}}"
                ),
                "vifs[0].gateway",
                "only a NoXS guest",
            ),
            (
                format!("{{{base}, \"xen\": {{\"dev_method\": \"carrier-pigeon\"}}}}"),
                "xen.dev_method",
                "not a device method",
            ),
            (
                format!("{{{base}, \"xen\": {{\"pvh\": true}}}}"),
                "xen",
                "unknown key `pvh`, expected `dev_method`",
            ),
        ];
        for (text, field, why) in cases {
            let err = Config::parse(text)
                .err()
                .unwrap_or_else(|| panic!("accepted, but should fail on {field}: {text}"));
            assert_eq!(&err.field, field, "{text}: {err}");
            assert!(err.message.contains(why), "{text}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn noxs_vifs_carry_prefix_and_gateway() {
        let config = Config::parse(
            r#"{"name": "d", "kernel": "/k", "memory": 8, "vcpus": 1,
                "xen": {"dev_method": "noxs"},
                "vifs": [{"ip": "10.0.2.16/16", "gateway": "10.0.9.1"},
                         {"ip": "192.168.1.7"},
                         {"ip": "10.1.0.1/31"},
                         {}]}"#,
        )
        .unwrap();
        assert_eq!(config.dev_method, DevMethod::Noxs);
        assert_eq!(config.dev_method.as_str(), "noxs");
        let addresses: Vec<_> = config
            .vifs
            .iter()
            .map(|vif| (vif.ip, vif.prefix_len, vif.gateway))
            .collect();
        assert_eq!(
            addresses,
            [
                (
                    Some(Ipv4Addr::new(10, 0, 2, 16)),
                    Some(16),
                    Some(Ipv4Addr::new(10, 0, 9, 1))
                ),
                (Some(Ipv4Addr::new(192, 168, 1, 7)), None, None),
                (Some(Ipv4Addr::new(10, 1, 0, 1)), Some(31), None),
                (None, None, None),
            ]
        );
        // The Xenstore method takes "/prefix" too (its back-end record keeps the address).
        let xenstore = Config::parse(
            r#"{"name": "d", "kernel": "/k", "memory": 8, "vcpus": 1,
                "vifs": [{"ip": "10.0.2.16/24"}]}"#,
        )
        .unwrap();
        assert_eq!(xenstore.dev_method, DevMethod::Xenstore);
        assert_eq!(xenstore.vifs[0].ip, Some(Ipv4Addr::new(10, 0, 2, 16)));
        assert!(same_subnet(
            Ipv4Addr::new(10, 0, 2, 16),
            Ipv4Addr::new(10, 0, 2, 2),
            24
        ));
        assert!(!same_subnet(
            Ipv4Addr::new(10, 0, 2, 16),
            Ipv4Addr::new(10, 0, 3, 2),
            24
        ));
        assert_eq!(mask(32), u32::MAX);
        assert_eq!(mask(1), 0x8000_0000);
    }

    #[test]
    fn too_many_devices() {
        let base = r#""name": "g", "kernel": "/k", "memory": 8, "vcpus": 1"#;
        let vifs = vec!["{}"; MAX_VIFS + 1].join(",");
        let err = Config::parse(&format!("{{{base}, \"vifs\": [{vifs}]}}")).unwrap_err();
        assert_eq!(err.to_string(), "vifs: 16 vifs: at most 15");
    }

    #[test]
    fn macs() {
        let mac = parse_mac("00:16:3E:0a:00:10").unwrap();
        assert_eq!(mac.to_string(), "00:16:3e:0a:00:10");
        assert_eq!(random_mac([0xff, 1, 2]).to_string(), "00:16:3e:7f:01:02");
        for bad in [
            "",
            "00:16:3e:0a:00",
            "00:16:3e:0a:00:10:11",
            "0:16:3e:0a:00:10",
            "00-16-3e-0a-00-10",
            "+a:16:3e:0a:00:10",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(parse_mac("00:00:00:00:00:00").is_err());
    }

    #[test]
    fn numbered_copies() {
        let config = Config::parse(
            r#"{"name": "n", "kernel": "/k", "memory": 4, "vcpus": 1, "vifs": [{}]}"#,
        )
        .unwrap();
        assert_eq!(config.numbered(0, 1).unwrap().name, "n");
        assert_eq!(config.numbered(2, 3).unwrap().name, "n-2");
        let fixed = Config::parse(GOOD).unwrap();
        let err = fixed.numbered(0, 3).unwrap_err();
        assert_eq!(err.field, "vifs[0].mac");
        assert!(
            err.message
                .contains("-n 3 would give 3 domains the same MAC"),
            "{err}"
        );
    }

    #[test]
    fn files_are_checked() {
        let dir = std::env::temp_dir().join(format!("chaos-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text");
        std::fs::write(&text, "not a kernel\n").unwrap();
        let image = dir.join("disk.img");
        std::fs::write(&image, vec![0u8; 1024]).unwrap();
        let odd = dir.join("odd.img");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        let config = |kernel: &Path, vbd: &str| {
            Config::parse(&format!(
                r#"{{"name": "g", "kernel": "{}", "memory": 8, "vcpus": 1, "vbds": [{vbd}]}}"#,
                kernel.display()
            ))
            .unwrap()
        };
        let file_vbd = |path: &Path, kind: &str| {
            format!(
                r#"{{"target": "{}", "type": "{kind}", "vdev": "xvda"}}"#,
                path.display()
            )
        };
        for (mut config, field, why) in [
            (
                config(&dir.join("nope"), ""),
                "kernel",
                "nope: no such file",
            ),
            (config(&dir, ""), "kernel", "is not a regular file"),
            (config(&text, ""), "kernel", "is not an ELF file"),
        ] {
            let err = config.check_files().unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.message.contains(why), "{err}");
        }
        // A real kernel is needed past the kernel check: this test binary is an ELF
        // file, but not a PV kernel; so check the targets directly.
        for (vbd, why) in [
            (
                file_vbd(&dir.join("missing.img"), "file"),
                "missing.img: no such file",
            ),
            (file_vbd(&image, "phy"), "is not a block device"),
            (file_vbd(&dir, "file"), "is not a regular file"),
            (
                file_vbd(&odd, "file"),
                "is 1000 bytes, not a whole number of 512-byte sectors",
            ),
        ] {
            let config = config(&text, &vbd);
            let err = check_target("vbds[0].target", &config.vbds[0]).unwrap_err();
            assert!(err.message.contains(why), "{err}");
        }
        check_target(
            "vbds[0].target",
            &config(&text, &file_vbd(&image, "file")).vbds[0],
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
