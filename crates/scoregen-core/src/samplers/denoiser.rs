//! The denoiser interface of the fast samplers (Karras et al. 2022, "Elucidating
//! the Design Space of Diffusion-Based Generative Models", EDM):
//!
//! D(x, σ) ≈ E[x₀ | x = x₀ + σ·n] = x + σ²·∇ₓ log p_σ(x),
//!
//! in the VE parameterization x_σ = x₀ + σ·n. Any [`ScoreFn`] for any [`Sde`]
//! becomes one: with p_{0t} = N(m(t)·x₀, s(t)²·I), x_σ = x_t/m(t) has noise
//! level σ(t) = s(t)/m(t), and ∇ log p_σ(x_σ) = m(t)·s_θ(m(t)·x_σ, t). The
//! σ-space samplers (DDPM, DDIM, DPM-Solver++, Heun) never see t again.

use super::{Constraint, Sampled, Unconstrained};
use crate::rng::Rng;
use crate::score::ScoreFn;
use crate::sde::Sde;
use candle_core::{Result, Tensor};
use indicatif::ProgressBar;

/// D(x, σ): the denoised estimate of x₀ at noise level σ.
pub trait Denoiser {
    /// D(x, σ) for a batch x at one σ > 0.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// (D(x, σ), the model's own D before any x̂₀ limit): the same tensor
    /// twice unless a limit wraps the denoiser ([`super::LimitedDenoiser`]),
    /// for a step that limits x̂₀ but keeps the model's ε̂ (diffusers' DDIM default).
    fn denoise_and_raw(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        let d = self.denoise(x, sigma)?;
        Ok((d.clone(), d))
    }

    /// (σ_min, σ_max): the noise levels the model knows (the default Karras range).
    fn sigma_range(&self) -> (f64, f64);

    /// The state x_σ at σ as a state of the forward process: (t, x_t) with
    /// x_t = m(t)·x_σ, for trajectories that read like the other samplers'.
    /// Default: (σ, x_σ), a denoiser with no SDE behind it.
    fn to_time_space(&self, x: &Tensor, sigma: f64) -> Result<(f64, Tensor)> {
        Ok((sigma, x.clone()))
    }
}

/// A score and its SDE as a denoiser (the conversion t ↔ σ is done here, once).
pub struct ScoreDenoiser<'a> {
    pub score: &'a dyn ScoreFn,
    pub sde: &'a dyn Sde,
    /// The smallest time used (σ_min = σ(t_eps)).
    pub t_eps: f64,
}

impl<'a> ScoreDenoiser<'a> {
    /// The denoiser over [t_eps, T]; `t_eps = None`: the SDE's sampling ε.
    pub fn new(score: &'a dyn ScoreFn, sde: &'a dyn Sde, t_eps: Option<f64>) -> Self {
        Self { score, sde, t_eps: t_eps.unwrap_or_else(|| sde.sampling_eps()) }
    }

    /// σ(t) = s(t)/m(t).
    pub fn sigma_of(&self, t: f64) -> f64 {
        crate::sde::sigma_of(self.sde, t)
    }

    /// t(σ), the inverse of σ(t), by bisection ([`crate::sde::time_of_sigma`]).
    pub fn time_of(&self, sigma: f64) -> f64 {
        crate::sde::time_of_sigma(self.sde, sigma)
    }
}

impl Denoiser for ScoreDenoiser<'_> {
    /// D(x_σ, σ) = x_σ + σ²·m(t)·s_θ(m(t)·x_σ, t) with t = t(σ), which is
    /// Tweedie's (x_t + s(t)²·s_θ(x_t, t))/m(t) written in x_σ.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let t = self.time_of(sigma);
        let (m, s) = self.sde.marginal(t);
        let score = self.score.score_at(&x.affine(m, 0.0)?, t)?;
        x + score.affine(s * s / m, 0.0)?
    }

    fn sigma_range(&self) -> (f64, f64) {
        (self.sigma_of(self.t_eps), self.sigma_of(self.sde.t_max()))
    }

    fn to_time_space(&self, x: &Tensor, sigma: f64) -> Result<(f64, Tensor)> {
        let t = if sigma == 0.0 { 0.0 } else { self.time_of(sigma) };
        Ok((t, x.affine(self.sde.marginal(t).0, 0.0)?))
    }
}

