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
    /// Give up on the guest after this many seconds and destroy it (exit status 5). In
    /// the lab the time counts from its `xl create`; the lab boot has its own allowance.
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
    /// Limit for the guest; in the lab it counts from its `xl create` (the boot has an
    /// allowance of its own).
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
    run_guests(std::slice::from_ref(run))
        .pop()
        .expect("one outcome per run")
}

/// Boot several guests one after the other, each as [`run_guest`] would, but all the
/// lab ones in a single lab boot (about 1 s per guest instead of 9 s). In the lab each
/// guest's `timeout` counts from its `xl create`; the boot has its own allowance.
pub fn run_guests(runs: &[GuestRun]) -> Vec<Result<GuestOutcome>> {
    let native = is_xen_dom0();
    let mut outcomes: Vec<Option<Result<GuestOutcome>>> = runs.iter().map(|_| None).collect();
    let mut in_lab = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        if let Err(err) = check_args(run) {
            outcomes[index] = Some(Err(err));
        } else if run.dom0 {
            outcomes[index] = Some(run_as_dom0(run));
        } else if native {
            outcomes[index] = Some(run_native(run));
        } else {
            in_lab.push(index);
        }
    }
    if !in_lab.is_empty() {
        let batch: Vec<&GuestRun> = in_lab.iter().map(|&index| &runs[index]).collect();
        match run_in_lab(&batch) {
            Ok(results) => {
                for (index, result) in in_lab.into_iter().zip(results) {
                    outcomes[index] = Some(result);
                }
            }
            Err(err) => {
                // The lab itself failed: every guest in it shares the error.
                let message = format!("{err:#}");
                for index in in_lab {
                    outcomes[index] = Some(Err(anyhow::anyhow!("{message}")));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every run has an outcome"))
        .collect()
}

fn check_args(run: &GuestRun) -> Result<()> {
    for arg in &run.args {
        ensure!(
            !arg.contains(['"', '\\', '\n']),
            "guest argument {arg:?}: quotes, backslashes and newlines cannot pass through an xl config"
        );
    }
    Ok(())
}

/// Collects the console and echoes it live.
#[derive(Debug)]
struct Console {
    text: String,
    echo: bool,
}

impl Console {
    fn new(echo: bool) -> Self {
        Self {
            text: String::new(),
            echo,
        }
    }

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

fn run_as_dom0(run: &GuestRun) -> Result<GuestOutcome> {
    let mut console = Console::new(run.echo);
    let end = lab::boot_as_dom0(
        &run.image.path,
        &run.args.join(" "),
        run.mem_mib,
        run.timeout,
        run.verbose,
        &mut |line| console.line(line),
    )?;
    let exit = match end {
        Dom0End::Poweroff => GuestExit::Poweroff,
        Dom0End::Crash => GuestExit::Crash,
        Dom0End::Reboot => GuestExit::Reboot,
        Dom0End::Other => GuestExit::Other,
        Dom0End::TimedOut => GuestExit::Timeout,
    };
    Ok(GuestOutcome {
        exit,
        console: console.text,
    })
}

/// How long a lab may take to boot before the first guest starts (it takes ~9 s
/// under TCG here; CI machines can be much slower).
const LAB_BOOT_ALLOWANCE: Duration = Duration::from_secs(300);

/// One lab boot whose job runs run-guest.sh for each guest in turn, each under busybox
/// `timeout` (whose SIGTERM makes the script destroy its guest). A line with a marker
/// and the guest's index precedes each guest and one with its status follows, so the
/// console lines are told apart.
fn run_in_lab(runs: &[&GuestRun]) -> Result<Vec<Result<GuestOutcome>>> {
    let marker = format!("LAB-GUEST-{}", lab::nonce());
    // Each image under a name of its own, even if two share a file name.
    let mut images: Vec<GuestImage> = Vec::new();
    let mut job = String::from("cd /\n");
    for (index, run) in runs.iter().enumerate() {
        let name = match images.iter().find(|image| image.path == run.image.path) {
            Some(image) => image.name.clone(),
            None => {
                let mut name = run.image.name.clone();
                if images.iter().any(|image| image.name == name) {
                    name = format!("{name}-{index}");
                }
                images.push(GuestImage {
                    name: name.clone(),
                    path: run.image.path.clone(),
                });
                name
            }
        };
        let mut command = format!(
            "timeout -s TERM {} sh {} /apps/{name} {}",
            run.timeout.as_secs().max(1),
            lab::RUN_GUEST_IN_LAB,
            run.mem_mib
        );
        for arg in &run.args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        job.push_str(&format!(
            "echo '{marker} {index} begin'\n{command}\necho \"{marker} {index} end $?\"\n"
        ));
    }
    let options = ExecOptions {
        timeout: LAB_BOOT_ALLOWANCE + runs.iter().map(|run| run.timeout).sum::<Duration>(),
        verbose: runs.iter().any(|run| run.verbose),
    };

    let mut consoles: Vec<Console> = runs.iter().map(|run| Console::new(run.echo)).collect();
    let mut statuses: Vec<Option<i32>> = vec![None; runs.len()];
    // Xen's remarks while a guest runs explain a crash; they are shown then.
    let mut xen_lines: Vec<Vec<String>> = vec![Vec::new(); runs.len()];
    let mut current: Option<usize> = None;
    let many = runs.len() > 1;
    let end = lab::exec(&job, &images, &options, &mut |line| match line {
        Line::Stdout(text) => {
            let (text, mark) = match text.find(&marker) {
                Some(at) => (&text[..at], Some(&text[at + marker.len()..])),
                None => (text, None),
            };
            if let Some(index) = current
                && (mark.is_none() || !text.is_empty())
            {
                consoles[index].line(text);
            }
            // " 3 begin" or " 3 end 0"
            let fields: Vec<&str> = mark.unwrap_or_default().split_whitespace().collect();
            match fields.as_slice() {
                [index, "begin"] => current = index.parse().ok().filter(|&i| i < runs.len()),
                [index, "end", status] => {
                    if let Ok(index) = index.parse::<usize>()
                        && index < runs.len()
                    {
                        statuses[index] = status.parse().ok();
                    }
                    current = None;
                }
                _ => {}
            }
        }
        Line::Stderr(text) => match current {
            Some(index) if many => eprintln!("[{} #{index}] {text}", runs[index].image.name),
            _ => eprintln!("{text}"),
        },
        Line::Xen(text) => {
            if let Some(index) = current {
                xen_lines[index].push(text.to_owned());
            }
        }
    })?;
    if let ExecEnd::Exited(status) = end
        && status != 0
    {
        bail!("the lab job that runs the guests failed (status {status})");
    }

    let mut results = Vec::new();
    for (index, (console, status)) in consoles.into_iter().zip(statuses).enumerate() {
        let exit = match status {
            // busybox timeout's SIGTERM: run-guest.sh destroyed the guest and exited 143.
            Some(143) | None => Ok(GuestExit::Timeout),
            Some(status) => GuestExit::from_script(status).with_context(|| {
                format!(
                    "run-guest.sh failed for {} (status {status})",
                    runs[index].image.name
                )
            }),
        };
        if let Ok(GuestExit::Crash) = exit
            && !options.verbose
            && !xen_lines[index].is_empty()
        {
            eprintln!(
                "Xen said while the guest ran:\n{}",
                xen_lines[index].join("\n")
            );
        }
        results.push(exit.map(|exit| GuestOutcome {
            exit,
            console: console.text,
        }));
    }
    Ok(results)
}

/// xl on this machine: run-guest.sh with its stdout (the console) piped to us and its
/// stderr passed through. On timeout or Ctrl-C it gets SIGTERM and destroys the guest.
fn run_native(run: &GuestRun) -> Result<GuestOutcome> {
    let mut console = Console::new(run.echo);
    let exit = run_native_into(run, &mut console)?;
    Ok(GuestOutcome {
        exit,
        console: console.text,
    })
}

fn run_native_into(run: &GuestRun, console: &mut Console) -> Result<GuestExit> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_help() {
        for (exit, code) in [
            (GuestExit::Poweroff, 0),
            (GuestExit::Crash, 2),
            (GuestExit::Reboot, 3),
            (GuestExit::Other, 4),
            (GuestExit::Timeout, 5),
        ] {
            assert_eq!(exit.code(), code);
            assert!(EXIT_STATUS_HELP.contains(&format!("  {code}    ")));
            if code != 5 {
                assert_eq!(GuestExit::from_script(i32::from(code)), Some(exit));
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
