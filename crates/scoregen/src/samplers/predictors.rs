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
