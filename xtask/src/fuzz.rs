//! `cargo xtask fuzz [--seconds S] [TARGET…]`: the fuzz targets of the `fuzz` crate —
//! what a guest can write, fed to the code that parses it — for S seconds each, side by
//! side.
//!
//! Built with the dev profile: overflow checks and debug assertions make an arithmetic
//! slip fail a case, panics unwind so proptest can shrink it, and the dependencies are
//! those `cargo test` built already (no second build of the tree for fuzzing).

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
    cmd.args(["run", "--quiet", "-p", "fuzz", "--"]);
    if list {
        cmd.arg("--list");
    } else {
        cmd.args(["--seconds", &seconds.to_string()]).args(targets);
    }
    util::run(&mut cmd)
}
