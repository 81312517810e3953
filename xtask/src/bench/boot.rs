//! `cargo xtask bench boot`: each toolstack's noop and daytime boots, one series each,
//! in one lab run; the table (median, p90, ratios to xl and to chaos[Xenstore]), the
//! median of each step `chaos -v` times for the chaos rows, the floor (a command that
//! does nothing, timed the same way: no toolstack run as a command beats xl by more than
//! xl's time over it), `boot.csv` and the plot (`boot.png`, `boot.svg`).

use std::fmt::Write as _;

use anyhow::{Result, bail};
use clap::Args;

use super::plot::{self, Bar, Bars};
use super::steps::{self, Profile};
use super::toolstacks::{self, CHAOS, TOOLSTACKS, Toolstack, XL};
use super::{BenchLine, build_for_bench, parse_bench_line, percentile, run_in_lab};
use crate::util::target_dir;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Timed runs per toolstack and app (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
}

fn job(toolstacks: &[&Toolstack], runs: u32) -> String {
    let mut job = toolstacks::prelude();
    for t in toolstacks {
        toolstacks::push_snippet(&mut job, t.setup);
        let show = if t.prints_steps { " --show-stderr" } else { "" };
        let _ = writeln!(
            job,
            "bootbench --label '{name}/noop' --runs {runs}{show} --cleanup '{settle}' \
             until-exit '{noop}' || exit 1\n\
             bootbench --label '{name}/daytime' --runs {runs}{show} --cleanup '{cleanup}' \
             until-reply --addr 10.0.2.16:13 '{daytime}' || exit 1",
            name = t.name,
            noop = t.noop,
            settle = t.settle,
            cleanup = t.cleanup(),
            daytime = t.daytime,
        );
        toolstacks::push_snippet(&mut job, t.teardown);
    }
    for (app, command) in FLOOR {
        let _ = writeln!(
            job,
            "bootbench --label '{FLOOR_ROW}/{app}' --runs {runs} until-exit '{command}' || exit 1"
        );
    }
    job
}

/// The floor: commands that do no work, timed as the toolstacks' are (bootbench's
/// `sh -c`, fork, exec, exit). No command-line toolstack can beat the second by much:
/// under QEMU TCG a process's start costs tens of milliseconds.
const FLOOR_ROW: &str = "floor";
const FLOOR: [(&str, &str); 2] = [("true", "/bin/true"), ("client", "chaos --version")];

/// One timed series, with the steps its runs printed.
#[derive(Debug, Clone)]
struct Series {
    toolstack: String,
    app: String,
    millis: Vec<f64>,
    steps: Profile,
}

impl Series {
    fn median(&self) -> f64 {
        percentile(&self.millis, 50.0)
    }

    fn p90(&self) -> f64 {
        percentile(&self.millis, 90.0)
    }
}

/// Collect bootbench's lines into series, in order of appearance.
fn parse(lines: &[String]) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for line in lines {
        let Some(parsed) = parse_bench_line(line) else {
            continue;
        };
        let (label, what) = match parsed? {
            BenchLine::Time { label, ms, .. } => (label, Ok(ms)),
            BenchLine::Out { label, run, text } => (label, Err((run, text))),
            BenchLine::Limit { .. } => bail!("the boot bench sets no limit: {line:?}"),
        };
        let index = match series
            .iter()
            .position(|s| s.toolstack == label.toolstack && s.app == label.app)
        {
            Some(index) => index,
            None => {
                series.push(Series {
                    toolstack: label.toolstack,
                    app: label.app,
                    millis: Vec::new(),
                    steps: Profile::default(),
                });
                series.len() - 1
            }
        };
        match what {
            Ok(ms) => series[index].millis.push(ms),
            Err((run, text)) => {
                if let Some(step) = steps::parse_line(text) {
                    series[index].steps.add(run, &step);
                }
            }
        }
    }
    Ok(series)
}

