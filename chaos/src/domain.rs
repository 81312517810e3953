//! Domains: create (the checks that need the running system, then libxenctrl's domain,
//! libxenguest's PV build and the device method), destroy, find by name, list, ask to
//! shut down, and wait for the end.
//!
//! Create, step by step (`shared/reference/lightvm.md` §3.4 for LightVM's; libxl's
//! `libxl__domain_make`, `libxl__build_pre/pv/post` for xl's):
//! 1. the name claimed for this process, with the handle the domain is to have
//!    ([`crate::claim`]: one create per name, and a chaos killed from here on leaves an
//!    orphan that `chaos list` marks and `chaos destroy --orphans` removes); checks: the
//!    name is free, Xen has the memory;
//! 2. `xc_domain_create` with a random handle (never waiting for entropy), paused;
//!    `xc_domain_max_vcpus`, `xc_domain_setmaxmem`, the memory map limit, TSC mode,
//!    CPUID policy; unbound event channels for the Xenstore and console rings (NoXS:
//!    the console's only);
//! 3. the device method's `prepare` (Xenstore: the domain's nodes and its devices'
//!    front and back ends, in one transaction);
//! 4. the PV build: `xc_dom_allocate`, kernel (and ramdisk) file, `boot_xen_init`,
//!    `parse_image`, `mem_init`, `boot_mem_init`, `build_image`, `boot_image`,
//!    `gnttab_init` (seeds the console and Xenstore grants);
//! 5. the device method's `finish`, the image still mapped (Xenstore: ring and console
//!    nodes, `xs_introduce_domain`, wait for the back ends; NoXS: xendevd's
//!    `NoxsCreate`, the device block into start_info);
//! 6. unpause, unless paused.
//!
//! From step 2 on, a failure destroys the domain and everything made for it (a
//! [`Guard`]): nothing leaks, whatever step failed. The claim goes at the end, or with
//! a failure cleaned up; a failed clean-up leaves it, for `chaos destroy --orphans`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::claim::{self, Claim, Claims, Swept};
use crate::config::{Config, ConfigError, DevMethod, SHELL_NAME_PREFIX};
use crate::daemon::wire::RunDir;
use crate::device::{self, DeviceMethod, NewDomain, XenstoreMethod};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::layout;
use crate::noxs::{self, NoxsMethod};
use crate::signal;
use crate::uuid::Uuid;
use xendevd::api::DomainSummary;
use xenhost::xc::{DomainInfo, PhysInfo, ShutdownReason};
use xenhost::xcdom::DomImage;
use xenhost::xs::Store;

/// libxl's `LIBXL_MAXMEM_CONSTANT`: Xen's memory limit of a domain is its size plus this.
pub(crate) const MAXMEM_SLACK_KIB: u64 = 1024;
/// The domain that serves every guest's Xenstore and console (dom0 here).
pub(crate) const SERVICE_DOMID: u32 = 0;
/// `DOMID_FIRST_RESERVED`: ids from here on are not domains.
const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// A domain chaos created.
#[derive(Debug, Clone)]
pub struct Created {
    pub domid: u32,
    pub name: String,
    pub uuid: Uuid,
    /// Whether it was left paused.
    pub paused: bool,
    /// The vifs' MAC addresses, in order (random ones included).
    pub macs: Vec<crate::config::Mac>,
    pub dev_method: DevMethod,
}

/// The device method a configuration asks for.
fn method_for(dev_method: DevMethod) -> Box<dyn DeviceMethod> {
    match dev_method {
        DevMethod::Xenstore => Box::new(XenstoreMethod::new()),
        DevMethod::Noxs => Box::new(NoxsMethod::new()),
    }
}

/// The device method of an existing domain: NoXS if xendevd serves it as such (chaos
/// keeps no record of a guest once made), Xenstore otherwise.
pub fn dev_method_of(host: &Host, domid: u32) -> Result<DevMethod> {
    Ok(if noxs::served_domain(host, domid)?.is_some() {
        DevMethod::Noxs
    } else {
        DevMethod::Xenstore
    })
}

/// Destroys a domain being created unless disarmed: on an error return and on a panic
/// alike, nothing of it is left.
struct Guard<'a> {
    host: &'a Host,
    domid: u32,
    uuid: Uuid,
    dev_method: DevMethod,
    armed: bool,
}

