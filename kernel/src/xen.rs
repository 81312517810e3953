//! Facts about the hypervisor we run on.

use core::fmt;

/// Xen's version, from `xen_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XenVersion {
    pub major: u16,
    pub minor: u16,
    extra: [u8; 16],
}

impl XenVersion {
    /// The running hypervisor's version.
    pub fn get() -> Self {
        let (major, minor) = arch::hypercall::xen_version();
        Self {
            major,
            minor,
            extra: arch::hypercall::xen_extraversion(),
        }
    }

    /// The extra version string (e.g. `.5`), up to its NUL.
    pub fn extra(&self) -> &str {
        let len = self
            .extra
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.extra.len());
        core::str::from_utf8(&self.extra[..len]).unwrap_or("")
    }
}

impl fmt::Display for XenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}{}", self.major, self.minor, self.extra())
    }
}

/// Whether we run as the hardware domain (dom0).
pub fn is_dom0() -> bool {
    crate::boot::boot_info().is_dom0
}
