use super::*;

/// What a density job with xl (stopped at 50 guests) and chaos[NoXS] prints.
const OUTPUT: &str = "\
density-begin xl
density-guests xl 0 0.0
bootbench xl/noop/0 0 500.000
bootbench xl/noop/0 1 520.000
bootbench xl/daytime/0 0 900.000
bootbench xl/daytime/0 1 950.000
density-dom0 xl 0 xenstored 1 2000 1800
density-dom0 xl 0 xl 0 0 0
density-dom0 xl 0 chaos 0 0 0
density-measured xl 0
density-guests xl 50 31.5
bootbench xl/noop/50 0 6000.000
bootbench xl/noop/50 1 5500.000
bootbench-limit xl/noop/50 5500.000 5000
bootbench xl/daytime/50 0 6500.000
bootbench xl/daytime/50 1 6400.000
bootbench-limit xl/daytime/50 6400.000 5000
density-dom0 xl 50 xenstored 1 2500 2300
density-dom0 xl 50 xl 50 100000 40000
density-dom0 xl 50 chaos 0 0 0
density-measured xl 50
density-stop xl 50
density-end xl 50 25.0
density-begin chaos[NoXS]
density-guests chaos[NoXS] 0 0.0
bootbench-out chaos[NoXS]/noop/0 0 chaos:      150 ms  main (since the process started, ±10 ms)
bootbench-out chaos[NoXS]/noop/0 0 chaos:   26.000 ms  check name
bootbench-out chaos[NoXS]/noop/0 0 chaos: created bench-noop (domain 9)
bootbench chaos[NoXS]/noop/0 0 210.000
bootbench-out chaos[NoXS]/noop/0 1 chaos:   24.000 ms  check name
bootbench chaos[NoXS]/noop/0 1 214.000
bootbench chaos[NoXS]/daytime/0 0 400.000
bootbench chaos[NoXS]/daytime/0 1 410.000
density-dom0 chaos[NoXS] 0 xendevd 1 3000 2900
density-measured chaos[NoXS] 0
density-guests chaos[NoXS] 100 12.0
bootbench-out chaos[NoXS]/noop/100 0 chaos:   30.000 ms  check name
bootbench-out chaos[NoXS]/noop/100 0 chaos:    2.000 ms  xendevd release
bootbench chaos[NoXS]/noop/100 0 220.000
bootbench chaos[NoXS]/noop/100 1 230.000
bootbench chaos[NoXS]/daytime/100 0 420.000
bootbench chaos[NoXS]/daytime/100 1 430.000
density-dom0 chaos[NoXS] 100 xendevd 1 8000 7000
density-measured chaos[NoXS] 100
density-destroying chaos[NoXS] 100 100
density-end chaos[NoXS] 100 8.4
";

fn density() -> (Density, Vec<String>) {
    let mut density = Density::default();
    let mut progress = Vec::new();
    for line in OUTPUT.lines() {
        if let Some(message) = density.feed(line).unwrap() {
            progress.push(message);
        }
    }
    (density, progress)
}

#[test]
fn the_output_is_read_with_progress() {
    let (mut density, progress) = density();
    assert_eq!(density.points.len(), 8);
    assert_eq!(density.costs.len(), 8);
    assert_eq!(density.stops.len(), 2);
    assert_eq!(density.stops[0].app, "noop");
    assert_eq!(
        density.destroyed,
        [("xl".into(), 50, 25.0), ("chaos[NoXS]".into(), 100, 8.4)]
    );
    assert!(
        progress.contains(&"xl at 50 guests: median noop 5500 ms, daytime 6400 ms".to_owned()),
        "{progress:#?}"
    );
    assert!(
        progress.contains(&"xl stops adding guests at 50: a median passed the limit".to_owned())
    );
    assert!(progress.contains(&"chaos[NoXS]: destroyed 100 of 100 background guests".to_owned()));
    assert!(
        progress[1].starts_with("xl: 0 guests running (added in 0 s)"),
        "{progress:#?}"
    );
    assert!(density.feed("lab: something else").unwrap().is_none());
    for bad in [
        "density-guests xl many 1.0",
        "density-dom0 xl 0 xendevd 1 lots 3",
        "density-what xl",
        "density-end",
        "bootbench xl/noop 0 1.0",
    ] {
        let err = Density::default().feed(bad).unwrap_err();
        assert!(
            format!("{err:#}").contains(bad.split(' ').nth(1).unwrap_or(bad)),
            "{bad}: {err:#}"
        );
    }
}

#[test]
fn the_report_has_medians_stops_costs_and_steps() {
    let (density, _) = density();
    let report = density.report(5000);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines[0],
        "noop (create → gone): median ms of 2 runs, by guests running"
    );
    assert_eq!(
        lines[1],
        "  guests                     xl            chaos[NoXS]"
    );
    assert_eq!(
        lines[2],
        "       0                  500.0                  210.0"
    );
    assert_eq!(
        lines[3],
        "      50                 5500.0                      -"
    );
    assert_eq!(
        lines[4],
        "     100                      -                  220.0"
    );
    assert_eq!(
        lines[5],
        "  growth    +10000/100 (11.00x)        +10/100 (1.05x)"
    );
    assert!(report.contains(
        "xl stopped at 50 guests running: the noop median, 5500 ms, passed --max-ms 5000"
    ));
    assert!(report.contains("xl: destroying its 50 background guests took 25 s"));
    // xl's monitors: 100000 KiB RSS over 50 guests; xenstored 10 KiB a guest.
    assert!(
        report.contains(
            "xl                     xl                50      0 → 50           0      100000    2000.0     800.0"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "xenstored         50       1 → 1        2000        2500      10.0      10.0\n"
        ),
        "{report}"
    );
    assert!(
        !report.contains(" chaos "),
        "processes never seen are left out: {report}"
    );
    assert!(
        report.contains("chaos[NoXS] noop: per step, median ms at 0 and at 100 guests running")
    );
    assert!(
        report.contains("      24.0      30.0  check name\n"),
        "{report}"
    );
    assert!(
        report.contains("     150.0         -  process start → main\n"),
        "{report}"
    );
    assert!(
        report.contains("         -       2.0  xendevd release\n"),
        "{report}"
    );
}

#[test]
fn csv_and_figures() {
    let (density, _) = density();
    let csv = density.csv();
    assert!(
        csv.starts_with("toolstack,guests,app,run,ms\nxl,0,noop,0,500.000\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 16);
    let dom0 = density.dom0_csv();
    assert!(dom0.starts_with("toolstack,guests,process,processes,rss_kib,pss_kib\n"));
    assert!(dom0.contains("xl,50,xl,50,100000,40000\n"));
    let figures = density.figures();
    assert_eq!(
        figures
            .iter()
            .map(|(app, _)| app.as_str())
            .collect::<Vec<_>>(),
        ["noop", "daytime"]
    );
    let noop = &figures[0].1;
    assert_eq!(noop.lines.len(), 2);
    assert_eq!(noop.lines[0].points, [(0.0, 500.0), (50.0, 5500.0)]);
    assert_eq!(noop.lines[0].dots.len(), 4);
    assert_eq!(noop.lines[1].label, "chaos[NoXS]");
    assert_eq!(noop.lines[1].colour, 2);
    assert_eq!(per_guest(10, 5, 0), "-");
    assert_eq!(per_guest(100, 50, 10), "-5.0");
}
