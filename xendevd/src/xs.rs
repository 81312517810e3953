//! A safe, owning handle on Xenstore through Debian's `libxenstore` (`xenffi`): read,
//! list, write, transactions. Each call is one round trip to xenstored over its Unix
//! socket (no process per access, as the `xenstore-*` tools cost).
//!
//! Paths relative to dom0's home are fine: xenstored resolves `backend/vif/2/0` as
//! `/local/domain/0/backend/vif/2/0` for dom0's connection.
//!
//! This belongs in a crate of its own once chaos needs the same (style.md §5: one crate
//! per Xen interface); it lives here until then.

use std::ffi::{CStr, CString, c_uint, c_void};
use std::ptr::NonNull;

use nix::errno::Errno;
use xenffi as ffi;

/// `XBT_NULL`: outside any transaction (`xenstore.h`).
const XBT_NULL: ffi::xs_transaction_t = 0;

/// A Xenstore call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XsError {
    #[error("cannot connect to xenstored: {0} (is xenstored running?)")]
    Open(Errno),
    #[error("Xenstore path {0:?} holds a NUL byte")]
    Nul(String),
    #[error("Xenstore {op} {path}: {errno}")]
    Call {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("Xenstore transaction: {0}")]
    Transaction(Errno),
}

impl XsError {
    /// Whether the connection itself is broken (reconnect before the next call).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            XsError::Call {
                errno: Errno::EIO | Errno::ECONNRESET | Errno::EPIPE | Errno::EBADF,
                ..
            } | XsError::Transaction(Errno::EIO | Errno::ECONNRESET | Errno::EPIPE)
        )
    }
}

fn c_path(path: &str) -> Result<CString, XsError> {
    CString::new(path).map_err(|_| XsError::Nul(path.to_owned()))
}

/// An open Xenstore connection; closed on drop.
#[derive(Debug)]
pub struct Xenstore {
    handle: NonNull<ffi::xs_handle>,
}

impl Xenstore {
    /// Connect to xenstored's socket. Not `/dev/xen/xenbus`: without xenstored, calls
    /// through it would wait forever. `XS_OPEN_SOCKETONLY` alone does not prevent that
    /// (since Xen 4.15 libxenstore falls back to the device whatever the flags), so
    /// first a socket must accept a connection.
    pub fn open() -> Result<Self, XsError> {
        let mut sockets: Vec<std::path::PathBuf> = std::env::var_os("XENSTORED_PATH")
            .map(Into::into)
            .into_iter()
            .collect();
        sockets.extend([
            "/run/xenstored/socket".into(),
            "/var/run/xenstored/socket".into(),
        ]);
        if !sockets
            .iter()
            .any(|path| std::os::unix::net::UnixStream::connect(path).is_ok())
        {
            return Err(XsError::Open(Errno::ECONNREFUSED));
        }
        // SAFETY: xs_open takes flags only and returns an owned handle or NULL.
        let handle = unsafe { ffi::xs_open(ffi::XS_OPEN_SOCKETONLY.into()) };
        NonNull::new(handle)
            .map(|handle| Self { handle })
            .ok_or_else(|| XsError::Open(Errno::last()))
    }

