//! Guest disks: raw image files on the host (`--disk FILE[:ro]`), so that what a guest
//! writes is in the file afterwards.
//!
//! In the lab, QEMU gives every image to dom0 as a virtio disk (`/dev/vdX`, linked as
//! `/dev/lab/disk-N`), and xl hands that to the guest (`phy:/dev/vdX,xvda,w`) through
//! xen-blkback and the lab's block hotplug script. Natively, a loop device
//! ([`LoopDevice`]) stands in for the virtio disk and is detached afterwards.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};

use crate::lab::process;
use crate::util;

/// The sector size of every disk xtask attaches.
pub const SECTOR: u64 = 512;

/// How many disks one guest may have (`xvda` to `xvdz`).
pub const MAX_DISKS: usize = 26;

/// A guest disk: a raw image file on the host, read-write unless `read_only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

impl Disk {
    pub fn new(path: impl Into<PathBuf>, read_only: bool) -> Self {
        Self {
            path: path.into(),
            read_only,
        }
    }

    /// `r` or `w`, as xl's disk spec wants it.
    pub fn xl_mode(&self) -> &'static str {
        if self.read_only { "r" } else { "w" }
    }

    pub fn mode_name(&self) -> &'static str {
        if self.read_only {
            "read-only"
        } else {
            "read-write"
        }
    }

    /// Check that the image can be a disk: an existing regular file of whole 512-byte
    /// sectors that this user may open in the disk's mode. Returns the absolute path
    /// (symlinks resolved) and the size in bytes.
    pub fn check(&self) -> Result<(PathBuf, u64)> {
        let path = &self.path;
        let shown = path.display();
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "disk image {shown} does not exist (create an empty one with `truncate -s 64M {shown}`)"
            ),
            Err(err) => bail!("disk image {shown}: {err}"),
        };
        if !meta.is_file() {
            bail!(
                "disk image {shown} is not a regular file (it is {}): a disk is a raw image file",
                file_kind(&meta)
            );
        }
        let size = meta.len();
        ensure!(
            size > 0,
            "disk image {shown} is empty (0 bytes): give it a size, e.g. `truncate -s 64M {shown}`"
        );
        ensure!(
            size % SECTOR == 0,
            "disk image {shown} is {size} bytes, not a whole number of {SECTOR}-byte sectors \
             ({} bytes too many)",
            size % SECTOR
        );
        let open = fs::OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(path);
        if let Err(err) = open {
            if self.read_only {
                bail!("disk image {shown} cannot be read: {err}");
            }
            bail!(
                "disk image {shown} cannot be opened for writing ({err}); give it as {shown}:ro for a read-only disk"
            );
        }
        let absolute = path
            .canonicalize()
            .with_context(|| format!("disk image {shown}"))?;
        Ok((absolute, size))
    }
}

/// `FILE`, `FILE:rw` or `FILE:ro`. A colon in the file name needs an explicit mode after
/// it (`a:b.img:rw`); anything else after the last colon is refused, so that a typo
/// (`disk.img:r0`) does not silently make a read-write disk.
impl FromStr for Disk {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (file, read_only) = match text.rsplit_once(':') {
            Some((file, "ro")) => (file, true),
            Some((file, "rw")) => (file, false),
            // A colon inside a directory name: `dir:x/disk.img`.
            Some((_, rest)) if rest.contains('/') => (text, false),
            Some((_, mode)) => {
                return Err(format!(
                    "disk `{text}`: unknown mode `{mode}` after the last colon (expected FILE, \
                     FILE:ro or FILE:rw; if `{text}` is the file's name, write `{text}:rw`)"
                ));
            }
            None => (text, false),
        };
        if file.is_empty() {
            return Err(format!("disk `{text}`: no file name"));
        }
        Ok(Self::new(file, read_only))
    }
}

impl fmt::Display for Disk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a fifo"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The guest's name for its `index`th disk: `xvda`, `xvdb`, … .
pub fn vdev(index: usize) -> String {
    assert!(index < MAX_DISKS, "disk index {index} beyond xvdz");
    format!("xvd{}", char::from(b'a' + index as u8))
}

