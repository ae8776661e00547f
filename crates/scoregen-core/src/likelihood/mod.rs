//! Exact log-likelihoods with the probability-flow ODE (Song et al. 2021,
//! App. D.2; score_sde's `likelihood.py`).
//!
//! Along dx/dt = f̃(x,t) = f(x,t) − ½g(t)² s(x,t) the density obeys the
//! instantaneous change of variables d log p_t(x(t))/dt = −∇·f̃(x(t),t)
//! (Chen et al. 2018), so integrating the augmented state [x, Δ] with
//! dΔ/dt = ∇·f̃ = a(t)·D − ½g(t)²·Tr ∇ₓs from t = ε to T gives
//!
//! log p_ε(x) = log p_T(x(T)) + Δ(T) ≈ log π(x(T)) + Δ(T),
//!
//! with π the SDE's prior. Bits per dimension: bpd = −log p(x)/(D ln 2)
//! (+ the dequantization offset for discrete data, see [`Dequantization`]).

pub mod trace;

pub use trace::{ProbeNoise, TraceEstimator};

use crate::rng::Rng;
use crate::samplers::ode::{self, OdeMethod};
use crate::score::ScoreFn;
use crate::sde::{self, Sde};
use candle_core::{DType, Result, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::f64::consts::LN_2;

/// Length of the likelihood's progress bar: thousandths of the time interval.
pub const PROGRESS_TICKS: usize = 1000;

/// How to compute a likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LikelihoodOptions {
    /// Divergence estimator; `None`: exact for D ≤ 16, else Hutchinson with one Rademacher probe.
    pub trace: Option<TraceEstimator>,
    /// The ODE solver (default RK45 with rtol = atol = 1e-5, as score_sde).
    pub method: OdeMethod,
    /// Start time ε (default: the SDE's sampling ε).
    pub eps: Option<f64>,
    /// The dtype the score is evaluated in (the ODE state is always f64).
    pub score_dtype: DType,
    /// Uniform dequantization of discrete data, and its bits/dim offset.
    pub dequantize: Option<Dequantization>,
}

impl Default for LikelihoodOptions {
    fn default() -> Self {
        Self { trace: None, method: OdeMethod::default(), eps: None, score_dtype: DType::F64, dequantize: None }
    }
}

/// Uniform dequantization of data on an L-level grid over [lo, hi].
///
/// The data are x_q = lo + (hi − lo)·k/(L − 1), k ∈ {0, …, L−1} (images: L = 256,
/// [0, 1] is k/255). Dequantized: x = lo + (hi − lo)·(k + u)/L, u ~ U[0,1)^D, so
/// each discrete value owns a cell of volume ((hi − lo)/L)^D and
/// P(k) = ∫_cell p(x) dx ≥ exp(E_u log p(x))·((hi − lo)/L)^D (Jensen). Hence
///
/// bpd(k) = −log₂ P(k)/D ≤ −log p(x)/(D ln 2) + log₂ L − log₂(hi − lo).
///
/// [0, 1] with L = 256: offset +8. [−1, 1] with L = 256: offset +7 (score_sde's
/// `7 − inverse_scaler(−1)` for centered data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dequantization {
    pub levels: u32,
    pub lo: f64,
    pub hi: f64,
}

impl Default for Dequantization {
    fn default() -> Self {
        Self { levels: 256, lo: 0.0, hi: 1.0 }
    }
}

impl Dequantization {
    /// The bits/dim offset log₂ L − log₂(hi − lo) added to −log p(x)/(D ln 2).
    pub fn bpd_offset(&self) -> f64 {
        (self.levels as f64).log2() - (self.hi - self.lo).log2()
    }

    /// x = lo + (hi − lo)·(k + u)/L from x_q = lo + (hi − lo)·k/(L − 1). An error
    /// names the first value that is off the grid by more than 1e-3 of a level.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> crate::Result<Tensor> {
        let l = self.levels as f64;
        let width = self.hi - self.lo;
        let vals = crate::host::vec1::<f64>(&x.flatten_all()?)?;
        let mut out = Vec::with_capacity(vals.len());
        for (i, v) in vals.iter().enumerate() {
            let kf = (v - self.lo) / width * (l - 1.0);
            let k = kf.round();
            if (kf - k).abs() > 1e-3 || k < 0.0 || k > l - 1.0 {
                return Err(crate::Error::Invalid(format!(
                    "dequantization: value {v} at flat index {i} is not on the {}-level grid over [{}, {}] (expected lo + (hi − lo)·k/{})",
                    self.levels, self.lo, self.hi, self.levels - 1
                )));
            }
            out.push(self.lo + width * (k + rng.uniform()) / l);
        }
        Ok(Tensor::from_vec(out, x.shape(), x.device())?.to_dtype(x.dtype())?)
    }
}

