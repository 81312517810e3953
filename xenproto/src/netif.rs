//! The PV network protocol (`xen/include/public/io/netif.h`): ring entries, what each
//! end advertises in Xenstore, and validation of what the back end sends.
//!
//! The front end grants the back end one page per receive slot and copies each frame
//! to send into a page granted read-only. With `request-rx-copy` the back end copies
//! received frames into the granted pages, so grants are made once and reused.
//!
//! Deliberately unsupported (not advertised): scatter-gather (`feature-sg`), GSO,
//! multiple queues, split event channels, IPv6 checksum offload. Frames therefore fit
//! one page, and the back end fills in checksums before handing us a frame
//! (`feature-no-csum-offload`).

use core::fmt;

use crate::ring::{FrontRing, RingEntry};

/// `struct netif_tx_request`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    pub size: u16,
}

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxResponse {
    pub id: u16,
    pub status: i16,
}

/// `struct netif_rx_request`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxRequest {
    pub id: u16,
    pub pad: u16,
    pub gref: u32,
}

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    pub status: i16,
}

// SAFETY: all four are #[repr(C)] structs of integers without padding.
unsafe impl RingEntry for TxRequest {}
// SAFETY: as above.
unsafe impl RingEntry for TxResponse {}
// SAFETY: as above.
unsafe impl RingEntry for RxRequest {}
// SAFETY: as above.
unsafe impl RingEntry for RxResponse {}

/// The transmit ring, front end side.
pub type TxFront = FrontRing<TxRequest, TxResponse>;
/// The receive ring, front end side.
pub type RxFront = FrontRing<RxRequest, RxResponse>;

bitflags::bitflags! {
    /// `NETRXF_*`: the `flags` word of a receive response.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxFlags: u16 {
        const DATA_VALIDATED = 1 << 0;
        const CSUM_BLANK = 1 << 1;
        const MORE_DATA = 1 << 2;
        const EXTRA_INFO = 1 << 3;
    }
}

/// `NETIF_RSP_*` statuses.
pub const RSP_DROPPED: i16 = -2;
pub const RSP_ERROR: i16 = -1;
pub const RSP_OKAY: i16 = 0;

/// Bytes in a page, the most a single-slot frame can occupy.
pub const PAGE_SIZE: usize = 4096;

/// A received frame, checked against the page it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame {
    /// The slot (request id) whose page holds the frame.
    pub id: u16,
    pub offset: u16,
    pub len: u16,
}

/// Why a receive response cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxError {
    /// The id names no slot we posted.
    UnknownId(u16),
    /// The back end reported an error or dropped the frame for this slot.
    Status { id: u16, status: i16 },
    /// Offset and length run past the page.
    OutOfPage { id: u16, offset: u16, len: u16 },
    /// A frame split over several slots or with extra info: never negotiated.
    NotNegotiated { id: u16, flags: u16 },
}

impl RxError {
    /// The slot the response names, when it is one of ours (so it can be re-posted).
    pub fn slot(&self) -> Option<u16> {
        match *self {
            Self::UnknownId(_) => None,
            Self::Status { id, .. }
            | Self::OutOfPage { id, .. }
            | Self::NotNegotiated { id, .. } => Some(id),
        }
    }
}

impl fmt::Display for RxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownId(id) => write!(f, "rx response for unknown slot {id}"),
            Self::Status { id, status } => write!(f, "rx slot {id}: back end status {status}"),
            Self::OutOfPage { id, offset, len } => {
                write!(
                    f,
                    "rx slot {id}: {len} bytes at offset {offset} run past the page"
                )
            }
            Self::NotNegotiated { id, flags } => {
                write!(f, "rx slot {id}: flags {flags:#x} were never negotiated")
            }
        }
    }
}

impl RxResponse {
    /// Check a response (already copied out of the ring) for a ring of `slots` posted
    /// receive slots.
    pub fn check(&self, slots: u16) -> Result<RxFrame, RxError> {
        let id = self.id;
        if id >= slots {
            return Err(RxError::UnknownId(id));
        }
        if self.status <= 0 {
            return Err(RxError::Status {
                id,
                status: self.status,
            });
        }
        if RxFlags::from_bits_retain(self.flags)
            .intersects(RxFlags::MORE_DATA | RxFlags::EXTRA_INFO)
        {
            return Err(RxError::NotNegotiated {
                id,
                flags: self.flags,
            });
        }
        let len = self.status as u16;
        if usize::from(self.offset) + usize::from(len) > PAGE_SIZE {
            return Err(RxError::OutOfPage {
                id,
                offset: self.offset,
                len,
            });
        }
        Ok(RxFrame {
            id,
            offset: self.offset,
            len,
        })
    }
}

