//! `cargo xtask run` in the Xen lab: one lab boot runs every guest of a batch in turn,
//! each with its toolstack's run script under busybox `timeout`. Marker lines with the
//! guest's index tell the job's lines apart per guest; a guest's client stops it through
//! the lab's control line.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use super::client::{Client, ClientReport, ClientThread, Dom0, Stopper};
use super::guest::domain_name;
use super::{
    Console, GuestExit, GuestNet, GuestOutcome, GuestRun, Ipv4Cidr, Ports, Session, SessionOutcome,
};
use crate::build::GuestImage;
use crate::disk::{self, Disk};
use crate::lab::{self, ExecEnd, ExecOptions, HostForward, LabControl, Line};
use crate::toolstack::Toolstack;

/// How long a lab may take to boot before the first guest starts (it takes ~9 s
/// under TCG here; CI machines can be much slower).
const LAB_BOOT_ALLOWANCE: Duration = Duration::from_secs(300);

/// How long dom0 may take after a guest to check nothing was left behind (the job
/// polls for up to ~3 s, `xl list` itself takes ~0.1 s).
const AFTER_GUEST_ALLOWANCE: Duration = Duration::from_secs(15);

/// The job's helper that reports what a guest left behind.
const LEFTOVERS_SH: &str = include_str!("leftovers.sh");

/// What one lab boot needs from all its guests.
#[derive(Debug, Default)]
struct LabBoot {
    /// The relay's forwards (guests run one at a time, so they share it).
    forwards: Vec<HostForward>,
    /// Dom0's virtio disks.
    disks: Vec<Disk>,
    /// The images in `/apps`, each under a name of its own, even if two share a file
    /// name.
    images: Vec<GuestImage>,
}

impl LabBoot {
    /// The name of `image` in `/apps`, adding it if it is new.
    fn app(&mut self, image: &GuestImage, index: usize) -> String {
        if let Some(known) = self.images.iter().find(|known| known.path == image.path) {
            return known.name.clone();
        }
        let mut name = image.name.clone();
        if self.images.iter().any(|known| known.name == name) {
            name = format!("{name}-{index}");
        }
        self.images.push(GuestImage {
            name: name.clone(),
            path: image.path.clone(),
        });
        name
    }
}

/// One guest of a lab boot: how it runs, and what the job reports about it.
struct LabGuest<'a> {
    run: GuestRun,
    /// Until its thread starts (when the guest does).
    client: Option<Client<'a>>,
    /// `/apps/NAME` in dom0.
    app: String,
    domain: String,
    ports: Ports,
    /// `RUN_GUEST_DISKS` for the run script: disk specs of dom0's virtio disks.
    disk_specs: String,
    console: Console,
    /// The run script's exit status.
    status: Option<i32>,
    ended_at: Option<Instant>,
    /// What it left behind in dom0 (`leftovers`).
    left: Option<String>,
    /// Xen's remarks while it ran: they explain a crash, and are shown then.
    xen_lines: Vec<String>,
    /// The run script's last words on stderr: they name the cause when it fails.
    last_stderr: VecDeque<String>,
    /// Its client's, once the thread has ended.
    report: Option<ClientReport>,
}

impl<'a> LabGuest<'a> {
    /// The `index`th guest of the boot: its ports, disks and image added to `boot`.
    fn prepare(
        index: usize,
        session: Session<'a>,
        nonce: &str,
        boot: &mut LabBoot,
    ) -> Result<Self> {
        let Session { run, client } = session;
        let ports = lab_ports(&run, &mut boot.forwards)?;
        let disk_specs = lab_disk_specs(&run, &mut boot.disks)?;
        let app = boot.app(&run.image, index);
        if run.echo {
            announce(&run, &ports)?;
        }
        Ok(Self {
            domain: domain_name(&app, nonce, index),
            console: Console::new(run.echo),
            run,
            client,
            app,
            ports,
            disk_specs,
            status: None,
            ended_at: None,
            left: None,
            xen_lines: Vec::new(),
            last_stderr: VecDeque::new(),
            report: None,
        })
    }

