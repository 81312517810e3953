//! `cargo xtask test`: everything CI checks, in the order that fails fastest.
//!
//! 1. `cargo fmt --check`;
//! 2. clippy with warnings denied, for the host crates and for the guest target;
//! 3. host unit tests, then each fuzz target for a minute (`cargo xtask fuzz`);
//! 4. the Xen notes of every built app;
//! 5. lab integration tests: real guests on real Xen, as dom0 (quick) and as domUs
//!    under xl in one lab boot, each checked on its exit reason and its console; a
//!    case with a client also has host code talk to the guest once it is ready (real
//!    sockets on 127.0.0.1, through the lab relay's forwards), after which the guest is destroyed
//!    or asked to shut down or reboot; a case with a disk gets a fresh image file, which
//!    the host checks after the guest has ended.

use std::fs;
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::build::{self, GUEST_RUSTFLAGS, GUEST_TARGET, GuestImage};
use crate::disk::{Disk, SECTOR};
use crate::lab::process;
use crate::prereq::{self, Need};
use crate::run::{
    self, Client, Forward, GuestExit, GuestNet, GuestOutcome, GuestRun, Ports, Session,
};
use crate::toolstack::{Stop, Toolstack};
use crate::{lab, util, xen_notes};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the lab integration tests.
    #[arg(long, conflicts_with = "lab_only")]
    pub no_lab: bool,
    /// Run only the lab integration tests.
    #[arg(long)]
    pub lab_only: bool,
    /// Run only the lab tests whose name contains TEXT (e.g. `chaos`).
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Seconds each fuzz target runs (0: none).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub fuzz_seconds: u64,
}

impl TestArgs {
    pub fn needs(&self) -> Vec<Need> {
        let mut needs = prereq::LAB_RUN.to_vec();
        if self.no_lab {
            needs.retain(|need| *need != Need::Lab);
        }
        if !self.lab_only {
            needs.push(Need::Lints);
        }
        needs
    }

