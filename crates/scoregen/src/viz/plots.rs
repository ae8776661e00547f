//! PNG plots: sample scatters over a (log-)density heat map, and line plots
//! (loss curves) with optional log-scale y axis.
//!
//! Everything is rendered with `plotters`' bitmap backend and an embedded
//! DejaVu Sans font (no system fontconfig needed). Errors never panic; they
//! come back as [`PlotError`] whose message names the output file.

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle, RGBColor};

use crate::points::Points;

/// The embedded font, registered with plotters as `"sans-serif"`.
static DEJAVU_SANS: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/DejaVuSans.ttf"));

/// Size of the scatter / density image in pixels.
pub const SCATTER_SIZE: (u32, u32) = (640, 640);
/// Size of the line-plot image in pixels.
pub const LINE_PLOT_SIZE: (u32, u32) = (800, 480);
/// Number of heat-map cells along each axis.
pub const HEATMAP_CELLS: usize = 160;
/// Range of log-density (in nats below the maximum on the grid) spanned by
/// the colour map; anything lower gets the bottom colour.
pub const LOG_DENSITY_RANGE: f64 = 8.0;

/// A plotting error; the message names the output file.
#[derive(Debug)]
pub struct PlotError(pub String);

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlotError {}

impl PlotError {
    fn at(path: &Path, what: impl fmt::Display) -> Self {
        PlotError(format!("writing plot {}: {what}", path.display()))
    }
}

/// Registers the embedded font exactly once (the outcome is remembered, so a
/// failure is reported on every call rather than only the first).
pub(crate) fn ensure_font(path: &Path) -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS)
                .map_err(|_| "the embedded DejaVuSans.ttf could not be parsed".to_string())
        })
        .clone()
        .map_err(|e| PlotError::at(path, e))
}

/// A rectangle in the plane: `x = (min, max)`, `y = (min, max)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Bounds {
    /// The smallest box holding the first two coordinates of every point
    /// (non-finite coordinates are ignored; a 1-D set is plotted at y = 0),
    /// padded on each side by `margin` times the range on that axis.
    ///
    /// A degenerate axis (all values equal) gets a half-width of 1 before the
    /// margin; an empty set (or one without finite values) gives
    /// `[-1, 1] × [-1, 1]` padded likewise. A negative or non-finite margin is
    /// treated as 0. The result always has finite, strictly increasing ranges.
    pub fn around(points: &Points, margin: f64) -> Bounds {
        let margin = if margin.is_finite() { margin.max(0.0) } else { 0.0 };
        let (mut x, mut y) = ((f64::INFINITY, f64::NEG_INFINITY), (f64::INFINITY, f64::NEG_INFINITY));
        for (px, py) in xy(points) {
            if px.is_finite() {
                x = (x.0.min(px), x.1.max(px));
            }
            if py.is_finite() {
                y = (y.0.min(py), y.1.max(py));
            }
        }
        Bounds { x: pad(x, margin), y: pad(y, margin) }
    }

    fn is_valid(&self) -> bool {
        let ok = |(lo, hi): (f64, f64)| lo.is_finite() && hi.is_finite() && lo < hi;
        ok(self.x) && ok(self.y)
    }
}

/// Pads a (min, max) range; see [`Bounds::around`].
fn pad((lo, hi): (f64, f64), margin: f64) -> (f64, f64) {
    let (lo, hi) = if lo > hi {
        (-1.0, 1.0) // nothing seen
    } else if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(1.0) {
        (lo - 1.0, hi + 1.0) // a single value
    } else {
        (lo, hi)
    };
    let m = margin * (hi - lo);
    (lo - m, hi + m)
}

/// The first two coordinates of each point (y = 0 for 1-D points).
fn xy(points: &Points) -> impl Iterator<Item = (f64, f64)> + '_ {
    let d = points.d;
    (0..if d == 0 { 0 } else { points.n }).map(move |i| {
        let r = points.row(i);
        (r[0], if d >= 2 { r[1] } else { 0.0 })
    })
}

/// Viridis (matplotlib), sampled at 11 evenly spaced stops.
const VIRIDIS: [(u8, u8, u8); 11] = [
    (0x44, 0x01, 0x54),
    (0x48, 0x24, 0x75),
    (0x41, 0x44, 0x87),
    (0x35, 0x5f, 0x8d),
    (0x2a, 0x78, 0x8e),
    (0x21, 0x91, 0x8c),
    (0x22, 0xa8, 0x84),
    (0x44, 0xbf, 0x70),
    (0x7a, 0xd1, 0x51),
    (0xbd, 0xdf, 0x26),
    (0xfd, 0xe7, 0x25),
];

