//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! 1. `cargo fmt --check`;
//! 2. clippy with warnings denied, for the host crates and for the guest target;
//! 3. host unit tests;
//! 4. the Xen notes of every built app;
//! 5. lab integration tests: real guests on real Xen, as dom0 (quick) and as domUs
//!    under xl in one lab boot, each checked on its exit reason and its console.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use crate::build::{self, GUEST_RUSTFLAGS, GUEST_TARGET, GuestImage};
use crate::run::{self, GuestExit, GuestOutcome, GuestRun};
use crate::{util, xen_notes};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the lab integration tests.
    #[arg(long, conflicts_with = "lab_only")]
    pub no_lab: bool,
    /// Run only the lab integration tests.
    #[arg(long)]
    pub lab_only: bool,
}

impl TestArgs {
    pub fn run(&self) -> Result<()> {
        let started = Instant::now();
        if !self.lab_only {
            static_checks()?;
        }
        let images = build::build_apps(&build::all_apps()?)?;
        for image in &images {
            let notes = xen_notes::check(&image.path)
                .map_err(|err| err.context(format!("Xen notes of {}", image.name)))?;
            eprintln!("notes ok: {}: {}", image.name, notes.join(" "));
        }
        if !self.no_lab {
            lab_tests(&images)?;
        }
        eprintln!(
            "test: all passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

fn static_checks() -> Result<()> {
    util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    // Host: the default members (every crate but the guest apps), tests included.
    util::run(util::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // Guest target: the framework crates and every app.
    let mut guest = util::cargo();
    guest.args([
        "clippy",
        "--target",
        GUEST_TARGET,
        "-p",
        "arch",
        "-p",
        "kernel",
        "-p",
        "xenproto",
    ]);
    for app in build::all_apps()? {
        guest.args(["-p", &app]);
    }
    guest.args(["--", "-D", "warnings"]);
    guest.env(
        "CARGO_TARGET_X86_64_UNKNOWN_NONE_RUSTFLAGS",
        GUEST_RUSTFLAGS,
    );
    util::run(&mut guest)?;
    util::run(util::cargo().arg("test"))
}

/// One guest run and what it must show.
struct Case {
    name: &'static str,
    app: &'static str,
    args: &'static [&'static str],
    mem_mib: u32,
    dom0: bool,
    timeout_secs: u64,
    exit: GuestExit,
    check: fn(&str) -> Result<()>,
}

const CASES: &[Case] = &[
    Case {
        name: "selftest as dom0",
        app: "selftest",
        args: &[],
        mem_mib: 32,
        dom0: true,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: selftest_succeeded,
    },
    Case {
        name: "hello as dom0",
        app: "hello",
        args: &["alpha", "beta"],
        mem_mib: 32,
        dom0: true,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: hello_greets,
    },
    Case {
        name: "hello under xl",
        app: "hello",
        args: &["alpha", "beta"],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: hello_greets,
    },
    Case {
        name: "hello panic",
        app: "hello",
        args: &["panic"],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Crash,
        check: |console| {
            expect_line(console, "panic at apps/hello/src/main.rs:")?;
            expect_line(console, "hello was asked to panic")
        },
    },
    Case {
        name: "hello fault",
        app: "hello",
        args: &["fault"],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Crash,
        check: |console| {
            expect_line(
                console,
                "fatal exception 14 (#PF page fault), error code 0x2 (write, not present)",
            )?;
            expect_line(console, "fault address (cr2) 0x0000000000000000")?;
            expect_line(console, "  rip 0xffffffff8")?;
            expect_line(console, "r15 0x")
        },
    },
    Case {
        name: "hello sleep=500",
        app: "hello",
        args: &["sleep=500"],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: |console| {
            let slept = field(console, "slept: ")?;
            let ms: f64 = slept.trim_end_matches(" ms of guest time").parse()?;
            if !(500.0..600.0).contains(&ms) {
                bail!("slept {ms} ms, not 500 to 600");
            }
            Ok(())
        },
    },
    Case {
        name: "hello in 4 MiB",
        app: "hello",
        args: &[],
        mem_mib: 4,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: |console| {
            expect_line(console, "memory: 4 MiB (1024 pages)")?;
            let free: u64 = field(console, "free frames: ")?.parse()?;
            if free == 0 {
                bail!("no free frames left");
            }
            Ok(())
        },
    },
    Case {
        name: "a guest that outlives its timeout is destroyed",
        app: "hello",
        args: &["sleep=600000"],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 5,
        exit: GuestExit::Timeout,
        check: |console| expect_line(console, "args: sleep=600000"),
    },
    Case {
        name: "selftest under xl",
        app: "selftest",
        args: &[],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: selftest_succeeded,
    },
];

fn hello_greets(console: &str) -> Result<()> {
    expect_line(console, "Hello from a Rust unikernel on Xen!")?;
    expect_line(console, "xen: 4.17")?;
    expect_line(console, "args: alpha beta")?;
    let boot = field(console, "boot: ")?;
    let micros: u64 = boot
        .trim_end_matches(" us from first instruction to main")
        .parse()?;
    if micros == 0 {
        bail!("boot time 0 us");
    }
    Ok(())
}

fn selftest_succeeded(console: &str) -> Result<()> {
    if console.lines().any(|line| line.starts_with("FAIL")) {
        bail!("a check failed");
    }
    expect_line(console, "Test result: SUCCESS")
}

fn expect_line(console: &str, text: &str) -> Result<()> {
    if console.lines().any(|line| line.contains(text)) {
        Ok(())
    } else {
        bail!("no line with {text:?}")
    }
}

/// The rest of the first line that starts with `prefix`.
fn field<'a>(console: &'a str, prefix: &str) -> Result<&'a str> {
    match console.lines().find_map(|line| line.strip_prefix(prefix)) {
        Some(rest) => Ok(rest.trim()),
        None => bail!("no line starting with {prefix:?}"),
    }
}

fn lab_tests(images: &[GuestImage]) -> Result<()> {
    let runs: Vec<GuestRun> = CASES
        .iter()
        .map(|case| {
            let image = images
                .iter()
                .find(|image| image.name == case.app)
                .cloned()
                .unwrap_or_else(|| panic!("case {} names unknown app {}", case.name, case.app));
            GuestRun {
                image,
                mem_mib: case.mem_mib,
                args: case.args.iter().map(ToString::to_string).collect(),
                timeout: Duration::from_secs(case.timeout_secs),
                dom0: case.dom0,
                echo: false,
                verbose: false,
            }
        })
        .collect();
    eprintln!("lab: {} guest runs", runs.len());
    let outcomes = run::run_guests(&runs);
    let mut failures = 0;
    for (case, outcome) in CASES.iter().zip(outcomes) {
        let verdict = outcome.and_then(|outcome| match judge(case, &outcome) {
            Ok(()) => Ok(()),
            Err(err) => Err(err.context(format!("console:\n{}", outcome.console))),
        });
        match verdict {
            Ok(()) => eprintln!("PASS {}", case.name),
            Err(err) => {
                failures += 1;
                // The reason first, then what the guest printed.
                let mut chain = err.chain().collect::<Vec<_>>();
                chain.reverse();
                eprintln!("FAIL {}:", case.name);
                for part in chain {
                    eprintln!("  {part}");
                }
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} lab tests failed", CASES.len());
    }
    Ok(())
}

fn judge(case: &Case, outcome: &GuestOutcome) -> Result<()> {
    if outcome.exit != case.exit {
        bail!("ended with {:?}, expected {:?}", outcome.exit, case.exit);
    }
    (case.check)(&outcome.console)
}
