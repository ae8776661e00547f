//! The guidance commands over a run directory: class-guided sampling
//! (`scoregen sample --class`), inpainting (`scoregen inpaint`) and judging
//! samples by a classifier (`scoregen classify`).

use super::sample::{write_samples, GridTiles};
use crate::app::budget;
use crate::app::config::{ObjectiveKind, RunConfig};
use crate::app::run_dir::LoadedModel;
use crate::data;
use crate::error::{Error, Result};
use crate::guidance::{Inpaint, MaskSpec};
use crate::io::{fs, npy};
use crate::points::Points;
use crate::progress;
use crate::rng::{streams, Rng};
use crate::samplers::{Method, Offers, SampleContext, SamplerKind, SamplerSpec};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
/// What `scoregen inpaint` was asked for.
#[derive(Debug, Clone)]
pub struct InpaintRequest {
    /// Observations: `held-out[:N]` (the run's held-out images), `.npy` [N, D]
    /// (or [N, C, H, W]) in data space, or a PNG image.
    pub input: PathBuf,
    pub mask: MaskSpec,
    /// Completions drawn per observation.
    pub per_input: usize,
    /// The sampler (any that takes a constraint: the reverse-SDE samplers,
    /// annealed Langevin, the σ-space solvers); `None`: [`default_sampler`].
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub seed: u64,
    pub out: PathBuf,
    /// Replace `out` if it exists (otherwise an existing file is refused up front).
    pub overwrite: bool,
    pub use_ema: bool,
    pub quiet: bool,
    /// Where the model is loaded and the sampler runs.
    pub device: Device,
}

#[derive(Debug, Clone, Serialize)]
pub struct InpaintOutcome {
    pub npy: PathBuf,
    pub png: Option<PathBuf>,
    /// The observations' classes (one per completion), for held-out images.
    pub labels: Option<PathBuf>,
    pub n: usize,
    pub known_fraction: f64,
    pub nfe: usize,
    pub seconds: f64,
}

/// The sampler and steps `scoregen inpaint` uses unless told: the run's own
/// (`sampling.sampler`, `sampling.steps`: the preset's quality at the
/// preset's budget) when it can hold the constraint and draws fresh noise
/// each step; a deterministic σ-space solver is replaced by DPM-Solver++(2M)
/// SDE on the same grid and number of model calls, and a sampler that takes
/// no constraint (`ode`, `langevin`, `mala`) by DPM-Solver++(2M) SDE with
/// `sampling.steps`. Why stochastic: the known part is replaced by y + σ·z at
/// every step, and only fresh noise in the unknown part lets it reconcile
/// with those draws (Song et al. 2021, App. I.2; Lugmayr et al. 2022,
/// RePaint, §4.1); a deterministic solver carries the mismatch to the end
/// (measured on digits: `tests/inpaint_trained.rs`).
pub fn default_sampler(run: &SamplerSpec) -> (SamplerKind, usize) {
    let kind = run.sampler;
    let stochastic = matches!(kind, SamplerKind::Ddpm | SamplerKind::EulerAncestral | SamplerKind::Dpmpp2mSde)
        || (kind == SamplerKind::Ddim && run.eta > 0.0);
    if kind.takes_constraint() && (!kind.is_denoiser() || stochastic) {
        return (kind, run.steps);
    }
    let nfe = if kind.takes_constraint() {
        let i = kind.info();
        run.steps * i.evals_per_step + i.final_evals
    } else {
        run.steps
    };
    (SamplerKind::Dpmpp2mSde, SamplerKind::Dpmpp2mSde.steps_for_nfe(nfe))
}

