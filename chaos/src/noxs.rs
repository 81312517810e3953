//! The NoXS device method (`shared/design/noxs-v1.md`): no Xenstore at all. xendevd is
//! the back end of every device of the guest, its console included; chaos asks it for
//! the devices once the domain is built ([`xendevd::api::Request::NoxsCreate`]), and
//! writes the entries of its answer as a [`xenproto::noxs::Block`] into the guest's
//! start_info page, at [`BLOCK_OFFSET`], before the guest first runs.
//!
//! What chaos asks for, in the block's order: the sysctl device (power control) first,
//! then the vifs (vif N is `vifs[N]`, with its address, prefix and gateway), then the
//! vbds (vbd N is `vbds[N]`). xendevd's answer is checked against that list before it
//! reaches the guest: one entry per device asked for, nothing else.
//!
//! Later commands know a NoXS domain by asking xendevd about it, by id
//! ([`Domain`](xendevd::api::Request::Domain)) or by name
//! ([`DomainsNamed`](xendevd::api::Request::DomainsNamed)), so a command costs the same
//! however many guests run (chaos keeps no record of a guest once made); `chaos list`
//! asks for the brief list ([`ListDomains`](xendevd::api::Request::ListDomains)). Power
//! requests, the console and the release of the back ends go through xendevd too.

use std::time::Duration;

use xendevd::api::{DomainSummary, NoxsDevice, NoxsDomain, ShellDevice};
use xendevd::client::ClientError;
use xenproto::noxs::{self, BLOCK_LEN, BLOCK_OFFSET, Block, Kind, MAX_ENTRIES};

use crate::config::{Access, Config, DEFAULT_PREFIX_LEN, Mac};
use crate::device::{Built, DeviceMethod, NewDomain, random_mac_now};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::uuid::Uuid;
use xenhost::xcdom::START_INFO_PAGE;

/// `DOMID_FIRST_RESERVED`: a back end's id must be below.
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// The NoXS method: devices from xendevd, announced in start_info.
#[derive(Debug)]
pub struct NoxsMethod {
    devices: Vec<NoxsDevice>,
    macs: Vec<Mac>,
    /// Whether xendevd may hold something of the domain: false only while this
    /// method's `NoxsCreate` has not reached it (a teardown then has nothing to ask of
    /// a xendevd that does not run). A method made for a teardown alone assumes so.
    reached_xendevd: bool,
    /// The domain is a chaos daemon's shell whose devices xendevd made already
    /// ([`Self::prepare_shell`]): `finish` has them filled (`NoxsFill`) rather than
    /// made (`NoxsCreate`).
    fills_shell: bool,
    /// For an orphan's teardown ([`Self::for_orphan`]): a xendevd that does not run
    /// holds nothing of it.
    orphan: bool,
}

impl Default for NoxsMethod {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            macs: Vec::new(),
            reached_xendevd: true,
            fills_shell: false,
            orphan: false,
        }
    }
}

impl NoxsMethod {
    pub fn new() -> Self {
        Self::default()
    }

    /// For the teardown of an orphan (a domain a chaos that was killed began): its
    /// chaos may have died before xendevd heard of the domain, and a xendevd that does
    /// not run (or no longer answers) holds nothing of it; one that answers is asked
    /// to release it.
    pub fn for_orphan() -> Self {
        Self {
            orphan: true,
            ..Self::default()
        }
    }

    /// A shell's part (the chaos daemon's, before its guest is known): xendevd makes
    /// the devices of `devices` (`NoxsShell`: control pages, event channels, the vifs'
    /// taps on their bridges); the guest's `prepare` and `finish` then fill them.
    pub fn prepare_shell(
        &mut self,
        host: &Host,
        domid: u32,
        name: &str,
        devices: &[ShellDevice],
    ) -> Result<()> {
        self.fills_shell = true;
        host.timed("xendevd noxs_shell", || {
            let answer = host.xendevd.noxs_shell(domid, name, devices);
            self.reached_xendevd = !matches!(&answer, Err(err) if err.is_unreachable());
            answer.map(drop).map_err(|err| match err {
                ClientError::Refused(message) => Error::Xendevd(format!(
                    "cannot make the devices of shell {domid}: {message}"
                )),
                other => Error::Xendevd(format!(
                    "a NoXS shell needs xendevd as its back end: {other}"
                )),
            })
        })
    }

