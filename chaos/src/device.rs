//! How a guest gets its devices: the [`DeviceMethod`] trait and its Xenstore
//! implementation ([`XenstoreMethod`]); NoXS (a device block in the guest's start_info,
//! `shared/design/noxs-v1.md`) implements it in `noxs.rs`. The domain builder
//! ([`crate::domain`]) only talks to the trait.
//!
//! Xenstore method, per device:
//! - **vif**: front and back end in one transaction with the domain's own nodes,
//!   `toolstack = "chaos"` so xendevd puts the vif netback makes on its bridge and
//!   writes `hotplug-status = connected`; chaos waits for that and for netback's
//!   `InitWait` before the guest runs.
//! - **vbd**: `phy` targets as they are; `file` targets through xendevd's
//!   `AttachDisk` (a loop device); either way chaos writes `physical-device` itself
//!   and waits for blkback's `InitWait`.
//! - **console**: the nodes xenconsoled reads (`console/ring-ref`, `port`, `type`, …)
//!   after the build, when the ring's frame is known.
//!
//! The back ends probe while libxenguest builds the domain: the device nodes are
//! written before the build, the wait comes after it.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use xendevd::client::ClientError;

use crate::config::{Access, Config, Mac, VbdKind, random_mac};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::layout::{self, Kind};
use crate::signal;
use crate::uuid::{Uuid, random_bytes};
use xenhost::xcdom::START_INFO_PAGE;
use xenhost::xs::{Store, Xs};

/// A domain being created, as the device method sees it.
#[derive(Debug, Clone, Copy)]
pub struct NewDomain<'a> {
    pub domid: u32,
    pub uuid: &'a Uuid,
    pub config: &'a Config,
}

/// Sets up and tears down a guest's devices (and whatever else the guest finds them
/// through).
pub trait DeviceMethod {
    /// For messages: "xenstore".
    fn name(&self) -> &'static str;

    /// Whether the guest gets a Xenstore ring (an event channel for it, introduced to
    /// xenstored).
    fn uses_xenstore(&self) -> bool;

    /// Before the domain is built: make its devices (back ends start probing now).
    fn prepare(&mut self, host: &Host, domain: &NewDomain<'_>) -> Result<()>;

    /// After the build, before the guest runs: publish what the build produced (rings,
    /// event channels), in Xenstore or in the guest's `start_info` page, and wait until
    /// every device's back end is ready. A restore has no `start_info` to write: the
    /// guest's own page came back with its memory.
    fn finish(
        &mut self,
        host: &Host,
        domain: &NewDomain<'_>,
        built: &Built,
        start_info: Option<&mut [u8; START_INFO_PAGE]>,
    ) -> Result<()>;

    /// The vifs' MAC addresses, in order (random ones included), once prepared.
    fn macs(&self) -> Vec<Mac>;

    /// Remove everything this method made for `domid` (whose handle is `uuid`, if
    /// known). Idempotent: parts already gone are skipped, so it also cleans up after a
    /// create that failed half-way.
    fn teardown(&self, host: &Host, domid: u32, uuid: Option<&Uuid>) -> Result<()>;
}

/// What the PV build produced, for [`DeviceMethod::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub nodes: layout::Built,
    /// libxenguest's guest type (`xen-3.0-x86_64`).
    pub guest_type: String,
}

impl Built {
    /// The blkif protocol name of the guest's ABI (`xen/include/public/io/protocols.h`).
    pub fn protocol(&self) -> &'static str {
        if self.guest_type.contains("x86_32") {
            "x86_32-abi"
        } else {
            "x86_64-abi"
        }
    }
}

/// The standard xenbus handshake through Xenstore.
#[derive(Debug, Default)]
pub struct XenstoreMethod {
    vifs: Vec<layout::VifSpec>,
    vbds: Vec<layout::VbdSpec>,
}

/// The `script` node of a vif back end. netback fails its probe without one (it reads
/// it for its uevents); nothing runs it: xendevd does the hotplug work for chaos's vifs.
pub const VIF_SCRIPT: &str = "xendevd";

impl XenstoreMethod {
    pub fn new() -> Self {
        Self::default()
    }

    /// The vifs as set up (their MACs, random ones included), once prepared.
    pub fn vifs(&self) -> &[layout::VifSpec] {
        &self.vifs
    }

