//! `cargo xtask build`: guest images for the PV target, of the apps in `apps/` and of
//! app crates outside the workspace (`cargo xtask new PATH`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
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
    /// Apps to build: crate names under `apps/`, or paths of app crates outside the
    /// workspace (anything with a `/`, e.g. `./myapp`); all of `apps/` if none is given.
    #[arg(value_name = "APP|PATH")]
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

/// Where an app's crate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// A member of the workspace: `apps/NAME`.
    InTree(String),
    /// A crate of its own outside the workspace (its own `[workspace]`), depending on the
    /// framework by path; built with `--manifest-path` into `target/external/NAME`.
    External { name: String, dir: PathBuf },
}

impl AppSource {
    /// An argument naming an app: a bare name is a crate of `apps/`; anything with a `/`
    /// (or `.`, `..`) is the directory of a crate.
    pub fn parse(arg: &str) -> Result<Self> {
        if !is_path(arg) {
            let known = all_apps()?;
            ensure!(
                known.iter().any(|name| name == arg),
                "no app named `{arg}` in apps/ (known: {}); for a crate elsewhere give its \
                 path, e.g. ./{arg}",
                known.join(", ")
            );
            return Ok(Self::InTree(arg.to_owned()));
        }
        let dir = Path::new(arg)
            .canonicalize()
            .with_context(|| format!("app directory {arg}"))?;
        let manifest = dir.join("Cargo.toml");
        ensure!(
            manifest.is_file(),
            "{arg} is not an app crate: there is no {}",
            manifest.display()
        );
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let name = package_name(&text)
            .with_context(|| format!("{} names no package", manifest.display()))?;
        let apps = project_root().join("apps");
        if dir.parent() == Some(apps.as_path()) {
            return Ok(Self::InTree(name));
        }
        Ok(Self::External { name, dir })
    }

    pub fn name(&self) -> &str {
        match self {
            Self::InTree(name) | Self::External { name, .. } => name,
        }
    }
}

/// Whether an app argument is a path rather than a crate name of `apps/`.
pub fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg == "." || arg == ".."
}

/// `name = "…"` of the `[package]` table of a Cargo.toml (plain TOML as `cargo xtask new`
/// and `cargo new` write it).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    None
}

/// Build the apps (crate names of `apps/` or crate paths, see [`AppSource::parse`]) with
/// the release profile: the in-tree ones in one cargo invocation, each external crate in
/// one of its own. Images come back in the order asked.
pub fn build_apps(apps: &[String]) -> Result<Vec<GuestImage>> {
    let sources = apps
        .iter()
        .map(|arg| AppSource::parse(arg))
        .collect::<Result<Vec<_>>>()?;
    let in_tree: Vec<&str> = sources
        .iter()
        .filter_map(|source| match source {
            AppSource::InTree(name) => Some(name.as_str()),
            AppSource::External { .. } => None,
        })
        .collect();
    if !in_tree.is_empty() {
        let mut cmd = guest_cargo();
        for name in &in_tree {
            cmd.args(["--package", name]);
        }
        util::run(&mut cmd)?;
    }
    let mut images = Vec::new();
    for source in &sources {
        let path = match source {
            AppSource::InTree(name) => target_dir().join(GUEST_TARGET).join("release").join(name),
            AppSource::External { name, dir } => {
                let target = external_target_dir(name);
                let mut cmd = guest_cargo();
                cmd.arg("--manifest-path")
                    .arg(dir.join("Cargo.toml"))
                    .arg("--target-dir")
                    .arg(&target);
                util::run(&mut cmd)?;
                target.join(GUEST_TARGET).join("release").join(name)
            }
        };
        if !path.is_file() {
            bail!(
                "cargo built {} but left no image at {} (is it a binary crate?)",
                source.name(),
                path.display()
            );
        }
        images.push(GuestImage {
            name: source.name().to_owned(),
            path,
        });
    }
    Ok(images)
}

/// `target/external/NAME`: the target directory of an app crate outside the workspace.
pub fn external_target_dir(name: &str) -> PathBuf {
    target_dir().join("external").join(name)
}

