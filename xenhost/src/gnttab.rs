//! Grant mapping and copying through libxengnttab (`/dev/xen/gntdev`). A [`Mapping`]
//! unmaps itself on drop: a dying domain stays a zombie while dom0 maps its pages. A
//! [`GrantCopier`] copies between a guest's granted pages and a buffer of ours, every
//! span checked against its page and the buffer before the hypervisor sees it.
//!
//! The handle is shared by its mappings through `Rc`: a back end is one thread, and a
//! mapping must outlive nothing but its handle.

use std::ptr::NonNull;
use std::rc::Rc;

use xenffi as ffi;

use crate::error::{Error, Result};

/// Grant references a handle may have mapped at once (gntdev's default is 1024 on old
/// kernels; rings of a few hundred domains need more).
const MAX_GRANTS: u32 = 65536;

/// Bytes in a granted page.
pub const PAGE_SIZE: usize = 4096;

/// `GNTST_general_error`: the copy was not attempted.
pub const GNTST_GENERAL_ERROR: i16 = ffi::GNTST_general_error as i16;
/// `GNTST_bad_copy_arg`: a span outside its page or the buffer.
pub const GNTST_BAD_COPY_ARG: i16 = ffi::GNTST_bad_copy_arg as i16;

/// An open `/dev/xen/gntdev`.
#[derive(Debug)]
pub struct Gnttab {
    handle: NonNull<ffi::xengnttab_handle>,
}

impl Gnttab {
    pub fn open() -> Result<Rc<Self>> {
        ffi::load()?;
        // SAFETY: a NULL logger selects the default; no flags.
        let handle = unsafe { ffi::xengnttab_open(std::ptr::null_mut(), 0) };
        let handle = NonNull::new(handle).ok_or_else(|| Error::last("xengnttab_open"))?;
        // SAFETY: the handle is open. Failing is fine (newer kernels have no limit).
        unsafe { ffi::xengnttab_set_max_grants(handle.as_ptr(), MAX_GRANTS) };
        Ok(Rc::new(Self { handle }))
    }

    /// Map grants `refs` of domain `domid`, contiguously, read-write or read-only.
    pub fn map(self: &Rc<Self>, domid: u32, refs: &[u32], writable: bool) -> Result<Mapping> {
        const CALL: &str = "xengnttab_map_domain_grant_refs";
        let invalid = || Error::Call {
            call: CALL,
            source: std::io::ErrorKind::InvalidInput.into(),
            detail: Some(format!("{} grant references", refs.len())),
        };
        let count = u32::try_from(refs.len()).map_err(|_| invalid())?;
        if count == 0 {
            return Err(invalid());
        }
        let mut refs = refs.to_vec();
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
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
        let addr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| Error::last(CALL))?;
        Ok(Mapping {
            gnttab: Rc::clone(self),
            addr,
            pages: count,
        })
    }
}

impl Drop for Gnttab {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once (every Mapping and GrantCopier
        // holds an Rc).
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
            log::error!(
                "unmapping {} granted page(s): {}",
                self.pages,
                Error::last("xengnttab_unmap")
            );
        }
    }
}

/// Which way a grant copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// The guest's page → our buffer.
    FromGuest,
    /// Our buffer → the guest's page.
    ToGuest,
}

/// One grant copy: `len` bytes at `offset` of the guest's granted page `gref`, and at
/// `local` of the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCopy {
    pub gref: u32,
    pub offset: u16,
    pub len: u16,
    pub local: usize,
}

impl GrantCopy {
    /// Whether the copy stays inside its page and inside a buffer of `buf_len` bytes.
    fn in_bounds(&self, buf_len: usize) -> bool {
        let len = usize::from(self.len);
        usize::from(self.offset) + len <= PAGE_SIZE
            && self
                .local
                .checked_add(len)
                .is_some_and(|end| end <= buf_len)
    }
}

/// Grant copies for one domain with `/dev/xen/gntdev`, reusing its request buffer.
pub struct GrantCopier {
    gnttab: Rc<Gnttab>,
    domid: u16,
    segments: Vec<ffi::xengnttab_grant_copy_segment_t>,
}

impl std::fmt::Debug for GrantCopier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCopier")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl GrantCopier {
    pub fn new(gnttab: Rc<Gnttab>, domid: u16) -> Self {
        Self {
            gnttab,
            domid,
            segments: Vec::new(),
        }
    }

    /// Run `copies` between the guest's pages and `buf`, in one call. `status` gets one
    /// `GNTST_*` per copy, in order: 0 copied, [`GNTST_BAD_COPY_ARG`] for one outside
    /// its page or `buf` (never attempted), [`GNTST_GENERAL_ERROR`] for all of them when
    /// the batch could not be submitted (the error says why).
    pub fn copy(
        &mut self,
        direction: CopyDirection,
        copies: impl ExactSizeIterator<Item = GrantCopy>,
        buf: &mut [u8],
        status: &mut Vec<i16>,
    ) -> Result<()> {
        status.clear();
        self.segments.clear();
        let base = buf.as_mut_ptr();
        for copy in copies {
            let in_bounds = copy.in_bounds(buf.len());
            // A copy out of bounds is submitted with length 0 at the buffer's start (so
            // the hypervisor touches nothing) and reported as a bad argument.
            let (local, len) = if in_bounds {
                // SAFETY: `local + len <= buf.len()` (checked just above).
                (unsafe { base.add(copy.local) }, copy.len)
            } else {
                (base, 0)
            };
            status.push(if in_bounds { 0 } else { GNTST_BAD_COPY_ARG });
            let foreign = ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr {
                foreign: ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr__bindgen_ty_1 {
                    ref_: copy.gref,
                    offset: copy.offset,
                    domid: self.domid,
                },
            };
            let virt = ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr { virt: local.cast() };
            let (source, dest, flags) = match direction {
                CopyDirection::FromGuest => (foreign, virt, ffi::GNTCOPY_source_gref),
                CopyDirection::ToGuest => (virt, foreign, ffi::GNTCOPY_dest_gref),
            };
            self.segments.push(ffi::xengnttab_grant_copy_segment_t {
                source,
                dest,
                len,
                flags: flags as u16,
                status: GNTST_GENERAL_ERROR,
            });
        }
        if self.segments.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(self.segments.len()).expect("at most a ring's worth");
        // SAFETY: the handle is open; every segment's local side lies inside `buf`
        // (checked above), which stays borrowed for the call.
        let rc = unsafe {
            ffi::xengnttab_grant_copy(
                self.gnttab.handle.as_ptr(),
                count,
                self.segments.as_mut_ptr(),
            )
        };
        if rc < 0 {
            let err = Error::last("xengnttab_grant_copy");
            status.fill(GNTST_GENERAL_ERROR);
            return Err(err);
        }
        for (status, segment) in status.iter_mut().zip(&self.segments) {
            if *status == 0 {
                *status = segment.status;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_stay_inside_their_page_and_the_buffer() {
        let copy = |offset, len, local| GrantCopy {
            gref: 8,
            offset,
            len,
            local,
        };
        assert!(copy(0, 4096, 0).in_bounds(4096));
        assert!(copy(4000, 96, 100).in_bounds(196));
        assert!(!copy(4000, 97, 0).in_bounds(4096));
        assert!(!copy(0, 10, 4090).in_bounds(4096));
        assert!(!copy(0, 1, usize::MAX).in_bounds(usize::MAX));
        assert_eq!((GNTST_GENERAL_ERROR, GNTST_BAD_COPY_ARG), (-1, -10));
    }
}
