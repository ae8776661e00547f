//! DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with the posterior
//! variance σ_t² = β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t:
//!
//! x_{t−1} = (x_t − β_t/√(1 − ᾱ_t)·ε_θ(x_t, t))/√α_t + √β̃_t·z,
//!
//! which is DDIM with η = 1 (Song, Meng & Ermon 2021, §4.1), so it is run as
//! [`sample_ddim`] with η = 1 in σ-space; the test below checks the two forms
//! agree step for step. On a coarser grid than the training chain it is the
//! "respaced" DDPM of Nichol & Dhariwal (2021).

use super::ddim::sample_ddim;
use super::denoiser::Denoiser;
use super::Sampled;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// DDPM ancestral sampling over `sigmas` (largest to smallest, ending at 0),
/// from x at σ_0; the last step (to σ = 0) adds no noise. NFE = len(sigmas) − 1.
pub fn sample_ddpm(
    den: &dyn Denoiser,
    x: Tensor,
    sigmas: &[f64],
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_ddim(den, x, sigmas, 1.0, rng, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::named_mixture;
    use crate::oracle::OracleScore;
    use crate::points::Points;
    use crate::samplers::denoiser::ScoreDenoiser;
    use crate::score::ScoreFn;
    use crate::sde::DiscreteVp;
    use candle_core::{DType, Device};
    use std::sync::Arc;

    /// One step of Ho et al.'s Alg. 2, written with β_t, ᾱ_t and ε = −√(1−ᾱ_t)·s,
    /// equals one σ-space step x_σ → x_σ' (times √ᾱ_{t−1}) with the same z,
    /// to 1e-9 (f64 round-off through the t ↔ σ bisection).
    #[test]
    fn sigma_space_step_equals_ho_et_al_algorithm_2() {
        let sde = Arc::new(DiscreteVp::ddpm());
        let mix = named_mixture("gmm8").unwrap();
        let oracle = OracleScore::new(mix, sde.clone());
        let den = ScoreDenoiser::new(&oracle, sde.as_ref(), None);
        for i in [1usize, 50, 400, 999] {
            let (ab, ab_prev, beta) = (sde.alphas_cumprod[i], sde.alphas_cumprod[i - 1], sde.betas[i]);
            let xt = Rng::new(i as u64, 0).randn((64, 2), DType::F64, &Device::Cpu).unwrap().affine(3.0, 0.0).unwrap();
            let z = Rng::new(99, 0).randn((64, 2), DType::F64, &Device::Cpu).unwrap();
            let eps = oracle.score_at(&xt, sde.time_of(i)).unwrap().affine(-(1.0 - ab).sqrt(), 0.0).unwrap();
            let mean = (&xt - eps.affine(beta / (1.0 - ab).sqrt(), 0.0).unwrap())
                .unwrap()
                .affine(1.0 / (1.0 - beta).sqrt(), 0.0)
                .unwrap();
            let var = (1.0 - ab_prev) / (1.0 - ab) * beta;
            let ho = Points::from_tensor(&(mean + z.affine(var.sqrt(), 0.0).unwrap()).unwrap()).unwrap();
            let xs = xt.affine(1.0 / ab.sqrt(), 0.0).unwrap();
            let sig = [sde.sigma(i), sde.sigma(i - 1)];
            let out = sample_ddpm(&den, xs, &sig, &mut Rng::new(99, 0), &ProgressBar::hidden()).unwrap();
            let ours = Points::from_tensor(&out.x.affine(ab_prev.sqrt(), 0.0).unwrap()).unwrap();
            for (a, b) in ho.data.iter().zip(&ours.data) {
                assert!((a - b).abs() < 1e-9 * (1.0 + a.abs()), "i={i}: {a} vs {b}");
            }
        }
    }
}
