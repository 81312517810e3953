//! The `start_info` page: copied once at boot, validated, and kept as [`BootInfo`].
//!
//! Xen writes the page before we run, but we still check it: a toolstack bug (or a
//! future toolstack of ours) must give a clear error, not a wild pointer.

use arch::abi::{SIF_INITDOMAIN, start_info};
use arch::mm::{PAGE_SHIFT, PAGE_SIZE, VIRT_BASE};

/// The magic a 64-bit PV start_info begins with ("xen-3.0-x86_64", then NUL or more).
const MAGIC_PREFIX: &[u8] = b"xen-3.0-x86_64";
/// Capacity of `start_info.cmd_line` (`MAX_GUEST_CMDLINE`).
pub const CMDLINE_CAPACITY: usize = 1024;

/// Where the console is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleSource {
    /// A domU's console ring: machine frame and event channel.
    Ring { mfn: u64, evtchn: u32 },
    /// dom0 writes through the `console_io` hypercall.
    Hypervisor,
}

/// What Xen told us at boot, validated.
#[derive(Clone)]
pub struct BootInfo {
    /// Pages of memory the domain has.
    pub nr_pages: u64,
    /// Machine frame of `shared_info`.
    pub shared_info_mfn: u64,
    /// Running as the hardware domain (dom0).
    pub is_dom0: bool,
    /// Xenstore ring (frame, event channel); `None` for dom0.
    pub xenstore: Option<(u64, u32)>,
    pub console: ConsoleSource,
    /// Pfn of the top-level page table and number of bootstrap page-table frames.
    pub pt_base_pfn: u64,
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list.
    pub mfn_list: u64,
    /// The first pfn after everything Xen placed in the bootstrap region: the image,
    /// the p2m list, start_info, the Xenstore and console pages, the page tables and
    /// Xen's boot stack (which we left at entry).
    pub first_free_pfn: u64,
    /// Pfns of the Xenstore and console pages (a domU's; 0 for dom0).
    store_pfn: u64,
    console_pfn: u64,
    cmdline: [u8; CMDLINE_CAPACITY],
    cmdline_len: usize,
}

impl core::fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BootInfo")
            .field("nr_pages", &self.nr_pages)
            .field("is_dom0", &self.is_dom0)
            .field("console", &self.console)
            .field("first_free_pfn", &self.first_free_pfn)
            .field("cmdline", &self.cmdline())
            .finish_non_exhaustive()
    }
}

/// A start_info page we cannot boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// Not a 64-bit PV start_info.
    BadMagic,
    /// `nr_pages` is zero.
    NoMemory,
    /// A bootstrap address lies outside the domain's memory.
    OutOfRange { field: &'static str, value: u64 },
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
    /// A restored domain's start_info differs from the one we booted with where it
    /// must not (libxc keeps the memory size and the pages' pfns).
    Changed { field: &'static str, value: u64 },
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic => f.write_str("start_info magic is not xen-3.0-x86_64"),
            Self::NoMemory => f.write_str("start_info.nr_pages is 0"),
            Self::OutOfRange { field, value } => {
                write!(
                    f,
                    "start_info.{field} = {value:#x} lies outside the domain's memory"
                )
            }
            Self::CmdlineNotUtf8 => f.write_str("start_info.cmd_line is not UTF-8"),
            Self::Changed { field, value } => {
                write!(
                    f,
                    "start_info.{field} = {value:#x} changed across a restore"
                )
            }
        }
    }
}

