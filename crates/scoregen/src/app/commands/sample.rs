//! Whole commands over a run directory: sample a trained run, evaluate a
//! sample file, and the quickstart (train → sample → evaluate → pictures).

use crate::app::budget;
use crate::app::config::{ObjectiveKind, RunConfig};
use crate::app::figures::scatter;
use crate::app::run_dir::{oracle_of, LoadedModel};
use crate::error::{Error, Result};
use crate::guidance::{count_labels, proportional_labels, ClassifierFree, ClassifierGuided, Labels};
use crate::io::{fs, npy};
use crate::nets::ModelConditional;
use crate::nets::SavedClassifier;
use crate::points::Points;
use crate::progress;
use crate::rng::{streams, Rng};
use crate::samplers::{self, CorrectorKind, Grid, Method, SampleContext, SamplerKind, SamplerSpec};
use crate::score::{LogDensity, ScoreFn};
use crate::viz::{self, Bounds};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
/// The sampler settings a caller of `scoregen sample` (or `Run.sample` in
/// Python) may give, each overriding the run's `[sampling]`: the command
/// line's flags and Python's keywords both fill this one struct, and
/// [`SamplerOverrides::apply`] is the one place they take effect and are checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplerOverrides {
    pub sampler: Option<SamplerKind>,
    pub corrector: Option<CorrectorKind>,
    pub snr: Option<f64>,
    pub rtol: Option<f64>,
    pub atol: Option<f64>,
    /// The Langevin step size ε (`sampling.step_size`; the flag is `--eps`).
    pub eps: Option<f64>,
    pub steps_per_level: Option<usize>,
    pub eta: Option<f64>,
    /// Heun's S_churn (`sampling.s_churn`).
    pub churn: Option<f64>,
    pub grid: Option<Grid>,
    pub clip_denoised: bool,
    pub threshold: Option<f64>,
    pub clip_range: Option<f64>,
    pub keep_model_eps: bool,
    pub vp_start: bool,
}

/// The keyword (Python) and flag stem (`--` + it with `-` for `_`, the command
/// line) of a `[sampling]` key where it is not the key's last part; a front end
/// names a refused setting by [`setting_name`].
const SETTING_NAMES: &[(&str, &str)] = &[("sampling.step_size", "eps"), ("sampling.s_churn", "churn")];

/// How the front ends spell the setting `key` (`sampling.s_churn` → `churn`):
/// the Python keyword, and the flag with `_` as `-`.
pub fn setting_name(key: &str) -> &str {
    SETTING_NAMES.iter().find(|(k, _)| *k == key).map_or_else(|| key.rsplit('.').next().unwrap_or(key), |(_, n)| n)
}

/// The `[sampling]` keys [`SamplerSpec::validate`] names, as `'static` keys of
/// [`Error::Setting`] (a refused override is a setting, not a line of a file).
const SAMPLING_KEYS: &[&str] = &[
    "sampling.snr",
    "sampling.rtol",
    "sampling.atol",
    "sampling.corrector_steps",
    "sampling.eta",
    "sampling.rho",
    "sampling.s_noise",
    "sampling.s_churn",
    "sampling.s_tmax",
    "sampling.clip_range",
    "sampling.threshold_max",
    "sampling.threshold",
    "sampling.keep_model_eps",
    "sampling.grid",
    "sampling.clip_denoised",
    "sampling.vp_start",
];

