//! A shell: a domain built ahead of its guest, as far as a guest's shape allows
//! ([`make`]), and what makes it the guest ([`Shell::fill`]). The split, and what each
//! step costs, is in the module documentation of [`crate::daemon`].

use std::time::{Duration, Instant};

use xenhost::xcdom::{DomImage, GUEST_TYPE_X86_64};

use crate::claim;
use crate::config::{Config, DevMethod, SHELL_NAME_PREFIX};
use crate::device::{DeviceMethod, NewDomain, XenstoreMethod};
use crate::domain::{self, Created};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::noxs::NoxsMethod;
use crate::shape::Shape;
use crate::uuid::Uuid;
use xendevd::api::ShellDevice;

use super::records::{Record, Records};

/// A shell's devices, by device method.
#[derive(Debug)]
enum Devices {
    /// The domain's nodes and its vifs (netback's and xendevd's work done ahead).
    Xenstore(XenstoreMethod),
    /// xendevd's control pages, event channels and taps.
    Noxs(NoxsMethod),
}

impl Devices {
    fn method(&mut self) -> &mut dyn DeviceMethod {
        match self {
            Self::Xenstore(method) => method,
            Self::Noxs(method) => method,
        }
    }
}

/// A domain waiting for a guest of its shape.
#[derive(Debug)]
pub struct Shell<'h> {
    pub domid: u32,
    pub uuid: Uuid,
    pub shape: Shape,
    /// The builder's image, memory populated, no kernel yet.
    image: DomImage<'h>,
    /// `(console, store)` event channels (store 0 for NoXS).
    ports: (u32, u32),
    devices: Devices,
    /// How long making it took.
    pub took: Duration,
}

/// Why a shell did not become its guest.
#[derive(Debug)]
pub enum FillError {
    /// The kernel is not a 64-bit PV kernel, for which the shell's memory was laid
    /// out: the shell is destroyed; the guest is to be built in full.
    NotForShells { guest_type: String },
    /// The guest failed, as a create fails; nothing of it (or the shell) is left.
    Failed(Error),
}

impl From<Error> for FillError {
    fn from(err: Error) -> Self {
        Self::Failed(err)
    }
}

/// The name a shell has until it is filled.
pub fn shell_name(domid: u32) -> String {
    format!("{SHELL_NAME_PREFIX}{domid}")
}

/// Make a shell of `shape`: the domain with its limits and event channels, its memory
/// populated, its devices made (their readiness: [`Shell::ready`]). Claimed
/// ([`crate::claim`], as `chaos-shell-UUID`) from before the domain exists until it is
/// recorded in `records`, which happens as soon as it exists: a daemon killed in
/// between leaves an orphan that `chaos destroy --orphans` finds. Nothing is left on
/// failure.
pub fn make<'h>(host: &'h Host, shape: &Shape, records: &Records) -> Result<Shell<'h>> {
    let started = Instant::now();
    let physinfo = domain::physinfo_with_room(host, shape.memory_mib, "for a shell")?;
    let uuid = Uuid::random();
    let grant_version = if physinfo.gnttab_v2() { 2 } else { 1 };
    let claim = domain::claims(host).take(
        &claim::Record {
            name: format!("{SHELL_NAME_PREFIX}{uuid}"),
            uuid: uuid.to_string(),
            dev_method: shape.dev_method,
            pid: std::process::id(),
        },
        |handle| domain::find_by_handle(host, handle),
    )?;
    let domid = host.timed("xc_domain_create", || {
        Ok(host.xc.domain_create(uuid.0, shape.vcpus, grant_version)?)
    })?;
    let record = Record {
        domid,
        uuid: uuid.to_string(),
        dev_method: shape.dev_method,
    };
    let made = records.write(&record).map_err(Error::from).and_then(|()| {
        drop(claim);
        make_in(host, shape, domid, &uuid)
    });
    match made {
        Ok((image, ports, devices)) => Ok(Shell {
            domid,
            uuid,
            shape: shape.clone(),
            image,
            ports,
            devices,
            took: started.elapsed(),
        }),
        Err(err) => Err(discard(host, records, domid, &uuid, shape.dev_method, err)),
    }
}

/// [`make`] once the domain exists.
fn make_in<'h>(
    host: &'h Host,
    shape: &Shape,
    domid: u32,
    uuid: &Uuid,
) -> Result<(DomImage<'h>, (u32, u32), Devices)> {
    domain::set_limits(host, domid, shape.memory_mib, shape.vcpus)?;
    let noxs = shape.dev_method == DevMethod::Noxs;
    let (store_port, console_port) = domain::alloc_ports(host, domid, !noxs)?;
    let ports = (console_port, store_port);
    let image = host.timed("xc_dom: image, populate", || {
        let mut image = domain::new_image(host, domid, "", ports, shape.vcpus)?;
        image.populate_ahead(shape.memory_mib)?;
        Ok(image)
    })?;
    let name = shell_name(domid);
    let devices =
        if noxs {
            let mut method = NoxsMethod::new();
            let mut devices = vec![ShellDevice::Sysctl];
            devices.extend((0u32..).zip(&shape.vif_bridges).map(|(devid, bridge)| {
                ShellDevice::Vif {
                    devid,
                    bridge: bridge.clone(),
                }
            }));
            devices.extend(
                (0u32..)
                    .take(shape.vbds)
                    .map(|devid| ShellDevice::Vbd { devid }),
            );
            method.prepare_shell(host, domid, &name, &devices)?;
            Devices::Noxs(method)
        } else {
            let mut method = XenstoreMethod::new();
            method.prepare_shell(host, domid, uuid, &name, &shape.vif_bridges)?;
            Devices::Xenstore(method)
        };
    Ok((image, ports, devices))
}

