//! The loop-device service: a file-backed disk of a Xenstore guest gets a loop device
//! in front of it (blkback opens block devices only), on chaos's `attach_disk`, and
//! loses it on `detach_disk` or `release_domain`. What is attached is recorded in a
//! state file after every change, so a restarted xendevd takes its devices back.
//!
//! The checks and the book are pure (`disks.rs`); the ioctls are `loopdev.rs`'s.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use log::{info, warn};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::api::Disk;
use crate::disks::{self, DiskBook, DiskError, Entry, FileKind, ImageFacts};
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
    book: DiskBook,
    method: Method,
    /// The state file (`None` in tests).
    state_path: Option<PathBuf>,
}

impl LoopService {
    pub fn new(method: Method, state_path: Option<PathBuf>) -> Self {
        Self {
            book: DiskBook::default(),
            method,
            state_path,
        }
    }

    /// Every loop device held.
    pub fn list(&self) -> Vec<Disk> {
        self.book.list()
    }

    /// Put a loop device in front of image `path` for domain `domid`.
    pub fn attach(&mut self, path: &str, readonly: bool, domid: u32) -> Result<Disk, DiskError> {
        let attached = self.attach_one(path, readonly, domid);
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
        let devices = self.book.of_domain(domid);
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

    fn attach_one(&mut self, path: &str, readonly: bool, domid: u32) -> Result<Disk, DiskError> {
        disks::check_path(path)?;
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => DiskError::NotFound {
                path: path.to_owned(),
            },
            _ => DiskError::Stat {
                path: path.to_owned(),
                source,
            },
        })?;
        let facts = image_facts(&meta);
        disks::check_image(path, &facts)?;
        self.book.check_attach(path, readonly, domid, &facts)?;
        let image = open_image(path, readonly)?;
        let opened = image_facts(&image.metadata().map_err(|source| DiskError::Stat {
            path: path.to_owned(),
            source,
        })?);
        if opened != facts {
            return Err(DiskError::Changed {
                path: path.to_owned(),
                kind: opened.kind,
                size: opened.size,
            });
        }
        let attached = loopdev::attach(&image, path, readonly, self.method)?;
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
        self.book.insert(Entry {
            disk: disk.clone(),
            dev: facts.dev,
            ino: facts.ino,
        });
        Ok(disk)
    }

    fn detach_one(&mut self, device: &str) -> Result<(), DiskError> {
        let entry = self.book.get(device)?.clone();
        match loopdev::binding(device) {
            Ok(Some(binding)) if (binding.dev, binding.ino) == (entry.dev, entry.ino) => {}
            Ok(Some(_)) => {
                self.book.remove(device);
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
                self.book.remove(device);
                return Ok(());
            }
            Err(LoopError::OpenDevice { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                warn!("{device} ({}) is gone already", entry.disk.path);
                self.book.remove(device);
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
        self.book.remove(device);
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
            .and_then(|mut file| file.write_all(self.book.save().as_bytes()))
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
                    self.book.insert(entry);
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
            self.book.list().len()
        );
        self.save_state();
    }

    /// Log what stays attached as the daemon stops (the devices of running domains).
    pub fn report_left(&self) {
        let disks = self.book.list();
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

fn image_facts(meta: &fs::Metadata) -> ImageFacts {
    let kind = meta.file_type();
    ImageFacts {
        kind: if kind.is_file() {
            FileKind::Regular
        } else if kind.is_dir() {
            FileKind::Directory
        } else if kind.is_block_device() {
            FileKind::BlockDevice
        } else if kind.is_char_device() {
            FileKind::CharDevice
        } else if kind.is_fifo() {
            FileKind::Fifo
        } else if kind.is_socket() {
            FileKind::Socket
        } else {
            FileKind::Other
        },
        size: meta.len(),
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Open an image without blocking (should it have become a FIFO since the check), then
/// make its fd blocking again for the loop driver.
fn open_image(path: &str, readonly: bool) -> Result<File, DiskError> {
    let mode = if readonly { "read-only" } else { "read-write" };
    let failed = |source| DiskError::Open {
        path: path.to_owned(),
        mode,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|errno| failed(errno.into()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|errno| failed(errno.into()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_facts_of_real_files() {
        let dir = std::env::temp_dir().join(format!("xendevd-facts-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("i.img");
        File::create(&path).unwrap().set_len(4096).unwrap();
        let facts = image_facts(&fs::metadata(&path).unwrap());
        assert_eq!((facts.kind, facts.size), (FileKind::Regular, 4096));
        assert_eq!(
            image_facts(&fs::metadata(&dir).unwrap()).kind,
            FileKind::Directory
        );
        assert_eq!(
            image_facts(&fs::metadata("/dev/null").unwrap()).kind,
            FileKind::CharDevice
        );
        let file = open_image(path.to_str().unwrap(), true).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
        let err = open_image(dir.join("none").to_str().unwrap(), false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot open /"), "{err}");
        assert!(
            err.contains("read-write: No such file or directory"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

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
