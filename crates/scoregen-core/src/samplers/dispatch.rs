//! The one dispatcher: [`SamplerSpec`] holds a sampler's settings and
//! [`SamplerSpec::sample`] runs the row of the sampler table
//! ([`super::registry`]) it names on a [`SampleContext`] (score, SDE, and what
//! a sampler may need besides), after checking that the context offers what
//! the sampler needs.

use super::annealed_langevin::{annealed_langevin_constrained, AnnealedOptions};
use super::denoiser::{sample_sigma_steps, Denoiser, ScoreDenoiser};
use super::grid::{grid_sigmas, Grid};
use super::heun::Churn;
use super::langevin::{langevin, mala, LangevinOptions, Start};
use super::limits::{LimitedDenoiser, X0Limit};
use super::pc::sample_pc_constrained;
use super::registry::{CorrectorKind, Method, Offers, SamplerKind};
use super::{flow, Constraint, OdeMethod, ReverseOptions, Sampled, Unconstrained};
use crate::error::Result;
use crate::rng::Rng;
use crate::score::{LogDensity, ScoreFn};
use crate::sde::{NoiseLadder, Sde};
use candle_core::{DType, Device, Shape};
use indicatif::ProgressBar;

/// A fully specified sampler: what the config and the command line choose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerSpec {
    pub kind: SamplerKind,
    /// `None`: Langevin for `pc`, no corrector otherwise.
    pub corrector: Option<CorrectorKind>,
    /// Signal-to-noise ratio of the Langevin correctors.
    pub snr: f64,
    /// Corrector steps per time step.
    pub corrector_steps: usize,
    /// Steps of the SDE samplers (the ODE sampler adapts its own).
    pub steps: usize,
    /// Tolerances of the adaptive ODE solver.
    pub rtol: f64,
    pub atol: f64,
    /// DDIM's η ∈ [0, 1] (0: deterministic, 1: DDPM).
    pub eta: f64,
    /// EDM Heun's churn (S_churn, S_min, S_max, S_noise).
    pub churn: Churn,
    /// ρ of the Karras σ schedule.
    pub rho: f64,
    /// The σ-space samplers' grid (`None`: the sampler's [`SamplerKind::default_grid`]).
    pub grid: Option<Grid>,
    /// Clipping or dynamic thresholding of x̂₀ (σ-space samplers).
    pub limit: Option<X0Limit>,
    /// σ-space samplers start at √(1 + σ₀²)·z (VP's prior N(0, I) at σ₀)
    /// instead of σ₀·z.
    pub vp_start: bool,
    /// Final time ε of the reverse-time samplers (default: the SDE's sampling ε).
    pub eps: Option<f64>,
    /// The Tweedie denoising step at the end (reverse-time SDE samplers, annealed Langevin).
    pub denoise: bool,
    /// Langevin's step size ε (Langevin, MALA, annealed Langevin at the smallest level).
    pub step_size: f64,
    /// Annealed Langevin's steps per noise level T.
    pub steps_per_level: usize,
    /// Where the Langevin family starts.
    pub start: Start,
    /// The time at which the Langevin family evaluates the score (0: the
    /// smallest level for NCSN; unconditional models ignore it).
    pub langevin_t: f64,
    /// Keep every k-th state (and the first and last), for GIFs of the reverse process.
    pub record_every: Option<usize>,
}

impl Default for SamplerSpec {
    fn default() -> Self {
        Self {
            kind: SamplerKind::Em,
            corrector: None,
            snr: 0.16,
            corrector_steps: 1,
            steps: 1000,
            rtol: 1e-5,
            atol: 1e-5,
            eta: 0.0,
            churn: Churn::default(),
            rho: 7.0,
            grid: None,
            limit: None,
            vp_start: false,
            eps: None,
            denoise: true,
            step_size: 0.01,
            steps_per_level: 100,
            start: Start::Uniform { lo: -8.0, hi: 8.0 },
            langevin_t: 0.0,
            record_every: None,
        }
    }
}

/// What a sampler runs on besides its settings: the score, the SDE its time
/// refers to, and what some samplers need (a noise ladder, an energy, a constraint).
pub struct SampleContext<'a> {
    pub score: &'a dyn ScoreFn,
    pub sde: &'a dyn Sde,
    /// The NCSN noise ladder, largest σ last, when the score was learned on
    /// it (annealed Langevin needs it).
    pub ladder: Option<&'a NoiseLadder>,
    /// False when the score was learned at a single noise level (a
    /// noise-free objective): only the Langevin family applies.
    pub every_level: bool,
    /// The unnormalized log-density whose ratio MALA's accept step needs.
    pub energy: Option<&'a dyn LogDensity>,
    /// Held after every step (inpainting); [`Unconstrained`] otherwise.
    pub constraint: &'a dyn Constraint,
    pub dtype: DType,
    /// Where the samples live (the score's device); the prior is drawn on the
    /// CPU from the seeded stream and copied there.
    pub device: Device,
    pub progress: &'a ProgressBar,
}

