//! `scoregen eval`: metrics of samples against a mixture or reference samples,
//! each beside its floor, or, for an image source, the image metrics through
//! the project's classifier. [`EvalTarget`] makes that decision for every front end.

use super::classify::evaluate_images;
use crate::data;
use crate::error::{Error, Result};
use crate::io::npy;
use crate::metrics::images::ImageReport;
use crate::metrics::{self, Distances, MixtureReport};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::rng::{streams, Rng};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `scoregen eval --target T` (and Python's `scoregen.metrics.evaluate`)
/// judges samples against: an image source (digits, mnist5k, fashion-mnist,
/// IDX, PNG folder) by a clean classifier, anything else as a [`Target`].
pub enum EvalTarget {
    /// Image metrics through the classifier in this folder.
    Images {
        classifier: PathBuf,
    },
    Points(Target),
}

impl EvalTarget {
    /// An image source is judged by `classifier` (default: `classifiers/TARGET`,
    /// as `scoregen train-classifier --data TARGET` writes it); anything else is
    /// parsed by [`Target::parse`].
    pub fn parse(target: &str, classifier: Option<&Path>) -> Result<Self> {
        if data::is_image_source(target) {
            let classifier = classifier.map_or_else(|| Path::new("classifiers").join(target), Path::to_path_buf);
            return Ok(EvalTarget::Images { classifier });
        }
        Ok(EvalTarget::Points(Target::parse(target)?))
    }

    /// The metrics of `samples` against this target; `seed` seeds the
    /// floors of point targets, `device` runs the classifier of image targets.
    pub fn evaluate(&self, samples: &Points, seed: u64, device: &Device) -> Result<EvalReport> {
        match self {
            EvalTarget::Images { classifier } => Ok(EvalReport::Images(evaluate_images(samples, classifier, device)?)),
            EvalTarget::Points(t) => Ok(EvalReport::Points(evaluate(samples, t, seed)?)),
        }
    }
}

/// What `scoregen eval` reports: image metrics or point metrics, serialized
/// as the one or the other (`scoregen eval --json`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EvalReport {
    Images(ImageReport),
    Points(Evaluation),
}

impl EvalReport {
    /// The plain-text table `scoregen eval` prints.
    pub fn table(&self) -> String {
        match self {
            EvalReport::Images(r) => r.table(),
            EvalReport::Points(e) => e.table(),
        }
    }
}

/// [`EvalTarget::parse`] then [`EvalTarget::evaluate`]: the metrics of
/// `samples` against `target` (an image source, a mixture name or spec, a
/// reference `.npy`), each beside its floor.
pub fn evaluate_target(
    samples: &Points,
    target: &str,
    classifier: Option<&Path>,
    seed: u64,
    device: &Device,
) -> Result<EvalReport> {
    EvalTarget::parse(target, classifier)?.evaluate(samples, seed, device)
}

/// What `scoregen eval` compares samples with.
pub enum Target {
    Mixture(GaussianMixture),
    Reference(Points),
}

impl Target {
    /// A toy mixture name, a mixture spec `.toml` or a reference `.npy`.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec.ends_with(".npy") {
            return Ok(Target::Reference(npy::read_points(Path::new(spec))?));
        }
        let ds = data::load(spec, 1, &mut Rng::new(0, streams::ORACLE_PROBE))?;
        ds.oracle.map(Target::Mixture).ok_or_else(|| {
            Error::Invalid(format!("target `{spec}` has no exact density; give a mixture (gmm8, gmm25, unbalanced, *.toml) or a reference .npy"))
        })
    }
}

/// Metrics of a sample set against a target, with floors.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Evaluation {
    Mixture(MixtureReport),
    Reference { n: usize, distances: Distances, floor: Distances },
}

pub fn evaluate(samples: &Points, target: &Target, seed: u64) -> Result<Evaluation> {
    let mut rng = Rng::new(seed, streams::EVAL);
    match target {
        Target::Mixture(m) => {
            if m.dim() != samples.d {
                return Err(Error::Invalid(format!(
                    "samples have dimension {}, the target has {}",
                    samples.d,
                    m.dim()
                )));
            }
            Ok(Evaluation::Mixture(metrics::against_mixture(samples, m, &mut rng)))
        }
        Target::Reference(r) => {
            if r.d != samples.d {
                return Err(Error::Invalid(format!("samples have dimension {}, the reference has {}", samples.d, r.d)));
            }
            let (distances, floor) = metrics::against_reference(samples, r, &mut rng);
            Ok(Evaluation::Reference { n: samples.n.min(r.n / 2), distances, floor })
        }
    }
}

impl Evaluation {
    /// A plain-text table: metric, value, floor.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(7);
        let mut s = format!("{:<w0$}  {:>w1$}  {}\n", "metric", "samples", "floor (exact vs exact)");
        for (a, b, c) in rows {
            s += &format!("{a:<w0$}  {b:>w1$}  {c}\n");
        }
        s
    }

    /// The rows of [`Evaluation::table`]: (metric, samples, floor), formatted.
    pub fn rows(&self) -> Vec<(String, String, String)> {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        let (d, f) = match self {
            Evaluation::Mixture(r) => (&r.distances, &r.floor),
            Evaluation::Reference { distances, floor, .. } => (distances, floor),
        };
        rows.push(("MMD² (RBF, median heuristic)".into(), format!("{:.5}", d.mmd2), format!("{:.5}", f.mmd2)));
        rows.push(("energy distance".into(), format!("{:.5}", d.energy), format!("{:.5}", f.energy)));
        rows.push(("sliced Wasserstein-2".into(), format!("{:.4}", d.sliced_w2), format!("{:.4}", f.sliced_w2)));
        if let Evaluation::Mixture(r) = self {
            let w = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ");
            rows.push((
                "modes covered".into(),
                format!("{}/{}", r.modes.covered, r.modes.n_modes),
                format!("{}/{}", r.modes_floor.covered, r.modes_floor.n_modes),
            ));
            let range = |v: &[f64]| {
                let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                if v.len() <= 2 {
                    w(v)
                } else {
                    format!("{lo:.3}–{hi:.3}")
                }
            };
            rows.push(("mode weights".into(), range(&r.modes.weights), range(&r.modes_floor.weights)));
            rows.push((
                "weight L1 error".into(),
                format!("{:.3}", r.modes.weight_l1),
                format!("{:.3}", r.modes_floor.weight_l1),
            ));
            rows.push((
                "off-manifold fraction".into(),
                format!("{:.4}", r.modes.off_manifold),
                format!("{:.4}", r.modes_floor.off_manifold),
            ));
            rows.push((
                "mean log p(x) (nats)".into(),
                format!("{:.3}", r.modes.mean_log_density),
                format!("{:.3}", r.modes_floor.mean_log_density),
            ));
        }
        rows
    }
}
