//! `scoregen._scoregen`: the native half of the Python package `scoregen`
//! (the Python half, `python/scoregen/`, re-exports it with docstrings,
//! stubs and the optional PyTorch loader).
//!
//! Everything here calls the library's own functions: a run is loaded by
//! `app::run_dir::LoadedModel` and sampled through
//! `app::commands::sample::sample_loaded` (the path `scoregen sample` takes),
//! likelihoods by `app::commands::likelihood::likelihood_of_points`, metrics
//! by `app::commands::eval::evaluate`, training by `app::commands::train::train_and_report`,
//! and any sampler by the one dispatcher `SamplerSpec::sample`. Long Rust work
//! runs with the GIL released.

// Python's keyword arguments are the Rust functions' parameters.
#![allow(clippy::too_many_arguments)]

mod convert;
mod pyscore;

use convert::{guard, AssertSend, Input};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use scoregen::app::commands::eval::{EvalTarget, Target};
use scoregen::app::commands::likelihood::{likelihood_of_points, LikelihoodRequest};
use scoregen::app::commands::sample::{check_counts, sample_loaded, ClassChoice, ClassGuidance, SampleRequest};
use scoregen::app::commands::train::{train_and_report, TrainAndReportError, TrainedRun, REPORT_BY_DEFAULT};
use scoregen::app::config::RunConfig;
use scoregen::app::run_dir::LoadedModel;
use scoregen::likelihood::{self, LikelihoodOptions, ProbeNoise, TraceEstimator};
use scoregen::oracle::{GaussianMixture, OracleScore};
use scoregen::points::Points;
use scoregen::rng::Rng;
use scoregen::samplers::{Grid, OdeMethod, SampleContext, SamplerKind, SamplerSpec};
use scoregen::score::ScoreFn;
use scoregen::sde::{self as sdes, Sde};
use scoregen::train::{streams, DataParallel, ExistingRun, LogFn, LogHook, LogLine, TrainOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

fn tensor(a: &Input, dtype: DType) -> PyResult<Tensor> {
    Tensor::from_vec(a.data.clone(), a.shape.as_slice(), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(convert::candle_error)
}

fn tensor_data(t: &Tensor) -> PyResult<Vec<f64>> {
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).map_err(convert::candle_error)
}

// ---------------------------------------------------------------- SDEs

/// A forward SDE dx = f(x, t) dt + g(t) dw with linear drift f = a(t)·x and
/// Gaussian perturbation kernel p_{0t}(x(t) | x(0)) = N(m(t)·x(0), s(t)²·I).
#[pyclass(subclass, frozen, module = "scoregen.sde", name = "Sde")]
pub struct PySde {
    pub inner: Arc<dyn Sde>,
}

#[pymethods]
impl PySde {
    /// "ve", "vp" or "subvp".
    #[getter]
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// Standard deviation s_T of the prior N(0, s_T²·I).
    #[getter]
    fn prior_std(&self) -> f64 {
        self.inner.prior_std()
    }

    /// The smallest time the samplers stop at.
    #[getter]
    fn sampling_eps(&self) -> f64 {
        self.inner.sampling_eps()
    }

    /// (m(t), s(t)) of the perturbation kernel N(m(t)·x(0), s(t)²·I): floats
    /// for a float t, arrays for an array of times.
    fn marginal(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<(PyObject, PyObject)> {
        self.per_time(py, t, |t| self.inner.marginal(t))
    }

    /// g(t), the diffusion coefficient.
    fn diffusion(&self, py: Python<'_>, t: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        Ok(self.per_time(py, t, |t| (self.inner.diffusion(t), 0.0))?.0)
    }

    /// f(x, t) = a(t)·x for x of shape [N, D] and t a float or shape [N].
    fn drift(&self, py: Python<'_>, x: &Bound<'_, PyAny>, t: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let x = convert::points(x, "x", None)?;
        let (n, d) = (x.shape[0], x.shape[1]);
        let t = convert::times(t, n)?;
        let out: Vec<f64> = (0..n * d).map(|i| self.inner.drift_coef(t[i / d]) * x.data[i]).collect();
        convert::to_numpy(py, &x.shape, out, x.f32)
    }

    fn __repr__(&self) -> String {
        match self.inner.name() {
            "ve" => {
                let (s0, s1) = (sdes::sigma_of(self.inner.as_ref(), 0.0), sdes::sigma_of(self.inner.as_ref(), 1.0));
                format!("VE(sigma_min={s0}, sigma_max={s1})")
            }
            name => format!("Sde({name})"),
        }
    }
}

impl PySde {
    fn per_time(
        &self,
        py: Python<'_>,
        t: &Bound<'_, PyAny>,
        f: impl Fn(f64) -> (f64, f64),
    ) -> PyResult<(PyObject, PyObject)> {
        let check = |t: f64| {
            if t.is_finite() && (0.0..=self.inner.t_max()).contains(&t) {
                Ok(t)
            } else {
                Err(PyValueError::new_err(format!("t: times must lie in [0, {}] (got {t})", self.inner.t_max())))
            }
        };
        if let Ok(v) = t.extract::<f64>() {
            let (a, b) = f(check(v)?);
            return Ok((a.into_pyobject(py)?.into_any().unbind(), b.into_pyobject(py)?.into_any().unbind()));
        }
        let a = convert::array(t, "t")?;
        let (mut xs, mut ys) = (Vec::with_capacity(a.data.len()), Vec::with_capacity(a.data.len()));
        for &v in &a.data {
            let (x, y) = f(check(v)?);
            xs.push(x);
            ys.push(y);
        }
        Ok((convert::to_numpy(py, &a.shape, xs, a.f32)?, convert::to_numpy(py, &a.shape, ys, a.f32)?))
    }
}

fn positive(name: &str, v: f64) -> PyResult<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!("{name} must be a finite number > 0 (got {v})")))
    }
}

