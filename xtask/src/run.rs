//! `cargo xtask run` (being written).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The app to run.
    pub app: String,
}

impl RunArgs {
    pub fn run(&self) -> Result<ExitCode> {
        anyhow::bail!("run: not written yet")
    }
}