/// One step of a σ-space sampler, from σ_i = `sigmas[i]` to σ_{i+1}: the new
/// state and the denoiser calls it took. A stepper may keep state between
/// steps (DPM-Solver++'s previous x̂₀).
pub trait SigmaStep {
    fn step(
        &mut self,
        den: &dyn Denoiser,
        x: &Tensor,
        sigmas: &[f64],
        i: usize,
        rng: &mut Rng,
    ) -> Result<(Tensor, usize)>;
}

/// The loop every σ-space sampler shares: x ← step(x, σ_i → σ_{i+1}) for
/// i = 0, …, len(sigmas) − 2, detaching each state, counting NFE, and with
/// `record_every = Some(k)` keeping every k-th state (and the first and last)
/// as (t, x_t) ([`Denoiser::to_time_space`]), for GIFs of the reverse process.
pub fn sample_sigma_steps(
    den: &dyn Denoiser,
    stepper: &mut dyn SigmaStep,
    x: Tensor,
    sigmas: &[f64],
    rng: &mut Rng,
    record_every: Option<usize>,
    progress: &ProgressBar,
) -> Result<Sampled> {
    sample_sigma_steps_constrained(den, stepper, x, sigmas, &Unconstrained, rng, record_every, progress)
}

/// [`sample_sigma_steps`] holding a [`Constraint`] (inpainting): the start
/// and every state after a step are constrained at their own noise level.
/// In σ-space x_σ = x₀ + σ·n, so the perturbation kernel is N(x₀, σ²·I) and
/// the known part becomes y + σ_{i+1}·z, z ~ N(0, I) (`apply` with (m, s) =
/// (1, σ)): score_sde's `get_pc_inpainter` replacement (Song et al. 2021,
/// App. I.2) in the variables of these solvers. Every grid ends at σ = 0,
/// where the known part is the observation y itself. A multistep solver's
/// past x̂₀'s are kept as they were computed (diffusers' inpainting
/// pipelines do the same).
#[allow(clippy::too_many_arguments)]
pub fn sample_sigma_steps_constrained(
    den: &dyn Denoiser,
    stepper: &mut dyn SigmaStep,
    mut x: Tensor,
    sigmas: &[f64],
    constraint: &dyn Constraint,
    rng: &mut Rng,
    record_every: Option<usize>,
    progress: &ProgressBar,
) -> Result<Sampled> {
    let n = sigmas.len().saturating_sub(1);
    let record = |i: usize| record_every.is_some_and(|k| i.is_multiple_of(k.max(1)) || i == n);
    if let Some(&s0) = sigmas.first() {
        x = constraint.apply(x, 1.0, s0, rng)?;
    }
    let mut trajectory = Vec::new();
    if record(0) {
        trajectory.push(den.to_time_space(&x, sigmas[0])?);
    }
    let mut nfe = 0;
    progress.set_length(n as u64);
    for i in 0..n {
        let (next, calls) = stepper.step(den, &x, sigmas, i, rng)?;
        // detached: a network's parameters are variables, and without this the
        // graph of every past step would stay alive
        x = constraint.apply(next.detach(), 1.0, sigmas[i + 1], rng)?;
        nfe += calls;
        if record(i + 1) {
            trajectory.push(den.to_time_space(&x, sigmas[i + 1])?);
        }
        progress.inc(1);
        crate::progress::stop_if_interrupted()?;
    }
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe })
}