impl Guard<'_> {
    /// Destroy now with `method`, the one that made the devices (it knows what it
    /// made), reporting how it went.
    fn destroy(mut self, method: &dyn DeviceMethod) -> Result<()> {
        self.armed = false;
        destroy_with(
            self.host,
            self.domid,
            Some(&self.uuid),
            self.dev_method,
            method,
        )
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(err) =
                destroy_known(self.host, self.domid, Some(&self.uuid), self.dev_method)
        {
            eprintln!("chaos: cleaning up domain {} failed: {err}", self.domid);
        }
    }
}

/// Create a domain from a checked configuration (`Config::parse` and `check_files`).
/// With `force_paused` it stays paused whatever the configuration says (for a console
/// to attach first).
pub fn create(host: &Host, config: &Config, force_paused: bool) -> Result<Created> {
    make(host, config, "asked", |domid, uuid, method| {
        build(host, config, domid, uuid, method, force_paused)
    })
}

/// A new domain for `config`, made by `steps` once it exists (a build, or a restore):
/// the name claimed and free, Xen's room for `config.memory_mib` MiB (`purpose` says
/// what the memory is for, in the error), the domain created paused; if `steps` fails
/// the domain is destroyed with everything `method` made for it.
pub(crate) fn make(
    host: &Host,
    config: &Config,
    purpose: &str,
    steps: impl FnOnce(u32, &Uuid, &mut dyn DeviceMethod) -> Result<Created>,
) -> Result<Created> {
    // 1. The name, and checks against the running system, before anything is made.
    if config.dev_method == DevMethod::Xenstore {
        host.xs()?;
    }
    let uuid = Uuid::random();
    let claim = claim_name(host, &config.name, &uuid, config.dev_method)?;
    let physinfo = physinfo_with_room(host, config.memory_mib, purpose)?;
    let grant_version = if physinfo.gnttab_v2() { 2 } else { 1 };

    // 2. The domain.
    let domid = host.timed("xc_domain_create", || {
        Ok(host.xc.domain_create(uuid.0, config.vcpus, grant_version)?)
    })?;
    let guard = Guard {
        host,
        domid,
        uuid,
        dev_method: config.dev_method,
        armed: true,
    };
    let mut method = method_for(config.dev_method);
    match steps(domid, &uuid, method.as_mut()) {
        Ok(created) => {
            let mut guard = guard;
            guard.armed = false;
            host.timed("release the claim", || {
                drop(claim);
                Ok(())
            })?;
            Ok(created)
        }
        Err(err) => match guard.destroy(method.as_ref()) {
            Ok(()) => Err(Error::CreateFailed {
                domid,
                source: Box::new(err),
            }),
            Err(cleanup) => {
                claim.abandon();
                Err(Error::CreateFailedLeaked {
                    domid,
                    source: Box::new(err),
                    cleanup: Box::new(cleanup),
                })
            }
        },
    }
}

/// The claims of creates under way ([`crate::claim`]) in chaos's run directory.
pub fn claims(host: &Host) -> Claims {
    Claims::new(RunDir(host.options.run_dir.clone()).claims())
}

/// The domain whose handle is `uuid`, if there is one.
pub fn find_by_handle(host: &Host, uuid: &Uuid) -> Result<Option<u32>> {
    Ok(host
        .xc
        .domains()?
        .into_iter()
        .find(|info| info.handle == uuid.0)
        .map(|info| info.domid))
}

/// A create's first steps: claim `name` for this process, for the domain of handle
/// `uuid` and device method `dev_method` (a running create of the name, or an orphan
/// of one, makes it a configuration error on `name`), then check that no domain has
/// the name. The claim holds until dropped; see [`crate::claim`].
pub fn claim_name(host: &Host, name: &str, uuid: &Uuid, dev_method: DevMethod) -> Result<Claim> {
    let record = claim::Record {
        name: name.to_owned(),
        uuid: uuid.to_string(),
        dev_method,
        pid: std::process::id(),
    };
    let claim = host.timed("claim the name", || {
        claims(host).take(&record, |handle| find_by_handle(host, handle))
    })?;
    check_name_free(host, name)?;
    Ok(claim)
}