/// Destroy what there is of shell `domid` after `err`, and forget it: `err`, with
/// the cleanup's failure if there was one.
fn discard(
    host: &Host,
    records: &Records,
    domid: u32,
    uuid: &Uuid,
    dev_method: DevMethod,
    err: Error,
) -> Error {
    match domain::destroy_known(host, domid, Some(uuid), dev_method) {
        Ok(()) => {
            let _ = records.remove(domid);
            Error::CreateFailed {
                domid,
                source: Box::new(err),
            }
        }
        Err(cleanup) => Error::CreateFailedLeaked {
            domid,
            source: Box::new(err),
            cleanup: Box::new(cleanup),
        },
    }
}

impl<'h> Shell<'h> {
    /// Whether its devices are up (a Xenstore shell's vifs: hotplugged by xendevd,
    /// probed by netback); an error if one failed.
    pub fn ready(&self, host: &Host) -> Result<bool> {
        match &self.devices {
            Devices::Xenstore(method) => Ok(method.devices_ready(host, self.domid)?.is_some()),
            Devices::Noxs(_) => Ok(true),
        }
    }

    /// Destroy it and its record.
    pub fn destroy(self, host: &Host, records: &Records) -> Result<()> {
        let Self {
            domid,
            uuid,
            shape,
            image,
            ..
        } = self;
        drop(image);
        domain::destroy_known(host, domid, Some(&uuid), shape.dev_method)?;
        Ok(records.remove(domid)?)
    }

    /// Make it the guest `config` describes (its shape is the shell's): the kernel and
    /// command line loaded, the rest of the configuration applied (name, MACs,
    /// addresses, disks), started unless `force_paused` or the configuration keeps it
    /// paused. Its record goes just before it runs. On an error nothing of it is left.
    pub fn fill(
        self,
        host: &'h Host,
        config: &Config,
        force_paused: bool,
        records: &Records,
    ) -> Result<Created, FillError> {
        debug_assert_eq!(
            Shape::of(config),
            self.shape,
            "a shell of the guest's shape"
        );
        let Self {
            domid,
            uuid,
            shape,
            mut image,
            ports,
            mut devices,
            ..
        } = self;
        let dev_method = shape.dev_method;
        // The kernel first: one the memory was not laid out for leaves the rest of the
        // shell untouched, to be destroyed.
        let parsed = host.timed("xc_dom: kernel, command line, parse", || {
            image.set_cmdline(&config.cmdline)?;
            image.kernel_file(&config.kernel)?;
            if let Some(ramdisk) = &config.ramdisk {
                image.module_file(ramdisk)?;
            }
            Ok(image.parse_image()?)
        });
        let guest_type = image.guest_type().unwrap_or_default();
        if parsed.is_ok() && guest_type != GUEST_TYPE_X86_64.to_string_lossy() {
            drop(image);
            let destroyed = domain::destroy_known(host, domid, Some(&uuid), dev_method)
                .and_then(|()| Ok(records.remove(domid)?));
            return match destroyed {
                Ok(()) => Err(FillError::NotForShells { guest_type }),
                Err(err) => Err(FillError::Failed(err)),
            };
        }
        let domain = NewDomain {
            domid,
            uuid: &uuid,
            config,
        };
        let filled = parsed.and_then(|()| {
            match &mut devices {
                Devices::Xenstore(method) => method.fill_shell(host, &domain)?,
                Devices::Noxs(method) => method.prepare(host, &domain)?,
            }
            host.timed("xc_dom: build, boot", || domain::finish_image(&mut image))?;
            let built = domain::built(config, &image, ports);
            let method = devices.method();
            method.finish(host, &domain, &built, Some(image.start_info_page()?))?;
            Ok(method.macs())
        });
        drop(image);
        let paused = config.paused || force_paused;
        let ran = filled.and_then(|macs| {
            // A shell no longer: a daemon that died from here on leaves a guest, never
            // runs it, and never destroys it at its next start.
            records.remove(domid)?;
            domain::run_unless(host, domid, paused)?;
            Ok(macs)
        });
        match ran {
            Ok(macs) => Ok(Created {
                domid,
                name: config.name.clone(),
                uuid,
                paused,
                macs,
                dev_method,
            }),
            Err(err) => Err(FillError::Failed(discard(
                host, records, domid, &uuid, dev_method, err,
            ))),
        }
    }
}
