//! `scoregen.Run`: a trained run folder, sampled, scored and measured as the
//! command line does it (python/scoregen/__init__.py).

use crate::convert::{self, guard, positive, tensor, tensor_data, AssertSend};
use crate::progress;
use crate::sampling::{parse_grid, parse_sampler, parse_trace};
use crate::sde::PySde;
use candle_core::{DType, Device, Tensor};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use scoregen::app::commands::inpaint::{inpaint_loaded, read_input, InpaintSettings};
use scoregen::app::commands::likelihood::{likelihood_of_points, LikelihoodRequest};
use scoregen::app::commands::sample::{
    check_counts, sample_loaded, ClassChoice, ClassGuidance, SampleRequest, SamplerOverrides,
};
use scoregen::app::run_dir::LoadedModel;
use scoregen::guidance::MaskSpec;
use scoregen::points::Points;
use scoregen::rng::{streams, Rng};
use scoregen::samplers::CorrectorKind;
use std::path::PathBuf;

/// A trained run folder (config.toml + checkpoints/), loaded once.
#[pyclass(unsendable, module = "scoregen", name = "Run")]
pub struct Run {
    model: LoadedModel,
    path: PathBuf,
    use_ema: bool,
    /// The last samples `sample` drew and its steps, for `_repr_html_`'s picture.
    last: std::cell::RefCell<Option<(Points, usize)>>,
}

