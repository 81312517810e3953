//! `cargo xtask run`: boot one guest with xl and stream its console until it ends —
//! natively on a Xen dom0, otherwise in the lab — or boot it directly as Xen's dom0.
//! [`run_guest`] is the same thing as a library call, for `cargo xtask test`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::build::{self, GuestImage};
use crate::lab::process::{ChildGuard, read_lines};
use crate::lab::{self, Dom0End, ExecEnd, ExecOptions, Line};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the guest powered off
  2    the guest crashed
  3    the guest rebooted
  4    the guest shut down for another reason (suspend, watchdog, soft_reset)
  5    timeout: the guest was destroyed (or the lab killed)
  1    xtask itself failed (build, lab boot, xl error)
  130  interrupted (Ctrl-C); the guest is destroyed";

#[derive(Debug, Args)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct RunArgs {
    /// The app to build and run (a crate under apps/).
    #[arg(required_unless_present = "image")]
    pub app: Option<String>,
    /// Boot this PV kernel image instead of building an app.
    #[arg(long, conflicts_with = "app", value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub mem: u32,
    /// Give up after this many seconds (lab boot included) and destroy the guest.
    #[arg(long, value_name = "SECS", default_value_t = lab::DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Boot the app directly as Xen's dom0 in QEMU (no Linux, no xl): a quick smoke
    /// test; the guest writes its console with the console_io hypercall.
    #[arg(long)]
    pub dom0: bool,
    /// Also show Xen's and dom0's boot messages (on stderr).
    #[arg(long)]
    pub verbose: bool,
    /// The app's command line (`extra=` in the xl config).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl RunArgs {
    pub fn run(&self) -> Result<ExitCode> {
        let image = match (&self.app, &self.image) {
            (_, Some(path)) => GuestImage {
                name: path
                    .file_name()
                    .context("--image needs a file")?
                    .to_string_lossy()
                    .into_owned(),
                path: path
                    .canonicalize()
                    .with_context(|| format!("{}", path.display()))?,
            },
            (Some(app), None) => build::build_apps(std::slice::from_ref(app))?.remove(0),
            (None, None) => bail!("name an app or give --image"),
        };
        let started = Instant::now();
        let outcome = run_guest(&GuestRun {
            image,
            mem_mib: self.mem,
            args: self.args.clone(),
            timeout: Duration::from_secs(self.timeout),
            dom0: self.dom0,
            echo: true,
            verbose: self.verbose,
        })?;
        eprintln!(
            "run: {} after {:.1} s (exit status {})",
            outcome.exit.describe(),
            started.elapsed().as_secs_f64(),
            outcome.exit.code()
        );
        Ok(ExitCode::from(outcome.exit.code()))
    }
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub image: GuestImage,
    /// Memory in MiB (xl's `memory=`, or `dom0_mem` with `dom0`).
    pub mem_mib: u32,
    /// The guest's command line, joined with spaces.
    pub args: Vec<String>,
    /// Limit for the whole run, a lab boot included.
    pub timeout: Duration,
    /// Boot the image as Xen's dom0 instead of a domU under xl.
    pub dom0: bool,
    /// Copy the console to stdout as it arrives.
    pub echo: bool,
    /// Show Xen's and dom0's messages on stderr.
    pub verbose: bool,
}

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    Poweroff,
    Crash,
    Reboot,
    /// Suspend, watchdog or soft_reset.
    Other,
    /// The time limit passed and the guest (or the lab) was killed.
    Timeout,
}

impl GuestExit {
    /// xtask's exit status for it (see `cargo xtask run --help`).
    pub fn code(self) -> u8 {
        match self {
            GuestExit::Poweroff => 0,
            GuestExit::Crash => 2,
            GuestExit::Reboot => 3,
            GuestExit::Other => 4,
            GuestExit::Timeout => 5,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            GuestExit::Poweroff => "guest powered off",
            GuestExit::Crash => "guest crashed",
            GuestExit::Reboot => "guest rebooted",
            GuestExit::Other => "guest shut down (suspend, watchdog or soft_reset)",
            GuestExit::Timeout => "timed out: the guest was killed",
        }
    }

    /// Read run-guest.sh's exit status.
    fn from_script(status: i32) -> Option<Self> {
        match status {
            0 => Some(GuestExit::Poweroff),
            2 => Some(GuestExit::Crash),
            3 => Some(GuestExit::Reboot),
            4 => Some(GuestExit::Other),
            _ => None,
        }
    }
}

/// What a guest run produced.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    pub exit: GuestExit,
    /// The guest's console output, one `\n` per line (no Xen or dom0 messages).
    #[allow(
        dead_code,
        reason = "for cargo xtask test, which checks what guests print"
    )]
    pub console: String,
}

