//! Xen PV network front end.
//!
//! [`Netfront`] is one vif: a [`datapath::Datapath`] (rings, granted buffers, event
//! channel) connected by a negotiation method — [`xenbus::connect`] for Xenstore,
//! [`noxs::connect`] for NoXS — and exposed to smoltcp as a [`smoltcp::phy::Device`].
//!
//! The device follows smoltcp's contract: `receive` and `transmit` never block and
//! return `None` when there is no frame or no transmit slot; a receive token re-posts
//! its buffer whether or not it is consumed. Checksums are computed and verified by
//! smoltcp (we advertise `feature-no-csum-offload`, so the back end hands us frames
//! with complete checksums).

#![no_std]

extern crate alloc;

pub mod datapath;
pub mod noxs;
pub mod xenbus;

use alloc::vec::Vec;

use datapath::{Counters, Datapath, DatapathError, RxPath, TxPath};
use kernel::devices::Method;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use xenproto::netif::Mac;

/// Largest Ethernet frame (header included, FCS excluded) for a 1500-byte MTU.
pub const MAX_FRAME: usize = 1514;

/// The address a toolstack assigned through NoXS (address, prefix, gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedAddress {
    pub address: [u8; 4],
    pub prefix_len: u8,
    /// `None`: no gateway.
    pub gateway: Option<[u8; 4]>,
}

/// What of a vif's own connection failed.
#[derive(Debug)]
pub enum VifError {
    /// The back end does not offer receive-by-copy.
    NoRxCopy,
    Datapath(DatapathError),
}

impl core::fmt::Display for VifError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRxCopy => f.write_str("the back end does not offer receive-by-copy"),
            Self::Datapath(err) => write!(f, "{err}"),
        }
    }
}

/// Why a vif could not be connected.
pub type ConnectError = kernel::devices::ConnectError<VifError>;

impl From<DatapathError> for ConnectError {
    fn from(err: DatapathError) -> Self {
        Self::Driver(VifError::Datapath(err))
    }
}

/// One connected vif.
#[derive(Debug)]
pub struct Netfront {
    id: u32,
    mac: Mac,
    datapath: Datapath,
    assigned: Option<AssignedAddress>,
    /// The task that follows re-offers (NoXS, it owns the control page) or restores
    /// (Xenstore), for as long as the vif lives.
    control: Option<kernel::noxs::Follower>,
}

impl Netfront {
    pub(crate) fn new(
        id: u32,
        mac: Mac,
        datapath: Datapath,
        assigned: Option<AssignedAddress>,
    ) -> Self {
        Self {
            id,
            mac,
            datapath,
            assigned,
            control: None,
        }
    }

    pub(crate) fn with_control(mut self, control: kernel::noxs::Follower) -> Self {
        self.control = Some(control);
        self
    }

    /// The address the toolstack assigned, if any (NoXS carries one; with Xenstore
    /// the guest's arguments or DHCP decide).
    pub fn assigned_address(&self) -> Option<AssignedAddress> {
        self.assigned
    }

    /// Connect every vif the toolstack gave us, in id order. A vif that fails is
    /// logged and skipped.
    pub async fn probe_all() -> Vec<Netfront> {
        kernel::devices::connect_all("netfront", "vif", async |device| {
            let vif = match &device.method {
                Method::Xenstore { frontend, backend } => {
                    xenbus::connect(device, frontend, backend).await?
                }
                Method::Noxs(entry) => noxs::connect(entry).await?,
            };
            log::info!("netfront: vif{} up, mac {}", vif.id, vif.mac);
            Ok::<_, ConnectError>(vif)
        })
        .await
    }

    /// The vif's number (`device/vif/N`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The MAC address the toolstack assigned.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    /// Traffic counters.
    pub fn counters(&self) -> Counters {
        self.datapath.counters()
    }

    /// Before sleeping: arm notifications; `true` if work arrived meanwhile.
    pub fn prepare_to_wait(&mut self) -> Result<bool, DatapathError> {
        self.datapath.prepare_to_wait()
    }

    /// Wait for the back end's next notification.
    pub async fn wait(&self) {
        self.datapath.wait().await;
    }

    /// Whether the vif connected to a new back end (after a restore, a re-offer) since
    /// the last call: time for a gratuitous ARP.
    pub fn take_reconnected(&mut self) -> bool {
        self.datapath.take_reconnected()
    }

    /// Call `handler` (in task context) on each notification instead.
    pub fn set_event_handler(&self, handler: kernel::events::Handler) {
        self.datapath.set_event_handler(handler);
    }
}

/// A received frame; its slot goes back to the back end when the token is gone.
#[derive(Debug)]
pub struct RxToken<'a> {
    rx: &'a mut RxPath,
    id: u16,
    offset: usize,
    len: usize,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.rx.counters.rx_packets += 1;
        self.rx.counters.rx_bytes += self.len as u64;
        f(self.rx.frame(self.id, self.offset, self.len))
    }
}

impl Drop for RxToken<'_> {
    fn drop(&mut self) {
        self.rx.repost(self.id);
    }
}

/// Permission to send one frame.
#[derive(Debug)]
pub struct TxToken<'a> {
    tx: &'a mut TxPath,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.send(len, f)
    }
}

impl Netfront {
    fn reclaim(&mut self) {
        self.datapath.take_restart();
        if let Err(err) = self.datapath.tx.reclaim() {
            log::error!("netfront: vif{}: {err}", self.id);
        }
    }
}

impl phy::Device for Netfront {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.reclaim();
        if !self.datapath.tx.has_room() {
            return None;
        }
        let (id, offset, len) = match self.datapath.rx.next_frame() {
            Ok(frame) => frame?,
            Err(err) => {
                log::error!("netfront: vif{}: {err}", self.id);
                return None;
            }
        };
        let Datapath { rx, tx, .. } = &mut self.datapath;
        Some((
            RxToken {
                rx,
                id,
                offset,
                len,
            },
            TxToken { tx },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.reclaim();
        self.datapath.tx.has_room().then_some(TxToken {
            tx: &mut self.datapath.tx,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps.max_burst_size = Some(self.datapath.tx.room().max(1));
        caps
    }
}
