//! A guest's network through a pod's network namespace, as Kata's "tcfilter" model and
//! urunc do it: CNI put a veth `eth0` in the namespace; the guest takes over eth0's
//! address, gateway and MAC ([`pod_interface`]); the host end of the guest's vif
//! (netback's `vifD.N`, or xendevd's NoXS tap of that name) moves from dom0's bridge
//! into the namespace, and two tc mirred filters pass every frame between the two,
//! eth0's ingress out of the vif and the vif's ingress out of eth0 ([`redirect`]). The
//! namespace's own stack sees none of it.
//!
//! iproute2's `ip` and `tc` do the work, run inside the namespace by a `setns` in the
//! child: the namespace is a path (`/var/run/netns/NAME`, or `/proc/PID/ns/net` for a
//! Kubernetes container), which neither `ip netns exec` nor `ip -n` takes. A device
//! moves into it with `ip link set DEV netns PATH` run in dom0's namespace: iproute2
//! opens a `netns` argument that has a `/` in it as a file and passes the descriptor to
//! the kernel (`IFLA_NET_NS_FD`). Their `-j` output is read by [`parse`] (pure, tested).
//!
//! xendevd lets a moved device be: netback's vif and its NoXS tap go with their domain
//! wherever they are. One limit: an xendevd restarted while a NoXS guest's tap is in a
//! pod's namespace takes the tap back by name in dom0's namespace, where it is not, so
//! it makes a new one on the bridge; the guest's traffic goes there, and the pod's tap
//! stays until its namespace goes.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

// Named by its path so that the module builds the same when an example includes this
// file by its path (a file included so counts as a `mod.rs`).
#[path = "podnet/parse.rs"]
pub mod parse;

use parse::{ETH0, ParseError};

