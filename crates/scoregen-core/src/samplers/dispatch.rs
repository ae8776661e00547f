//! The one dispatcher: [`SamplerSpec`] holds a sampler's settings and
//! [`SamplerSpec::sample`] runs the row of the sampler table
//! ([`super::registry`]) it names on a [`SampleContext`] (score, SDE, and what
//! a sampler may need besides), after checking that the context offers what
//! the sampler needs.

use super::annealed_langevin::{annealed_langevin_constrained, AnnealedOptions};
use super::denoiser::{sample_sigma_steps_constrained, Denoiser, ScoreDenoiser};
use super::grid::{grid_sigmas, Grid};
use super::langevin::{langevin, mala, LangevinOptions};
use super::limits::LimitedDenoiser;
use super::pc::sample_pc_constrained;
use super::registry::{Method, Offers};
use super::settings::SamplerSpec;
use super::{flow, Constraint, OdeMethod, ReverseOptions, Sampled, Unconstrained};
use crate::error::Result;
use crate::rng::Rng;
use crate::score::{LogDensity, ScoreFn};
use crate::sde::{NoiseLadder, Sde};
use candle_core::{DType, Device, Shape, Tensor};
use indicatif::ProgressBar;

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
    /// x_T to start from (in the SDE's own scale, as its prior draws it)
    /// instead of a draw from the seeded stream; the σ-space samplers divide
    /// it by m(t) of their first σ.
    pub x_init: Option<&'a Tensor>,
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
            x_init: None,
            dtype: DType::F32,
            device: Device::Cpu,
            progress,
        }
    }
}

/// The most score evaluations one sampling run may ask for: 10⁷, over a
/// thousand times the longest schedules in use (DDPM's 1,000 steps,
/// score_sde's predictor–corrector with 2,000 steps of two evaluations,
/// NCSNv2's annealed Langevin with up to ~7,000), and still minutes for a
/// 2-D exact score. More is a typo (`--steps 1000000000000`) that would run
/// silently until killed.
pub const MAX_EVALUATIONS: f64 = 1e7;

impl SamplerSpec {
    /// Score evaluations this spec asks for, before any is made: steps times
    /// the evaluations per step (a corrector adds its own; annealed Langevin
    /// runs `steps_per_level` at each of `levels`), plus the final ones; the
    /// adaptive ODE's count is not known in advance (`None`).
    pub fn planned_evaluations(&self, levels: usize) -> Option<f64> {
        let info = self.sampler.info();
        let steps = self.steps as f64;
        Some(match self.sampler.method() {
            Method::ProbabilityFlow => return None,
            Method::AnnealedLangevin => self.steps_per_level as f64 * levels.max(1) as f64,
            Method::ReverseSde { corrector, .. } => {
                let corrections = match self.corrector.unwrap_or(corrector) {
                    super::CorrectorKind::None => 0.0,
                    _ => self.corrector_steps as f64,
                };
                // the predictor's one evaluation and the corrector's (the table's count assumes the default corrector)
                steps * (1.0 + corrections) + info.final_evals as f64
            }
            _ => steps * info.evals_per_step as f64 + info.final_evals as f64,
        })
    }

