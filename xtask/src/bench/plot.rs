//! The benchmarks' plots, each drawn once through plotters and written twice: as PNG
//! (plotters' bitmap backend into a buffer, encoded by `png`) and as SVG. The text is
//! DejaVu Sans from the `dejavu` crate, registered with plotters' ab_glyph renderer, so
//! no system font, fontconfig or freetype is needed on the machine.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A colour per toolstack (Tableau 10), by the toolstack's place in
/// [`super::toolstacks::TOOLSTACKS`], so every plot colours a toolstack the same.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0x9c, 0x75, 0x5f),
];

pub fn colour(index: usize) -> RGBColor {
    COLOURS[index % COLOURS.len()]
}

/// Something to draw, onto any backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Register the font once: plotters' ab_glyph renderer finds fonts only by the names
/// they were registered under ("sans-serif", the family every default style asks for).
fn font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("DejaVu Sans (from the dejavu crate) is not a font ab_glyph reads"))
}

/// plotters' drawing errors, as anyhow's (they are `Error` only for some backends).
pub fn drawn<T, E: std::fmt::Debug>(result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|err| anyhow!("drawing the plot: {err:?}"))
}

/// Write `figure` to `STEM.png` and `STEM.svg`; the paths written.
pub fn save(figure: &impl Figure, stem: &Path) -> Result<[PathBuf; 2]> {
    font()?;
    let (width, height) = figure.size();
    let png_path = stem.with_extension("png");
    let svg_path = stem.with_extension("svg");
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| drawn(root.present()))
            .with_context(|| format!("drawing {}", png_path.display()))?;
    }
    write_png(&png_path, &pixels, width, height)
        .with_context(|| format!("writing {}", png_path.display()))?;
    {
        let root = SVGBackend::new(&svg_path, (width, height)).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| drawn(root.present()))
            .with_context(|| format!("writing {}", svg_path.display()))?;
    }
    Ok([png_path, svg_path])
}

fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// A bar per series: median, with its p90 as a tick.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub colour: usize,
    pub median: f64,
    pub p90: f64,
}

/// Bar charts side by side, one panel each (e.g. one per app), each with its own scale.
#[derive(Debug)]
pub struct Bars {
    pub title: String,
    pub panels: Vec<(String, Vec<Bar>)>,
}

impl Figure for Bars {
    fn size(&self) -> (u32, u32) {
        let widest = self.panels.iter().map(|(_, bars)| bars.len()).max();
        let per_panel = 120 + 110 * u32::try_from(widest.unwrap_or(1)).unwrap_or(8);
        (
            per_panel * u32::try_from(self.panels.len().max(1)).unwrap_or(4),
            480,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        drawn(root.fill(&WHITE))?;
        let root = drawn(root.titled(&self.title, ("sans-serif", 18)))?;
        let areas = root.split_evenly((1, self.panels.len().max(1)));
        for ((app, bars), area) in self.panels.iter().zip(&areas) {
            let top = bars.iter().map(|b| b.p90.max(b.median)).fold(1.0, f64::max) * 1.15;
            let count = i32::try_from(bars.len()).unwrap_or(i32::MAX);
            let mut chart = drawn(
                ChartBuilder::on(area)
                    .caption(app, ("sans-serif", 16))
                    .margin(10)
                    .x_label_area_size(40)
                    .y_label_area_size(60)
                    // Segments of an i32 range count both ends.
                    .build_cartesian_2d((0..count.max(2) - 1).into_segmented(), 0.0..top),
            )?;
            let label = |value: &SegmentValue<i32>| match value {
                SegmentValue::CenterOf(i) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| bars.get(i))
                    .map_or_else(String::new, |bar| bar.label.clone()),
                _ => String::new(),
            };
            drawn(
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(bars.len())
                    .x_label_formatter(&label)
                    .y_label_formatter(&|y| format!("{y:.0}"))
                    .light_line_style(WHITE)
                    .y_desc("ms (bar: median, tick: p90)")
                    .draw(),
            )?;
            for (i, bar) in (0..count).zip(bars) {
                let fill = colour(bar.colour);
                let mut rect = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), bar.median),
                    ],
                    fill.filled(),
                );
                rect.set_margin(0, 0, 12, 12);
                drawn(chart.draw_series([rect]))?;
                let mut tick = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), bar.p90),
                        (SegmentValue::Exact(i + 1), bar.p90),
                    ],
                    BLACK.stroke_width(2),
                );
                tick.set_margin(0, 0, 24, 24);
                drawn(chart.draw_series([tick]))?;
                let style = ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                drawn(chart.draw_series([Text::new(
                    format!("{:.0}", bar.median),
                    (SegmentValue::CenterOf(i), bar.median.max(bar.p90)),
                    style,
                )]))?;
            }
        }
        Ok(())
    }
}

