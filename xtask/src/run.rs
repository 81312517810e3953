//! `cargo xtask run`: boot one guest with xl and stream its console until it ends —
//! natively on a Xen dom0, otherwise in the lab — or boot it directly as Xen's dom0.
//!
//! The same as a library, for `cargo xtask test`: [`run_guest`] and [`run_guests`] boot
//! guests and wait for them to end; [`run_guest_while`] and [`run_sessions`] also run a
//! host-side client against a guest once its console says it is ready (through ports
//! the lab relay forwards to the host), then destroy the guest (or ask it to shut down or
//! reboot, [`Stop`]) and report both. A guest's disks are image files of the host
//! ([`GuestRun::disks`]).

use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Args;

use crate::build::{self, GuestImage};
use crate::disk::{self, Disk, LoopDevice};
use crate::lab::process::{ChildGuard, read_lines};
use crate::lab::{self, Dom0End, ExecEnd, ExecOptions, HostForward, LabControl, Line};
use crate::prereq::{self, Need};
use crate::util;

const RUN_HELP: &str = "\
Networking:
  Each guest gets one vif on the bridge xenbr0: in the lab, dom0's bridge on QEMU's user
  network 10.0.2.0/24 (gateway 10.0.2.2, dom0 at 10.0.2.15); natively, if dom0 has a
  bridge of that name. --forward 1313:13 makes guest port 13 reachable on the host at
  127.0.0.1:1313, TCP and UDP (lab only): `nc 127.0.0.1 1313`, `nc -u 127.0.0.1 1313`.
  With --forward or --ip, and without --dhcp, the guest's arguments start with
  `ip=ADDR/PREFIX gw=10.0.2.2` (ADDR/PREFIX: --ip, else 10.0.2.16/24). Otherwise it gets
  no network arguments, and a guest that networks asks DHCP, which hands out 10.0.2.16
  in the lab (so --forward --dhcp reaches it too).

Disks:
  --disk FILE gives the guest a raw image file of the host as its next disk (xvda, xvdb,
  …), read-write; --disk FILE:ro read-only. The file must exist, be a regular file and a
  whole number of 512-byte sectors (`truncate -s 64M disk.img` makes an empty one). What
  the guest writes is in the file once it has ended. In the lab the file is a virtio
  disk of dom0; natively xtask attaches it to a loop device and detaches it afterwards.

Toolstacks:
  --toolstack xl (the default) runs the guest with xl (run-guest.sh); --toolstack chaos
  with chaos (run-chaos.sh: `chaos create --console` of a generated JSON config, its vif
  put on the bridge by xendevd, its disks file-backed through xendevd's loop devices).
  The exit statuses are the same.
  --noxs runs it with chaos's NoXS method (dev_method noxs: devices through a
  block in start_info and xendevd's back ends); in the lab, xenstored and xenconsoled are
  not even started.

Exit status:
  0    the guest powered off
  2    the guest crashed
  3    the guest rebooted
  4    the guest shut down for another reason (suspend, watchdog, soft_reset)
  5    timeout: the guest was destroyed (or the lab killed)
  6    the guest was destroyed from outside (`xl destroy`, `chaos destroy`)
  1    xtask itself failed (build, lab boot, xl error)
  130  interrupted (Ctrl-C); the guest is destroyed";

#[derive(Debug, Args)]
#[command(after_help = RUN_HELP)]
pub struct RunArgs {
    /// The app to build and run: a crate of apps/ by name, or the directory of an app
    /// crate outside the workspace (a path with a `/`, e.g. from `cargo xtask new PATH`).
    #[arg(required_unless_present = "image", value_name = "APP|PATH")]
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
    /// Boot the app directly as Xen's dom0 in QEMU (no Linux, no xl, no network): a
    /// quick smoke test; the guest writes its console with the console_io hypercall.
    #[arg(long, conflicts_with_all = ["forwards", "ip", "dhcp", "disks"])]
    pub dom0: bool,
    /// Make the guest's port GUESTPORT reachable on the host at 127.0.0.1:HOSTPORT, for
    /// TCP and UDP (through the lab relay, so in the lab only). Repeatable.
    #[arg(long = "forward", value_name = "HOSTPORT:GUESTPORT")]
    pub forwards: Vec<Forward>,
    /// The guest's static address: `ip=ADDR/PREFIX gw=10.0.2.2` goes before its
    /// arguments (natively without `gw=`). Default with --forward: 10.0.2.16/24.
    #[arg(long, value_name = "ADDR/PREFIX", conflicts_with = "dhcp")]
    pub ip: Option<Ipv4Cidr>,
    /// Give the guest no network arguments, even with --forward: a guest that networks
    /// asks DHCP (the lab hands out 10.0.2.16, where --forward points).
    #[arg(long)]
    pub dhcp: bool,
    /// Give the guest the raw image FILE of the host as its next disk (xvda, xvdb, …);
    /// `:ro` makes it read-only. Repeatable.
    #[arg(long = "disk", value_name = "FILE[:ro]")]
    pub disks: Vec<Disk>,
    /// Also show Xen's and dom0's boot messages (on stderr).
    #[arg(long)]
    pub verbose: bool,
    /// Which toolstack creates the guest: xl (the default), or our chaos.
    #[arg(long, value_enum)]
    pub toolstack: Option<Toolstack>,
    /// Chaos's NoXS device method: no Xenstore (in the lab, none runs). Implies
    /// `--toolstack chaos`.
    #[arg(long)]
    pub noxs: bool,
    /// The app's command line (`extra=` in the xl config).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

impl RunArgs {
    /// As dom0 only QEMU and Xen; natively only what the toolstack needs; else the lab.
    pub fn needs(&self) -> Vec<Need> {
        if self.dom0 {
            vec![Need::Guests, Need::Lab]
        } else if is_xen_dom0() {
            let chaos = self.noxs || self.toolstack == Some(Toolstack::Chaos);
            let mut needs = vec![Need::Guests];
            if chaos {
                needs.push(Need::HostTools);
            }
            needs
        } else {
            prereq::LAB_RUN.to_vec()
        }
    }

    pub fn run(&self) -> Result<ExitCode> {
        if let Some(forward) = self.forwards.first()
            && !self.dom0
            && is_xen_dom0()
        {
            bail!(
                "--forward {forward}: this machine is a Xen dom0, where the guest runs with the \
                 local xl and no QEMU: there is nothing to forward through. Reach the guest \
                 at its own address on dom0's bridge (set one with --ip)"
            );
        }
        let net = match (self.dhcp, self.ip) {
            (true, _) => GuestNet::Dhcp,
            (false, Some(cidr)) => GuestNet::Static(cidr),
            (false, None) if !self.forwards.is_empty() => GuestNet::Static(Ipv4Cidr::LAB_GUEST),
            (false, None) => GuestNet::Dhcp,
        };
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
        let toolstack = match (self.toolstack, self.noxs) {
            (Some(Toolstack::Xl), true) => {
                bail!("--noxs needs chaos: xl only knows Xenstore (drop --toolstack xl)")
            }
            (Some(toolstack), _) => toolstack,
            (None, true) => Toolstack::Chaos,
            (None, false) => Toolstack::Xl,
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
            forwards: self.forwards.clone(),
            net,
            disks: self.disks.clone(),
            toolstack,
            noxs: self.noxs,
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

/// A guest port to make reachable from the host: `127.0.0.1:host` leads to the guest's
/// `guest` port, for TCP and UDP. `host` 0 (library only) picks a free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl FromStr for Forward {
    type Err = String;

    /// `HOSTPORT:GUESTPORT`, both 1-65535.
    fn from_str(text: &str) -> Result<Self, String> {
        let (host, guest) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not HOSTPORT:GUESTPORT (e.g. 1313:13)"))?;
        let port = |what: &str, value: &str| match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!(
                "{what} port `{value}` in `{text}` is not a port number (1-65535)"
            )),
        };
        Ok(Self {
            host: port("host", host)?,
            guest: port("guest", guest)?,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.guest)
    }
}

/// An IPv4 address with its network's prefix length, as in `10.0.2.16/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The lab guest's default static address.
    pub const LAB_GUEST: Self = Self {
        addr: lab::GUEST_ADDR,
        prefix: lab::NET_PREFIX,
    };

    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `addr` is in this address's network.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The network, as `10.0.2.0/24`.
    pub fn network(self) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not ADDR/PREFIX (e.g. 10.0.2.16/24)"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` in `{text}` is not an IPv4 address"))?;
        let prefix = match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= 32 => prefix,
            _ => {
                return Err(format!(
                    "prefix `{prefix}` in `{text}` is not a prefix length (0-32)"
                ));
            }
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How a guest gets its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestNet {
    /// No network arguments: a guest that networks asks DHCP (in the lab it gets
    /// 10.0.2.16). Also the choice for guests that do not network.
    #[default]
    Dhcp,
    /// `ip=ADDR/PREFIX gw=10.0.2.2` before the guest's arguments (natively no `gw=`: the
    /// lab's gateway means nothing there).
    Static(Ipv4Cidr),
}

impl GuestNet {
    /// The arguments that go before the guest's own.
    fn args(self, in_lab: bool) -> Vec<String> {
        match self {
            GuestNet::Dhcp => Vec::new(),
            GuestNet::Static(cidr) if in_lab => {
                vec![format!("ip={cidr}"), format!("gw={}", lab::GATEWAY)]
            }
            GuestNet::Static(cidr) => vec![format!("ip={cidr}")],
        }
    }

    /// The guest's address in the lab.
    fn lab_addr(self) -> Ipv4Addr {
        match self {
            GuestNet::Dhcp => lab::GUEST_ADDR,
            GuestNet::Static(cidr) => cidr.addr,
        }
    }
}

/// Which toolstack creates a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Toolstack {
    /// xl, through run-guest.sh.
    #[default]
    Xl,
    /// chaos, through run-chaos.sh.
    Chaos,
}