/// Variance exploding: σ(t) = σ_min·(σ_max/σ_min)^t, m(t) = 1, s(t) = σ(t)
/// (score_sde's VESDE; the prior is N(0, σ_max²·I)).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "VE")]
pub struct Ve;

#[pymethods]
impl Ve {
    #[new]
    #[pyo3(signature = (sigma_min = 0.01, sigma_max = 10.0))]
    fn new(sigma_min: f64, sigma_max: f64) -> PyResult<(Self, PySde)> {
        positive("sigma_min", sigma_min)?;
        if !(sigma_max.is_finite() && sigma_max > sigma_min) {
            return Err(PyValueError::new_err(format!("sigma_max must be > sigma_min (got {sigma_max})")));
        }
        Ok((Ve, PySde { inner: Arc::new(sdes::VeSde::new(sigma_min, sigma_max)) }))
    }
}

fn betas(beta_min: f64, beta_max: f64) -> PyResult<()> {
    positive("beta_min", beta_min)?;
    if !(beta_max.is_finite() && beta_max > beta_min) {
        return Err(PyValueError::new_err(format!("beta_max must be > beta_min (got {beta_max})")));
    }
    Ok(())
}

/// Variance preserving: β(t) = β_min + t(β_max − β_min),
/// m(t) = exp(−½∫₀ᵗβ), s(t)² = 1 − m(t)² (DDPM's continuous limit).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "VP")]
pub struct Vp;

#[pymethods]
impl Vp {
    #[new]
    #[pyo3(signature = (beta_min = 0.1, beta_max = 20.0))]
    fn new(beta_min: f64, beta_max: f64) -> PyResult<(Self, PySde)> {
        betas(beta_min, beta_max)?;
        Ok((Vp, PySde { inner: Arc::new(sdes::VpSde::new(beta_min, beta_max)) }))
    }
}

/// Sub-VP: VP's drift with g(t)² = β(t)(1 − exp(−2∫₀ᵗβ)), so s(t) = 1 − m(t)²
/// (Song et al. 2021, eq. 29).
#[pyclass(extends = PySde, frozen, module = "scoregen.sde", name = "SubVP")]
pub struct SubVp;

