//! The command line of `cargo xtask run`: its flags, its help (exit statuses included)
//! and how they become a [`GuestRun`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::{Forward, GuestNet, GuestRun, Ipv4Cidr, is_xen_dom0, run_guest};
use crate::build::{self, GuestImage};
use crate::disk::Disk;
use crate::lab;
use crate::prereq::{self, Need};
use crate::toolstack::Toolstack;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::GuestExit;

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
}