impl Toolstack {
    /// The script that runs one guest with it.
    pub fn script(self) -> &'static str {
        match self {
            Toolstack::Xl => lab::RUN_GUEST_SH,
            Toolstack::Chaos => lab::RUN_CHAOS_SH,
        }
    }

    /// Where that script is in the lab's dom0.
    pub fn script_in_lab(self) -> &'static str {
        match self {
            Toolstack::Xl => lab::RUN_GUEST_IN_LAB,
            Toolstack::Chaos => lab::RUN_CHAOS_IN_LAB,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Toolstack::Xl => "xl",
            Toolstack::Chaos => "chaos",
        }
    }

    /// The disk type of its disk specs: xl gets dom0's block devices; chaos gets image
    /// files (natively the host's own; in the lab run-chaos.sh copies dom0's virtio disk
    /// into one first), which xendevd puts loop devices in front of.
    fn disk_type(self) -> &'static str {
        match self {
            Toolstack::Xl => "phy",
            Toolstack::Chaos => "file",
        }
    }
}

/// One guest to boot.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub image: GuestImage,
    /// Memory in MiB (xl's `memory=`, or `dom0_mem` with `dom0`).
    pub mem_mib: u32,
    /// The guest's command line, joined with spaces (after the network arguments).
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
    /// Guest ports made reachable from the host (the lab relay in the lab; natively a
    /// client reaches the guest's own address, see [`Ports`]).
    pub forwards: Vec<Forward>,
    /// How the guest gets its address.
    pub net: GuestNet,
    /// The guest's disks, in order: the Nth is its `xvd` + N-th letter (xvda, xvdb, …).
    pub disks: Vec<Disk>,
    /// Which toolstack creates it.
    pub toolstack: Toolstack,
    /// With chaos: the NoXS device method, in a lab without Xenstore.
    pub noxs: bool,
}

impl GuestRun {
    /// A quiet domU run of `image`: 32 MiB, no arguments, 60 s, no forwards, no network
    /// arguments.
    pub fn new(image: GuestImage) -> Self {
        Self {
            image,
            mem_mib: 32,
            args: Vec::new(),
            timeout: Duration::from_secs(60),
            dom0: false,
            echo: false,
            verbose: false,
            forwards: Vec::new(),
            net: GuestNet::Dhcp,
            disks: Vec::new(),
            toolstack: Toolstack::Xl,
            noxs: false,
        }
    }
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
    /// Destroyed from outside (`xl destroy`), as after a client ([`run_guest_while`]):
    /// the guest did not end by itself.
    Destroyed,
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
            GuestExit::Destroyed => 6,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            GuestExit::Poweroff => "guest powered off",
            GuestExit::Crash => "guest crashed",
            GuestExit::Reboot => "guest rebooted",
            GuestExit::Other => "guest shut down (suspend, watchdog or soft_reset)",
            GuestExit::Timeout => "timed out: the guest was killed",
            GuestExit::Destroyed => "guest destroyed from outside (xl destroy)",
        }
    }

    /// Read run-guest.sh's exit status.
    fn from_script(status: i32) -> Option<Self> {
        match status {
            0 => Some(GuestExit::Poweroff),
            2 => Some(GuestExit::Crash),
            3 => Some(GuestExit::Reboot),
            4 => Some(GuestExit::Other),
            6 => Some(GuestExit::Destroyed),
            _ => None,
        }
    }
}

/// What a guest run produced.
#[derive(Debug, Clone)]
pub struct GuestOutcome {
    pub exit: GuestExit,
    /// The guest's console output, one `\n` per line (no Xen or dom0 messages).
    pub console: String,
    /// With a client: how long the guest took to end after xtask asked dom0 to stop it
    /// ([`Client::stop`]: destroy, shutdown or reboot), up to the moment run-guest.sh
    /// reported its end (`None` if it ended before the request, or had no client).
    pub stop_latency: Option<Duration>,
}

