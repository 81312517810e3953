//! Loop devices (`linux/loop.h`): bind an open image file to a free loop device, look
//! at one, unbind one. The decisions around them are in `disks.rs`.
//!
//! Attaching: `LOOP_CTL_GET_FREE` on `/dev/loop-control` gives a free index N; then
//! `LOOP_CONFIGURE` on `/dev/loopN` binds the file and sets its status in one step
//! (Linux 5.8+): the device is never visible half set up, and `LO_FLAGS_READ_ONLY` is
//! honoured there. On kernels without it (`EINVAL`/`ENOTTY`, as util-linux checks) the
//! classic pair `LOOP_SET_FD` + `LOOP_SET_STATUS64` does the same; read-only then
//! comes from the image being opened read-only, which the kernel checks in
//! `LOOP_SET_FD`. Another process may take the free device between the two calls
//! (`EBUSY`): then xendevd asks for another.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use nix::errno::Errno;

/// `/dev/loop-control`.
pub const CONTROL: &str = "/dev/loop-control";

/// How many free devices to try when others keep taking them first.
const ATTEMPTS: u32 = 8;

/// The structures and requests of `linux/loop.h`.
mod sys {
    use std::ffi::c_ulong;

    pub const LO_NAME_SIZE: usize = 64;
    pub const LO_KEY_SIZE: usize = 32;
    /// `LO_FLAGS_READ_ONLY`.
    pub const LO_FLAGS_READ_ONLY: u32 = 1;

    /// Loop requests are `'L' << 8 | nr`, not `_IOC`-encoded (`linux/loop.h`).
    const fn loop_request(nr: u8) -> c_ulong {
        ((b'L' as c_ulong) << 8) | nr as c_ulong
    }
    pub const LOOP_SET_FD: c_ulong = loop_request(0x00);
    pub const LOOP_CLR_FD: c_ulong = loop_request(0x01);
    pub const LOOP_SET_STATUS64: c_ulong = loop_request(0x04);
    pub const LOOP_GET_STATUS64: c_ulong = loop_request(0x05);
    pub const LOOP_CONFIGURE: c_ulong = loop_request(0x0a);
    /// On `/dev/loop-control`.
    pub const LOOP_CTL_GET_FREE: c_ulong = loop_request(0x82);

    /// `struct loop_info64` (`linux/loop.h`).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct LoopInfo64 {
        pub lo_device: u64,
        pub lo_inode: u64,
        pub lo_rdevice: u64,
        pub lo_offset: u64,
        pub lo_sizelimit: u64,
        pub lo_number: u32,
        pub lo_encrypt_type: u32,
        pub lo_encrypt_key_size: u32,
        pub lo_flags: u32,
        pub lo_file_name: [u8; LO_NAME_SIZE],
        pub lo_crypt_name: [u8; LO_NAME_SIZE],
        pub lo_encrypt_key: [u8; LO_KEY_SIZE],
        pub lo_init: [u64; 2],
    }

    impl LoopInfo64 {
        pub const fn zeroed() -> Self {
            Self {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: 0,
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            }
        }
    }

    /// `struct loop_config` (`linux/loop.h`), the argument of `LOOP_CONFIGURE`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct LoopConfig {
        pub fd: u32,
        /// 0: the default (512, or the backing file system's block size with direct I/O).
        pub block_size: u32,
        pub info: LoopInfo64,
        pub reserved: [u64; 8],
    }

    nix::ioctl_write_int_bad!(
        /// `LOOP_SET_FD`: bind the file `data` (an fd) to the loop device `fd`.
        ///
        /// # Safety
        /// `fd` must be a loop device.
        loop_set_fd,
        LOOP_SET_FD
    );
    nix::ioctl_none_bad!(
        /// `LOOP_CLR_FD`: unbind the loop device `fd` (deferred while it is open elsewhere).
        ///
        /// # Safety
        /// `fd` must be a loop device.
        loop_clr_fd,
        LOOP_CLR_FD
    );
    nix::ioctl_write_ptr_bad!(
        /// `LOOP_SET_STATUS64`.
        ///
        /// # Safety
        /// `fd` must be a loop device and `data` point to a valid `LoopInfo64`.
        loop_set_status64,
        LOOP_SET_STATUS64,
        LoopInfo64
    );
    nix::ioctl_read_bad!(
        /// `LOOP_GET_STATUS64`; `ENXIO` when nothing is bound.
        ///
        /// # Safety
        /// `fd` must be a loop device and `data` point to a writable `LoopInfo64`.
        loop_get_status64,
        LOOP_GET_STATUS64,
        LoopInfo64
    );
    nix::ioctl_write_ptr_bad!(
        /// `LOOP_CONFIGURE`: bind and set the status in one step.
        ///
        /// # Safety
        /// `fd` must be a loop device and `data` point to a valid `LoopConfig`.
        loop_configure,
        LOOP_CONFIGURE,
        LoopConfig
    );
    nix::ioctl_none_bad!(
        /// `LOOP_CTL_GET_FREE`: the index of a free loop device (made if needed).
        ///
        /// # Safety
        /// `fd` must be `/dev/loop-control`.
        loop_ctl_get_free,
        LOOP_CTL_GET_FREE
    );
}