impl<'a> SampleContext<'a> {
    /// What this context offers a sampler ([`SamplerKind::check`]).
    pub fn offers(&self) -> Offers {
        Offers {
            every_level: self.every_level,
            energy: self.energy.is_some(),
            ladder: self.ladder.is_some(),
            constraint: !self.constraint.is_none(),
        }
    }

    /// An unconstrained context in f32 on the CPU with a hidden progress bar's place taken by `progress`.
    pub fn new(score: &'a dyn ScoreFn, sde: &'a dyn Sde, progress: &'a ProgressBar) -> Self {
        Self {
            score,
            sde,
            ladder: None,
            every_level: true,
            energy: None,
            constraint: &Unconstrained,
            dtype: DType::F32,
            device: Device::Cpu,
            progress,
        }
    }
}

impl SamplerSpec {
    /// The one dispatcher: draws `shape` samples with the sampler this spec
    /// names — PC-family predictors and correctors, the probability-flow ODE,
    /// the σ-space solvers, or the Langevin family.
    pub fn sample(&self, ctx: &SampleContext, shape: impl Into<Shape>, rng: &mut Rng) -> Result<Sampled> {
        self.kind.check(&ctx.offers())?;
        let shape = shape.into();
        let opts =
            ReverseOptions { steps: self.steps, eps: self.eps, denoise: self.denoise, record_every: self.record_every };
        Ok(match self.kind.method() {
            Method::SigmaSpace { .. } => self.sample_sigma_space(ctx, shape, rng)?,
            Method::ProbabilityFlow => {
                let method = OdeMethod::Rk45 { rtol: self.rtol, atol: self.atol };
                flow::sample_ode(ctx.score, ctx.sde, shape, method, &opts, rng, ctx.dtype, &ctx.device)?
            }
            Method::ReverseSde { predictor, corrector } => {
                let corrector = self.corrector.unwrap_or(corrector).build(self.snr, self.corrector_steps);
                sample_pc_constrained(
                    ctx.score,
                    ctx.sde,
                    predictor().as_ref(),
                    corrector.as_ref(),
                    ctx.constraint,
                    shape,
                    &opts,
                    rng,
                    ctx.dtype,
                    &ctx.device,
                    ctx.progress,
                )?
            }
            Method::Langevin { metropolis } => {
                let x0 = self.start.sample(shape, rng, ctx.dtype, &ctx.device)?;
                let lopts = LangevinOptions {
                    steps: self.steps,
                    eps: self.step_size,
                    t: self.langevin_t,
                    record_every: self.record_every,
                };
                match (metropolis, ctx.energy) {
                    (true, Some(e)) => mala(ctx.score, e, x0, &lopts, rng, ctx.progress)?.0,
                    _ => langevin(ctx.score, x0, &lopts, rng, ctx.progress)?,
                }
            }
            Method::AnnealedLangevin => {
                let ladder = ctx.ladder.expect("checked: the context offers a ladder");
                let aopts = AnnealedOptions {
                    steps_per_level: self.steps_per_level,
                    eps: self.step_size,
                    denoise: self.denoise,
                    record_every: self.record_every,
                };
                let x0 = self.start.sample(shape, rng, ctx.dtype, &ctx.device)?;
                annealed_langevin_constrained(ctx.score, ladder, x0, ctx.constraint, &aopts, rng, ctx.progress)?
            }
        })
    }

    /// The σ-space samplers: x_{σ_0} = σ_0·z (k-diffusion's start; for VP this
    /// is x_T/m(T) up to the data's own spread), or with `vp_start`
    /// √(1 + σ_0²)·z (diffusers' `init_noise_sigma`: the VP prior N(0, I) at
    /// σ_0 in σ-space), then the sampler down to σ = 0 through the shared loop
    /// [`sample_sigma_steps`] (which records trajectories). The grid is
    /// `grid` or the sampler's default ([`grid_sigmas`]); `limit` wraps the
    /// denoiser ([`LimitedDenoiser`]).
    fn sample_sigma_space(&self, ctx: &SampleContext, shape: Shape, rng: &mut Rng) -> candle_core::Result<Sampled> {
        let Method::SigmaSpace { step, grid } = self.kind.method() else {
            candle_core::bail!("`{}` is not a σ-space sampler", self.kind)
        };
        let den = ScoreDenoiser::new(ctx.score, ctx.sde, self.eps);
        let grid: Grid = self.grid.unwrap_or(grid);
        let sigmas = grid_sigmas(grid, &den, self.steps.max(1), self.rho)?;
        let scale = if self.vp_start { (1.0 + sigmas[0] * sigmas[0]).sqrt() } else { sigmas[0] };
        let x = rng.randn(shape, ctx.dtype, &ctx.device)?.affine(scale, 0.0)?;
        let mut stepper = step(self);
        let limited;
        let den: &dyn Denoiser = match self.limit {
            Some(limit) => {
                limited = LimitedDenoiser { inner: &den, limit };
                &limited
            }
            None => &den,
        };
        sample_sigma_steps(den, stepper.as_mut(), x, &sigmas, rng, self.record_every, ctx.progress)
    }
}
