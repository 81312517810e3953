//! Opening a disk image once, for a loop device or a NoXS vbd, and deciding on what was
//! opened: the open does not block (a FIFO, or a device that waits for a peer, must not
//! hold up the daemon and every guest it serves), makes no controlling terminal and is
//! closed on exec; then `fstat` of that descriptor says what the image is and how large,
//! its identity goes into the book (`disks.rs`), and that same descriptor is what the
//! loop driver or the vbd reads and writes. A path renamed or replaced meanwhile changes
//! nothing: the checks and the I/O are of one file.
//!
//! A look at the path comes first, as a filter only: a character device or a FIFO is
//! refused without being opened at all (opening some devices does something: a
//! watchdog starts counting). What decides is the `fstat` after the open.
//!
//! Symbolic links are followed (no `O_NOFOLLOW`): the targets are root's to name (the
//! API socket is root's), and LVM's `/dev/VG/LV` and udev's `/dev/disk/by-id/…` are
//! links; the image is the file opened, whatever named it.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::disks::{self, DiskError, FileKind, ImageFacts, Purpose};

/// An image opened and checked for its purpose.
#[derive(Debug)]
pub struct Image {
    /// Blocking again: `O_NONBLOCK` was for the open.
    pub file: File,
    pub facts: ImageFacts,
}

/// Open `path` (read-only or read-write) for `purpose`, and check what was opened.
pub fn open(path: &str, readonly: bool, purpose: Purpose) -> Result<Image, DiskError> {
    disks::check_path(path)?;
    let named = fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DiskError::NotFound {
            path: path.to_owned(),
        },
        _ => DiskError::Stat {
            path: path.to_owned(),
            source,
        },
    })?;
    let kind = kind_of(&named);
    if !purpose.accepts(kind) {
        return Err(purpose.wrong_kind(path, kind));
    }
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
    let opened = file.metadata().map_err(|source| DiskError::Stat {
        path: path.to_owned(),
        source,
    })?;
    let mut facts = facts_of(&opened);
    if facts.kind == FileKind::BlockDevice {
        // A block device's st_size is 0; its end is its size.
        facts.size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_owned(),
                source,
            })?;
    }
    purpose.check(path, &facts)?;
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(|errno| failed(errno.into()))?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|errno| failed(errno.into()))?;
    Ok(Image { file, facts })
}

fn kind_of(meta: &Metadata) -> FileKind {
    let kind = meta.file_type();
    if kind.is_file() {
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
    }
}

/// What `fstat` says (a block device's size is learnt apart).
fn facts_of(meta: &Metadata) -> ImageFacts {
    ImageFacts {
        kind: kind_of(meta),
        size: meta.len(),
        dev: meta.dev(),
        ino: meta.ino(),
        rdev: meta.rdev(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xendevd-image-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn opens_an_image_once_and_blocking() {
        let dir = scratch("open");
        let path = dir.join("i.img");
        File::create(&path).unwrap().set_len(4096).unwrap();
        let path = path.to_str().unwrap();
        for (readonly, purpose) in [(true, Purpose::LoopDevice), (false, Purpose::Vbd)] {
            let image = open(path, readonly, purpose).unwrap();
            assert_eq!(
                (image.facts.kind, image.facts.size),
                (FileKind::Regular, 4096)
            );
            let meta = fs::metadata(path).unwrap();
            assert_eq!((image.facts.dev, image.facts.ino), (meta.dev(), meta.ino()));
            let flags = OFlag::from_bits_truncate(fcntl(&image.file, FcntlArg::F_GETFL).unwrap());
            assert!(!flags.contains(OFlag::O_NONBLOCK));
            assert_eq!(
                flags & OFlag::O_ACCMODE,
                if readonly {
                    OFlag::O_RDONLY
                } else {
                    OFlag::O_RDWR
                }
            );
            let fd_flags = fcntl(&image.file, FcntlArg::F_GETFD).unwrap();
            assert_ne!(fd_flags & nix::libc::FD_CLOEXEC, 0);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The identity and the size are the opened file's: a path replaced after the
    /// open changes neither, and the descriptor still reaches the first file.
    #[test]
    fn what_was_opened_is_what_counts() {
        let dir = scratch("swap");
        let path = dir.join("i.img");
        File::create(&path).unwrap().set_len(8192).unwrap();
        let image = open(path.to_str().unwrap(), false, Purpose::Vbd).unwrap();
        let first = fs::metadata(&path).unwrap();
        fs::remove_file(&path).unwrap();
        File::create(&path).unwrap().set_len(512).unwrap();
        assert_eq!((image.facts.ino, image.facts.size), (first.ino(), 8192));
        assert_eq!(image.file.metadata().unwrap().len(), 8192);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals_name_the_path_and_what_it_is() {
        let dir = scratch("refuse");
        let odd = dir.join("odd.img");
        File::create(&odd).unwrap().set_len(1000).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let d = dir.to_str().unwrap();
        for (path, readonly, purpose, message) in [
            (
                format!("{d}/none.img"),
                false,
                Purpose::Vbd,
                format!("{d}/none.img does not exist"),
            ),
            (
                d.to_owned(),
                false,
                Purpose::LoopDevice,
                format!("{d} is a directory, not a regular file"),
            ),
            (
                d.to_owned(),
                true,
                Purpose::Vbd,
                format!("{d} is a directory: a vbd's target is a regular file or a block device"),
            ),
            // Refused without being opened: an open of a FIFO for reading would wait
            // for a writer if it blocked.
            (
                format!("{d}/fifo"),
                true,
                Purpose::Vbd,
                format!("{d}/fifo is a FIFO: a vbd's target"),
            ),
            (
                "/dev/null".to_owned(),
                false,
                Purpose::Vbd,
                "/dev/null is a character device: a vbd's target".to_owned(),
            ),
            (
                "/dev/null".to_owned(),
                false,
                Purpose::LoopDevice,
                "/dev/null is a character device, not a regular file".to_owned(),
            ),
            (
                format!("{d}/odd.img"),
                true,
                Purpose::Vbd,
                format!("{d}/odd.img has 1000 bytes, not a whole number of 512-byte sectors"),
            ),
            (
                "rel.img".to_owned(),
                true,
                Purpose::Vbd,
                "path \"rel.img\" is not absolute".to_owned(),
            ),
        ] {
            let err = open(&path, readonly, purpose).unwrap_err().to_string();
            assert!(err.starts_with(&message), "{path}: {err}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
