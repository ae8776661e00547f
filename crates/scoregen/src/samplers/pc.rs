//! The predictor–corrector sampler (Song et al. 2021, Alg. 1): at each time of
//! a uniform grid from T down to ε, a corrector (MCMC at fixed t) then a
//! predictor (one step of the reverse SDE). Any predictor with any corrector.

use super::{
    flow, tweedie_denoise, Ancestral, AnnealedLangevin, Constraint, Corrector, EulerMaruyama, LangevinCorrector,
    NoneCorrector, OdeMethod, Predictor, ReverseDiffusion, ReverseOptions, ReverseSde, Sampled, Unconstrained,
};
use super::{
    karras_sigmas, sample_ddim, sample_ddpm, sample_dpmpp_2m, sample_heun, time_uniform_sigmas, Churn, Denoiser,
    ScoreDenoiser,
};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

/// Draws `shape` samples: x_T from the prior, then for i = 0, …, N−1 at
/// t_i = T − i·(T−ε)/N: x ← corrector(x, t_i), x ← predictor(x, t_i → t_{i+1});
/// finally, when `opts.denoise`, the noise-removal (Tweedie) step
/// x₀ = (x + s(ε)²·s_θ(x, ε))/m(ε). NFE = N·(predictor + corrector) + denoise.
#[allow(clippy::too_many_arguments)]
pub fn sample_pc(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
    corrector: &dyn Corrector,
    shape: impl Into<Shape>,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_pc_constrained(score, sde, predictor, corrector, &Unconstrained, shape, opts, rng, dtype, progress)
}

/// [`sample_pc`] with a [`Constraint`] applied to the prior draw and after every
/// corrector and predictor step, at the marginal kernel of the time x has
/// reached, and to the final sample with (m, s) = (1, 0) (score_sde's
/// `get_pc_inpainter` with the known part re-noised to the right time).
#[allow(clippy::too_many_arguments)]
pub fn sample_pc_constrained(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
    corrector: &dyn Corrector,
    constraint: &dyn Constraint,
    shape: impl Into<Shape>,
    opts: &ReverseOptions,
    rng: &mut Rng,
    dtype: DType,
    progress: &ProgressBar,
) -> Result<Sampled> {
    let eps = opts.eps.unwrap_or_else(|| sde.sampling_eps());
    let n = opts.steps.max(1);
    let dt = -(sde.t_max() - eps) / n as f64;
    let reverse = ReverseSde::new(sde, score, false);
    let hold = |x: Tensor, t: f64, rng: &mut Rng| {
        let (m, s) = sde.marginal(t);
        constraint.apply(x, m, s, rng)
    };
    let mut x = sde.prior_sample(shape.into(), rng, dtype, &Device::Cpu)?;
    x = hold(x, sde.t_max(), rng)?;
    let mut trajectory = Vec::new();
    let record = |i: usize| opts.record_every.is_some_and(|k| i.is_multiple_of(k.max(1)) || i == n);
    if record(0) {
        trajectory.push((sde.t_max(), x.clone()));
    }
    progress.set_length(n as u64);
    for i in 0..n {
        let t = sde.t_max() + i as f64 * dt;
        // detached: a network's parameters are variables, and without this the
        // graph of every past step would stay alive
        x = corrector.step(&reverse, &x, t, dt, rng)?.0.detach();
        x = hold(x, t, rng)?;
        x = predictor.step(&reverse, &x, t, dt, rng)?.0.detach();
        x = hold(x, t + dt, rng)?;
        if record(i + 1) {
            trajectory.push((t + dt, x.clone()));
        }
        progress.inc(1);
    }
    let mut nfe = n * (predictor.nfe_per_step() + corrector.nfe_per_step());
    if opts.denoise {
        x = tweedie_denoise(&x, eps, score, sde)?;
        nfe += 1;
    }
    x = constraint.apply(x, 1.0, 0.0, rng)?;
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}

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
    /// DDPM ancestral sampling (DDIM with η = 1) on a uniform time grid.
    Ddpm,
    /// DDIM with stochasticity `eta` on a uniform time grid.
    Ddim,
    /// DPM-Solver++(2M) on the Karras σ schedule.
    #[serde(rename = "dpmpp-2m")]
    #[cfg_attr(feature = "clap", value(name = "dpmpp-2m"))]
    Dpmpp2m,
    /// EDM's Heun sampler on the Karras σ schedule, with optional churn.
    Heun,
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
        "em, reverse-diffusion, ancestral, pc, ode, langevin, mala, annealed-langevin, ddpm, ddim, dpmpp-2m, heun";
    pub fn parse(s: &str) -> Option<Self> {
        parse_kebab(s)
    }
    /// True for the samplers that integrate the reverse SDE / ODE from T to ε.
    pub fn is_reverse_time(self) -> bool {
        !matches!(self, Self::Langevin | Self::Mala | Self::AnnealedLangevin)
    }
    /// True for the σ-space samplers behind the [`Denoiser`](super::Denoiser) interface.
    pub fn is_denoiser(self) -> bool {
        matches!(self, Self::Ddpm | Self::Ddim | Self::Dpmpp2m | Self::Heun)
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
    /// ρ of the Karras σ schedule (DPM-Solver++ and Heun).
    pub rho: f64,
    /// Keep every k-th state of the PC and ODE samplers (for GIFs of the reverse process).
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
            record_every: None,
        }
    }
}

