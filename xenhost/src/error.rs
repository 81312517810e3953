//! xenhost's one error type: which call failed (and on what), with the errno it left.

use std::io;
use std::path::{Path, PathBuf};

/// A call into one of Xen's libraries (or onto xenstored's socket) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Xen's libraries could not be loaded (not a Xen 4.17 dom0's userland).
    #[error("{0}")]
    Load(#[from] xenffi::LoadError),
    /// A handle could not be opened (no Xen, no xenstored, not root).
    #[error("cannot open {what}: {source} ({hint})")]
    Open {
        what: &'static str,
        source: io::Error,
        hint: String,
    },
    /// No socket of xenstored accepts a connection (libxenstore would fall back to the
    /// kernel's xenbus device, where requests wait forever without xenstored).
    #[error(
        "xenstored is not running (no socket of it accepts a connection: {})",
        tried.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoXenstored { tried: Vec<PathBuf> },
    /// A libxenctrl, libxenguest, libxenevtchn or libxengnttab call failed; `detail` is
    /// what libxc logged about it.
    #[error("{call}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Call {
        call: &'static str,
        source: io::Error,
        detail: Option<String>,
    },
    /// A Xenstore operation on `path` failed.
    #[error("Xenstore {op} {path}: {source}")]
    Xs {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

/// xenhost's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// `call` failed; errno as it left it.
    pub(crate) fn last(call: &'static str) -> Self {
        Self::Call {
            call,
            source: io::Error::last_os_error(),
            detail: None,
        }
    }

    /// Xenstore operation `op` on `path` failed; errno as libxenstore left it.
    pub(crate) fn xs_last(op: &'static str, path: &str) -> Self {
        Self::xs(op, path, io::Error::last_os_error())
    }

    pub(crate) fn xs(op: &'static str, path: &str, source: io::Error) -> Self {
        Self::Xs {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The errno, if the failure left one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Open { source, .. } | Self::Call { source, .. } | Self::Xs { source, .. } => {
                source.raw_os_error()
            }
            Self::NoXenstored { .. } | Self::Load(_) => None,
        }
    }

    /// The thing is not there (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }

    /// What xenstored answers inside a transaction another one got in the way of:
    /// `EAGAIN`; `EIO` when a node that transaction removed meanwhile is missing from
    /// its parent ("Can't find child"); `EINVAL` for a removal whose parent it removed
    /// meanwhile (xenstored's `_rm` cannot read the parent).
    pub fn is_conflict(&self) -> bool {
        let Self::Xs { op, source, .. } = self else {
            return false;
        };
        match source.raw_os_error() {
            Some(libc::EIO | libc::EAGAIN) => true,
            Some(libc::EINVAL) => *op == "rm",
            _ => false,
        }
    }

    /// Whether a Xenstore connection itself is broken (open a new one before the next
    /// call).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Xs { .. })
            && matches!(
                self.errno(),
                Some(libc::EIO | libc::ECONNRESET | libc::EPIPE | libc::EBADF)
            )
    }
}

/// This program's name, for the hints of [`Error::Open`] ("is chaos running as
/// root?").
pub(crate) fn program() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|arg0| Path::new(arg0).file_name())
        .map_or_else(
            || "this program".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_call_and_the_errno() {
        let err = Error::Call {
            call: "xc_domain_pause",
            source: io::Error::from_raw_os_error(libc::ESRCH),
            detail: Some("domain 9: no such domain".into()),
        };
        assert_eq!(
            err.to_string(),
            "xc_domain_pause: No such process (os error 3) (domain 9: no such domain)"
        );
        assert_eq!(err.errno(), Some(libc::ESRCH));
        let err = Error::xs(
            "read",
            "/local/domain/3/name",
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            err.to_string(),
            "Xenstore read /local/domain/3/name: No such file or directory (os error 2)"
        );
        assert!(err.is_not_found() && !err.is_conflict() && !err.is_connection_lost());
        let eio = Error::xs("rm", "/x", io::Error::from_raw_os_error(libc::EIO));
        assert!(eio.is_conflict() && eio.is_connection_lost());
        let einval = |op| Error::xs(op, "/x", io::Error::from_raw_os_error(libc::EINVAL));
        assert!(einval("rm").is_conflict() && !einval("write").is_conflict());
        let tried = vec![PathBuf::from("/run/a"), PathBuf::from("/run/b")];
        assert_eq!(
            Error::NoXenstored { tried }.to_string(),
            "xenstored is not running (no socket of it accepts a connection: /run/a, /run/b)"
        );
    }
}