/// Xen's physical information, once it is known to have `memory_mib` MiB free (else a
/// configuration error on `memory`: "`memory_mib` MiB `purpose`, but Xen has N MiB
/// free").
pub(crate) fn physinfo_with_room(host: &Host, memory_mib: u32, purpose: &str) -> Result<PhysInfo> {
    let physinfo = host.timed("xc_physinfo", || Ok(host.xc.physinfo()?))?;
    let free_mib = physinfo.free_pages / 256;
    if u64::from(memory_mib) > free_mib {
        return Err(ConfigError::new(
            "memory",
            format!("{memory_mib} MiB {purpose}, but Xen has {free_mib} MiB free"),
        )
        .into());
    }
    Ok(physinfo)
}

/// The first check of a create: no domain is named `name`.
pub fn check_name_free(host: &Host, name: &str) -> Result<()> {
    host.timed("check name", || {
        if let Some(domid) = find_by_name(host, name)? {
            return Err(ConfigError::new(
                "name",
                format!("a domain named {name:?} exists already (domain {domid})"),
            )
            .into());
        }
        Ok(())
    })
}

/// A new domain's limits and platform, as libxl sets them: vCPUs, memory (and the
/// memory map's limit), TSC mode, CPUID policy.
pub(crate) fn set_limits(host: &Host, domid: u32, memory_mib: u32, vcpus: u32) -> Result<()> {
    host.timed("xc: vcpus, memory, tsc, cpuid", || {
        set_limits_only(host, domid, memory_mib, vcpus)?;
        Ok(host.xc.cpuid_apply_default(domid)?)
    })
}

/// [`set_limits`] without the CPUID policy, for a restore: the saved guest's policy
/// comes with its stream (libxl skips its own too when restoring).
pub(crate) fn set_limits_only(host: &Host, domid: u32, memory_mib: u32, vcpus: u32) -> Result<()> {
    let xc = &host.xc;
    let memory_kib = u64::from(memory_mib) * 1024;
    xc.domain_max_vcpus(domid, vcpus)?;
    xc.domain_setmaxmem(domid, memory_kib + MAXMEM_SLACK_KIB)?;
    xc.domain_set_memmap_limit(domid, memory_kib)?;
    Ok(xc.domain_set_tsc_default(domid)?)
}

/// The new domain's event channels for its Xenstore ring (only if it uses Xenstore;
/// else 0, as start_info then says) and its console: `(store, console)`.
pub(crate) fn alloc_ports(host: &Host, domid: u32, uses_xenstore: bool) -> Result<(u32, u32)> {
    host.timed("xc_evtchn_alloc_unbound", || {
        let store_port = if uses_xenstore {
            host.xc.evtchn_alloc_unbound(domid, SERVICE_DOMID)?
        } else {
            0
        };
        Ok((
            store_port,
            host.xc.evtchn_alloc_unbound(domid, SERVICE_DOMID)?,
        ))
    })
}

/// A new image for domain `domid`, its console and Xenstore served by dom0 (their
/// ports `console_port`, `store_port`), `vcpus` vCPUs: the builder's steps that need no
/// kernel.
pub(crate) fn new_image<'h>(
    host: &'h Host,
    domid: u32,
    cmdline: &str,
    (console_port, store_port): (u32, u32),
    vcpus: u32,
) -> Result<DomImage<'h>> {
    let mut image = DomImage::allocate(&host.xc, cmdline)?;
    image.set_pv(
        console_port,
        SERVICE_DOMID,
        store_port,
        SERVICE_DOMID,
        vcpus,
    );
    image.boot_xen_init(domid)?;
    Ok(image)
}

/// The build's last steps, the kernel parsed and the memory populated: load the
/// kernel and its modules, write start_info, page tables and the vCPU's context, seed
/// the console's and Xenstore's grants.
pub(crate) fn finish_image(image: &mut DomImage<'_>) -> Result<()> {
    image.build_image()?;
    image.boot_image()?;
    Ok(image.gnttab_init()?)
}