#[pymethods]
impl SubVp {
    #[new]
    #[pyo3(signature = (beta_min = 0.1, beta_max = 20.0))]
    fn new(beta_min: f64, beta_max: f64) -> PyResult<(Self, PySde)> {
        betas(beta_min, beta_max)?;
        Ok((SubVp, PySde { inner: Arc::new(sdes::SubVpSde::new(beta_min, beta_max)) }))
    }
}

// ---------------------------------------------------------------- the oracle

/// A Gaussian mixture p(x) = Σ_k w_k N(x; μ_k, Σ_k): exact samples, log-density
/// and score, also of the perturbed p_t = Σ_k w_k N(m(t)μ_k, m(t)²Σ_k + s(t)²I).
#[pyclass(frozen, module = "scoregen.oracle", name = "GaussianMixture")]
pub struct PyMixture {
    pub inner: GaussianMixture,
}

#[pymethods]
impl PyMixture {
    #[new]
    fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, covs: Vec<Vec<Vec<f64>>>) -> PyResult<Self> {
        if weights.len() != means.len() || weights.len() != covs.len() {
            return Err(PyValueError::new_err(format!(
                "weights, means and covs must have one entry per component (got {}, {} and {})",
                weights.len(),
                means.len(),
                covs.len()
            )));
        }
        let sum: f64 = weights.iter().sum();
        let weights = weights.iter().map(|w| w / sum).collect();
        GaussianMixture::new(weights, means, covs)
            .map(|inner| Self { inner })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// A named mixture of the project: "gmm8", "gmm25" or "unbalanced".
    #[staticmethod]
    fn named(name: &str) -> PyResult<Self> {
        scoregen::oracle::named_mixture(name).map(|inner| Self { inner }).ok_or_else(|| {
            PyValueError::new_err(format!("unknown mixture `{name}`: expected gmm8, gmm25 or unbalanced"))
        })
    }

    /// The dimension D.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The normalized weights w_k.
    #[getter]
    fn weights(&self) -> Vec<f64> {
        self.inner.weights().to_vec()
    }

    /// The means μ_k, [K, D].
    #[getter]
    fn means(&self, py: Python<'_>) -> PyResult<PyObject> {
        let k = self.inner.n_components();
        let data: Vec<f64> = (0..k).flat_map(|i| self.inner.mean(i).to_vec()).collect();
        convert::out(py, &[k, self.inner.dim()], data)
    }

    /// The covariances Σ_k, [K, D, D].
    #[getter]
    fn covs(&self, py: Python<'_>) -> PyResult<PyObject> {
        let (k, d) = (self.inner.n_components(), self.inner.dim());
        let data: Vec<f64> = (0..k)
            .flat_map(|i| (0..d * d).map(move |j| (i, j)))
            .map(|(i, j)| self.inner.cov(i)[(j / d, j % d)])
            .collect();
        convert::out(py, &[k, d, d], data)
    }

    /// n exact samples, [n, D] float64, from the seeded stream `seed`.
    #[pyo3(signature = (n, seed = 0))]
    fn sample(&self, py: Python<'_>, n: usize, seed: u64) -> PyResult<PyObject> {
        let p = self.inner.sample(n, &mut Rng::new(seed, 0));
        convert::out(py, &[p.n, p.d], p.data)
    }

    /// log p(x) per row of x [N, D]: log Σ_k w_k N(x; μ_k, Σ_k).
    fn log_prob(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.inner.dim()))?;
        let lp = self.inner.log_prob(&Points::new(x.shape[0], x.shape[1], x.data));
        convert::to_numpy(py, &[lp.len()], lp, x.f32)
    }

    /// The score ∇ₓ log p(x) (sde None: t is ignored), or, with an SDE, the
    /// score of the perturbed density ∇ₓ log p_t(x) at time t (a float or one
    /// per row): Σ_k γ_k(x) C_k⁻¹(m μ_k − x), C_k = m²Σ_k + s²I,
    /// γ_k the responsibilities under p_t.
    #[pyo3(signature = (x, t = None, sde = None))]
    fn score(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        t: Option<&Bound<'_, PyAny>>,
        sde: Option<PyRef<'_, PySde>>,
    ) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.inner.dim()))?;
        let (n, d) = (x.shape[0], x.shape[1]);
        let out = match (sde, t) {
            (None, _) => self.inner.score(&Points::new(n, d, x.data.clone())).data,
            (Some(_), None) => return Err(PyValueError::new_err("score: an sde needs a time t")),
            (Some(sde), Some(t)) => {
                let times = convert::times(t, n)?;
                if let Some(bad) = times.iter().find(|&&v| !(0.0..=sde.inner.t_max()).contains(&v)) {
                    return Err(PyValueError::new_err(format!("t: times must lie in [0, 1] (got {bad})")));
                }
                let oracle = OracleScore::new(self.inner.clone(), sde.inner.clone());
                let xt = tensor(&x, DType::F64)?;
                let tt = Tensor::from_vec(times, n, &Device::Cpu).map_err(convert::candle_error)?;
                tensor_data(&oracle.score(&xt, &tt).map_err(convert::candle_error)?)?
            }
        };
        convert::to_numpy(py, &[n, d], out, x.f32)
    }

    fn __repr__(&self) -> String {
        format!("GaussianMixture({} components in {} dimensions)", self.inner.n_components(), self.inner.dim())
    }
}

