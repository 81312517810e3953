//! SIGINT, SIGTERM and SIGHUP as a flag, so a create or a wait that is interrupted
//! cleans up (destroys the half-made domain, or the guest it was watching) instead of
//! dying half-way. The handlers are installed without `SA_RESTART`, so a blocking
//! `poll` returns `EINTR` and the waiter looks at the flag.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};

static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    CAUGHT.store(signal, Ordering::SeqCst);
}

/// Catch SIGINT, SIGTERM and SIGHUP from now on.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to an atomic,
        // which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            action.sa_flags = 0;
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
}

/// The signal caught, if any: its name.
pub fn caught() -> Option<&'static str> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("SIGINT"),
        libc::SIGTERM => Some("SIGTERM"),
        libc::SIGHUP => Some("SIGHUP"),
        _ => Some("a signal"),
    }
}

/// An error if a signal was caught: for long steps to check between their parts.
pub fn check() -> Result<()> {
    match caught() {
        Some(signal) => Err(Error::Interrupted(signal)),
        None => Ok(()),
    }
}

/// `done`, and an interruption as an error while it says no: the check of a wait that
/// re-checks on events (`Xs::wait_until`).
pub fn or_interrupted<T>(
    mut done: impl FnMut() -> Result<Option<T>>,
) -> impl FnMut() -> Result<Option<T>> {
    move || {
        let value = done()?;
        if value.is_none() {
            check()?;
        }
        Ok(value)
    }
}

/// The exit status of a shell command killed by `signal` (128 + its number).
pub fn exit_status(signal: &str) -> u8 {
    match signal {
        "SIGINT" => 130,
        "SIGHUP" => 129,
        _ => 143,
    }
}
