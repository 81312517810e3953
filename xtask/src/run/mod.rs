//! `cargo xtask run`: boot one guest with xl (or chaos) and stream its console until it
//! ends — natively on a Xen dom0, otherwise in the lab — or boot it directly as Xen's
//! dom0.
//!
//! The same as a library, for `cargo xtask test`: [`run_guest`] and [`run_guests`] boot
//! guests and wait for them to end; [`run_guest_while`] and [`run_sessions`] also run a
//! host-side client against a guest once its console says it is ready (through ports
//! the lab relay forwards to the host), then destroy the guest (or ask it to shut down or
//! reboot, [`Stop`]) and report both. A guest's disks are image files of the host
//! ([`GuestRun::disks`]).
//!
//! - `cli.rs`: the command line;
//! - `guest.rs`: what to boot, how it ended, where its ports are;
//! - `client.rs`: the client's thread, and how it has dom0 stop the guest;
//! - `lab.rs`: many guests in one lab boot;
//! - `native.rs`: a guest on this machine, a Xen dom0.

mod cli;
mod client;
mod guest;
mod lab;
mod native;

use std::io::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Result, anyhow};

pub use self::cli::RunArgs;
pub use self::client::Client;
pub use self::guest::{Forward, GuestExit, GuestNet, GuestOutcome, GuestRun, Ipv4Cidr, Ports};
use crate::lab::Dom0End;
use crate::toolstack::Stop;

/// A guest run, with a client or without.
#[derive(Debug)]
pub struct Session<'a> {
    pub run: GuestRun,
    pub client: Option<Client<'a>>,
}

/// What a session produced: the guest's outcome and, with a client, the client's result.
#[derive(Debug)]
pub struct SessionOutcome {
    pub guest: GuestOutcome,
    pub client: Option<Result<()>>,
}

/// Whether this machine is a Xen control domain, where xl runs natively.
pub fn is_xen_dom0() -> bool {
    std::fs::read_to_string("/proc/xen/capabilities").is_ok_and(|caps| caps.contains("control_d"))
}

/// Boot one guest and wait for it to end: as Xen's dom0 in QEMU with `dom0`, else with
/// xl natively on a Xen dom0 or in the lab.
pub fn run_guest(run: &GuestRun) -> Result<GuestOutcome> {
    run_guests(std::slice::from_ref(run))
        .pop()
        .expect("one outcome per run")
}

/// Boot several guests one after the other, each as [`run_guest`] would, but all the
/// lab ones in a single lab boot (about 1 s per guest instead of 9 s). In the lab each
/// guest's `timeout` counts from its `xl create`; the boot has its own allowance.
pub fn run_guests(runs: &[GuestRun]) -> Vec<Result<GuestOutcome>> {
    let sessions = runs
        .iter()
        .map(|run| Session {
            run: run.clone(),
            client: None,
        })
        .collect();
    run_sessions(sessions)
        .into_iter()
        .map(|outcome| outcome.map(|outcome| outcome.guest))
        .collect()
}

/// Boot `run`'s guest (in the lab, or natively), wait for a console line containing
/// `ready_marker` (at most `ready_timeout` from the guest's start), run `talk` with
/// the guest's [`Ports`] while the console keeps streaming, then destroy the guest and
/// wait for it to end. Returns what `talk` returned and the guest's outcome: its `exit`
/// is [`GuestExit::Destroyed`] if the guest was still running when `talk` was done, or
/// how it ended by itself before. An error of `talk` comes back with the console.
#[allow(
    dead_code,
    reason = "API for one-off host tests; `cargo xtask test` batches its cases with run_sessions"
)]
pub fn run_guest_while<T: Send>(
    run: &GuestRun,
    ready_marker: &str,
    ready_timeout: Duration,
    talk: impl FnOnce(&Ports) -> Result<T> + Send,
) -> Result<(T, GuestOutcome)> {
    let value = Mutex::new(None);
    let session = Session {
        run: run.clone(),
        client: Some(Client {
            ready_marker: ready_marker.to_owned(),
            ready_timeout,
            talk: Box::new(|ports| {
                let result = talk(ports)?;
                *value.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                Ok(())
            }),
            stop: Stop::Destroy,
        }),
    };
    let outcome = run_sessions(vec![session])
        .pop()
        .expect("one outcome per session")?;
    let client = outcome.client.expect("the session had a client");
    let guest = outcome.guest;
    match client {
        Ok(()) => {
            let value = value
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner)
                .expect("the client returned Ok, so it stored its value");
            Ok((value, guest))
        }
        Err(err) => Err(err.context(format!(
            "the client failed; the guest ended with {:?}; its console:\n{}",
            guest.exit, guest.console
        ))),
    }
}