impl Run {
    /// x [N, D] and its times t (a float or [N]) as f32 tensors on the CPU.
    fn tensors(x: &convert::Input, t: &Bound<'_, PyAny>) -> PyResult<(Tensor, Tensor)> {
        let times = convert::times(t, x.shape[0])?;
        let xt = tensor(x, DType::F32)?;
        let tt = Tensor::from_vec(times, x.shape[0], &Device::Cpu).and_then(|t| t.to_dtype(DType::F32));
        Ok((xt, tt.map_err(convert::candle_error)?))
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
            let cfg = scoregen::app::run_dir::config_of(&path).map_err(context)?;
            let use_ema = use_ema.unwrap_or(cfg.sampling.use_ema);
            let model = LoadedModel::from_run(&path, use_ema, &Device::Cpu).map_err(context)?;
            Ok(Run { model, path, use_ema, last: Default::default() })
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
    /// Every other flag of `scoregen sample` is a keyword of the same name
    /// (`-` as `_`), default the run's `[sampling]` as there, applied and
    /// checked by the same app function (`SamplerOverrides::apply`):
    /// `corrector`, `snr`, `rtol`, `atol`, `eps` (the Langevin step size),
    /// `steps_per_level`, `eta`, `churn`, `grid`, `clip_denoised`, `threshold`,
    /// `clip_range`, `keep_model_eps`, `vp_start`.
    ///
    /// A class-conditional run: `class_` is a class K or "all" (every class in the
    /// training labels' proportions), default the run's `sampling.class`;
    /// `guidance` the guidance weight w (default the run's `sampling.guidance`);
    /// `classifier` a noise-aware classifier folder for classifier guidance,
    /// as `--class`, `--guidance` and `--classifier`.
    ///
    /// `x_init`: x_T [n, D] (or [n, C, H, W] images) to start from instead of
    /// the seed's draw, as `--init-noise` (e.g. a diffusers pipeline's latents).
    /// `progress_bar`: a tqdm bar of the steps (None: when tqdm is installed and
    /// the output is a notebook or a terminal; True: always; False: never).
    #[pyo3(signature = (n = None, sampler = None, steps = 50, grid = None, seed = 0, dtype = "float32", class_ = None, guidance = None, x_init = None, eta = None, corrector = None, snr = None, rtol = None, atol = None, eps = None, steps_per_level = None, churn = None, clip_denoised = false, threshold = None, clip_range = None, keep_model_eps = false, vp_start = false, classifier = None, progress_bar = None))]
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        py: Python<'_>,
        n: Option<usize>,
        sampler: Option<&str>,
        steps: usize,
        grid: Option<&str>,
        seed: u64,
        dtype: &str,
        class_: Option<&Bound<'_, PyAny>>,
        guidance: Option<f64>,
        x_init: Option<&Bound<'_, PyAny>>,
        eta: Option<f64>,
        corrector: Option<&str>,
        snr: Option<f64>,
        rtol: Option<f64>,
        atol: Option<f64>,
        eps: Option<f64>,
        steps_per_level: Option<usize>,
        churn: Option<f64>,
        clip_denoised: bool,
        threshold: Option<f64>,
        clip_range: Option<f64>,
        keep_model_eps: bool,
        vp_start: bool,
        classifier: Option<PathBuf>,
        progress_bar: Option<bool>,
    ) -> PyResult<PyObject> {
        let f32 = convert::dtype_is_f32(dtype)?;
        let cfg = &self.model.cfg;
        let dim = self.model.state.dim;
        let x_init = match x_init {
            None => None,
            Some(obj) => {
                let a = convert::array(obj, "x_init")?;
                let rows = a.shape.first().copied().unwrap_or(0);
                if a.shape.len() < 2 || rows == 0 || a.shape[1..].iter().product::<usize>() != dim {
                    return Err(PyValueError::new_err(format!(
                        "x_init: expected shape [N, {dim}] (or images of {dim} values each), found {:?}",
                        a.shape
                    )));
                }
                if a.data.iter().any(|v| !v.is_finite()) {
                    return Err(PyValueError::new_err("x_init: values must be finite (found NaN or ±inf)"));
                }
                let v: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
                Some(Tensor::from_vec(v, (rows, dim), &Device::Cpu).map_err(convert::candle_error)?)
            }
        };
        let n = match (&x_init, n) {
            (Some(x), None) => x.dim(0).map_err(convert::candle_error)?,
            (_, n) => n.unwrap_or(cfg.sampling.n),
        };
        check_counts(n, steps).map_err(convert::error)?;
        let overrides = SamplerOverrides {
            sampler: Some(parse_sampler(sampler)?),
            corrector: corrector
                .map(|c| c.parse::<CorrectorKind>().map_err(|e| PyValueError::new_err(format!("corrector: {e}"))))
                .transpose()?,
            snr,
            rtol,
            atol,
            eps,
            steps_per_level,
            eta,
            churn,
            grid: parse_grid(grid)?,
            clip_denoised,
            threshold,
            clip_range,
            keep_model_eps,
            vp_start,
        };
        let spec = overrides.apply(&cfg.sampling).map_err(convert::error)?;
        let class = match class_ {
            None => None,
            Some(c) => Some(
                c.str()?
                    .to_string()
                    .parse::<ClassChoice>()
                    .map_err(|e| PyValueError::new_err(format!("class_: {e}")))?,
            ),
        };
        let steer = ClassGuidance::resolve(cfg, class, guidance, classifier).map_err(convert::error)?;
        let mut req = SampleRequest::new(n, steps, seed, PathBuf::new());
        req.use_ema = self.use_ema;
        req.x_init = x_init;
        let model = AssertSend(&self.model);
        let out = progress::with_bars(py, progress_bar, move || {
            let model = model;
            guard(|| {
                let s = sample_loaded(model.0, &req, Some(spec), steer.as_ref()).map_err(convert::error)?;
                Points::from_tensor(&s.x).map_err(convert::candle_error)
            })
        })??;
        *self.last.borrow_mut() = Some((out.clone(), steps));
        convert::to_numpy(py, &[out.n, out.d], out.data, f32)
    }