pub fn run(args: &BootArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (apps, have_chaos) = build_for_bench()?;
    let toolstacks: Vec<&Toolstack> = if have_chaos {
        TOOLSTACKS
            .iter()
            .copied()
            .chain([&toolstacks::CONTAINERD])
            .collect()
    } else {
        vec![&XL]
    };
    eprintln!(
        "bench: {} runs of noop and daytime per toolstack ({}) in one lab boot",
        args.runs,
        toolstacks
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let output = run_in_lab(&job(&toolstacks, args.runs), &apps, |text| {
        // A line per series as it completes.
        if let Some(Ok(BenchLine::Time { label, run, ms })) = parse_bench_line(text)
            && run + 1 == args.runs
        {
            eprintln!(
                "bench: {}/{}: {} runs done, the last {ms:.0} ms",
                label.toolstack, label.app, args.runs
            );
        }
    })?;
    let (floor, series): (Vec<Series>, Vec<Series>) = parse(&output)?
        .into_iter()
        .partition(|s| s.toolstack == FLOOR_ROW);
    print!("{}", table(&series));
    print!("{}", floor_report(&floor, &series));
    for s in series.iter().filter(|s| !s.steps.is_empty()) {
        println!();
        print!(
            "{}",
            s.steps
                .report(&format!("{} {}", s.toolstack, s.app), s.millis.len())
        );
    }
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("boot.csv"), csv(&series))?;
    let [png, svg] = plot::save(&figure(&series), &dir.join("boot"))?;
    eprintln!(
        "bench: wrote {}, {} and {}",
        dir.join("boot.csv").display(),
        png.display(),
        svg.display()
    );
    Ok(())
}

/// The ratio of a series' median to `baseline`'s for the same app, as `0.55x`.
fn ratio_to(series: &[Series], s: &Series, baseline: &str) -> String {
    series
        .iter()
        .find(|b| b.toolstack == baseline && b.app == s.app)
        .map_or_else(
            || "-".to_owned(),
            |b| format!("{:.2}x", s.median() / b.median()),
        )
}

fn table(series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<16} {:>5} {:>11} {:>11} {:>7} {:>14}",
        "app", "toolstack", "runs", "median ms", "p90 ms", "vs xl", "vs chaos[XS]"
    );
    for s in series {
        let _ = writeln!(
            out,
            "{:<8} {:<16} {:>5} {:>11.1} {:>11.1} {:>7} {:>14}",
            s.app,
            s.toolstack,
            s.millis.len(),
            s.median(),
            s.p90(),
            ratio_to(series, s, XL.name),
            ratio_to(series, s, CHAOS.name),
        );
    }
    out
}

/// The floor's medians, and the most a command could be faster than xl for each app.
fn floor_report(floor: &[Series], series: &[Series]) -> String {
    let mut out = String::from("\nfloor (a command that does nothing, timed the same way):\n");
    for f in floor {
        let command = FLOOR
            .iter()
            .find(|(app, _)| *app == f.app)
            .map_or(f.app.as_str(), |(_, command)| command);
        let _ = writeln!(out, "  {command:<18} median {:>7.1} ms", f.median());
    }
    if let Some(client) = floor.iter().find(|f| f.app == "client") {
        for xl in series.iter().filter(|s| s.toolstack == XL.name) {
            let _ = writeln!(
                out,
                "  {}: xl's median over the client's floor: at most {:.0}x faster than xl",
                xl.app,
                xl.median() / client.median()
            );
        }
    }
    out
}

fn csv(series: &[Series]) -> String {
    let mut out = String::from("app,toolstack,run,ms\n");
    for s in series {
        for (run, ms) in s.millis.iter().enumerate() {
            let _ = writeln!(out, "{},{},{run},{ms:.3}", s.app, s.toolstack);
        }
    }
    out
}