impl BootInfo {
    /// Validate and copy `si`. `image_end` is the first address past our image,
    /// `m2p` translates a machine frame to a pfn (for the Xenstore and console pages).
    pub fn parse(
        si: &start_info,
        image_end: u64,
        m2p: impl Fn(u64) -> u64,
    ) -> Result<Self, StartInfoError> {
        let magic = si.magic.map(|c| c as u8);
        if !magic.starts_with(MAGIC_PREFIX) {
            return Err(StartInfoError::BadMagic);
        }
        if si.nr_pages == 0 {
            return Err(StartInfoError::NoMemory);
        }
        let nr_pages = si.nr_pages;
        let pfn_in_range = |field, va: u64| {
            let pfn = va.checked_sub(VIRT_BASE).map(|off| off >> PAGE_SHIFT);
            match pfn {
                Some(pfn) if pfn < nr_pages => Ok(pfn),
                _ => Err(StartInfoError::OutOfRange { field, value: va }),
            }
        };
        let frame_in_range = |field, mfn: u64| {
            let pfn = m2p(mfn);
            if pfn < nr_pages {
                Ok(pfn)
            } else {
                Err(StartInfoError::OutOfRange { field, value: mfn })
            }
        };

        let is_dom0 = si.flags & SIF_INITDOMAIN != 0;
        let pt_base_pfn = pfn_in_range("pt_base", si.pt_base)?;
        let p2m_pfn = pfn_in_range("mfn_list", si.mfn_list)?;
        let p2m_pages = (nr_pages * 8).div_ceil(PAGE_SIZE as u64);
        let image_pages = pfn_in_range("image end", image_end - 1)? + 1;

        // Everything Xen placed in the bootstrap region, as exclusive end pfns.
        let mut ends = [
            image_pages,
            p2m_pfn + p2m_pages,
            pt_base_pfn + si.nr_pt_frames + 1, // + Xen's boot stack
            0,
            0,
        ];
        let (mut store_pfn, mut console_pfn) = (0, 0);
        let xenstore = if is_dom0 {
            None
        } else {
            store_pfn = frame_in_range("store_mfn", si.store_mfn)?;
            ends[3] = store_pfn + 1;
            Some((si.store_mfn, si.store_evtchn))
        };
        let console = if is_dom0 {
            ConsoleSource::Hypervisor
        } else {
            // SAFETY: for a domU Xen fills the `domU` member of the union.
            let domu = unsafe { si.console.domU };
            console_pfn = frame_in_range("console.domU.mfn", domu.mfn)?;
            ends[4] = console_pfn + 1;
            ConsoleSource::Ring {
                mfn: domu.mfn,
                evtchn: domu.evtchn,
            }
        };
        let first_free_pfn = ends.into_iter().max().unwrap_or(0);
        if first_free_pfn > nr_pages {
            return Err(StartInfoError::OutOfRange {
                field: "nr_pt_frames",
                value: si.nr_pt_frames,
            });
        }

        let raw = si.cmd_line.map(|c| c as u8);
        let cmdline_len = raw.iter().position(|&b| b == 0).unwrap_or(CMDLINE_CAPACITY);
        if core::str::from_utf8(&raw[..cmdline_len]).is_err() {
            return Err(StartInfoError::CmdlineNotUtf8);
        }
        Ok(Self {
            nr_pages,
            // start_info carries the machine *address* of shared_info.
            shared_info_mfn: si.shared_info >> PAGE_SHIFT,
            is_dom0,
            xenstore,
            console,
            pt_base_pfn,
            nr_pt_frames: si.nr_pt_frames,
            mfn_list: si.mfn_list,
            first_free_pfn,
            store_pfn,
            console_pfn,
            cmdline: raw,
            cmdline_len,
        })
    }

    /// Before a suspend: make start_info's Xenstore and console frames pfns, which is
    /// how libxc saves them (it makes them the new domain's machine frames again).
    /// Undone by [`Self::unsuspend`] if the domain goes on where it is.
    pub fn prepare_suspend(&self, si: &mut start_info, m2p: impl Fn(u64) -> u64) {
        if !self.is_dom0 {
            si.store_mfn = m2p(si.store_mfn);
            // SAFETY: a domU's start_info has the `domU` member.
            unsafe { si.console.domU.mfn = m2p(si.console.domU.mfn) };
        }
    }