/// Whether this machine is a Xen control domain, where xl runs natively.
pub fn is_xen_dom0() -> bool {
    std::fs::read_to_string("/proc/xen/capabilities").is_ok_and(|caps| caps.contains("control_d"))
}

/// Boot one guest and wait for it to end: as Xen's dom0 in QEMU with `dom0`, else with
/// xl natively on a Xen dom0 or in the lab.
pub fn run_guest(run: &GuestRun) -> Result<GuestOutcome> {
    for arg in &run.args {
        ensure!(
            !arg.contains(['"', '\\', '\n']),
            "guest argument {arg:?}: quotes, backslashes and newlines cannot pass through an xl config"
        );
    }
    let mut console = Console {
        text: String::new(),
        echo: run.echo,
    };
    let exit = if run.dom0 {
        run_as_dom0(run, &mut console)?
    } else if is_xen_dom0() {
        run_native(run, &mut console)?
    } else {
        run_in_lab(run, &mut console)?
    };
    Ok(GuestOutcome {
        exit,
        console: console.text,
    })
}

/// Collects the console and echoes it live.
struct Console {
    text: String,
    echo: bool,
}

impl Console {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

fn run_as_dom0(run: &GuestRun, console: &mut Console) -> Result<GuestExit> {
    let end = lab::boot_as_dom0(
        &run.image.path,
        &run.args.join(" "),
        run.mem_mib,
        run.timeout,
        run.verbose,
        &mut |line| console.line(line),
    )?;
    Ok(match end {
        Dom0End::Poweroff => GuestExit::Poweroff,
        Dom0End::Crash => GuestExit::Crash,
        Dom0End::Reboot => GuestExit::Reboot,
        Dom0End::Other => GuestExit::Other,
        Dom0End::TimedOut => GuestExit::Timeout,
    })
}

fn run_in_lab(run: &GuestRun, console: &mut Console) -> Result<GuestExit> {
    let name = &run.image.name;
    let mut job = format!(
        "exec sh {} /apps/{name} {}",
        lab::RUN_GUEST_IN_LAB,
        run.mem_mib
    );
    for arg in &run.args {
        job.push(' ');
        job.push_str(&shell_quote(arg));
    }
    job.push('\n');
    let options = ExecOptions {
        timeout: run.timeout,
        verbose: run.verbose,
    };
    // Xen's remarks about the guest explain a crash; show them then.
    let mut xen_lines = Vec::new();
    let end = lab::exec(
        &job,
        std::slice::from_ref(&run.image),
        &options,
        &mut |line| match line {
            Line::Stdout(text) => console.line(text),
            Line::Stderr(text) => eprintln!("{text}"),
            Line::Xen(text) => xen_lines.push(text.to_owned()),
        },
    )?;
    match end {
        ExecEnd::Exited(status) => {
            let exit = GuestExit::from_script(status)
                .with_context(|| format!("run-guest.sh failed in the lab (status {status})"))?;
            if exit == GuestExit::Crash && !run.verbose && !xen_lines.is_empty() {
                eprintln!("Xen said meanwhile:\n{}", xen_lines.join("\n"));
            }
            Ok(exit)
        }
        ExecEnd::TimedOut { .. } => Ok(GuestExit::Timeout),
    }
}

/// xl on this machine: run-guest.sh with its stdout (the console) piped to us and its
/// stderr passed through. On timeout or Ctrl-C it gets SIGTERM and destroys the guest.
fn run_native(run: &GuestRun, console: &mut Console) -> Result<GuestExit> {
    let mut cmd = Command::new("sh");
    // The script travels as `sh -c`'s argument: no file to write or keep current.
    cmd.arg("-c")
        .arg(lab::RUN_GUEST_SH)
        .arg("run-guest.sh")
        .arg(&run.image.path)
        .arg(run.mem_mib.to_string())
        .args(&run.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let child = ChildGuard::spawn(&mut cmd, Duration::from_secs(10))?;
    let lines = read_lines(child.take_stdout().expect("piped"));
    let deadline = Instant::now() + run.timeout;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => console.line(&line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                child.terminate();
                return Ok(GuestExit::Timeout);
            }
        }
    }
    let Some(status) = child.wait_for(deadline.saturating_duration_since(Instant::now()))? else {
        child.terminate();
        return Ok(GuestExit::Timeout);
    };
    let code = status
        .code()
        .with_context(|| format!("run-guest.sh ended by {status}"))?;
    GuestExit::from_script(code).with_context(|| format!("run-guest.sh failed (status {code})"))
}

/// `arg` as one word for `sh`.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}
