//! The Xen lab: Debian's Xen 4.17 and a Debian dom0 under QEMU (TCG), for machines
//! that do not run Xen. Facts behind the choices: `shared/notes/xen-lab.md`.
//!
//! A boot is Xen (multiboot kernel) + dom0 Linux + an initramfs of two concatenated
//! archives: the cached base (busybox, Xen tools, modules, `/init`) and a small per-boot
//! one with `/lab/env`, `/lab/job`, the run scripts (`/lab/run-guest.sh`, …) and
//! `/apps/NAME` ([`rundir`]). Dom0's console
//! is Xen's serial line, which QEMU hands to us on a pipe; the init brackets the job
//! between a begin and an end marker that carry a per-boot nonce, so the job's output
//! is told apart from boot messages (all of which go to a log under `target/lab/logs`).
//!
//! Network: QEMU's user network (slirp, 10.0.2.0/24) on an e1000, bridged in dom0 as
//! `xenbr0` with dom0 at 10.0.2.15; a guest's vif joins the bridge through xl's default
//! hotplug script (`vif-bridge.sh`), and QEMU's DHCP hands out 10.0.2.16 first. Guest
//! ports reach the host through the lab relay ([`ExecOptions::forwards`]): xtask
//! listens on the host ports and carries each connection and UDP client over a
//! virtio-serial channel to `labrelay` in dom0, which connects to the guest (QEMU's
//! own `hostfwd` listens with a backlog of one, and bursts of clients time out).
//!
//! Disks: image files of the host become virtio disks of dom0 ([`ExecOptions::disks`]),
//! which the init links as `/dev/lab/disk-N`; xl hands them to guests as `phy:` disks
//! through xl's default block hotplug script (`block.sh`) and xen-blkback.
//!
//! Two hosts: `lab exec --hosts 2` boots two labs side by side on a private network
//! they share ([`hosts`]).
//!
//! Control: while a job runs, xtask can have dom0 stop a guest (destroy it, ask it to
//! shut down or reboot) through the serial line ([`LabControl`]).
//!
//! Modules: [`qemu`] (the command line), [`serial`] (the serial reader and boot log),
//! [`rundir`] (a boot's files), [`control`], [`dom0`] (a guest as Xen's dom0),
//! [`packages`] (the Debian packages the lab takes, at which version), [`assets`] (Xen,
//! dom0's kernel and the base initramfs made of them), [`linux_guest`] (the Linux PV
//! guest in dom0's `/apps/linux`), [`process`].

pub mod assets;
mod control;
mod dom0;
pub mod hosts;
mod linux_guest;
mod packages;
pub mod process;
mod progress;
mod qemu;
mod rundir;
mod serial;

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use self::control::Attached;
pub use self::control::LabControl;
pub use self::dom0::{Dom0End, boot_as_dom0};
use self::process::ChildGuard;
use self::progress::Spinner;
pub use self::qemu::{LabMemory, MAX_LAB_DISKS, disk_in_dom0, machine_mib};
use self::qemu::{connect_relay, lab_qemu, relay_args};
use self::rundir::RunDir;
use self::serial::{Next, Serial, XEN_PREFIX, dom0_death};
use crate::build::{self, GuestImage};
use crate::disk::Disk;

/// The default limit for a whole lab run, boot included (TCG is slow, CI slower).
pub const DEFAULT_TIMEOUT_SECS: u64 = 600;

/// The lab's network: QEMU user networking (slirp), bridged into dom0 as xenbr0.
pub const NET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
pub const NET_PREFIX: u8 = 24;
/// QEMU's side of it: the gateway (and the host, seen from inside).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// QEMU's DNS forwarder.
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// Dom0's static address on xenbr0.
pub const DOM0_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The lab's guest address: the static default, and the first address QEMU's DHCP
/// server hands out (`dhcpstart`).
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
/// The MAC of every lab guest's vif. QEMU's DHCP server never frees a lease and gives
/// each new MAC the next address, so a fixed MAC keeps a DHCP guest at [`GUEST_ADDR`]
/// however many guests ran before it in the same lab (they run one at a time).
pub const GUEST_MAC: &str = "00:16:3e:0a:00:10";