/// Karras et al.'s σ schedule (EDM eq. 5, k-diffusion `get_sigmas_karras`):
/// σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0, …, n−1,
/// from largest to smallest, then a final σ_n = 0. ρ = 7 is the EDM default.
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let mut s: Vec<f64> = (0..n)
        .map(|i| {
            let ramp = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            (hi + ramp * (lo - hi)).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

/// σ uniform in λ = −log σ (half the log-SNR): log σ_i = log σ_max +
/// i/(n−1)·(log σ_min − log σ_max), i = 0, …, n−1, from largest to smallest,
/// then a final σ_n = 0 (Lu et al. 2022's logSNR steps; k-diffusion
/// `get_sigmas_exponential`, diffusers' `use_lu_lambdas`).
pub fn lambda_uniform_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
    let mut s: Vec<f64> = (0..n)
        .map(|i| {
            let ramp = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            (hi + ramp * (lo - hi)).exp()
        })
        .collect();
    s.push(0.0);
    s
}

/// σ at n times uniform in t from T down to ε (the grid of the SDE samplers
/// and of DDIM's "uniform" skip), from largest to smallest, then a final 0.
pub fn time_uniform_sigmas(den: &ScoreDenoiser, n: usize) -> Vec<f64> {
    let (t_max, eps) = (den.sde.t_max(), den.t_eps);
    let mut s: Vec<f64> = (0..n)
        .map(|i| den.sigma_of(if n > 1 { t_max - (t_max - eps) * i as f64 / (n - 1) as f64 } else { t_max }))
        .collect();
    s.push(0.0);
    s
}

/// d = (x − D(x, σ))/σ: the probability-flow ODE dx/dσ in σ-space (k-diffusion `to_d`).
pub fn to_d(x: &Tensor, denoised: &Tensor, sigma: f64) -> Result<Tensor> {
    (x - denoised)?.affine(1.0 / sigma, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::OracleScore;
    use crate::points::Points;
    use crate::sde::{DiscreteVp, SubVpSde, VeSde, VpSde};
    use candle_core::Device;
    use std::sync::Arc;

    /// For a single Gaussian N(μ, τ²I) the denoiser is known exactly:
    /// D(x, σ) = (τ²x + σ²μ)/(τ² + σ²), whatever SDE the score was written for.
    /// Checks the t ↔ σ conversion for every SDE (to 1e-9, well above f64 noise).
    #[test]
    fn denoiser_of_a_gaussian_is_exact_for_every_sde() {
        let (mu, tau) = ([1.0, -2.0], 0.7);
        let mix = crate::oracle::GaussianMixture::isotropic(vec![1.0], vec![mu.to_vec()], &[tau]).unwrap();
        let sdes: Vec<Arc<dyn Sde>> = vec![
            Arc::new(VeSde::new(0.01, 50.0)),
            Arc::new(VpSde::default()),
            Arc::new(SubVpSde::default()),
            Arc::new(DiscreteVp::ddpm()),
        ];
        let x = Tensor::new(&[[0.3f64, 0.4], [-3.0, 5.0]], &Device::Cpu).unwrap();
        for sde in sdes {
            let oracle = OracleScore::new(mix.clone(), sde.clone());
            let den = ScoreDenoiser::new(&oracle, sde.as_ref(), None);
            for sigma in [0.05, 0.5, 3.0, 20.0] {
                let got = Points::from_tensor(&den.denoise(&x, sigma).unwrap()).unwrap();
                let xs = Points::from_tensor(&x).unwrap();
                for (i, (g, xv)) in got.data.iter().zip(&xs.data).enumerate() {
                    let want = (tau * tau * xv + sigma * sigma * mu[i % 2]) / (tau * tau + sigma * sigma);
                    assert!((g - want).abs() < 1e-9 * (1.0 + want.abs()), "{} σ={sigma}: {g} vs {want}", sde.name());
                }
            }
        }
    }

    /// EDM's schedule: n values from σ_max to σ_min, then 0, decreasing.
    #[test]
    fn karras_schedule_spans_the_range_and_ends_at_zero() {
        let s = karras_sigmas(18, 0.002, 80.0, 7.0);
        assert_eq!(s.len(), 19);
        assert!((s[0] - 80.0).abs() < 1e-12 && (s[17] - 0.002).abs() < 1e-15 && s[18] == 0.0);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        // by hand: (80^{1/7} + 9/17·(0.002^{1/7} − 80^{1/7}))^7 = 1.0979^7 ≈ 1.9233
        assert!((s[9] - 1.9233).abs() < 1e-3, "{}", s[9]);
        // ρ = 7 shortens the steps near σ_min: the last step is < 1% of the first
        assert!(s[16] - s[17] < 0.01 * (s[0] - s[1]));
    }
}
