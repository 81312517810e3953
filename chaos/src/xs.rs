//! libxenstore: a safe handle ([`Xs`]), transactions that abort unless committed
//! ([`Transaction`]) and watches that unwatch on drop ([`Watch`]). Reads and writes go
//! through the [`Store`] trait, which both the handle and a transaction implement, so
//! code does not care whether it runs inside a transaction (krata's `XsdInterface`).

use std::ffi::{CStr, CString, c_char, c_uint, c_void};
use std::io;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use xenffi as ffi;

use crate::error::{Error, Result};
use crate::layout::Perm;

/// `XBT_NULL`: no transaction.
const XBT_NULL: ffi::xs_transaction_t = 0;

/// A connection to xenstored (`xs_open`), closed on drop.
#[derive(Debug)]
pub struct Xs {
    handle: NonNull<ffi::xs_handle>,
}

// SAFETY: libxenstore handles are thread-safe (it locks internally); `Xs` is `Send` so a
// handle can move to another thread.
unsafe impl Send for Xs {}

fn c_string(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Error::Xs {
        op: "path",
        path: path.escape_debug().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

fn xs_error(op: &'static str, path: &str) -> Error {
    Error::Xs {
        op,
        path: path.to_owned(),
        source: io::Error::last_os_error(),
    }
}

fn is_enoent(err: &Error) -> bool {
    matches!(err, Error::Xs { source, .. } if source.raw_os_error() == Some(libc::ENOENT))
}

/// What xenstored answers inside a transaction that another one got in the way of.
fn is_conflict(err: &Error) -> bool {
    matches!(err, Error::Xs { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EIO | libc::EAGAIN)))
}

/// Take ownership of a malloc'ed buffer from libxenstore as a string.
///
/// # Safety
/// `ptr` is null or a malloc'ed buffer of `len` bytes that nothing else frees.
unsafe fn owned_string(ptr: *mut c_void, len: c_uint) -> Option<String> {
    let ptr = NonNull::new(ptr)?;
    // SAFETY: the caller's contract: `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), len as usize) };
    let text = String::from_utf8_lossy(bytes).into_owned();
    // SAFETY: malloc'ed by libxenstore, freed once here.
    unsafe { libc::free(ptr.as_ptr()) };
    Some(text)
}

/// Take ownership of a malloc'ed array of `num` C strings (one allocation, as
/// libxenstore returns directories and watch events).
///
/// # Safety
/// `ptr` is null or such an array that nothing else frees.
unsafe fn owned_strings(ptr: *mut *mut c_char, num: usize) -> Option<Vec<String>> {
    let ptr = NonNull::new(ptr)?;
    let strings = (0..num)
        .map(|i| {
            // SAFETY: `num` entries, each a NUL-terminated string inside the allocation.
            unsafe { CStr::from_ptr(*ptr.as_ptr().add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: the whole array is one malloc'ed block, freed once here.
    unsafe { libc::free(ptr.as_ptr().cast()) };
    Some(strings)
}

/// Reads and writes, outside a transaction or inside one.
pub trait Store {
    /// The connection.
    fn xs(&self) -> &Xs;
    /// The transaction id (0: none).
    fn tx(&self) -> ffi::xs_transaction_t;

    /// A node's value, or `None` if it does not exist.
    fn read(&self, path: &str) -> Result<Option<String>> {
        let c = c_string(path)?;
        let mut len: c_uint = 0;
        // SAFETY: open handle, C string path, `len` valid for the call.
        let ptr = unsafe { ffi::xs_read(self.xs().raw(), self.tx(), c.as_ptr(), &raw mut len) };
        if ptr.is_null() {
            let err = xs_error("read", path);
            return if is_enoent(&err) { Ok(None) } else { Err(err) };
        }
        // SAFETY: libxenstore returns a malloc'ed buffer of `len` bytes, ours to free.
        Ok(unsafe { owned_string(ptr, len) })
    }

    fn write(&self, path: &str, value: &str) -> Result<()> {
        let c = c_string(path)?;
        let len = c_uint::try_from(value.len()).map_err(|_| Error::Xs {
            op: "write",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "value too long"),
        })?;
        // SAFETY: open handle, C string path, `value` valid for `len` bytes.
        let ok = unsafe {
            ffi::xs_write(
                self.xs().raw(),
                self.tx(),
                c.as_ptr(),
                value.as_ptr().cast(),
                len,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(xs_error("write", path))
        }
    }

    /// Remove a node and everything under it; one that does not exist is no error.
    fn rm(&self, path: &str) -> Result<()> {
        let c = c_string(path)?;
        // SAFETY: open handle, C string path.
        if unsafe { ffi::xs_rm(self.xs().raw(), self.tx(), c.as_ptr()) } {
            return Ok(());
        }
        let err = xs_error("rm", path);
        if is_enoent(&err) { Ok(()) } else { Err(err) }
    }

    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        let c = c_string(path)?;
        let mut raw: Vec<ffi::xs_permissions> = perms
            .iter()
            .map(|perm| ffi::xs_permissions {
                id: perm.domid,
                perms: perm.bits(),
            })
            .collect();
        // SAFETY: open handle, C string path, `raw` holds `raw.len()` entries.
        let ok = unsafe {
            ffi::xs_set_permissions(
                self.xs().raw(),
                self.tx(),
                c.as_ptr(),
                raw.as_mut_ptr(),
                raw.len() as c_uint,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(xs_error("set_permissions", path))
        }
    }

    /// A directory's children, or `None` if it does not exist.
    fn directory(&self, path: &str) -> Result<Option<Vec<String>>> {
        let c = c_string(path)?;
        let mut num: c_uint = 0;
        // SAFETY: open handle, C string path, `num` valid for the call.
        let ptr =
            unsafe { ffi::xs_directory(self.xs().raw(), self.tx(), c.as_ptr(), &raw mut num) };
        if ptr.is_null() {
            let err = xs_error("directory", path);
            return if is_enoent(&err) { Ok(None) } else { Err(err) };
        }
        // SAFETY: libxenstore returns one malloc'ed array of `num` strings, ours to free.
        Ok(unsafe { owned_strings(ptr, num as usize) })
    }
}

impl Store for Xs {
    fn xs(&self) -> &Xs {
        self
    }

    fn tx(&self) -> ffi::xs_transaction_t {
        XBT_NULL
    }
}

impl Xs {
    /// Connect to xenstored (its socket, or the kernel's xenbus device). Only when
    /// xenstored is known to run: through the xenbus device, requests to a dom0 without
    /// xenstored wait forever (and `XS_OPEN_SOCKETONLY` does not prevent that: Xen 4.15
    /// made libxenstore fall back to the device whatever the flags).
    pub fn open() -> Result<Self> {
        // SAFETY: no arguments beyond flags.
        let handle = unsafe { ffi::xs_open(0) };
        let handle = NonNull::new(handle).ok_or_else(|| Error::Open {
            what: "Xenstore (xs_open)",
            source: io::Error::last_os_error(),
            hint: "is xenstored running, and is chaos running as root?",
        })?;
        Ok(Self { handle })
    }

    fn raw(&self) -> *mut ffi::xs_handle {
        self.handle.as_ptr()
    }

    /// Start a transaction; it aborts when dropped unless [`Transaction::commit`]ted.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        // SAFETY: open handle.
        let id = unsafe { ffi::xs_transaction_start(self.raw()) };
        if id == XBT_NULL {
            return Err(xs_error("transaction_start", "/"));
        }
        Ok(Transaction {
            xs: self,
            id,
            finished: false,
        })
    }

    /// Run `body` in a transaction and commit, again from the start while another
    /// transaction got in the way, at most 50 times. xenstored says so with EAGAIN at
    /// commit, or with EIO inside the transaction: its transactions read nodes they
    /// have not written from the live store, so removing a node another transaction
    /// removed meanwhile finds it missing from its parent ("Can't find child", seen
    /// with two `chaos destroy`s of one domain).
    pub fn in_transaction<T>(
        &self,
        mut body: impl FnMut(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conflict = None;
        for _ in 0..50 {
            let tx = self.transaction()?;
            let value = match body(&tx) {
                // `tx` aborts as it drops.
                Err(err) if is_conflict(&err) => {
                    conflict = Some(err);
                    continue;
                }
                other => other?,
            };
            if tx.commit()? {
                return Ok(value);
            }
        }
        Err(conflict.unwrap_or_else(|| Error::Xs {
            op: "transaction_end",
            path: "/".into(),
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "50 conflicting transactions in a row",
            ),
        }))
    }

    /// Watch `path` (and everything under it) until the [`Watch`] drops. xenstored
    /// sends one event at once, then one per change.
    pub fn watch(&self, path: &str, token: &str) -> Result<Watch<'_>> {
        let c_path = c_string(path)?;
        let c_token = c_string(token)?;
        // SAFETY: open handle, C strings.
        if !unsafe { ffi::xs_watch(self.raw(), c_path.as_ptr(), c_token.as_ptr()) } {
            return Err(xs_error("watch", path));
        }
        Ok(Watch {
            xs: self,
            path: c_path,
            token: c_token,
        })
    }

    /// The next watch event (path, token), waiting at most until `deadline`; `None`
    /// when it passed. An interrupting signal ends the wait early with `None` too, so
    /// callers can check for it.
    pub fn next_event(&self, deadline: Instant) -> Result<Option<(String, String)>> {
        if let Some(event) = self.check_watch()? {
            return Ok(Some(event));
        }
        let fd = self.fileno()?;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis =
            i32::try_from(left.as_millis().max(u128::from(!left.is_zero()))).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the call.
        let rc = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(Error::Xs {
                op: "poll",
                path: "/".into(),
                source: err,
            });
        }
        self.check_watch()
    }

    /// The descriptor that becomes readable when a watch event is queued, for callers
    /// that poll it together with others (then [`Xs::drain_events`]).
    pub fn fileno(&self) -> Result<std::os::fd::RawFd> {
        // SAFETY: open handle.
        let fd = unsafe { ffi::xs_fileno(self.raw()) };
        if fd < 0 {
            return Err(xs_error("fileno", "/"));
        }
        Ok(fd)
    }

    /// Take every queued watch event; how many there were.
    pub fn drain_events(&self) -> Result<usize> {
        let mut count = 0;
        while self.check_watch()?.is_some() {
            count += 1;
        }
        Ok(count)
    }

    /// A pending watch event, without waiting.
    fn check_watch(&self) -> Result<Option<(String, String)>> {
        // SAFETY: open handle.
        let ptr = unsafe { ffi::xs_check_watch(self.raw()) };
        if ptr.is_null() {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(None);
            }
            return Err(Error::Xs {
                op: "check_watch",
                path: "/".into(),
                source: err,
            });
        }
        // SAFETY: a watch event is one malloc'ed array of (at least) path and token.
        let event = unsafe { owned_strings(ptr, 2) }.expect("not null");
        let mut event = event.into_iter();
        Ok(Some((
            event.next().unwrap_or_default(),
            event.next().unwrap_or_default(),
        )))
    }

    /// Tell xenstored about a new domain's ring (`xs_introduce_domain`).
    pub fn introduce_domain(&self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        // SAFETY: open handle; integers.
        if unsafe { ffi::xs_introduce_domain(self.raw(), domid, mfn as libc::c_ulong, port) } {
            Ok(())
        } else {
            Err(xs_error("introduce_domain", &format!("domain {domid}")))
        }
    }

    /// Tell xenstored to forget a domain (`xs_release_domain`); one it does not know is
    /// no error.
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        // SAFETY: open handle; integer.
        if unsafe { ffi::xs_release_domain(self.raw(), domid) } {
            return Ok(());
        }
        let err = xs_error("release_domain", &format!("domain {domid}"));
        match &err {
            Error::Xs { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(())
            }
            _ => Err(err),
        }
    }

    /// Wait until `done` says yes (it returns `Some`), re-checking on every event of
    /// `watches` (set up by the caller) and at least every `poll`; `None` at the
    /// deadline. `interrupted` is checked between events.
    pub fn wait_until<T>(
        &self,
        deadline: Instant,
        poll: Duration,
        interrupted: &dyn Fn() -> Option<&'static str>,
        mut done: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        loop {
            if let Some(value) = done()? {
                return Ok(Some(value));
            }
            if let Some(signal) = interrupted() {
                return Err(Error::Interrupted(signal));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let _ = self.next_event(deadline.min(now + poll))?;
            // Drain whatever else is queued: one check covers them all.
            self.drain_events()?;
        }
    }
}

impl Drop for Xs {
    fn drop(&mut self) {
        // SAFETY: open handle, closed once; transactions and watches borrow it.
        unsafe { ffi::xs_close(self.raw()) };
    }
}

/// A Xenstore transaction; aborted on drop unless committed.
#[derive(Debug)]
pub struct Transaction<'a> {
    xs: &'a Xs,
    id: ffi::xs_transaction_t,
    finished: bool,
}

impl Transaction<'_> {
    /// Commit: `Ok(true)`, or `Ok(false)` when another transaction got in the way
    /// (EAGAIN) and the caller should run it again.
    pub fn commit(mut self) -> Result<bool> {
        self.finished = true;
        // SAFETY: open handle, live transaction, ended once.
        if unsafe { ffi::xs_transaction_end(self.xs.raw(), self.id, false) } {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(false);
        }
        Err(Error::Xs {
            op: "transaction_end",
            path: "/".into(),
            source: err,
        })
    }
}

impl Store for Transaction<'_> {
    fn xs(&self) -> &Xs {
        self.xs
    }

    fn tx(&self) -> ffi::xs_transaction_t {
        self.id
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // SAFETY: open handle, live transaction, ended once (aborted).
            unsafe { ffi::xs_transaction_end(self.xs.raw(), self.id, true) };
        }
    }
}

/// A registered watch; unwatched on drop.
#[derive(Debug)]
pub struct Watch<'a> {
    xs: &'a Xs,
    path: CString,
    token: CString,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        // SAFETY: open handle; the strings are those the watch was set with.
        unsafe { ffi::xs_unwatch(self.xs.raw(), self.path.as_ptr(), self.token.as_ptr()) };
    }
}
