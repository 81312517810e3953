//! Network devices: put a vif on a bridge (`SIOCBRADDIF`), bring it up (`IFF_UP`),
//! take it off (`SIOCBRDELIF`). The ioctls go through an `AF_UNIX` datagram socket, as
//! brctl's do; sysfs (`/sys/class/net`) answers the questions that make the errors
//! precise (does the device exist, is it a bridge, whose port is it).

use std::ffi::c_ulong;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The structure and requests of `linux/if.h` and `linux/sockios.h` (the taps of NoXS
/// vifs use `IfReq` too).
pub mod sys {
    use std::ffi::{c_int, c_short, c_ulong};

    /// `IFNAMSIZ`: an interface name and its NUL.
    pub const IFNAMSIZ: usize = 16;
    pub const SIOCGIFFLAGS: c_ulong = 0x8913;
    pub const SIOCSIFFLAGS: c_ulong = 0x8914;
    /// `SIOCBRADDIF`, `SIOCBRDELIF`: bridge port add and remove, by interface index.
    pub const SIOCBRADDIF: c_ulong = 0x89a2;
    pub const SIOCBRDELIF: c_ulong = 0x89a3;
    /// `IFF_UP`.
    pub const IFF_UP: c_short = 0x1;

    /// `struct ifreq` (`linux/if.h`): a name and a 24-byte union, of which xendevd uses
    /// the index, the flags and the hardware address.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct IfReq {
        pub name: [u8; IFNAMSIZ],
        pub data: IfReqData,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union IfReqData {
        pub ifindex: c_int,
        pub flags: c_short,
        pub hwaddr: SockAddr,
        /// The union's size: `struct ifmap`, the largest member, is 24 bytes.
        pub pad: [u8; 24],
    }

    /// `struct sockaddr`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct SockAddr {
        pub family: u16,
        pub data: [u8; 14],
    }

    nix::ioctl_readwrite_bad!(
        /// `SIOCGIFFLAGS`.
        ///
        /// # Safety
        /// `fd` must be a socket and `data` point to a valid `IfReq`.
        get_flags,
        SIOCGIFFLAGS,
        IfReq
    );
    nix::ioctl_write_ptr_bad!(
        /// `SIOCSIFFLAGS`.
        ///
        /// # Safety
        /// `fd` must be a socket and `data` point to a valid `IfReq`.
        set_flags,
        SIOCSIFFLAGS,
        IfReq
    );
    nix::ioctl_write_ptr_bad!(
        /// `SIOCBRADDIF`: `name` is the bridge, `ifindex` the new port.
        ///
        /// # Safety
        /// `fd` must be a socket and `data` point to a valid `IfReq`.
        bridge_add,
        SIOCBRADDIF,
        IfReq
    );
    nix::ioctl_write_ptr_bad!(
        /// `SIOCBRDELIF`: `name` is the bridge, `ifindex` the port.
        ///
        /// # Safety
        /// `fd` must be a socket and `data` point to a valid `IfReq`.
        bridge_del,
        SIOCBRDELIF,
        IfReq
    );
}

/// A network operation failed; the message goes to `hotplug-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("dom0 has no network device {0}")]
    NoDevice(String),
    #[error("dom0 has no bridge named {0}")]
    NoBridge(String),
    #[error("{0} is a network device but not a bridge")]
    NotABridge(String),
    #[error("{vif} is a port of {other} already, not of {bridge}")]
    OtherBridge {
        vif: String,
        bridge: String,
        other: String,
    },
    #[error("cannot open a socket for network ioctls: {0}")]
    Socket(Errno),
    #[error(
        "bridge {bridge} has as many ports as a Linux bridge takes ({MAX_BRIDGE_PORTS}, \
         BR_MAX_PORTS): put further vifs on another bridge"
    )]
    BridgeFull { bridge: String },
    #[error("{request} {detail}: {errno}")]
    Ioctl {
        request: &'static str,
        detail: String,
        errno: Errno,
    },
}

/// The ports a Linux bridge takes: port numbers are 10 bits, and 0 is not one.
pub const MAX_BRIDGE_PORTS: u32 = 1023;

