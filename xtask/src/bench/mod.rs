//! `cargo xtask bench`: the toolstacks side by side, each measure taken in one lab run
//! so the ratios compare like with like ([`toolstacks`] lists the rows: xl, chaos with
//! the Xenstore device method, chaos with NoXS, and the two chaos rows again with split
//! instantiation, through a chaos daemon's shells).
//!
//! - `bench boot` ([`boot`]): boot times with nothing else running; noop (create → the
//!   guest ran, it powers off at once → its domain is gone) and daytime (create → the
//!   first daytime line received in dom0 over TCP); median, p90, ratios, and for chaos
//!   the median of each step `chaos -v` times ([`steps`]), with the share of the time
//!   before chaos's `main`.
//! - `bench density` ([`density`]): the same two measures as background guests
//!   accumulate, and what dom0 spends per running guest.
//! - `bench migrate` ([`migrate`]): save, restore, live migration and its downtime.
//!
//! Both are timed in dom0 by `bootbench`, the same way for every toolstack; both write
//! CSV and plots (PNG and SVG, [`plot`]) under `target/bench/`. The lab's dom0 has
//! entropy (virtio-rng), so xl does not wait 3 s per create for a random UUID
//! (`shared/notes/xen-lab.md`). Absolute times are those of QEMU TCG: compare the
//! ratios, which come from the same run.

mod boot;
mod density;
mod density_report;
mod migrate;
mod plot;
mod steps;
mod toolstacks;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

pub use self::boot::BootArgs;
pub use self::density::{DensityArgs, smoke as density_smoke};
pub use self::migrate::MigrateArgs;
use crate::build::{self, GuestImage};
use crate::lab;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Boot times per toolstack: median and p90, ratios, chaos's steps; CSV and plots
    /// (PNG, SVG) under target/bench/.
    Boot(BootArgs),
    /// Creation time as idle guests accumulate, per toolstack, and dom0's memory per
    /// guest; CSV and plots under target/bench/.
    Density(DensityArgs),
    /// Save, restore, live migration and its downtime per toolstack: median and p90,
    /// ratios to xl; CSV and plots under target/bench/.
    Migrate(MigrateArgs),
}

impl BenchCmd {
    pub fn run(&self) -> Result<()> {
        match self {
            BenchCmd::Boot(args) => boot::run(args),
            BenchCmd::Density(args) => density::run(args),
            BenchCmd::Migrate(args) => migrate::run(args),
        }
    }
}

/// Build every app (the benchmarks need noop and daytime) and the host tools; whether
/// chaos is among them.
fn build_for_bench() -> Result<(Vec<GuestImage>, bool)> {
    let apps = lab::build_all_apps()?;
    for needed in ["noop", "daytime"] {
        if !apps.iter().any(|app: &GuestImage| app.name == needed) {
            bail!("the benchmark needs apps/{needed}");
        }
    }
    let have_chaos = build::build_host_tools()?
        .iter()
        .any(|tool| tool.ends_with("chaos"));
    Ok((apps, have_chaos))
}

/// Run benchmark `job` in one lab boot (at most 30 minutes): its stdout lines, each
/// also handed to `progress` as it comes (CI has no terminal for dots). A job that
/// fails is an error with its output.
fn run_in_lab(
    job: &str,
    apps: &[GuestImage],
    mut progress: impl FnMut(&str),
) -> Result<Vec<String>> {
    let options = lab::ExecOptions {
        timeout: std::time::Duration::from_secs(1800),
        verbose: false,
        forwards: Vec::new(),
        control: None,
        noxs: false,
        disks: Vec::new(),
        memory: lab::LabMemory::DEFAULT,
        pair: None,
    };
    let mut output = Vec::new();
    let end = lab::exec(job, apps, &options, &mut |line| match line {
        lab::Line::Stdout(text) => {
            progress(text);
            output.push(text.to_owned());
        }
        lab::Line::Stderr(text) => eprintln!("{text}"),
        lab::Line::Xen(_) => {}
    })?;
    if !matches!(end, lab::ExecEnd::Exited(0)) {
        bail!("the benchmark job failed ({end:?}):\n{}", output.join("\n"));
    }
    Ok(output)
}

/// What a `bootbench …` label names: `TOOLSTACK/APP`, or `TOOLSTACK/APP/GUESTS` in the
/// density bench.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Label {
    toolstack: String,
    app: String,
    guests: Option<u32>,
}

