//! Discrete-time VP diffusion (DDPM, Ho et al. 2020) seen as an [`Sde`].
//!
//! A β schedule β_1, …, β_N gives α_i = 1 − β_i, ᾱ_i = Π_{j≤i} α_j and the
//! forward marginal q(x_i | x_0) = N(√ᾱ_i·x_0, (1 − ᾱ_i)·I). Following
//! DPM-Solver's `NoiseScheduleVP('discrete')`, step i (0-based in code) sits at
//! continuous time t_i = (i + 1)/N and log ᾱ is linear in t between the grid
//! points (and 0 at t = 0), so the discrete chain is a VP SDE with
//! β(t) = −d log ᾱ/dt, and every `Sde`-generic sampler, objective and the
//! oracle work with it unchanged.

use super::Sde;
use crate::host::Uploaded;
use candle_core::{DType, Result, Tensor};

/// Which β schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BetaSchedule {
    /// β_i linear from 1e-4 to 0.02 (Ho et al. 2020, N = 1000).
    Linear,
    /// ᾱ(t) = f(t)/f(0), f(t) = cos²((t/N + s)/(1 + s)·π/2), s = 0.008, β clipped
    /// at 0.999 (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17); diffusers'
    /// `squaredcos_cap_v2`.
    Cosine,
    /// diffusers' `scaled_linear`: √β_i linear from √β_start to √β_end.
    ScaledLinear,
}

/// The β_i of diffusers' `DDPMScheduler`/`DDIMScheduler` for `beta_schedule`
/// with N = `n` training timesteps: `linear` β_i = β_start + i(β_end − β_start)/(N − 1)
/// (not rescaled with N, unlike [`DiscreteVp::new`]), `scaled_linear` the same in
/// √β, `squaredcos_cap_v2` Nichol & Dhariwal's cosine (β_start, β_end unused).
pub fn diffusers_betas(schedule: BetaSchedule, beta_start: f64, beta_end: f64, n: usize) -> Vec<f64> {
    let n = n.max(2);
    let lin = |a: f64, b: f64| (0..n).map(move |i| a + (b - a) * i as f64 / (n - 1) as f64);
    match schedule {
        BetaSchedule::Linear => lin(beta_start, beta_end).collect(),
        BetaSchedule::ScaledLinear => lin(beta_start.sqrt(), beta_end.sqrt()).map(|b| b * b).collect(),
        BetaSchedule::Cosine => DiscreteVp::new(BetaSchedule::Cosine, n).betas,
    }
}

/// The DDPM chain: β_i and ᾱ_i, i = 0, …, N−1 (code indices; paper step i + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteVp {
    pub schedule: BetaSchedule,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    log_alphas_cumprod: Vec<f64>,
    /// [0, log ᾱ_0, …, log ᾱ_{N−1}] on the device of the last `marginal_of`.
    table: Uploaded,
}

impl DiscreteVp {
    /// Ho et al.'s linear schedule β ∈ [1e-4, 0.02] with N = 1000 steps.
    pub fn ddpm() -> Self {
        Self::new(BetaSchedule::Linear, 1000)
    }

    pub fn new(schedule: BetaSchedule, n: usize) -> Self {
        let n = n.max(2);
        let betas: Vec<f64> = match schedule {
            BetaSchedule::ScaledLinear => diffusers_betas(schedule, 0.00085, 0.012, n),
            // scaled so that N·β stays the same for N ≠ 1000 (as the continuous VP SDE does)
            BetaSchedule::Linear => {
                let (lo, hi) = (1e-4 * 1000.0 / n as f64, 0.02 * 1000.0 / n as f64);
                (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
            }
            BetaSchedule::Cosine => {
                let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..n).map(|i| (1.0 - f((i + 1) as f64 / n as f64) / f(i as f64 / n as f64)).min(0.999)).collect()
            }
        };
        Self::from_betas(schedule, betas)
    }

