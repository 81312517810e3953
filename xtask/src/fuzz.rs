//! `cargo xtask fuzz [--seconds S] [TARGET…]`: the fuzz targets of the `fuzz` crate —
//! what a guest can write, fed to the code that parses it — for S seconds each, side by
//! side.
//!
//! Built with the workspace's `fuzz` profile: the dev profile's overflow checks and
//! debug assertions make an arithmetic slip fail a case, and its panics unwind, so that
//! proptest catches one and shrinks the input that caused it. Before the targets run,
//! the hidden target with a planted panic must come back shrunk to its one minimal
//! input ([`check_shrinking`]): a binary that aborts on a panic, or a harness that no
//! longer shrinks, fails the run instead of hiding the next real bug's input.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use anyhow::{Result, bail};
use clap::Args;

use crate::util;

/// The cargo profile the fuzz binary is built with.
const PROFILE: &str = "fuzz";
/// The hidden target with a planted out-of-bounds index (`fuzz/src/planted.rs`), and
/// what its report must end with: any byte of 100 or more panics, so `[100]` is the
/// one minimal input.
const PLANTED: &str = "planted-panic";
const PLANTED_MINIMAL: &str = "minimal input: [100]";

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
    let mut cmd = fuzz_binary();
    if list {
        cmd.arg("--list");
    } else {
        check_shrinking()?;
        cmd.args(["--seconds", &seconds.to_string()]).args(targets);
    }
    util::run(&mut cmd)
}

/// `cargo run` of the fuzz binary in its profile, arguments to follow.
fn fuzz_binary() -> Command {
    let mut cmd = util::cargo();
    cmd.args(["run", "--quiet", "--profile", PROFILE, "-p", "fuzz", "--"]);
    cmd
}

/// Run the planted-panic target and check that its panic was caught and shrunk to the
/// minimal input.
fn check_shrinking() -> Result<()> {
    let mut cmd = fuzz_binary();
    cmd.args(["--seconds", "60", PLANTED]);
    eprintln!("$ {}", util::display(&cmd));
    let output = cmd.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match shrunk(output.status, &stdout) {
        Ok(report) => {
            eprintln!("fuzz: a planted panic is shrunk: {report}");
            Ok(())
        }
        Err(why) => bail!(
            "fuzz: {why}\n{}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The verdict on a run of the planted-panic target: it must fail (status 1) on the
/// planted panic, shrunk to the minimal input. The report line, or why not.
fn shrunk(status: ExitStatus, stdout: &str) -> Result<String, String> {
    let prefix = format!("fuzz: {PLANTED}: FAILED: ");
    let report = stdout.lines().find(|line| line.starts_with(&prefix));
    if let Some(signal) = status.signal() {
        return Err(format!(
            "the fuzz binary was killed by signal {signal} running the planted panic, \
             instead of catching it and shrinking its input (built with panic = \"abort\"?)"
        ));
    }
    match report {
        Some(line)
            if status.code() == Some(1)
                && line.contains("index out of bounds")
                && line.ends_with(PLANTED_MINIMAL) =>
        {
            Ok(line[prefix.len()..].to_owned())
        }
        Some(line) => Err(format!(
            "the planted panic was not shrunk to `{PLANTED_MINIMAL}` ({status}): {line}"
        )),
        None => Err(format!(
            "the planted panic was not reported ({status}): no line starting `{prefix}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    const GOOD: &str = "fuzz: planted-panic: FAILED: index out of bounds: the len is 100 \
                        but the index is 100 (a panic, last at fuzz/src/planted.rs:21:32); \
                        minimal input: [100]\n";

    #[test]
    fn a_panic_shrunk_to_the_minimal_input_passes() {
        let report = shrunk(exited(1), GOOD).unwrap();
        assert!(report.starts_with("index out of bounds"), "{report}");
    }

    #[test]
    fn anything_else_fails() {
        // Killed by SIGABRT (6), the end of a panic under `panic = "abort"`.
        let aborted = shrunk(ExitStatus::from_raw(6), "").unwrap_err();
        assert!(aborted.contains("killed by signal 6"), "{aborted}");
        let not_minimal = GOOD.replace("[100]", "[7, 100]");
        let err = shrunk(exited(1), &not_minimal).unwrap_err();
        assert!(err.contains("not shrunk"), "{err}");
        let err = shrunk(
            exited(0),
            "fuzz: planted-panic: 512 cases in 1 s, no failure\n",
        )
        .unwrap_err();
        assert!(err.contains("not reported"), "{err}");
        let other_bug = GOOD.replace("index out of bounds", "attempt to add with overflow");
        assert!(shrunk(exited(1), &other_bug).is_err());
    }
}
