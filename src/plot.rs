//! Labelled charts drawn with `plotters`: a title, axis names with units, a legend, round tick
//! values (integer ticks where the axis counts layers), optional horizontal reference lines
//! (a baseline) and a second x axis on top (tokens seen beside steps). Text uses DejaVu Sans,
//! embedded in the binary (`assets/fonts`), so a chart looks the same on every machine; PNG
//! goes through the crate's own encoder, SVG is plain text.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::tokenizer::RgbImage;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A solid line.
    Line,
    /// A thin, light line (raw values under a smoothed curve).
    Faint,
    /// A solid line with a marker at every point (few points: evaluations, layers).
    Markers,
}

/// One named series of (x, y) points.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub color: [u8; 3],
    pub style: Style,
}

/// A horizontal reference line with its legend entry.
#[derive(Clone, Debug)]
pub struct HLine {
    pub label: String,
    pub y: f64,
    pub color: [u8; 3],
}

/// A line chart.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub hlines: Vec<HLine>,
    /// Ticks only at whole numbers of x (layers).
    pub integer_x: bool,
    /// A second x axis on top: its name and the factor from the bottom axis (tokens per step).
    pub top_axis: Option<(String, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: [u8; 3], style: Style) -> Self {
        Series { label: label.into(), points, color, style }
    }
}

/// The DejaVu Sans font, registered once as plotters' "sans-serif".
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the embedded font is a valid TrueType file"));
    });
}

/// Exponential moving average with TensorBoard's debiasing: point i is
/// sum_j<=i w^(i-j) y_j (1 - w) / (1 - w^(i+1)), so the first points are not pulled to zero.
pub fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            acc = weight * acc + (1.0 - weight) * y;
            (x, acc / (1.0 - weight.powi(i as i32 + 1)))
        })
        .collect()
}

/// Tick labels: the fewest digits that tell round ticks apart.
fn tick(v: f64, step: f64) -> String {
    let digits = if step >= 1.0 { 0 } else { (-step.log10()).ceil().clamp(0.0, 6.0) as usize };
    if v.abs() >= 1e6 {
        return format!("{:.1}M", v / 1e6);
    }
    if v.abs() >= 1e4 && step >= 1000.0 {
        return format!("{:.0}k", v / 1e3);
    }
    format!("{v:.digits$}")
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

fn plot_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::Invalid(format!("drawing a chart: {e:?}"))
}