/// Viridis colour for `t` in [0, 1] (clamped; NaN maps to 0), linearly
/// interpolated between the stops.
pub(crate) fn viridis(t: f64) -> RGBColor {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let s = t * (VIRIDIS.len() - 1) as f64;
    let i = (s.floor() as usize).min(VIRIDIS.len() - 2);
    let f = s - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let lerp = |u: u8, v: u8| (u as f64 + f * (v as f64 - u as f64)).round() as u8;
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Dot colour over a heat map.
const DOT_ON_HEAT: RGBColor = RGBColor(255, 48, 48);
/// Dot colour on a white background.
const DOT_PLAIN: RGBColor = RGBColor(20, 50, 160);

/// Scatter of the first two coordinates of `points` (640×640 PNG), optionally
/// over a heat map of `log_density(x, y)`.
///
/// The heat map is evaluated at the centres of a 160×160 grid over `bounds`.
/// Colours are viridis on the log-density relative to its maximum on the
/// grid, clipped to the top [`LOG_DENSITY_RANGE`] nats: the mode is yellow,
/// anything 8 nats (a factor ~3000 in density) or more below it is dark
/// purple. Non-finite or NaN values of the log-density are drawn as the
/// bottom colour (+∞ as the top one).
///
/// Points are drawn as small semi-transparent dots (red over a heat map, dark
/// blue otherwise); points outside `bounds` or with non-finite coordinates
/// are skipped. `bounds` must be finite with `min < max` on both axes.
pub fn scatter_over_density(
    path: &Path,
    points: &Points,
    log_density: Option<&dyn Fn(f64, f64) -> f64>,
    bounds: &Bounds,
    title: &str,
) -> Result<(), PlotError> {
    scatter_impl(path, points, log_density, bounds, title).map(|_| ())
}

/// Does the work of [`scatter_over_density`] and returns the pixel ranges
/// (x, y) of the plotting area, for tests.
fn scatter_impl(
    path: &Path,
    points: &Points,
    log_density: Option<&dyn Fn(f64, f64) -> f64>,
    bounds: &Bounds,
    title: &str,
) -> Result<(Range<i32>, Range<i32>), PlotError> {
    if !bounds.is_valid() {
        return Err(PlotError::at(path, format!("invalid bounds {bounds:?}")));
    }
    ensure_font(path)?;
    let root = BitMapBackend::new(path, SCATTER_SIZE).into_drawing_area();
    let ranges = draw_scatter(&root, path, points, log_density, bounds, title)?;
    root.present().map_err(|e| PlotError::at(path, e))?;
    Ok(ranges)
}

/// Draws the scatter (and heat map) on any plotters drawing area; `path` only names errors.
fn draw_scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    points: &Points,
    log_density: Option<&dyn Fn(f64, f64) -> f64>,
    bounds: &Bounds,
    title: &str,
) -> Result<(Range<i32>, Range<i32>), PlotError> {
    draw_panel(root, path, points, log_density, bounds, title, &[])
}

/// An arrow from `from` to `to`, in data coordinates.
pub type Arrow = ((f64, f64), (f64, f64));

