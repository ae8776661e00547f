//! Figures of a run drawn from its files: samples over the exact density, the loss curve.

use crate::error::{Error, Result};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::{streams, Rng};
use crate::train::{self};
use crate::viz::{self, Bounds};
use std::path::Path;
/// Scatter of 2-D points over the mixture's density when known.
pub fn scatter(path: &Path, pts: &Points, mix: Option<&GaussianMixture>, title: &str) -> Result<()> {
    let bounds = match mix {
        Some(m) => Bounds::around(&m.sample(4000, &mut Rng::new(0, streams::PLOT_BOUNDS)), 0.15),
        None => Bounds::around(pts, 0.1),
    };
    let logp = mix.map(|m| move |x: f64, y: f64| m.log_prob(&Points::new(1, 2, vec![x, y]))[0]);
    let f: Option<&dyn Fn(f64, f64) -> f64> = logp.as_ref().map(|f| f as &dyn Fn(f64, f64) -> f64);
    viz::scatter_over_density(path, pts, f, &bounds, title).map_err(|e| Error::Invalid(e.to_string()))
}

/// Loss curve of a run (raw and EMA-smoothed, log scale).
pub fn loss_plot(run_dir: &Path, path: &Path) -> Result<()> {
    let log = train::read_log(&run_dir.join("metrics.jsonl"))?;
    let raw: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.loss)).collect();
    let smooth: Vec<(f64, f64)> = raw
        .iter()
        .zip(viz::ema_smooth(&raw.iter().map(|p| p.1).collect::<Vec<_>>(), 0.9))
        .map(|(p, s)| (p.0, s))
        .collect();
    viz::line_plot(path, &[("loss", &raw), ("EMA-smoothed", &smooth)], "training loss", "step", "loss", true)
        .map_err(|e| Error::Invalid(e.to_string()))
}
