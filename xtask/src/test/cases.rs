//! The lab cases of `cargo xtask test`: one guest run each and what it must show — its
//! exit, its console, its client's result and, for a disk, the image file afterwards.
//! [`Case::BASE`] and [`DAYTIME_CLIENT`] say what a case does not.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::daytime::{daytime_crowd, daytime_tcp, daytime_udp};
use super::image::TestImage;
use crate::run::{GuestExit, GuestNet, Ipv4Cidr, Ports};
use crate::toolstack::{Stop, Toolstack};

/// One guest run and what it must show.
pub struct Case {
    pub name: &'static str,
    pub app: &'static str,
    pub args: &'static [&'static str],
    pub mem_mib: u32,
    pub dom0: bool,
    pub timeout_secs: u64,
    pub exit: GuestExit,
    pub check: fn(&str) -> Result<()>,
    pub client: Option<ClientCase>,
    pub disk: Option<DiskCase>,
    /// Which toolstack creates the guest.
    pub toolstack: Toolstack,
    /// A chaos case that also runs with the NoXS method, in a lab of its own without
    /// Xenstore, as "chaos NoXS: …".
    pub noxs_too: bool,
}

/// A case's disk: a fresh sparse image of `mib` MiB (its first `filled_mib` MiB holding
/// [`super::image::blkcheck_sector`]'s pattern, the rest zeros) that becomes the guest's xvda, and a
/// check of the file after the guest has ended. The file is deleted afterwards.
pub struct DiskCase {
    pub mib: u64,
    pub filled_mib: u64,
    pub read_only: bool,
    pub check: fn(&TestImage) -> Result<()>,
}

/// The host side of a case: once a console line contains `ready`, `talk` runs with the
/// guest's ports; then xtask has dom0 `stop` the guest (destroyed, its exit is
/// `Destroyed` unless it ended by itself first; asked to shut down or reboot, it ends
/// by itself), and it must be gone within [`stop_limit`].
pub struct ClientCase {
    pub ready: &'static str,
    pub ready_timeout_secs: u64,
    /// Guest ports forwarded to free host ports.
    pub forwards: &'static [u16],
    pub net: GuestNet,
    pub talk: fn(&Ports) -> Result<()>,
    /// The client's error must contain this; `None`: it must succeed.
    pub fails_with: Option<&'static str>,
    pub stop: Stop,
}

/// How long a guest may take to end once dom0 destroys it, or asks it to shut down or
/// reboot.
pub fn stop_limit(stop: Stop) -> Duration {
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
    net: GuestNet::Static(Ipv4Cidr::LAB_GUEST),
    talk: daytime_tcp,
    fails_with: None,
    stop: Stop::Destroy,
};

/// daytime asked to reboot once it listens: no client of its own.
const REBOOT_CLIENT: ClientCase = ClientCase {
    forwards: &[],
    net: GuestNet::Dhcp,
    talk: |_| Ok(()),
    stop: Stop::Reboot,
    ..DAYTIME_CLIENT
};

/// blkcheck's disk: empty, written by the guest, its pattern read back by the host.
const BLKCHECK_DISK: DiskCase = DiskCase {
    mib: 64,
    filled_mib: 0,
    read_only: false,
    check: TestImage::holds_blkcheck_pattern,
};

/// blkcheck's read-only disk: partly filled, and the same afterwards.
const BLKCHECK_READ_ONLY_DISK: DiskCase = DiskCase {
    mib: 64,
    filled_mib: 1,
    read_only: true,
    check: TestImage::unchanged,
};

pub const CASES: &[Case] = &[
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
        client: Some(REBOOT_CLIENT),
        ..Case::BASE
    },
    Case {
        name: "blkcheck on a 64 MiB disk; the host reads its pattern from the image file",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_passed,
        disk: Some(BLKCHECK_DISK),
        ..Case::BASE
    },
    Case {
        name: "blkcheck on a read-only disk: the write is refused, the image unchanged",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_refused_the_write,
        disk: Some(BLKCHECK_READ_ONLY_DISK),
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
        client: Some(REBOOT_CLIENT),
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
        disk: Some(BLKCHECK_DISK),
        toolstack: Toolstack::Chaos,
        noxs_too: true,
        ..Case::BASE
    },
    Case {
        name: "chaos: blkcheck on a read-only file-backed disk: the write is refused, the image unchanged",
        app: "blkcheck",
        timeout_secs: 180,
        check: blkcheck_refused_the_write,
        disk: Some(BLKCHECK_READ_ONLY_DISK),
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
}
