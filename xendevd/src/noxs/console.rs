//! A NoXS guest's console back end: its ring (`xencons_interface`, grant entry 0,
//! seeded by the domain builder for dom0) drained into a log file per guest, and handed
//! to followers. Made with the domain, released with it; it needs no control page.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use xenproto::byte_ring::RingCorrupt;
use xenproto::console::ConsoleInterface;

use xenhost::evtchn::{Evtchn, Port};
use xenhost::gnttab::{Gnttab, Mapping};

use crate::limits::{self, LimitReached, Making};

/// The console could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "cannot map domain {domid}'s console ring (grant {CONSOLE_GREF}, which the domain \
         builder seeds for dom0): {source}"
    )]
    Ring { domid: u32, source: xenhost::Error },
    #[error("cannot bind domain {domid}'s console port {port}: {source}")]
    Port {
        domid: u32,
        port: u32,
        source: xenhost::Error,
    },
    #[error(transparent)]
    Limit(LimitReached),
}

/// A console log holds this much at most; later output goes to followers only.
pub const LOG_LIMIT: u64 = 1 << 20;

/// The grant entry the domain builder reserves for the console ring.
const CONSOLE_GREF: u32 = 0;

/// A bounded log file.
#[derive(Debug)]
pub struct ConsoleLog {
    file: File,
    path: PathBuf,
    written: u64,
    limit: u64,
}

impl ConsoleLog {
    /// Start a fresh log at `path` (an older one of the same name is replaced).
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            written: 0,
            limit,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append what fits under the limit; a note marks where the log stops.
    pub fn append(&mut self, bytes: &[u8]) {
        if self.written >= self.limit {
            return;
        }
        let room = usize::try_from(self.limit - self.written).unwrap_or(usize::MAX);
        let mut result = self.file.write_all(&bytes[..bytes.len().min(room)]);
        self.written += bytes.len().min(room) as u64;
        if bytes.len() > room {
            result = result.and_then(|()| {
                self.file.write_all(
                    format!(
                        "\n[xendevd: console log full at {} bytes; the rest is not kept]\n",
                        self.limit
                    )
                    .as_bytes(),
                )
            });
        }
        if let Err(err) = result {
            log::warn!("console log {}: {err}", self.path.display());
        }
    }
}

/// A guest's console back end.
#[derive(Debug)]
pub struct Console {
    ring: Mapping,
    port: Port,
    pub log: ConsoleLog,
}

impl Console {
    /// Map domain `domid`'s console ring and bind its console port.
    pub fn connect(
        gnttab: &Rc<Gnttab>,
        evtchn: &Rc<Evtchn>,
        domid: u32,
        remote_port: u32,
        log: ConsoleLog,
    ) -> Result<Self, ConsoleError> {
        let ring = gnttab
            .map(domid, &[CONSOLE_GREF], true)
            .map_err(|source| ConsoleError::Ring { domid, source })?;
        let port = evtchn
            .bind_interdomain(domid, remote_port)
            .map_err(|source| {
                limits::reached(source.errno(), Making::EventChannel).map_or(
                    ConsoleError::Port {
                        domid,
                        port: remote_port,
                        source,
                    },
                    ConsoleError::Limit,
                )
            })?;
        Ok(Self { ring, port, log })
    }

    pub fn port(&self) -> u32 {
        self.port.local()
    }

    /// Take everything the guest wrote; log it and return it. A corrupt ring yields an
    /// error (the console stays, the guest may repair it).
    pub fn drain(&mut self) -> Result<Vec<u8>, RingCorrupt> {
        // SAFETY: the mapping is a live page holding the ring; the interface's fields
        // are bytes and atomics the guest may write concurrently.
        let interface = unsafe { ConsoleInterface::from_page(self.ring.as_ptr()) };
        let output = interface.output();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            let n = output.consume(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() > 64 * 1024 {
                break;
            }
        }
        if !out.is_empty() {
            self.log.append(&out);
            // Room in the ring again: a guest waiting to write may go on.
            let _ = self.port.notify();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded() {
        let dir = std::env::temp_dir().join(format!("xendevd-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g-1.log");
        let mut log = ConsoleLog::create(&path, 10).unwrap();
        log.append(b"hello ");
        log.append(b"world, and more");
        log.append(b"lost");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("hello worl\n[xendevd: console log full at 10 bytes"),
            "{text}"
        );
        assert!(!text.contains("lost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