impl Label {
    fn parse(label: &str) -> Result<Self> {
        let mut parts = label.split('/');
        let (Some(toolstack), Some(app)) = (parts.next(), parts.next()) else {
            bail!("label {label:?}: not TOOLSTACK/APP[/GUESTS]");
        };
        let guests = parts
            .next()
            .map(|n| n.parse::<u32>())
            .transpose()
            .with_context(|| format!("label {label:?}: the guest count"))?;
        if toolstack.is_empty() || app.is_empty() || parts.next().is_some() {
            bail!("label {label:?}: not TOOLSTACK/APP[/GUESTS]");
        }
        Ok(Self {
            toolstack: toolstack.into(),
            app: app.into(),
            guests,
        })
    }
}

/// A line bootbench prints.
#[derive(Debug, Clone, PartialEq)]
enum BenchLine<'a> {
    /// `bootbench LABEL RUN MS`: a timed run.
    Time { label: Label, run: u32, ms: f64 },
    /// `bootbench-out LABEL RUN TEXT`: a line the run's command wrote to stderr.
    Out {
        label: Label,
        run: u32,
        text: &'a str,
    },
    /// `bootbench-limit LABEL MEDIAN LIMIT`: the series' median passed `--limit-ms`.
    Limit {
        label: Label,
        median: f64,
        limit: f64,
    },
}

/// Read a line of bootbench's; `None` for other lines, an error naming the line for a
/// bootbench line that does not read.
fn parse_bench_line(line: &str) -> Option<Result<BenchLine<'_>>> {
    let (kind, rest) = line.split_once(' ')?;
    if !matches!(kind, "bootbench" | "bootbench-out" | "bootbench-limit") {
        return None;
    }
    let read = || -> Result<BenchLine<'_>> {
        let mut fields = rest.splitn(3, ' ');
        let (Some(label), Some(second), Some(third)) =
            (fields.next(), fields.next(), fields.next())
        else {
            bail!("three fields after {kind:?}");
        };
        let label = Label::parse(label)?;
        let number = |text: &str, what: &str| -> Result<f64> {
            text.trim()
                .parse()
                .with_context(|| format!("{what} {text:?} is not a number"))
        };
        Ok(match kind {
            "bootbench" => BenchLine::Time {
                label,
                run: second.parse().context("the run number")?,
                ms: number(third, "the time")?,
            },
            "bootbench-out" => BenchLine::Out {
                label,
                run: second.parse().context("the run number")?,
                text: third,
            },
            _ => BenchLine::Limit {
                label,
                median: number(second, "the median")?,
                limit: number(third, "the limit")?,
            },
        })
    };
    Some(read().with_context(|| format!("odd bootbench line {line:?}")))
}

/// `1 run`, `3 runs`.
fn runs(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

/// Nearest-rank percentile of a non-empty series (NaN for an empty one).
fn percentile(values: &[f64], pct: f64) -> f64 {
    bootbench::percentile(values, pct).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_counted() {
        assert_eq!(runs(1), "1 run");
        assert_eq!(runs(3), "3 runs");
    }

    #[test]
    fn bootbench_lines_are_read() {
        assert!(parse_bench_line("noise here").is_none());
        assert!(parse_bench_line("bootbenchx a/b 0 1").is_none());
        let label = |g| Label {
            toolstack: "chaos[NoXS]".into(),
            app: "noop".into(),
            guests: g,
        };
        assert_eq!(
            parse_bench_line("bootbench chaos[NoXS]/noop 3 210.500").map(Result::unwrap),
            Some(BenchLine::Time {
                label: label(None),
                run: 3,
                ms: 210.5
            })
        );
        assert_eq!(
            parse_bench_line("bootbench-out chaos[NoXS]/noop/100 0 chaos:   1.000 ms  x y")
                .map(Result::unwrap),
            Some(BenchLine::Out {
                label: label(Some(100)),
                run: 0,
                text: "chaos:   1.000 ms  x y"
            })
        );
        assert_eq!(
            parse_bench_line("bootbench-limit xl/noop/400 5210.000 5000").map(Result::unwrap),
            Some(BenchLine::Limit {
                label: Label {
                    toolstack: "xl".into(),
                    app: "noop".into(),
                    guests: Some(400)
                },
                median: 5210.0,
                limit: 5000.0
            })
        );
        for bad in [
            "bootbench xl/noop zero",
            "bootbench xl/noop 0 fast",
            "bootbench xl 0 1.0",
            "bootbench xl/noop/many 0 1.0",
            "bootbench xl/noop/1/2 0 1.0",
            "bootbench xl/noop 0",
        ] {
            let err = parse_bench_line(bad).unwrap().unwrap_err();
            assert!(format!("{err:#}").contains(bad), "{bad}: {err:#}");
        }
    }
}