    /// The devices asked of xendevd, once prepared.
    pub fn devices(&self) -> &[NoxsDevice] {
        &self.devices
    }
}

/// The devices of a configuration, as xendevd's `NoxsCreate` takes them: sysctl, the
/// vifs, the vbds. `random_mac` gives a vif without a configured MAC its address.
pub fn devices_for(
    config: &Config,
    mut random_mac: impl FnMut() -> Mac,
) -> (Vec<NoxsDevice>, Vec<Mac>) {
    let mut devices = vec![NoxsDevice::Sysctl];
    let mut macs = Vec::new();
    for (devid, vif) in (0u32..).zip(&config.vifs) {
        let mac = vif.mac.unwrap_or_else(&mut random_mac);
        macs.push(mac);
        devices.push(NoxsDevice::Vif {
            devid,
            mac,
            bridge: vif.bridge.clone(),
            ip: vif.ip,
            prefix_len: vif.ip.map(|_| vif.prefix_len.unwrap_or(DEFAULT_PREFIX_LEN)),
            gateway: vif.gateway,
        });
    }
    for (devid, vbd) in (0u32..).zip(&config.vbds) {
        devices.push(NoxsDevice::Vbd {
            devid,
            target: vbd.target.to_string_lossy().into_owned(),
            readonly: vbd.access == Access::Read,
        });
    }
    (devices, macs)
}

fn kind_and_devid(device: &NoxsDevice) -> (Kind, u32) {
    match device {
        NoxsDevice::Sysctl => (Kind::Sysctl, 0),
        NoxsDevice::Vif { devid, .. } => (Kind::Vif, *devid),
        NoxsDevice::Vbd { devid, .. } => (Kind::Vbd, *devid),
    }
}

fn describe(kind: Kind, devid: u32) -> String {
    match kind {
        Kind::Sysctl => "sysctl".into(),
        Kind::Console => "console".into(),
        Kind::Vif => format!("vif {devid}"),
        Kind::Vbd => format!("vbd {devid}"),
    }
}