/// A panel per app, a bar per toolstack (median, with a tick at p90).
fn figure(series: &[Series]) -> Bars {
    let mut panels: Vec<(String, Vec<Bar>)> = Vec::new();
    for s in series {
        let bar = Bar {
            label: s.toolstack.clone(),
            colour: toolstacks::index_of(&s.toolstack),
            median: s.median(),
            p90: s.p90(),
        };
        match panels.iter_mut().find(|(app, _)| *app == s.app) {
            Some((_, bars)) => bars.push(bar),
            None => panels.push((s.app.clone(), vec![bar])),
        }
    }
    Bars {
        title: "boot time per toolstack, QEMU TCG (ms)".into(),
        panels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn series_and_ratios_from_bootbench_lines() {
        let out = lines(
            "noise\nbootbench xl/noop 0 500.0\nbootbench xl/noop 1 700.0\n\
             bootbench-out chaos[Xenstore]/noop 0 chaos:   20.000 ms  check name\n\
             bootbench-out chaos[Xenstore]/noop 0 chaos: created bench-noop (domain 3)\n\
             bootbench chaos[Xenstore]/noop 0 100.0\n\
             bootbench-out chaos[Xenstore]/noop 1 chaos:   30.000 ms  check name\n\
             bootbench chaos[Xenstore]/noop 1 140.0\n\
             bootbench chaos[NoXS]/noop 0 60.0\nbootbench xl/daytime 0 900.5",
        );
        let series = parse(&out).unwrap();
        assert_eq!(series.len(), 4);
        assert_eq!(series[0].millis, [500.0, 700.0]);
        assert!(series[0].steps.is_empty());
        assert_eq!(series[1].steps.median("check name"), Some(20.0));
        assert_eq!(ratio_to(&series, &series[1], "xl"), "0.20x");
        assert_eq!(ratio_to(&series, &series[2], "chaos[Xenstore]"), "0.60x");
        assert_eq!(ratio_to(&series, &series[3], "chaos[Xenstore]"), "-");
        let report = table(&series);
        assert!(report.contains("noop     chaos[NoXS]"), "{report}");
        assert!(report.contains("0.12x"), "{report}");
        assert!(csv(&series).starts_with("app,toolstack,run,ms\n"));
        assert!(csv(&series).contains("daytime,xl,0,900.500"));
        let figure = figure(&series);
        assert_eq!(figure.panels.len(), 2);
        assert_eq!(figure.panels[0].1.len(), 3);
        assert_eq!(figure.panels[0].1[2].colour, 2);
        assert!(parse(&lines("bootbench xl/noop zero")).is_err());
        assert!(parse(&lines("bootbench-limit xl/noop 1 2")).is_err());
    }

    #[test]
    fn the_floor_is_reported_apart_with_the_best_ratio_to_xl() {
        let out = lines(
            "bootbench xl/noop 0 500.0\nbootbench xl/daytime 0 800.0\n\
             bootbench floor/true 0 10.0\nbootbench floor/client 0 50.0",
        );
        let (floor, series): (Vec<Series>, Vec<Series>) = parse(&out)
            .unwrap()
            .into_iter()
            .partition(|s| s.toolstack == FLOOR_ROW);
        assert_eq!((floor.len(), series.len()), (2, 2));
        let report = floor_report(&floor, &series);
        assert!(
            report.contains("chaos --version    median    50.0 ms"),
            "{report}"
        );
        assert!(
            report.contains("noop: xl's median over the client's floor: at most 10x"),
            "{report}"
        );
        assert!(
            report.contains("daytime: xl's median over the client's floor: at most 16x"),
            "{report}"
        );
        assert!(
            job(&[&XL], 3).ends_with(
                "--label 'floor/client' --runs 3 until-exit 'chaos --version' || exit 1\n"
            )
        );
    }

    #[test]
    fn the_job_runs_setup_and_teardown_around_a_row() {
        let job = job(&[&XL, &toolstacks::CHAOS_NOXS_SPLIT], 3);
        let setup = job.find("chaos daemon run").unwrap();
        let timed = job
            .find("--label 'chaos[NoXS+split]/noop' --runs 3 --show-stderr")
            .unwrap();
        let teardown = job.find("chaos daemon stop").unwrap();
        assert!(setup < timed && timed < teardown, "{job}");
        assert!(
            job.contains("--label 'xl/noop' --runs 3 --cleanup 'true' until-exit"),
            "{job}"
        );
        assert!(
            job.contains(
                "--label 'chaos[NoXS+split]/noop' --runs 3 --show-stderr --cleanup 'sh /tmp/bench/daemon-full'"
            ),
            "{job}"
        );
    }
}
