//! The vbd back end: the guest's disk is an image file or a block device of dom0,
//! opened by xendevd itself (no loop device); the blkif ring the guest grants once it
//! connects is served by the pure engine ([`Blkback`]) with grant copies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;

use xendevd::engine::blkback::{Blkback, Geometry, MAX_INDIRECT_SEGMENTS};
use xenproto::noxs::{VbdBackend, VbdFeatures, VbdFrontend, VbdInfo};

use super::error::DeviceError;
use super::request::VbdPlan;
use super::{BUDGET, DataPath, DeviceBackend, Guest};
use crate::limits::{self, Making};

/// A vbd back end.
#[derive(Debug)]
pub struct Vbd {
    plan: VbdPlan,
    disk: File,
    connection: Option<DataPath<Blkback>>,
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
            sectors: self.plan.sectors,
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
