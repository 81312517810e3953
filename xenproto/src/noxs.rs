//! NoXS v1: devices without Xenstore, on an unmodified Xen (`shared/design/noxs-v1.md`).
//!
//! The toolstack writes a [`Block`] into the guest's start_info page (at
//! [`BLOCK_OFFSET`]) before it unpauses the guest; each entry names a device and the
//! grant and event channel of its **control page**, a page the backend allocates and
//! grants to the guest. Each side writes only its own area of that page and its own
//! state word, then notifies; the other side copies the area once and validates the
//! copy with the `decode` functions here. Nothing read from a shared page is trusted.
//!
//! All fields little-endian. States are the Xenbus values ([`XenbusState`]).

use alloc::vec::Vec;
use core::fmt;

use crate::xenstore::XenbusState;

/// Where the block lies in the start_info page (`start_info` ends before 0x4c0).
pub const BLOCK_OFFSET: usize = 0x800;
/// "NOXS" read as a little-endian u32.
pub const MAGIC: u32 = 0x5358_4f4e;
pub const VERSION: u16 = 1;
/// Entries a block can hold.
pub const MAX_ENTRIES: usize = 64;
const HEADER_LEN: usize = 16;
const ENTRY_LEN: usize = 24;
/// Where the block's entry count lies, and where its entries start (what a back end
/// offering the devices again rewrites, `Block::encode_entries`).
pub const COUNT: usize = 6;
pub const ENTRIES: usize = HEADER_LEN;
/// Bytes the block occupies at most.
pub const BLOCK_LEN: usize = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN;
const _: () = assert!(
    BLOCK_OFFSET + BLOCK_LEN <= 4096,
    "the block must fit the start_info page"
);

/// NoXS v1.1: offering the devices again after the back end lost its control pages
/// (it restarted). The block's header word at 8 was reserved in v1: a v1 guest ignores
/// it and a v1.1 guest under a v1 back end never sees it change.
///
/// At boot a v1.1 guest allocates an event channel unbound for the back end, writes its
/// port at [`reoffer::PORT`], and grants its start_info page read-write to the back end
/// at grant reference [`reoffer::BLOCK_GREF`]. A back end that starts again maps that
/// grant, copies the block once, writes each device's new control page and port into its
/// entry ([`Block::encode_entries`]), a write barrier, then `generation + 1` at
/// [`reoffer::GENERATION`], binds the guest's port and notifies it. The guest copies
/// the block once, and each device whose entry changed does the handshake again on its
/// new control page with the same ring pages and data port. Before it connects again it
/// starts each ring afresh (a dying back end may have written responses over requests
/// it never announced) and queues again what was not answered: blkfront its requests in
/// flight, netfront all its receive buffers (transmits in flight are dropped, as a
/// network may).
pub mod reoffer {
    /// The grant reference of the guest's start_info page (one of the eight Xen reserves
    /// for the toolstack; 0 and 1 are the console's and Xenstore's).
    pub const BLOCK_GREF: u32 = 2;
    /// Offset in the block of the generation word: written by the back end only.
    pub const GENERATION: usize = 8;
    /// Offset in the block of the guest's re-offer port: written by the guest only
    /// (0: none, a v1 guest).
    pub const PORT: usize = 12;

    /// Whether a device that last looked at the block of generation `handled` (`None`:
    /// never) was connected in a domain the guest has since been restored out of, and
    /// the block of generation `offered` is the first it sees since: the block's
    /// generation was `restored_at` when the guest last resumed in a new domain (`None`:
    /// never). Generations only grow over a guest's life (a restored page keeps its
    /// own). Such a device's control page went with the old domain, so the offer is a
    /// new page whatever numbers it gives ([`super::Block::reoffer_after`]).
    pub fn predates_restore(handled: Option<u32>, restored_at: Option<u32>, offered: u32) -> bool {
        match (handled, restored_at) {
            (Some(handled), Some(restored_at)) => handled <= restored_at && offered > restored_at,
            _ => false,
        }
    }
}

/// Size of a control page.
pub const PAGE_SIZE: usize = 4096;
/// The backend's area of a control page.
pub const BACKEND_AREA: core::ops::Range<usize> = 0x40..0x800;
/// The frontend's area of a control page.
pub const FRONTEND_AREA: core::ops::Range<usize> = 0x800..0x1000;
/// Bytes of the control page's header.
pub const CONTROL_HEADER_LEN: usize = 16;
/// Offsets of the control page's header words.
pub mod header {
    pub const VERSION: usize = 0x0;
    pub const KIND: usize = 0x4;
    pub const BE_STATE: usize = 0x8;
    pub const FE_STATE: usize = 0xc;
}

