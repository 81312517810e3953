//! `cargo xtask`: every workflow of the project behind one command.
//!
//! - `build [APP…]`: guest images at `target/x86_64-unknown-none/release/APP`.
//! - `run APP [--mem MIB] [--forward H:G]… [--disk FILE[:ro]]… [-- ARGS…]`: boot APP on
//!   Xen (natively in a Xen dom0, otherwise in the lab, with its ports reachable on the
//!   host and image files of the host as its disks) and stream its console.
//! - `new NAME|PATH`: a new app crate, in `apps/` or outside the workspace.
//! - `package APP [--mem MIB] [--vcpus N] [--noxs] [--out PATH] [-- ARGS…]`: APP as an
//!   OCI image archive (`target/oci/APP.tar`) for `ctr image import`.
//! - `lab exec FILE` / `lab shell`: the Xen lab, real Xen and a Debian dom0 under QEMU.
//! - `test`: format check, clippy, host unit tests, lab integration tests.
//! - `codegen [--check]`: regenerate (or check) the checked-in Xen library bindings.
//! - `bench boot`, `bench density`: boot times per toolstack in the lab, with ratios to
//!   xl; creation time as guests accumulate.
//! - `fuzz [--seconds S] [TARGET…]`: the fuzz targets (what guests write, parsed).
//! - `doctor`: what the workflows need from the machine, and what of it is missing.
//!
//! Each command first makes sure the machine has what it needs ([`prereq`]).

mod bench;
mod build;
mod codegen;
mod disk;
mod elf;
mod fuzz;
mod lab;
mod new;
mod package;
mod prereq;
mod run;
mod test;
mod toolstack;
mod util;
mod xen_notes;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
enum Cli {
    /// Build guest app images.
    Build(build::BuildArgs),
    /// Build an app and boot it on Xen, streaming its console until it ends.
    Run(run::RunArgs),
    /// Create an app crate: apps/NAME, or a crate at PATH outside the workspace.
    New(new::NewArgs),
    /// Build an app and write it as an OCI image archive for containerd
    /// (target/oci/APP.tar, docker.io/lightvm/APP:latest).
    Package(package::PackageArgs),
    /// The Xen lab: Xen 4.17 and a Debian dom0 under QEMU.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// Format check, clippy, host unit tests and lab integration tests.
    Test(test::TestArgs),
    /// Regenerate checked-in generated code (the Xen library bindings), or --check it.
    Codegen(codegen::CodegenArgs),
    /// Benchmarks in the lab.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Fuzz what guests write against the code that parses it (NoXS pages, back-end
    /// rings), for a given time per target.
    Fuzz(fuzz::FuzzArgs),
    /// What the workflows need from this machine (toolchain parts, Debian packages) and
    /// what of it is missing; exit 1 if something is.
    Doctor(prereq::DoctorArgs),
}

impl Cli {
    /// What the command needs from the machine before it starts.
    fn needs(&self) -> Vec<prereq::Need> {
        use prereq::{LAB_RUN, Need};
        match self {
            Cli::Build(_) | Cli::Package(_) => vec![Need::Guests],
            Cli::Run(args) => args.needs(),
            Cli::New(_) | Cli::Doctor(_) => vec![],
            Cli::Lab(lab::LabCmd::Prepare) => vec![Need::Lab],
            Cli::Lab(_) | Cli::Bench(_) => LAB_RUN.to_vec(),
            Cli::Test(args) => args.needs(),
            Cli::Codegen(_) | Cli::Fuzz(_) => vec![Need::HostTools],
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = prereq::ensure(&cli.needs()) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli {
        Cli::Build(args) => args.run().map(|_| ExitCode::SUCCESS),
        Cli::Run(args) => args.run(),
        Cli::New(args) => args.run().map(|()| ExitCode::SUCCESS),
        Cli::Package(args) => args.run().map(|()| ExitCode::SUCCESS),
        Cli::Lab(cmd) => cmd.run(),
        Cli::Test(args) => args.run().map(|()| ExitCode::SUCCESS),
        Cli::Codegen(args) => args.run().map(|()| ExitCode::SUCCESS),
        Cli::Bench(cmd) => cmd.run().map(|()| ExitCode::SUCCESS),
        Cli::Fuzz(args) => args.run().map(|()| ExitCode::SUCCESS),
        Cli::Doctor(args) => args.run(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
