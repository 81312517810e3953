//! Loop-device bookkeeping and the checks before and after the ioctls: which images may
//! be attached, which devices a request may detach. Pure code; `loopdev.rs` does the
//! ioctls and `daemon/loops.rs` strings the two together.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::api::Disk;

/// Bytes per sector: an image must be a whole number of them (blkback's unit).
pub const SECTOR: u64 = 512;

/// The first domain ID Xen reserves (`DOMID_FIRST_RESERVED`, xen.h): no domain has it
/// or any above it.
pub const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// What kind of file a path names (after symbolic links).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::BlockDevice => "a block device",
            FileKind::CharDevice => "a character device",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::Other => "not a regular file",
        })
    }
}

/// What `fstat` says about an image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub kind: FileKind,
    pub size: u64,
    /// `st_dev` and `st_ino`: the file's identity, whatever path names it.
    pub dev: u64,
    pub ino: u64,
}

/// Why a disk request failed. The messages go back to the client as they are.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("path {0:?} is not absolute (xendevd runs in /; give the full path)")]
    NotAbsolute(String),
    #[error("path {0:?} holds a NUL byte")]
    NulByte(String),
    #[error("{path} does not exist")]
    NotFound { path: String },
    #[error("cannot look at {path}: {source}")]
    Stat {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file (xendevd attaches image files)")]
    NotRegular { path: String, kind: FileKind },
    #[error("{path} is empty: a disk image needs at least one {SECTOR}-byte sector")]
    Empty { path: String },
    #[error(
        "{path} has {size} bytes, not a whole number of {SECTOR}-byte sectors \
         ({} sectors and {} bytes)",
        size / SECTOR,
        size % SECTOR
    )]
    NotSectors { path: String, size: u64 },
    #[error("cannot open {path} {mode}: {source}")]
    Open {
        path: String,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("{path} changed between the checks and the open (it is now {kind}, {size} bytes)")]
    Changed {
        path: String,
        kind: FileKind,
        size: u64,
    },
    #[error(
        "{path} is attached already as {device} for domain {domid} ({mode}): \
         an image is shared only when every user has it read-only"
    )]
    InUse {
        path: String,
        device: String,
        domid: u32,
        mode: &'static str,
    },
    #[error("domain ID {0} is not a domain's (Xen's domain IDs are below {DOMID_FIRST_RESERVED})")]
    BadDomid(u32),
    #[error("{device} was not attached by xendevd ({held})")]
    NotOurs { device: String, held: String },
    #[error(
        "{device} is bound to another file than {path} now (someone else detached and \
         re-attached it): left alone, and forgotten"
    )]
    Rebound { device: String, path: String },
    #[error(transparent)]
    Loop(#[from] crate::loopdev::LoopError),
}

/// The path of an attach request, before anything touches the file system.
pub fn check_path(path: &str) -> Result<(), DiskError> {
    if path.contains('\0') {
        return Err(DiskError::NulByte(path.to_owned()));
    }
    if !path.starts_with('/') {
        return Err(DiskError::NotAbsolute(path.to_owned()));
    }
    Ok(())
}

/// Whether a file can back a disk: a regular file of whole sectors, not empty.
pub fn check_image(path: &str, facts: &ImageFacts) -> Result<(), DiskError> {
    if facts.kind != FileKind::Regular {
        return Err(DiskError::NotRegular {
            path: path.to_owned(),
            kind: facts.kind,
        });
    }
    if facts.size == 0 {
        return Err(DiskError::Empty {
            path: path.to_owned(),
        });
    }
    if !facts.size.is_multiple_of(SECTOR) {
        return Err(DiskError::NotSectors {
            path: path.to_owned(),
            size: facts.size,
        });
    }
    Ok(())
}

/// A loop device xendevd attached, with its image's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub disk: Disk,
    pub dev: u64,
    pub ino: u64,
}

/// Every loop device xendevd attached, by device path.
#[derive(Debug, Default)]
pub struct DiskBook {
    entries: BTreeMap<String, Entry>,
}

fn mode(readonly: bool) -> &'static str {
    if readonly { "read-only" } else { "read-write" }
}