/// Keys and values the front end writes under its `device/vif/N` directory, besides
/// the ring references and the event channel.
pub const FRONTEND_FEATURES: [(&str, &str); 5] = [
    // Receive by copy into pages we grant (not by page flipping).
    ("request-rx-copy", "1"),
    // We set rsp_event on the receive ring: Linux's netback requires it.
    ("feature-rx-notify", "1"),
    // We cannot take frames whose checksum is left to us.
    ("feature-no-csum-offload", "1"),
    ("feature-sg", "0"),
    ("feature-gso-tcpv4", "0"),
];

/// What the back end advertised (each key missing reads as false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendFeatures {
    /// Required: we only receive by copy.
    pub rx_copy: bool,
    /// Offered but unused: we never split frames.
    pub sg: bool,
}

impl BackendFeatures {
    /// The keys to read from the back end's directory.
    pub const KEYS: [&'static str; 2] = ["feature-rx-copy", "feature-sg"];

    /// Build from the values read for [`Self::KEYS`] (`None`: key missing).
    pub fn from_values(values: [Option<&str>; 2]) -> Self {
        let flag = |value: Option<&str>| value.is_some_and(|v| v.trim() == "1");
        Self {
            rx_copy: flag(values[0]),
            sg: flag(values[1]),
        }
    }
}

/// A MAC address, as Xenstore's `mac` key writes it (`00:16:3e:5a:01:02`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

/// A `mac` value that is not six colon-separated hex bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMac;

impl core::str::FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or(BadMac)?;
            if part.len() != 2 {
                return Err(BadMac);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac)?;
        }
        if parts.next().is_some() {
            return Err(BadMac);
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_and_ring_sizes_match_netif_h() {
        assert_eq!(size_of::<TxRequest>(), 12);
        assert_eq!(size_of::<TxResponse>(), 4);
        assert_eq!(size_of::<RxRequest>(), 8);
        assert_eq!(size_of::<RxResponse>(), 8);
        assert_eq!(TxFront::SIZE, 256);
        assert_eq!(RxFront::SIZE, 256);
    }

    #[test]
    fn rx_responses_are_checked() {
        let ok = RxResponse {
            id: 3,
            offset: 10,
            flags: RxFlags::DATA_VALIDATED.bits(),
            status: 60,
        };
        assert_eq!(
            ok.check(256),
            Ok(RxFrame {
                id: 3,
                offset: 10,
                len: 60
            })
        );
        let full_page = RxResponse {
            id: 0,
            offset: 0,
            flags: 0,
            status: 4096,
        };
        assert!(full_page.check(256).is_ok());

        let cases = [
            (RxResponse { id: 256, ..ok }, RxError::UnknownId(256)),
            (
                RxResponse {
                    status: RSP_DROPPED,
                    ..ok
                },
                RxError::Status { id: 3, status: -2 },
            ),
            (
                RxResponse { status: 0, ..ok },
                RxError::Status { id: 3, status: 0 },
            ),
            (
                RxResponse {
                    offset: 4000,
                    status: 97,
                    ..ok
                },
                RxError::OutOfPage {
                    id: 3,
                    offset: 4000,
                    len: 97,
                },
            ),
            (
                RxResponse {
                    flags: RxFlags::MORE_DATA.bits(),
                    ..ok
                },
                RxError::NotNegotiated { id: 3, flags: 4 },
            ),
        ];
        for (response, error) in cases {
            assert_eq!(response.check(256), Err(error));
        }
        assert_eq!(RxError::UnknownId(999).slot(), None);
        assert_eq!(RxError::Status { id: 3, status: -1 }.slot(), Some(3));
    }

    #[test]
    fn macs_parse_and_print() {
        let mac: Mac = "00:16:3e:5A:01:ff".parse().unwrap();
        assert_eq!(mac, Mac([0x00, 0x16, 0x3e, 0x5a, 0x01, 0xff]));
        assert_eq!(mac.to_string(), "00:16:3e:5a:01:ff");
        for bad in [
            "",
            "00:16:3e:5a:01",
            "00:16:3e:5a:01:ff:00",
            "0:16:3e:5a:01:ff",
            "00:16:3e:5a:01:gg",
            "00-16-3e-5a-01-ff",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(BadMac), "{bad}");
        }
    }

    #[test]
    fn backend_features_default_to_false() {
        let features = BackendFeatures::from_values([Some("1"), None]);
        assert_eq!(
            features,
            BackendFeatures {
                rx_copy: true,
                sg: false
            }
        );
        assert_eq!(
            BackendFeatures::from_values([Some("0"), Some("1")]),
            BackendFeatures {
                rx_copy: false,
                sg: true
            }
        );
    }
}
