//! The host limits that bound how many NoXS guests xendevd serves: its own open files
//! (`RLIMIT_NOFILE`: a guest keeps its console log open, and a tap per vif and a file
//! per vbd), gntalloc's grants (one control page per device) and dom0's event channels
//! (the console's and one per device). xendevd raises what it may at start
//! ([`raise_open_files`]) and says what it got; when a set-up runs into a limit, the
//! error names the limit, its value and the knob that raises it ([`LimitReached`]),
//! not the bare errno ("No space left on device"). (A bridge's 1023 ports are
//! `bridge.rs`'s to name.)

use std::fmt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// gntalloc's limit, for every user of `/dev/xen/gntalloc` together (the module's
/// parameter, writable by root).
pub const GNTALLOC_LIMIT: &str = "/sys/module/xen_gntalloc/parameters/limit";

/// A limit a set-up ran into: which, its value when known, and the knob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitReached {
    #[error(
        "xendevd has as many files open as its limit allows ({}, RLIMIT_NOFILE; a NoXS \
         guest keeps its console log, a tap per vif and a file per vbd open): start \
         xendevd with a higher hard limit (`ulimit -Hn N` where it is started, \
         LimitNOFILE=N in a systemd unit)",
        Known(*limit)
    )]
    OpenFiles { limit: Option<u64> },
    #[error("dom0's table of open files is full (ENFILE): raise /proc/sys/fs/file-max")]
    SystemFiles,
    #[error(
        "gntalloc's limit of {} grants is reached (xendevd holds {held}; a NoXS guest \
         takes one per device: sysctl, each vif and vbd): raise {GNTALLOC_LIMIT} (or set \
         `options xen_gntalloc limit=N` in /etc/modprobe.d)",
        Known(*limit)
    )]
    Gntalloc { limit: Option<u64>, held: usize },
    #[error(
        "no grant could be made although xendevd holds only {held} of gntalloc's limit of \
         {limit} ({GNTALLOC_LIMIT}): other users of gntalloc hold the rest, or dom0's \
         grant table is full (raise Xen's gnttab_max_frames= on its command line: a frame \
         holds 512 grants)"
    )]
    GrantTable { limit: u64, held: usize },
    #[error(
        "dom0 has no free event channel (a NoXS guest takes one for its console and one \
         per device): dom0 Linux has 4096 with the 2-level event ABI and 131072 with FIFO \
         events (xen.fifo_events=1 on its command line, the default)"
    )]
    EventChannels,
}

/// A value that may be unknown, for messages.
struct Known<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Known<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// What a failed call was making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Making {
    /// A file descriptor: a file, a tap, a socket.
    File,
    /// A grant of one of our pages (gntalloc), with how many xendevd holds already.
    Grant { held: usize },
    /// An event channel in dom0.
    EventChannel,
}

/// The limits as they stand, for [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readings {
    /// xendevd's soft `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// gntalloc's limit ([`GNTALLOC_LIMIT`]).
    pub gntalloc: Option<u64>,
}

impl Readings {
    /// Read them now.
    pub fn now() -> Self {
        Self {
            open_files: getrlimit(Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft),
            gntalloc: gntalloc_limit(Path::new(GNTALLOC_LIMIT)),
        }
    }
}

/// The limit behind `errno`, left by a call making `making`, if it is one: pure, so
/// its reasoning is tested.
pub fn classify(errno: Errno, making: Making, readings: Readings) -> Option<LimitReached> {
    match (errno, making) {
        (Errno::EMFILE, _) => Some(LimitReached::OpenFiles {
            limit: readings.open_files,
        }),
        (Errno::ENFILE, _) => Some(LimitReached::SystemFiles),
        // gntalloc says ENOSPC for its own limit and for a grant table that cannot
        // grow; only our share of its limit tells which is likelier.
        (Errno::ENOSPC, Making::Grant { held }) => Some(match readings.gntalloc {
            Some(limit) if u64::try_from(held).unwrap_or(u64::MAX) < limit => {
                LimitReached::GrantTable { limit, held }
            }
            limit => LimitReached::Gntalloc { limit, held },
        }),
        (Errno::ENOSPC, Making::EventChannel) => Some(LimitReached::EventChannels),
        _ => None,
    }
}

/// The limit behind an errno left by a call making `making`, read now.
pub fn reached(errno: Option<i32>, making: Making) -> Option<LimitReached> {
    classify(Errno::from_raw(errno?), making, Readings::now())
}

/// gntalloc's limit as `path` (the module's parameter) has it.
fn gntalloc_limit(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// xendevd's open-files limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub was: u64,
    pub now: u64,
    pub hard: u64,
}