    pub fn run(&self) -> Result<()> {
        let started = Instant::now();
        if !self.lab_only {
            static_checks()?;
            if self.fuzz_seconds > 0 {
                crate::fuzz::fuzz(self.fuzz_seconds, false, &[])?;
            }
        }
        let images = build::build_apps(&build::all_apps()?)?;
        for image in &images {
            let notes = xen_notes::check(&image.path)
                .map_err(|err| err.context(format!("Xen notes of {}", image.name)))?;
            eprintln!("notes ok: {}: {}", image.name, notes.join(" "));
        }
        if !self.no_lab {
            let wanted = |name: &str| self.filter.as_deref().is_none_or(|f| name.contains(f));
            lab_tests(&images, &wanted)?;
            for test in JOB_TESTS.iter().filter(|test| wanted(test.name)) {
                test.run(&images)?;
            }
        }
        eprintln!(
            "test: all passed in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// A lab test that is one shell job in dom0, judged by the lines it prints.
struct JobTest {
    /// What `--filter` matches; the PASS or FAIL line names it.
    name: &'static str,
    job: &'static str,
    timeout_secs: u64,
    /// In a lab without Xenstore.
    noxs: bool,
    /// The verdict on the job's lines.
    judge: fn(&[String]) -> Result<Judged>,
}

/// A passed job's summary for its PASS line, and lines to show under it.
type Judged = (String, Vec<String>);

const JOB_TESTS: [JobTest; 3] = [
    // chaos's commands on real Xen (`chaos-lab.sh`): create, list (and xl list),
    // console, shutdown -w, destroy of daytime with its vif; a destroy while `create
    // --console` watches, each of the two ending well; fifteen malformed
    // configurations, each refused with status 2 and one line naming the field,
    // leaving no domain; and 100 create/destroy cycles of a paused guest with a vif and
    // a file-backed disk that must leave no domain, loop device, vif or Xenstore node
    // behind.
    JobTest {
        name: "chaos commands, malformed configs, create/destroy cycles",
        job: concat!(include_str!("lab-checks.sh"), include_str!("chaos-lab.sh")),
        timeout_secs: 900,
        noxs: false,
        judge: |output| Ok((judge_chaos_lab(output)?, Vec::new())),
    },
    // xendevd as dom0 runs it (`xendevd-checks.sh`): malformed, partial and stalled
    // requests among concurrent clients; loop devices attached, refused, shared
    // read-only, detached and released, one under a blkcheck guest; vifs whose back
    // end says `toolstack = chaos` put on their bridge (a daytime guest answers through
    // one), one on a missing bridge failing with `hotplug-error`, one without the
    // marker left alone; SIGTERM, daemonizing, a restart that takes back loop devices
    // and vifs; and the time from `online` uevent to `hotplug-status = connected`, next
    // to xl's script's.
    JobTest {
        name: "xendevd in dom0: malformed requests, loop devices, chaos vifs",
        job: include_str!("xendevd-checks.sh"),
        timeout_secs: 400,
        noxs: false,
        judge: |output| {
            // A check that failed where its count was lost (a subshell) still printed
            // FAIL.
            if let Some(failed) = output.iter().find(|line| line.starts_with("FAIL")) {
                bail!("{failed}");
            }
            let summary = output
                .iter()
                .find(|line| line.starts_with("xendevd checks:"))
                .context("no line \"xendevd checks: …\"")?;
            let measures = output
                .iter()
                .filter(|line| line.starts_with("measure: "))
                .cloned()
                .collect();
            Ok((summary.clone(), measures))
        },
    },
    // In a NoXS lab (`noxs-lab.sh`): chaos's list, console, shutdown -w and destroy of
    // a NoXS daytime, create/destroy cycles that leak nothing; and `apps/misbehave`
    // attacking its vbd, vif and sysctl back ends while the honest daytime serves and
    // a blkcheck runs: xendevd must survive, the honest guests keep working, and
    // destroying the attacker releases everything.
    JobTest {
        name: "chaos NoXS: commands without Xenstore, cycles, a guest attacking its back ends",
        job: concat!(include_str!("lab-checks.sh"), include_str!("noxs-lab.sh")),
        timeout_secs: 600,
        noxs: true,
        judge: |output| Ok((judge_noxs_lab(output)?, Vec::new())),
    },
];

impl JobTest {
    fn run(&self, images: &[GuestImage]) -> Result<()> {
        let (end, output) = lab_job(self.job, images, self.timeout_secs, self.noxs)?;
        let verdict = (self.judge)(&output).and_then(|judged| match end {
            lab::ExecEnd::Exited(0) => Ok(judged),
            other => bail!("the job ended with {other:?}"),
        });
        match verdict {
            Ok((summary, notes)) => {
                eprintln!("PASS {} ({summary})", self.name);
                for note in notes {
                    eprintln!("     {note}");
                }
                Ok(())
            }
            // The output first, so that the reason ends the log (CI may show only
            // its end).
            Err(err) => {
                eprintln!("{}: job output:\n  {}", self.name, output.join("\n  "));
                bail!("FAIL {}: {err:#}", self.name)
            }
        }
    }
}

/// Each malformed configuration of `chaos-lab.sh` and what chaos's one line of stderr
/// must say (after `chaos: bad-NAME.json: `).
const BAD_CONFIGS: [(&str, &str); 15] = [
    (
        "syntax",
        "not valid JSON: EOF while parsing a value (line 2, column 0)",
    ),
    ("unknown-key", "memroy: unknown key"),
    (
        "mac",
        "vifs[0].mac: \"00:16:3e:zz:00:01\" is not a MAC address",
    ),
    ("ip", "vifs[0].ip: \"10.0.2.300\" is not an IPv4 address"),
    ("missing-kernel", "kernel: /apps/nonexistent: no such file"),
    (
        "non-elf-kernel",
        "kernel: /tmp/chaos/notakernel is not an ELF file",
    ),
    ("memory", "memory: 3 MiB is too little"),
    ("too-much-memory", "memory: 900000 MiB asked, but Xen has "),
    (
        "duplicate-name",
        "name: a domain named \"dup\" exists already",
    ),
    (
        "vdev-clash",
        "vbds[1].vdev: d0p0 is the same disk as vbds[0]'s xvda",
    ),
    (
        "vdev-name",
        "vbds[0].vdev: \"xvd1\" is not a virtual disk name",
    ),
    ("vcpus", "vcpus: 0: a domain needs at least one vCPU"),
    (
        "dev-method",
        "xen.dev_method: \"carrier-pigeon\" is not a device method (\"xenstore\" or \"noxs\")",
    ),
    (
        "no-bridge",
        "vifs[0].bridge: dom0 has no bridge named nobr0",
    ),
    (
        "phy-not-a-device",
        "vbds[0].target: /tmp/chaos/disk.img is not a block device",
    ),
];

/// The checks `chaos-lab.sh` must report, each `ok`.
const CHAOS_CHECKS: [&str; 21] = [
    "create",
    "create-prints-domid",
    "list-shows-it",
    "xl-list-shows-it",
    "console-streams",
    "daytime-answers",
    "shutdown-w",
    "shutdown-reports-reason",
    "console-ends-with-the-guest",
    "console-status",
    "console-has-last-words",
    "gone-after-shutdown",
    "create-again",
    "destroy",
    "gone-after-destroy",
    "destroy-unknown-fails",
    "destroy-while-watched",
    "dup-exists",
    "dup-destroyed",
    "cycles-succeed",
    "cycles-counted",
];

/// Judge `chaos-lab.sh`'s lines; a summary on success.
fn judge_chaos_lab(output: &[String]) -> Result<String> {
    let mut problems = Vec::new();
    let mut checks_seen = Vec::new();
    let mut bad_seen = Vec::new();
    let mut counts = Vec::new();
    for line in output {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        match fields.as_slice() {
            ["CHECK", name, verdict, rest @ ..] => {
                checks_seen.push((*name).to_owned());
                if *verdict != "ok" {
                    problems.push(format!("check {name} failed: {}", rest.join(" ")));
                }
            }
            ["BAD", name, status, lines, stderr] => {
                bad_seen.push((*name).to_owned());
                let expected = BAD_CONFIGS
                    .iter()
                    .find(|(bad, _)| bad == name)
                    .map(|(_, why)| format!("chaos: bad-{name}.json: {why}"));
                let Some(expected) = expected else {
                    problems.push(format!("unexpected malformed config {name}"));
                    continue;
                };
                if *status != "2" || *lines != "1" || !stderr.starts_with(&expected) {
                    problems.push(format!(
                        "malformed config {name}: status {status}, {lines} line(s) on stderr \
                         {stderr:?}; expected status 2 and one line starting {expected:?}"
                    ));
                }
            }
            ["COUNT", what, before, after] => {
                counts.push(format!("{what} {before}→{after}"));
                if before != after {
                    problems.push(format!("{what}: {before} before, {after} after"));
                }
            }
            _ => {}
        }
    }
    if counts.len() == 5 {
        checks_seen.push("cycles-counted".into());
    } else {
        problems.push(format!("expected 5 COUNT lines, got {counts:?}"));
    }
    for check in CHAOS_CHECKS {
        if !checks_seen.iter().any(|seen| seen == check) {
            problems.push(format!("check {check} did not run"));
        }
    }
    for (name, _) in BAD_CONFIGS {
        if !bad_seen.iter().any(|seen| seen == name) {
            problems.push(format!("malformed config {name} was not tried"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    let cycles = output
        .iter()
        .find_map(|line| line.strip_prefix("CHECK cycles-succeed ok "))
        .unwrap_or_default();
    Ok(format!(
        "{} checks, {} malformed configs refused; {cycles}; {}",
        CHAOS_CHECKS.len(),
        BAD_CONFIGS.len(),
        counts.join(", ")
    ))
}

/// The checks `noxs-lab.sh` must report, each `ok`.
const NOXS_CHECKS: [&str; 27] = [
    "no-xenstored",
    "daytime-created",
    "console-streams",
    "daytime-answers-before",
    "list-shows-it",
    "misbehave-created",
    "misbehave-done",
    "misbehave-vbd-connected",
    "misbehave-vif-connected",
    "xendevd-alive",
    "daytime-answers-during",
    "blkcheck-passes-during",
    "misbehave-destroyed",
    "daytime-answers-after",
    "shutdown-w",
    "shutdown-reports-reason",
    "console-ends-with-the-guest",
    "console-has-last-words",
    "cycles-succeed",
    "nothing-served-after",
    "no-domains-after",
    "no-taps-after",
    "no-loop-devices-after",
    "xendevd-alive-after",
    "misbehave-attacks-reported",
    "misbehave-vbd-attacks-answered",
    "misbehave-vif-attacks-answered",
];

/// Judge `noxs-lab.sh`'s lines; a summary on success.
fn judge_noxs_lab(output: &[String]) -> Result<String> {
    let attacks = output
        .iter()
        .filter(|line| line.starts_with("misbehave: vbd: ") || line.starts_with("misbehave: vif: "))
        .count();
    // The honest read and the bad requests on the vbd, and the bad packets on the
    // vif, must each be answered with an error: silence is a stuck back end. (A chain
    // of fragments without its end waits for the rest, by the protocol: the next
    // packet's slots end it, and their answers come with the next attack.)
    let unanswered = |device: &str| {
        output
            .iter()
            .filter(|line| line.starts_with(&format!("misbehave: {device}: ")))
            .filter(|line| !line.contains("chain that never ends"))
            .filter(|line| line.ends_with(": no answer") || line.ends_with(": statuses []"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut problems = Vec::new();
    for check in NOXS_CHECKS {
        let verdict = if check == "misbehave-attacks-reported" {
            // Every attack of the app reports a line (13 on the vbd, 9 on the vif).
            (attacks >= 22)
                .then_some(())
                .ok_or(format!("{attacks} attack lines"))
        } else if let Some(device) = check
            .strip_prefix("misbehave-")
            .and_then(|rest| rest.strip_suffix("-attacks-answered"))
        {
            let silent = unanswered(device);
            silent
                .is_empty()
                .then_some(())
                .ok_or(format!("unanswered: {}", silent.join(" | ")))
        } else {
            match output
                .iter()
                .find(|line| line.starts_with(&format!("CHECK {check} ")))
            {
                Some(line) if line.starts_with(&format!("CHECK {check} ok")) => Ok(()),
                Some(line) => Err(line.clone()),
                None => Err("did not run".to_owned()),
            }
        };
        if let Err(why) = verdict {
            problems.push(format!("{check}: {why}"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    let cycles = output
        .iter()
        .find_map(|line| line.strip_prefix("CHECK cycles-succeed ok "))
        .unwrap_or_default();
    Ok(format!("{attacks} attacks reported; {cycles}"))
}

/// Run `job` in a fresh lab (without Xenstore if `noxs`), for `timeout_secs` at most;
/// how it ended and every line it printed.
fn lab_job(
    job: &str,
    images: &[GuestImage],
    timeout_secs: u64,
    noxs: bool,
) -> Result<(lab::ExecEnd, Vec<String>)> {
    let options = lab::ExecOptions {
        timeout: Duration::from_secs(timeout_secs),
        verbose: false,
        forwards: Vec::new(),
        disks: Vec::new(),
        control: None,
        noxs,
    };
    let mut output = Vec::new();
    let end = lab::exec(job, images, &options, &mut |line| {
        if let lab::Line::Stdout(text) | lab::Line::Stderr(text) = line {
            output.push(text.to_owned());
        }
    })?;
    Ok((end, output))
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
        "-p",
        "netfront",
        "-p",
        "net",
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
    client: Option<ClientCase>,
    disk: Option<DiskCase>,
    /// Which toolstack creates the guest.
    toolstack: Toolstack,
    /// A chaos case that also runs with the NoXS method, in a lab of its own without
    /// Xenstore, as "chaos NoXS: …".
    noxs_too: bool,
}

/// A case's disk: a fresh sparse image of `mib` MiB (its first `filled_mib` MiB holding
/// [`blkcheck_sector`]'s pattern, the rest zeros) that becomes the guest's xvda, and a
/// check of the file after the guest has ended. The file is deleted afterwards.
struct DiskCase {
    mib: u64,
    filled_mib: u64,
    read_only: bool,
    check: fn(&TestImage) -> Result<()>,
}

/// The host side of a case: once a console line contains `ready`, `talk` runs with the
/// guest's ports; then xtask has dom0 `stop` the guest (destroyed, its exit is
/// `Destroyed` unless it ended by itself first; asked to shut down or reboot, it ends
/// by itself), and it must be gone within [`stop_limit`].
struct ClientCase {
    ready: &'static str,
    ready_timeout_secs: u64,
    /// Guest ports forwarded to free host ports.
    forwards: &'static [u16],
    net: GuestNet,
    talk: fn(&Ports) -> Result<()>,
    /// The client's error must contain this; `None`: it must succeed.
    fails_with: Option<&'static str>,
    stop: Stop,
}

/// How long a guest may take to end once dom0 destroys it, or asks it to shut down or
/// reboot.
fn stop_limit(stop: Stop) -> Duration {
    match stop {
        Stop::Destroy => Duration::from_secs(10),
        Stop::Shutdown | Stop::Reboot => Duration::from_secs(5),
    }
}

impl Case {
    /// What a case does not say: a 32 MiB domU under xl, given 60 s, that powers off.
    const BASE: Case = Case {
        name: "",
        app: "",
        args: &[],
        mem_mib: 32,
        dom0: false,
        timeout_secs: 60,
        exit: GuestExit::Poweroff,
        check: |_| bail!("the case names no check of the console"),
        client: None,
        disk: None,
        toolstack: Toolstack::Xl,
        noxs_too: false,
    };
}

/// daytime's client, as a case does not say otherwise: static address, a TCP client on
/// port 13, then `destroy`.
const DAYTIME_CLIENT: ClientCase = ClientCase {
    ready: "daytime: listening",
    ready_timeout_secs: 60,
    forwards: &[13],
    net: GuestNet::Static(run::Ipv4Cidr::LAB_GUEST),
    talk: daytime_tcp,
    fails_with: None,
    stop: Stop::Destroy,
};

const CASES: &[Case] = &[
    Case {
        name: "selftest as dom0",
        app: "selftest",
        dom0: true,
        check: selftest_succeeded,
        ..Case::BASE
    },
    Case {
        name: "hello as dom0",
        app: "hello",
        args: &["alpha", "beta"],
        dom0: true,
        check: hello_greets,
        ..Case::BASE
    },
    Case {
        name: "hello under xl",
        app: "hello",
        args: &["alpha", "beta"],
        check: hello_greets,
        ..Case::BASE
    },
    Case {
        name: "hello panic",
        app: "hello",
        args: &["panic"],
        exit: GuestExit::Crash,
        check: |console| {
            expect_line(console, "panic at apps/hello/src/main.rs:")?;
            expect_line(console, "hello was asked to panic")
        },
        ..Case::BASE
    },
    Case {
        name: "hello fault",
        app: "hello",
        args: &["fault"],
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
        ..Case::BASE
    },
    Case {
        name: "hello sleep=500",
        app: "hello",
        args: &["sleep=500"],
        check: |console| {
            let slept = field(console, "slept: ")?;
            let ms: f64 = slept.trim_end_matches(" ms of guest time").parse()?;
            if !(500.0..600.0).contains(&ms) {
                bail!("slept {ms} ms, not 500 to 600");
            }
            Ok(())
        },
        ..Case::BASE
    },
    Case {
        name: "hello in 4 MiB",
        app: "hello",
        mem_mib: 4,
        check: |console| {
            expect_line(console, "memory: 4 MiB (1024 pages)")?;
            let free: u64 = field(console, "free frames: ")?.parse()?;
            if free == 0 {
                bail!("no free frames left");
            }
            Ok(())
        },
        ..Case::BASE
    },
    Case {
        name: "a guest that outlives its timeout is destroyed",
        app: "hello",
        args: &["sleep=600000"],
        timeout_secs: 5,
        exit: GuestExit::Timeout,
        check: |console| expect_line(console, "args: sleep=600000"),
        ..Case::BASE
    },
    Case {
        name: "selftest under xl",
        app: "selftest",
        check: selftest_succeeded,
        ..Case::BASE
    },
    Case {
        name: "a client runs once the guest is ready, then the guest is destroyed",
        app: "hello",
        args: &["sleep=60000"],
        timeout_secs: 120,
        exit: GuestExit::Destroyed,
        check: |console| {
            expect_line(console, "args: sleep=60000")?;
            if console.contains("slept:") {
                bail!("the guest finished its sleep: it was not destroyed");
            }
            Ok(())
        },
        client: Some(ClientCase {
            ready: "args:",
            ready_timeout_secs: 60,
            forwards: &[],
            net: GuestNet::Dhcp,
            // The marker came, so the guest had printed its arguments: nothing to ask.
            talk: |_| Ok(()),
            fails_with: None,
            stop: Stop::Destroy,
        }),
        ..Case::BASE
    },
    Case {
        name: "a guest that ends before its ready line fails its client",
        app: "hello",
        check: hello_greets_anyone,
        client: Some(ClientCase {
            ready: "a line hello never prints",
            ready_timeout_secs: 60,
            forwards: &[],
            net: GuestNet::Dhcp,
            talk: |_| bail!("the client ran without its ready line"),
            fails_with: Some("the guest ended before it printed a line with"),
            stop: Stop::Destroy,
        }),
        ..Case::BASE
    },
    Case {
        name: "a guest without its ready line in time is destroyed",
        app: "hello",
        args: &["sleep=60000"],
        timeout_secs: 120,
        exit: GuestExit::Destroyed,
        check: |console| expect_line(console, "args: sleep=60000"),
        client: Some(ClientCase {
            ready: "a line hello never prints",
            ready_timeout_secs: 5,
            forwards: &[],
            net: GuestNet::Dhcp,
            talk: |_| bail!("the client ran without its ready line"),
            fails_with: Some("within 5 s of its start"),
            stop: Stop::Destroy,
        }),
        ..Case::BASE
    },
    Case {
        name: "daytime answers TCP and UDP clients on the host (static address)",
        app: "daytime",
        timeout_secs: 120,
        exit: GuestExit::Destroyed,
        check: |console| expect_line(console, "daytime: listening on 10.0.2.16:13"),
        client: Some(ClientCase {
            talk: |ports| {
                daytime_tcp(ports)?;
                daytime_udp(ports)
            },
            ..DAYTIME_CLIENT
        }),
        ..Case::BASE
    },
    Case {
        name: "daytime answers 100 TCP and 100 UDP clients on the host at once (--forward)",
        app: "daytime",
        timeout_secs: 180,
        exit: GuestExit::Destroyed,
        check: |console| expect_line(console, "daytime: listening on 10.0.2.16:13"),
        client: Some(ClientCase {
            talk: daytime_crowd,
            ..DAYTIME_CLIENT
        }),
        ..Case::BASE
    },
    Case {
        name: "daytime answers a TCP client on the host (DHCP)",
        app: "daytime",
        timeout_secs: 120,
        exit: GuestExit::Destroyed,
        check: |console| expect_line(console, "daytime: listening on 10.0.2.16:13"),
        client: Some(ClientCase {
            net: GuestNet::Dhcp,
            ..DAYTIME_CLIENT
        }),
        ..Case::BASE
    },
    Case {
        name: "daytime powers off on xl shutdown",
        app: "daytime",
        timeout_secs: 120,
        check: daytime_closes_down,
        client: Some(ClientCase {
            // The client is served first: the shutdown stops a working guest.
            stop: Stop::Shutdown,
            ..DAYTIME_CLIENT
        }),
        ..Case::BASE
    },
    Case {
        name: "daytime reboots on xl reboot",
        app: "daytime",
        timeout_secs: 120,
        exit: GuestExit::Reboot,
        check: daytime_closes_down,
        client: Some(ClientCase {
            forwards: &[],
            net: GuestNet::Dhcp,
            talk: |_| Ok(()),
            stop: Stop::Reboot,
            ..DAYTIME_CLIENT
        }),
        ..Case::BASE
    },
    Case {
        name: "blkcheck on a 64 MiB disk; the host reads its pattern from the image file",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_passed,
        disk: Some(DiskCase {
            mib: 64,
            filled_mib: 0,
            read_only: false,
            check: |image| image.holds_blkcheck_pattern(),
        }),
        ..Case::BASE
    },
    Case {
        name: "blkcheck on a read-only disk: the write is refused, the image unchanged",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_refused_the_write,
        disk: Some(DiskCase {
            mib: 64,
            filled_mib: 1,
            read_only: true,
            check: TestImage::unchanged,
        }),
        ..Case::BASE
    },
    Case {
        name: "chaos: hello greets and powers off",
        app: "hello",
        args: &["alpha", "beta"],
        mem_mib: 8,
        check: hello_greets,
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: a panicking hello ends as a crash",
        app: "hello",
        args: &["panic"],
        mem_mib: 8,
        exit: GuestExit::Crash,
        check: |console| expect_line(console, "hello was asked to panic"),
        toolstack: Toolstack::Chaos,
        ..Case::BASE
    },
    Case {
        name: "chaos: a guest that outlives its timeout is destroyed",
        app: "hello",
        args: &["sleep=600000"],
        mem_mib: 8,
        timeout_secs: 5,
        exit: GuestExit::Timeout,
        check: |console| expect_line(console, "args: sleep=600000"),
        toolstack: Toolstack::Chaos,
        ..Case::BASE
    },
    Case {
        name: "chaos: daytime answers TCP and UDP clients on the host, powers off on chaos shutdown",
        app: "daytime",
        timeout_secs: 120,
        check: daytime_closes_down,
        client: Some(ClientCase {
            talk: |ports| {
                daytime_tcp(ports)?;
                daytime_udp(ports)
            },
            stop: Stop::Shutdown,
            ..DAYTIME_CLIENT
        }),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: daytime (DHCP) answers a TCP client on the host, then chaos destroy",
        app: "daytime",
        timeout_secs: 120,
        exit: GuestExit::Destroyed,
        check: |console| expect_line(console, "daytime: listening on 10.0.2.16:13"),
        client: Some(ClientCase {
            net: GuestNet::Dhcp,
            ..DAYTIME_CLIENT
        }),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: daytime reboots on chaos shutdown --reboot",
        app: "daytime",
        timeout_secs: 120,
        exit: GuestExit::Reboot,
        check: daytime_closes_down,
        client: Some(ClientCase {
            forwards: &[],
            net: GuestNet::Dhcp,
            talk: |_| Ok(()),
            stop: Stop::Reboot,
            ..DAYTIME_CLIENT
        }),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: blkcheck on a file-backed 64 MiB disk (xendevd's loop device, or its NoXS back end); the host reads its pattern",
        app: "blkcheck",
        timeout_secs: 180,
        check: |console| {
            expect_line(console, "blkcheck: disk xvda of 64 MiB")?;
            blkcheck_passed(console)
        },
        disk: Some(DiskCase {
            mib: 64,
            filled_mib: 0,
            read_only: false,
            check: |image| image.holds_blkcheck_pattern(),
        }),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: blkcheck on a read-only file-backed disk: the write is refused, the image unchanged",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_refused_the_write,
        disk: Some(DiskCase {
            mib: 64,
            filled_mib: 1,
            read_only: true,
            check: TestImage::unchanged,
        }),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
];

/// blkcheck's verdict.
fn blkcheck_passed(console: &str) -> Result<()> {
    ensure!(
        console.lines().any(|line| line.starts_with("blkcheck: ok")),
        "no line starting with \"blkcheck: ok\""
    );
    Ok(())
}

/// blkcheck on a read-only disk: its write was refused, and it passed.
fn blkcheck_refused_the_write(console: &str) -> Result<()> {
    expect_line(console, "blkcheck: read-only disk: write refused: ")?;
    blkcheck_passed(console)
}

/// daytime's last words after a poweroff or reboot request, in order.
fn daytime_closes_down(console: &str) -> Result<()> {
    expect_line(console, "daytime: listening on ")?;
    let lines: Vec<&str> = console.lines().collect();
    let closing = lines
        .iter()
        .position(|line| line.starts_with("daytime: shutting down"))
        .context("no line starting with \"daytime: shutting down\"")?;
    ensure!(
        lines[closing..]
            .iter()
            .any(|line| line.starts_with("daytime: stopped")),
        "no line starting with \"daytime: stopped\" after \"{}\"",
        lines[closing]
    );
    Ok(())
}

/// The 512 bytes apps/blkcheck writes to sector `sector` (its `sector_pattern`, in
/// apps/blkcheck/src/main.rs; the two must agree): 64 little-endian u64 words, word i
/// being `((sector << 16) | i) ^ 0xb10c_c4ec_0000_0000`.
fn blkcheck_sector(sector: u64) -> [u8; 512] {
    let mut bytes = [0u8; 512];
    for (i, word) in bytes.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(((sector << 16) | i as u64) ^ 0xb10c_c4ec_0000_0000).to_le_bytes());
    }
    bytes
}

/// The sectors the host reads back after blkcheck: some of each region it writes, and
/// the last one (`last`).
fn blkcheck_host_sectors(last: u64) -> [u64; 7] {
    [0, 1, 7, 8, 2048, 65535, last]
}

/// A fresh sparse image file for one case, under `target/test-disks/`, deleted on drop
/// (and by the Ctrl-C handler).
struct TestImage {
    dir: PathBuf,
    path: PathBuf,
    /// [`file_hash`] right after it was made.
    hash: u64,
}

impl TestImage {
    /// `mib` MiB, sparse; the first `filled_mib` MiB hold blkcheck's pattern (so the
    /// image is not all zeros).
    fn create(name: &str, mib: u64, filled_mib: u64) -> Result<Self> {
        let dir = util::target_dir()
            .join("test-disks")
            .join(format!("{name}-{}", lab::nonce()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        process::register_scratch(&dir);
        // Owned from here on, so an error below still removes the directory.
        let mut image = Self {
            path: dir.join(format!("{name}.img")),
            dir,
            hash: 0,
        };
        let file = fs::File::create(&image.path)
            .with_context(|| format!("creating {}", image.path.display()))?;
        file.set_len(mib << 20)?;
        let mut filled = Vec::with_capacity((filled_mib << 20) as usize);
        for sector in 0..(filled_mib << 20) / SECTOR {
            filled.extend_from_slice(&blkcheck_sector(sector));
        }
        std::io::Write::write_all(&mut &file, &filled)?;
        image.hash = file_hash(&image.path)?;
        Ok(image)
    }

    /// blkcheck's pattern in the sectors [`blkcheck_host_sectors`] names.
    fn holds_blkcheck_pattern(&self) -> Result<()> {
        let mut file = fs::File::open(&self.path)?;
        let sectors = file.metadata()?.len() / SECTOR;
        for sector in blkcheck_host_sectors(sectors - 1) {
            let mut got = [0u8; 512];
            file.seek(SeekFrom::Start(sector * SECTOR))?;
            file.read_exact(&mut got)?;
            let expected = blkcheck_sector(sector);
            if let Some(at) = (0..64).find(|&i| got[i * 8..i * 8 + 8] != expected[i * 8..i * 8 + 8])
            {
                let word = |bytes: &[u8]| {
                    u64::from_le_bytes(bytes[at * 8..at * 8 + 8].try_into().expect("8 bytes"))
                };
                bail!(
                    "{}: sector {sector}, word {at} (byte {}) is {:#018x}, expected {:#018x} (blkcheck's pattern)",
                    self.path.display(),
                    sector * SECTOR + at as u64 * 8,
                    word(&got),
                    word(&expected)
                );
            }
        }
        Ok(())
    }

    /// The file is byte for byte what it was when made (by its hash).
    fn unchanged(&self) -> Result<()> {
        let now = file_hash(&self.path)?;
        ensure!(
            now == self.hash,
            "{} changed while the guest ran (hash {:#018x} before, {now:#018x} after)",
            self.path.display(),
            self.hash
        );
        Ok(())
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        process::forget_scratch(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A hash of a file's bytes (SipHash of std's `DefaultHasher`, the same in one process).
fn file_hash(path: &Path) -> Result<u64> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let len = file.read(&mut buf)?;
        if len == 0 {
            break;
        }
        hasher.write(&buf[..len]);
    }
    Ok(hasher.finish())
}

/// How far a daytime answer may be from the host's clock: the guest reads Xen's wall
/// clock, which Xen set from QEMU's RTC, which follows the host (to the second).
const DAYTIME_SKEW: Duration = Duration::from_secs(2);

/// Connect to the guest's port 13: one RFC 3339 line, then the connection closes.
fn daytime_tcp(ports: &Ports) -> Result<()> {
    daytime_tcp_at(ports.addr(13)?)
}

fn daytime_tcp_at(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .with_context(|| format!("reading from {addr} (tcp)"))?;
    check_daytime(&answer).with_context(|| format!("tcp answer from {addr}"))
}

/// Clients of [`daytime_crowd`]: as many as a load generator's first burst.
const CROWD: usize = 100;

/// [`CROWD`] TCP clients on the host connect at the same moment and each gets its line;
/// then as many UDP clients each send one datagram at the same moment and each gets
/// its answer, with no second try.
fn daytime_crowd(ports: &Ports) -> Result<()> {
    let addr = ports.addr(13)?;
    let start = Barrier::new(CROWD);
    let tcp: Vec<Result<()>> = thread::scope(|scope| {
        let clients: Vec<_> = (0..CROWD)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    daytime_tcp_at(addr)
                })
            })
            .collect();
        clients
            .into_iter()
            .map(|client| {
                client
                    .join()
                    .unwrap_or_else(|_| bail!("the client panicked"))
            })
            .collect()
    });
    crowd_verdict("TCP", tcp)?;

    let sockets = (0..CROWD)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    for socket in &sockets {
        socket.send_to(b"what time is it?\n", addr)?;
    }
    let udp = sockets
        .iter()
        .map(|socket| {
            let mut buf = [0u8; 512];
            let (len, _) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no udp answer from {addr}"))?;
            check_daytime(&String::from_utf8_lossy(&buf[..len]))
                .with_context(|| format!("udp answer from {addr}"))
        })
        .collect();
    crowd_verdict("UDP", udp)
}

/// All of a crowd's clients must have succeeded; else how many did not, and why.
fn crowd_verdict(proto: &str, results: Vec<Result<()>>) -> Result<()> {
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|result| result.err().map(|err| format!("{err:#}")))
        .collect();
    ensure!(
        failures.is_empty(),
        "{} of {CROWD} {proto} clients failed, e.g. {}",
        failures.len(),
        failures[..failures.len().min(3)].join("; ")
    );
    Ok(())
}

/// A datagram to the guest's port 13 comes back as one RFC 3339 line (a few tries: UDP
/// may lose one).
fn daytime_udp(ports: &Ports) -> Result<()> {
    let addr = ports.addr(13)?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 512];
    let mut last = None;
    for _ in 0..3 {
        socket.send_to(b"what time is it?\n", addr)?;
        match socket.recv_from(&mut buf) {
            Ok((len, _)) => {
                let answer = String::from_utf8_lossy(&buf[..len]);
                return check_daytime(&answer).with_context(|| format!("udp answer from {addr}"));
            }
            Err(err) => last = Some(err),
        }
    }
    Err(anyhow::Error::from(last.expect("three tries")))
        .with_context(|| format!("no udp answer from {addr} in 3 tries"))
}

/// `2026-11-24T03:12:48.123456Z` and CR LF, close to the host's time.
fn check_daytime(answer: &str) -> Result<()> {
    let Some(line) = answer.strip_suffix("\r\n") else {
        bail!("{answer:?} does not end with CR LF");
    };
    let time = parse_utc(line).with_context(|| format!("{line:?} is not RFC 3339 UTC"))?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > DAYTIME_SKEW {
        bail!(
            "{line:?} is {:.0} s away from the host's clock",
            skew.as_secs_f64()
        );
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` as a time.
fn parse_utc(text: &str) -> Result<SystemTime> {
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[bytes.len() - 1] == b'Z';
    if !shape_ok {
        bail!("not shaped YYYY-MM-DDTHH:MM:SS[.frac]Z");
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64> {
        let digits = &text[range];
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            bail!("{digits:?} is not a number");
        }
        Ok(digits.parse()?)
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let fraction = &text[19..text.len() - 1];
    let nanos = match fraction.strip_prefix('.') {
        None if fraction.is_empty() => 0,
        Some(digits) if (1..=9).contains(&digits.len()) => {
            number(20..20 + digits.len())? * 10_i64.pow(9 - digits.len() as u32)
        }
        _ => bail!("bad fraction of a second {fraction:?}"),
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        bail!("a field is out of range");
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).context("before 1970")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(nanos)?))
}

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

fn hello_greets_anyone(console: &str) -> Result<()> {
    expect_line(console, "Hello from a Rust unikernel on Xen!")?;
    expect_line(console, "free frames: ")
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

/// A case as it runs: its name, and whether with NoXS.
struct CaseRun<'a> {
    name: String,
    case: &'a Case,
    noxs: bool,
}

/// Every case, and the NoXS run of each `noxs_too` case, that `wanted` keeps.
fn case_runs(wanted: &dyn Fn(&str) -> bool) -> Vec<CaseRun<'static>> {
    CASES
        .iter()
        .flat_map(|case| {
            let noxs = case.noxs_too.then(|| CaseRun {
                name: case.name.replacen("chaos:", "chaos NoXS:", 1),
                case,
                noxs: true,
            });
            std::iter::once(CaseRun {
                name: case.name.to_owned(),
                case,
                noxs: false,
            })
            .chain(noxs)
        })
        .filter(|run| wanted(&run.name))
        .collect()
}

fn lab_tests(images: &[GuestImage], wanted: &dyn Fn(&str) -> bool) -> Result<()> {
    let cases = case_runs(wanted);
    if cases.is_empty() {
        return Ok(());
    }
    // Each disk case's fresh image, made before the lab boots (QEMU attaches them all).
    let disks = cases
        .iter()
        .enumerate()
        .map(|(index, CaseRun { case, .. })| {
            case.disk
                .as_ref()
                .map(|disk| TestImage::create(&format!("case-{index}"), disk.mib, disk.filled_mib))
                .transpose()
        })
        .collect::<Result<Vec<Option<TestImage>>>>()?;
    let sessions: Vec<Session<'_>> = cases
        .iter()
        .zip(&disks)
        .map(|(CaseRun { case, noxs, .. }, image)| {
            let app = images
                .iter()
                .find(|app| app.name == case.app)
                .cloned()
                .unwrap_or_else(|| panic!("case {} names unknown app {}", case.name, case.app));
            let mut run = GuestRun {
                mem_mib: case.mem_mib,
                args: case.args.iter().map(ToString::to_string).collect(),
                timeout: Duration::from_secs(case.timeout_secs),
                dom0: case.dom0,
                toolstack: case.toolstack,
                noxs: *noxs,
                ..GuestRun::new(app)
            };
            if let (Some(disk), Some(image)) = (&case.disk, image) {
                run.disks = vec![Disk::new(&image.path, disk.read_only)];
            }
            let client = case.client.as_ref().map(|client| {
                run.forwards = client
                    .forwards
                    .iter()
                    .map(|&guest| Forward { host: 0, guest })
                    .collect();
                run.net = client.net;
                Client {
                    ready_marker: client.ready.to_owned(),
                    ready_timeout: Duration::from_secs(client.ready_timeout_secs),
                    talk: Box::new(client.talk),
                    stop: client.stop,
                }
            });
            Session { run, client }
        })
        .collect();
    eprintln!("lab: {} guest runs", sessions.len());
    let outcomes = run::run_sessions(sessions);
    let mut failures = 0;
    for ((CaseRun { name, case, .. }, outcome), image) in cases.iter().zip(outcomes).zip(&disks) {
        let verdict = outcome.and_then(|outcome| {
            let result = judge(case, &outcome.guest)
                .and_then(|()| judge_client(name, case, outcome.client, outcome.guest.stop_latency))
                .and_then(|()| judge_disk(case, image.as_ref()));
            match result {
                Ok(()) => Ok(()),
                Err(err) => Err(err.context(format!("console:\n{}", outcome.guest.console))),
            }
        });
        match verdict {
            Ok(()) => eprintln!("PASS {name}"),
            Err(err) => {
                failures += 1;
                // The reason first, then what the guest printed.
                let mut chain = err.chain().collect::<Vec<_>>();
                chain.reverse();
                eprintln!("FAIL {name}:");
                for part in chain {
                    eprintln!("  {part}");
                }
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of {} lab tests failed", cases.len());
    }
    Ok(())
}

fn judge(case: &Case, outcome: &GuestOutcome) -> Result<()> {
    if outcome.exit != case.exit {
        bail!("ended with {:?}, expected {:?}", outcome.exit, case.exit);
    }
    (case.check)(&outcome.console)
}

fn judge_client(
    name: &str,
    case: &Case,
    result: Option<Result<()>>,
    stop_latency: Option<Duration>,
) -> Result<()> {
    let Some(client) = &case.client else {
        return Ok(());
    };
    let result = result.context("the case has a client, but no client result came back")?;
    match (client.fails_with, result) {
        (None, Ok(())) => {}
        (None, Err(err)) => return Err(err.context("the client failed")),
        (Some(expected), Ok(())) => {
            bail!("the client succeeded; expected it to fail with {expected:?}")
        }
        (Some(expected), Err(err)) => {
            let message = format!("{err:#}");
            if !message.contains(expected) {
                bail!("the client failed with {message:?}; expected {expected:?}");
            }
        }
    }
    // A destroy case whose guest ends by itself before the ready line has no latency;
    // every other case stops its guest after the client.
    if case.exit == GuestExit::Destroyed || client.stop != Stop::Destroy {
        let command = client.stop.command(case.toolstack);
        let latency = stop_latency
            .with_context(|| format!("the guest ended, but not after its client's `{command}`"))?;
        let limit = stop_limit(client.stop);
        if latency > limit {
            bail!(
                "the guest ended {:.1} s after `{command}` (limit {} s)",
                latency.as_secs_f64(),
                limit.as_secs()
            );
        }
        eprintln!(
            "     {name}: gone {:.2} s after `{command}`",
            latency.as_secs_f64()
        );
    }
    Ok(())
}

fn judge_disk(case: &Case, image: Option<&TestImage>) -> Result<()> {
    match (&case.disk, image) {
        (Some(disk), Some(image)) => (disk.check)(image).context("checking the image file"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daytime_last_words() {
        let listening = "daytime: listening on 10.0.2.16:13 (tcp, udp), 66.227 ms after boot\n";
        daytime_closes_down(&format!(
            "{listening}daytime: shutting down (poweroff)\ndaytime: stopped\n"
        ))
        .unwrap();
        for (console, why) in [
            (
                listening.to_owned(),
                "no line starting with \"daytime: shutting down\"",
            ),
            (
                format!("{listening}daytime: stopped\ndaytime: shutting down (reboot)\n"),
                "no line starting with \"daytime: stopped\" after",
            ),
            (
                "daytime: shutting down (poweroff)\ndaytime: stopped\n".to_owned(),
                "no line with \"daytime: listening on \"",
            ),
        ] {
            let err = daytime_closes_down(&console).unwrap_err().to_string();
            assert!(err.contains(why), "{console:?}: {err}");
        }
    }

    #[test]
    fn blkcheck_pattern() {
        // Word 0 of sector 1: (1 << 16) ^ 0xb10cc4ec00000000, little-endian.
        let sector = blkcheck_sector(1);
        assert_eq!(
            sector[..8],
            [0x00, 0x00, 0x01, 0x00, 0xec, 0xc4, 0x0c, 0xb1]
        );
        // Word 63 of sector 131071: (131071 << 16 | 63) ^ magic.
        let last = blkcheck_sector(131_071);
        assert_eq!(
            u64::from_le_bytes(last[504..].try_into().unwrap()),
            0xb10c_c4ed_ffff_003f
        );
        assert_ne!(blkcheck_sector(7), blkcheck_sector(8));
    }

    /// The host checks on real files: a written pattern passes, a zero sector or a
    /// changed byte fails with where it is.
    #[test]
    fn image_checks() {
        let image = TestImage::create("unit-image-checks", 64, 0).unwrap();
        let err = image.holds_blkcheck_pattern().unwrap_err().to_string();
        assert!(
            err.contains("sector 0, word 0 (byte 0) is 0x0000000000000000"),
            "{err}"
        );
        image.unchanged().unwrap();
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .open(&image.path)
                .unwrap();
            for sector in blkcheck_host_sectors(131_071) {
                file.seek(SeekFrom::Start(sector * SECTOR)).unwrap();
                std::io::Write::write_all(&mut file, &blkcheck_sector(sector)).unwrap();
            }
        }
        image.holds_blkcheck_pattern().unwrap();
        let err = image.unchanged().unwrap_err().to_string();
        assert!(err.contains("changed while the guest ran"), "{err}");
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .open(&image.path)
                .unwrap();
            file.seek(SeekFrom::Start(65535 * SECTOR + 100)).unwrap();
            std::io::Write::write_all(&mut file, &[0xff]).unwrap();
        }
        let err = image.holds_blkcheck_pattern().unwrap_err().to_string();
        assert!(
            err.contains("sector 65535, word 12 (byte 33554016)"),
            "{err}"
        );
        let dir = image.dir.clone();
        drop(image);
        assert!(!dir.exists());

        let filled = TestImage::create("unit-image-filled", 2, 1).unwrap();
        let mut first = [0u8; 512];
        fs::File::open(&filled.path)
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        assert_eq!(first, blkcheck_sector(0));
    }

    #[test]
    fn utc_times() {
        let epoch = |text| {
            parse_utc(text)
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(epoch("1970-01-01T00:00:00Z"), Duration::ZERO);
        // `date -u -d 2026-11-24T03:12:48Z +%s`
        assert_eq!(
            epoch("2026-11-24T03:12:48.123456Z"),
            Duration::new(1_795_489_968, 123_456_000)
        );
        assert_eq!(
            epoch("2000-02-29T12:00:00.5Z"),
            Duration::new(951_825_600, 500_000_000)
        );
        for bad in [
            "2026-11-24 03:12:48Z",
            "2026-11-24T03:12:48",
            "2026-13-24T03:12:48Z",
            "2026-11-24T03:12:48.Z",
            "2026-11-24T03:12:48.1234567890Z",
            "2026-1x-24T03:12:48Z",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daytime_lines() {
        let now = humantime_now();
        check_daytime(&format!("{now}\r\n")).unwrap();
        assert!(check_daytime(&now).is_err(), "no CR LF");
        let err = check_daytime("2001-01-01T00:00:00Z\r\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("away from the host's clock"), "{err}");
    }

    /// The host's time now as RFC 3339, by `date`.
    fn humantime_now() -> String {
        let out = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}
