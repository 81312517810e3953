//! `cargo xtask bench migrate`: saving, restoring and migrating the daytime guest, per
//! toolstack, in one lab run: save (the command, until it exits), restore (until the
//! restored guest answers), live migration to this host (the command) and the guest's
//! downtime in it (the longest time without an answer, for a client asking every few
//! milliseconds: bootbench's `downtime`). The table (median, p90, ratio to xl),
//! `migrate.csv` and the plot (`migrate.png`, `migrate.svg`) under `target/bench/`.
//!
//! Each run saves a running guest, restores it, migrates it, destroys it; a warm-up
//! cycle comes first. chaos migrates to a `chaos receive` started for its rows.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::plot::{self, Bar, Bars};
use super::toolstacks::{self, Toolstack};
use super::{BenchLine, Label, build_for_bench, parse_bench_line, percentile, run_in_lab};
use crate::util::target_dir;

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Timed save → restore → migrate cycles per toolstack (after one warm-up cycle).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}

/// How one toolstack saves, restores and migrates the guest named `bench-daytime` (its
/// create command, from [`Toolstack::daytime`], says which device method).
struct Row {
    toolstack: &'static Toolstack,
    save: &'static str,
    restore: &'static str,
    migrate: &'static str,
    /// Started before the row's cycles, stopped after them.
    receiver: Option<&'static str>,
}

const SAVE_FILE: &str = "/tmp/bench/daytime.save";

const ROWS: [Row; 3] = [
    Row {
        toolstack: &toolstacks::XL,
        save: "xl save bench-daytime /tmp/bench/daytime.save",
        restore: "xl restore /tmp/bench/daytime.save",
        migrate: "xl migrate -s \"\" bench-daytime \"xl migrate-receive\"",
        receiver: None,
    },
    Row {
        toolstack: &toolstacks::CHAOS,
        save: "chaos save bench-daytime /tmp/bench/daytime.save",
        restore: "chaos restore /tmp/bench/daytime.save",
        migrate: "chaos migrate bench-daytime 127.0.0.1",
        receiver: Some("chaos receive"),
    },
    Row {
        toolstack: &toolstacks::CHAOS_NOXS,
        save: "chaos save bench-daytime /tmp/bench/daytime.save",
        restore: "chaos restore /tmp/bench/daytime.save",
        migrate: "chaos migrate bench-daytime 127.0.0.1",
        receiver: Some("chaos receive"),
    },
];

/// The steps a cycle times, in the order of tables and plots.
const STEPS: [&str; 4] = ["save", "restore", "migrate", "downtime"];

const ADDR: &str = "10.0.2.16:13";

fn job(rows: &[Row], runs: u32) -> String {
    let mut job = toolstacks::prelude();
    for row in rows {
        let t = row.toolstack;
        if let Some(receiver) = row.receiver {
            let _ = writeln!(
                job,
                "{receiver} >/tmp/bench/receiver.log 2>&1 & receiver=$!\nsleep 1"
            );
        }
        for cycle in 0..=runs {
            // The warm-up cycle's lines are labelled apart and left out.
            let label = if cycle == 0 { "warmup" } else { t.name };
            let once = "--runs 1 --warmup 0";
            // What a failed step left, for the error.
            let failed = "{ xl list; ip neigh; tail -n 20 /var/log/xendevd.log; \
                          tail -n 20 /var/log/xendevd/console/*; exit 1; }";
            let _ = writeln!(
                job,
                "bootbench --label '{label}/create' {once} until-reply --addr {ADDR} '{create}' >/dev/null || {failed}\n\
                 bootbench --label '{label}/save' {once} until-exit '{save}' || {failed}\n\
                 bootbench --label '{label}/restore' {once} until-reply --addr {ADDR} '{restore}' || {failed}\n\
                 bootbench --label '{label}/migrate' {once} downtime --addr {ADDR} '{migrate}' || {failed}\n\
                 {destroy} bench-daytime >/dev/null 2>&1; rm -f {SAVE_FILE}",
                create = t.daytime,
                save = row.save,
                restore = row.restore,
                migrate = row.migrate,
                destroy = t.destroy,
            );
        }
        if row.receiver.is_some() {
            let _ = writeln!(job, "kill $receiver; wait $receiver 2>/dev/null || true");
        }
    }
    job
}

/// One step's times for one toolstack.
#[derive(Debug, Clone, PartialEq)]
struct Series {
    toolstack: String,
    step: String,
    millis: Vec<f64>,
}

impl Series {
    fn median(&self) -> f64 {
        percentile(&self.millis, 50.0)
    }
    fn p90(&self) -> f64 {
        percentile(&self.millis, 90.0)
    }
}

/// The series bootbench's lines give, in order of appearance; warm-up and create lines
/// left out.
fn parse(lines: &[String]) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for line in lines {
        let (label, ms) = if let Some(rest) = line.strip_prefix("bootbench-downtime ") {
            let mut fields = rest.split_whitespace();
            let (Some(label), Some(_run), Some(ms), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                bail!("odd downtime line {line:?}");
            };
            let label = Label::parse(label)?;
            let ms: f64 = ms
                .parse()
                .with_context(|| format!("odd downtime line {line:?}"))?;
            (
                Label {
                    app: "downtime".into(),
                    ..label
                },
                ms,
            )
        } else {
            match parse_bench_line(line) {
                Some(Ok(BenchLine::Time { label, ms, .. })) => (label, ms),
                Some(Ok(_)) | None => continue,
                Some(Err(err)) => return Err(err),
            }
        };
        if label.toolstack == "warmup" || label.app == "create" {
            continue;
        }
        match series
            .iter_mut()
            .find(|s| s.toolstack == label.toolstack && s.step == label.app)
        {
            Some(s) => s.millis.push(ms),
            None => series.push(Series {
                toolstack: label.toolstack,
                step: label.app,
                millis: vec![ms],
            }),
        }
    }
    Ok(series)
}

