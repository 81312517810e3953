//! Two labs side by side (`lab exec --hosts 2`): two QEMU processes, each a Xen host
//! with its own user network on xenbr0 as ever, and a second NIC on one private network
//! the two share — QEMU datagram sockets, each QEMU sending its frames to the other's —
//! bridged in each dom0 as `xenbr1` ([`SHARED_BRIDGE`]), dom0 at 10.0.3.1 and 10.0.3.2
//! ([`shared_addr`]). A guest with a vif on xenbr1 and an address of 10.0.3.0/24 keeps
//! it on either host: a migration moves it, and its gratuitous ARP moves it on the
//! bridges. The two user networks stay apart: both are 10.0.2.0/24 with their own
//! 10.0.2.2 and dom0 at 10.0.2.15, so joining them would give one segment two of each.
//!
//! The job runs on both hosts, told which it is (`LAB_HOST`, `LAB_SELF`, `LAB_PEER`, and `LAB_SHARED_BRIDGE`);
//! each line comes back tagged with its host. A host whose job fails, times out or whose
//! lab dies stops the other at once.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result, anyhow, ensure};

use super::rundir::RunDir;
use super::{ExecEnd, ExecOptions, Line, exec, nonce};
use crate::build::GuestImage;

/// How many labs `lab exec --hosts` boots at most.
pub const MAX_HOSTS: u8 = 2;

/// The bridge of the shared network in each dom0 (xenbr0 stays each host's own user
/// network).
pub const SHARED_BRIDGE: &str = "xenbr1";

/// Dom0's address on the shared network (10.0.3.0/24) of host `host` (1 or 2); guests
/// take theirs from 10.0.3.16 on.
pub fn shared_addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 3, host)
}

/// The MAC of host `host`'s NIC on the shared network: set, because QEMU would give the
/// second NIC of both labs the same one, and dom0's init finds the NIC by it.
fn shared_mac(host: u8) -> String {
    format!("52:54:00:0a:03:{host:02x}")
}

/// How each host's run ended, host 1's first.
pub type HostEnds = [Result<ExecEnd>; 2];

/// One lab of a pair, in its [`ExecOptions::pair`].
#[derive(Debug, Clone)]
pub struct PairHost {
    /// 1 or 2.
    pub host: u8,
    /// This QEMU's datagram socket on the shared network, and the other's, which it sends to.
    local: PathBuf,
    remote: PathBuf,
    /// Set when the other lab failed: this one stops at once.
    stop: Arc<AtomicBool>,
}

impl PairHost {
    /// The other host's number.
    fn peer(&self) -> u8 {
        MAX_HOSTS + 1 - self.host
    }

    /// Lines for dom0's `/lab/env`: the init brings up [`SHARED_BRIDGE`] and exports
    /// `LAB_HOST`, `LAB_SELF`, `LAB_PEER` and `LAB_SHARED_BRIDGE` to the job.
    pub(super) fn env(&self) -> String {
        format!(
            "LAB_HOST={}\nLAB_SELF={}\nLAB_PEER={}\nLAB_SHARED_MAC={}\nLAB_SHARED_BRIDGE={SHARED_BRIDGE}\n",
            self.host,
            shared_addr(self.host),
            shared_addr(self.peer()),
            shared_mac(self.host),
        )
    }

    /// QEMU's arguments for the NIC on the shared network: an e1000 on a `dgram`
    /// netdev between two Unix datagram sockets (QEMU 7.2 binds `local` and sends every
    /// frame to `remote`; a frame sent before the other QEMU is up is lost, like one on
    /// an unplugged cable).
    pub(super) fn qemu_args(&self) -> Result<Vec<OsString>> {
        let path = |socket: &Path| -> Result<String> {
            let text = socket
                .to_str()
                .with_context(|| format!("{}: not a UTF-8 path", socket.display()))?;
            // sockaddr_un's sun_path holds 108 bytes, the terminating NUL included.
            ensure!(
                text.len() < 108,
                "the shared network's socket {text} is longer than a Unix socket path can be \
                 (107 bytes): move the target directory to a shorter path"
            );
            Ok(text.replace(',', ",,"))
        };
        Ok(vec![
            "-netdev".into(),
            format!(
                "dgram,id=shared,local.type=unix,local.path={},remote.type=unix,remote.path={}",
                path(&self.local)?,
                path(&self.remote)?
            )
            .into(),
            "-device".into(),
            format!("e1000,netdev=shared,mac={}", shared_mac(self.host)).into(),
        ])
    }

    pub(super) fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// How the lab's own messages (`lab: dom0 up …`) are tagged.
    pub(super) fn label(&self) -> String {
        format!("host {}: ", self.host)
    }
}

/// A line of one host, owned so it can cross from that host's thread.
enum HostLine {
    Stdout(String),
    Stderr(String),
    Xen(String),
}

/// Boot two labs side by side on a shared network and run `script` in both dom0s; hand
/// each line to `on_line` with its host's number (1 or 2) as it comes. Returns how each
/// host's run ended, host 1's first. `options` holds for both (its `pair` is ignored);
/// the lab relay and the control line are one lab's, so they are refused, and so is a
/// disk that is not read-only (both labs get each disk).
pub fn exec_hosts(
    script: &str,
    apps: &[GuestImage],
    options: &ExecOptions,
    on_line: &mut dyn FnMut(u8, Line<'_>),
) -> Result<HostEnds> {
    ensure!(
        options.forwards.is_empty(),
        "two hosts have no lab relay: --forward works with one host only"
    );
    ensure!(
        options.control.is_none(),
        "two hosts have no control line: it works with one host only"
    );
    if let Some(disk) = options.disks.iter().find(|disk| !disk.read_only) {
        anyhow::bail!(
            "disk {}: both hosts get every disk, so with two hosts each must be read-only (:ro)",
            disk.path.display()
        );
    }
    // The sockets' directory, removed when both labs are done.
    let net = RunDir::new(&format!("{}-net", nonce()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let socket = |host: u8| net.path().join(format!("host{host}.sock"));
    let (tx, rx) = mpsc::channel::<(u8, HostLine)>();
    let ends = thread::scope(|scope| {
        let handles = [1u8, 2].map(|host| {
            let mut options = options.clone();
            let pair = PairHost {
                host,
                local: socket(host),
                remote: socket(MAX_HOSTS + 1 - host),
                stop: stop.clone(),
            };
            options.pair = Some(pair);
            let tx = tx.clone();
            let stop = stop.clone();
            scope.spawn(move || {
                let end = exec(script, apps, &options, &mut |line| {
                    let line = match line {
                        Line::Stdout(text) => HostLine::Stdout(text.to_owned()),
                        Line::Stderr(text) => HostLine::Stderr(text.to_owned()),
                        Line::Xen(text) => HostLine::Xen(text.to_owned()),
                    };
                    let _ = tx.send((host, line));
                });
                if !matches!(end, Ok(ExecEnd::Exited(0))) {
                    stop.store(true, Ordering::Relaxed);
                }
                end
            })
        });
        drop(tx);
        for (host, line) in rx {
            on_line(
                host,
                match &line {
                    HostLine::Stdout(text) => Line::Stdout(text),
                    HostLine::Stderr(text) => Line::Stderr(text),
                    HostLine::Xen(text) => Line::Xen(text),
                },
            );
        }
        handles.map(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the lab's thread panicked")))
        })
    });
    Ok(ends)
}