/// What kind of device an entry describes (LightVM's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
#[repr(u16)]
pub enum Kind {
    Sysctl = 1,
    /// Reserved: the console needs no entry (see the design page).
    Console = 2,
    Vif = 3,
    Vbd = 4,
}

impl Kind {
    pub fn from_wire(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Sysctl,
            2 => Self::Console,
            3 => Self::Vif,
            4 => Self::Vbd,
            _ => return None,
        })
    }
}

/// One device of the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Serialize is written out in `serde_impls.rs`, in the field order of xendevd's JSON.
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Entry {
    pub kind: Kind,
    /// The backend's domain id.
    pub backend: u16,
    /// Index within the kind: vif 0, vif 1, …
    pub devid: u32,
    /// Grant reference of the control page (read-write for the guest).
    pub ctrl_gref: u32,
    /// The backend's event-channel port reserved for this guest (bind interdomain).
    pub ctrl_port: u32,
}

/// Something in a block or a control page that no correct peer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoxsError {
    BadVersion(u32),
    TooManyEntries(u16),
    UnknownKind {
        index: usize,
        kind: u32,
    },
    /// Two entries for the same kind and index.
    Duplicate {
        kind: Kind,
        devid: u32,
    },
    /// A control page of another kind than its entry says.
    KindMismatch {
        expected: Kind,
        found: u32,
    },
    BadState(u32),
    /// A field out of its range, by name.
    BadField(&'static str),
    /// A buffer too small for what it must hold.
    Short {
        needed: usize,
        got: usize,
    },
    /// A re-offer describes another device than the one connected (field by name).
    Changed(&'static str),
}

impl fmt::Display for NoxsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadVersion(v) => write!(f, "NoXS version {v} (this side speaks {VERSION})"),
            Self::TooManyEntries(n) => {
                write!(f, "NoXS block claims {n} entries (at most {MAX_ENTRIES})")
            }
            Self::UnknownKind { index, kind } => {
                write!(f, "NoXS entry {index}: unknown device kind {kind}")
            }
            Self::Duplicate { kind, devid } => write!(f, "NoXS block lists {kind:?} {devid} twice"),
            Self::KindMismatch { expected, found } => {
                write!(f, "control page of kind {found}, expected {expected:?}")
            }
            Self::BadState(s) => write!(f, "state word {s} is not a Xenbus state"),
            Self::BadField(name) => write!(f, "field {name} out of range"),
            Self::Short { needed, got } => write!(f, "{got} bytes where {needed} are needed"),
            Self::Changed(name) => write!(f, "the device offered again has another {name}"),
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// `N` consecutive little-endian words from `at`.
fn u32s_at<const N: usize>(bytes: &[u8], at: usize) -> [u32; N] {
    core::array::from_fn(|i| u32_at(bytes, at + 4 * i))
}

/// Write `words` little-endian from `at`.
fn put_u32s(out: &mut [u8], at: usize, words: &[u32]) {
    for (chunk, word) in out[at..at + 4 * words.len()].chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn need(bytes: &[u8], len: usize) -> Result<(), NoxsError> {
    if bytes.len() < len {
        Err(NoxsError::Short {
            needed: len,
            got: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// The device table in start_info.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Block {
    pub entries: Vec<Entry>,
    /// Bumped by the back end each time it offers the devices again (v1.1; 0 at boot).
    pub generation: u32,
}

impl Block {
    /// Write the block into `out` (the start_info page from [`BLOCK_OFFSET`] on).
    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, HEADER_LEN)?;
        out[..HEADER_LEN].fill(0);
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[reoffer::GENERATION..][..4].copy_from_slice(&self.generation.to_le_bytes());
        self.encode_entries(out)
    }

    /// Write the count and the entries only, leaving the header's other words alone: a
    /// back end offering the devices again must not touch the guest's port, and writes
    /// the generation last.
    pub fn encode_entries(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(NoxsError::TooManyEntries(self.entries.len() as u16));
        }
        let len = HEADER_LEN + self.entries.len() * ENTRY_LEN;
        need(out, len)?;
        out[HEADER_LEN..len].fill(0);
        out[6..8].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (i, entry) in self.entries.iter().enumerate() {
            let e = &mut out[HEADER_LEN + i * ENTRY_LEN..][..ENTRY_LEN];
            e[0..2].copy_from_slice(&(entry.kind as u16).to_le_bytes());
            e[2..4].copy_from_slice(&entry.backend.to_le_bytes());
            e[4..8].copy_from_slice(&entry.devid.to_le_bytes());
            e[8..12].copy_from_slice(&entry.ctrl_gref.to_le_bytes());
            e[12..16].copy_from_slice(&entry.ctrl_port.to_le_bytes());
        }
        Ok(())
    }

    /// Read a block from a copy of the start_info page from [`BLOCK_OFFSET`] on.
    /// `Ok(None)` when there is no block (no magic): the guest uses Xenstore.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, NoxsError> {
        need(bytes, HEADER_LEN)?;
        if u32_at(bytes, 0) != MAGIC {
            return Ok(None);
        }
        let version = u16_at(bytes, 4);
        if version != VERSION {
            return Err(NoxsError::BadVersion(version.into()));
        }
        let count = u16_at(bytes, 6);
        if usize::from(count) > MAX_ENTRIES {
            return Err(NoxsError::TooManyEntries(count));
        }
        need(bytes, HEADER_LEN + usize::from(count) * ENTRY_LEN)?;
        let mut entries = Vec::with_capacity(count.into());
        for index in 0..usize::from(count) {
            let e = &bytes[HEADER_LEN + index * ENTRY_LEN..][..ENTRY_LEN];
            let raw_kind = u32::from(u16_at(e, 0));
            let kind = Kind::from_wire(raw_kind).ok_or(NoxsError::UnknownKind {
                index,
                kind: raw_kind,
            })?;
            let entry = Entry {
                kind,
                backend: u16_at(e, 2),
                devid: u32_at(e, 4),
                ctrl_gref: u32_at(e, 8),
                ctrl_port: u32_at(e, 12),
            };
            if entries
                .iter()
                .any(|other: &Entry| other.kind == kind && other.devid == entry.devid)
            {
                return Err(NoxsError::Duplicate {
                    kind,
                    devid: entry.devid,
                });
            }
            entries.push(entry);
        }
        Ok(Some(Self {
            entries,
            generation: u32_at(bytes, reoffer::GENERATION),
        }))
    }

    /// The guest's re-offer port from a copy of the block (v1.1; `None`: a v1 guest).
    pub fn reoffer_port(bytes: &[u8]) -> Result<Option<u32>, NoxsError> {
        need(bytes, HEADER_LEN)?;
        Ok(Some(u32_at(bytes, reoffer::PORT)).filter(|&port| port != 0))
    }

    /// The entry of device (`kind`, `devid`).
    pub fn entry(&self, kind: Kind, devid: u32) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.kind == kind && e.devid == devid)
    }

    /// What this block (a re-offer) says of the device `connected` names.
    pub fn reoffer_of(&self, connected: &Entry) -> Reoffer {
        match self.entry(connected.kind, connected.devid) {
            None => Reoffer::Withdrawn,
            Some(entry) if entry.backend != connected.backend => {
                Reoffer::OtherBackend(entry.backend)
            }
            Some(entry)
                if (entry.ctrl_gref, entry.ctrl_port)
                    == (connected.ctrl_gref, connected.ctrl_port) =>
            {
                Reoffer::Unchanged
            }
            Some(entry) => Reoffer::Changed(*entry),
        }
    }

    /// [`Block::reoffer_of`] for a device whose control page may be gone with a domain
    /// the guest was restored out of (`gone`, [`reoffer::predates_restore`]): the new
    /// back end may give the new page the old one's grant reference and port (both are
    /// reused once released), and that is a new page all the same.
    pub fn reoffer_after(&self, connected: &Entry, gone: bool) -> Reoffer {
        match self.reoffer_of(connected) {
            Reoffer::Unchanged if gone => Reoffer::Changed(*connected),
            other => other,
        }
    }

    /// The entries of one kind, by devid.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.kind == kind)
    }
}

