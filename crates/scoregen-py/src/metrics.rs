//! `scoregen.metrics.evaluate`: what `scoregen eval --json` prints, through the
//! same app decision (image source or points) (python/scoregen/metrics.py);
//! and the pieces of FID and IS on their own: pytorch-fid's Inception network,
//! the Fréchet distance, the Inception Score, precision and recall.

use crate::convert::{self, guard, AssertSend};
use crate::oracle::PyMixture;
use candle_core::Device;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use scoregen::app::commands::eval::{self, EvalTarget, Target};
use scoregen::data::PixelScale;
use scoregen::metrics::fid::{self, GaussianStats};
use scoregen::points::Points;
use std::path::PathBuf;

/// Metrics of samples [N, D] against a target, as `scoregen eval --json`
/// prints them (`app::commands::eval::EvalTarget` decides which): a
/// GaussianMixture, a reference array, or a name or path: an image source
/// ("digits", "mnist5k", "fashion-mnist", IDX, PNG folder) judged by the clean
/// classifier in `classifier` (default `classifiers/TARGET`), a mixture name
/// such as "gmm8" or a mixture .toml, or a reference .npy.
#[pyfunction]
#[pyo3(signature = (samples, target, seed = 0, classifier = None, inception = None))]
pub fn evaluate_json(
    py: Python<'_>,
    samples: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    seed: u64,
    classifier: Option<PathBuf>,
    inception: Option<PathBuf>,
) -> PyResult<String> {
    let s = convert::points(samples, "samples", None)?;
    let pts = Points::new(s.shape[0], s.shape[1], s.data);
    if pts.n < 2 {
        return Err(PyValueError::new_err("samples: need at least 2 points"));
    }
    let target = if let Ok(m) = target.downcast::<PyMixture>() {
        EvalTarget::Points(Target::Mixture(m.get().inner.clone()))
    } else if let Ok(name) = target.extract::<String>() {
        EvalTarget::parse(&name, classifier.as_deref(), inception.as_deref()).map_err(convert::error)?
    } else if let Ok(p) = target.extract::<PathBuf>() {
        EvalTarget::parse(&p.display().to_string(), classifier.as_deref(), inception.as_deref())
            .map_err(convert::error)?
    } else {
        let r = convert::points(target, "target", Some(pts.d))?;
        EvalTarget::Points(Target::Reference(Points::new(r.shape[0], r.shape[1], r.data)))
    };
    let work = AssertSend((&pts, &target));
    let ev = py.allow_threads(move || {
        let work = work;
        let (pts, target) = work.0;
        guard(|| target.evaluate(pts, seed, &Device::Cpu).map_err(convert::error))
    })?;
    serde_json::to_string(&ev).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// pytorch-fid's Inception-v3 (weights: a safetensors file of its state
/// dict) on images [N, C, H, W] in [0, 1], C = 3 (or 1, repeated to RGB):
/// (pool3 features [N, 2048], unbiased logits [N, 1008]), float64.
/// `app::commands::eval::inception_outputs`, the path `scoregen eval --inception` takes.
#[pyfunction]
pub fn inception(py: Python<'_>, images: &Bound<'_, PyAny>, weights: PathBuf) -> PyResult<(PyObject, PyObject)> {
    let a = convert::array(images, "images")?;
    let [n, c, h, w] = a.shape[..] else {
        return Err(PyValueError::new_err(format!(
            "images: expected shape [N, C, H, W], found {}",
            convert::shape_str(&a.shape)
        )));
    };
    let pts = Points::new(n, c * h * w, a.data);
    let (f, l) = py.allow_threads(move || {
        guard(|| {
            let net = eval::load_inception(&weights, &Device::Cpu).map_err(convert::error)?;
            eval::inception_outputs(&net, &pts, (c, h, w), PixelScale::Unit, "images", true).map_err(convert::error)
        })
    })?;
    Ok((convert::out(py, &[n, f.d], f.data)?, convert::out(py, &[n, l.d], l.data)?))
}

/// The Fréchet distance between the Gaussians fitted to two feature sets
/// [N, D], [M, D] (`metrics::fid`, pytorch-fid's `calculate_frechet_distance`).
#[pyfunction]
pub fn frechet_distance(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<f64> {
    let x = convert::points(a, "a", None)?;
    let y = convert::points(b, "b", Some(x.shape[1]))?;
    let (x, y) = (Points::new(x.shape[0], x.shape[1], x.data), Points::new(y.shape[0], y.shape[1], y.data));
    py.allow_threads(move || {
        guard(|| fid::frechet_distance(&GaussianStats::of(&x), &GaussianStats::of(&y)).map_err(convert::error))
    })
}

/// The Inception Score (mean, std) of logits [N, K] over `splits` parts.
#[pyfunction]
#[pyo3(signature = (logits, splits = 10))]
pub fn inception_score(logits: &Bound<'_, PyAny>, splits: usize) -> PyResult<(f64, f64)> {
    let l = convert::points(logits, "logits", None)?;
    let s = fid::inception_score(&Points::new(l.shape[0], l.shape[1], l.data), splits).map_err(convert::error)?;
    Ok((s.mean, s.std))
}

/// Improved precision and recall (Kynkäänniemi et al. 2019) of `generated`
/// against `real` features, k-th neighbour balls.
#[pyfunction]
#[pyo3(signature = (real, generated, k = 3))]
pub fn precision_recall(
    py: Python<'_>,
    real: &Bound<'_, PyAny>,
    generated: &Bound<'_, PyAny>,
    k: usize,
) -> PyResult<(f64, f64)> {
    let r = convert::points(real, "real", None)?;
    let g = convert::points(generated, "generated", Some(r.shape[1]))?;
    let (r, g) = (Points::new(r.shape[0], r.shape[1], r.data), Points::new(g.shape[0], g.shape[1], g.data));
    let pr = py.allow_threads(move || {
        guard(|| scoregen::metrics::precision_recall::precision_recall(&r, &g, k).map_err(convert::error))
    })?;
    Ok((pr.precision, pr.recall))
}
