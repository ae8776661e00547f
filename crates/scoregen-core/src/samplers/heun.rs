//! EDM's stochastic Heun sampler (Karras et al. 2022, Alg. 2; k-diffusion
//! `sample_heun`, NVlabs/edm `edm_sampler`). At step i, with churn
//! γ_i = min(S_churn/N, √2 − 1) when S_min ≤ σ_i ≤ S_max (else 0):
//!
//! σ̂ = (1 + γ_i)·σ_i,  x̂ = x + √(σ̂² − σ_i²)·S_noise·z   (only when γ_i > 0),
//! d = (x̂ − D(x̂, σ̂))/σ̂,  x' = x̂ + (σ_{i+1} − σ̂)·d,
//! and, unless σ_{i+1} = 0 (the last step stays Euler),
//! x' = x̂ + (σ_{i+1} − σ̂)·(d + d')/2 with d' = (x' − D(x', σ_{i+1}))/σ_{i+1}.
//!
//! N = len(sigmas) − 1 steps cost 2N − 1 denoiser calls. With S_churn = 0 (the
//! default) it is the deterministic Heun solver of EDM's Alg. 1.

use super::denoiser::{sample_sigma_steps, to_d, Denoiser, SigmaStep};
use super::Sampled;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// EDM's stochasticity settings; the defaults (S_churn = 0, S_min = 0,
/// S_max = ∞, S_noise = 1) are k-diffusion's and EDM's, i.e. deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self { s_churn: 0.0, s_tmin: 0.0, s_tmax: f64::INFINITY, s_noise: 1.0 }
    }
}

impl Churn {
    /// γ_i = min(S_churn/N, √2 − 1) for S_min ≤ σ_i ≤ S_max, else 0.
    pub fn gamma(&self, sigma: f64, n_steps: usize) -> f64 {
        if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / n_steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        }
    }
}

/// EDM Heun over `sigmas` (largest to smallest, ending at 0), from x at σ_0.
/// Noise is drawn only on churned steps, so S_churn = 0 never touches `rng`.
pub fn sample_heun(
    den: &dyn Denoiser,
    x: Tensor,
    sigmas: &[f64],
    churn: &Churn,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_sigma_steps(den, &mut HeunStep { churn: *churn }, x, sigmas, rng, None, progress)
}

/// EDM's Alg. 2 step: churn, an Euler step, and Heun's correction unless σ' = 0.
pub struct HeunStep {
    pub churn: Churn,
}

impl SigmaStep for HeunStep {
    fn step(
        &mut self,
        den: &dyn Denoiser,
        x: &Tensor,
        sigmas: &[f64],
        i: usize,
        rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        let n = sigmas.len() - 1;
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let gamma = self.churn.gamma(s, n);
        let s_hat = s * (1.0 + gamma);
        let mut x = x.clone();
        if gamma > 0.0 {
            let z = rng.randn(x.shape(), x.dtype(), x.device())?;
            x = (&x + z.affine(self.churn.s_noise * (s_hat * s_hat - s * s).sqrt(), 0.0)?)?;
        }
        let d = to_d(&x, &den.denoise(&x, s_hat)?, s_hat)?;
        let dt = s_next - s_hat;
        let x_euler = (&x + d.affine(dt, 0.0)?)?;
        if s_next == 0.0 {
            return Ok((x_euler, 1));
        }
        let d2 = to_d(&x_euler, &den.denoise(&x_euler, s_next)?, s_next)?;
        Ok(((&x + (d + d2)?.affine(0.5 * dt, 0.0)?)?, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EDM's cap: γ never exceeds √2 − 1 (σ̂ ≤ √2·σ, at most doubling the
    /// variance), and is 0 outside [S_min, S_max].
    #[test]
    fn churn_is_capped_and_windowed() {
        let c = Churn { s_churn: 80.0, s_tmin: 0.05, s_tmax: 50.0, s_noise: 1.003 };
        assert!((c.gamma(1.0, 18) - (std::f64::consts::SQRT_2 - 1.0)).abs() < 1e-15);
        assert!((Churn { s_churn: 4.0, ..c }.gamma(1.0, 40) - 0.1).abs() < 1e-15);
        assert_eq!(c.gamma(0.01, 18), 0.0);
        assert_eq!(c.gamma(60.0, 18), 0.0);
        assert_eq!(Churn::default().gamma(1.0, 18), 0.0);
    }
}
