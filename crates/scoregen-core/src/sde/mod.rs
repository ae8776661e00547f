//! Forward SDEs dx = f(x,t) dt + g(t) dw of Song et al. (2021), "Score-Based
//! Generative Modeling through Stochastic Differential Equations".
//!
//! All three SDEs have a drift linear in x, f(x,t) = a(t)·x, and a Gaussian
//! perturbation kernel p_{0t}(x(t)|x(0)) = N(m(t)·x(0), v(t)·I), exposed as
//! [`Sde::marginal`] `-> (m(t), √v(t))`. Samplers and objectives only see
//! this trait; the reverse SDE and the probability-flow ODE are derived from
//! it (see `samplers`).

pub mod discrete;
pub mod ladder;
mod subvp;
mod ve;
mod vp;

pub use discrete::{diffusers_betas, BetaSchedule, DiscreteVp};
pub use ladder::NoiseLadder;
pub use subvp::SubVpSde;
pub use ve::VeSde;
pub use vp::VpSde;

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Shape, Tensor};
use std::f64::consts::PI;

/// A forward SDE with linear drift and an isotropic Gaussian prior.
pub trait Sde: Send + Sync {
    /// Short name: "ve", "vp" or "subvp".
    fn name(&self) -> &'static str;

    /// End time T (1 for every SDE here).
    fn t_max(&self) -> f64 {
        1.0
    }

    /// a(t) in the drift f(x,t) = a(t)·x.
    fn drift_coef(&self, t: f64) -> f64;

    /// g(t), the diffusion coefficient.
    fn diffusion(&self, t: f64) -> f64;

    /// (m(t), s(t)): the perturbation kernel is N(m(t)·x(0), s(t)²·I).
    fn marginal(&self, t: f64) -> (f64, f64);

    /// (m(t), s(t)) for a batch of times t [N] (any float dtype), as f64
    /// tensors [N] on t's device: the batched twin of [`Sde::marginal`] that
    /// score calls use, computed with tensor arithmetic so that a sampler on a
    /// GPU never waits for t to come back to the host ([`crate::host`]).
    /// Default: reads t back (a counted read) and calls `marginal` per row;
    /// every SDE of this crate overrides it.
    fn marginal_of(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let ts = crate::host::vec1::<f64>(t)?;
        let (m, s): (Vec<f64>, Vec<f64>) = ts.iter().map(|&t| self.marginal(t)).unzip();
        Ok((Tensor::from_vec(m, ts.len(), t.device())?, Tensor::from_vec(s, ts.len(), t.device())?))
    }

    /// Standard deviation of the prior N(0, s_T²·I) that p_T is close to.
    fn prior_std(&self) -> f64;

    /// The smallest time samplers stop at (score_sde: 1e-5 for VE, 1e-3 for VP and sub-VP).
    fn sampling_eps(&self) -> f64 {
        1e-3
    }

    /// The times t_0 < … < t_{N−1} of the integer timesteps 0, …, N−1 when the
    /// process is a discrete chain (DDPM: t_i = (i + 1)/N), so that a sampler's
    /// grid can land on the steps a discrete-time model was trained on;
    /// `None` for a continuous SDE.
    fn timestep_times(&self) -> Option<Vec<f64>> {
        None
    }

    /// f(x,t) = a(t)·x.
    fn drift(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        x.affine(self.drift_coef(t), 0.0)
    }

    /// Draws from the prior N(0, s_T²·I).
    fn prior_sample(&self, shape: Shape, rng: &mut Rng, dtype: DType, device: &Device) -> Result<Tensor> {
        rng.randn(shape, dtype, device)?.affine(self.prior_std(), 0.0)
    }

    /// log N(x; 0, s_T²·I) for each example (all dimensions but the first are summed):
    /// −(D/2)·log(2π s_T²) − ‖x‖²/(2 s_T²).
    fn prior_logp(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.flatten_from(1)?;
        let d = x.dim(1)? as f64;
        let s2 = self.prior_std().powi(2);
        x.sqr()?.sum(1)?.affine(-0.5 / s2, -0.5 * d * (2.0 * PI * s2).ln())
    }