    /// After a suspend that went on in the same domain: machine frames again.
    pub fn unsuspend(&self, si: &mut start_info, p2m: impl Fn(u64) -> u64) {
        if !self.is_dom0 {
            si.store_mfn = p2m(si.store_mfn);
            // SAFETY: as in `prepare_suspend`.
            unsafe { si.console.domU.mfn = p2m(si.console.domU.mfn) };
        }
    }

    /// After a restore into a new domain: what libxc rewrote in `si` — shared_info's
    /// frame, the Xenstore and console ports (and frames, which must be the same
    /// pages) — validated against what we booted with. Returns the new
    /// `(shared_info_mfn, store_evtchn, console_evtchn)`.
    pub fn after_restore(
        &self,
        si: &start_info,
        m2p: impl Fn(u64) -> u64,
    ) -> Result<(u64, u32, u32), StartInfoError> {
        let magic = si.magic.map(|c| c as u8);
        if !magic.starts_with(MAGIC_PREFIX) {
            return Err(StartInfoError::BadMagic);
        }
        if si.nr_pages != self.nr_pages {
            return Err(StartInfoError::Changed {
                field: "nr_pages",
                value: si.nr_pages,
            });
        }
        let same_page = |field, pfn: u64, mfn: u64| {
            if m2p(mfn) == pfn {
                Ok(())
            } else {
                Err(StartInfoError::Changed { field, value: mfn })
            }
        };
        same_page("store_mfn", self.store_pfn, si.store_mfn)?;
        // SAFETY: only a domU suspends; its start_info has the `domU` member.
        let console = unsafe { si.console.domU };
        same_page("console.domU.mfn", self.console_pfn, console.mfn)?;
        Ok((
            si.shared_info >> PAGE_SHIFT,
            si.store_evtchn,
            console.evtchn,
        ))
    }

    /// The command line Xen passed (validated UTF-8).
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE_END: u64 = VIRT_BASE + 40 * 4096;

    /// A start_info laid out the way libxenguest builds one for a 4 MiB domU: image
    /// 40 pages, p2m list (2 pages), start_info, Xenstore, console, 6 page tables.
    fn domu(cmdline: &str) -> start_info {
        // SAFETY: start_info is plain data; all-zero is a valid value.
        let mut si: start_info = unsafe { core::mem::zeroed() };
        for (dst, src) in si.magic.iter_mut().zip(b"xen-3.0-x86_64") {
            *dst = *src as _;
        }
        si.nr_pages = 1024;
        si.mfn_list = VIRT_BASE + 40 * 4096;
        si.store_mfn = 0x1000 + 43;
        si.store_evtchn = 1;
        si.console.domU.mfn = 0x1000 + 44;
        si.console.domU.evtchn = 2;
        si.pt_base = VIRT_BASE + 45 * 4096;
        si.nr_pt_frames = 6;
        for (dst, src) in si.cmd_line.iter_mut().zip(cmdline.bytes()) {
            *dst = src as _;
        }
        si
    }

    /// Machine frames of this fake domain are pfn + 0x1000.
    fn m2p(mfn: u64) -> u64 {
        mfn - 0x1000
    }

    #[test]
    fn domu_start_info_parses() {
        let info = BootInfo::parse(&domu("alpha beta"), IMAGE_END, m2p).unwrap();
        assert_eq!(info.nr_pages, 1024);
        assert!(!info.is_dom0);
        assert_eq!(
            info.console,
            ConsoleSource::Ring {
                mfn: 0x1000 + 44,
                evtchn: 2
            }
        );
        assert_eq!(info.xenstore, Some((0x1000 + 43, 1)));
        assert_eq!(info.pt_base_pfn, 45);
        // Page tables end at 51, plus Xen's boot stack.
        assert_eq!(info.first_free_pfn, 52);
        assert_eq!(info.cmdline(), "alpha beta");
    }