    /// Refuses a run of more than [`MAX_EVALUATIONS`] score evaluations,
    /// naming `sampling.steps` and the estimate.
    pub fn check_evaluations(&self, levels: usize) -> Result<()> {
        match self.planned_evaluations(levels) {
            Some(e) if e > MAX_EVALUATIONS => Err(crate::error::Error::Setting {
                key: "sampling.steps",
                message: format!(
                    "{} steps of `{}` would take about {e:.2e} score evaluations; more than {MAX_EVALUATIONS:.0e} is refused (the longest schedules in use take under 10⁴)",
                    self.steps, self.sampler
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The one dispatcher: draws `shape` samples with the sampler this spec
    /// names — PC-family predictors and correctors, the probability-flow ODE,
    /// the σ-space solvers, or the Langevin family.
    pub fn sample(&self, ctx: &SampleContext, shape: impl Into<Shape>, rng: &mut Rng) -> Result<Sampled> {
        self.sampler.check(&ctx.offers())?;
        self.check_evaluations(ctx.ladder.map_or(1, |l| l.levels()))?;
        let shape = shape.into();
        let opts = ReverseOptions {
            steps: self.steps,
            eps: self.eps,
            denoise: self.denoise,
            record_every: self.record_every,
            x_init: ctx.x_init.cloned(),
        };
        Ok(match self.sampler.method() {
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
                let x0 = self.initial(ctx, shape, rng)?;
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
                let x0 = self.initial(ctx, shape, rng)?;
                annealed_langevin_constrained(ctx.score, ladder, x0, ctx.constraint, &aopts, rng, ctx.progress)?
            }
        })
    }

    /// The Langevin family's start: `ctx.x_init`, or `start`'s draw.
    fn initial(&self, ctx: &SampleContext, shape: Shape, rng: &mut Rng) -> candle_core::Result<candle_core::Tensor> {
        match ctx.x_init {
            Some(x) => super::checked_init(x, &shape, ctx.dtype, &ctx.device),
            None => self.start.sample(shape, rng, ctx.dtype, &ctx.device),
        }
    }

    /// The σ-space samplers: x_{σ_0} = σ_0·z (k-diffusion's start; for VP this
    /// is x_T/m(T) up to the data's own spread), or with `vp_start`
    /// √(1 + σ_0²)·z (diffusers' `init_noise_sigma`: the VP prior N(0, I) at
    /// σ_0 in σ-space), then the sampler down to σ = 0 through the shared loop
    /// [`sample_sigma_steps`] (which records trajectories). The grid is
    /// `grid` or the sampler's default ([`grid_sigmas`]); `limit` wraps the
    /// denoiser ([`LimitedDenoiser`]); `ctx.constraint` holds the known part
    /// at each σ ([`sample_sigma_steps_constrained`]).
    fn sample_sigma_space(&self, ctx: &SampleContext, shape: Shape, rng: &mut Rng) -> candle_core::Result<Sampled> {
        let Method::SigmaSpace { step, grid } = self.sampler.method() else {
            candle_core::bail!("`{}` is not a σ-space sampler", self.sampler)
        };
        let den = ScoreDenoiser::new(ctx.score, ctx.sde, self.eps);
        let grid: Grid = self.grid.unwrap_or(grid);
        let sigmas = grid_sigmas(grid, &den, self.steps.max(1), self.rho)?;
        let scale = if self.vp_start { (1.0 + sigmas[0] * sigmas[0]).sqrt() } else { sigmas[0] };
        let x = match ctx.x_init {
            // x_T/m(t_0): the VP prior's sample in σ-space (diffusers' latents)
            Some(x) => {
                let m = ctx.sde.marginal(crate::sde::time_of_sigma(ctx.sde, sigmas[0])).0;
                (super::checked_init(x, &shape, ctx.dtype, &ctx.device)? / m)?
            }
            None => rng.randn(shape, ctx.dtype, &ctx.device)?.affine(scale, 0.0)?,
        };
        let mut stepper = step(self);
        let limited;
        let den: &dyn Denoiser = match self.limit() {
            Some(limit) => {
                limited = LimitedDenoiser { inner: &den, limit };
                &limited
            }
            None => &den,
        };
        sample_sigma_steps_constrained(
            den,
            stepper.as_mut(),
            x,
            &sigmas,
            ctx.constraint,
            rng,
            self.record_every,
            ctx.progress,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::{CorrectorKind, SamplerKind};

    /// The planned evaluations count what each sampler spends, and a typo
    /// of a step count is refused before anything runs, by its setting's name.
    #[test]
    fn absurd_step_counts_are_refused_with_their_evaluations() {
        let spec = |sampler, steps| SamplerSpec { sampler, steps, ..SamplerSpec::default() };
        // EM: one per step and the final denoising step's
        assert_eq!(spec(SamplerKind::Em, 1000).planned_evaluations(1), Some(1001.0));
        let pc = SamplerSpec { corrector: Some(CorrectorKind::Langevin), ..spec(SamplerKind::Pc, 2000) };
        assert_eq!(pc.planned_evaluations(1), Some(4001.0));
        assert_eq!(spec(SamplerKind::Heun, 10).planned_evaluations(1), Some(20.0)); // the table's 2 per step
        let ald = SamplerSpec { steps_per_level: 100, ..spec(SamplerKind::AnnealedLangevin, 1) };
        assert_eq!(ald.planned_evaluations(10), Some(1000.0));
        assert_eq!(spec(SamplerKind::Ode, 10).planned_evaluations(1), None);
        assert!(spec(SamplerKind::Em, 1_000_000).check_evaluations(1).is_ok());
        let err = spec(SamplerKind::Em, 1_000_000_000_000).check_evaluations(1).unwrap_err();
        let (key, msg) = err.setting().unwrap();
        assert_eq!(key, "sampling.steps");
        assert!(msg.contains("1.00e12 score evaluations"), "{msg}");
    }
}
