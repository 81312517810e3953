//! `cargo xtask bench boot`: boot times of each toolstack, side by side, in one lab run:
//! xl, chaos with the Xenstore device method, chaos with NoXS.
//!
//! Two measures, both timed in dom0 by `bootbench`, the same way for every toolstack:
//! - **noop**: create → the guest ran (it powers off at once) → its domain is gone;
//! - **daytime**: create → the first daytime line received in dom0 over TCP.
//!
//! The lab's dom0 has entropy (virtio-rng), so xl does not wait 3 s per create for a
//! random UUID (`shared/notes/xen-lab.md`). Absolute times are those of QEMU TCG:
//! compare the ratios, which come from the same run.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::build::{self, GuestImage};
use crate::lab;
use crate::util::target_dir;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Boot times per toolstack: median and p90, ratio to xl; CSV and SVG under
    /// target/bench/.
    Boot(BootArgs),
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Timed runs per toolstack and app (after one warm-up run).
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
}

impl BenchCmd {
    pub fn run(&self) -> Result<()> {
        match self {
            BenchCmd::Boot(args) => boot(args),
        }
    }
}

/// A toolstack and how it creates the two guests.
struct Toolstack {
    name: &'static str,
    /// Create the noop guest and return once its domain is gone.
    noop: &'static str,
    /// Create the daytime guest and return once it is running.
    daytime: &'static str,
    /// Remove the daytime guest (untimed).
    cleanup: &'static str,
}

const XL: Toolstack = Toolstack {
    name: "xl",
    noop: "xl create -F /tmp/bench/noop.cfg",
    daytime: "xl create /tmp/bench/daytime.cfg",
    cleanup: "xl destroy bench-daytime",
};

const CHAOS: Toolstack = Toolstack {
    name: "chaos[Xenstore]",
    noop: "chaos create --wait /tmp/bench/noop.json",
    daytime: "chaos create /tmp/bench/daytime.json",
    cleanup: "chaos destroy bench-daytime",
};

/// chaos with NoXS: no Xenstore on the guest's path (xenstored still runs in this lab,
/// for the rows above, but neither chaos nor the guest talks to it).
const CHAOS_NOXS: Toolstack = Toolstack {
    name: "chaos[NoXS]",
    noop: "chaos create --wait /tmp/bench/noop-noxs.json",
    daytime: "chaos create /tmp/bench/daytime-noxs.json",
    cleanup: "chaos destroy bench-daytime",
};

/// The guests' configurations, one per toolstack, written in dom0 by the job.
const CONFIGS: &str = r#"mkdir -p /tmp/bench
# Let the guest's gratuitous ARP create dom0's neighbour entry (bootbench waits for it
# before connecting; see bootbench's docs).
echo 1 >/proc/sys/net/ipv4/conf/all/arp_accept
echo 1 >/proc/sys/net/ipv4/conf/xenbr0/arp_accept
cat >/tmp/bench/noop.cfg <<EOF
name = "bench-noop"
kernel = "/apps/noop"
memory = 4
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
EOF
cat >/tmp/bench/daytime.cfg <<EOF
name = "bench-daytime"
kernel = "/apps/daytime"
memory = 8
vcpus = 1
vif = ['bridge=xenbr0,mac=MAC']
extra = "ip=10.0.2.16/24 gw=10.0.2.2"
EOF
cat >/tmp/bench/noop.json <<EOF
{"name": "bench-noop", "kernel": "/apps/noop", "cmdline": "", "memory": 4, "vcpus": 1}
EOF
cat >/tmp/bench/daytime.json <<EOF
{"name": "bench-daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24 gw=10.0.2.2",
 "memory": 8, "vcpus": 1, "vifs": [{"ip": "10.0.2.16", "mac": "MAC", "bridge": "xenbr0"}]}
EOF
cat >/tmp/bench/noop-noxs.json <<EOF
{"name": "bench-noop", "kernel": "/apps/noop", "cmdline": "", "memory": 4, "vcpus": 1,
 "xen": {"dev_method": "noxs"}}
