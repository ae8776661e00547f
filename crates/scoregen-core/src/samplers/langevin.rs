//! Langevin dynamics (the seed's sampler) and Metropolis-adjusted Langevin.
//!
//! x ← x + ε ∇ₓ log p(x) + √(2ε) z: as ε → 0 and the number of steps grows,
//! x is distributed as p. In low-density regions the learned score is poor
//! and mixing between separated modes is exponentially slow — the pitfall
//! that motivates noise perturbation (see `annealed_langevin`).

use super::Sampled;
use crate::rng::Rng;
use crate::score::{LogDensity, ScoreFn};
use crate::sde;
use candle_core::{DType, Device, Result, Shape, Tensor};
use indicatif::ProgressBar;

/// Where Langevin chains start.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Start {
    /// Uniform on [lo, hi] in every coordinate.
    Uniform { lo: f64, hi: f64 },
    /// N(0, std² I).
    Gaussian { std: f64 },
}

impl Start {
    /// Starting points on `device` (drawn on the CPU from `rng`, then copied).
    pub fn sample(&self, shape: impl Into<Shape>, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Tensor> {
        match *self {
            Start::Uniform { lo, hi } => rng.rand_uniform(shape, lo, hi, dtype, device),
            Start::Gaussian { std } => rng.randn(shape, dtype, device)?.affine(std, 0.0),
        }
    }
}

/// Settings of a Langevin chain.
#[derive(Debug, Clone)]
pub struct LangevinOptions {
    pub steps: usize,
    /// Step size ε.
    pub eps: f64,
    /// The time (noise level) the score is evaluated at; unconditional models ignore it.
    pub t: f64,
    /// Record the state every k steps (plus the first and last).
    pub record_every: Option<usize>,
}

/// One Langevin step x + ε s(x, t) + √(2ε) z (detached from any graph).
pub fn langevin_step(score: &dyn ScoreFn, x: &Tensor, t: f64, eps: f64, rng: &mut Rng) -> Result<Tensor> {
    let z = rng.randn(x.shape(), x.dtype(), x.device())?;
    Ok((x + score.score_at(x, t)?.affine(eps, 0.0)? + z.affine((2.0 * eps).sqrt(), 0.0)?)?.detach())
}

fn should_record(every: Option<usize>, i: usize, n: usize) -> bool {
    every.is_some_and(|k| i.is_multiple_of(k.max(1)) || i == n)
}

/// Runs K Langevin steps from `x`.
pub fn langevin(
    score: &dyn ScoreFn,
    x: Tensor,
    opts: &LangevinOptions,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<Sampled> {
    let mut x = x;
    let mut trajectory = Vec::new();
    if should_record(opts.record_every, 0, opts.steps) {
        trajectory.push((opts.t, x.clone()));
    }
    progress.set_length(opts.steps as u64);
    for i in 0..opts.steps {
        x = langevin_step(score, &x, opts.t, opts.eps, rng)?;
        if should_record(opts.record_every, i + 1, opts.steps) {
            trajectory.push((opts.t, x.clone()));
        }
        progress.inc(1);
        crate::progress::stop_if_interrupted()?;
    }
    progress.finish_and_clear();
    Ok(Sampled { x, trajectory, nfe: opts.steps })
}

/// Metropolis-adjusted Langevin (Roberts & Tweedie 1996): propose
/// y = x + ε s(x) + √(2ε) z and accept with probability
/// min(1, p̃(y) q(x|y) / (p̃(x) q(y|x))), q(y|x) = N(y; x + ε s(x), 2ε I).
/// The chain then has p exactly as its stationary law, for any ε.
/// Returns the samples and the mean acceptance rate.
pub fn mala(
    score: &dyn ScoreFn,
    density: &dyn LogDensity,
    x: Tensor,
    opts: &LangevinOptions,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> Result<(Sampled, f64)> {
    let n = x.dim(0)?;
    let t = sde::time_batch(opts.t, &x)?;
    let mut x = x.detach();
    let mut s_x = score.score(&x, &t)?.detach();
    let mut lp_x = density.log_density(&x, &t)?.detach();
    let mut accepted = Tensor::new(0f64, x.device())?;
    let mut trajectory = Vec::new();
    if should_record(opts.record_every, 0, opts.steps) {
        trajectory.push((opts.t, x.clone()));
    }
    // log q(b | a) up to a constant: −‖b − a − ε s(a)‖² / (4ε), per example
    let log_q = |b: &Tensor, a: &Tensor, s_a: &Tensor| -> Result<Tensor> {
        (b - a - s_a.affine(opts.eps, 0.0)?)?.flatten_from(1)?.sqr()?.sum(1)?.affine(-1.0 / (4.0 * opts.eps), 0.0)
    };
    progress.set_length(opts.steps as u64);
    for i in 0..opts.steps {
        let z = rng.randn(x.shape(), x.dtype(), x.device())?;
        let y = (&x + s_x.affine(opts.eps, 0.0)? + z.affine((2.0 * opts.eps).sqrt(), 0.0)?)?.detach();
        let s_y = score.score(&y, &t)?.detach();
        let lp_y = density.log_density(&y, &t)?.detach();
        let log_alpha = ((&lp_y - &lp_x)? + log_q(&x, &y, &s_y)? - log_q(&y, &x, &s_x)?)?;
        // accept where ln u < log α, decided on the device (no read back per step)
        let log_u: Vec<f64> = rng.uniform_vec(n, 0.0, 1.0).iter().map(|u| u.ln()).collect();
        let mask = log_alpha.to_dtype(DType::F64)?.gt(&Tensor::from_vec(log_u, n, x.device())?)?;
        accepted = (accepted + mask.to_dtype(DType::F64)?.sum_all()?)?;
        let mask_x = mask.reshape((n, 1))?.broadcast_as(x.shape())?;
        x = mask_x.where_cond(&y, &x)?;
        s_x = mask_x.where_cond(&s_y, &s_x)?;
        lp_x = mask.where_cond(&lp_y, &lp_x)?;
        if should_record(opts.record_every, i + 1, opts.steps) {
            trajectory.push((opts.t, x.clone()));
        }
        progress.inc(1);
        crate::progress::stop_if_interrupted()?;
    }
    progress.finish_and_clear();
    let rate = crate::host::scalar::<f64>(&accepted)? / (n * opts.steps.max(1)) as f64;
    Ok((Sampled { x, trajectory, nfe: 2 * opts.steps + 1 }, rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{GaussianMixture, MixtureScore};

    /// On N(μ, s²I) Langevin with small ε reaches the right mean and variance
    /// (ULA's stationary variance is s²/(1 − ε/(2s²)) ≈ s²(1 + ε/(2s²)); with
    /// ε = 0.01, s = 1 that is a 0.5 % bias, inside the 5 % tolerance);
    /// MALA removes the bias even with a large step and accepts often.
    #[test]
    fn langevin_and_mala_sample_a_gaussian() {
        let mix = GaussianMixture::isotropic(vec![1.0], vec![vec![2.0, -1.0]], &[1.0]).unwrap();
        let target = MixtureScore(mix);
        let mut rng = Rng::new(0, 0);
        let n = 4000;
        let x0 = Start::Uniform { lo: -6.0, hi: 6.0 }.sample((n, 2), &mut rng, DType::F64, &Device::Cpu).unwrap();
        let opts = LangevinOptions { steps: 1500, eps: 0.01, t: 0.0, record_every: None };
        let out = langevin(&target, x0.clone(), &opts, &mut rng, &ProgressBar::hidden()).unwrap();
        let check = |x: &Tensor| {
            let p = crate::points::Points::from_tensor(x).unwrap();
            let mean0 = p.rows().map(|r| r[0]).sum::<f64>() / n as f64;
            let var0 = p.rows().map(|r| (r[0] - mean0).powi(2)).sum::<f64>() / n as f64;
            (mean0, var0)
        };
        let (m, v) = check(&out.x);
        assert!((m - 2.0).abs() < 0.08 && (v - 1.0).abs() < 0.1, "ULA: mean {m}, var {v}");
        let opts = LangevinOptions { steps: 400, eps: 0.5, t: 0.0, record_every: None };
        let (out, rate) = mala(&target, &target, x0, &opts, &mut rng, &ProgressBar::hidden()).unwrap();
        let (m, v) = check(&out.x);
        assert!((m - 2.0).abs() < 0.08 && (v - 1.0).abs() < 0.1, "MALA: mean {m}, var {v}");
        assert!(rate > 0.5 && rate < 1.0, "acceptance {rate}");
    }
}
