//! Variance-preserving SDE (DDPM in continuous time).

use super::Sde;
use candle_core::{Result, Tensor};

/// dx = −½β(t)x dt + √β(t) dw with β(t) = β_min + t(β_max − β_min).
/// m(t) = exp(−½∫₀ᵗβ), s(t)² = 1 − m(t)², prior N(0, I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpSde {
    pub beta_min: f64,
    pub beta_max: f64,
}

impl VpSde {
    pub fn new(beta_min: f64, beta_max: f64) -> Self {
        Self { beta_min, beta_max }
    }

    /// β(t) = β_min + t(β_max − β_min).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }

    /// log m(t) = −¼t²(β_max − β_min) − ½tβ_min.
    pub fn log_mean_coef(&self, t: f64) -> f64 {
        -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
    }

    /// log m(t) per row of t [N], as f64 on t's device.
    pub fn log_mean_coef_of(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.to_dtype(candle_core::DType::F64)?;
        let quad = t.sqr()?.affine(-0.25 * (self.beta_max - self.beta_min), 0.0)?;
        quad + t.affine(-0.5 * self.beta_min, 0.0)?
    }
}

impl Default for VpSde {
    fn default() -> Self {
        Self::new(0.1, 20.0)
    }
}

impl Sde for VpSde {
    fn name(&self) -> &'static str {
        "vp"
    }
    fn drift_coef(&self, t: f64) -> f64 {
        -0.5 * self.beta(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        self.beta(t).sqrt()
    }
    fn marginal(&self, t: f64) -> (f64, f64) {
        let lm = self.log_mean_coef(t);
        (lm.exp(), (-(2.0 * lm).exp_m1()).sqrt())
    }
    /// m = e^{log m}, s = √(1 − m²) on t's device.
    fn marginal_of(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let lm = self.log_mean_coef_of(t)?;
        let s = lm.affine(2.0, 0.0)?.exp()?.affine(-1.0, 1.0)?.relu()?.sqrt()?;
        Ok((lm.exp()?, s))
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
    /// DDPM ancestral step (Ho et al. 2020, σ_i² = β_i): the noise std is b = √(1 − a²).
    fn ancestral_std(&self, t: f64, dt: f64) -> f64 {
        self.transition(t, dt).1.sqrt()
    }
    /// DDPM step: β_i = β(t)·dt, f = (√(1−β_i) − 1)·x, G = √β_i.
    fn discretize(&self, x: &Tensor, t: f64, dt: f64) -> Result<(Tensor, f64)> {
        let beta_i = (self.beta(t) * dt).min(1.0);
        Ok((x.affine((1.0 - beta_i).sqrt() - 1.0, 0.0)?, beta_i.sqrt()))
    }
}
