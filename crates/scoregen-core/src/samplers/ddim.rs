//! DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12)
//! in σ-space. With ᾱ = 1/(1 + σ²), x_σ = x_t/√ᾱ, the DDIM step from σ to σ'
//!
//! x_{t'} = √ᾱ'·x̂₀ + √(1 − ᾱ' − c²)·ε̂ + c·z,  c = η·√((1−ᾱ')/(1−ᾱ))·√(1 − ᾱ/ᾱ'),
//!
//! divided by √ᾱ' becomes x' = x̂₀ + σ_down·ε̂ + σ_up·z with
//! σ_up = min(σ', η·σ'·√(σ² − σ'²)/σ), σ_down = √(σ'² − σ_up²), x̂₀ = D(x, σ),
//! ε̂ = (x − x̂₀)/σ — k-diffusion's `get_ancestral_step`. η = 0 is the
//! deterministic DDIM (Euler on the probability-flow ODE in σ), η = 1 is DDPM.
//!
//! Written as x' = x + (σ_down − σ)·d + S_noise·σ_up·z with d = (x − x̂₀)/σ,
//! this is also k-diffusion's `sample_euler_ancestral` (and diffusers'
//! `EulerAncestralDiscreteScheduler`): the `euler-ancestral` sampler is this
//! step with η = 1 and S_noise (`sampling.s_noise`), on the Karras grid by default.

use super::denoiser::{sample_sigma_steps, to_d, Denoiser, SigmaStep};
use super::Sampled;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// (σ_down, σ_up) of an ancestral step from σ to σ' with stochasticity η.
pub fn ancestral_step(sigma: f64, sigma_next: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 || sigma_next == 0.0 {
        return (sigma_next, 0.0);
    }
    let up = (eta * (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt())
        .min(sigma_next);
    ((sigma_next * sigma_next - up * up).max(0.0).sqrt(), up)
}

/// DDIM with η ∈ [0, 1] over `sigmas` (largest to smallest, ending at 0),
/// starting from x at σ_0. One denoiser call per step: NFE = len(sigmas) − 1.
pub fn sample_ddim(
    den: &dyn Denoiser,
    x: Tensor,
    sigmas: &[f64],
    eta: f64,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_sigma_steps(den, &mut DdimStep { eta, s_noise: 1.0, keep_model_eps: false }, x, sigmas, rng, None, progress)
}

/// The DDIM step with stochasticity η, its noise scaled by S_noise (1 for
/// DDIM and DDPM; Euler-ancestral's `s_noise`), see the module doc.
pub struct DdimStep {
    pub eta: f64,
    pub s_noise: f64,
    /// Under an x̂₀ limit, keep the model's ε̂ = (x − D_raw)/σ in the
    /// direction term: x' = limit(D) + σ_down·ε̂ + σ_up·z (diffusers'
    /// `DDIMScheduler` default, `use_clipped_model_output=False`). Off: ε̂ is
    /// recomputed from the limited x̂₀ (`use_clipped_model_output=True`).
    pub keep_model_eps: bool,
}

impl SigmaStep for DdimStep {
    fn step(
        &mut self,
        den: &dyn Denoiser,
        x: &Tensor,
        sigmas: &[f64],
        i: usize,
        rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let (down, up) = ancestral_step(s, s_next, self.eta);
        let mut x = if self.keep_model_eps {
            // the limited x̂₀ + σ_down·ε̂ of the model's own x̂₀
            let (limited, raw) = den.denoise_and_raw(x, s)?;
            (limited + to_d(x, &raw, s)?.affine(down, 0.0)?)?
        } else {
            // x̂₀ + σ_down·ε̂, written as x + (σ_down − σ)·d so that σ_down = σ is the identity
            let denoised = den.denoise(x, s)?;
            (x + to_d(x, &denoised, s)?.affine(down - s, 0.0)?)?
        };
        if up > 0.0 {
            x = (&x + rng.randn(x.shape(), x.dtype(), x.device())?.affine(self.s_noise * up, 0.0)?)?;
        }
        Ok((x, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// σ_up² + σ_down² = σ'² always; η = 0 adds no noise; η = 1 gives the DDPM
    /// posterior std β̃ (Ho et al. eq. 7) in σ-space: σ_up² = σ'²(σ² − σ'²)/σ².
    #[test]
    fn ancestral_split_preserves_the_noise_level() {
        for &(s, sn) in &[(80.0, 40.0), (1.0, 0.5), (0.1, 0.09)] {
            for eta in [0.0, 0.3, 1.0] {
                let (d, u) = ancestral_step(s, sn, eta);
                assert!((d * d + u * u - sn * sn).abs() < 1e-12 * sn * sn);
                if eta == 0.0 {
                    assert_eq!(u, 0.0);
                }
            }
            let (_, u) = ancestral_step(s, sn, 1.0);
            let want = sn * sn * (s * s - sn * sn) / (s * s);
            assert!((u * u - want).abs() < 1e-12 * want);
        }
    }
}
