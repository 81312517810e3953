//! What the workflows need from the machine, in one list ([`REQUIREMENTS`]): the guest
//! target and components of the pinned toolchain, and Debian packages.
//!
//! Every command checks what it needs before it does any work ([`ensure`]). What rustup
//! can add it adds (no root needed; rustup does not add a missing target to an installed
//! toolchain by itself when auto-install is off). Missing Debian packages are installed
//! with apt-get when xtask runs as root; otherwise xtask stops with the one command to
//! run. `cargo xtask doctor` prints the list with what is present.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::build::GUEST_TARGET;
use crate::util;

/// What a command is about to do, each needing its own part of [`REQUIREMENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Build guest images.
    Guests,
    /// `cargo fmt --check` and clippy.
    Lints,
    /// Build (or test) the host tools, which load Xen's libraries on a dom0.
    HostTools,
    /// Boot the Xen lab.
    Lab,
}

/// The needs of a command that boots guests in the lab: images, the dom0 tools, QEMU.
pub const LAB_RUN: &[Need] = &[Need::Guests, Need::HostTools, Need::Lab];

/// Where a requirement comes from, and so how it is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `rustup target add NAME` (for the toolchain of `rust-toolchain.toml`).
    RustupTarget,
    /// `rustup component add NAME`.
    RustupComponent,
    /// `apt-get install NAME`.
    Debian,
}

/// How to tell that a requirement is there.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// A directory below the toolchain's sysroot.
    SysrootDir(&'static str),
    /// A file below the toolchain's sysroot.
    SysrootFile(&'static str),
    /// A program on PATH.
    Program(&'static str),
    /// Files that must all exist.
    Files(&'static [&'static str]),
}

/// One thing a workflow needs from the machine.
#[derive(Debug)]
pub struct Requirement {
    pub name: &'static str,
    pub source: Source,
    /// What it is for, for `doctor` and error messages.
    pub why: &'static str,
    pub needed_for: &'static [Need],
    probe: Probe,
}

/// Everything any workflow needs, in the order it is checked.
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: GUEST_TARGET,
        source: Source::RustupTarget,
        why: "the bare-metal target every guest image builds for",
        needed_for: &[Need::Guests],
        probe: Probe::SysrootDir("lib/rustlib/x86_64-unknown-none/lib"),
    },
    Requirement {
        name: "rustfmt",
        source: Source::RustupComponent,
        why: "`cargo fmt --check` in `cargo xtask test`",
        needed_for: &[Need::Lints],
        probe: Probe::SysrootFile("bin/rustfmt"),
    },
    Requirement {
        name: "clippy",
        source: Source::RustupComponent,
        why: "the lints of `cargo xtask test`",
        needed_for: &[Need::Lints],
        probe: Probe::SysrootFile("bin/cargo-clippy"),
    },
    Requirement {
        name: "libxen-dev",
        source: Source::Debian,
        why: "Xen 4.17's headers (`cargo xtask codegen`) and the libraries chaos and xendevd load on a dom0",
        needed_for: &[Need::HostTools],
        probe: Probe::Files(&[
            "/usr/lib/x86_64-linux-gnu/libxenctrl.so",
            "/usr/lib/x86_64-linux-gnu/libxenguest.so",
            "/usr/lib/x86_64-linux-gnu/libxenstore.so",
            "/usr/lib/x86_64-linux-gnu/libxenevtchn.so",
            "/usr/lib/x86_64-linux-gnu/libxengnttab.so",
        ]),
    },
    Requirement {
        name: "qemu-system-x86",
        source: Source::Debian,
        why: "runs the Xen lab (qemu-system-x86_64)",
        needed_for: &[Need::Lab],
        probe: Probe::Program("qemu-system-x86_64"),
    },
    Requirement {
        name: "cpio",
        source: Source::Debian,
        why: "packs the lab's dom0 initramfs",
        needed_for: &[Need::Lab],
        probe: Probe::Program("cpio"),
    },
    Requirement {
        name: "e2fsprogs",
        source: Source::Debian,
        why: "makes the lab's disk of containerd programs (mke2fs -d)",
        needed_for: &[Need::Lab],
        probe: Probe::Files(&["/sbin/mke2fs"]),
    },
    Requirement {
        name: "xz-utils",
        source: Source::Debian,
        why: "unpacks Debian's dom0 kernel for Xen's domain builder",
        needed_for: &[Need::Lab],
        probe: Probe::Program("xz"),
    },
];

