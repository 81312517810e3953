//! The interface, its sockets and the task that polls them.

use alloc::vec::Vec;
use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Poll, Waker};
use core::time::Duration;

use kernel::Args;
use kernel::sync::VcpuMutex;
use kernel::time::Instant;
use netfront::Netfront;
use netfront::datapath::Counters;
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, TxToken};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};
use spin::Mutex;

use crate::config::{Config, ConfigError};

/// Why networking could not start.
#[derive(Debug)]
pub enum NetError {
    Config(ConfigError),
    /// The toolstack gave us no usable vif.
    NoInterface,
    /// `start` was called twice.
    AlreadyStarted,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Config(err) => write!(f, "{err}"),
            Self::NoInterface => {
                f.write_str("no network interface (is there a vif in the domain config?)")
            }
            Self::AlreadyStarted => f.write_str("networking is already started"),
        }
    }
}

/// The interface's identity once it has an address.
#[derive(Debug, Clone, Copy)]
pub struct NetInfo {
    pub mac: EthernetAddress,
    pub address: Ipv4Cidr,
    pub gateway: Option<Ipv4Address>,
}

pub(crate) struct Stack {
    pub(crate) iface: Interface,
    pub(crate) device: Netfront,
    pub(crate) sockets: SocketSet<'static>,
    mac: EthernetAddress,
    dhcp: Option<SocketHandle>,
    address: Option<(Ipv4Cidr, Option<Ipv4Address>)>,
    address_waker: Option<Waker>,
    /// Gratuitous ARPs still to send after the vif connected to a new back end, and
    /// when the next is due.
    announcements: (u32, Instant),
}

/// Gratuitous ARPs after a reconnection, and the time between them: the first may go
/// out before the new back end's port forwards (a NoXS tap comes up as the guest
/// connects), and a peer that missed it would never ask (Linux sends as many with
/// `num_grat_arp`).
const ANNOUNCEMENTS: (u32, Duration) = (3, Duration::from_millis(250));

/// The stack is only touched from tasks on our single vCPU; the mutex keeps one task
/// at a time inside smoltcp.
pub(crate) static STACK: VcpuMutex<Option<Stack>> = VcpuMutex::new(None);

/// A wake-up for the poll task: the vif fired, or a socket has frames to send.
static KICKED: AtomicBool = AtomicBool::new(false);
static POLL_WAKER: Mutex<Option<Waker>> = Mutex::new(None);

/// Ask the poll task to run soon.
pub(crate) fn kick() {
    KICKED.store(true, Ordering::Release);
    if let Some(waker) = POLL_WAKER.lock().take() {
        waker.wake();
    }
}

pub(crate) fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((Instant::now().as_nanos() / 1000) as i64)
}

/// Run `f` on the stack; panics before [`start`].
pub(crate) fn with_stack<T>(f: impl FnOnce(&mut Stack) -> T) -> T {
    let mut guard = STACK.lock();
    f(guard
        .as_mut()
        .expect("net::start must run before sockets are used"))
}