impl Chart {
    /// The (x, y) ranges covering every finite point and reference line, padded.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for h in self.hlines.iter().filter(|h| h.y.is_finite()) {
            (y0, y1) = (y0.min(h.y), y1.max(h.y));
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if y0 > y1 {
            (y0, y1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let pad = if y1 - y0 < 1e-12 { 0.5 } else { 0.06 * (y1 - y0) };
        let xpad = if self.integer_x { 0.3 } else { 0.0 };
        ((x0 - xpad, x1 + xpad), (y0 - pad, y1 + pad))
    }

    /// Draws the chart on any plotters backend.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        register_font();
        root.fill(&WHITE).map_err(plot_err)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let (xstep, ystep) = ((x1 - x0) / 8.0, (y1 - y0) / 6.0);
        let mut builder = ChartBuilder::on(root);
        builder.caption(&self.title, ("sans-serif", 22)).margin(12).x_label_area_size(48).y_label_area_size(64);
        if self.top_axis.is_some() {
            builder.top_x_label_area_size(40);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(plot_err)?.set_secondary_coord(
            x0 * self.top_axis.as_ref().map_or(1.0, |t| t.1)..x1 * self.top_axis.as_ref().map_or(1.0, |t| t.1),
            y0..y1,
        );
        let xfmt = |v: &f64| {
            if self.integer_x {
                if (v - v.round()).abs() < 1e-6 { format!("{}", v.round() as i64) } else { String::new() }
            } else {
                tick(*v, xstep)
            }
        };
        let n_x = if self.integer_x { ((x1 - x0).round() as usize + 1).min(30) } else { 8 };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(n_x)
            .y_labels(7)
            .x_label_formatter(&xfmt)
            .y_label_formatter(&|v| tick(*v, ystep))
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(plot_err)?;
        if let Some((name, f)) = &self.top_axis {
            let step = xstep * f;
            chart
                .configure_secondary_axes()
                .x_desc(name)
                .x_labels(6)
                .x_label_formatter(&|v| tick(*v, step))
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 16))
                .draw()
                .map_err(plot_err)?;
        }
        for h in &self.hlines {
            let c = rgb(h.color);
            chart
                .draw_series(DashedLineSeries::new(vec![(x0, h.y), (x1, h.y)], 8, 5, c.stroke_width(2)))
                .map_err(plot_err)?
                .label(&h.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        for s in &self.series {
            let c = rgb(s.color);
            let pts: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
            let style = match s.style {
                Style::Faint => c.mix(0.35).stroke_width(1),
                _ => c.stroke_width(2),
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))
                .map_err(plot_err)?
                .label(&s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            if s.style == Style::Markers {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(plot_err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)
    }

    /// The chart as an RGB image of width x height pixels.
    pub fn png(&self, width: usize, height: usize) -> Result<RgbImage> {
        let mut buf = vec![255u8; width * height * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (width as u32, height as u32)).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(RgbImage::new(width, height, buf))
    }

    /// The chart as an SVG document.
    pub fn svg(&self, width: usize, height: usize) -> Result<String> {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (width as u32, height as u32)).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(out)
    }

    /// Writes `stem.png` and `stem.svg`.
    pub fn save(&self, stem: &std::path::Path, width: usize, height: usize) -> Result<()> {
        self.png(width, height)?.save_png(&stem.with_extension("png"))?;
        crate::formats::write_atomic(&stem.with_extension("svg"), self.svg(width, height)?.as_bytes())
    }
}

/// Images side by side, `cols` to a row, each under its caption, with a title on top
/// (a study's sample grids, one per variant): white background, text in DejaVu Sans.
pub fn captioned_sheet(title: &str, cells: &[(String, RgbImage)], cols: usize) -> Result<RgbImage> {
    const TITLE: usize = 36;
    const CAPTION: usize = 24;
    const GAP: usize = 12;
    let cols = cols.clamp(1, cells.len().max(1));
    let cw = cells.iter().map(|c| c.1.width).max().unwrap_or(1);
    let ch = CAPTION + cells.iter().map(|c| c.1.height).max().unwrap_or(1);
    let rows = cells.len().div_ceil(cols).max(1);
    let (w, h) = (GAP + cols * (cw + GAP), TITLE + rows * (ch + GAP));
    let origin = |i: usize| (GAP + (i % cols) * (cw + GAP), TITLE + (i / cols) * (ch + GAP));
    let mut buf = vec![255u8; w * h * 3];
    {
        register_font();
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let text = |s: &str, (x, y): (usize, usize), size: u32| {
            root.draw(&Text::new(s.to_string(), (x as i32, y as i32), ("sans-serif", size).into_font().color(&BLACK)))
                .map_err(plot_err)
        };
        text(title, (GAP, 8), 20)?;
        for (i, (caption, _)) in cells.iter().enumerate() {
            let (x, y) = origin(i);
            text(caption, (x, y + 3), 15)?;
        }
        root.present().map_err(plot_err)?;
    }
    for (i, (_, img)) in cells.iter().enumerate() {
        let (x0, y0) = origin(i);
        for y in 0..img.height {
            let dst = ((y0 + CAPTION + y) * w + x0) * 3;
            buf[dst..dst + img.width * 3].copy_from_slice(&img.data[y * img.width * 3..(y + 1) * img.width * 3]);
        }
    }
    Ok(RgbImage::new(w, h, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each image lands under its caption at its place in the grid; the text is drawn.
    #[test]
    fn captioned_sheet_places_images_under_their_captions() {
        let red = RgbImage::new(10, 8, [200, 0, 0].repeat(80));
        let blue = RgbImage::new(10, 8, [0, 0, 200].repeat(80));
        let sheet = captioned_sheet("Samples", &[("a".into(), red), ("b".into(), blue.clone()), ("c".into(), blue)], 2)
            .unwrap();
        assert_eq!((sheet.width, sheet.height), (12 + 2 * 22, 36 + 2 * (24 + 8 + 12)));
        let px = |x: usize, y: usize| &sheet.data[(y * sheet.width + x) * 3..][..3];
        assert_eq!(px(12, 36 + 24), &[200, 0, 0]); // first image, top left
        assert_eq!(px(12 + 22 + 9, 36 + 24 + 7), &[0, 0, 200]); // second, bottom right corner
        assert_eq!(px(12, 36 + 44 + 24), &[0, 0, 200]); // third: the next row
        assert_eq!(px(12 + 22, 36 + 44 + 24), &[255, 255, 255]); // no fourth
        let dark = sheet.data.chunks_exact(3).filter(|p| p.iter().all(|&v| v < 90)).count();
        assert!(dark > 20, "{dark} text pixels");
    }

    fn chart() -> Chart {
        Chart {
            title: "Probe accuracy".into(),
            x_label: "layer".into(),
            y_label: "accuracy (%)".into(),
            series: vec![Series::new("val", vec![(0.0, 60.0), (1.0, 72.5), (2.0, 70.0)], [200, 0, 0], Style::Markers)],
            hlines: vec![HLine { label: "raw pixels".into(), y: 55.0, color: [120, 120, 120] }],
            integer_x: true,
            top_axis: None,
        }
    }

    /// The series is drawn in its colour, text is rendered (dark anti-aliased pixels of the
    /// title and labels), and the SVG names the axes, the legend and integer layer ticks.
    #[test]
    fn draws_series_text_and_legend() {
        let img = chart().png(480, 320).unwrap();
        let red = img.data.chunks_exact(3).filter(|p| p[0] > 150 && p[1] < 60 && p[2] < 60).count();
        assert!(red > 100, "{red} red pixels");
        let dark = img.data.chunks_exact(3).filter(|p| p.iter().all(|&v| v < 90)).count();
        assert!(dark > 300, "{dark} text pixels");
        let svg = chart().svg(480, 320).unwrap();
        // plotters writes each text on its own line inside <text>
        let texts: Vec<&str> =
            svg.lines().collect::<Vec<_>>().windows(2).filter(|w| w[0].starts_with("<text")).map(|w| w[1]).collect();
        for text in ["Probe accuracy", "layer", "accuracy (%)", "val", "raw pixels", "0", "1", "2"] {
            assert!(texts.contains(&text), "the SVG lacks {text}: {texts:?}");
        }
        assert!(
            !texts.iter().any(|t| t.contains('.') && t.parse::<f64>().is_ok_and(|v| v < 3.0)),
            "layer ticks are whole numbers: {texts:?}"
        );
    }

    #[test]
    fn smoothing_is_debiased_and_ticks_are_round() {
        let s = smooth(&[(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)], 0.9);
        assert!(s.iter().all(|p| (p.1 - 2.0).abs() < 1e-12), "{s:?}");
        let s = smooth(&[(0.0, 0.0), (1.0, 10.0)], 0.5);
        assert!((s[1].1 - 10.0 * 0.5 / 0.75).abs() < 1e-12);
        assert_eq!(tick(0.5, 0.1), "0.5");
        assert_eq!(tick(1500.0, 250.0), "1500");
        assert_eq!(tick(40000.0, 5000.0), "40k");
        assert_eq!(tick(2_500_000.0, 500_000.0), "2.5M");
    }
}
