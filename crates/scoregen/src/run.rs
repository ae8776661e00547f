//! Whole commands over a run directory: sample a trained run, evaluate a
//! sample file, and the quickstart (train → sample → evaluate → pictures).

pub mod images;

use crate::config::{ObjectiveKind, RunConfig};
use crate::data;
use crate::error::{Error, Result};
use crate::guidance;
use crate::io::fs;
use crate::io::npy;
use crate::metrics::{self, Distances, MixtureReport};
use crate::oracle::GaussianMixture;
use crate::points::Points;
use crate::progress;
use crate::rng::Rng;
use crate::samplers::{self, AnnealedOptions, LangevinOptions, SamplerKind, SamplerSpec};
use crate::score::ScoreFn;
use crate::train::{self, streams, LoadedModel, TrainOptions, TrainOutcome};
use crate::viz::{self, Bounds};
use candle_core::DType;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The quickstart experiment: VE SDE on `gmm8`, tuned to train in well under a minute.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../configs/gmm8-ve.toml");

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
    pub use_ema: bool,
    pub quiet: bool,
}

impl SampleRequest {
    /// n samples with `steps` steps, the run's sampler and EMA weights, no progress bar.
    pub fn new(n: usize, steps: usize, seed: u64, out: PathBuf) -> Self {
        Self {
            n,
            steps,
            seed,
            out,
            use_ema: true,
            quiet: true,
            step_size: None,
            steps_per_level: None,
            record_every: None,
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

/// The exact mixture behind a config's data, if it has one.
pub fn oracle_of(cfg: &RunConfig) -> Result<Option<GaussianMixture>> {
    let src = &cfg.data.source;
    if src.ends_with(".npy") || data::is_image_source(src) {
        return Ok(None);
    }
    Ok(data::load(src, 1, &mut Rng::new(0, 0))?.oracle)
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

/// [`sample_run_with`], optionally steered to a class ([`guidance::ClassGuidance`]).
pub fn sample_run_guided(
    run_dir: &Path,
    req: &SampleRequest,
    spec: Option<SamplerSpec>,
    class: Option<&guidance::ClassGuidance>,
) -> Result<SampleOutcome> {
    let model = LoadedModel::from_run(run_dir, req.use_ema)?;
    // An unwritable output folder fails now, not after the sampling it would lose.
    fs::ensure_writable_dir(req.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    let base = spec.unwrap_or_else(|| model.cfg.sampling.spec());
    let spec = SamplerSpec { steps: req.steps, record_every: req.record_every, ..base };
    let start = Instant::now();
    let mut rng = Rng::new(req.seed, streams::SAMPLING);
    let out = match class {
        None => draw(&model, model.score().as_ref(), req, &spec, &mut rng)?,
        Some(g) => g.with_score(&model, |score| draw(&model, score, req, &spec, &mut rng))?,
    };
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
    let png = if let Some((c, h, w)) = model.cfg.image_shape(pts.d) {
        // Flattened images: save as [N, C, H, W] and a grid of them in pixel space.
        let scale = model.cfg.data.scale;
        let to_pixels = |p: &Points| p.data.iter().map(|&x| scale.to_pixel(x) as f32).collect::<Vec<f32>>();
        let raw: Vec<f32> = pts.data.iter().map(|&x| x as f32).collect();
        npy::write_f32(&req.out, &[pts.n, c, h, w], &raw)?;
        let png = req.out.with_extension("png");
        let cols = (pts.n as f64).sqrt().ceil() as usize;
        let zoom = (64 / h).max(1);
        viz::image_grid(&png, &to_pixels(&pts), (c, h, w), cols, zoom)?;
        if let Some(gif) = &gif {
            let pixels: Vec<Vec<f32>> = frames.iter().map(|(_, p)| to_pixels(p)).collect();
            viz::image_grid_gif(gif, &pixels, (c, h, w), cols, zoom, 8)?;
        }
        Some(png)
    } else if pts.d == 2 {
        npy::write_points(&req.out, &pts)?;
        let png = req.out.with_extension("png");
        let oracle = oracle_of(&model.cfg)?;
        scatter(&png, &pts, oracle.as_ref(), &format!("{} samples, {} ({} steps)", pts.n, model.cfg.name, req.steps))?;
        if let Some(gif) = &gif {
            let bounds = Bounds::around(&frames.last().expect("final frame").1, 0.15);
            let titled: Vec<(String, Points)> = frames.into_iter().map(|(t, p)| (format!("t = {t:.3}"), p)).collect();
            viz::scatter_gif(gif, &titled, None, &bounds, 8).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Some(png)
    } else {
        npy::write_points(&req.out, &pts)?;
        None
    };
    Ok(SampleOutcome { npy: req.out.clone(), png, gif, n: pts.n, nfe: out.nfe, seconds })
}

/// Runs the sampler `spec` names with `score` (the model's own, or a guided
/// one): the reverse-time samplers (PC, ODE) through [`SamplerSpec::sample`],
/// the Langevin family here.
pub fn draw(
    model: &LoadedModel,
    score: &dyn ScoreFn,
    req: &SampleRequest,
    spec: &SamplerSpec,
    rng: &mut Rng,
) -> Result<samplers::Sampled> {
    let cfg = &model.cfg;
    let sp = &cfg.sampling;
    let shape = (req.n, model.state.dim);
    let sampler = spec.kind;
    let step_size = req.step_size.unwrap_or(sp.step_size);
    let check =
        |ok: bool, why: &str| if ok { Ok(()) } else { Err(Error::Invalid(format!("sampler `{sampler}`: {why}"))) };
    let out = match sampler {
        SamplerKind::Em
        | SamplerKind::ReverseDiffusion
        | SamplerKind::Ancestral
        | SamplerKind::Pc
        | SamplerKind::Ode
        | SamplerKind::Ddpm
        | SamplerKind::Ddim
        | SamplerKind::Dpmpp2m
        | SamplerKind::Heun => {
            check(
                !cfg.objective.kind.is_noise_free(cfg.objective.sigma),
                "this run learned a single noise level; use --sampler langevin",
            )?;
            let pb = progress::bar(req.steps, "sample", req.quiet);
            spec.sample(score, cfg.sde().as_ref(), shape, sp.eps, sp.denoise, rng, DType::F32, &pb)?
        }
        SamplerKind::Langevin | SamplerKind::Mala => {
            let energy = match sampler {
                SamplerKind::Mala => Some(model.model.energy().ok_or_else(|| {
                    Error::Invalid("sampler mala needs an energy model (model.kind = \"energy-mlp\")".into())
                })?),
                _ => None,
            };
            let x0 = sp.start.sample(shape, rng, DType::F32)?;
            let opts = LangevinOptions {
                steps: req.steps,
                eps: step_size,
                t: cfg.langevin_time(),
                record_every: req.record_every,
            };
            let pb = progress::bar(req.steps, &sampler.to_string(), req.quiet);
            match energy {
                Some(e) => samplers::mala(score, e, x0, &opts, rng, &pb)?.0,
                None => samplers::langevin(score, x0, &opts, rng, &pb)?,
            }
        }
        SamplerKind::AnnealedLangevin => {
            check(cfg.objective.kind == ObjectiveKind::Ncsn, "needs a run trained with objective.kind = \"ncsn\"")?;
            let ladder = cfg.ladder();
            let per_level = req.steps_per_level.unwrap_or(sp.steps_per_level);
            let opts = AnnealedOptions {
                steps_per_level: per_level,
                eps: step_size,
                denoise: sp.denoise,
                record_every: req.record_every,
            };
            let x0 = sp.start.sample(shape, rng, DType::F32)?;
            let pb = progress::bar(per_level * ladder.levels(), "annealed", req.quiet);
            samplers::annealed_langevin(score, &ladder, x0, &opts, rng, &pb)?
        }
    };
    Ok(out)
}

/// Scatter of 2-D points over the mixture's density when known.
pub fn scatter(path: &Path, pts: &Points, mix: Option<&GaussianMixture>, title: &str) -> Result<()> {
    let bounds = match mix {
        Some(m) => Bounds::around(&m.sample(4000, &mut Rng::new(0, 0)), 0.15),
        None => Bounds::around(pts, 0.1),
    };
    let logp = mix.map(|m| move |x: f64, y: f64| m.log_prob(&Points::new(1, 2, vec![x, y]))[0]);
    let f: Option<&dyn Fn(f64, f64) -> f64> = logp.as_ref().map(|f| f as &dyn Fn(f64, f64) -> f64);
    viz::scatter_over_density(path, pts, f, &bounds, title).map_err(|e| Error::Invalid(e.to_string()))
}

/// Loss curve of a run (raw and EMA-smoothed, log scale).
pub fn loss_plot(run_dir: &Path, path: &Path) -> Result<()> {
    let log = train::read_log(&run_dir.join("metrics.jsonl"))?;
    let raw: Vec<(f64, f64)> = log.iter().map(|l| (l.step as f64, l.loss)).collect();
    let smooth: Vec<(f64, f64)> = raw
        .iter()
        .zip(viz::ema_smooth(&raw.iter().map(|p| p.1).collect::<Vec<_>>(), 0.9))
        .map(|(p, s)| (p.0, s))
        .collect();
    viz::line_plot(path, &[("loss", &raw), ("EMA-smoothed", &smooth)], "training loss", "step", "loss", true)
        .map_err(|e| Error::Invalid(e.to_string()))
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
        let ds = data::load(spec, 1, &mut Rng::new(0, 0))?;
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

/// What the quickstart did and where it put it.
#[derive(Debug, Clone, Serialize)]
pub struct QuickstartSummary {
    pub out_dir: PathBuf,
    pub train_seconds: f64,
    pub steps: usize,
    pub steps_per_sec: f64,
    pub final_loss: f64,
    pub sample: SampleOutcome,
    pub evaluation: Evaluation,
    /// The run report, `report.html`.
    pub report: PathBuf,
}

/// Trains the quickstart config, samples 2,000 points, evaluates them against
/// the exact mixture and writes `samples.npy`, `samples.png`, `loss.png`, `metrics.json`
/// and the run report `report.html` (figures in `report/`).
pub fn quickstart(out_dir: &Path, overrides: &[String], quiet: bool) -> Result<QuickstartSummary> {
    let cfg = RunConfig::parse(QUICKSTART_CONFIG, "configs/gmm8-ve.toml (built in)", overrides)?;
    let trained: TrainOutcome = train::train(&cfg, out_dir, &TrainOptions { quiet, ..Default::default() })?;
    let req = SampleRequest {
        n: cfg.sampling.n,
        steps: cfg.sampling.steps,
        step_size: None,
        steps_per_level: None,
        record_every: None,
        seed: cfg.seed,
        out: out_dir.join("samples.npy"),
        use_ema: cfg.sampling.use_ema,
        quiet,
    };
    let sample = sample_run(out_dir, &req)?;
    loss_plot(out_dir, &out_dir.join("loss.png"))?;
    let pts = npy::read_points(&sample.npy)?;
    let target = Target::Mixture(oracle_of(&cfg)?.expect("gmm8 is a mixture"));
    let evaluation = evaluate(&pts, &target, cfg.seed)?;
    let mut summary = QuickstartSummary {
        out_dir: out_dir.to_path_buf(),
        train_seconds: trained.seconds,
        steps: trained.step,
        steps_per_sec: trained.steps_per_sec,
        final_loss: trained.final_loss,
        sample,
        evaluation,
        report: out_dir.join("report.html"),
    };
    fs::write_atomic(
        &out_dir.join("metrics.json"),
        serde_json::to_string_pretty(&summary).expect("serializes").as_bytes(),
    )?;
    summary.report = viz::write_report(out_dir, quiet)?.html;
    Ok(summary)
}

/// What `scoregen bench samplers` was asked for.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// A mixture to judge against (gmm8, gmm25, unbalanced, SPEC.toml); default:
    /// the run's data, or gmm8 without a run.
    pub target: Option<String>,
    /// A trained run whose model is benchmarked; `None`: the exact oracle
    /// score of the target under the VP SDE.
    pub run: Option<PathBuf>,
    pub budgets: Vec<usize>,
    pub n: usize,
    pub seed: u64,
    pub quiet: bool,
}

/// The sampler leaderboard ([`samplers::leaderboard`]): EM, DDPM, DDIM,
/// DPM-Solver++(2M) and Heun at each NFE budget, against the exact mixture.
pub fn bench_samplers(req: &BenchRequest) -> Result<samplers::leaderboard::Leaderboard> {
    use samplers::leaderboard::{leaderboard, BenchSettings, LEADERBOARD_SAMPLERS};
    if req.budgets.is_empty() || req.budgets.contains(&0) || req.n < 2 {
        return Err(Error::Invalid("bench samplers: budgets must be ≥ 1 and --n ≥ 2".into()));
    }
    let mixture_of = |spec: &str| match Target::parse(spec)? {
        Target::Mixture(m) => Ok(m),
        Target::Reference(_) => {
            Err(Error::Invalid(format!("bench samplers: target `{spec}` must be a mixture with an exact density")))
        }
    };
    let pb = progress::bar(LEADERBOARD_SAMPLERS.len() * req.budgets.len() + 1, "bench", req.quiet);
    match &req.run {
        Some(dir) => {
            let model = LoadedModel::from_run(dir, true)?;
            let cfg = &model.cfg;
            let mix = match &req.target {
                Some(t) => mixture_of(t)?,
                None => oracle_of(cfg)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "bench samplers: run {} has no exact mixture (data `{}`); image metrics are not wired into the leaderboard yet",
                        dir.display(),
                        cfg.data.source
                    ))
                })?,
            };
            if cfg.objective.kind.is_noise_free(cfg.objective.sigma) {
                return Err(Error::Invalid(
                    "bench samplers: this run learned a single noise level; reverse-time samplers need a model of every level".into(),
                ));
            }
            let score = model.score();
            let set = BenchSettings { n: req.n, eps: cfg.sampling.eps, seed: req.seed, dtype: DType::F32 };
            let sde = cfg.sde();
            let base = cfg.sampling.spec();
            Ok(leaderboard(score.as_ref(), sde.as_ref(), &mix, &base, &LEADERBOARD_SAMPLERS, &req.budgets, &set, &pb)?)
        }
        None => {
            let mix = mixture_of(req.target.as_deref().unwrap_or("gmm8"))?;
            let sde: std::sync::Arc<dyn crate::sde::Sde> = std::sync::Arc::new(crate::sde::VpSde::default());
            let oracle = crate::oracle::OracleScore::new(mix.clone(), sde.clone());
            let set = BenchSettings { n: req.n, eps: None, seed: req.seed, dtype: DType::F64 };
            let base = SamplerSpec::default();
            Ok(leaderboard(&oracle, sde.as_ref(), &mix, &base, &LEADERBOARD_SAMPLERS, &req.budgets, &set, &pb)?)
        }
    }
}