/// Where the host reaches a guest's ports, for a client: forwarded ports on 127.0.0.1 in
/// the lab; natively the guest's own address.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    /// (guest port, the address a host client uses for it)
    forwards: Vec<(u16, SocketAddr)>,
    /// Natively: the guest's static address, where every port is reachable.
    direct: Option<Ipv4Addr>,
}

impl Ports {
    /// The address a host client uses for the guest's `port`, TCP or UDP alike.
    pub fn addr(&self, port: u16) -> Result<SocketAddr> {
        if let Some((_, addr)) = self.forwards.iter().find(|(guest, _)| *guest == port) {
            return Ok(*addr);
        }
        if let Some(addr) = self.direct {
            return Ok(SocketAddr::V4(SocketAddrV4::new(addr, port)));
        }
        let forwarded: Vec<String> = self
            .forwards
            .iter()
            .map(|(guest, addr)| format!("{guest} → {addr}"))
            .collect();
        bail!(
            "guest port {port} is not forwarded to the host (forwarded: {})",
            if forwarded.is_empty() {
                "none".to_owned()
            } else {
                forwarded.join(", ")
            }
        )
    }
}

/// The host side of an integration test: once a console line of the guest contains
/// `ready_marker` (within `ready_timeout` of its start), `talk` runs on a thread of its
/// own with the guest's [`Ports`] — real clients on 127.0.0.1 — while the console keeps
/// streaming; when it returns (or panics), xtask has dom0 `stop` the guest. `talk` must
/// not hang: give its sockets timeouts.
pub struct Client<'a> {
    pub ready_marker: String,
    pub ready_timeout: Duration,
    pub talk: Talk<'a>,
    pub stop: Stop,
}

/// What xtask has dom0 do with a guest once its client is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// `xl destroy`: the guest ends at once ([`GuestExit::Destroyed`]).
    #[default]
    Destroy,
    /// `xl shutdown -w`: the guest is asked to power off (Xenstore `control/shutdown`)
    /// and ends by itself, normally with [`GuestExit::Poweroff`].
    Shutdown,
    /// `xl reboot`: the guest is asked to reboot; it ends with [`GuestExit::Reboot`]
    /// (run-guest.sh's `on_reboot` is `destroy`).
    Reboot,
}

impl Stop {
    /// The command that does it, for messages.
    pub fn command(self, toolstack: Toolstack) -> &'static str {
        match (toolstack, self) {
            (Toolstack::Xl, Stop::Destroy) => "xl destroy",
            (Toolstack::Xl, Stop::Shutdown) => "xl shutdown -w",
            (Toolstack::Xl, Stop::Reboot) => "xl reboot",
            (Toolstack::Chaos, Stop::Destroy) => "chaos destroy",
            (Toolstack::Chaos, Stop::Shutdown) => "chaos shutdown",
            (Toolstack::Chaos, Stop::Reboot) => "chaos shutdown --reboot",
        }
    }
}

/// A client's code: real sockets against the guest's [`Ports`].
pub type Talk<'a> = Box<dyn FnOnce(&Ports) -> Result<()> + Send + 'a>;

impl fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("ready_marker", &self.ready_marker)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// A guest run, with a client or without.
#[derive(Debug)]
pub struct Session<'a> {
    pub run: GuestRun,
    pub client: Option<Client<'a>>,
}

/// What a session produced: the guest's outcome and, with a client, the client's result.
#[derive(Debug)]
pub struct SessionOutcome {
    pub guest: GuestOutcome,
    pub client: Option<Result<()>>,
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
    let sessions = runs
        .iter()
        .map(|run| Session {
            run: run.clone(),
            client: None,
        })
        .collect();
    run_sessions(sessions)
        .into_iter()
        .map(|outcome| outcome.map(|outcome| outcome.guest))
        .collect()
}

/// Boot `run`'s guest (in the lab, or natively), wait for a console line containing
/// `ready_marker` (at most `ready_timeout` from the guest's start), run `talk` with
/// the guest's [`Ports`] while the console keeps streaming, then destroy the guest and
/// wait for it to end. Returns what `talk` returned and the guest's outcome: its `exit`
/// is [`GuestExit::Destroyed`] if the guest was still running when `talk` was done, or
/// how it ended by itself before. An error of `talk` comes back with the console.
#[allow(
    dead_code,
    reason = "API for one-off host tests; `cargo xtask test` batches its cases with run_sessions"
)]
pub fn run_guest_while<T: Send>(
    run: &GuestRun,
    ready_marker: &str,
    ready_timeout: Duration,
    talk: impl FnOnce(&Ports) -> Result<T> + Send,
) -> Result<(T, GuestOutcome)> {
    let value = Mutex::new(None);
    let session = Session {
        run: run.clone(),
        client: Some(Client {
            ready_marker: ready_marker.to_owned(),
            ready_timeout,
            talk: Box::new(|ports| {
                let result = talk(ports)?;
                *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                Ok(())
            }),
            stop: Stop::Destroy,
        }),
    };
    let outcome = run_sessions(vec![session])
        .pop()
        .expect("one outcome per session")?;
    let client = outcome.client.expect("the session had a client");
    let guest = outcome.guest;
    match client {
        Ok(()) => {
            let value = value
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .expect("the client returned Ok, so it stored its value");
            Ok((value, guest))
        }
        Err(err) => Err(err.context(format!(
            "the client failed; the guest ended with {:?}; its console:\n{}",
            guest.exit, guest.console
        ))),
    }
}

