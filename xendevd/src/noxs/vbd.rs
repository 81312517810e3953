//! The vbd back end: the guest's disk is an image file or a block device of dom0,
//! opened by xendevd itself (no loop device): once, and checked as opened
//! (`image.rs`), its image booked for the domain in the book the loop devices share
//! (`disks.rs`: one writer or any number of readers); the blkif ring the guest grants
//! once it connects is served by the pure engine ([`Blkback`]) with grant copies.

use std::fs::File;

use xendevd::engine::blkback::{Blkback, Geometry, MAX_INDIRECT_SEGMENTS};
use xenproto::noxs::{VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};

use super::error::DeviceError;
use super::request::VbdPlan;
use super::{BUDGET, DataPath, DeviceBackend, Guest};
use crate::disks::{self, DiskBook, DiskError, Purpose, SharedBook, VbdClaim};
use crate::image;
use crate::limits::{self, Making};

/// A vbd back end.
#[derive(Debug)]
pub struct Vbd {
    plan: VbdPlan,
    sectors: u64,
    disk: File,
    /// The image is this vbd's (or shared read-only) until it is dropped.
    _claim: VbdClaim,
    connection: Option<DataPath<Blkback>>,
}

impl Vbd {
    /// Open the disk (read-only for a read-only vbd) and book it for vbd `plan.devid` of
    /// domain `domid`; the back-end area for the control page (size, read-only, flush
    /// and indirect segments).
    pub fn create(
        plan: &VbdPlan,
        domid: u32,
        book: &SharedBook,
    ) -> Result<(Self, Vec<u8>), DeviceError> {
        let image = image::open(&plan.target, plan.readonly, Purpose::Vbd).map_err(|err| {
            match &err {
                DiskError::Open { source, .. } => {
                    limits::reached(source.raw_os_error(), Making::File).map(DeviceError::Limit)
                }
                _ => None,
            }
            .unwrap_or(DeviceError::Disk(err))
        })?;
        let claim = DiskBook::claim_vbd(
            book,
            &plan.target,
            plan.readonly,
            domid,
            plan.devid,
            &image.facts,
        )?;
        let sectors = image.facts.size / disks::SECTOR;
        let mut area = vec![0; VbdBackend::LEN];
        VbdBackend {
            sectors,
            sector_size: 512,
            info: if plan.readonly {
                VbdInfo::READ_ONLY
            } else {
                VbdInfo::empty()
            },
            features: VbdFeatures::FLUSH_CACHE | VbdFeatures::INDIRECT,
            max_indirect_segments: MAX_INDIRECT_SEGMENTS,
        }
        .encode(&mut area)
        .expect("fits");
        let vbd = Self {
            plan: plan.clone(),
            sectors,
            disk: image.file,
            _claim: claim,
            connection: None,
        };
        Ok((vbd, area))
    }
}

impl DeviceBackend for Vbd {
    /// Map the guest's ring, bind its data port, start the engine.
    fn connect(&mut self, guest: &Guest<'_>, frontend: &[u8]) -> Result<(), DeviceError> {
        let frontend = VbdFrontend::decode(frontend).map_err(DeviceError::Frontend)?;
        let gref = frontend.ring_ref;
        let geometry = Geometry {
            sectors: self.sectors,
            readonly: self.plan.readonly,
            max_indirect_segments: MAX_INDIRECT_SEGMENTS,
        };
        let path = DataPath::connect(
            guest,
            &[gref],
            frontend.data_port,
            |source| DeviceError::MapRing { gref, source },
            // SAFETY: the mapping is one page, page aligned, living in the same data
            // path as the engine, which drops first.
            |ring| unsafe { Blkback::new(ring, geometry) },
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

    /// Answer the guest's requests (at most [`BUDGET`]) from the disk.
    fn serve(&mut self) -> Result<bool, DeviceError> {
        let Some(connection) = &mut self.connection else {
            return Ok(false);
        };
        let progress = connection
            .engine
            .serve(&mut connection.memory, &mut self.disk, BUDGET)
            .map_err(DeviceError::Ring)?;
        connection.notify_if(progress.notify);
        Ok(progress.more)
    }

    fn summary(&self) -> String {
        format!(
            "vbd {} ({}{})",
            self.plan.devid,
            self.plan.target,
            if self.plan.readonly {
                ", read-only"
            } else {
                ""
            }
        )
    }
}
