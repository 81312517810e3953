//! `target/lab/runs/NONCE`: the files of one lab boot — the per-boot initramfs archive
//! with the job, the run scripts, the control allow-list, the apps (as ELF files and as
//! OCI image archives) and our host tools — removed afterwards.

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::assets::{self, Assets};
use super::process;
use crate::build::{self, GuestImage};
use crate::package;
use crate::toolstack::{self, Toolstack};

/// `target/lab/runs/NONCE`: files of one boot, removed afterwards.
#[derive(Debug)]
pub(super) struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub(super) fn new(nonce: &str) -> Result<Self> {
        let path = assets::lab_dir().join("runs").join(nonce);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        process::register_scratch(&path);
        Ok(Self { path })
    }

    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The base initramfs followed by a small archive with this boot's files (Linux
    /// unpacks concatenated archives in order), so a boot never repacks the big part.
    pub(super) fn initrd(
        &self,
        assets: &Assets,
        env: &str,
        job: &str,
        apps: &[GuestImage],
    ) -> Result<PathBuf> {
        let staging = self.path.join("overlay");
        fs::create_dir_all(staging.join("lab"))?;
        fs::create_dir_all(staging.join("apps"))?;
        fs::write(staging.join("lab/env"), env)?;
        fs::write(staging.join("lab/job"), job)?;
        for toolstack in Toolstack::ALL {
            assets::write_executable(
                &staging.join("lab").join(toolstack.script_name()),
                toolstack.script(),
            )?;
        }
        fs::write(
            staging.join("lab/control-commands"),
            toolstack::control_allow_list(),
        )?;
        // Each app also as an OCI image archive for `ctr image import` (Xenstore, no
        // default arguments).
        fs::create_dir_all(staging.join("oci"))?;
        for app in apps {
            fs::copy(&app.path, staging.join("apps").join(&app.name))
                .with_context(|| format!("copying guest image {}", app.path.display()))?;
            let archive = staging.join("oci").join(format!("{}.tar", app.name));
            package::package(app, package::DEFAULTS, &[], &archive)?;
        }
        // Our host tools (chaos, xendevd) run in dom0 next to xl, and a few examples.
        fs::create_dir_all(staging.join("usr/local/bin"))?;
        for tool in build::build_host_tools()?
            .into_iter()
            .chain(build::build_lab_examples()?)
        {
            let name = tool.file_name().expect("a binary has a name");
            fs::copy(&tool, staging.join("usr/local/bin").join(name))
                .with_context(|| format!("copying host tool {}", tool.display()))?;
        }
        let overlay = self.path.join("overlay.cpio");
        assets::cpio(&staging, &overlay)?;
        let initrd = self.path.join("initrd.cpio");
        let mut out = fs::File::create(&initrd)?;
        std::io::copy(&mut fs::File::open(&assets.initramfs)?, &mut out)?;
        std::io::copy(&mut fs::File::open(&overlay)?, &mut out)?;
        Ok(initrd)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        process::forget_scratch(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}