/// What a re-offered block says of one connected device (v1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reoffer {
    /// The same control page: another device was offered again, not this one.
    Unchanged,
    /// A new control page: connect again through it.
    Changed(Entry),
    /// The device is no longer in the block.
    Withdrawn,
    /// Another back end domain: it cannot bind the ports and rings granted to the first.
    OtherBackend(u16),
}

/// A control page's header, as copied from the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub be_state: XenbusState,
    pub fe_state: XenbusState,
}

fn state(value: u32) -> Result<XenbusState, NoxsError> {
    use XenbusState::*;
    Ok(match value {
        0 => Unknown,
        1 => Initialising,
        2 => InitWait,
        3 => Initialised,
        4 => Connected,
        5 => Closing,
        6 => Closed,
        7 => Reconfiguring,
        8 => Reconfigured,
        _ => return Err(NoxsError::BadState(value)),
    })
}

impl Header {
    /// Check the first 16 bytes of a control page expected to be of `kind`.
    pub fn decode(bytes: &[u8], kind: Kind) -> Result<Self, NoxsError> {
        need(bytes, CONTROL_HEADER_LEN)?;
        let version = u32_at(bytes, header::VERSION);
        if version != u32::from(VERSION) {
            return Err(NoxsError::BadVersion(version));
        }
        let found = u32_at(bytes, header::KIND);
        if found != kind as u32 {
            return Err(NoxsError::KindMismatch {
                expected: kind,
                found,
            });
        }
        Ok(Self {
            kind,
            be_state: state(u32_at(bytes, header::BE_STATE))?,
            fe_state: state(u32_at(bytes, header::FE_STATE))?,
        })
    }