/// The toolchain `rust-toolchain.toml` selects: its sysroot, read once.
fn sysroot() -> Result<&'static Path> {
    static SYSROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = SYSROOT.get() {
        return Ok(path);
    }
    let out = util::cargo_env(Command::new("rustc"))
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run `rustc --print sysroot`")?;
    if !out.status.success() {
        bail!(
            "`rustc --print sysroot` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(SYSROOT.get_or_init(|| path))
}

impl Requirement {
    fn present(&self) -> Result<bool> {
        Ok(match self.probe {
            Probe::SysrootDir(rel) => sysroot()?.join(rel).is_dir(),
            Probe::SysrootFile(rel) => sysroot()?.join(rel).is_file(),
            Probe::Program(program) => util::which(program).is_some(),
            Probe::Files(files) => files.iter().all(|file| Path::new(file).exists()),
        })
    }

    fn serves(&self, needs: &[Need]) -> bool {
        self.needed_for.iter().any(|need| needs.contains(need))
    }

    fn kind(&self) -> &'static str {
        match self.source {
            Source::RustupTarget => "rustup target",
            Source::RustupComponent => "rustup component",
            Source::Debian => "Debian package",
        }
    }
}

/// What to do about the missing requirements.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Commands to run, in order.
    pub steps: Vec<Vec<String>>,
    /// Why xtask cannot go on (with the command to run), if it cannot: then it runs
    /// none of the steps.
    pub stop: Option<String>,
}

/// The command that installs Debian `packages`, as a user types it (with `sudo` unless
/// `root`).
fn apt_install(packages: &[&str], root: bool) -> Vec<String> {
    let mut cmd: Vec<String> = if root { vec![] } else { vec!["sudo".into()] };
    cmd.extend(
        ["apt-get", "install", "-y", "--no-install-recommends"]
            .iter()
            .chain(packages)
            .map(|s| s.to_string()),
    );
    cmd
}

/// Decide what to do about `missing`, as `root` or not, with rustup on PATH or not.
/// rustup needs no root, so its steps are planned either way; Debian packages are
/// installed only by root, and otherwise xtask stops before doing anything, naming
/// the command to run.
pub fn plan(missing: &[&Requirement], root: bool, rustup: bool) -> Plan {
    let names = |source: Source| -> Vec<&str> {
        missing
            .iter()
            .filter(|req| req.source == source)
            .map(|req| req.name)
            .collect()
    };
    let (targets, components, packages) = (
        names(Source::RustupTarget),
        names(Source::RustupComponent),
        names(Source::Debian),
    );
    let mut steps = Vec::new();
    let mut stops = Vec::new();
    for (verb, names) in [("target", &targets), ("component", &components)] {
        if names.is_empty() {
            continue;
        }
        let cmd: Vec<String> = ["rustup", verb, "add"]
            .iter()
            .chain(names.iter())
            .map(|s| s.to_string())
            .collect();
        if rustup {
            steps.push(cmd);
        } else {
            stops.push(format!(
                "the Rust toolchain lacks the {verb} {} and there is no rustup to add it: \
                 install it the way this toolchain was installed, or install rustup and \
                 run `{}`",
                names.join(", "),
                cmd.join(" ")
            ));
        }
    }
    if !packages.is_empty() {
        if root {
            steps.push(apt_install(&packages, true));
        } else {
            stops.push(format!(
                "missing Debian packages: {} (xtask installs them when run as root). Run:\n    {}",
                packages.join(", "),
                apt_install(&packages, false).join(" ")
            ));
        }
    }
    Plan {
        steps,
        stop: (!stops.is_empty()).then(|| stops.join("\n")),
    }
}

/// The requirements of `needs` that are missing.
fn missing(needs: &[Need]) -> Result<Vec<&'static Requirement>> {
    let mut missing = Vec::new();
    for req in REQUIREMENTS.iter().filter(|req| req.serves(needs)) {
        if !req.present()? {
            missing.push(req);
        }
    }
    Ok(missing)
}

/// Make sure everything `needs` asks for is there, adding what is missing where xtask
/// may (see [`plan`]); fail, before any work is done, where it may not. Quiet when
/// nothing is missing.
pub fn ensure(needs: &[Need]) -> Result<()> {
    let missing = missing(needs)?;
    if missing.is_empty() {
        return Ok(());
    }
    let plan = plan(&missing, util::is_root(), util::which("rustup").is_some());
    if let Some(stop) = plan.stop {
        bail!("{stop}");
    }
    let count = plan.steps.len();
    for (index, step) in plan.steps.iter().enumerate() {
        run_step(&format!("[{}/{count}]", index + 1), step)?;
    }
    let still: Vec<&str> = self::missing(needs)?.iter().map(|req| req.name).collect();
    if !still.is_empty() {
        bail!(
            "still missing after installing: {} (`cargo xtask doctor` shows what is looked for)",
            still.join(", ")
        );
    }
    Ok(())
}

