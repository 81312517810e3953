//! One task's guest through the chaos library: made paused, its vif moved into the
//! pod's network namespace if it has one, its console opened, unpaused; then its
//! console copied to the task's stdout until it ends, and destroyed.
//!
//! chaos's `Host` (libxenctrl's and Xenstore's handles) stays on one thread, so a
//! guest's thread opens its own: it boots the guest, reports how that went, and
//! watches it to the end. A kill opens another.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use chaos::config::{Config, DevMethod};
use chaos::console::{GuestConsole, Stopped};
use chaos::domain::{self, Ending};
use chaos::uuid::Uuid;
use chaos::{Host, Options};
use xenhost::xc::ShutdownReason;

use crate::podnet;

/// A guest to boot.
#[derive(Debug)]
pub struct Boot {
    /// chaos's configuration, as JSON text (so that chaos checks it as it checks a
    /// file: one error naming the field).
    pub config: String,
    /// The task's stdout ([`open_stdout`]), if it has one.
    pub stdout: Option<File>,
    /// The pod's network namespace to move the vif into, if it has an eth0.
    pub pod_netns: Option<PathBuf>,
}

/// A booted guest.
#[derive(Debug, Clone)]
pub struct Running {
    pub domid: u32,
    pub uuid: Uuid,
    pub dev_method: DevMethod,
}

/// How long a guest asked to power off may take before it is destroyed.
pub const GRACE: Duration = Duration::from_secs(10);

/// Boot `boot` on a thread of its own; `ended` is called there with how the guest
/// ended (after it was destroyed). Returns once the guest runs, or why it could not.
pub fn start(boot: Boot, ended: impl FnOnce(Ending) + Send + 'static) -> Result<Running, String> {
    let (booted, report) = mpsc::channel();
    std::thread::Builder::new()
        .name("guest".into())
        .spawn(move || {
            let host = match open_host() {
                Ok(host) => host,
                Err(err) => {
                    let _ = booted.send(Err(err));
                    return;
                }
            };
            let (running, console, redirect) = match boot_paused(&host, &boot) {
                Ok(made) => made,
                Err(err) => {
                    let _ = booted.send(Err(err));
                    return;
                }
            };
            if let Err(err) = host.xc.domain_unpause(running.domid) {
                let _ = destroy(&host, &running);
                let _ = booted.send(Err(format!("unpausing domain {}: {err}", running.domid)));
                return;
            }
            let _ = booted.send(Ok(running.clone()));
            let ending = watch(&host, &running, console, boot.stdout);
            if let Err(err) = destroy(&host, &running) {
                log::error!("destroying domain {}: {err}", running.domid);
            }
            if let Some(redirect) = redirect
                && let Err(err) = redirect.remove()
            {
                log::warn!("{err}");
            }
            ended(ending);
        })
        .map_err(|err| format!("cannot start a thread for the guest: {err}"))?;
    report
        .recv()
        .map_err(|_| "the guest's thread ended without a word".to_string())?
}

fn open_host() -> Result<Host, String> {
    Host::open(Options::default()).map_err(|err| format!("chaos: {err}"))
}

/// Make the domain paused, move its vif into the pod, open its console. On an error
/// nothing of it is left.
fn boot_paused(
    host: &Host,
    boot: &Boot,
) -> Result<(Running, GuestConsole, Option<podnet::Redirect>), String> {
    let mut config = Config::parse(&boot.config).map_err(|err| err.to_string())?;
    config.check_files().map_err(|err| err.to_string())?;
    config.check_bridges().map_err(|err| err.to_string())?;
    let made = domain::create(host, &config, true).map_err(|err| err.to_string())?;
    let running = Running {
        domid: made.domid,
        uuid: made.uuid,
        dev_method: made.dev_method,
    };
    let mut redirect = None;
    let mut rest = || -> Result<GuestConsole, String> {
        if let Some(netns) = &boot.pod_netns {
            let made = podnet::redirect(netns, &format!("vif{}.0", running.domid))
                .map_err(|err| err.to_string())?;
            log::info!(
                "{} redirected to eth0 of {}",
                made.host_dev(),
                netns.display()
            );
            redirect = Some(made);
        }
        GuestConsole::open(host, running.domid, running.dev_method).map_err(|err| err.to_string())
    };
    match rest() {
        Ok(console) => Ok((running, console, redirect)),
        Err(err) => {
            if let Some(redirect) = redirect {
                let _ = redirect.remove();
            }
            if let Err(cleanup) = destroy(host, &running) {
                return Err(format!(
                    "{err}; destroying domain {} then: {cleanup}",
                    running.domid
                ));
            }
            Err(err)
        }
    }
}

/// Copy the console to `stdout` until the guest ends.
fn watch(host: &Host, running: &Running, console: GuestConsole, stdout: Option<File>) -> Ending {
    let uuid = Some(&running.uuid);
    let mut out = Lossy(stdout);
    let stopped = console.relay(host, running.domid, uuid, &mut out);
    match stopped {
        Ok(Stopped::Ended(ending)) => ending,
        Ok(Stopped::Closed | Stopped::Detached | Stopped::Interrupted(_)) => wait(host, running),
        Err(err) => {
            log::warn!("console of domain {}: {err}", running.domid);
            wait(host, running)
        }
    }
}