/// A port of a guest reachable on the host: `127.0.0.1:host_port` leads to the guest's
/// address and port, for TCP and for UDP, through the lab relay.
pub use labrelay::host::Forward as HostForward;

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Boot a fresh lab, run FILE with /bin/sh in dom0, stop the lab; exit with FILE's status.
    ///
    /// FILE runs in `/` with xl on PATH, Xen's daemons up, the bridge xenbr0 (dom0 at
    /// 10.0.2.15/24 via 10.0.2.2, QEMU user networking) and every app of `apps/` built
    /// into `/apps/NAME`; `sh /lab/run-guest.sh /apps/NAME MIB [ARGS…]` boots one (with a
    /// vif on xenbr0) and streams its console; each app is also an OCI image archive at
    /// `/oci/NAME.tar`, and `lab-containerd` starts containerd for `ctr`. FILE's stdout and
    /// stderr are streamed here live; boot messages go to a log under target/lab/logs/
    /// (its tail is shown if the boot fails).
    Exec(ExecArgs),
    /// Boot a fresh lab with an interactive dom0 shell on this terminal (`/apps` filled).
    ///
    /// `exit` powers the lab off; Ctrl-A X quits QEMU at once.
    Shell(ShellArgs),
    /// Download and build the lab's assets without booting (e.g. to warm a CI cache).
    Prepare,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Shell script to run in dom0.
    pub file: PathBuf,
    /// Give up (and kill the lab) after this many seconds, boot included.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Also show Xen's and dom0's boot messages (on stderr).
    #[arg(long)]
    pub verbose: bool,
    /// Give dom0 this raw image file as a virtio disk: the Nth is /dev/vda, /dev/vdb, …
    /// (also /dev/lab/disk-0, -1, …); `:ro` makes it read-only. Repeatable.
    #[arg(long = "disk", value_name = "FILE[:ro]")]
    pub disks: Vec<Disk>,
    /// Start neither xenstored nor xenconsoled: a lab for chaos's NoXS method (xl
    /// does not work in it).
    #[arg(long)]
    pub noxs: bool,
    /// The lab machine's memory in MiB: dom0 keeps 1024, Xen about 256, guests get the
    /// rest (QEMU takes it from this machine as Xen touches it).
    #[arg(long, value_name = "MIB", default_value_t = LabMemory::DEFAULT.mib())]
    pub memory: u32,
    /// Boot this many labs side by side (1 or 2) and run FILE in each dom0: with 2, each
    /// also has a NIC on one network the two share, bridged as xenbr1 with dom0 at
    /// 10.0.3.1 and 10.0.3.2, guests on it from 10.0.3.16; FILE gets LAB_HOST (1 or 2),
    /// LAB_SELF and LAB_PEER (the dom0 addresses there) and LAB_SHARED_BRIDGE; each line
    /// is prefixed with `hostN| `; a host that fails stops the other, and the exit status
    /// is its failure's, else 0.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(hosts::MAX_HOSTS)))]
    pub hosts: u8,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Give dom0 this raw image file as a virtio disk (see `lab exec --help`). Repeatable.
    #[arg(long = "disk", value_name = "FILE[:ro]")]
    pub disks: Vec<Disk>,
}

