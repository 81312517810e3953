//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! 1. `cargo fmt --check`;
//! 2. clippy with warnings denied, for the host crates and for the guest target;
//! 3. host unit tests, then each fuzz target for a minute (`cargo xtask fuzz`);
//! 4. the Xen notes of every built app;
//! 5. lab integration tests: real guests on real Xen, as dom0 (quick) and as domUs
//!    under xl and chaos in one lab boot (and one without Xenstore for NoXS), each
//!    checked on its exit reason and its console ([`cases`], [`guests`]); a case with a
//!    client also has host code talk to the guest once it is ready (real sockets on
//!    127.0.0.1, through the lab relay's forwards), after which the guest is destroyed
//!    or asked to shut down or reboot; a case with a disk gets a fresh image file, which
//!    the host checks after the guest has ended ([`image`]);
//! 6. lab jobs: shell scripts in dom0 that report their checks in one line protocol
//!    ([`jobs`], [`protocol`]).
//!
//! The host unit tests include [`tidy`]: the repository's checks of what drifts.

mod cases;
mod daytime;
mod guests;
mod image;
mod jobs;
mod protocol;
#[cfg(test)]
mod tidy;

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use self::jobs::JOB_TESTS;
use crate::build::{self, GUEST_RUSTFLAGS, GUEST_TARGET};
use crate::prereq::{self, Need};
use crate::{util, xen_notes};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the lab integration tests.
    #[arg(long, conflicts_with = "lab_only")]
    pub no_lab: bool,
    /// Run only the lab integration tests.
    #[arg(long)]
    pub lab_only: bool,
    /// Run only the lab tests whose name contains TEXT (e.g. `chaos`).
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Seconds each fuzz target runs (0: none).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub fuzz_seconds: u64,
}

impl TestArgs {
    pub fn needs(&self) -> Vec<Need> {
        let mut needs = prereq::LAB_RUN.to_vec();
        if self.no_lab {
            needs.retain(|need| *need != Need::Lab);
        }
        if !self.lab_only {
            needs.push(Need::Lints);
        }
        needs
    }

    pub fn run(&self) -> Result<()> {
        let started = Instant::now();
        if !self.lab_only {
            static_checks()?;
            if self.fuzz_seconds > 0 {
                crate::fuzz::fuzz(self.fuzz_seconds, false, &[])?;
            }
        }
        let images = build::build_apps(&build::all_apps()?)?;
        for image in &images {
            let notes = xen_notes::check(&image.path)
                .map_err(|err| err.context(format!("Xen notes of {}", image.name)))?;
            eprintln!("notes ok: {}: {}", image.name, notes.join(" "));
        }
        if !self.no_lab {
            let wanted = |name: &str| self.filter.as_deref().is_none_or(|f| name.contains(f));
            guests::lab_tests(&images, &wanted)?;
            for test in JOB_TESTS.iter().filter(|test| wanted(test.name)) {
                test.run(&images)?;
            }
            if wanted(DENSITY_SMOKE) {
                match crate::bench::density_smoke() {
                    Ok(()) => eprintln!("PASS {DENSITY_SMOKE}"),
                    Err(err) => anyhow::bail!("FAIL {DENSITY_SMOKE}: {err:#}"),
                }
            }
        }
        eprintln!(
            "test: all passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The density bench's smoke test (`bench::density_smoke`): `cargo xtask bench density`
/// in small, so that it keeps working; no time is judged.
const DENSITY_SMOKE: &str =
    "density smoke: every toolstack to 50 running guests, noop and daytime timed at 0 and 50";

fn static_checks() -> Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Host: the default members (every crate but the guest apps), tests included.
    util::run(util::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Guest target: the framework crates and every app (clippy lints only the
    // packages it is given, not the path dependencies of the apps).
    let mut guest = util::cargo();
    guest.args(["clippy", "--target", GUEST_TARGET]);
    let framework = [
        "arch", "kernel", "xenproto", "netfront", "blkfront", "sysctl", "net",
    ];
    for package in framework
        .map(str::to_owned)
        .into_iter()
        .chain(build::all_apps()?)
    {
        guest.args(["-p", &package]);
    }
    guest.args(["--", "-D", "warnings"]);
    guest.env(
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        GUEST_RUSTFLAGS,
    );
    util::run(&mut guest)?;
    util::run(util::cargo().arg("test"))
}
