//! chaos's errors: one enum for the library, each variant carrying what failed and why.

use std::time::Duration;

use crate::config::ConfigError;

/// A chaos operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is wrong: nothing was touched (the CLI exits with status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A call into Xen's libraries (libxenctrl, libxenguest, libxenstore) or onto
    /// xenstored's socket failed, or a handle could not be opened.
    #[error(transparent)]
    Xen(#[from] xenhost::Error),
    /// Something needed Xenstore and xenstored is not running (or refused chaos).
    #[error(
        "this needs Xenstore, which is not available: {0} (NoXS guests, \"xen\": \
         {{\"dev_method\": \"noxs\"}}, do without it)"
    )]
    NoXenstore(String),
    /// xendevd refused or could not be asked.
    #[error("xendevd: {0}")]
    Xendevd(String),
    /// The chaos daemon's records of its shells could not be kept.
    #[error(transparent)]
    Records(#[from] crate::daemon::records::RecordError),
    /// A create's claim on its name could not be made or read ([`crate::claim`]).
    #[error(transparent)]
    Claim(crate::claim::ClaimError),
    /// No domain has this id or name.
    #[error("no domain {0}")]
    NoSuchDomain(String),
    /// A device's back end reported an error or did not come up.
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    /// Something did not happen in time.
    #[error("{what}: not within {} s", .after.as_secs_f64())]
    Timeout { what: String, after: Duration },
    /// A save file that cannot be restored (nothing was created for it).
    #[error("{path}: {source}")]
    SaveFile {
        path: String,
        source: crate::savefile::SaveFileError,
    },
    /// A save or restore failed; the message says what became of the guest.
    #[error("{0}")]
    Save(String),
    /// SIGINT, SIGTERM or SIGHUP arrived while chaos waited.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
    /// A failure after the domain existed; it was destroyed with all its devices.
    #[error("{source}; domain {domid} destroyed, nothing left behind")]
    CreateFailed { domid: u32, source: Box<Error> },
    /// A failure after the domain existed, and destroying it failed too.
    #[error(
        "{source}; destroying domain {domid} failed as well: {cleanup} (`chaos destroy \
         --orphans` tries again)"
    )]
    CreateFailedLeaked {
        domid: u32,
        source: Box<Error>,
        cleanup: Box<Error>,
    },
}

impl From<crate::claim::ClaimError> for Error {
    /// A name another create holds (a running chaos, or an orphan's) is a configuration
    /// error on `name`, as a name in use is.
    fn from(err: crate::claim::ClaimError) -> Self {
        use crate::claim::ClaimError;
        match err {
            ClaimError::Taken { .. } | ClaimError::Orphaned { .. } => {
                Error::Config(ConfigError::new("name", err.to_string()))
            }
            other => Error::Claim(other),
        }
    }
}

/// chaos's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the CLI should report this as a usage or configuration error (status 2).
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
    }

    /// The signal, if this is an interruption (the CLI exits like a shell killed by it).
    pub fn interrupted_by(&self) -> Option<&'static str> {
        match self {
            Error::Interrupted(signal) => Some(signal),
            Error::CreateFailed { source, .. } | Error::CreateFailedLeaked { source, .. } => {
                source.interrupted_by()
            }
            _ => None,
        }
    }
}