/// What the build produced, for the device method's `finish`.
pub(crate) fn built(
    config: &Config,
    image: &DomImage<'_>,
    (console_port, store_port): (u32, u32),
) -> device::Built {
    device::Built {
        nodes: layout::Built {
            memory_kib: u64::from(config.memory_mib) * 1024,
            vcpus: config.vcpus,
            store_port,
            store_mfn: image.store_mfn(),
            console_port,
            console_mfn: image.console_mfn(),
            kernel: config.kernel.to_string_lossy().into_owned(),
            ramdisk: config
                .ramdisk
                .as_ref()
                .map(|r| r.to_string_lossy().into_owned()),
            cmdline: config.cmdline.clone(),
            start_time: start_time(),
        },
        guest_type: image.guest_type().unwrap_or_default(),
    }
}

/// Unpause a domain made paused, unless it is to stay so.
pub(crate) fn run_unless(host: &Host, domid: u32, paused: bool) -> Result<()> {
    if paused {
        return Ok(());
    }
    host.timed("xc_domain_unpause", || Ok(host.xc.domain_unpause(domid)?))
}

/// Steps 2-6 once the domain exists.
fn build(
    host: &Host,
    config: &Config,
    domid: u32,
    uuid: &Uuid,
    method: &mut dyn DeviceMethod,
    force_paused: bool,
) -> Result<Created> {
    set_limits(host, domid, config.memory_mib, config.vcpus)?;
    let (store_port, console_port) = alloc_ports(host, domid, method.uses_xenstore())?;
    signal::check()?;

    // 3. Devices: the back ends probe while the build runs.
    let domain = NewDomain {
        domid,
        uuid,
        config,
    };
    method.prepare(host, &domain)?;
    signal::check()?;

    // 4. The PV build. The image stays until the method has finished: NoXS writes into
    // its start_info page.
    let ports = (console_port, store_port);
    let mut image = host.timed("xc_dom: PV build", || {
        let mut image = new_image(host, domid, &config.cmdline, ports, config.vcpus)?;
        image.kernel_file(&config.kernel)?;
        if let Some(ramdisk) = &config.ramdisk {
            image.module_file(ramdisk)?;
        }
        image.parse_image()?;
        image.mem_init(config.memory_mib)?;
        image.boot_mem_init()?;
        finish_image(&mut image)?;
        Ok(image)
    })?;
    signal::check()?;

    // 5. Rings, console, devices ready.
    let built = built(config, &image, ports);
    method.finish(host, &domain, &built, Some(image.start_info_page()?))?;
    drop(image);
    signal::check()?;

    // 6. Run.
    let paused = config.paused || force_paused;
    run_unless(host, domid, paused)?;
    Ok(Created {
        domid,
        name: config.name.clone(),
        uuid: *uuid,
        paused,
        macs: method.macs(),
        dev_method: config.dev_method,
    })
}

/// Now as `/vm/UUID/start_time` has it: seconds since the epoch with two decimals.
pub(crate) fn start_time() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:02}", now.as_secs(), now.subsec_millis() / 10)
}

/// The id of the domain called `name`, if there is one (dom0 is "Domain-0"): a
/// Xenstore domain's name is in Xenstore (if xenstored runs), a NoXS domain's in
/// xendevd's records (if xendevd runs).
pub fn find_by_name(host: &Host, name: &str) -> Result<Option<u32>> {
    if let Some(xs) = host.xenstore() {
        for entry in xs.directory("/local/domain")?.unwrap_or_default() {
            let Ok(domid) = entry.parse::<u32>() else {
                continue;
            };
            if xs.read(&format!("/local/domain/{domid}/name"))?.as_deref() == Some(name) {
                return Ok(Some(domid));
            }
        }
    }
    for served in noxs::served_named(host, name)? {
        // xendevd may not have noticed yet that a domain is gone.
        if host.xc.domain_info(served.domid)?.is_some() {
            return Ok(Some(served.domid));
        }
    }
    Ok(None)
}

