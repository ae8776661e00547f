//! `scoregen.sample` and `scoregen.log_likelihood` over any score (a Python
//! callable or a GaussianMixture), and the argument parsing `Run` shares
//! (python/scoregen/__init__.py).

use crate::convert::{self, guard, positive, tensor, tensor_data, AssertSend};
use crate::oracle::PyMixture;
use crate::progress;
use crate::pyscore;
use crate::sde::PySde;
use candle_core::DType;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use scoregen::app::commands::sample::{check_counts, SamplerOverrides};
use scoregen::likelihood::{self, LikelihoodOptions, ProbeNoise, TraceEstimator};
use scoregen::oracle::OracleScore;
use scoregen::rng::{streams, Rng};
use scoregen::samplers::{Dpmpp3mForm, Grid, OdeMethod, SampleContext, SamplerKind, SamplerSpec};
use scoregen::score::ScoreFn;

/// `sampler=`: a name from the sampler table.
/// The sampler a Python caller names; `None` (the keyword left out): DPM-Solver++(2M).
pub fn parse_sampler(name: Option<&str>) -> PyResult<SamplerKind> {
    match name {
        None => Ok(DEFAULT_SAMPLER),
        Some(n) => n.parse::<SamplerKind>().map_err(|e| PyValueError::new_err(format!("sampler: {e}"))),
    }
}

/// Python's default sampler: a fast σ-space solver (50 steps are enough on the presets).
pub const DEFAULT_SAMPLER: SamplerKind = SamplerKind::Dpmpp2m;

/// `grid=`: a σ grid's name, or None (the sampler's default).
pub fn parse_grid(name: Option<&str>) -> PyResult<Option<Grid>> {
    name.map(|g| g.parse::<Grid>().map_err(|e| PyValueError::new_err(format!("grid: {e}")))).transpose()
}

/// `trace=` and `probes=`: the divergence estimator of the likelihood.
pub fn parse_trace(trace: &str, probes: usize) -> PyResult<TraceEstimator> {
    match trace {
        "exact" => Ok(TraceEstimator::Exact),
        "hutchinson" if probes >= 1 => Ok(TraceEstimator::Hutchinson { probes, noise: ProbeNoise::Rademacher }),
        "hutchinson" => Err(PyValueError::new_err("probes must be ≥ 1")),
        _ => Err(PyValueError::new_err(format!("trace: expected \"exact\" or \"hutchinson\", found \"{trace}\""))),
    }
}

/// A `GaussianMixture` passed as the score is its exact score under `sde`,
/// computed in Rust with no Python call (the reference the callable path is
/// measured against); anything else must be callable.
fn native_score(py: Python<'_>, score_fn: &Py<PyAny>, sde: &PySde) -> PyResult<Option<OracleScore>> {
    let f = score_fn.bind(py);
    if let Ok(m) = f.downcast::<PyMixture>() {
        return Ok(Some(OracleScore::new(m.get().inner.clone(), sde.inner.clone())));
    }
    if !f.is_callable() {
        return Err(PyTypeError::new_err(
            "score_fn must be callable as score_fn(x, t) -> array like x (or a GaussianMixture: its exact score)",
        ));
    }
    Ok(None)
}

fn shape_of(shape: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let s: Vec<usize> = shape
        .extract()
        .map_err(|_| PyTypeError::new_err("shape: expected a tuple of positive ints, e.g. (1000, 2)"))?;
    if s.len() < 2 || s.contains(&0) {
        return Err(PyValueError::new_err(format!(
            "shape: expected (N, D, …) with every size ≥ 1, found {}",
            convert::shape_str(&s)
        )));
    }
    Ok(s)
}

