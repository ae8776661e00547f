//! Samplers: the reverse SDE derived from any forward SDE and any score,
//! and the predictors that step it.

pub mod annealed_langevin;
pub mod langevin;
pub mod predictors;
pub mod reverse;

pub use annealed_langevin::{annealed_langevin, AnnealedOptions};
pub use langevin::{langevin, mala, LangevinOptions, Start};
pub use predictors::{EulerMaruyama, Predictor};
pub use reverse::ReverseSde;

use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{DType, Device, Result, Shape, Tensor};
use indicatif::ProgressBar;

/// Settings shared by the reverse-time samplers.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    /// Number of steps from T down to ε.
    pub steps: usize,
    /// Final time ε (default: the SDE's sampling ε).
    pub eps: Option<f64>,
    /// Apply the Tweedie denoising step x₀ = (x + s(ε)² s_θ(x, ε)) / m(ε) at the end.
    pub denoise: bool,
    /// Record the state every k steps (plus the first and last), for GIFs and figures.
    pub record_every: Option<usize>,
}

impl Default for ReverseOptions {
    fn default() -> Self {
        Self { steps: 1000, eps: None, denoise: true, record_every: None }
    }
}

/// Samples and what it took to get them.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub x: Tensor,
    /// (t, x_t) snapshots, from t = T down to ε, when recording was asked for.
    pub trajectory: Vec<(f64, Tensor)>,
    /// Number of score evaluations.
    pub nfe: usize,
}

/// Tweedie's formula E[x(0) | x(t)] = (x + s(t)² ∇ log p_t(x)) / m(t).
pub fn tweedie_denoise(x: &Tensor, t: f64, score: &dyn ScoreFn, sde: &dyn Sde) -> Result<Tensor> {
    let (m, s) = sde.marginal(t);
    ((x + score.score_at(x, t)?.affine(s * s, 0.0)?)?).affine(1.0 / m, 0.0)
}

/// Draws `shape` samples by integrating the reverse SDE from the prior at T to ε
/// on a uniform grid with `predictor`, for any SDE and any score.
#[allow(clippy::too_many_arguments)]
pub fn sample_reverse(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    predictor: &dyn Predictor,
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
        x = predictor.step(&reverse, &x, t, dt, rng)?.0.detach();
        if record(i + 1) {
            trajectory.push((t + dt, x.clone()));
        }
        progress.inc(1);
    }
    let mut nfe = n * predictor.nfe_per_step();
    if opts.denoise {
        x = tweedie_denoise(&x, eps, score, sde)?;
        nfe += 1;
    }
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}