    /// The chain of given β_i (each in (0, 1)), e.g. [`diffusers_betas`].
    pub fn from_betas(schedule: BetaSchedule, betas: Vec<f64>) -> Self {
        let mut log_alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 0.0;
        for b in &betas {
            acc += (-b).ln_1p();
            log_alphas_cumprod.push(acc);
        }
        let alphas_cumprod = log_alphas_cumprod.iter().map(|l| l.exp()).collect();
        Self { schedule, betas, alphas_cumprod, log_alphas_cumprod, table: Uploaded::default() }
    }

    /// N, the number of steps of the chain.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// t_i = (i + 1)/N, the continuous time of code index i.
    pub fn time_of(&self, i: usize) -> f64 {
        (i + 1) as f64 / self.steps() as f64
    }

    /// σ_i = √((1 − ᾱ_i)/ᾱ_i), the noise level of step i in the VE/EDM parameterization.
    pub fn sigma(&self, i: usize) -> f64 {
        (1.0 / self.alphas_cumprod[i] - 1.0).sqrt()
    }

    /// DDIM's time steps ("uniform" skip of Song, Meng & Ermon 2021's code):
    /// indices 0, k, 2k, … with k = N/steps, from largest to smallest, as σ
    /// with a final 0 (ᾱ = 1, the clean data), ready for the σ-space samplers.
    pub fn ddim_sigmas(&self, steps: usize) -> Vec<f64> {
        let skip = (self.steps() / steps.clamp(1, self.steps())).max(1);
        let mut s: Vec<f64> = (0..self.steps()).step_by(skip).map(|i| self.sigma(i)).collect();
        s.reverse();
        s.push(0.0);
        s
    }

    /// log ᾱ(t), linear between the grid points t_i = (i+1)/N and 0 at t = 0;
    /// also returns its (piecewise constant) slope.
    fn log_alpha_bar(&self, t: f64) -> (f64, f64) {
        let n = self.steps() as f64;
        let u = (t.clamp(0.0, 1.0) * n).min(n - 1e-12);
        let k = u.floor() as usize; // segment [k/N, (k+1)/N]
        let (lo, hi) = (if k == 0 { 0.0 } else { self.log_alphas_cumprod[k - 1] }, self.log_alphas_cumprod[k]);
        let w = u - k as f64;
        (lo + w * (hi - lo), (hi - lo) * n)
    }

    /// log ᾱ(t) of [`DiscreteVp::log_alpha_bar`] per row of t [N], as f64 on
    /// t's device: the segment index k = ⌊u⌋, u = clamp(t, 0, 1)·N, gathers
    /// the two table entries it interpolates between.
    fn log_alpha_bar_of(&self, t: &Tensor) -> Result<Tensor> {
        let table = self.table.get(t.device(), || {
            let mut v = Vec::with_capacity(self.steps() + 1);
            v.push(0.0);
            v.extend_from_slice(&self.log_alphas_cumprod);
            Tensor::from_vec(v, self.steps() + 1, t.device())
        })?;
        let n = self.steps() as f64;
        let u = t.to_dtype(DType::F64)?.clamp(0.0, 1.0)?.affine(n, 0.0)?.clamp(0.0, n - 1e-12)?;
        let k = u.floor()?;
        let lo = table.index_select(&k.to_dtype(DType::U32)?, 0)?;
        let hi = table.index_select(&(&k + 1.0)?.to_dtype(DType::U32)?, 0)?;
        let w = (u - k)?;
        lo.clone() + (hi - lo)?.mul(&w)?
    }
}