/// [`draw_scatter`] with arrows drawn over the heat map (white, with heads).
fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    path: &Path,
    points: &Points,
    log_density: Option<&dyn Fn(f64, f64) -> f64>,
    bounds: &Bounds,
    title: &str,
    arrows: &[Arrow],
) -> Result<(Range<i32>, Range<i32>), PlotError> {
    let err = |e: &dyn fmt::Display| PlotError::at(path, e);
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (x0, x1) = bounds.x;
    let (y0, y1) = bounds.y;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;

    let mut mesh = chart.configure_mesh();
    mesh.x_desc("x₁")
        .y_desc("x₂")
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_labels(9)
        .y_labels(9)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v));
    if log_density.is_some() {
        mesh.disable_mesh();
    } else {
        mesh.light_line_style(RGBColor(235, 235, 235)).bold_line_style(RGBColor(215, 215, 215));
    }
    mesh.draw().map_err(|e| err(&e))?;

    if let Some(logp) = log_density {
        let n = HEATMAP_CELLS;
        let (dx, dy) = ((x1 - x0) / n as f64, (y1 - y0) / n as f64);
        let mut vals = Vec::with_capacity(n * n);
        for j in 0..n {
            for i in 0..n {
                vals.push(logp(x0 + (i as f64 + 0.5) * dx, y0 + (j as f64 + 0.5) * dy));
            }
        }
        let top = vals.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
        let cells = vals.iter().enumerate().map(|(k, &v)| {
            let (i, j) = ((k % n) as f64, (k / n) as f64);
            let t = if v == f64::INFINITY {
                1.0
            } else if v.is_finite() && top.is_finite() {
                1.0 + (v - top) / LOG_DENSITY_RANGE
            } else {
                0.0
            };
            Rectangle::new(
                [(x0 + i * dx, y0 + j * dy), (x0 + (i + 1.0) * dx, y0 + (j + 1.0) * dy)],
                viridis(t).filled(),
            )
        });
        chart.draw_series(cells).map_err(|e| err(&e))?;
    }

    let dot = if log_density.is_some() { DOT_ON_HEAT } else { DOT_PLAIN };
    let style = dot.mix(0.6).filled();
    let inside = |&(x, y): &(f64, f64)| x >= x0 && x <= x1 && y >= y0 && y <= y1;
    chart.draw_series(xy(points).filter(inside).map(|p| Circle::new(p, 2, style))).map_err(|e| err(&e))?;

    let pen = if log_density.is_some() { WHITE.mix(0.9) } else { DOT_PLAIN.mix(0.9) }.stroke_width(1);
    let finite = |a: &&Arrow| [a.0 .0, a.0 .1, a.1 .0, a.1 .1].iter().all(|v| v.is_finite());
    for &(from, to) in arrows.iter().filter(finite) {
        let (dx, dy) = (to.0 - from.0, to.1 - from.1);
        // head: two strokes of 30% of the shaft, ±25° off the reversed direction
        let (c, s) = (25f64.to_radians().cos(), 25f64.to_radians().sin());
        let barb = |sign: f64| (to.0 - 0.3 * (c * dx - sign * s * dy), to.1 - 0.3 * (sign * s * dx + c * dy));
        let lines = [vec![from, to], vec![barb(1.0), to, barb(-1.0)]];
        chart.draw_series(lines.into_iter().map(|l| PathElement::new(l, pen))).map_err(|e| err(&e))?;
    }

    Ok(chart.plotting_area().get_pixel_range())
}

/// One panel of [`scatter_grid`]: a title, points, and the field drawn under them
/// (a log-density, or any log-scale field).
pub type ScatterPanel<'a> = (&'a str, &'a Points, Option<&'a dyn Fn(f64, f64) -> f64>);

/// Scatter panels on a grid of `cols` columns in one PNG (each panel the size
/// of a single scatter), all over the same bounds.
pub fn scatter_grid(path: &Path, cols: usize, panels: &[ScatterPanel], bounds: &Bounds) -> Result<(), PlotError> {
    panel_grid(path, cols, panels.len(), bounds, |area, i| {
        let (title, pts, field) = panels[i];
        draw_scatter(area, path, pts, field, bounds, title).map(|_| ())
    })
}

/// `n` panels, each the size of a single scatter, on a grid of `cols` columns
/// in one PNG; `draw(area, i)` draws panel i.
fn panel_grid(
    path: &Path,
    cols: usize,
    n: usize,
    bounds: &Bounds,
    mut draw: impl FnMut(&DrawingArea<BitMapBackend, plotters::coord::Shift>, usize) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    if !bounds.is_valid() {
        return Err(PlotError::at(path, format!("invalid bounds {bounds:?}")));
    }
    ensure_font(path)?;
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols).max(1);
    let (w, h) = SCATTER_SIZE;
    let root = BitMapBackend::new(path, (w * cols as u32, h * rows as u32)).into_drawing_area();
    for (i, area) in root.split_evenly((rows, cols)).iter().enumerate().take(n) {
        draw(area, i)?;
    }
    root.present().map_err(|e| PlotError::at(path, e))?;
    Ok(())
}

/// One panel of [`vector_field`]: a title, arrows and the field drawn under them.
pub type FieldPanel<'a> = (&'a str, &'a [Arrow], Option<&'a dyn Fn(f64, f64) -> f64>);

