//! `scoregen sample`: draw samples from a trained run with any sampler,
//! optionally steered towards a class.

use super::shared::RunArgs;
use super::Globals;
use anyhow::{Context, Result};
use scoregen::app::commands::sample::SampleRequest;
use scoregen::app::commands::sample::{ClassChoice, ClassGuidance, SamplerOverrides};
use scoregen::samplers::{CorrectorKind, Grid, SamplerKind};
use std::path::PathBuf;

/// Sample a trained run: reverse-SDE predictors, predictor–corrector, the probability-flow ODE, the σ-space solvers (DDPM, DDIM, DPM-Solver++, Heun, Euler-ancestral), or the Langevin family.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  scoregen sample --run runs/gmm8-ve --n 5000 --steps 500 --out samples.npy\n  scoregen sample --run runs/gmm8-ve --sampler pc --corrector langevin --snr 0.16\n  scoregen sample --run runs/gmm8-ve --sampler ode --rtol 1e-5 --atol 1e-5\n  scoregen sample --run runs/ncsn-gmm8 --sampler annealed-langevin --eps 2.5e-4 --steps-per-level 100\n  scoregen sample --run runs/sliced-energy-gmm8 --sampler langevin --eps 0.005 --steps 1000\n  scoregen sample --run runs/gmm8-vp --sampler dpmpp-3m --grid karras --steps 15\n  scoregen sample --run runs/digits-vp --sampler ddim --grid trailing --steps 50 --threshold 0.995 --vp-start\n  scoregen sample --run runs/digits-vp --device cuda:0"
)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Number of samples (default: the config's sampling.n).
    #[arg(long)]
    n: Option<usize>,
    /// Reverse-SDE steps (default: the config's sampling.steps).
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output .npy (default: RUN/samples/samples.npy, replaced each time); a PNG is written beside it for 2-D data
    /// (a scatter) and images (a grid; the .npy is then [N, C, H, W]). An existing --out file is refused unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the --out file if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Also write OUT.gif: about 40 frames of the reverse process (image grids, or points for 2-D data).
    #[arg(long)]
    gif: bool,
    /// Start from this x_T (.npy, [N, D] or [N, C, H, W], in the SDE's scale: N(0, I) for VP and the DDPM
    /// chain) instead of a draw from the seed, e.g. the latents a diffusers pipeline started from.
    #[arg(long, value_name = "FILE.npy")]
    init_noise: Option<PathBuf>,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[command(flatten)]
    guidance: GuidanceArgs,
}

// The sampler and its settings; each one given overrides the run's config.
#[derive(Debug, clap::Args)]
struct SamplerArgs {
    /// Sampler (default: the config's sampling.sampler; `scoregen list` describes each).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// Corrector before each predictor step (default: langevin for pc, none otherwise).
    #[arg(long)]
    corrector: Option<CorrectorKind>,
    /// Signal-to-noise ratio of the Langevin correctors.
    #[arg(long)]
    snr: Option<f64>,
    /// Relative tolerance of the ODE sampler (RK45).
    #[arg(long)]
    rtol: Option<f64>,
    /// Absolute tolerance of the ODE sampler (RK45).
    #[arg(long)]
    atol: Option<f64>,
    /// Langevin step size ε (annealed: the step at the smallest noise level).
    #[arg(long)]
    eps: Option<f64>,
    /// Annealed Langevin: steps per noise level T.
    #[arg(long)]
    steps_per_level: Option<usize>,
    /// DDIM: stochasticity η ∈ [0, 1].
    #[arg(long)]
    eta: Option<f64>,
    /// Heun: EDM's S_churn (0: deterministic).
    #[arg(long)]
    churn: Option<f64>,
    /// σ-space samplers: where the steps fall. uniform-t (uniform in t from T to ε), karras (EDM, ρ = sampling.rho),
    /// uniform-lambda (uniform in log σ), or diffusers' timestep spacings: linspace, leading, trailing as
    /// DDIMScheduler defines them, dpm-linspace, dpm-leading as DPMSolverMultistepScheduler does (on the DDPM
    /// chain its integer timesteps; on a continuous SDE their limit on [ε, T]). Default: uniform-t for ddpm and
    /// ddim, karras for the others.
    #[arg(long)]
    grid: Option<Grid>,
    /// σ-space samplers: clip the denoised estimate x̂₀ to [−R, R] (--clip-range, default 1), as diffusers' DDIM clip_sample.
    #[arg(long)]
    clip_denoised: bool,
    /// σ-space samplers: dynamic thresholding of x̂₀ at the P-quantile of |x̂₀|, P ∈ (0, 1], e.g. 0.995 (Saharia et al. 2022).
    #[arg(long, value_name = "P")]
    threshold: Option<f64>,
    /// The data range [−R, R] of --clip-denoised and --threshold.
    #[arg(long, value_name = "R")]
    clip_range: Option<f64>,
    /// ddim with --clip-denoised or --threshold: limit only x̂₀ and keep the model's ε̂ in the step, as
    /// diffusers' DDIMScheduler does by default (use_clipped_model_output=False); without it ε̂ is
    /// recomputed from the limited x̂₀ (use_clipped_model_output=True).
    #[arg(long)]
    keep_model_eps: bool,
    /// σ-space samplers: start at √(1 + σ₀²)·z, the VP prior N(0, I) at σ₀, instead of σ₀·z.
    #[arg(long)]
    vp_start: bool,
}

