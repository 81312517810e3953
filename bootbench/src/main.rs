//! bootbench: runs in dom0 and times toolstack commands, the same way for every
//! toolstack, so `cargo xtask bench boot` compares like with like.
//!
//! - `until-exit`: the time a command takes (e.g. `xl create -F noop.cfg`: create →
//!   the guest ran → it is gone).
//! - `until-reply`: the time from starting a command (e.g. `xl create daytime.cfg`) to
//!   the first line a TCP service in the guest sends back.
//!
//! Each run is followed by an untimed `--cleanup` command. One line per run on stdout:
//! `bootbench LABEL RUN MILLISECONDS`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about)]
struct Cli {
    /// A name for the series, repeated on every output line.
    #[arg(long)]
    label: String,
    /// Timed runs.
    #[arg(long, default_value_t = 10)]
    runs: u32,
    /// Untimed runs first, to warm caches.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Shell command run after each run (not timed); `{i}` is the run number.
    #[arg(long)]
    cleanup: Option<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Time COMMAND until it exits (it must exit 0).
    UntilExit {
        /// Shell command; `{i}` is the run number.
        command: String,
    },
    /// Time from starting COMMAND to the first line from ADDR.
    UntilReply {
        /// Where the guest's service listens.
        #[arg(long)]
        addr: SocketAddr,
        /// Give up on a run after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Shell command; `{i}` is the run number.
        command: String,
    },
}

fn shell(command: &str, run: u32) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command.replace("{i}", &run.to_string()))
        .stdin(Stdio::null());
    cmd
}

fn until_exit(command: &str, run: u32) -> Result<Duration> {
    let start = Instant::now();
    let status = shell(command, run)
        .stdout(Stdio::null())
        .status()
        .context("starting the command")?;
    let took = start.elapsed();
    if !status.success() {
        bail!("run {run}: `{command}` failed: {status}");
    }
    Ok(took)
}

fn until_reply(command: &str, run: u32, addr: SocketAddr, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut child = shell(command, run)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the command")?;
    loop {
        if start.elapsed() > timeout {
            let _ = child.kill();
            bail!("run {run}: no reply from {addr} within {timeout:?}");
        }
        // The guest is not up until it answers: refused or unreachable means "not yet".
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok() && line.ends_with('\n') {
                let took = start.elapsed();
                let status = child.wait()?;
                if !status.success() {
                    bail!("run {run}: `{command}` failed: {status}");
                }
                return Ok(took);
            }
        }
        if let Some(status) = child.try_wait()?
            && !status.success()
        {
            bail!("run {run}: `{command}` failed before the guest replied: {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    for run in 0..cli.warmup + cli.runs {
        let took = match &cli.what {
            What::UntilExit { command } => until_exit(command, run)?,
            What::UntilReply {
                addr,
                timeout,
                command,
            } => until_reply(command, run, *addr, Duration::from_secs(*timeout))?,
        };
        if let Some(cleanup) = &cli.cleanup {
            let status = shell(cleanup, run).stdout(Stdio::null()).status()?;
            if !status.success() {
                bail!("run {run}: cleanup `{cleanup}` failed: {status}");
            }
        }
        if run >= cli.warmup {
            println!(
                "bootbench {} {} {:.3}",
                cli.label,
                run - cli.warmup,
                took.as_secs_f64() * 1000.0
            );
        }
    }
    Ok(())
}