impl fmt::Display for OpenFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.was == self.now {
            write!(
                f,
                "open files: {} (RLIMIT_NOFILE, the hard limit)",
                self.now
            )
        } else {
            write!(
                f,
                "open files: raised RLIMIT_NOFILE from {} to {}, the hard limit",
                self.was, self.now
            )
        }
    }
}

/// Raise the soft limit on open files to the hard one: the soft default (1024) would
/// stop xendevd at a few hundred guests.
pub fn raise_open_files() -> nix::Result<OpenFiles> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if was < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(OpenFiles {
        was,
        now: hard.max(was),
        hard,
    })
}

/// What xendevd's start says about gntalloc's limit.
pub fn describe_gntalloc() -> String {
    match gntalloc_limit(Path::new(GNTALLOC_LIMIT)) {
        Some(limit) => format!(
            "gntalloc allows {limit} grants in all ({GNTALLOC_LIMIT}): a NoXS guest takes \
             one per device"
        ),
        None => format!("gntalloc's limit is unknown (no {GNTALLOC_LIMIT})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_with_their_knob() {
        let readings = Readings {
            open_files: Some(4096),
            gntalloc: Some(1024),
        };
        assert_eq!(
            classify(Errno::EMFILE, Making::File, readings)
                .unwrap()
                .to_string(),
            "xendevd has as many files open as its limit allows (4096, RLIMIT_NOFILE; a NoXS \
             guest keeps its console log, a tap per vif and a file per vbd open): start \
             xendevd with a higher hard limit (`ulimit -Hn N` where it is started, \
             LimitNOFILE=N in a systemd unit)"
        );
        assert_eq!(
            classify(Errno::ENFILE, Making::File, readings),
            Some(LimitReached::SystemFiles)
        );
        assert_eq!(
            classify(Errno::ENOSPC, Making::Grant { held: 1024 }, readings)
                .unwrap()
                .to_string(),
            "gntalloc's limit of 1024 grants is reached (xendevd holds 1024; a NoXS guest \
             takes one per device: sysctl, each vif and vbd): raise \
             /sys/module/xen_gntalloc/parameters/limit (or set `options xen_gntalloc \
             limit=N` in /etc/modprobe.d)"
        );
        // Below the limit: someone else holds the rest, or the grant table is full.
        let err = classify(Errno::ENOSPC, Making::Grant { held: 10 }, readings).unwrap();
        assert_eq!(
            err,
            LimitReached::GrantTable {
                limit: 1024,
                held: 10
            }
        );
        assert!(err.to_string().contains("gnttab_max_frames="), "{err}");
        // No parameter to read: gntalloc's limit still, its value unknown.
        let unread = Readings::default();
        assert!(
            classify(Errno::ENOSPC, Making::Grant { held: 3 }, unread)
                .unwrap()
                .to_string()
                .starts_with("gntalloc's limit of unknown grants is reached (xendevd holds 3")
        );
        assert!(
            classify(Errno::EMFILE, Making::Grant { held: 3 }, unread)
                .unwrap()
                .to_string()
                .starts_with("xendevd has as many files open as its limit allows (unknown,")
        );
        assert_eq!(
            classify(Errno::ENOSPC, Making::EventChannel, readings),
            Some(LimitReached::EventChannels)
        );
        // Not a limit: the errno stays the caller's to report.
        for (errno, making) in [
            (Errno::ENOSPC, Making::File),
            (Errno::ENOMEM, Making::Grant { held: 1 }),
            (Errno::EINVAL, Making::EventChannel),
            (Errno::ENOENT, Making::File),
        ] {
            assert_eq!(classify(errno, making, readings), None, "{errno}");
        }
        assert_eq!(reached(None, Making::File), None);
    }

    #[test]
    fn the_gntalloc_parameter_is_read() {
        let dir = std::env::temp_dir().join(format!("xendevd-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("limit");
        std::fs::write(&path, "16384\n").unwrap();
        assert_eq!(gntalloc_limit(&path), Some(16384));
        std::fs::write(&path, "lots\n").unwrap();
        assert_eq!(gntalloc_limit(&path), None);
        assert_eq!(gntalloc_limit(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_open_files_line() {
        let raised = OpenFiles {
            was: 1024,
            now: 4096,
            hard: 4096,
        };
        assert_eq!(
            raised.to_string(),
            "open files: raised RLIMIT_NOFILE from 1024 to 4096, the hard limit"
        );
        let kept = OpenFiles {
            was: 4096,
            now: 4096,
            hard: 4096,
        };
        assert_eq!(
            kept.to_string(),
            "open files: 4096 (RLIMIT_NOFILE, the hard limit)"
        );
    }
}
