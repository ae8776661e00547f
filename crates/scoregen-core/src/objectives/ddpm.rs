//! The DDPM variational bound and its identity with weighted denoising score
//! matching (Ho et al. 2020, eq. 5 and §3.2; Song et al. 2021, App. B;
//! Kingma et al. 2021, "Variational Diffusion Models").
//!
//! For the chain of [`DiscreteVp`] (code index i = paper step i + 1),
//! −log p_θ(x₀) ≤ L_T + Σ_{i≥1} L_{i−1} + L_0 with
//! L_{i−1} = E KL(q(x_{i−1} | x_i, x₀) ‖ p_θ(x_{i−1} | x_i)). The posterior is
//! N(μ̃_i, β̃_i I) with μ̃_i = √ᾱ_{i−1}β_i/(1−ᾱ_i)·x₀ + √α_i(1−ᾱ_{i−1})/(1−ᾱ_i)·x_i,
//! β̃_i = (1−ᾱ_{i−1})/(1−ᾱ_i)·β_i; the model is N(μ_θ, β̃_i I) with Ho et al.'s
//! μ_θ = (x_i − β_i/√(1−ᾱ_i)·ε_θ)/√α_i. Equal variances leave only the means:
//!
//! L_{i−1} = ‖μ̃_i − μ_θ‖²/(2β̃_i) = β_i²/(2β̃_i α_i (1−ᾱ_i))·E‖ε − ε_θ‖²,
//!
//! and with ε_θ = −√(1−ᾱ_i)·s_θ and ε = −√(1−ᾱ_i)·∇ log q(x_i | x₀) this is
//!
//! L_{i−1} = λ_i·E‖s_θ(x_i, t_i) − ∇ log q(x_i | x₀)‖²,  λ_i = β_i²/(2β̃_i α_i),
//!
//! denoising score matching with weights λ_i. For large N, β̃_i ≈ β_i ≈ β(t)/N
//! and α_i ≈ 1, so λ_i ≈ ½β(t)·Δt = ½g(t)²Δt: the bound is the
//! likelihood-weighted continuous DSM (λ(t) = g(t)²) of `objectives::continuous`.
//! Ho et al.'s "simple" loss drops the weights: E‖ε − ε_θ‖² with uniform i.

use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::DiscreteVp;
use candle_core::{DType, Result, Tensor};
use serde::Serialize;
use std::f64::consts::PI;

/// The bound term by term (mean over the batch, in nats, summed over dimensions),
/// and the weighted DSM terms the identity says are equal to the KL terms.
#[derive(Debug, Clone, Serialize)]
pub struct ElboTerms {
    /// L_T = KL(q(x_N | x₀) ‖ N(0, I)), closed form.
    pub prior: f64,
    /// L_0 = −log N(x₀; μ_θ(x_1), β_1 I), the Gaussian decoder.
    pub decoder: f64,
    /// L_{i−1} for code index i = 1, …, N−1 (KL between the two Gaussians).
    pub kl: Vec<f64>,
    /// λ_i·E‖s_θ − ∇ log q(x_i | x₀)‖² for the same i and the same draws.
    pub weighted_dsm: Vec<f64>,
    /// λ_i = β_i²/(2β̃_i α_i).
    pub weights: Vec<f64>,
}

impl ElboTerms {
    /// The whole bound L_T + Σ L_{i−1} + L_0, an upper bound on E[−log p_θ(x₀)].
    pub fn total(&self) -> f64 {
        self.prior + self.decoder + self.kl.iter().sum::<f64>()
    }
}

/// λ_i = β_i²/(2β̃_i α_i) for code index i ≥ 1: the DSM weights the bound implies.
pub fn elbo_weights(chain: &DiscreteVp) -> Vec<f64> {
    (1..chain.steps())
        .map(|i| {
            let (b, ab, ab_prev) = (chain.betas[i], chain.alphas_cumprod[i], chain.alphas_cumprod[i - 1]);
            let post_var = (1.0 - ab_prev) / (1.0 - ab) * b;
            b * b / (2.0 * post_var * (1.0 - b))
        })
        .collect()
}

fn mean(v: &Tensor) -> Result<f64> {
    crate::host::scalar::<f64>(&v.to_dtype(DType::F64)?.mean_all()?)
}