    /// A shell's part (the chaos daemon's, before its guest is known): the domain's
    /// nodes under the shell's `name`, and a vif on each of `bridges` with a placeholder
    /// MAC, which netback probes and xendevd puts on its bridge meanwhile
    /// ([`Self::devices_ready`] says when). No disks: a vbd's directory is named by its
    /// disk name, and blkback opens its device once, when it probes it.
    pub fn prepare_shell(
        &mut self,
        host: &Host,
        domid: u32,
        uuid: &Uuid,
        name: &str,
        bridges: &[String],
    ) -> Result<()> {
        self.vifs = (0u32..)
            .zip(bridges)
            .map(|(devid, bridge)| layout::VifSpec {
                devid,
                mac: random_mac_now(),
                ip: None,
                bridge: bridge.clone(),
                script: VIF_SCRIPT.to_owned(),
            })
            .collect();
        let mut nodes = layout::domain(domid, uuid, name);
        for vif in &self.vifs {
            nodes.extend(layout::vif(domid, vif));
        }
        host.timed("xenstore: shell's domain and vifs", || {
            host.write_nodes(&nodes)
        })
    }

    /// Make a shell made by [`Self::prepare_shell`] the guest of `domain`: its name,
    /// its vifs' MACs and addresses (the bridges are the shell's, as its shape says),
    /// its disks (as [`DeviceMethod::prepare`] makes them). [`DeviceMethod::finish`]
    /// follows the build, as for any guest.
    pub fn fill_shell(&mut self, host: &Host, domain: &NewDomain<'_>) -> Result<()> {
        for (vif, wanted) in self.vifs.iter_mut().zip(&domain.config.vifs) {
            debug_assert_eq!(vif.bridge, wanted.bridge, "the shell's shape");
            vif.mac = wanted.mac.unwrap_or_else(random_mac_now);
            vif.ip = wanted.ip;
        }
        self.attach_disks(host, domain)?;
        let mut nodes =
            layout::shell_filled(domain.domid, domain.uuid, &domain.config.name, &self.vifs);
        for vbd in &self.vbds {
            nodes.extend(layout::vbd(domain.domid, vbd));
        }
        host.timed("xenstore: name, MACs, disks", || host.write_nodes(&nodes))
    }

    fn attach_disks(&mut self, host: &Host, domain: &NewDomain<'_>) -> Result<()> {
        for (index, vbd) in domain.config.vbds.iter().enumerate() {
            let target = vbd.target.to_string_lossy().into_owned();
            let (device, major, minor) = match vbd.kind {
                VbdKind::Phy => {
                    let meta = std::fs::metadata(&vbd.target).map_err(|err| Error::Device {
                        device: format!("vbds[{index}] ({})", vbd.vdev),
                        message: format!("{target}: {err}"),
                    })?;
                    let rdev = meta.rdev();
                    (target.clone(), libc::major(rdev), libc::minor(rdev))
                }
                VbdKind::File => {
                    let device = || format!("vbds[{index}] ({})", vbd.vdev);
                    let disk = host.timed(&format!("xendevd attach {target}"), || {
                        host.xendevd
                            .attach_disk(&target, vbd.access == Access::Read, domain.domid)
                            .map_err(|err| Error::Device {
                                device: device(),
                                message: match err {
                                    ClientError::Refused(message) => {
                                        format!("xendevd cannot attach {target}: {message}")
                                    }
                                    other => {
                                        format!("a file-backed disk needs xendevd: {other}")
                                    }
                                },
                            })
                    })?;
                    (disk.device, disk.major, disk.minor)
                }
            };
            self.vbds.push(layout::VbdSpec {
                devid: vbd.vdev.number(),
                vdev: vbd.vdev.name().to_owned(),
                params: target,
                device,
                major,
                minor,
                access: vbd.access,
            });
        }
        Ok(())
    }

