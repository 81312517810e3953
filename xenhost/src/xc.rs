//! libxenctrl: a safe handle ([`Xc`]) for the domain control calls of chaos and
//! xendevd — create, set up, pause, unpause, destroy, look at one domain or all of
//! them — and what Xen says about the host.
//!
//! libxc reports through a `xentoollog` logger; the handle passes its own, which keeps
//! the last error messages so they end up in [`Error::Call`]'s detail (and, opened
//! with [`Xc::open_echoing`], prints every message of libxc and libxenguest on
//! stderr). The same logger serves the domain builder ([`crate::xcdom`]).

use std::ffi::{CStr, c_char, c_int, c_ulong};
use std::io;
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use xenffi as ffi;

use crate::error::{Error, Result, program};

unsafe extern "C" {
    /// C's `vsnprintf`, to format libxc's messages (their `va_list` is passed through
    /// as the pointer the callback got).
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        format: *const c_char,
        args: *mut ffi::__va_list_tag,
    ) -> c_int;
}

/// A `xentoollog_logger` whose messages the handle keeps. `repr(C)` with the C struct
/// first, so the pointer libxc hands back to the callbacks is a pointer to this.
#[repr(C)]
struct Logger {
    vtable: ffi::xentoollog_logger,
    /// Print every message on stderr after this prefix.
    echo: Option<&'static str>,
    /// Error-level messages since the last [`Xc::take_log`], oldest first.
    errors: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").field("echo", &self.echo).finish()
    }
}

/// `vmessage` of our logger.
///
/// # Safety
/// libxc calls it with the logger it was given (a [`Logger`]), a valid format string
/// and the matching `va_list`.
unsafe extern "C" fn log_message(
    logger: *mut ffi::xentoollog_logger,
    level: ffi::xentoollog_level,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    args: *mut ffi::__va_list_tag,
) {
    let mut buf = [0 as c_char; 1024];
    // SAFETY: `buf` holds `buf.len()` bytes; the format and its arguments come from libxc
    // as a matching pair (the caller's contract).
    unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), format, args) };
    // SAFETY: vsnprintf NUL-terminates within `buf.len()`.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let context = if context.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null context is a C string from libxc.
        format!("{}: ", unsafe { CStr::from_ptr(context) }.to_string_lossy())
    };
    let mut message = format!("{context}{}", text.trim_end());
    if errnoval >= 0 && level >= ffi::xentoollog_level_XTL_ERROR {
        message.push_str(&format!(" ({})", io::Error::from_raw_os_error(errnoval)));
    }
    // SAFETY: libxc passes back the logger we registered, which is the first field of a
    // live `Logger` (see `Xc::open_with`, which keeps it boxed for the handle's
    // lifetime).
    let logger = unsafe { &*logger.cast::<Logger>() };
    if let Some(prefix) = logger.echo {
        eprintln!("{prefix}: libxc: {message}");
    }
    if level >= ffi::xentoollog_level_XTL_ERROR {
        let mut errors = logger.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() >= 8 {
            errors.remove(0);
        }
        errors.push(message);
    }
}

/// `progress` of our logger: libxc's progress reports are of no interest.
unsafe extern "C" fn log_progress(
    _logger: *mut ffi::xentoollog_logger,
    _context: *const c_char,
    _doing_what: *const c_char,
    _percent: c_int,
    _done: c_ulong,
    _total: c_ulong,
) {
}

/// `destroy` of our logger: the `Box` in [`Xc`] owns it.
unsafe extern "C" fn log_destroy(_logger: *mut ffi::xentoollog_logger) {}

/// Why a domain shut down (`SHUTDOWN_*`, `xen/include/public/sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
    Unknown(u32),
}

