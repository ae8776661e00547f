//! Trajectories of a 1-D process over its evolving density p_t(x): the
//! forward SDE carrying data to noise and the reverse SDE carrying noise back
//! (the seed's `forward_reverse.png`; Song et al. 2021, Fig. 1).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::RGBColor;

use super::plots::{ensure_font, tick, viridis, PlotError, HEATMAP_CELLS, LOG_DENSITY_RANGE};

/// One panel: paths of (t, x) over the heat map of log p_t(x).
pub struct Panel<'a> {
    pub title: &'a str,
    /// Each path is a list of (t, x) points.
    pub paths: &'a [Vec<(f64, f64)>],
    /// Draw time from right to left (for reverse-time processes).
    pub reverse_time: bool,
}

/// Panels side by side over t ∈ [0, t_max], x ∈ x_range, each with the heat map
/// of `log_density(t, x)` normalized per time column (so every p_t is visible
/// whatever its spread) and its paths as white lines.
pub fn trajectories_over_density(
    path: &Path,
    panels: &[Panel],
    log_density: &dyn Fn(f64, f64) -> f64,
    t_max: f64,
    x_range: (f64, f64),
) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError(format!("writing plot {}: {e}", path.display()));
    ensure_font(path)?;
    let width = 560 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let n = HEATMAP_CELLS;
    let (x0, x1) = x_range;
    let (dt, dx) = (t_max / n as f64, (x1 - x0) / n as f64);
    // per-column colour scale: log p_t relative to its maximum over x
    let mut cells = vec![0.0; n * n];
    for i in 0..n {
        let t = (i as f64 + 0.5) * dt;
        let col: Vec<f64> = (0..n).map(|j| log_density(t, x0 + (j as f64 + 0.5) * dx)).collect();
        let top = col.iter().copied().filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
        for j in 0..n {
            cells[i * n + j] =
                if col[j].is_finite() && top.is_finite() { 1.0 + (col[j] - top) / LOG_DENSITY_RANGE } else { 0.0 };
        }
    }
    for (area, panel) in areas.iter().zip(panels) {
        let t_axis = if panel.reverse_time { t_max..0.0 } else { 0.0..t_max };
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(t_axis, x0..x1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("t")
            .y_desc("x")
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series((0..n * n).map(|k| {
                let (i, j) = ((k / n) as f64, (k % n) as f64);
                Rectangle::new(
                    [(i * dt, x0 + j * dx), ((i + 1.0) * dt, x0 + (j + 1.0) * dx)],
                    viridis(cells[k]).filled(),
                )
            }))
            .map_err(|e| err(&e))?;
        for p in panel.paths {
            let pts: Vec<(f64, f64)> =
                p.iter().copied().filter(|(_, x)| x.is_finite()).map(|(t, x)| (t, x.clamp(x0, x1))).collect();
            chart
                .draw_series(LineSeries::new(pts, RGBColor(255, 255, 255).mix(0.8).stroke_width(1)))
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
