//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
//! Sampling of Diffusion Probabilistic Models", Alg. 2), in σ-space as in
//! k-diffusion's `sample_dpmpp_2m`. With λ = −log σ and h = λ_{i+1} − λ_i,
//! the data-prediction exponential integrator is
//!
//! x_{i+1} = (σ_{i+1}/σ_i)·x_i − (e^{−h} − 1)·D̂_i,
//!
//! with D̂_i = D_i at the first step (first order) and afterwards the multistep
//! D̂_i = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1}, r = h_last/h, h_last = λ_i − λ_{i−1}.
//! The two usual final-step options are the two ends of the schedule: ending at
//! σ = 0 (diffusers' `final_sigmas_type = "zero"`, k-diffusion's default),
//! where h = ∞ and the step is always first order, x = D(x, σ_{n−1}); or
//! ending at σ_min > 0 (`final_sigmas_type = "sigma_min"`: pass a schedule
//! without the final 0), where the last step is a 2M step like the others.

use super::denoiser::{sample_sigma_steps, Denoiser, SigmaStep};
use super::Sampled;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// DPM-Solver++(2M) over `sigmas` (largest to smallest, ending at 0, or at σ_min > 0).
/// Deterministic; one denoiser call per step, NFE = len(sigmas) − 1.
pub fn sample_dpmpp_2m(den: &dyn Denoiser, x: Tensor, sigmas: &[f64], progress: &ProgressBar) -> Result<Sampled> {
    // deterministic: the stream is never drawn from
    let mut unused = Rng::new(0, 0);
    sample_sigma_steps(den, &mut Dpmpp2mStep::default(), x, sigmas, &mut unused, None, progress)
}

/// The DPM-Solver++(2M) step; keeps the previous step's x̂₀.
#[derive(Default)]
pub struct Dpmpp2mStep {
    old: Option<Tensor>,
}

impl SigmaStep for Dpmpp2mStep {
    fn step(
        &mut self,
        den: &dyn Denoiser,
        x: &Tensor,
        sigmas: &[f64],
        i: usize,
        _rng: &mut Rng,
    ) -> Result<(Tensor, usize)> {
        let lambda = |s: f64| -s.ln();
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = den.denoise(x, s)?;
        let d_hat = match &self.old {
            Some(prev) if s_next > 0.0 => {
                let h = lambda(s_next) - lambda(s);
                let r = (lambda(s) - lambda(sigmas[i - 1])) / h;
                (denoised.affine(1.0 + 1.0 / (2.0 * r), 0.0)? - prev.affine(1.0 / (2.0 * r), 0.0)?)?
            }
            _ => denoised.clone(),
        };
        let x = if s_next == 0.0 {
            d_hat
        } else {
            let h = lambda(s_next) - lambda(s);
            (x.affine(s_next / s, 0.0)? + d_hat.affine(-(-h).exp_m1(), 0.0)?)?
        };
        self.old = Some(denoised);
        Ok((x, 1))
    }
}
