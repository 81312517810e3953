//! Grant mapping and copying through `libxengnttab` (`/dev/xen/gntdev`). A [`Mapping`]
//! unmaps itself on drop: a dying domain stays a zombie while dom0 maps its pages.

use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

use xenffi as ffi;

use super::last_error;

/// Grant references a handle may have mapped at once (gntdev's default is 1024 on old
/// kernels; rings of a few hundred domains need more).
const MAX_GRANTS: u32 = 65536;

/// An open `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct Gnttab {
    handle: NonNull<ffi::xengnttab_handle>,
}

impl Gnttab {
    pub fn open() -> io::Result<Rc<Self>> {
        // SAFETY: a NULL logger selects the default; no flags.
        let handle = unsafe { ffi::xengnttab_open(std::ptr::null_mut(), 0) };
        let handle = NonNull::new(handle).ok_or_else(last_error)?;
        // SAFETY: the handle is open. Failing is fine (newer kernels have no limit).
        unsafe { ffi::xengnttab_set_max_grants(handle.as_ptr(), MAX_GRANTS) };
        Ok(Rc::new(Self { handle }))
    }

    /// Map grants `refs` of domain `domid`, contiguously, read-write or read-only.
    pub fn map(self: &Rc<Self>, domid: u32, refs: &[u32], writable: bool) -> io::Result<Mapping> {
        let count = u32::try_from(refs.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        if count == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut refs = refs.to_vec();
        let prot = if writable {
            nix::libc::PROT_READ | nix::libc::PROT_WRITE
        } else {
            nix::libc::PROT_READ
        };
        // SAFETY: the handle is open; `refs` holds `count` references and lives across
        // the call; the result is a fresh mapping of `count` pages or NULL.
        let addr = unsafe {
            ffi::xengnttab_map_domain_grant_refs(
                self.handle.as_ptr(),
                count,
                domid,
                refs.as_mut_ptr(),
                prot,
            )
        };
        let addr = NonNull::new(addr.cast::<u8>()).ok_or_else(last_error)?;
        Ok(Mapping {
            gnttab: Rc::clone(self),
            addr,
            pages: count,
        })
    }

    /// Run grant copies; each segment's `status` says how it went (`GNTST_*`). An
    /// error here means the whole batch was not attempted.
    pub fn copy(&self, segments: &mut [ffi::xengnttab_grant_copy_segment_t]) -> io::Result<()> {
        if segments.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(segments.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the handle is open; every segment's local side points into a buffer
        // the caller keeps alive and large enough for `len` bytes (see
        // `noxs::memory::GrantCopier`).
        if unsafe { ffi::xengnttab_grant_copy(self.handle.as_ptr(), count, segments.as_mut_ptr()) }
            < 0
        {
            return Err(last_error());
        }
        Ok(())
    }
}

impl Drop for Gnttab {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once (every Mapping holds an Rc).
        unsafe { ffi::xengnttab_close(self.handle.as_ptr()) };
    }
}

/// Pages of another domain, mapped into ours.
#[derive(Debug)]
pub struct Mapping {
    gnttab: Rc<Gnttab>,
    addr: NonNull<u8>,
    pages: u32,
}

impl Mapping {
    /// The first byte of the mapping (page aligned); `4096 * pages` bytes long. The
    /// other domain may write these bytes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping came from this handle with this page count and is unmapped
        // once, here; nothing refers to it afterwards (its users borrow the Mapping).
        let result = unsafe {
            ffi::xengnttab_unmap(
                self.gnttab.handle.as_ptr(),
                self.addr.as_ptr().cast(),
                self.pages,
            )
        };
        if result < 0 {
            log::error!("unmapping {} granted page(s): {}", self.pages, last_error());
        }
    }
}