/// log p(x) per example and how it was obtained.
#[derive(Debug, Clone)]
pub struct LogLikelihood {
    /// log p_ε(x) in nats, per example.
    pub nats: Vec<f64>,
    /// −log p(x)/(D ln 2) + offset (0, or the dequantization offset), per example.
    pub bits_per_dim: Vec<f64>,
    /// log π(x(T)), per example.
    pub prior_logp: Vec<f64>,
    /// Δ(T) = ∫_ε^T ∇·f̃ dt, per example.
    pub delta_logp: Vec<f64>,
    /// x(T), the latent.
    pub latent: Tensor,
    /// Score evaluations (solver function evaluations).
    pub nfe: usize,
    pub dim: usize,
    pub bpd_offset: f64,
}

/// bits/dim = −log p/(D ln 2) + offset.
pub fn bits_per_dim(nats: f64, dim: usize, offset: f64) -> f64 {
    -nats / (dim as f64 * LN_2) + offset
}

/// log p_ε(x) for a batch x of shape [N, …] by the probability-flow ODE from ε
/// to T with the divergence integrated alongside (module docs). The data are
/// dequantized first when `opts.dequantize` is set; `rng` draws the
/// dequantization noise and the Hutchinson probes.
pub fn log_likelihood(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    x: &Tensor,
    opts: &LikelihoodOptions,
    rng: &mut Rng,
) -> crate::Result<LogLikelihood> {
    log_likelihood_with_progress(score, sde, x, opts, rng, &ProgressBar::hidden())
}

/// [`log_likelihood`] showing how far the ODE has got on a bar of
/// [`PROGRESS_TICKS`]: the fraction of [ε, T] integrated (the solver is
/// adaptive, so time, not steps, is what it can promise).
pub fn log_likelihood_with_progress(
    score: &dyn ScoreFn,
    sde: &dyn Sde,
    x: &Tensor,
    opts: &LikelihoodOptions,
    rng: &mut Rng,
    progress: &ProgressBar,
) -> crate::Result<LogLikelihood> {
    let x = match &opts.dequantize {
        Some(dq) => dq.apply(x, rng)?,
        None => x.clone(),
    };
    let x = x.to_dtype(DType::F64)?;
    let shape = x.shape().clone();
    let n = x.dim(0)?;
    let flat = x.flatten_from(1)?;
    let dim = flat.dim(1)?;
    let estimator = opts.trace.unwrap_or(TraceEstimator::default_for(dim));
    let probes = match estimator {
        TraceEstimator::Exact => Vec::new(),
        TraceEstimator::Hutchinson { probes, noise } => {
            trace::draw_probes(&x.to_dtype(opts.score_dtype)?, probes, noise, rng)?
        }
    };
    let eps = opts.eps.unwrap_or_else(|| sde.sampling_eps());
    let y0 = Tensor::cat(&[&flat, &Tensor::zeros((n, 1), DType::F64, x.device())?], 1)?;
    let mut rhs = |t: f64, y: &Tensor| -> Result<Tensor> {
        crate::progress::stop_if_interrupted()?;
        progress.set_position(
            (PROGRESS_TICKS as f64 * (t - eps) / (sde.t_max() - eps)).clamp(0.0, PROGRESS_TICKS as f64) as u64,
        );
        let xs = y.narrow(1, 0, dim)?.reshape(&shape)?.to_dtype(opts.score_dtype)?;
        let tb = sde::time_batch(t, &xs)?;
        let (s, div_s) = trace::score_and_divergence(score, &xs, &tb, estimator, &probes)?;
        let g2 = sde.diffusion(t).powi(2);
        let a = sde.drift_coef(t);
        // f̃ = a·x − ½g²·s and ∇·f̃ = a·D − ½g²·Tr ∇ₓs
        let drift =
            (y.narrow(1, 0, dim)?.affine(a, 0.0)? - s.to_dtype(DType::F64)?.flatten_from(1)?.affine(0.5 * g2, 0.0)?)?;
        let div = div_s.to_dtype(DType::F64)?.affine(-0.5 * g2, a * dim as f64)?.reshape((n, 1))?;
        Tensor::cat(&[&drift, &div], 1)
    };
    let sol = ode::solve(&mut rhs, &y0, eps, sde.t_max(), opts.method, false)?;
    progress.finish_and_clear();
    let latent = sol.y.narrow(1, 0, dim)?.reshape(&shape)?;
    let delta_logp = crate::host::vec1::<f64>(&sol.y.narrow(1, dim, 1)?.flatten_all()?)?;
    let prior_logp = crate::host::vec1::<f64>(&sde.prior_logp(&latent)?)?;
    let nats: Vec<f64> = prior_logp.iter().zip(&delta_logp).map(|(p, d)| p + d).collect();
    let offset = opts.dequantize.map_or(0.0, |d| d.bpd_offset());
    Ok(LogLikelihood {
        bits_per_dim: nats.iter().map(|&l| bits_per_dim(l, dim, offset)).collect(),
        nats,
        prior_logp,
        delta_logp,
        latent,
        nfe: sol.nfe,
        dim,
        bpd_offset: offset,
    })
}
