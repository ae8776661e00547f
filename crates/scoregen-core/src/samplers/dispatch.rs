//! The sampler registry and its one dispatcher: [`SamplerKind`] names every
//! sampler, [`SamplerSpec`] holds its settings, and [`SamplerSpec::sample`]
//! runs any of them on a [`SampleContext`] (score, SDE, and what a sampler
//! may need besides).

use super::annealed_langevin::{annealed_langevin_constrained, AnnealedOptions};
use super::ddim::DdimStep;
use super::denoiser::{sample_sigma_steps, Denoiser, ScoreDenoiser, SigmaStep};
use super::dpm_solver::{Dpmpp2mSdeStep, Dpmpp2mStep, Dpmpp3mStep};
use super::grid::{grid_sigmas, Grid};
use super::heun::{Churn, HeunStep};
use super::langevin::{langevin, mala, LangevinOptions, Start};
use super::limits::{LimitedDenoiser, X0Limit};
use super::pc::sample_pc_constrained;
use super::{
    flow, Ancestral, AnnealedLangevin, Constraint, Corrector, EulerMaruyama, LangevinCorrector, NoneCorrector,
    OdeMethod, Predictor, ReverseDiffusion, ReverseOptions, Sampled, Unconstrained,
};
use crate::rng::Rng;
use crate::score::{LogDensity, ScoreFn};
use crate::sde::{NoiseLadder, Sde};
use candle_core::{DType, Device, Result, Shape};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

/// Which sampler `scoregen sample` runs (`sampling.sampler` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Euler–Maruyama on the reverse SDE.
    Em,
    /// Reverse diffusion predictor.
    ReverseDiffusion,
    /// Ancestral sampling predictor.
    Ancestral,
    /// Reverse diffusion predictor + a corrector (Langevin by default).
    Pc,
    /// Probability-flow ODE with adaptive RK45.
    Ode,
    /// Langevin dynamics with the model's score at one noise level.
    Langevin,
    /// Metropolis-adjusted Langevin (energy models).
    Mala,
    /// Annealed Langevin dynamics over the NCSN noise ladder.
    AnnealedLangevin,
    /// DDPM ancestral sampling (DDIM with η = 1); default grid uniform-t.
    Ddpm,
    /// DDIM with stochasticity `eta`; default grid uniform-t.
    Ddim,
    /// DPM-Solver++(2M); default grid karras.
    #[serde(rename = "dpmpp-2m")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp-2m"))]
    Dpmpp2m,
    /// EDM's Heun sampler, with optional churn; default grid karras.
    Heun,
    /// DPM-Solver++(3M), third-order multistep; default grid karras.
    #[serde(rename = "dpmpp-3m")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp-3m"))]
    Dpmpp3m,
    /// DPM-Solver++(2M) SDE (η = 1, noise scale `s_noise`); default grid karras.
    #[serde(rename = "dpmpp-2m-sde")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp-2m-sde"))]
    Dpmpp2mSde,
    /// k-diffusion's Euler-ancestral (DDPM's step, noise scale `s_noise`); default grid karras.
    EulerAncestral,
}

/// Which corrector runs before each predictor step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum CorrectorKind {
    /// Langevin with the signal-to-noise step rule.
    Langevin,
    /// Annealed Langevin dynamics (ε ∝ s(t)²).
    Ald,
    None,
}

/// Parses the config spelling of a kebab-case enum.
fn parse_kebab<T: for<'de> Deserialize<'de>>(s: &str) -> Option<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s)).ok()
}

