//! Predictors: one step of a reverse-time process (score_sde's `Predictor.update_fn`).

use super::ReverseSde;
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// One numerical step of the reverse process from t to t + dt (dt < 0).
pub trait Predictor {
    /// Returns (x_{t+dt}, its noise-free mean).
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)>;

    /// Score evaluations per step.
    fn nfe_per_step(&self) -> usize {
        1
    }
}

/// Euler–Maruyama: x_mean = x + drift(x,t)·dt, x' = x_mean + g(t)·√|dt|·z.
#[derive(Debug, Clone, Copy, Default)]
pub struct EulerMaruyama;

impl Predictor for EulerMaruyama {
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let mean = (x + rev.drift(x, t)?.affine(dt, 0.0)?)?;
        let g = rev.diffusion(t);
        if g == 0.0 {
            return Ok((mean.clone(), mean));
        }
        let z = rng.randn(x.shape(), x.dtype(), x.device())?;
        Ok(((&mean + z.affine(g * dt.abs().sqrt(), 0.0)?)?, mean))
    }
}

/// x + σ·z, or x itself when σ = 0 (no draw, so the stream is not advanced).
fn add_noise(mean: Tensor, std: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    if std == 0.0 {
        return Ok((mean.clone(), mean));
    }
    let z = rng.randn(mean.shape(), mean.dtype(), mean.device())?;
    Ok(((&mean + z.affine(std, 0.0)?)?, mean))
}

/// Reverse diffusion (Song et al. 2021, eq. 45–47): reverse the forward
/// discretization x_t = x_{t−Δ} + f + G·z step by step,
/// x_mean = x − [f − G²·s(x,t)], x' = x_mean + G·z. With the VE/VP
/// discretizations this is the SMLD/DDPM-like sampler of the paper's Table 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReverseDiffusion;

impl Predictor for ReverseDiffusion {
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (rev_f, g) = rev.discretize(x, t, dt.abs())?;
        add_noise((x - rev_f)?, g, rng)
    }
}

/// Ancestral sampling (Song et al. 2021, App. F; Ho et al. 2020, Alg. 2) for
/// any SDE through its exact Gaussian transition x_t = a·x_{t−Δ} + b·z
/// ([`crate::sde::Sde::transition`]): x_mean = (x + b²·s(x,t))/a,
/// x' = x_mean + σ·z with σ = [`crate::sde::Sde::ancestral_std`].
/// VE: a = 1, b² = σ_i² − σ_{i−1}², σ = √(σ_{i−1}² b²/σ_i²) (SMLD);
/// VP: a = √(1 − β_i), b² = β_i, σ = √β_i (DDPM).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ancestral;

impl Predictor for Ancestral {
    fn step(&self, rev: &ReverseSde, x: &Tensor, t: f64, dt: f64, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let (a, b2) = rev.sde.transition(t, dt.abs());
        let s = rev.score.score_at(x, t)?;
        let mean = (x + s.affine(b2, 0.0)?)?.affine(1.0 / a, 0.0)?;
        let std = if rev.probability_flow { 0.0 } else { rev.sde.ancestral_std(t, dt.abs()) };
        add_noise(mean, std, rng)
    }
}

/// No predictor: x' = x (corrector-only sampling, score_sde's `NonePredictor`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NonePredictor;

impl Predictor for NonePredictor {
    fn step(&self, _rev: &ReverseSde, x: &Tensor, _t: f64, _dt: f64, _rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        Ok((x.clone(), x.clone()))
    }
    fn nfe_per_step(&self) -> usize {
        0
    }
}
