//! `fuzz`: feed what a guest can write to the code that parses it, for a given time.
//!
//! Each target is a property over generated input (proptest): bytes of a shared page
//! shaped like the real thing, then mutated — so most inputs get past the first
//! checks — and must never make the parser panic, overflow (overflow checks are on:
//! the workspace's `fuzz` profile, whose panics unwind so that proptest can catch and
//! shrink them), or break the invariants the target states. A target runs batches of
//! fresh random cases until its time is up; a failure is shrunk to a minimal input and
//! printed, and the exit status is 1. The targets run side by side, each on a thread of
//! its own.
//!
//! `cargo xtask fuzz [--seconds S] [TARGET...]` builds and runs this (first the hidden
//! target with a planted panic, which must come back shrunk: [`planted`]); `cargo xtask
//! test` runs every target for a minute.

mod blkback;
mod blkback_rewrite;
mod netback;
mod netback_rx;
mod noxs_pages;
mod planted;
mod sim;

use std::cell::{Cell, RefCell};
use std::panic::{self, PanicHookInfo};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// A fuzz target: its name, what it covers, and how to run it for a while.
struct Target {
    name: &'static str,
    about: &'static str,
    run: fn(Duration) -> Result<u64, String>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "noxs-pages",
        about: "the NoXS block and control pages (header, vif/vbd/sysctl areas) as a back end and a guest decode them",
        run: noxs_pages::run,
    },
    Target {
        name: "blkback-ring",
        about: "xendevd's vbd engine serving a ring page of arbitrary requests against a simulated guest and disk",
        run: blkback::run,
    },
    Target {
        name: "blkback-rewrite",
        about: "the guest rewrites a request slot or an indirect page while xendevd's vbd engine serves it: the outcome is one version's, never a mix (double fetch)",
        run: blkback_rewrite::run,
    },
    Target {
        name: "netback-tx",
        about: "xendevd's vif engine taking packets off a transmit ring page of arbitrary slots, copying from a simulated guest",
        run: netback::run,
    },
    Target {
        name: "netback-rx",
        about: "xendevd's vif engine delivering frames into receive buffers posted on a ring page of arbitrary slots",
        run: netback_rx::run,
    },
];

/// The target with a planted bug: run only when named, by xtask's check that a panic
/// is still shrunk to a minimal input ([`planted`]).
const PLANTED: Target = Target {
    name: "planted-panic",
    about: "a planted out-of-bounds index, for the check that panics are shrunk",
    run: planted::run,
};

#[derive(Debug, Parser)]
#[command(about = "Fuzz what guests write against the code that parses it")]
struct Cli {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// Targets to run (default: all).
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_panics_in_cases();
    if cli.list {
        for target in TARGETS {
            println!("{:<16} {}", target.name, target.about);
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen = Vec::new();
    for name in &cli.targets {
        match TARGETS.iter().chain([&PLANTED]).find(|t| t.name == name) {
            Some(target) => chosen.push(target),
            None => {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                eprintln!(
                    "fuzz: no target {name:?}; the targets are {}",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.iter().collect();
    }
    let time = Duration::from_secs(cli.seconds);
    let results: Vec<(&Target, Result<u64, String>, Duration)> = std::thread::scope(|scope| {
        let running: Vec<_> = chosen
            .into_iter()
            .map(|target| {
                let thread = scope.spawn(move || {
                    let started = Instant::now();
                    let result = (target.run)(time);
                    (result, started.elapsed())
                });
                (target, thread)
            })
            .collect();
        running
            .into_iter()
            .map(|(target, thread)| {
                let (result, took) = thread
                    .join()
                    .unwrap_or_else(|_| (Err("the runner itself panicked".into()), time));
                (target, result, took)
            })
            .collect()
    });
    let mut failed = false;
    for (target, result, took) in results {
        match result {
            Ok(cases) => println!(
                "fuzz: {}: {cases} cases in {:.0} s, no failure",
                target.name,
                took.as_secs_f64()
            ),
            Err(failure) => {
                println!("fuzz: {}: FAILED: {failure}", target.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

thread_local! {
    /// Whether this thread runs cases (see [`quiet_panics_in_cases`]).
    static RUNNING_CASES: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic of a case happened.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic in a case is a failure proptest catches and shrinks: each shrinking step
/// that panics again would print its message (and a backtrace) through the default
/// hook, hundreds of times. In threads that run cases, only note where it happened,
/// for the report ([`run_for`]); elsewhere, the default hook.
fn quiet_panics_in_cases() {
    let default = panic::take_hook();
    panic::set_hook(Box::new(move |info: &PanicHookInfo<'_>| {
        if RUNNING_CASES.get() {
            let place = info.location().map(ToString::to_string);
            LAST_PANIC.with_borrow_mut(|last| *last = place);
        } else {
            default(info);
        }
    }));
}

/// Cases per batch: each batch is a fresh runner with a fresh random seed.
const BATCH: u32 = 512;

/// Run `property` over `strategy` in batches until `time` is up; the number of cases
/// tried, or the (shrunk) failing input and why it failed.
pub fn run_for<S>(
    time: Duration,
    strategy: &S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> Result<u64, String>
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let deadline = Instant::now() + time;
    let mut cases = 0u64;
    RUNNING_CASES.set(true);
    LAST_PANIC.with_borrow_mut(|last| *last = None);
    while Instant::now() < deadline {
        let config = Config {
            cases: BATCH,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        match runner.run(strategy, &property) {
            Ok(()) => cases += u64::from(BATCH),
            Err(TestError::Fail(why, input)) => {
                let place = LAST_PANIC
                    .take()
                    .map(|place| format!(" (a panic, last at {place})"))
                    .unwrap_or_default();
                return Err(format!("{why}{place}; minimal input: {input:?}"));
            }
            Err(TestError::Abort(why)) => return Err(format!("aborted: {why}")),
        }
    }
    Ok(cases)
}