impl ShutdownReason {
    pub fn from_code(code: u32) -> Self {
        match code {
            ffi::SHUTDOWN_poweroff => Self::Poweroff,
            ffi::SHUTDOWN_reboot => Self::Reboot,
            ffi::SHUTDOWN_suspend => Self::Suspend,
            ffi::SHUTDOWN_crash => Self::Crash,
            ffi::SHUTDOWN_watchdog => Self::Watchdog,
            ffi::SHUTDOWN_soft_reset => Self::SoftReset,
            other => Self::Unknown(other),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Self::Poweroff => ffi::SHUTDOWN_poweroff,
            Self::Reboot => ffi::SHUTDOWN_reboot,
            Self::Suspend => ffi::SHUTDOWN_suspend,
            Self::Crash => ffi::SHUTDOWN_crash,
            Self::Watchdog => ffi::SHUTDOWN_watchdog,
            Self::SoftReset => ffi::SHUTDOWN_soft_reset,
            Self::Unknown(code) => code,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Crash => "crash",
            Self::Watchdog => "watchdog",
            Self::SoftReset => "soft_reset",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// What `xc_domain_getinfolist` says about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u32,
    /// Being destroyed (its pages go once nobody maps them).
    pub dying: bool,
    pub paused: bool,
    pub running: bool,
    pub blocked: bool,
    /// Why it shut down, if it has (and is not yet destroyed).
    pub shutdown: Option<ShutdownReason>,
    pub tot_pages: u64,
    pub max_pages: u64,
    pub cpu_time_ns: u64,
    pub online_vcpus: u32,
    /// vCPUs it may have (the highest id plus one): what `xc_domain_max_vcpus` set.
    pub max_vcpus: u32,
    /// The handle (UUID) given at creation.
    pub handle: [u8; 16],
}

impl DomainInfo {
    fn from_raw(raw: &ffi::xc_domaininfo_t) -> Self {
        let flag = |bit: u32| raw.flags & bit != 0;
        Self {
            domid: u32::from(raw.domain),
            dying: flag(ffi::XEN_DOMINF_dying),
            paused: flag(ffi::XEN_DOMINF_paused),
            running: flag(ffi::XEN_DOMINF_running),
            blocked: flag(ffi::XEN_DOMINF_blocked),
            shutdown: flag(ffi::XEN_DOMINF_shutdown).then(|| {
                ShutdownReason::from_code(
                    (raw.flags >> ffi::XEN_DOMINF_shutdownshift) & ffi::XEN_DOMINF_shutdownmask,
                )
            }),
            tot_pages: raw.tot_pages,
            max_pages: raw.max_pages,
            cpu_time_ns: raw.cpu_time,
            online_vcpus: raw.nr_online_vcpus,
            max_vcpus: raw.max_vcpu_id.saturating_add(1),
            handle: raw.handle,
        }
    }

    /// xl's six state letters: running, blocked, paused, shut down, crashed, dying.
    pub fn state_letters(&self) -> String {
        let crashed = self.shutdown == Some(ShutdownReason::Crash);
        [
            (self.running, 'r'),
            (self.blocked, 'b'),
            (self.paused, 'p'),
            (self.shutdown.is_some() && !crashed, 's'),
            (crashed, 'c'),
            (self.dying, 'd'),
        ]
        .iter()
        .map(|&(on, letter)| if on { letter } else { '-' })
        .collect()
    }
}

/// What `xc_physinfo` says about the host, as far as the tools need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysInfo {
    pub free_pages: u64,
    pub total_pages: u64,
    pub nr_cpus: u32,
    /// `XEN_SYSCTL_PHYSCAP_*` bits.
    pub capabilities: u32,
}

impl PhysInfo {
    /// Whether Xen offers grant tables of version 2 to guests.
    pub fn gnttab_v2(&self) -> bool {
        self.capabilities & ffi::XEN_SYSCTL_PHYSCAP_gnttab_v2 != 0
    }
}

/// errno as a failed call left it, unless it is 0: libxenguest's save and restore fail
/// without setting errno on some paths (a malformed stream), and "Success (os error 0)"
/// would say the opposite.
fn without_success(errno: io::Error) -> io::Error {
    if errno.raw_os_error() == Some(0) {
        io::Error::other("failed (no errno)")
    } else {
        errno
    }
}

/// A libxenctrl handle (`xc_interface_open`), closed on drop.
#[derive(Debug)]
pub struct Xc {
    handle: NonNull<ffi::xc_interface>,
    logger: Box<Logger>,
}

// SAFETY: libxenctrl handles may be used from any thread, one call at a time; `Xc` is
// not `Sync`, so `&Xc` never reaches two threads at once.
unsafe impl Send for Xc {}

impl Xc {
    /// Open libxenctrl (needs `/dev/xen/privcmd`, i.e. root in a Xen dom0). libxc's
    /// messages are kept for the errors they explain.
    pub fn open() -> Result<Self> {
        Self::open_with(None)
    }