/// Wait for the end without the console.
fn wait(host: &Host, running: &Running) -> Ending {
    loop {
        match domain::wait_for_end(
            host,
            running.domid,
            Some(&running.uuid),
            None,
            running.dev_method,
        ) {
            Ok(Some(ending)) => return ending,
            Ok(None) => {}
            Err(err) => {
                log::warn!("waiting for domain {}: {err}", running.domid);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn destroy(host: &Host, running: &Running) -> chaos::Result<()> {
    domain::destroy_known(host, running.domid, Some(&running.uuid), running.dev_method)
}

/// Ask the guest to power off (it ends by itself; its thread reports it).
pub fn power_off(running: &Running) -> Result<(), String> {
    let host = open_host()?;
    domain::request_shutdown(&host, running.domid, false, running.dev_method, GRACE)
        .map_err(|err| err.to_string())
}

/// Destroy the guest now (its thread sees the end and reports it).
pub fn kill(running: &Running) -> Result<(), String> {
    let host = open_host()?;
    match host.xc.domain_info(running.domid) {
        Ok(Some(info)) if info.handle == running.uuid.0 => host
            .xc
            .domain_destroy(running.domid)
            .map(drop)
            .map_err(|err| format!("destroying domain {}: {err}", running.domid)),
        // Gone already, or the id is another domain's now.
        Ok(_) => Ok(()),
        Err(err) => Err(format!("domain {}: {err}", running.domid)),
    }
}

/// The task's exit status for how its guest ended, if nobody killed it (as `cargo
/// xtask run` reports them).
pub fn exit_status(ending: Ending) -> u32 {
    match ending {
        Ending::Shutdown(ShutdownReason::Poweroff) => 0,
        Ending::Shutdown(ShutdownReason::Crash) => 2,
        Ending::Shutdown(ShutdownReason::Reboot) => 3,
        Ending::Shutdown(_) => 4,
        Ending::Destroyed => 6,
    }
}

/// Open the task's stdout, a fifo containerd (or ctr) reads, without waiting: at
/// create its reader is there; a detached `ctr run -d` closes it soon after start, and
/// a blocking open then would wait for ever. `None` if nobody reads it.
pub fn open_stdout(path: &Path) -> Result<Option<File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    match File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.raw_os_error() == Some(libc::ENXIO) => {
            log::info!(
                "task stdout {}: no reader; the console is dropped",
                path.display()
            );
            Ok(None)
        }
        Err(err) => Err(format!("task stdout {}: {err}", path.display())),
    }
}

/// How long a write to the task's stdout may wait for its reader before the console's
/// output is dropped: a reader that stops reading must not stop the guest's watch.
const STDOUT_PATIENCE: Duration = Duration::from_secs(2);

/// A writer that keeps going when its reader has gone or stalls (containerd's end of
/// the fifo closed or full: the guest goes on, its words are dropped).
struct Lossy(Option<File>);

impl Lossy {
    fn write_patiently(file: &mut File, mut buf: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        while !buf.is_empty() {
            match file.write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    let mut pollfd = libc::pollfd {
                        fd: file.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    let millis = i32::try_from(STDOUT_PATIENCE.as_millis()).unwrap_or(i32::MAX);
                    // SAFETY: one valid pollfd.
                    if unsafe { libc::poll(&raw mut pollfd, 1, millis) } == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("its reader took nothing for {STDOUT_PATIENCE:?}"),
                        ));
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }
}

impl Write for Lossy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(file) = &mut self.0
            && let Err(err) = Self::write_patiently(file, buf)
        {
            log::warn!("task stdout: {err}; dropping the rest of the console");
            self.0 = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Destroy the domain named `name`, if there is one (a shim that died left it).
pub fn destroy_by_name(name: &str) -> Result<(), String> {
    let host = open_host()?;
    let Some(domid) = domain::find_by_name(&host, name).map_err(|err| err.to_string())? else {
        return Ok(());
    };
    let dev_method = domain::dev_method_of(&host, domid).map_err(|err| err.to_string())?;
    domain::destroy_known(&host, domid, None, dev_method).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    #[test]
    fn exit_statuses_follow_xtask_run() {
        let cases = [
            (Ending::Shutdown(ShutdownReason::Poweroff), 0),
            (Ending::Shutdown(ShutdownReason::Crash), 2),
            (Ending::Shutdown(ShutdownReason::Reboot), 3),
            (Ending::Shutdown(ShutdownReason::Watchdog), 4),
            (Ending::Destroyed, 6),
        ];
        for (ending, status) in cases {
            assert_eq!(exit_status(ending), status, "{ending:?}");
        }
    }

    #[test]
    fn a_stdout_without_reader_is_none() {
        let dir = std::env::temp_dir().join(format!("shim-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_stdout(&fifo).unwrap().is_none());
        let _reader = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut out = Lossy(open_stdout(&fifo).unwrap());
        out.write_all(b"console").unwrap();
        assert!(out.0.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
