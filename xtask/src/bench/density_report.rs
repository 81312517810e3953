//! The density job's output read ([`Density::feed`], one line at a time, with a
//! progress message when a line completes something) and reported: a table per app of
//! medians by running guests, where a toolstack stopped, dom0's memory per guest, the
//! steps chaos times at the first and last step, the CSV files and the plots.
//!
//! The job's own lines (besides bootbench's): `density-begin TS`, `density-guests TS K
//! SECS` (K running, SECS to add them), `density-dom0 TS K PROCESS COUNT RSS PSS` (KiB),
//! `density-measured TS K`, `density-stop TS K`, `density-destroying TS DONE TOTAL` and
//! `density-end TS K SECS` (SECS to destroy them).

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};

use super::plot::{Line, Lines};
use super::steps::{self, Profile};
use super::toolstacks;
use super::{BenchLine, parse_bench_line, runs};

/// The runs of one app with one toolstack at one number of running guests.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub toolstack: String,
    pub app: String,
    pub guests: u32,
    pub millis: Vec<f64>,
    pub steps: Profile,
}

impl Point {
    fn median(&self) -> Option<f64> {
        bootbench::median(&self.millis)
    }
}

/// Processes of one name in dom0 and their memory, at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub toolstack: String,
    pub guests: u32,
    pub process: String,
    pub count: u32,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// Where a toolstack stopped climbing, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub toolstack: String,
    pub guests: u32,
    pub app: String,
    pub median: f64,
}

/// Everything the density job reported.
#[derive(Debug, Default)]
pub struct Density {
    pub points: Vec<Point>,
    pub costs: Vec<Cost>,
    pub stops: Vec<Stop>,
    /// Seconds each toolstack took to destroy its background guests, and how many.
    pub destroyed: Vec<(String, u32, f64)>,
}

fn field<T: std::str::FromStr>(fields: &[&str], at: usize, what: &str) -> Result<T> {
    let text = fields.get(at).with_context(|| format!("no {what}"))?;
    text.parse()
        .map_err(|_| anyhow::anyhow!("{what} {text:?} does not read"))
}

impl Density {
    /// Take one line of the job's output; a progress message if it completes something.
    pub fn feed(&mut self, line: &str) -> Result<Option<String>> {
        if let Some(parsed) = parse_bench_line(line) {
            return parsed
                .and_then(|parsed| self.feed_bench(parsed))
                .with_context(|| format!("odd density line {line:?}"));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(kind) = fields.first().and_then(|f| f.strip_prefix("density-")) else {
            return Ok(None);
        };
        let mut read = || -> Result<Option<String>> {
            let ts: String = field(&fields, 1, "toolstack")?;
            Ok(match kind {
                "begin" => Some(format!("{ts}: starting from 0 guests")),
                "guests" => {
                    let k: u32 = field(&fields, 2, "guest count")?;
                    let secs: f64 = field(&fields, 3, "seconds")?;
                    Some(format!(
                        "{ts}: {k} guests running (added in {secs:.0} s); timing noop and daytime"
                    ))
                }
                "dom0" => {
                    self.costs.push(Cost {
                        toolstack: ts,
                        guests: field(&fields, 2, "guest count")?,
                        process: field(&fields, 3, "process")?,
                        count: field(&fields, 4, "process count")?,
                        rss_kib: field(&fields, 5, "RSS")?,
                        pss_kib: field(&fields, 6, "PSS")?,
                    });
                    None
                }
                "measured" => {
                    let k: u32 = field(&fields, 2, "guest count")?;
                    let medians: Vec<String> = self
                        .points
                        .iter()
                        .filter(|p| p.toolstack == ts && p.guests == k)
                        .map(|p| format!("{} {:.0} ms", p.app, p.median().unwrap_or(f64::NAN)))
                        .collect();
                    Some(format!("{ts} at {k} guests: median {}", medians.join(", ")))
                }
                "stop" => {
                    let k: u32 = field(&fields, 2, "guest count")?;
                    Some(format!(
                        "{ts} stops adding guests at {k}: a median passed the limit"
                    ))
                }
                "destroying" => {
                    let done: u32 = field(&fields, 2, "count")?;
                    let total: u32 = field(&fields, 3, "total")?;
                    Some(format!(
                        "{ts}: destroyed {done} of {total} background guests"
                    ))
                }
                "end" => {
                    let k: u32 = field(&fields, 2, "guest count")?;
                    let secs: f64 = field(&fields, 3, "seconds")?;
                    self.destroyed.push((ts.clone(), k, secs));
                    Some(format!(
                        "{ts}: {k} background guests destroyed in {secs:.0} s"
                    ))
                }
                _ => bail!("unknown kind"),
            })
        };
        read().with_context(|| format!("odd density line {line:?}"))
    }

    fn feed_bench(&mut self, line: BenchLine<'_>) -> Result<Option<String>> {
        let label = match &line {
            BenchLine::Time { label, .. }
            | BenchLine::Out { label, .. }
            | BenchLine::Limit { label, .. } => label.clone(),
        };
        let guests = label.guests.context("the label names no guest count")?;
        let at = match self.points.iter().position(|p| {
            p.toolstack == label.toolstack && p.app == label.app && p.guests == guests
        }) {
            Some(at) => at,
            None => {
                self.points.push(Point {
                    toolstack: label.toolstack,
                    app: label.app,
                    guests,
                    millis: Vec::new(),
                    steps: Profile::default(),
                });
                self.points.len() - 1
            }
        };
        let point = &mut self.points[at];
        match line {
            BenchLine::Time { ms, .. } => point.millis.push(ms),
            BenchLine::Out { run, text, .. } => {
                if let Some(step) = steps::parse_line(text) {
                    point.steps.add(run, &step);
                }
            }
            BenchLine::Limit { median, .. } => self.stops.push(Stop {
                toolstack: point.toolstack.clone(),
                guests,
                app: point.app.clone(),
                median,
            }),
        }
        Ok(None)
    }

    /// Toolstacks and apps in order of appearance.
    fn names(&self) -> (Vec<&str>, Vec<&str>) {
        let mut toolstacks: Vec<&str> = Vec::new();
        let mut apps: Vec<&str> = Vec::new();
        for p in &self.points {
            if !toolstacks.contains(&p.toolstack.as_str()) {
                toolstacks.push(&p.toolstack);
            }
            if !apps.contains(&p.app.as_str()) {
                apps.push(&p.app);
            }
        }
        (toolstacks, apps)
    }

    fn point(&self, toolstack: &str, app: &str, guests: u32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.toolstack == toolstack && p.app == app && p.guests == guests)
    }

