//! The Xen lab: Debian's Xen 4.17 and a Debian dom0 under QEMU (TCG), for machines
//! that do not run Xen. Facts behind the choices: `shared/notes/xen-lab.md`.
//!
//! A boot is Xen (multiboot kernel) + dom0 Linux + an initramfs of two concatenated
//! archives: the cached base (busybox, Xen tools, modules, `/init`) and a small per-boot
//! one with `/lab/env`, `/lab/job`, `/lab/run-guest.sh` and `/apps/NAME`. Dom0's console
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
//! Control: while a job runs, xtask can have dom0 act on a guest (destroy it, ask it to
//! shut down or reboot) by writing tagged lines to QEMU's stdin, which is the serial
//! line's input: Xen passes it to dom0's console, where the init reads it
//! ([`LabControl`]). No terminal is needed.

pub mod assets;
pub mod process;
mod progress;

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};

use self::assets::Assets;
use self::process::ChildGuard;
use self::progress::Spinner;
use crate::build::{self, GuestImage};
use crate::disk::Disk;
use crate::util;

/// The script that boots one guest with xl; used in the lab and natively.
pub const RUN_GUEST_SH: &str = include_str!("run-guest.sh");

/// Where `/lab/run-guest.sh` sits in dom0.
pub const RUN_GUEST_IN_LAB: &str = "/lab/run-guest.sh";

/// run-guest.sh with chaos instead of xl: the same arguments, environment and exit
/// statuses; used in the lab and natively.
pub const RUN_CHAOS_SH: &str = include_str!("run-chaos.sh");

/// Where `/lab/run-chaos.sh` sits in dom0.
pub const RUN_CHAOS_IN_LAB: &str = "/lab/run-chaos.sh";

/// Xen's messages on its serial console start with this; dom0's output does not.
const XEN_PREFIX: &str = "(XEN) ";

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
    /// vif on xenbr0) and streams its console. FILE's stdout and stderr are streamed here live; boot
    /// messages go to a log under target/lab/logs/ (its tail is shown if the boot fails).
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
                let apps = build_all_apps()?;
                let options = ExecOptions {
                    timeout: Duration::from_secs(args.timeout),
                    verbose: args.verbose,
                    forwards: Vec::new(),
                    disks: args.disks.clone(),
                    control: None,
                    noxs: args.noxs,
                };
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
}

/// Sends commands to the lab's dom0 while a job runs, from any thread: they travel as
/// lines on the serial line (QEMU's stdin, which Xen hands to dom0's console), tagged
/// with the boot's nonce, and dom0's init acts on them (`dom0-init.sh`).
#[derive(Debug, Clone, Default)]
pub struct LabControl(Arc<Mutex<Option<ControlLine>>>);

#[derive(Debug)]
struct ControlLine {
    stdin: ChildStdin,
    tag: String,
}