/// The block for domain `domid` from xendevd's answer to `NoxsCreate` of `asked`:
/// exactly one entry per device asked for (in the order asked), from a back end that
/// is a real domain other than the guest, with a usable event channel. Anything else
/// is an error naming the entry.
pub fn block_for(asked: &[NoxsDevice], answer: &NoxsDomain, domid: u32) -> Result<Block, String> {
    if answer.domid != domid {
        return Err(format!(
            "the answer is for domain {}, not {domid}",
            answer.domid
        ));
    }
    if asked.len() > MAX_ENTRIES {
        return Err(format!(
            "{} devices asked for, but a NoXS block holds at most {MAX_ENTRIES}",
            asked.len()
        ));
    }
    for (index, entry) in answer.entries.iter().enumerate() {
        let what = describe(entry.kind, entry.devid);
        if !asked
            .iter()
            .any(|device| kind_and_devid(device) == (entry.kind, entry.devid))
        {
            return Err(format!(
                "entries[{index}] is for {what}, which was not asked for"
            ));
        }
        if answer.entries[..index]
            .iter()
            .any(|other| (other.kind, other.devid) == (entry.kind, entry.devid))
        {
            return Err(format!("entries[{index}]: {what} has two entries"));
        }
        if u32::from(entry.backend) >= DOMID_FIRST_RESERVED || u32::from(entry.backend) == domid {
            return Err(format!(
                "entries[{index}] ({what}): back end domain {} cannot serve domain {domid}",
                entry.backend
            ));
        }
        if entry.ctrl_port == 0 {
            return Err(format!(
                "entries[{index}] ({what}): event channel port 0 is never a bound port"
            ));
        }
    }
    let entries = asked
        .iter()
        .map(|device| {
            let (kind, devid) = kind_and_devid(device);
            answer
                .entries
                .iter()
                .find(|entry| (entry.kind, entry.devid) == (kind, devid))
                .copied()
                .ok_or_else(|| format!("no entry for {}", describe(kind, devid)))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Block {
        entries,
        generation: 0,
    })
}

/// Write `block` into a start_info page at [`BLOCK_OFFSET`]. The builder leaves that
/// part of the page zero; anything else there means start_info grew into it, and
/// nothing is written.
pub fn write_block(page: &mut [u8; START_INFO_PAGE], block: &Block) -> Result<(), String> {
    let area = &mut page[BLOCK_OFFSET..BLOCK_OFFSET + BLOCK_LEN];
    if let Some(at) = area.iter().position(|&byte| byte != 0) {
        return Err(format!(
            "the start_info page holds data at offset {:#x}, where the NoXS block goes \
             ({BLOCK_OFFSET:#x}..{:#x})",
            BLOCK_OFFSET + at,
            BLOCK_OFFSET + BLOCK_LEN
        ));
    }
    block
        .encode(area)
        .map_err(|err| format!("encoding the NoXS block: {err}"))
}

impl DeviceMethod for NoxsMethod {
    fn name(&self) -> &'static str {
        "noxs"
    }

    fn uses_xenstore(&self) -> bool {
        false
    }

    fn prepare(&mut self, _host: &Host, domain: &NewDomain<'_>) -> Result<()> {
        // A shell's devices are xendevd's already.
        self.reached_xendevd = self.fills_shell;
        (self.devices, self.macs) = devices_for(domain.config, random_mac_now);
        Ok(())
    }

    fn finish(
        &mut self,
        host: &Host,
        domain: &NewDomain<'_>,
        built: &Built,
        start_info: Option<&mut [u8; START_INFO_PAGE]>,
    ) -> Result<()> {
        let domid = domain.domid;
        let (step, name, console_port) = (
            if self.fills_shell {
                "xendevd noxs_fill"
            } else {
                "xendevd noxs_create"
            },
            &domain.config.name,
            built.nodes.console_port,
        );
        let served = host.timed(step, || {
            let answer = if self.fills_shell {
                host.xendevd
                    .noxs_fill(domid, name, console_port, &self.devices)
            } else {
                host.xendevd
                    .noxs_create(domid, name, console_port, &self.devices)
            };
            self.reached_xendevd |= !matches!(&answer, Err(err) if err.is_unreachable());
            answer.map_err(|err| match err {
                ClientError::Refused(message) => Error::Xendevd(format!(
                    "cannot be the back end of domain {domid}: {message}"
                )),
                other => Error::Xendevd(format!(
                    "a NoXS domain needs xendevd as its back end: {other}"
                )),
            })
        })?;
        let block = block_for(&self.devices, &served, domid).map_err(|why| {
            Error::Xendevd(format!("its NoxsCreate answer for domain {domid}: {why}"))
        })?;
        // A restored guest's page names the devices it was saved with: xendevd offers
        // them again once it runs ([`reoffer_restored`]).
        let Some(start_info) = start_info else {
            return Ok(());
        };
        host.timed("start_info: NoXS block", || {
            write_block(start_info, &block).map_err(|why| Error::Device {
                device: format!("domain {domid}'s start_info page"),
                message: why,
            })
        })
    }

    fn macs(&self) -> Vec<Mac> {
        self.macs.clone()
    }

    fn teardown(&self, host: &Host, domid: u32, _uuid: Option<&Uuid>) -> Result<()> {
        if !self.reached_xendevd {
            return Ok(());
        }
        if self.orphan {
            return host.timed("xendevd release", || {
                match host.xendevd.release_domain(domid) {
                    Err(err) if err.is_unreachable() => Ok(()),
                    other => other.map_err(|err| release_failed(domid, err)),
                }
            });
        }
        release(host, domid)
    }
}