    /// A toolstack's points for an app, by guests.
    fn line(&self, toolstack: &str, app: &str) -> Vec<&Point> {
        let mut points: Vec<&Point> = self
            .points
            .iter()
            .filter(|p| p.toolstack == toolstack && p.app == app && !p.millis.is_empty())
            .collect();
        points.sort_by_key(|p| p.guests);
        points
    }

    /// The whole report: medians per app, stops, dom0's cost per guest, chaos's steps.
    pub fn report(&self, max_ms: u32) -> String {
        let (toolstacks, apps) = self.names();
        let mut guests: Vec<u32> = self.points.iter().map(|p| p.guests).collect();
        guests.sort_unstable();
        guests.dedup();
        let mut out = String::new();
        for app in &apps {
            let runs_at = self
                .points
                .iter()
                .find(|p| p.app == *app)
                .map_or(0, |p| p.millis.len());
            let what = if *app == "noop" {
                "create → gone"
            } else {
                "create → first reply"
            };
            let _ = writeln!(
                out,
                "{app} ({what}): median ms of {}, by guests running",
                runs(runs_at)
            );
            let _ = write!(out, "{:>8}", "guests");
            for t in &toolstacks {
                let _ = write!(out, " {t:>22}");
            }
            out.push('\n');
            for k in &guests {
                let _ = write!(out, "{k:>8}");
                for t in &toolstacks {
                    match self.point(t, app, *k).and_then(Point::median) {
                        Some(median) => {
                            let _ = write!(out, " {median:>22.1}");
                        }
                        None => {
                            let _ = write!(out, " {:>22}", "-");
                        }
                    }
                }
                out.push('\n');
            }
            let _ = write!(out, "{:>8}", "growth");
            for t in &toolstacks {
                let _ = write!(out, " {:>22}", growth(&self.line(t, app)));
            }
            out.push_str("\n\n");
        }
        for stop in &self.stops {
            let _ = writeln!(
                out,
                "{} stopped at {} guests running: the {} median, {:.0} ms, passed --max-ms {max_ms}",
                stop.toolstack, stop.guests, stop.app, stop.median
            );
        }
        for (t, k, secs) in &self.destroyed {
            let _ = writeln!(
                out,
                "{t}: destroying its {k} background guests took {secs:.0} s"
            );
        }
        out.push('\n');
        out.push_str(&self.costs_table());
        for t in &toolstacks {
            for app in &apps {
                out.push_str(&self.steps_table(t, app));
            }
        }
        out
    }

