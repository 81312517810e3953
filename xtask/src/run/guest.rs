//! The guest types of `cargo xtask run`: what to boot ([`GuestRun`] with its
//! [`Forward`]s, [`GuestNet`] and disks), how it ended ([`GuestExit`],
//! [`GuestOutcome`]) and where a host client reaches its ports ([`Ports`]).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use crate::build::GuestImage;
use crate::disk::{self, Disk};
use crate::lab;
use crate::toolstack::Toolstack;

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

    pub(super) fn broadcast(self) -> Ipv4Addr {
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
    pub(super) fn args(self, in_lab: bool) -> Vec<String> {
        match self {
            GuestNet::Dhcp => Vec::new(),
            GuestNet::Static(cidr) if in_lab => {
                vec![format!("ip={cidr}"), format!("gw={}", lab::GATEWAY)]
            }
            GuestNet::Static(cidr) => vec![format!("ip={cidr}")],
        }
    }

    /// The guest's address in the lab.
    pub(super) fn lab_addr(self) -> Ipv4Addr {
        match self {
            GuestNet::Dhcp => lab::GUEST_ADDR,
            GuestNet::Static(cidr) => cidr.addr,
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

    /// Refuse what cannot run: arguments an xl config cannot carry, a network or disks
    /// for a guest booted as dom0, NoXS without chaos, disk images that are no images.
    pub fn check(&self) -> Result<()> {
        for arg in &self.args {
            ensure!(
                !arg.contains(['"', '\\', '\n']),
                "guest argument {arg:?}: quotes, backslashes and newlines cannot pass through an xl config"
            );
        }
        if self.dom0 {
            ensure!(
                self.forwards.is_empty() && self.net == GuestNet::Dhcp,
                "a guest booted as dom0 has no network: no forwards, no address"
            );
            ensure!(
                self.disks.is_empty(),
                "a guest booted as dom0 has no disks: it has no back ends to talk to"
            );
        }
        ensure!(
            !self.noxs || self.toolstack == Toolstack::Chaos,
            "NoXS needs chaos: xl only knows Xenstore"
        );
        disk::check_all(&self.disks)?;
        Ok(())
    }

    /// Each disk with its index (0 is xvda), its image's path and its size, checked.
    pub fn checked_disks(&self) -> Result<Vec<(usize, &Disk, PathBuf, u64)>> {
        Ok(self
            .disks
            .iter()
            .zip(disk::check_all(&self.disks)?)
            .enumerate()
            .map(|(index, (disk, (path, size)))| (index, disk, path, size))
            .collect())
    }

    /// Print `run: disk xvda ← /path/img (64 MiB, read-write)` for each disk.
    pub fn print_disks(&self) -> Result<()> {
        for (index, disk, path, size) in self.checked_disks()? {
            eprintln!("run: {}", disk::describe(index, disk, &path, size));
        }
        Ok(())
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
    /// Destroyed from outside (`xl destroy`), as after a client ([`super::run_guest_while`]):
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

    pub(super) fn describe(self) -> &'static str {
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
    pub(super) fn from_script(status: i32) -> Option<Self> {
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
    /// ([`super::Client::stop`]: destroy, shutdown or reboot), up to the moment run-guest.sh
    /// reported its end (`None` if it ended before the request, or had no client).
    pub stop_latency: Option<Duration>,
}

/// Where the host reaches a guest's ports, for a client: forwarded ports on 127.0.0.1 in
/// the lab; natively the guest's own address.
#[derive(Debug, Clone, Default)]
pub struct Ports {
    /// (guest port, the address a host client uses for it)
    pub(super) forwards: Vec<(u16, SocketAddr)>,
    /// Natively: the guest's static address, where every port is reachable.
    pub(super) direct: Option<Ipv4Addr>,
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

/// A domain name for a guest: `xtask-APP-NONCE-INDEX` in characters xl and the lab's
/// control line take.
pub(super) fn domain_name(app: &str, nonce: &str, index: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn network_arguments() {
        assert!(GuestNet::Dhcp.args(true).is_empty());
        let net = GuestNet::Static(Ipv4Cidr::LAB_GUEST);
        assert_eq!(net.args(true), ["ip=10.0.2.16/24", "gw=10.0.2.2"]);
        assert_eq!(net.args(false), ["ip=10.0.2.16/24"]);
    }

    #[test]
    fn domain_names() {
        assert_eq!(
            domain_name("my app+1", "0123456789abcdef", 3),
            "xtask-my_app_1-01234567-3"
        );
    }
}