/// A loop ioctl or open failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot open {CONTROL}: {0} (is the loop module loaded?)")]
    Control(io::Error),
    #[error("no free loop device: LOOP_CTL_GET_FREE on {CONTROL}: {0}")]
    GetFree(Errno),
    #[error("cannot open {device}: {source}")]
    OpenDevice { device: String, source: io::Error },
    #[error("{request} on {device}: {errno}")]
    Ioctl {
        request: &'static str,
        device: String,
        errno: Errno,
    },
    #[error("other processes took every free loop device before xendevd could bind it ({0} tries)")]
    Busy(u32),
}

/// A loop device bound to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// `/dev/loopN`.
    pub device: String,
    pub major: u32,
    pub minor: u32,
}

/// How to bind: the one-step `LOOP_CONFIGURE` with the classic pair as fallback, or the
/// classic pair alone (to test it on a kernel that has both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Auto,
    Classic,
}

/// What a loop device is bound to: the backing file's identity (`st_dev`, `st_ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub dev: u64,
    pub ino: u64,
    pub readonly: bool,
}

/// Bind `image` (opened read-only for a read-only disk) to a free loop device; `name`
/// goes into `lo_file_name` (what `losetup -a` shows; truncated to 63 bytes).
pub fn attach(
    image: &File,
    name: &str,
    readonly: bool,
    method: Method,
) -> Result<Attached, LoopError> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(CONTROL)
        .map_err(LoopError::Control)?;
    let mut info = sys::LoopInfo64::zeroed();
    let bytes = name.as_bytes();
    let len = bytes.len().min(sys::LO_NAME_SIZE - 1);
    info.lo_file_name[..len].copy_from_slice(&bytes[..len]);
    if readonly {
        info.lo_flags = sys::LO_FLAGS_READ_ONLY;
    }
    for _ in 0..ATTEMPTS {
        // SAFETY: `control` is /dev/loop-control, open for the whole call.
        let index =
            unsafe { sys::loop_ctl_get_free(control.as_raw_fd()) }.map_err(LoopError::GetFree)?;
        let device = format!("/dev/loop{index}");
        let loop_file = open_device(&device)?;
        match bind(&loop_file, &device, image, &info, method) {
            Ok(()) => {}
            // Taken by someone else since LOOP_CTL_GET_FREE: ask again.
            Err(LoopError::Ioctl {
                errno: Errno::EBUSY,
                ..
            }) => continue,
            Err(err) => return Err(err),
        }
        let rdev = loop_file
            .metadata()
            .map_err(|source| LoopError::OpenDevice {
                device: device.clone(),
                source,
            })?
            .rdev();
        return Ok(Attached {
            device,
            major: u32::try_from(nix::sys::stat::major(rdev)).unwrap_or(u32::MAX),
            minor: u32::try_from(nix::sys::stat::minor(rdev)).unwrap_or(u32::MAX),
        });
    }
    Err(LoopError::Busy(ATTEMPTS))
}

fn open_device(device: &str) -> Result<File, LoopError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(device)
        .map_err(|source| LoopError::OpenDevice {
            device: device.to_owned(),
            source,
        })
}

fn bind(
    loop_file: &File,
    device: &str,
    image: &File,
    info: &sys::LoopInfo64,
    method: Method,
) -> Result<(), LoopError> {
    let failed = |request: &'static str| {
        move |errno| LoopError::Ioctl {
            request,
            device: device.to_owned(),
            errno,
        }
    };
    if method == Method::Auto {
        let config = sys::LoopConfig {
            fd: u32::try_from(image.as_raw_fd()).expect("an open fd is not negative"),
            block_size: 0,
            info: *info,
            reserved: [0; 8],
        };
        // SAFETY: `loop_file` is the loop device just opened; `config` lives across the call.
        match unsafe { sys::loop_configure(loop_file.as_raw_fd(), &raw const config) } {
            Ok(_) => return Ok(()),
            // No LOOP_CONFIGURE (before Linux 5.8): the classic pair below.
            Err(Errno::EINVAL | Errno::ENOTTY) => {}
            Err(errno) => return Err(failed("LOOP_CONFIGURE")(errno)),
        }
    }
    // SAFETY: as above; the image fd stays open across the call.
    unsafe { sys::loop_set_fd(loop_file.as_raw_fd(), image.as_raw_fd()) }
        .map_err(failed("LOOP_SET_FD"))?;
    // SAFETY: as above; `info` lives across the call.
    if let Err(errno) = unsafe { sys::loop_set_status64(loop_file.as_raw_fd(), info) } {
        // Leave nothing half set up.
        // SAFETY: as above.
        let _ = unsafe { sys::loop_clr_fd(loop_file.as_raw_fd()) };
        return Err(failed("LOOP_SET_STATUS64")(errno));
    }
    Ok(())
}

