//! `cargo xtask package APP`: the app as an OCI image archive for containerd
//! (`lightvm_image`'s layout: one layer with `/lightvm/kernel` and
//! `/lightvm/lightvm.json`), without docker or buildah.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;
use lightvm_image::{DevMethod, GuestDefaults, Image, MAX_VCPUS, Written, app_image_name};

use crate::build::{self, GuestImage};
use crate::elf::Elf;
use crate::util::target_dir;

const PACKAGE_HELP: &str = "\
The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/…) whose index
names the image docker.io/lightvm/APP:latest. Import it into containerd and run it with
the lightvm runtime (containerd-shim-lightvm-v1 on containerd's PATH):

  ctr image import target/oci/APP.tar
  ctr run --rm --runtime io.containerd.lightvm.v1 docker.io/lightvm/APP:latest ID [ARGS…]

Where overlayfs is not available, add --snapshotter native to both (or set
CONTAINERD_SNAPSHOTTER=native, as the lab's dom0 does). ARGS given to `ctr run` replace
the image's default arguments (-- ARGS… here). Memory and vCPUs here are defaults the
runtime applies unless the container asks otherwise (e.g. `ctr run --memory-limit`).";

/// What an image gives its guest unless told otherwise (`cargo xtask run`'s memory, one
/// vCPU, Xenstore); the lab's `/oci` archives have these.
pub const DEFAULTS: GuestDefaults = GuestDefaults {
    memory_mib: 32,
    vcpus: 1,
    dev_method: DevMethod::Xenstore,
};

#[derive(Debug, Args)]
#[command(after_help = PACKAGE_HELP)]
pub struct PackageArgs {
    /// The app to build and package: a crate of apps/ by name, or the directory of an app
    /// crate outside the workspace (a path with a `/`).
    #[arg(value_name = "APP|PATH")]
    pub app: String,
    /// Where to write the archive (default: target/oci/APP.tar).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// The guest's memory in MiB, unless the container's spec says otherwise.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULTS.memory_mib,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub mem: u32,
    /// The guest's vCPUs, unless the container's spec says otherwise.
    #[arg(long, value_name = "N", default_value_t = DEFAULTS.vcpus,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS)))]
    pub vcpus: u32,
    /// Give the guest its devices with chaos's NoXS method instead of Xenstore.
    #[arg(long)]
    pub noxs: bool,
    /// The guest's default arguments (the image's `Cmd`), which `ctr run … ARGS` replaces.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl PackageArgs {
    pub fn run(&self) -> Result<()> {
        let defaults = GuestDefaults {
            memory_mib: self.mem,
            vcpus: self.vcpus,
            dev_method: if self.noxs {
                DevMethod::Noxs
            } else {
                DevMethod::Xenstore
            },
        };
        defaults.validate()?;
        let guest = build::build_apps(std::slice::from_ref(&self.app))?.remove(0);
        let out = match &self.out {
            Some(path) => path.clone(),
            None => default_path(&guest.name),
        };
        let written = package(&guest, defaults, &self.args, &out)?;
        println!(
            "{}: {} ({} KiB), manifest {}",
            out.display(),
            app_image_name(&guest.name),
            written.archive_size.div_ceil(1024),
            written.manifest.digest
        );
        eprintln!("import it with: ctr image import {}", out.display());
        Ok(())
    }
}

/// `target/oci/APP.tar`.
pub fn default_path(app: &str) -> PathBuf {
    target_dir().join("oci").join(format!("{app}.tar"))
}

/// Write the image of the built app `guest` to `out`: into a file beside it first, renamed
/// over `out` once complete, so a failure leaves nothing half-written.
pub fn package(
    guest: &GuestImage,
    defaults: GuestDefaults,
    args: &[String],
    out: &Path,
) -> Result<Written> {
    let kernel = fs::read(&guest.path)
        .with_context(|| format!("reading guest image {}", guest.path.display()))?;
    ensure!(
        Elf::is_elf(&kernel),
        "{} is not an ELF file: not a guest kernel",
        guest.path.display()
    );
    let image = Image {
        name: app_image_name(&guest.name),
        kernel: &kernel,
        defaults,
        args: args.to_vec(),
    };
    let dir = out
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = out
        .file_name()
        .with_context(|| format!("{}: not a file name", out.display()))?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(file_name);
    partial_name.push(format!(".partial-{}", std::process::id()));
    let partial = Partial(dir.join(partial_name));
    let file = fs::File::create(&partial.0)
        .with_context(|| format!("creating {}", partial.0.display()))?;
    let mut writer = BufWriter::new(file);
    let written = lightvm_image::write_image(&mut writer, &image)
        .with_context(|| format!("writing {}", partial.0.display()))?;
    let file = writer
        .into_inner()
        .map_err(|err| err.into_error())
        .with_context(|| format!("writing {}", partial.0.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", partial.0.display()))?;
    fs::rename(&partial.0, out)
        .with_context(|| format!("renaming {} to {}", partial.0.display(), out.display()))?;
    std::mem::forget(partial);
    Ok(written)
}

/// A file being written, removed unless it was renamed into place.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(dir: &Path, bytes: &[u8]) -> GuestImage {
        let path = dir.join("kernel");
        fs::write(&path, bytes).unwrap();
        GuestImage {
            name: "hello".to_owned(),
            path,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = target_dir()
            .join("tmp")
            .join(format!("package-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_archive_appears_whole_under_its_name() {
        let dir = scratch("whole");
        let guest = guest(&dir, b"\x7fELF\x02\x01\x01 a kernel");
        let out = dir.join("oci/hello.tar");
        let written = package(&guest, DEFAULTS, &["alpha".to_owned()], &out).unwrap();
        let archive = fs::read(&out).unwrap();
        assert_eq!(archive.len() as u64, written.archive_size);
        assert_eq!(
            entries(&dir.join("oci")),
            ["hello.tar"],
            "no partial file left"
        );
        // Written again over the old one: the same bytes.
        package(&guest, DEFAULTS, &["alpha".to_owned()], &out).unwrap();
        assert!(fs::read(&out).unwrap() == archive);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_leaves_nothing_and_keeps_the_old_archive() {
        let dir = scratch("failure");
        let out = dir.join("hello.tar");
        fs::write(&out, b"the old archive").unwrap();
        let not_elf = guest(&dir, b"#!/bin/sh\n");
        let err = package(&not_elf, DEFAULTS, &[], &out).unwrap_err();
        assert!(format!("{err:#}").contains("is not an ELF file"), "{err:#}");
        let bad_defaults = GuestDefaults {
            vcpus: 0,
            ..DEFAULTS
        };
        let elf = guest(&dir, b"\x7fELF\x02\x01\x01 a kernel");
        let err = package(&elf, bad_defaults, &[], &out).unwrap_err();
        assert!(format!("{err:#}").contains("vcpus is 0"), "{err:#}");
        assert_eq!(fs::read(&out).unwrap(), b"the old archive");
        assert_eq!(
            entries(&dir),
            ["hello.tar", "kernel"],
            "no partial file left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