/// Reads observations: `held-out[:N]` (the first N held-out images of the run's
/// image data, with their labels), a `.npy` in data space, or a PNG in pixels
/// (single-channel images of the run's size, mapped by its pixel scale).
pub fn read_input(path: &Path, cfg: &RunConfig, d: usize) -> Result<(Points, Option<Vec<u8>>)> {
    let (shape, scale) = (cfg.image_shape(d), cfg.data.scale);
    if let Some(rest) = path.to_str().and_then(|s| s.strip_prefix("held-out")) {
        let limit = match rest.strip_prefix(':') {
            Some(n) => n.parse::<usize>().map_err(|_| Error::Setting {
                key: "input",
                message: format!("held-out:N needs a count, found `{n}`"),
            })?,
            None if rest.is_empty() => usize::MAX,
            None => {
                return Err(Error::Setting {
                    key: "input",
                    message: format!("expected held-out[:N], a .npy or a PNG, found `{}`", path.display()),
                })
            }
        };
        if !data::is_image_source(&cfg.data.source) {
            return Err(Error::Setting { key: "input", message: "held-out needs a run trained on images".into() });
        }
        let set = data::load_images(&cfg.data.source, false, &cfg.data.image_options())?;
        let set = set.select(&(0..set.len().min(limit)).collect::<Vec<_>>());
        return Ok((set.to_points(scale), Some(set.labels.clone())));
    }
    let pts = if path.extension().is_some_and(|e| e == "png") {
        let Some((1, h, w)) = shape else {
            return Err(Error::data(path, "a PNG input needs a run trained on single-channel images"));
        };
        let img = image::open(path).map_err(|e| Error::data(path, e.to_string()))?.to_luma8();
        if img.dimensions() != (w as u32, h as u32) {
            let (iw, ih) = img.dimensions();
            return Err(Error::data(path, format!("the image is {iw}×{ih}, the run's images are {w}×{h}")));
        }
        Points::new(1, d, img.pixels().map(|p| scale.to_data(p.0[0] as f32 / 255.0)).collect())
    } else {
        npy::read_points(path)?
    };
    if pts.d != d {
        return Err(Error::data(path, format!("observations have {} coordinates, the run's data {d}", pts.d)));
    }
    if pts.n == 0 || !pts.all_finite() {
        return Err(Error::data(path, "observations must be a non-empty set of finite numbers"));
    }
    Ok((pts, None))
}

/// Completions of observations: `per_input` rows per observation, in order
/// (observation 0's first, …), the mask used (1 = known) and the score evaluations.
pub struct Inpainted {
    pub x: Points,
    pub mask: Vec<f64>,
    pub nfe: usize,
}

/// What an inpainting asks besides the observations: the mask, completions
/// per observation, the sampler (`None`: [`default_sampler`]), steps (`None`:
/// the default sampler's, else the run's) and the seed.
#[derive(Debug, Clone)]
pub struct InpaintSettings {
    pub mask: MaskSpec,
    pub per_input: usize,
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub seed: u64,
    pub quiet: bool,
}

/// The completions of [`inpaint_run`] without the files: the mask (random
/// masks drawn first from the seeded sampling stream), then the sampler with
/// the known coordinates held to the observation perturbed to each step's
/// noise level. Every front end (the CLI, the Python package) inpaints through
/// here, so the same seed gives the same numbers in each. `ready` runs after
/// every check of the request and before the sampling (the CLI checks its
/// output file there, so a bad request is named before an existing file).
pub fn inpaint_loaded(
    model: &LoadedModel,
    obs: &Points,
    s: &InpaintSettings,
    ready: impl FnOnce() -> Result<()>,
) -> Result<Inpainted> {
    let cfg = &model.cfg;
    let d = model.state.dim;
    if obs.d != d {
        return Err(Error::Invalid(format!("observations have {} coordinates, the run's data {d}", obs.d)));
    }
    if s.per_input == 0 || s.steps == Some(0) {
        return Err(Error::Invalid("--per-input and --steps must be ≥ 1".into()));
    }
    let shape = cfg.image_shape(d);
    let mut rng = Rng::new(s.seed, streams::SAMPLING);
    let mask = s.mask.build(d, shape, &mut rng)?;
    let k = s.per_input;
    let n = obs.n.checked_mul(k).ok_or_else(|| Error::Invalid(format!("--per-input {k} is too large")))?;
    budget::check_sampling(cfg, n, d, 0, "inpainting")?;
    let repeated: Vec<f64> = obs.rows().flat_map(|r| std::iter::repeat_n(r, k).flatten().copied()).collect();
    let constraint = Inpaint::new(
        Tensor::from_vec(repeated, (n, d), &model.device)?.to_dtype(DType::F32)?,
        Tensor::from_slice(&mask, (1, d), &model.device)?.to_dtype(DType::F32)?,
    )?;
    // the sampler table's check (in `sample`) refuses a sampler that cannot hold the constraint
    let (kind, default_steps) = match s.sampler {
        Some(k) => (k, cfg.sampling.steps),
        None => default_sampler(&cfg.sampling),
    };
    let steps = s.steps.unwrap_or(default_steps);
    let spec = cfg.sampling.with_sampler(kind);
    let spec = SamplerSpec { steps, ..spec };
    let score = model.score();
    kind.check(&Offers {
        every_level: !cfg.objective.kind.is_noise_free(cfg.objective.sigma),
        energy: model.model.energy().is_some(),
        ladder: cfg.objective.kind == ObjectiveKind::Ncsn,
        constraint: true,
    })?;
    ready()?;
    let ladder = cfg.ladder();
    let sde = cfg.sde();
    let len = match kind.method() {
        Method::AnnealedLangevin => spec.steps_per_level * ladder.levels(),
        _ => steps,
    };
    let pb = progress::bar(len, "inpaint", s.quiet);
    let ctx = SampleContext {
        ladder: (cfg.objective.kind == ObjectiveKind::Ncsn).then_some(&ladder),
        constraint: &constraint,
        device: model.device.clone(),
        ..SampleContext::new(score.as_ref(), sde.as_ref(), &pb)
    };
    let out = spec.sample(&ctx, (n, d), &mut rng).map_err(|e| Error::Invalid(format!("inpaint: {e}")))?;
    Ok(Inpainted { x: Points::from_tensor(&out.x)?, mask, nfe: out.nfe })
}