impl SamplerKind {
    pub const NAMES: &'static str =
        "em, reverse-diffusion, ancestral, pc, ode, langevin, mala, annealed-langevin, ddpm, ddim, dpmpp-2m, heun, dpmpp-3m, dpmpp-2m-sde, euler-ancestral";
    pub fn parse(s: &str) -> Option<Self> {
        parse_kebab(s)
    }
    /// True for the samplers that integrate the reverse SDE / ODE from T to ε.
    pub fn is_reverse_time(self) -> bool {
        !matches!(self, Self::Langevin | Self::Mala | Self::AnnealedLangevin)
    }
    /// True for the σ-space samplers behind the [`Denoiser`](super::Denoiser) interface.
    pub fn is_denoiser(self) -> bool {
        self.default_grid().is_some()
    }
    /// The grid a σ-space sampler steps on unless `sampling.grid` says
    /// otherwise (`None` for the other samplers): DDPM and DDIM uniform in t,
    /// the others Karras, as k-diffusion runs them.
    pub fn default_grid(self) -> Option<Grid> {
        match self {
            Self::Ddpm | Self::Ddim => Some(Grid::UniformT),
            Self::Dpmpp2m | Self::Heun | Self::Dpmpp3m | Self::Dpmpp2mSde | Self::EulerAncestral => Some(Grid::Karras),
            _ => None,
        }
    }
    /// Steps that cost about `nfe` score evaluations (Heun: 2N − 1 for N steps).
    pub fn steps_for_nfe(self, nfe: usize) -> usize {
        match self {
            Self::Heun => nfe.div_ceil(2).max(1),
            // the SDE samplers add one evaluation for the final denoising step
            Self::Em | Self::ReverseDiffusion | Self::Ancestral => nfe.saturating_sub(1).max(1),
            _ => nfe.max(1),
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("expected one of {}, found `{s}`", Self::NAMES))
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        f.write_str(&s)
    }
}

impl CorrectorKind {
    pub const NAMES: &'static str = "langevin, ald, none";
    pub fn parse(s: &str) -> Option<Self> {
        parse_kebab(s)
    }
}

