//! `chaos save` and `chaos restore` of a guest of either device method
//! (`shared/reference/save-restore.md`, "What our guest, chaos and xendevd must do",
//! points 9 and 10).
//!
//! Save: the guest's configuration read back from its records ([`crate::recorded`]),
//! or for a NoXS guest from xendevd (its name and the devices its create asked for)
//! and Xen (memory, vCPUs; [`noxs::config_of`]); libxc's `xc_domain_save`, whose
//! suspend step asks the guest to suspend — `control/shutdown = suspend`, or a NoXS
//! guest's sysctl request 3 — waits for its acknowledgement and then for Xen to show
//! the domain shut down for suspend, each at most 60 s as libxl waits; the file
//! ([`crate::savefile`]) written aside and renamed into place once complete; then the
//! domain is destroyed with its devices, or with `--keep-running` resumed in place
//! (`xc_domain_resume`, cooperative: the guest's suspend returns 1). A save that fails
//! after the guest suspended resumes it the same way: the source runs on.
//!
//! Restore: the file checked whole before anything is made (a file cut short is
//! refused there); then a domain made as `chaos create` makes one
//! ([`domain::make`]: the name claimed and free, Xen's room checked, destroyed with its
//! devices on any failure) but not built: its limits (no CPUID policy: the stream
//! brings the guest's), Xenstore and console event channels, the devices anew from the
//! saved configuration, `xc_domain_restore` (it populates the memory), the rings'
//! nodes and `xs_introduce_domain`; unpaused unless asked not to.
//!
//! A NoXS guest's restore differs after `xc_domain_restore` (libxc seeds the console's
//! grant, which xendevd maps): xendevd serves the new domain with new devices
//! (`NoxsCreate`), but nothing is written into start_info — the guest's own page came
//! back with its memory, naming the old devices. Once the guest runs it publishes a
//! new re-offer port and grants its page again, and xendevd offers it the new devices
//! as a restarted xendevd does (NoXS v1.1, [`noxs::reoffer_restored`]). So a NoXS
//! guest cannot be restored paused: nothing would offer its devices when it is
//! unpaused later (chaos has no unpause command, and `xl unpause` knows nothing of
//! NoXS); `--paused` is refused for it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xenhost::save::SaveError;
use xenhost::xc::ShutdownReason;
use xenhost::xcdom::GUEST_TYPE_X86_64;
use xenhost::xs::{Store, Xs};

use crate::config::{Config, DevMethod};
use crate::device::{self, NewDomain};
use crate::domain::{self, Created, SERVICE_DOMID};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::layout;
use crate::noxs;
use crate::recorded::{self, Records};
use crate::savefile::{self, HEADER_LEN, SaveFileError};
use crate::signal;
use crate::uuid::Uuid;

/// How long the guest may take to acknowledge the suspend request, and then to
/// suspend: libxl's two timeouts (`libxl_dom_suspend.c`).
pub const SUSPEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the waits look at the domain besides Xenstore's events.
const POLL: Duration = Duration::from_millis(100);

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub name: String,
    /// The file's size.
    pub bytes: u64,
    /// The guest runs on (`--keep-running`); else it was destroyed.
    pub kept_running: bool,
}

/// Xenstore as [`recorded::config_of`] reads it.
struct XsRecords<'a>(&'a Xs);

impl Records for XsRecords<'_> {
    fn read(&self, path: &str) -> std::result::Result<Option<String>, String> {
        self.0.read(path).map_err(|err| err.to_string())
    }
    fn directory(&self, path: &str) -> std::result::Result<Option<Vec<String>>, String> {
        self.0.directory(path).map_err(|err| err.to_string())
    }
}

/// Save domain `domid` into `path`; see the module's documentation.
pub fn save(host: &Host, domid: u32, path: &Path, keep_running: bool) -> Result<Saved> {
    let (uuid, config) = saveable(host, domid)?;
    let config_json = config.to_json()?.to_string();
    let dev_method = config.dev_method;

    // Written aside, renamed into place once complete: a failed save leaves no file.
    // Readable by root only: it holds the guest's memory.
    let partial = partial_path(path);
    let file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|err| Error::Save(format!("cannot create {}: {err}", partial.display())))?;
    let outcome = write_save(host, domid, (&uuid, dev_method), &file, &config_json);
    let outcome = outcome.and_then(|bytes| {
        file.sync_all()
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|err| {
                Error::Save(format!(
                    "cannot put the save file at {}: {err}",
                    path.display()
                ))
            })?;
        Ok(bytes)
    });
    let bytes = match outcome {
        Ok(bytes) => bytes,
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            return Err(resume_after_failure(host, domid, err));
        }
    };
    if keep_running {
        host.timed("xc_domain_resume", || {
            Ok(host.xc.domain_resume(domid, true)?)
        })
        .map_err(|err| {
            Error::Save(format!(
                "saved to {}, but resuming domain {domid} failed: {err} (it stays suspended; \
                 `chaos destroy {domid}` ends it)",
                path.display()
            ))
        })?;
    } else {
        host.timed("destroy", || {
            domain::destroy_known(host, domid, Some(&uuid), dev_method)
        })?;
    }
    Ok(Saved {
        name: config.name,
        bytes,
        kept_running: keep_running,
    })
}

