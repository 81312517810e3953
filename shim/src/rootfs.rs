//! The image's root file system in the bundle: mounted from containerd's snapshot
//! mounts, and what the shim reads from it (the kernel, `lightvm.json`).

use std::path::{Path, PathBuf};

use chaos::config::DevMethod;
use containerd_shim::protos::api::Mount;
use lightvm_image::{DEFAULTS_PATH, GuestDefaults, KERNEL_PATH};
use nix::mount::MsFlags;
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
        if let Err(err) = mount_one(mount, &target) {
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

/// The flags and the file system's own options of a mount's options.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    flags: MsFlags,
    data: Vec<String>,
}

/// Split containerd's mount options into flags and data (mount(8)'s words).
fn options(options: &[String]) -> Options {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            _ => {
                data.push(option.clone());
                continue;
            }
        };
        flags.insert(set);
        flags.remove(clear);
    }
    Options { flags, data }
}

/// One of containerd's mounts (containerd-shim's `mount_rootfs` forks and waits for
/// the child through its reaper, which this shim does not run: it waits for its own
/// children).
fn mount_one(mount: &Mount, target: &Path) -> nix::Result<()> {
    let Options { flags, data } = options(&mount.options);
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let fs_type = Some(mount.type_.as_str()).filter(|t| !t.is_empty());
    nix::mount::mount(Some(mount.source.as_str()), target, fs_type, flags, data)?;
    // A bind mount takes read-only only when mounted again.
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        let again = flags | MsFlags::MS_REMOUNT;
        if let Err(err) = nix::mount::mount(None::<&str>, target, None::<&str>, again, None::<&str>)
        {
            let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            return Err(err);
        }
    }
    Ok(())
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

/// The image's kernel, `/lightvm/kernel`, if it is one Xen's PV builder loads.
pub fn kernel(root: &Path) -> Result<PathBuf, String> {
    let path = root.join(KERNEL_PATH);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(format!("/{KERNEL_PATH} in the image is not a file")),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the image has no /{KERNEL_PATH}: not a lightvm app image (make one with \
                 `cargo xtask package APP`)"
            ));
        }
        Err(err) => return Err(format!("/{KERNEL_PATH} in the image: {err}")),
    }
    chaos::elf::check_kernel(&path)
        .map_err(|why| format!("/{KERNEL_PATH} in the image is not a Xen PV kernel: it {why}"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(words: &[&str]) -> Options {
        options(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn native_snapshot() {
        assert_eq!(
            split(&["rbind", "rw"]),
            Options {
                flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                data: vec![]
            }
        );
        assert_eq!(
            split(&["bind", "ro"]).flags,
            MsFlags::MS_BIND | MsFlags::MS_RDONLY
        );
        assert_eq!(split(&["ro", "rw"]).flags, MsFlags::empty());
    }

    #[test]
    fn overlay_snapshot() {
        let got = split(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]);
        assert_eq!(got.flags, MsFlags::empty());
        assert_eq!(
            got.data,
            ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
        );
    }
}