/// A domain named on the command line: an id (all digits) or a name.
pub fn resolve(host: &Host, id_or_name: &str) -> Result<u32> {
    if !id_or_name.is_empty() && id_or_name.bytes().all(|c| c.is_ascii_digit()) {
        let domid: u32 = id_or_name
            .parse()
            .map_err(|_| Error::NoSuchDomain(id_or_name.to_owned()))?;
        if domid >= DOMID_FIRST_RESERVED {
            return Err(Error::NoSuchDomain(format!(
                "{domid} (ids from {DOMID_FIRST_RESERVED} on are reserved)"
            )));
        }
        if host.xc.domain_info(domid)?.is_some() {
            return Ok(domid);
        }
        // Gone from Xen, but records may be left to clean up.
        if let Some(xs) = host.xenstore()
            && xs.read(&layout::dom_path(domid))?.is_some()
        {
            return Ok(domid);
        }
        if noxs::served_domain(host, domid)?.is_some() {
            return Ok(domid);
        }
        return Err(Error::NoSuchDomain(domid.to_string()));
    }
    find_by_name(host, id_or_name)?
        .ok_or_else(|| Error::NoSuchDomain(format!("named {id_or_name:?}")))
}

/// A domain's name, for messages: Xenstore's or xendevd's record, if any.
pub fn name_of(host: &Host, domid: u32) -> Result<Option<String>> {
    if let Some(xs) = host.xenstore()
        && let Some(name) = xs.read(&format!("{}/name", layout::dom_path(domid)))?
    {
        return Ok(Some(name));
    }
    Ok(noxs::served_domain(host, domid)?.map(|served| served.name))
}

/// The handle a domain's Xenstore records name (`/local/domain/N/vm` = `/vm/UUID`).
fn recorded_uuid(host: &Host, domid: u32) -> Result<Option<Uuid>> {
    let Some(xs) = host.xenstore() else {
        return Ok(None);
    };
    Ok(xs
        .read(&format!("{}/vm", layout::dom_path(domid)))?
        .and_then(|vm| vm.strip_prefix("/vm/").and_then(Uuid::parse)))
}

/// Destroy domain `domid` and everything made for it, whichever device method it has
/// ([`dev_method_of`]): see [`destroy_known`].
pub fn destroy_domain(host: &Host, domid: u32, uuid: Option<&Uuid>) -> Result<()> {
    let dev_method = dev_method_of(host, domid)?;
    destroy_known(host, domid, uuid, dev_method)
}

/// Destroy domain `domid` of device method `dev_method` and everything made for it: the
/// domain; with Xenstore its nodes (back ends, its directory, `/vm/UUID`), its loop
/// devices (xendevd), xenstored's record of it; with NoXS, whatever xendevd holds for
/// it. Parts already gone are skipped. With `uuid`, a domain or records with another
/// handle (the id was reused) are left alone.
pub fn destroy_known(
    host: &Host,
    domid: u32,
    uuid: Option<&Uuid>,
    dev_method: DevMethod,
) -> Result<()> {
    destroy_with(
        host,
        domid,
        uuid,
        dev_method,
        method_for(dev_method).as_ref(),
    )
}

/// [`destroy_known`], the devices torn down by `method`.
fn destroy_with(
    host: &Host,
    domid: u32,
    uuid: Option<&Uuid>,
    dev_method: DevMethod,
    method: &dyn DeviceMethod,
) -> Result<()> {
    if domid == 0 {
        return Err(Error::NoSuchDomain("0: dom0 cannot be destroyed".into()));
    }
    let info = host.xc.domain_info(domid)?;
    let recorded = match dev_method {
        DevMethod::Xenstore => recorded_uuid(host, domid)?,
        DevMethod::Noxs => None,
    };
    if let Some(expected) = uuid {
        if info.is_some_and(|info| info.handle != expected.0) {
            // The id belongs to another domain now: ours is long gone, and so are its
            // records (they were the other domain's to replace).
            return Ok(());
        }
        if recorded.is_some_and(|recorded| recorded != *expected) {
            return Ok(());
        }
    }
    let uuid = uuid
        .copied()
        .or(recorded)
        .or(info.map(|info| Uuid(info.handle)));
    if info.is_some() {
        host.timed("xc_domain_destroy", || Ok(host.xc.domain_destroy(domid)?))?;
    }
    method.teardown(host, domid, uuid.as_ref())?;
    if dev_method == DevMethod::Xenstore
        && let Some(xs) = host.xenstore()
    {
        host.timed("xs_release_domain", || Ok(xs.release_domain(domid)?))?;
    }
    Ok(())
}

