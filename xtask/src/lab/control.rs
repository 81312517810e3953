//! The lab's control line: xtask has dom0 run a command of the stop table
//! ([`crate::toolstack`]) on a guest while a job runs, by writing a tagged line to QEMU's
//! stdin, which is the serial line's input: Xen passes it to dom0's console, where the
//! init reads it and runs what its allow-list (`/lab/control-commands`) has. No terminal
//! is needed.

use std::io::Write;
use std::process::ChildStdin;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail, ensure};

use crate::toolstack::{Stop, Toolstack};

/// Sends commands to the lab's dom0 while a job runs, from any thread: they travel as
/// lines on the serial line (QEMU's stdin, which Xen hands to dom0's console), tagged
/// with the boot's nonce, and dom0's init acts on them (`dom0-init.sh`).
#[derive(Debug, Clone, Default)]
pub struct LabControl(Arc<Mutex<Option<ControlLine>>>);

#[derive(Debug)]
struct ControlLine {
    stdin: ChildStdin,
    tag: String,
}

impl LabControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Have dom0 run [`Stop::argv`] of `toolstack` on `domain`, asynchronously; a
    /// failure that matters ([`Stop::failure_matters`]) is reported on the job's stderr
    /// (`lab: xl … failed: …`).
    pub fn stop(&self, toolstack: Toolstack, stop: Stop, domain: &str) -> Result<()> {
        ensure!(
            !domain.is_empty()
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)),
            "domain name {domain:?}: only A-Z a-z 0-9 _ . : - can go through the lab's control line"
        );
        self.send(&format!("{} {domain}", stop.command(toolstack)))
    }

    fn send(&self, command: &str) -> Result<()> {
        let mut line = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(line) = line.as_mut() else {
            bail!("cannot send `{command}` to dom0: the lab is not running");
        };
        let text = format!("{} {command}\n", line.tag);
        line.stdin
            .write_all(text.as_bytes())
            .and_then(|()| line.stdin.flush())
            .with_context(|| format!("sending `{command}` to dom0 through QEMU's serial line"))
    }

    pub(super) fn attach(&self, stdin: ChildStdin, tag: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(ControlLine {
            stdin,
            tag: tag.to_owned(),
        });
    }

    fn detach(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Detaches a [`LabControl`] when the lab run ends, however it ends.
pub(super) struct Attached<'a>(pub Option<&'a LabControl>);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Some(control) = self.0 {
            control.detach();
        }
    }
}