/// Draws samples of `shape` = (N, D, …) with any sampler over a score given
/// as a Python callable `score_fn(x, t) -> s` (x: [N, D, …], t: [N]),
/// the reverse process of `sde`. Same settings as `scoregen sample` on a run
/// with the default `[sampling]` config; `clip_denoised`, `threshold` and
/// `keep_model_eps` as `--clip-denoised`, `--threshold` and `--keep-model-eps`;
/// `eps` as `--eps`: the Langevin step size ε (`langevin`, `annealed-langevin`
/// at its smallest level, the corrector's; config `sampling.step_size`), checked
/// by the same app function as `Run.sample`'s; `t_eps` the final time ε of the
/// reverse process (config `sampling.eps`; default the SDE's `sampling_eps`);
/// `progress_bar` a tqdm bar of the steps, as `Run.sample`'s;
/// `eta`, `clip_range`, `threshold_max` and `dpmpp_3m_form` as the config's
/// `sampling.eta` (`ddim`), `sampling.clip_range` (diffusers' `clip_sample_range`),
/// `sampling.threshold_max` (`sample_max_value`) and `sampling.dpmpp_3m_form`.
#[pyfunction]
#[pyo3(signature = (score_fn, sde, shape, sampler = None, steps = 50, seed = 0, grid = None, dtype = "float32", eps = None, t_eps = None, denoise = true, clip_denoised = false, threshold = None, keep_model_eps = false, eta = 0.0, clip_range = 1.0, threshold_max = f64::INFINITY, dpmpp_3m_form = "taylor", progress_bar = None))]
pub fn sample(
    py: Python<'_>,
    score_fn: Py<PyAny>,
    sde: PyRef<'_, PySde>,
    shape: &Bound<'_, PyAny>,
    sampler: Option<&str>,
    steps: usize,
    seed: u64,
    grid: Option<&str>,
    dtype: &str,
    eps: Option<f64>,
    t_eps: Option<f64>,
    denoise: bool,
    clip_denoised: bool,
    threshold: Option<f64>,
    keep_model_eps: bool,
    eta: f64,
    clip_range: f64,
    threshold_max: f64,
    dpmpp_3m_form: &str,
    progress_bar: Option<bool>,
) -> PyResult<PyObject> {
    scoregen::init();
    let native = native_score(py, &score_fn, &sde)?;
    let shape = shape_of(shape)?;
    let f32 = convert::dtype_is_f32(dtype)?;
    check_counts(shape[0], steps).map_err(convert::error)?;
    if let Some(e) = t_eps {
        positive("t_eps", e)?;
    }
    // the Langevin step is checked where Run.sample's and `--eps` are
    let step_size = SamplerOverrides { eps, ..Default::default() }
        .apply(&SamplerSpec::default())
        .map_err(convert::error)?
        .step_size;
    let sc = SamplerSpec {
        sampler: parse_sampler(sampler)?,
        grid: parse_grid(grid)?,
        steps,
        eps: t_eps,
        step_size,
        denoise,
        clip_denoised,
        threshold,
        keep_model_eps,
        eta,
        clip_range,
        threshold_max,
        dpmpp_3m_form: dpmpp_3m_form
            .parse::<Dpmpp3mForm>()
            .map_err(|e| PyValueError::new_err(format!("dpmpp_3m_form: {e}")))?,
        ..Default::default()
    };
    sc.validate("arguments").map_err(convert::error)?;
    let spec = sc;
    let score = pyscore::PyScore::new(score_fn, None, 1e-3);
    let sde = sde.inner.clone();
    let work = AssertSend((&score, native.as_ref()));
    let out = progress::with_bars(py, progress_bar, move || {
        let work = work;
        let (py_score, native) = work.0;
        guard(|| {
            let pb = scoregen::progress::bar(steps, "sample", true);
            let score: &dyn ScoreFn = match native {
                Some(s) => s,
                None => py_score,
            };
            let ctx = SampleContext {
                dtype: if f32 { DType::F32 } else { DType::F64 },
                ..SampleContext::new(score, sde.as_ref(), &pb)
            };
            let mut rng = Rng::new(seed, streams::SAMPLING);
            let s = spec.sample(&ctx, shape.clone(), &mut rng).map_err(|e| py_score.explain(e))?;
            let dims = s.x.dims().to_vec();
            Ok((dims, tensor_data(&s.x)?))
        })
    })??;
    convert::to_numpy(py, &out.0, out.1, f32)
}

