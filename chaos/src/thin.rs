//! `chaos`: the command users type. It parses the command line (`chaos::cli`) and, when
//! a chaos daemon runs, hands it `create` (and `daemon status`/`stop`) without loading
//! any Xen library: under emulation, loading libxenctrl and its four kin costs about a
//! quarter of a Rust program's start. Everything else — and `create` when no daemon
//! runs — it leaves to `chaos-xen`, next to it, which it executes in its place with the
//! same arguments.

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::Parser;

use chaos::cli::{self, ByDaemon, Cli, Command, DaemonCommand, Failure};

/// The full chaos, in the same directory.
const FULL: &str = "chaos-xen";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // chaos-xen prints its own when it runs in this process's place.
    let main_reached = cli.verbose.then(cli::since_start_ms).flatten();
    let result = match &cli.command {
        Command::Create(args) if !args.no_daemon && !args.console => {
            chaos::signal::install();
            match cli::create_by_daemon(&cli, args) {
                Ok(ByDaemon::Done(status)) => {
                    if let Some(ms) = main_reached {
                        cli::print_since_start(ms, "main");
                    }
                    Ok(status)
                }
                Ok(ByDaemon::NoDaemon | ByDaemon::Attach(_)) => run_full(),
                Err(failure) => Err(failure),
            }
        }
        Command::Daemon(DaemonCommand::Status) => cli::daemon_status(&cli),
        Command::Daemon(DaemonCommand::Stop) => cli::daemon_stop(&cli),
        _ => run_full(),
    };
    cli::exit_code(result)
}

/// Become `chaos-xen` with the same arguments; returns only if that fails.
fn run_full() -> Result<u8, Failure> {
    let full = std::env::current_exe()
        .map_err(|err| Failure::Failed(format!("cannot find chaos's own path: {err}")))?
        .with_file_name(FULL);
    let err = std::process::Command::new(&full)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(Failure::Failed(format!(
        "cannot run {} (chaos runs it for everything that needs Xen): {err}",
        full.display()
    )))
}
