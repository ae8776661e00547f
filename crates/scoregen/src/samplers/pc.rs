//! The predictor–corrector sampler (Song et al. 2021, Alg. 1): at each time of
//! a uniform grid from T down to ε, a corrector (MCMC at fixed t) then a
//! predictor (one step of the reverse SDE). Any predictor with any corrector.

use super::{
    flow, tweedie_denoise, Ancestral, AnnealedLangevin, Corrector, EulerMaruyama, LangevinCorrector, NoneCorrector,
    OdeMethod, Predictor, ReverseDiffusion, ReverseOptions, ReverseSde, Sampled,
};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape};
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
    let eps = opts.eps.unwrap_or_else(|| sde.sampling_eps());
    let n = opts.steps.max(1);
    let dt = -(sde.t_max() - eps) / n as f64;
    let reverse = ReverseSde::new(sde, score, false);
    let mut x = sde.prior_sample(shape.into(), rng, dtype, &Device::Cpu)?;
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
        x = predictor.step(&reverse, &x, t, dt, rng)?.0.detach();
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
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}

/// Which sampler `scoregen sample` runs (`sampling.sampler` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Which corrector runs before each predictor step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub const NAMES: &'static str = "em, reverse-diffusion, ancestral, pc, ode, langevin, mala, annealed-langevin";
    pub fn parse(s: &str) -> Option<Self> {
        parse_kebab(s)
    }
    /// True for the samplers that integrate the reverse SDE / ODE from T to ε.
    pub fn is_reverse_time(self) -> bool {
        !matches!(self, Self::Langevin | Self::Mala | Self::AnnealedLangevin)
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
        let opts = ReverseOptions { steps: self.steps, eps, denoise, record_every: None };
        let predictor: &dyn Predictor = match self.kind {
            SamplerKind::Em => &EulerMaruyama,
            SamplerKind::ReverseDiffusion | SamplerKind::Pc => &ReverseDiffusion,
            SamplerKind::Ancestral => &Ancestral,
            SamplerKind::Langevin | SamplerKind::Mala | SamplerKind::AnnealedLangevin => {
                candle_core::bail!("`{}` is not a reverse-time sampler (see run::draw)", self.kind)
            }
            SamplerKind::Ode => {
                let method = OdeMethod::Rk45 { rtol: self.rtol, atol: self.atol };
                return flow::sample_ode(score, sde, shape, method, &opts, rng, dtype);
            }
        };
        let default = if self.kind == SamplerKind::Pc { CorrectorKind::Langevin } else { CorrectorKind::None };
        let (snr, n_steps) = (self.snr, self.corrector_steps);
        let langevin = LangevinCorrector { snr, n_steps };
        let ald = AnnealedLangevin { snr, n_steps };
        let corrector: &dyn Corrector = match self.corrector.unwrap_or(default) {
            CorrectorKind::Langevin => &langevin,
            CorrectorKind::Ald => &ald,
            CorrectorKind::None => &NoneCorrector,
        };
        sample_pc(score, sde, predictor, corrector, shape, &opts, rng, dtype, progress)
    }
}