impl DiskBook {
    /// Whether `domid` may have the image `facts` describes (`readonly` or not): the
    /// domain ID is a domain's, and the image is not attached already unless every user,
    /// this one included, has it read-only (two writers, or a writer under a reader's
    /// cache, corrupt a file system).
    pub fn check_attach(
        &self,
        path: &str,
        readonly: bool,
        domid: u32,
        facts: &ImageFacts,
    ) -> Result<(), DiskError> {
        if domid >= DOMID_FIRST_RESERVED {
            return Err(DiskError::BadDomid(domid));
        }
        let conflict = self.entries.values().find(|entry| {
            entry.dev == facts.dev && entry.ino == facts.ino && !(readonly && entry.disk.readonly)
        });
        match conflict {
            Some(entry) => Err(DiskError::InUse {
                path: path.to_owned(),
                device: entry.disk.device.clone(),
                domid: entry.disk.domid,
                mode: mode(entry.disk.readonly),
            }),
            None => Ok(()),
        }
    }

    pub fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry.disk.device.clone(), entry);
    }

    /// The entry of `device`, if xendevd attached it; else an error naming what it holds.
    pub fn get(&self, device: &str) -> Result<&Entry, DiskError> {
        self.entries.get(device).ok_or_else(|| DiskError::NotOurs {
            device: device.to_owned(),
            held: self.held(),
        })
    }

    pub fn remove(&mut self, device: &str) -> Option<Entry> {
        self.entries.remove(device)
    }

    /// The devices of `domid`, in minor order.
    pub fn of_domain(&self, domid: u32) -> Vec<String> {
        let mut disks: Vec<&Disk> = self
            .entries
            .values()
            .map(|entry| &entry.disk)
            .filter(|disk| disk.domid == domid)
            .collect();
        disks.sort_by_key(|disk| disk.minor);
        disks.into_iter().map(|disk| disk.device.clone()).collect()
    }

    /// Every disk, by domain then minor.
    pub fn list(&self) -> Vec<Disk> {
        let mut disks: Vec<Disk> = self.entries.values().map(|e| e.disk.clone()).collect();
        disks.sort_by_key(|disk| (disk.domid, disk.minor));
        disks
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The book as its state file holds it (JSON), so a restarted xendevd can take
    /// its loop devices back.
    pub fn save(&self) -> String {
        let saved = Saved {
            version: SAVED_VERSION,
            disks: self.entries.values().cloned().collect(),
        };
        serde_json::to_string_pretty(&saved).expect("plain data always encodes")
    }

    /// The entries of a state file written by [`DiskBook::save`].
    pub fn load(text: &str) -> Result<Vec<Entry>, StateFileError> {
        let saved: Saved = serde_json::from_str(text)?;
        if saved.version != SAVED_VERSION {
            return Err(StateFileError::Version(saved.version));
        }
        Ok(saved.disks)
    }

    /// What the book holds, for error messages: `it holds /dev/loop0, /dev/loop3`.
    fn held(&self) -> String {
        if self.entries.is_empty() {
            return "it holds no loop devices".into();
        }
        let devices: Vec<String> = self.list().into_iter().map(|d| d.device).collect();
        format!("it holds {}", devices.join(", "))
    }
}

/// The state file's layout version.
const SAVED_VERSION: u32 = 1;

/// A state file this xendevd cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("version {0} (this xendevd reads version {SAVED_VERSION})")]
    Version(u32),
}