// ---------------------------------------------------------------- a trained run

/// A trained run folder (config.toml + checkpoints/), loaded once.
#[pyclass(unsendable, module = "scoregen", name = "Run")]
pub struct Run {
    model: LoadedModel,
    path: PathBuf,
    use_ema: bool,
}

fn parse_sampler(name: &str) -> PyResult<SamplerKind> {
    name.parse::<SamplerKind>().map_err(|e| PyValueError::new_err(format!("sampler: {e}")))
}

fn parse_grid(name: Option<&str>) -> PyResult<Option<Grid>> {
    name.map(|g| g.parse::<Grid>().map_err(|e| PyValueError::new_err(format!("grid: {e}")))).transpose()
}

fn parse_trace(trace: &str, probes: usize) -> PyResult<TraceEstimator> {
    match trace {
        "exact" => Ok(TraceEstimator::Exact),
        "hutchinson" if probes >= 1 => Ok(TraceEstimator::Hutchinson { probes, noise: ProbeNoise::Rademacher }),
        "hutchinson" => Err(PyValueError::new_err("probes must be ≥ 1")),
        _ => Err(PyValueError::new_err(format!("trace: expected \"exact\" or \"hutchinson\", found \"{trace}\""))),
    }
}

#[pymethods]
impl Run {
    /// Loads `path/config.toml` and the newest checkpoint (EMA weights unless
    /// `use_ema` is False; default: the run's `sampling.use_ema`).
    #[staticmethod]
    #[pyo3(signature = (path, use_ema = None))]
    fn load(path: PathBuf, use_ema: Option<bool>) -> PyResult<Self> {
        guard(|| {
            scoregen::init();
            let context = |e: scoregen::Error| {
                let py_err = convert::error(e);
                Python::with_gil(|py| {
                    let msg = format!("reading run {}: {}", path.display(), py_err.value(py));
                    let ty = py_err.get_type(py);
                    PyErr::from_type(ty, msg)
                })
            };
            let cfg = RunConfig::load(&path.join("config.toml"), &[]).map_err(context)?;
            let use_ema = use_ema.unwrap_or(cfg.sampling.use_ema);
            let model = LoadedModel::from_run(&path, use_ema, &Device::Cpu).map_err(context)?;
            Ok(Run { model, path, use_ema })
        })
    }

    /// The run's folder.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The run's name (`name` in its config).
    #[getter]
    fn name(&self) -> String {
        self.model.cfg.name.clone()
    }

    /// The data dimension D.
    #[getter]
    fn dim(&self) -> usize {
        self.model.state.dim
    }

