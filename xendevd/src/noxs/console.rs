//! A NoXS guest's console back end: its ring (`xencons_interface`, grant entry 0,
//! seeded by the domain builder for dom0) drained into a log file per guest, and handed
//! to followers; and the guest's input, from followers that send it, queued (bounded:
//! [`INPUT_LIMIT`]) and put into the ring as the guest takes it. Made with the domain,
//! released with it; it needs no control page.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::SystemTime;

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

/// All console logs together hold this much at most: the logs of ended domains are
/// kept for a post-mortem, the oldest removed first to make room.
pub const TOTAL_LOG_LIMIT: u64 = 256 << 20;

/// Console logs are for root and its group (adm-style readers), not for everyone.
const LOG_MODE: u32 = 0o640;

/// The bytes all console logs of a directory hold, and the logs of ended domains,
/// oldest first, that may go to make room.
#[derive(Debug)]
pub struct LogBook {
    dir: PathBuf,
    total_limit: u64,
    used: u64,
    ended: VecDeque<(PathBuf, u64)>,
}

impl LogBook {
    /// The book of `dir`, whose `*.log` files (a former xendevd's) count as the logs
    /// of ended domains, oldest first.
    pub fn open(dir: &Path, total_limit: u64) -> Rc<RefCell<Self>> {
        let mut found: Vec<(SystemTime, PathBuf, u64)> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
            .filter_map(|entry| {
                let meta = entry.metadata().ok().filter(fs::Metadata::is_file)?;
                Some((meta.modified().ok()?, entry.path(), meta.len()))
            })
            .collect();
        found.sort();
        let mut book = Self {
            dir: dir.to_owned(),
            total_limit,
            used: found.iter().map(|(_, _, size)| size).sum(),
            ended: found
                .into_iter()
                .map(|(_, path, size)| (path, size))
                .collect(),
        };
        book.make_room(0);
        Rc::new(RefCell::new(book))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Remove ended domains' logs, oldest first, until `wanted` more bytes fit.
    fn make_room(&mut self, wanted: u64) {
        while self.used + wanted > self.total_limit {
            let Some((path, size)) = self.ended.pop_front() else {
                return;
            };
            match fs::remove_file(&path) {
                Ok(()) => log::debug!("removed the console log {} (room)", path.display()),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => log::warn!("cannot remove the console log {}: {err}", path.display()),
            }
            self.used = self.used.saturating_sub(size);
        }
    }
}

/// The grant entry the domain builder reserves for the console ring.
const CONSOLE_GREF: u32 = 0;

/// A bounded log file, one of a [`LogBook`]'s.
#[derive(Debug)]
pub struct ConsoleLog {
    file: File,
    path: PathBuf,
    written: u64,
    limit: u64,
    book: Rc<RefCell<LogBook>>,
}

impl ConsoleLog {
    /// Start a fresh log `file_name` in the book's directory. Whatever has that name
    /// is replaced, never followed: a symbolic link planted there is removed, not
    /// written through.
    pub fn create(book: &Rc<RefCell<LogBook>>, file_name: &str, limit: u64) -> io::Result<Self> {
        let path = book.borrow().dir.join(file_name);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        // O_EXCL: a link that appeared since is not followed either.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(LOG_MODE)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)?;
        // Whatever the umask took away.
        file.set_permissions(fs::Permissions::from_mode(LOG_MODE))?;
        book.borrow_mut().make_room(limit);
        Ok(Self {
            file,
            path,
            written: 0,
            limit,
            book: Rc::clone(book),
        })
    }