    /// dom0's memory per guest for each toolstack and process: the change from the
    /// first step to the last, over the guests added.
    fn costs_table(&self) -> String {
        let mut out = String::from(
            "dom0's memory per running guest, KiB: the change over a toolstack's climb over \
             the guests it added.\n\
             RSS, and PSS, which splits a shared page among the processes that map it (a \
             daemon's PSS falls as xl's monitors map\n\
             the same libraries). A daemon keeps what it grew to: a row's first reading \
             comes after the rows above.\n",
        );
        let _ = writeln!(
            out,
            "{:<22} {:<12} {:>7} {:>11} {:>11} {:>11} {:>9} {:>9}",
            "toolstack",
            "process",
            "guests",
            "processes",
            "RSS first",
            "RSS last",
            "RSS/guest",
            "PSS/guest"
        );
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for c in &self.costs {
            if !seen.contains(&(c.toolstack.as_str(), c.process.as_str())) {
                seen.push((&c.toolstack, &c.process));
            }
        }
        for (t, process) in seen {
            let mut rows: Vec<&Cost> = self
                .costs
                .iter()
                .filter(|c| c.toolstack == t && c.process == process)
                .collect();
            rows.sort_by_key(|c| c.guests);
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                continue;
            };
            if first.count == 0 && last.count == 0 {
                continue;
            }
            let _ = writeln!(
                out,
                "{t:<22} {process:<12} {:>7} {:>11} {:>11} {:>11} {:>9} {:>9}",
                last.guests,
                format!("{} → {}", first.count, last.count),
                first.rss_kib,
                last.rss_kib,
                per_guest(first.rss_kib, last.rss_kib, last.guests - first.guests),
                per_guest(first.pss_kib, last.pss_kib, last.guests - first.guests),
            );
        }
        out
    }

    /// The steps chaos timed for one toolstack and app, at the first and last step.
    fn steps_table(&self, toolstack: &str, app: &str) -> String {
        let line = self.line(toolstack, app);
        let (Some(first), Some(last)) = (line.first(), line.last()) else {
            return String::new();
        };
        if first.steps.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "\n{toolstack} {app}: per step, median ms at {} and at {} guests running\n",
            first.guests, last.guests
        );
        let mut names: Vec<&str> = first.steps.steps.iter().map(|(n, _)| n.as_str()).collect();
        for (name, _) in &last.steps.steps {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        for name in names {
            let cell = |p: &Point| {
                p.steps
                    .median(name)
                    .map_or("-".into(), |m| format!("{m:.1}"))
            };
            let _ = writeln!(out, "  {:>9} {:>9}  {name}", cell(first), cell(last));
        }
        out
    }

    /// `toolstack,guests,app,run,ms`, a line per timed run.
    pub fn csv(&self) -> String {
        let mut out = String::from("toolstack,guests,app,run,ms\n");
        for p in &self.points {
            for (run, ms) in p.millis.iter().enumerate() {
                let _ = writeln!(out, "{},{},{},{run},{ms:.3}", p.toolstack, p.guests, p.app);
            }
        }
        out
    }

    /// `toolstack,guests,process,processes,rss_kib,pss_kib`, a line per process name
    /// and step.
    pub fn dom0_csv(&self) -> String {
        let mut out = String::from("toolstack,guests,process,processes,rss_kib,pss_kib\n");
        for c in &self.costs {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{}",
                c.toolstack, c.guests, c.process, c.count, c.rss_kib, c.pss_kib
            );
        }
        out
    }

    /// A plot per app: median creation time against guests running, a line per
    /// toolstack, every run a dot.
    pub fn figures(&self) -> Vec<(String, Lines)> {
        let (toolstacks, apps) = self.names();
        apps.iter()
            .map(|app| {
                let lines = toolstacks
                    .iter()
                    .map(|t| {
                        let points = self.line(t, app);
                        Line {
                            label: (*t).to_owned(),
                            colour: toolstacks::index_of(t),
                            points: points
                                .iter()
                                .filter_map(|p| Some((f64::from(p.guests), p.median()?)))
                                .collect(),
                            dots: points
                                .iter()
                                .flat_map(|p| p.millis.iter().map(|ms| (f64::from(p.guests), *ms)))
                                .collect(),
                        }
                    })
                    .collect();
                let what = if *app == "noop" {
                    "create → gone"
                } else {
                    "create → first reply"
                };
                (
                    (*app).to_owned(),
                    Lines {
                        title: format!("{app}: {what} as guests accumulate (QEMU TCG)"),
                        x_desc: "guests running".into(),
                        y_desc: "ms (line: median; dots: runs)".into(),
                        lines,
                    },
                )
            })
            .collect()
    }
}

/// KiB per guest between two readings, one decimal; `-` without guests added.
fn per_guest(first: u64, last: u64, guests: u32) -> String {
    if guests == 0 {
        return "-".into();
    }
    // Memory readings in KiB: far below f64's exact range.
    format!("{:.1}", (last as f64 - first as f64) / f64::from(guests))
}

/// How a line's median grew from its first step to its last: `+N ms/100` and the ratio.
fn growth(points: &[&Point]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return "-".into();
    };
    let (Some(a), Some(b)) = (first.median(), last.median()) else {
        return "-".into();
    };
    if last.guests == first.guests || a <= 0.0 {
        return "-".into();
    }
    let per_100 = (b - a) / f64::from(last.guests - first.guests) * 100.0;
    format!("{per_100:+.0}/100 ({:.2}x)", b / a)
}

#[cfg(test)]
#[path = "density_report_tests.rs"]
mod tests;