/// Why `SIOCBRADDIF` of `vif` to `bridge` failed with `errno`: the bridge's port limit
/// by name, anything else as the ioctl's error.
fn add_port_error(errno: Errno, bridge: &str, vif: &str) -> NetError {
    match errno {
        Errno::EXFULL => NetError::BridgeFull {
            bridge: bridge.to_owned(),
        },
        errno => NetError::Ioctl {
            request: "SIOCBRADDIF",
            detail: format!("(add {vif} to {bridge})"),
            errno,
        },
    }
}

/// Where a device stands with respect to bridges, from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Missing,
    Free,
    Of(String),
}

fn class_net(name: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(name)
}

fn port_of(name: &str) -> Port {
    let dir = class_net(name);
    if !dir.exists() {
        return Port::Missing;
    }
    // `brport/bridge` links to the bridge's device directory while it is a port.
    match fs::read_link(dir.join("brport/bridge")) {
        Ok(target) => Port::Of(
            target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        Err(_) => Port::Free,
    }
}

fn check_bridge(bridge: &str) -> Result<(), NetError> {
    let dir = class_net(bridge);
    if !dir.exists() {
        return Err(NetError::NoBridge(bridge.to_owned()));
    }
    if !dir.join("bridge").is_dir() {
        return Err(NetError::NotABridge(bridge.to_owned()));
    }
    Ok(())
}

/// A socket for interface ioctls.
#[derive(Debug)]
pub struct NetControl {
    socket: OwnedFd,
}

/// An `ifreq` for the interface `name` (cut to `IFNAMSIZ - 1` bytes), union zeroed.
pub fn ifreq(name: &str) -> sys::IfReq {
    let mut request = sys::IfReq {
        name: [0; sys::IFNAMSIZ],
        data: sys::IfReqData { pad: [0; 24] },
    };
    let len = name.len().min(sys::IFNAMSIZ - 1);
    request.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    request
}

/// How adding a port went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    Now,
    /// It was a port of that bridge already (a second `online`, or a rescan).
    Already,
}

/// How removing a port went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Now,
    /// The device is gone (netback unregisters it right after `offline`) or is no
    /// port of that bridge: nothing to do.
    NothingToDo,
}

impl NetControl {
    pub fn open() -> Result<Self, NetError> {
        let socket = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(NetError::Socket)?;
        Ok(Self { socket })
    }

    fn index(&self, name: &str) -> Result<i32, NetError> {
        match nix::net::if_::if_nametoindex(name) {
            Ok(index) => Ok(i32::try_from(index).unwrap_or(i32::MAX)),
            Err(Errno::ENODEV) => Err(NetError::NoDevice(name.to_owned())),
            Err(errno) => Err(NetError::Ioctl {
                request: "SIOCGIFINDEX",
                detail: name.to_owned(),
                errno,
            }),
        }
    }

    fn bridge_ioctl(&self, request: c_ulong, bridge: &str, index: i32) -> Result<(), Errno> {
        let mut req = ifreq(bridge);
        req.data.ifindex = index;
        let fd = self.socket.as_raw_fd();
        // SAFETY: `fd` is our socket; `req` is a valid ifreq that lives across the call.
        unsafe {
            if request == sys::SIOCBRADDIF {
                sys::bridge_add(fd, &raw const req)
            } else {
                sys::bridge_del(fd, &raw const req)
            }
        }
        .map(drop)
    }

    /// Make `vif` a port of `bridge` (nothing to do if it is one already).
    pub fn add_port(&self, bridge: &str, vif: &str) -> Result<Added, NetError> {
        check_bridge(bridge)?;
        match port_of(vif) {
            Port::Missing => return Err(NetError::NoDevice(vif.to_owned())),
            Port::Of(other) if other == bridge => return Ok(Added::Already),
            Port::Of(other) => {
                return Err(NetError::OtherBridge {
                    vif: vif.to_owned(),
                    bridge: bridge.to_owned(),
                    other,
                });
            }
            Port::Free => {}
        }
        let index = self.index(vif)?;
        self.bridge_ioctl(sys::SIOCBRADDIF, bridge, index)
            .map_err(|errno| add_port_error(errno, bridge, vif))?;
        Ok(Added::Now)
    }

