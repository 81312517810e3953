//! The book of disk images and the checks around it: which files may back a disk, who
//! uses each image, which devices a request may detach. One book for both ways xendevd
//! gives a guest a disk: a loop device in front of an image for a Xenstore guest's
//! blkback (`daemon/loops.rs`), and a NoXS vbd that xendevd serves from the image
//! itself (`noxs/vbd.rs`), so that two writers of one image are refused whichever way
//! each came. Pure code; `image.rs` opens the files, `loopdev.rs` does the ioctls.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

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

/// What `fstat` says about an opened image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFacts {
    pub kind: FileKind,
    /// In bytes (a block device's from its end, not `st_size`).
    pub size: u64,
    /// `st_dev` and `st_ino`: the file's identity, whatever path names it.
    pub dev: u64,
    pub ino: u64,
    /// `st_rdev`: a block device's number.
    pub rdev: u64,
}

impl ImageFacts {
    /// What makes two opened files one image.
    pub fn identity(&self) -> Identity {
        if self.kind == FileKind::BlockDevice {
            Identity::Block { rdev: self.rdev }
        } else {
            Identity::File {
                dev: self.dev,
                ino: self.ino,
            }
        }
    }
}

/// What makes two paths one image: a file's device and inode, a block device's number
/// (two device nodes of one disk are one disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
}

/// What Xen says of a domain a disk is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Alive,
    Dying,
    Gone,
    /// Xen could not be asked (xendevd without its Xen devices).
    Unknown,
}

/// What an image is opened for: each takes its own kinds of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A loop device in front of it: an image file.
    LoopDevice,
    /// A NoXS vbd served from it: an image file or a block device.
    Vbd,
}

impl Purpose {
    /// Whether a file of `kind` can back a disk of this purpose.
    pub fn accepts(self, kind: FileKind) -> bool {
        match self {
            Self::LoopDevice => kind == FileKind::Regular,
            Self::Vbd => matches!(kind, FileKind::Regular | FileKind::BlockDevice),
        }
    }

    /// Whether an opened file can back a disk of this purpose: its kind, and a size of
    /// whole sectors, not empty.
    pub fn check(self, path: &str, facts: &ImageFacts) -> Result<(), DiskError> {
        if !self.accepts(facts.kind) {
            return Err(self.wrong_kind(path, facts.kind));
        }
        check_size(path, facts)
    }

    /// The error for a file of the wrong kind.
    pub fn wrong_kind(self, path: &str, kind: FileKind) -> DiskError {
        let path = path.to_owned();
        match self {
            Self::LoopDevice => DiskError::NotRegular { path, kind },
            Self::Vbd => DiskError::NotADisk { path, kind },
        }
    }
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
    #[error("{path} is {kind}: a vbd's target is a regular file or a block device")]
    NotADisk { path: String, kind: FileKind },
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
    #[error("{path}: cannot learn its size: {source}")]
    Size {
        path: String,
        source: std::io::Error,
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
    #[error(
        "{path} is in use already as vbd {devid} of NoXS domain {domid} ({mode}): an \
         image is shared only when every user has it read-only"
    )]
    VbdInUse {
        path: String,
        devid: u32,
        domid: u32,
        mode: &'static str,
    },
    #[error("domain ID {0} is not a domain's (Xen's domain IDs are below {DOMID_FIRST_RESERVED})")]
    BadDomid(u32),
    #[error("domain {0} does not exist (a disk is attached for a domain that is there)")]
    NoSuchDomain(u32),
    #[error("domain {0} is dying")]
    DomainDying(u32),
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

fn check_size(path: &str, facts: &ImageFacts) -> Result<(), DiskError> {
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

impl Entry {
    /// Whether this loop device makes use of `identity`: its image file, or the loop
    /// device itself (which a NoXS vbd could name).
    fn uses(&self, identity: Identity) -> bool {
        let image = Identity::File {
            dev: self.dev,
            ino: self.ino,
        };
        let device = Identity::Block {
            rdev: nix::sys::stat::makedev(self.disk.major.into(), self.disk.minor.into()),
        };
        identity == image || identity == device
    }
}

/// A NoXS vbd's use of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VbdUse {
    domid: u32,
    devid: u32,
    readonly: bool,
    identity: Identity,
}