    /// Whether every device's back end is ready; an error if one failed.
    pub fn devices_ready(&self, host: &Host, domid: u32) -> Result<Option<()>> {
        let xs = host.xs()?;
        let state = |path: &str| -> Result<u32> {
            Ok(xs
                .read(&format!("{path}/state"))?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0))
        };
        let mut ready = true;
        for vif in &self.vifs {
            let back = layout::backend_path(Kind::Vif, domid, vif.devid);
            let device = format!("vif {} (vif{domid}.{})", vif.devid, vif.devid);
            match xs.read(&format!("{back}/hotplug-status"))?.as_deref() {
                Some("connected") => {}
                Some("error") => {
                    let why = xs
                        .read(&format!("{back}/hotplug-error"))?
                        .unwrap_or_else(|| "no hotplug-error given".into());
                    return Err(Error::Device {
                        device,
                        message: format!("xendevd could not set it up: {why}"),
                    });
                }
                _ => ready = false,
            }
            check_backend_state(
                xs,
                &back,
                Kind::Vif,
                domid,
                vif.devid,
                &device,
                state(&back)?,
                &mut ready,
            )?;
        }
        for vbd in &self.vbds {
            let back = layout::backend_path(Kind::Vbd, domid, vbd.devid);
            let device = format!("vbd {} ({})", vbd.vdev, vbd.device);
            check_backend_state(
                xs,
                &back,
                Kind::Vbd,
                domid,
                vbd.devid,
                &device,
                state(&back)?,
                &mut ready,
            )?;
        }
        Ok(ready.then_some(()))
    }

    /// The first device not ready, and what it still lacks, for a timeout message.
    fn describe_waiting(&self, host: &Host, domid: u32) -> String {
        let Ok(xs) = host.xs() else {
            return "the devices (Xenstore is gone)".into();
        };
        for vif in &self.vifs {
            let back = layout::backend_path(Kind::Vif, domid, vif.devid);
            let status = xs.read(&format!("{back}/hotplug-status")).ok().flatten();
            if status.as_deref() != Some("connected") {
                return format!(
                    "vif {} (vif{domid}.{}): no hotplug-status = connected in {back}: xendevd \
                     puts chaos's vifs on their bridge; is it running (xendevd --foreground)?",
                    vif.devid, vif.devid
                );
            }
            let state = xs.read(&format!("{back}/state")).ok().flatten();
            if state.as_deref() != Some("2") && state.as_deref() != Some("4") {
                return format!(
                    "vif {}: netback has not probed {back} (state {state:?}); is xen-netback loaded?",
                    vif.devid
                );
            }
        }
        for vbd in &self.vbds {
            let back = layout::backend_path(Kind::Vbd, domid, vbd.devid);
            let state = xs.read(&format!("{back}/state")).ok().flatten();
            if !matches!(state.as_deref(), Some("2" | "3" | "4")) {
                return format!(
                    "vbd {}: blkback has not probed {back} (state {state:?}); is xen-blkback \
                     loaded?",
                    vbd.vdev
                );
            }
        }
        "the devices".into()
    }
}

/// A random MAC address with Xen's prefix, for a vif the configuration gives none.
pub fn random_mac_now() -> Mac {
    let mut bytes = [0u8; 3];
    random_bytes(&mut bytes);
    random_mac(bytes)
}

/// A back end's state: `InitWait` (2) or later means the back-end driver probed it;
/// `Closing`/`Closed` (5, 6) before the guest ran means it gave up: its reason is in
/// `/local/domain/0/error/backend/KIND/N/DEVID/error` (`xenbus_dev_fatal`).
#[allow(
    clippy::too_many_arguments,
    reason = "one check, spelled out at its two callers"
)]
fn check_backend_state(
    xs: &Xs,
    back: &str,
    kind: Kind,
    domid: u32,
    devid: u32,
    device: &str,
    state: u32,
    ready: &mut bool,
) -> Result<()> {
    match state {
        2..=4 => Ok(()),
        5 | 6 => {
            let error_node = format!(
                "{}/error/backend/{}/{domid}/{devid}/error",
                layout::dom_path(layout::BACKEND_DOMID),
                kind.as_str()
            );
            let why = xs
                .read(&error_node)?
                .unwrap_or_else(|| format!("no reason in {error_node}"));
            Err(Error::Device {
                device: device.to_owned(),
                message: format!("the back end {back} closed: {why}"),
            })
        }
        _ => {
            *ready = false;
            Ok(())
        }
    }
}