/// Bring up networking on the first vif: configure it from `args` (`ip=`, `gw=`) or by
/// DHCP, start the poll task, and wait until the interface has an address.
pub async fn start(args: &Args) -> Result<NetInfo, NetError> {
    let config = Config::from_args(args).map_err(NetError::Config)?;
    if STACK.lock().is_some() {
        return Err(NetError::AlreadyStarted);
    }
    let mut vifs = Netfront::probe_all().await;
    if vifs.is_empty() {
        return Err(NetError::NoInterface);
    }
    let mut device = vifs.remove(0);
    // Arguments win; else the address the toolstack assigned (NoXS carries one); else DHCP.
    let config = match (config, device.assigned_address()) {
        (Config::Dhcp, Some(assigned)) => Config::Static {
            address: Ipv4Cidr::new(Ipv4Address::from(assigned.address), assigned.prefix_len),
            gateway: assigned.gateway.map(Ipv4Address::from),
        },
        (config, _) => config,
    };
    for extra in &vifs {
        log::info!(
            "net: vif{} is up but unused (the stack runs on vif{})",
            extra.id(),
            device.id()
        );
    }
    let mac = EthernetAddress(device.mac().0);
    device.set_event_handler(|_| kick());

    let mut iface_config = smoltcp::iface::Config::new(HardwareAddress::Ethernet(mac));
    // TCP initial sequence numbers and ephemeral ports need an unpredictable seed.
    iface_config.random_seed = arch::cpu::rdtsc() ^ kernel::time::utc_now().secs.rotate_left(32);
    let mut iface = Interface::new(iface_config, &mut device, now());
    let mut sockets = SocketSet::new(Vec::new());
    let (dhcp, address) = match config {
        Config::Static { address, gateway } => {
            set_address(&mut iface, address, gateway);
            announce(&mut device, mac, address.address());
            (None, Some((address, gateway)))
        }
        Config::Dhcp => (Some(sockets.add(dhcpv4::Socket::new())), None),
    };
    *STACK.lock() = Some(Stack {
        iface,
        device,
        sockets,
        mac,
        dhcp,
        address,
        address_waker: None,
        announcements: (0, Instant::now()),
    });
    kernel::executor::spawn(poll_task());

    let (address, gateway) = core::future::poll_fn(|cx| {
        with_stack(|stack| match stack.address {
            Some(address) => Poll::Ready(address),
            None => {
                stack.address_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await;
    Ok(NetInfo {
        mac,
        address,
        gateway,
    })
}

/// Send a gratuitous ARP: tell the segment which MAC now has `address`, before anyone
/// has to ask. Peers that would otherwise resolve us under load (QEMU's user network
/// holds packets behind each unanswered request) and switches learn us at once.
fn announce(device: &mut Netfront, mac: EthernetAddress, address: Ipv4Address) {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: address,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: address,
    };
    let ethernet = EthernetRepr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let Some(token) = device.transmit(now()) else {
        return;
    };
    token.consume(ethernet.buffer_len() + arp.buffer_len(), |buf| {
        let mut frame = EthernetFrame::new_unchecked(buf);
        ethernet.emit(&mut frame);
        arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    });
}

fn set_address(iface: &mut Interface, address: Ipv4Cidr, gateway: Option<Ipv4Address>) {
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        let _ = addrs.push(IpCidr::Ipv4(address));
    });
    iface.routes_mut().remove_default_ipv4_route();
    if let Some(gateway) = gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
    }
}

impl Stack {
    /// One round: move frames, then act on DHCP. Returns how long the task may sleep
    /// (`None`: until woken).
    fn poll(&mut self) -> Option<Duration> {
        // Connected to a new back end (restored, perhaps on another host): tell the
        // segment where our address is now, a few times.
        if self.device.take_reconnected() {
            self.announcements = (ANNOUNCEMENTS.0, Instant::now());
        }
        let (left, due) = self.announcements;
        if left > 0 && Instant::now() >= due {
            if let Some(IpCidr::Ipv4(address)) = self.iface.ip_addrs().first().copied() {
                announce(&mut self.device, self.mac, address.address());
            }
            self.announcements = (left - 1, Instant::now().saturating_add(ANNOUNCEMENTS.1));
        }
        let now = now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.handle_dhcp();
        let mut delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        if self.announcements.0 > 0 {
            let next = self
                .announcements
                .1
                .saturating_duration_since(Instant::now());
            delay = Some(delay.map_or(next, |d| d.min(next)));
        }
        match self.device.prepare_to_wait() {
            // Frames arrived while we polled: go again at once.
            Ok(true) => Some(Duration::ZERO),
            Ok(false) => delay,
            Err(err) => {
                log::error!("net: {err}: interface stopped");
                None
            }
        }
    }

    fn handle_dhcp(&mut self) {
        let Some(handle) = self.dhcp else { return };
        match self.sockets.get_mut::<dhcpv4::Socket<'_>>(handle).poll() {
            Some(dhcpv4::Event::Configured(lease)) => {
                log::info!(
                    "net: dhcp: {} via {}",
                    lease.address,
                    lease
                        .router
                        .map_or_else(|| "no gateway".into(), |r| alloc::format!("{r}"))
                );
                set_address(&mut self.iface, lease.address, lease.router);
                announce(&mut self.device, self.mac, lease.address.address());
                self.address = Some((lease.address, lease.router));
                if let Some(waker) = self.address_waker.take() {
                    waker.wake();
                }
            }
            Some(dhcpv4::Event::Deconfigured) => {
                // smoltcp also reports this once at start, with nothing to lose yet.
                if self.address.is_some() {
                    log::warn!("net: dhcp: lease lost");
                }
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.address = None;
            }
            None => {}
        }
    }
}

/// The vif's traffic counters.
pub fn counters() -> Option<Counters> {
    STACK.lock().as_ref().map(|stack| stack.device.counters())
}

async fn poll_task() {
    loop {
        let delay = with_stack(Stack::poll);
        if delay == Some(Duration::ZERO) {
            kernel::executor::yield_now().await;
            continue;
        }
        let mut timer = pin!(delay.map(kernel::executor::after));
        core::future::poll_fn(|cx| {
            if KICKED.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            *POLL_WAKER.lock() = Some(cx.waker().clone());
            // A kick between the check and storing the waker must not be lost.
            if KICKED.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            match timer.as_mut().as_pin_mut() {
                Some(sleep) => sleep.poll(cx),
                None => Poll::Pending,
            }
        })
        .await;
    }
}