/// Run one set-up command with a progress line; its output is shown only if it fails.
fn run_step(label: &str, step: &[String]) -> Result<()> {
    let line = step.join(" ");
    eprintln!("setup {label}: {line}");
    let started = Instant::now();
    if step[0] == "apt-get" {
        with_fresh_apt_lists(|| run_quietly(step))
    } else {
        run_quietly(step)
    }
    .with_context(|| format!("`{line}` failed"))?;
    eprintln!(
        "setup {label}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Run `apt_work`; if it fails, refresh apt's package lists (as root; a fresh machine
/// may have none, an old one stale ones) and run it once more.
pub fn with_fresh_apt_lists<T>(mut apt_work: impl FnMut() -> Result<T>) -> Result<T> {
    let first = match apt_work() {
        Ok(done) => return Ok(done),
        Err(err) => err,
    };
    if !util::is_root() {
        return Err(
            first.context("apt's package lists may be missing or old: `sudo apt-get update`")
        );
    }
    eprintln!("setup: that failed; apt-get update, then once more");
    run_quietly(&["apt-get".into(), "update".into()])
        .and_then(|()| apt_work())
        .with_context(|| format!("also after apt-get update (at first: {first:#})"))
}

/// Run `cmd` (in the project root, the toolchain's environment cleaned as for cargo)
/// with its output captured; the end of it is the error if it fails.
fn run_quietly(cmd: &[String]) -> Result<()> {
    let mut command = util::cargo_env(Command::new(&cmd[0]));
    command
        .args(&cmd[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    let out = command
        .output()
        .with_context(|| format!("cannot start {}", cmd[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    bail!(
        "{} ({}):\n{}",
        cmd.join(" "),
        out.status,
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

#[derive(Debug, Args)]
pub struct DoctorArgs {}

impl DoctorArgs {
    /// Print every requirement and whether it is there; exit 1 if one is missing.
    pub fn run(&self) -> Result<ExitCode> {
        let version = util::cargo_env(Command::new("rustc"))
            .arg("--version")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_default();
        println!(
            "What cargo xtask needs ({version} in {}):",
            sysroot()?.display()
        );
        let mut missing = Vec::new();
        for req in REQUIREMENTS {
            let present = req.present()?;
            if !present {
                missing.push(req);
            }
            println!(
                "  {:<8} {:<20} {:<17} {}",
                if present { "ok" } else { "MISSING" },
                req.name,
                req.kind(),
                req.why
            );
        }
        if missing.is_empty() {
            println!("Everything is there.");
            return Ok(ExitCode::SUCCESS);
        }
        let plan = plan(&missing, util::is_root(), util::which("rustup").is_some());
        println!("{} missing.", missing.len());
        match plan.stop {
            Some(stop) if plan.steps.is_empty() => println!("{stop}"),
            Some(stop) => println!("{stop}\nThen each command adds the rest itself:"),
            None => println!("Each command adds what it needs before it starts:"),
        }
        for step in &plan.steps {
            println!("    {}", step.join(" "));
        }
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str) -> &'static Requirement {
        REQUIREMENTS
            .iter()
            .find(|req| req.name == name)
            .expect("known requirement")
    }

    #[test]
    fn a_user_is_told_the_one_command_and_nothing_runs_as_root() {
        let missing = [req(GUEST_TARGET), req("libxen-dev"), req("qemu-system-x86")];
        let plan = plan(&missing, false, true);
        // rustup needs no root: once the packages are there, xtask adds the target.
        assert_eq!(
            plan.steps,
            vec![vec!["rustup", "target", "add", "x86_64-unknown-none"]]
        );
        let stop = plan.stop.expect("the packages need root");
        assert!(
            stop.ends_with(
                "\n    sudo apt-get install -y --no-install-recommends libxen-dev qemu-system-x86"
            ),
            "{stop}"
        );
    }

    #[test]
    fn root_installs_everything_in_order() {
        let missing = [
            req("cpio"),
            req("clippy"),
            req(GUEST_TARGET),
            req("rustfmt"),
        ];
        let plan = plan(&missing, true, true);
        assert_eq!(plan.stop, None);
        assert_eq!(
            plan.steps,
            vec![
                vec!["rustup", "target", "add", "x86_64-unknown-none"],
                vec!["rustup", "component", "add", "clippy", "rustfmt"],
                vec![
                    "apt-get",
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "cpio"
                ],
            ]
        );
    }

    #[test]
    fn without_rustup_the_target_cannot_be_added() {
        let plan = plan(&[req(GUEST_TARGET)], true, false);
        assert!(plan.steps.is_empty());
        let stop = plan.stop.unwrap();
        assert!(
            stop.contains("lacks the target x86_64-unknown-none and there is no rustup"),
            "{stop}"
        );
    }

    #[test]
    fn nothing_missing_nothing_to_do() {
        assert_eq!(
            plan(&[], false, false),
            Plan {
                steps: vec![],
                stop: None
            }
        );
    }

    #[test]
    fn every_need_has_requirements_and_every_requirement_a_need() {
        for need in [Need::Guests, Need::Lints, Need::HostTools, Need::Lab] {
            assert!(
                REQUIREMENTS.iter().any(|req| req.serves(&[need])),
                "{need:?}"
            );
        }
        for req in REQUIREMENTS {
            assert!(!req.needed_for.is_empty(), "{}", req.name);
        }
    }
}