pub fn run(args: &MigrateArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let (apps, have_chaos) = build_for_bench()?;
    let rows: Vec<Row> = ROWS
        .into_iter()
        .filter(|row| have_chaos || row.receiver.is_none())
        .collect();
    eprintln!(
        "bench: {} save/restore/migrate cycles of daytime per toolstack ({}) in one lab boot",
        args.runs,
        rows.iter()
            .map(|r| r.toolstack.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let output = run_in_lab(&job(&rows, args.runs), &apps, |text| {
        if let Some(Ok(BenchLine::Time { label, ms, .. })) = parse_bench_line(text) {
            eprintln!("bench: {}/{}: {ms:.0} ms", label.toolstack, label.app);
        }
    })?;
    let series = parse(&output)?;
    print!("{}", table(&series));
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("migrate.csv"), csv(&series))?;
    let [png, svg] = plot::save(&figure(&series), &dir.join("migrate"))?;
    eprintln!(
        "bench: wrote {}, {} and {}",
        dir.join("migrate.csv").display(),
        png.display(),
        svg.display()
    );
    Ok(())
}

fn ratio_to_xl(series: &[Series], s: &Series) -> String {
    series
        .iter()
        .find(|b| b.toolstack == toolstacks::XL.name && b.step == s.step)
        .map_or_else(
            || "-".to_owned(),
            |b| format!("{:.2}x", s.median() / b.median()),
        )
}

fn table(series: &[Series]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<9} {:<16} {:>5} {:>11} {:>11} {:>7}",
        "step", "toolstack", "runs", "median ms", "p90 ms", "vs xl"
    );
    for step in STEPS {
        for s in series.iter().filter(|s| s.step == step) {
            let _ = writeln!(
                out,
                "{:<9} {:<16} {:>5} {:>11.1} {:>11.1} {:>7}",
                s.step,
                s.toolstack,
                s.millis.len(),
                s.median(),
                s.p90(),
                ratio_to_xl(series, s),
            );
        }
    }
    out
}

fn csv(series: &[Series]) -> String {
    let mut out = String::from("step,toolstack,run,ms\n");
    for s in series {
        for (run, ms) in s.millis.iter().enumerate() {
            let _ = writeln!(out, "{},{},{run},{ms:.3}", s.step, s.toolstack);
        }
    }
    out
}

/// A panel per step, a bar per toolstack (median, with a tick at p90).
fn figure(series: &[Series]) -> Bars {
    let panels = STEPS
        .iter()
        .map(|step| {
            let bars = series
                .iter()
                .filter(|s| s.step == *step)
                .map(|s| Bar {
                    label: s.toolstack.clone(),
                    colour: toolstacks::index_of(&s.toolstack),
                    median: s.median(),
                    p90: s.p90(),
                })
                .collect();
            ((*step).to_owned(), bars)
        })
        .filter(|(_, bars): &(String, Vec<Bar>)| !bars.is_empty())
        .collect();
    Bars {
        title: "save, restore, migrate and downtime per toolstack, QEMU TCG (ms)".into(),
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
    fn steps_and_downtime_per_toolstack_without_warmup_or_create() {
        let out = lines(
            "bootbench warmup/save 0 9999.0\n\
             bootbench xl/create 0 800.0\n\
             bootbench xl/save 0 700.0\nbootbench xl/save 0 900.0\n\
             bootbench xl/restore 0 1000.0\n\
             bootbench-downtime xl/migrate 0 400.0\nbootbench xl/migrate 0 1500.0\n\
             bootbench chaos[Xenstore]/save 0 350.0\n\
             bootbench-downtime chaos[Xenstore]/migrate 0 100.0\n\
             noise",
        );
        let series = parse(&out).unwrap();
        let find = |t: &str, step: &str| {
            series
                .iter()
                .find(|s| s.toolstack == t && s.step == step)
                .cloned()
        };
        assert_eq!(find("xl", "save").unwrap().millis, [700.0, 900.0]);
        assert_eq!(find("xl", "downtime").unwrap().millis, [400.0]);
        assert!(find("xl", "create").is_none());
        assert!(find("warmup", "save").is_none());
        let chaos_save = find("chaos[Xenstore]", "save").unwrap();
        assert_eq!(ratio_to_xl(&series, &chaos_save), "0.50x");
        let report = table(&series);
        assert!(report.contains("downtime  chaos[Xenstore]"), "{report}");
        assert!(report.contains("0.25x"), "{report}");
        assert!(csv(&series).contains("downtime,xl,0,400.000"));
        assert_eq!(figure(&series).panels.len(), 4);
        assert!(parse(&lines("bootbench-downtime xl/migrate 0")).is_err());
        assert!(parse(&lines("bootbench-downtime xl/migrate 0 fast")).is_err());
    }

    #[test]
    fn chaos_rows_run_beside_their_receiver() {
        let job = job(&ROWS, 2);
        let receiver = job.find("chaos receive >").unwrap();
        let migrate = job.find("'chaos migrate bench-daytime 127.0.0.1'").unwrap();
        let stop = job.find("kill $receiver").unwrap();
        assert!(receiver < migrate && migrate < stop, "{job}");
        // A warm-up cycle per row, then the timed ones.
        assert_eq!(job.matches("--label 'xl/save'").count(), 2, "{job}");
        assert_eq!(
            job.matches("--label 'warmup/save'").count(),
            ROWS.len(),
            "{job}"
        );
        assert!(
            job.contains("'chaos -v create /tmp/bench/daytime-noxs.json'"),
            "{job}"
        );
    }
}
