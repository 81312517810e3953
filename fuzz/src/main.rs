//! `fuzz`: feed what a guest can write to the code that parses it, for a given time.
//!
//! Each target is a property over generated input (proptest): bytes of a shared page
//! shaped like the real thing, then mutated — so most inputs get past the first
//! checks — and must never make the parser panic, overflow (build with overflow
//! checks: the dev profile), or break the invariants the target states. A target runs
//! batches of fresh random cases until its time is up; a failure is shrunk to a
//! minimal input and printed, and the exit status is 1. The targets run side by side,
//! each on a thread of its own.
//!
//! `cargo xtask fuzz [--seconds S] [TARGET...]` builds and runs this; `cargo xtask
//! test` runs every target for a minute.

mod blkback;
mod netback;
mod netback_rx;
mod noxs_pages;
mod sim;

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
    if cli.list {
        for target in TARGETS {
            println!("{:<14} {}", target.name, target.about);
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen = Vec::new();
    for name in &cli.targets {
        match TARGETS.iter().find(|t| t.name == name) {
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
                return Err(format!("{why}; minimal input: {input:?}"));
            }
            Err(TestError::Abort(why)) => return Err(format!("aborted: {why}")),
        }
    }
    Ok(cases)
}