/// What `chaos destroy --orphans` did with the claims of creates ([`destroy_orphans`]):
/// one line each.
#[derive(Debug, Default)]
pub struct OrphansSwept {
    /// Domains destroyed, claims removed.
    pub removed: Vec<String>,
    /// Creates under way, by a chaos that runs: not touched.
    pub left_alone: Vec<String>,
    pub failures: Vec<String>,
    /// How many orphan domains were destroyed.
    pub domains: usize,
}

/// Destroy every domain a chaos began and did not finish (the claim it left, which no
/// running process holds: [`crate::claim`]), with everything made for it, and remove
/// the claims. A create under way in a running chaos (a stopped one too) is left
/// alone; a failure is reported and its claim kept, to be tried again.
pub fn destroy_orphans(host: &Host) -> Result<OrphansSwept> {
    let mut swept = OrphansSwept::default();
    for found in claims(host).sweep()? {
        match found {
            Swept::Alive(alive) => swept.left_alone.push(match alive.record {
                Ok(record) => format!(
                    "{:?} is being created by chaos pid {}, which runs: left alone",
                    record.name, record.pid
                ),
                Err(err) => format!("{err}; a running process holds it: left alone"),
            }),
            Swept::Problem(err) => swept.failures.push(err.to_string()),
            Swept::Dead(dead) => {
                let record = dead.record.clone();
                let Some(handle) = record.handle() else {
                    swept.failures.push(format!(
                        "the claim on {:?} has no valid handle",
                        record.name
                    ));
                    continue;
                };
                let whose = format!(
                    "{:?} ({}), which chaos pid {} began and did not finish",
                    record.name,
                    record.dev_method.as_str(),
                    record.pid
                );
                let Some(domid) = find_by_handle(host, &handle)? else {
                    match dead.remove() {
                        Ok(()) => swept.removed.push(format!(
                            "removed the claim on {whose}: no domain has its handle {handle} \
                             (chaos died before making it, or it was destroyed since)"
                        )),
                        Err(err) => swept.failures.push(err.to_string()),
                    }
                    continue;
                };
                match destroy_orphan(host, domid, &handle, record.dev_method) {
                    Ok(what) => {
                        swept.domains += 1;
                        swept
                            .removed
                            .push(format!("destroyed orphan domain {domid}, {whose}: {what}"));
                        if let Err(err) = dead.remove() {
                            swept.failures.push(err.to_string());
                        }
                    }
                    Err(err) => swept
                        .failures
                        .push(format!("orphan domain {domid}, {whose}: {err}")),
                }
            }
        }
    }
    Ok(swept)
}

/// Destroy orphan `domid` (handle `uuid`) and what was made for it; what went, in
/// words.
fn destroy_orphan(
    host: &Host,
    domid: u32,
    uuid: &Uuid,
    dev_method: DevMethod,
) -> Result<&'static str> {
    match dev_method {
        DevMethod::Xenstore => {
            destroy_known(host, domid, Some(uuid), dev_method)?;
            Ok("the domain, its Xenstore nodes (and with them its vifs), its loop devices")
        }
        DevMethod::Noxs => {
            destroy_with(
                host,
                domid,
                Some(uuid),
                dev_method,
                &NoxsMethod::for_orphan(),
            )?;
            Ok("the domain, and whatever xendevd held for it (back ends, taps, console)")
        }
    }
}

/// Ask a domain to power off or reboot: a Xenstore domain through
/// `control/shutdown`, which the guest watches; a NoXS domain through its sysctl
/// device (xendevd answers once the guest acknowledged, at most `timeout` later).
pub fn request_shutdown(
    host: &Host,
    domid: u32,
    reboot: bool,
    dev_method: DevMethod,
    timeout: Duration,
) -> Result<()> {
    if dev_method == DevMethod::Noxs {
        let action = if reboot {
            xenproto::noxs::Request::Reboot
        } else {
            xenproto::noxs::Request::Poweroff
        };
        return host.timed("xendevd power", || {
            noxs::power(host, domid, action, timeout)
        });
    }
    let xs = host.xs()?;
    let path = format!("{}/control/shutdown", layout::dom_path(domid));
    if xs.read(&layout::dom_path(domid))?.is_none() {
        return Err(Error::NoSuchDomain(format!(
            "{domid} in Xenstore (it has no {})",
            layout::dom_path(domid)
        )));
    }
    Ok(xs.write(&path, if reboot { "reboot" } else { "poweroff" })?)
}