/// One line of a [`Lines`] figure: medians joined, and every run as a faint dot.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub colour: usize,
    pub points: Vec<(f64, f64)>,
    pub dots: Vec<(f64, f64)>,
}

/// Lines over a shared x axis, with a legend (the LightVM paper's density figure).
#[derive(Debug)]
pub struct Lines {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub lines: Vec<Line>,
}

impl Figure for Lines {
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        drawn(root.fill(&WHITE))?;
        let all = || {
            self.lines
                .iter()
                .flat_map(|line| line.points.iter().chain(&line.dots))
        };
        let x_max = all().map(|p| p.0).fold(1.0, f64::max);
        let y_max = all().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let mut chart = drawn(
            ChartBuilder::on(root)
                .caption(&self.title, ("sans-serif", 18))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..x_max * 1.02, 0.0..y_max),
        )?;
        drawn(
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .light_line_style(RGBColor(0xee, 0xee, 0xee))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw(),
        )?;
        for line in &self.lines {
            let c = colour(line.colour);
            drawn(
                chart.draw_series(
                    line.dots
                        .iter()
                        .map(|&p| Circle::new(p, 2, c.mix(0.35).filled())),
                ),
            )?;
            drawn(chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, c.filled()))))?;
            drawn(chart.draw_series(LineSeries::new(
                line.points.iter().copied(),
                c.stroke_width(2),
            )))?
            .label(&line.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        drawn(
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds of figure are written as a PNG (with its signature) and an SVG with
    /// their labels as text.
    #[test]
    fn figures_are_written_as_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("xtask-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bars = Bars {
            title: "boot".into(),
            panels: vec![(
                "noop".into(),
                vec![
                    Bar {
                        label: "xl".into(),
                        colour: 0,
                        median: 500.0,
                        p90: 620.0,
                    },
                    Bar {
                        label: "chaos[NoXS]".into(),
                        colour: 2,
                        median: 200.0,
                        p90: 210.0,
                    },
                ],
            )],
        };
        let lines = Lines {
            title: "density".into(),
            x_desc: "running guests".into(),
            y_desc: "ms".into(),
            lines: vec![Line {
                label: "chaos[Xenstore]".into(),
                colour: 1,
                points: vec![(0.0, 330.0), (100.0, 550.0)],
                dots: vec![(0.0, 320.0), (0.0, 340.0), (100.0, 560.0)],
            }],
        };
        for (stem, written) in [
            ("bars", save(&bars, &dir.join("bars")).unwrap()),
            ("lines", save(&lines, &dir.join("lines")).unwrap()),
        ] {
            let png = std::fs::read(&written[0]).unwrap();
            assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{stem}.png");
            let svg = std::fs::read_to_string(&written[1]).unwrap();
            assert!(svg.contains("<svg"), "{stem}.svg");
            let label = if stem == "bars" {
                "chaos[NoXS]"
            } else {
                "chaos[Xenstore]"
            };
            assert!(svg.contains(label), "{stem}.svg lacks {label}");
        }
        // `KEEP_PLOTS=1 cargo test -p xtask figures -- --nocapture` keeps them to look at.
        if std::env::var_os("KEEP_PLOTS").is_some() {
            eprintln!("plots kept in {}", dir.display());
        } else {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