/// Checks before a save or migration of `domid` (not dom0, running): its handle, and
/// its configuration read back from its records (a NoXS guest's from xendevd and Xen).
pub(crate) fn saveable(host: &Host, domid: u32) -> Result<(Uuid, Config)> {
    if domid == 0 {
        return Err(Error::Save("dom0 cannot be saved".into()));
    }
    let info = host
        .xc
        .domain_info(domid)?
        .ok_or_else(|| Error::NoSuchDomain(domid.to_string()))?;
    if let Some(reason) = info.shutdown {
        return Err(Error::Save(format!(
            "domain {domid} has shut down ({}): there is nothing to save",
            reason.name()
        )));
    }
    let uuid = Uuid(info.handle);
    if let Some(served) = noxs::served_domain(host, domid)? {
        let config = noxs::config_of(
            &served,
            info.max_pages * 4,
            domain::MAXMEM_SLACK_KIB,
            info.max_vcpus,
        )
        .map_err(Error::Save)?;
        return Ok((uuid, config));
    }
    let xs = host.xs()?;
    let config = recorded::config_of(&XsRecords(xs), domid).map_err(Error::Save)?;
    Ok((uuid, config))
}

/// `FILE.partial-PID`, next to `path`.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    PathBuf::from(name)
}

/// Header (its stream length still 0), configuration, libxc's stream, then the stream's
/// length in the header; the file's size.
fn write_save(
    host: &Host,
    domid: u32,
    (uuid, dev_method): (&Uuid, DevMethod),
    file: &File,
    config: &str,
) -> Result<u64> {
    let io = |err: std::io::Error| Error::Save(format!("writing the save file: {err}"));
    let header = savefile::encode_header(config.len(), 0)
        .map_err(|err| Error::Save(format!("the configuration to save: {err}")))?;
    let mut writer = file;
    writer.write_all(&header).map_err(io)?;
    writer.write_all(config.as_bytes()).map_err(io)?;
    let mut suspend = || request_suspend(host, domid, uuid, dev_method);
    host.timed("xc_domain_save", || {
        host.xc
            .domain_save(file.as_fd(), domid, false, &mut suspend)
            .map_err(|err| match err {
                SaveError::Suspend(err) => err,
                SaveError::Xen(err) => err.into(),
            })
    })?;
    let bytes = file.metadata().map_err(io)?.len();
    let stream_len = bytes - (HEADER_LEN + config.len()) as u64;
    file.write_all_at(&stream_len.to_le_bytes(), savefile::STREAM_LEN_OFFSET)
        .map_err(io)?;
    Ok(bytes)
}

/// libxc's suspend step: ask the guest to suspend, wait for its acknowledgement, then
/// for Xen to show it shut down for suspend.
pub(crate) fn request_suspend(
    host: &Host,
    domid: u32,
    uuid: &Uuid,
    dev_method: DevMethod,
) -> Result<()> {
    match dev_method {
        DevMethod::Xenstore => request_suspend_xenstore(host, domid, uuid),
        DevMethod::Noxs => request_suspend_noxs(host, domid, uuid),
    }
}

/// A NoXS guest is asked through its sysctl device (xendevd answers once it
/// acknowledged); then Xen is asked every 20 ms until it shows the domain suspended.
fn request_suspend_noxs(host: &Host, domid: u32, uuid: &Uuid) -> Result<()> {
    host.timed("sysctl suspend: the guest acknowledges", || {
        noxs::power(
            host,
            domid,
            xenproto::noxs::Request::Suspend,
            SUSPEND_TIMEOUT,
        )
    })?;
    let ending = host.timed("the guest suspends", || {
        domain::wait_for_end(
            host,
            domid,
            Some(uuid),
            Some(SUSPEND_TIMEOUT),
            DevMethod::Noxs,
        )
    })?;
    match ending {
        Some(domain::Ending::Shutdown(ShutdownReason::Suspend)) => Ok(()),
        Some(domain::Ending::Shutdown(other)) => Err(Error::Save(format!(
            "domain {domid} shut down with {} instead of suspending",
            other.name()
        ))),
        Some(domain::Ending::Destroyed) => Err(Error::Save(format!(
            "domain {domid} was destroyed while it was being saved"
        ))),
        None => Err(Error::Timeout {
            what: format!("domain {domid} to suspend after it acknowledged the request"),
            after: SUSPEND_TIMEOUT,
        }),
    }
}