impl SamplerOverrides {
    /// The run's sampler settings `config` with the ones given here in their
    /// place, checked: ε > 0 and steps per level ≥ 1, clip_denoised or
    /// threshold (not both), then [`SamplerSpec::validate`]; a refusal is an
    /// [`Error::Setting`] naming the key.
    pub fn apply(&self, config: &SamplerSpec) -> Result<SamplerSpec> {
        if let Some(e) = self.eps.filter(|e| !(*e > 0.0 && e.is_finite())) {
            return Err(Error::Setting {
                key: "sampling.step_size",
                message: format!("must be a finite number > 0 (got {e})"),
            });
        }
        if self.steps_per_level == Some(0) {
            return Err(Error::Setting { key: "sampling.steps_per_level", message: "must be ≥ 1 (got 0)".into() });
        }
        if self.clip_denoised && self.threshold.is_some() {
            return Err(Error::Setting {
                key: "sampling.threshold",
                message: "set either clip_denoised or threshold (thresholding already clips)".into(),
            });
        }
        let mut sc = *config;
        if let Some(v) = self.sampler {
            sc = sc.with_sampler(v);
        }
        if let Some(v) = self.corrector {
            sc.corrector = Some(v);
        }
        sc.snr = self.snr.unwrap_or(sc.snr);
        sc.rtol = self.rtol.unwrap_or(sc.rtol);
        sc.atol = self.atol.unwrap_or(sc.atol);
        sc.step_size = self.eps.unwrap_or(sc.step_size);
        sc.steps_per_level = self.steps_per_level.unwrap_or(sc.steps_per_level);
        sc.eta = self.eta.unwrap_or(sc.eta);
        sc.s_churn = self.churn.unwrap_or(sc.s_churn);
        sc.grid = self.grid.or(sc.grid);
        if self.threshold.is_some() {
            sc.threshold = self.threshold;
            sc.clip_denoised = false;
        }
        if self.clip_denoised {
            sc.clip_denoised = true;
            sc.threshold = None;
        }
        sc.clip_range = self.clip_range.unwrap_or(sc.clip_range);
        sc.keep_model_eps |= self.keep_model_eps;
        sc.vp_start |= self.vp_start;
        sc.validate("the sampler settings").map_err(|e| match e {
            Error::Config { field, message, .. } => match SAMPLING_KEYS.iter().find(|k| **k == field) {
                Some(key) => Error::Setting { key, message },
                None => Error::Invalid(format!("{field}: {message}")),
            },
            e => e,
        })?;
        Ok(sc)
    }
}

/// What `scoregen sample` was asked for.
#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub n: usize,
    /// Reverse-SDE steps, or Langevin steps K.
    pub steps: usize,
    /// Override the Langevin step size ε.
    pub step_size: Option<f64>,
    /// Override annealed Langevin's steps per level T.
    pub steps_per_level: Option<usize>,
    /// Keep every k-th state and write a GIF of them beside the samples
    /// (reverse-time PC/ODE samplers and the Langevin family).
    pub record_every: Option<usize>,
    pub seed: u64,
    pub out: PathBuf,
    /// Replace `out` if it exists (otherwise an existing file is refused up front).
    pub overwrite: bool,
    pub use_ema: bool,
    pub quiet: bool,
    /// Where the model is loaded and the sampler runs.
    pub device: Device,
    /// x_T [n, D] to start from instead of the seeded prior draw (`--init-noise`,
    /// Python's `x_init`), e.g. the latents a diffusers pipeline started from.
    pub x_init: Option<candle_core::Tensor>,
}

impl SampleRequest {
    /// The sampler settings: `base` (default: the run's `[sampling]`, which
    /// the command line's flags and Python's keywords override) with this
    /// request's steps, recording and Langevin step size and steps per level,
    /// and the time the Langevin family evaluates the score at.
    pub fn spec(&self, cfg: &RunConfig, base: Option<SamplerSpec>) -> SamplerSpec {
        let base = base.unwrap_or(cfg.sampling);
        SamplerSpec {
            steps: self.steps,
            record_every: self.record_every,
            step_size: self.step_size.unwrap_or(base.step_size),
            steps_per_level: self.steps_per_level.unwrap_or(base.steps_per_level),
            langevin_t: cfg.langevin_time(),
            ..base
        }
    }