/// eth0 of a network namespace: what the guest takes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// Setting up or taking down a pod's network failed: each names the namespace, device
/// or command.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot run `{command}` in {place} (is iproute2 installed?): {source}")]
    Spawn {
        command: String,
        place: Place,
        source: io::Error,
    },
    #[error("`{command}` in {place} failed ({status}): {stderr}")]
    Failed {
        command: String,
        place: Place,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` in {place}: {source}")]
    Output {
        command: String,
        place: Place,
        source: ParseError,
    },
    #[error("network namespace {} has no {ETH0} to redirect to {host_dev}", netns.display())]
    NoEth0 { netns: PathBuf, host_dev: String },
    #[error("dom0's network namespace has no device {0} to move into a pod's")]
    NoDevice(String),
    #[error(
        "{ETH0} in network namespace {} has an ingress qdisc already (another guest's \
         redirect?): one guest per network namespace",
        netns.display()
    )]
    Busy { netns: PathBuf },
    #[error("{error}; undoing what was done failed too: {undo}")]
    Undo {
        error: Box<PodNetError>,
        undo: Box<PodNetError>,
    },
}

/// Where a command ran, for messages.
#[derive(Debug, Clone)]
pub enum Place {
    Dom0,
    Netns(PathBuf),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Dom0 => write!(f, "dom0's network namespace"),
            Place::Netns(path) => write!(f, "network namespace {}", path.display()),
        }
    }
}

/// An open network namespace. Holding it open keeps the namespace what it was when
/// opened, whatever becomes of the path (a `/proc/PID` whose process ends).
#[derive(Debug)]
struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    fn open(path: &Path) -> Result<Self, PodNetError> {
        let file = File::open(path).map_err(|source| PodNetError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// `program args…` run in this namespace; its stdout.
    fn run(&self, program: &str, args: &[&str]) -> Result<String, PodNetError> {
        run(
            self.command(program),
            program,
            args,
            None,
            Place::Netns(self.path.clone()),
        )
    }

    /// `program -batch -` run in this namespace, its commands (lines) `batch`.
    fn run_batch(&self, program: &str, batch: &str) -> Result<String, PodNetError> {
        run(
            self.command(program),
            program,
            &["-batch", "-"],
            Some(batch),
            Place::Netns(self.path.clone()),
        )
    }

    /// `program`, to run in this namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let fd = self.file.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls may be made: setns(2) is a bare system call and the
        // error is built without allocating. `fd` is open in the child: `self.file`
        // outlives the spawn, and O_CLOEXEC closes it only at the exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// Device `dev` in this namespace, if it is there.
    fn link(&self, dev: &str) -> Result<Option<parse::Link>, PodNetError> {
        let args = ["-j", "link", "show"];
        let out = self.run("ip", &args)?;
        parse::link(&out, dev).map_err(|source| self.output_error("ip", &args, source))
    }

    /// Whether `dev` in this namespace has an ingress qdisc.
    fn has_ingress(&self, dev: &str) -> Result<bool, PodNetError> {
        let args = ["-j", "qdisc", "show", "dev", dev];
        let out = self.run("tc", &args)?;
        parse::has_ingress(&out).map_err(|source| self.output_error("tc", &args, source))
    }

    fn output_error(&self, program: &str, args: &[&str], source: ParseError) -> PodNetError {
        PodNetError::Output {
            command: command_line(program, args),
            place: Place::Netns(self.path.clone()),
            source,
        }
    }
}

/// `program args…` in dom0's (this process's) namespace; its stdout.
fn run_in_dom0(program: &str, args: &[&str]) -> Result<String, PodNetError> {
    run(Command::new(program), program, args, None, Place::Dom0)
}

/// Run `command` (`program args…`), `input` on its stdin; its stdout.
fn run(
    mut command: Command,
    program: &str,
    args: &[&str],
    input: Option<&str>,
    place: Place,
) -> Result<String, PodNetError> {
    let mut line = command_line(program, args);
    if let Some(input) = input {
        line = format!("{line} <<< '{}'", input.trim_end().replace('\n', "; "));
    }
    let spawn_error = |source| PodNetError::Spawn {
        command: line.clone(),
        place: place.clone(),
        source,
    };
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match input {
        None => command.stdin(Stdio::null()).output(),
        Some(input) => command.stdin(Stdio::piped()).spawn().and_then(|mut child| {
            // The batch is small: the pipe takes it whole before tc reads.
            let written = child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes());
            let out = child.wait_with_output()?;
            match written {
                // A tc that failed says why: its status and stderr tell more.
                Err(err) if out.status.success() => Err(err),
                _ => Ok(out),
            }
        }),
    }
    .map_err(spawn_error)?;
    if !out.status.success() {
        return Err(PodNetError::Failed {
            command: line,
            place,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The namespace at `netns` (a path: /proc/PID/ns/net or /var/run/netns/NAME): its eth0,
/// or None if it has no eth0 (then the guest goes on the default bridge). An eth0
/// without an IPv4 address is an error.
pub fn pod_interface(netns: &Path) -> Result<Option<PodInterface>, PodNetError> {
    let ns = Netns::open(netns)?;
    let addr_args = ["-j", "addr", "show"];
    let route_args = ["-j", "-4", "route", "show", "default"];
    let addrs = ns.run("ip", &addr_args)?;
    let routes = ns.run("ip", &route_args)?;
    parse::pod_interface(&addrs, &routes).map_err(|source| {
        // The routes are read only once eth0 has its address: an error about them says so.
        let args = match source {
            ParseError::Gateway { .. } => &route_args[..],
            _ => &addr_args[..],
        };
        ns.output_error("ip", args, source)
    })
}

/// What [`redirect`] set up, to be removed with [`Redirect::remove`]. It holds the
/// namespace open (and so its eth0) until removed or dropped.
#[derive(Debug)]
#[must_use = "the redirect stays on eth0 until removed"]
pub struct Redirect {
    netns: Netns,
    host_dev: String,
}

/// A step of [`redirect`], undone in reverse order if a later one fails.
#[derive(Debug)]
enum Step {
    /// `host_dev` moved into the namespace from dom0's, where it was a port of `master`.
    Moved { master: Option<String> },
    /// Ingress qdiscs (and their filters) added to eth0 and `host_dev`, maybe not both.
    Ingress,
}

/// `tc -batch` commands: each device's ingress redirected out of the other.
fn redirect_batch(host_dev: &str) -> String {
    [(ETH0, host_dev), (host_dev, ETH0)]
        .iter()
        .map(|(from, to)| {
            format!(
                "qdisc add dev {from} ingress\nfilter add dev {from} parent ffff: protocol all \
                 u32 match u8 0 0 action mirred egress redirect dev {to}\n"
            )
        })
        .collect()
}

/// The master (a bridge) of `dev` in dom0's namespace, from sysfs (no process to run).
fn dom0_master(dev: &str) -> Result<Option<String>, PodNetError> {
    let class = Path::new("/sys/class/net");
    // A device name is one path component (the kernel refuses `/` in one).
    let sane = !dev.is_empty() && !dev.contains('/') && dev != "." && dev != "..";
    if !sane || !class.join(dev).exists() {
        return Err(PodNetError::NoDevice(dev.to_owned()));
    }
    Ok(std::fs::read_link(class.join(dev).join("master"))
        .ok()
        .and_then(|link| Some(link.file_name()?.to_string_lossy().into_owned())))
}

/// Move `host_dev` (in dom0's own namespace, on some bridge) into the namespace, bring
/// it up with eth0's MTU, and redirect eth0's ingress to host_dev's egress and
/// host_dev's ingress to eth0's egress (Kata's tcfilter model). On failure, undo what
/// was done.
pub fn redirect(netns: &Path, host_dev: &str) -> Result<Redirect, PodNetError> {
    let ns = Netns::open(netns)?;
    let eth0 = ns.link(ETH0)?.ok_or_else(|| PodNetError::NoEth0 {
        netns: netns.to_owned(),
        host_dev: host_dev.to_owned(),
    })?;
    if ns.has_ingress(ETH0)? {
        return Err(PodNetError::Busy {
            netns: netns.to_owned(),
        });
    }
    let master = dom0_master(host_dev)?;
    let mut done = Vec::new();
    match setup(&ns, host_dev, master, eth0.mtu, &mut done) {
        Ok(()) => Ok(Redirect {
            netns: ns,
            host_dev: host_dev.to_owned(),
        }),
        Err(error) => match undo(&ns, host_dev, done) {
            Ok(()) => Err(error),
            Err(undo) => Err(PodNetError::Undo {
                error: Box::new(error),
                undo: Box::new(undo),
            }),
        },
    }
}

fn setup(
    ns: &Netns,
    host_dev: &str,
    master: Option<String>,
    mtu: u32,
    done: &mut Vec<Step>,
) -> Result<(), PodNetError> {
    let netns_path = ns.path.to_string_lossy();
    // A bridge port leaves its bridge as it leaves the namespace.
    run_in_dom0("ip", &["link", "set", host_dev, "netns", &netns_path])?;
    done.push(Step::Moved { master });
    ns.run(
        "ip",
        &["link", "set", host_dev, "mtu", &mtu.to_string(), "up"],
    )?;
    // One tc for the four commands (each one costs a process); it stops at the first
    // that fails, and undoing removes whichever qdisc it added.
    done.push(Step::Ingress);
    ns.run_batch("tc", &redirect_batch(host_dev))?;
    Ok(())
}

/// Undo `done`, last step first; every step is tried, the first failure reported.
fn undo(ns: &Netns, host_dev: &str, done: Vec<Step>) -> Result<(), PodNetError> {
    let mut first = None;
    for step in done.into_iter().rev() {
        let result = match step {
            Step::Ingress => remove_ingress(ns, &[ETH0, host_dev]),
            Step::Moved { master } => move_back(ns, host_dev, master.as_deref()),
        };
        if let Err(err) = result {
            first.get_or_insert(err);
        }
    }
    first.map_or(Ok(()), Err)
}

/// `host_dev` back into dom0's namespace (this process's), on its bridge again and up.
fn move_back(ns: &Netns, host_dev: &str, master: Option<&str>) -> Result<(), PodNetError> {
    let dom0 = format!("/proc/{}/ns/net", std::process::id());
    ns.run("ip", &["link", "set", host_dev, "netns", &dom0])?;
    if let Some(master) = master {
        run_in_dom0("ip", &["link", "set", host_dev, "master", master])?;
    }
    run_in_dom0("ip", &["link", "set", host_dev, "up"]).map(drop)
}

/// Remove the ingress qdisc (and so its filters) of each of `devs` in `ns` that has
/// one; a device that is not there, or goes meanwhile, is no error.
fn remove_ingress(ns: &Netns, devs: &[&str]) -> Result<(), PodNetError> {
    for &dev in devs {
        if ns.link(dev)?.is_none() || !ns.has_ingress(dev)? {
            continue;
        }
        if let Err(err) = ns.run("tc", &["qdisc", "del", "dev", dev, "ingress"]) {
            // The host device may go with its domain in the meantime.
            if ns.link(dev)?.is_some() {
                return Err(err);
            }
        }
    }
    Ok(())
}

impl Redirect {
    /// The device redirected to eth0.
    pub fn host_dev(&self) -> &str {
        &self.host_dev
    }

    /// Remove the qdiscs (and with them the filters) from eth0 and, if it is still
    /// there, the host device (it goes with the domain). Idempotent: what is gone
    /// already is no error.
    pub fn remove(self) -> Result<(), PodNetError> {
        remove_ingress(&self.netns, &[ETH0, &self.host_dev])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_tc_filters_both_ways() {
        assert_eq!(
            redirect_batch("vif3.0"),
            "qdisc add dev eth0 ingress\n\
             filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev vif3.0\n\
             qdisc add dev vif3.0 ingress\n\
             filter add dev vif3.0 parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev eth0\n"
        );
    }
}
