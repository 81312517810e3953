//! The console: the PV console ring of a domU, or the `console_io` hypercall as dom0.
//! Behind `print!`/`println!` and the `log` facade.
//!
//! Writes block while the ring is full, waiting for the back end's notification with
//! `SCHEDOP_poll` (which works with events masked, so the console also works in panic
//! and fault paths). Line feeds become CR LF on the ring, as a terminal expects.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use arch::hypercall;
use spin::Mutex;
use xenproto::console::ConsoleInterface;

use crate::start_info::{BootInfo, ConsoleSource};
use crate::time::Instant;

#[derive(Clone, Copy)]
enum Sink {
    Ring {
        page: &'static ConsoleInterface,
        port: u32,
    },
    Hypervisor,
}

static CONSOLE: Mutex<Option<Sink>> = Mutex::new(None);
static LOGGER: Logger = Logger;
static BROKEN: AtomicBool = AtomicBool::new(false);

/// Start the console and the logger.
pub(crate) fn init(boot: &BootInfo) {
    let sink = match boot.console {
        ConsoleSource::Hypervisor => Sink::Hypervisor,
        ConsoleSource::Ring { mfn, evtchn } => {
            let va = arch::mm::va_of_pfn(arch::mm::mfn_to_pfn(mfn));
            // SAFETY: the console page lies in the bootstrap region, mapped read-write
            // for the guest's lifetime, and is shared with the console back end only.
            let page = unsafe { ConsoleInterface::from_page(va.as_mut_ptr()) };
            Sink::Ring { page, port: evtchn }
        }
    };
    *CONSOLE.lock() = Some(sink);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Write `s` to the console.
pub fn write_str(s: &str) {
    if let Some(sink) = *CONSOLE.lock() {
        // Write outside the lock: a write may wait for the back end.
        sink_write(sink, s);
    }
}

/// Write from a path that must not wait on a lock (panic, fault): the lock is
/// bypassed if some interrupted code held it.
pub(crate) fn write_str_emergency(s: &str) {
    let sink = match CONSOLE.try_lock() {
        Some(guard) => *guard,
        None => {
            // SAFETY: a single vCPU and no preemption: whoever holds the lock is below
            // us on this stack and will never run again.
            unsafe { CONSOLE.force_unlock() };
            *CONSOLE.lock()
        }
    };
    if let Some(sink) = sink {
        sink_write(sink, s);
    }
}

fn sink_write(sink: Sink, s: &str) {
    match sink {
        Sink::Hypervisor => {
            let _ = hypercall::console_write(s.as_bytes());
        }
        Sink::Ring { page, port } => {
            for (i, line) in s.split('\n').enumerate() {
                if i > 0 {
                    ring_write(page, port, b"\r\n");
                }
                ring_write(page, port, line.as_bytes());
            }
        }
    }
}

fn ring_write(page: &ConsoleInterface, port: u32, mut bytes: &[u8]) {
    let ring = page.output();
    while !bytes.is_empty() && !BROKEN.load(Ordering::Relaxed) {
        match ring.produce(bytes) {
            Ok(0) => wait_for_back_end(port),
            Ok(n) => {
                bytes = &bytes[n..];
                let _ = hypercall::evtchn_send(port);
            }
            Err(_) => {
                // The back end scribbled on the indices: stop writing rather than loop.
                BROKEN.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Wait (at most 10 ms) for the back end to signal that it consumed something.
fn wait_for_back_end(port: u32) {
    if arch::mm::shared_info().is_none() {
        // Too early for time and event bookkeeping: let dom0 run instead.
        // SAFETY: SCHEDOP_yield takes no argument.
        let _ = unsafe { hypercall::sched_op::<()>(arch::abi::SCHEDOP_yield, core::ptr::null()) };
        return;
    }
    let deadline = Instant::now().as_nanos() + 10_000_000;
    let _ = hypercall::poll(&[port], deadline);
    crate::events::clear_pending(port);
}

/// Wait until the back end has read everything written (at most `timeout`), so no
/// output is lost when the domain ends.
pub fn flush(timeout: core::time::Duration) {
    let sink = match CONSOLE.try_lock() {
        Some(guard) => *guard,
        None => return,
    };
    let Some(Sink::Ring { page, port }) = sink else {
        return;
    };
    if arch::mm::shared_info().is_none() {
        return;
    }
    let end = Instant::now().saturating_add(timeout);
    while matches!(page.output().pending(), Ok(n) if n > 0) && Instant::now() < end {
        wait_for_back_end(port);
    }
}

/// `core::fmt` adapter for the console.
#[derive(Debug)]
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// `core::fmt` adapter for panic and fault reports (see [`write_str_emergency`]).
pub(crate) struct EmergencyConsole;

impl Write for EmergencyConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str_emergency(s);
        Ok(())
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
}

/// Print to the guest console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Print a line to the guest console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // No heap here: logging works before the heap exists.
        if arch::mm::shared_info().is_some() {
            let t = crate::time::since_boot();
            let _ = write!(Console, "[{:>4}.{:06}] ", t.as_secs(), t.subsec_micros());
        }
        let _ = writeln!(Console, "{:<5} {}", record.level(), record.args());
    }

    fn flush(&self) {}
}