    /// n samples with `steps` steps, the run's sampler and EMA weights, no
    /// progress bar, on the CPU, into `out` (refused if it exists: set `overwrite`).
    pub fn new(n: usize, steps: usize, seed: u64, out: PathBuf) -> Self {
        Self {
            n,
            steps,
            seed,
            out,
            overwrite: false,
            use_ema: true,
            quiet: true,
            step_size: None,
            steps_per_level: None,
            record_every: None,
            device: Device::Cpu,
            x_init: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleOutcome {
    pub npy: PathBuf,
    pub png: Option<PathBuf>,
    /// The reverse process as an animation, when frames were recorded.
    pub gif: Option<PathBuf>,
    pub n: usize,
    pub nfe: usize,
    pub seconds: f64,
}

/// Draws samples from a trained run with its sampler (or the request's),
/// writes them as float32 `.npy` and, for 2-D data, a PNG scatter beside it.
pub fn sample_run(run_dir: &Path, req: &SampleRequest) -> Result<SampleOutcome> {
    sample_run_with(run_dir, req, None)
}

/// [`sample_run`] with a sampler chosen by the caller (`None`: the config's);
/// `req.steps` sets the number of steps of the SDE samplers.
pub fn sample_run_with(run_dir: &Path, req: &SampleRequest, spec: Option<SamplerSpec>) -> Result<SampleOutcome> {
    sample_run_guided(run_dir, req, spec, None)
}

/// [`sample_run_with`], optionally steered to a class ([`ClassGuidance`]).
pub fn sample_run_guided(
    run_dir: &Path,
    req: &SampleRequest,
    spec: Option<SamplerSpec>,
    class: Option<&ClassGuidance>,
) -> Result<SampleOutcome> {
    let model = LoadedModel::from_run(run_dir, req.use_ema, &req.device)?;
    // An unwritable output folder fails now, not after the sampling it would lose.
    fs::ensure_writable_dir(req.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    fs::check_new_output(&req.out, req.overwrite)?;
    let start = Instant::now();
    // Ctrl-C stops the sampler at its next step; then nothing is written.
    let stop = progress::Interruptible::enter();
    let out = sample_loaded(&model, req, spec, class)
        .map_err(|e| stop.explain(e, "sampling stopped; nothing was written"))?;
    let seconds = start.elapsed().as_secs_f64();
    let pts = Points::from_tensor(&out.x)?;
    if let Some(dir) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir(dir)?;
    }
    // Frames of the reverse process, from noise to the final samples.
    let mut frames: Vec<(f64, Points)> =
        out.trajectory.iter().map(|(t, x)| Ok((*t, Points::from_tensor(x)?))).collect::<Result<_>>()?;
    if !frames.is_empty() {
        frames.push((0.0, pts.clone()));
    }
    let gif = (!frames.is_empty()).then(|| req.out.with_extension("gif"));
    let title = samples_title(pts.n, &model.cfg.name, Some(req.steps));
    let png = write_samples(&req.out, &pts, &model.cfg, &title, None)?;
    if let Some(gif) = &gif {
        if let Some((c, h, w)) = model.cfg.image_shape(pts.d) {
            let scale = model.cfg.data.scale;
            let pixels: Vec<Vec<f32>> =
                frames.iter().map(|(_, p)| p.data.iter().map(|&x| scale.to_pixel(x) as f32).collect()).collect();
            let cols = (pts.n as f64).sqrt().ceil() as usize;
            viz::image_grid_gif(gif, &pixels, (c, h, w), cols, (64 / h).max(1), 8)?;
        } else if pts.d == 2 {
            let bounds = Bounds::around(&frames.last().expect("final frame").1, 0.15);
            let titled: Vec<(String, Points)> = frames.into_iter().map(|(t, p)| (format!("t = {t:.3}"), p)).collect();
            viz::scatter_gif(gif, &titled, None, &bounds, 8).map_err(|e| Error::Invalid(e.to_string()))?;
        }
    }
    Ok(SampleOutcome { npy: req.out.clone(), png, gif, n: pts.n, nfe: out.nfe, seconds })
}

/// The title of the scatter of `n` samples of the run `name` (drawn in `steps` steps).
pub fn samples_title(n: usize, name: &str, steps: Option<usize>) -> String {
    match steps {
        Some(k) => format!("{n} samples, {name} ({k} steps)"),
        None => format!("{n} samples, {name}"),
    }
}

/// The tiles of an image grid in pixel space and its number of columns.
pub struct GridTiles {
    pub pixels: Vec<f32>,
    pub cols: usize,
}

/// Writes samples as an image grid or a scatter, for `sample` and `inpaint`:
/// flattened images of the run's shape as float32 `out` [N, C, H, W] and
/// OUT.png, an image grid (`tiles`, default one tile per sample in a near-square
/// grid, zoomed to about 64 pixels a side); 2-D points as `out` [N, 2] and
/// OUT.png, a scatter over the run's density titled `title`; other data as
/// `out` [N, D] and no picture. Returns the picture's path.
pub fn write_samples(
    out: &Path,
    pts: &Points,
    cfg: &RunConfig,
    title: &str,
    tiles: Option<GridTiles>,
) -> Result<Option<PathBuf>> {
    if let Some((c, h, w)) = cfg.image_shape(pts.d) {
        let raw: Vec<f32> = pts.data.iter().map(|&x| x as f32).collect();
        npy::write_f32(out, &[pts.n, c, h, w], &raw)?;
    } else {
        npy::write_points(out, pts)?;
    }
    let png = out.with_extension("png");
    Ok(draw_samples(&png, pts, cfg, title, tiles)?.then_some(png))
}

/// The picture of samples [`write_samples`] draws, at `png`: images of the
/// run's shape as a grid, 2-D points as a scatter over the run's density;
/// false (nothing drawn) for other data.
pub fn draw_samples(png: &Path, pts: &Points, cfg: &RunConfig, title: &str, tiles: Option<GridTiles>) -> Result<bool> {
    if let Some((c, h, w)) = cfg.image_shape(pts.d) {
        let scale = cfg.data.scale;
        let GridTiles { pixels, cols } = tiles.unwrap_or_else(|| GridTiles {
            pixels: pts.data.iter().map(|&x| scale.to_pixel(x) as f32).collect(),
            cols: (pts.n as f64).sqrt().ceil() as usize,
        });
        viz::image_grid(png, &pixels, (c, h, w), cols, (64 / h).max(1))?;
        return Ok(true);
    }
    if pts.d != 2 {
        return Ok(false);
    }
    scatter(png, pts, oracle_of(cfg)?.as_ref(), title)?;
    Ok(true)
}

/// [`draw_samples`]'s picture as PNG bytes (drawn through a temporary file),
/// for a page that inlines it (Python's `Run._repr_html_`); None for data
/// that are neither images nor 2-D points.
pub fn samples_png(pts: &Points, cfg: &RunConfig, title: &str) -> Result<Option<Vec<u8>>> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let png = std::env::temp_dir().join(format!("scoregen-samples-{}-{n}.png", std::process::id()));
    let drawn = draw_samples(&png, pts, cfg, title, None);
    let bytes = match drawn {
        Ok(true) => std::fs::read(&png).map(Some).map_err(|e| Error::io(&png, e)),
        Ok(false) => Ok(None),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&png);
    bytes
}

/// Reads `--init-noise`: a float32 or float64 .npy [N, D] or [N, C, H, W] (all
/// finite; [`crate::io::npy::read_points`]'s checks), as [N, D] f32.
pub fn read_init_noise(path: &Path) -> Result<candle_core::Tensor> {
    let p = crate::io::npy::read_points(path)?;
    let v: Vec<f32> = p.data.iter().map(|&x| x as f32).collect();
    Ok(candle_core::Tensor::from_vec(v, (p.n, p.d), &candle_core::Device::Cpu)?)
}

/// The counts of a sampling request, `sampling.n` samples and `sampling.steps`
/// steps, must each be ≥ 1; an error names the setting by its config key, which
/// each front end spells its own way (`--n`, Python's `n`).
pub fn check_counts(n: usize, steps: usize) -> Result<()> {
    for (key, v) in [("sampling.n", n), ("sampling.steps", steps)] {
        if v == 0 {
            return Err(Error::Setting { key, message: "must be ≥ 1 (got 0)".into() });
        }
    }
    Ok(())
}

/// The samples of [`sample_run_guided`] without the files: the memory check,
/// the request's settings over `spec` (`None`: the run's sampler), the seeded
/// sampling stream and [`draw`]. Every front end (the CLI, the Python package)
/// draws through here, so the same seed gives the same numbers in each.
pub fn sample_loaded(
    model: &LoadedModel,
    req: &SampleRequest,
    spec: Option<SamplerSpec>,
    class: Option<&ClassGuidance>,
) -> Result<samplers::Sampled> {
    check_counts(req.n, req.steps)?;
    if let Some(x) = &req.x_init {
        let want = [req.n, model.state.dim];
        if x.dims() != want {
            return Err(Error::Setting {
                key: "sampling.init_noise",
                message: format!(
                    "has shape {:?}; {} samples of this model need {:?} (or [N, C, H, W] images of its shape)",
                    x.dims(),
                    req.n,
                    want
                ),
            });
        }
    }
    let frames = req.record_every.map_or(0, |k| req.steps / k.max(1) + 2);
    budget::check_sampling(&model.cfg, req.n, model.state.dim, frames, "sampling")?;
    let spec = req.spec(&model.cfg, spec);
    let mut rng = Rng::new(req.seed, streams::SAMPLING);
    // a request that names no class gets the run's own sampling.class and sampling.guidance
    let from_config = ClassGuidance::resolve(&model.cfg, None, None, None)?;
    match class.or(from_config.as_ref()) {
        None => draw(model, model.score().as_ref(), req, &spec, &mut rng),
        Some(g) => g.with_score(model, req.n, req.seed, |score| draw(model, score, req, &spec, &mut rng)),
    }
}

/// Runs the sampler `spec` names with `score` (the model's own, or a guided
/// one) on the run's SDE, through the one dispatcher [`SamplerSpec::sample`].
/// The run's objective decides what may be asked: reverse-time samplers need
/// a model of every noise level, annealed Langevin a noise ladder, MALA an energy.
pub fn draw(
    model: &LoadedModel,
    score: &dyn ScoreFn,
    req: &SampleRequest,
    spec: &SamplerSpec,
    rng: &mut Rng,
) -> Result<samplers::Sampled> {
    let cfg = &model.cfg;
    let sampler = spec.sampler;
    // what the run's model offers; the sampler table's check refuses the rest
    let energy = model.model.energy().map(|e| e as &dyn LogDensity);
    let every_level = !cfg.objective.kind.is_noise_free(cfg.objective.sigma);
    let ladder = cfg.ladder();
    let sde = cfg.sde();
    let (len, label) = match sampler.method() {
        Method::AnnealedLangevin => (spec.steps_per_level * ladder.levels(), "annealed".to_string()),
        Method::Langevin { .. } => (req.steps, sampler.to_string()),
        _ => (req.steps, "sample".to_string()),
    };
    let pb = progress::bar(len, &label, req.quiet);
    let ctx = SampleContext {
        ladder: (cfg.objective.kind == ObjectiveKind::Ncsn).then_some(&ladder),
        every_level,
        energy,
        device: model.device.clone(),
        x_init: req.x_init.as_ref(),
        ..SampleContext::new(score, sde.as_ref(), &pb)
    };
    spec.sample(&ctx, (req.n, model.state.dim), rng)
}

pub use crate::app::config::ClassChoice;

/// The labels of `n` samples for `choice` among `k` classes: one class, or the
/// training labels' proportions (`train_labels`, called only then) in an order
/// drawn from the sampling seed's own stream.
pub fn labels_for(
    choice: ClassChoice,
    k: usize,
    class_counts: impl FnOnce() -> Result<Vec<u64>>,
    n: usize,
    seed: u64,
) -> Result<Labels> {
    match choice {
        ClassChoice::One(y) if y >= k => Err(Error::Setting {
            key: "sampling.class",
            message: format!("{y} is out of range: classes are 0..{}", k.max(1) - 1),
        }),
        ClassChoice::One(y) => Ok(Labels::All(y)),
        ClassChoice::All => {
            let counts = class_counts()?;
            if counts.len() != k || counts.iter().all(|&c| c == 0) {
                return Err(Error::Invalid(format!(
                    "expected training counts of the model's {k} classes, got {} classes and {} examples",
                    counts.len(),
                    counts.iter().sum::<u64>()
                )));
            }
            let weights: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
            Ok(proportional_labels(&weights, n, &mut Rng::new(seed, streams::LABELS)))
        }
    }
}

/// A run's training examples per class, for `--class all`: recorded in its
/// checkpoint, or (checkpoints written before they were) counted from the data.
pub fn run_class_counts(model: &LoadedModel, k: usize) -> Result<Vec<u64>> {
    match &model.state.label_counts {
        Some(counts) => Ok(counts.clone()),
        None => count_labels(&training_labels(&model.cfg)?, k),
    }
}

/// The labels of the data a run was trained on, for `--class all`'s
/// proportions: an image source's training split (read once, only the first
/// `data.n_train` images, as training took them), or a mixture's components.
pub fn training_labels(cfg: &RunConfig) -> Result<Vec<u8>> {
    let source = &cfg.data.source;
    if crate::data::is_image_source(source) {
        let mut labels = crate::data::load_images(source, true, &cfg.data.image_options())?.labels;
        labels.truncate(cfg.data.n_train);
        return Ok(labels);
    }
    Ok(super::classify::labelled_splits(source, &cfg.data.image_options())?.0.labels)
}

/// Steering `scoregen sample` to class y (or to every class, each sample its own
/// y): classifier guidance with a trained noise-aware classifier,
/// s + w·∇ₓ log p_t(y | x), or (no classifier) classifier-free guidance of a
/// class-conditional run, (1 + w)·s(x, t, y) − w·s(x, t).
#[derive(Debug, Clone)]
pub struct ClassGuidance {
    pub class: ClassChoice,
    pub scale: f64,
    /// A directory written by `scoregen train-classifier --noisy`.
    pub classifier: Option<PathBuf>,
}

impl ClassGuidance {
    /// What a request asks for (`--class`, `--guidance`, `--classifier`, or
    /// Python's `class_`, `guidance`), each falling back to the run's
    /// `sampling.class` and `sampling.guidance`; `None`: unconditional. A weight
    /// or classifier without any class is refused.
    pub fn resolve(
        cfg: &RunConfig,
        class: Option<ClassChoice>,
        guidance: Option<f64>,
        classifier: Option<PathBuf>,
    ) -> Result<Option<Self>> {
        let Some(class) = class.or(cfg.sampling.class) else {
            if guidance.is_some() || classifier.is_some() {
                return Err(Error::Setting {
                    key: "sampling.guidance",
                    message: "guidance needs a class (K or all), asked for here or as sampling.class in the run's \
                              config; a guidance weight or classifier alone is refused"
                        .into(),
                });
            }
            return Ok(None);
        };
        Ok(Some(ClassGuidance { class, scale: guidance.unwrap_or(cfg.sampling.guidance), classifier }))
    }

    /// Calls `f` with the guided score of `model` for a batch of `n` samples
    /// (`seed` orders the labels of [`ClassChoice::All`]).
    pub fn with_score<R>(
        &self,
        model: &LoadedModel,
        n: usize,
        seed: u64,
        f: impl FnOnce(&dyn ScoreFn) -> Result<R>,
    ) -> Result<R> {
        if !self.scale.is_finite() || self.scale < 0.0 {
            return Err(Error::Setting {
                key: "sampling.guidance",
                message: format!("must be a finite number ≥ 0 (got {})", self.scale),
            });
        }
        match &self.classifier {
            Some(dir) => {
                let saved = SavedClassifier::load(dir, &model.device)?;
                let spec = &saved.meta.spec;
                let bad = |why: String| Err(Error::data(dir.join("classifier.json"), why));
                if spec.dim != model.state.dim {
                    return bad(format!(
                        "the classifier takes dimension {}, the run's data has {}",
                        spec.dim, model.state.dim
                    ));
                }
                let sde = model.cfg.sde();
                if !spec.noise_aware || saved.meta.sde.as_deref() != Some(sde.name()) {
                    return bad(format!(
                        "classifier guidance needs a noise-aware classifier trained under the run's SDE `{}` (train-classifier --noisy --run RUN)",
                        sde.name()
                    ));
                }
                let labels = labels_for(self.class, spec.classes, || run_class_counts(model, spec.classes), n, seed)?;
                let (base, clf) = (model.score(), &saved.classifier);
                f(&ClassifierGuided { score: base.as_ref(), classifier: clf, labels, scale: self.scale })
            }
            None => {
                let k = model.model.classes();
                if k == 0 {
                    return Err(Error::Setting {
                        key: "sampling.class",
                        message: "needs a class-conditional run (trained with model.classes = K) or a noise-aware \
                                  classifier for classifier guidance"
                            .into(),
                    });
                }
                let labels = labels_for(self.class, k, || run_class_counts(model, k), n, seed)?;
                let cond = ModelConditional { model: &model.model, sde: model.cfg.sde() };
                f(&ClassifierFree { model: &cond, labels, w: self.scale })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(o: SamplerOverrides) -> &'static str {
        match o.apply(&SamplerSpec::default()) {
            Err(Error::Setting { key, .. }) => key,
            other => panic!("expected a refused setting, got {other:?}"),
        }
    }

    /// Each override lands in its field; a bad one is refused as the setting
    /// it sets, which both front ends spell by the flag's name.
    #[test]
    fn overrides_apply_and_refusals_name_the_setting() {
        let o = SamplerOverrides {
            sampler: Some(SamplerKind::Heun),
            churn: Some(0.5),
            eps: Some(0.01),
            steps_per_level: Some(7),
            snr: Some(0.3),
            ..Default::default()
        };
        let sc = o.apply(&SamplerSpec::default()).unwrap();
        assert_eq!(
            (sc.sampler, sc.s_churn, sc.step_size, sc.steps_per_level, sc.snr),
            (SamplerKind::Heun, 0.5, 0.01, 7, 0.3)
        );
        assert_eq!(refused(SamplerOverrides { eps: Some(-1.0), ..Default::default() }), "sampling.step_size");
        assert_eq!(refused(SamplerOverrides { churn: Some(-1.0), ..Default::default() }), "sampling.s_churn");
        assert_eq!(
            refused(SamplerOverrides { steps_per_level: Some(0), ..Default::default() }),
            "sampling.steps_per_level"
        );
        let both = SamplerOverrides {
            sampler: Some(SamplerKind::Ddim),
            clip_denoised: true,
            threshold: Some(0.9),
            ..Default::default()
        };
        assert_eq!(refused(both), "sampling.threshold");
        let em_eta = SamplerOverrides { sampler: Some(SamplerKind::Ddim), eta: Some(2.0), ..Default::default() };
        assert_eq!(refused(em_eta), "sampling.eta");
        assert_eq!(setting_name("sampling.step_size"), "eps");
        assert_eq!(setting_name("sampling.s_churn"), "churn");
        assert_eq!(setting_name("sampling.steps_per_level"), "steps_per_level");
    }
}