/// A Xenstore guest is asked through `control/shutdown`; it acknowledges by clearing
/// the node.
fn request_suspend_xenstore(host: &Host, domid: u32, uuid: &Uuid) -> Result<()> {
    let xs = host.xs()?;
    let node = format!("{}/control/shutdown", layout::dom_path(domid));
    let _node_watch = xs.watch(&node, "chaos-suspend")?;
    let _end_watch = xs.watch("@releaseDomain", "chaos-suspend")?;
    host.timed("control/shutdown = suspend", || {
        Ok(xs.write(&node, "suspend")?)
    })?;
    let suspended = |host: &Host| -> Result<Option<ShutdownReason>> {
        match domain::check_ending(host, domid, Some(uuid))? {
            Some(domain::Ending::Shutdown(reason)) => Ok(Some(reason)),
            Some(domain::Ending::Destroyed) => Err(Error::Save(format!(
                "domain {domid} was destroyed while it was being saved"
            ))),
            None => Ok(None),
        }
    };
    let acked = host.timed("the guest acknowledges", || {
        xs.wait_until(
            Instant::now() + SUSPEND_TIMEOUT,
            POLL,
            signal::or_interrupted(|| {
                if suspended(host)?.is_some() {
                    return Ok(Some(()));
                }
                Ok((xs.read(&node)?.as_deref() != Some("suspend")).then_some(()))
            }),
        )
    })?;
    if acked.is_none() {
        // Withdraw the request (as libxl does), unless the guest took it meanwhile.
        let _ = xs.in_transaction(|tx| {
            if tx.read(&node)?.as_deref() == Some("suspend") {
                tx.write(&node, "")?;
            }
            Ok(())
        });
        return Err(Error::Timeout {
            what: format!(
                "domain {domid} to acknowledge control/shutdown = suspend (does the guest \
                 watch control/shutdown and support suspend?); the request was withdrawn"
            ),
            after: SUSPEND_TIMEOUT,
        });
    }
    let reason = host.timed("the guest suspends", || {
        xs.wait_until(
            Instant::now() + SUSPEND_TIMEOUT,
            POLL,
            signal::or_interrupted(|| suspended(host)),
        )
    })?;
    match reason {
        Some(ShutdownReason::Suspend) => Ok(()),
        Some(other) => Err(Error::Save(format!(
            "domain {domid} shut down with {} instead of suspending",
            other.name()
        ))),
        None => Err(Error::Timeout {
            what: format!("domain {domid} to suspend after it acknowledged the request"),
            after: SUSPEND_TIMEOUT,
        }),
    }
}

/// After a failed save: a guest that suspended is resumed in place (it runs on, as
/// before); the error says what became of it.
pub(crate) fn resume_after_failure(host: &Host, domid: u32, err: Error) -> Error {
    let suspended = matches!(
        host.xc.domain_info(domid),
        Ok(Some(info)) if info.shutdown == Some(ShutdownReason::Suspend)
    );
    if !suspended {
        return Error::Save(format!("{err}; no file written, domain {domid} runs on"));
    }
    match host.xc.domain_resume(domid, true) {
        Ok(()) => Error::Save(format!(
            "{err}; no file written, domain {domid} was resumed and runs on"
        )),
        Err(resume) => Error::Save(format!(
            "{err}; no file written, and resuming domain {domid} failed: {resume} (it stays \
             suspended)"
        )),
    }
}

/// A save file opened and checked: its configuration, and the file positioned at
/// libxc's stream.
#[derive(Debug)]
pub struct SaveFile {
    pub config: Config,
    file: File,
}