/// Run sessions one after the other, like [`run_guests`] (all lab ones in one lab boot),
/// each with its client if it has one (see [`Client`]).
pub fn run_sessions(sessions: Vec<Session<'_>>) -> Vec<Result<SessionOutcome>> {
    let native = is_xen_dom0();
    let mut outcomes: Vec<Option<Result<SessionOutcome>>> = sessions.iter().map(|_| None).collect();
    let mut in_lab = Vec::new();
    for (index, session) in sessions.into_iter().enumerate() {
        if let Err(err) = check_run(&session.run) {
            outcomes[index] = Some(Err(err));
        } else if session.run.dom0 {
            outcomes[index] = Some(match session.client {
                Some(_) => Err(anyhow!(
                    "a client needs a domU: a guest booted as dom0 has no network"
                )),
                None => run_as_dom0(&session.run).map(|guest| SessionOutcome {
                    guest,
                    client: None,
                }),
            });
        } else if native {
            outcomes[index] = Some(run_native(session));
        } else {
            in_lab.push((index, session));
        }
    }
    // NoXS guests run in a lab of their own, without Xenstore.
    let (noxs, xenstore): (Vec<_>, Vec<_>) = in_lab
        .into_iter()
        .partition(|(_, session)| session.run.noxs);
    for in_lab in [xenstore, noxs] {
        if in_lab.is_empty() {
            continue;
        }
        let (indices, batch): (Vec<usize>, Vec<Session<'_>>) = in_lab.into_iter().unzip();
        match run_in_lab(batch) {
            Ok(results) => {
                for (index, result) in indices.into_iter().zip(results) {
                    outcomes[index] = Some(result);
                }
            }
            Err(err) => {
                // The lab itself failed: every guest in it shares the error.
                let message = format!("{err:#}");
                for index in indices {
                    outcomes[index] = Some(Err(anyhow!("{message}")));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every run has an outcome"))
        .collect()
}

fn check_run(run: &GuestRun) -> Result<()> {
    for arg in &run.args {
        ensure!(
            !arg.contains(['"', '\\', '\n']),
            "guest argument {arg:?}: quotes, backslashes and newlines cannot pass through an xl config"
        );
    }
    if run.dom0 {
        ensure!(
            run.forwards.is_empty() && run.net == GuestNet::Dhcp,
            "a guest booted as dom0 has no network: no forwards, no address"
        );
        ensure!(
            run.disks.is_empty(),
            "a guest booted as dom0 has no disks: it has no back ends to talk to"
        );
    }
    ensure!(
        !run.noxs || run.toolstack == Toolstack::Chaos,
        "NoXS needs chaos: xl only knows Xenstore"
    );
    disk::check_all(&run.disks)?;
    Ok(())
}

/// Print `run: disk xvda ← /path/img (64 MiB, read-write)` for each disk.
fn print_disks(run: &GuestRun) -> Result<()> {
    for (index, (disk, (path, size))) in run
        .disks
        .iter()
        .zip(disk::check_all(&run.disks)?)
        .enumerate()
    {
        eprintln!("run: {}", disk::describe(index, disk, &path, size));
    }
    Ok(())
}

/// A static address must fit the lab's network.
fn check_lab_addr(cidr: Ipv4Cidr) -> Result<()> {
    let lab_net = Ipv4Cidr {
        addr: lab::NET_ADDR,
        prefix: lab::NET_PREFIX,
    };
    ensure!(
        lab_net.contains(cidr.addr) && cidr.prefix >= lab::NET_PREFIX - 8,
        "guest address {cidr}: the lab's network is {lab_net} (QEMU user networking)"
    );
    ensure!(
        cidr.contains(lab::GATEWAY),
        "guest address {cidr}: the lab's gateway {} is outside its network {}",
        lab::GATEWAY,
        cidr.network()
    );
    for (taken, what) in [
        (lab::GATEWAY, "QEMU's gateway"),
        (lab::DNS, "QEMU's DNS server"),
        (lab::DOM0_ADDR, "dom0"),
    ] {
        ensure!(
            cidr.addr != taken,
            "guest address {cidr}: {taken} is {what} in the lab"
        );
    }
    ensure!(
        cidr.addr != cidr.network().addr && cidr.addr != cidr.broadcast(),
        "guest address {cidr}: that is the network's own address or its broadcast address"
    );
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
        stop_latency: None,
    })
}

/// How a client's thread has dom0 stop its guest, with the toolstack that made it.
#[derive(Debug, Clone)]
enum Stopper {
    Lab(LabControl, Toolstack),
    /// On this machine; chaos is the binary built for it.
    Native(Toolstack, PathBuf),
}

impl Stopper {
    fn toolstack(&self) -> Toolstack {
        match self {
            Stopper::Lab(_, toolstack) | Stopper::Native(toolstack, _) => *toolstack,
        }
    }

    /// Ask for `stop`; in the lab dom0 acts on it asynchronously, natively `xl shutdown
    /// -w` returns once the guest has shut down (`chaos shutdown` at once: run-chaos.sh's
    /// chaos watches the guest and destroys it).
    fn stop(&self, domain: &str, stop: Stop) -> Result<()> {
        match (self, stop) {
            (Stopper::Lab(control, Toolstack::Xl), Stop::Destroy) => control.destroy(domain),
            (Stopper::Lab(control, Toolstack::Xl), Stop::Shutdown) => control.shutdown(domain),
            (Stopper::Lab(control, Toolstack::Xl), Stop::Reboot) => control.reboot(domain),
            (Stopper::Lab(control, Toolstack::Chaos), Stop::Destroy) => {
                control.chaos_destroy(domain)
            }
            (Stopper::Lab(control, Toolstack::Chaos), Stop::Shutdown) => {
                control.chaos_shutdown(domain)
            }
            (Stopper::Lab(control, Toolstack::Chaos), Stop::Reboot) => control.chaos_reboot(domain),
            (Stopper::Native(toolstack, chaos), stop) => {
                let mut cmd = match toolstack {
                    Toolstack::Xl => Command::new("xl"),
                    Toolstack::Chaos => Command::new(chaos),
                };
                match (toolstack, stop) {
                    (_, Stop::Destroy) => cmd.args(["destroy", domain]),
                    (Toolstack::Xl, Stop::Shutdown) => cmd.args(["shutdown", "-w", domain]),
                    (Toolstack::Xl, Stop::Reboot) => cmd.args(["reboot", domain]),
                    (Toolstack::Chaos, Stop::Shutdown) => cmd.args(["shutdown", domain]),
                    (Toolstack::Chaos, Stop::Reboot) => cmd.args(["shutdown", "--reboot", domain]),
                };
                let out = cmd
                    .stdin(Stdio::null())
                    .output()
                    .with_context(|| format!("cannot start {}", stop.command(*toolstack)))?;
                // A guest that ended by itself before the destroy is no error.
                ensure!(
                    out.status.success()
                        || (stop == Stop::Destroy && *toolstack == Toolstack::Chaos),
                    "`{}` failed ({}): {}",
                    util::display(&cmd),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
        }
    }
}

/// What a client's thread reports.
#[derive(Debug)]
struct ClientReport {
    result: Result<()>,
    /// When it asked dom0 to stop the guest.
    stop_sent: Option<Instant>,
}

/// A client on its own thread (see [`Client`]): it waits for the ready line (fed with
/// [`ClientThread::line`]) or the guest's end ([`ClientThread::ended`]), runs, then
/// has dom0 stop the guest.
struct ClientThread<'scope> {
    events: Option<mpsc::Sender<()>>,
    marker: String,
    ready: bool,
    handle: thread::ScopedJoinHandle<'scope, ClientReport>,
}

impl<'scope> ClientThread<'scope> {
    fn spawn<'env: 'scope>(
        scope: &'scope thread::Scope<'scope, 'env>,
        client: Client<'env>,
        ports: Ports,
        stopper: Stopper,
        domain: String,
    ) -> Self {
        let (events, ready) = mpsc::channel::<()>();
        let marker = client.ready_marker.clone();
        let handle = scope.spawn(move || {
            let Client {
                ready_marker,
                ready_timeout,
                talk,
                stop,
            } = client;
            let result = match ready.recv_timeout(ready_timeout) {
                Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| talk(&ports)))
                    .unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|text| (*text).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(anyhow!("the client panicked: {message}"))
                    }),
                Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                    "the guest printed no line with {ready_marker:?} within {} s of its start",
                    ready_timeout.as_secs_f64()
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The guest has ended already: nothing to stop.
                    return ClientReport {
                        result: Err(anyhow!(
                            "the guest ended before it printed a line with {ready_marker:?}"
                        )),
                        stop_sent: None,
                    };
                }
            };
            let sent = Instant::now();
            let stop_sent = match stopper.stop(&domain, stop) {
                Ok(()) => Some(sent),
                Err(err) => {
                    eprintln!(
                        "run: {} {domain}: {err:#}",
                        stop.command(stopper.toolstack())
                    );
                    None
                }
            };
            ClientReport { result, stop_sent }
        });
        Self {
            events: Some(events),
            marker,
            ready: false,
            handle,
        }
    }

    /// A console line of the guest.
    fn line(&mut self, text: &str) {
        if !self.ready && text.contains(&self.marker) {
            self.ready = true;
            if let Some(events) = &self.events {
                let _ = events.send(());
            }
        }
    }

    /// The guest has ended.
    fn ended(&mut self) {
        self.events = None;
    }

    fn join(mut self) -> ClientReport {
        self.ended();
        self.handle.join().unwrap_or_else(|_| ClientReport {
            result: Err(anyhow!("the client's thread panicked")),
            stop_sent: None,
        })
    }
}