/// Fills in the unknown coordinates of each observation (`per_input` times),
/// holding the known ones to the observation perturbed to each step's noise
/// level ([`inpaint_loaded`]). Writes the completions as `.npy` and a picture: for images a grid
/// whose rows are [masked input, completions…], for 2-D points a scatter.
pub fn inpaint_run(run_dir: &Path, req: &InpaintRequest) -> Result<InpaintOutcome> {
    let model = LoadedModel::from_run(run_dir, req.use_ema, &req.device)?;
    let cfg = &model.cfg;
    let d = model.state.dim;
    let shape = cfg.image_shape(d);
    let (obs, labels) = read_input(&req.input, cfg, d)?;
    let settings = InpaintSettings {
        mask: req.mask.clone(),
        per_input: req.per_input,
        sampler: req.sampler,
        steps: req.steps,
        seed: req.seed,
        quiet: req.quiet,
    };
    let k = settings.per_input;
    let start = Instant::now();
    // Ctrl-C stops the sampler at its next step; then nothing is written.
    let stop = progress::Interruptible::enter();
    let Inpainted { x: pts, mask, nfe } =
        inpaint_loaded(&model, &obs, &settings, || fs::check_new_output(&req.out, req.overwrite))
            .map_err(|e| stop.explain(e, "inpainting stopped; nothing was written"))?;
    let n = pts.n;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(dir) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir(dir)?;
    }
    // for images a grid whose rows are [the masked input (missing pixels mid-grey), its completions…]
    let tiles = shape.map(|_| {
        let scale = cfg.data.scale;
        let mut pixels = Vec::with_capacity((n + obs.n) * d);
        for (i, row) in obs.rows().enumerate() {
            pixels.extend(row.iter().zip(&mask).map(|(&x, &m)| if m == 1.0 { scale.to_pixel(x) as f32 } else { 0.5 }));
            pixels.extend(pts.data[i * k * d..(i + 1) * k * d].iter().map(|&x| scale.to_pixel(x) as f32));
        }
        GridTiles { pixels, cols: k + 1 }
    });
    let png = write_samples(&req.out, &pts, cfg, &format!("{n} inpainted points, {}", cfg.name), tiles)?;
    let known_fraction = mask.iter().sum::<f64>() / d as f64;
    // the classes of held-out observations, one per completion, for `scoregen classify --labels`
    let labels = match labels {
        Some(l) => {
            let path = req.out.with_extension("labels.npy");
            let per: Vec<f32> = l.iter().flat_map(|&y| std::iter::repeat_n(y as f32, k)).collect();
            npy::write_f32(&path, &[n, 1], &per)?;
            Some(path)
        }
        None => None,
    };
    Ok(InpaintOutcome { npy: req.out.clone(), png, labels, n, known_fraction, nfe, seconds })
}