    /// Go on with log `file_name` of a domain an xendevd before this one served (the
    /// book counted it among the ended): appended to, never followed. A fresh log if it
    /// is gone or is no regular file.
    pub fn reopen(book: &Rc<RefCell<LogBook>>, file_name: &str, limit: u64) -> io::Result<Self> {
        let path = book.borrow().dir.join(file_name);
        let opened = OpenOptions::new()
            .append(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .and_then(|file| Ok((file.metadata()?, file)));
        let (meta, file) = match opened {
            Ok((meta, file)) if meta.is_file() => (meta, file),
            _ => return Self::create(book, file_name, limit),
        };
        // Its bytes are counted already; it is no longer an ended domain's.
        book.borrow_mut().ended.retain(|(ended, _)| *ended != path);
        Ok(Self {
            file,
            path,
            written: meta.len(),
            limit,
            book: Rc::clone(book),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append what fits under this log's limit and the book's; a note marks where the
    /// log stops.
    pub fn append(&mut self, bytes: &[u8]) {
        if self.written >= self.limit {
            return;
        }
        let mut book = self.book.borrow_mut();
        let room = (self.limit - self.written).min(book.total_limit.saturating_sub(book.used));
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        let kept = bytes.len().min(room);
        let mut result = self.file.write_all(&bytes[..kept]);
        self.written += kept as u64;
        book.used += kept as u64;
        if bytes.len() > room {
            let why = if self.written >= self.limit {
                format!("console log full at {} bytes", self.limit)
            } else {
                format!("all console logs full at {} bytes", book.total_limit)
            };
            // Past the limit for good: nothing more is taken.
            self.limit = self.written;
            result = result.and_then(|()| {
                self.file
                    .write_all(format!("\n[xendevd: {why}; the rest is not kept]\n").as_bytes())
            });
        }
        if let Err(err) = result {
            log::warn!("console log {}: {err}", self.path.display());
        }
    }
}

impl Drop for ConsoleLog {
    /// The log stays for a post-mortem, first in line to go when room is needed.
    fn drop(&mut self) {
        let size = self
            .file
            .metadata()
            .map_or(self.written, |meta| meta.size());
        let mut book = self.book.borrow_mut();
        // Its notes count too.
        book.used = book.used.saturating_sub(self.written) + size;
        book.ended.push_back((self.path.clone(), size));
    }
}

/// Input for a guest held at most, beyond its ring (xenconsoled holds none: it reads
/// its pty only while the ring has room). Past it xendevd stops reading the senders'
/// sockets until the guest takes some: their input waits in their own buffers.
pub const INPUT_LIMIT: usize = 4096;

/// Input on its way to a guest: what its ring had no room for yet, [`INPUT_LIMIT`]
/// bytes at most, in order.
#[derive(Debug, Default)]
pub struct InputQueue {
    bytes: VecDeque<u8>,
}

impl InputQueue {
    /// How many more bytes may be queued.
    pub fn room(&self) -> usize {
        INPUT_LIMIT.saturating_sub(self.bytes.len())
    }

    /// Queue what fits of `bytes`: how much did (the caller reads no more than
    /// [`InputQueue::room`], so all of it).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.room());
        self.bytes.extend(&bytes[..taken]);
        taken
    }

    /// Move what the ring `interface.input()` has room for into it: how many bytes.
    pub fn feed(&mut self, interface: &ConsoleInterface) -> Result<usize, RingCorrupt> {
        let ring = interface.input();
        let mut moved = 0;
        while !self.bytes.is_empty() {
            let (first, _) = self.bytes.as_slices();
            let n = ring.produce(first)?;
            if n == 0 {
                break;
            }
            self.bytes.drain(..n);
            moved += n;
        }
        Ok(moved)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The console ring's page, as the console interface.
fn interface(ring: &Mapping) -> &ConsoleInterface {
    // SAFETY: the mapping is a live page holding the ring, for as long as it is
    // borrowed; the interface's fields are bytes and atomics the guest may write
    // concurrently, and `Ring` only copies them with volatile accesses and checks the
    // indices it loads.
    unsafe { ConsoleInterface::from_page(ring.as_ptr()) }
}

/// A guest's console back end.
#[derive(Debug)]
pub struct Console {
    ring: Mapping,
    port: Port,
    pub log: ConsoleLog,
    input: InputQueue,
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
        Ok(Self {
            ring,
            port,
            log,
            input: InputQueue::default(),
        })
    }

    pub fn port(&self) -> u32 {
        self.port.local()
    }

    /// How many more bytes of input may be queued for the guest.
    pub fn input_room(&self) -> usize {
        self.input.room()
    }

    /// Queue input for the guest (no more than [`Console::input_room`]) and put what
    /// fits into its ring: how many bytes went into the ring.
    pub fn send_input(&mut self, bytes: &[u8]) -> Result<usize, RingCorrupt> {
        self.input.push(bytes);
        self.feed_input()
    }

    /// Put queued input into the ring as far as the guest made room (it notifies when
    /// it takes some); tell it when there is more to read. How many bytes moved.
    pub fn feed_input(&mut self) -> Result<usize, RingCorrupt> {
        if self.input.is_empty() {
            return Ok(0);
        }
        let moved = self.input.feed(interface(&self.ring))?;
        if moved > 0 {
            let _ = self.port.notify();
        }
        Ok(moved)
    }

    /// Take what the guest wrote, `max` bytes at most; log it and return it. A corrupt
    /// ring yields an error (the console stays, the guest may repair it).
    pub fn drain(&mut self, max: usize) -> Result<Vec<u8>, RingCorrupt> {
        let output = interface(&self.ring).output();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while out.len() < max {
            let room = buf.len().min(max - out.len());
            let n = output.consume(&mut buf[..room])?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
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

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xendevd-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Input waits in the queue, never more than its limit, while the guest does not
    /// read; it reaches the guest whole and in order as the guest takes it, across the
    /// ring's wrap-around.
    #[test]
    fn input_is_bounded_and_arrives_in_order() {
        let page = Box::new(ConsoleInterface::default());
        let mut queue = InputQueue::default();
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut offered = &sent[..];
        let mut received = Vec::new();
        let mut rounds = 0;
        while received.len() < sent.len() {
            // The sender is read only as far as the queue has room.
            let n = queue.push(&offered[..offered.len().min(queue.room())]);
            offered = &offered[n..];
            queue.feed(&page).unwrap();
            // A guest that takes 700 bytes at a time, then notifies.
            let mut buf = [0u8; 700];
            let n = page.input().consume(&mut buf).unwrap();
            received.extend_from_slice(&buf[..n]);
            queue.feed(&page).unwrap();
            rounds += 1;
            assert!(rounds < 1000, "no progress");
        }
        assert_eq!(received, sent);
        assert!(queue.is_empty());
    }

    /// A guest that never reads: the ring fills, then the queue, then nothing more is
    /// taken (the sender waits); nothing is dropped.
    #[test]
    fn a_guest_that_does_not_read_stops_the_input() {
        let page = Box::new(ConsoleInterface::default());
        let mut queue = InputQueue::default();
        assert_eq!(queue.push(&[b'a'; 3000]), 3000);
        assert_eq!(queue.feed(&page), Ok(xenproto::console::IN_SIZE));
        assert_eq!(queue.push(&[b'b'; 5000]), INPUT_LIMIT - 1976);
        assert_eq!(queue.room(), 0);
        assert_eq!(queue.push(b"c"), 0);
        assert_eq!(queue.feed(&page), Ok(0));
        let mut buf = vec![0u8; 8192];
        assert_eq!(page.input().consume(&mut buf), Ok(1024));
        assert_eq!(queue.feed(&page), Ok(1024));
        assert_eq!(queue.room(), 1024);
    }

    /// Indices the guest scribbled on: an error, and the queue stays as it was.
    #[test]
    fn a_corrupt_ring_takes_no_input() {
        let page = Box::new(ConsoleInterface::default());
        let mut queue = InputQueue::default();
        queue.push(b"hello");
        // The guest claims to have read 10 bytes of an empty ring.
        let mut buf = [0u8; 1];
        page.input().produce(b"x").unwrap();
        page.input().consume(&mut buf).unwrap();
        // SAFETY: the page is ours (boxed), its in_cons is its bytes 3072..3076.
        let in_cons = unsafe {
            &*std::ptr::from_ref(page.as_ref())
                .cast::<u8>()
                .add(3072)
                .cast::<std::sync::atomic::AtomicU32>()
        };
        in_cons.store(11, std::sync::atomic::Ordering::Relaxed);
        assert!(queue.feed(&page).is_err());
        assert_eq!(queue.room(), INPUT_LIMIT - 5);
    }

    #[test]
    fn the_log_is_bounded() {
        let dir = scratch("console-bounded");
        let book = LogBook::open(&dir, 1000);
        let mut log = ConsoleLog::create(&book, "g-1.log", 10).unwrap();
        log.append(b"hello ");
        log.append(b"world, and more");
        log.append(b"lost");
        let text = fs::read_to_string(dir.join("g-1.log")).unwrap();
        assert!(
            text.starts_with("hello worl\n[xendevd: console log full at 10 bytes"),
            "{text}"
        );
        assert!(!text.contains("lost"));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A link planted where a log goes is replaced, not written through; the log is
    /// 0640 whatever the umask.
    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = scratch("console-link");
        let target = dir.join("target");
        fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("g-2.log")).unwrap();
        let book = LogBook::open(&dir, 1000);
        let mut log = ConsoleLog::create(&book, "g-2.log", 100).unwrap();
        log.append(b"guest output");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        let meta = fs::symlink_metadata(dir.join("g-2.log")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o640);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Past the total, the oldest ended domains' logs go to make room; the served
    /// ones' never do, and they stop growing when all room is theirs.
    #[test]
    fn all_logs_together_are_bounded() {
        let dir = scratch("console-total");
        fs::write(dir.join("old-1.log"), [b'o'; 40]).unwrap();
        let book = LogBook::open(&dir, 100);
        assert_eq!(book.borrow().used, 40);
        let mut first = ConsoleLog::create(&book, "g-2.log", 50).unwrap();
        first.append(&[b'a'; 50]);
        assert!(dir.join("old-1.log").exists());
        // 40 + 50 + 100 > 100: the former xendevd's log goes (and that is all that
        // can go).
        let mut second = ConsoleLog::create(&book, "g-3.log", 100).unwrap();
        assert!(!dir.join("old-1.log").exists());
        second.append(&[b'b'; 30]);
        drop(first);
        // g-2's 50 bytes and its note are the oldest ended: they go for g-4.
        let mut third = ConsoleLog::create(&book, "g-4.log", 50).unwrap();
        assert!(!dir.join("g-2.log").exists());
        third.append(&[b'c'; 80]);
        let text = fs::read_to_string(dir.join("g-4.log")).unwrap();
        assert!(text.starts_with(&"c".repeat(50)), "{text}");
        assert!(text.contains("console log full at 50 bytes"), "{text}");
        second.append(&[b'b'; 30]);
        let text = fs::read_to_string(dir.join("g-3.log")).unwrap();
        assert!(
            text.starts_with(&format!(
                "{}\n[xendevd: all console logs full at 100 bytes",
                "b".repeat(50)
            )),
            "{text}"
        );
        assert!(book.borrow().used <= 100);
        fs::remove_dir_all(&dir).unwrap();
    }
}
