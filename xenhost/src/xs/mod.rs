//! libxenstore: a safe handle ([`Xs`]), transactions that abort unless committed
//! ([`Transaction`], and [`Xs::in_transaction`] that runs one again while another gets
//! in the way) and watches that unwatch on drop ([`Watch`]). Reads and writes go
//! through the [`Store`] trait, which both the handle and a transaction implement, so
//! code does not care whether it runs inside a transaction (krata's `XsdInterface`).
//! [`wire`] speaks xenstored's socket directly, to write a batch of nodes at once.
//!
//! Paths relative to dom0's home are fine: xenstored resolves `backend/vif/2/0` as
//! `/local/domain/0/backend/vif/2/0` for dom0's connection.
//!
//! One errno rule for every caller: a node that does not exist is `None` (reads,
//! directories) or no error (removal); inside a transaction `EAGAIN`, `EIO` (and
//! `EINVAL` for a removal) mean that another transaction got in the way
//! ([`Error::is_conflict`]); outside one,
//! `EIO`, `ECONNRESET`, `EPIPE` and `EBADF` mean the connection is gone
//! ([`Error::is_connection_lost`]).

pub mod wire;

use std::borrow::Borrow;
use std::ffi::{CStr, CString, c_char, c_uint, c_void};
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use xenffi as ffi;

use crate::error::{Error, Result, program};

/// `XBT_NULL`: no transaction.
const XBT_NULL: ffi::xs_transaction_t = 0;

/// How many times [`Xs::in_transaction`] and [`wire::Wire::write_nodes`] run a
/// transaction that others keep getting in the way of.
pub const MAX_ATTEMPTS: usize = 50;

/// Where xenstored listens, in libxenstore's order: `XENSTORED_PATH`, then the run
/// directory (`/run` and its older name `/var/run`).
pub fn socket_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(path) = std::env::var_os("XENSTORED_PATH") {
        paths.push(PathBuf::from(path));
    }
    paths.push("/run/xenstored/socket".into());
    paths.push("/var/run/xenstored/socket".into());
    paths
}

/// A connection to the first of xenstored's sockets that accepts one.
pub(crate) fn connect_socket() -> Result<(UnixStream, PathBuf)> {
    let tried = socket_paths();
    tried
        .iter()
        .find_map(|path| Some((UnixStream::connect(path).ok()?, path.clone())))
        .ok_or(Error::NoXenstored { tried })
}

/// One permission entry as `xenstore-ls -p` shows it: `n0` (none), `r1`, `w1`, `b1`
/// (both). The first entry of a node's list is its owner, and its letter is what every
/// domain not listed gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub read: bool,
    pub write: bool,
}

impl Perm {
    pub const fn none(domid: u32) -> Self {
        Self {
            domid,
            read: false,
            write: false,
        }
    }

    pub const fn read(domid: u32) -> Self {
        Self {
            domid,
            read: true,
            write: false,
        }
    }

    /// `XS_PERM_*` bits.
    pub fn bits(self) -> u32 {
        u32::from(self.read) | (u32::from(self.write) << 1)
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match (self.read, self.write) {
            (false, false) => 'n',
            (true, false) => 'r',
            (false, true) => 'w',
            (true, true) => 'b',
        };
        write!(f, "{letter}{}", self.domid)
    }
}

/// A node to write: its value ("" for a directory) and, where they differ from its
/// parent's, its permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub value: String,
    pub perms: Option<Vec<Perm>>,
}

/// A connection to xenstored (`xs_open`), closed on drop.
#[derive(Debug)]
pub struct Xs {
    handle: NonNull<ffi::xs_handle>,
}

// SAFETY: libxenstore handles are thread-safe (it locks internally); `Xs` is `Send` so a
// handle can move to another thread.
unsafe impl Send for Xs {}

