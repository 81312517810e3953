//! The unikernel core every app links.
//!
//! # Boot flow
//! Xen enters `_start` ([`arch::boot`]); the kernel then installs the trap table and
//! the event upcall, validates `start_info` ([`start_info`]), starts the console,
//! maps `shared_info` and all memory ([`mem`]), binds the timer ([`events`]), sets up
//! the grant table ([`grant`]) and calls the app's `main` with its arguments. When
//! `main` returns, the domain powers off (or crashes, if `main` returned an error).
//!
//! # Writing an app
//! An app is a `no_std`, `no_main` binary crate that depends on `kernel`:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! kernel::main!(main);
//!
//! fn main(args: kernel::Args) {
//!     kernel::println!("hello, {:?}", &args[..]);
//!     kernel::executor::sleep(core::time::Duration::from_millis(10));
//! }
//! ```
//!
//! - arguments: [`Args`] (the guest command line, `extra=` in xl);
//! - output: [`println!`], and the `log` macros; input: [`console::read_line`],
//!   [`console::read`] (what the console's back end sends: a terminal or a pipe on
//!   `chaos console`);
//! - time: [`time::Instant`], [`time::utc_now`]; waiting: [`executor::sleep`],
//!   [`executor::after`], [`executor::timeout`];
//! - concurrency: [`executor::block_on`], [`executor::spawn`] (see [`executor`]);
//! - memory: `alloc` works (the heap is half of the guest's free memory);
//!   [`mem::alloc_frame`] for whole pages;
//! - Xen: [`events::EventChannel`], [`grant`]; for drivers, the devices the toolstack
//!   gave ([`devices`]), negotiated through Xenstore ([`xenbus`]) or NoXS
//!   ([`noxs::ControlPage`]);
//! - the end: return from `main`, or [`shutdown::exit`].
//!
//! Pure parts (start_info parsing, the command line, the frame allocator, time
//! conversion, timers, grant bookkeeping) build for the host and are unit-tested there.

#![cfg_attr(target_os = "none", no_std)]

extern crate alloc;

#[cfg(target_os = "none")]
pub mod boot;
pub mod cmdline;
#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod devices;
#[cfg(target_os = "none")]
pub mod events;
pub mod executor;
pub mod grant;
pub mod lines;
pub mod mem;
#[cfg(target_os = "none")]
pub mod noxs;
#[cfg(target_os = "none")]
pub mod shutdown;
pub mod start_info;
#[cfg(target_os = "none")]
pub mod suspend;
#[cfg(target_os = "none")]
pub mod sync;
pub mod time;
#[cfg(target_os = "none")]
pub mod xen;
#[cfg(target_os = "none")]
pub mod xenbus;
#[cfg(target_os = "none")]
pub mod xenstore;

pub use cmdline::Args;

/// Declare the app's entry point: `kernel::main!(main)` with
/// `fn main(args: kernel::Args) -> T` where `T` is `()`, `Result<T, E: Display>` or a
/// [`shutdown::ShutdownReason`].
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn __kernel_app_main(args: $crate::Args) -> $crate::shutdown::ShutdownReason {
            $crate::shutdown::Termination::report($main(args))
        }
    };
}