/// Vector fields as arrows over heat maps, panels side by side on a grid of
/// `cols` columns in one PNG, all over the same bounds.
pub fn vector_field(path: &Path, cols: usize, panels: &[FieldPanel], bounds: &Bounds) -> Result<(), PlotError> {
    let empty = Points::new(0, 2, Vec::new());
    panel_grid(path, cols, panels.len(), bounds, |area, i| {
        let (title, arrows, field) = panels[i];
        draw_panel(area, path, &empty, field, bounds, title, arrows).map(|_| ())
    })
}

/// The centres of the heat-map cells of a scatter over `bounds`, row by row
/// (y outer, x inner), so a field can be computed in one batch and looked up
/// with [`grid_lookup`].
pub fn grid_centres(bounds: &Bounds) -> Vec<(f64, f64)> {
    let n = HEATMAP_CELLS;
    let (dx, dy) = ((bounds.x.1 - bounds.x.0) / n as f64, (bounds.y.1 - bounds.y.0) / n as f64);
    (0..n * n).map(|k| (bounds.x.0 + ((k % n) as f64 + 0.5) * dx, bounds.y.0 + ((k / n) as f64 + 0.5) * dy)).collect()
}

/// The value of a field computed on [`grid_centres`] at the cell containing (x, y).
pub fn grid_lookup(values: &[f64], bounds: &Bounds, x: f64, y: f64) -> f64 {
    let n = HEATMAP_CELLS;
    let i = (((x - bounds.x.0) / (bounds.x.1 - bounds.x.0)) * n as f64).floor().clamp(0.0, (n - 1) as f64) as usize;
    let j = (((y - bounds.y.0) / (bounds.y.1 - bounds.y.0)) * n as f64).floor().clamp(0.0, (n - 1) as f64) as usize;
    values[j * n + i]
}

/// An animated GIF of point sets over the same density: one frame per
/// (title, points), `delay_cs` hundredths of a second per frame.
pub fn scatter_gif(
    path: &Path,
    frames: &[(String, Points)],
    log_density: Option<&dyn Fn(f64, f64) -> f64>,
    bounds: &Bounds,
    delay_cs: u16,
) -> Result<(), PlotError> {
    if !bounds.is_valid() {
        return Err(PlotError::at(path, format!("invalid bounds {bounds:?}")));
    }
    ensure_font(path)?;
    let (w, h) = SCATTER_SIZE;
    let file = std::fs::File::create(path).map_err(|e| PlotError::at(path, e))?;
    let mut encoder = gif::Encoder::new(file, w as u16, h as u16, &[]).map_err(|e| PlotError::at(path, e))?;
    encoder.set_repeat(gif::Repeat::Infinite).map_err(|e| PlotError::at(path, e))?;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    for (title, pts) in frames {
        {
            let root = BitMapBackend::with_buffer(&mut buf, SCATTER_SIZE).into_drawing_area();
            draw_scatter(&root, path, pts, log_density, bounds, title)?;
            root.present().map_err(|e| PlotError::at(path, e))?;
        }
        let mut frame = gif::Frame::from_rgb_speed(w as u16, h as u16, &buf, 10);
        frame.delay = delay_cs;
        encoder.write_frame(&frame).map_err(|e| PlotError::at(path, e))?;
    }
    Ok(())
}

/// Line colours (Tableau 10).
const LINE_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A series whose total variation exceeds this many times its range is
/// "noisy" and drawn 1 px wide; others are drawn 2 px wide.
const NOISY_VARIATION_RATIO: f64 = 20.0;

/// Whether a series (as runs of valid points) is noisy: the sum of |Δy| over
/// consecutive points exceeds [`NOISY_VARIATION_RATIO`] times max y − min y
/// (both measured on log10 y with a log axis).
fn is_noisy(runs: &[Vec<(f64, f64)>], log_y: bool) -> bool {
    let f = |y: f64| if log_y { y.log10() } else { y };
    let (mut lo, mut hi, mut tv) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
    for run in runs {
        for w in run.windows(2) {
            tv += (f(w[1].1) - f(w[0].1)).abs();
        }
        for p in run {
            lo = lo.min(f(p.1));
            hi = hi.max(f(p.1));
        }
    }
    hi > lo && tv > NOISY_VARIATION_RATIO * (hi - lo)
}

