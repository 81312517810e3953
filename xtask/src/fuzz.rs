//! `cargo xtask fuzz [--seconds S] [TARGET…]`: the fuzz targets of the `fuzz` crate —
//! what a guest can write, fed to the code that parses it — for S seconds each.
//!
//! Built with the `fuzz` profile: optimised, but with overflow checks and unwinding
//! panics, so an arithmetic slip fails a case and proptest can shrink it.

use anyhow::Result;
use clap::Args;

use crate::util;

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// List the targets instead.
    #[arg(long)]
    pub list: bool,
    /// Targets to run (default: all).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<String>,
}

impl FuzzArgs {
    pub fn run(&self) -> Result<()> {
        fuzz(self.seconds, self.list, &self.targets)
    }
}

/// Run `targets` (all if empty) for `seconds` each; fail if one finds a failure.
pub fn fuzz(seconds: u64, list: bool, targets: &[String]) -> Result<()> {
    let mut cmd = util::cargo();
    cmd.args(["run", "--quiet", "--profile", "fuzz", "-p", "fuzz", "--"]);
    if list {
        cmd.arg("--list");
    } else {
        cmd.args(["--seconds", &seconds.to_string()]).args(targets);
    }
    util::run(&mut cmd)
}
