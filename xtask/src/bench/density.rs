//! `cargo xtask bench density`: creation time against the number of guests running,
//! per toolstack, in one lab (the LightVM paper's density figure), and what dom0
//! spends per running guest.
//!
//! For each toolstack in turn, starting from none: background guests are added in
//! steps of `--step` up to `--guests`, and at every step (0 included) `--runs` noop
//! creates (create → gone) and as many daytime creates (create → first TCP reply) are
//! timed by bootbench, exactly as `bench boot` times them, followed by the resident
//! and proportional memory of dom0's daemons (xendevd, xenstored, xenconsoled, a chaos
//! daemon when one runs) and of xl's per-guest monitor processes, read from /proc in
//! dom0, and dom0's used memory. Then every background guest is destroyed (and
//! counted gone) before the next toolstack starts.
//!
//! **Background guests** are made by the toolstack being measured: the noop app, 4
//! MiB, no devices, created paused. Paused, because a running guest of ours is either
//! gone at once (noop powers off) or takes timer interrupts that QEMU's TCG emulates at
//! 10–50 times their cost on this 2-core machine, so a thousand idle guests would
//! measure the emulator, not the toolstack. What grows with the guests — Xen's domain
//! list, Xenstore's nodes and watches, xenconsoled's and xendevd's per-domain state,
//! xl's monitor processes — is all there for a paused guest, which is what
//! `shared/notes/xen-lab.md`'s baseline measured. xl keeps its monitor process per
//! guest, as it does for every guest it creates without `-F`.
//!
//! **Stop rule** (`--max-ms`): a toolstack adds no more guests once the median of
//! either app at a step passes the limit ([`bootbench::passes_limit`], applied in dom0
//! by bootbench); the table says where. xl reaches it first: its creates grow by about
//! 11 ms per running guest.
//!
//! The lab's memory follows `--guests` ([`LabMemory::for_guests`]) and so does its
//! time limit ([`timeout`]), unless `--timeout` is given. The job prints a progress
//! line per step (and per 100 guests destroyed); the report is in [`super::density_report`].

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use clap::Args;
use clap::builder::PossibleValuesParser;

use super::build_for_bench;
use super::density_report::Density;
use super::plot;
use super::toolstacks::{self, TOOLSTACKS, Toolstack};
use crate::lab::{self, LabMemory};
use crate::util::target_dir;