    /// [`Xc::open`], and print every message of libxc and libxenguest on stderr as
    /// `PREFIX: libxc: …`.
    pub fn open_echoing(prefix: &'static str) -> Result<Self> {
        Self::open_with(Some(prefix))
    }

    fn open_with(echo: Option<&'static str>) -> Result<Self> {
        let mut logger = Box::new(Logger {
            vtable: ffi::xentoollog_logger {
                vmessage: Some(log_message),
                progress: Some(log_progress),
                destroy: Some(log_destroy),
            },
            echo,
            errors: Mutex::new(Vec::new()),
        });
        let logger_ptr: *mut ffi::xentoollog_logger = &raw mut logger.vtable;
        ffi::load()?;
        // SAFETY: the logger is boxed and lives as long as the handle (both in `Xc`); it
        // is passed for libxc's and the domain builder's messages.
        let handle = unsafe { ffi::xc_interface_open(logger_ptr, logger_ptr, 0) };
        let handle = NonNull::new(handle).ok_or_else(|| Error::Open {
            what: "libxenctrl (xc_interface_open)",
            source: io::Error::last_os_error(),
            hint: format!("is this a Xen dom0, and is {} running as root?", program()),
        })?;
        Ok(Self { handle, logger })
    }

    /// The raw handle, for [`crate::xcdom`].
    pub(crate) fn raw(&self) -> *mut ffi::xc_interface {
        self.handle.as_ptr()
    }

    /// libxc's error messages since the last call, joined, if any.
    pub fn take_log(&self) -> Option<String> {
        let mut errors = self
            .logger
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let joined = errors.join("; ");
        errors.clear();
        (!joined.is_empty()).then_some(joined)
    }

    /// An error for `call`, with errno and whatever libxc logged.
    pub(crate) fn error(&self, call: &'static str) -> Error {
        Error::Call {
            call,
            source: without_success(io::Error::last_os_error()),
            detail: self.take_log(),
        }
    }

    fn check(&self, call: &'static str, rc: c_int) -> Result<()> {
        if rc < 0 {
            return Err(self.error(call));
        }
        self.take_log();
        Ok(())
    }

    /// Create a paused PV domain with handle `handle`; Xen picks its id.
    pub fn domain_create(&self, handle: [u8; 16], vcpus: u32, grant_version: u32) -> Result<u32> {
        let mut config = ffi::xen_domctl_createdomain {
            ssidref: 0,
            handle,
            flags: 0,
            iommu_opts: 0,
            max_vcpus: vcpus,
            max_evtchn_port: 1023,
            // -1: Xen's defaults (xl's too, unless xl.conf says otherwise).
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: grant_version & ffi::XEN_DOMCTL_GRANT_version_mask,
            vmtrace_size: 0,
            cpupool_id: 0,
            arch: ffi::xen_arch_domainconfig {
                emulation_flags: 0,
                misc_flags: 0,
            },
        };
        let mut domid: u32 = 0;
        // SAFETY: the handle is open; `domid` and `config` are valid for the call.
        let rc = unsafe { ffi::xc_domain_create(self.raw(), &raw mut domid, &raw mut config) };
        self.check("xc_domain_create", rc)?;
        Ok(domid)
    }

