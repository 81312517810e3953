//! A guest booted directly as Xen's dom0 (no Linux, no toolstack): a quick smoke test of
//! the kernel core, whose console is Xen's serial line (the `console_io` hypercall).

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use super::qemu::{LabMemory, multiboot_modules, qemu};
use super::serial::{Next, Serial, XEN_PREFIX};
use super::{assets, nonce};

/// How a guest booted as Xen's dom0 ended, read from Xen's console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dom0End {
    Poweroff,
    Crash,
    Reboot,
    /// Watchdog, soft reset or an unknown reason.
    Other,
    TimedOut,
}

/// Boot `image` directly as Xen's dom0 (no Linux) with `cmdline` and `mem_mib` of
/// memory. The guest's console (the `console_io` hypercall) is every serial line without
/// Xen's prefix; each is handed to `on_line`. Xen does not power the machine off when
/// dom0 ends, so its "Hardware Dom0 …" message ends the run.
pub fn boot_as_dom0(
    image: &Path,
    cmdline: &str,
    mem_mib: u32,
    timeout: Duration,
    verbose: bool,
    on_line: &mut dyn FnMut(&str),
) -> Result<Dom0End> {
    ensure!(
        image.is_file(),
        "guest image {} does not exist",
        image.display()
    );
    let xen = assets::prepare()?.xen;
    let nonce = nonce();
    let xen_cmdline = format!(
        "console=com1 com1=115200,8n1 dom0_mem={mem_mib}M,max:{mem_mib}M dom0_max_vcpus=1 \
         noreboot loglvl=all guest_loglvl=all"
    );
    let mut qemu = qemu(&xen, &xen_cmdline, LabMemory::DEFAULT.mib());
    qemu.arg("-initrd")
        .arg(multiboot_modules(&[(image, cmdline)])?);
    qemu.args(["-serial", "stdio"]);
    let mut serial = Serial::spawn(qemu, &nonce, timeout)?;
    loop {
        let line = match serial.next()? {
            Next::Line(line) => line,
            Next::Exited(status) => bail!(
                "QEMU exited ({status}) before dom0 ended\n{}",
                serial.tail()
            ),
            Next::TimedOut | Next::Stopped => {
                serial.kill();
                return Ok(Dom0End::TimedOut);
            }
        };
        let Some(xen) = line.strip_prefix(XEN_PREFIX) else {
            on_line(&line);
            continue;
        };
        if verbose {
            eprintln!("{line}");
        }
        let end = if xen.starts_with("Hardware Dom0 halted") {
            Dom0End::Poweroff
        } else if xen.starts_with("Hardware Dom0 crashed") {
            Dom0End::Crash
        } else if xen.starts_with("Hardware Dom0 shutdown: rebooting") {
            Dom0End::Reboot
        } else if xen.starts_with("Hardware Dom0 shutdown")
            || xen.starts_with("Hardware domain 0 did unsupported soft reset")
        {
            Dom0End::Other
        } else if xen.contains("Panic on CPU") {
            // e.g. the domain builder refused the image; the reason is a few lines up.
            bail!(
                "Xen panicked (booting {} as dom0)\n{}",
                image.display(),
                serial.tail()
            );
        } else {
            continue;
        };
        serial.kill();
        return Ok(end);
    }
}
