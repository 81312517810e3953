//! The steps `chaos -v` times, per series: bootbench passes on what a timed create
//! wrote to stderr (`bootbench-out LABEL RUN LINE`), [`parse_line`] reads chaos's
//! lines, and [`Profile`] keeps each step's time per run, for its median.
//!
//! chaos prints a step as `chaos:    1.234 ms  NAME` (` (failed)` after a failed one),
//! and a time since its process started as `chaos:      150 ms  WHAT (since the process
//! started, ±10 ms)`: `main` first (the exec and the dynamic loader), then `created
//! NAME`. The process-start share is `main` against `created`. The guest's own times,
//! which the boot bench reads from its console log, come as `guest:   1.234 ms  WHAT`.

use std::fmt::Write as _;

/// What a `chaos -v` line says.
#[derive(Debug, Clone, PartialEq)]
pub enum ChaosLine<'a> {
    /// A step and how long it took.
    Step {
        name: &'a str,
        ms: f64,
        failed: bool,
    },
    /// The time from the process's start to WHAT.
    SinceStart { what: &'a str, ms: f64 },
    /// A time the guest itself measured (from its first instruction).
    Guest { what: &'a str, ms: f64 },
}

const SINCE_START: &str = " (since the process started, ±10 ms)";

/// Read one line chaos printed with `-v`; `None` for anything else (its other messages).
pub fn parse_line(line: &str) -> Option<ChaosLine<'_>> {
    let (guest, rest) = match line.strip_prefix("guest:") {
        Some(rest) => (true, rest),
        None => (false, line.strip_prefix("chaos:")?),
    };
    let (number, rest) = rest.trim_start().split_once(" ms  ")?;
    let ms: f64 = number.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    let rest = rest.trim_end();
    if guest {
        return (!rest.is_empty()).then_some(ChaosLine::Guest { what: rest, ms });
    }
    if let Some(what) = rest.strip_suffix(SINCE_START) {
        return Some(ChaosLine::SinceStart { what, ms });
    }
    let (name, failed) = match rest.strip_suffix(" (failed)") {
        Some(name) => (name, true),
        None => (rest, false),
    };
    (!name.is_empty()).then_some(ChaosLine::Step { name, ms, failed })
}

/// The name a line's time is kept under: a step's own, or a mark since the process
/// started (`created NAME` loses the guest's name, so every run shares it).
fn key(line: &ChaosLine<'_>) -> String {
    match line {
        ChaosLine::Step { name, failed, .. } => {
            format!("{name}{}", if *failed { " (failed)" } else { "" })
        }
        ChaosLine::SinceStart { what, .. } => {
            let what = what.split_once(' ').map_or(*what, |(first, _)| first);
            format!("{MARK}{what}")
        }
        ChaosLine::Guest { what, .. } => format!("guest: {what}"),
    }
}

/// Marks since the process started start with this, in a profile's step names.
pub const MARK: &str = "process start → ";

/// The steps of one series, each with its total time in each run that had it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// In the order first seen.
    pub steps: Vec<(String, Vec<(u32, f64)>)>,
}