    /// The training step of the loaded checkpoint.
    #[getter]
    fn step(&self) -> usize {
        self.model.state.step
    }

    /// Whether the EMA weights were loaded.
    #[getter]
    fn use_ema(&self) -> bool {
        self.use_ema
    }

    /// The safetensors file the weights were read from (EMA or not).
    #[getter]
    fn weights(&self) -> PathBuf {
        self.model.weights.clone()
    }

    /// The resolved config, as TOML.
    #[getter]
    fn config(&self) -> String {
        self.model.cfg.to_toml()
    }

    /// The SDE the run was trained for.
    #[getter]
    fn sde(&self, py: Python<'_>) -> PyResult<Py<PySde>> {
        Py::new(py, PySde { inner: self.model.cfg.sde() })
    }

    /// n samples by `sampler` with `steps` steps from the seeded sampling
    /// stream: the same numbers as `scoregen sample --run PATH --sampler S
    /// --steps K --n N --seed SEED` (float32, as its .npy; float64 keeps the
    /// full precision).
    ///
    /// A class-conditional run: `class_` is a class K or "all" (every class in the
    /// training labels' proportions), default the run's `sampling.class`;
    /// `guidance` the classifier-free weight w (default the run's `sampling.guidance`),
    /// as `--class` and `--guidance`.
    #[pyo3(signature = (n = None, sampler = "dpmpp-2m", steps = 50, grid = None, seed = 0, dtype = "float32", class_ = None, guidance = None))]
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        py: Python<'_>,
        n: Option<usize>,
        sampler: &str,
        steps: usize,
        grid: Option<&str>,
        seed: u64,
        dtype: &str,
        class_: Option<&Bound<'_, PyAny>>,
        guidance: Option<f64>,
    ) -> PyResult<PyObject> {
        let f32 = convert::dtype_is_f32(dtype)?;
        let cfg = &self.model.cfg;
        let n = n.unwrap_or(cfg.sampling.n);
        check_counts(n, steps).map_err(convert::error)?;
        let mut sc: SamplerSpec = cfg.sampling;
        sc.sampler = parse_sampler(sampler)?;
        sc.grid = parse_grid(grid)?.or(sc.grid);
        sc.validate("arguments").map_err(convert::error)?;
        let class = match class_ {
            None => None,
            Some(c) => Some(
                c.str()?
                    .to_string()
                    .parse::<ClassChoice>()
                    .map_err(|e| PyValueError::new_err(format!("class_: {e}")))?,
            ),
        };
        let steer = ClassGuidance::resolve(cfg, class, guidance, None).map_err(convert::error)?;
        let mut req = SampleRequest::new(n, steps, seed, PathBuf::new());
        req.use_ema = self.use_ema;
        let spec = sc;
        let model = AssertSend(&self.model);
        let out = py.allow_threads(move || {
            let model = model;
            guard(|| {
                let s = sample_loaded(model.0, &req, Some(spec), steer.as_ref()).map_err(convert::error)?;
                Points::from_tensor(&s.x).map_err(convert::candle_error)
            })
        })?;
        convert::to_numpy(py, &[out.n, out.d], out.data, f32)
    }

    /// log p(x) of each row of x [N, D] by the probability-flow ODE, as
    /// `scoregen likelihood` computes it: returns (nats, bits_per_dim), each
    /// of shape [N], bits/dim = −log p/(D ln 2). trace: "exact" (Tr ∇ₓs by D
    /// products) or "hutchinson" (`probes` Rademacher probes, unbiased).
    #[pyo3(signature = (x, trace = "exact", probes = 1, seed = 0, rtol = 1e-5, atol = 1e-5))]
    fn log_likelihood(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        trace: &str,
        probes: usize,
        seed: u64,
        rtol: f64,
        atol: f64,
    ) -> PyResult<(PyObject, PyObject)> {
        let x = convert::points(x, "x", Some(self.model.state.dim))?;
        positive("rtol", rtol)?;
        positive("atol", atol)?;
        let req = LikelihoodRequest {
            data: "x".into(),
            n: x.shape[0],
            seed,
            trace: Some(parse_trace(trace, probes)?),
            rtol,
            atol,
            dequantize: None,
            use_ema: self.use_ema,
            quiet: true,
            device: Device::Cpu,
        };
        let pts = Points::new(x.shape[0], x.shape[1], x.data);
        let model = AssertSend(&self.model);
        let ll = py.allow_threads(move || {
            let model = model;
            guard(|| {
                let mut rng = Rng::new(seed, streams::EVAL);
                likelihood_of_points(model.0, &pts, &req, &mut rng).map_err(convert::error)
            })
        })?;
        let n = ll.nats.len();
        Ok((convert::out(py, &[n], ll.nats)?, convert::out(py, &[n], ll.bits_per_dim)?))
    }

    /// The model's score s_θ(x, t) ≈ ∇ₓ log p_t(x) for x [N, D] and t a float
    /// or shape [N] (computed in float32, returned in x's dtype).
    fn score(&self, py: Python<'_>, x: &Bound<'_, PyAny>, t: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.model.state.dim))?;
        let n = x.shape[0];
        let times = convert::times(t, n)?;
        let xt = tensor(&x, DType::F32)?;
        let tt = Tensor::from_vec(times, n, &Device::Cpu).and_then(|t| t.to_dtype(DType::F32));
        let tt = tt.map_err(convert::candle_error)?;
        let model = AssertSend(&self.model);
        let s = py.allow_threads(move || {
            let model = model;
            guard(|| model.0.score().score(&xt, &tt).map_err(convert::candle_error))
        })?;
        convert::to_numpy(py, &x.shape, tensor_data(&s)?, x.f32)
    }

    /// The fixed Fourier frequencies 2π·W of a `time-mlp` run's time
    /// embedding γ(t) = [sin(2πWt), cos(2πWt)] (not in the checkpoint: a
    /// function of model.embed_dim, model.embed_scale and the run's seed), float32.
    fn time_frequencies(&self, py: Python<'_>) -> PyResult<PyObject> {
        let m = &self.model.cfg.model;
        let f = scoregen::nets::GaussianFourier::new(
            m.embed_dim,
            m.embed_scale,
            self.model.cfg.seed,
            DType::F32,
            &Device::Cpu,
        )
        .and_then(|g| g.frequencies().flatten_all()?.to_vec1::<f32>())
        .map_err(convert::candle_error)?;
        convert::out(py, &[f.len()], f)
    }

    fn __repr__(&self) -> String {
        format!(
            "Run({:?}, step {}, dim {})",
            self.path.display().to_string(),
            self.model.state.step,
            self.model.state.dim
        )
    }
}