    /// The exact Gaussian transition of the forward process from t − dt to t
    /// (dt > 0), derived from the marginals: x_t = a·x_{t−dt} + b·z with
    /// a = m(t)/m(t−dt), b² = s(t)² − a²·s(t−dt)². Returns (a, b²).
    /// VE: a = 1, b² = σ(t)² − σ(t−dt)² (SMLD); VP: a ≈ √(1 − β(t)dt), b² ≈ 1 − a² (DDPM).
    fn transition(&self, t: f64, dt: f64) -> (f64, f64) {
        let (m1, s1) = self.marginal(t);
        let (m0, s0) = self.marginal((t - dt).max(0.0));
        let a = m1 / m0;
        (a, (s1 * s1 - a * a * s0 * s0).max(0.0))
    }

    /// Noise std of the ancestral step from t to t − dt (score_sde's
    /// `AncestralSamplingPredictor`). Default: the posterior std of
    /// q(x_{t−dt} | x_t, x_0), b·s(t−dt)/s(t) (the VE/SMLD form); VP overrides
    /// it with the DDPM choice b.
    fn ancestral_std(&self, t: f64, dt: f64) -> f64 {
        let (_, b2) = self.transition(t, dt);
        let (s1, s0) = (self.marginal(t).1, self.marginal((t - dt).max(0.0)).1);
        (b2.sqrt() * s0 / s1).max(0.0)
    }

    /// One forward step of the discretized SDE ending at t with step dt > 0:
    /// x_t = x_{t−dt} + f + G·z. Returns (f, G). Default: Euler–Maruyama,
    /// f = f(x,t)·dt, G = g(t)·√dt; VE and VP override with their DDPM/SMLD forms.
    fn discretize(&self, x: &Tensor, t: f64, dt: f64) -> Result<(Tensor, f64)> {
        Ok((self.drift(x, t)?.affine(dt, 0.0)?, self.diffusion(t) * dt.sqrt()))
    }
}

/// Reshapes per-example values [N] to [N, 1, …, 1] so they broadcast against `like`.
pub fn per_example(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1usize; like.rank()];
    dims[0] = values.len();
    Tensor::from_slice(values, values.len(), like.device())?.to_dtype(like.dtype())?.reshape(dims)
}

/// Times of a batch as a Vec (the time tensor is [N]): a counted host read
/// ([`crate::host`]), for the oracle and tests; the score path uses
/// [`Sde::marginal_of`] and [`marginal_columns`] instead.
pub fn times(t: &Tensor) -> Result<Vec<f64>> {
    crate::host::vec1::<f64>(t)
}

/// (m(t), s(t)) of [`Sde::marginal_of`] reshaped to [N, 1, …, 1] in `like`'s
/// rank, still f64, so per-example coefficients are formed in f64 and cast
/// once into `like`'s dtype, as the scalar path does.
pub fn marginal_columns(sde: &dyn Sde, t: &Tensor, like: &Tensor) -> Result<(Tensor, Tensor)> {
    let (m, s) = sde.marginal_of(t)?;
    let mut dims = vec![1usize; like.rank()];
    dims[0] = t.dim(0)?;
    Ok((m.reshape(dims.clone())?, s.reshape(dims)?))
}

/// σ(t) = s(t)/m(t) per row of t [N], as f64 on t's device ([`sigma_of`]
/// batched, no host read).
pub fn sigma_of_tensor(sde: &dyn Sde, t: &Tensor) -> Result<Tensor> {
    let (m, s) = sde.marginal_of(t)?;
    s / m
}

/// σ(t) = s(t)/m(t): the noise level of x(t)/m(t) = x(0) + σ(t)·z, the
/// variance-exploding view of any SDE (Karras et al. 2022, eq. 4).
pub fn sigma_of(sde: &dyn Sde, t: f64) -> f64 {
    let (m, s) = sde.marginal(t);
    s / m
}

