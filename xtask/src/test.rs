//! `cargo xtask test` (being written).

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct TestArgs {}

impl TestArgs {
    pub fn run(&self) -> Result<()> {
        anyhow::bail!("test: not written yet")
    }
}