#[derive(Debug, Args)]
pub struct DensityArgs {
    /// Background guests to reach, per toolstack.
    #[arg(long, default_value_t = 1000)]
    pub guests: u32,
    /// Guests added between two measurements.
    #[arg(long, default_value_t = 100)]
    pub step: u32,
    /// Timed runs of each app at every step.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// A toolstack to measure (repeatable; default: all, in the table's order).
    #[arg(long = "toolstack", value_name = "NAME", value_parser = PossibleValuesParser::new(toolstacks::names()))]
    pub toolstacks: Vec<String>,
    /// A toolstack stops adding guests once an app's median at a step passes this.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub max_ms: u32,
    /// Give up after this many seconds (default: an estimate from the guests, steps
    /// and runs at xl's pace).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// The guest counts measured: 0, `step`, 2 × `step`, … and `guests` last.
pub fn steps(guests: u32, step: u32) -> Result<Vec<u32>> {
    ensure!(step > 0, "--step must be at least 1");
    let mut steps: Vec<u32> = (0..=guests).step_by(step as usize).collect();
    if steps.last() != Some(&guests) {
        steps.push(guests);
    }
    Ok(steps)
}

/// A limit for the whole lab run: the boot, then for every toolstack its background
/// guests made and destroyed and its timed runs, each at xl's pace in the lab (adding
/// and destroying a guest about 1.2 s plus 8 ms per guest running, a timed create 3 s
/// plus 15 ms per guest running, `shared/notes/xen-lab.md`), half as much again to
/// spare. An upper bound: chaos is several times faster and xl stops at `--max-ms`.
pub fn timeout(steps: &[u32], runs: u32, toolstacks: usize) -> Duration {
    let last = steps.last().copied().unwrap_or(0);
    let background: f64 = (0..last).map(|k| 1.2 + 0.008 * f64::from(k)).sum();
    let timed: f64 = steps
        .iter()
        .map(|&k| f64::from(2 * runs + 2) * (3.0 + 0.015 * f64::from(k)))
        .sum();
    let secs = 120.0 + (background + timed) * toolstacks as f64;
    Duration::from_secs_f64(secs * 1.5)
}

/// The helpers of the density job, after [`toolstacks::prelude`]: `climb` takes one
/// toolstack (`TS`, `ADD`, `NAMES`, `DESTROY`, `NOOP`, `DAYTIME`, `SHOW`) through every
/// step of `STEPS` and removes its guests; `dom0_costs` prints the memory lines.
const CLIMB: &str = r#"dom0_costs() { # GUESTS
	for p in xendevd xenstored xenconsoled xl chaos; do
		n=0 files=''
		for pid in $(pidof $p); do n=$((n + 1)) files="$files /proc/$pid/smaps_rollup"; done
		if [ $n -eq 0 ]; then echo "density-dom0 $TS $1 $p 0 0 0"; continue; fi
		# cat goes on past a process that ended meanwhile.
		echo "density-dom0 $TS $1 $p $n $(cat $files 2>/dev/null |
			awk '/^Rss:/ { r += $2 } /^Pss:/ { p += $2 } END { print r + 0, p + 0 }')"
	done
	echo "density-dom0 $TS $1 dom0-used 1 $(awk '/^MemTotal:/ { t = $2 }
		/^MemAvailable:/ { a = $2 } END { print t - a, t - a }' /proc/meminfo)"
}
timed() { # APP GUESTS WARMUP: bootbench's status (3: past the limit)
	case $1 in
	noop) bootbench --label "$TS/noop/$2" --runs $RUNS --warmup $3 $SHOW --limit-ms $MAX \
		--cleanup "$SETTLE" until-exit "$NOOP" ;;
	daytime) bootbench --label "$TS/daytime/$2" --runs $RUNS --warmup $3 $SHOW --limit-ms $MAX \
		--cleanup "$DESTROY bench-daytime; $SETTLE" until-reply --addr 10.0.2.16:13 "$DAYTIME" ;;
	esac
}
climb() {
	echo "density-begin $TS"
	have=0 batch=0 warmup=1
	for k in $STEPS; do
		t=$(now)
		if [ $k -gt $have ]; then
			$ADD $batch $((k - have)) ||
				{ echo "density: $TS: adding $((k - have)) guests to $have failed" >&2; return 1; }
			batch=$((batch + 1))
			$SETTLE || return 1
		fi
		n=$($NAMES | wc -l)
		[ "$n" -eq $k ] ||
			{ echo "density: $TS: $n background guests running, $k expected" >&2; return 1; }
		have=$k
		echo "density-guests $TS $k $(since $t)"
		over=0
		for app in noop daytime; do
			timed $app $k $warmup
			case $? in
			0) ;;
			3) over=1 ;;
			*) echo "density: $TS: timing $app with $k guests running failed" >&2; return 1 ;;
			esac
		done
		warmup=0
		dom0_costs $k
		echo "density-measured $TS $k"
		if [ $over -eq 1 ]; then
			echo "density-stop $TS $k"
			break
		fi
	done
	t=$(now)
	$NAMES >/tmp/bench/names
	total=$(wc -l </tmp/bench/names) done=0
	while read -r name; do
		$DESTROY "$name" >/dev/null 2>/tmp/bench/destroy.err ||
			{ echo "density: $TS: destroying $name failed: $(cat /tmp/bench/destroy.err)" >&2; return 1; }
		done=$((done + 1))
		[ $((done % 100)) -eq 0 ] && echo "density-destroying $TS $done $total"
	done </tmp/bench/names
	left=$($NAMES | wc -l)
	[ "$left" -eq 0 ] ||
		{ echo "density: $TS: $left background guests left after destroying them" >&2; return 1; }
	echo "density-end $TS $have $(since $t)"
}
"#;