EOF
cat >/tmp/bench/daytime-noxs.json <<EOF
{"name": "bench-daytime", "kernel": "/apps/daytime", "cmdline": "ip=10.0.2.16/24 gw=10.0.2.2",
 "memory": 8, "vcpus": 1, "vifs": [{"ip": "10.0.2.16", "mac": "MAC", "bridge": "xenbr0"}],
 "xen": {"dev_method": "noxs"}}
EOF
"#;

fn job(toolstacks: &[&Toolstack], runs: u32) -> String {
    let mut job = CONFIGS.replace("MAC", lab::GUEST_MAC);
    for t in toolstacks {
        let _ = writeln!(
            job,
            "bootbench --label {name}/noop --runs {runs} until-exit '{noop}' || exit 1\n\
             bootbench --label {name}/daytime --runs {runs} --cleanup '{cleanup}' until-reply --addr 10.0.2.16:13 \
             '{daytime}' || exit 1",
            name = t.name,
            noop = t.noop,
            cleanup = t.cleanup,
            daytime = t.daytime,
        );
    }
    job
}

/// One timed series.
#[derive(Debug, Clone)]
struct Series {
    toolstack: String,
    app: String,
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

/// Nearest-rank percentile.
fn percentile(values: &[f64], pct: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Collect `bootbench LABEL RUN MS` lines into series, in order of appearance.
fn parse(lines: &[String]) -> Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for line in lines {
        let Some(rest) = line.strip_prefix("bootbench ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let [label, _run, millis] = fields[..] else {
            bail!("odd bootbench line {line:?}")
        };
        let (toolstack, app) = label
            .split_once('/')
            .with_context(|| format!("odd label in {line:?}"))?;
        let millis: f64 = millis
            .parse()
            .with_context(|| format!("odd time in {line:?}"))?;
        match series
            .iter_mut()
            .find(|s| s.toolstack == toolstack && s.app == app)
        {
            Some(s) => s.millis.push(millis),
            None => series.push(Series {
                toolstack: toolstack.into(),
                app: app.into(),
                millis: vec![millis],
            }),
        }
    }
    Ok(series)
}

fn boot(args: &BootArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let apps = lab::build_all_apps()?;
    for needed in ["noop", "daytime"] {
        if !apps.iter().any(|app: &GuestImage| app.name == needed) {
            bail!("the benchmark needs apps/{needed}");
        }
    }
    let have_chaos = build::build_host_tools()?
        .iter()
        .any(|tool| tool.ends_with("chaos"));
    let toolstacks: Vec<&Toolstack> = if have_chaos {
        vec![&XL, &CHAOS, &CHAOS_NOXS]
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
    let options = lab::ExecOptions {
        timeout: Duration::from_secs(1800),
        verbose: false,
        forwards: Vec::new(),
        control: None,
        noxs: false,
        disks: Vec::new(),
        memory: lab::LabMemory::DEFAULT,
    };
    let mut output = Vec::new();
    let end = lab::exec(
        &job(&toolstacks, args.runs),
        &apps,
        &options,
        &mut |line| match line {
            lab::Line::Stdout(text) => {
                if text.starts_with("bootbench ") {
                    eprint!(".");
                }
                output.push(text.to_owned());
            }
            lab::Line::Stderr(text) => eprintln!("{text}"),
            lab::Line::Xen(_) => {}
        },
    )?;
    eprintln!();
    if !matches!(end, lab::ExecEnd::Exited(0)) {
        bail!("the benchmark job failed ({end:?}):\n{}", output.join("\n"));
    }
    let series = parse(&output)?;
    let report = table(&series);
    print!("{report}");
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("boot.csv"), csv(&series))?;
    std::fs::write(dir.join("boot.svg"), svg(&series))?;
    eprintln!("bench: wrote {0}/boot.csv and {0}/boot.svg", dir.display());
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

fn csv(series: &[Series]) -> String {
    let mut out = String::from("app,toolstack,run,ms\n");
    for s in series {
        for (run, ms) in s.millis.iter().enumerate() {
            let _ = writeln!(out, "{},{},{run},{ms:.3}", s.app, s.toolstack);
        }
    }
    out
}

/// A bar chart: one group per app, one bar per toolstack (median), a tick at p90.
fn svg(series: &[Series]) -> String {
    const BAR: f64 = 36.0;
    const GAP: f64 = 28.0;
    const HEIGHT: f64 = 260.0;
    const LEFT: f64 = 60.0;
    let top = series.iter().map(Series::p90).fold(1.0, f64::max) * 1.1;
    let colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];
    let toolstacks: Vec<&str> = series.iter().fold(Vec::new(), |mut names, s| {
        if !names.contains(&s.toolstack.as_str()) {
            names.push(&s.toolstack);
        }
        names
    });
    let apps: Vec<&str> = series.iter().fold(Vec::new(), |mut names, s| {
        if !names.contains(&s.app.as_str()) {
            names.push(&s.app);
        }
        names
    });
    let group = toolstacks.len() as f64 * BAR + GAP;
    let width = (LEFT + apps.len() as f64 * group + 160.0).max(560.0);
    let y = |ms: f64| 20.0 + HEIGHT * (1.0 - ms / top);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        h = HEIGHT + 70.0
    );
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"14\">boot time, median (bar) and p90 (tick), ms — QEMU TCG</text>"
    );
    for tick in 0..=4 {
        let ms = top * f64::from(tick) / 4.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{x2:.0}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{ms:.0}</text>",
            x2 = width - 150.0,
            yy = y(ms),
            tx = LEFT - 4.0,
            ty = y(ms) + 4.0
        );
    }
    for (a, app) in apps.iter().enumerate() {
        let x0 = LEFT + 10.0 + a as f64 * group;
        for (t, toolstack) in toolstacks.iter().enumerate() {
            let Some(s) = series
                .iter()
                .find(|s| s.app == *app && s.toolstack == *toolstack)
            else {
                continue;
            };
            let x = x0 + t as f64 * BAR;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{w:.0}\" height=\"{hh:.1}\" fill=\"{c}\"/>\
                 <line x1=\"{x:.1}\" x2=\"{xe:.1}\" y1=\"{yp:.1}\" y2=\"{yp:.1}\" stroke=\"black\" stroke-width=\"2\"/>",
                yy = y(s.median()),
                w = BAR - 6.0,
                hh = HEIGHT + 20.0 - y(s.median()),
                c = colours[t % colours.len()],
                xe = x + BAR - 6.0,
                yp = y(s.p90())
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{yy:.0}\">{app}</text>",
            x = x0,
            yy = HEIGHT + 40.0
        );
    }
    for (t, toolstack) in toolstacks.iter().enumerate() {
        let lx = width - 140.0;
        let ly = 40.0 + t as f64 * 20.0;
        let _ = writeln!(
            out,
            "<rect x=\"{lx}\" y=\"{ry}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{tx}\" y=\"{ty}\">{toolstack}</text>",
            ry = ly - 10.0,
            c = colours[t % colours.len()],
            tx = lx + 18.0,
            ty = ly
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 5.0);
        assert_eq!(percentile(&values, 90.0), 9.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
    }

    #[test]
    fn series_and_ratios_from_bootbench_lines() {
        let out = lines(
            "noise\nbootbench xl/noop 0 500.0\nbootbench xl/noop 1 700.0\n\
             bootbench chaos[Xenstore]/noop 0 100.0\nbootbench chaos[Xenstore]/noop 1 140.0\n\
             bootbench chaos[NoXS]/noop 0 60.0\nbootbench xl/daytime 0 900.5",
        );
        let series = parse(&out).unwrap();
        assert_eq!(series.len(), 4);
        assert_eq!(series[0].millis, [500.0, 700.0]);
        assert_eq!(ratio_to(&series, &series[1], "xl"), "0.20x");
        assert_eq!(ratio_to(&series, &series[2], "chaos[Xenstore]"), "0.60x");
        assert_eq!(ratio_to(&series, &series[3], "chaos[Xenstore]"), "-");
        let report = table(&series);
        assert!(report.contains("noop     chaos[NoXS]"), "{report}");
        assert!(report.contains("0.12x"), "{report}");
        assert!(csv(&series).contains("daytime,xl,0,900.500"));
        assert!(svg(&series).starts_with("<svg"));
        assert!(parse(&lines("bootbench xl/noop zero")).is_err());
    }
}