    /// Fill a fresh control page's header (backend side, at allocation).
    pub fn init(page: &mut [u8], kind: Kind) -> Result<(), NoxsError> {
        need(page, CONTROL_HEADER_LEN)?;
        page[header::VERSION..][..4].copy_from_slice(&u32::from(VERSION).to_le_bytes());
        page[header::KIND..][..4].copy_from_slice(&(kind as u32).to_le_bytes());
        Ok(())
    }
}

/// One side's area of a device kind, as it lies at the start of that side's part of
/// the control page: copied out once and validated by `decode`, written by `encode`.
pub trait Area: Sized {
    /// Bytes it occupies.
    const LEN: usize;
    fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError>;
    fn decode(bytes: &[u8]) -> Result<Self, NoxsError>;
}

/// The longest [`Area`]: room enough for a copy of any of them.
pub const MAX_AREA_LEN: usize = 24;

/// Each area's inherent `LEN`, `encode` and `decode`, as its [`Area`].
macro_rules! areas {
    ($($area:ident),*) => {$(
        const _: () = assert!($area::LEN <= MAX_AREA_LEN);
        impl Area for $area {
            const LEN: usize = $area::LEN;
            fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
                $area::encode(self, out)
            }
            fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
                $area::decode(bytes)
            }
        }
    )*};
}

areas!(
    VifBackend,
    VifFrontend,
    VbdBackend,
    VbdFrontend,
    SysctlBackend,
    SysctlFrontend
);

/// vif backend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VifBackend {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub features: VifBackendFeatures,
    /// Address, prefix and gateway (network byte order as bytes); 0: the guest
    /// configures itself (DHCP).
    pub ipv4: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
}

bitflags::bitflags! {
    /// What a vif back end offers (`features` of its area). Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct VifBackendFeatures: u32 {
        const RX_COPY = 1 << 0;
        const SG = 1 << 1;
        const GSO_TCPV4 = 1 << 2;
        const NO_CSUM_OFFLOAD = 1 << 3;
    }

    /// What a vif front end asks for (`features` of its area): the same bit means
    /// something else than on the back end's side.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct VifFrontendFeatures: u32 {
        const REQUEST_RX_COPY = 1 << 0;
        const RX_NOTIFY = 1 << 1;
        const SG = 1 << 2;
        const GSO_TCPV4 = 1 << 3;
    }

    /// What a vbd back end offers (`features` of its area).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct VbdFeatures: u32 {
        const FLUSH_CACHE = 1 << 0;
        const BARRIER = 1 << 1;
        const DISCARD = 1 << 2;
        const INDIRECT = 1 << 3;
    }

    /// The vbd back end's `info` word.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct VbdInfo: u32 {
        const READ_ONLY = 1 << 0;
    }
}

impl VifBackend {
    pub const LEN: usize = 24;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        out[0..6].copy_from_slice(&self.mac);
        out[6..8].copy_from_slice(&self.mtu.to_le_bytes());
        out[8..12].copy_from_slice(&self.features.bits().to_le_bytes());
        out[12..16].copy_from_slice(&self.ipv4);
        out[16] = self.prefix_len;
        out[17..20].fill(0);
        out[20..24].copy_from_slice(&self.gateway);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let area = Self {
            mac: bytes[0..6].try_into().expect("6 bytes"),
            mtu: u16_at(bytes, 6),
            features: VifBackendFeatures::from_bits_retain(u32_at(bytes, 8)),
            ipv4: bytes[12..16].try_into().expect("4 bytes"),
            prefix_len: bytes[16],
            gateway: bytes[20..24].try_into().expect("4 bytes"),
        };
        if area.prefix_len > 32 {
            return Err(NoxsError::BadField("vif prefix_len"));
        }
        if area.mtu != 0 && !(68..=9000).contains(&area.mtu) {
            return Err(NoxsError::BadField("vif mtu"));
        }
        // A multicast MAC cannot be a station address.
        if area.mac[0] & 1 != 0 {
            return Err(NoxsError::BadField("vif mac"));
        }
        Ok(area)
    }
}

