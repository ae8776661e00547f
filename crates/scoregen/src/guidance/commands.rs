//! The guidance commands over a run directory: class-guided sampling
//! (`scoregen sample --class`), inpainting (`scoregen inpaint`) and judging
//! samples by a classifier (`scoregen classify`).

use super::{ClassifierFree, ClassifierGuided, Inpaint, MaskSpec, ModelConditional};
use crate::config::RunConfig;
use crate::data;
use crate::error::{Error, Result};
use crate::io::fs;
use crate::io::npy;
use crate::nets::SavedClassifier;
use crate::points::Points;
use crate::rng::Rng;
use crate::run::scatter;
use crate::samplers::{AnnealedOptions, SamplerKind, SamplerSpec};
use crate::score::ScoreFn;
use crate::train::{streams, LoadedModel};
use crate::{progress, viz};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Steering `scoregen sample` to class y: classifier guidance with a trained
/// noise-aware classifier, s + w·∇ₓ log p_t(y | x), or (no classifier) classifier-free
/// guidance of a class-conditional run, (1 + w)·s(x, t, y) − w·s(x, t).
#[derive(Debug, Clone)]
pub struct ClassGuidance {
    pub class: usize,
    pub scale: f64,
    /// A directory written by `scoregen train-classifier --noisy`.
    pub classifier: Option<PathBuf>,
}

impl ClassGuidance {
    /// Calls `f` with the guided score of `model`.
    pub fn with_score<R>(&self, model: &LoadedModel, f: impl FnOnce(&dyn ScoreFn) -> Result<R>) -> Result<R> {
        if !self.scale.is_finite() || self.scale < 0.0 {
            return Err(Error::Invalid(format!("--guidance must be a finite number ≥ 0 (got {})", self.scale)));
        }
        match &self.classifier {
            Some(dir) => {
                let saved = SavedClassifier::load(dir)?;
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
                self.check_class(spec.classes)?;
                let (base, clf) = (model.score(), &saved.classifier);
                f(&ClassifierGuided { score: base.as_ref(), classifier: clf, class: self.class, scale: self.scale })
            }
            None => {
                let k = model.model.classes();
                if k == 0 {
                    return Err(Error::Invalid(
                        "--class needs a class-conditional run (trained with model.classes = K) or --classifier DIR"
                            .into(),
                    ));
                }
                self.check_class(k)?;
                let cond = ModelConditional { model: &model.model, sde: model.cfg.sde() };
                f(&ClassifierFree { model: &cond, class: self.class, w: self.scale })
            }
        }
    }

    fn check_class(&self, k: usize) -> Result<()> {
        if self.class >= k {
            return Err(Error::Invalid(format!("--class {} is out of range: classes are 0..{}", self.class, k - 1)));
        }
        Ok(())
    }
}