/// What `device` is bound to, or `None` if nothing is.
pub fn binding(device: &str) -> Result<Option<Binding>, LoopError> {
    let file = open_device(device)?;
    let mut info = sys::LoopInfo64::zeroed();
    // SAFETY: `file` is a loop device (opening a non-loop device makes this fail with
    // ENOTTY, not misbehave); `info` is writable and lives across the call.
    match unsafe { sys::loop_get_status64(file.as_raw_fd(), &raw mut info) } {
        Ok(_) => Ok(Some(Binding {
            dev: info.lo_device,
            ino: info.lo_inode,
            readonly: info.lo_flags & sys::LO_FLAGS_READ_ONLY != 0,
        })),
        Err(Errno::ENXIO) => Ok(None),
        Err(errno) => Err(LoopError::Ioctl {
            request: "LOOP_GET_STATUS64",
            device: device.to_owned(),
            errno,
        }),
    }
}

/// How an unbind went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detached {
    /// The device is free.
    Now,
    /// The device is open elsewhere (blkback of a running guest): the kernel unbinds it
    /// when the last user closes it (it sets `LO_FLAGS_AUTOCLEAR`).
    Deferred,
}

/// Unbind `device`.
pub fn detach(device: &str) -> Result<Detached, LoopError> {
    let file = open_device(device)?;
    // SAFETY: `file` is the loop device, open across the call.
    unsafe { sys::loop_clr_fd(file.as_raw_fd()) }.map_err(|errno| LoopError::Ioctl {
        request: "LOOP_CLR_FD",
        device: device.to_owned(),
        errno,
    })?;
    drop(file);
    Ok(match binding(device)? {
        None => Detached::Now,
        Some(_) => Detached::Deferred,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Sizes, offsets and requests as `linux/loop.h` gives them (checked with a C
    /// program against Debian 12's linux-libc-dev).
    #[test]
    fn abi() {
        assert_eq!(size_of::<sys::LoopInfo64>(), 232);
        assert_eq!(offset_of!(sys::LoopInfo64, lo_flags), 52);
        assert_eq!(offset_of!(sys::LoopInfo64, lo_file_name), 56);
        assert_eq!(offset_of!(sys::LoopInfo64, lo_init), 216);
        assert_eq!(size_of::<sys::LoopConfig>(), 304);
        assert_eq!(offset_of!(sys::LoopConfig, info), 8);
        assert_eq!(sys::LOOP_SET_FD, 0x4c00);
        assert_eq!(sys::LOOP_CLR_FD, 0x4c01);
        assert_eq!(sys::LOOP_SET_STATUS64, 0x4c04);
        assert_eq!(sys::LOOP_GET_STATUS64, 0x4c05);
        assert_eq!(sys::LOOP_CONFIGURE, 0x4c0a);
        assert_eq!(sys::LOOP_CTL_GET_FREE, 0x4c82);
    }

    /// The real ioctls, both ways of binding, where this test may use loop devices
    /// (root, /dev/loop-control present); elsewhere it says it skipped.
    #[test]
    fn attach_and_detach_for_real() {
        if OpenOptions::new().write(true).open(CONTROL).is_err() {
            eprintln!("skipped: cannot open {CONTROL} (needs root and the loop module)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xendevd-loop-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        for (method, readonly) in [
            (Method::Auto, false),
            (Method::Auto, true),
            (Method::Classic, false),
            (Method::Classic, true),
        ] {
            let image = OpenOptions::new()
                .read(true)
                .write(!readonly)
                .open(&path)
                .unwrap();
            let meta = image.metadata().unwrap();
            let name = path.to_str().unwrap();
            let attached = attach(&image, name, readonly, method).unwrap();
            let what = format!("{method:?} readonly={readonly} {attached:?}");
            assert_eq!(attached.major, 7, "{what}");
            assert_eq!(
                attached.device,
                format!("/dev/loop{}", attached.minor),
                "{what}"
            );
            let sys_dir = format!("/sys/block/loop{}", attached.minor);
            let backing = std::fs::read_to_string(format!("{sys_dir}/loop/backing_file")).unwrap();
            assert_eq!(backing.trim_end(), name, "{what}");
            let ro = std::fs::read_to_string(format!("{sys_dir}/ro")).unwrap();
            assert_eq!(ro.trim_end(), if readonly { "1" } else { "0" }, "{what}");
            let binding = binding(&attached.device).unwrap().unwrap();
            assert_eq!(
                (binding.dev, binding.ino),
                (meta.dev(), meta.ino()),
                "{what}"
            );
            assert_eq!(binding.readonly, readonly, "{what}");
            assert_eq!(detach(&attached.device).unwrap(), Detached::Now, "{what}");
            assert_eq!(super::binding(&attached.device).unwrap(), None, "{what}");
            let err = detach(&attached.device).unwrap_err().to_string();
            assert!(err.contains("LOOP_CLR_FD on /dev/loop"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