    pub fn domain_max_vcpus(&self, domid: u32, vcpus: u32) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_max_vcpus(self.raw(), domid, vcpus) };
        self.check("xc_domain_max_vcpus", rc)
    }

    pub fn domain_setmaxmem(&self, domid: u32, kib: u64) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_setmaxmem(self.raw(), domid, kib) };
        self.check("xc_domain_setmaxmem", rc)
    }

    pub fn domain_set_memmap_limit(&self, domid: u32, kib: u64) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_set_memmap_limit(self.raw(), domid, kib as c_ulong) };
        self.check("xc_domain_set_memmap_limit", rc)
    }

    /// TSC mode 0 ("default"), as xl sets it for a PV domain.
    pub fn domain_set_tsc_default(&self, domid: u32) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_set_tsc_info(self.raw(), domid, 0, 0, 0, 0) };
        self.check("xc_domain_set_tsc_info", rc)
    }

    /// The default CPUID policy for a new PV domain (libxl's `libxl__cpuid_legacy`:
    /// PAE on, no invariant TSC, no nesting).
    pub fn cpuid_apply_default(&self, domid: u32) -> Result<()> {
        // SAFETY: null feature set, xend and MSR lists mean "none"; integers otherwise.
        let rc = unsafe {
            ffi::xc_cpuid_apply_policy(
                self.raw(),
                domid,
                false,
                std::ptr::null(),
                0,
                true,
                false,
                false,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.check("xc_cpuid_apply_policy", rc)
    }

    /// An unbound event channel of `domid` for `remote` to bind.
    pub fn evtchn_alloc_unbound(&self, domid: u32, remote: u32) -> Result<u32> {
        // SAFETY: plain integers on an open handle.
        let port = unsafe { ffi::xc_evtchn_alloc_unbound(self.raw(), domid, remote) };
        self.check("xc_evtchn_alloc_unbound", port)?;
        Ok(u32::try_from(port).expect("checked non-negative"))
    }

    pub fn domain_unpause(&self, domid: u32) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_unpause(self.raw(), domid) };
        self.check("xc_domain_unpause", rc)
    }

    pub fn domain_pause(&self, domid: u32) -> Result<()> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_pause(self.raw(), domid) };
        self.check("xc_domain_pause", rc)
    }

    /// Destroy a domain. One that does not exist (any more) is no error: `Ok(false)`.
    pub fn domain_destroy(&self, domid: u32) -> Result<bool> {
        // SAFETY: plain integers on an open handle.
        let rc = unsafe { ffi::xc_domain_destroy(self.raw(), domid) };
        if rc < 0 {
            let err = self.error("xc_domain_destroy");
            if err.errno() == Some(libc::ESRCH) {
                return Ok(false);
            }
            return Err(err);
        }
        self.take_log();
        Ok(true)
    }

    /// What Xen says about at most `max` domains, from id `first` on, by id
    /// (`xc_domain_getinfolist`).
    fn info_list(&self, first: u32, max: usize) -> Result<Vec<DomainInfo>> {
        // SAFETY: an all-zero getdomaininfo is a valid value of the plain C struct.
        let mut raw: Vec<ffi::xc_domaininfo_t> = vec![unsafe { std::mem::zeroed() }; max];
        let count = u32::try_from(max).unwrap_or(u32::MAX);
        // SAFETY: room for `max` entries, as `count` says (no more).
        let n = unsafe { ffi::xc_domain_getinfolist(self.raw(), first, count, raw.as_mut_ptr()) };
        self.check("xc_domain_getinfolist", n)?;
        let n = usize::try_from(n).expect("checked non-negative").min(max);
        Ok(raw[..n].iter().map(DomainInfo::from_raw).collect())
    }

    /// One domain's information, or `None` if it does not exist.
    pub fn domain_info(&self, domid: u32) -> Result<Option<DomainInfo>> {
        let found = self.info_list(domid, 1)?;
        Ok(found.into_iter().find(|info| info.domid == domid))
    }

    /// Every domain, by id.
    pub fn domains(&self) -> Result<Vec<DomainInfo>> {
        const BATCH: usize = 256;
        let mut all = Vec::new();
        let mut next = 0u32;
        loop {
            let batch = self.info_list(next, BATCH)?;
            let full = batch.len() == BATCH;
            all.extend(batch);
            if !full {
                return Ok(all);
            }
            next = all.last().map_or(0, |d| d.domid + 1);
        }
    }

    pub fn physinfo(&self) -> Result<PhysInfo> {
        // SAFETY: an all-zero physinfo is a valid value of the plain C struct.
        let mut raw: ffi::xc_physinfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is valid for the call.
        let rc = unsafe { ffi::xc_physinfo(self.raw(), &raw mut raw) };
        self.check("xc_physinfo", rc)?;
        Ok(PhysInfo {
            free_pages: raw.free_pages,
            total_pages: raw.total_pages,
            nr_cpus: raw.nr_cpus,
            capabilities: raw.capabilities,
        })
    }
}