/// How long a lab may take to boot before the first guest starts (it takes ~9 s
/// under TCG here; CI machines can be much slower).
const LAB_BOOT_ALLOWANCE: Duration = Duration::from_secs(300);

/// How long dom0 may take after a guest to check nothing was left behind (the job
/// polls for up to ~3 s, `xl list` itself takes ~0.1 s).
const AFTER_GUEST_ALLOWANCE: Duration = Duration::from_secs(15);

/// A lab session, ready for the job.
struct LabRun<'a> {
    run: GuestRun,
    client: Option<Client<'a>>,
    /// `/apps/NAME` in dom0.
    app: String,
    domain: String,
    ports: Ports,
    /// `RUN_GUEST_DISKS` for run-guest.sh: xl disk specs of dom0's virtio disks.
    disk_specs: String,
}

/// The disk specs of a lab guest's disks (`phy:/dev/lab/disk-N,xvda,w` … for xl,
/// `file:…` for chaos, see [`Toolstack::disk_type`]), adding
/// each image to the boot's disks: QEMU attaches every image once, so a file that several
/// guests of the boot use is one disk of dom0, read-write if any of them writes it (each
/// guest still gets its own mode from xl).
fn lab_disk_specs(run: &GuestRun, lab_disks: &mut Vec<Disk>) -> Result<String> {
    let mut specs = Vec::new();
    for (index, (disk, (path, _))) in run
        .disks
        .iter()
        .zip(disk::check_all(&run.disks)?)
        .enumerate()
    {
        let at = match lab_disks.iter().position(|known| known.path == path) {
            Some(at) => {
                lab_disks[at].read_only &= disk.read_only;
                at
            }
            None => {
                ensure!(
                    lab_disks.len() < lab::MAX_LAB_DISKS,
                    "disk image {}: the lab boot has {} disks already, its limit",
                    path.display(),
                    lab::MAX_LAB_DISKS
                );
                lab_disks.push(Disk::new(path, disk.read_only));
                lab_disks.len() - 1
            }
        };
        specs.push(format!(
            "{}:{},{},{}",
            run.toolstack.disk_type(),
            lab::disk_in_dom0(at),
            disk::vdev(index),
            disk.xl_mode()
        ));
    }
    Ok(specs.join(" "))
}

/// A domain name for a guest: `xtask-APP-NONCE-INDEX` in characters xl and the lab's
/// control line take.
fn domain_name(app: &str, nonce: &str, index: usize) -> String {
    let app: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("xtask-{app}-{}-{index}", &nonce[..8])
}

/// Choose host ports and forwards for a lab guest. Forwards of different guests of one
/// lab boot share the relay (they run one at a time): one host port leads to one guest
/// address and port.
fn lab_ports(run: &GuestRun, forwards: &mut Vec<HostForward>) -> Result<Ports> {
    if let GuestNet::Static(cidr) = run.net {
        check_lab_addr(cidr)?;
    }
    let guest_addr = run.net.lab_addr();
    let mut ports = Ports::default();
    for forward in &run.forwards {
        ensure!(forward.guest != 0, "guest port 0 cannot be forwarded");
        let to = SocketAddrV4::new(guest_addr, forward.guest);
        let same_target = |known: &HostForward| known.to == to;
        let host_port = if forward.host == 0 {
            match forwards.iter().find(|known| same_target(known)) {
                Some(known) => known.host_port,
                None => free_host_port()?,
            }
        } else {
            match forwards
                .iter()
                .find(|known| known.host_port == forward.host)
            {
                Some(known) if same_target(known) => forward.host,
                Some(known) => bail!(
                    "host port {} leads to {} already (another guest of this lab boot)",
                    forward.host,
                    known.to
                ),
                None => {
                    check_host_port_free(forward.host)?;
                    forward.host
                }
            }
        };
        let host_forward = HostForward { host_port, to };
        if !forwards.contains(&host_forward) {
            forwards.push(host_forward);
        }
        ports.forwards.push((
            forward.guest,
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, host_port)),
        ));
    }
    Ok(ports)
}

/// Fail unless `port` is free on 127.0.0.1 for TCP and UDP (the relay binds both).
fn check_host_port_free(port: u16) -> Result<()> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpListener::bind(addr)
        .map_err(|err| anyhow!("host port {port} is not free on 127.0.0.1 (tcp): {err}"))?;
    UdpSocket::bind(addr)
        .map_err(|err| anyhow!("host port {port} is not free on 127.0.0.1 (udp): {err}"))?;
    Ok(())
}

/// A port free on 127.0.0.1 for TCP and UDP right now.
fn free_host_port() -> Result<u16> {
    for _ in 0..20 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding a TCP port on 127.0.0.1")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("found no port free for both TCP and UDP on 127.0.0.1")
}