fn c_string(op: &'static str, path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| {
        Error::xs(
            op,
            &path.escape_debug().to_string(),
            io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })
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
        let c = c_string("read", path)?;
        let mut len: c_uint = 0;
        // SAFETY: open handle, C string path, `len` valid for the call.
        let ptr = unsafe { ffi::xs_read(self.xs().raw(), self.tx(), c.as_ptr(), &raw mut len) };
        if ptr.is_null() {
            let err = Error::xs_last("read", path);
            return if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            };
        }
        // SAFETY: libxenstore returns a malloc'ed buffer of `len` bytes, ours to free.
        Ok(unsafe { owned_string(ptr, len) })
    }

    /// Write `value` at `path`, creating it and its parents.
    fn write(&self, path: &str, value: &str) -> Result<()> {
        let c = c_string("write", path)?;
        let len = c_uint::try_from(value.len()).map_err(|_| {
            Error::xs(
                "write",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "value too long"),
            )
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
            Err(Error::xs_last("write", path))
        }
    }

    /// Remove a node and everything under it; one that does not exist is no error.
    fn rm(&self, path: &str) -> Result<()> {
        let c = c_string("rm", path)?;
        // SAFETY: open handle, C string path.
        if unsafe { ffi::xs_rm(self.xs().raw(), self.tx(), c.as_ptr()) } {
            return Ok(());
        }
        let err = Error::xs_last("rm", path);
        if err.is_not_found() { Ok(()) } else { Err(err) }
    }

    fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<()> {
        let c = c_string("set_permissions", path)?;
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
            Err(Error::xs_last("set_permissions", path))
        }
    }

    /// A directory's children, or `None` if it does not exist.
    fn directory(&self, path: &str) -> Result<Option<Vec<String>>> {
        let c = c_string("directory", path)?;
        let mut num: c_uint = 0;
        // SAFETY: open handle, C string path, `num` valid for the call.
        let ptr =
            unsafe { ffi::xs_directory(self.xs().raw(), self.tx(), c.as_ptr(), &raw mut num) };
        if ptr.is_null() {
            let err = Error::xs_last("directory", path);
            return if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            };
        }
        // SAFETY: libxenstore returns one malloc'ed array of `num` strings, ours to free.
        Ok(unsafe { owned_strings(ptr, num as usize) })
    }

    /// Write `nodes`: values, then permissions where given.
    fn write_nodes(&self, nodes: &[Node]) -> Result<()> {
        for node in nodes {
            self.write(&node.path, &node.value)?;
            if let Some(perms) = &node.perms {
                self.set_perms(&node.path, perms)?;
            }
        }
        Ok(())
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
    /// Connect to xenstored's socket, if one accepts a connection
    /// ([`Error::NoXenstored`] otherwise): through the kernel's xenbus device, requests
    /// to a dom0 without xenstored wait forever, and `XS_OPEN_SOCKETONLY` does not
    /// prevent that (Xen 4.15 made libxenstore fall back to the device whatever the
    /// flags). A xenstored in a stub domain, with no socket in dom0, is not supported.
    pub fn open() -> Result<Self> {
        drop(connect_socket()?);
        ffi::load()?;
        // SAFETY: no arguments beyond flags.
        let handle = unsafe { ffi::xs_open(ffi::XS_OPEN_SOCKETONLY.into()) };
        let handle = NonNull::new(handle).ok_or_else(|| Error::Open {
            what: "Xenstore (xs_open)",
            source: io::Error::last_os_error(),
            hint: format!(
                "is xenstored running, and is {} running as root?",
                program()
            ),
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
            return Err(Error::xs_last("transaction_start", "/"));
        }
        Ok(Transaction {
            xs: self,
            id,
            finished: false,
        })
    }

    /// Run `body` in a transaction and commit, again from the start while another
    /// transaction got in the way, at most [`MAX_ATTEMPTS`] times. xenstored says so
    /// with EAGAIN at commit, or with an error inside the transaction
    /// ([`Error::is_conflict`]): its transactions read nodes they have not written
    /// from the live store, so removing a node another transaction removed meanwhile
    /// finds it missing from its parent (EIO, "Can't find child", seen with two `chaos
    /// destroy`s of one domain), or its parent missing (EINVAL, seen with a `chaos
    /// destroy` while `create --console` cleans up).
    pub fn in_transaction<T>(
        &self,
        mut body: impl FnMut(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conflict = None;
        for _ in 0..MAX_ATTEMPTS {
            let tx = self.transaction()?;
            let value = match body(&tx) {
                // `tx` aborts as it drops.
                Err(err) if err.is_conflict() => {
                    conflict = Some(err);
                    continue;
                }
                other => other?,
            };
            if tx.commit()? {
                return Ok(value);
            }
        }
        Err(conflict.unwrap_or_else(too_many_conflicts))
    }

    /// Watch `path` (and everything under it) until the [`Watch`] drops. xenstored
    /// sends one event at once, then one per change.
    pub fn watch(&self, path: &str, token: &str) -> Result<Watch<&Self>> {
        Watch::new(self, path, token)
    }

    /// Watch `path` on this connection, which the watch then owns: for a watch whose
    /// descriptor a caller polls on its own.
    pub fn into_watch(self, path: &str, token: &str) -> Result<Watch<Self>> {
        Watch::new(self, path, token)
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
            return Err(Error::xs("poll", "/", err));
        }
        self.check_watch()
    }

    /// The descriptor that becomes readable when a watch event is queued, for callers
    /// that poll it together with others (then [`Xs::drain_events`]).
    pub fn fileno(&self) -> Result<RawFd> {
        // SAFETY: open handle.
        let fd = unsafe { ffi::xs_fileno(self.raw()) };
        if fd < 0 {
            return Err(Error::xs_last("fileno", "/"));
        }
        Ok(fd)
    }

    /// [`Xs::fileno`], borrowed for as long as the connection is open.
    pub fn fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = self.fileno()?;
        // SAFETY: the descriptor belongs to the handle and stays open until it closes,
        // which cannot happen while `self` is borrowed.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
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
            return Err(Error::xs("check_watch", "/", err));
        }
        // SAFETY: a watch event is one malloc'ed array of (at least) path and token.
        let event = unsafe { owned_strings(ptr, 2) }.expect("not null");
        let mut event = event.into_iter();
        Ok(Some((
            event.next().unwrap_or_default(),
            event.next().unwrap_or_default(),
        )))
    }

    /// Write `nodes` (values, then permissions where given) in one transaction.
    pub fn write_nodes_at_once(&self, nodes: &[Node]) -> Result<()> {
        self.in_transaction(|tx| tx.write_nodes(nodes))
    }

    /// Tell xenstored about a new domain's ring (`xs_introduce_domain`).
    pub fn introduce_domain(&self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        // SAFETY: open handle; integers.
        if unsafe { ffi::xs_introduce_domain(self.raw(), domid, mfn as libc::c_ulong, port) } {
            Ok(())
        } else {
            Err(Error::xs_last(
                "introduce_domain",
                &format!("domain {domid}"),
            ))
        }
    }

    /// Tell xenstored to forget a domain (`xs_release_domain`); one it does not know is
    /// no error.
    pub fn release_domain(&self, domid: u32) -> Result<()> {
        // SAFETY: open handle; integer.
        if unsafe { ffi::xs_release_domain(self.raw(), domid) } {
            return Ok(());
        }
        let err = Error::xs_last("release_domain", &format!("domain {domid}"));
        if matches!(err.errno(), Some(libc::ENOENT | libc::EINVAL)) {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Wait until `check` says yes (it returns `Some`), re-checking on every event of
    /// the watches the caller set up and at least every `poll`; `None` at the deadline.
    /// `check` may end the wait with its own error (an interrupting signal, say).
    pub fn wait_until<T, E: From<Error>>(
        &self,
        deadline: Instant,
        poll: Duration,
        mut check: impl FnMut() -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        loop {
            if let Some(value) = check()? {
                return Ok(Some(value));
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

/// The error of a transaction that lost to others [`MAX_ATTEMPTS`] times in a row.
fn too_many_conflicts() -> Error {
    Error::xs(
        "transaction_end",
        "/",
        io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{MAX_ATTEMPTS} conflicting transactions in a row"),
        ),
    )
}

impl Drop for Xs {
    fn drop(&mut self) {
        // SAFETY: open handle, closed once; transactions and watches borrow or own it,
        // so none is left.
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
        Err(Error::xs("transaction_end", "/", err))
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

/// A registered watch on a connection it borrows (`Watch<&Xs>`) or owns
/// (`Watch<Xs>`); unwatched on drop.
#[derive(Debug)]
pub struct Watch<X: Borrow<Xs>> {
    xs: X,
    path: CString,
    token: CString,
}

impl<X: Borrow<Xs>> Watch<X> {
    fn new(xs: X, path: &str, token: &str) -> Result<Self> {
        let c_path = c_string("watch", path)?;
        let c_token = c_string("watch", token)?;
        // SAFETY: open handle, C strings.
        if !unsafe { ffi::xs_watch(xs.borrow().raw(), c_path.as_ptr(), c_token.as_ptr()) } {
            return Err(Error::xs_last("watch", path));
        }
        Ok(Self {
            xs,
            path: c_path,
            token: c_token,
        })
    }

    /// The connection the watch is on (its descriptor, its events).
    pub fn xs(&self) -> &Xs {
        self.xs.borrow()
    }
}

impl<X: Borrow<Xs>> Drop for Watch<X> {
    fn drop(&mut self) {
        // SAFETY: open handle (borrowed or owned: it closes only after this); the
        // strings are those the watch was set with.
        unsafe {
            ffi::xs_unwatch(
                self.xs.borrow().raw(),
                self.path.as_ptr(),
                self.token.as_ptr(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_as_xenstore_ls_shows_them() {
        assert_eq!(Perm::none(0).to_string(), "n0");
        assert_eq!(Perm::read(5).to_string(), "r5");
        let both = Perm {
            domid: 3,
            read: true,
            write: true,
        };
        assert_eq!((both.to_string(), both.bits()), ("b3".into(), 3));
        assert_eq!(Perm::read(1).bits(), ffi::XS_PERM_READ);
    }

    #[test]
    fn a_path_with_a_nul_is_refused_before_any_call() {
        let err = c_string("read", "/a\0b").unwrap_err();
        assert_eq!(err.to_string(), "Xenstore read /a\\0b: contains a NUL byte");
    }

    #[test]
    fn sockets_in_libxenstores_order() {
        let paths = socket_paths();
        assert!(paths.ends_with(&[
            PathBuf::from("/run/xenstored/socket"),
            PathBuf::from("/var/run/xenstored/socket")
        ]));
    }
}