/// Have xendevd release everything it holds for `domid` (back ends, console, loop
/// devices). xendevd must answer: it is the only one that can.
pub fn release(host: &Host, domid: u32) -> Result<()> {
    host.timed("xendevd release", || {
        host.xendevd
            .release_domain(domid)
            .map_err(|err| release_failed(domid, err))
    })
}

fn release_failed(domid: u32, err: ClientError) -> Error {
    match err {
        ClientError::Refused(message) => {
            Error::Xendevd(format!("cannot release domain {domid}: {message}"))
        }
        other => Error::Xendevd(format!(
            "domain {domid} is a NoXS domain, whose back ends only xendevd can release: \
             {other}"
        )),
    }
}

/// Ask xendevd something about the NoXS domains it serves (`what` says what, for
/// errors); `None` when no xendevd listens (then it serves none: their back ends would
/// have gone with it). Each question is about one domain or one name, so it costs the
/// same however many guests run; only a list grows with them.
fn ask_served<T>(
    host: &Host,
    what: &str,
    question: impl FnOnce(&xendevd::client::Client) -> Result<T, ClientError>,
) -> Result<Option<T>> {
    if !host.xendevd.socket().exists() {
        return Ok(None);
    }
    match question(&host.xendevd) {
        Ok(answer) => Ok(Some(answer)),
        Err(err) if err.is_unreachable() => Ok(None),
        Err(ClientError::Refused(message)) => {
            Err(Error::Xendevd(format!("cannot say {what}: {message}")))
        }
        Err(err) => Err(Error::Xendevd(format!("asking {what}: {err}"))),
    }
}

/// xendevd's record of domain `domid`, if it is a NoXS domain it serves.
pub fn served_domain(host: &Host, domid: u32) -> Result<Option<NoxsDomain>> {
    Ok(ask_served(
        host,
        &format!("whether it serves domain {domid}"),
        |xendevd| xendevd.domain(domid),
    )?
    .flatten())
}

/// The NoXS domains xendevd serves under `name` (usually one or none).
pub fn served_named(host: &Host, name: &str) -> Result<Vec<NoxsDomain>> {
    Ok(ask_served(
        host,
        &format!("which domains it serves named {name:?}"),
        |xendevd| xendevd.domains_named(name),
    )?
    .unwrap_or_default())
}

/// Every NoXS domain xendevd serves, in brief (for `chaos list`).
pub fn served_list(host: &Host) -> Result<Vec<DomainSummary>> {
    Ok(ask_served(host, "which domains it serves", |xendevd| {
        xendevd.list_domains()
    })?
    .unwrap_or_default())
}

