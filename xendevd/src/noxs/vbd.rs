//! The vbd back end: the guest's disk is an image file or a block device of dom0,
//! opened by xendevd itself (no loop device); the blkif ring the guest grants once it
//! connects is served by the pure engine (`Blkback`) with grant copies, in a thread of
//! its own ([`VbdWorker`]): disk I/O never runs in the daemon's loop.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use xendevd::engine::blkback::{Geometry, MAX_INDIRECT_SEGMENTS};
use xenproto::noxs::{VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};

use super::error::DeviceError;
use super::request::VbdPlan;
use super::vbd_worker::{Assignment, VbdWorker};
use super::{DeviceBackend, Guest};
use crate::limits::{self, Making};

/// A vbd back end.
#[derive(Debug)]
pub struct Vbd {
    plan: VbdPlan,
    disk: File,
    /// While connected.
    worker: Option<VbdWorker>,
}

impl Vbd {
    /// Open the disk (read-only for a read-only vbd); the back-end area for the control
    /// page (size, read-only, flush and indirect segments).
    pub fn create(plan: &VbdPlan) -> Result<(Self, Vec<u8>), DeviceError> {
        let disk = OpenOptions::new()
            .read(true)
            .write(!plan.readonly)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&plan.target)
            .map_err(|source| {
                limits::reached(source.raw_os_error(), Making::File).map_or_else(
                    || DeviceError::Open {
                        target: plan.target.clone(),
                        mode: if plan.readonly {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        source,
                    },
                    DeviceError::Limit,
                )
            })?;
        let mut area = vec![0; VbdBackend::LEN];
        VbdBackend {
            sectors: plan.sectors,
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
            disk,
            worker: None,
        };
        Ok((vbd, area))
    }
}

impl Vbd {
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
                sectors: self.plan.sectors,
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