/// One lab boot whose job runs run-guest.sh for each guest in turn, each under busybox
/// `timeout` (whose SIGTERM makes the script destroy its guest). A line with a marker
/// and the guest's index precedes each guest, one with its status follows, then one
/// with whatever it left behind in dom0 (domains, bridge ports); so the console lines
/// are told apart. A guest with a client gets it on a thread of its own (see
/// [`ClientThread`]), which destroys it through the lab's control line.
fn run_in_lab(sessions: Vec<Session<'_>>) -> Result<Vec<Result<SessionOutcome>>> {
    let nonce = lab::nonce();
    let marker = format!("LAB-GUEST-{nonce}");
    let mut forwards: Vec<HostForward> = Vec::new();
    let mut lab_disks: Vec<Disk> = Vec::new();
    // Each image under a name of its own, even if two share a file name.
    let mut images: Vec<GuestImage> = Vec::new();
    let mut prepared: Vec<Result<LabRun<'_>>> = Vec::new();
    for (index, Session { run, client }) in sessions.into_iter().enumerate() {
        let ports = match lab_ports(&run, &mut forwards) {
            Ok(ports) => ports,
            Err(err) => {
                prepared.push(Err(err));
                continue;
            }
        };
        let disk_specs = match lab_disk_specs(&run, &mut lab_disks) {
            Ok(specs) => specs,
            Err(err) => {
                prepared.push(Err(err));
                continue;
            }
        };
        let app = match images.iter().find(|image| image.path == run.image.path) {
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
        if run.echo {
            if run.noxs {
                eprintln!("run: toolstack chaos, NoXS (no Xenstore in this lab)");
            } else if run.toolstack != Toolstack::Xl {
                eprintln!("run: toolstack {}", run.toolstack.name());
            }
            let net = run.net.args(true);
            if !net.is_empty() {
                eprintln!(
                    "run: guest network: {} (before its arguments)",
                    net.join(" ")
                );
            } else if !run.forwards.is_empty() {
                eprintln!(
                    "run: guest network: DHCP (the lab hands out {})",
                    lab::GUEST_ADDR
                );
            }
            for (guest, addr) in &ports.forwards {
                eprintln!("run: guest port {guest} → {addr} (tcp, udp)");
            }
            print_disks(&run)?;
        }
        prepared.push(Ok(LabRun {
            domain: domain_name(&app, &nonce, index),
            run,
            client,
            app,
            ports,
            disk_specs,
        }));
    }
    let runs: Vec<&LabRun<'_>> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    if runs.is_empty() {
        return Ok(prepared
            .into_iter()
            .map(|p| p.map(|_| unreachable!("no run was prepared")))
            .collect());
    }

    let mut job = String::from(LEFTOVERS_SH);
    for (index, lab_run) in prepared.iter().enumerate() {
        let Ok(lab_run) = lab_run else { continue };
        let run = &lab_run.run;
        let mut command = String::new();
        if !lab_run.disk_specs.is_empty() {
            command = format!("RUN_GUEST_DISKS='{}' ", lab_run.disk_specs);
        }
        if let GuestNet::Static(cidr) = run.net {
            command += &format!("RUN_GUEST_IP={} ", cidr.addr);
        }
        if run.noxs {
            command += "RUN_GUEST_DEV_METHOD=noxs ";
        }
        command += &format!(
            "RUN_GUEST_NAME={} RUN_GUEST_MAC={} timeout -s TERM {} sh {} /apps/{} {}",
            lab_run.domain,
            lab::GUEST_MAC,
            run.timeout.as_secs().max(1),
            run.toolstack.script_in_lab(),
            lab_run.app,
            run.mem_mib
        );
        for arg in run.net.args(true).iter().chain(&run.args) {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        job.push_str(&format!(
            "echo '{marker} {index} begin'\n{command}\necho \"{marker} {index} end $?\"\n\
             echo \"{marker} {index} left $(leftovers)\"\n"
        ));
    }
    let control = runs
        .iter()
        .any(|run| run.client.is_some())
        .then(LabControl::new);
    let options = ExecOptions {
        timeout: LAB_BOOT_ALLOWANCE
            + runs
                .iter()
                .map(|lab_run| lab_run.run.timeout + AFTER_GUEST_ALLOWANCE)
                .sum::<Duration>(),
        verbose: runs.iter().any(|lab_run| lab_run.run.verbose),
        forwards,
        disks: lab_disks,
        control: control.clone(),
        noxs: runs.iter().any(|lab_run| lab_run.run.noxs),
    };

    let count = prepared.len();
    let mut consoles: Vec<Console> = prepared
        .iter()
        .map(|p| Console::new(p.as_ref().is_ok_and(|lab_run| lab_run.run.echo)))
        .collect();
    let mut statuses: Vec<Option<i32>> = vec![None; count];
    let mut leftovers: Vec<Option<String>> = vec![None; count];
    let mut ended_at: Vec<Option<Instant>> = vec![None; count];
    // Xen's remarks while a guest runs explain a crash; they are shown then.
    let mut xen_lines: Vec<Vec<String>> = vec![Vec::new(); count];
    // The script's last words name the cause when it fails (status 1).
    let mut last_stderr: Vec<Vec<String>> = vec![Vec::new(); count];
    let many = runs.len() > 1;
    let names: Vec<String> = prepared
        .iter()
        .map(|p| {
            p.as_ref()
                .map_or_else(|_| String::new(), |r| r.run.image.name.clone())
        })
        .collect();
    let toolstacks: Vec<Toolstack> = prepared
        .iter()
        .map(|p| p.as_ref().map_or(Toolstack::Xl, |r| r.run.toolstack))
        .collect();
    let mut pending: Vec<Option<(Client<'_>, Ports, String)>> = Vec::with_capacity(count);
    let mut placeholders: Vec<Result<()>> = Vec::with_capacity(count);
    for p in prepared {
        match p {
            Ok(lab_run) => {
                pending.push(
                    lab_run
                        .client
                        .map(|client| (client, lab_run.ports, lab_run.domain)),
                );
                placeholders.push(Ok(()));
            }
            Err(err) => {
                pending.push(None);
                placeholders.push(Err(err));
            }
        }
    }

    let (end, mut reports) = thread::scope(|scope| {
        let mut clients: Vec<Option<ClientThread<'_>>> = (0..count).map(|_| None).collect();
        let mut current: Option<usize> = None;
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
                    if let Some(client) = &mut clients[index] {
                        client.line(text);
                    }
                }
                // " 3 begin", " 3 end 0" or " 3 left LEFTOVERS"
                let fields: Vec<&str> = mark.unwrap_or_default().split_whitespace().collect();
                let index = fields
                    .first()
                    .and_then(|index| index.parse::<usize>().ok())
                    .filter(|&index| index < count);
                match (index, fields.get(1..).unwrap_or_default()) {
                    (Some(index), ["begin"]) => {
                        current = Some(index);
                        if let (Some((client, ports, domain)), Some(control)) =
                            (pending[index].take(), &control)
                        {
                            clients[index] = Some(ClientThread::spawn(
                                scope,
                                client,
                                ports,
                                Stopper::Lab(control.clone(), toolstacks[index]),
                                domain,
                            ));
                        }
                    }
                    (Some(index), ["end", status]) => {
                        statuses[index] = status.parse().ok();
                        ended_at[index] = Some(Instant::now());
                        if let Some(client) = &mut clients[index] {
                            client.ended();
                        }
                        current = None;
                    }
                    (Some(index), ["left", rest @ ..]) => {
                        leftovers[index] = Some(rest.join(" "));
                    }
                    _ => {}
                }
            }
            Line::Stderr(text) => {
                match current {
                    Some(index) if many => eprintln!("[{} #{index}] {text}", names[index]),
                    _ => eprintln!("{text}"),
                }
                if let Some(index) = current {
                    let last = &mut last_stderr[index];
                    if last.len() == 5 {
                        last.remove(0);
                    }
                    last.push(text.to_owned());
                }
            }
            Line::Xen(text) => {
                if let Some(index) = current {
                    xen_lines[index].push(text.to_owned());
                }
            }
        });
        let reports: Vec<Option<ClientReport>> = clients
            .into_iter()
            .map(|client| client.map(ClientThread::join))
            .collect();
        (end, reports)
    });
    let end = end?;
    if let ExecEnd::Exited(status) = end
        && status != 0
    {
        bail!("the lab job that runs the guests failed (status {status})");
    }

    let mut results = Vec::new();
    for (index, placeholder) in placeholders.into_iter().enumerate() {
        if let Err(err) = placeholder {
            results.push(Err(err));
            continue;
        }
        let console = std::mem::replace(&mut consoles[index], Console::new(false));
        let name = &names[index];
        let exit = match statuses[index] {
            // busybox timeout's SIGTERM: run-guest.sh destroyed the guest and exited 143.
            Some(143) | None => Ok(GuestExit::Timeout),
            Some(status) => GuestExit::from_script(status).with_context(|| {
                let said = &last_stderr[index];
                let said = if said.is_empty() {
                    String::new()
                } else {
                    format!(":\n  {}", said.join("\n  "))
                };
                format!("run-guest.sh failed for {name} (status {status}){said}")
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
        let left = leftovers[index]
            .as_deref()
            .map(|left| left.trim().trim_end_matches(',').trim())
            .unwrap_or_default();
        let exit = exit.and_then(|exit| {
            ensure!(
                left.is_empty(),
                "{name} left things behind in dom0 after it ended: {left}"
            );
            Ok(exit)
        });
        let report = reports[index].as_ref();
        let stop_latency = report
            .and_then(|report| report.stop_sent)
            .zip(ended_at[index])
            .and_then(|(sent, ended)| ended.checked_duration_since(sent));
        let client = reports
            .get_mut(index)
            .and_then(Option::take)
            .map(|report| report.result);
        results.push(exit.map(|exit| SessionOutcome {
            guest: GuestOutcome {
                exit,
                console: console.text,
                stop_latency,
            },
            client,
        }));
    }
    Ok(results)
}

/// The job's helper: what a guest left behind in dom0 — domains other than dom0, ports
/// of xenbr0 other than eth0, back ends in Xenstore, bound loop devices — waiting up to
/// ~3 s for them to go (netback removes a vif asynchronously, a loop device is cleared
/// once blkback has closed it).
const LEFTOVERS_SH: &str = r#"cd /
leftovers() {
	tries=0
	while :; do
		left=$({
			if [ -e /run/xenstored.pid ]; then
				xl list | awk 'NR > 2 { print "domain " $1 }'
			else
				# A NoXS lab: no xl; xendevd must have let go of every domain too.
				chaos list | awk 'NR > 1 && $1 != 0 { print "domain " $2 }'
				xendevd query 2>/dev/null | sed -n 's/.*"domains":\[\(.*\)\].*/\1/p' |
					grep -o '"domid":[0-9]*' | sed 's/^"domid":/xendevd serves domain /'
			fi
			ls /sys/class/net/xenbr0/brif 2>/dev/null | grep -vx eth0 | sed 's/^/bridge port /'
			# Without xenstored, xenstore-list falls back to /dev/xen/xenbus and never returns.
			[ -e /run/xenstored.pid ] &&
				xenstore-list /local/domain/0/backend 2>/dev/null | sed 's|^|Xenstore /local/domain/0/backend/|'
			for file in /sys/block/loop*/loop/backing_file; do
				[ -e "$file" ] && echo "loop device $(echo "$file" | cut -d/ -f4) on $(cat "$file")"
			done
		} | tr '\n' ',')
		if [ -z "$left" ] || [ "$tries" -ge 30 ]; then
			break
		fi
		tries=$((tries + 1))
		sleep 0.1
	done
	echo "$left"
}
"#;

/// xl (or chaos) on this machine: run-guest.sh (run-chaos.sh) with its stdout (the
/// console) piped to us and its stderr passed through. On timeout or Ctrl-C it gets
/// SIGTERM and destroys the guest.
fn run_native(session: Session<'_>) -> Result<SessionOutcome> {
    let Session { run, client } = session;
    let domain = domain_name(&run.image.name, &lab::nonce(), 0);
    let direct = match run.net {
        GuestNet::Static(cidr) => Some(cidr.addr),
        GuestNet::Dhcp => None,
    };
    let ports = Ports {
        forwards: direct
            .map(|addr| {
                run.forwards
                    .iter()
                    .map(|forward| {
                        (
                            forward.guest,
                            SocketAddr::V4(SocketAddrV4::new(addr, forward.guest)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        direct,
    };
    if run.echo {
        print_disks(&run)?;
    }
    // xl: each image on a loop device of its own, detached when `loops` drops (after
    // the guest is gone) or by the Ctrl-C handler. chaos: the image files themselves,
    // which xendevd puts loop devices in front of.
    let mut loops = Vec::new();
    let mut disk_specs = Vec::new();
    for (index, (disk, (path, _))) in run
        .disks
        .iter()
        .zip(disk::check_all(&run.disks)?)
        .enumerate()
    {
        let source = match run.toolstack {
            Toolstack::Xl => {
                let device = LoopDevice::attach(&path, disk.read_only)?;
                let name = device.device().to_owned();
                loops.push(device);
                name
            }
            Toolstack::Chaos => path.display().to_string(),
        };
        disk_specs.push(format!(
            "{}:{source},{},{}",
            run.toolstack.disk_type(),
            disk::vdev(index),
            disk.xl_mode()
        ));
    }
    let disk_specs = disk_specs.join(" ");
    let chaos = match run.toolstack {
        Toolstack::Chaos => build::build_host_tools()?
            .into_iter()
            .find(|tool| tool.ends_with("chaos"))
            .context("no chaos binary was built")?,
        Toolstack::Xl => PathBuf::new(),
    };
    thread::scope(|scope| {
        let mut console = Console::new(run.echo);
        let stopper = Stopper::Native(run.toolstack, chaos.clone());
        let mut client =
            client.map(|client| ClientThread::spawn(scope, client, ports, stopper, domain.clone()));
        let exit = run_native_into(&run, &domain, &disk_specs, &chaos, &mut |line| {
            console.line(line);
            if let Some(client) = &mut client {
                client.line(line);
            }
        });
        let ended = Instant::now();
        let report = client.map(ClientThread::join);
        let exit = exit?;
        let stop_latency = report
            .as_ref()
            .and_then(|report| report.stop_sent)
            .and_then(|sent| ended.checked_duration_since(sent));
        Ok(SessionOutcome {
            guest: GuestOutcome {
                exit,
                console: console.text,
                stop_latency,
            },
            client: report.map(|report| report.result),
        })
    })
}

fn run_native_into(
    run: &GuestRun,
    domain: &str,
    disk_specs: &str,
    chaos: &std::path::Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<GuestExit> {
    let mut cmd = Command::new("sh");
    // The script travels as `sh -c`'s argument: no file to write or keep current.
    cmd.arg("-c")
        .arg(run.toolstack.script())
        .arg(match run.toolstack {
            Toolstack::Xl => "run-guest.sh",
            Toolstack::Chaos => "run-chaos.sh",
        })
        .arg(&run.image.path)
        .arg(run.mem_mib.to_string())
        .args(run.net.args(false))
        .args(&run.args)
        .env("RUN_GUEST_NAME", domain)
        .env("RUN_GUEST_DISKS", disk_specs)
        .env(
            "RUN_GUEST_DEV_METHOD",
            if run.noxs { "noxs" } else { "xenstore" },
        )
        .env("CHAOS", chaos)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let child = ChildGuard::spawn(&mut cmd, Duration::from_secs(10))?;
    let lines = read_lines(child.take_stdout().expect("piped"));
    let deadline = Instant::now() + run.timeout;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => on_line(&line),
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
            (GuestExit::Destroyed, 6),
        ] {
            assert_eq!(exit.code(), code);
            assert!(RUN_HELP.contains(&format!("  {code}    ")));
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

    #[test]
    fn forwards_parse() {
        assert_eq!(
            "1313:13".parse::<Forward>(),
            Ok(Forward {
                host: 1313,
                guest: 13
            })
        );
        for (bad, why) in [
            ("1313", "is not HOSTPORT:GUESTPORT"),
            ("70000:13", "host port `70000`"),
            ("0:13", "host port `0`"),
            ("1313:", "guest port ``"),
            ("1313:x", "guest port `x`"),
            ("a:13", "host port `a`"),
        ] {
            let err = bad.parse::<Forward>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn cidrs() {
        let cidr: Ipv4Cidr = "10.0.2.16/24".parse().unwrap();
        assert_eq!(cidr, Ipv4Cidr::LAB_GUEST);
        assert_eq!(cidr.to_string(), "10.0.2.16/24");
        assert_eq!(cidr.network().to_string(), "10.0.2.0/24");
        assert!(cidr.contains(lab::GATEWAY));
        assert!(!cidr.contains(Ipv4Addr::new(10, 0, 3, 1)));
        let everything: Ipv4Cidr = "1.2.3.4/0".parse().unwrap();
        assert!(everything.contains(Ipv4Addr::new(200, 0, 0, 1)));
        for (bad, why) in [
            ("10.0.2.16", "is not ADDR/PREFIX"),
            ("10.0.2/24", "not an IPv4 address"),
            ("10.0.2.16/33", "prefix `33`"),
            ("10.0.2.16/x", "prefix `x`"),
        ] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn lab_addresses() {
        for good in ["10.0.2.16/24", "10.0.2.100/24", "10.0.2.20/16"] {
            check_lab_addr(good.parse().unwrap()).unwrap();
        }
        for (bad, why) in [
            ("192.168.1.5/24", "the lab's network is 10.0.2.0/24"),
            (
                "10.0.2.16/28",
                "gateway 10.0.2.2 is outside its network 10.0.2.16/28",
            ),
            ("10.0.2.15/24", "is dom0"),
            ("10.0.2.2/24", "QEMU's gateway"),
            ("10.0.2.255/24", "broadcast"),
            ("10.0.2.0/24", "broadcast"),
        ] {
            let err = check_lab_addr(bad.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn network_arguments() {
        assert!(GuestNet::Dhcp.args(true).is_empty());
        let net = GuestNet::Static(Ipv4Cidr::LAB_GUEST);
        assert_eq!(net.args(true), ["ip=10.0.2.16/24", "gw=10.0.2.2"]);
        assert_eq!(net.args(false), ["ip=10.0.2.16/24"]);
    }

    #[test]
    fn host_ports() {
        // A port held by someone else is refused; a free one is taken.
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_host_port_free(port).unwrap_err().to_string();
        assert!(
            err.contains(&format!("host port {port} is not free")),
            "{err}"
        );
        drop(held);
        let free = free_host_port().unwrap();
        check_host_port_free(free).unwrap();

        let image = GuestImage {
            name: "x".into(),
            path: "/x".into(),
        };
        let mut forwards = Vec::new();
        let run = GuestRun {
            forwards: vec![
                Forward {
                    host: free,
                    guest: 13,
                },
                Forward { host: 0, guest: 7 },
            ],
            net: GuestNet::Static(Ipv4Cidr::LAB_GUEST),
            ..GuestRun::new(image.clone())
        };
        let ports = lab_ports(&run, &mut forwards).unwrap();
        assert_eq!(
            ports.addr(13).unwrap().to_string(),
            format!("127.0.0.1:{free}")
        );
        assert_ne!(ports.addr(7).unwrap().port(), 0);
        let err = ports.addr(80).unwrap_err().to_string();
        assert!(err.contains("guest port 80 is not forwarded"), "{err}");
        assert_eq!(forwards.len(), 2);
        // A second guest of the same boot: the same target shares the port, another
        // target on the same host port is refused.
        let again = lab_ports(&run, &mut forwards).unwrap();
        assert_eq!(again.addr(7).unwrap(), ports.addr(7).unwrap());
        assert_eq!(forwards.len(), 2);
        let other = GuestRun {
            forwards: vec![Forward {
                host: free,
                guest: 14,
            }],
            ..GuestRun::new(image)
        };
        let err = lab_ports(&other, &mut forwards).unwrap_err().to_string();
        assert!(err.contains("leads to 10.0.2.16:13 already"), "{err}");
    }

    /// Boots a lab (~15 s, needs QEMU and the lab's packages): `cargo test -p xtask --
    /// --ignored`. `cargo xtask test` covers the same through `run_sessions`.
    #[test]
    #[ignore = "boots the Xen lab"]
    fn run_guest_while_destroys_the_guest() {
        let image = build::build_apps(&["hello".to_owned()]).unwrap().remove(0);
        let run = GuestRun {
            args: vec!["sleep=60000".into()],
            ..GuestRun::new(image)
        };
        let started = Instant::now();
        let (seen, outcome) = run_guest_while(&run, "args:", Duration::from_secs(60), |_| {
            Ok(started.elapsed())
        })
        .unwrap();
        assert_eq!(outcome.exit, GuestExit::Destroyed, "{}", outcome.console);
        assert!(outcome.console.contains("args: sleep=60000"));
        assert!(!outcome.console.contains("slept:"), "{}", outcome.console);
        let latency = outcome.stop_latency.expect("destroyed after the client");
        assert!(latency < Duration::from_secs(10), "{latency:?}");
        eprintln!(
            "ready after {:.1} s, destroyed {:.2} s after the client",
            seen.as_secs_f64(),
            latency.as_secs_f64()
        );

        // A failing client comes back as an error with the console.
        let err = run_guest_while(&run, "args:", Duration::from_secs(60), |_| -> Result<()> {
            bail!("client says no")
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("client says no"), "{text}");
        assert!(text.contains("args: sleep=60000"), "{text}");
    }

    #[test]
    fn domain_names() {
        assert_eq!(
            domain_name("my app+1", "0123456789abcdef", 3),
            "xtask-my_app_1-01234567-3"
        );
    }
}
