//! Logs: to stderr with `--foreground` (seconds since start, level, message), to syslog
//! (facility daemon, ident `xendevd`, with the pid) once daemonized.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::syslog::{Facility, LogFlags, Priority, Severity};

#[derive(Debug)]
struct Logger {
    started: Instant,
    level: LevelFilter,
    /// Set once the daemon has detached from its terminal.
    syslog: AtomicBool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if self.syslog.load(Ordering::Relaxed) {
            let severity = match record.level() {
                Level::Error => Severity::LOG_ERR,
                Level::Warn => Severity::LOG_WARNING,
                Level::Info => Severity::LOG_INFO,
                Level::Debug | Level::Trace => Severity::LOG_DEBUG,
            };
            let message = record.args().to_string().replace('\0', "\\0");
            let _ = nix::syslog::syslog(
                Priority::new(severity, Facility::LOG_DAEMON),
                message.as_str(),
            );
            return;
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        // One write per line: lines stay whole when several writers share the file.
        let line = format!(
            "[{:10.6}] {level} {}\n",
            self.started.elapsed().as_secs_f64(),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Log to stderr, from now on.
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| Logger {
        started: Instant::now(),
        level,
        syslog: AtomicBool::new(false),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.level);
    }
}

/// Log to syslog from now on (after daemonizing: stderr is /dev/null then).
pub fn switch_to_syslog() {
    let _ = nix::syslog::openlog(
        Some(c"xendevd"),
        LogFlags::LOG_PID | LogFlags::LOG_NDELAY,
        Facility::LOG_DAEMON,
    );
    if let Some(logger) = LOGGER.get() {
        logger.syslog.store(true, Ordering::Relaxed);
    }
}