impl Drop for Xc {
    fn drop(&mut self) {
        // SAFETY: the handle is open and nothing borrows it any more (a `DomImage`
        // borrows the `Xc`).
        unsafe { ffi::xc_interface_close(self.handle.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: u32) -> DomainInfo {
        // SAFETY: an all-zero getdomaininfo is a valid value of the plain C struct.
        let mut raw: ffi::xc_domaininfo_t = unsafe { std::mem::zeroed() };
        raw.domain = 1;
        raw.flags = flags;
        DomainInfo::from_raw(&raw)
    }

    #[test]
    fn state_letters_like_xl() {
        assert_eq!(info(ffi::XEN_DOMINF_running).state_letters(), "r-----");
        assert_eq!(info(ffi::XEN_DOMINF_blocked).state_letters(), "-b----");
        assert_eq!(info(ffi::XEN_DOMINF_paused).state_letters(), "--p---");
        let crashed =
            ffi::XEN_DOMINF_shutdown | (ffi::SHUTDOWN_crash << ffi::XEN_DOMINF_shutdownshift);
        assert_eq!(info(crashed).state_letters(), "----c-");
        assert_eq!(info(crashed).shutdown, Some(ShutdownReason::Crash));
        let off = ffi::XEN_DOMINF_shutdown;
        assert_eq!(info(off).state_letters(), "---s--");
        assert_eq!(info(off).shutdown, Some(ShutdownReason::Poweroff));
        assert_eq!(info(ffi::XEN_DOMINF_dying).state_letters(), "-----d");
        assert!(info(ffi::XEN_DOMINF_dying).dying);
        assert_eq!(info(0).shutdown, None);
    }

    #[test]
    fn a_failure_without_errno_does_not_say_success() {
        let none = without_success(io::Error::from_raw_os_error(0)).to_string();
        assert_eq!(none, "failed (no errno)");
        let enoent = without_success(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(enoent.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn shutdown_codes() {
        for code in 0..7 {
            assert_eq!(ShutdownReason::from_code(code).code(), code);
        }
        assert_eq!(ShutdownReason::from_code(1).name(), "reboot");
    }

    #[test]
    fn grant_v2_capability() {
        let host = |capabilities| PhysInfo {
            free_pages: 0,
            total_pages: 0,
            nr_cpus: 1,
            capabilities,
        };
        assert!(host(ffi::XEN_SYSCTL_PHYSCAP_gnttab_v2).gnttab_v2());
        assert!(!host(0).gnttab_v2());
    }
}