/// The state file: `{"version": 1, "disks": [{"disk": {…}, "dev": …, "ino": …}, …]}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    disks: Vec<Entry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: FileKind, size: u64, ino: u64) -> ImageFacts {
        ImageFacts {
            kind,
            size,
            dev: 0x801,
            ino,
        }
    }

    fn entry(minor: u32, domid: u32, readonly: bool, ino: u64) -> Entry {
        Entry {
            disk: Disk {
                device: format!("/dev/loop{minor}"),
                major: 7,
                minor,
                path: format!("/img/{ino}"),
                readonly,
                domid,
            },
            dev: 0x801,
            ino,
        }
    }

    #[test]
    fn paths() {
        check_path("/srv/disk.img").unwrap();
        for (path, message) in [
            (
                "disk.img",
                "path \"disk.img\" is not absolute (xendevd runs in /; give the full path)",
            ),
            ("", "path \"\" is not absolute"),
            ("/a\0b", "path \"/a\\0b\" holds a NUL byte"),
        ] {
            let err = check_path(path).unwrap_err().to_string();
            assert!(err.starts_with(message), "{path:?}: {err}");
        }
    }

    #[test]
    fn images() {
        check_image("/i", &facts(FileKind::Regular, 512, 1)).unwrap();
        check_image("/i", &facts(FileKind::Regular, 64 << 20, 1)).unwrap();
        for (facts, message) in [
            (
                facts(FileKind::Directory, 4096, 1),
                "/i is a directory, not a regular file (xendevd attaches image files)",
            ),
            (
                facts(FileKind::BlockDevice, 0, 1),
                "/i is a block device, not a regular file",
            ),
            (
                facts(FileKind::Regular, 0, 1),
                "/i is empty: a disk image needs at least one 512-byte sector",
            ),
            (
                facts(FileKind::Regular, 1000, 1),
                "/i has 1000 bytes, not a whole number of 512-byte sectors (1 sectors and 488 bytes)",
            ),
        ] {
            let err = check_image("/i", &facts).unwrap_err().to_string();
            assert!(err.starts_with(message), "{err}");
        }
    }

    #[test]
    fn sharing_rules() {
        let mut book = DiskBook::default();
        book.insert(entry(0, 3, true, 10));
        book.insert(entry(1, 4, false, 11));
        let regular = |ino| facts(FileKind::Regular, 512, ino);
        // A read-only image is shared with other readers.
        book.check_attach("/img/10", true, 5, &regular(10)).unwrap();
        // Not with a writer.
        let err = book
            .check_attach("/img/10", false, 5, &regular(10))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/img/10 is attached already as /dev/loop0 for domain 3 (read-only): \
             an image is shared only when every user has it read-only"
        );
        // A written image is shared with nobody, the same domain included.
        for readonly in [true, false] {
            let err = book
                .check_attach("/other/name", readonly, 4, &regular(11))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("as /dev/loop1 for domain 4 (read-write)"),
                "{err}"
            );
        }
        // Another file (same device, other inode) is free.
        book.check_attach("/img/12", false, 4, &regular(12))
            .unwrap();
        let err = book
            .check_attach("/img/12", false, DOMID_FIRST_RESERVED, &regular(12))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "domain ID 32752 is not a domain's (Xen's domain IDs are below 32752)"
        );
    }

    #[test]
    fn state_file_round_trip() {
        let mut book = DiskBook::default();
        assert_eq!(DiskBook::load(&book.save()).unwrap(), []);
        book.insert(entry(3, 5, true, 42));
        book.insert(entry(1, 4, false, 43));
        let text = book.save();
        assert!(text.contains("\"version\": 1"), "{text}");
        let entries = DiskBook::load(&text).unwrap();
        assert_eq!(entries, [entry(1, 4, false, 43), entry(3, 5, true, 42)]);
        for (bad, why) in [
            ("", "EOF while parsing"),
            (
                r#"{"version":2,"disks":[]}"#,
                "version 2 (this xendevd reads version 1)",
            ),
            (r#"{"version":1,"disks":[],"x":0}"#, "unknown field `x`"),
            (r#"{"version":1,"disks":[{"disk":{}}]}"#, "missing field"),
        ] {
            let err = DiskBook::load(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn bookkeeping_per_domain() {
        let mut book = DiskBook::default();
        let err = book.get("/dev/loop0").unwrap_err().to_string();
        assert_eq!(
            err,
            "/dev/loop0 was not attached by xendevd (it holds no loop devices)"
        );
        book.insert(entry(10, 3, true, 1));
        book.insert(entry(2, 3, true, 2));
        book.insert(entry(0, 4, false, 3));
        assert_eq!(book.of_domain(3), ["/dev/loop2", "/dev/loop10"]);
        assert_eq!(book.of_domain(9), Vec::<String>::new());
        let listed: Vec<String> = book.list().into_iter().map(|d| d.device).collect();
        assert_eq!(listed, ["/dev/loop2", "/dev/loop10", "/dev/loop0"]);
        let err = book.get("/dev/loop7").unwrap_err().to_string();
        assert_eq!(
            err,
            "/dev/loop7 was not attached by xendevd (it holds /dev/loop2, /dev/loop10, /dev/loop0)"
        );
        assert_eq!(book.get("/dev/loop0").unwrap().disk.domid, 4);
        assert!(book.remove("/dev/loop0").is_some());
        assert!(book.remove("/dev/loop0").is_none());
        assert_eq!(book.len(), 2);
    }
}