// ---------------------------------------------------------------- training

fn override_value(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = v.extract::<bool>() {
        return Ok(b.to_string());
    }
    if v.extract::<i64>().is_ok() || v.extract::<f64>().is_ok() {
        return Ok(v.str()?.to_string());
    }
    if let Ok(s) = v.extract::<String>() {
        return Ok(s);
    }
    Err(PyTypeError::new_err(format!("overrides: values must be bool, int, float or str, found {}", v.get_type())))
}

/// Trains a config (a TOML file) into `out` (default `runs/NAME`), with
/// `overrides` as `--set key=value`; `progress(line)` is called with each
/// logged line {"step", "loss", "lr", "grad_norm", "steps_per_sec"} (raise to
/// stop); then, unless `report` is False, writes the run report
/// `RUN/report.html`, as `scoregen train` does (`app::commands::train::train_and_report`).
/// Returns {"run", "step", "final_loss", "seconds", "steps_per_sec", "checkpoint", "report"}.
#[pyfunction]
#[pyo3(signature = (config, out = None, overrides = None, progress = None, resume = false, overwrite = false, report = REPORT_BY_DEFAULT))]
fn train(
    py: Python<'_>,
    config: PathBuf,
    out: Option<PathBuf>,
    overrides: Option<&Bound<'_, PyDict>>,
    progress: Option<Py<PyAny>>,
    resume: bool,
    overwrite: bool,
    report: bool,
) -> PyResult<Py<PyDict>> {
    scoregen::init();
    let mut sets = Vec::new();
    if let Some(o) = overrides {
        for (k, v) in o.iter() {
            sets.push(format!("{}={}", k.extract::<String>()?, override_value(&v)?));
        }
    }
    let cfg = RunConfig::load(&config, &sets).map_err(convert::error)?;
    let dir = out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::new(Mutex::new(None));
    let on_log = progress.map(|f| {
        let raised = raised.clone();
        LogHook(Arc::new(move |line: &LogLine| {
            Python::with_gil(|py| {
                let call = || -> PyResult<()> {
                    py.check_signals()?;
                    let d = PyDict::new(py);
                    d.set_item("step", line.step)?;
                    d.set_item("loss", line.loss)?;
                    d.set_item("lr", line.lr)?;
                    d.set_item("grad_norm", line.grad_norm)?;
                    d.set_item("steps_per_sec", line.steps_per_sec)?;
                    f.bind(py).call1((d,))?;
                    Ok(())
                };
                call().map_err(|e| {
                    let msg = format!("progress callback raised at step {}: {e}", line.step);
                    *raised.lock().expect("not poisoned") = Some(e);
                    scoregen::Error::Invalid(msg)
                })
            })
        }) as Arc<LogFn>)
    });
    let opts = TrainOptions {
        resume,
        quiet: true,
        existing: if overwrite { ExistingRun::MoveAside } else { ExistingRun::Refuse },
        on_log,
        ..Default::default()
    };
    let work = AssertSend((&cfg, &dir, &opts));
    let outcome = py.allow_threads(move || {
        let work = work;
        let (cfg, dir, opts) = work.0;
        guard(|| {
            train_and_report(cfg, dir, opts, DataParallel::default(), report, &Device::Cpu).map_err(|e| match e {
                TrainAndReportError::Training(e) => {
                    convert::error(scoregen::Error::Invalid(format!("training {}: {e}", dir.display())))
                }
                TrainAndReportError::Report(e) => convert::error(e),
            })
        })
    });
    if let Some(e) = raised.lock().expect("not poisoned").take() {
        return Err(e);
    }
    let TrainedRun { outcome: o, report } = outcome?;
    let d = PyDict::new(py);
    d.set_item("run", dir)?;
    d.set_item("step", o.step)?;
    d.set_item("final_loss", o.final_loss)?;
    d.set_item("seconds", o.seconds)?;
    d.set_item("steps_per_sec", o.steps_per_sec)?;
    d.set_item("checkpoint", o.checkpoint)?;
    d.set_item("report", report)?;
    Ok(d.unbind())
}

