//! The loop-device service: a file-backed disk of a Xenstore guest gets a loop device
//! in front of it (blkback opens block devices only), on chaos's `attach_disk`, and
//! loses it on `detach_disk` or `release_domain`. What is attached is recorded in a
//! state file after every change, so a restarted xendevd takes its devices back.
//!
//! The book of images is shared with the NoXS vbds (`disks.rs`: one writer or any
//! number of readers, whichever way each has the image); the image is opened and
//! checked once (`image.rs`); the ioctls are `loopdev.rs`'s.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use log::{info, warn};

use crate::api::Disk;
use crate::disks::{self, DiskBook, DiskError, DomainState, Entry, Purpose, SharedBook};
use crate::image;
use crate::loopdev::{self, Detached, LoopError, Method};

/// Some loop devices of a domain could not be detached.
#[derive(Debug, thiserror::Error)]
#[error(
    "released {} of {total} loop devices of domain {domid}; {}",
    total - failures.len(),
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
pub struct ReleaseError {
    domid: u32,
    total: usize,
    failures: Vec<DiskError>,
}

/// The loop devices xendevd attached, and how it attaches them.
#[derive(Debug)]
pub struct LoopService {
    /// Shared with the NoXS back ends, whose vbds book their images there too.
    book: SharedBook,
    method: Method,
    /// The state file (`None` in tests).
    state_path: Option<PathBuf>,
}

impl LoopService {
    pub fn new(book: SharedBook, method: Method, state_path: Option<PathBuf>) -> Self {
        Self {
            book,
            method,
            state_path,
        }
    }

    /// Every loop device held.
    pub fn list(&self) -> Vec<Disk> {
        self.book.borrow().list()
    }

    /// Put a loop device in front of image `path` for domain `domid` (in `state`).
    pub fn attach(
        &mut self,
        path: &str,
        readonly: bool,
        domid: u32,
        state: DomainState,
    ) -> Result<Disk, DiskError> {
        let attached = self.attach_one(path, readonly, domid, state);
        self.save_state();
        attached
    }

    /// Detach a loop device this xendevd attached.
    pub fn detach(&mut self, device: &str) -> Result<(), DiskError> {
        let detached = self.detach_one(device);
        self.save_state();
        detached
    }

    /// Detach every loop device of domain `domid`.
    pub fn release(&mut self, domid: u32) -> Result<(), ReleaseError> {
        let devices = self.book.borrow().of_domain(domid);
        let total = devices.len();
        let failures: Vec<DiskError> = devices
            .into_iter()
            .filter_map(|device| self.detach_one(&device).err())
            .collect();
        self.save_state();
        if failures.is_empty() {
            if total > 0 {
                info!("released domain {domid}: {total} loop device(s)");
            }
            Ok(())
        } else {
            let error = ReleaseError {
                domid,
                total,
                failures,
            };
            warn!("{error}");
            Err(error)
        }
    }

    fn attach_one(
        &mut self,
        path: &str,
        readonly: bool,
        domid: u32,
        state: DomainState,
    ) -> Result<Disk, DiskError> {
        let image = image::open(path, readonly, Purpose::LoopDevice)?;
        let facts = image.facts;
        self.book
            .borrow()
            .check_attach(path, readonly, domid, state, &facts)?;
        let attached = loopdev::attach(&image.file, path, readonly, self.method)?;
        let disk = Disk {
            device: attached.device,
            major: attached.major,
            minor: attached.minor,
            path: path.to_owned(),
            readonly,
            domid,
        };
        info!(
            "attached {} ({}:{}) ← {path} for domain {domid} ({}, {} sectors)",
            disk.device,
            disk.major,
            disk.minor,
            if readonly { "read-only" } else { "read-write" },
            facts.size / disks::SECTOR
        );
        self.book.borrow_mut().insert(Entry {
            disk: disk.clone(),
            dev: facts.dev,
            ino: facts.ino,
        });
        Ok(disk)
    }

