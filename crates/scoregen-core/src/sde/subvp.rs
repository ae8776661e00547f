//! Sub-variance-preserving SDE (Song et al. 2021, eq. 17).

use super::{Sde, VpSde};

/// dx = −½β(t)x dt + √(β(t)(1 − e^{−2∫₀ᵗβ})) dw.
/// m(t) = exp(−½∫₀ᵗβ) as for VP, s(t) = 1 − m(t)² (its variance is ≤ VP's), prior N(0, I).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubVpSde {
    vp: VpSde,
}

impl SubVpSde {
    pub fn new(beta_min: f64, beta_max: f64) -> Self {
        Self { vp: VpSde::new(beta_min, beta_max) }
    }
    pub fn beta_min(&self) -> f64 {
        self.vp.beta_min
    }
    pub fn beta_max(&self) -> f64 {
        self.vp.beta_max
    }
}

impl Default for SubVpSde {
    fn default() -> Self {
        Self::new(0.1, 20.0)
    }
}

impl Sde for SubVpSde {
    fn name(&self) -> &'static str {
        "subvp"
    }
    fn drift_coef(&self, t: f64) -> f64 {
        self.vp.drift_coef(t)
    }
    fn diffusion(&self, t: f64) -> f64 {
        // 1 − e^{−2∫β} = 1 − m(t)⁴
        let lm = self.vp.log_mean_coef(t);
        (self.vp.beta(t) * -(4.0 * lm).exp_m1()).sqrt()
    }
    fn marginal(&self, t: f64) -> (f64, f64) {
        let lm = self.vp.log_mean_coef(t);
        (lm.exp(), -(2.0 * lm).exp_m1())
    }
    /// m = e^{log m}, s = 1 − m² on t's device.
    fn marginal_of(&self, t: &candle_core::Tensor) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let lm = self.vp.log_mean_coef_of(t)?;
        let s = lm.affine(2.0, 0.0)?.exp()?.affine(-1.0, 1.0)?;
        Ok((lm.exp()?, s))
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
}