    /// The job's lines for it: its run script under `timeout`, between marker lines.
    fn job(&self, index: usize, marker: &str) -> String {
        let run = &self.run;
        let mut command = String::new();
        if !self.disk_specs.is_empty() {
            command = format!("RUN_GUEST_DISKS='{}' ", self.disk_specs);
        }
        if let GuestNet::Static(cidr) = run.net {
            command += &format!("RUN_GUEST_IP={} ", cidr.addr);
        }
        if run.noxs {
            command += "RUN_GUEST_DEV_METHOD=noxs ";
        }
        command += &format!(
            "RUN_GUEST_NAME={} RUN_GUEST_MAC={} timeout -s TERM {} sh {} /apps/{} {}",
            self.domain,
            lab::GUEST_MAC,
            run.timeout.as_secs().max(1),
            run.toolstack.script_in_lab(),
            self.app,
            run.mem_mib
        );
        for arg in run.net.args(true).iter().chain(&run.args) {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        format!(
            "echo '{marker} {index} begin'\n{command}\necho \"{marker} {index} end $?\"\n\
             echo \"{marker} {index} left $(leftovers)\"\n"
        )
    }

    /// A line the run script wrote to stderr while the guest ran.
    fn stderr(&mut self, text: &str) {
        if self.last_stderr.len() == 5 {
            self.last_stderr.pop_front();
        }
        self.last_stderr.push_back(text.to_owned());
    }

    /// What the job said about the guest, judged.
    fn outcome(self, verbose: bool) -> Result<SessionOutcome> {
        let name = &self.run.image.name;
        let exit = match self.status {
            // busybox timeout's SIGTERM: the run script destroyed the guest and exited 143.
            Some(143) | None => Ok(GuestExit::Timeout),
            Some(status) => GuestExit::from_script(status).with_context(|| {
                let said = if self.last_stderr.is_empty() {
                    String::new()
                } else {
                    let said: Vec<&str> = self.last_stderr.iter().map(String::as_str).collect();
                    format!(":\n  {}", said.join("\n  "))
                };
                format!(
                    "{} failed for {name} (status {status}){said}",
                    self.run.toolstack.script_name()
                )
            }),
        };
        if let Ok(GuestExit::Crash) = exit
            && !verbose
            && !self.xen_lines.is_empty()
        {
            eprintln!(
                "Xen said while the guest ran:\n{}",
                self.xen_lines.join("\n")
            );
        }
        let left = self
            .left
            .as_deref()
            .map(|left| left.trim().trim_end_matches(',').trim())
            .unwrap_or_default();
        let exit = exit.and_then(|exit| {
            ensure!(
                left.is_empty(),
                "{name} left things behind in dom0 after it ended: {left}"
            );
            Ok(exit)
        })?;
        let stop_latency = self
            .report
            .as_ref()
            .and_then(|report| report.stop_sent)
            .zip(self.ended_at)
            .and_then(|(sent, ended)| ended.checked_duration_since(sent));
        Ok(SessionOutcome {
            guest: GuestOutcome {
                exit,
                console: self.console.text,
                stop_latency,
            },
            client: self.report.map(|report| report.result),
        })
    }
}

/// Say how the guest runs: toolstack, network, forwards, disks.
fn announce(run: &GuestRun, ports: &Ports) -> Result<()> {
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
    run.print_disks()
}

/// A marker line of the job about the guest `index`.
#[derive(Debug, PartialEq, Eq)]
enum Mark<'t> {
    /// Its run script starts.
    Begin(usize),
    /// Its run script ended with this status.
    End(usize, Option<i32>),
    /// What it left behind.
    Left(usize, String),
    Other(&'t str),
}

/// Split a job's stdout line at the marker: the text before it, and what it says.
fn read_mark<'t>(text: &'t str, marker: &str, count: usize) -> (&'t str, Option<Mark<'t>>) {
    let Some(at) = text.find(marker) else {
        return (text, None);
    };
    let rest = &text[at + marker.len()..];
    // " 3 begin", " 3 end 0" or " 3 left LEFTOVERS"
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let index = fields
        .first()
        .and_then(|index| index.parse::<usize>().ok())
        .filter(|&index| index < count);
    let mark = match (index, fields.get(1..).unwrap_or_default()) {
        (Some(index), ["begin"]) => Mark::Begin(index),
        (Some(index), ["end", status]) => Mark::End(index, status.parse().ok()),
        (Some(index), ["left", rest @ ..]) => Mark::Left(index, rest.join(" ")),
        _ => Mark::Other(rest),
    };
    (&text[..at], Some(mark))
}