    /// Take `vif` off `bridge`; a vif that is gone or no port of it is fine.
    pub fn remove_port(&self, bridge: &str, vif: &str) -> Result<Removed, NetError> {
        match port_of(vif) {
            Port::Of(other) if other == bridge => {}
            _ => return Ok(Removed::NothingToDo),
        }
        let index = match self.index(vif) {
            Ok(index) => index,
            Err(NetError::NoDevice(_)) => return Ok(Removed::NothingToDo),
            Err(err) => return Err(err),
        };
        match self.bridge_ioctl(sys::SIOCBRDELIF, bridge, index) {
            Ok(()) => Ok(Removed::Now),
            // Unregistered meanwhile (ENODEV from the index, EINVAL: no port any more).
            Err(Errno::ENODEV | Errno::EINVAL) => Ok(Removed::NothingToDo),
            Err(errno) => Err(NetError::Ioctl {
                request: "SIOCBRDELIF",
                detail: format!("(remove {vif} from {bridge})"),
                errno,
            }),
        }
    }

    /// Set `IFF_UP` on `name`.
    pub fn set_up(&self, name: &str) -> Result<(), NetError> {
        let mut req = ifreq(name);
        let fd = self.socket.as_raw_fd();
        let failed = |request| {
            move |errno| match errno {
                Errno::ENODEV => NetError::NoDevice(name.to_owned()),
                errno => NetError::Ioctl {
                    request,
                    detail: name.to_owned(),
                    errno,
                },
            }
        };
        // SAFETY: `fd` is our socket; `req` is a valid ifreq that lives across the call.
        unsafe { sys::get_flags(fd, &raw mut req) }.map_err(failed("SIOCGIFFLAGS"))?;
        // SAFETY: SIOCGIFFLAGS filled the `flags` member of the union.
        let flags = unsafe { req.data.flags };
        if flags & sys::IFF_UP != 0 {
            return Ok(());
        }
        req.data.flags = flags | sys::IFF_UP;
        // SAFETY: as above.
        unsafe { sys::set_flags(fd, &raw const req) }.map_err(failed("SIOCSIFFLAGS"))?;
        Ok(())
    }
}

/// Whether a network device called `name` exists.
pub fn exists(name: &str) -> bool {
    class_net(name).exists()
}

/// The bridge `name` is a port of, if any.
pub fn bridge_of(name: &str) -> Option<String> {
    match port_of(name) {
        Port::Of(bridge) => Some(bridge),
        Port::Missing | Port::Free => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// As `linux/if.h` and `linux/sockios.h` give them.
    #[test]
    fn abi() {
        assert_eq!(size_of::<sys::IfReq>(), 40);
        assert_eq!(sys::SIOCBRADDIF, 0x89a2);
        assert_eq!(sys::SIOCBRDELIF, 0x89a3);
        assert_eq!(sys::SIOCGIFFLAGS, 0x8913);
        assert_eq!(sys::SIOCSIFFLAGS, 0x8914);
        let req = ifreq("a-name-longer-than-fifteen");
        assert_eq!(&req.name[..15], b"a-name-longer-t");
        assert_eq!(req.name[15], 0);
    }

    #[test]
    fn a_full_bridge_is_named() {
        assert_eq!(
            add_port_error(Errno::EXFULL, "xenbr0", "vif7.0").to_string(),
            "bridge xenbr0 has as many ports as a Linux bridge takes (1023, BR_MAX_PORTS): put \
             further vifs on another bridge"
        );
        assert_eq!(
            add_port_error(Errno::EBUSY, "xenbr0", "vif7.0").to_string(),
            "SIOCBRADDIF (add vif7.0 to xenbr0): EBUSY: Device or resource busy"
        );
    }

    #[test]
    fn precise_errors_for_missing_devices() {
        let net = NetControl::open().unwrap();
        assert_eq!(
            net.add_port("xendevd-nobr", "lo").unwrap_err().to_string(),
            "dom0 has no bridge named xendevd-nobr"
        );
        assert_eq!(
            net.add_port("lo", "lo").unwrap_err().to_string(),
            "lo is a network device but not a bridge"
        );
        assert_eq!(
            net.set_up("xendevd-none").unwrap_err(),
            NetError::NoDevice("xendevd-none".into())
        );
        assert_eq!(
            net.remove_port("xenbr0", "xendevd-none").unwrap(),
            Removed::NothingToDo
        );
        assert!(exists("lo"));
        assert_eq!(bridge_of("lo"), None);
    }
}
