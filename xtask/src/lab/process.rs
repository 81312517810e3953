//! Child processes that never outlive xtask: a guard that ends its child on drop, and a
//! Ctrl-C handler that ends every guarded child, undoes registered set-ups (scratch
//! directories, loop devices) and exits with 130.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::util;

type Shared = Arc<Mutex<Child>>;

/// Every live guarded child, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<(u32, Shared, Duration)>> = Mutex::new(Vec::new());

/// Scratch directories the Ctrl-C handler removes (their owners' `Drop` never runs then).
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Have the Ctrl-C handler remove `dir` too; undo with [`forget_scratch`].
pub fn register_scratch(dir: &Path) {
    install_ctrlc_handler();
    lock(&SCRATCH).push(dir.to_path_buf());
}

pub fn forget_scratch(dir: &Path) {
    lock(&SCRATCH).retain(|known| known != dir);
}

type Undo = Box<dyn FnOnce() + Send>;

/// Actions the Ctrl-C handler runs after ending the children, each under an id.
static UNDO: Mutex<(u64, Vec<(u64, Undo)>)> = Mutex::new((0, Vec::new()));

/// Have the Ctrl-C handler run `undo` (e.g. detach a loop device: its owner's `Drop`
/// never runs then). Returns an id for [`forget_undo`], which the owner calls when it
/// undoes the set-up itself.
pub fn register_undo(undo: Undo) -> u64 {
    install_ctrlc_handler();
    let mut registry = lock(&UNDO);
    registry.0 += 1;
    let id = registry.0;
    registry.1.push((id, undo));
    id
}

pub fn forget_undo(id: u64) {
    lock(&UNDO).1.retain(|(known, _)| *known != id);
}

/// A child process that is terminated when the guard drops: first SIGTERM (so a
/// script can clean up, e.g. `xl destroy` its guest), then SIGKILL after `grace`.
#[derive(Debug)]
pub struct ChildGuard {
    child: Shared,
    pid: u32,
    grace: Duration,
}

impl ChildGuard {
    /// Print and start `cmd` under a guard.
    pub fn spawn(cmd: &mut Command, grace: Duration) -> Result<Self> {
        install_ctrlc_handler();
        eprintln!("$ {}", util::display(cmd));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&CHILDREN).push((pid, child.clone(), grace));
        Ok(Self { child, pid, grace })
    }

    /// Take the child's piped stdout, to read it on another thread.
    pub fn take_stdout(&self) -> Option<std::process::ChildStdout> {
        lock(&self.child).stdout.take()
    }

    /// Take the child's piped stdin, to write to it from elsewhere.
    pub fn take_stdin(&self) -> Option<std::process::ChildStdin> {
        lock(&self.child).stdin.take()
    }

    /// The exit status if the child has ended.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        Ok(lock(&self.child).try_wait()?)
    }

    /// Wait for the child to end on its own, up to `limit`.
    pub fn wait_for(&self, limit: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// End the child now (see the type's doc) and return how it ended.
    pub fn terminate(&self) -> Option<ExitStatus> {
        terminate(self.pid, &self.child, self.grace)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        lock(&CHILDREN).retain(|(pid, _, _)| *pid != self.pid);
        self.terminate();
    }
}

fn terminate(pid: u32, child: &Mutex<Child>, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = lock(child).try_wait() {
        return Some(status);
    }
    if !grace.is_zero() {
        // The `kill` utility sends a chosen signal without a libc dependency.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = lock(child).try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    let mut child = lock(child);
    let _ = child.kill();
    child.wait().ok()
}

fn install_ctrlc_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let result = ctrlc::set_handler(|| {
            eprintln!("\ninterrupted: stopping child processes");
            let children = std::mem::take(&mut *lock(&CHILDREN));
            // End them in parallel: each may take its grace period.
            let handles: Vec<_> = children
                .into_iter()
                .map(|(pid, child, grace)| thread::spawn(move || terminate(pid, &child, grace)))
                .collect();
            for handle in handles {
                let _ = handle.join();
            }
            // After the children: e.g. a loop device is released once its guest is gone.
            for (_, undo) in std::mem::take(&mut lock(&UNDO).1) {
                undo();
            }
            for dir in std::mem::take(&mut *lock(&SCRATCH)) {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        });
        if let Err(err) = result {
            eprintln!("warning: cannot install the Ctrl-C handler: {err}");
        }
    });
}

/// A poisoned lock only means another thread panicked; the child handle is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lines of `reader` on a channel as they come (lossy UTF-8, line ends and any
/// `\r` of a serial line removed); the channel closes at EOF.
pub fn read_lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                        buf.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}