impl LabCmd {
    pub fn run(&self) -> Result<ExitCode> {
        match self {
            LabCmd::Exec(args) => {
                let script = fs::read_to_string(&args.file)
                    .with_context(|| format!("reading {}", args.file.display()))?;
                let memory = LabMemory::new(args.memory, machine_mib()).context("--memory")?;
                let apps = build_all_apps()?;
                let options = ExecOptions {
                    timeout: Duration::from_secs(args.timeout),
                    verbose: args.verbose,
                    forwards: Vec::new(),
                    disks: args.disks.clone(),
                    control: None,
                    noxs: args.noxs,
                    memory,
                    pair: None,
                };
                if args.hosts > 1 {
                    return exec_hosts_cli(&script, &apps, &options);
                }
                let mut stdout = std::io::stdout();
                let end = exec(&script, &apps, &options, &mut |line| match line {
                    Line::Stdout(text) => {
                        let _ = writeln!(stdout, "{text}");
                        let _ = stdout.flush();
                    }
                    Line::Stderr(text) => eprintln!("{text}"),
                    Line::Xen(_) => {} // in the log (and shown with --verbose)
                })?;
                match end {
                    ExecEnd::Exited(status) => {
                        Ok(ExitCode::from(u8::try_from(status).unwrap_or(1)))
                    }
                    ExecEnd::TimedOut { log } => bail!(
                        "timed out after {} s: killed the lab (boot log: {})",
                        args.timeout,
                        log.display()
                    ),
                    ExecEnd::Stopped => unreachable!("a single lab has no stop flag"),
                }
            }
            LabCmd::Shell(args) => shell(&build_all_apps()?, &args.disks),
            LabCmd::Prepare => {
                let assets = assets::prepare()?;
                eprintln!(
                    "lab: ready: {}, {}, {}",
                    assets.xen.display(),
                    assets.vmlinux.display(),
                    assets.initramfs.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// `lab exec --hosts 2`: both hosts' lines on stdout and stderr, each prefixed with its
/// host; the status is the first failing host's, 0 if both succeed.
fn exec_hosts_cli(script: &str, apps: &[GuestImage], options: &ExecOptions) -> Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let ends = hosts::exec_hosts(script, apps, options, &mut |host, line| match line {
        Line::Stdout(text) => {
            let _ = writeln!(stdout, "host{host}| {text}");
            let _ = stdout.flush();
        }
        Line::Stderr(text) => eprintln!("host{host}| {text}"),
        Line::Xen(_) => {}
    })?;
    // The status of the host that failed, not that of the one it stopped.
    let mut status = 0;
    let mut stopped = false;
    for (host, end) in (1..).zip(ends) {
        let failed = match end {
            Ok(ExecEnd::Exited(0)) => continue,
            Ok(ExecEnd::Exited(code)) => {
                eprintln!("lab: host {host}: the job exited with status {code}");
                u8::try_from(code).unwrap_or(1)
            }
            Ok(ExecEnd::TimedOut { log }) => {
                eprintln!(
                    "lab: host {host}: timed out after {} s: killed the lab (boot log: {})",
                    options.timeout.as_secs(),
                    log.display()
                );
                1
            }
            Ok(ExecEnd::Stopped) => {
                eprintln!("lab: host {host}: stopped because the other host failed");
                stopped = true;
                continue;
            }
            Err(err) => {
                eprintln!("lab: host {host}: {err:#}");
                1
            }
        };
        if status == 0 {
            status = failed;
        }
    }
    if status == 0 && stopped {
        status = 1;
    }
    Ok(ExitCode::from(status))
}

/// Every app of `apps/`, built.
pub fn build_all_apps() -> Result<Vec<GuestImage>> {
    let names = build::all_apps()?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    build::build_apps(&names)
}

/// How to run a job in the lab.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Limit for the whole run, boot included.
    pub timeout: Duration,
    /// Show boot messages on stderr as they come.
    pub verbose: bool,
    /// Guest ports the lab relay exposes on the host while the lab runs.
    pub forwards: Vec<HostForward>,
    /// Image files of the host that dom0 gets as virtio disks: the Nth is
    /// `/dev/lab/disk-N` in dom0 (a link to its `/dev/vdX`).
    pub disks: Vec<Disk>,
    /// A handle to send dom0 commands through while the job runs.
    pub control: Option<LabControl>,
    /// Without xenstored and xenconsoled (`lab exec --noxs`).
    pub noxs: bool,
    /// The lab machine's memory (`lab exec --memory`): size it for the guests the job
    /// runs ([`LabMemory::for_guests`]).
    pub memory: LabMemory,
    /// This lab is one of two side by side ([`hosts::exec_hosts`] sets it).
    pub pair: Option<hosts::PairHost>,
}

/// One line the job produced, as it arrives.
#[derive(Debug, Clone, Copy)]
pub enum Line<'a> {
    /// The job wrote it to stdout.
    Stdout(&'a str),
    /// The job wrote it to stderr.
    Stderr(&'a str),
    /// Xen printed it on its console while the job ran (e.g. about a guest).
    Xen(&'a str),
}

/// How a lab job ended.
#[derive(Debug)]
pub enum ExecEnd {
    /// The job's exit status.
    Exited(i32),
    /// The time limit passed; the lab was killed.
    TimedOut { log: PathBuf },
    /// The other lab of a pair failed; this one was killed.
    Stopped,
}

/// Boot a fresh lab, run `script` with `/bin/sh` in dom0 and hand each line it prints to
/// `on_line` as it comes.
pub fn exec(
    script: &str,
    apps: &[GuestImage],
    options: &ExecOptions,
    on_line: &mut dyn FnMut(Line<'_>),
) -> Result<ExecEnd> {
    let assets = assets::prepare()?;
    let nonce = nonce();
    let markers = Markers::new(&nonce);
    let run = RunDir::new(&nonce)?;
    // Bound before the boot: a host port that is taken fails now.
    let listeners = if options.forwards.is_empty() {
        None
    } else {
        Some(labrelay::host::Listeners::bind(&options.forwards).context("--forward")?)
    };
    let mut env = format!(
        "LAB_MODE=exec\nLAB_VERBOSE={}\nLAB_NOXS={}\nLAB_RELAY={}\nLAB_BEGIN='{}'\nLAB_END='{}'\n\
         LAB_ERR_TAG='{}'\nLAB_CTL_TAG='{}'\n",
        u8::from(options.verbose),
        u8::from(options.noxs),
        u8::from(listeners.is_some()),
        markers.begin,
        markers.end,
        markers.err_tag,
        markers.ctl_tag,
    );
    if let Some(pair) = &options.pair {
        env.push_str(&pair.env());
    }
    let initrd = run.initrd(&assets, &env, script, apps)?;
    let mut qemu = lab_qemu(&assets, &initrd, &options.disks, options.memory)?;
    let relay_socket = format!("lightvm-lab-{nonce}-relay");
    if listeners.is_some() {
        qemu.args(relay_args(&relay_socket));
    }
    if let Some(pair) = &options.pair {
        qemu.args(pair.qemu_args()?);
    }
    qemu.args(["-serial", "stdio"]);

    let started = Instant::now();
    let mut serial = Serial::spawn(qemu, &nonce, options.timeout)?;
    // Relays until this function returns (the lab is gone then).
    let _relay = match listeners {
        Some(listeners) => Some(
            listeners
                .start(connect_relay(&relay_socket, &serial)?)
                .context("starting the lab relay")?,
        ),
        None => None,
    };
    let _attached = Attached(options.control.as_ref());
    match (&options.control, serial.child.take_stdin()) {
        (Some(control), Some(stdin)) => control.attach(stdin, &markers.ctl_tag),
        // Dropping QEMU's stdin gives it EOF at once, as /dev/null would.
        (_, stdin) => drop(stdin),
    }
    // Two labs' spinners would fight over the terminal: a pair tags plain lines.
    let label = options.pair.as_ref().map(hosts::PairHost::label);
    let spinner = (!options.verbose && label.is_none())
        .then(|| Spinner::new("booting Xen + dom0 (QEMU TCG)…"));
    let label = label.unwrap_or_default();
    let stop = options.pair.as_ref().map(hosts::PairHost::stop_flag);
    let mut in_job = false;
    loop {
        let line = match serial.next_unless(stop)? {
            Next::Line(line) => line,
            Next::Stopped => {
                serial.kill();
                return Ok(ExecEnd::Stopped);
            }
            Next::Exited(status) => {
                drop(spinner);
                let phase = if in_job {
                    "while the job ran"
                } else {
                    "before dom0 reached the job"
                };
                bail!("QEMU exited ({status}) {phase}\n{}", serial.tail());
            }
            Next::TimedOut => {
                drop(spinner);
                if !in_job {
                    eprintln!(
                        "lab: {label}dom0 did not reach the job in time\n{}",
                        serial.tail()
                    );
                }
                serial.kill();
                return Ok(ExecEnd::TimedOut {
                    log: serial.log_path.clone(),
                });
            }
        };
        if !in_job {
            if options.verbose {
                eprintln!("{line}");
            } else if line.starts_with("lab: ") && line.contains("failed") {
                // The init's own complaints (a module, the network), e.g.
                // "lab: network set-up failed: guests get no network".
                match &spinner {
                    Some(spinner) => spinner.println(&line),
                    None => eprintln!("{label}{line}"),
                }
            }
            if line.contains(&markers.begin) {
                in_job = true;
                let up = format!(
                    "{label}dom0 up after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                match &spinner {
                    Some(spinner) => spinner.finish(&up),
                    None => eprintln!("lab: {up}"),
                }
            } else if let Some(death) = dom0_death(&line) {
                drop(spinner);
                bail!("dom0 died while booting: {death}\n{}", serial.tail());
            }
            continue;
        }
        if line.contains(&markers.ctl_tag) {
            // A control line echoed back (dom0 turns the echo off, but be safe).
            continue;
        }
        let (text, end) = match line.find(&markers.end) {
            Some(at) => (&line[..at], Some(&line[at + markers.end.len()..])),
            None => (line.as_str(), None),
        };
        if let Some(rest) = text.strip_prefix(&markers.err_tag) {
            on_line(Line::Stderr(rest));
        } else if text.starts_with(XEN_PREFIX) {
            if let Some(death) = dom0_death(text) {
                bail!("dom0 died while the job ran: {death}\n{}", serial.tail());
            }
            if options.verbose {
                eprintln!("{text}");
            }
            on_line(Line::Xen(text));
        } else if end.is_none() || !text.is_empty() {
            on_line(Line::Stdout(text));
        }
        if let Some(status) = end {
            let status: i32 = status
                .trim()
                .parse()
                .with_context(|| format!("odd end marker line {line:?}"))?;
            // The lab keeps no state, so stop QEMU now rather than wait the ~1.1 s
            // dom0's orderly poweroff takes under TCG.
            serial.kill();
            return Ok(ExecEnd::Exited(status));
        }
    }
}

/// Boot a fresh lab with an interactive shell in dom0 on this terminal.
pub fn shell(apps: &[GuestImage], disks: &[Disk]) -> Result<ExitCode> {
    let assets = assets::prepare()?;
    let nonce = nonce();
    let run = RunDir::new(&nonce)?;
    let initrd = run.initrd(&assets, "LAB_MODE=shell\n", "", apps)?;
    let mut qemu = lab_qemu(&assets, &initrd, disks, LabMemory::DEFAULT)?;
    // The QEMU monitor shares the terminal: Ctrl-A C switches, Ctrl-A X quits.
    qemu.args(["-serial", "mon:stdio"]);
    eprintln!("lab: booting Xen + dom0; Ctrl-A X quits QEMU");
    let child = ChildGuard::spawn(&mut qemu, Duration::from_secs(2))?;
    let status = loop {
        if let Some(status) = child.wait_for(Duration::from_secs(3600))? {
            break status;
        }
    };
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The strings that bracket a job's output; the nonce keeps a job (or a guest) from
/// ending its own run by printing a marker it could not know.
#[derive(Debug)]
struct Markers {
    begin: String,
    end: String,
    err_tag: String,
    /// Starts the commands xtask sends to dom0 (see [`LabControl`]).
    ctl_tag: String,
}

impl Markers {
    fn new(nonce: &str) -> Self {
        Self {
            begin: format!("LAB-BEGIN-{nonce}"),
            end: format!("LAB-END-{nonce} "),
            err_tag: format!("LAB-ERR-{nonce} "),
            ctl_tag: format!("LAB-CTL-{nonce}"),
        }
    }
}

/// A per-boot random token (std's `RandomState` is seeded from the OS).
pub fn nonce() -> String {
    use std::hash::BuildHasher;
    let seed = (std::process::id(), std::time::SystemTime::now());
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(seed)
    )
}