/// Run sessions one after the other, like [`run_guests`] (all lab ones in one lab boot),
/// each with its client if it has one (see [`Client`]).
pub fn run_sessions(sessions: Vec<Session<'_>>) -> Vec<Result<SessionOutcome>> {
    let native = is_xen_dom0();
    let mut outcomes: Vec<Option<Result<SessionOutcome>>> = sessions.iter().map(|_| None).collect();
    let mut in_lab = Vec::new();
    for (index, session) in sessions.into_iter().enumerate() {
        if let Err(err) = session.run.check() {
            outcomes[index] = Some(Err(err));
        } else if session.run.dom0 {
            outcomes[index] = Some(match session.client {
                Some(_) => Err(anyhow!(
                    "a client needs a domU: a guest booted as dom0 has no network"
                )),
                None => run_as_dom0(&session.run).map(|guest| SessionOutcome {
                    guest,
                    client: None,
                }),
            });
        } else if native {
            outcomes[index] = Some(native::run_native(session));
        } else {
            in_lab.push((index, session));
        }
    }
    // NoXS guests run in a lab of their own, without Xenstore.
    let (noxs, xenstore): (Vec<_>, Vec<_>) = in_lab
        .into_iter()
        .partition(|(_, session)| session.run.noxs);
    for in_lab in [xenstore, noxs] {
        if in_lab.is_empty() {
            continue;
        }
        let (indices, batch): (Vec<usize>, Vec<Session<'_>>) = in_lab.into_iter().unzip();
        match lab::run_in_lab(batch) {
            Ok(results) => {
                for (index, result) in indices.into_iter().zip(results) {
                    outcomes[index] = Some(result);
                }
            }
            Err(err) => {
                // The lab itself failed: every guest in it shares the error.
                let message = format!("{err:#}");
                for index in indices {
                    outcomes[index] = Some(Err(anyhow!("{message}")));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every run has an outcome"))
        .collect()
}

/// Collects the console and echoes it live.
#[derive(Debug)]
struct Console {
    text: String,
    echo: bool,
}

impl Console {
    fn new(echo: bool) -> Self {
        Self {
            text: String::new(),
            echo,
        }
    }

    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Boot the guest as Xen's dom0 in QEMU: no Linux, no toolstack, no devices.
fn run_as_dom0(run: &GuestRun) -> Result<GuestOutcome> {
    let mut console = Console::new(run.echo);
    let end = crate::lab::boot_as_dom0(
        &run.image.path,
        &run.args.join(" "),
        run.mem_mib,
        run.timeout,
        run.verbose,
        &mut |line| console.line(line),
    )?;
    let exit = match end {
        Dom0End::Poweroff => GuestExit::Poweroff,
        Dom0End::Crash => GuestExit::Crash,
        Dom0End::Reboot => GuestExit::Reboot,
        Dom0End::Other => GuestExit::Other,
        Dom0End::TimedOut => GuestExit::Timeout,
    };
    Ok(GuestOutcome {
        exit,
        console: console.text,
        stop_latency: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use anyhow::bail;

    use super::*;
    use crate::build;

    /// Boots a lab (~15 s, needs QEMU and the lab's packages): `cargo test -p xtask --
    /// --ignored`. `cargo xtask test` covers the same through `run_sessions`.
    #[test]
    #[ignore = "boots the Xen lab"]
    fn run_guest_while_destroys_the_guest() {
        let image = build::build_apps(&["hello".to_owned()]).unwrap().remove(0);
        let run = GuestRun {
            args: vec!["sleep=60000".into()],
            ..GuestRun::new(image)
        };
        let started = Instant::now();
        let (seen, outcome) = run_guest_while(&run, "args:", Duration::from_secs(60), |_| {
            Ok(started.elapsed())
        })
        .unwrap();
        assert_eq!(outcome.exit, GuestExit::Destroyed, "{}", outcome.console);
        assert!(outcome.console.contains("args: sleep=60000"));
        assert!(!outcome.console.contains("slept:"), "{}", outcome.console);
        let latency = outcome.stop_latency.expect("destroyed after the client");
        assert!(latency < Duration::from_secs(10), "{latency:?}");
        eprintln!(
            "ready after {:.1} s, destroyed {:.2} s after the client",
            seen.as_secs_f64(),
            latency.as_secs_f64()
        );

        // A failing client comes back as an error with the console.
        let err = run_guest_while(&run, "args:", Duration::from_secs(60), |_| -> Result<()> {
            bail!("client says no")
        })
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("client says no"), "{text}");
        assert!(text.contains("args: sleep=60000"), "{text}");
    }
}