/// The job: every toolstack climbs the steps in turn, between its setup and teardown.
fn job(toolstacks: &[&Toolstack], steps: &[u32], runs: u32, max_ms: u32) -> String {
    let mut job = toolstacks::prelude();
    let steps: Vec<String> = steps.iter().map(u32::to_string).collect();
    let _ = writeln!(
        job,
        "RUNS={runs} MAX={max_ms} STEPS='{}'\n{CLIMB}",
        steps.join(" ")
    );
    for t in toolstacks {
        let _ = writeln!(
            job,
            "TS='{}' ADD='{}' NAMES='{}' DESTROY='{}' NOOP='{}' DAYTIME='{}' SHOW='{}' \
             SETTLE='{}'",
            t.name,
            t.add_background,
            t.background_names,
            t.destroy,
            t.noop,
            t.daytime,
            if t.prints_steps { "--show-stderr" } else { "" },
            t.settle,
        );
        toolstacks::push_snippet(&mut job, t.setup);
        let _ = writeln!(job, "climb || exit 1");
        toolstacks::push_snippet(&mut job, t.teardown);
    }
    job
}

/// The rows `--toolstack` names, in the table's order (all when none is named).
fn chosen(names: &[String]) -> Vec<&'static Toolstack> {
    TOOLSTACKS
        .into_iter()
        .filter(|t| names.is_empty() || names.iter().any(|n| n == t.name))
        .collect()
}

