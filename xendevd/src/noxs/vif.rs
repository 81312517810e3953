//! The vif back end: a tap device on the guest's bridge, and the netif rings the guest
//! grants once it connects, served by the pure engine ([`Netback`]) with grant copies.
//! Frames the guest sends go out of the tap; frames the tap receives go into the
//! guest's receive buffers.

use std::os::fd::{AsFd, BorrowedFd};

use log::{debug, warn};
use xendevd::engine::netback::{Delivered, Netback, TxFilter};
use xenproto::noxs::{self, VifBackend, VifBackendFeatures, VifFrontend, VifFrontendFeatures};

use super::error::DeviceError;
use super::request::VifPlan;
use super::tap::Tap;
use super::{BUDGET, DataPath, DeviceBackend, Guest};
use crate::bridge::{self, NetControl};
use crate::limits::{self, Making};

/// The Ethernet MTU offered to vifs.
const MTU: u16 = 1500;
/// What the back end offers: copying receive only (no scatter-gather, no GSO).
const FEATURES: VifBackendFeatures = VifBackendFeatures::RX_COPY;

/// A vif back end.
#[derive(Debug)]
pub struct Vif {
    plan: VifPlan,
    tap: Tap,
    connection: Option<DataPath<Netback>>,
}

impl Vif {
    /// Make the tap, put it on its bridge and up; the back-end area for the control
    /// page (MAC, MTU, features, the guest's address if it has one).
    pub fn create(net: &NetControl, plan: &VifPlan) -> Result<(Self, Vec<u8>), DeviceError> {
        let tap = Self::make_tap(net, &plan.tap, &plan.bridge)?;
        Ok(Self::with_tap(tap, plan))
    }

    /// Tap `name`, on `bridge` and up: the host end of a vif, made ahead of its guest's
    /// configuration for a shell (`noxs::Backends::shell`).
    pub fn make_tap(net: &NetControl, name: &str, bridge: &str) -> Result<Tap, DeviceError> {
        if bridge::exists(name) {
            return Err(DeviceError::TapExists(name.to_owned()));
        }
        let tap = Tap::create(name).map_err(|source| {
            limits::reached(source.raw_os_error(), Making::File).map_or_else(
                || DeviceError::Tap {
                    tap: name.to_owned(),
                    source,
                },
                DeviceError::Limit,
            )
        })?;
        net.add_port(bridge, name)?;
        net.set_up(name)?;
        Ok(tap)
    }

    /// As [`Vif::create`], for a domain served again ([`super::restart`]): its tap, left
    /// by the xendevd before, is taken over (made anew if it went), on its bridge and up.
    pub fn take_over(net: &NetControl, plan: &VifPlan) -> Result<(Self, Vec<u8>), DeviceError> {
        let tap = Tap::create(&plan.tap).map_err(|source| DeviceError::Tap {
            tap: plan.tap.clone(),
            source,
        })?;
        net.add_port(&plan.bridge, &plan.tap)?;
        net.set_up(&plan.tap)?;
        Ok(Self::with_tap(tap, plan))
    }

    /// The back end of `plan` on its tap (made by [`Vif::make_tap`] for the plan's tap
    /// name and bridge); the back-end area for the control page.
    pub fn with_tap(mut tap: Tap, plan: &VifPlan) -> (Self, Vec<u8>) {
        if let Err(err) = tap.keep() {
            warn!(
                "tap {}: TUNSETPERSIST: {err}: it will not outlive this xendevd",
                tap.name()
            );
        }
        let (ipv4, prefix_len) = plan
            .ipv4
            .map_or(([0; 4], 0), |(ip, prefix)| (ip.octets(), prefix));
        let mut area = vec![0; VifBackend::LEN];
        VifBackend {
            mac: plan.mac.0,
            mtu: MTU,
            features: FEATURES,
            ipv4,
            prefix_len,
            gateway: plan.gateway.map_or([0; 4], |g| g.octets()),
        }
        .encode(&mut area)
        .expect("fits");
        let vif = Self {
            plan: plan.clone(),
            tap,
            connection: None,
        };
        (vif, area)
    }

    /// The tap, while the vif is connected: frames from the host to deliver.
    pub fn tap(&self) -> Option<BorrowedFd<'_>> {
        self.connection.as_ref().map(|_| self.tap.as_fd())
    }

    /// Deliver what the tap has (at most [`BUDGET`] frames) into the guest's receive
    /// buffers, using `frame` as the buffer, and notify the guest if it should look.
    pub fn receive(&mut self, frame: &mut [u8]) -> Result<(), DeviceError> {
        let Some(connection) = &mut self.connection else {
            return Ok(());
        };
        for _ in 0..BUDGET {
            let len = match self.tap.read_frame(frame) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(err) => {
                    warn!("{}: reading: {err}", self.tap.name());
                    break;
                }
            };
            match connection
                .engine
                .receive(&mut connection.memory, &frame[..len])?
            {
                Delivered::Yes | Delivered::Dropped | Delivered::NoBuffer => {}
            }
        }
        let pushed = connection.engine.push_rx();
        connection.notify_if(pushed);
        Ok(())
    }
}

impl DeviceBackend for Vif {
    /// Map the guest's two rings, bind its data port, start the engine.
    fn connect(&mut self, guest: &Guest<'_>, frontend: &[u8]) -> Result<(), DeviceError> {
        let frontend = VifFrontend::decode(frontend).map_err(DeviceError::Frontend)?;
        if !frontend
            .features
            .contains(VifFrontendFeatures::REQUEST_RX_COPY)
        {
            return Err(DeviceError::NoRxCopy);
        }
        let (tx, rx) = (frontend.tx_ring_ref, frontend.rx_ring_ref);
        // The guest sends from its own address only, frames of the MTU unless both
        // ends agreed on GSO.
        let gso = FEATURES.contains(VifBackendFeatures::GSO_TCPV4)
            && frontend.features.contains(VifFrontendFeatures::GSO_TCPV4);
        let filter = TxFilter::new(self.plan.mac.0, MTU, gso);
        let path = DataPath::connect(
            guest,
            &[tx, rx],
            frontend.data_port,
            |source| DeviceError::MapRings { tx, rx, source },
            // SAFETY: the mapping holds two pages (tx, rx), page aligned, and lives in
            // the same data path as the engine, which drops first.
            |rings| unsafe { Netback::new(rings, rings.add(noxs::PAGE_SIZE), filter) },
        )?;
        self.connection = Some(path);
        Ok(())
    }

    fn disconnect(&mut self) {
        self.connection = None;
    }

    fn data_port(&self) -> Option<u32> {
        self.connection.as_ref().map(DataPath::port)
    }

    /// Send what the guest transmitted (at most [`BUDGET`] packets) out of the tap.
    fn serve(&mut self) -> Result<bool, DeviceError> {
        let Some(connection) = &mut self.connection else {
            return Ok(false);
        };
        let tap = &mut self.tap;
        let mut send = |frame: &[u8]| {
            if let Err(err) = tap.write_frame(frame) {
                debug!("{}: {err}", tap.name());
            }
        };
        let progress = connection
            .engine
            .transmit(&mut connection.memory, &mut send, BUDGET)?;
        connection.notify_if(progress.notify);
        Ok(progress.more)
    }

    fn summary(&self) -> String {
        format!(
            "vif {} ({}, {} on {})",
            self.plan.devid, self.plan.mac, self.plan.tap, self.plan.bridge
        )
    }
}