impl Profile {
    /// Add a line of run `run`: a step seen twice in a run counts once, with both times.
    pub fn add(&mut self, run: u32, line: &ChaosLine<'_>) {
        let ms = match line {
            ChaosLine::Step { ms, .. }
            | ChaosLine::SinceStart { ms, .. }
            | ChaosLine::Guest { ms, .. } => *ms,
        };
        let key = key(line);
        let runs = match self.steps.iter_mut().find(|(name, _)| *name == key) {
            Some((_, runs)) => runs,
            None => {
                self.steps.push((key, Vec::new()));
                &mut self.steps.last_mut().expect("just pushed").1
            }
        };
        match runs.iter_mut().find(|(r, _)| *r == run) {
            Some((_, total)) => *total += ms,
            None => runs.push((run, ms)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The median of a step over the runs that had it.
    pub fn median(&self, step: &str) -> Option<f64> {
        let (_, runs) = self.steps.iter().find(|(name, _)| name == step)?;
        let times: Vec<f64> = runs.iter().map(|(_, ms)| *ms).collect();
        bootbench::median(&times)
    }

    /// Each step's median, one line each (`runs` timed in all: a step some runs lacked
    /// says in how many it was), then the process-start share when both marks are there.
    pub fn report(&self, title: &str, runs: usize) -> String {
        let mut out = format!("{title}: per step, median ms of {}\n", super::runs(runs));
        for (name, times) in &self.steps {
            let Some(median) = self.median(name) else {
                continue;
            };
            let partial = if times.len() == runs {
                String::new()
            } else {
                format!("  (in {} of {})", times.len(), super::runs(runs))
            };
            let _ = writeln!(out, "  {median:>9.1}  {name}{partial}");
        }
        let main = self.median(&format!("{MARK}main"));
        let created = self.median(&format!("{MARK}created"));
        if let (Some(main), Some(created)) = (main, created)
            && created > 0.0
        {
            let _ = writeln!(
                out,
                "  process start share: {main:.0} of {created:.0} ms to created ({:.0} %), \
                 before chaos's main runs",
                main / created * 100.0
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_lines_are_read() {
        assert_eq!(
            parse_line("chaos:   26.125 ms  check name"),
            Some(ChaosLine::Step {
                name: "check name",
                ms: 26.125,
                failed: false
            })
        );
        assert_eq!(
            parse_line("chaos:  102.000 ms  xendevd noxs_create (failed)"),
            Some(ChaosLine::Step {
                name: "xendevd noxs_create",
                ms: 102.0,
                failed: true
            })
        );
        assert_eq!(
            parse_line("chaos:      150 ms  main (since the process started, ±10 ms)"),
            Some(ChaosLine::SinceStart {
                what: "main",
                ms: 150.0
            })
        );
        assert_eq!(
            parse_line(
                "chaos:      340 ms  created bench-noop (since the process started, ±10 ms)"
            ),
            Some(ChaosLine::SinceStart {
                what: "created bench-noop",
                ms: 340.0
            })
        );
        assert_eq!(
            parse_line("guest:    12.500 ms  first instruction → listening"),
            Some(ChaosLine::Guest {
                what: "first instruction → listening",
                ms: 12.5
            })
        );
        for other in [
            "guest: 1.0 ms  ",
            "chaos: created bench-noop (domain 4)",
            "chaos: bench-noop (domain 4) powered off",
            "chaos: NaN ms  x",
            "chaos: -3 ms  x",
            "chaos:   1.0 ms  ",
            "xl: 1.0 ms  x",
            "",
        ] {
            assert_eq!(parse_line(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_guests_times_are_steps_of_their_own() {
        let mut profile = Profile::default();
        for (run, ms) in [(0, "20.0"), (1, "30.0"), (2, "25.0")] {
            let line = format!("guest:   {ms} ms  first instruction → listening");
            profile.add(run, &parse_line(&line).unwrap());
        }
        assert_eq!(
            profile.median("guest: first instruction → listening"),
            Some(25.0)
        );
    }

    #[test]
    fn profiles_take_medians_per_step() {
        let mut profile = Profile::default();
        let runs = [
            "chaos:      150 ms  main (since the process started, ±10 ms)\n\
             chaos:   20.000 ms  check name\n\
             chaos:    5.000 ms  xendevd release\n\
             chaos:    3.000 ms  xendevd release\n\
             chaos:      300 ms  created bench-noop (since the process started, ±10 ms)",
            "chaos:      170 ms  main (since the process started, ±10 ms)\n\
             chaos:   30.000 ms  check name\n\
             chaos:      340 ms  created bench-noop (since the process started, ±10 ms)",
            "chaos:      160 ms  main (since the process started, ±10 ms)\n\
             chaos:   25.000 ms  check name\n\
             chaos:    9.000 ms  xendevd release\n\
             chaos:      320 ms  created bench-noop (since the process started, ±10 ms)",
        ];
        for (run, text) in (0..).zip(runs) {
            for line in text.lines().filter_map(parse_line) {
                profile.add(run, &line);
            }
        }
        let names: Vec<&str> = profile.steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "process start → main",
                "check name",
                "xendevd release",
                "process start → created"
            ]
        );
        assert_eq!(profile.median("check name"), Some(25.0));
        // Twice in run 0: 8 ms; 9 ms in run 2; lower middle of two.
        assert_eq!(profile.median("xendevd release"), Some(8.0));
        let report = profile.report("chaos[NoXS] noop", 3);
        assert!(report.contains("       25.0  check name\n"), "{report}");
        assert!(
            report.contains("xendevd release  (in 2 of 3 runs)"),
            "{report}"
        );
        assert!(
            report.contains("process start share: 160 of 320 ms to created (50 %)"),
            "{report}"
        );
        assert!(Profile::default().is_empty());
    }
}