/// How a domain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It shut down (it may since have been destroyed by whoever else watched it).
    Shutdown(ShutdownReason),
    /// It was destroyed before it shut down, or vanished before chaos saw why.
    Destroyed,
}

/// What chaos sees of a domain it watches.
fn ending_of(info: Option<DomainInfo>, uuid: Option<&Uuid>) -> Option<Ending> {
    let Some(info) = info else {
        return Some(Ending::Destroyed);
    };
    if uuid.is_some_and(|uuid| info.handle != uuid.0) {
        return Some(Ending::Destroyed);
    }
    if let Some(reason) = info.shutdown {
        return Some(Ending::Shutdown(reason));
    }
    info.dying.then_some(Ending::Destroyed)
}

/// Whether domain `domid` has ended, without waiting.
pub fn check_ending(host: &Host, domid: u32, uuid: Option<&Uuid>) -> Result<Option<Ending>> {
    Ok(ending_of(host.xc.domain_info(domid)?, uuid))
}

/// How often chaos looks at a domain it waits for without Xenstore's `@releaseDomain`
/// (one `getdomaininfo` each time; the chaos daemon too, for the guests it waits for).
pub const POLL_END: Duration = Duration::from_millis(20);

/// Wait until domain `domid` shuts down or is destroyed, at most `timeout` (`None` at
/// the deadline). With Xenstore (a Xenstore domain, xenstored running) xenstored fires
/// `@releaseDomain` when a domain shuts down or dies, and chaos also looks every
/// second, in case an event is lost; otherwise (NoXS) chaos asks Xen every 20 ms.
pub fn wait_for_end(
    host: &Host,
    domid: u32,
    uuid: Option<&Uuid>,
    timeout: Option<Duration>,
    dev_method: DevMethod,
) -> Result<Option<Ending>> {
    let deadline = timeout.map_or_else(far_future, |t| Instant::now() + t);
    if dev_method == DevMethod::Xenstore
        && let Some(xs) = host.xenstore()
    {
        let _watch = xs.watch("@releaseDomain", "chaos-end")?;
        return xs.wait_until(
            deadline,
            Duration::from_secs(1),
            signal::or_interrupted(|| check_ending(host, domid, uuid)),
        );
    }
    loop {
        if let Some(ending) = check_ending(host, domid, uuid)? {
            return Ok(Some(ending));
        }
        if let Some(signal) = signal::caught() {
            return Err(Error::Interrupted(signal));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL_END.min(deadline - now));
    }
}

/// A deadline that never comes (a century away).
pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// One line of `chaos list`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub domid: u32,
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub state: String,
    /// Since it was created, if known (`/vm/UUID/start_time`; NoXS: when xendevd set it
    /// up; dom0: `/proc/uptime`).
    pub uptime: Option<Duration>,
    /// A create's claim on it: it is being created, or it is an orphan.
    pub claimed: Option<Claimed>,
}

/// A domain a create claimed ([`crate::claim`]) and has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The name it is to have.
    pub name: String,
    /// The creating chaos.
    pub pid: u32,
    /// That chaos is gone: nobody will finish or destroy the domain but `chaos destroy
    /// --orphans`.
    pub orphan: bool,
}

impl Claimed {
    /// For `chaos list`, after the usual columns.
    pub fn describe(&self) -> String {
        if self.orphan {
            format!(
                "orphan: chaos pid {} died creating {:?} (chaos destroy --orphans)",
                self.pid, self.name
            )
        } else {
            format!("being created as {:?} by chaos pid {}", self.name, self.pid)
        }
    }

    /// A shell a chaos daemon is making (claimed under [`SHELL_NAME_PREFIX`] and its
    /// handle): not a guest, unless its daemon died making it.
    pub fn is_shell_in_the_making(&self) -> bool {
        !self.orphan && self.name.starts_with(SHELL_NAME_PREFIX)
    }
}