/// Compact tick label: plain decimals for moderate magnitudes, scientific
/// notation otherwise.
pub(crate) fn tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.3e}");
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        }
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// Line plot (800×480 PNG) with one line per `(name, points)` series and a
/// legend. With `log_y`, the y axis is logarithmic and points whose y is not
/// positive are skipped; points with a non-finite x or y are always skipped.
/// A skipped point breaks the line (no segment is drawn across it).
/// Lines are 2 px wide, or 1 px for noisy series (total variation of y more
/// than 20 times its range, e.g. a raw loss curve, so that it does not bury
/// its smoothed version); colours follow the Tableau-10 palette in order.
pub fn line_plot(
    path: &Path,
    series: &[(&str, &[(f64, f64)])],
    title: &str,
    x_label: &str,
    y_label: &str,
    log_y: bool,
) -> Result<(), PlotError> {
    ensure_font(path)?;
    let err = |e: &dyn fmt::Display| PlotError::at(path, e);
    let valid = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);

    // Each series as runs of consecutive valid points.
    let runs: Vec<Vec<Vec<(f64, f64)>>> = series
        .iter()
        .map(|(_, pts)| {
            let mut runs = vec![];
            let mut cur = vec![];
            for p in pts.iter() {
                if valid(p) {
                    cur.push(*p);
                } else if !cur.is_empty() {
                    runs.push(std::mem::take(&mut cur));
                }
            }
            if !cur.is_empty() {
                runs.push(cur);
            }
            runs
        })
        .collect();

    let all = runs.iter().flatten().flatten();
    let (mut xr, mut yr) = ((f64::INFINITY, f64::NEG_INFINITY), (f64::INFINITY, f64::NEG_INFINITY));
    for &(x, y) in all {
        xr = (xr.0.min(x), xr.1.max(x));
        yr = (yr.0.min(y), yr.1.max(y));
    }
    let (xa, xb) = if xr.0 > xr.1 {
        (0.0, 1.0)
    } else if xr.0 == xr.1 {
        (xr.0 - 0.5, xr.1 + 0.5)
    } else {
        (xr.0, xr.1)
    };

    let root = BitMapBackend::new(path, LINE_PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(14).x_label_area_size(46).y_label_area_size(72);

    // The two axis types differ, so the drawing code is shared via a macro.
    macro_rules! draw_lines {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .axis_desc_style(("sans-serif", 18))
                .label_style(("sans-serif", 14))
                .x_label_formatter(&|v| tick(*v))
                .y_label_formatter(&|v| tick(*v))
                .light_line_style(RGBColor(242, 242, 242))
                .bold_line_style(RGBColor(215, 215, 215))
                .x_max_light_lines(1)
                .y_max_light_lines(if log_y { 0 } else { 1 })
                .draw()
                .map_err(|e| err(&e))?;
            for (k, ((name, _), runs)) in series.iter().zip(&runs).enumerate() {
                let color = LINE_COLORS[k % LINE_COLORS.len()];
                let width = if is_noisy(runs, log_y) { 1 } else { 2 };
                let style = color.stroke_width(width);
                // The first (possibly empty) run carries the legend entry.
                let first = runs.first().cloned().unwrap_or_default();
                chart
                    .draw_series(LineSeries::new(first, style))
                    .map_err(|e| err(&e))?
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
                for run in runs.iter().skip(1) {
                    chart.draw_series(LineSeries::new(run.iter().copied(), style)).map_err(|e| err(&e))?;
                }
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(160, 160, 160))
                    .label_font(("sans-serif", 15))
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }};
    }

    if log_y {
        let (ya, yb) = if yr.0 > yr.1 {
            (1.0, 10.0)
        } else if yr.0 == yr.1 {
            (yr.0 / 2.0, yr.1 * 2.0)
        } else {
            (yr.0, yr.1)
        };
        // plotters' log axis labels only powers of ten, none when the range spans less than a decade
        draw_lines!(builder.build_cartesian_2d(xa..xb, (ya..yb).log_scale().with_key_points(log_ticks(ya, yb))));
    } else {
        let (ya, yb) = if yr.0 > yr.1 {
            (0.0, 1.0)
        } else if yr.0 == yr.1 {
            (yr.0 - 0.5 * yr.0.abs().max(1.0), yr.1 + 0.5 * yr.1.abs().max(1.0))
        } else {
            let m = 0.03 * (yr.1 - yr.0);
            (yr.0 - m, yr.1 + m)
        };
        draw_lines!(builder.build_cartesian_2d(xa..xb, ya..yb));
    }

    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Tick values for a log axis over [lo, hi] (0 < lo < hi): the numbers