impl SamplerArgs {
    /// The flags as the app layer's overrides of the run's settings (applied and checked there).
    fn overrides(&self) -> SamplerOverrides {
        SamplerOverrides {
            sampler: self.sampler,
            corrector: self.corrector,
            snr: self.snr,
            rtol: self.rtol,
            atol: self.atol,
            eps: self.eps,
            steps_per_level: self.steps_per_level,
            eta: self.eta,
            churn: self.churn,
            grid: self.grid,
            clip_denoised: self.clip_denoised,
            threshold: self.threshold,
            clip_range: self.clip_range,
            keep_model_eps: self.keep_model_eps,
            vp_start: self.vp_start,
        }
    }
}

// Class-conditional generation: classifier-free, or through a noise-aware classifier.
#[derive(Debug, clap::Args)]
struct GuidanceArgs {
    /// Generate class K, or `all`: every class in the proportions of the training labels
    /// (each sample its own class). Classifier-free guidance of a class-conditional run
    /// (model.classes), or classifier guidance with --classifier.
    #[arg(long, value_name = "K|all")]
    class: Option<ClassChoice>,
    /// Guidance strength w: (1 + w)·s(x,t,y) − w·s(x,t) without a classifier,
    /// s(x,t) + w·∇ₓ log p_t(y|x) with one (default: the run's sampling.guidance, 1 unless set).
    #[arg(long, value_name = "W")]
    guidance: Option<f64>,
    /// A noise-aware classifier (from `train-classifier --noisy --run RUN`) for classifier guidance.
    #[arg(long, value_name = "DIR")]
    classifier: Option<PathBuf>,
}

pub fn run(args: &Args, g: &Globals) -> Result<()> {
    let run = &args.run.run;
    let cfg = scoregen::app::run_dir::config_of(run).with_context(|| format!("reading run {}", run.display()))?;
    let req = SampleRequest {
        n: args.n.unwrap_or(cfg.sampling.n),
        steps: args.steps.unwrap_or(cfg.sampling.steps),
        seed: args.seed,
        out: args.out.clone().unwrap_or_else(|| run.join("samples").join("samples.npy")),
        overwrite: args.overwrite || args.out.is_none(),
        use_ema: !args.run.no_ema && cfg.sampling.use_ema,
        quiet: g.quiet,
        step_size: None,
        steps_per_level: None,
        record_every: None,
        device: g.open_device()?,
        x_init: match &args.init_noise {
            Some(path) => Some(scoregen::app::commands::sample::read_init_noise(path)?),
            None => None,
        },
    };
    let record_every = args.gif.then(|| (req.steps / 40).max(1));
    let req = SampleRequest { record_every, ..req };
    scoregen::app::commands::sample::check_counts(req.n, req.steps)?;
    let sc = args.sampler.overrides().apply(&cfg.sampling)?;
    let o = scoregen::app::commands::sample::sample_run_guided(
        run,
        &req,
        Some(sc),
        ClassGuidance::resolve(&cfg, args.guidance.class, args.guidance.guidance, args.guidance.classifier.clone())?
            .as_ref(),
    )?;
    g.print(&o, |o| {
        println!("{} samples ({} score evaluations) in {:.2} s → {}", o.n, o.nfe, o.seconds, o.npy.display());
        if let Some(p) = &o.png {
            println!("picture (scatter or image grid) → {}", p.display());
        }
        if let Some(g) = &o.gif {
            println!("reverse process (animation) → {}", g.display());
        }
    });
    Ok(())
}