    fn read_in(&self, t: ffi::xs_transaction_t, path: &str) -> Result<Option<String>, XsError> {
        let c = c_path(path)?;
        let mut len: c_uint = 0;
        // SAFETY: the handle is open; `c` is NUL-terminated and `len` writable, both
        // live across the call; the result is a malloc'd buffer we own.
        let data = unsafe { ffi::xs_read(self.handle.as_ptr(), t, c.as_ptr(), &raw mut len) };
        if data.is_null() {
            return match Errno::last() {
                Errno::ENOENT => Ok(None),
                errno => Err(XsError::Call {
                    op: "read",
                    path: path.to_owned(),
                    errno,
                }),
            };
        }
        // SAFETY: libxenstore returns `len` bytes at `data` (plus a NUL it adds).
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len as usize) };
        let value = String::from_utf8_lossy(bytes).into_owned();
        // SAFETY: `data` came from malloc in libxenstore and is freed once, here.
        unsafe { nix::libc::free(data) };
        Ok(Some(value))
    }

    /// The value at `path`, or `None` if there is no such node.
    pub fn read(&self, path: &str) -> Result<Option<String>, XsError> {
        self.read_in(XBT_NULL, path)
    }

    /// The children of `path`, or `None` if there is no such node.
    pub fn directory(&self, path: &str) -> Result<Option<Vec<String>>, XsError> {
        let c = c_path(path)?;
        let mut num: c_uint = 0;
        // SAFETY: as in `read_in`; the result is one malloc'd block holding `num`
        // pointers to NUL-terminated strings.
        let list =
            unsafe { ffi::xs_directory(self.handle.as_ptr(), XBT_NULL, c.as_ptr(), &raw mut num) };
        if list.is_null() {
            return match Errno::last() {
                Errno::ENOENT => Ok(None),
                errno => Err(XsError::Call {
                    op: "directory",
                    path: path.to_owned(),
                    errno,
                }),
            };
        }
        let names = (0..num as usize)
            .map(|i| {
                // SAFETY: `i < num` entries, each a valid C string inside the block.
                unsafe { CStr::from_ptr(*list.add(i)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        // SAFETY: the block (strings included) came from malloc and is freed once.
        unsafe { nix::libc::free(list.cast::<c_void>()) };
        Ok(Some(names))
    }

    fn write_in(&self, t: ffi::xs_transaction_t, path: &str, value: &str) -> Result<(), XsError> {
        let c = c_path(path)?;
        let len = c_uint::try_from(value.len()).unwrap_or(c_uint::MAX);
        // SAFETY: the handle is open; `c` and `value` live across the call; xs_write
        // reads `len` bytes of `value`.
        let ok = unsafe {
            ffi::xs_write(
                self.handle.as_ptr(),
                t,
                c.as_ptr(),
                value.as_ptr().cast::<c_void>(),
                len,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(XsError::Call {
                op: "write",
                path: path.to_owned(),
                errno: Errno::last(),
            })
        }
    }

    /// Write `value` at `path` (creating it and its parents).
    pub fn write(&self, path: &str, value: &str) -> Result<(), XsError> {
        self.write_in(XBT_NULL, path, value)
    }

    /// Write several nodes at once, in one transaction (retried while xenstored says
    /// another transaction got in the way).
    pub fn write_all(&self, nodes: &[(&str, &str)]) -> Result<(), XsError> {
        loop {
            // SAFETY: the handle is open.
            let t = unsafe { ffi::xs_transaction_start(self.handle.as_ptr()) };
            if t == XBT_NULL {
                return Err(XsError::Transaction(Errno::last()));
            }
            let written = nodes
                .iter()
                .try_for_each(|(path, value)| self.write_in(t, path, value));
            let abort = written.is_err();
            // SAFETY: `t` is the transaction just started on this handle, ended once.
            let ended = unsafe { ffi::xs_transaction_end(self.handle.as_ptr(), t, abort) };
            written?;
            if ended {
                return Ok(());
            }
            match Errno::last() {
                Errno::EAGAIN => continue,
                errno => return Err(XsError::Transaction(errno)),
            }
        }
    }
}

impl Drop for Xenstore {
    fn drop(&mut self) {
        // SAFETY: the handle is open and closed once, here.
        unsafe { ffi::xs_close(self.handle.as_ptr()) };
    }
}

/// A watch on its own connection, whose fd the daemon polls; unwatched and closed on
/// drop.
#[derive(Debug)]
pub struct XsWatch {
    xs: Xenstore,
    path: CString,
}

/// The token our watches carry.
const TOKEN: &CStr = c"xendevd";

impl XsWatch {
    /// Watch `path` (e.g. `@releaseDomain`).
    pub fn open(path: &str) -> Result<Self, XsError> {
        let xs = Xenstore::open()?;
        let c = c_path(path)?;
        // SAFETY: the handle is open; both strings are NUL-terminated and live across
        // the call.
        if !unsafe { ffi::xs_watch(xs.handle.as_ptr(), c.as_ptr(), TOKEN.as_ptr()) } {
            return Err(XsError::Call {
                op: "watch",
                path: path.to_owned(),
                errno: Errno::last(),
            });
        }
        Ok(Self { xs, path: c })
    }

    /// The fd that becomes readable when the watch fires.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the handle is open, and so is its fd, until `self` drops.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(ffi::xs_fileno(self.xs.handle.as_ptr())) }
    }

    /// Take every pending firing; how many there were.
    pub fn drain(&self) -> Result<usize, XsError> {
        let mut count = 0;
        loop {
            // SAFETY: the handle is open; the result is NULL or one malloc'd block.
            let event = unsafe { ffi::xs_check_watch(self.xs.handle.as_ptr()) };
            if event.is_null() {
                return match Errno::last() {
                    Errno::EAGAIN => Ok(count),
                    errno => Err(XsError::Call {
                        op: "read watch",
                        path: self.path.to_string_lossy().into_owned(),
                        errno,
                    }),
                };
            }
            // SAFETY: the block came from malloc and is freed once.
            unsafe { nix::libc::free(event.cast::<c_void>()) };
            count += 1;
        }
    }
}

impl Drop for XsWatch {
    fn drop(&mut self) {
        // SAFETY: the handle is open; both strings are NUL-terminated.
        unsafe { ffi::xs_unwatch(self.xs.handle.as_ptr(), self.path.as_ptr(), TOKEN.as_ptr()) };
    }
}
