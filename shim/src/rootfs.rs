//! The image's root file system in the bundle: mounted from containerd's snapshot
//! mounts, and what the shim reads from it (the kernel, `lightvm.json`).

use std::path::{Path, PathBuf};

use chaos::config::DevMethod;
use containerd_shim::protos::api::Mount;
use lightvm_image::{DEFAULTS_PATH, GuestDefaults, KERNEL_PATH};
use oci_spec::runtime::Spec;

use crate::spec::Defaults;

/// The root file system of a task.
#[derive(Debug)]
pub struct Rootfs {
    path: PathBuf,
    mounted: bool,
}

impl Rootfs {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the shim mounted it, to unmount at the end.
    pub fn mounted(&self) -> Option<PathBuf> {
        self.mounted.then(|| self.path.clone())
    }
}

/// Mount `mounts` (containerd's snapshot: a bind mount with the native snapshotter, an
/// overlay otherwise) at `<bundle>/rootfs`; with none, the spec's `root.path` is the
/// root file system as it is.
pub fn mount(bundle: &Path, spec: &Spec, mounts: &[Mount]) -> Result<Rootfs, String> {
    if mounts.is_empty() {
        let root = spec
            .root()
            .as_ref()
            .map_or_else(|| PathBuf::from("rootfs"), |root| root.path().clone());
        return Ok(Rootfs {
            path: bundle.join(root),
            mounted: false,
        });
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|err| format!("{}: {err}", target.display()))?;
    for (index, mount) in mounts.iter().enumerate() {
        if let Err(err) = containerd_shim::mount::mount_rootfs(
            Some(mount.type_.as_str()).filter(|t| !t.is_empty()),
            Some(mount.source.as_str()).filter(|s| !s.is_empty()),
            &mount.options,
            &target,
        ) {
            if index > 0 {
                unmount(&target);
            }
            return Err(format!(
                "mounting the image ({} {}) at {}: {err}",
                mount.type_,
                mount.source,
                target.display()
            ));
        }
    }
    Ok(Rootfs {
        path: target,
        mounted: true,
    })
}

/// Unmount what [`mount`] mounted at `target` (all of it, lazily if busy).
pub fn unmount(target: &Path) {
    let Some(text) = target.to_str() else {
        return;
    };
    if let Err(err) = containerd_shim::mount::umount_recursive(Some(text), libc::MNT_DETACH) {
        log::warn!("unmounting {text}: {err}");
    }
}

/// The image's `lightvm.json`; absent, [`Defaults::WITHOUT_FILE`].
pub fn defaults(root: &Path) -> Result<Defaults, String> {
    let path = root.join(DEFAULTS_PATH);
    let defaults = match std::fs::read_to_string(&path) {
        Ok(text) => {
            GuestDefaults::parse(&text).map_err(|err| format!("/{DEFAULTS_PATH}: {err}"))?
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Defaults::WITHOUT_FILE);
        }
        Err(err) => return Err(format!("/{DEFAULTS_PATH} in the image: {err}")),
    };
    Ok(Defaults {
        memory_mib: defaults.memory_mib,
        vcpus: defaults.vcpus,
        dev_method: match defaults.dev_method {
            lightvm_image::DevMethod::Xenstore => DevMethod::Xenstore,
            lightvm_image::DevMethod::Noxs => DevMethod::Noxs,
        },
    })
}

/// The kernel at `relative` in the image, if it is one Xen's PV builder loads.
pub fn kernel(root: &Path, relative: &Path) -> Result<PathBuf, String> {
    let path = root.join(relative);
    let shown = Path::new("/").join(relative);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(format!("{} in the image is not a file", shown.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(if relative == Path::new(KERNEL_PATH) {
                format!(
                    "the image has no /{KERNEL_PATH}: not a lightvm app image (make one with \
                     `cargo xtask package APP`)"
                )
            } else {
                format!("the image has no {} (process.args[0])", shown.display())
            });
        }
        Err(err) => return Err(format!("{} in the image: {err}", shown.display())),
    }
    chaos::elf::check_kernel(&path).map_err(|why| {
        format!(
            "{} in the image is not a Xen PV kernel: it {why}",
            shown.display()
        )
    })?;
    Ok(path)
}