// ---------------------------------------------------------------- any score

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
/// with the default `[sampling]` config.
#[pyfunction]
#[pyo3(signature = (score_fn, sde, shape, sampler = "dpmpp-2m", steps = 50, seed = 0, grid = None, dtype = "float32", eps = None, denoise = true))]
fn sample(
    py: Python<'_>,
    score_fn: Py<PyAny>,
    sde: PyRef<'_, PySde>,
    shape: &Bound<'_, PyAny>,
    sampler: &str,
    steps: usize,
    seed: u64,
    grid: Option<&str>,
    dtype: &str,
    eps: Option<f64>,
    denoise: bool,
) -> PyResult<PyObject> {
    scoregen::init();
    let native = native_score(py, &score_fn, &sde)?;
    let shape = shape_of(shape)?;
    let f32 = convert::dtype_is_f32(dtype)?;
    check_counts(shape[0], steps).map_err(convert::error)?;
    if let Some(e) = eps {
        positive("eps", e)?;
    }
    let sc = SamplerSpec {
        sampler: parse_sampler(sampler)?,
        grid: parse_grid(grid)?,
        steps,
        eps,
        denoise,
        ..Default::default()
    };
    sc.validate("arguments").map_err(convert::error)?;
    let spec = sc;
    let score = pyscore::PyScore::new(score_fn, None, 1e-3);
    let sde = sde.inner.clone();
    let work = AssertSend((&score, native.as_ref()));
    let out = py.allow_threads(move || {
        let work = work;
        let (py_score, native) = work.0;
        guard(|| {
            let pb = scoregen::progress::bar(0, "", true);
            let score: &dyn ScoreFn = match native {
                Some(s) => s,
                None => py_score,
            };
            let ctx = SampleContext {
                dtype: if f32 { DType::F32 } else { DType::F64 },
                ..SampleContext::new(score, sde.as_ref(), &pb)
            };
            let mut rng = Rng::new(seed, streams::SAMPLING);
            let s = spec.sample(&ctx, shape.clone(), &mut rng).map_err(|e| py_score.explain(e.into()))?;
            let dims = s.x.dims().to_vec();
            Ok((dims, tensor_data(&s.x)?))
        })
    })?;
    convert::to_numpy(py, &out.0, out.1, f32)
}