/// One lab boot whose job runs each guest's run script in turn, each under busybox
/// `timeout` (whose SIGTERM makes the script destroy its guest). A line with a marker
/// and the guest's index precedes each guest, one with its status follows, then one
/// with whatever it left behind in dom0 (domains, bridge ports); so the console lines
/// are told apart. A guest with a client gets it on a thread of its own (see
/// [`ClientThread`]), which stops it through the lab's control line.
pub(super) fn run_in_lab(sessions: Vec<Session<'_>>) -> Result<Vec<Result<SessionOutcome>>> {
    let nonce = lab::nonce();
    let marker = format!("LAB-GUEST-{nonce}");
    let mut boot = LabBoot::default();
    let mut guests: Vec<Result<LabGuest<'_>>> = sessions
        .into_iter()
        .enumerate()
        .map(|(index, session)| LabGuest::prepare(index, session, &nonce, &mut boot))
        .collect();
    let ready: Vec<&LabGuest<'_>> = guests.iter().filter_map(|g| g.as_ref().ok()).collect();
    if ready.is_empty() {
        return Ok(guests
            .into_iter()
            .map(|guest| guest.map(|_| unreachable!("no guest was prepared")))
            .collect());
    }

    let mut job = String::from(LEFTOVERS_SH);
    for (index, guest) in guests.iter().enumerate() {
        if let Ok(guest) = guest {
            job.push_str(&guest.job(index, &marker));
        }
    }
    let control = ready
        .iter()
        .any(|guest| guest.client.is_some())
        .then(LabControl::new);
    let options = ExecOptions {
        timeout: LAB_BOOT_ALLOWANCE
            + ready
                .iter()
                .map(|guest| guest.run.timeout + AFTER_GUEST_ALLOWANCE)
                .sum::<Duration>(),
        verbose: ready.iter().any(|guest| guest.run.verbose),
        forwards: boot.forwards,
        disks: boot.disks,
        control: control.clone(),
        noxs: ready.iter().any(|guest| guest.run.noxs),
        // One guest runs at a time: room for the largest.
        memory: lab::LabMemory::for_guests(
            1,
            ready
                .iter()
                .map(|guest| guest.run.mem_mib)
                .max()
                .unwrap_or(0),
        ),
        pair: None,
    };
    let many = ready.len() > 1;

    let count = guests.len();
    let end = thread::scope(|scope| {
        let mut clients: Vec<Option<ClientThread<'_>>> = (0..count).map(|_| None).collect();
        let mut current: Option<usize> = None;
        let end = lab::exec(&job, &boot.images, &options, &mut |line| match line {
            Line::Stdout(text) => {
                let (text, mark) = read_mark(text, &marker, count);
                if let Some(index) = current
                    && (mark.is_none() || !text.is_empty())
                {
                    if let Ok(guest) = &mut guests[index] {
                        guest.console.line(text);
                    }
                    if let Some(client) = &mut clients[index] {
                        client.line(text);
                    }
                }
                match mark {
                    Some(Mark::Begin(index)) => {
                        current = Some(index);
                        if let (Ok(guest), Some(control)) = (&mut guests[index], &control)
                            && let Some(client) = guest.client.take()
                        {
                            let stopper = Stopper {
                                dom0: Dom0::Lab(control.clone()),
                                toolstack: guest.run.toolstack,
                                domain: guest.domain.clone(),
                            };
                            clients[index] = Some(ClientThread::spawn(
                                scope,
                                client,
                                guest.ports.clone(),
                                stopper,
                            ));
                        }
                    }
                    Some(Mark::End(index, status)) => {
                        if let Ok(guest) = &mut guests[index] {
                            guest.status = status;
                            guest.ended_at = Some(Instant::now());
                        }
                        if let Some(client) = &mut clients[index] {
                            client.ended();
                        }
                        current = None;
                    }
                    Some(Mark::Left(index, left)) => {
                        if let Ok(guest) = &mut guests[index] {
                            guest.left = Some(left);
                        }
                    }
                    Some(Mark::Other(_)) | None => {}
                }
            }
            Line::Stderr(text) => match current.map(|index| (index, &mut guests[index])) {
                Some((index, Ok(guest))) => {
                    if many {
                        eprintln!("[{} #{index}] {text}", guest.run.image.name);
                    } else {
                        eprintln!("{text}");
                    }
                    guest.stderr(text);
                }
                _ => eprintln!("{text}"),
            },
            Line::Xen(text) => {
                if let Some(Ok(guest)) = current.map(|index| &mut guests[index]) {
                    guest.xen_lines.push(text.to_owned());
                }
            }
        });
        for (guest, client) in guests.iter_mut().zip(clients) {
            if let (Ok(guest), Some(client)) = (guest, client) {
                guest.report = Some(client.join());
            }
        }
        end
    });
    if let ExecEnd::Exited(status) = end?
        && status != 0
    {
        bail!("the lab job that runs the guests failed (status {status})");
    }
    Ok(guests
        .into_iter()
        .map(|guest| guest.and_then(|guest| guest.outcome(options.verbose)))
        .collect())
}

/// The disk specs of a lab guest's disks (`phy:/dev/lab/disk-N,xvda,w` … for xl,
/// `file:…` for chaos, see [`Toolstack::disk_type`]), adding each image to the boot's
/// disks: QEMU attaches every image once, so a file that several guests of the boot use
/// is one disk of dom0, read-write if any of them writes it (each guest still gets its
/// own mode from its toolstack).
fn lab_disk_specs(run: &GuestRun, lab_disks: &mut Vec<Disk>) -> Result<String> {
    let mut specs = Vec::new();
    for (index, disk, path, _) in run.checked_disks()? {
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

/// `arg` as one word for `sh`.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Forward;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
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

    #[test]
    fn marks() {
        let marker = "LAB-GUEST-0123";
        assert_eq!(read_mark("console line", marker, 2), ("console line", None));
        assert_eq!(
            read_mark("LAB-GUEST-0123 1 begin", marker, 2),
            ("", Some(Mark::Begin(1)))
        );
        // The guest's last line may lack its newline: the marker follows it.
        assert_eq!(
            read_mark("bye LAB-GUEST-0123 1 end 3", marker, 2),
            ("bye ", Some(Mark::End(1, Some(3))))
        );
        assert_eq!(
            read_mark(
                "LAB-GUEST-0123 0 left domain 5, bridge port vif5.0,",
                marker,
                2
            ),
            (
                "",
                Some(Mark::Left(0, "domain 5, bridge port vif5.0,".into()))
            )
        );
        assert_eq!(
            read_mark("LAB-GUEST-0123 2 begin", marker, 2),
            ("", Some(Mark::Other(" 2 begin")))
        );
    }
}
