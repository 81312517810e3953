//! `cargo xtask build`: guest images for the PV target.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{self, project_root, target_dir};

/// The bare-metal target every guest builds for.
pub const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Codegen flags a PV guest needs: linked at the top 2 GiB of the address space
/// (`linker.ld`), position dependent. The arch crate's build script puts the directory
/// of `linker.ld` on the linker's search path.
pub const GUEST_RUSTFLAGS: &str =
    "-C link-arg=-Tlinker.ld -C relocation-model=static -C code-model=kernel";

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Apps to build (crate names under `apps/`); all of them if none is given.
    pub apps: Vec<String>,
}

/// A built guest image.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub name: String,
    pub path: PathBuf,
}

impl BuildArgs {
    pub fn run(&self) -> Result<Vec<GuestImage>> {
        let names = if self.apps.is_empty() {
            all_apps()?
        } else {
            self.apps.clone()
        };
        let images = build_apps(&names)?;
        for image in &images {
            eprintln!("built {}", image.path.display());
        }
        Ok(images)
    }
}

/// The app crates in `apps/`, sorted by name.
pub fn all_apps() -> Result<Vec<String>> {
    let dir = project_root().join("apps");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Build the named apps in one cargo invocation (release profile).
pub fn build_apps(names: &[String]) -> Result<Vec<GuestImage>> {
    let known = all_apps()?;
    for name in names {
        if !known.contains(name) {
            bail!(
                "no app named `{name}` in apps/ (known: {})",
                known.join(", ")
            );
        }
    }
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--target", GUEST_TARGET]);
    for name in names {
        cmd.args(["--package", name]);
    }
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        GUEST_RUSTFLAGS,
    );
    util::run(&mut cmd)?;
    let out_dir = target_dir().join(GUEST_TARGET).join("release");
    Ok(names
        .iter()
        .map(|name| GuestImage {
            name: name.clone(),
            path: out_dir.join(name),
        })
        .collect())
}
