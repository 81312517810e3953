//! libxenguest's PV domain builder: a safe wrapper ([`DomImage`]) around one
//! `struct xc_dom_image`, released on drop. Each step is the `xc_dom_*` call of the
//! same name, in the order libxl makes them (`libxl__build_pv`, `libxl__build_dom`).
//!
//! The kernel is needed from `parse_image` on; the memory (`mem_init`,
//! `boot_mem_init`) only needs the guest type the kernel would give, which for every
//! 64-bit PV kernel is `xen-3.0-x86_64`. [`DomImage::populate_ahead`] populates a
//! domain's memory under that type before any kernel is known (the chaos daemon's
//! shells), and [`DomImage::set_cmdline`] gives the image its command line later.

use std::ffi::{CStr, CString, c_int};
use std::marker::PhantomData;
use std::path::Path;
use std::ptr::NonNull;

use xenffi as ffi;

use crate::error::{Error, Result};
use crate::xc::Xc;

/// `INVALID_MFN` as xenguest.h's `xc_dom_p2m` returns it.
const INVALID_MFN: u64 = !0;
/// The size of a guest page on x86 (`XC_DOM_PAGE_SIZE`).
pub const START_INFO_PAGE: usize = 4096;

/// libxenguest's name of the guest type of a 64-bit PV kernel (`xc_dom_guest_type`),
/// the type [`DomImage::populate_ahead`] builds for.
pub const GUEST_TYPE_X86_64: &CStr = c"xen-3.0-x86_64";

/// One domain image being built, bound to the [`Xc`] it was allocated with.
#[derive(Debug)]
pub struct DomImage<'xc> {
    dom: NonNull<ffi::xc_dom_image>,
    xc: &'xc Xc,
    /// The image is not `Send`: libxenguest keeps per-image state without locks.
    _not_send: PhantomData<*mut ()>,
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::Call {
        call: "xc_dom_*",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", path.display()),
        ),
        detail: None,
    })
}