/// What `scoregen inpaint` was asked for.
#[derive(Debug, Clone)]
pub struct InpaintRequest {
    /// Observations: `held-out[:N]` (the run's held-out images), `.npy` [N, D]
    /// (or [N, C, H, W]) in data space, or a PNG image.
    pub input: PathBuf,
    pub mask: MaskSpec,
    /// Completions drawn per observation.
    pub per_input: usize,
    /// The sampler (PC family or annealed Langevin); `None`: the run's, or `pc`.
    pub sampler: Option<SamplerKind>,
    pub steps: Option<usize>,
    pub seed: u64,
    pub out: PathBuf,
    pub use_ema: bool,
    pub quiet: bool,
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

/// Reads observations: `held-out[:N]` (the first N held-out images of the run's
/// image data, with their labels), a `.npy` in data space, or a PNG in pixels
/// (single-channel images of the run's size, mapped by its pixel scale).
fn read_input(path: &Path, cfg: &RunConfig, d: usize) -> Result<(Points, Option<Vec<u8>>)> {
    let (shape, scale) = (cfg.image_shape(d), cfg.data.scale);
    if let Some(rest) = path.to_str().and_then(|s| s.strip_prefix("held-out")) {
        let limit = match rest.strip_prefix(':') {
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| Error::Invalid(format!("--input held-out:N needs a count, found `{n}`")))?,
            None if rest.is_empty() => usize::MAX,
            None => {
                return Err(Error::Invalid(format!(
                    "--input: expected held-out[:N], a .npy or a PNG, found `{}`",
                    path.display()
                )))
            }
        };
        if !data::is_image_source(&cfg.data.source) {
            return Err(Error::Invalid("--input held-out needs a run trained on images".into()));
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

/// Fills in the unknown coordinates of each observation (`per_input` times),
/// holding the known ones to the observation perturbed to each step's noise
/// level. Writes the completions as `.npy` and a picture: for images a grid
/// whose rows are [masked input, completions…], for 2-D points a scatter.
pub fn inpaint_run(run_dir: &Path, req: &InpaintRequest) -> Result<InpaintOutcome> {
    let model = LoadedModel::from_run(run_dir, req.use_ema)?;
    let cfg = &model.cfg;
    let d = model.state.dim;
    let shape = cfg.image_shape(d);
    let (obs, labels) = read_input(&req.input, cfg, d)?;
    let mut rng = Rng::new(req.seed, streams::SAMPLING);
    let mask = req.mask.build(d, shape, &mut rng)?;
    let k = req.per_input.max(1);
    let n = obs.n * k;
    let repeated: Vec<f64> = obs.rows().flat_map(|r| std::iter::repeat_n(r, k).flatten().copied()).collect();
    let constraint = Inpaint::new(
        Tensor::from_vec(repeated, (n, d), &Device::Cpu)?.to_dtype(DType::F32)?,
        Tensor::from_slice(&mask, (1, d), &Device::Cpu)?.to_dtype(DType::F32)?,
    )?;
    let kind = req.sampler.unwrap_or(match cfg.sampling.sampler {
        k @ (SamplerKind::Em | SamplerKind::ReverseDiffusion | SamplerKind::Ancestral | SamplerKind::Pc) => k,
        SamplerKind::AnnealedLangevin => SamplerKind::AnnealedLangevin,
        _ => SamplerKind::Pc,
    });
    if !matches!(
        kind,
        SamplerKind::Em
            | SamplerKind::ReverseDiffusion
            | SamplerKind::Ancestral
            | SamplerKind::Pc
            | SamplerKind::AnnealedLangevin
    ) {
        return Err(Error::Invalid(format!(
            "inpainting runs em, reverse-diffusion, ancestral, pc or annealed-langevin, not `{kind}`"
        )));
    }
    let steps = req.steps.unwrap_or(cfg.sampling.steps);
    let spec = SamplerSpec { kind, steps, ..cfg.sampling.spec() };
    let score = model.score();
    let start = Instant::now();
    let out = match kind {
        SamplerKind::AnnealedLangevin => {
            let ladder = cfg.ladder();
            let per_level = cfg.sampling.steps_per_level;
            let opts = AnnealedOptions {
                steps_per_level: per_level,
                eps: cfg.sampling.step_size,
                denoise: cfg.sampling.denoise,
                record_every: None,
            };
            let x0 = cfg.sampling.start.sample((n, d), &mut rng, DType::F32)?;
            let pb = progress::bar(per_level * ladder.levels(), "inpaint", req.quiet);
            crate::samplers::annealed_langevin_constrained(
                score.as_ref(),
                &ladder,
                x0,
                &constraint,
                &opts,
                &mut rng,
                &pb,
            )?
        }
        _ => {
            if cfg.objective.kind.is_noise_free(cfg.objective.sigma) {
                return Err(Error::Invalid(
                    "this run learned a single noise level; inpainting needs a model of every level".into(),
                ));
            }
            let pb = progress::bar(steps, "inpaint", req.quiet);
            let (sde, sp) = (cfg.sde(), &cfg.sampling);
            spec.sample_constrained(
                score.as_ref(),
                sde.as_ref(),
                &constraint,
                (n, d),
                sp.eps,
                sp.denoise,
                &mut rng,
                DType::F32,
                &pb,
            )
            .map_err(|e| Error::Invalid(format!("inpaint: {e}")))?
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let pts = Points::from_tensor(&out.x)?;
    if let Some(dir) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir(dir)?;
    }
    let png = req.out.with_extension("png");
    let png = if let Some((c, h, w)) = shape {
        let raw: Vec<f32> = pts.data.iter().map(|&x| x as f32).collect();
        npy::write_f32(&req.out, &[pts.n, c, h, w], &raw)?;
        let scale = cfg.data.scale;
        let mut tiles = Vec::with_capacity((n + obs.n) * d);
        for (i, row) in obs.rows().enumerate() {
            // the masked input, missing pixels shown mid-grey
            tiles.extend(row.iter().zip(&mask).map(|(&x, &m)| if m == 1.0 { scale.to_pixel(x) as f32 } else { 0.5 }));
            tiles.extend(pts.data[i * k * d..(i + 1) * k * d].iter().map(|&x| scale.to_pixel(x) as f32));
        }
        viz::image_grid(&png, &tiles, (c, h, w), k + 1, (64 / h).max(1))?;
        Some(png)
    } else {
        npy::write_points(&req.out, &pts)?;
        if d == 2 {
            let oracle = crate::run::oracle_of(cfg)?;
            scatter(&png, &pts, oracle.as_ref(), &format!("{n} inpainted points, {}", cfg.name))?;
            Some(png)
        } else {
            None
        }
    };
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
    Ok(InpaintOutcome { npy: req.out.clone(), png, labels, n, known_fraction, nfe: out.nfe, seconds })
}

/// How a classifier labels a set of samples (`scoregen classify`).
#[derive(Debug, Clone, Serialize)]
pub struct Classification {
    pub n: usize,
    /// Fraction of the samples predicted as each class.
    pub histogram: Vec<f64>,
    /// Fraction predicted as the expected class (`--class` or `--labels`), if one was given.
    pub accuracy: Option<f64>,
}

/// Classifies `samples` (data space, t = 0) and compares with `expected`: one
/// class for all, or one label per sample.
pub fn classify(classifier: &Path, samples: &Path, expected: Option<Expected>) -> Result<Classification> {
    let saved = SavedClassifier::load(classifier)?;
    let spec = &saved.meta.spec;
    let x = npy::read_points(samples)?;
    if x.d != spec.dim {
        return Err(Error::data(samples, format!("samples have dimension {}, the classifier takes {}", x.d, spec.dim)));
    }
    // a noise-aware classifier judges clean samples at its smallest training time
    let t = spec.noise_aware.then_some(1e-3);
    let (pred, _) = crate::train::classifier::predict(&saved.classifier, &x, t)?;
    let mut histogram = vec![0.0; spec.classes];
    for &p in &pred {
        histogram[p] += 1.0 / x.n as f64;
    }
    let want: Option<Vec<usize>> = match expected {
        None => None,
        Some(Expected::Class(k)) => Some(vec![k; x.n]),
        Some(Expected::Labels(path)) => {
            let l = npy::read_points(&path)?;
            if l.n * l.d != x.n || l.data.iter().any(|v| *v < 0.0 || v.fract() != 0.0) {
                return Err(Error::data(&path, format!("expected {} integer labels ≥ 0, one per sample", x.n)));
            }
            Some(l.data.iter().map(|&v| v as usize).collect())
        }
    };
    let accuracy = want.map(|w| pred.iter().zip(&w).filter(|(p, w)| p == w).count() as f64 / x.n.max(1) as f64);
    Ok(Classification { n: x.n, histogram, accuracy })
}

/// What the samples of `classify` should be.
#[derive(Debug, Clone)]
pub enum Expected {
    Class(usize),
    Labels(PathBuf),
}