/// Served NoXS domain `served`'s configuration for a save file: its name and the
/// devices xendevd was asked for (the same MACs, addresses, disks), memory and vCPUs
/// as Xen has them (`memory_kib_max`: Xen's limit, the configured memory plus
/// chaos's slack of `slack_kib`). No kernel and no command line: chaos keeps neither of
/// a NoXS guest, and a restore needs neither ([`Config::parse_saved`]). A vbd's kind
/// and virtual device are not recorded either (NoXS opens a file and a block device
/// alike, and numbers disks in order): `/dev/…` targets are `phy`, the rest `file`,
/// and they are `xvda`, `xvdb`, … in their order. Pure.
pub fn config_of(
    served: &NoxsDomain,
    memory_kib_max: u64,
    slack_kib: u64,
    vcpus: u32,
) -> Result<Config, String> {
    let domid = served.domid;
    if served.devices.is_empty() {
        return Err(format!(
            "xendevd does not say which devices domain {domid} was created with (an older \
             xendevd?): it cannot be saved"
        ));
    }
    let memory_mib = memory_kib_max
        .checked_sub(slack_kib)
        .filter(|kib| kib % 1024 == 0)
        .map(|kib| kib / 1024)
        .ok_or_else(|| {
            format!(
                "domain {domid}'s memory limit ({memory_kib_max} KiB) is not a whole number \
                 of MiB plus {slack_kib} KiB, as chaos sets it: not a guest chaos made"
            )
        })?;
    let mut vifs = Vec::new();
    let mut vbds = Vec::new();
    for device in &served.devices {
        match device {
            NoxsDevice::Sysctl => {}
            NoxsDevice::Vif {
                devid,
                mac,
                bridge,
                ip,
                prefix_len,
                gateway,
            } => {
                if *devid as usize != vifs.len() {
                    return Err(format!(
                        "domain {domid}'s vif {devid} is not its vif number {}",
                        vifs.len()
                    ));
                }
                let mut vif = serde_json::Map::new();
                vif.insert("mac".into(), mac.to_string().into());
                if let Some(ip) = ip {
                    let text = match prefix_len {
                        Some(prefix) => format!("{ip}/{prefix}"),
                        None => ip.to_string(),
                    };
                    vif.insert("ip".into(), text.into());
                }
                if let Some(gateway) = gateway {
                    vif.insert("gateway".into(), gateway.to_string().into());
                }
                vif.insert("bridge".into(), bridge.clone().into());
                vifs.push(serde_json::Value::Object(vif));
            }
            NoxsDevice::Vbd {
                devid,
                target,
                readonly,
            } => {
                let letter = u8::try_from(vbds.len())
                    .ok()
                    .filter(|index| *index < 26)
                    .map(|index| char::from(b'a' + index));
                let (true, Some(letter)) = (*devid as usize == vbds.len(), letter) else {
                    return Err(format!(
                        "domain {domid}'s vbd {devid} is not its vbd number {}",
                        vbds.len()
                    ));
                };
                vbds.push(serde_json::json!({
                    "target": target,
                    "type": if target.starts_with("/dev/") { "phy" } else { "file" },
                    "vdev": format!("xvd{letter}"),
                    "access": if *readonly { "r" } else { "w" },
                }));
            }
        }
    }
    let config = serde_json::json!({
        "name": served.name,
        "memory": memory_mib,
        "vcpus": vcpus,
        "vifs": vifs,
        "vbds": vbds,
        "xen": {"dev_method": "noxs"},
    });
    Config::parse_saved(&config.to_string()).map_err(|err| {
        format!("domain {domid}'s devices, as xendevd has them, give no valid configuration: {err}")
    })
}

/// How often, and how long, chaos asks xendevd to offer a restored guest's devices
/// again: the guest grants its start_info page early in its resume, milliseconds after
/// it runs.
const REOFFER_EVERY: Duration = Duration::from_millis(10);
pub const REOFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// Have xendevd offer the devices of NoXS domain `domid`, a guest restored into it
/// and now running, again (NoXS v1.1's re-offer): asked every [`REOFFER_EVERY`] while
/// the guest has not granted its start_info page yet, for at most `timeout`. A guest
/// that shuts down (or crashes) meanwhile is named at once.
pub fn reoffer_restored(host: &Host, domid: u32, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let why = match host.xendevd.noxs_reoffer(domid) {
            Ok(()) => return Ok(()),
            Err(ClientError::NotYet(why)) => why,
            Err(ClientError::Refused(message)) => {
                return Err(Error::Xendevd(format!(
                    "cannot offer the devices of restored domain {domid} again: {message}"
                )));
            }
            Err(other) => {
                return Err(Error::Xendevd(format!(
                    "a restored NoXS domain gets its devices from xendevd: {other}"
                )));
            }
        };
        if let Some(info) = host.xc.domain_info(domid)?
            && let Some(reason) = info.shutdown
        {
            return Err(Error::Xendevd(format!(
                "restored domain {domid} shut down ({}) before its devices were offered \
                 again: see its console",
                reason.name()
            )));
        }
        crate::signal::check()?;
        let now = std::time::Instant::now();
        if now >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "restored domain {domid} to grant its start_info page, so that xendevd \
                     offers its devices again ({tries} tries; {why}): does the guest support \
                     NoXS v1.1 re-offers?"
                ),
                after: timeout,
            });
        }
        std::thread::sleep(REOFFER_EVERY.min(deadline - now));
    }
}