impl Sde for DiscreteVp {
    fn name(&self) -> &'static str {
        "ddpm"
    }
    /// ½ d log ᾱ/dt = −½β(t).
    fn drift_coef(&self, t: f64) -> f64 {
        0.5 * self.log_alpha_bar(t).1
    }
    /// √β(t) = √(−d log ᾱ/dt).
    fn diffusion(&self, t: f64) -> f64 {
        (-self.log_alpha_bar(t).1).max(0.0).sqrt()
    }
    /// (√ᾱ(t), √(1 − ᾱ(t))).
    fn marginal(&self, t: f64) -> (f64, f64) {
        let l = self.log_alpha_bar(t).0;
        ((0.5 * l).exp(), (-l.exp_m1()).max(0.0).sqrt())
    }
    /// (√ᾱ(t), √(1 − ᾱ(t))) on t's device.
    fn marginal_of(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let l = self.log_alpha_bar_of(t)?;
        Ok((l.affine(0.5, 0.0)?.exp()?, l.exp()?.affine(-1.0, 1.0)?.relu()?.sqrt()?))
    }
    fn prior_std(&self) -> f64 {
        1.0
    }
    /// t_0 = 1/N, the first step of the chain.
    fn sampling_eps(&self) -> f64 {
        1.0 / self.steps() as f64
    }
    /// t_i = (i + 1)/N for i = 0, …, N − 1 ([`DiscreteVp::time_of`]).
    fn timestep_times(&self) -> Option<Vec<f64>> {
        Some((0..self.steps()).map(|i| self.time_of(i)).collect())
    }
    /// DDPM's choice σ_i² = β_i, as for the continuous VP SDE.
    fn ancestral_std(&self, t: f64, dt: f64) -> f64 {
        self.transition(t, dt).1.sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grid times reproduce the chain exactly: m(t_i)² = ᾱ_i, and the
    /// transition from t_{i−1} to t_i is α_i = 1 − β_i with variance β_i.
    #[test]
    fn grid_times_reproduce_the_chain() {
        for sched in [BetaSchedule::Linear, BetaSchedule::Cosine] {
            let d = DiscreteVp::new(sched, 1000);
            for i in [0usize, 1, 10, 499, 998, 999] {
                let (m, s) = d.marginal(d.time_of(i));
                assert!((m * m - d.alphas_cumprod[i]).abs() < 1e-12 * (1.0 + d.alphas_cumprod[i]), "{sched:?} {i}");
                assert!((m * m + s * s - 1.0).abs() < 1e-12);
                if i > 0 {
                    let (a, b2) = d.transition(d.time_of(i), 1.0 / 1000.0);
                    assert!((a * a - (1.0 - d.betas[i])).abs() < 1e-9, "{sched:?} {i}: {a}");
                    assert!((b2 - d.betas[i]).abs() < 1e-9, "{sched:?} {i}: {b2}");
                }
            }
        }
    }

    /// Ho et al.'s numbers: β_1 = 1e-4, β_N = 0.02, ᾱ_N ≈ 4.04e-5 (so x_N is
    /// almost pure noise); the cosine schedule's β stays ≤ 0.999 and ᾱ decreases.
    #[test]
    fn schedules_match_the_papers() {
        let d = DiscreteVp::ddpm();
        assert!((d.betas[0] - 1e-4).abs() < 1e-15 && (d.betas[999] - 0.02).abs() < 1e-15);
        assert!((d.alphas_cumprod[999] - 4.035e-5).abs() < 1e-7, "{}", d.alphas_cumprod[999]);
        let c = DiscreteVp::new(BetaSchedule::Cosine, 1000);
        assert!(c.betas.iter().all(|&b| b > 0.0 && b <= 0.999));
        assert!(c.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        // the cosine schedule destroys information more slowly at the start
        assert!(c.alphas_cumprod[499] > d.alphas_cumprod[499]);
    }

    /// DDIM's grid: `steps` σ's from largest to smallest plus a final 0.
    #[test]
    fn ddim_sigmas_are_decreasing_and_end_at_zero() {
        let d = DiscreteVp::ddpm();
        let s = d.ddim_sigmas(50);
        assert_eq!(s.len(), 51);
        assert_eq!(*s.last().unwrap(), 0.0);
        assert!(s.windows(2).all(|w| w[1] < w[0]));
        assert!((s[49] - d.sigma(0)).abs() < 1e-15 && (s[0] - d.sigma(980)).abs() < 1e-12);
    }
}