/// `cargo build` of guest code: release profile, the guest target and its flags.
fn guest_cargo() -> std::process::Command {
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--target", GUEST_TARGET]);
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        GUEST_RUSTFLAGS,
    );
    cmd
}

/// A host program that runs in dom0: its crate directory and its package, whose binary
/// has the same name.
#[derive(Debug, Clone, Copy)]
struct HostTool {
    dir: &'static str,
    package: &'static str,
}

/// Host programs that run in dom0: the toolstack, the device daemon, the boot-time
/// meter, the relay's dom0 end, the containerd shim.
const HOST_TOOLS: [HostTool; 5] = [
    HostTool {
        dir: "chaos",
        package: "chaos",
    },
    HostTool {
        dir: "xendevd",
        package: "xendevd",
    },
    HostTool {
        dir: "bootbench",
        package: "bootbench",
    },
    HostTool {
        dir: "labrelay",
        package: "labrelay",
    },
    HostTool {
        dir: "shim",
        package: "containerd-shim-lightvm-v1",
    },
];

/// Build the host tools that exist in the workspace (release, for this machine, which
/// runs the same Debian as the lab's dom0). Returns their binaries.
pub fn build_host_tools() -> Result<Vec<PathBuf>> {
    let present: Vec<HostTool> = HOST_TOOLS
        .into_iter()
        .filter(|tool| project_root().join(tool.dir).join("src/main.rs").is_file())
        .collect();
    if present.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = util::cargo();
    cmd.args(["build", "--release", "--bins"]);
    for tool in &present {
        cmd.args(["--package", tool.package]);
    }
    util::run(&mut cmd)?;
    Ok(present
        .iter()
        .map(|tool| target_dir().join("release").join(tool.package))
        .collect())
}

/// Examples that run in dom0 too, as `(package, example)`: `podnet` drives the shim's
/// pod networking (a guest's vif redirected to a network namespace's eth0) for
/// `podnet-lab.sh`.
const LAB_EXAMPLES: [(&str, &str); 1] = [("containerd-shim-lightvm-v1", "podnet")];

/// Build [`LAB_EXAMPLES`] (release, for this machine). Returns their binaries.
pub fn build_lab_examples() -> Result<Vec<PathBuf>> {
    let mut cmd = util::cargo();
    cmd.args(["build", "--release"]);
    for (package, example) in LAB_EXAMPLES {
        cmd.args(["--package", package, "--example", example]);
    }
    util::run(&mut cmd)?;
    Ok(LAB_EXAMPLES
        .iter()
        .map(|(_, example)| target_dir().join("release/examples").join(example))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        let manifest = "[workspace]\nname = \"no\"\n\n[package]\nversion = \"1\"\nname = \"myapp\"\n[dependencies]\nname = \"x\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("myapp"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }

    /// Each host tool's directory is a crate of the workspace whose package is the named
    /// one and has a binary of that name: what `build_host_tools` builds and copies.
    #[test]
    fn host_tools_are_packages_with_a_binary_of_their_name() {
        for tool in HOST_TOOLS {
            let manifest = project_root().join(tool.dir).join("Cargo.toml");
            let text = std::fs::read_to_string(&manifest).unwrap();
            assert_eq!(
                package_name(&text).as_deref(),
                Some(tool.package),
                "{}",
                manifest.display()
            );
            assert!(
                project_root().join(tool.dir).join("src/main.rs").is_file(),
                "{}: no src/main.rs",
                tool.dir
            );
        }
    }

    #[test]
    fn names_and_paths() {
        assert!(!is_path("hello"));
        assert!(is_path("./hello"));
        assert!(is_path("/tmp/x/app"));
        assert!(is_path("."));
        assert_eq!(
            AppSource::parse("hello").unwrap(),
            AppSource::InTree("hello".into())
        );
        let err = AppSource::parse("no-such-app").unwrap_err().to_string();
        assert!(err.contains("no app named `no-such-app` in apps/"), "{err}");
        let err = AppSource::parse("/nonexistent/app").unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/app"), "{err:#}");
        let apps_hello = project_root().join("apps/hello");
        assert_eq!(
            AppSource::parse(apps_hello.to_str().unwrap()).unwrap(),
            AppSource::InTree("hello".into())
        );
    }
}