/// log p(x) of each row of x [N, D] under the model whose score is the Python
/// callable `score_fn(x, t)`, by the probability-flow ODE of `sde` (RK45):
/// log p_ε(x) = log π(x(T)) + ∫_ε^T ∇·f̃(x(t), t) dt, f̃ = f − ½g²s.
/// Returns (nats, bits_per_dim). The divergence ∇·s comes from `divergence(x, t)`
/// when given, else from central differences of step `fd_step` ("exact") or
/// Hutchinson probes with central-difference Jacobian-vector products.
#[pyfunction]
#[pyo3(signature = (score_fn, sde, x, trace = "exact", probes = 1, seed = 0, rtol = 1e-5, atol = 1e-5, eps = None, divergence = None, fd_step = 1e-3))]
fn log_likelihood(
    py: Python<'_>,
    score_fn: Py<PyAny>,
    sde: PyRef<'_, PySde>,
    x: &Bound<'_, PyAny>,
    trace: &str,
    probes: usize,
    seed: u64,
    rtol: f64,
    atol: f64,
    eps: Option<f64>,
    divergence: Option<Py<PyAny>>,
    fd_step: f64,
) -> PyResult<(PyObject, PyObject)> {
    scoregen::init();
    let native = native_score(py, &score_fn, &sde)?;
    let x = convert::points(x, "x", None)?;
    positive("rtol", rtol)?;
    positive("atol", atol)?;
    positive("fd_step", fd_step)?;
    if let Some(e) = eps {
        positive("eps", e)?;
    }
    let opts = LikelihoodOptions {
        trace: Some(parse_trace(trace, probes)?),
        method: OdeMethod::Rk45 { rtol, atol },
        eps,
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

// ---------------------------------------------------------------- metrics

/// Metrics of samples [N, D] against a target, as `scoregen eval --json`
/// prints them (`app::commands::eval::EvalTarget` decides which): a
/// GaussianMixture, a reference array, or a name or path: an image source
/// ("digits", "mnist5k", "fashion-mnist", IDX, PNG folder) judged by the clean
/// classifier in `classifier` (default `classifiers/TARGET`), a mixture name
/// such as "gmm8" or a mixture .toml, or a reference .npy.
#[pyfunction]
#[pyo3(signature = (samples, target, seed = 0, classifier = None))]
fn evaluate_json(
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

/// The names of every sampler, from the sampler table.
#[pyfunction]
fn sampler_names() -> Vec<&'static str> {
    use scoregen::named::Named;
    SamplerKind::names()
}

#[pymodule]
fn _scoregen(m: &Bound<'_, PyModule>) -> PyResult<()> {
    scoregen::init();
    m.add_class::<PySde>()?;
    m.add_class::<Ve>()?;
    m.add_class::<Vp>()?;
    m.add_class::<SubVp>()?;
    m.add_class::<PyMixture>()?;
    m.add_class::<Run>()?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(log_likelihood, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate_json, m)?)?;
    m.add_function(wrap_pyfunction!(sampler_names, m)?)?;
    Ok(())
}
