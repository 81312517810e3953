//! The lab cases as they run: all of them (and the NoXS run of each `noxs_too` case) in
//! one batch of [`run::run_sessions`], each judged on its exit, console, client and disk.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::cases::{CASES, Case, stop_limit};
use super::image::TestImage;
use crate::build::GuestImage;
use crate::disk::Disk;
use crate::run::{self, Client, Forward, GuestExit, GuestOutcome, GuestRun, Session};
use crate::toolstack::Stop;

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

pub fn lab_tests(images: &[GuestImage], wanted: &dyn Fn(&str) -> bool) -> Result<()> {
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