    #[test]
    fn dom0_uses_the_hypervisor_console() {
        let mut si = domu("");
        si.flags = SIF_INITDOMAIN | arch::abi::SIF_PRIVILEGED;
        si.store_mfn = 0;
        let info = BootInfo::parse(&si, IMAGE_END, |_| unreachable!()).unwrap();
        assert!(info.is_dom0);
        assert_eq!(info.console, ConsoleSource::Hypervisor);
        assert_eq!(info.xenstore, None);
        assert_eq!(info.cmdline(), "");
    }

    #[test]
    fn bad_pages_are_rejected_with_the_field_named() {
        let mut si = domu("");
        si.magic[8] = b'3' as _;
        assert_eq!(
            BootInfo::parse(&si, IMAGE_END, m2p).unwrap_err(),
            StartInfoError::BadMagic
        );

        let mut si = domu("");
        si.pt_base = 0x1000;
        assert_eq!(
            BootInfo::parse(&si, IMAGE_END, m2p).unwrap_err(),
            StartInfoError::OutOfRange {
                field: "pt_base",
                value: 0x1000
            }
        );

        let mut si = domu("");
        si.console.domU.mfn = 0x1000 + 5000;
        let err = BootInfo::parse(&si, IMAGE_END, m2p).unwrap_err();
        assert_eq!(
            err.to_string(),
            "start_info.console.domU.mfn = 0x2388 lies outside the domain's memory"
        );

        let mut si = domu("");
        si.nr_pages = 0;
        assert_eq!(
            BootInfo::parse(&si, IMAGE_END, m2p).unwrap_err(),
            StartInfoError::NoMemory
        );

        let mut si = domu("");
        si.cmd_line[0] = 0xff_u8 as _;
        assert_eq!(
            BootInfo::parse(&si, IMAGE_END, m2p).unwrap_err(),
            StartInfoError::CmdlineNotUtf8
        );
    }

    #[test]
    fn suspend_makes_frames_pfns_and_a_restore_is_checked_against_boot() {
        let boot = BootInfo::parse(&domu(""), IMAGE_END, m2p).unwrap();
        let mut si = domu("");
        boot.prepare_suspend(&mut si, m2p);
        // SAFETY: a domU start_info.
        let console_mfn = |si: &start_info| unsafe { si.console.domU.mfn };
        assert_eq!((si.store_mfn, console_mfn(&si)), (43, 44));
        let mut cancelled = si;
        boot.unsuspend(&mut cancelled, |pfn| pfn + 0x1000);
        assert_eq!(
            (cancelled.store_mfn, console_mfn(&cancelled)),
            (0x1000 + 43, 0x1000 + 44)
        );

        // libxc made them the new domain's frames and wrote the new ports.
        let new_m2p = |mfn: u64| mfn - 0x8000;
        si.store_mfn = 0x8000 + 43;
        si.console.domU.mfn = 0x8000 + 44;
        si.store_evtchn = 5;
        si.console.domU.evtchn = 6;
        si.shared_info = 0x7777 << PAGE_SHIFT;
        assert_eq!(boot.after_restore(&si, new_m2p), Ok((0x7777, 5, 6)));

        let mut moved = si;
        moved.store_mfn = 0x8000 + 50;
        assert_eq!(
            boot.after_restore(&moved, new_m2p).unwrap_err().to_string(),
            "start_info.store_mfn = 0x8032 changed across a restore"
        );
        let mut bigger = si;
        bigger.nr_pages = 2048;
        assert_eq!(
            boot.after_restore(&bigger, new_m2p),
            Err(StartInfoError::Changed {
                field: "nr_pages",
                value: 2048
            })
        );
        let mut foreign = si;
        foreign.magic[0] = b'y' as _;
        assert_eq!(
            boot.after_restore(&foreign, new_m2p),
            Err(StartInfoError::BadMagic)
        );
    }

    #[test]
    fn command_line_without_terminator_uses_the_whole_buffer() {
        let long = "x".repeat(CMDLINE_CAPACITY);
        let info = BootInfo::parse(&domu(&long), IMAGE_END, m2p).unwrap();
        assert_eq!(info.cmdline().len(), CMDLINE_CAPACITY);
    }
}
