//! The console: the PV console ring of a domU, or the `console_io` hypercall as dom0.
//! Behind `print!`/`println!` and the `log` facade.
//!
//! Writes block while the ring is full, waiting for the back end's notification with
//! `SCHEDOP_poll` (which works with events masked, so the console also works in panic
//! and fault paths). Line feeds become CR LF on the ring, as a terminal expects.
//!
//! Input: what the back end (xenconsoled for a Xenstore guest, xendevd for a NoXS one)
//! puts in the ring's `in` half, read by an app with [`read`] or [`read_line`]. A
//! reader waits in the executor, woken by the console's event channel; the port gets
//! its handler at the first read, so a guest that never reads pays nothing at boot.
//! After taking bytes the guest notifies the back end, which refills the ring from
//! what it holds.

use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Poll, Waker};

use arch::hypercall;
use spin::Mutex;
use xenproto::console::{ConsoleInterface, RingCorrupt};

use crate::events::{EventChannel, Port};
use crate::lines::LineSplitter;
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

/// After a restore into a new domain: the console ring is the same page, its port
/// is new (and reading needs the port's handler again).
pub(crate) fn resume(port: Port) -> Result<(), arch::errno::Errno> {
    if let Some(Sink::Ring { port: old, .. }) = CONSOLE.lock().as_mut() {
        *old = port;
    }
    if INPUT_ARMED.swap(false, Ordering::AcqRel) {
        arm(port).map_err(|err| match err {
            ReadError::Port(errno) => errno,
            _ => arch::errno::Errno::EINVAL,
        })?;
        // Input that came meanwhile: a waiting reader looks again.
        on_console_event(port);
    }
    Ok(())
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
            Ok(0) => wait_for_back_end(page, port),
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
fn wait_for_back_end(page: &ConsoleInterface, port: u32) {
    if arch::mm::shared_info().is_none() {
        // Too early for time and event bookkeeping: let dom0 run instead.
        // SAFETY: SCHEDOP_yield takes no argument.
        let _ = unsafe { hypercall::sched_op::<()>(arch::abi::SCHEDOP_yield, core::ptr::null()) };
        return;
    }
    let deadline = Instant::now()
        .saturating_add(core::time::Duration::from_millis(10))
        .system_time();
    let _ = hypercall::poll(&[port], deadline);
    crate::events::clear_pending(port);
    // The event may have announced input too: a waiting reader must still see it.
    if INPUT_ARMED.load(Ordering::Acquire) && page.input().pending() != Ok(0) {
        crate::events::raise(port);
    }
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
        wait_for_back_end(page, port);
    }
}

/// Console input could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// This console has no input ring: dom0's console is Xen's own.
    NoInput,
    /// The console's event channel could not be taken over.
    Port(hypercall::Errno),
    /// The back end left the ring's indices in a state no correct back end produces.
    Corrupt(RingCorrupt),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInput => f.write_str("this console has no input (Xen's console of dom0)"),
            Self::Port(errno) => write!(f, "cannot watch the console's event channel: {errno}"),
            Self::Corrupt(err) => write!(f, "console input {err}"),
        }
    }
}

/// The task waiting for input, if one is.
static INPUT_WAKER: Mutex<Option<Waker>> = Mutex::new(None);
/// The console port has its handler: input wakes readers from now on.
static INPUT_ARMED: AtomicBool = AtomicBool::new(false);
/// Where [`read_line`] stands between lines.
static LINES: Mutex<LineSplitter> = Mutex::new(LineSplitter::new());

/// The console ring and its port, if the console has them.
fn input_ring() -> Result<(&'static ConsoleInterface, Port), ReadError> {
    match *CONSOLE.lock() {
        Some(Sink::Ring { page, port }) => Ok((page, port)),
        Some(Sink::Hypervisor) | None => Err(ReadError::NoInput),
    }
}

/// Whether input waits in the ring (or the ring is broken: a reader must hear of it).
fn input_waiting() -> bool {
    match *CONSOLE.lock() {
        Some(Sink::Ring { page, .. }) => page.input().pending() != Ok(0),
        _ => false,
    }
}

/// The console port's handler: wake the reader if there is something to read.
fn on_console_event(_port: Port) {
    if input_waiting()
        && let Some(waker) = INPUT_WAKER.lock().take()
    {
        waker.wake();
    }
}

/// Give the console port its handler (once): until a first read, its events are
/// dropped, as they were before input existed.
fn arm(port: Port) -> Result<(), ReadError> {
    if INPUT_ARMED.load(Ordering::Acquire) {
        return Ok(());
    }
    let channel = EventChannel::adopt(port).map_err(ReadError::Port)?;
    channel.set_handler(on_console_event);
    // The port is the console's for the domain's life: never closed.
    let _ = channel.into_port();
    INPUT_ARMED.store(true, Ordering::Release);
    Ok(())
}

/// Wait until the input ring has bytes.
async fn input_ready(page: &ConsoleInterface) -> Result<(), ReadError> {
    core::future::poll_fn(|cx| {
        // Registered before the look at the ring: input that comes after it wakes us.
        *INPUT_WAKER.lock() = Some(cx.waker().clone());
        match page.input().pending() {
            Ok(0) => Poll::Pending,
            Ok(_) => Poll::Ready(Ok(())),
            Err(err) => Poll::Ready(Err(ReadError::Corrupt(err))),
        }
    })
    .await?;
    INPUT_WAKER.lock().take();
    Ok(())
}

/// Read console input: wait until there is some, then take up to `buf.len()` bytes
/// as they came (a terminal's Enter is `\r`, a pipe's line end `\n`). One reader at a
/// time: the console has one input.
pub async fn read(buf: &mut [u8]) -> Result<usize, ReadError> {
    let (page, port) = input_ring()?;
    if buf.is_empty() {
        return Ok(0);
    }
    arm(port)?;
    input_ready(page).await?;
    let n = page.input().consume(buf).map_err(ReadError::Corrupt)?;
    // Room in the ring: the back end may put more in.
    let _ = hypercall::evtchn_send(port);
    Ok(n)
}

/// Read one line of console input into `line` (emptied first), without its end: `\n`,
/// `\r` (a terminal's Enter) or `\r\n`. A line longer than `limit` bytes comes in
/// parts of `limit` bytes. Takes from the ring only what the line uses, so [`read`]
/// and `read_line` may alternate. One reader at a time.
pub async fn read_line(line: &mut Vec<u8>, limit: usize) -> Result<(), ReadError> {
    let (page, port) = input_ring()?;
    line.clear();
    arm(port)?;
    loop {
        input_ready(page).await?;
        let ring = page.input();
        let mut taken = false;
        let mut byte = [0u8];
        let done = loop {
            match ring.consume(&mut byte) {
                Ok(0) => break false,
                Ok(_) => taken = true,
                Err(err) => return Err(ReadError::Corrupt(err)),
            }
            if LINES.lock().take(byte[0], line, limit) {
                break true;
            }
        };
        if taken {
            let _ = hypercall::evtchn_send(port);
        }
        if done {
            return Ok(());
        }
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