impl DeviceMethod for XenstoreMethod {
    fn name(&self) -> &'static str {
        "xenstore"
    }

    fn uses_xenstore(&self) -> bool {
        true
    }

    fn macs(&self) -> Vec<Mac> {
        self.vifs.iter().map(|vif| vif.mac).collect()
    }

    fn prepare(&mut self, host: &Host, domain: &NewDomain<'_>) -> Result<()> {
        self.vifs = domain
            .config
            .vifs
            .iter()
            .enumerate()
            .map(|(index, vif)| layout::VifSpec {
                devid: u32::try_from(index).expect("at most MAX_VIFS"),
                mac: vif.mac.unwrap_or_else(random_mac_now),
                ip: vif.ip,
                bridge: vif.bridge.clone(),
                script: VIF_SCRIPT.to_owned(),
            })
            .collect();
        self.attach_disks(host, domain)?;
        let mut nodes = layout::domain(domain.domid, domain.uuid, &domain.config.name);
        for vif in &self.vifs {
            nodes.extend(layout::vif(domain.domid, vif));
        }
        for vbd in &self.vbds {
            nodes.extend(layout::vbd(domain.domid, vbd));
        }
        host.timed("xenstore: domain and devices", || host.write_nodes(&nodes))
    }

    fn finish(
        &mut self,
        host: &Host,
        domain: &NewDomain<'_>,
        built: &Built,
        _start_info: Option<&mut [u8; START_INFO_PAGE]>,
    ) -> Result<()> {
        let domid = domain.domid;
        let xs = host.xs()?;
        let mut nodes = layout::built(domid, domain.uuid, &built.nodes);
        for vbd in &self.vbds {
            nodes.extend(layout::vbd_protocol(domid, vbd.devid, built.protocol()));
        }
        host.timed("xenstore: rings, console", || host.write_nodes(&nodes))?;
        host.timed("xs_introduce_domain", || {
            Ok(xs.introduce_domain(domid, built.nodes.store_mfn, built.nodes.store_port)?)
        })?;
        if self.vifs.is_empty() && self.vbds.is_empty() {
            return Ok(());
        }
        host.timed("devices ready", || {
            let watches = self
                .vifs
                .iter()
                .map(|vif| layout::backend_path(Kind::Vif, domid, vif.devid))
                .chain(
                    self.vbds
                        .iter()
                        .map(|vbd| layout::backend_path(Kind::Vbd, domid, vbd.devid)),
                )
                .map(|path| xs.watch(&path, "chaos-device"))
                .collect::<xenhost::Result<Vec<_>>>()?;
            let deadline = Instant::now() + host.options.device_timeout;
            let ready = xs.wait_until(
                deadline,
                Duration::from_millis(250),
                signal::or_interrupted(|| self.devices_ready(host, domid)),
            )?;
            drop(watches);
            ready.ok_or_else(|| Error::Timeout {
                what: self.describe_waiting(host, domid),
                after: host.options.device_timeout,
            })
        })
    }

    fn teardown(&self, host: &Host, domid: u32, uuid: Option<&Uuid>) -> Result<()> {
        let listening = host.xendevd.socket().exists();
        let Some(xs) = host.xenstore() else {
            // No xenstored: no nodes to remove, no record of the disks; xendevd still
            // holds the loop devices it attached for the domain, if any.
            if listening {
                release_loop_devices(host, domid, None)?;
            }
            return Ok(());
        };
        // Which back ends held loop devices of xendevd: their `params` (the image file)
        // differ from the device blkback opened.
        let vbd_dir = layout::backend_dir(Kind::Vbd, domid);
        let mut file_disks = false;
        for devid in xs.directory(&vbd_dir)?.unwrap_or_default() {
            let back = format!("{vbd_dir}/{devid}");
            let params = xs.read(&format!("{back}/params"))?;
            let device = xs.read(&format!("{back}/physical-device-path"))?;
            file_disks |= params.is_some() && params != device;
        }
        let paths = layout::teardown(domid, uuid);
        host.timed("xenstore: remove", || {
            Ok(xs.in_transaction(|tx| {
                for path in &paths {
                    tx.rm(path)?;
                }
                for dir in layout::cleanup_parents() {
                    if tx
                        .directory(&dir)?
                        .is_some_and(|children| children.is_empty())
                    {
                        tx.rm(&dir)?;
                    }
                }
                Ok(())
            })?)
        })?;
        // Loop devices: xendevd releases what it holds for the domain. Ask whenever it
        // listens; without it, only a domain that had file-backed disks is a problem.
        if file_disks || listening {
            release_loop_devices(host, domid, Some(file_disks))?;
        }
        Ok(())
    }
}

/// Have xendevd release the loop devices it attached for `domid`. `file_disks`: whether
/// the domain had file-backed disks (`None`: not known); only then must xendevd answer.
fn release_loop_devices(host: &Host, domid: u32, file_disks: Option<bool>) -> Result<()> {
    let released = host.timed("xendevd release", || Ok(host.xendevd.release_domain(domid)))?;
    match released {
        Ok(()) => Ok(()),
        Err(ClientError::Refused(message)) => Err(Error::Xendevd(format!(
            "cannot release domain {domid}'s loop devices: {message}"
        ))),
        Err(err) if file_disks != Some(false) => Err(Error::Xendevd(format!(
            "domain {domid} {}, but {err}: its loop devices stay attached (losetup -d them)",
            if file_disks.is_some() {
                "had file-backed disks"
            } else {
                "may hold loop devices of xendevd"
            }
        ))),
        Err(_) => Ok(()),
    }
}