/// Every domain, by id. Names and start times come from Xenstore for Xenstore
/// domains (when xenstored runs), names from xendevd for NoXS domains (when it runs).
pub fn list(host: &Host) -> Result<Vec<Listed>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let xs = host.xenstore();
    let served: HashMap<u32, DomainSummary> = noxs::served_list(host)?
        .into_iter()
        .map(|served| (served.domid, served))
        .collect();
    let claimed: HashMap<[u8; 16], Claimed> = claims(host)
        .list()?
        .into_iter()
        .filter_map(|found| {
            let record = found.record.ok()?;
            Some((
                record.handle()?.0,
                Claimed {
                    name: record.name,
                    pid: record.pid,
                    orphan: !found.alive,
                },
            ))
        })
        .collect();
    host.xc
        .domains()?
        .into_iter()
        .map(|info| {
            let dom = layout::dom_path(info.domid);
            let noxs = served.get(&info.domid);
            let noxs_name = noxs.map(|served| served.name.clone());
            let xenstore_name = match (xs, &noxs_name) {
                (Some(xs), None) => xs.read(&format!("{dom}/name"))?,
                _ => None,
            };
            let name = noxs_name
                .or(xenstore_name)
                .or_else(|| (info.domid == 0).then(|| "Domain-0".to_owned()))
                .unwrap_or_else(|| format!("(domain {})", info.domid));
            let uptime = if info.domid == 0 {
                std::fs::read_to_string("/proc/uptime")
                    .ok()
                    .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
            } else if let Some(noxs) = noxs.filter(|noxs| noxs.created_ms > 0) {
                Some(now - noxs.created_ms as f64 / 1000.0)
            } else if let Some(xs) = xs {
                match xs.read(&format!("{dom}/vm"))? {
                    Some(vm) => xs
                        .read(&format!("{vm}/start_time"))?
                        .and_then(|t| t.parse::<f64>().ok())
                        .map(|start| now - start),
                    None => None,
                }
            } else {
                None
            };
            Ok(Listed {
                domid: info.domid,
                name,
                memory_mib: info.tot_pages / 256,
                vcpus: info.online_vcpus,
                state: info.state_letters(),
                uptime: uptime
                    .filter(|secs| *secs >= 0.0)
                    .map(Duration::from_secs_f64),
                claimed: claimed.get(&info.handle).cloned(),
            })
        })
        .collect()
}

/// Read a configuration file and check it (stages 1 and 2 of [`crate::config`]).
pub fn load_config(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::new("", format!("cannot read {}: {err}", path.display())))?;
    let mut config = Config::parse(&text)?;
    config.check_files()?;
    config.check_bridges()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain as Xen describes it: shut down for `shutdown`, dying or not, with
    /// handle `[handle; 16]`.
    fn info(shutdown: Option<ShutdownReason>, dying: bool, handle: u8) -> DomainInfo {
        DomainInfo {
            domid: 3,
            dying,
            paused: false,
            running: false,
            blocked: true,
            shutdown,
            tot_pages: 0,
            max_pages: 0,
            cpu_time_ns: 0,
            online_vcpus: 1,
            max_vcpus: 1,
            handle: [handle; 16],
        }
    }

    #[test]
    fn endings() {
        let ours = Uuid([1; 16]);
        assert_eq!(ending_of(None, Some(&ours)), Some(Ending::Destroyed));
        assert_eq!(ending_of(Some(info(None, false, 1)), Some(&ours)), None);
        let crashed = Some(ShutdownReason::Crash);
        assert_eq!(
            ending_of(Some(info(crashed, false, 1)), Some(&ours)),
            Some(Ending::Shutdown(ShutdownReason::Crash))
        );
        // Shut down, then destroyed by someone else: the reason still shows.
        assert_eq!(
            ending_of(Some(info(crashed, true, 1)), Some(&ours)),
            Some(Ending::Shutdown(ShutdownReason::Crash))
        );
        assert_eq!(
            ending_of(Some(info(None, true, 1)), Some(&ours)),
            Some(Ending::Destroyed)
        );
        // The id now belongs to another domain.
        assert_eq!(
            ending_of(Some(info(None, false, 2)), Some(&ours)),
            Some(Ending::Destroyed)
        );
    }

    #[test]
    fn start_times_look_like_xl() {
        let t = start_time();
        let (secs, cents) = t.split_once('.').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_700_000_000);
        assert_eq!(cents.len(), 2);
    }
}
