//! Stage 2 of a configuration's checks: the files it names. The kernel is a Xen PV
//! kernel, the ramdisk and the disk targets exist and are what their type says, each
//! vif's bridge exists in dom0.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Access, Checked, Config, ConfigError, Vbd, VbdKind};
use crate::elf;

impl Config {
    /// Stage 2: the files the configuration names. Relative paths are made absolute
    /// (from the current directory), as the domain's records keep them.
    pub fn check_files(&mut self) -> Checked<()> {
        self.kernel = absolute("kernel", &self.kernel)?;
        let kernel = &self.kernel;
        let meta = std::fs::metadata(kernel).map_err(|err| {
            ConfigError::new(
                "kernel",
                format!("{}: {}", kernel.display(), io_reason(&err)),
            )
        })?;
        if !meta.is_file() {
            return Err(ConfigError::new(
                "kernel",
                format!("{} is not a regular file", kernel.display()),
            ));
        }
        elf::check_kernel(kernel)
            .map_err(|why| ConfigError::new("kernel", format!("{} {why}", kernel.display())))?;
        if let Some(ramdisk) = &mut self.ramdisk {
            *ramdisk = absolute("ramdisk", ramdisk)?;
            let meta = std::fs::metadata(&*ramdisk).map_err(|err| {
                ConfigError::new(
                    "ramdisk",
                    format!("{}: {}", ramdisk.display(), io_reason(&err)),
                )
            })?;
            if !meta.is_file() {
                return Err(ConfigError::new(
                    "ramdisk",
                    format!("{} is not a regular file", ramdisk.display()),
                ));
            }
        }
        for (index, vbd) in self.vbds.iter_mut().enumerate() {
            let field = format!("vbds[{index}].target");
            vbd.target = absolute(&field, &vbd.target)?;
            check_target(&field, vbd)?;
        }
        Ok(())
    }

    /// Each vif's bridge exists in dom0 (`/sys/class/net/NAME/bridge`).
    pub fn check_bridges(&self) -> Checked<()> {
        self.check_bridges_in(Path::new("/sys/class/net"))
    }

    fn check_bridges_in(&self, sys_class_net: &Path) -> Checked<()> {
        for (index, vif) in self.vifs.iter().enumerate() {
            if !sys_class_net.join(&vif.bridge).join("bridge").is_dir() {
                return Err(ConfigError::new(
                    format!("vifs[{index}].bridge"),
                    format!(
                        "dom0 has no bridge named {} (no {}); make one (ip link add {} type \
                         bridge) or name another",
                        vif.bridge,
                        sys_class_net.join(&vif.bridge).join("bridge").display(),
                        vif.bridge
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn io_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => err.to_string(),
    }
}

fn absolute(field: &str, path: &Path) -> Checked<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(|err| {
        ConfigError::new(
            field,
            format!(
                "{} is relative and the current directory is unknown: {err}",
                path.display()
            ),
        )
    })?;
    Ok(cwd.join(path))
}

pub(super) fn check_target(field: &str, vbd: &Vbd) -> Checked<()> {
    let path = &vbd.target;
    let meta = std::fs::metadata(path).map_err(|err| {
        ConfigError::new(field, format!("{}: {}", path.display(), io_reason(&err)))
    })?;
    match vbd.kind {
        VbdKind::Phy if !meta.file_type().is_block_device() => {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} is not a block device (\"type\": \"phy\"); for an image file say \
                     \"type\": \"file\"",
                    path.display()
                ),
            ));
        }
        VbdKind::File if !meta.is_file() => {
            return Err(ConfigError::new(
                field,
                format!(
                    "{} is not a regular file (\"type\": \"file\"); for a block device say \
                     \"type\": \"phy\"",
                    path.display()
                ),
            ));
        }
        _ => {}
    }
    if vbd.kind == VbdKind::File && meta.size() % 512 != 0 {
        return Err(ConfigError::new(
            field,
            format!(
                "{} is {} bytes, not a whole number of 512-byte sectors",
                path.display(),
                meta.size()
            ),
        ));
    }
    let wanted = match vbd.access {
        Access::Read => libc::R_OK,
        Access::Write => libc::R_OK | libc::W_OK,
    };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| ConfigError::new(field, "the path contains a NUL byte"))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call; access(2) only
    // reads it.
    if unsafe { libc::access(c_path.as_ptr(), wanted) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(ConfigError::new(
            field,
            format!(
                "{} cannot be opened for {} ({err})",
                path.display(),
                match vbd.access {
                    Access::Read => "reading",
                    Access::Write => "writing, as \"access\": \"w\" asks",
                }
            ),
        ));
    }
    Ok(())
}
