//! `scoregen.train`: train a config into a run folder, then write its report,
//! through the same app function as `scoregen train` (python/scoregen/__init__.py).

use crate::convert::{self, guard, AssertSend};
use crate::progress;
use candle_core::Device;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use scoregen::app::commands::classify::{self, default_out, defaults, ClassifierRequest};
use scoregen::app::commands::train::{
    train_and_report, train_from_memory, MemoryData, TrainAndReportError, TrainedRun, REPORT_BY_DEFAULT,
};
use scoregen::app::config::RunConfig;
use scoregen::points::Points;
use scoregen::train::{DataParallel, ExistingRun, LogFn, LogHook, LogLine, TrainOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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

/// Trains a config (a TOML file, or a dict of its tables: `{"model": {...},
/// "training": {...}}`, the file's fields and defaults) into `out` (default `runs/NAME`), with
/// `overrides` as `--set key=value`; `progress(line)` is called with each
/// logged line {"step", "loss", "lr", "grad_norm", "steps_per_sec"} (raise to
/// stop); then, unless `report` is False, writes the run report
/// `RUN/report.html`, as `scoregen train` does (`app::commands::train::train_and_report`).
///
/// `data`: training data in memory instead of the config's `data.source`, a
/// float array [N, D] or images [N, C, H, W] (in data space, e.g. [−1, 1]);
/// `labels` [N] (integers 0…255) with it for a class-conditional model. They
/// are written into the run as `RUN/data.npy` (and `data.labels.npy`), which
/// becomes the run's `data.source` (`app::commands::train::train_from_memory`),
/// so the run is an ordinary run folder for the command line.
/// `progress_bar`: a tqdm bar of the steps (None: when tqdm is installed and
/// the output is a notebook or a terminal; True: always; False: never).
/// Returns {"run", "step", "final_loss", "seconds", "steps_per_sec", "checkpoint", "report"}.
#[pyfunction]
#[pyo3(signature = (config, out = None, overrides = None, progress = None, resume = false, overwrite = false, report = REPORT_BY_DEFAULT, data = None, labels = None, progress_bar = None))]
pub fn train(
    py: Python<'_>,
    config: &Bound<'_, PyAny>,
    out: Option<PathBuf>,
    overrides: Option<&Bound<'_, PyDict>>,
    progress: Option<Py<PyAny>>,
    resume: bool,
    overwrite: bool,
    report: bool,
    data: Option<&Bound<'_, PyAny>>,
    labels: Option<&Bound<'_, PyAny>>,
    progress_bar: Option<bool>,
) -> PyResult<Py<PyDict>> {
    scoregen::init();
    let mut sets = Vec::new();
    if let Some(o) = overrides {
        for (k, v) in o.iter() {
            sets.push(format!("{}={}", k.extract::<String>()?, override_value(&v)?));
        }
    }
    let cfg = match config.downcast::<PyDict>() {
        Ok(d) => {
            let json: String = py.import("json")?.call_method1("dumps", (d,))?.extract()?;
            RunConfig::parse_json(&json, "config", &sets)
        }
        Err(_) => {
            let path: PathBuf = config.extract().map_err(|_| {
                PyTypeError::new_err("config: expected a path to a TOML file or a dict of the config's tables")
            })?;
            RunConfig::load(&path, &sets)
        }
    }
    .map_err(convert::error)?;
    let memory = match data {
        None if labels.is_some() => return Err(PyValueError::new_err("labels: given without data")),
        None => None,
        Some(obj) => {
            let a = convert::array(obj, "data")?;
            let (n, image_shape) = match a.shape[..] {
                [n, _] => (n, None),
                [n, c, h, w] => (n, Some((c, h, w))),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "data: expected shape [N, D] or [N, C, H, W], found {}",
                        convert::shape_str(&a.shape)
                    )))
                }
            };
            let d = a.shape[1..].iter().product();
            let labels = match labels {
                None => None,
                Some(obj) => Some(label_values(obj, n)?),
            };
            Some(MemoryData { points: Points::new(n, d, a.data), image_shape, labels })
        }
    };
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
    let work = AssertSend((&cfg, &dir, &opts, memory.as_ref()));
    let outcome = progress::with_bars(py, progress_bar, move || {
        let work = work;
        let (cfg, dir, opts, memory) = work.0;
        guard(|| {
            match memory {
                None => train_and_report(cfg, dir, opts, DataParallel::default(), report, &Device::Cpu),
                Some(data) => train_from_memory(cfg, data, dir, opts, report, &Device::Cpu),
            }
            .map_err(|e| match e {
                TrainAndReportError::Training(e) => {
                    convert::error(scoregen::Error::Invalid(format!("training {}: {e}", dir.display())))
                }
                TrainAndReportError::Report(e) => convert::error(e),
            })
        })
    })?;
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

/// `labels=`: one class 0…255 per row of the data, any integer or float array.
fn label_values(obj: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<u8>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("asarray", (obj, "float64"))?;
    let a = convert::array(&arr, "labels")?;
    if a.shape.iter().product::<usize>() != n || a.shape.len() > 2 {
        return Err(PyValueError::new_err(format!(
            "labels: expected one label per row of data ({n}), found shape {}",
            convert::shape_str(&a.shape)
        )));
    }
    match a.data.iter().find(|&&v| !(0.0..=255.0).contains(&v) || v.fract() != 0.0) {
        Some(bad) => Err(PyValueError::new_err(format!("labels: expected integers 0…255, found {bad}"))),
        None => Ok(a.data.iter().map(|&v| v as u8).collect()),
    }
}

/// Trains a classifier as `scoregen train-classifier` does (the same app
/// function, `app::commands::classify::train_classifier`, defaults and
/// refusals): the one behind the image metrics (`data` an image set or a
/// Gaussian mixture), or with `noisy` a noise-aware p_t(y | x) for classifier
/// guidance on `run`'s SDE. Each keyword is the flag of its name; `out`
/// defaults as there (`classifiers/DATA`, or `RUN/classifier-noisy` with
/// `noisy`). Returns the outcome `--json` prints: {"dir", "meta",
/// "train_images", "test_images", "final_loss", "seconds"}.
#[pyfunction]
#[pyo3(signature = (data = None, run = None, noisy = false, out = None, width = defaults::WIDTH, blocks = defaults::BLOCKS, steps = defaults::STEPS, batch_size = defaults::BATCH_SIZE, lr = defaults::LR, seed = 0, progress_bar = None))]
pub fn train_classifier(
    py: Python<'_>,
    data: Option<String>,
    run: Option<PathBuf>,
    noisy: bool,
    out: Option<PathBuf>,
    width: usize,
    blocks: usize,
    steps: usize,
    batch_size: usize,
    lr: f64,
    seed: u64,
    progress_bar: Option<bool>,
) -> PyResult<PyObject> {
    scoregen::init();
    let config = run.as_deref().map(scoregen::app::run_dir::config_of).transpose().map_err(convert::error)?;
    let out = match out {
        Some(o) => o,
        None => default_out(data.as_deref(), run.as_deref().zip(config.as_ref()), noisy).map_err(convert::error)?,
    };
    let req = ClassifierRequest {
        data,
        config,
        noisy,
        out,
        width,
        blocks,
        steps,
        batch_size,
        lr,
        seed,
        quiet: true,
        device: Device::Cpu,
    };
    let req = AssertSend(&req);
    let o = progress::with_bars(py, progress_bar, move || {
        let req = req;
        guard(|| classify::train_classifier(req.0).map_err(convert::error))
    })??;
    convert::json(py, &o)
}
