//! Grant copies with `/dev/xen/gntdev`: the daemon's [`GuestMemory`].

use std::rc::Rc;

use xendevd::engine::memory::{
    Direction, GNTST_BAD_COPY_ARG, GNTST_GENERAL_ERROR, GuestMemory, Span,
};
use xenffi as ffi;

use crate::xen::gnttab::Gnttab;

/// Grant copies with `/dev/xen/gntdev`, for one domain.
pub struct GrantCopier {
    gnttab: Rc<Gnttab>,
    domid: u16,
    segments: Vec<ffi::xengnttab_grant_copy_segment_t>,
}

impl GrantCopier {
    pub fn new(gnttab: Rc<Gnttab>, domid: u16) -> Self {
        Self {
            gnttab,
            domid,
            segments: Vec::new(),
        }
    }
}

impl std::fmt::Debug for GrantCopier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCopier")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl GuestMemory for GrantCopier {
    fn copy(
        &mut self,
        direction: Direction,
        spans: &[Span],
        buf: &mut [u8],
        status: &mut Vec<i16>,
    ) {
        status.clear();
        self.segments.clear();
        let base = buf.as_mut_ptr();
        for span in spans {
            // Out-of-bounds spans never reach the hypervisor: they fail on their own.
            let (local, len) = if span.fits(buf.len()) {
                // SAFETY: `local + len <= buf.len()` (checked just above).
                (unsafe { base.add(span.local) }, span.len)
            } else {
                (base, 0)
            };
            let foreign = ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr {
                foreign: ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr__bindgen_ty_1 {
                    ref_: span.gref,
                    offset: span.offset,
                    domid: self.domid,
                },
            };
            let virt = ffi::xengnttab_grant_copy_segment_xengnttab_copy_ptr { virt: local.cast() };
            let (source, dest, flags) = match direction {
                Direction::FromGuest => (foreign, virt, ffi::GNTCOPY_source_gref),
                Direction::ToGuest => (virt, foreign, ffi::GNTCOPY_dest_gref),
            };
            self.segments.push(ffi::xengnttab_grant_copy_segment_t {
                source,
                dest,
                len,
                flags: flags as u16,
                status: GNTST_GENERAL_ERROR,
            });
        }
        let attempted = self.gnttab.copy(&mut self.segments);
        if let Err(err) = &attempted {
            log::warn!(
                "grant copy of {} span(s) for domain {}: {err}",
                spans.len(),
                self.domid
            );
        }
        for (span, segment) in spans.iter().zip(&self.segments) {
            status.push(if attempted.is_err() {
                GNTST_GENERAL_ERROR
            } else if !span.fits(buf.len()) {
                GNTST_BAD_COPY_ARG
            } else {
                segment.status
            });
        }
    }
}