impl std::str::FromStr for CorrectorKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("expected one of {}, found `{s}`", Self::NAMES))
    }
}

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
    /// The NCSN noise ladder, largest σ last (annealed Langevin only).
    pub ladder: Option<&'a NoiseLadder>,
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
    /// An unconstrained context in f32 on the CPU with a hidden progress bar's place taken by `progress`.
    pub fn new(score: &'a dyn ScoreFn, sde: &'a dyn Sde, progress: &'a ProgressBar) -> Self {
        Self {
            score,
            sde,
            ladder: None,
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
        let shape = shape.into();
        let opts =
            ReverseOptions { steps: self.steps, eps: self.eps, denoise: self.denoise, record_every: self.record_every };
        let constrained = !ctx.constraint.is_none();
        match self.kind {
            SamplerKind::Ddpm
            | SamplerKind::Ddim
            | SamplerKind::Dpmpp2m
            | SamplerKind::Heun
            | SamplerKind::Dpmpp3m
            | SamplerKind::Dpmpp2mSde
            | SamplerKind::EulerAncestral => {
                if constrained {
                    candle_core::bail!("`{}` does not take a constraint (inpainting): use pc, em, ancestral, reverse-diffusion or annealed-langevin", self.kind);
                }
                self.sample_sigma_space(ctx, shape, rng)
            }
            SamplerKind::Ode => {
                if constrained {
                    candle_core::bail!("`ode` does not take a constraint (inpainting): use pc, em, ancestral, reverse-diffusion or annealed-langevin");
                }
                let method = OdeMethod::Rk45 { rtol: self.rtol, atol: self.atol };
                flow::sample_ode(ctx.score, ctx.sde, shape, method, &opts, rng, ctx.dtype, &ctx.device)
            }
            SamplerKind::Em | SamplerKind::ReverseDiffusion | SamplerKind::Ancestral | SamplerKind::Pc => {
                let (p, c) = self.pc_parts()?;
                sample_pc_constrained(
                    ctx.score,
                    ctx.sde,
                    p.as_ref(),
                    c.as_ref(),
                    ctx.constraint,
                    shape,
                    &opts,
                    rng,
                    ctx.dtype,
                    &ctx.device,
                    ctx.progress,
                )
            }
            SamplerKind::Langevin | SamplerKind::Mala => {
                if constrained {
                    candle_core::bail!(
                        "`{}` does not take a constraint (inpainting): use annealed-langevin or a reverse-time sampler",
                        self.kind
                    );
                }
                let x0 = self.start.sample(shape, rng, ctx.dtype, &ctx.device)?;
                let lopts = LangevinOptions {
                    steps: self.steps,
                    eps: self.step_size,
                    t: self.langevin_t,
                    record_every: self.record_every,
                };
                match (self.kind, ctx.energy) {
                    (SamplerKind::Mala, Some(e)) => Ok(mala(ctx.score, e, x0, &lopts, rng, ctx.progress)?.0),
                    (SamplerKind::Mala, None) => {
                        candle_core::bail!("sampler mala needs an energy model (model.kind = \"energy-mlp\")")
                    }
                    _ => langevin(ctx.score, x0, &lopts, rng, ctx.progress),
                }
            }
            SamplerKind::AnnealedLangevin => {
                let Some(ladder) = ctx.ladder else {
                    candle_core::bail!(
                        "sampler `annealed-langevin`: needs a run trained with objective.kind = \"ncsn\""
                    )
                };
                let aopts = AnnealedOptions {
                    steps_per_level: self.steps_per_level,
                    eps: self.step_size,
                    denoise: self.denoise,
                    record_every: self.record_every,
                };
                let x0 = self.start.sample(shape, rng, ctx.dtype, &ctx.device)?;
                annealed_langevin_constrained(ctx.score, ladder, x0, ctx.constraint, &aopts, rng, ctx.progress)
            }
        }
    }

    /// The predictor and corrector of a PC-family sampler (em, reverse-diffusion,
    /// ancestral, pc); an error for the others.
    pub fn pc_parts(&self) -> Result<(Box<dyn Predictor>, Box<dyn Corrector>)> {
        let predictor: Box<dyn Predictor> = match self.kind {
            SamplerKind::Em => Box::new(EulerMaruyama),
            SamplerKind::ReverseDiffusion | SamplerKind::Pc => Box::new(ReverseDiffusion),
            SamplerKind::Ancestral => Box::new(Ancestral),
            k => {
                candle_core::bail!("`{k}` is not a predictor–corrector sampler (em, reverse-diffusion, ancestral, pc)")
            }
        };
        let default = if self.kind == SamplerKind::Pc { CorrectorKind::Langevin } else { CorrectorKind::None };
        let (snr, n_steps) = (self.snr, self.corrector_steps);
        let corrector: Box<dyn Corrector> = match self.corrector.unwrap_or(default) {
            CorrectorKind::Langevin => Box::new(LangevinCorrector { snr, n_steps }),
            CorrectorKind::Ald => Box::new(AnnealedLangevin { snr, n_steps }),
            CorrectorKind::None => Box::new(NoneCorrector),
        };
        Ok((predictor, corrector))
    }

    /// The σ-space samplers: x_{σ_0} = σ_0·z (k-diffusion's start; for VP this
    /// is x_T/m(T) up to the data's own spread), or with `vp_start`
    /// √(1 + σ_0²)·z (diffusers' `init_noise_sigma`: the VP prior N(0, I) at
    /// σ_0 in σ-space), then the sampler down to σ = 0 through the shared loop
    /// [`sample_sigma_steps`] (which records trajectories). The grid is
    /// `grid` or the sampler's default ([`grid_sigmas`]); `limit` wraps the
    /// denoiser ([`LimitedDenoiser`]).
    fn sample_sigma_space(&self, ctx: &SampleContext, shape: Shape, rng: &mut Rng) -> Result<Sampled> {
        let den = ScoreDenoiser::new(ctx.score, ctx.sde, self.eps);
        let grid = self.grid.or(self.kind.default_grid()).unwrap_or(Grid::Karras);
        let sigmas = grid_sigmas(grid, &den, self.steps.max(1), self.rho)?;
        let scale = if self.vp_start { (1.0 + sigmas[0] * sigmas[0]).sqrt() } else { sigmas[0] };
        let x = rng.randn(shape, ctx.dtype, &ctx.device)?.affine(scale, 0.0)?;
        let s_noise = self.churn.s_noise;
        let mut stepper: Box<dyn SigmaStep> = match self.kind {
            SamplerKind::Ddpm => Box::new(DdimStep { eta: 1.0, s_noise: 1.0 }),
            SamplerKind::Ddim => Box::new(DdimStep { eta: self.eta, s_noise: 1.0 }),
            SamplerKind::EulerAncestral => Box::new(DdimStep { eta: 1.0, s_noise }),
            SamplerKind::Dpmpp2m => Box::new(Dpmpp2mStep::default()),
            SamplerKind::Dpmpp3m => Box::new(Dpmpp3mStep::default()),
            SamplerKind::Dpmpp2mSde => Box::new(Dpmpp2mSdeStep::new(1.0, s_noise)),
            SamplerKind::Heun => Box::new(HeunStep { churn: self.churn }),
            k => candle_core::bail!("`{k}` is not a σ-space sampler"),
        };
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