/// 1, 2, 5 × 10^k inside, or 1…9 × 10^k when those are fewer than three, or
/// only the powers of ten when there are more than twelve.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |mantissas: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            // m / 10^|k| rather than m · 10^k: the division is correctly rounded (0.3, not 0.30000000000000004)
            .flat_map(|k| mantissas.iter().map(move |m| if k < 0 { m / 10f64.powi(-k) } else { m * 10f64.powi(k) }))
            .filter(|v| *v >= lo * (1.0 - 1e-12) && *v <= hi * (1.0 + 1e-12))
            .collect()
    };
    if !(lo > 0.0 && hi > lo && lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let t = within(&[1.0, 2.0, 5.0]);
    if t.len() > 12 {
        within(&[1.0])
    } else if t.len() < 3 {
        within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    } else {
        t
    }
}

/// Bias-corrected exponential moving average (as in Adam / TensorBoard).
///
/// With decay `alpha` in [0, 1) (weight on the past; e.g. 0.9 or 0.99):
///
/// ```text
/// m_0 = 0,   m_t = alpha * m_{t-1} + (1 - alpha) * v_t,   s_t = m_t / (1 - alpha^t)
/// ```
///
/// so `s_t` is a weighted mean of `v_1..v_t` with weights ∝ `alpha^(t-k)`,
/// without the start-up bias towards 0 (`s_1 = v_1`; a constant input is
/// returned unchanged). `alpha = 0` returns the input.
///
/// `alpha` is clamped to [0, 1 - 1e-9] (NaN is taken as 0). Non-finite
/// inputs do not update the average (`t` counts only finite values); the
/// output there repeats the current average, or is NaN if no finite value
/// has been seen yet. The output has the same length as the input.
pub fn ema_smooth(values: &[f64], alpha: f64) -> Vec<f64> {
    let a = if alpha.is_nan() { 0.0 } else { alpha.clamp(0.0, 1.0 - 1e-9) };
    let mut m = 0.0;
    let mut decay = 1.0; // alpha^t
    let mut out = Vec::with_capacity(values.len());
    for &v in values {
        if v.is_finite() {
            m = a * m + (1.0 - a) * v;
            decay *= a;
        }
        out.push(if decay < 1.0 { m / (1.0 - decay) } else { f64::NAN });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log axis gets labels whatever its span: 1-2-5 steps over a few
    /// decades, every integer mantissa inside one decade, powers of ten over many.
    #[test]
    fn log_ticks_label_every_span() {
        assert_eq!(log_ticks(0.3, 0.87), vec![0.3, 0.4, 0.5, 0.6, 0.7, 0.8]);
        assert_eq!(log_ticks(0.05, 3.0), vec![0.05, 0.1, 0.2, 0.5, 1.0, 2.0]);
        assert_eq!(log_ticks(1e-6, 1e3).len(), 10);
        assert!(log_ticks(0.0, 1.0).is_empty() && log_ticks(2.0, 1.0).is_empty());
        for (lo, hi) in [(0.3, 0.87), (0.05, 3.0), (1e-6, 1e3), (0.999, 1.001)] {
            let t = log_ticks(lo, hi);
            assert!(t.iter().all(|v| *v >= lo * (1.0 - 1e-12) && *v <= hi * (1.0 + 1e-12)), "{t:?}");
        }
    }
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scoregen_plots_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn read_png(path: &Path) -> image::RgbaImage {
        let bytes = std::fs::read(path).expect("plot file exists");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG: {}", path.display());
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("decodable PNG").to_rgba8()
    }

    fn px(img: &image::RgbaImage, x: i32, y: i32) -> [u8; 3] {
        let p = img.get_pixel(x as u32, y as u32).0;
        [p[0], p[1], p[2]]
    }

    fn close(a: [u8; 3], b: RGBColor, tol: i32) -> bool {
        let b = [b.0, b.1, b.2];
        (0..3).all(|k| (a[k] as i32 - b[k] as i32).abs() <= tol)
    }

    #[test]
    fn bounds_cover_points_with_margin() {
        let p = Points::from_rows(&[vec![0.0, -1.0, 7.0], vec![2.0, 3.0, -9.0], vec![1.0, f64::NAN, 0.0]]);
        let b = Bounds::around(&p, 0.1);
        assert!((b.x.0 + 0.2).abs() < 1e-12 && (b.x.1 - 2.2).abs() < 1e-12, "{b:?}");
        assert!((b.y.0 + 1.4).abs() < 1e-12 && (b.y.1 - 3.4).abs() < 1e-12, "{b:?}");
    }

    #[test]
    fn bounds_of_empty_or_degenerate_sets_are_finite_and_nonempty() {
        for p in [
            Points::new(0, 2, vec![]),
            Points::new(0, 0, vec![]),
            Points::new(1, 2, vec![5.0, 5.0]),
            Points::new(2, 1, vec![3.0, f64::INFINITY]),
            Points::new(1, 2, vec![f64::NAN, f64::NAN]),
        ] {
            let b = Bounds::around(&p, 0.05);
            assert!(b.is_valid(), "{p:?} -> {b:?}");
        }
        let b = Bounds::around(&Points::new(1, 2, vec![5.0, -2.0]), 0.0);
        assert!(b.x.0 < 5.0 && b.x.1 > 5.0 && b.y.0 < -2.0 && b.y.1 > -2.0, "{b:?}");
    }

    #[test]
    fn scatter_without_density_is_png_of_right_size_with_dots() {
        let path = tmp("scatter_plain.png");
        let _ = std::fs::remove_file(&path);
        // A dense clump at the origin, plus points outside the bounds and a NaN.
        let mut rows: Vec<Vec<f64>> = (0..50).map(|_| vec![0.0, 0.0]).collect();
        rows.push(vec![100.0, 0.0]);
        rows.push(vec![f64::NAN, 0.0]);
        let pts = Points::from_rows(&rows);
        let b = Bounds { x: (-1.0, 1.0), y: (-1.0, 1.0) };
        let (xr, yr) = scatter_impl(&path, &pts, None, &b, "plain").unwrap();
        let img = read_png(&path);
        assert_eq!(img.dimensions(), SCATTER_SIZE);
        let c = px(&img, (xr.start + xr.end) / 2, (yr.start + yr.end) / 2);
        assert!(close(c, DOT_PLAIN, 60), "centre pixel {c:?} is not a dark-blue dot");
        let corner = px(&img, xr.start + 5, yr.start + 5);
        assert!(corner.iter().all(|&v| v > 200), "empty corner {corner:?} not light");
    }

    #[test]
    fn scatter_with_density_colours_mode_differently_from_far_away() {
        let path = tmp("scatter_density.png");
        let _ = std::fs::remove_file(&path);
        let logp = |x: f64, y: f64| -0.5 * (x * x + y * y) - (2.0 * std::f64::consts::PI).ln();
        let pts = Points::new(1, 2, vec![3.0, -3.0]); // away from the sampled pixels
        let b = Bounds { x: (-4.0, 4.0), y: (-4.0, 4.0) };
        let (xr, yr) = scatter_impl(&path, &pts, Some(&logp), &b, "N(0, I)").unwrap();
        let img = read_png(&path);
        assert_eq!(img.dimensions(), SCATTER_SIZE);
        let centre = px(&img, (xr.start + xr.end) / 2, (yr.start + yr.end) / 2);
        let corner = px(&img, xr.start + 3, yr.start + 3);
        assert!(close(centre, viridis(1.0), 12), "mode pixel {centre:?} is not the top colour");
        assert!(close(corner, viridis(0.0), 12), "far pixel {corner:?} is not the bottom colour");
        assert_ne!(centre, corner);
        // Outside the plotting area the background stays white.
        assert_eq!(px(&img, 2, 2), [255, 255, 255]);
    }

    #[test]
    fn scatter_with_degenerate_density_does_not_panic() {
        let path = tmp("scatter_degenerate.png");
        let b = Bounds { x: (-1.0, 1.0), y: (-1.0, 1.0) };
        let pts = Points::new(0, 2, vec![]);
        let f = |_: f64, _: f64| f64::NEG_INFINITY;
        scatter_over_density(&path, &pts, Some(&f), &b, "").unwrap();
        let g = |x: f64, _: f64| if x > 0.0 { f64::NAN } else { 1.0 };
        scatter_over_density(&path, &pts, Some(&g), &b, "").unwrap();
        assert_eq!(read_png(&path).dimensions(), SCATTER_SIZE);
    }

    #[test]
    fn scatter_with_invalid_bounds_is_err() {
        let path = tmp("bad_bounds.png");
        let pts = Points::new(0, 2, vec![]);
        for b in [Bounds { x: (1.0, 1.0), y: (0.0, 1.0) }, Bounds { x: (0.0, 1.0), y: (f64::NAN, 1.0) }] {
            let e = scatter_over_density(&path, &pts, None, &b, "t").unwrap_err();
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn writing_into_missing_directory_is_err_naming_the_path() {
        let path = tmp("no_such_dir").join("sub").join("plot.png");
        let pts = Points::new(1, 2, vec![0.0, 0.0]);
        let b = Bounds::around(&pts, 0.1);
        let e = scatter_over_density(&path, &pts, None, &b, "t").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("writing plot ") && msg.contains(&path.display().to_string()), "{msg}");

        let s: &[(f64, f64)] = &[(0.0, 1.0), (1.0, 2.0)];
        let e = line_plot(&path, &[("a", s)], "t", "x", "y", false).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn line_plot_linear_and_log_are_pngs_of_right_size() {
        let raw: Vec<(f64, f64)> = (0..500)
            .map(|i| (i as f64, 10.0 * (-(i as f64) / 100.0).exp() * (1.0 + 0.3 * (i as f64 * 1.7).sin())))
            .collect();
        let ys: Vec<f64> = raw.iter().map(|p| p.1).collect();
        let ema: Vec<(f64, f64)> = raw.iter().zip(ema_smooth(&ys, 0.95)).map(|(p, s)| (p.0, s)).collect();
        // Non-positive and non-finite values must be skipped in log mode.
        let bad: Vec<(f64, f64)> =
            vec![(0.0, 1.0), (1.0, 0.0), (2.0, -3.0), (3.0, f64::NAN), (4.0, 2.0), (f64::INFINITY, 1.0)];
        for log_y in [false, true] {
            let path = tmp(&format!("lines_{log_y}.png"));
            let _ = std::fs::remove_file(&path);
            line_plot(
                &path,
                &[("loss", &raw), ("loss (EMA 0.95)", &ema), ("bad", &bad), ("empty", &[])],
                "training loss",
                "step",
                "loss",
                log_y,
            )
            .unwrap();
            let img = read_png(&path);
            assert_eq!(img.dimensions(), LINE_PLOT_SIZE);
            // Some pixels carry the first series' colour.
            let c = LINE_COLORS[0];
            assert!(img.pixels().any(|p| close([p[0], p[1], p[2]], c, 10)), "no line drawn (log_y={log_y})");
        }
        // Empty input still renders axes.
        let path = tmp("lines_empty.png");
        line_plot(&path, &[], "", "", "", true).unwrap();
        assert_eq!(read_png(&path).dimensions(), LINE_PLOT_SIZE);
    }

    #[test]
    fn noisy_series_are_detected() {
        let smooth: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, (-(i as f64) / 300.0).exp())).collect();
        let noisy: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, 1.0 + 0.5 * (i % 2) as f64)).collect();
        for log_y in [false, true] {
            assert!(!is_noisy(std::slice::from_ref(&smooth), log_y));
            assert!(is_noisy(std::slice::from_ref(&noisy), log_y));
        }
        assert!(!is_noisy(&[], false));
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(4.0), "4");
        assert_eq!(tick(-2.5), "-2.5");
        assert_eq!(tick(0.1 + 0.2), "0.3");
        assert_eq!(tick(1e-4), "1e-4");
        assert_eq!(tick(2.5e6), "2.5e6");
    }

    #[test]
    fn ema_of_constant_is_constant() {
        for alpha in [0.0, 0.5, 0.9, 0.999] {
            let s = ema_smooth(&[3.25; 100], alpha);
            assert_eq!(s.len(), 100);
            assert!(s.iter().all(|v| (v - 3.25).abs() < 1e-9), "alpha {alpha}: {s:?}");
        }
    }

    #[test]
    fn ema_matches_formula_and_skips_non_finite() {
        let s = ema_smooth(&[1.0, 2.0, 4.0], 0.5);
        // m1 = .5, m2 = 1.25, m3 = 2.625; corrections .5, .75, .875
        let want = [1.0, 1.25 / 0.75, 2.625 / 0.875];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        let s = ema_smooth(&[f64::NAN, 2.0, f64::INFINITY, 2.0], 0.9);
        assert!(s[0].is_nan());
        assert!(s[1..].iter().all(|v| (v - 2.0).abs() < 1e-12), "{s:?}");
        assert!(ema_smooth(&[], 0.9).is_empty());
    }
}
