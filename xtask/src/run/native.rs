//! `cargo xtask run` on a Xen dom0: the toolstack's run script (run-guest.sh or
//! run-chaos.sh) on this machine, with image files on loop devices for xl, and a client's
//! thread that stops the guest with the local toolstack.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client::{ClientThread, Dom0, Stopper};
use super::guest::domain_name;
use super::{Console, GuestExit, GuestNet, GuestOutcome, GuestRun, Ports, Session, SessionOutcome};
use crate::build;
use crate::disk::{self, LoopDevice};
use crate::lab;
use crate::lab::process::{ChildGuard, read_lines};
use crate::toolstack::Toolstack;

/// xl (or chaos) on this machine: run-guest.sh (run-chaos.sh) with its stdout (the
/// console) piped to us and its stderr passed through. On timeout or Ctrl-C it gets
/// SIGTERM and destroys the guest.
pub(super) fn run_native(session: Session<'_>) -> Result<SessionOutcome> {
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
        run.print_disks()?;
    }
    // xl: each image on a loop device of its own, detached when `loops` drops (after
    // the guest is gone) or by the Ctrl-C handler. chaos: the image files themselves,
    // which xendevd puts loop devices in front of.
    let mut loops = Vec::new();
    let mut disk_specs = Vec::new();
    for (index, disk, path, _) in run.checked_disks()? {
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
        let stopper = Stopper {
            dom0: Dom0::Native {
                chaos: chaos.clone(),
            },
            toolstack: run.toolstack,
            domain: domain.clone(),
        };
        let mut client = client.map(|client| ClientThread::spawn(scope, client, ports, stopper));
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
    chaos: &Path,
    on_line: &mut dyn FnMut(&str),
) -> Result<GuestExit> {
    let mut cmd = Command::new("sh");
    // The script travels as `sh -c`'s argument: no file to write or keep current.
    cmd.arg("-c")
        .arg(run.toolstack.script())
        .arg(run.toolstack.script_name())
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
    let script = run.toolstack.script_name();
    let code = status
        .code()
        .with_context(|| format!("{script} ended by {status}"))?;
    GuestExit::from_script(code).with_context(|| format!("{script} failed (status {code})"))
}