    /// Completes observations x [N, D] (or [N, C, H, W] images) whose `mask`
    /// leaves part unknown, as `scoregen inpaint` does; `x` may also be what
    /// `--input` takes: "held-out[:N]" (the run's held-out images), a .npy
    /// path (data space) or a PNG path (pixels) (the same app function,
    /// `app::commands::inpaint::inpaint_loaded`, so the same seed gives the same
    /// numbers): the known coordinates are held to the observation perturbed to
    /// each step's noise level while the rest follows the reverse process.
    /// `mask`: "half", "box", "random:P" (a fraction P missing), a .npy/.png
    /// path, or an array of D values (1 = known, 0 = missing), as `--mask`;
    /// `per_input` completions per observation (rows in order), `sampler`
    /// (any but ode, langevin and mala; default `app::commands::inpaint::default_sampler`:
    /// the run's when it is stochastic, else dpmpp-2m-sde) and `steps` as
    /// `--per-input`, `--sampler` and `--steps`. Returns [N·per_input, D]
    /// (images: [N·per_input, C, H, W]).
    #[pyo3(signature = (x, mask, per_input = 1, sampler = None, steps = None, seed = 0, dtype = "float32", progress_bar = None))]
    fn inpaint(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        mask: &Bound<'_, PyAny>,
        per_input: usize,
        sampler: Option<&str>,
        steps: Option<usize>,
        seed: u64,
        dtype: &str,
        progress_bar: Option<bool>,
    ) -> PyResult<PyObject> {
        let f32 = convert::dtype_is_f32(dtype)?;
        let dim = self.model.state.dim;
        let cfg = &self.model.cfg;
        let (obs, mut shape) = if let Ok(input) = x.extract::<PathBuf>() {
            // `--input`'s forms: held-out[:N], a .npy, a PNG
            let (obs, _labels) = guard(|| read_input(&input, cfg, dim).map_err(convert::error))?;
            let shape = match cfg.image_shape(dim) {
                Some((c, h, w)) => vec![obs.n, c, h, w],
                None => vec![obs.n, dim],
            };
            (obs, shape)
        } else {
            let a = convert::array(x, "x")?;
            let rows = a.shape.first().copied().unwrap_or(0);
            if a.shape.len() < 2 || rows == 0 || a.shape[1..].iter().product::<usize>() != dim {
                return Err(PyValueError::new_err(format!(
                    "x: expected shape [N, {dim}] (or images of {dim} values each), found {:?}, or held-out[:N], a .npy or a PNG path",
                    a.shape
                )));
            }
            (Points::new(rows, dim, a.data), a.shape)
        };
        if !obs.all_finite() {
            return Err(PyValueError::new_err("x: values must be finite (found NaN or ±inf)"));
        }
        let mask = if let Ok(s) = mask.extract::<String>() {
            MaskSpec::parse(&s).map_err(convert::error)?
        } else {
            MaskSpec::Values(convert::array(mask, "mask")?.data)
        };
        let settings = InpaintSettings {
            mask,
            per_input,
            sampler: sampler.map(|s| parse_sampler(Some(s))).transpose()?,
            steps,
            seed,
            quiet: true,
        };
        let model = AssertSend(&self.model);
        let out = progress::with_bars(py, progress_bar, move || {
            let model = model;
            guard(|| inpaint_loaded(model.0, &obs, &settings, || Ok(())).map_err(convert::error))
        })??;
        shape[0] = out.x.n;
        convert::to_numpy(py, &shape, out.x.data, f32)
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
        let (xt, tt) = Self::tensors(&x, t)?;
        let model = AssertSend(&self.model);
        let s = py.allow_threads(move || {
            let model = model;
            guard(|| model.0.score().score(&xt, &tt).map_err(convert::candle_error))
        })?;
        convert::to_numpy(py, &x.shape, tensor_data(&s)?, x.f32)
    }