impl VifBackend {
    /// Whether a re-offer's area still describes this vif: the guest's address on
    /// the wire (its MAC) cannot change under a connected interface.
    pub fn same_device(&self, again: &Self) -> Result<(), NoxsError> {
        if self.mac != again.mac {
            return Err(NoxsError::Changed("vif mac"));
        }
        Ok(())
    }
}

/// vif frontend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VifFrontend {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    /// The guest's port allocated unbound for the backend (the data path).
    pub data_port: u32,
    pub features: VifFrontendFeatures,
}

impl VifFrontend {
    pub const LEN: usize = 16;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        let words = [
            self.tx_ring_ref,
            self.rx_ring_ref,
            self.data_port,
            self.features.bits(),
        ];
        put_u32s(out, 0, &words);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let [tx_ring_ref, rx_ring_ref, data_port, features] = u32s_at(bytes, 0);
        Ok(Self {
            tx_ring_ref,
            rx_ring_ref,
            data_port,
            features: VifFrontendFeatures::from_bits_retain(features),
        })
    }
}

/// vbd backend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VbdBackend {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    pub sector_size: u32,
    pub info: VbdInfo,
    pub features: VbdFeatures,
    pub max_indirect_segments: u32,
}

impl VbdBackend {
    pub const LEN: usize = 24;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        out[0..8].copy_from_slice(&self.sectors.to_le_bytes());
        let words = [
            self.sector_size,
            self.info.bits(),
            self.features.bits(),
            self.max_indirect_segments,
        ];
        put_u32s(out, 8, &words);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let [sector_size, info, features, max_indirect_segments] = u32s_at(bytes, 8);
        let area = Self {
            sectors: u64_at(bytes, 0),
            sector_size,
            info: VbdInfo::from_bits_retain(info),
            features: VbdFeatures::from_bits_retain(features),
            max_indirect_segments,
        };
        if area.sector_size == 0 || !area.sector_size.is_multiple_of(512) || area.sector_size > 4096
        {
            return Err(NoxsError::BadField("vbd sector_size"));
        }
        if area.max_indirect_segments > 8 * 512 {
            return Err(NoxsError::BadField("vbd max_indirect_segments"));
        }
        Ok(area)
    }
}

impl VbdBackend {
    /// Whether a re-offer's area still describes this disk: requests in flight were
    /// sized and checked against its capacity, sector size and mode.
    pub fn same_device(&self, again: &Self) -> Result<(), NoxsError> {
        if self.sectors != again.sectors {
            return Err(NoxsError::Changed("vbd sectors"));
        }
        if self.sector_size != again.sector_size {
            return Err(NoxsError::Changed("vbd sector_size"));
        }
        if self.info.contains(VbdInfo::READ_ONLY) != again.info.contains(VbdInfo::READ_ONLY) {
            return Err(NoxsError::Changed("vbd read-only"));
        }
        Ok(())
    }
}

/// vbd frontend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VbdFrontend {
    pub ring_ref: u32,
    pub data_port: u32,
    /// 1: the x86_64 ABI.
    pub protocol: u32,
    pub features: u32,
}

impl VbdFrontend {
    pub const LEN: usize = 16;
    pub const PROTOCOL_X86_64: u32 = 1;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        let words = [self.ring_ref, self.data_port, self.protocol, self.features];
        put_u32s(out, 0, &words);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let [ring_ref, data_port, protocol, features] = u32s_at(bytes, 0);
        let area = Self {
            ring_ref,
            data_port,
            protocol,
            features,
        };
        if area.protocol != Self::PROTOCOL_X86_64 {
            return Err(NoxsError::BadField("vbd protocol"));
        }
        Ok(area)
    }
}

/// A power request in the sysctl backend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Request {
    Poweroff = 1,
    Reboot = 2,
    Suspend = 3,
    Crash = 4,
}