/// The time t ∈ [0, T] with σ(t) = `sigma` (T when σ(T) ≤ sigma), by
/// bisection: σ(t) increases with t for every SDE here.
pub fn time_of_sigma(sde: &dyn Sde, sigma: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, sde.t_max());
    if sigma_of(sde, hi) <= sigma {
        return hi;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if sigma_of(sde, mid) < sigma {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// A tensor [N] filled with t, in the dtype of `like`.
pub fn time_batch(t: f64, like: &Tensor) -> Result<Tensor> {
    Tensor::full(t, like.dim(0)?, like.device())?.to_dtype(like.dtype())
}

/// Forward-SDE paths of scalars from t = 0 to T by Euler–Maruyama,
/// x ← x + a(t)·x·dt + g(t)·√dt·z, one (t, x) list of `steps` + 1 points per start.
pub fn forward_paths_1d(sde: &dyn Sde, starts: &[f64], steps: usize, rng: &mut Rng) -> Vec<Vec<(f64, f64)>> {
    let dt = sde.t_max() / steps as f64;
    let mut forward: Vec<Vec<(f64, f64)>> = starts.iter().map(|&x| vec![(0.0, x)]).collect();
    for k in 0..steps {
        let t = k as f64 * dt;
        let (a, g) = (sde.drift_coef(t), sde.diffusion(t));
        for p in forward.iter_mut() {
            let x = p.last().expect("non-empty").1;
            p.push((t + dt, x + a * x * dt + g * dt.sqrt() * rng.normal()));
        }
    }
    forward
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Box<dyn Sde>> {
        vec![Box::new(VeSde::new(0.01, 10.0)), Box::new(VpSde::new(0.1, 20.0)), Box::new(SubVpSde::new(0.1, 20.0))]
    }

    /// The batched marginal on the device equals the scalar one at every t
    /// (grid points of the chains, their midpoints, both ends, times in f32),
    /// to 1e-9 relative (the tensor path forms 1 − e^{2 log m} where the scalar
    /// one uses expm1: an absolute error of 1e-16 against s(t)² ≥ 1e-7 here),
    /// and reads nothing back.
    #[test]
    fn marginal_of_matches_marginal_without_host_reads() {
        let mut sdes = all();
        sdes.push(Box::new(DiscreteVp::ddpm()));
        sdes.push(Box::new(DiscreteVp::new(BetaSchedule::Cosine, 50)));
        let mut ts: Vec<f64> = vec![0.0, 1e-5, 1e-3, 0.0105, 0.25, 0.5, 0.7731, 0.999, 1.0];
        ts.extend((0..50).map(|i| (i + 1) as f64 / 50.0));
        ts.extend((0..50).map(|i| (i as f64 + 0.5) / 50.0));
        for dtype in [DType::F64, DType::F32] {
            let t = Tensor::new(ts.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let t_host = crate::host::vec1::<f64>(&t).unwrap();
            for sde in &sdes {
                let before = crate::host::reads();
                let (m, s) = sde.marginal_of(&t).unwrap();
                assert_eq!(crate::host::reads(), before, "{}: marginal_of read t back", sde.name());
                let (m, s) = (m.to_vec1::<f64>().unwrap(), s.to_vec1::<f64>().unwrap());
                for (i, &ti) in t_host.iter().enumerate() {
                    let (m0, s0) = sde.marginal(ti);
                    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
                    assert!(
                        close(m[i], m0) && close(s[i], s0),
                        "{} at t = {ti}: ({}, {}) vs ({m0}, {s0})",
                        sde.name(),
                        m[i],
                        s[i]
                    );
                }
            }
        }
    }

    /// Simulates the forward SDE from x(0) ~ N(mu0, s0²) with fine Euler–Maruyama
    /// steps and compares mean and variance at t with the closed-form marginal.
    /// Tolerance: 5 standard errors of the Monte-Carlo estimates (n = 20 000
    /// paths), plus the O(dt) discretization bias (2000 steps).
    #[test]
    fn marginal_matches_monte_carlo() {
        let n = 20_000;
        let (mu0, s0) = (1.5, 0.5);
        for sde in all() {
            for &t_end in &[0.3, 1.0] {
                let mut rng = Rng::new(11, 0);
                let mut x: Vec<f64> = (0..n).map(|_| mu0 + s0 * rng.normal()).collect();
                let steps = 2000;
                let dt = t_end / steps as f64;
                for k in 0..steps {
                    let t = k as f64 * dt;
                    let (a, g) = (sde.drift_coef(t), sde.diffusion(t));
                    for xi in x.iter_mut() {
                        *xi += a * *xi * dt + g * dt.sqrt() * rng.normal();
                    }
                }
                let mean = x.iter().sum::<f64>() / n as f64;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                let (m, s) = sde.marginal(t_end);
                let want_mean = m * mu0;
                let want_var = m * m * s0 * s0 + s * s;
                let se_mean = (want_var / n as f64).sqrt();
                let se_var = want_var * (2.0 / (n - 1) as f64).sqrt();
                assert!(
                    (mean - want_mean).abs() < 5.0 * se_mean + 1e-3 * want_mean.abs(),
                    "{} t={t_end}: mean {mean} vs {want_mean}",
                    sde.name()
                );
                assert!(
                    (var - want_var).abs() < 5.0 * se_var + 2e-3 * want_var,
                    "{} t={t_end}: var {var} vs {want_var}",
                    sde.name()
                );
            }
        }
    }

    #[test]
    fn vp_preserves_unit_variance() {
        let sde = VpSde::new(0.1, 20.0);
        for &t in &[0.0, 0.1, 0.5, 0.9, 1.0] {
            let (m, s) = sde.marginal(t);
            assert!((m * m + s * s - 1.0).abs() < 1e-12, "t={t}");
        }
    }

    #[test]
    fn subvp_variance_is_below_vp() {
        let (vp, sub) = (VpSde::new(0.1, 20.0), SubVpSde::new(0.1, 20.0));
        for &t in &[0.1, 0.5, 1.0] {
            assert!(sub.marginal(t).1 < vp.marginal(t).1);
            assert_eq!(sub.marginal(t).0, vp.marginal(t).0);
        }
    }

    /// The marginal variance must solve dv/dt = 2a(t)v + g(t)² (the moment
    /// equation of a linear SDE); checked by central differences.
    #[test]
    fn marginal_variance_solves_moment_equation() {
        for sde in all() {
            for &t in &[0.05, 0.4, 0.8] {
                let h = 1e-5;
                let v = |t: f64| sde.marginal(t).1.powi(2);
                let m = |t: f64| sde.marginal(t).0;
                let dv = (v(t + h) - v(t - h)) / (2.0 * h);
                let dm = (m(t + h) - m(t - h)) / (2.0 * h);
                let a = sde.drift_coef(t);
                let g2 = sde.diffusion(t).powi(2);
                assert!((dv - (2.0 * a * v(t) + g2)).abs() < 1e-4 * (1.0 + g2), "{} t={t}", sde.name());
                assert!((dm - a * m(t)).abs() < 1e-6, "{} t={t}", sde.name());
            }
        }
    }

    /// prior_logp is a normalized Gaussian: it integrates to 1 on a fine 2-D
    /// grid and matches the closed form at a point.
    #[test]
    fn prior_logp_integrates_to_one() {
        for sde in all() {
            let s = sde.prior_std();
            let (k, half) = (400usize, 8.0 * s);
            let h = 2.0 * half / k as f64;
            let mut pts = Vec::with_capacity(k * k * 2);
            for i in 0..k {
                for j in 0..k {
                    pts.push(-half + (i as f64 + 0.5) * h);
                    pts.push(-half + (j as f64 + 0.5) * h);
                }
            }
            let x = Tensor::from_vec(pts, (k * k, 2), &Device::Cpu).unwrap();
            let lp = sde.prior_logp(&x).unwrap().to_vec1::<f64>().unwrap();
            let total: f64 = lp.iter().map(|l| l.exp() * h * h).sum();
            assert!((total - 1.0).abs() < 1e-6, "{}: {total}", sde.name());
            let one = Tensor::new(&[[s, 0.0]], &Device::Cpu).unwrap();
            let l = sde.prior_logp(&one).unwrap().to_vec1::<f64>().unwrap()[0];
            let want = -(2.0 * PI * s * s).ln() - 0.5;
            assert!((l - want).abs() < 1e-12);
        }
    }
}