    fn detach_one(&mut self, device: &str) -> Result<(), DiskError> {
        let entry = self.book.borrow().get(device)?.clone();
        match loopdev::binding(device) {
            Ok(Some(binding)) if (binding.dev, binding.ino) == (entry.dev, entry.ino) => {}
            Ok(Some(_)) => {
                self.book.borrow_mut().remove(device);
                return Err(DiskError::Rebound {
                    device: device.to_owned(),
                    path: entry.disk.path,
                });
            }
            Ok(None) => {
                warn!(
                    "{device} ({}) was detached already, by someone else",
                    entry.disk.path
                );
                self.book.borrow_mut().remove(device);
                return Ok(());
            }
            Err(LoopError::OpenDevice { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                warn!("{device} ({}) is gone already", entry.disk.path);
                self.book.borrow_mut().remove(device);
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        match loopdev::detach(device)? {
            Detached::Now => info!(
                "detached {device} ← {} (domain {})",
                entry.disk.path, entry.disk.domid
            ),
            Detached::Deferred => info!(
                "detaching {device} ← {} (domain {}): still open (blkback?), the kernel \
                 detaches it when the last user closes it",
                entry.disk.path, entry.disk.domid
            ),
        }
        self.book.borrow_mut().remove(device);
        Ok(())
    }

    /// Write the book to the state file (a new file renamed over the old one).
    fn save_state(&self) {
        let Some(path) = &self.state_path else { return };
        let mut temporary = path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(self.book.borrow().save().as_bytes()))
            .and_then(|()| fs::rename(&temporary, path));
        if let Err(err) = written {
            warn!(
                "cannot record the loop devices in {}: {err} (a restarted xendevd will not \
                 know them)",
                path.display()
            );
        }
    }

    /// Take back the loop devices a previous xendevd recorded, each still bound to the
    /// same file (device and inode) in the same mode; forget the others.
    pub fn restore_state(&mut self) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return,
            Err(err) => {
                warn!("cannot read {}: {err}", path.display());
                return;
            }
        };
        let entries = match DiskBook::load(&text) {
            Ok(entries) => entries,
            Err(err) => {
                warn!("ignoring {}: {err}", path.display());
                return;
            }
        };
        let total = entries.len();
        for entry in entries {
            let disk = &entry.disk;
            match loopdev::binding(&disk.device) {
                Ok(Some(binding))
                    if (binding.dev, binding.ino, binding.readonly)
                        == (entry.dev, entry.ino, disk.readonly) =>
                {
                    info!(
                        "took back {} ← {} (domain {})",
                        disk.device, disk.path, disk.domid
                    );
                    self.book.borrow_mut().insert(entry);
                }
                Ok(Some(_)) => warn!(
                    "not taking back {}: it is bound to another file than {} now",
                    disk.device, disk.path
                ),
                Ok(None) => info!(
                    "not taking back {} ({}): it was detached meanwhile",
                    disk.device, disk.path
                ),
                Err(err) => warn!("not taking back {}: {err}", disk.device),
            }
        }
        info!(
            "{}: took back {} of {total} loop device(s)",
            path.display(),
            self.book.borrow().list().len()
        );
        self.save_state();
    }

    /// Log what stays attached as the daemon stops (the devices of running domains).
    pub fn report_left(&self) {
        let disks = self.list();
        if disks.is_empty() {
            info!("no loop devices attached");
            return;
        }
        let list: Vec<String> = disks
            .iter()
            .map(|d| {
                format!(
                    "{} ← {} (domain {}, {})",
                    d.device,
                    d.path,
                    d.domid,
                    if d.readonly {
                        "read-only"
                    } else {
                        "read-write"
                    }
                )
            })
            .collect();
        warn!(
            "leaving {} loop device(s) attached for their domains: {} (recorded in {} for \
             the next xendevd)",
            disks.len(),
            list.join("; "),
            self.state_path
                .as_deref()
                .map_or("nowhere".into(), |p| p.display().to_string())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_release_says_what_failed() {
        let err = ReleaseError {
            domid: 4,
            total: 3,
            failures: vec![DiskError::BadDomid(70000)],
        };
        assert!(
            err.to_string()
                .starts_with("released 2 of 3 loop devices of domain 4; domain ID 70000"),
            "{err}"
        );
    }
}
