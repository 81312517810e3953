//! The lab's serial line: a running QEMU whose serial output (Xen's console, and dom0's
//! through it) arrives line by line, each line also written to a boot log under
//! `target/lab/logs`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::assets;
use super::process::{self, ChildGuard};
use crate::util;

/// Xen's messages on its serial console start with this; dom0's output does not.
pub(super) const XEN_PREFIX: &str = "(XEN) ";

/// A serial line that shows dom0 ended (Xen prints it when the hardware domain stops).
pub(super) fn dom0_death(line: &str) -> Option<&str> {
    let xen = line.strip_prefix(XEN_PREFIX)?;
    (xen.starts_with("Hardware Dom0") || xen.contains("Panic on CPU")).then_some(xen)
}

/// A running QEMU whose serial output arrives line by line, each line also written to
/// the boot log.
pub(super) struct Serial {
    pub child: ChildGuard,
    lines: mpsc::Receiver<String>,
    log: fs::File,
    pub log_path: PathBuf,
    started: Instant,
    deadline: Instant,
}

pub(super) enum Next {
    Line(String),
    Exited(ExitStatus),
    TimedOut,
    /// The caller's stop flag was set (see [`Serial::next_unless`]).
    Stopped,
}

impl Serial {
    pub(super) fn spawn(mut qemu: Command, nonce: &str, timeout: Duration) -> Result<Self> {
        let logs = assets::lab_dir().join("logs");
        fs::create_dir_all(&logs)?;
        prune_logs(&logs, 30);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let log_path = logs.join(format!("boot-{unix}-{nonce}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        writeln!(&log, "$ {}", util::display(&qemu))?;
        // QEMU's own complaints go into the same log. Its stdin is the serial line's
        // input: a pipe the caller may keep (for `LabControl`) or drop.
        qemu.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?);
        let child = ChildGuard::spawn(&mut qemu, Duration::from_secs(2))?;
        let lines = process::read_lines(child.take_stdout().expect("piped"));
        let started = Instant::now();
        Ok(Self {
            child,
            lines,
            log,
            log_path,
            started,
            deadline: started + timeout,
        })
    }

    pub(super) fn next(&mut self) -> Result<Next> {
        self.next_unless(None)
    }

    /// The next line, or [`Next::Stopped`] within a fifth of a second of `stop` being set
    /// (by another thread: the other lab of a pair failed).
    pub(super) fn next_unless(&mut self, stop: Option<&AtomicBool>) -> Result<Next> {
        let received = loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let Some(stop) = stop else {
                break self.lines.recv_timeout(left);
            };
            if stop.load(Ordering::Relaxed) {
                return Ok(Next::Stopped);
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => continue,
                received => break received,
            }
        };
        match received {
            Ok(line) => {
                let at = self.started.elapsed().as_secs_f64();
                writeln!(self.log, "[{at:8.3}] {line}")?;
                Ok(Next::Line(line))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(Next::TimedOut),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait_for(Duration::from_secs(5))?;
                Ok(Next::Exited(status.unwrap_or_else(|| {
                    self.child.terminate().unwrap_or_default()
                })))
            }
        }
    }

    pub(super) fn kill(&self) {
        self.child.terminate();
    }

    /// The end of the boot log, for error messages.
    pub(super) fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- last {} lines of {} ---\n{}",
            lines.len() - start,
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

/// Keep the newest `keep` boot logs.
fn prune_logs(dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    logs.sort();
    let excess = logs.len().saturating_sub(keep);
    for old in &logs[..excess] {
        let _ = fs::remove_file(old);
    }
}
