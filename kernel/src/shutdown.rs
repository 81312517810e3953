//! Ending the domain: power off, reboot, crash; the panic handler; fatal exceptions.

use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use arch::abi;

/// Why the domain ends, as the toolstack will report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Crash,
}

impl ShutdownReason {
    fn code(self) -> u32 {
        match self {
            Self::Poweroff => abi::SHUTDOWN_POWEROFF,
            Self::Reboot => abi::SHUTDOWN_REBOOT,
            Self::Crash => abi::SHUTDOWN_CRASH,
        }
    }
}

/// How long the console may take to drain before the domain ends.
const CONSOLE_DRAIN: Duration = Duration::from_secs(1);

/// End the domain with `reason`, after the console back end has read our output.
pub fn exit(reason: ShutdownReason) -> ! {
    crate::console::flush(CONSOLE_DRAIN);
    arch::hypercall::shutdown(reason.code())
}

/// End the domain normally.
pub fn poweroff() -> ! {
    exit(ShutdownReason::Poweroff)
}

/// What an app's `main` may return; the domain ends accordingly.
pub trait Termination {
    fn report(self) -> ShutdownReason;
}

impl Termination for () {
    fn report(self) -> ShutdownReason {
        ShutdownReason::Poweroff
    }
}

impl Termination for ShutdownReason {
    fn report(self) -> ShutdownReason {
        self
    }
}

impl<T: Termination, E: core::fmt::Display> Termination for Result<T, E> {
    fn report(self) -> ShutdownReason {
        match self {
            Ok(value) => value.report(),
            Err(err) => {
                crate::println!("error: {err}");
                ShutdownReason::Crash
            }
        }
    }
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::AcqRel) {
        // A panic while reporting a panic: end without another word.
        arch::hypercall::shutdown(abi::SHUTDOWN_CRASH);
    }
    let mut text = crate::console::EmergencyConsole;
    use core::fmt::Write;
    let _ = match info.location() {
        Some(at) => writeln!(
            text,
            "panic at {}:{}:{}: {}",
            at.file(),
            at.line(),
            at.column(),
            info.message()
        ),
        None => writeln!(text, "panic: {}", info.message()),
    };
    exit(ShutdownReason::Crash)
}

/// A fatal exception (called by the arch trap entry).
pub(crate) fn fatal_exception(fault: &arch::traps::Fault<'_>) -> ! {
    PANICKING.store(true, Ordering::Release);
    let mut text = crate::console::EmergencyConsole;
    use core::fmt::Write;
    let _ = write!(text, "fatal {fault}");
    exit(ShutdownReason::Crash)
}