/// Every image xendevd's guests use: the loop devices it attached (by device path,
/// recorded in the state file) and the images of the NoXS vbds it serves (held by
/// their [`VbdClaim`]s).
#[derive(Debug, Default)]
pub struct DiskBook {
    entries: BTreeMap<String, Entry>,
    vbds: BTreeMap<u64, VbdUse>,
    next_vbd: u64,
}

/// The book as the loop service and the NoXS back ends share it: xendevd is one
/// thread, and no borrow outlives the call that takes it.
pub type SharedBook = Rc<RefCell<DiskBook>>;

/// A NoXS vbd's hold on its image, given back when dropped: with its vbd, whether the
/// domain is released or its set-up failed half-way.
#[derive(Debug)]
pub struct VbdClaim {
    book: SharedBook,
    key: u64,
}

impl Drop for VbdClaim {
    fn drop(&mut self) {
        self.book.borrow_mut().vbds.remove(&self.key);
    }
}

fn mode(readonly: bool) -> &'static str {
    if readonly { "read-only" } else { "read-write" }
}

impl DiskBook {
    /// Whether `domid` (in `state`) may have a loop device in front of the image
    /// `facts` describes (`readonly` or not): the domain ID is a domain's, the domain
    /// lives (the check for ended domains would detach it at once), and the image is
    /// free for it ([`DiskBook::check_free`]).
    pub fn check_attach(
        &self,
        path: &str,
        readonly: bool,
        domid: u32,
        state: DomainState,
        facts: &ImageFacts,
    ) -> Result<(), DiskError> {
        if domid >= DOMID_FIRST_RESERVED {
            return Err(DiskError::BadDomid(domid));
        }
        match state {
            DomainState::Gone => return Err(DiskError::NoSuchDomain(domid)),
            DomainState::Dying => return Err(DiskError::DomainDying(domid)),
            DomainState::Alive | DomainState::Unknown => {}
        }
        self.check_free(path, readonly, facts.identity())
    }

    /// Whether one more user may have image `identity` (named `path` by it), `readonly`
    /// or not: only if every user, this one included, has it read-only (two writers,
    /// or a writer under a reader's cache, corrupt a file system), whichever way each
    /// has it (loop device or NoXS vbd) and whatever domain (the same one included).
    fn check_free(&self, path: &str, readonly: bool, identity: Identity) -> Result<(), DiskError> {
        let shared = |other_readonly: bool| readonly && other_readonly;
        let loop_user = self
            .entries
            .values()
            .find(|entry| entry.uses(identity) && !shared(entry.disk.readonly));
        if let Some(entry) = loop_user {
            return Err(DiskError::InUse {
                path: path.to_owned(),
                device: entry.disk.device.clone(),
                domid: entry.disk.domid,
                mode: mode(entry.disk.readonly),
            });
        }
        let vbd_user = self
            .vbds
            .values()
            .find(|vbd| vbd.identity == identity && !shared(vbd.readonly));
        if let Some(vbd) = vbd_user {
            return Err(DiskError::VbdInUse {
                path: path.to_owned(),
                devid: vbd.devid,
                domid: vbd.domid,
                mode: mode(vbd.readonly),
            });
        }
        Ok(())
    }