impl<'xc> DomImage<'xc> {
    /// `xc_dom_allocate` with the guest's command line.
    pub fn allocate(xc: &'xc Xc, cmdline: &str) -> Result<Self> {
        let cmdline = CString::new(cmdline).map_err(|_| Error::Call {
            call: "xc_dom_allocate",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the command line contains a NUL byte",
            ),
            detail: None,
        })?;
        // SAFETY: the handle is open; libxenguest copies the command line; no features.
        let dom = unsafe { ffi::xc_dom_allocate(xc.raw(), cmdline.as_ptr(), std::ptr::null()) };
        let dom = NonNull::new(dom).ok_or_else(|| xc.error("xc_dom_allocate"))?;
        Ok(Self {
            dom,
            xc,
            _not_send: PhantomData,
        })
    }

    fn raw(&self) -> *mut ffi::xc_dom_image {
        self.dom.as_ptr()
    }

    fn check(&self, call: &'static str, rc: c_int) -> Result<()> {
        if rc != 0 {
            return Err(self.xc.error(call));
        }
        Ok(())
    }

    /// `xc_dom_kernel_file`: libxenguest maps (and, if compressed, unpacks) the kernel.
    pub fn kernel_file(&mut self, path: &Path) -> Result<()> {
        let path = c_path(path)?;
        // SAFETY: the image is live; the path is a C string for the call's duration.
        let rc = unsafe { ffi::xc_dom_kernel_file(self.raw(), path.as_ptr()) };
        self.check("xc_dom_kernel_file", rc)
    }

    /// `xc_dom_module_file`: the ramdisk.
    pub fn module_file(&mut self, path: &Path) -> Result<()> {
        let path = c_path(path)?;
        // SAFETY: as for `kernel_file`; no module command line.
        let rc = unsafe { ffi::xc_dom_module_file(self.raw(), path.as_ptr(), std::ptr::null()) };
        self.check("xc_dom_module_file", rc)
    }

    /// The PV container, the event channels of the console and Xenstore (and which
    /// domains serve them), and the vCPU count, as libxl sets them before building.
    pub fn set_pv(
        &mut self,
        console_evtchn: u32,
        console_domid: u32,
        store_evtchn: u32,
        store_domid: u32,
        vcpus: u32,
    ) {
        // SAFETY: the image is live and only this wrapper touches it; these are plain
        // fields libxenguest reads during the build.
        let dom = unsafe { self.dom.as_mut() };
        dom.container_type = ffi::xc_dom_image_XC_DOM_PV_CONTAINER;
        dom.flags = 0;
        dom.console_evtchn = console_evtchn;
        dom.console_domid = console_domid;
        dom.xenstore_evtchn = store_evtchn;
        dom.xenstore_domid = store_domid;
        dom.claim_enabled = 0;
        dom.max_vcpus = vcpus;
    }

    pub fn boot_xen_init(&mut self, domid: u32) -> Result<()> {
        // SAFETY: the image and the handle it was allocated with are live.
        let rc = unsafe { ffi::xc_dom_boot_xen_init(self.raw(), self.xc.raw(), domid) };
        self.check("xc_dom_boot_xen_init", rc)
    }

    pub fn parse_image(&mut self) -> Result<()> {
        // SAFETY: the image is live and has its kernel.
        let rc = unsafe { ffi::xc_dom_parse_image(self.raw()) };
        self.check("xc_dom_parse_image", rc)
    }

    pub fn mem_init(&mut self, mib: u32) -> Result<()> {
        // SAFETY: the image is live and parsed.
        let rc = unsafe { ffi::xc_dom_mem_init(self.raw(), mib) };
        self.check("xc_dom_mem_init", rc)
    }

    pub fn boot_mem_init(&mut self) -> Result<()> {
        // SAFETY: the image is live; `mem_init` came first.
        let rc = unsafe { ffi::xc_dom_boot_mem_init(self.raw()) };
        self.check("xc_dom_boot_mem_init", rc)
    }

    /// `mem_init` and `boot_mem_init` (the domain's memory populated) before any
    /// kernel is known: the image takes the guest type of a 64-bit PV kernel
    /// ([`GUEST_TYPE_X86_64`]) for its per-architecture steps, as `parse_image` would
    /// set it. A kernel parsed afterwards must be of that type ([`Self::guest_type`]):
    /// the memory was laid out for it.
    pub fn populate_ahead(&mut self, mib: u32) -> Result<()> {
        // SAFETY: the image is live and only this wrapper touches it; the guest type is
        // a static C string, as `xc_dom_guest_type`'s are (libxenguest never frees it).
        unsafe { self.dom.as_mut() }.guest_type = GUEST_TYPE_X86_64.as_ptr();
        self.mem_init(mib)?;
        self.boot_mem_init()
    }

    /// Give the image `cmdline` in place of the one it was allocated with (before
    /// `boot_image`, which copies it into start_info).
    pub fn set_cmdline(&mut self, cmdline: &str) -> Result<()> {
        let cmdline = CString::new(cmdline).map_err(|_| Error::Call {
            call: "xc_dom_strdup",
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the command line contains a NUL byte",
            ),
            detail: None,
        })?;
        // SAFETY: the image is live; libxenguest copies the string into memory the
        // image owns (freed with it).
        let copy = unsafe { ffi::xc_dom_strdup(self.raw(), cmdline.as_ptr()) };
        if copy.is_null() {
            return Err(self.xc.error("xc_dom_strdup"));
        }
        // SAFETY: as in `set_pv`: a plain field, read when start_info is written.
        unsafe { self.dom.as_mut() }.cmdline = copy;
        Ok(())
    }

    pub fn build_image(&mut self) -> Result<()> {
        // SAFETY: the image is live; its memory is populated.
        let rc = unsafe { ffi::xc_dom_build_image(self.raw()) };
        self.check("xc_dom_build_image", rc)
    }

    pub fn boot_image(&mut self) -> Result<()> {
        // SAFETY: the image is live and built.
        let rc = unsafe { ffi::xc_dom_boot_image(self.raw()) };
        self.check("xc_dom_boot_image", rc)
    }

    /// `xc_dom_gnttab_init`: seed the guest's grant table with the console and Xenstore
    /// pages for their back-end domains (`xc_dom_gnttab_seed`).
    pub fn gnttab_init(&mut self) -> Result<()> {
        // SAFETY: the image is live and booted.
        let rc = unsafe { ffi::xc_dom_gnttab_init(self.raw()) };
        self.check("xc_dom_gnttab_init", rc)
    }

    /// The machine frame of a guest frame (xenguest.h's inline `xc_dom_p2m` for x86
    /// PV: the builder's p2m table).
    fn p2m(&self, pfn: u64) -> u64 {
        // SAFETY: the image is live; `pv_p2m` holds `total_pages` entries once built.
        let dom = unsafe { self.dom.as_ref() };
        if pfn >= dom.total_pages || dom.pv_p2m.is_null() {
            return INVALID_MFN;
        }
        // SAFETY: `pfn < total_pages`, the length of `pv_p2m`.
        unsafe { *dom.pv_p2m.add(pfn as usize) }
    }

    /// The guest's start_info page, for the toolstack's own additions (NoXS's device
    /// block) before the guest first runs: `xc_dom_pfn_to_ptr` gives the builder's
    /// mapping of it, mapping it afresh if the build already unmapped it; the mapping
    /// goes with the image.
    pub fn start_info_page(&mut self) -> Result<&mut [u8; START_INFO_PAGE]> {
        // SAFETY: the image is live.
        let pfn = unsafe { self.dom.as_ref() }.start_info_pfn;
        // SAFETY: the image is live and built; one page.
        let ptr = unsafe { ffi::xc_dom_pfn_to_ptr(self.raw(), pfn, 1) };
        if ptr.is_null() {
            return Err(self.xc.error("xc_dom_pfn_to_ptr (start_info)"));
        }
        // SAFETY: a non-null result maps the whole page (x86 pages are 4 KiB) read-write
        // until `xc_dom_release`, which needs `&mut self` (drop) and so cannot run while
        // the returned borrow lives; the domain has not run, so no one else writes it.
        Ok(unsafe { &mut *ptr.cast::<[u8; START_INFO_PAGE]>() })
    }

    /// The console ring's machine frame (what `console/ring-ref` says).
    pub fn console_mfn(&self) -> u64 {
        // SAFETY: the image is live.
        self.p2m(unsafe { self.dom.as_ref() }.console_pfn)
    }

    /// The Xenstore ring's machine frame (`store/ring-ref`, `xs_introduce_domain`).
    pub fn store_mfn(&self) -> u64 {
        // SAFETY: the image is live.
        self.p2m(unsafe { self.dom.as_ref() }.xenstore_pfn)
    }

    /// The guest type libxenguest found (`xen-3.0-x86_64`), once parsed.
    pub fn guest_type(&self) -> Option<String> {
        // SAFETY: the image is live.
        let ptr = unsafe { self.dom.as_ref() }.guest_type;
        (!ptr.is_null()).then(|| {
            // SAFETY: a non-null guest type is a static C string of libxenguest.
            unsafe { CStr::from_ptr(ptr) }
                .to_string_lossy()
                .into_owned()
        })
    }
}

impl Drop for DomImage<'_> {
    fn drop(&mut self) {
        // SAFETY: the image is live and released once; its `Xc` outlives it (borrowed).
        unsafe { ffi::xc_dom_release(self.raw()) };
    }
}