    /// The network's raw output at x [N, D] and SDE times t (a float or [N]):
    /// what the model predicts before it becomes a score (ε̂ for an ε-model,
    /// v̂, x̂₀, or the score itself for NCSN++), float32. For an imported
    /// diffusers model this is `UNet2DModel(x, timestep).sample` at the timestep
    /// (or σ) nearest to t. `labels` [N]: class indices for a class-conditional model.
    #[pyo3(signature = (x, t, labels = None))]
    fn model_output(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        t: &Bound<'_, PyAny>,
        labels: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyObject> {
        let x = convert::points(x, "x", Some(self.model.state.dim))?;
        let labels = match labels {
            None => None,
            Some(obj) => {
                let a = convert::array(obj, "labels")?;
                if a.shape != [x.shape[0]] || a.data.iter().any(|v| *v < 0.0 || v.fract() != 0.0) {
                    return Err(PyValueError::new_err("labels: expected one class index ≥ 0 per row of x"));
                }
                let v: Vec<u32> = a.data.iter().map(|&v| v as u32).collect();
                Some(Tensor::from_vec(v, x.shape[0], &Device::Cpu).map_err(convert::candle_error)?)
            }
        };
        let (xt, tt) = Self::tensors(&x, t)?;
        let model = AssertSend(&self.model);
        let out = py.allow_threads(move || {
            let model = model;
            guard(|| match &model.0.model {
                scoregen::nets::Model::Score(net, _) => match &labels {
                    None => net.forward(&xt, &tt),
                    Some(y) => net.forward_labeled(&xt, &tt, y),
                }
                .map_err(convert::candle_error),
                scoregen::nets::Model::Energy(_) => {
                    Err(PyValueError::new_err("model_output: an energy model has no network output; use score()"))
                }
            })
        })?;
        convert::to_numpy(py, &x.shape, tensor_data(&out)?, true)
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

    /// Writes the run's report page `RUN/report.html` (figures in `RUN/report/`)
    /// as `scoregen report --run RUN` does (`app::commands::report::write_report`).
    /// Returns what `--json` prints: {"html", "figures", "skipped", "seconds"}.
    fn report(&self, py: Python<'_>) -> PyResult<PyObject> {
        let path = &self.path;
        let r = py.allow_threads(|| {
            guard(|| {
                scoregen::app::commands::report::write_report(path, true, &Device::Cpu).map_err(|e| {
                    convert::error(scoregen::Error::Invalid(format!("report of run {}: {e}", path.display())))
                })
            })
        })?;
        convert::json(py, &r)
    }

    /// The run in a notebook: its settings and a picture of samples (an image
    /// grid, or a scatter of 2-D points over the exact density when known:
    /// the figure `scoregen sample` writes), inlined as a PNG. The samples are
    /// the last this object drew (`sample`), else the run's saved ones
    /// (`samples/samples.npy`, `samples.npy`); none are drawn here.
    fn _repr_html_(&self) -> PyResult<String> {
        use scoregen::named::Named;
        let cfg = &self.model.cfg;
        let esc = scoregen::app::commands::report::escape;
        let mut rows = vec![
            ("path", self.path.display().to_string()),
            ("step", format!("{} ({} weights)", self.model.state.step, if self.use_ema { "EMA" } else { "raw" })),
            ("data", format!("{} (dimension {})", cfg.data.source, self.model.state.dim)),
            ("model", cfg.model.kind.name().to_string()),
            ("SDE", cfg.sde().name().to_string()),
            ("objective", cfg.objective.kind.name().to_string()),
            ("sampler", format!("{} ({} steps)", cfg.sampling.sampler, cfg.sampling.steps)),
        ];
        let mut shown =
            self.last.borrow().clone().map(|(p, k)| (p, Some(k), "drawn by this Run's last sample()".to_string()));
        if shown.is_none() {
            if let Some(file) = scoregen::app::commands::report::find_samples(&self.path) {
                if let Ok(p) = scoregen::io::npy::read_points(&file) {
                    let rel = file.strip_prefix(&self.path).unwrap_or(&file).display().to_string();
                    shown = Some((p, None, rel));
                }
            }
        }
        let picture = match shown {
            None => "<p>No samples yet: <code>run.sample(n)</code> draws some, and this picture shows them.</p>".into(),
            Some((pts, steps, from)) => {
                let cap = if cfg.image_shape(pts.d).is_some() { 64 } else { 5000 };
                let pts = pts.head(cap);
                let title = scoregen::app::commands::sample::samples_title(pts.n, &cfg.name, steps);
                match guard(|| scoregen::app::commands::sample::samples_png(&pts, cfg, &title).map_err(convert::error))?
                {
                    Some(png) => {
                        rows.push(("samples", format!("{} ({from})", pts.n)));
                        format!("<img src=\"data:image/png;base64,{}\" style=\"max-width:480px\"/>", base64(&png))
                    }
                    None => format!(
                        "<p>{} samples of dimension {}: no picture (neither images nor 2-D points).</p>",
                        pts.n, pts.d
                    ),
                }
            }
        };
        let table: String = rows
            .iter()
            .map(|(k, v)| format!("<tr><th style=\"text-align:left\">{k}</th><td>{}</td></tr>", esc(v)))
            .collect();
        Ok(format!("<div><b>scoregen.Run</b> {}<table>{table}</table>{picture}</div>", esc(&cfg.name)))
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

/// `scoregen.torch.save`'s native half: `tensors` {name: float32 array} become
/// the weights (model and EMA) of the newest checkpoint of the run at `path`,
/// checked against its model first (`app::run_dir::replace_weights`). Returns
/// the checkpoint's folder.
#[pyfunction]
pub fn _save_weights(path: PathBuf, tensors: &Bound<'_, pyo3::types::PyDict>) -> PyResult<PathBuf> {
    let mut map = std::collections::HashMap::new();
    for (k, v) in tensors.iter() {
        let name: String = k.extract()?;
        let a = convert::array(&v, &name)?;
        let data: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
        let t = Tensor::from_vec(data, a.shape.clone(), &Device::Cpu).map_err(convert::candle_error)?;
        map.insert(name, t);
    }
    guard(|| scoregen::app::run_dir::replace_weights(&path, map).map_err(convert::error))
}

/// Standard base64 (RFC 4648, with padding), for a PNG inlined in HTML.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
