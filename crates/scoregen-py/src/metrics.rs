//! `scoregen.metrics.evaluate`: what `scoregen eval --json` prints, through the
//! same app decision (image source or points) (python/scoregen/metrics.py).

use crate::convert::{self, guard, AssertSend};
use crate::oracle::PyMixture;
use candle_core::Device;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use scoregen::app::commands::eval::{EvalTarget, Target};
use scoregen::points::Points;
use std::path::PathBuf;

/// Metrics of samples [N, D] against a target, as `scoregen eval --json`
/// prints them (`app::commands::eval::EvalTarget` decides which): a
/// GaussianMixture, a reference array, or a name or path: an image source
/// ("digits", "mnist5k", "fashion-mnist", IDX, PNG folder) judged by the clean
/// classifier in `classifier` (default `classifiers/TARGET`), a mixture name
/// such as "gmm8" or a mixture .toml, or a reference .npy.
#[pyfunction]
#[pyo3(signature = (samples, target, seed = 0, classifier = None))]
pub fn evaluate_json(
    py: Python<'_>,
    samples: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    seed: u64,
    classifier: Option<PathBuf>,
) -> PyResult<String> {
    let s = convert::points(samples, "samples", None)?;
    let pts = Points::new(s.shape[0], s.shape[1], s.data);
    if pts.n < 2 {
        return Err(PyValueError::new_err("samples: need at least 2 points"));
    }
    let target = if let Ok(m) = target.downcast::<PyMixture>() {
        EvalTarget::Points(Target::Mixture(m.get().inner.clone()))
    } else if let Ok(name) = target.extract::<String>() {
        EvalTarget::parse(&name, classifier.as_deref()).map_err(convert::error)?
    } else if let Ok(p) = target.extract::<PathBuf>() {
        EvalTarget::parse(&p.display().to_string(), classifier.as_deref()).map_err(convert::error)?
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
