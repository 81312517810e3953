//! The vbd back end: the guest's disk is an image file or a block device of dom0,
//! opened by xendevd itself (no loop device): once, and checked as opened
//! (`image.rs`), its image booked for the domain in the book the loop devices share
//! (`disks.rs`: one writer or any number of readers); the blkif ring the guest grants
//! once it connects is served by the pure engine (`Blkback`) with grant copies, in a
//! thread of its own ([`VbdWorker`]): disk I/O never runs in the daemon's loop.

use std::fs::File;

use xendevd::engine::blkback::{Geometry, MAX_INDIRECT_SEGMENTS};
use xenproto::noxs::{VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};

use super::error::DeviceError;
use super::request::VbdPlan;
use super::vbd_worker::{Assignment, VbdWorker};
use super::{DeviceBackend, Guest};
use crate::disks::{self, DiskBook, DiskError, Purpose, SharedBook, VbdClaim};
use crate::image;
use crate::limits::{self, Making};

/// A vbd back end.
#[derive(Debug)]
pub struct Vbd {
    plan: VbdPlan,
    sectors: u64,
    disk: File,
    /// `(st_dev, st_ino)` of the image as opened.
    identity: (u64, u64),
    /// The image is this vbd's (or shared read-only) until it is dropped.
    _claim: VbdClaim,
    /// While connected.
    worker: Option<VbdWorker>,
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
            identity: (image.facts.dev, image.facts.ino),
            _claim: claim,
            worker: None,
        };
        Ok((vbd, area))
    }
}

impl Vbd {
    /// `(st_dev, st_ino)` of the image, as opened.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Refuse the image unless it is the file recorded as `(dev, ino)` (a domain taken
    /// back after a restart).
    pub fn check_identity(&self, (dev, ino): (u64, u64)) -> Result<(), DeviceError> {
        if self.identity == (dev, ino) {
            return Ok(());
        }
        Err(DeviceError::ImageReplaced {
            target: self.plan.target.clone(),
            dev,
            ino,
            now_dev: self.identity.0,
            now_ino: self.identity.1,
        })
    }

    /// The worker serving it, while connected.
    pub fn worker(&self) -> Option<u64> {
        self.worker.as_ref().map(VbdWorker::id)
    }
}

impl DeviceBackend for Vbd {
    /// Start the worker: it maps the guest's ring, binds its data port and serves.
    fn connect(&mut self, guest: &Guest<'_>, frontend: &[u8]) -> Result<(), DeviceError> {
        let frontend = VbdFrontend::decode(frontend).map_err(DeviceError::Frontend)?;
        let disk = self.disk.try_clone().map_err(|err| {
            DeviceError::Worker(format!("duplicating the disk's descriptor: {err}"))
        })?;
        let assignment = Assignment {
            domid: guest.domid,
            devid: self.plan.devid,
            ring_gref: frontend.ring_ref,
            data_port: frontend.data_port,
            geometry: Geometry {
                sectors: self.sectors,
                readonly: self.plan.readonly,
                max_indirect_segments: MAX_INDIRECT_SEGMENTS,
            },
            disk,
        };
        self.worker = Some(VbdWorker::start(assignment, guest.workers)?);
        Ok(())
    }

    /// Stop the worker (it lets go of the ring once the request in hand is done).
    fn disconnect(&mut self) {
        self.worker = None;
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
