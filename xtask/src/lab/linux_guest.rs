//! The Linux PV guest dom0 has at `/apps/linux`: Debian's kernel and a small busybox
//! initramfs with the guest's front-end modules.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::assets::{copy, cpio, file_name, module_order, only_file, write_executable};

/// Modules of the Linux PV guest (`/apps/linux`): its front ends, which Debian builds as
/// modules.
pub(super) const GUEST_MODULES: &[&str] = &["xen-netfront", "xen-blkfront"];

/// `/init` of the Linux PV guest's initramfs.
pub(super) const LINUX_GUEST_INIT: &str = include_str!("linux-guest-init.sh");

/// Where dom0 has the Linux PV guest: Debian's kernel (the one dom0 runs, which is a
/// PV kernel too) and a busybox initramfs with [`LINUX_GUEST_INIT`].
pub const LINUX_GUEST_DIR: &str = "apps/linux";

/// The Linux PV guest in dom0's [`LINUX_GUEST_DIR`]: Debian's kernel (the bzImage:
/// libxenguest unpacks it) and an initramfs of busybox, [`GUEST_MODULES`] (named so
/// that a glob loads them in dependency order) and [`LINUX_GUEST_INIT`].
pub(super) fn build_linux_guest(root: &Path, staging: &Path) -> Result<()> {
    let dir = staging.join(LINUX_GUEST_DIR);
    fs::create_dir_all(&dir)?;
    copy(
        &only_file(&root.join("boot"), "vmlinuz-")?,
        &dir.join("vmlinuz"),
    )?;
    let guest = staging
        .parent()
        .context("the staging directory has a parent")?
        .join("linux-guest");
    if guest.exists() {
        fs::remove_dir_all(&guest)?;
    }
    for sub in ["bin", "lib/modules"] {
        fs::create_dir_all(guest.join(sub))?;
    }
    copy(&root.join("bin/busybox"), &guest.join("bin/busybox"))?;
    for (index, module) in module_order(root, GUEST_MODULES)?.iter().enumerate() {
        let name = format!(
            "{index:02}-{}",
            file_name(module.to_str().unwrap_or_default())
        );
        copy(module, &guest.join("lib/modules").join(name))?;
    }
    write_executable(&guest.join("init"), LINUX_GUEST_INIT)?;
    cpio(&guest, &dir.join("initrd"))
}