/// Give served NoXS domain `domid` the name `name` in xendevd, which holds a NoXS
/// guest's name.
pub fn rename(host: &Host, domid: u32, name: &str) -> Result<()> {
    host.xendevd
        .noxs_rename(domid, name)
        .map_err(|err| match err {
            ClientError::Refused(message) => {
                Error::Xendevd(format!("cannot rename domain {domid} to {name}: {message}"))
            }
            other => Error::Xendevd(format!("a NoXS guest's name is xendevd's: {other}")),
        })
}

/// Ask NoXS domain `domid` to power off, reboot, suspend or crash (through its sysctl
/// device); returns once the guest acknowledged, an error if it did not within
/// `timeout`.
pub fn power(host: &Host, domid: u32, action: noxs::Request, timeout: Duration) -> Result<()> {
    host.xendevd
        .power(domid, action, timeout)
        .map_err(|err| match err {
            ClientError::Refused(message) => Error::Xendevd(format!(
                "power request {action:?} to domain {domid}: {message}"
            )),
            other => Error::Xendevd(format!(
                "a NoXS power request goes through xendevd: {other}"
            )),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::random_mac;
    use std::net::Ipv4Addr;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    fn entry(kind: Kind, devid: u32, gref: u32, port: u32) -> noxs::Entry {
        noxs::Entry {
            kind,
            devid,
            backend: 0,
            ctrl_gref: gref,
            ctrl_port: port,
        }
    }

    const DAYTIME: &str = r#"{"name": "daytime", "kernel": "/apps/daytime", "memory": 8,
        "vcpus": 1, "xen": {"dev_method": "noxs"},
        "vifs": [{"ip": "10.0.2.16", "gateway": "10.0.2.2", "mac": "00:16:3e:0a:00:10"},
                 {"bridge": "br1"}],
        "vbds": [{"target": "/disk.img", "type": "file", "vdev": "xvda", "access": "r"},
                 {"target": "/dev/vdb", "type": "phy", "vdev": "xvdb"}]}"#;

    #[test]
    fn devices_are_sysctl_then_vifs_then_vbds() {
        let (devices, macs) = devices_for(&config(DAYTIME), || random_mac([1, 2, 3]));
        assert_eq!(
            devices,
            [
                NoxsDevice::Sysctl,
                NoxsDevice::Vif {
                    devid: 0,
                    mac: "00:16:3e:0a:00:10".parse().unwrap(),
                    bridge: "xenbr0".into(),
                    ip: Some(Ipv4Addr::new(10, 0, 2, 16)),
                    prefix_len: Some(24),
                    gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                },
                NoxsDevice::Vif {
                    devid: 1,
                    mac: "00:16:3e:01:02:03".parse().unwrap(),
                    bridge: "br1".into(),
                    ip: None,
                    prefix_len: None,
                    gateway: None,
                },
                NoxsDevice::Vbd {
                    devid: 0,
                    target: "/disk.img".into(),
                    readonly: true,
                },
                NoxsDevice::Vbd {
                    devid: 1,
                    target: "/dev/vdb".into(),
                    readonly: false,
                },
            ]
        );
        assert_eq!(
            macs.iter().map(Mac::to_string).collect::<Vec<_>>(),
            ["00:16:3e:0a:00:10", "00:16:3e:01:02:03"]
        );
        let (devices, _) = devices_for(
            &config(
                r#"{"name": "d", "kernel": "/k", "memory": 8, "vcpus": 1,
                    "xen": {"dev_method": "noxs"}, "vifs": [{"ip": "10.0.0.5/8"}]}"#,
            ),
            || random_mac([9, 9, 9]),
        );
        let NoxsDevice::Vif {
            mac, prefix_len, ..
        } = &devices[1]
        else {
            panic!("{devices:?}");
        };
        assert_eq!(*prefix_len, Some(8));
        assert_eq!(mac.to_string(), "00:16:3e:09:09:09");
    }

    fn daytime_answer() -> (Vec<NoxsDevice>, NoxsDomain) {
        let (devices, _) = devices_for(&config(DAYTIME), || random_mac([1, 2, 3]));
        // xendevd may answer in any order.
        let answer = NoxsDomain {
            domid: 7,
            name: "daytime".into(),
            entries: vec![
                entry(Kind::Vbd, 1, 14, 9),
                entry(Kind::Vif, 0, 10, 5),
                entry(Kind::Sysctl, 0, 9, 4),
                entry(Kind::Vif, 1, 11, 6),
                entry(Kind::Vbd, 0, 13, 8),
            ],
            states: Vec::new(),
            created_ms: 0,
            devices: Vec::new(),
        };
        (devices, answer)
    }

    /// What chaos writes is what the guest reads: the page, decoded as the guest's
    /// kernel does (`xenproto::noxs::Block::decode` of the page from 0x800 on).
    #[test]
    fn the_block_written_is_the_block_the_guest_reads() {
        let (devices, answer) = daytime_answer();
        let block = block_for(&devices, &answer, 7).unwrap();
        let kinds: Vec<_> = block.entries.iter().map(|e| (e.kind, e.devid)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Sysctl, 0),
                (Kind::Vif, 0),
                (Kind::Vif, 1),
                (Kind::Vbd, 0),
                (Kind::Vbd, 1)
            ]
        );
        assert_eq!(
            block.entries[1],
            noxs::Entry {
                kind: Kind::Vif,
                backend: 0,
                devid: 0,
                ctrl_gref: 10,
                ctrl_port: 5
            }
        );
        let mut page = [0u8; START_INFO_PAGE];
        // start_info's own fields stay as the builder wrote them.
        page[..0x4c0].fill(0xa5);
        write_block(&mut page, &block).unwrap();
        assert!(page[..0x4c0].iter().all(|&b| b == 0xa5));
        assert!(page[0x4c0..BLOCK_OFFSET].iter().all(|&b| b == 0));
        // The header: "NOXS", version 1, 5 entries, reserved 0.
        assert_eq!(&page[0x800..0x804], b"NOXS");
        assert_eq!(&page[0x804..0x810], &[1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The first entry: kind 1 (sysctl), back end 0, devid 0, gref 9, port 4.
        assert_eq!(
            &page[0x810..0x828],
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let decoded = Block::decode(&page[BLOCK_OFFSET..]).unwrap().unwrap();
        assert_eq!(decoded, block);
        // Nothing past the entries.
        assert!(page[0x810 + 5 * 24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_device_less_guest_gets_sysctl_only() {
        let config = config(
            r#"{"name": "noop", "kernel": "/k", "memory": 4, "vcpus": 1,
                "xen": {"dev_method": "noxs"}}"#,
        );
        let (devices, macs) = devices_for(&config, || unreachable!());
        assert_eq!(devices, [NoxsDevice::Sysctl]);
        assert!(macs.is_empty());
        let answer = NoxsDomain {
            domid: 3,
            name: "noop".into(),
            entries: vec![entry(Kind::Sysctl, 0, 8, 3)],
            states: Vec::new(),
            created_ms: 0,
            devices: Vec::new(),
        };
        let mut page = [0u8; START_INFO_PAGE];
        write_block(&mut page, &block_for(&devices, &answer, 3).unwrap()).unwrap();
        let decoded = Block::decode(&page[BLOCK_OFFSET..]).unwrap().unwrap();
        assert_eq!(decoded.entries.len(), 1);
        assert_eq!(decoded.of_kind(Kind::Sysctl).count(), 1);
    }

    #[test]
    fn bad_answers_are_refused_by_entry() {
        let (devices, good) = daytime_answer();
        type Spoil = Box<dyn Fn(&mut NoxsDomain)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (
                Box::new(|a| a.domid = 8),
                "the answer is for domain 8, not 7",
            ),
            (
                Box::new(|a| {
                    a.entries.remove(3);
                }),
                "no entry for vif 1",
            ),
            (
                Box::new(|a| a.entries.push(entry(Kind::Vif, 2, 1, 1))),
                "entries[5] is for vif 2, which was not asked for",
            ),
            (
                Box::new(|a| a.entries.push(entry(Kind::Sysctl, 0, 1, 1))),
                "entries[5]: sysctl has two entries",
            ),
            (
                Box::new(|a| a.entries[0].backend = 7),
                "entries[0] (vbd 1): back end domain 7 cannot serve domain 7",
            ),
            (
                Box::new(|a| a.entries[2].backend = 0x7ff2),
                "entries[2] (sysctl): back end domain 32754",
            ),
            (
                Box::new(|a| a.entries[1].ctrl_port = 0),
                "entries[1] (vif 0): event channel port 0",
            ),
        ];
        for (spoil, why) in cases {
            let mut answer = good.clone();
            spoil(&mut answer);
            let err = block_for(&devices, &answer, 7).unwrap_err();
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        let too_many = vec![NoxsDevice::Sysctl; MAX_ENTRIES + 1];
        assert!(
            block_for(&too_many, &good, 7)
                .unwrap_err()
                .contains("at most 64")
        );
    }

    /// What a save records of a NoXS guest is what its create asked of xendevd: the
    /// same devices (MACs, addresses, disks) come back from the configuration.
    #[test]
    fn a_saved_configuration_asks_for_the_same_devices() {
        let created = config(DAYTIME);
        let (devices, _) = devices_for(&created, || random_mac([1, 2, 3]));
        let served = NoxsDomain {
            domid: 7,
            name: "daytime".into(),
            entries: Vec::new(),
            states: Vec::new(),
            created_ms: 0,
            devices: devices.clone(),
        };
        let saved = config_of(&served, 8 * 1024 + 1024, 1024, 1).unwrap();
        assert_eq!(saved.name, "daytime");
        assert_eq!((saved.memory_mib, saved.vcpus), (8, 1));
        assert_eq!(saved.dev_method, crate::config::DevMethod::Noxs);
        assert!(saved.kernel.as_os_str().is_empty() && saved.cmdline.is_empty());
        let (again, macs) = devices_for(&saved, || unreachable!("every MAC is recorded"));
        assert_eq!(again, devices);
        assert_eq!(macs[1].to_string(), "00:16:3e:01:02:03");
        assert_eq!(
            saved.vbds.iter().map(|v| v.vdev.name()).collect::<Vec<_>>(),
            ["xvda", "xvdb"]
        );
        // The file's configuration parses back to the same.
        let text = saved.to_json().unwrap().to_string();
        assert_eq!(Config::parse_saved(&text).unwrap(), saved);
        // Nothing to go by, or a limit chaos did not set: named.
        let bare = NoxsDomain {
            devices: Vec::new(),
            ..served.clone()
        };
        assert!(
            config_of(&bare, 9216, 1024, 1)
                .unwrap_err()
                .contains("does not say which devices")
        );
        assert!(
            config_of(&served, 9000, 1024, 1)
                .unwrap_err()
                .contains("memory limit (9000 KiB)")
        );
        assert!(
            config_of(&served, 512, 1024, 1)
                .unwrap_err()
                .contains("memory limit (512 KiB)")
        );
    }

    #[test]
    fn a_page_with_data_where_the_block_goes_is_left_alone() {
        let mut page = [0u8; START_INFO_PAGE];
        page[0x900] = 1;
        let before = page;
        let err = write_block(&mut page, &Block::default()).unwrap_err();
        assert!(err.contains("data at offset 0x900"), "{err}");
        assert_eq!(page, before);
    }
}