/// log p(x) of each row of x [N, D] under the model whose score is the Python
/// callable `score_fn(x, t)`, by the probability-flow ODE of `sde` (RK45):
/// log p_ε(x) = log π(x(T)) + ∫_ε^T ∇·f̃(x(t), t) dt, f̃ = f − ½g²s.
/// `t_eps`: the final time ε of the integral (default the SDE's `sampling_eps`).
/// Returns (nats, bits_per_dim). The divergence ∇·s comes from `divergence(x, t)`
/// when given, else from central differences of step `fd_step` ("exact") or
/// Hutchinson probes with central-difference Jacobian-vector products.
#[pyfunction]
#[pyo3(signature = (score_fn, sde, x, trace = "exact", probes = 1, seed = 0, rtol = 1e-5, atol = 1e-5, t_eps = None, divergence = None, fd_step = 1e-3))]
pub fn log_likelihood(
    py: Python<'_>,
    score_fn: Py<PyAny>,
    sde: PyRef<'_, PySde>,
    x: &Bound<'_, PyAny>,
    trace: &str,
    probes: usize,
    seed: u64,
    rtol: f64,
    atol: f64,
    t_eps: Option<f64>,
    divergence: Option<Py<PyAny>>,
    fd_step: f64,
) -> PyResult<(PyObject, PyObject)> {
    scoregen::init();
    let native = native_score(py, &score_fn, &sde)?;
    let x = convert::points(x, "x", None)?;
    positive("rtol", rtol)?;
    positive("atol", atol)?;
    positive("fd_step", fd_step)?;
    if let Some(e) = t_eps {
        positive("t_eps", e)?;
    }
    let opts = LikelihoodOptions {
        trace: Some(parse_trace(trace, probes)?),
        method: OdeMethod::Rk45 { rtol, atol },
        eps: t_eps,
        score_dtype: DType::F64,
        dequantize: None,
    };
    let xt = tensor(&x, DType::F64)?;
    let score = pyscore::PyScore::new(score_fn, divergence, fd_step);
    let sde = sde.inner.clone();
    let work = AssertSend((&score, native.as_ref(), xt));
    let ll = py.allow_threads(move || {
        let work = work;
        let (py_score, native, xt) = work.0;
        guard(|| {
            let mut rng = Rng::new(seed, streams::EVAL);
            let score: &dyn ScoreFn = match native {
                Some(s) => s,
                None => py_score,
            };
            likelihood::log_likelihood(score, sde.as_ref(), &xt, &opts, &mut rng).map_err(|e| py_score.explain(e))
        })
    })?;
    let n = ll.nats.len();
    Ok((convert::out(py, &[n], ll.nats)?, convert::out(py, &[n], ll.bits_per_dim)?))
}

/// The names of every sampler, from the sampler table.
#[pyfunction]
pub fn sampler_names() -> Vec<&'static str> {
    use scoregen::named::Named;
    SamplerKind::names()
}

/// The first `n` standard normals (float32) of the stream `sample(…, seed=seed)`
/// draws from, in the order it draws them: a σ-space sampler's x_T first
/// (x_σ₀ = σ₀·z, N·D values, row-major), then N·D for each step that draws
/// (`ddim` with η > 0, `ddpm`, `euler-ancestral`, `dpmpp-2m-sde`: every step
/// that does not end at σ = 0; `heun` with churn: each churned step). For
/// replaying scoregen's noise into another implementation (the diffusers
/// parity tests).
#[pyfunction]
#[pyo3(signature = (seed, n))]
pub fn sampling_noise(py: Python<'_>, seed: u64, n: usize) -> PyResult<PyObject> {
    let mut rng = Rng::new(seed, streams::SAMPLING);
    let z = rng.randn(n, DType::F32, &candle_core::Device::Cpu).map_err(convert::candle_error)?;
    let v: Vec<f64> = z.to_dtype(DType::F64).and_then(|t| t.to_vec1::<f64>()).map_err(convert::candle_error)?;
    convert::to_numpy(py, &[n], v, true)
}