impl SamplerSpec {
    /// Runs the sampler: PC with the chosen predictor and corrector, or the
    /// probability-flow ODE (RK45) from T to ε.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        score: &dyn ScoreFn,
        sde: &dyn Sde,
        shape: impl Into<Shape>,
        eps: Option<f64>,
        denoise: bool,
        rng: &mut Rng,
        dtype: DType,
        progress: &ProgressBar,
    ) -> Result<Sampled> {
        let opts = ReverseOptions { steps: self.steps, eps, denoise, record_every: self.record_every };
        if self.kind.is_denoiser() {
            return self.sample_sigma_space(score, sde, shape, eps, rng, dtype, progress);
        }
        if self.kind == SamplerKind::Ode {
            let method = OdeMethod::Rk45 { rtol: self.rtol, atol: self.atol };
            return flow::sample_ode(score, sde, shape, method, &opts, rng, dtype);
        }
        self.sample_constrained(score, sde, &Unconstrained, shape, eps, denoise, rng, dtype, progress)
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

    /// A PC-family sampler with a [`Constraint`] (inpainting), see [`sample_pc_constrained`].
    #[allow(clippy::too_many_arguments)]
    pub fn sample_constrained(
        &self,
        score: &dyn ScoreFn,
        sde: &dyn Sde,
        constraint: &dyn Constraint,
        shape: impl Into<Shape>,
        eps: Option<f64>,
        denoise: bool,
        rng: &mut Rng,
        dtype: DType,
        progress: &ProgressBar,
    ) -> Result<Sampled> {
        let opts = ReverseOptions { steps: self.steps, eps, denoise, record_every: self.record_every };
        let (p, c) = self.pc_parts()?;
        sample_pc_constrained(score, sde, p.as_ref(), c.as_ref(), constraint, shape, &opts, rng, dtype, progress)
    }

    /// The σ-space samplers: x_{σ_0} = σ_0·z (k-diffusion's start; for VP this
    /// is x_T/m(T) up to the data's own spread), then the sampler down to σ = 0.
    /// DDPM and DDIM step on `steps` times uniform in t from T to ε; DPM-Solver++
    /// and Heun on the Karras schedule over [σ(ε), σ(T)] with ρ = `rho`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_sigma_space(
        &self,
        score: &dyn ScoreFn,
        sde: &dyn Sde,
        shape: impl Into<Shape>,
        eps: Option<f64>,
        rng: &mut Rng,
        dtype: DType,
        progress: &ProgressBar,
    ) -> Result<Sampled> {
        let den = ScoreDenoiser::new(score, sde, eps);
        let (sigma_min, sigma_max) = den.sigma_range();
        let sigmas = match self.kind {
            SamplerKind::Ddpm | SamplerKind::Ddim => time_uniform_sigmas(&den, self.steps.max(1)),
            _ => karras_sigmas(self.steps.max(1), sigma_min, sigma_max, self.rho),
        };
        let x = rng.randn(shape.into(), dtype, &Device::Cpu)?.affine(sigmas[0], 0.0)?;
        match self.kind {
            SamplerKind::Ddpm => sample_ddpm(&den, x, &sigmas, rng, progress),
            SamplerKind::Ddim => sample_ddim(&den, x, &sigmas, self.eta, rng, progress),
            SamplerKind::Dpmpp2m => sample_dpmpp_2m(&den, x, &sigmas, progress),
            SamplerKind::Heun => sample_heun(&den, x, &sigmas, &self.churn, rng, progress),
            k => candle_core::bail!("`{k}` is not a σ-space sampler"),
        }
    }
}