    /// Book the image `facts` describes (named `path`) for vbd `devid` of NoXS domain
    /// `domid`, `readonly` or not, if it is free for it: it is the vbd's until the
    /// claim is dropped.
    pub fn claim_vbd(
        book: &SharedBook,
        path: &str,
        readonly: bool,
        domid: u32,
        devid: u32,
        facts: &ImageFacts,
    ) -> Result<VbdClaim, DiskError> {
        let mut this = book.borrow_mut();
        let identity = facts.identity();
        this.check_free(path, readonly, identity)?;
        let key = this.next_vbd;
        this.next_vbd += 1;
        this.vbds.insert(
            key,
            VbdUse {
                domid,
                devid,
                readonly,
                identity,
            },
        );
        Ok(VbdClaim {
            book: Rc::clone(book),
            key,
        })
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

    /// The loop devices of `domid`, in minor order.
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

    /// The domains that have loop devices (for the check that releases those of
    /// domains gone).
    pub fn loop_domains(&self) -> BTreeSet<u32> {
        self.entries
            .values()
            .map(|entry| entry.disk.domid)
            .collect()
    }

    /// Whether xendevd holds a loop device.
    pub fn holds_loops(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Every loop device, by domain then minor.
    pub fn list(&self) -> Vec<Disk> {
        let mut disks: Vec<Disk> = self.entries.values().map(|e| e.disk.clone()).collect();
        disks.sort_by_key(|disk| (disk.domid, disk.minor));
        disks
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The loop devices as the state file holds them (JSON), so a restarted xendevd can
    /// take them back. (A NoXS vbd's claim lives and dies with its back end.)
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
            rdev: 0,
        }
    }

    /// A block device `major:minor` (its node in devtmpfs, inode `ino`).
    fn block(major: u32, minor: u32, ino: u64) -> ImageFacts {
        ImageFacts {
            kind: FileKind::BlockDevice,
            size: 1 << 30,
            dev: 5,
            ino,
            rdev: nix::sys::stat::makedev(major.into(), minor.into()),
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
        for purpose in [Purpose::LoopDevice, Purpose::Vbd] {
            purpose
                .check("/i", &facts(FileKind::Regular, 512, 1))
                .unwrap();
            purpose
                .check("/i", &facts(FileKind::Regular, 64 << 20, 1))
                .unwrap();
        }
        Purpose::Vbd.check("/dev/sdb", &block(8, 16, 1)).unwrap();
        let mut empty_device = block(8, 16, 1);
        empty_device.size = 0;
        for (purpose, facts, message) in [
            (
                Purpose::LoopDevice,
                facts(FileKind::Directory, 4096, 1),
                "/i is a directory, not a regular file (xendevd attaches image files)",
            ),
            (
                Purpose::LoopDevice,
                facts(FileKind::BlockDevice, 0, 1),
                "/i is a block device, not a regular file",
            ),
            (
                Purpose::Vbd,
                facts(FileKind::Directory, 4096, 1),
                "/i is a directory: a vbd's target is a regular file or a block device",
            ),
            (
                Purpose::Vbd,
                facts(FileKind::CharDevice, 0, 1),
                "/i is a character device: a vbd's target",
            ),
            (
                Purpose::Vbd,
                facts(FileKind::Fifo, 0, 1),
                "/i is a FIFO: a vbd's target",
            ),
            (
                Purpose::Vbd,
                empty_device,
                "/i is empty: a disk image needs at least one 512-byte sector",
            ),
            (
                Purpose::LoopDevice,
                facts(FileKind::Regular, 0, 1),
                "/i is empty: a disk image needs at least one 512-byte sector",
            ),
            (
                Purpose::Vbd,
                facts(FileKind::Regular, 1000, 1),
                "/i has 1000 bytes, not a whole number of 512-byte sectors (1 sectors and 488 bytes)",
            ),
        ] {
            let err = purpose.check("/i", &facts).unwrap_err().to_string();
            assert!(err.starts_with(message), "{purpose:?}: {err}");
        }
    }

    #[test]
    fn sharing_rules() {
        let mut book = DiskBook::default();
        book.insert(entry(0, 3, true, 10));
        book.insert(entry(1, 4, false, 11));
        let regular = |ino| facts(FileKind::Regular, 512, ino);
        let alive = DomainState::Alive;
        // A read-only image is shared with other readers.
        book.check_attach("/img/10", true, 5, alive, &regular(10))
            .unwrap();
        // Not with a writer.
        let err = book
            .check_attach("/img/10", false, 5, alive, &regular(10))
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
                .check_attach("/other/name", readonly, 4, alive, &regular(11))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("as /dev/loop1 for domain 4 (read-write)"),
                "{err}"
            );
        }
        // Another file (same device, other inode) is free.
        book.check_attach("/img/12", false, 4, alive, &regular(12))
            .unwrap();
        let err = book
            .check_attach("/img/12", false, DOMID_FIRST_RESERVED, alive, &regular(12))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "domain ID 32752 is not a domain's (Xen's domain IDs are below 32752)"
        );
    }

    #[test]
    fn only_living_domains_get_loop_devices() {
        let book = DiskBook::default();
        let image = facts(FileKind::Regular, 512, 1);
        for (state, error) in [
            (
                DomainState::Gone,
                Some("domain 9 does not exist (a disk is attached for a domain that is there)"),
            ),
            (DomainState::Dying, Some("domain 9 is dying")),
            (DomainState::Alive, None),
            // Xen could not be asked: the book decides alone.
            (DomainState::Unknown, None),
        ] {
            let answer = book.check_attach("/i", false, 9, state, &image);
            assert_eq!(
                answer.err().map(|err| err.to_string()).as_deref(),
                error,
                "{state:?}"
            );
        }
    }

    /// One book for both ways: a NoXS vbd's claim and a loop device refuse each other's
    /// second writer, in either order, and share with readers only.
    #[test]
    fn vbds_and_loop_devices_share_one_book() {
        let book = SharedBook::default();
        let image = facts(FileKind::Regular, 512, 20);
        let alive = DomainState::Alive;
        // NoXS writer first: a second NoXS writer and a loop writer or reader are refused.
        let writer = DiskBook::claim_vbd(&book, "/img/20", false, 5, 0, &image).unwrap();
        let refusal = "/other/20 is in use already as vbd 0 of NoXS domain 5 (read-write): \
                       an image is shared only when every user has it read-only";
        for readonly in [false, true] {
            let err = DiskBook::claim_vbd(&book, "/other/20", readonly, 6, 1, &image)
                .unwrap_err()
                .to_string();
            assert_eq!(err, refusal);
            let err = book
                .borrow()
                .check_attach("/other/20", readonly, 6, alive, &image)
                .unwrap_err()
                .to_string();
            assert_eq!(err, refusal);
        }
        // The same domain's second vbd on it too.
        assert!(DiskBook::claim_vbd(&book, "/img/20", false, 5, 1, &image).is_err());
        // Dropped with its vbd: the image is free again.
        drop(writer);
        let loop_writer = entry(3, 7, false, 20);
        book.borrow()
            .check_attach("/img/20", false, 7, alive, &image)
            .unwrap();
        book.borrow_mut().insert(loop_writer);
        // Loop writer first: NoXS writers and readers are refused.
        for readonly in [false, true] {
            let err = DiskBook::claim_vbd(&book, "/img/20", readonly, 8, 0, &image)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "/img/20 is attached already as /dev/loop3 for domain 7 (read-write): \
                 an image is shared only when every user has it read-only"
            );
        }
        book.borrow_mut().remove("/dev/loop3");
        // Readers, any number and any mix; then no writer of either kind.
        let readers = [
            DiskBook::claim_vbd(&book, "/img/20", true, 8, 0, &image).unwrap(),
            DiskBook::claim_vbd(&book, "/img/20", true, 9, 0, &image).unwrap(),
            DiskBook::claim_vbd(&book, "/img/20", true, 9, 1, &image).unwrap(),
        ];
        book.borrow()
            .check_attach("/img/20", true, 7, alive, &image)
            .unwrap();
        book.borrow_mut().insert(entry(4, 7, true, 20));
        assert!(DiskBook::claim_vbd(&book, "/img/20", true, 10, 0, &image).is_ok());
        let err = DiskBook::claim_vbd(&book, "/img/20", false, 10, 0, &image)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(read-only)"), "{err}");
        assert!(
            book.borrow()
                .check_attach("/img/20", false, 10, alive, &image)
                .is_err()
        );
        drop(readers);
        book.borrow_mut().remove("/dev/loop4");
        assert!(DiskBook::claim_vbd(&book, "/img/20", false, 10, 0, &image).is_ok());
        assert!(book.borrow().vbds.is_empty(), "every claim given back");
    }

    /// A block device is one image under all its names (its number), and a loop device
    /// xendevd attached is its image's.
    #[test]
    fn block_devices_by_number() {
        let book = SharedBook::default();
        let _sdb = DiskBook::claim_vbd(&book, "/dev/sdb", false, 5, 0, &block(8, 16, 100)).unwrap();
        let err = DiskBook::claim_vbd(&book, "/dev/disk/by-id/x", false, 6, 0, &block(8, 16, 200))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("as vbd 0 of NoXS domain 5 (read-write)"),
            "{err}"
        );
        DiskBook::claim_vbd(&book, "/dev/sdc", false, 6, 0, &block(8, 32, 300)).unwrap();
        // A NoXS vbd on /dev/loop3, which xendevd attached for domain 7's writer.
        book.borrow_mut().insert(entry(3, 7, false, 20));
        let err = DiskBook::claim_vbd(&book, "/dev/loop3", true, 8, 0, &block(7, 3, 400))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("as /dev/loop3 for domain 7 (read-write)"),
            "{err}"
        );
        DiskBook::claim_vbd(&book, "/dev/loop4", true, 8, 0, &block(7, 4, 401)).unwrap();
        assert_eq!(book.borrow().loop_domains(), BTreeSet::from([7]));
        assert!(book.borrow().holds_loops());
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