/// Open `path` and check it whole: header, configuration, the stream's start and
/// length. Nothing is created for a file that fails here.
pub fn open(path: &Path) -> Result<SaveFile> {
    let bad = |source: SaveFileError| Error::SaveFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(|err| bad(SaveFileError::Io(err.to_string())))?;
    let len = file
        .metadata()
        .map_err(|err| bad(SaveFileError::Io(err.to_string())))?
        .len();
    let (header, config_text) = savefile::read_prefix(&mut file, len).map_err(bad)?;
    let mut start = [0u8; 16];
    let stream_at = (HEADER_LEN as u64) + u64::from(header.config_len);
    let got = file
        .read_at(&mut start, stream_at)
        .map_err(|err| bad(SaveFileError::Io(err.to_string())))?;
    savefile::check_stream_start(&start[..got]).map_err(bad)?;
    let config = Config::parse_saved(&config_text)
        .map_err(|err| Error::Save(format!("{}: its configuration: {err}", path.display())))?;
    Ok(SaveFile { config, file })
}

/// Restore the guest of `saved` into a new domain under its name; see the module's
/// documentation.
pub fn restore(host: &Host, saved: &SaveFile, paused: bool) -> Result<Created> {
    if paused && saved.config.dev_method == DevMethod::Noxs {
        return Err(Error::Save(format!(
            "{} is a NoXS guest, which cannot be restored paused: its devices are offered \
             to it again once it runs, and nothing would do that when it is unpaused later \
             (restore it without --paused)",
            saved.config.name
        )));
    }
    let made = restore_stream(host, &saved.config, saved.file.as_fd(), paused)?;
    Ok(made)
}

/// Restore a guest of configuration `config` from libxc's stream on `stream` (a file,
/// or a migration's connection) into a new domain named as `config` says, devices made
/// anew; paused if `paused`. Any failure destroys what was made.
pub fn restore_stream(
    host: &Host,
    config: &Config,
    stream: BorrowedFd<'_>,
    paused: bool,
) -> Result<Created> {
    config.check_bridges()?;
    domain::make(host, config, "to restore", |domid, uuid, method| {
        host.timed("xc: vcpus, memory, tsc", || {
            domain::set_limits_only(host, domid, config.memory_mib, config.vcpus)
        })?;
        let (store_port, console_port) = domain::alloc_ports(host, domid, method.uses_xenstore())?;
        signal::check()?;
        let new = NewDomain {
            domid,
            uuid,
            config,
        };
        method.prepare(host, &new)?;
        signal::check()?;
        let restored = host.timed("xc_domain_restore", || {
            Ok(host.xc.domain_restore(
                stream,
                domid,
                (store_port, SERVICE_DOMID),
                (console_port, SERVICE_DOMID),
            )?)
        })?;
        signal::check()?;
        let built = device::Built {
            nodes: layout::Built {
                memory_kib: u64::from(config.memory_mib) * 1024,
                vcpus: config.vcpus,
                store_port,
                store_mfn: restored.store_mfn,
                console_port,
                console_mfn: restored.console_mfn,
                kernel: config.kernel.to_string_lossy().into_owned(),
                ramdisk: config
                    .ramdisk
                    .as_ref()
                    .map(|r| r.to_string_lossy().into_owned()),
                cmdline: config.cmdline.clone(),
                start_time: domain::start_time(),
            },
            guest_type: GUEST_TYPE_X86_64.to_string_lossy().into_owned(),
        };
        // Nothing is written into start_info: libxc restored the guest's own page.
        method.finish(host, &new, &built, None)?;
        domain::run_unless(host, domid, paused)?;
        if !paused && config.dev_method == DevMethod::Noxs {
            host.timed("xendevd noxs_reoffer", || {
                noxs::reoffer_restored(host, domid, noxs::REOFFER_TIMEOUT)
            })?;
        }
        Ok(Created {
            domid,
            name: config.name.clone(),
            uuid: *uuid,
            paused,
            macs: method.macs(),
            dev_method: config.dev_method,
        })
    })
}

/// Rename domain `domid` (handle `uuid`) to `name` (a migration's two ends swap names
/// this way): a Xenstore guest's `name` nodes, as `xl rename` does; a NoXS guest's name
/// is xendevd's.
pub fn rename(
    host: &Host,
    domid: u32,
    (uuid, dev_method): (&Uuid, DevMethod),
    name: &str,
) -> Result<()> {
    if dev_method == DevMethod::Noxs {
        return noxs::rename(host, domid, name);
    }
    let xs = host.xs()?;
    let dom = layout::dom_path(domid);
    let vm = layout::vm_path(uuid);
    Ok(xs.in_transaction(|tx| {
        tx.write(&format!("{dom}/name"), name)?;
        tx.write(&format!("{vm}/name"), name)?;
        Ok(())
    })?)
}