/// Run the density job in one lab: every toolstack of `toolstacks` through `steps`.
fn measure(
    toolstacks: &[&'static Toolstack],
    steps: &[u32],
    runs: u32,
    max_ms: u32,
    timeout_secs: Option<u64>,
) -> Result<Density> {
    let guests = steps.last().copied().unwrap_or(0);
    let (apps, have_chaos) = build_for_bench()?;
    if !have_chaos && toolstacks.iter().any(|t| t.name != toolstacks::XL.name) {
        bail!("chaos did not build, so only --toolstack xl can run");
    }
    let timeout = timeout_secs.map_or_else(
        || timeout(steps, runs, toolstacks.len()),
        Duration::from_secs,
    );
    // The background guests, and the daytime guest (8 MiB) beside them.
    let memory = LabMemory::for_guests(guests + 2, 4);
    eprintln!(
        "bench: density of {} at {} running guests, {} runs of noop and daytime at each; \
         lab of {} MiB, time limit {} s",
        toolstacks
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
            .join(", "),
        steps
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        runs,
        memory.mib(),
        timeout.as_secs()
    );
    let options = lab::ExecOptions {
        timeout,
        verbose: false,
        forwards: Vec::new(),
        control: None,
        noxs: false,
        disks: Vec::new(),
        memory,
        pair: None,
    };
    let started = Instant::now();
    let mut density = Density::default();
    let mut output = Vec::new();
    let mut failure = None;
    let end = lab::exec(
        &job(toolstacks, steps, runs, max_ms),
        &apps,
        &options,
        &mut |line| match line {
            lab::Line::Stdout(text) => {
                output.push(text.to_owned());
                match density.feed(text) {
                    Ok(Some(progress)) => {
                        let secs = started.elapsed().as_secs();
                        eprintln!("bench [{:>3}:{:02}] {progress}", secs / 60, secs % 60);
                    }
                    Ok(None) => {}
                    Err(err) => {
                        failure.get_or_insert(err);
                    }
                }
            }
            lab::Line::Stderr(text) => eprintln!("{text}"),
            lab::Line::Xen(_) => {}
        },
    )?;
    if let Some(err) = failure {
        return Err(err.context("reading the density job's output"));
    }
    if !matches!(end, lab::ExecEnd::Exited(0)) {
        let tail = output[output.len().saturating_sub(40)..].join("\n");
        bail!("the density job failed ({end:?}); its last lines:\n{tail}");
    }
    Ok(density)
}

/// The density smoke test of `cargo xtask test`: every toolstack to 50 guests, one run
/// of each app at 0 and 50; each must get there and time both apps at both steps.
/// Nothing is judged by its time.
pub fn smoke() -> Result<()> {
    let steps = [0, 50];
    let density = measure(&TOOLSTACKS, &steps, 1, u32::MAX, None)?;
    for t in TOOLSTACKS {
        for app in ["noop", "daytime"] {
            for guests in steps {
                ensure!(
                    density.points.iter().any(|p| p.toolstack == t.name
                        && p.app == app
                        && p.guests == guests
                        && !p.millis.is_empty()),
                    "{}: no {app} time with {guests} guests running",
                    t.name
                );
            }
        }
    }
    print!("{}", density.report(u32::MAX));
    Ok(())
}

pub fn run(args: &DensityArgs) -> Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    let steps = steps(args.guests, args.step)?;
    let toolstacks = chosen(&args.toolstacks);
    let density = measure(&toolstacks, &steps, args.runs, args.max_ms, args.timeout)?;
    print!("{}", density.report(args.max_ms));
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("density.csv"), density.csv())?;
    std::fs::write(dir.join("density-dom0.csv"), density.dom0_csv())?;
    let mut written = vec![dir.join("density.csv"), dir.join("density-dom0.csv")];
    for (app, figure) in density.figures() {
        written.extend(plot::save(&figure, &dir.join(format!("density-{app}")))?);
    }
    eprintln!(
        "bench: wrote {}",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_reach_the_guests() {
        assert_eq!(steps(1000, 100).unwrap().len(), 11);
        assert_eq!(steps(100, 50).unwrap(), [0, 50, 100]);
        assert_eq!(steps(120, 50).unwrap(), [0, 50, 100, 120]);
        assert_eq!(steps(0, 10).unwrap(), [0]);
        assert_eq!(
            steps(10, 0).unwrap_err().to_string(),
            "--step must be at least 1"
        );
    }

    #[test]
    fn the_time_limit_follows_the_guests() {
        let small = timeout(&steps(100, 50).unwrap(), 2, 3);
        let large = timeout(&steps(1000, 100).unwrap(), 5, 3);
        // A small run fits in the 20 minutes a shared lab gives it, with room.
        assert!(small > Duration::from_secs(600) && small < Duration::from_secs(1500));
        assert!(large > small * 10, "{large:?} vs {small:?}");
        assert!(timeout(&[0], 1, 1) > Duration::from_secs(120));
    }

    #[test]
    fn the_job_climbs_each_toolstack_between_its_setup_and_teardown() {
        const SPLIT: Toolstack = Toolstack {
            name: "chaos[Xenstore+split]",
            setup: Some("chaos daemon run --pool xenstore:4:1:0:0=8 &"),
            teardown: Some("chaos daemon stop"),
            ..toolstacks::CHAOS
        };
        let job = job(&[&toolstacks::XL, &SPLIT], &[0, 50, 100], 2, 5000);
        assert!(job.contains("RUNS=2 MAX=5000 STEPS='0 50 100'\n"), "{job}");
        let xl = job.find("TS='xl' ADD='bg_xl' NAMES='bg_names_xl'").unwrap();
        let setup = job.find("chaos daemon run").unwrap();
        let split = job.rfind("climb || exit 1").unwrap();
        let teardown = job.find("chaos daemon stop").unwrap();
        assert!(xl < setup && setup < split && split < teardown, "{job}");
        assert!(job.contains("SHOW='--show-stderr'"));
        assert_eq!(chosen(&[]).len(), TOOLSTACKS.len());
        let only = chosen(&["chaos[NoXS]".into(), "xl".into()]);
        assert_eq!(
            only.iter().map(|t| t.name).collect::<Vec<_>>(),
            ["xl", "chaos[NoXS]"]
        );
    }
}