/// sysctl backend area: the latest request and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SysctlBackend {
    /// `None`: no request yet.
    pub request: Option<Request>,
    pub request_seq: u32,
}

impl SysctlBackend {
    pub const LEN: usize = 8;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        let request = self.request.map_or(0, |r| r as u32);
        put_u32s(out, 0, &[request, self.request_seq]);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let request = match u32_at(bytes, 0) {
            0 => None,
            1 => Some(Request::Poweroff),
            2 => Some(Request::Reboot),
            3 => Some(Request::Suspend),
            4 => Some(Request::Crash),
            _ => return Err(NoxsError::BadField("sysctl request")),
        };
        Ok(Self {
            request,
            request_seq: u32_at(bytes, 4),
        })
    }
}

/// sysctl frontend area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SysctlFrontend {
    pub ack_seq: u32,
    /// Bit N set: the guest handles request N.
    pub supported: u32,
}

impl SysctlFrontend {
    pub const LEN: usize = 8;

    pub fn encode(&self, out: &mut [u8]) -> Result<(), NoxsError> {
        need(out, Self::LEN)?;
        put_u32s(out, 0, &[self.ack_seq, self.supported]);
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NoxsError> {
        need(bytes, Self::LEN)?;
        let [ack_seq, supported] = u32s_at(bytes, 0);
        Ok(Self { ack_seq, supported })
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn sample() -> Block {
        Block {
            entries: vec![
                Entry {
                    kind: Kind::Sysctl,
                    backend: 0,
                    devid: 0,
                    ctrl_gref: 9,
                    ctrl_port: 17,
                },
                Entry {
                    kind: Kind::Vif,
                    backend: 0,
                    devid: 0,
                    ctrl_gref: 10,
                    ctrl_port: 18,
                },
                Entry {
                    kind: Kind::Vbd,
                    backend: 0,
                    devid: 0,
                    ctrl_gref: 11,
                    ctrl_port: 19,
                },
            ],
            generation: 0,
        }
    }

    #[test]
    fn reoffer_rewrites_entries_and_leaves_the_guests_port() {
        let mut page = vec![0u8; 4096 - BLOCK_OFFSET];
        sample().encode(&mut page).unwrap();
        assert_eq!(Block::reoffer_port(&page), Ok(None));
        // The guest writes its port; the back end offers a new vif control page.
        page[reoffer::PORT..][..4].copy_from_slice(&33u32.to_le_bytes());
        let mut again = Block::decode(&page).unwrap().unwrap();
        again.entries[1].ctrl_gref = 40;
        again.entries[1].ctrl_port = 41;
        again.encode_entries(&mut page).unwrap();
        page[reoffer::GENERATION..][..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(Block::reoffer_port(&page), Ok(Some(33)));
        let seen = Block::decode(&page).unwrap().unwrap();
        assert_eq!(seen.generation, 1);
        assert_eq!(seen.entry(Kind::Vif, 0).unwrap().ctrl_gref, 40);
        assert_eq!(seen.entry(Kind::Vbd, 0), sample().entry(Kind::Vbd, 0));
    }

    #[test]
    fn a_reoffer_names_what_changed_for_each_device() {
        let old = sample();
        let mut again = sample();
        again.generation = 1;
        again.entries[1].ctrl_port = 50;
        again.entries[2].ctrl_gref = 51;
        again.entries.remove(0);
        assert_eq!(again.reoffer_of(&old.entries[0]), Reoffer::Withdrawn);
        assert_eq!(
            again.reoffer_of(&old.entries[1]),
            Reoffer::Changed(again.entries[0])
        );
        assert_eq!(
            again.reoffer_of(&old.entries[2]),
            Reoffer::Changed(again.entries[1])
        );
        // Only the vbd moves: the vif stays on the page it has.
        let mut vbd_only = sample();
        vbd_only.entries[2].ctrl_port = 60;
        assert_eq!(vbd_only.reoffer_of(&old.entries[1]), Reoffer::Unchanged);
        assert!(matches!(
            vbd_only.reoffer_of(&old.entries[2]),
            Reoffer::Changed(Entry { ctrl_port: 60, .. })
        ));
        let mut elsewhere = sample();
        elsewhere.entries[1].backend = 7;
        elsewhere.entries[1].ctrl_gref = 70;
        assert_eq!(
            elsewhere.reoffer_of(&old.entries[1]),
            Reoffer::OtherBackend(7)
        );
    }

    /// After a restore into a new domain every control page is gone: a re-offer that
    /// happens to give a device its old grant and port (the new back end reused them)
    /// still moves it, once; a device that already reconnected in the new domain, or a
    /// re-offer with no restore in between, compares the numbers as before.
    #[test]
    fn after_a_restore_the_same_numbers_are_a_new_page() {
        use reoffer::predates_restore;
        let old = sample();
        let mut again = sample();
        again.generation = 4;
        assert_eq!(again.reoffer_of(&old.entries[1]), Reoffer::Unchanged);
        assert_eq!(
            again.reoffer_after(&old.entries[1], true),
            Reoffer::Changed(old.entries[1])
        );
        assert_eq!(
            again.reoffer_after(&old.entries[1], false),
            Reoffer::Unchanged
        );
        again.entries[1].ctrl_gref = 99;
        assert_eq!(
            again.reoffer_after(&old.entries[1], true),
            Reoffer::Changed(again.entries[1])
        );
        again.entries.remove(1);
        assert_eq!(
            again.reoffer_after(&old.entries[1], true),
            Reoffer::Withdrawn
        );
        // Connected (last looked) at generation 3, restored at 3: the offer of 4 is the
        // new domain's first.
        assert!(predates_restore(Some(3), Some(3), 4));
        assert!(predates_restore(Some(1), Some(3), 4));
        // Not yet a new offer, or already looked at one since the restore.
        assert!(!predates_restore(Some(3), Some(3), 3));
        assert!(!predates_restore(Some(4), Some(3), 5));
        // Never restored, or never looked.
        assert!(!predates_restore(Some(3), None, 4));
        assert!(!predates_restore(None, Some(3), 4));
    }

    #[test]
    fn a_reoffered_area_must_describe_the_same_device() {
        let vif = VifBackend {
            mac: [0x00, 0x16, 0x3e, 1, 2, 3],
            mtu: 1500,
            ..Default::default()
        };
        let moved = VifBackend { mtu: 9000, ..vif };
        assert_eq!(vif.same_device(&moved), Ok(()));
        let other = VifBackend {
            mac: [0x00, 0x16, 0x3e, 1, 2, 4],
            ..vif
        };
        assert_eq!(vif.same_device(&other), Err(NoxsError::Changed("vif mac")));
        let vbd = VbdBackend {
            sectors: 2048,
            sector_size: 512,
            features: VbdFeatures::FLUSH_CACHE,
            ..Default::default()
        };
        let fewer_features = VbdBackend {
            features: VbdFeatures::empty(),
            ..vbd
        };
        assert_eq!(vbd.same_device(&fewer_features), Ok(()));
        let cases = [
            (
                VbdBackend {
                    sectors: 4096,
                    ..vbd
                },
                "vbd sectors",
            ),
            (
                VbdBackend {
                    sector_size: 4096,
                    ..vbd
                },
                "vbd sector_size",
            ),
            (
                VbdBackend {
                    info: VbdInfo::READ_ONLY,
                    ..vbd
                },
                "vbd read-only",
            ),
        ];
        for (again, field) in cases {
            assert_eq!(vbd.same_device(&again), Err(NoxsError::Changed(field)));
        }
    }

    #[test]
    fn block_golden_bytes_and_round_trip() {
        let mut page = vec![0xaau8; 4096 - BLOCK_OFFSET];
        sample().encode(&mut page).unwrap();
        assert_eq!(
            &page[0..16],
            &[b'N', b'O', b'X', b'S', 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            &page[16 + 24..16 + 48],
            &[
                3, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(Block::decode(&page).unwrap(), Some(sample()));
        assert_eq!(sample().of_kind(Kind::Vif).count(), 1);
    }

    #[test]
    fn no_magic_means_xenstore() {
        assert_eq!(Block::decode(&[0u8; 64]).unwrap(), None);
    }

    #[test]
    fn hostile_blocks_are_refused() {
        let mut page = vec![0u8; 4096 - BLOCK_OFFSET];
        sample().encode(&mut page).unwrap();
        let mut bad = page.clone();
        bad[4] = 2;
        assert_eq!(Block::decode(&bad), Err(NoxsError::BadVersion(2)));
        let mut bad = page.clone();
        bad[6..8].copy_from_slice(&65u16.to_le_bytes());
        assert_eq!(Block::decode(&bad), Err(NoxsError::TooManyEntries(65)));
        let mut bad = page.clone();
        bad[16] = 9;
        assert_eq!(
            Block::decode(&bad),
            Err(NoxsError::UnknownKind { index: 0, kind: 9 })
        );
        let mut bad = page.clone();
        bad[16 + 24] = 4; // vif 0 → a second vbd 0
        assert_eq!(
            Block::decode(&bad),
            Err(NoxsError::Duplicate {
                kind: Kind::Vbd,
                devid: 0
            })
        );
        assert_eq!(
            Block::decode(&page[..20]),
            Err(NoxsError::Short {
                needed: 88,
                got: 20
            })
        );
        let too_many = Block {
            entries: vec![sample().entries[0]; 65],
            generation: 0,
        };
        assert_eq!(
            too_many.encode(&mut page),
            Err(NoxsError::TooManyEntries(65))
        );
    }

    #[test]
    fn control_page_header() {
        let mut page = vec![0u8; PAGE_SIZE];
        Header::init(&mut page, Kind::Vif).unwrap();
        page[header::BE_STATE] = 2;
        let head = Header::decode(&page, Kind::Vif).unwrap();
        assert_eq!(
            (head.be_state, head.fe_state),
            (XenbusState::InitWait, XenbusState::Unknown)
        );
        assert_eq!(
            Header::decode(&page, Kind::Vbd),
            Err(NoxsError::KindMismatch {
                expected: Kind::Vbd,
                found: 3
            })
        );
        page[header::FE_STATE] = 77;
        assert_eq!(
            Header::decode(&page, Kind::Vif),
            Err(NoxsError::BadState(77))
        );
    }

    #[test]
    fn device_areas_round_trip_and_validate() {
        let mut buf = [0u8; 64];
        let vif = VifBackend {
            mac: [0x00, 0x16, 0x3e, 1, 2, 3],
            mtu: 1500,
            features: VifBackendFeatures::RX_COPY,
            ipv4: [10, 0, 2, 16],
            prefix_len: 24,
            gateway: [10, 0, 2, 2],
        };
        vif.encode(&mut buf).unwrap();
        assert_eq!(VifBackend::decode(&buf), Ok(vif));
        buf[16] = 40;
        assert_eq!(
            VifBackend::decode(&buf),
            Err(NoxsError::BadField("vif prefix_len"))
        );
        buf[16] = 24;
        buf[0] = 1;
        assert_eq!(
            VifBackend::decode(&buf),
            Err(NoxsError::BadField("vif mac"))
        );

        let vbd = VbdBackend {
            sectors: 131072,
            sector_size: 512,
            info: VbdInfo::empty(),
            features: VbdFeatures::FLUSH_CACHE,
            max_indirect_segments: 256,
        };
        vbd.encode(&mut buf).unwrap();
        assert_eq!(VbdBackend::decode(&buf), Ok(vbd));
        buf[8..12].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(
            VbdBackend::decode(&buf),
            Err(NoxsError::BadField("vbd sector_size"))
        );

        let fe = VbdFrontend {
            ring_ref: 8,
            data_port: 5,
            protocol: 1,
            features: 0,
        };
        fe.encode(&mut buf).unwrap();
        assert_eq!(VbdFrontend::decode(&buf), Ok(fe));
        buf[8] = 2;
        assert_eq!(
            VbdFrontend::decode(&buf),
            Err(NoxsError::BadField("vbd protocol"))
        );

        let vf = VifFrontend {
            tx_ring_ref: 1,
            rx_ring_ref: 2,
            data_port: 3,
            features: VifFrontendFeatures::REQUEST_RX_COPY | VifFrontendFeatures::RX_NOTIFY,
        };
        vf.encode(&mut buf).unwrap();
        assert_eq!(VifFrontend::decode(&buf), Ok(vf));

        let req = SysctlBackend {
            request: Some(Request::Reboot),
            request_seq: 7,
        };
        req.encode(&mut buf).unwrap();
        assert_eq!(SysctlBackend::decode(&buf), Ok(req));
        buf[0] = 9;
        assert_eq!(
            SysctlBackend::decode(&buf),
            Err(NoxsError::BadField("sysctl request"))
        );
        let ack = SysctlFrontend {
            ack_seq: 7,
            supported: 0b110,
        };
        ack.encode(&mut buf).unwrap();
        assert_eq!(SysctlFrontend::decode(&buf), Ok(ack));

        // Every decoder refuses a short copy instead of reading past it.
        let short: Vec<u8> = vec![0; 3];
        assert!(VifBackend::decode(&short).is_err() && VbdBackend::decode(&short).is_err());
        assert!(SysctlBackend::decode(&short).is_err() && VifFrontend::decode(&short).is_err());
    }
}
