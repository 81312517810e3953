//! hello: the smallest useful app. It prints a greeting, the Xen version, its
//! arguments, its memory and how long the guest took from its first instruction to
//! `main`, then powers off.
//!
//! Arguments: `panic` panics; `fault` writes through a null pointer; `sleep=N` sleeps
//! N ms on the timer and prints the guest time that passed; `echo`, after all that,
//! reads lines from the console and answers each with `hello: you said LINE` until the
//! line `bye`, then powers off.

#![no_std]
#![no_main]

extern crate alloc;

use core::time::Duration;

use kernel::time::Instant;
use kernel::{mem, println};

kernel::main!(main);

fn main(args: kernel::Args) -> Result<(), &'static str> {
    let boot_time = kernel::time::since_boot();
    // `xl shutdown` and `xl reboot` end hello at once, even in the middle of a sleep.
    sysctl::spawn_default();
    println!("Hello from a Rust unikernel on Xen!");
    println!("xen: {}", kernel::xen::XenVersion::get());
    println!("args: {}", Joined(&args));
    println!(
        "memory: {} MiB ({} pages)",
        mem::total_bytes() >> 20,
        mem::total_pages()
    );
    println!(
        "boot: {} us from first instruction to main",
        boot_time.as_micros()
    );

    if args.has("panic") {
        panic!("hello was asked to panic");
    }
    if args.has("fault") {
        let null = core::ptr::null_mut::<u64>();
        #[expect(
            clippy::disallowed_methods,
            reason = "a write to address 0, not to shared memory: it must fault"
        )]
        // SAFETY: deliberately invalid: this write must fault, to show the fault report.
        unsafe {
            null.write_volatile(0xdead);
        }
    }
    if let Some(ms) = args.value("sleep") {
        let ms: u64 = ms
            .parse()
            .map_err(|_| "sleep=N needs a number of milliseconds")?;
        let start = Instant::now();
        kernel::executor::sleep(Duration::from_millis(ms));
        let slept = start.elapsed();
        println!(
            "slept: {}.{:03} ms of guest time",
            slept.as_millis(),
            slept.subsec_micros() % 1000
        );
    }
    println!("free frames: {}", mem::free_frames());
    if args.has("echo") {
        echo()?;
    }
    Ok(())
}

/// The longest line `echo` takes at once; longer ones come back in parts.
const ECHO_LINE: usize = 1024;

/// Answer each console line until `bye`.
fn echo() -> Result<(), &'static str> {
    println!("hello: echoing console lines; 'bye' powers off");
    let mut line = alloc::vec::Vec::with_capacity(ECHO_LINE);
    loop {
        if let Err(err) =
            kernel::executor::block_on(kernel::console::read_line(&mut line, ECHO_LINE))
        {
            println!("hello: {err}");
            return Err("cannot read the console");
        }
        let text = alloc::string::String::from_utf8_lossy(&line);
        println!("hello: you said {text}");
        if text == "bye" {
            return Ok(());
        }
    }
}

/// Arguments separated by spaces, or `(none)`.
struct Joined<'a>(&'a [alloc::string::String]);

impl core::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(arg)?;
        }
        Ok(())
    }
}