/// `64 MiB`, `1.5 GiB`, `3 KiB`, `512 bytes`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) {
                format!("{} {name}", bytes / unit)
            } else {
                format!("{:.1} {name}", bytes as f64 / unit as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// Check every disk of a guest; the images' absolute paths and sizes.
pub fn check_all(disks: &[Disk]) -> Result<Vec<(PathBuf, u64)>> {
    ensure!(
        disks.len() <= MAX_DISKS,
        "{} disks: a guest can have at most {MAX_DISKS} (xvda to xvdz)",
        disks.len()
    );
    let mut checked: Vec<(PathBuf, u64)> = Vec::new();
    for disk in disks {
        let (path, size) = disk.check()?;
        if let Some(at) = checked.iter().position(|(known, _)| *known == path) {
            bail!(
                "disk image {} is given twice (as {} and as {}): a guest's disks are distinct files",
                path.display(),
                vdev(at),
                vdev(checked.len())
            );
        }
        checked.push((path, size));
    }
    Ok(checked)
}

/// The line `run` prints for a disk: `disk xvda ← /path/img (64 MiB, read-write)`.
pub fn describe(index: usize, disk: &Disk, path: &Path, size: u64) -> String {
    format!(
        "disk {} ← {} ({}, {})",
        vdev(index),
        path.display(),
        human_size(size),
        disk.mode_name()
    )
}

/// A loop device attached to an image file (natively, the guest's disk is a loop device
/// of dom0). Detached on drop, and by the Ctrl-C handler if xtask is interrupted.
#[derive(Debug)]
pub struct LoopDevice {
    device: String,
    undo: u64,
}

impl LoopDevice {
    /// `losetup --find --show [--read-only] FILE`.
    pub fn attach(image: &Path, read_only: bool) -> Result<Self> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        cmd.arg(image);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?;
        ensure!(
            out.status.success(),
            "`{}` failed ({}): {}",
            util::display(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            device.starts_with("/dev/") && !device.contains(char::is_whitespace),
            "`{}` printed {device:?}, not a device",
            util::display(&cmd)
        );
        let undo = {
            let device = device.clone();
            process::register_undo(Box::new(move || detach(&device)))
        };
        Ok(Self { device, undo })
    }

    /// `/dev/loopN`.
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        process::forget_undo(self.undo);
        detach(&self.device);
    }
}

/// `losetup --detach DEV`. A device still open (a guest's back end) is detached by the
/// kernel when it is closed (autoclear), so this never leaves it attached.
fn detach(device: &str) {
    match Command::new("losetup").args(["--detach", device]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: `losetup --detach {device}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("warning: cannot run `losetup --detach {device}`: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let disk: Disk = "a.img".parse().unwrap();
        assert_eq!(disk, Disk::new("a.img", false));
        assert_eq!(
            "a.img:ro".parse::<Disk>().unwrap(),
            Disk::new("a.img", true)
        );
        assert_eq!(
            "a.img:rw".parse::<Disk>().unwrap(),
            Disk::new("a.img", false)
        );
        assert_eq!(
            "x:y.img:ro".parse::<Disk>().unwrap(),
            Disk::new("x:y.img", true)
        );
        assert_eq!(
            "dir:1/a.img".parse::<Disk>().unwrap(),
            Disk::new("dir:1/a.img", false)
        );
        assert_eq!("a.img:ro".parse::<Disk>().unwrap().to_string(), "a.img:ro");
        for (bad, why) in [
            ("a.img:r0", "unknown mode `r0`"),
            ("a.img:RO", "unknown mode `RO`"),
            ("a.img:r", "unknown mode `r`"),
            ("a.img:", "unknown mode ``"),
            (
                "x:y.img",
                "if `x:y.img` is the file's name, write `x:y.img:rw`",
            ),
            (":ro", "no file name"),
            ("", "no file name"),
        ] {
            let err = bad.parse::<Disk>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn checks() {
        let dir = util::target_dir().join("disk-unit-tests");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, size: u64| {
            let path = dir.join(name);
            fs::File::create(&path).unwrap().set_len(size).unwrap();
            path
        };
        let good = file("good.img", 64 << 20);
        let (path, size) = Disk::new(&good, false).check().unwrap();
        assert_eq!((path, size), (good.canonicalize().unwrap(), 64 << 20));
        for (disk, why) in [
            (
                Disk::new(dir.join("missing.img"), false),
                "missing.img does not exist",
            ),
            (
                Disk::new(&dir, false),
                "is not a regular file (it is a directory)",
            ),
            (
                Disk::new(file("odd.img", 1000), true),
                "is 1000 bytes, not a whole number of 512-byte sectors (488 bytes too many)",
            ),
            (Disk::new(file("empty.img", 0), false), "is empty (0 bytes)"),
        ] {
            let err = format!("{:#}", disk.check().unwrap_err());
            assert!(err.contains(why), "{}: {err}", disk.path.display());
        }
        let twice = check_all(&[Disk::new(&good, false), Disk::new(&good, true)])
            .unwrap_err()
            .to_string();
        assert!(
            twice.contains("is given twice (as xvda and as xvdb)"),
            "{twice}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(vdev(0), "xvda");
        assert_eq!(vdev(25), "xvdz");
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(3072), "3 KiB");
        assert_eq!(human_size(512), "512 bytes");
        let disk = Disk::new("x.img", true);
        assert_eq!(
            describe(1, &disk, Path::new("/t/x.img"), 64 << 20),
            "disk xvdb ← /t/x.img (64 MiB, read-only)"
        );
    }

    /// Needs root and loop devices (as CI machines and dom0s have): attach, see the
    /// kernel's backing file and read-only flag, detach on drop.
    #[test]
    #[ignore = "needs root and /dev/loop-control"]
    fn loop_devices() {
        let dir = util::target_dir().join("disk-loop-test");
        fs::create_dir_all(&dir).unwrap();
        let image = dir.join("loop.img");
        fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
        let image = image.canonicalize().unwrap();
        let name;
        {
            let device = LoopDevice::attach(&image, true).unwrap();
            name = device.device().trim_start_matches("/dev/").to_owned();
            let sys = Path::new("/sys/block").join(&name);
            let backing = fs::read_to_string(sys.join("loop/backing_file")).unwrap();
            assert_eq!(backing.trim(), image.to_str().unwrap());
            assert_eq!(fs::read_to_string(sys.join("ro")).unwrap().trim(), "1");
        }
        let backing = Path::new("/sys/block")
            .join(&name)
            .join("loop/backing_file");
        assert!(!backing.exists(), "{name} is still attached");
        fs::remove_dir_all(&dir).unwrap();
    }
}
