//! Correctors: score-based MCMC at a fixed time t (score_sde's `Corrector.update_fn`),
//! run before each predictor step of the PC sampler (Song et al. 2021, Alg. 2–5).

use super::ReverseSde;
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// A few MCMC steps that leave p_t (approximately) invariant.
pub trait Corrector {
    /// Corrects x at time t (dt < 0 is the predictor's step, used for the
    /// discrete α_t). Returns (x', its noise-free mean).
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)>;

    /// Score evaluations per call.
    fn nfe_per_step(&self) -> usize;
}

/// α_t of the paper's Alg. 4–5: the squared per-step signal scale a² of the
/// forward transition (1 − β_i for VP, 1 for VE).
fn alpha(rev: &ReverseSde, t: f64, dt: f64) -> f64 {
    rev.sde.transition(t, dt.abs()).0.powi(2)
}

/// One Langevin step x' = x + ε s + √(2ε) z, with ε a rank-0 f64 tensor on
/// x's device (so a step size computed there is never read back).
fn langevin_step(x: &Tensor, s: &Tensor, z: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
    let step = eps.to_dtype(x.dtype())?;
    let noise = eps.affine(2.0, 0.0)?.sqrt()?.to_dtype(x.dtype())?;
    let mean = (x + s.broadcast_mul(&step)?)?;
    Ok(((&mean + z.broadcast_mul(&noise)?)?, mean))
}

/// Mean over the batch of the per-example Euclidean norms, as a rank-0 f64 tensor.
fn mean_norm(v: &Tensor) -> Result<Tensor> {
    v.flatten_from(1)?.sqr()?.sum(1)?.sqrt()?.mean_all()?.to_dtype(candle_core::DType::F64)
}

/// Langevin corrector with the signal-to-noise step rule (Song et al. 2021,
/// Alg. 4): ε = 2α(snr·‖z‖/‖s‖)², norms averaged over the batch as in score_sde,
/// then x ← x + ε s(x,t) + √(2ε) z, `n_steps` times.
/// The signal-to-noise ratio r of the Langevin correctors unless set: 0.16,
/// score_sde's value for its CIFAR-10 VE models (Song et al. 2021, App. G).
pub const DEFAULT_SNR: f64 = 0.16;

#[derive(Debug, Clone, Copy)]
pub struct LangevinCorrector {
    pub snr: f64,
    pub n_steps: usize,
}

impl Default for LangevinCorrector {
    fn default() -> Self {
        Self { snr: DEFAULT_SNR, n_steps: 1 }
    }
}

impl Corrector for LangevinCorrector {
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let alpha = alpha(rev, t, dt);
        let (mut x, mut mean) = (x.clone(), x.clone());
        for _ in 0..self.n_steps {
            let s = rev.score.score_at(&x, t)?;
            let z = rng.randn(x.shape(), x.dtype(), x.device())?;
            // ε = 2α(snr·‖z‖/‖s‖)², formed on the device
            let ratio = (mean_norm(&z)?.affine(self.snr, 0.0)? / mean_norm(&s)?.maximum(1e-30)?)?;
            (x, mean) = langevin_step(&x, &s, &z, &ratio.sqr()?.affine(2.0 * alpha, 0.0)?)?;
        }
        Ok((x, mean))
    }
    fn nfe_per_step(&self) -> usize {
        self.n_steps
    }
}

/// Annealed Langevin dynamics as a corrector (Song & Ermon 2019 in the
/// SDE form of score_sde's `AnnealedLangevinDynamics`): ε = 2α(snr·s(t))², with
/// s(t) the marginal std, then x ← x + ε s(x,t) + √(2ε) z, `n_steps` times.
#[derive(Debug, Clone, Copy)]
pub struct AnnealedLangevin {
    pub snr: f64,
    pub n_steps: usize,
}

impl Default for AnnealedLangevin {
    fn default() -> Self {
        Self { snr: DEFAULT_SNR, n_steps: 1 }
    }
}

impl Corrector for AnnealedLangevin {
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let std = rev.sde.marginal(t).1;
        let eps = Tensor::new(2.0 * alpha(rev, t, dt) * (self.snr * std).powi(2), x.device())?;
        let (mut x, mut mean) = (x.clone(), x.clone());
        for _ in 0..self.n_steps {
            let s = rev.score.score_at(&x, t)?;
            let z = rng.randn(x.shape(), x.dtype(), x.device())?;
            (x, mean) = langevin_step(&x, &s, &z, &eps)?;
        }
        Ok((x, mean))
    }
    fn nfe_per_step(&self) -> usize {
        self.n_steps
    }
}

/// No correction: x' = x.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoneCorrector;

impl Corrector for NoneCorrector {
    fn step(&self, _rev: &ReverseSde, x: &Tensor, _t: f64, _dt: f64, _rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        Ok((x.clone(), x.clone()))
    }
    fn nfe_per_step(&self) -> usize {
        0
    }
}
