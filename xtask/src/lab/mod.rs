//! The Xen lab: Xen 4.17 and a Debian dom0 under QEMU (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Boot a fresh lab, run the shell script FILE in dom0, power off.
    Exec,
}

impl LabCmd {
    pub fn run(&self) -> Result<ExitCode> {
        anyhow::bail!("lab: not written yet")
    }
}