impl LabControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Have dom0 run `xl destroy DOMAIN` (a domain that is gone already is no error).
    pub fn destroy(&self, domain: &str) -> Result<()> {
        self.act("destroy", domain)
    }

    /// Have dom0 run `xl shutdown -w DOMAIN`: the guest is asked to power off (Xenstore
    /// `control/shutdown`) and ends when it acts on it. dom0 does not wait for it.
    pub fn shutdown(&self, domain: &str) -> Result<()> {
        self.act("shutdown", domain)
    }

    /// Have dom0 run `xl reboot DOMAIN`: the guest is asked to reboot.
    pub fn reboot(&self, domain: &str) -> Result<()> {
        self.act("reboot", domain)
    }

    /// Have dom0 run `chaos destroy DOMAIN` (a domain that is gone already is no error).
    pub fn chaos_destroy(&self, domain: &str) -> Result<()> {
        self.act("chaos-destroy", domain)
    }

    /// Have dom0 run `chaos shutdown DOMAIN`: the guest is asked to power off; whoever
    /// watches it (`chaos create --console`) destroys it once it has.
    pub fn chaos_shutdown(&self, domain: &str) -> Result<()> {
        self.act("chaos-shutdown", domain)
    }

    /// Have dom0 run `chaos shutdown --reboot DOMAIN`.
    pub fn chaos_reboot(&self, domain: &str) -> Result<()> {
        self.act("chaos-reboot", domain)
    }

    /// Send `ACTION DOMAIN`; dom0 acts asynchronously and reports a failing xl command on
    /// the job's stderr (`lab: xl … failed: …`).
    fn act(&self, action: &str, domain: &str) -> Result<()> {
        ensure!(
            !domain.is_empty()
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)),
            "domain name {domain:?}: only A-Z a-z 0-9 _ . : - can go through the lab's control line"
        );
        self.send(&format!("{action} {domain}"))
    }

    fn send(&self, command: &str) -> Result<()> {
        let mut line = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(line) = line.as_mut() else {
            bail!("cannot send `{command}` to dom0: the lab is not running");
        };
        let text = format!("{} {command}\n", line.tag);
        line.stdin
            .write_all(text.as_bytes())
            .and_then(|()| line.stdin.flush())
            .with_context(|| format!("sending `{command}` to dom0 through QEMU's serial line"))
    }

    fn attach(&self, stdin: ChildStdin, tag: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(ControlLine {
            stdin,
            tag: tag.to_owned(),
        });
    }

    fn detach(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Detaches a [`LabControl`] when the lab run ends, however it ends.
struct Attached<'a>(Option<&'a LabControl>);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Some(control) = self.0 {
            control.detach();
        }
    }
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
    let env = format!(
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
    let initrd = run.initrd(&assets, &env, script, apps)?;
    let mut qemu = lab_qemu(&assets, &initrd, &options.disks)?;
    let relay_socket = format!("lightvm-lab-{nonce}-relay");
    if listeners.is_some() {
        qemu.args(relay_args(&relay_socket));
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
    let spinner = (!options.verbose).then(|| Spinner::new("booting Xen + dom0 (QEMU TCG)…"));
    let mut in_job = false;
    loop {
        let line = match serial.next()? {
            Next::Line(line) => line,
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
                    eprintln!("lab: dom0 did not reach the job in time\n{}", serial.tail());
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
                    None => eprintln!("{line}"),
                }
            }
            if line.contains(&markers.begin) {
                in_job = true;
                let up = format!("dom0 up after {:.1} s", started.elapsed().as_secs_f64());
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
    let mut qemu = lab_qemu(&assets, &initrd, disks)?;
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

/// How a guest booted as Xen's dom0 ended, read from Xen's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dom0End {
    Poweroff,
    Crash,
    Reboot,
    /// Watchdog, soft reset or an unknown reason.
    Other,
    TimedOut,
}

/// Boot `image` directly as Xen's dom0 (no Linux) with `cmdline` and `mem_mib` of
/// memory. The guest's console (the `console_io` hypercall) is every serial line without
/// Xen's prefix; each is handed to `on_line`. Xen does not power the machine off when
/// dom0 ends, so its "Hardware Dom0 …" message ends the run.
pub fn boot_as_dom0(
    image: &Path,
    cmdline: &str,
    mem_mib: u32,
    timeout: Duration,
    verbose: bool,
    on_line: &mut dyn FnMut(&str),
) -> Result<Dom0End> {
    ensure!(
        image.is_file(),
        "guest image {} does not exist",
        image.display()
    );
    let xen = assets::prepare()?.xen;
    let nonce = nonce();
    let xen_cmdline = format!(
        "console=com1 com1=115200,8n1 dom0_mem={mem_mib}M,max:{mem_mib}M dom0_max_vcpus=1 \
         noreboot loglvl=all guest_loglvl=all"
    );
    let mut qemu = qemu(&xen, &xen_cmdline);
    qemu.arg("-initrd")
        .arg(multiboot_modules(&[(image, cmdline)])?);
    qemu.args(["-serial", "stdio"]);
    let mut serial = Serial::spawn(qemu, &nonce, timeout)?;
    loop {
        let line = match serial.next()? {
            Next::Line(line) => line,
            Next::Exited(status) => bail!(
                "QEMU exited ({status}) before dom0 ended\n{}",
                serial.tail()
            ),
            Next::TimedOut => {
                serial.kill();
                return Ok(Dom0End::TimedOut);
            }
        };
        let Some(xen) = line.strip_prefix(XEN_PREFIX) else {
            on_line(&line);
            continue;
        };
        if verbose {
            eprintln!("{line}");
        }
        let end = if xen.starts_with("Hardware Dom0 halted") {
            Dom0End::Poweroff
        } else if xen.starts_with("Hardware Dom0 crashed") {
            Dom0End::Crash
        } else if xen.starts_with("Hardware Dom0 shutdown: rebooting") {
            Dom0End::Reboot
        } else if xen.starts_with("Hardware Dom0 shutdown")
            || xen.starts_with("Hardware domain 0 did unsupported soft reset")
        {
            Dom0End::Other
        } else if xen.contains("Panic on CPU") {
            // e.g. the domain builder refused the image; the reason is a few lines up.
            bail!(
                "Xen panicked (booting {} as dom0)\n{}",
                image.display(),
                serial.tail()
            );
        } else {
            continue;
        };
        serial.kill();
        return Ok(end);
    }
}

/// Dom0 Linux: console on Xen's, quiet boot, our `/init`.
const DOM0_CMDLINE: &str = "console=hvc0 quiet rdinit=/init";

/// QEMU booting Xen with Debian's kernel as dom0 and `initrd`, with `disks` (serial not
/// yet chosen).
fn lab_qemu(assets: &Assets, initrd: &Path, disks: &[Disk]) -> Result<Command> {
    let mut qemu = qemu(&assets.xen, LAB_XEN_CMDLINE);
    qemu.args(disk_args(disks)?);
    qemu.arg("-initrd").arg(multiboot_modules(&[
        (&assets.vmlinux, DOM0_CMDLINE),
        (initrd, ""),
    ])?);
    Ok(qemu)
}

/// How many disks a lab boot can have: each is a PCI device on QEMU's one bus (32 slots,
/// a few taken by the chipset, the NIC and the RNG).
pub const MAX_LAB_DISKS: usize = 24;

/// The serial number of dom0's `index`th virtio disk; dom0's init links the disk with
/// this serial as `/dev/lab/disk-N` (`dom0-init.sh`).
fn disk_serial(index: usize) -> String {
    format!("lab-disk-{index}")
}

/// Where the `index`th disk of [`ExecOptions::disks`] is in dom0.
pub fn disk_in_dom0(index: usize) -> String {
    format!("/dev/lab/disk-{index}")
}

/// QEMU's arguments for the disks: each image a virtio disk of dom0 (`-drive` of raw
/// format, `-device virtio-blk-pci` with the serial dom0 finds it by), read-only with
/// `:ro`. `cache=writeback`: QEMU completes a write once it is in the host's page cache
/// (`pwrite`), so every write a guest saw complete is in the file, for any reader on
/// the host, as soon as the run ends, even if QEMU is killed then; a guest's flush
/// still reaches the disk (`fdatasync`). (`cache=none` needs O_DIRECT, which tmpfs
/// refuses; `writethrough` syncs every single write.)
fn disk_args(disks: &[Disk]) -> Result<Vec<OsString>> {
    ensure!(
        disks.len() <= MAX_LAB_DISKS,
        "{} disks: a lab boot can have at most {MAX_LAB_DISKS}",
        disks.len()
    );
    let mut args = Vec::new();
    for (index, disk) in disks.iter().enumerate() {
        let (path, _) = disk.check()?;
        let path = path
            .to_str()
            .with_context(|| format!("disk image {}: not a UTF-8 path", path.display()))?;
        // QEMU's option syntax: a comma in a value is written twice.
        let mut drive = format!(
            "file={},if=none,id=disk{index},format=raw,cache=writeback",
            path.replace(',', ",,")
        );
        if disk.read_only {
            drive.push_str(",readonly=on");
        }
        args.push("-drive".into());
        args.push(drive.into());
        args.push("-device".into());
        args.push(
            format!(
                "virtio-blk-pci,drive=disk{index},serial={}",
                disk_serial(index)
            )
            .into(),
        );
    }
    Ok(args)
}

/// Xen for the Linux lab: dom0 gets a fixed 1 GiB and one vCPU, the other CPU is for
/// guests (the set-up measured in the notes). All log levels on: the messages go to the
/// boot log. No `noreboot`: if dom0 dies, Xen resets and `-no-reboot` ends QEMU.
const LAB_XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M \
    dom0_max_vcpus=1 loglvl=all guest_loglvl=all";

/// QEMU for Xen under TCG: `-cpu qemu64` (dom0 Linux faults early with `-cpu max`, and
/// KVM cannot run this Xen), Xen as the multiboot kernel, virtio-rng for dom0's
/// entropy, an e1000 NIC on user networking. Serial and initrd are added by the caller.
fn qemu(xen: &Path, xen_cmdline: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "qemu64", "-m", "2048", "-smp", "2"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .args(["-device", "virtio-rng-pci"])
        .arg("-netdev")
        .arg(user_netdev())
        .args(["-device", "e1000,netdev=n0"]);
    // For diagnosis: LAB_PCAP=FILE records every frame between dom0's NIC and QEMU's
    // user network (wireshark or tcpdump -r reads it).
    if let Some(pcap) = std::env::var_os("LAB_PCAP") {
        let mut object = OsString::from("filter-dump,id=pcap0,netdev=n0,file=");
        object.push(pcap);
        cmd.arg("-object").arg(object);
    }
    cmd.arg("-kernel").arg(xen).arg("-append").arg(xen_cmdline);
    cmd
}

/// QEMU's user network: the lab's addresses, DHCP from [`GUEST_ADDR`] on (dom0 keeps
/// its static address below it).
fn user_netdev() -> String {
    format!("user,id=n0,net={NET_ADDR}/{NET_PREFIX},dhcpstart={GUEST_ADDR}")
}

/// The relay's channel: a virtio-serial port named `lab.relay` in dom0 (where
/// `labrelay` opens it), a listening socket in the abstract namespace `name` on the
/// host (no file to clean up, no path length limit to meet).
fn relay_args(name: &str) -> [String; 6] {
    [
        "-device".into(),
        "virtio-serial-pci,id=relay".into(),
        "-chardev".into(),
        format!("socket,id=relaychr,path={name},abstract=on,server=on,wait=off"),
        "-device".into(),
        "virtserialport,bus=relay.0,chardev=relaychr,name=lab.relay".into(),
    ]
}

/// Connect to the relay's channel once QEMU listens on it.
fn connect_relay(name: &str, serial: &Serial) -> Result<UnixStream> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let started = Instant::now();
    loop {
        match UnixStream::connect_addr(&addr) {
            Ok(stream) => return Ok(stream),
            Err(err) if started.elapsed() > Duration::from_secs(10) => {
                bail!(
                    "QEMU did not open the relay's channel @{name} within 10 s: {err}\n{}",
                    serial.tail()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// QEMU's `-initrd` for a multiboot kernel: modules separated by commas, each a path
/// and its command line separated by a space (a literal comma is written twice).
fn multiboot_modules(modules: &[(&Path, &str)]) -> Result<String> {
    let mut out = String::new();
    for (path, cmdline) in modules {
        let path = path.to_str().context("non-UTF-8 path")?;
        ensure!(
            !path.contains(' '),
            "QEMU cannot load a multiboot module from a path with spaces: {path}"
        );
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&path.replace(',', ",,"));
        if !cmdline.is_empty() {
            out.push(' ');
            out.push_str(&cmdline.replace(',', ",,"));
        }
    }
    Ok(out)
}

/// A serial line that shows dom0 ended (Xen prints it when the hardware domain stops).
fn dom0_death(line: &str) -> Option<&str> {
    let xen = line.strip_prefix(XEN_PREFIX)?;
    (xen.starts_with("Hardware Dom0") || xen.contains("Panic on CPU")).then_some(xen)
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

/// `target/lab/runs/NONCE`: files of one boot, removed afterwards.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn new(nonce: &str) -> Result<Self> {
        let path = assets::lab_dir().join("runs").join(nonce);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        process::register_scratch(&path);
        Ok(Self { path })
    }

    /// The base initramfs followed by a small archive with this boot's files (Linux
    /// unpacks concatenated archives in order), so a boot never repacks the big part.
    fn initrd(
        &self,
        assets: &Assets,
        env: &str,
        job: &str,
        apps: &[GuestImage],
    ) -> Result<PathBuf> {
        let staging = self.path.join("overlay");
        fs::create_dir_all(staging.join("lab"))?;
        fs::create_dir_all(staging.join("apps"))?;
        fs::write(staging.join("lab/env"), env)?;
        fs::write(staging.join("lab/job"), job)?;
        assets::write_executable(&staging.join("lab/run-guest.sh"), RUN_GUEST_SH)?;
        assets::write_executable(&staging.join("lab/run-chaos.sh"), RUN_CHAOS_SH)?;
        for app in apps {
            fs::copy(&app.path, staging.join("apps").join(&app.name))
                .with_context(|| format!("copying guest image {}", app.path.display()))?;
        }
        // Our host tools (chaos, xendevd) run in dom0 next to xl.
        fs::create_dir_all(staging.join("usr/local/bin"))?;
        for tool in build::build_host_tools()? {
            let name = tool.file_name().expect("a binary has a name");
            fs::copy(&tool, staging.join("usr/local/bin").join(name))
                .with_context(|| format!("copying host tool {}", tool.display()))?;
        }
        let overlay = self.path.join("overlay.cpio");
        assets::cpio(&staging, &overlay)?;
        let initrd = self.path.join("initrd.cpio");
        let mut out = fs::File::create(&initrd)?;
        std::io::copy(&mut fs::File::open(&assets.initramfs)?, &mut out)?;
        std::io::copy(&mut fs::File::open(&overlay)?, &mut out)?;
        Ok(initrd)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        process::forget_scratch(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running QEMU whose serial output arrives line by line, each line also written to
/// the boot log.
struct Serial {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    log: fs::File,
    log_path: PathBuf,
    started: Instant,
    deadline: Instant,
}

enum Next {
    Line(String),
    Exited(ExitStatus),
    TimedOut,
}

impl Serial {
    fn spawn(mut qemu: Command, nonce: &str, timeout: Duration) -> Result<Self> {
        let logs = assets::lab_dir().join("logs");
        fs::create_dir_all(&logs)?;
        prune_logs(&logs, 30);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let log_path = logs.join(format!("boot-{unix}-{nonce}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        writeln!(&log, "$ {}", util::display(&qemu))?;
        // QEMU's own complaints go into the same log. Its stdin is the serial line's
        // input: a pipe the caller may keep (for `LabControl`) or drop.
        qemu.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        let child = ChildGuard::spawn(&mut qemu, Duration::from_secs(2))?;
        let lines = process::read_lines(child.take_stdout().expect("piped"));
        let started = Instant::now();
        Ok(Self {
            child,
            lines,
            log,
            log_path,
            started,
            deadline: started + timeout,
        })
    }

    fn next(&mut self) -> Result<Next> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                let at = self.started.elapsed().as_secs_f64();
                writeln!(self.log, "[{at:8.3}] {line}")?;
                Ok(Next::Line(line))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(Next::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait_for(Duration::from_secs(5))?;
                Ok(Next::Exited(status.unwrap_or_else(|| {
                    self.child.terminate().unwrap_or_default()
                })))
            }
        }
    }

    fn kill(&self) {
        self.child.terminate();
    }

    /// The end of the boot log, for error messages.
    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last {} lines of {} ---\n{}",
            lines.len() - start,
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

/// Keep the newest `keep` boot logs.
fn prune_logs(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    logs.sort();
    let excess = logs.len().saturating_sub(keep);
    for old in &logs[..excess] {
        let _ = fs::remove_file(old);
    }
}