/// Computes every term of the bound for `score` (as the model, through
/// ε_θ = −√(1−ᾱ_i)·s_θ) on the batch `x0`, one draw x_i ~ q(x_i | x₀) per
/// example and step; the KL side and the weighted-DSM side use the same draws.
pub fn elbo_terms(score: &dyn ScoreFn, chain: &DiscreteVp, x0: &Tensor, rng: &mut Rng) -> Result<ElboTerms> {
    let n = chain.steps();
    let d = x0.flatten_from(1)?.dim(1)? as f64;
    let sq = |v: &Tensor| -> Result<Tensor> { v.flatten_from(1)?.sqr()?.sum(1) };
    let weights = elbo_weights(chain);
    let (mut kl, mut weighted_dsm) = (Vec::with_capacity(n - 1), Vec::with_capacity(n - 1));
    let mut decoder = 0.0;
    for i in 0..n {
        let (b, ab) = (chain.betas[i], chain.alphas_cumprod[i]);
        let eps = rng.randn(x0.shape(), x0.dtype(), x0.device())?;
        let xi = (x0.affine(ab.sqrt(), 0.0)? + eps.affine((1.0 - ab).sqrt(), 0.0)?)?;
        let s = score.score_at(&xi, chain.time_of(i))?;
        let eps_model = s.affine(-(1.0 - ab).sqrt(), 0.0)?;
        let mu_model = (&xi - eps_model.affine(b / (1.0 - ab).sqrt(), 0.0)?)?.affine(1.0 / (1.0 - b).sqrt(), 0.0)?;
        if i == 0 {
            decoder = mean(&sq(&(x0 - &mu_model)?)?)? / (2.0 * b) + 0.5 * d * (2.0 * PI * b).ln();
            continue;
        }
        let ab_prev = chain.alphas_cumprod[i - 1];
        let post_var = (1.0 - ab_prev) / (1.0 - ab) * b;
        let mu_post = (x0.affine(ab_prev.sqrt() * b / (1.0 - ab), 0.0)?
            + xi.affine((1.0 - b).sqrt() * (1.0 - ab_prev) / (1.0 - ab), 0.0)?)?;
        kl.push(mean(&sq(&(mu_post - mu_model)?)?)? / (2.0 * post_var));
        // ∇ log q(x_i | x₀) = −ε/√(1−ᾱ_i)
        let target = eps.affine(-1.0 / (1.0 - ab).sqrt(), 0.0)?;
        weighted_dsm.push(weights[i - 1] * mean(&sq(&(s - target)?)?)?);
    }
    let ab_n = chain.alphas_cumprod[n - 1];
    let prior = 0.5 * (mean(&sq(x0)?)? * ab_n + d * ((1.0 - ab_n) - 1.0 - (1.0 - ab_n).ln()));
    Ok(ElboTerms { prior, decoder, kl, weighted_dsm, weights })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::named_mixture;
    use crate::oracle::OracleScore;
    use crate::sde::{BetaSchedule, Sde, VpSde};
    use std::sync::Arc;

    /// With the exact oracle as the model, every KL term equals its weighted
    /// DSM term on the same draws, for both schedules. Both sides are exact
    /// (closed-form Gaussians, exact score), so the only error is f64
    /// round-off: we allow 1e-9 relative, per term and in total. A wrong
    /// weight (e.g. the continuous ½β_i, or the simple loss's 1) fails by far
    /// more: ½β_i differs from λ_i by the factor β_i/(β̃_i α_i), up to ≈ 6 at
    /// the first steps of the linear schedule.
    #[test]
    fn elbo_equals_weighted_dsm_term_by_term() {
        scoregen_init();
        for sched in [BetaSchedule::Linear, BetaSchedule::Cosine] {
            let chain = Arc::new(DiscreteVp::new(sched, 1000));
            let mix = named_mixture("gmm8").unwrap();
            let oracle = OracleScore::new(mix.clone(), chain.clone());
            let x0 = mix.sample(128, &mut Rng::new(4, 0)).to_tensor(DType::F64, &candle_core::Device::Cpu).unwrap();
            let terms = elbo_terms(&oracle, &chain, &x0, &mut Rng::new(5, 0)).unwrap();
            let mut worst: f64 = 0.0;
            for (i, (k, w)) in terms.kl.iter().zip(&terms.weighted_dsm).enumerate() {
                let rel = (k - w).abs() / k.abs().max(1e-300);
                worst = worst.max(rel);
                assert!(rel < 1e-9, "{sched:?} step {}: KL {k} vs weighted DSM {w}", i + 1);
            }
            let (a, b): (f64, f64) = (terms.kl.iter().sum(), terms.weighted_dsm.iter().sum());
            assert!((a - b).abs() < 1e-9 * a, "{sched:?}: Σ KL {a} vs Σ DSM {b}");
            // the weights are not the continuous ones: at the first step they differ a lot
            let naive = 0.5 * chain.betas[1];
            assert!((terms.weights[0] / naive - 1.0).abs() > 0.5, "{sched:?}: {} vs {naive}", terms.weights[0]);
            println!(
                "{sched:?}: bound {:.4} nats (prior {:.2e}, decoder {:.4}, Σ KL {a:.6}, Σ λ·DSM {b:.6}), worst relative gap {worst:.2e}",
                terms.total(),
                terms.prior,
                terms.decoder,
            );
        }
    }

    /// For large N, λ_i → ½β(t_i)·Δt = ½g(t)²Δt (the likelihood weighting):
    /// in the middle of the linear chain, where β_i ≫ 1/N corrections, they
    /// agree to within 2% (the ratio is 1 + O(β_i) + O(1/(N(1−ᾱ)))).
    #[test]
    fn elbo_weights_approach_the_likelihood_weighting() {
        let chain = DiscreteVp::ddpm();
        let vp = VpSde::default();
        let w = elbo_weights(&chain);
        for i in [300usize, 500, 700] {
            let cont = 0.5 * vp.diffusion(chain.time_of(i)).powi(2) / 1000.0;
            let r = w[i - 1] / cont;
            assert!((r - 1.0).abs() < 0.02, "i={i}: {} vs {cont} (ratio {r})", w[i - 1]);
        }
    }

    fn scoregen_init() {
        crate::init();
    }
}
