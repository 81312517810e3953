//! `labrelay`: dom0's end of the lab relay (see the crate's documentation). It finds
//! the virtio-serial port QEMU names `lab.relay`, and serves the host's streams on it
//! for as long as the lab runs.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use labrelay::wire::{Frame, VERSION};
use labrelay::{dom0, mux::Mux};

/// The port's name, as xtask gives it to QEMU (`virtserialport,name=…`).
const PORT_NAME: &str = "lab.relay";

/// How long the port may take to appear after the module is loaded.
const PORT_WAIT: Duration = Duration::from_secs(10);

/// How soon to look again after the host's end went away (it may come back).
const HOST_GONE_PAUSE: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let port = match find_port() {
        Ok(port) => port,
        Err(err) => {
            eprintln!("labrelay: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("labrelay: relaying on {}", port.display());
    loop {
        if let Err(err) = serve_once(&port) {
            eprintln!("labrelay: {}: {err}", port.display());
        }
        // The port reads as ended while the host's end is not connected.
        thread::sleep(HOST_GONE_PAUSE);
    }
}

/// One session with the host's end: until the channel ends or fails.
fn serve_once(port: &PathBuf) -> std::io::Result<()> {
    let reader = OpenOptions::new().read(true).write(true).open(port)?;
    let writer: File = reader.try_clone()?;
    let mux = Mux::new(Box::new(writer));
    mux.send(&Frame::Hello { version: VERSION })?;
    dom0::serve(&mux, reader)
}

/// `/dev/vportNpM` whose name in `/sys/class/virtio-ports` is [`PORT_NAME`].
fn find_port() -> Result<PathBuf, String> {
    let started = Instant::now();
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    return Ok(PathBuf::from("/dev").join(entry.file_name()));
                }
            }
        }
        if started.elapsed() > PORT_WAIT {
            return Err(format!(
                "no virtio-serial port named {PORT_NAME} after {} s (is virtio_console loaded?)",
                PORT_WAIT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}
