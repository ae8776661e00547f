//! Variance-exploding SDE (SMLD/NCSN in continuous time).

use super::Sde;
use candle_core::{Result, Tensor};

/// dx = √(d[σ²(t)]/dt) dw with σ(t) = σ_min (σ_max/σ_min)^t, so
/// g(t) = σ(t)·√(2 ln(σ_max/σ_min)), m(t) = 1, s(t) = σ(t), prior N(0, σ_max² I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VeSde {
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl VeSde {
    pub fn new(sigma_min: f64, sigma_max: f64) -> Self {
        Self { sigma_min, sigma_max }
    }

    /// σ(t) = σ_min (σ_max/σ_min)^t.
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }
}

impl Default for VeSde {
    fn default() -> Self {
        Self::new(0.01, 50.0)
    }
}

impl Sde for VeSde {
    fn name(&self) -> &'static str {
        "ve"
    }
    fn drift_coef(&self, _t: f64) -> f64 {
        0.0
    }
    fn diffusion(&self, t: f64) -> f64 {
        self.sigma(t) * (2.0 * (self.sigma_max / self.sigma_min).ln()).sqrt()
    }
    fn marginal(&self, t: f64) -> (f64, f64) {
        (1.0, self.sigma(t))
    }
    /// σ(t) = σ_min·exp(t·ln(σ_max/σ_min)) on t's device.
    fn marginal_of(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = t.to_dtype(candle_core::DType::F64)?;
        let s = t.affine((self.sigma_max / self.sigma_min).ln(), 0.0)?.exp()?.affine(self.sigma_min, 0.0)?;
        Ok((s.ones_like()?, s))
    }
    fn prior_std(&self) -> f64 {
        self.sigma_max
    }
    fn sampling_eps(&self) -> f64 {
        1e-5
    }
    /// SMLD step: f = 0, G = √(σ(t)² − σ(t−dt)²).
    fn discretize(&self, x: &Tensor, t: f64, dt: f64) -> Result<(Tensor, f64)> {
        let prev = if t - dt > 0.0 { self.sigma(t - dt) } else { 0.0 };
        Ok((x.zeros_like()?, (self.sigma(t).powi(2) - prev * prev).max(0.0).sqrt()))
    }
}
